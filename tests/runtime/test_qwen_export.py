"""Qwen2.5-VL exported: ONNX Runtime equals the PyTorch reference at each keep ratio, batched and
alone; the graphs carry M-RoPE positions and Qwen's swarm; the verbs work on the export."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import onnx
import pytest

from nuwa_export import manifest as mf
from nuwa_export.constants import OP_NAME
from nuwa_export.contract import Numbers
from nuwa_export.generation import Request
from nuwa_export.image import load_image
from nuwa_export.models.families import family_named
from nuwa_export.names import MANIFEST
from nuwa_export.runtime.runner import open_runner, reference_for_export
from nuwa_export.sampling import SamplingConfig
from tests.helpers import BIN

TOKENS = 24
PROMPTS = ["What is in the picture?", "Where is the red car? Answer in one short sentence please.", "Describe the person."]


def _cli(verb: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / verb), *map(str, args)], capture_output=True, text=True, timeout=300)


def _requests(directory, n=3, tokens=TOKENS):
    picture = load_image(Path(json.loads((directory / MANIFEST).read_text())["model"]["id"]) / "example.png")
    return [Request(picture, PROMPTS[i % len(PROMPTS)], SamplingConfig(max_new_tokens=tokens)) for i in range(n)]


@pytest.mark.parametrize("keep_ratio,image_size", [(0.25, 308), (0.5, 224), (0.75, 224), (None, 224)])
def test_ort_equals_the_reference_batched_and_alone(qwen_export_factory, keep_ratio, image_size):
    flags = {} if keep_ratio is not None else {"prune": False}
    d = qwen_export_factory(keep_ratio, image_size, **flags)
    m = mf.read(d)
    assert m.family == "qwen2_5_vl" and m.budgets.keep_ratio == keep_ratio and m.budgets.self_weight is False
    assert m.validation["pipeline"]["policy"] == "float32"
    pipeline = open_runner(d, backend="ort", device="cpu")
    reference = reference_for_export(d, m, device="cpu")
    try:
        requests = _requests(d)
        batched = pipeline.generate_batch(requests, batch_size=3)
        alone = [pipeline.generate_batch([r], batch_size=1)[0] for r in requests]
        ref = reference.generate_batch(requests, batch_size=3)
        for b, a, r in zip(batched, alone, ref):
            assert len(b.generated_ids) == TOKENS
            assert b.generated_ids == a.generated_ids == r.generated_ids
            assert b.stage_one_indices == a.stage_one_indices == r.stage_one_indices
            assert b.stage_two_indices == a.stage_two_indices == r.stage_two_indices
            if keep_ratio is not None:
                assert len(b.stage_one_indices) == m.budgets.stage_one_keep and len(b.stage_two_indices) == m.budgets.stage_two_keep
    finally:
        pipeline.close()


def test_graphs_take_mrope_positions_and_carry_qwens_swarm(qwen_export_factory):
    d = qwen_export_factory(0.25, 308)
    m = mf.read(d)
    assert m.grid == [11, 11] and m.preprocessing["size"] == 308
    for graph in ("llm_prefix", "llm_suffix"):
        spec = {t.name: t.shape for t in m.graphs[graph].inputs}
        assert spec["position_ids"][0] == 3 and len(spec["position_ids"]) == 3
        assert m.engine_profiles[graph][0]["position_ids"][0][0] == 3
    declared = family_named("qwen2_5_vl").contract(Numbers.of_manifest(m))
    for graph, spec in m.graphs.items():
        assert [t.name for t in spec.inputs] == declared.graphs[graph].input_names, graph
    vision = onnx.load(d / "vision.onnx")
    (node,) = [n for n in vision.graph.node if n.op_type == OP_NAME]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["grid"] == [11, 11] and attrs["self_weight"] == 0 and attrs["percentile"] == pytest.approx(0.1)
    assert attrs["distance"] == pytest.approx((0.8 * ((12 - 1) ** 2 * 2) ** 0.5) ** 2, rel=1e-6)  # padded 12x12


def test_verbs_run_on_a_qwen_export(qwen_export_factory, tmp_path):
    d = qwen_export_factory(0.5, 224)
    run = _cli("nuwa-run", d, "--prompt", "What is in the picture?", "--max-new-tokens", "5", "--json")
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert len(out["generated_ids"]) == 5 and out["budgets"]["keep_ratio"] == 0.5
    verify = _cli("nuwa-verify", d, "--json")
    assert verify.returncode == 0, verify.stderr
    profile = _cli("nuwa-profile", d, "--json", tmp_path / "p.json", "--runs", "1")
    assert profile.returncode == 0, profile.stderr
    assert json.loads((tmp_path / "p.json").read_text())["export"]["budgets"]["keep_ratio"] == 0.5
    requests = tmp_path / "r.jsonl"
    image = json.loads((d / MANIFEST).read_text())["model"]["id"] + "/example.png"
    requests.write_text("".join(json.dumps({"image": image, "prompt": p, "max_new_tokens": 4}) + "\n" for p in PROMPTS))
    batch = _cli("nuwa-run", d, "--requests", requests, "--json")
    assert batch.returncode == 0, batch.stderr
    assert len(batch.stdout.strip().splitlines()) == 3
    shown = _cli("nuwa-run", d, "--prompt", "hi", "--max-new-tokens", "2", "--show-tokens", tmp_path / "t.png")
    assert shown.returncode == 0, shown.stderr
    assert (tmp_path / "t.png").stat().st_size > 1000


def test_fixed_settings_are_refused_on_an_export(qwen_export_factory):
    d = qwen_export_factory(0.5, 224)
    for flags in (["--keep-ratio", "0.25"], ["--image-size", "448"]):
        r = _cli("nuwa-run", d, "--prompt", "hi", *flags)
        assert r.returncode == 1 and r.stderr.strip().endswith("budgets are fixed when exporting; re-run nuwa-export to change them")
        assert len(r.stderr.strip().splitlines()) == 1


def test_float16_export_validates_under_its_policy(qwen_export_factory):
    """The float16 policy's teacher-forced checks run on M-RoPE positions too."""
    d = qwen_export_factory(0.5, 224, dtype="float16")
    m = mf.read(d)
    assert m.precision.float_type == "float16" and m.validation["pipeline"]["policy"] == "float16"
    stages = {c["stage"] for c in m.validation["pipeline"]["checks"]}
    assert any(s.startswith("greedy tokens") and "teacher-forced" in s for s in stages)


