"""The analytic FLOPs model against the paper's numbers (docs/algorithm.md §9)."""

from __future__ import annotations

import pytest

from nuwa_export.errors import NuwaError
from nuwa_export.profile.flops import (
    LLAVA_7B,
    LlmShape,
    full_flops,
    layer_flops,
    nuwa_flops,
    speedup_bound,
    summary,
)


def test_layer_formula_by_hand():
    # 8·S·H² + 4·S²·H + 4·S·H·I with S=2, H=3, I=5: 144 + 48 + 120
    assert layer_flops(2, 3, 5) == 312
    assert layer_flops(0, 4096, 11008) == 0


def test_full_model_is_the_papers_5_97_tflops():
    flops = full_flops(LLAVA_7B, 576)
    assert flops == 32 * (8 * 576 * 4096**2 + 4 * 576**2 * 4096 + 4 * 576 * 4096 * 11008) == 5_972_152_025_088
    assert round(flops / 1e12, 2) == 5.97


def test_nuwa_64_is_the_papers_0_648_tflops_from_the_two_groups():
    flops = nuwa_flops(LLAVA_7B, k1=112, k2=16, layer=16)
    assert flops == 16 * layer_flops(112, 4096, 11008) + 16 * layer_flops(16, 4096, 11008) == 647_600_537_600
    assert round(flops / 1e12, 3) == 0.648
    # the same average (64 tokens in every layer) does not give the paper's number
    assert round(nuwa_flops(LLAVA_7B, 64, 64, 16) / 1e12, 3) == 0.646


def test_speedup_bound():
    assert speedup_bound(LLAVA_7B, 576, 112, 16, 16) == pytest.approx(5_972_152_025_088 / 647_600_537_600)
    assert speedup_bound(LLAVA_7B, 576, 112, 16, 16) == pytest.approx(9.22, abs=0.01)
    # text is never pruned, so counting it lowers the bound; no pruning bounds at 1
    assert 1 < speedup_bound(LLAVA_7B, 576, 112, 16, 16, text_tokens=40) < speedup_bound(LLAVA_7B, 576, 112, 16, 16)
    assert speedup_bound(LLAVA_7B, 576, 576, 576, 16) == 1.0
    # larger budgets (keep 128, 192: docs/algorithm.md §1) cost more
    assert speedup_bound(LLAVA_7B, 576, 224, 32, 16) > speedup_bound(LLAVA_7B, 576, 336, 48, 16) > 1


def test_summary_and_config(loaded_demo):
    s = summary(LLAVA_7B, 576, 112, 16, 16)
    assert round(s["full_tflops"], 2) == 5.97 and round(s["nuwa_tflops"], 3) == 0.648
    shape = LlmShape.from_config(loaded_demo.model.config.text_config)
    assert shape.layers == loaded_demo.parts.num_layers and shape.hidden > 0 and shape.intermediate > 0


def test_bad_arguments():
    with pytest.raises(NuwaError, match="layer must be"):
        nuwa_flops(LLAVA_7B, 112, 16, 33)
    with pytest.raises(NuwaError, match="tokens must be"):
        layer_flops(-1, 4096, 11008)
    with pytest.raises(NuwaError, match="no work"):
        speedup_bound(LLAVA_7B, 576, 0, 0, 16)
