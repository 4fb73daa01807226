"""``nuwa-verify --layerwise``: every decoder layer of the exported LLM graphs against the PyTorch
reference with polygraphy's comparator; a deliberately corrupted layer is named first."""

from __future__ import annotations

import ast
import json
import shutil

import onnx
import pytest
from onnx import numpy_helper

from nuwa_export import manifest as mf
from nuwa_export.names import SCOPE_KEY
from nuwa_export.tools.verify import main as verify_main
from nuwa_export.verify.layerwise import layer_tensors
from tests.helpers import rehash

pytest.importorskip("polygraphy")


def _corrupt(path, layer: int, module: str = "mlp.down_proj", factor: float = 1.05) -> None:
    """Scale the weight of ``stack.layers.<layer>.<module>``'s MatMul (graph-local layer index)."""
    model = onnx.load(str(path))
    scope = f"stack.layers.{layer}.{module}"
    node = next(n for n in model.graph.node if n.op_type == "MatMul" and any(
        p.key == SCOPE_KEY and scope in ast.literal_eval(p.value) for p in n.metadata_props))
    init = next(t for t in model.graph.initializer if t.name in node.input)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * factor, init.name))
    onnx.save(model, str(path))


def test_every_layer_of_a_good_export_passes(demo_export, capsys):
    assert verify_main([str(demo_export), "--layerwise", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    m = mf.read(demo_export)
    assert report["ok"] and report["first_failing_layer"] is None
    assert [c["layer"] for c in report["layers"]] == list(range(m.llm.num_layers)) * 2  # the standard pair, then the ONNX Runtime pair
    assert all(c["max_abs"] < 1e-4 for c in report["layers"])
    assert {c["graph"] for c in report["layers"]} == {"llm_prefix.onnx", "llm_suffix.onnx", "llm_prefix.ort.onnx", "llm_suffix.ort.onnx"}


@pytest.mark.parametrize("file,local,layer", [("llm_prefix.onnx", 1, 1), ("llm_suffix.onnx", 1, 3), ("llm_suffix.ort.onnx", 0, 2)])
def test_a_corrupted_layer_is_named_first(demo_export, tmp_path, capsys, file, local, layer):
    d = tmp_path / "bad"
    shutil.copytree(demo_export, d)
    _corrupt(d / file, local)
    rehash(d)
    assert verify_main([str(d), "--layerwise", "--json"]) == 1
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["first_failing_layer"] == layer
    assert all(c["ok"] for c in report["layers"] if c["layer"] < layer)  # teacher forcing: earlier layers untouched
    assert {c["graph"] for c in report["layers"] if not c["ok"]} == {file}  # the other graphs pass
    assert err.strip() == f"nuwa-verify: error: decoder layer {layer} ({file}) differs from the reference"
    # the table names it too
    assert verify_main([str(d), "--layerwise"]) == 1
    assert f"first layer beyond tolerance: layer {layer} ({file}" in capsys.readouterr().out


def test_qwen_export_passes_layerwise(qwen_export_factory, capsys):
    """M-RoPE and grouped KV heads: the layers are found in both graphs and all pass."""
    d = qwen_export_factory()
    m = mf.read(d)
    prefix = layer_tensors(onnx.load(str(d / m.graphs["llm_prefix"].file), load_external_data=False))
    suffix = layer_tensors(onnx.load(str(d / m.graphs["llm_suffix"].file), load_external_data=False))
    assert sorted(prefix) == list(range(m.budgets.stage_two_layer))
    assert sorted(suffix) == list(range(m.llm.num_layers - m.budgets.stage_two_layer))
    assert verify_main([str(d), "--layerwise", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"]


def test_without_polygraphy_it_is_one_line(demo_export):
    import subprocess
    import sys

    from tests.export.test_export_cli import BLOCK

    code = BLOCK.replace("('onnxruntime', 'tensorrt', 'tensorrt_rtx')", "('polygraphy',)") + (
        f"from nuwa_export.tools.verify import main as verify_main; sys.exit(verify_main([{str(demo_export)!r}, '--layerwise']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == ["nuwa-verify: error: --layerwise needs polygraphy: pip install polygraphy"]
