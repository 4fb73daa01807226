"""vision.onnx: contents, ORT vs the reference, the custom node with and without its body."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from nuwa_export import manifest as mf
from nuwa_export.constants import OP_DOMAIN, OP_NAME
from nuwa_export.export import ops
from nuwa_export.export.pipeline import export
from nuwa_export.export.validate import ort_session
from nuwa_export.pruning import BudgetRequest
from nuwa_export.runtime.runner import open_runner


def _swarm_nodes(model):
    return [n for n in model.graph.node if (n.domain, n.op_type) == (OP_DOMAIN, OP_NAME)]


def test_export_directory(demo_export):
    m = mf.read(demo_export)
    assert {"vision.onnx", "vision.plugin.onnx", "llm_prefix.onnx", "llm_suffix.onnx", "embeddings.safetensors",
            "tokenizer/tokenizer.json", "preprocessor_config.json", "trtexec.sh"} <= set(m.files)
    assert (m.budgets.keep, m.budgets.stage_one_keep, m.budgets.stage_two_keep, m.budgets.stage_two_layer) == (28, 49, 7, 2)
    assert m.grid == [16, 16] and m.num_patches == 256 and m.preprocessing["pad"] == "square-mean"
    v = m.graphs["vision"]
    assert [(t.name, t.dtype, t.shape) for t in v.inputs] == [("pixel_values", "float32", ["batch", 3, 224, 224])]
    assert [(t.name, t.dtype, t.shape) for t in v.outputs] == [
        ("image_tokens", "float32", ["batch", 49, 128]),
        ("patch_indices", "int64", ["batch", 49]),
    ]
    assert m.validation["vision"]["batch"] == 3 and m.validation["vision"]["image_tokens"]["max_abs"] < 1e-4
    assert set(m.model.weights) == {"model.safetensors"} and m.opset == 18
    assert {"torch", "transformers", "onnx"} <= set(m.versions)


def test_graph_has_one_swarm_node_with_body_and_plugin_variant_without(demo_export, demo_dir):
    full = onnx.load(demo_export / "vision.onnx")
    plugin = onnx.load(demo_export / "vision.plugin.onnx")
    for model in (full, plugin):
        (node,) = _swarm_nodes(model)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs == {"grid": [16, 16], "distance": 280.0, "percentile": pytest.approx(0.55), "self_weight": 1}
        ops.register_schema()
        onnx.checker.check_model(model, full_check=True)
    assert [(f.domain, f.name) for f in full.functions] == [(OP_DOMAIN, OP_NAME)]
    assert not plugin.functions
    # nothing else in the graph is custom, and no eager attention maps: one Softmax per CLIP layer
    # (all 1 + N queries, the tower's own attention) plus the one CLS row (a single query)
    assert {n.domain for n in full.graph.node} <= {"", OP_DOMAIN}
    vision = json.loads((demo_dir / "config.json").read_text())["vision_config"]
    queries = 1 + (vision["image_size"] // vision["patch_size"]) ** 2
    for model in (full, plugin):
        typed = onnx.shape_inference.infer_shapes(model)
        shapes = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim] for v in typed.graph.value_info}
        softmax = [shapes[n.input[0]] for n in model.graph.node if n.op_type == "Softmax"]
        assert sorted(s[2] for s in softmax) == [1] + [queries] * vision["num_hidden_layers"], softmax
        assert all(s[1] == vision["num_attention_heads"] for s in softmax), softmax  # [B, heads, queries, keys]
    # round trip: stripping then attaching the body gives the original bytes back
    assert ops.attach_function(plugin).SerializeToString() == full.SerializeToString()


def test_plugin_variant_needs_the_plugin(demo_export):
    with pytest.raises(Exception, match="not a registered function/op"):
        ort_session(demo_export / "vision.plugin.onnx")


@pytest.mark.parametrize("batch", [1, 4])
def test_ort_matches_reference_at_other_batches(demo_export, loaded_demo, batch):
    ref = open_runner(loaded_demo)
    g = torch.Generator().manual_seed(batch)
    pixels = torch.randn(batch, 3, 224, 224, generator=g)
    pixels[0] = ref.pixel_values(loaded_demo.path / "example.png")[0]
    tokens, idx = ort_session(demo_export / "vision.onnx").run(None, {"pixel_values": pixels.numpy()})
    want = ref.vision(pixels)
    np.testing.assert_array_equal(idx, want.indices.numpy())
    np.testing.assert_allclose(tokens, want.tokens.numpy(), atol=1e-4, rtol=1e-4)


def test_function_body_reads_its_attributes(demo_export, loaded_demo, tmp_path):
    """Editing the node's percentile changes the merge exactly as the torch op does."""
    model = onnx.load(demo_export / "vision.onnx")
    (node,) = _swarm_nodes(model)
    for a in node.attribute:
        if a.name == "percentile":
            a.f = 0.0  # every anchor is a pillar: tokens are the projected raw features
    onnx.save(model, tmp_path / "edited.onnx")
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, 3, 224, 224, generator=g)
    edited, idx = ort_session(tmp_path / "edited.onnx").run(None, {"pixel_values": pixels.numpy()})
    original, _ = ort_session(demo_export / "vision.onnx").run(None, {"pixel_values": pixels.numpy()})
    assert not np.allclose(edited, original, atol=1e-3)
    ref = open_runner(loaded_demo, budgets=BudgetRequest(distance=280.0, percentile=0.0))
    np.testing.assert_allclose(edited, ref.vision(pixels).tokens.numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("ties", [False, True])
def test_op_body_equals_torch_op(ties, tmp_path):
    """The standard-op body of nuwa::SwarmAggregate vs the torch implementation, directly."""
    from onnx import TensorProto, helper

    node = helper.make_node(
        OP_NAME, ["features", "sim", "indices", "scores"], ["tokens"], domain=OP_DOMAIN,
        grid=[8, 8], distance=20.0, percentile=0.4,
    )
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    graph = helper.make_graph(
        [node], "op",
        [helper.make_tensor_value_info("features", f32, ["B", 64, 8]), helper.make_tensor_value_info("sim", f32, ["B", 64, 5]),
         helper.make_tensor_value_info("indices", i64, ["B", 10]), helper.make_tensor_value_info("scores", f32, ["B", 10])],
        [helper.make_tensor_value_info("tokens", f32, ["B", 10, 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(OP_DOMAIN, 1)])
    ops.attach_function(model)
    onnx.save(model, tmp_path / "op.onnx")
    g = torch.Generator().manual_seed(1)
    feats, sim = torch.randn(3, 64, 8, generator=g), torch.randn(3, 64, 5, generator=g)
    idx = torch.stack([torch.randperm(64, generator=g)[:10].sort().values for _ in range(3)])
    scores = torch.rand(3, 10, generator=g)
    if ties:
        scores = torch.floor(scores * 3) / 3
    got = ort_session(tmp_path / "op.onnx").run(None, {"features": feats.numpy(), "sim": sim.numpy(), "indices": idx.numpy(), "scores": scores.numpy()})[0]
    want = ops.swarm_aggregate(feats, sim, idx, scores, [8, 8], 20.0, 0.4)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=1e-5)


def test_export_with_other_budgets_and_options(demo_dir, loaded_demo, tmp_path):
    m = export(str(demo_dir), tmp_path / "k64", keep=64, per_region=2, distance=50, percentile=0.3, progress=False, ort_graphs=False)
    assert (m.budgets.stage_one_keep, m.budgets.per_region, m.budgets.distance) == (112, 2, 50.0)
    ref = open_runner(loaded_demo, budgets=BudgetRequest(keep=64, per_region=2, distance=50.0, percentile=0.3))
    px = ref.pixel_values(demo_dir / "example.png")
    tokens, idx = ort_session(tmp_path / "k64" / "vision.onnx").run(None, {"pixel_values": px.numpy()})
    want = ref.vision(px)
    np.testing.assert_array_equal(idx, want.indices.numpy())
    np.testing.assert_allclose(tokens, want.tokens.numpy(), atol=1e-4, rtol=1e-4)


def test_export_without_pruning(demo_dir, tmp_path):
    m = export(str(demo_dir), tmp_path / "full", prune=False, progress=False, ort_graphs=False)
    model = onnx.load(tmp_path / "full" / "vision.onnx")
    assert not _swarm_nodes(model) and not model.functions
    assert m.graphs["vision"].outputs[0].shape == ["batch", 256, 128]


def test_export_is_deterministic(demo_dir, demo_export, tmp_path):
    """Another process exports the same bytes: nothing of the process (object addresses the
    exporter writes into node metadata, say) reaches an export."""
    import subprocess

    from tests.helpers import BIN

    done = subprocess.run([str(BIN / "nuwa-export"), "--model", str(demo_dir), "--out", str(tmp_path / "again")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    first, again = mf.read(demo_export), mf.read(tmp_path / "again")
    assert again.files == first.files  # every file, byte for byte (sha256)
    assert b" at 0x" not in (tmp_path / "again" / "llm_prefix.ort.onnx").read_bytes()


def test_exported_graphs_carry_no_local_source_paths(demo_export):
    """The exporter's per-node stack traces name this machine's files: they are dropped, so an
    export's bytes do not depend on where nuwa-export is installed."""
    import nuwa_export
    from nuwa_export.names import STACK_TRACE_KEY

    root = str(Path(nuwa_export.__file__).resolve().parent.parent).encode()
    for name in ("vision.onnx", "vision.plugin.onnx", "llm_prefix.onnx", "llm_suffix.onnx"):
        model = onnx.load(demo_export / name, load_external_data=False)
        assert not [p for n in model.graph.node for p in n.metadata_props if p.key == STACK_TRACE_KEY], name
        assert any(n.metadata_props for n in model.graph.node), name  # the rest of the metadata stays
        assert root not in (demo_export / name).read_bytes(), name
