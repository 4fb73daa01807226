"""scripts/gpu_check.py: the one command for a lent GPU machine, run end to end here (CPU, --quick)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
#: Packages the lent machine may lack. Each is shadowed by a module that raises ImportError, so the
#: run below sees them as missing. (hypothesis is not among them: its pytest plugin is installed
#: in this venv and would break on the shadow, which a machine without hypothesis never sees.)
MISSING = ("rich", "pyarrow", "matplotlib", "onnxscript", "tensorrt", "tensorrt_rtx")


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gc = load_script()


def run_script(tmp_path: Path, *args: str, timeout: float = 170) -> tuple[subprocess.CompletedProcess, dict, float]:
    shadow = tmp_path / "missing-packages"
    shadow.mkdir(exist_ok=True)
    for name in MISSING:
        (shadow / f"{name}.py").write_text(f"raise ImportError('{name} is not installed (simulated)')\n")
    out = tmp_path / "out" / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow), str(ROOT)])}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, str(SCRIPT), *args, "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    assert out.is_file(), done.stderr[-3000:]
    assert list(out.parent.iterdir()) == [out]  # one JSON file, no temporaries left behind
    return done, json.loads(out.read_text()), wall


def assert_part_shape(name: str, part: dict) -> None:
    assert part["status"] in gc.STATUSES, (name, part)
    if part["status"] != "ok":
        assert isinstance(part["reason"], str) and part["reason"].strip(), (name, part)
    if "budget_s" in part:  # it ran in a child process: a real duration, within its hard limit
        assert 0 < part["wall_s"] <= part["budget_s"] + 5, (name, part)
    else:  # refused before any child started (a skip): no time spent
        assert part["status"] == "skipped" and 0 <= part["wall_s"] < 1, (name, part)


def positive(x) -> bool:
    return isinstance(x, (int, float)) and x > 0


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path):
    done, r, wall = run_script(tmp_path, "--quick")
    assert done.returncode == 0, done.stderr[-3000:]
    assert r["schema"] == gc.SCHEMA
    assert r["mode"] == {"device": "cpu", "requested_device": "cpu", "dtype": "float32", "tiny": True, "parts": list(gc.PARTS)}
    assert set(r["parts"]) == set(gc.PARTS) and r["summary"] == {p: r["parts"][p]["status"] for p in gc.PARTS}
    assert r["wall_s"] > 0 and r["finished_at"] >= r["started_at"]

    m = r["machine"]
    assert positive(m["cpu_count"]) and positive(m["usable_cpus"])
    assert m["torch"] and m["transformers"] and m["python"]
    assert "gpus" in m and "cuda_driver_devices" in m
    for name, part in r["parts"].items():
        assert_part_shape(name, part)
    assert sum(part["wall_s"] for part in r["parts"].values()) <= r["wall_s"] + 0.5  # the parts ran one after another

    # (a) the kernel needs CUDA: skipped, and it says why
    kernel = r["parts"]["kernel"]
    if m["cuda_driver_devices"] == 0:
        assert kernel["status"] == "skipped" and kernel["reason"].startswith("no CUDA device: ")
    else:
        assert kernel["status"] == "skipped" and "--device cpu" in kernel["reason"]

    # (b) the reference: pruned prefill really ran with K1 vision tokens, unpruned with all of them
    ref = r["parts"]["reference"]
    assert ref["status"] == "ok", ref
    assert ref["model"]["device"] == "cpu" and ref["model"]["dtype"] == "float32"
    assert positive(ref["model"]["parameters"]) and positive(ref["model"]["weight_bytes"])
    pruned, full = ref["budgets"]["pruned"], ref["budgets"]["unpruned"]
    k1, k2, n = pruned["stage_one_keep"], pruned["stage_two_keep"], pruned["num_patches"]
    assert pruned["prune"] and not full["prune"] and k2 < k1 < n
    text = ref["input"]["text_tokens"]
    assert text == ref["input"]["text_before_image"] + ref["input"]["text_after_image"] > 0
    p, u = ref["prefill"]["pruned"], ref["prefill"]["unpruned"]
    assert p["vision_tokens"] == k1 and p["stage_two_tokens"] == k2
    assert p["kv_lengths"] == {"layers_0_to_L-1": [text + k1], "layers_L_to_N-1": [text + k2]}
    assert u["vision_tokens"] == n and u["stage_two_tokens"] is None
    assert u["kv_lengths"] == {"layers_0_to_L-1": [text + n], "layers_L_to_N-1": [text + n]}
    assert p["kv_cache_bytes"] < u["kv_cache_bytes"]
    assert ref["checks"] and all(c["ok"] for c in ref["checks"])
    for entry in (p, u):
        assert entry["logits_finite"]
        for key in ("vision_ms", "prefill_ms"):
            assert entry[key]["n"] >= 1 and positive(entry[key]["median"]) and entry[key]["min"] <= entry[key]["median"]
    assert set(ref["decode"]) == {"pruned_batch1", "pruned_batch8", "unpruned_batch1", "unpruned_batch8", "pruned_generate_batch", "unpruned_generate_batch"}
    for label in ("pruned", "unpruned"):  # the batched core: in float32 on the CPU every row is as alone
        g = ref["decode"].pop(f"{label}_generate_batch")
        assert g["batch"] == 8 and g["rows_same_tokens"] == 8 and g["rows_same_stage_indices"] == 8, g
        assert positive(g["tokens_per_s"]) and abs(g["tokens_per_s"] - 8000 / g["decode_ms_per_step"]) < 1e-2 * g["tokens_per_s"]
    for key, d in ref["decode"].items():
        assert d["batch"] == (8 if key.endswith("8") else 1) and d["what"]
        assert positive(d["tokens_per_s"]) and d["step_ms"]["n"] >= 1
        assert abs(d["tokens_per_s"] - d["batch"] * 1000 / d["step_ms"]["median"]) < 1e-2 * d["tokens_per_s"]
    assert ref["decode"]["pruned_batch8"]["kv_lengths_at_start"] == p["kv_lengths"]
    assert ref["memory"]["peak"]["cuda"] is None and "CPU" in ref["memory"]["peak"]["cuda_reason"]
    assert positive(ref["memory"]["peak"]["peak_rss_bytes"])

    # (c) authors'-style eager against ours, same model, same choices (float32 on the CPU)
    eager = r["parts"]["eager"]
    assert eager["status"] == "ok", eager
    assert eager["budgets"] == pruned
    assert positive(eager["ours"]["ttft_ms"]["median"]) and positive(eager["authors"]["ttft_ms"]["median"])
    assert eager["ours"]["attention"] == "sdpa" and eager["authors"]["attention"] == "eager"
    assert positive(eager["authors"]["attention_map_bytes_per_image"])  # the full maps really were kept
    ratio = eager["authors"]["ttft_ms"]["median"] / eager["ours"]["ttft_ms"]["median"]
    assert eager["ratio_authors_over_ours"]["ttft_median"] == pytest.approx(ratio, rel=1e-3)
    assert eager["choices_must_match"] and all(eager["same_choices"].values())

    # (d) pytest -m gpu: collected (no GPU here), with its summary line and every test
    py = r["parts"]["pytest_gpu"]
    assert py["status"] == "ok", py
    assert py["mode"] == "collect-only" and "--device cpu" in py["mode_reason"]
    assert "-m gpu" in py["command"] and "collected" in py["summary"]
    ids = {t["test"] for t in py["tests"]}
    assert "tests/engines/test_kernel_gpu.py::test_kernel_matches_the_reference" in ids
    assert all(t["outcome"] == "collected" for t in py["tests"])
    assert isinstance(py["collection_errors"], list)
    print(f"\ngpu_check --quick took {wall:.1f} s (JSON wall_s {r['wall_s']})")


@pytest.mark.slow
def test_a_part_out_of_time_is_stopped_recorded_and_the_run_goes_on(tmp_path):
    done, r, _ = run_script(tmp_path, "--quick", "--parts", "reference,pytest_gpu", "--budget", "reference=1")
    assert done.returncode == 1  # a timed-out part is not a clean run
    ref = r["parts"]["reference"]
    assert ref["status"] == "timed_out" and "hard time limit of 1 s" in ref["reason"]
    assert ref["budget_s"] == 1.0 and ref["wall_s"] < 30
    assert r["parts"]["pytest_gpu"]["status"] == "ok"  # the next part still ran
    for part in ("kernel", "eager"):
        assert r["parts"][part]["status"] == "skipped" and "not selected" in r["parts"][part]["reason"]


def test_bad_arguments_are_refused():
    for args in (["--parts", "kernel,nope"], ["--budget", "reference=-3"], ["--budget", "nope=3"]):
        with pytest.raises(SystemExit):
            gc.parse_args([*args, "--out", "x.json"])


def test_timed_stops_at_the_deadline_but_always_measures_once():
    calls = []
    times, out, early = gc.timed(lambda: calls.append(1) or len(calls), lambda: None, 2, 5, time.monotonic() - 1)
    assert early and len(times) == 1 and len(calls) == 3 and out == 3
    times, out, early = gc.timed(lambda: 7, lambda: None, 0, 4, time.monotonic() + 60)
    assert not early and len(times) == 4 and out == 7 and all(t >= 0 for t in times)


class _FakeLib:
    def nuwa_status_string(self, status):
        return b"fake status"


def _kernel_part(monkeypatch, tmp_path, wrong: set[int] | None = None, status: int = 0):
    """Run part_kernel with a fake GPU and a fake kernel that returns the reference (plus an error
    of 1.0 on the cases numbered in ``wrong``)."""
    ck = gc.import_check_plugin_kernel()
    cases = [ck.Case((8, 8), 16, 33, 17, distance=2.0), ck.Case((2, 2), 1, 8, 4, batch=1),
             ck.Case((12, 20), 37, 96, 32, index_type="int32")]
    monkeypatch.setattr(ck, "CASES", cases)
    monkeypatch.setattr(ck, "load", lambda path: _FakeLib())
    monkeypatch.setattr(gc, "cuda_devices", lambda: (1, ""))
    monkeypatch.setattr(gc, "driver_info", lambda index=0: {"compute_capability": "9.0"})
    monkeypatch.setattr(gc, "build_kernel_library", lambda d, arch: (d / "lib.so", {"method": "fake", "arch": arch}))

    def run_kernel(lib, case, features, sim, indices, scores):
        out = ck.reference(case, features, sim, indices, scores).copy()
        if cases.index(case) in (wrong or set()):
            out.flat[0] += 1.0
        return status, out

    monkeypatch.setattr(ck, "run_kernel", run_kernel)
    rec = gc.Recorder(tmp_path / "kernel.json")
    gc.part_kernel(rec, None, time.monotonic() + 60)
    assert json.loads((tmp_path / "kernel.json").read_text()) == json.loads(json.dumps(rec.data))
    return rec.data


def test_kernel_part_records_every_case_in_both_dtypes(monkeypatch, tmp_path):
    data = _kernel_part(monkeypatch, tmp_path)
    assert data["status"] == "ok" and data["reason"] is None
    assert data["checked"] == data["total"] == data["passed"] == 6
    assert [c["dtype"] for c in data["cases"]] == ["float32", "float16"] * 3
    assert all(c["max_abs_err"] == 0.0 and c["passed"] for c in data["cases"])
    assert data["tolerances"]["float16"] == {"atol": 2e-2, "rtol": 1e-2}
    assert data["build"] == {"method": "fake", "arch": "90", "seconds": data["build"]["seconds"]}


def test_kernel_part_fails_on_a_wrong_kernel(monkeypatch, tmp_path):
    data = _kernel_part(monkeypatch, tmp_path, wrong={1})
    assert data["status"] == "failed"
    bad = [c for c in data["cases"] if not c["passed"]]
    assert len(bad) == 2 and all(c["case"].startswith("2x2") and c["max_abs_err"] >= 0.99 for c in bad)
    assert "2 of 6 cases outside tolerance" in data["reason"] and "2x2" in data["reason"]


def test_kernel_part_errors_when_the_kernel_cannot_launch_on_a_present_gpu(monkeypatch, tmp_path):
    with pytest.raises(RuntimeError, match="CUDA error 209"):
        _kernel_part(monkeypatch, tmp_path, status=209)


def test_kernel_reference_does_not_need_onnxscript():
    import numpy as np

    ck = gc.import_check_plugin_kernel()
    case = ck.Case((12, 20), 37, 96, 32, ties=True, index_type="int32")
    for dtype in ("float32", "float16"):
        inputs = ck.make_inputs(case, dtype, seed=3)
        want, name = gc.kernel_reference(ck, case, *inputs)
        assert name == "nuwa_export.export.ops.swarm_aggregate"

        class NoOnnxscript:
            @staticmethod
            def reference(*args):
                raise ImportError("No module named 'onnxscript'")

        got, name = gc.kernel_reference(NoOnnxscript, case, *inputs)
        assert "onnxscript" in name and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


@pytest.mark.skipif(gc.find_nvcc() is None, reason="nvcc (the CUDA toolkit) is not installed")
def test_kernel_library_builds_with_nvcc_alone(tmp_path):
    path, record = gc.build_kernel_library(tmp_path, "90", methods=("nvcc",))
    assert record["method"] == "nvcc" and record["attempts"][-1]["ok"]
    cmd = record["attempts"][-1]["command"]
    assert "-cudart static" in cmd and "fast_math" not in cmd and "sm_90" in cmd
    lib = gc.import_check_plugin_kernel().load(path)  # checks the C ABI version
    assert lib.nuwa_kernels_abi_version() == gc.import_check_plugin_kernel().ABI_VERSION == 2
    if shutil.which("nm"):
        listing = subprocess.run(["nm", "-D", "--defined-only", str(path)], capture_output=True, text=True).stdout
        exported = {ln.split()[-1] for ln in listing.splitlines() if " T " in ln}
        assert "nuwa_swarm_aggregate_host" in exported
        assert not {s for s in exported if s.startswith("_Z") or s.startswith("cuda")}


def test_kernel_build_says_why_when_nothing_can_build(tmp_path, monkeypatch):
    monkeypatch.setattr(gc, "find_nvcc", lambda: None)
    with pytest.raises(RuntimeError, match="nvcc not found"):
        gc.build_kernel_library(tmp_path, "90")


def test_pytest_report_parsers(tmp_path):
    """The parsers read a real pytest run: pass, skip, fail, xfail and a module that cannot import."""
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "pytest.ini").write_text("[pytest]\n")
    (proj / "test_a.py").write_text(
        "import pytest\n"
        "def test_ok(): pass\n"
        "def test_skip(): pytest.skip('no GPU here')\n"
        "def test_bad(): assert 1 == 2\n"
        "@pytest.mark.xfail(reason='known')\n"
        "def test_xf(): assert False\n")
    (proj / "test_b.py").write_text("import not_a_module_of_this_test\n")
    xml = tmp_path / "junit.xml"
    done = subprocess.run([sys.executable, "-m", "pytest", str(proj), "-c", str(proj / "pytest.ini"), "-p", "no:cacheprovider",
                           "-p", "no:hypothesispytest", "--continue-on-collection-errors", "-v", "-rA", f"--junitxml={xml}"],
                          cwd=proj, capture_output=True, text=True, timeout=120)
    tests, collection = gc.parse_junit(xml)
    outcomes = {t["test"].split("::")[-1]: t["outcome"] for t in tests}
    assert outcomes == {"test_ok": "passed", "test_skip": "skipped", "test_bad": "failed", "test_xf": "xfailed"}
    assert next(t for t in tests if t["test"].endswith("test_skip"))["message"].endswith("no GPU here")
    assert len(collection) == 1 and "not_a_module_of_this_test" in collection[0]["error"]
    assert collection == [{"module": collection[0]["module"], "error": collection[0]["error"]}]
    from_text = gc.collection_errors_from_output(done.stdout)
    assert len(from_text) == 1 and from_text[0]["module"].endswith("test_b.py")
    assert "not_a_module_of_this_test" in from_text[0]["error"]
    verbose = {t["test"].split("::")[-1]: t["outcome"] for t in gc.parse_verbose(done.stdout)}
    assert verbose == {"test_ok": "passed", "test_skip": "skipped", "test_bad": "failed", "test_xf": "xfailed"}
    line = gc.summary_line(done.stdout)
    assert line and "1 failed" in line and "1 passed" in line and "=" not in line
    assert gc.summary_line("2/524 tests collected (522 deselected) in 5.08s") == "2/524 tests collected (522 deselected) in 5.08s"
