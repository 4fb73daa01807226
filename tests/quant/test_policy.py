"""The quantized policy both ways: the real quantized graphs pass; a graph with a broken weight
scale or with positions shifted after the image fails (measured on requests that are not in the
calibration set, and through nuwa-verify)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from nuwa_export import manifest as mf
from nuwa_export.errors import NuwaError
from nuwa_export.quant.quantize import validate_quantized
from nuwa_export.tools.verify import main as verify_main
from nuwa_export.verify import quantized as qp
from tests.helpers import rehash
from tests.quant.breakage import scale_weight_dequant, shift_positions_after_image

pytest.importorskip("modelopt.onnx.quantization", reason="nvidia-modelopt not installed (pip install -e '.[quantize]')")
pytestmark = pytest.mark.slow


def _copy(src, tmp_path):
    out = tmp_path / "q"
    shutil.copytree(src, out)
    return out


@pytest.mark.parametrize("precision", ["int8", "int4-awq"])
def test_real_graphs_pass_on_requests_they_were_not_calibrated_on(quantized_factory, float_records, precision):
    d = quantized_factory(precision)
    v = validate_quantized(d, mf.read(d), float_records, qp.policy_for(precision))
    assert all(c["ok"] for c in v["checks"])


@pytest.mark.parametrize(
    "precision, graph, index, stage",
    [
        ("int8", "llm_prefix.onnx", 9, "hidden at split: cosine"),  # a layer-1 weight of the prefix
        ("int8", "llm_suffix.onnx", 3, "logits, teacher-forced: cosine"),
        ("int4-awq", "llm_prefix.onnx", 9, "hidden at split: cosine"),
        ("int4-awq", "llm_suffix.onnx", 3, "logits, teacher-forced: cosine"),
    ],
)
def test_a_broken_weight_scale_is_rejected(quantized_factory, float_records, tmp_path, precision, graph, index, stage):
    out = _copy(quantized_factory(precision), tmp_path)
    scale_weight_dequant(out / graph, index, 2.0)
    rehash(out)
    with pytest.raises(NuwaError, match=f"validation failed: {stage}"):
        validate_quantized(out, mf.read(out), float_records, qp.policy_for(precision))


def test_shifted_positions_are_rejected(quantized_factory, float_records, tmp_path, capsys):
    out = _copy(quantized_factory("int8"), tmp_path)
    shift_positions_after_image(out / "llm_prefix.onnx", 8)
    rehash(out)
    with pytest.raises(NuwaError, match="validation failed: hidden at split: cosine"):
        validate_quantized(out, mf.read(out), float_records, qp.policy_for("int8"))
    # nuwa-verify holds one request to the same policy
    assert verify_main([str(out), "--json", "--max-new-tokens", "8"]) == 1
    report = json.loads(capsys.readouterr().out)
    failed = [c["stage"] for c in report["backends"]["ort-cpu"] if not c["ok"]]
    assert failed and failed[0].startswith(("hidden at split", "stage-two indices"))


def test_figures():
    assert qp.cosine([1.0, 0.0], [1.0, 0.0]) == 1.0 and abs(qp.cosine([1.0, 0.0], [0.0, 1.0])) < 1e-12
    assert qp.sqnr_db([1.0, 1.0], [1.0, 1.0]) == float("inf")
    assert abs(qp.sqnr_db(np.array([1.1, 1.0]), np.array([1.0, 1.0])) - 10 * np.log10(2 / 0.01)) < 1e-9
    s = qp.summarize([
        dict(prompt="a", vision_max_abs=0.0, vision_ok=True, stage_one_identical=True, hidden_cosine=0.99, hidden_sqnr_db=20.0,
             logits_cosine=0.98, logits_sqnr_db=15.0, stage_two_overlap=1.0, tokens_agreeing=6, differing_gaps=[0.1, 0.4], tokens=8,
             free_running_identical=4),
        dict(prompt="b", vision_max_abs=1e-6, vision_ok=True, stage_one_identical=True, hidden_cosine=0.95, hidden_sqnr_db=12.0,
             logits_cosine=0.99, logits_sqnr_db=18.0, stage_two_overlap=0.4, tokens_agreeing=7, differing_gaps=[2.0], tokens=8,
             free_running_identical=0),
    ], near_tie=0.5)
    assert s["hidden_cosine"] == 0.95 and s["logits_cosine"] == 0.98 and abs(s["stage_two_overlap"] - 0.7) < 1e-12 and s["token_agreement"] == 15 / 16
    assert s["tokens_identical"] == 13 / 16
    checks = {c.stage: c.ok for c in qp.judge(s, qp.policy_for("int8"))}
    assert checks["hidden at split: cosine (lowest)"] is False and checks["logits, teacher-forced: cosine (lowest)"] is True
    assert checks["stage-two indices: overlap (mean)"] is False and checks["greedy tokens, teacher-forced: agreement"] is True
