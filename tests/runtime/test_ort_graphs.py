"""The ONNX Runtime LLM graphs (``llm_*.ort.onnx``): each layer's attention and KV update one
``GroupQueryAttention`` node over buffers updated in place; validated at export like the standard
graphs, run by the ort backend when present; the standard graphs stay for TensorRT."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from nuwa_export import manifest as mf
from nuwa_export.errors import NuwaError
from nuwa_export.generation import Request
from nuwa_export.names import MANIFEST
from nuwa_export.runtime.kv import KVBuffers
from nuwa_export.runtime.runner import open_runner
from nuwa_export.sampling import SamplingConfig
from tests.generation.test_batched_generation import assert_rows_as_alone, mixed_requests
from tests.helpers import BIN, assert_one_line, noise_picture, rehash


def _ops(path: Path) -> Counter:
    return Counter((n.domain, n.op_type) for n in onnx.load(str(path), load_external_data=False).graph.node)


def test_ort_graphs_fuse_attention_and_the_standard_graphs_stay_standard(demo_export):
    m = mf.read(demo_export)
    layer, n = m.budgets.stage_two_layer, m.llm.num_layers
    assert {g: s.file for g, s in m.ort_graphs.items()} == {"llm_prefix": "llm_prefix.ort.onnx", "llm_suffix": "llm_suffix.ort.onnx"}
    gqa = ("com.microsoft", "GroupQueryAttention")
    for graph, layers in (("llm_prefix", layer), ("llm_suffix", n - layer)):
        ort, std = _ops(demo_export / m.ort_graphs[graph].file), _ops(demo_export / m.graphs[graph].file)
        stage_two = 1 if graph == "llm_prefix" else 0  # the stage-two row's own softmax
        assert ort[gqa] == layers and ort[("", "Softmax")] == stage_two
        assert std[gqa] == 0 and std[("", "Softmax")] == layers + stage_two
        assert not any(domain == "com.microsoft" for domain, _ in std)  # TensorRT builds these
    inputs = [t.name for t in m.ort_graphs["llm_prefix"].inputs]
    assert inputs[:4] == ["inputs_embeds", "position_ids", "vision_start", "attention_mask"] and "pad_lengths" not in inputs


def test_export_validates_both_graph_pairs_alone_and_batched(demo_export):
    v = mf.read(demo_export).validation
    for key, files in (("pipeline", "llm_prefix.onnx, llm_suffix.onnx"), ("pipeline_ort", "llm_prefix.ort.onnx, llm_suffix.ort.onnx")):
        assert v[key]["graphs"] == files
        stages = {c["stage"]: c for c in v[key]["checks"]}
        assert all(c["ok"] for c in stages.values())
        for row in (0, 1):
            assert stages[f"generated ids (batch of 2, row {row})"]["detail"] == "identical"
            assert stages[f"stage-two indices (batch of 2, row {row})"]["detail"] == "identical"
        assert stages["generated ids (8)"]["detail"] == "identical"


def test_both_graph_pairs_give_the_same_answers_batched_and_alone(demo_export):
    from nuwa_export.models.demo import example_picture

    requests = mixed_requests(example_picture(), noise_picture(4))
    answers = {}
    for graphs in ("ort", "standard"):
        pipeline = open_runner(demo_export, backend="ort", device="cpu", llm_graphs=graphs)
        assert pipeline.backend.in_place == (graphs == "ort")
        assert_rows_as_alone(pipeline, requests, batch_size=4)
        answers[graphs] = [(r.stage_one_indices, r.stage_two_indices, r.generated_ids) for r in pipeline.generate_batch(requests, 4)]
    assert answers["ort"] == answers["standard"]
    assert open_runner(demo_export, backend="ort", device="cpu").backend.in_place  # what the ort backend runs by default


def test_a_broken_ort_graph_fails_validation_and_the_standard_pair_still_passes(demo_export, tmp_path):
    """Export validation runs on the ONNX Runtime graphs too: a wrong attention scale in them is caught."""
    from nuwa_export.export.pipeline import record_validation, validate
    from nuwa_export.runtime.runner import reference_for_export

    broken = tmp_path / "broken"
    shutil.copytree(demo_export, broken)
    path = broken / "llm_suffix.ort.onnx"
    model = onnx.load(str(path))
    node = next(n for n in model.graph.node if n.op_type == "GroupQueryAttention")
    scale = next(a for a in node.attribute if a.name == "scale")
    scale.f *= 3.0
    onnx.save(model, str(path))
    rehash(broken)
    expected = record_validation(reference_for_export(demo_export, mf.read(demo_export), "cpu", "float32"))
    with pytest.raises(NuwaError, match=r"validation failed: .* on llm_prefix\.ort\.onnx, llm_suffix\.ort\.onnx"):
        validate(broken, expected)
    shutil.copyfile(demo_export / "llm_suffix.ort.onnx", path)
    rehash(broken)
    assert validate(broken, expected)["pipeline_ort"]["checks"]


def test_export_without_ort_graphs(demo_dir, tmp_path):
    out = tmp_path / "exp"
    r = subprocess.run([str(BIN / "nuwa-export"), "--model", str(demo_dir), "--out", str(out), "--no-ort-graphs"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    m = mf.read(out)
    assert m.ort_graphs == {} and "ort_graphs" not in json.loads((out / MANIFEST).read_text())
    assert not list(out.glob("*.ort.onnx")) and "pipeline_ort" not in m.validation
    assert not open_runner(out, backend="ort", device="cpu").backend.in_place  # the standard graphs
    with pytest.raises(NuwaError, match="has no ONNX Runtime LLM graphs"):
        open_runner(out, backend="ort", device="cpu", llm_graphs="ort")
    code = subprocess.run([str(BIN / "nuwa-run"), str(out), "--prompt", "Hi", "--max-new-tokens", "2"], capture_output=True, text=True)
    assert code.returncode == 0, code.stderr


def test_in_place_buffers_grow_when_a_caller_reserved_too_little(demo_export):
    """The core reserves prompt + tokens to generate; a caller that reserves less still gets
    correct steps (the buffers grow, keeping their entries)."""
    from nuwa_export import generation
    from nuwa_export.generation.core import layouts, vision
    from nuwa_export.models.demo import example_picture

    pipeline = open_runner(demo_export, backend="ort", device="cpu")
    stages = pipeline.stages()
    want = pipeline.generate(example_picture(), "Hi", SamplingConfig(max_new_tokens=6, stop_at_eos=False)).generated_ids
    batch = layouts(stages, [Request(example_picture(), "Hi")])
    tokens, indices = vision(stages, [Request(example_picture(), "Hi")], stages.clock())
    pre = generation.prefill(stages, batch, tokens, indices, stages.clock(), extra=0)  # no room for decode entries
    assert pre.kv.prefix.capacity == pre.kv.prefix.length
    live = generation.Live(batch, pre.kv, pre.vision_start, pre.pad)
    got = [int(pre.logits[0].argmax())]
    for i in range(5):
        got.append(int(generation.step(stages, live, [got[-1]], i)[0].argmax()))
    assert got == want and live.kv.prefix.capacity >= live.kv.prefix.length == pre.kv.prefix.length


def test_kv_buffers():
    a = [torch.arange(2 * 3 * 4 * 2, dtype=torch.float32).view(2, 3, 4, 2) for _ in range(2)]
    kv = KVBuffers(a, 3)
    assert kv.capacity == 4 and kv.nbytes() == 2 * (2 * 3 * 3 * 2 * 4)
    assert kv.reserve(1) is kv
    grown = kv.reserve(2)
    assert grown is not kv and grown.capacity == 8 and grown.length == 3
    assert torch.equal(grown.tensors[0][:, :, :3], a[0][:, :, :3])
    mask = kv.attention_mask(torch.tensor([0, 2]), 1)
    assert mask.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]
    taken = kv.take(torch.tensor([1]))
    assert taken.length == 3 and torch.equal(taken.tensors[1], a[1][1:])


def test_fused_op_matches_its_own_definition():
    """The torch op the exporter maps to GroupQueryAttention is plain causal attention over the
    buffers' first T entries plus the bias, with the new entries written at [T - S, T)."""
    from nuwa_export.export import fused

    g = torch.Generator().manual_seed(0)
    b, s, h, kv, hd, cap, t = 2, 3, 4, 2, 8, 10, 7
    q, k, v = (torch.randn(b, s, n * hd, generator=g) for n in (h, kv, kv))
    pk, pv = torch.randn(b, kv, cap, hd, generator=g), torch.randn(b, kv, cap, hd, generator=g)
    bias = torch.zeros(b, 1, s, t)
    bias[1, :, :, :2] = torch.finfo(torch.float32).min  # row 1: two padding entries
    out, nk, nv = fused.group_query_attention(q, k, v, pk, pv, torch.full((b,), t - 1, dtype=torch.int32), torch.tensor(t, dtype=torch.int32), bias, h, kv, 0.5)
    assert torch.equal(nk[:, :, : t - s], pk[:, :, : t - s]) and torch.equal(nk[:, :, t - s : t], k.view(b, s, kv, hd).transpose(1, 2))
    keys = nk[:, :, :t].repeat_interleave(h // kv, 1)
    vals = nv[:, :, :t].repeat_interleave(h // kv, 1)
    scores = q.view(b, s, h, hd).transpose(1, 2) @ keys.transpose(2, 3) * 0.5 + bias
    scores = scores + torch.triu(torch.full((s, t), float("-inf")), diagonal=t - s + 1)
    want = (scores.softmax(-1) @ vals).transpose(1, 2).reshape(b, s, h * hd)
    assert torch.allclose(out, want, atol=1e-6)
    assert np.isfinite(out.numpy()).all()


def test_ort_graphs_refused_when_they_do_not_match_the_manifest(demo_export, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(demo_export, bad)
    m = json.loads((bad / MANIFEST).read_text())
    m["ort_graphs"]["llm_prefix"]["file"] = "llm_prefix.onnx"  # the standard graph under the ORT name
    (bad / MANIFEST).write_text(json.dumps(m))
    r = subprocess.run([str(BIN / "nuwa-run"), str(bad), "--prompt", "Hi"], capture_output=True, text=True)
    assert_one_line("nuwa-run", r.returncode, r.stderr, "manifest.json ort_graphs.llm_prefix describes another graph")


def test_bad_llm_graph_choices_and_contracts_are_refused(demo_export):
    from nuwa_export.runtime.backend import output_specs
    from nuwa_export.runtime.ort_backend import OrtBackend

    m = mf.read(demo_export)
    with pytest.raises(NuwaError, match="unknown LLM graphs 'fused' \\(choose from auto, ort, standard\\)"):
        OrtBackend(demo_export, m, "cpu", llm_graphs="fused")
    llm = m.llm
    shapes = {"inputs_embeds": (1, 2, llm.hidden_size), "position_ids": (1, 2), "vision_start": (1,), **{n: (1, llm.num_kv_heads, 8, llm.head_dim) for n in
                                                         [f"past_{w}_{i}" for i in range(m.budgets.stage_two_layer) for w in ("key", "value")]}}
    got = output_specs(m, "llm_prefix", {**shapes, "attention_mask": (1, 5)}, in_place=True)
    assert got[1].shape == (1, llm.num_kv_heads, 8, llm.head_dim)  # the buffers' capacity, not P + S
    with pytest.raises(NuwaError, match="an attention_mask of \\[1, 9\\] over KV buffers of 8 entries for 2 new tokens"):
        output_specs(m, "llm_prefix", {**shapes, "attention_mask": (1, 9)}, in_place=True)  # more entries than the buffers hold


def test_ort_graphs_missing_from_the_manifest_is_refused(demo_export, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(demo_export, bad)
    m = json.loads((bad / MANIFEST).read_text())
    del m["ort_graphs"]["llm_suffix"]
    (bad / MANIFEST).write_text(json.dumps(m))
    r = subprocess.run([str(BIN / "nuwa-run"), str(bad), "--prompt", "Hi"], capture_output=True, text=True)
    assert_one_line("nuwa-run", r.returncode, r.stderr, "ort_graphs.llm_suffix is missing")
