"""``nuwa-export --dtype float16``: float16 LLM graphs, a float32 vision graph, and a validation
policy that holds float16 to its own tolerance yet still catches a wrong graph."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nuwa_export import manifest as mf
from nuwa_export.export.pipeline import export
from nuwa_export.precision import Precision
from nuwa_export.runtime.backend import Backend
from nuwa_export.runtime.runner import open_runner, reference_for_export
from nuwa_export.tools.export import main as export_main
from nuwa_export.tools.run import main as run_main
from nuwa_export.tools.verify import main as verify_main
from nuwa_export.verify.checks import (
    POLICIES,
    check,
    near_tie_sets,
    near_tie_tokens,
    record,
)
from tests.helpers import SMALL, record_ort_sessions

FP16 = POLICIES["float16"]


@pytest.fixture(scope="module")
def fp16_export(checkpoint_factory, tmp_path_factory):
    ckpt = checkpoint_factory(7, **{**SMALL, "text_kv_heads": 2})
    out = tmp_path_factory.mktemp("fp16") / "exp"
    export(str(ckpt), out, keep=8, dtype="float16", progress=False)
    return out


@pytest.fixture(scope="module")
def fp16_record(fp16_export):
    from nuwa_export.models.demo import example_picture

    reference = reference_for_export(fp16_export, mf.read(fp16_export), "cpu")
    assert reference.parts.dtype.is_floating_point and str(reference.parts.dtype) == "torch.float16"
    assert str(reference.parts.vision_dtype) == "torch.float32"
    return record(reference, example_picture(), "What is in the picture?", 6)


def test_graph_and_asset_dtypes(fp16_export):
    from safetensors.numpy import load_file

    m = mf.read(fp16_export)
    assert m.precision == Precision.of("float16")
    dtypes = lambda graph, side: {t.name: t.dtype for t in getattr(m.graphs[graph], side)}  # noqa: E731
    assert set(dtypes("vision", "inputs").values()) == {"float32"}
    assert dtypes("vision", "outputs")["image_tokens"] == "float32"
    prefix_in, prefix_out = dtypes("llm_prefix", "inputs"), dtypes("llm_prefix", "outputs")
    assert prefix_in["inputs_embeds"] == "float16" and prefix_in["past_key_0"] == "float16"
    assert prefix_out["hidden_states"] == "float16" and prefix_out["stage_two_scores"] == "float32"
    suffix_out = dtypes("llm_suffix", "outputs")
    assert suffix_out["logits"] == "float32" and suffix_out["present_value_3"] == "float16"
    assert load_file(fp16_export / "embeddings.safetensors")["embed_tokens"].dtype == np.float16


def test_trtexec_script_says_how_to_build_float16(fp16_export, demo_export):
    assert "--stronglyTyped" in (fp16_export / "trtexec.sh").read_text()
    assert "--stronglyTyped" not in (demo_export / "trtexec.sh").read_text()


def test_llm_weights_are_stored_in_float16(fp16_export):
    import onnx

    model = onnx.load(str(fp16_export / "llm_suffix.onnx"))
    big = [t for t in model.graph.initializer if np.prod(t.dims) >= 1024]
    assert big and {t.data_type for t in big} == {onnx.TensorProto.FLOAT16}


def test_export_validation_used_the_float16_policy(fp16_export):
    v = mf.read(fp16_export).validation
    assert v["pipeline"]["policy"] == "float16"
    stages = {c["stage"]: c for c in v["pipeline"]["checks"]}
    assert stages["stage-one indices"]["detail"] == "identical"
    assert "decode logits (7 steps, teacher-forced)" in stages and "greedy tokens (8, teacher-forced)" in stages
    assert all(c["ok"] for c in stages.values())


def test_runs_with_fp16_kv_cache(fp16_export, capsys):
    assert run_main([str(fp16_export), "--prompt", "What is in the picture?", "--json", "--max-new-tokens", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    m = mf.read(fp16_export)
    b, llm = m.budgets, m.llm
    prompt = len(out["input_ids"]) - 1
    entries = b.stage_two_layer * (prompt + b.stage_one_keep) + (b.num_layers - b.stage_two_layer) * (prompt + b.stage_two_keep)
    entries += b.num_layers * (len(out["generated_ids"]) - 1)
    assert out["kv_cache_bytes"] == entries * 2 * llm.num_kv_heads * llm.head_dim * 2  # key + value, 2 bytes each


@pytest.mark.parametrize("llm_graphs", ["ort", "standard"])
def test_ort_cpu_keeps_float16_weights_unfolded(fp16_export, monkeypatch, llm_graphs):
    import onnxruntime as ort

    m = mf.read(fp16_export)
    graphs = {**m.graphs, **(m.ort_graphs if llm_graphs == "ort" else {})}
    sessions = record_ort_sessions(monkeypatch)
    pipeline = open_runner(fp16_export, backend="ort", device="cpu", llm_graphs=llm_graphs)
    try:
        for graph in ("llm_prefix", "llm_suffix"):
            opts = sessions[graphs[graph].file].get_session_options()
            assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, graph
            assert opts.execution_order == ort.ExecutionOrder.PRIORITY_BASED and not opts.enable_cpu_mem_arena, graph
        vision = sessions[graphs["vision"].file].get_session_options()
        assert vision.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    finally:
        pipeline.close()


def test_nuwa_verify_uses_the_export_dtype(fp16_export, capsys):
    assert verify_main([str(fp16_export), "--json", "--max-new-tokens", "5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["dtype"] == "float16"


class _Skewed(Backend):
    """Wraps a backend and bends one of its outputs, to show the policy is not toothless."""

    name = "skewed"

    def __init__(self, inner: Backend, *, positions: int = 0, noise: float = 0.0, suffix_noise: float = 0.0) -> None:
        super().__init__(inner.manifest)
        self.inner, self.device, self.in_place = inner, inner.device, inner.in_place
        self.positions, self.noise, self.suffix_noise = positions, noise, suffix_noise

    def run(self, graph, inputs, out=None):
        if graph == "llm_prefix" and self.positions and inputs["position_ids"].shape[1] > 1:
            pos = inputs["position_ids"].clone()  # the text after the image one position late
            pos[:, int(inputs["vision_start"][0]) + 1 :] += self.positions
            inputs = {**inputs, "position_ids": pos}
        out = self.inner.run(graph, inputs, out)
        if graph == "llm_prefix" and self.noise:
            hidden = out[0]
            rms = float(hidden.double().square().mean().sqrt())
            noise = np.random.default_rng(0).normal(0, self.noise * rms, tuple(hidden.shape))
            out[0] = (hidden.double() + torch.from_numpy(noise)).to(hidden.dtype)
        if graph == "llm_suffix" and self.suffix_noise:
            logits = out[0]
            noise = np.random.default_rng(1).standard_normal(tuple(logits.shape)).astype(np.float32)
            out[0] = logits + self.suffix_noise * float(logits.abs().max()) * torch.from_numpy(noise)
        return out


@pytest.mark.parametrize(
    "skew,failing",
    [
        ({"positions": 1}, "hidden at split"),  # rotary positions off by one after the first vision token
        ({"noise": 0.1}, "hidden at split"),  # 10 % of the RMS: far beyond float16 rounding
        ({"suffix_noise": 0.2}, "first logits"),
    ],
)
def test_policy_catches_a_wrong_graph(fp16_export, fp16_record, skew, failing):
    from nuwa_export.runtime.ort_backend import OrtBackend

    m = mf.read(fp16_export)
    pipeline = open_runner(fp16_export, backend=_Skewed(OrtBackend(fp16_export, m, "cpu"), **skew))
    try:
        checks = {c.stage: c for c in check(pipeline, fp16_record)}
    finally:
        pipeline.close()
    assert not checks[failing].ok, checks[failing]


def test_policy_accepts_float16_rounding_noise(fp16_export, fp16_record):
    from nuwa_export.runtime.ort_backend import OrtBackend

    m = mf.read(fp16_export)
    pipeline = open_runner(fp16_export, backend=_Skewed(OrtBackend(fp16_export, m, "cpu"), noise=2e-3))
    try:
        checks = {c.stage: c for c in check(pipeline, fp16_record)}
    finally:
        pipeline.close()
    assert checks["hidden at split"].ok, checks["hidden at split"]


def test_near_tie_sets():
    scores = np.array([0.30, 0.20, 0.199, 0.10, 0.05])
    assert near_tie_sets("s", [0, 1], [1, 0], scores, FP16).ok
    swap = near_tie_sets("s", [0, 2], [0, 1], scores, FP16)  # 0.200 vs 0.199: a near-tie
    assert swap.ok and "1/2 swapped" in swap.detail
    assert not near_tie_sets("s", [0, 3], [0, 1], scores, FP16).ok  # 0.20 vs 0.10: a wrong pick
    assert not near_tie_sets("s", [0], [0, 1], scores, FP16).ok


def test_near_tie_tokens():
    rows = [np.array([[1.0, 3.0, 2.999, -1.0]]), np.array([[5.0, 0.0, 1.0, 0.0]])]
    assert near_tie_tokens("t", [1, 0], [1, 0], rows, FP16).detail == "identical"
    tie = near_tie_tokens("t", [2, 0], [1, 0], rows, FP16)
    assert tie.ok and "1/2 near-ties" in tie.detail
    wrong = near_tie_tokens("t", [1, 2], [1, 0], rows, FP16)
    assert not wrong.ok and "token 1" in wrong.detail


def test_bad_dtype_is_one_line(capsys, tmp_path):
    assert export_main(["--model", "demo", "--out", str(tmp_path / "x"), "--dtype", "bfloat16"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nuwa-export: error: ") and "--dtype" in err[0]
    assert not (tmp_path / "x").exists()
