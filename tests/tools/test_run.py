"""nuwa-run and nuwa-verify on an export directory, as users run them."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper

from nuwa_export import manifest as mf
from nuwa_export.tools.run import main as run_main
from nuwa_export.tools.verify import main as verify_main

BIN = Path(sys.executable).parent


def _run(capsys, *argv):
    code = run_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_from_export_dir_ort_and_torch_agree(capsys, demo_export):
    outs = {}
    for backend in ("ort", "torch"):
        code, out, _ = _run(capsys, demo_export, "--prompt", "Where is the car?", "--json", "--max-new-tokens", "20", "--backend", backend)
        assert code == 0
        outs[backend] = json.loads(out)
        assert outs[backend]["backend"] == backend
    for key in ("input_ids", "generated_ids", "stage_one_indices", "stage_two_indices", "text"):
        assert outs["ort"][key] == outs["torch"][key], key


def test_stream_and_summary(capsys, demo_export):
    code, out, err = _run(capsys, demo_export, "--prompt", "Hi", "--stream", "--max-new-tokens", "5")
    assert code == 0 and out.endswith("\n") and "ort" in err and "time_to_first_token" in err


def test_ground_prints_box_status_and_asks_the_refcoco_question(capsys, demo_export, tmp_path):
    code, out, err = _run(capsys, demo_export, "--ground", "man on the right", "--json", "--max-new-tokens", "6", "--draw", tmp_path / "x.png")
    data = json.loads(out)
    assert code == 0 and data["ground"] == "man on the right"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo_export / "tokenizer")
    assert "describes: man on the right." in tok.decode(data["input_ids"])
    # the random demo model answers no box: reported, nothing drawn
    assert data["box"] is None and "no [x1, y1, x2, y2] box" in err and not (tmp_path / "x.png").exists()


@pytest.fixture
def broken(demo_export, tmp_path):
    def make(kind):
        d = tmp_path / kind
        shutil.copytree(demo_export, d)
        if kind == "corrupt":
            data = bytearray((d / "llm_suffix.onnx").read_bytes())
            data[-100] ^= 0xFF
            (d / "llm_suffix.onnx").write_bytes(bytes(data))
        elif kind == "missing":
            (d / "embeddings.safetensors").unlink()
        elif kind == "newer":
            m = json.loads((d / "manifest.json").read_text())
            m["schema_version"] = 4
            (d / "manifest.json").write_text(json.dumps(m))
        elif kind == "older":  # an export from before batched graphs: one scalar vision_start, no max_batch
            m = json.loads((d / "manifest.json").read_text())
            m["schema_version"] = 1
            del m["max_batch"]
            (d / "manifest.json").write_text(json.dumps(m))
        return d

    return make


@pytest.mark.parametrize(
    "kind,args,match",
    [
        ("corrupt", [], "llm_suffix.onnx does not match its sha256"),
        ("missing", [], "embeddings.safetensors is missing from the export"),
        ("newer", [], "schema_version 4, newer than this nuwa-export reads (3)"),
        ("older", [], "schema_version 1, from an older nuwa-export whose graphs take one request at a time; re-export"),
        ("ok", ["--keep", "8"], "--keep: budgets are fixed when exporting"),
        ("ok", ["--prompt", "word " * 3000], "the model's context is 2048"),
        ("ok", ["--image", "NOTIMAGE"], "cannot read"),
        ("ok", ["--backend", "trt"], "has no engines/; build them first: nuwa-build"),
        ("ok", ["--draw", "x.png"], "--draw needs --ground"),
    ],
)
def test_bad_input_one_line(capsys, demo_export, broken, tmp_path, kind, args, match):
    d = demo_export if kind == "ok" else broken(kind)
    notimage = tmp_path / "bad.jpg"
    notimage.write_text("not an image")
    args = [str(notimage) if a == "NOTIMAGE" else a for a in args]
    if "--prompt" not in args:
        args = ["--prompt", "hi", *args]
    code, out, err = _run(capsys, d, *args)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("nuwa-run: error: ") and match in lines[0], err
    assert out == ""


def test_a_schema_2_manifest_is_read_as_schema_3(capsys, demo_export, tmp_path):
    """Exports written before ``precision`` (schema 2: ``llm.dtype``, ``quantization.precision``)
    still open, with the same answer."""
    d = tmp_path / "v2"
    shutil.copytree(demo_export, d)
    m = json.loads((d / "manifest.json").read_text())
    m["schema_version"], m["llm"]["dtype"] = 2, m.pop("precision")["io"]
    (d / "manifest.json").write_text(json.dumps(m))
    assert mf.read(d).precision == mf.read(demo_export).precision
    answers = [_run(capsys, x, "--prompt", "hi", "--json")[1] for x in (d, demo_export)]
    assert json.loads(answers[0])["generated_ids"] == json.loads(answers[1])["generated_ids"]


def test_missing_onnxruntime_names_the_package(demo_export):
    block = (
        "import importlib.machinery, sys\n"
        "class B:\n"
        "    def find_spec(self, n, p=None, t=None):\n"
        "        return importlib.machinery.ModuleSpec(n, self) if n.split('.')[0] == 'onnxruntime' else None\n"
        "    def create_module(self, s):\n"
        "        raise ModuleNotFoundError(s.name)\n"
        "    def exec_module(self, m): pass\n"
        "sys.meta_path.insert(0, B())\n"
        f"from nuwa_export.tools.run import main as run_main; sys.exit(run_main([{str(demo_export)!r}, '--prompt', 'hi']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "nuwa-run: error: the ort backend needs onnxruntime: pip install onnxruntime (or onnxruntime-gpu for CUDA)"


def test_verify_passes_and_reports_json(capsys, demo_export):
    assert verify_main([str(demo_export), "--json", "--max-new-tokens", "20"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and "ort-cpu" in report["backends"]
    stages = [c["stage"] for c in report["backends"]["ort-cpu"]]
    assert stages == ["vision tokens", "stage-one indices", "hidden at split", "stage-two scores", "stage-two indices", "first logits", "generated ids (20)"]


@pytest.mark.parametrize("file,failing", [("llm_suffix.onnx", "ort-cpu-standard"), ("llm_suffix.ort.onnx", "ort-cpu")])
def test_verify_fails_on_a_wrong_graph(capsys, demo_export, tmp_path, file, failing):
    """A suffix graph whose lm_head was changed (and its sha256 re-recorded) fails verification:
    nuwa-verify checks the standard graphs (TensorRT's) and the ONNX Runtime graphs alike."""
    d = tmp_path / "wrong"
    shutil.copytree(demo_export, d)
    model = onnx.load(d / file)
    biggest = max(model.graph.initializer, key=lambda t: numpy_helper.to_array(t).size)
    arr = numpy_helper.to_array(biggest).copy()
    arr *= 1.01
    biggest.CopyFrom(numpy_helper.from_array(arr, biggest.name))
    onnx.save(model, d / file)
    m = json.loads((d / "manifest.json").read_text())
    m["files"][file] = {"sha256": mf.sha256_file(d / file), "size": (d / file).stat().st_size}
    (d / "manifest.json").write_text(json.dumps(m))
    assert verify_main([str(d), "--json", "--max-new-tokens", "4"]) == 1
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert set(report["backends"]) == {"ort-cpu", "ort-cpu-standard"}
    assert {name for name, checks in report["backends"].items() if not all(c["ok"] for c in checks)} == {failing}
    assert "nuwa-verify: error: some stages differ from the reference" in err


def test_trtexec_script(demo_export, tmp_path):
    """trtexec.sh is valid bash and calls trtexec with the manifest's shapes (a fake trtexec records them)."""
    script = demo_export / "trtexec.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    d = tmp_path / "exp"
    shutil.copytree(demo_export, d)
    log = tmp_path / "calls.txt"
    fake = tmp_path / "trtexec"
    fake.write_text(f'#!/usr/bin/env bash\necho "$@" >> {log}\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "TRTEXEC": str(fake), "NUWA_PLUGIN_LIB": "/opt/libnuwa_trt_plugins.so"}
    subprocess.run(["bash", str(d / "trtexec.sh"), "--fp16"], check=True, env=env, capture_output=True)
    calls = log.read_text().splitlines()
    m = mf.read(d)
    builds = [c for c in calls if "--saveEngine" in c]
    assert len(builds) == 4 and all(c.endswith("--fp16") for c in calls)
    (plugin,) = [c for c in builds if "vision.plugin.onnx" in c]
    assert "--staticPlugins=/opt/libnuwa_trt_plugins.so" in plugin
    (prefix,) = [c for c in builds if "llm_prefix.onnx" in c]
    assert prefix.count("--minShapes=") == 2  # prefill and decode profiles
    seq = m.engine_profiles["llm_prefix"][0]["inputs_embeds"]
    assert f"inputs_embeds:{'x'.join(map(str, seq[2]))}" in prefix
    assert len([c for c in calls if "--loadEngine" in c]) == 6
