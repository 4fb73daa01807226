"""nuwa-quantize on the demo export: every precision quantizes, validates, builds with TensorRT for
RTX, runs and verifies; the manifest records precision and lineage; refusals are one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from nuwa_export import manifest as mf
from nuwa_export.errors import NuwaError
from nuwa_export.names import MANIFEST
from nuwa_export.precision import Precision
from nuwa_export.quant import PRECISIONS
from nuwa_export.runtime.exports import read_export
from nuwa_export.tools.build import main as build_main
from nuwa_export.tools.quantize import main as quantize_main
from nuwa_export.tools.run import main as run_main
from nuwa_export.tools.verify import main as verify_main

pytest.importorskip("modelopt.onnx.quantization", reason="nvidia-modelopt not installed (pip install -e '.[quantize]')")
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_each_precision_is_validated_and_recorded(quantized_factory, demo_export, precision):
    out = quantized_factory(precision)
    m = read_export(out)  # every file hashed, graphs checked against the manifest
    q = m.quantization
    assert m.precision == Precision.of(precision, "float32") and q.method == PRECISIONS[precision][1]
    assert q.block_size == (128 if precision.startswith("int4") else None)  # the demo's 128 / 256-wide weights
    assert set(q.graphs) == {"llm_prefix", "llm_suffix"} and "vision" not in q.graphs
    source = mf.read(demo_export)
    assert q.source_manifest_sha256 == mf.sha256_file(demo_export / MANIFEST)
    for graph in ("llm_prefix", "llm_suffix"):
        assert q.graphs[graph].source_sha256 == source.files[source.graphs[graph].file].sha256
        model = onnx.load(str(out / m.graphs[graph].file), load_external_data=False)
        ops = {n.op_type for n in model.graph.node}
        assert "DequantizeLinear" in ops
        assert q.graphs[graph].opset == next(o.version for o in model.opset_import if o.domain == "")
        assert m.graphs[graph].inputs == source.graphs[graph].inputs  # same I/O contract: the runtime is unchanged
        assert m.graphs[graph].outputs == source.graphs[graph].outputs
    assert (out / "vision.onnx").read_bytes() == (demo_export / "vision.onnx").read_bytes()
    assert m.ort_graphs == {} and not any(n.endswith(".ort.onnx") for n in m.files)
    assert not (out / ".work").exists()
    assert q.calibration["set"] == "default" and q.calibration["requests"] == 8 and q.calibration["sha256"]
    awq = precision == "int4-awq"
    assert q.calibration["batches"] == 1 and q.calibration["runs"] == dict.fromkeys(("llm_prefix", "llm_suffix"), 1 if awq else 2)
    assert q.tools["nvidia-modelopt"]
    v = m.validation["quantized"]
    assert v["policy"] == q.policy and all(c["ok"] for c in v["checks"]) and len(v["requests"]) == 8
    assert "--stronglyTyped" in (out / "trtexec.sh").read_text()


@pytest.mark.trt_rtx
@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_quantized_export_builds_runs_and_verifies(quantized_factory, precision, tmp_path, capsys):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX not installed (pip install tensorrt-rtx-cu13)")
    out = tmp_path / "q"
    shutil.copytree(quantized_factory(precision), out)
    assert build_main([str(out), "--builder", "tensorrt-rtx"]) == 0
    sidecars = {p.name: json.loads(p.read_text()) for p in (out / "engines").glob("*.json")}
    assert {s["graph"]: s["precision"] for s in sidecars.values()} == {"vision": "fp32", "llm_prefix": precision, "llm_suffix": precision}
    capsys.readouterr()
    assert run_main([str(out), "--prompt", "What is in the picture?", "--max-new-tokens", "4", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["generated_ids"]) == 4
    assert verify_main([str(out), "--json", "--max-new-tokens", "8"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["quantized"] == precision
    stages = [c["stage"] for c in report["backends"]["ort-cpu"]]
    assert any(s.startswith("logits, teacher-forced: cosine") for s in stages) and "stage-two indices: overlap (mean)" in stages


def test_qwen_export_quantizes(qwen_export_factory, tmp_path):
    from nuwa_export.quant.quantize import quantize

    m = quantize(qwen_export_factory(), tmp_path / "q", "int4-awq", progress=False)
    assert m.family == "qwen2_5_vl" and all(c["ok"] for c in m.validation["quantized"]["checks"])


def test_calibration_tensors_come_from_one_batch_of_the_real_pipeline(demo_export, tmp_path):
    import numpy as np

    from nuwa_export.quant import calib

    m = mf.read(demo_export)
    s = calib.load_set("default")
    store, records = calib.calibrate(demo_export, m, s, tmp_path, decode_steps=2, tokens=3, one_batch=True)
    assert [len(store.files[g]) for g in calib.LLM_GRAPHS] == [3, 3] and store.batches == 1  # prefill + 2 decode steps
    prefill = store.reader("llm_prefix", prefill_only=True).get_first()
    assert set(prefill) == {t.name for t in m.graphs["llm_prefix"].inputs}
    n = len(s.entries)
    assert prefill["inputs_embeds"].shape[0] == n and prefill["pad_lengths"].min() == 0 < prefill["pad_lengths"].max()
    suffix = store.reader("llm_suffix").get_first()
    assert suffix["hidden_states"].shape[:2] == (n, prefill["inputs_embeds"].shape[1] - m.budgets.stage_one_keep + m.budgets.stage_two_keep)
    step = list(store.reader("llm_prefix"))[1]
    assert step["inputs_embeds"].shape[:2] == (n, 1) and step["past_key_0"].shape[2] == prefill["inputs_embeds"].shape[1]
    assert len(records) == n and all(len(r.generated_ids) == 3 for r in records)
    assert not np.array_equal(records[0].split_hidden, records[1].split_hidden[:, : records[0].split_hidden.shape[1]])


def test_calibration_batches_follow_max_batch(demo_export, tmp_path):
    """int8 / fp8 calibrate in batches of the export's max_batch (its TensorRT profiles' bound);
    AWQ lifts it for one batch of every request (ONNX Runtime's graphs take any batch)."""
    from dataclasses import replace

    from nuwa_export.quant import calib

    s = calib.load_set("default")
    small = replace(s, entries=s.entries[:5])
    m = replace(mf.read(demo_export), max_batch=2)
    store, _ = calib.calibrate(demo_export, m, small, tmp_path / "a", decode_steps=1, tokens=1)
    assert store.batches == 3 and [len(store.reader("llm_prefix", prefill_only=True)), len(store.reader("llm_prefix"))] == [3, 6]
    assert [f.get_first()["inputs_embeds"].shape[0] for f in (calib.FeedReader([p]) for p in store.prefills["llm_prefix"])] == [2, 2, 1]
    store, _ = calib.calibrate(demo_export, m, small, tmp_path / "b", decode_steps=0, tokens=1, one_batch=True)
    assert store.batches == 1 and store.reader("llm_prefix").get_first()["inputs_embeds"].shape[0] == 5


def test_validation_failure_leaves_nothing(demo_export, tmp_path, monkeypatch, capsys):
    from nuwa_export.verify import quantized as policy

    monkeypatch.setitem(policy.POLICIES, "int4-rtn", policy.QuantPolicy("int4-rtn", 0.9999, 0.9999, 1.0, 1.0, 0.0))
    out = tmp_path / "q"
    assert quantize_main([str(demo_export), "--precision", "int4-rtn", "--out", str(out)]) == 1
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if "error" in ln]
    assert len(err) == 1 and err[0].startswith("nuwa-quantize: error: validation failed: hidden at split: cosine")
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["--precision", "int3"], "argument --precision: invalid choice"),
        (["--precision", "int8", "--calib", "nosuchset"], "no calibration set named 'nosuchset'"),
        (["--precision", "int8", "--decode-steps", "-1"], "--decode-steps must be >= 0"),
    ],
)
def test_bad_arguments_are_one_line(demo_export, tmp_path, capsys, args, message):
    assert quantize_main([str(demo_export), "--out", str(tmp_path / "q"), *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "q").exists()


def test_refuses_a_quantized_source_and_its_own_directory(quantized_factory, demo_export, tmp_path, capsys):
    src = quantized_factory("int8")
    assert quantize_main([str(src), "--precision", "int8", "--out", str(tmp_path / "q")]) == 1
    assert "is already quantized (int8); quantize the float export it came from" in capsys.readouterr().err
    for out in (demo_export, demo_export.parent, demo_export / "inside"):
        assert quantize_main([str(demo_export), "--precision", "int8", "--out", str(out), "--force"]) == 1
        assert "would replace, hold or sit inside the export being quantized" in capsys.readouterr().err
    assert demo_export.is_dir() and not (demo_export / "inside").exists()


def test_without_modelopt_one_line_names_the_extra(demo_export, tmp_path, monkeypatch, capsys):
    import builtins

    real = builtins.__import__

    def no_modelopt(name, *a, **k):
        if name.startswith("modelopt"):
            raise ImportError(f"No module named '{name}'", name=name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_modelopt)
    assert quantize_main([str(demo_export), "--precision", "int8", "--out", str(tmp_path / "q")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install -e ".[quantize]"' in err[0]


def test_build_precision_rules():
    from nuwa_export.build.builder import choose_precision
    from nuwa_export.build.targets import target

    with pytest.raises(NuwaError, match="quantized to int8 .*--precision fp16 needs the float export"):
        choose_precision("fp16", target("datacenter"), True, "float32", "tensorrt-rtx", quantized="int8")
    with pytest.raises(NuwaError, match="--precision int8 needs a quantized export: nuwa-quantize"):
        choose_precision("int8", target("datacenter"), False, "float32", "tensorrt")
    with pytest.raises(NuwaError, match="fp8 engines do not run on the orin profile"):
        choose_precision(None, target("orin"), True, "float32", "tensorrt-rtx", quantized="fp8")
    assert choose_precision(None, target("orin"), True, "float32", "tensorrt-rtx", quantized="int4-awq")[0] == "int4-awq"


def test_manifest_refuses_quantized_export_with_ort_graphs(quantized_factory, demo_export, tmp_path):
    from tests.helpers import rehash

    out = tmp_path / "q"
    shutil.copytree(quantized_factory("int8"), out)
    data = json.loads((out / MANIFEST).read_text())
    data["ort_graphs"] = json.loads((demo_export / MANIFEST).read_text())["ort_graphs"]
    for g in data["ort_graphs"].values():
        shutil.copyfile(demo_export / g["file"], out / g["file"])
        data["files"][g["file"]] = {"sha256": "", "size": 0}
    (out / MANIFEST).write_text(json.dumps(data))
    rehash(out)
    with pytest.raises(NuwaError, match="a quantized export lists ort_graphs"):
        read_export(out)


def _break_layer(path, layer: int, module: str = "mlp.down_proj", factor: float = 2.0) -> None:
    """Scale the DequantizeLinear scale of the weight of ``stack.layers.<layer>.<module>``'s MatMul
    (graph-local index; the scope metadata nuwa-quantize put back finds it)."""
    import ast

    from onnx import numpy_helper

    from nuwa_export.names import SCOPE_KEY

    model = onnx.load(str(path))
    made_by = {o: n for n in model.graph.node for o in n.output}
    matmul = next(n for n in model.graph.node if n.op_type == "MatMul" and any(
        p.key == SCOPE_KEY and f"stack.layers.{layer}.{module}" in ast.literal_eval(p.value) for p in n.metadata_props))
    dq = next(made_by[i] for i in matmul.input if i in made_by and made_by[i].op_type == "DequantizeLinear")
    scale = next(t for t in model.graph.initializer if t.name == dq.input[1])
    model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(scale) * np.float32(factor), scale.name + "_broken"))
    dq.input[1] = scale.name + "_broken"
    onnx.save(model, str(path))


@pytest.mark.parametrize("precision", ["int8", "int4-awq"])
def test_layerwise_on_quantized_graphs(quantized_factory, precision, capsys):
    pytest.importorskip("polygraphy")
    assert verify_main([str(quantized_factory(precision)), "--layerwise", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["policy"] == precision and [c["layer"] for c in report["layers"]] == [0, 1, 2, 3]
    assert all(c["cosine"] >= c["min_cosine"] > 0.9 for c in report["layers"])


@pytest.mark.parametrize("file, local, layer", [("llm_prefix.onnx", 1, 1), ("llm_suffix.onnx", 1, 3)])
def test_layerwise_names_a_broken_quantized_layer(quantized_factory, tmp_path, capsys, file, local, layer):
    pytest.importorskip("polygraphy")
    from tests.helpers import rehash

    out = tmp_path / "q"
    shutil.copytree(quantized_factory("int8"), out)
    _break_layer(out / file, local)
    rehash(out)
    assert verify_main([str(out), "--layerwise", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["first_failing_layer"] == layer
    assert all(c["ok"] for c in report["layers"] if c["layer"] < layer)


@pytest.mark.parametrize("k, block", [((4096, 11008), 128), ((1024, 2752), 64), ((128, 344), 8)])
def test_int4_block_size_is_whole_blocks_for_tensorrt(tmp_path, k, block):
    """TensorRT refuses a DequantizeLinear whose blocks do not tile the weight's input dimension
    (measured: 2752 with blocks of 128); the largest block that fits is used, or one line."""
    from onnx import TensorProto, helper

    from nuwa_export.quant.quantize import int4_block

    nodes, inits, prev = [], [], "x"
    for i, d in enumerate(k):
        inits.append(helper.make_tensor(f"w{i}", TensorProto.FLOAT, [d, 8], [0.0] * (d * 8)))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"y{i}"]))
        prev = f"y{i}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k[0]])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 8])], inits)
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph), str(path))
    if block >= 16:
        assert int4_block([path]) == block
    else:
        with pytest.raises(NuwaError, match="multiple of 16"):
            int4_block([path])


