"""The ONNX Runtime pipeline holds to the PyTorch reference token for token."""

from __future__ import annotations

import numpy as np
import pytest

from nuwa_export import manifest as mf
from nuwa_export.export.pipeline import export
from nuwa_export.models.loader import load
from nuwa_export.pruning import BudgetRequest
from nuwa_export.runtime.backend import Backend
from nuwa_export.runtime.runner import open_runner, reference_for_export
from nuwa_export.sampling import SamplingConfig
from nuwa_export.verify.checks import compare
from tests.helpers import SMALL, record_ort_sessions

TOKENS = 24


def _assert_matches(pipeline, reference, image, prompt):
    checks = compare(pipeline, reference, image, prompt, TOKENS)
    bad = [c for c in checks if not c.ok]
    assert not bad, bad
    stages = {c.stage for c in checks}
    assert {"vision tokens", "stage-one indices", "first logits", f"generated ids ({TOKENS})"} <= stages
    logits = next(c for c in checks if c.stage == "first logits")
    assert logits.max_abs < 1e-4


def test_demo_export_matches_reference(demo_export, demo_dir):
    reference = reference_for_export(demo_export, mf.read(demo_export), "cpu", "float32")
    pipeline = open_runner(demo_export, backend="ort", device="cpu")
    for prompt in ("What is in the picture?", "Where is the red car? Answer briefly."):
        _assert_matches(pipeline, reference, demo_dir / "example.png", prompt)


CASES = [
    pytest.param(3, {**SMALL, "text_kv_heads": 2}, {"keep": 8}, id="seed3-gqa-keep8"),
    pytest.param(4, {**SMALL, "text_layers": 5}, {"keep": 12, "layer": 3}, id="seed4-5layers-keep12-L3"),
    pytest.param(5, SMALL, {"prune": False}, id="seed5-no-prune"),
    pytest.param(6, {**SMALL, "image_size": 168}, {"keep": 1}, id="seed6-12x12-keep1"),
]


@pytest.mark.parametrize("seed,sizes,flags", CASES)
def test_random_checkpoints_match_reference(checkpoint_factory, tmp_path, seed, sizes, flags):
    ckpt = checkpoint_factory(seed, **sizes)
    out = tmp_path / "exp"
    export(str(ckpt), out, progress=False, **flags)
    loaded = load(str(ckpt), device="cpu")
    reference = open_runner(loaded, budgets=BudgetRequest(flags.get("keep"), layer=flags.get("layer"), prune=flags.get("prune", True)))
    pipeline = open_runner(out, backend="ort", device="cpu")
    rng = np.random.default_rng(seed)
    from PIL import Image

    noise = Image.fromarray(rng.integers(0, 256, (150, 260, 3), dtype=np.uint8))
    _assert_matches(pipeline, reference, noise, "How many people are in the image?")
    _assert_matches(pipeline, reference, ckpt / "example.png", "Describe the picture.")
    # a mixed batch gives, row for row, what each request gives alone, on both runners
    from tests.generation.test_batched_generation import (
        assert_rows_as_alone,
        mixed_requests,
    )

    example = Image.open(ckpt / "example.png").convert("RGB")
    for runner in (pipeline, reference):
        assert_rows_as_alone(runner, mixed_requests(example, noise), batch_size=4)


class Recording(Backend):
    """Wraps a backend and records the past lengths each graph sees (the filled entries of
    in-place KV buffers)."""

    def __init__(self, inner):
        super().__init__(inner.manifest)
        self.inner, self.name, self.device, self.calls, self.in_place = inner, inner.name, inner.device, [], inner.in_place

    def run(self, graph, inputs, out=None):
        if graph != "vision":
            first = inputs["inputs_embeds" if graph == "llm_prefix" else "hidden_states"]
            past = next(v for k, v in inputs.items() if k.startswith("past_"))
            filled = inputs["attention_mask"].shape[1] - first.shape[1] if "attention_mask" in inputs else past.shape[2]
            self.calls.append((graph.removeprefix("llm_"), first.shape[1], filled, inputs["position_ids"][0].tolist()))
        return self.inner.run(graph, inputs, out)


def test_two_kv_groups_and_spatial_positions(demo_export):
    base = open_runner(demo_export, backend="ort", device="cpu")
    rec = Recording(base.backend)
    pipeline = open_runner(demo_export, backend=rec)
    res = pipeline.generate(_example(), "Where is the person?", SamplingConfig(max_new_tokens=4, stop_at_eos=False))
    b = res.budgets
    nb, nc = len(res.prompt.before), len(res.prompt.after)
    (p0, s0, p1, s1, p2, s2, p3, s3) = rec.calls
    assert p0[:3] == ("prefix", nb + b.k1 + nc, 0)
    assert s0[:3] == ("suffix", nb + b.k2 + nc, 0)
    assert p0[3][nb : nb + b.k1] == [nb + i for i in res.stage_one_indices]  # kept patches keep their grid positions
    assert s0[3][nb : nb + b.k2] == [nb + i for i in res.stage_two_indices]
    assert p0[3][-1] == s0[3][-1] == nb + b.num_patches + nc - 1  # text after sits as with every patch
    for step, (p, s) in enumerate([(p1, s1), (p2, s2), (p3, s3)]):
        assert p[1:] == (1, nb + b.k1 + nc + step, [nb + b.num_patches + nc + step])
        assert s[1:] == (1, nb + b.k2 + nc + step, [nb + b.num_patches + nc + step])


def _example():
    from nuwa_export.models.demo import example_picture

    return example_picture()


def test_sampling_matches_reference(demo_export):
    reference = reference_for_export(demo_export, mf.read(demo_export), "cpu", "float32")
    pipeline = open_runner(demo_export, backend="ort", device="cpu")
    cfg = SamplingConfig(max_new_tokens=16, temperature=0.8, top_p=0.9, seed=7, stop_at_eos=False)
    got = pipeline.generate(_example(), "Describe it.", cfg).generated_ids
    assert got == reference.generate(_example(), "Describe it.", cfg).generated_ids


def test_ort_sessions_do_not_spin_by_default(demo_export, monkeypatch):
    """Three sessions run back to back: spin-waiting threads of one would take CPU from the next."""
    from nuwa_export.runtime.ort_backend import OrtBackend

    manifest = mf.read(demo_export)
    files = [manifest.graphs["vision"].file, *(manifest.ort_graphs[g].file for g in ("llm_prefix", "llm_suffix"))]  # what the ort backend runs
    sessions = record_ort_sessions(monkeypatch)
    OrtBackend(demo_export, manifest, "cpu")
    quiet = dict(sessions)
    sessions.clear()
    OrtBackend(demo_export, manifest, "cpu", spinning=True)
    assert sorted(quiet) == sorted(sessions) == sorted(files)
    for key in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
        for name in files:
            assert quiet[name].get_session_options().get_session_config_entry(key) == "0", (name, key)
            with pytest.raises(RuntimeError, match="does not have configuration"):  # ORT's default: spinning
                sessions[name].get_session_options().get_session_config_entry(key)
