"""nuwa-profile: the report's schema, the chart, the trtexec commands and one-line errors."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import stat
import sys

import numpy as np
import pytest
from PIL import Image

from nuwa_export.export.trtexec import PROFILING_FLAGS
from nuwa_export.profile.report import COLOURS, DPI, FIGSIZE
from nuwa_export.profile.runs import PREFILL_PARTS, profile
from nuwa_export.tools.profile import main as profile_main

RUNS, TOKENS = 3, 4


def _profile(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = profile_main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def ort_report(demo_export, tmp_path_factory):
    d = tmp_path_factory.mktemp("profile")
    code, out, err = _profile(
        demo_export, "--runs", RUNS, "--warmup", 1, "--max-new-tokens", TOKENS, "--json", d / "r.json", "--plot", d / "r.png"
    )
    assert code == 0, err
    return json.loads((d / "r.json").read_text()), out, d / "r.png"


def test_report_schema(ort_report, demo_dir, demo_export):
    report, out, _ = ort_report
    assert report["schema_version"] == 2
    assert set(report) == {"schema_version", "machine", "versions", "export", "settings", "generated_tokens", "stages_ms", "memory", "kv_cache", "flops", "transfers"}
    m = report["machine"]
    assert isinstance(m["cpu"], str) and m["cpu"] and isinstance(m["cores"], int) and m["memory_bytes"] > 0
    assert report["versions"]["nuwa_export"] and "onnxruntime" in report["versions"]
    assert report["export"]["budgets"]["stage_one_keep"] == 49 and report["export"]["grid"] == [16, 16]
    assert report["settings"]["runs"] == RUNS and report["settings"]["backend"] == "ort"
    assert report["settings"]["llm_graphs"] == "ort"  # the ONNX Runtime graphs (in-place KV) ran
    assert report["generated_tokens"] == TOKENS  # EOS ignored: every run is the same length
    stages = report["stages_ms"]
    for name in (*PREFILL_PARTS, "time_to_first_token", "decode", "decode_per_token", "tokens_per_s", "total"):
        st = stages[name]
        assert len(st["all"]) == RUNS and all(isinstance(v, float) and v > 0 for v in st["all"]), name
        assert st["median"] == pytest.approx(float(np.median(st["all"]))) and st["median"] <= st["p90"] <= max(st["all"]), name
    assert stages["tokens_per_s"]["all"] == pytest.approx([1000 / v for v in stages["decode_per_token"]["all"]])
    assert report["memory"]["rss_peak_bytes"] > 2**20 and report["memory"]["cuda_peak_allocated_bytes"] is None
    kv = report["kv_cache"]
    assert kv["prefix_layers"]["vision_tokens"] == 49 and kv["suffix_layers"]["vision_tokens"] == 7
    assert kv["prefix_layers"]["layers"] == [0, 2] and kv["suffix_layers"]["layers"] == [2, 4]
    # the bytes the caches must hold, from the checkpoint's config and the prompt alone
    from transformers import AutoTokenizer

    config = json.loads((demo_dir / "config.json").read_text())
    text, dtype = config["text_config"], config.get("dtype") or config["torch_dtype"]  # the export keeps it
    itemsize = np.dtype(dtype).itemsize
    per_entry = 2 * text["num_key_value_heads"] * text["head_dim"] * itemsize  # K and V, per layer and token
    tokenizer = AutoTokenizer.from_pretrained(demo_export / "tokenizer")
    prompt = len(tokenizer(f"USER: <image>\n{report['settings']['prompt']} ASSISTANT:").input_ids) - 1  # BOS in, <image> out
    seq = prompt + TOKENS - 1  # text and fed-back tokens (the last one is never fed back)
    layers, split = text["num_hidden_layers"], 2
    assert report["export"]["llm_dtype"] == dtype == "float32" and report["settings"]["prompt_tokens"] == prompt
    assert kv["bytes_per_element"] == itemsize
    assert kv["prefix_layers"]["bytes"] == split * (seq + 49) * per_entry
    assert kv["suffix_layers"]["bytes"] == (layers - split) * (seq + 7) * per_entry
    assert kv["total_bytes"] == kv["prefix_layers"]["bytes"] + kv["suffix_layers"]["bytes"]  # measured on the caches
    assert kv["unpruned_bytes"] == layers * (seq + 16 * 16) * per_entry and report["flops"] is None
    # per decode step only the fed-back token id and its position go in (int64 each) and the
    # last-position logits come out: no KV byte crosses between host and engine
    t = report["transfers"]
    vocab = config["text_config"]["vocab_size"]
    assert t["device"] == "cpu" and t["decode_steps"] == TOKENS - 1
    assert t["decode_per_step"] == {"host_to_device": 2 * 8, "device_to_host": vocab * 4}
    for word in ("median", "p90", "time_to_first_token", "tokens_per_s", "KV cache"):
        assert word in out


def test_plot_is_a_png_of_the_stated_size_with_the_stage_colours(ort_report):
    path = ort_report[2]
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))
        pixels = {tuple(p[:3]) for p in np.asarray(im.convert("RGB")).reshape(-1, 3)[::7]}
    for stage in ("vision", "prefix", "suffix", "decode_per_token"):
        colour = tuple(int(COLOURS[stage][i : i + 2], 16) for i in (1, 3, 5))
        assert colour in pixels, stage


def test_torch_backend_folds_the_vision_laps_and_has_flops(demo_export, ort_report):
    report = profile(demo_export, backend="torch", device="cpu", runs=2, warmup=0, max_new_tokens=TOKENS)
    s = report["stages_ms"]
    for i in range(2):
        assert s["vision"]["all"][i] == pytest.approx(s["vision_tower"]["all"][i] + s["stage_one"]["all"][i] + s["projector"]["all"][i])
    f = report["flops"]
    assert f["layers"] == 4 and f["stage_one_keep"] == 49 and f["speedup_bound"] > 1
    assert report["kv_cache"] == ort_report[0]["kv_cache"]  # same tokens, same float32 caches


def test_trtexec_prints_per_layer_profiling_commands(demo_export):
    code, out, err = _profile(demo_export, "--trtexec")
    assert code == 0, err
    for graph in ("vision", "vision_plugin", "llm_prefix", "llm_suffix"):
        assert f"--loadEngine=engines/{graph}.plan" in out
    for stem in ("vision", "llm_prefix.prefill", "llm_prefix.decode", "llm_suffix.decode"):
        assert f"--exportProfile=profiles/{stem}.profile.json" in out and f"--exportLayerInfo=profiles/{stem}.layers.json" in out
    assert out.count("--dumpLayerInfo") == 6  # 2 vision graphs, 2 LLM graphs × (prefill, decode)
    for flag in PROFILING_FLAGS:
        assert out.count(flag) == 6, flag
    assert "--staticPlugins=" in out and "--profile=1" in out


def test_trtexec_run_without_trtexec_is_one_line(demo_export, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("TRTEXEC", raising=False)
    code, out, err = _profile(demo_export, "--trtexec", "--run")
    assert code == 1 and err.startswith("nuwa-profile: error: trtexec is not installed") and err.count("\n") == 1


FAKE_TRTEXEC = """#!{python}
import json, sys
args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
layers = [{{"count": 10}}, {{"name": "slow_matmul", "averageMs": 2.5, "percentage": 80.0}}, {{"name": "fast_add", "averageMs": 0.1, "percentage": 3.0}}]
json.dump(layers, open(args["--exportProfile"], "w"))
json.dump({{"Layers": []}}, open(args["--exportLayerInfo"], "w"))
print("fake trtexec", " ".join(sys.argv[1:]))
"""


def test_trtexec_run_executes_the_commands_for_built_engines(demo_export, tmp_path, monkeypatch):
    d = tmp_path / "export"
    shutil.copytree(demo_export, d)
    (d / "engines").mkdir()
    (d / "engines" / "vision.plan").write_bytes(b"not a real engine")
    fake = tmp_path / "trtexec"
    fake.write_text(FAKE_TRTEXEC.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("TRTEXEC", str(fake))
    code, out, err = _profile(d, "--trtexec", "--run")
    assert code == 0, err
    assert json.loads((d / "profiles" / "vision.profile.json").read_text())[1]["name"] == "slow_matmul"
    assert "fake trtexec --loadEngine=engines/vision.plan" in (d / "profiles" / "vision.log").read_text()
    assert "slow_matmul" in out and out.index("slow_matmul") < out.index("fast_add")
    assert "engines/llm_prefix.plan not built" in err  # the others are skipped, with a warning
    os.remove(d / "engines" / "vision.plan")
    code, _, err = _profile(d, "--trtexec", "--run")
    assert code == 1 and "no engines in" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv,match",
    [
        (["{tmp}/nope"], "has no manifest.json"),
        (["{export}", "--runs", "0"], "--runs must be >= 1"),
        (["{export}", "--max-new-tokens", "1"], "at least 2"),
        (["{export}", "--plot", "{tmp}/x.gif"], "the chart is written as"),
        (["{export}", "--plot", "{tmp}/no/such/dir/x.png"], "does not exist"),
        (["{export}", "--json", "{tmp}/no/such/dir/x.json"], "does not exist"),
        (["{export}", "--run"], "--run needs --trtexec"),
        (["{export}", "--backend", "bogus"], "invalid choice"),
        (["{export}", "--image", "{tmp}/missing.png"], "image file not found"),
    ],
)
def test_bad_input_is_one_line_exit_1(demo_export, tmp_path, argv, match):
    code, out, err = _profile(*(a.format(tmp=tmp_path, export=demo_export) for a in argv))
    assert code == 1 and err.startswith("nuwa-profile: error: ") and match in err and err.count("\n") == 1, err