@pytest.mark.trt_rtx
def test_float16_export_quantizes_keeping_float16_io(demo_dir, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX not installed (pip install tensorrt-rtx-cu13)")
    from nuwa_export.build.builder import build
    from nuwa_export.export.pipeline import export
    from nuwa_export.quant.quantize import quantize

    export(str(demo_dir), tmp_path / "f16", dtype="float16", ort_graphs=False, progress=False)
    m = quantize(tmp_path / "f16", tmp_path / "q", "int8", progress=False)
    assert m.precision.float_type == "float16" and m.precision == Precision.of("int8", "float16") and all(c["ok"] for c in m.validation["quantized"]["checks"])
    assert {t.dtype for t in m.graphs["llm_prefix"].inputs if t.name == "inputs_embeds"} == {"float16"}
    assert build(tmp_path / "q", builder="tensorrt-rtx", progress=False).precision == "int8"


def test_graphs_with_external_data(demo_dir, tmp_path, monkeypatch):
    """Graphs over 2 GiB (7B) are saved with external data: ModelOpt writes its own beside the
    quantized graph, the source's are not copied, and every file is in the manifest."""
    import nuwa_export.export.pipeline as pipeline
    from nuwa_export.quant.quantize import quantize

    monkeypatch.setattr(pipeline, "EXTERNAL_DATA_BYTES", 0)
    pipeline.export(str(demo_dir), tmp_path / "f", ort_graphs=False, progress=False)
    assert (tmp_path / "f" / "llm_prefix.onnx.data").is_file()
    m = quantize(tmp_path / "f", tmp_path / "q", "int8", progress=False)
    data = sorted(n for n in m.files if n.startswith("llm_") and not n.endswith(".onnx"))
    assert data == ["llm_prefix.onnx_data", "llm_suffix.onnx_data"] and not (tmp_path / "q" / "llm_prefix.onnx.data").exists()
    assert all(c["ok"] for c in m.validation["quantized"]["checks"])


def test_profile_runs_on_a_quantized_export(quantized_factory, tmp_path):
    from nuwa_export.tools.profile import main as profile_main

    out = tmp_path / "p.json"
    assert profile_main([str(quantized_factory("int4-awq")), "--runs", "1", "--warmup", "0", "--max-new-tokens", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["settings"]["llm_graphs"] == "standard"  # a quantized export has no ONNX Runtime graphs


def test_build_refuses_a_quantized_precision_for_a_float_export(demo_export, capsys):
    assert build_main([str(demo_export), "--precision", "fp8", "--profile", "orin", "--builder", "tensorrt-rtx"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--precision fp8 needs a quantized export: nuwa-quantize" in err[0]