def test_ground_prints_a_box_or_says_there_is_none(qwen_export_factory, tmp_path):
    d = qwen_export_factory(0.5, 224)
    r = _cli("nuwa-run", d, "--ground", "the red car", "--max-new-tokens", "8", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert "box" in out and out["input_ids"]  # the random demo answers no box: box is null


def test_manifest_keys_at_their_defaults_are_left_out(qwen_export_factory, demo_export):
    """A LLaVA manifest stays readable by every reader of schema 2; a Qwen one says what differs."""
    llava = json.loads((demo_export / MANIFEST).read_text())["budgets"]
    qwen = json.loads((qwen_export_factory(0.5, 224) / MANIFEST).read_text())["budgets"]
    assert "keep_ratio" not in llava and "self_weight" not in llava
    assert qwen["keep_ratio"] == 0.5 and qwen["self_weight"] is False
    assert mf.read(demo_export).budgets.self_weight is True


def test_nuwa_eval_refuses_checkpoint_settings_on_an_export(qwen_export_factory):
    from nuwa_export.errors import NuwaError
    from nuwa_export.eval import runner
    from nuwa_export.tools.eval import parser as eval_parser

    d = qwen_export_factory(0.5, 224)
    for flags in (["--keep-ratio", "0.25"], ["--image-size", "448"]):
        args = eval_parser().parse_args(["refcoco", str(d), "--data", "x.json", *flags])
        with pytest.raises(NuwaError, match=f"{flags[0]}: budgets are fixed when exporting"):
            runner.plan(args)
