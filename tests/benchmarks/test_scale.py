"""`benchmarks/scale.py --sizes small` end to end: the JSON it writes and the README section it renders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import scale  # noqa: E402


@pytest.fixture(scope="module")
def scale_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scale")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--sizes", "small", "--workdir", str(tmp / "work"),
           "--out", str(tmp / "scale.json"), "--readme", str(tmp / "README.md")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp, json.loads((tmp / "scale.json").read_text())


@pytest.mark.slow
def test_json_records_memory_time_and_validation(scale_run):
    tmp, r = scale_run
    assert r["benchmark"] == "scale" and r["sizes"] == "small" and r["dtype"] == "float16" and r["limit_gib"] == 24
    assert r["machine"]["memory_gib"] > 0 and "torch" in r["versions"]
    for step in (r["build"], r["export"]):
        assert step["exit_code"] == 0 and step["wall_s"] > 0 and step["peak_rss_bytes"] > 0
        assert step["samples"] > 0 and step["sampled_peak_bytes"]["rss"] > 0 and step["min_mem_available_bytes"] > 0
        assert step["sampled_peak_bytes"]["rss"] <= step["peak_rss_bytes"] * 1.05
    assert "--dtype" in r["export"]["command"] and r["llm_dtype"] == "float16"
    assert isinstance(r["within_limit"], bool) and r["within_limit"]
    assert r["checkpoint"]["bytes"] > r["checkpoint"]["weights_bytes"] > 0 and r["checkpoint"]["shards"] >= 2
    assert r["output"]["bytes"] == sum(r["output"]["files"].values()) > 0 and "manifest.json" in r["output"]["files"]
    assert r["validation"] and r["validation_summary"]["ok"] and r["validation_summary"]["checks"]
    assert r["budgets"]["keep"] == 64 and r["wall_s"] > 0
    assert not (tmp / "work" / "ckpt").exists() and not (tmp / "work" / "export").exists()  # no --keep-files
    assert (tmp / "work" / "export.log").is_file()
    for step in (r["build"], r["export"]):  # recorded without this machine's paths
        assert not any(str(tmp) in a or a.startswith("/") for a in step["command"]), step["command"]
    assert "WORKDIR/export" in r["export"]["command"] and r["export"]["command"][0] == ".venv/bin/nuwa-export"
    steps = r["export"]["steps_s"]
    assert any(k.startswith("trace LLM layers") for k in steps) and any(k.startswith("validate against") for k in steps)
    assert all(v >= 0 for v in steps.values()), steps  # rounded to 0.1 s: a short step may show 0.0
    assert 0.5 * r["export"]["wall_s"] <= sum(steps.values()) <= r["export"]["wall_s"]  # together most of the export's time


@pytest.mark.slow
def test_readme_section_shows_the_json_numbers(scale_run):
    tmp, r = scale_run
    readme = (tmp / "README.md").read_text()
    section = readme[readme.index("## `scale.py`: a full-size LLaVA-1.5-7B-shaped export in fp16"):]
    assert section == scale.render_section(r) or section.startswith(scale.render_section(r))
    e, b = r["export"], r["build"]
    for number in (f"{e['wall_s']:.1f} s", f"**{e['peak_rss_bytes'] / 2**30:.2f} GiB**", f"{b['wall_s']:.1f} s",
                   f"{b['peak_rss_bytes'] / 2**30:.2f} GiB", f"{e['min_mem_available_bytes'] / 2**30:.2f} GiB",
                   f"{r['checkpoint']['parameters']:,} parameters", "**within 24 GiB** | **yes**", "**passed**", r["command"]):
        assert number in section, number
    assert "nuwa-export --model" in section and "--dtype float16 --keep 64" in section
    for check in r["validation_summary"]["checks"]:
        assert f"| {check['stage']} | ok |" in section
    assert "smoke-test shapes" in section and "--sizes small --dtype float16" in section


def test_failed_export_renders_its_log():
    r = {"sizes": "7b", "dtype": "float16", "limit_gib": 24, "within_limit": False, "wall_s": 60.0, "command": ".venv/bin/python benchmarks/scale.py",
         "machine": {"cpu": "x", "usable_cores": 2, "logical_cores": 2, "memory_gib": 23.5, "os": "y", "kernel": "z", "python": "3",
                     "load_average": [1.0, 1.0, 1.0]},
         "versions": {"torch": "2"}, "build": None,
         "checkpoint": {"dtype": "float16", "parameters": 7_063_427_072, "bytes": 14_126_854_144, "weights_bytes": 14_126_854_144, "shards": 7,
                        "text": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
                                 "num_key_value_heads": 32, "vocab_size": 32064},
                        "vision": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                                   "image_size": 336, "patch_size": 14}},
         "export": {"command": ["/v/bin/nuwa-export", "--model", "c"], "exit_code": -9, "wall_s": 30.0, "peak_rss_bytes": 25 * 2**30,
                    "user_cpu_s": 20.0, "system_cpu_s": 5.0, "sample_interval_s": 0.2, "min_mem_available_bytes": 2**28, "log_tail": "Killed",
                    "sampled_peak_bytes": {"rss": 25 * 2**30, "anon": 20 * 2**30, "file": 5 * 2**30, "shmem": 0, "swap": 0}}}
    section = scale.render_section(r)
    assert "**The export failed** (exit code -9)" in section and "Killed" in section
    assert "**within 24 GiB** | **no**" in section and "CLIP ViT-L/14-336" in section and "smoke-test" not in section
    assert "7,063,427,072 parameters" in section and "reused" in section


def test_validation_summary_finds_every_check():
    v = {"pipeline": {"checks": [{"stage": "a", "ok": True, "max_abs": 0.1, "detail": "d"}, {"stage": "b", "ok": False, "max_abs": None, "detail": "e"}]},
         "vision": {"image_tokens": {"max_abs": 1e-6}}}
    s = scale.validation_summary(v)
    assert [c["stage"] for c in s["checks"]] == ["a", "b"] and s["ok"] is False
    assert scale.validation_summary({})["ok"] is False
