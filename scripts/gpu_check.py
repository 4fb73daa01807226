#!/usr/bin/env python3
"""One prepared command for a lent GPU machine: kernel numerics, reference timings, eager vs ours, gpu tests.

Runs from the tree (no install, no network, no pip) and writes ONE JSON file:

    PYTHONPATH=. python scripts/gpu_check.py --out $OUT/gpu_check.json
    PYTHONPATH=. python scripts/gpu_check.py --quick --out /tmp/gpu_check.json   # CI-sized: --device cpu --tiny

Parts (each in its own process, under its own time budget; the whole run stays under 8 minutes):

- ``kernel``: builds ``libnuwa_kernels.so`` (CMake through ``scripts/check_plugin_kernel.build``,
  or nvcc directly when CMake is missing or fails) and runs every case of
  ``check_plugin_kernel.CASES`` in float32 and float16 against the PyTorch op, with that script's
  tolerances. Needs a CUDA device.
- ``reference``: a LLaVA-1.5-7B-shaped model with random weights (seeded), built directly on the
  device from ``synthetic.build_config`` (nothing written to disk) and wrapped like
  ``loader.load``. Prefill time pruned (keep 64) and unpruned, decode tokens/s at batch 1 and
  batch 8 (8 lock-step streams), all through the generation core's own steps
  (``generation.prefill``, ``generation.step``) on the reference's stages; peak CUDA memory.
- ``eager``: time to first token of the authors'-style eager pipeline
  (``benchmarks/export_vs_eager.AuthorsEager``: eager attention, full maps in every CLIP layer
  and in LLM layers [0, L)) against ours (``Reference``: sdpa, CLS row and L-1 row alone) on the
  same model; the ratio.
- ``pytest_gpu``: ``pytest -m gpu`` in a subprocess (collect-only when there is no GPU); the
  summary line and every test's outcome.

A part that runs out of time is stopped, says so, and keeps what it measured; the next part runs.
A missing optional package (rich, hypothesis, pyarrow, matplotlib, onnxscript, TensorRT, ...)
never stops the script: a part that needs one says "skipped: X not installed". Exit code 0 when
every part is ``ok`` or ``skipped``, 1 otherwise; the JSON is written either way.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import importlib.metadata as _md
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SCHEMA = "nuwa-export/gpu_check/1"
PARTS = ("kernel", "reference", "eager", "pytest_gpu")
STATUSES = ("ok", "failed", "skipped", "error", "timed_out")
RUN_COMMAND = "PYTHONPATH=. python scripts/gpu_check.py --out $OUT/gpu_check.json"
PROMPT = "What is in the picture?"
SEED = 0

#: Seconds. The whole run must end within 8 minutes on the lent machine; this leaves a margin
#: for process start-up and the JSON. Each part gets its own budget, capped by what is left.
TOTAL_BUDGET_S = {"full": 450.0, "tiny": 240.0}
PART_BUDGET_S = {
    "full": {"kernel": 110.0, "reference": 130.0, "eager": 90.0, "pytest_gpu": 110.0},
    "tiny": {"kernel": 60.0, "reference": 60.0, "eager": 60.0, "pytest_gpu": 60.0},
}
#: Runs per measurement: (warm-up, timed) for prefill and TTFT; (warm-up, timed) decode steps.
RUNS = {"full": {"prefill": (2, 5), "decode": (3, 32), "ttft": (2, 5)},
        "tiny": {"prefill": (1, 2), "decode": (1, 4), "ttft": (1, 2)}}
#: The CPU-sized model of --tiny: 8x8 patches, 3 CLIP layers, 4 Llama layers (no disk, seconds).
TINY_SIZES = {
    "image_size": 112, "patch_size": 14, "vision_hidden_size": 32, "vision_layers": 3, "vision_heads": 2,
    "vision_intermediate_size": 64, "text_hidden_size": 64, "text_layers": 4, "text_heads": 4, "text_kv_heads": 4,
    "text_intermediate_size": 128, "vocab_size": 600, "max_position_embeddings": 2048, "initializer_range": 0.02,
}
#: Architectures CMakeLists.txt builds by default (SASS), plus PTX of 90 for newer GPUs.
CMAKE_DEFAULT_ARCHS = ("80", "86", "87", "89", "90")
OPTIONAL_PACKAGES = ("rich", "hypothesis", "pyarrow", "matplotlib", "safetensors", "onnxscript", "onnx", "onnxruntime",
                     "onnxruntime-gpu", "tensorrt", "tensorrt-rtx-cu13", "pillow", "numpy", "tokenizers", "pytest")


class Skip(Exception):
    """A part cannot run here; the message says exactly why."""


# ---- small helpers (stdlib only: the test imports this module) --------------------------------
def write_json(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` through a temporary sibling and a rename (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def stats(ms: list[float]) -> dict:
    """Median, min, max and every run (milliseconds)."""
    return {"median": round(statistics.median(ms), 3), "min": round(min(ms), 3), "max": round(max(ms), 3),
            "n": len(ms), "runs": [round(x, 3) for x in ms]}


def timed(fn, sync, warmup: int, runs: int, deadline: float):
    """``warmup`` untimed calls, then up to ``runs`` timed ones (ms, ``sync`` before and after each).

    Stops early once ``time.monotonic()`` passes ``deadline`` (at least one timed run always
    happens). Returns ``(times_ms, last_result, stopped_early)``.
    """
    out = None
    for _ in range(warmup):
        out = fn()
        sync()
    times: list[float] = []
    for _ in range(runs):
        if times and time.monotonic() > deadline:
            return times, out, True
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return times, out, False


def version_of(dist: str) -> str | None:
    try:
        return _md.version(dist)
    except _md.PackageNotFoundError:
        return None


def first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def find_nvcc() -> str | None:
    """The CUDA compiler CMake would use: $CUDACXX, nvcc on PATH, or the default toolkit's."""
    for candidate in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def tool_version(cmd: list[str], pattern: str) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(pattern, out)
    return m.group(1) if m else (out.strip().splitlines() or [None])[-1]


# ---- the CUDA driver, through ctypes (torch may be a CPU build) ------------------------------
def cuda_driver() -> tuple[object | None, str]:
    """``(libcuda handle, "")`` after ``cuInit``, or ``(None, why not)``."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None, "no CUDA driver (libcuda.so.1 not found)"
    status = driver.cuInit(0)
    if status != 0:
        return None, f"the CUDA driver did not initialise (cuInit returned {status})"
    return driver, ""


def cuda_devices() -> tuple[int, str]:
    """GPUs the CUDA driver sees, and why there are none."""
    driver, why = cuda_driver()
    if driver is None:
        return 0, why
    count = ctypes.c_int(0)
    if driver.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return 0, "the CUDA driver reports no device"
    return count.value, ""


def driver_info(index: int = 0) -> dict:
    """Driver API version and the compute capability of device ``index`` (empty without a driver)."""
    driver, _ = cuda_driver()
    if driver is None:
        return {}
    out = {}
    v = ctypes.c_int(0)
    if driver.cuDriverGetVersion(ctypes.byref(v)) == 0:
        out["driver_cuda_version"] = f"{v.value // 1000}.{(v.value % 1000) // 10}"
    dev, major, minor = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
    if driver.cuDeviceGet(ctypes.byref(dev), index) == 0:
        driver.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
        driver.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)  # ..._MINOR
        out["compute_capability"] = f"{major.value}.{minor.value}"
    return out


# ---- machine ----------------------------------------------------------------------------------
def describe_machine() -> dict:
    """CPU, memory, GPUs (name, CC, memory), driver, CUDA, library and tool versions."""
    m: dict = {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count()}
    try:
        m["usable_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:
        m["usable_cpus"] = os.cpu_count()
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        m["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), None)
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        m["memory_gib"] = round(next(int(ln.split()[1]) for ln in meminfo if ln.startswith("MemTotal")) / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    m["packages"] = {p: version_of(p) for p in OPTIONAL_PACKAGES}
    m["transformers"] = version_of("transformers")
    m["nvcc"] = tool_version([find_nvcc() or "nvcc", "--version"], r"release ([\d.]+)") if find_nvcc() else None
    m["cmake"] = tool_version(["cmake", "--version"], r"cmake version ([\d.]+\S*)") if shutil.which("cmake") else None
    n, why = cuda_devices()
    m["cuda_driver_devices"] = n
    if n == 0:
        m["cuda_driver_absent_reason"] = why
    m.update(driver_info())
    if shutil.which("nvidia-smi"):
        smi = tool_version(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], r"^\s*([\d.]+)")
        m["driver_version"] = smi
    try:
        import torch
    except ImportError as e:
        m["torch"] = None
        m["torch_import_error"] = first_line(e)
        m["gpus"] = []
        return m
    m["torch"] = torch.__version__
    m["torch_cuda"] = torch.version.cuda
    m["cuda_available"] = torch.cuda.is_available()
    m["gpus"] = []
    if m["cuda_available"]:
        try:
            m["cudnn"] = torch.backends.cudnn.version()
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                m["gpus"].append({"index": i, "name": p.name, "compute_capability": f"{p.major}.{p.minor}",
                                  "memory_gib": round(p.total_memory / 2**30, 1), "multiprocessors": p.multi_processor_count})
        except Exception as e:  # a broken driver must not stop the check
            m["gpu_query_error"] = first_line(e)
    return m


# ---- part: kernel -----------------------------------------------------------------------------
def import_check_plugin_kernel():
    """``scripts/check_plugin_kernel.py`` as a module (its functions, cases and tolerances)."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    import check_plugin_kernel

    return check_plugin_kernel


def nvcc_command(nvcc: str, arch: str, out: Path) -> list[str]:
    """Compile the kernel and its C ABI into ``out`` the way CMakeLists.txt's ``nuwa_kernels`` does:
    C++17, -O3 (Release), hidden visibility (only NUWA_API symbols exported), the CUDA runtime
    linked statically, no --use_fast_math. SASS and PTX for ``arch`` (e.g. "90")."""
    plugin = ROOT / "engines" / "plugin"
    return [nvcc, "-O3", "-DNDEBUG", "-std=c++17", "-shared", "-cudart", "static",
            "-Xcompiler", "-fPIC,-fvisibility=hidden,-fvisibility-inlines-hidden",
            "-gencode", f"arch=compute_{arch},code=sm_{arch}", "-gencode", f"arch=compute_{arch},code=compute_{arch}",
            "-I", str(plugin), str(plugin / "swarm_aggregate_kernel.cu"), str(plugin / "nuwa_kernels_capi.cpp"),
            "-o", str(out)]


def build_kernel_library(build_dir: Path, arch: str, methods: tuple[str, ...] = ("cmake", "nvcc")) -> tuple[Path, dict]:
    """Build ``libnuwa_kernels.so`` for compute capability ``arch`` ("90"); ``(path, record)``.

    CMake first (``check_plugin_kernel.build``, the project's own build, when its default
    architectures cover ``arch``), else nvcc directly. Raises RuntimeError if nothing worked.
    """
    nvcc = find_nvcc()
    attempts: list[dict] = []
    build_dir.mkdir(parents=True, exist_ok=True)
    if "cmake" in methods:
        if shutil.which("cmake") is None:
            attempts.append({"method": "cmake", "ok": False, "why": "cmake not installed"})
        elif nvcc is None:
            attempts.append({"method": "cmake", "ok": False, "why": "nvcc not found"})
        elif arch not in CMAKE_DEFAULT_ARCHS and int(arch) < 90:
            attempts.append({"method": "cmake", "ok": False,
                             "why": f"sm_{arch} is not among CMakeLists.txt's default architectures {CMAKE_DEFAULT_ARCHS}"})
        else:
            ck = import_check_plugin_kernel()
            os.environ.setdefault("CUDACXX", nvcc)
            t0 = time.perf_counter()
            try:
                path = ck.build(build_dir / "cmake")
                if not path.is_file():
                    raise RuntimeError(f"{path} was not produced")
                attempts.append({"method": "cmake", "ok": True, "seconds": round(time.perf_counter() - t0, 1),
                                 "command": "check_plugin_kernel.build(): cmake -S . -B DIR -DCMAKE_BUILD_TYPE=Release && "
                                            "cmake --build DIR --target nuwa_kernels"})
                return path, {"method": "cmake", "arch": arch, "attempts": attempts}
            except (subprocess.CalledProcessError, OSError, RuntimeError) as e:
                attempts.append({"method": "cmake", "ok": False, "seconds": round(time.perf_counter() - t0, 1),
                                 "why": first_line(e) + " (cmake's messages are on this part's stderr)"})
    if "nvcc" in methods:
        if nvcc is None:
            attempts.append({"method": "nvcc", "ok": False, "why": "nvcc not found ($CUDACXX, PATH, /usr/local/cuda/bin)"})
        else:
            out = build_dir / "nvcc" / "libnuwa_kernels.so"
            out.parent.mkdir(parents=True, exist_ok=True)
            cmd = nvcc_command(nvcc, arch, out)
            t0 = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True)
            rec = {"method": "nvcc", "ok": done.returncode == 0 and out.is_file(), "seconds": round(time.perf_counter() - t0, 1),
                   "command": " ".join(cmd)}
            if not rec["ok"]:
                rec["why"] = f"exit {done.returncode}: {(done.stderr or done.stdout)[-1500:]}"
            attempts.append(rec)
            if rec["ok"]:
                return out, {"method": "nvcc", "arch": arch, "attempts": attempts}
    raise RuntimeError("could not build libnuwa_kernels.so: "
                       + "; ".join(f"{a['method']}: {a.get('why', 'failed')}" for a in attempts))


def kernel_reference(ck, case, features, sim, indices, scores):
    """``check_plugin_kernel.reference`` (``nuwa_export.export.ops.swarm_aggregate``); when that op's
    module cannot be imported (it needs onnxscript), the op's own body:
    ``pruning.spec.weights(...) @ features`` in float32, cast back."""
    try:
        return ck.reference(case, features, sim, indices, scores), "nuwa_export.export.ops.swarm_aggregate"
    except ImportError as e:
        import numpy as np
        import torch

        from nuwa_export.pruning.spec import StageOneSpec, weights

        spec = StageOneSpec(1, case.distance, case.percentile, bool(getattr(case, "self_weight", 1)))
        w = weights(torch.from_numpy(sim), torch.from_numpy(indices.astype(np.int64)), torch.from_numpy(scores), tuple(case.grid), spec)
        out = (w @ torch.from_numpy(features).float()).to(torch.from_numpy(features).dtype)
        return out.numpy(), f"pruning.spec.weights(...) @ features, the body of ops.swarm_aggregate ({first_line(e)})"


def part_kernel(rec: "Recorder", args, deadline: float) -> None:
    import numpy as np

    n, why = cuda_devices()
    if n == 0:
        raise Skip(f"no CUDA device: {why}")
    ck = import_check_plugin_kernel()
    info = driver_info(0)
    cc = info.get("compute_capability", "0.0")
    arch = cc.replace(".", "")
    rec.data.update(compute_capability=cc, tolerances={k: {"atol": a, "rtol": r} for k, (a, r) in ck.TOLERANCES.items()})
    rec.phase("build")
    with tempfile.TemporaryDirectory(prefix="nuwa-gpu-check-kernels-") as tmp:
        t0 = time.perf_counter()
        path, build = build_kernel_library(Path(tmp), arch)
        build["seconds"] = round(time.perf_counter() - t0, 1)
        rec.data["build"] = build
        lib = ck.load(path)
        rec.phase("cases")
        cases: list[dict] = []
        rec.data["cases"] = cases
        total = 2 * len(ck.CASES)
        for number, case in enumerate(ck.CASES):
            for dtype in ("float32", "float16"):
                if time.monotonic() > deadline:
                    break
                inputs = ck.make_inputs(case, dtype, seed=number)
                t0 = time.perf_counter()
                status, out = ck.run_kernel(lib, case, *inputs)
                entry = {"case": case.label(), "dtype": dtype, "seed": number,
                         "host_call_ms": round((time.perf_counter() - t0) * 1e3, 3)}
                if status != 0:
                    message = lib.nuwa_status_string(status).decode()
                    entry.update(passed=False, kernel_status=status, error=message)
                    cases.append(entry)
                    if status > 0 and not any(c.get("kernel_status") is None for c in cases):
                        raise RuntimeError(f"the kernel failed on its first case with CUDA error {status} ({message}); "
                                           "a CUDA device is present, so this is a failure, not a skip")
                    rec.save()
                    continue
                ref, ref_name = kernel_reference(ck, case, *inputs)
                rec.data["reference"] = ref_name
                atol, rtol = ck.TOLERANCES[dtype]
                out64, ref64 = out.astype(np.float64), ref.astype(np.float64)
                err = np.abs(out64 - ref64)
                rel = err / np.maximum(np.abs(ref64), 1e-6)
                ok = bool(np.allclose(out64, ref64, atol=atol, rtol=rtol)) and bool(np.isfinite(out64).all())
                entry.update(passed=ok, max_abs_err=float(err.max()), max_rel_err=float(rel.max()), atol=atol, rtol=rtol)
                cases.append(entry)
                rec.save()
        passed = sum(c["passed"] for c in cases)
        rec.data.update(checked=len(cases), passed=passed, total=total)
        failed = [f"{c['case']} {c['dtype']}" for c in cases if not c["passed"]]
        if failed:
            rec.finish("failed", f"{len(failed)} of {len(cases)} cases outside tolerance: " + "; ".join(failed[:6]))
        elif len(cases) < total:
            rec.finish("timed_out", f"the part's time budget ran out after {len(cases)} of {total} cases (all {passed} within tolerance)")
        else:
            rec.finish("ok")


# ---- the model, built on the device -----------------------------------------------------------
def torch_setup(args):
    """torch, the device, the dtype and a synchronise function for this part."""
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise Skip("--device cuda, but torch sees no CUDA GPU")
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    return torch, device, dtype, sync


def require_pillow(what: str) -> None:
    if importlib.util.find_spec("PIL") is None:
        raise Skip(f"Pillow not installed: {what} (nuwa_export.image imports PIL)")
    try:
        import PIL.Image  # noqa: F401
    except ImportError as e:
        raise Skip(f"Pillow not installed or broken: {first_line(e)}; {what}") from None


def build_model(args, rec: "Recorder"):
    """A LLaVA-1.5-7B-shaped (or --tiny) model with HF's seeded random init, constructed on the
    device from ``synthetic.build_config`` (nothing on disk) and wrapped like ``loader.load``."""
    torch, device, dtype, sync = torch_setup(args)
    from transformers import LlavaForConditionalGeneration
    from transformers.utils import logging as hf_logging

    from nuwa_export.image import ImageConfig
    from nuwa_export.models.families.llava import synthetic
    from nuwa_export.models.families.llava.parts import LlavaParts
    from nuwa_export.models.loader import LoadedModel

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    sizes = dict(TINY_SIZES) if args.tiny else dict(synthetic.LLAVA_7B_SIZES)
    llm_vocab = None if args.tiny else synthetic.LLAVA_7B_VOCAB
    t0 = time.perf_counter()
    tokenizer, config = synthetic.build_config(sizes, llm_vocab, args.dtype)
    tokenizer_s = time.perf_counter() - t0
    torch.manual_seed(SEED)
    t0 = time.perf_counter()
    with torch.device(device):
        net = LlavaForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation="sdpa")
    net.eval()
    sync()
    build_s = time.perf_counter() - t0
    gen = net.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    parts = LlavaParts(net)
    name = "tiny" if args.tiny else "llava-1.5-7b-shaped"
    loaded = LoadedModel(net, parts, tokenizer, ImageConfig(size=parts.image_size), f"synthetic:{name}:seed{SEED}",
                         Path(f"(in memory: {name})"))
    params = list(net.parameters())
    rec.data["model"] = {
        "what": ("transformers LlavaForConditionalGeneration._from_config(synthetic.build_config(sizes, llm_vocab_size)) "
                 f"constructed under torch.device('{device}') with transformers' own random init after "
                 f"torch.manual_seed({SEED}); nothing written to disk; wrapped as loader.LoadedModel (LlavaParts, the "
                 "demo tokenizer, LLaVA-1.5 preprocessing)"),
        "sizes": sizes, "llm_vocab_size": config.text_config.vocab_size, "tokenizer_tokens": len(tokenizer),
        "dtype": args.dtype, "device": str(device), "attention": "sdpa", "seed": SEED,
        "parameters": sum(p.numel() for p in params), "weight_bytes": sum(p.numel() * p.element_size() for p in params),
        "tokenizer_s": round(tokenizer_s, 2), "build_s": round(build_s, 2),
    }
    rec.save()
    return torch, device, sync, loaded


def keep_for(num_patches: int, tiny: bool) -> int:
    from nuwa_export.pruning import default_keep

    return default_keep(num_patches) if tiny else 64


def memory_record(torch, device) -> dict:
    import resource

    out = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if device.type == "cuda":
        out.update(cuda_max_allocated_bytes=torch.cuda.max_memory_allocated(device),
                   cuda_max_reserved_bytes=torch.cuda.max_memory_reserved(device),
                   cuda_allocated_now_bytes=torch.cuda.memory_allocated(device))
    else:
        out["cuda"] = None
        out["cuda_reason"] = "CPU run: no CUDA memory statistics (peak_rss_bytes is the process's peak RSS)"
    return out


def reset_peak(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def cache_groups(kv, layer: int, num_layers: int) -> dict:
    """The distinct KV lengths in layers [0, L) and in [L, N) (``kv``: the generation core's two
    KV groups): one value each when every layer of a group holds the same number of entries."""
    first = {kv.prefix.length(i) for i in range(layer)}
    second = {kv.suffix.length(i) for i in range(layer, num_layers)}
    return {"layers_0_to_L-1": sorted(first), "layers_L_to_N-1": sorted(second)}


# ---- part: reference --------------------------------------------------------------------------
def part_reference(rec: "Recorder", args, deadline: float) -> None:
    require_pillow("nuwa_export.runtime.reference imports nuwa_export.image")
    rec.phase("build model")
    torch, device, sync, loaded = build_model(args, rec)
    from nuwa_export import generation
    from nuwa_export.generation import Batch, Live, layout_for
    from nuwa_export.models.demo import example_picture
    from nuwa_export.pruning import BudgetRequest
    from nuwa_export.runtime.runner import open_runner

    mode = "tiny" if args.tiny else "full"
    (pw, pr), (dw, dr) = RUNS[mode]["prefill"], RUNS[mode]["decode"]
    parts = loaded.parts
    keep = keep_for(parts.num_patches, args.tiny)
    requests = {"pruned": BudgetRequest(keep=keep), "unpruned": BudgetRequest(prune=False)}
    refs = {k: open_runner(loaded, budgets=r) for k, r in requests.items()}
    budgets = {k: ref.budgets for k, ref in refs.items()}
    stages = {k: ref.stages() for k, ref in refs.items()}
    layout = layout_for(stages["pruned"], PROMPT, 1 + RUNS[mode]["decode"][0] + RUNS[mode]["decode"][1])
    prompt = layout.prompt
    nb, nc = len(prompt.before), len(prompt.after)
    pixels = refs["pruned"].pixel_values(example_picture())
    rec.data["input"] = {"image": "the demo's example picture (320x240), LLaVA-1.5 preprocessing",
                         "prompt": PROMPT, "text_tokens": nb + nc,
                         "text_before_image": nb, "text_after_image": nc}
    rec.data["budgets"] = {k: b.as_dict() for k, b in budgets.items()}
    after_build = memory_record(torch, device)
    rec.data["memory"] = {"after_build": after_build}
    checks: list[dict] = []
    rec.data["checks"] = checks
    exhausted: list[str] = []

    def check(name, got, want):
        checks.append({"check": name, "expected": want, "got": got, "ok": got == want})

    # ---- prefill, pruned and unpruned ---------------------------------------------------------
    prefill: dict = {}
    rec.data["prefill"] = prefill
    with torch.inference_mode():
        for label, b in budgets.items():
            rec.phase(f"prefill {label}")
            ref, st = refs[label], stages[label]
            batch = Batch((generation.Layout(prompt, ref.plan),))
            reset_peak(torch, device)
            v_ms, vision, ex_v = timed(lambda ref=ref: ref.vision(pixels), sync, pw, pr, deadline)
            p_ms, pre, ex_p = timed(lambda st=st, batch=batch, vision=vision: generation.prefill(st, batch, vision.tokens, vision.indices, st.clock()),
                                    sync, pw, pr, deadline)
            if ex_v or ex_p:
                exhausted.append(f"prefill {label}")
            tokens_k1 = int(vision.tokens.shape[1])
            kv = cache_groups(pre.kv, b.layer, b.num_layers)
            want_k1 = b.k1 if b.prune else b.num_patches
            want_k2 = b.k2 if b.prune else b.num_patches
            check(f"{label}: vision tokens entering the LLM", tokens_k1, want_k1)
            check(f"{label}: KV length, layers [0, L)", kv["layers_0_to_L-1"], [nb + want_k1 + nc])
            check(f"{label}: KV length, layers [L, N)", kv["layers_L_to_N-1"], [nb + want_k2 + nc])
            check(f"{label}: stage-two tokens", None if pre.stage_two is None else int(pre.stage_two.shape[1]),
                  b.k2 if b.prune else None)
            logits = pre.logits
            prefill[label] = {
                "what": ("Reference.vision(pixels) (tower, stage one, projector) and generation.prefill on the reference's "
                         "stages (layers [0, L), stage two, layers [L, N), logits), each timed alone with synchronisation"),
                "vision_ms": stats(v_ms), "prefill_ms": stats(p_ms),
                "vision_plus_prefill_median_ms": round(statistics.median(v_ms) + statistics.median(p_ms), 3),
                "warmup": pw, "vision_tokens": tokens_k1,
                "stage_two_tokens": None if pre.stage_two is None else int(pre.stage_two.shape[1]),
                "kv_lengths": kv, "kv_cache_bytes": st.past_bytes(pre.kv.prefix) + st.past_bytes(pre.kv.suffix),
                "first_token": int(logits.argmax(dim=-1)[0]), "logits_finite": bool(torch.isfinite(logits).all()),
                "memory": memory_record(torch, device), "budget_exhausted": ex_v or ex_p,
            }
            rec.save()

        # ---- decode, batch 1 and batch 8 -----------------------------------------------------
        decode: dict = {}
        rec.data["decode"] = decode
        gen = torch.Generator().manual_seed(SEED)
        for label, b in budgets.items():
            ref, st = refs[label], stages[label]
            vision = ref.vision(pixels)
            for batch in (1, 8):
                rec.phase(f"decode {label} batch {batch}")
                reset_peak(torch, device)
                pre = generation.prefill(st, Batch((generation.Layout(prompt, ref.plan),)), vision.tokens, vision.indices, st.clock())
                start_kv = cache_groups(pre.kv, b.layer, b.num_layers)
                first = int(pre.logits.argmax(dim=-1)[0])
                rows = torch.zeros(batch, dtype=torch.long, device=device)  # the prefill's row, copied batch times
                live = Live(Batch((generation.Layout(prompt, ref.plan),) * batch), pre.kv.take(st, rows), pre.vision_start[rows], pre.pad[rows])
                tokens = [first] + torch.randint(3, len(loaded.tokenizer), (batch - 1,), generator=gen).tolist()
                state = {"tokens": tokens, "i": 0}

                def step(st=st, live=live, state=state):
                    logits = generation.step(st, live, state["tokens"], state["i"])
                    state["tokens"] = st.to_host(logits.argmax(dim=-1)).tolist()
                    state["i"] += 1
                what = (f"{batch} stream{'s' * (batch > 1)} decoding in lock-step through generation.step (the generation "
                        "core's decode step: both KV groups, each with its own length) on the reference's stages and the "
                        "greedy argmax, its ids copied to the host every step as the core does; the KV cache is the batch-1 "
                        f"prefill's (its two groups: b+K1+c entries in layers [0, L), b+K2+c in [L, N))"
                        + (f" copied {batch} times; streams start from different tokens" if batch > 1 else "")
                        + f"; tokens/s = {batch} * 1000 / median step ms")
                s_ms, _, ex = timed(step, sync, dw, dr, deadline)
                if ex:
                    exhausted.append(f"decode {label} batch {batch}")
                median = statistics.median(s_ms)
                decode[f"{label}_batch{batch}"] = {
                    "what": what, "batch": batch, "kv_lengths_at_start": start_kv, "warmup_steps": dw,
                    "step_ms": stats(s_ms), "tokens_per_s": round(batch * 1000.0 / median, 3),
                    "memory": memory_record(torch, device), "budget_exhausted": ex,
                }
                del live, state, pre
                rec.save()
            if time.monotonic() < deadline:
                decode[f"{label}_generate_batch"] = generate_batch_record(torch, device, ref, example_picture(), 16 if not args.tiny else 4)
                rec.save()
    peaks = [e["memory"].get("cuda_max_allocated_bytes") for e in (*prefill.values(), *decode.values())]
    rec.data["memory"]["peak"] = memory_record(torch, device)
    if device.type == "cuda":
        rec.data["memory"]["peak"]["cuda_max_allocated_bytes"] = max([p for p in peaks if p is not None], default=0)
        rec.data["memory"]["what"] = ("torch.cuda.max_memory_allocated, reset before each measurement; "
                                      "peak = the largest of them (weights included)")
    rec.data["budget_exhausted"] = exhausted
    bad = [c["check"] for c in checks if not c["ok"]]
    if bad:
        rec.finish("failed", "checks failed: " + "; ".join(bad))
    else:
        rec.finish("ok", None if not exhausted else "time budget reached: fewer runs than planned in " + ", ".join(exhausted))


BATCH_PROMPTS = (
    "What is in the picture?", "Describe the picture in detail, please, with every colour you see.", "Hi",
    "Where is the red car?", "How many people are there?", "What is the man on the right holding?",
    "Is it day or night? Answer in one word.", "What colour is the sky?",
)


def generate_batch_record(torch, device, ref, image, new_tokens: int) -> dict:
    """``Reference.generate_batch`` on 8 requests of different prompt lengths (the runtime's one
    batched core, left-padded, on the GPU) against each request alone: decode tokens/s and how
    many rows gave the same tokens and stage indices (float16 kernels differ with the batch size,
    so a near-tie may flip: recorded, not a failure)."""
    from nuwa_export.generation import Request
    from nuwa_export.sampling import SamplingConfig

    cfg = SamplingConfig(max_new_tokens=new_tokens, stop_at_eos=False)
    requests = [Request(image, p, cfg) for p in BATCH_PROMPTS]
    ref.generate_batch(requests[:2])  # warm-up
    reset_peak(torch, device)
    together = ref.generate_batch(requests)
    alone = [ref.generate(image, p, cfg) for p in BATCH_PROMPTS]
    t = together[0].timings_ms
    return {
        "what": ("Reference.generate_batch on 8 requests (the prompts in BATCH_PROMPTS, one image) vs each request alone "
                 "through Reference.generate; greedy, EOS ignored; tokens/s = 8 * 1000 / decode ms per step"),
        "batch": len(requests), "new_tokens": new_tokens,
        "time_to_first_token_ms": round(t["time_to_first_token"], 3), "decode_ms_per_step": round(t["decode_per_token"], 3),
        "tokens_per_s": round(len(requests) * 1000.0 / t["decode_per_token"], 3),
        "alone_decode_ms_per_step": [round(r.timings_ms["decode_per_token"], 3) for r in alone],
        "rows_same_tokens": sum(a.generated_ids == b.generated_ids for a, b in zip(alone, together)),
        "rows_same_stage_indices": sum(a.stage_one_indices == b.stage_one_indices and a.stage_two_indices == b.stage_two_indices for a, b in zip(alone, together)),
        "memory": memory_record(torch, device),
    }


# ---- part: eager (authors'-style) vs ours -----------------------------------------------------
def set_attention(model, impl: str) -> None:
    """Switch every attention module of the model to ``impl`` ("eager" or "sdpa")."""
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(impl)
    else:  # older transformers: the modules read their config at every call
        for c in (model.config, model.config.text_config, model.config.vision_config):
            c._attn_implementation = impl
    got = {c: getattr(model.config, c)._attn_implementation for c in ("text_config", "vision_config")}
    if any(v != impl for v in got.values()):
        raise RuntimeError(f"could not switch attention to {impl}: {got}")


def authors_on_model(model, budgets, options, image_config, device):
    """``export_vs_eager.AuthorsEager`` on an already-built model.

    Its ``__init__`` loads a checkpoint from disk; this does what it does after loading (parts,
    budgets, cache keyword, the self_attn hooks that keep the full maps) on ``model``, and moves
    the pixels its ``first_token`` makes on the CPU onto the model's device and dtype. Its
    ``first_token`` is the authors' pipeline, unchanged; call it under ``torch.device(device)`` so
    the index tensors it creates land on the GPU. The hooks are removed by ``close()``.
    """
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from export_vs_eager import AuthorsEager

    from nuwa_export.models.decoder import cache_keyword
    from nuwa_export.models.families.llava.parts import LlavaParts

    class AuthorsOnModel(AuthorsEager):
        def __init__(self) -> None:  # noqa: D401 - see authors_on_model
            self.parts, self.b, self.o, self.image_config = LlavaParts(model), budgets, options, image_config
            self.cache_kw = cache_keyword(self.parts.lm.layers[0])
            self.maps = []
            self.map_bytes = 0
            self.handles = [layer.self_attn.register_forward_hook(lambda _m, _a, out: self.maps.append(out[1]))
                            for layer in self.parts.lm.layers[: budgets.layer]]
            tower, vdtype = self.parts.vision, self.parts.vision_dtype
            self.parts.vision = lambda pixels, **kw: tower(pixels.to(device, vdtype), **kw)

        def close(self) -> None:
            for h in self.handles:
                h.remove()
            self.handles = []

    return AuthorsOnModel()


def part_eager(rec: "Recorder", args, deadline: float) -> None:
    require_pillow("the authors'-style pipeline preprocesses a PIL image")
    rec.phase("build model")
    torch, device, sync, loaded = build_model(args, rec)
    from nuwa_export import generation
    from nuwa_export.generation import Batch, layout_for
    from nuwa_export.models.demo import example_picture
    from nuwa_export.pruning import BudgetRequest
    from nuwa_export.runtime.runner import open_runner

    mode = "tiny" if args.tiny else "full"
    warm, runs = RUNS[mode]["ttft"]
    parts, net = loaded.parts, loaded.model
    ref = open_runner(loaded, budgets=BudgetRequest(keep=keep_for(parts.num_patches, args.tiny)))
    b, st = ref.budgets, ref.stages()
    options = ref.spec  # the defaults filled in: the authors' pipeline reads per_region, distance, percentile
    image = example_picture()
    layout = layout_for(st, PROMPT, 1)
    prompt = layout.prompt
    rec.data["budgets"] = b.as_dict()
    rec.data["input"] = {"image": "the demo's example picture (320x240)", "prompt": PROMPT,
                         "text_tokens": len(prompt.before) + len(prompt.after), "max_new_tokens": 1}
    def ours():
        vision = ref.vision(ref.pixel_values(image))
        pre = generation.prefill(st, Batch((layout,)), vision.tokens, vision.indices, st.clock())
        token = int(pre.logits.argmax(dim=-1)[0])
        return token, vision.indices[0].tolist(), vision.indices[0, pre.stage_two[0]].tolist()

    def theirs():
        with torch.device(device):
            logits, s1, s2, _ = authors.first_token(image, prompt)
        return int(logits.argmax(dim=-1)[0]), s1, s2

    with torch.inference_mode():
        rec.phase("ours")
        set_attention(net, "sdpa")
        o_ms, o_pick, ex_o = timed(ours, sync, warm, runs, deadline)
    rec.data["ours"] = {"what": ("Reference.pixel_values + vision + generation.prefill (sdpa attention; the CLS row "
                                 "and the L-1 row computed alone) and the first token's argmax, synchronised"),
                        "attention": "sdpa", "ttft_ms": stats(o_ms), "warmup": warm, "budget_exhausted": ex_o}
    rec.phase("import the authors' pipeline")
    authors = authors_on_model(net, b, options, loaded.image_config, device)  # its hooks exist from here on
    try:
        with torch.inference_mode():
            rec.phase("authors")
            set_attention(net, "eager")
            a_ms, a_pick, ex_a = timed(theirs, sync, warm, runs, deadline)
            rec.data["authors"] = {"what": ("benchmarks/export_vs_eager.AuthorsEager.first_token: preprocessing, CLIP with "
                                            "output_attentions=True and output_hidden_states=True (every layer's full "
                                            "map), LLM layers [0, L) with eager attention and their full maps kept by "
                                            "self_attn hooks, stage two from layer L-1's map, layers [L, N); then the "
                                            "first token's argmax, synchronised"),
                                   "attention": "eager", "ttft_ms": stats(a_ms), "warmup": warm,
                                   "attention_map_bytes_per_image": authors.map_bytes, "budget_exhausted": ex_a}
    finally:
        authors.close()
        set_attention(net, "sdpa")
    same = {"stage_one_patches": o_pick[1] == a_pick[1], "stage_two_patches": o_pick[2] == a_pick[2],
            "first_token": o_pick[0] == a_pick[0]}
    strict = device.type == "cpu" and loaded.model.dtype == torch.float32
    rec.data["same_choices"] = same
    rec.data["choices_must_match"] = strict
    rec.data["choices_note"] = ("float32 on the CPU: both must choose the same patches and token (as benchmarks/"
                                "export_vs_eager.py requires)" if strict else
                                "reduced precision or a GPU: eager and sdpa round differently, so a near-tie may flip; "
                                "recorded, not required")
    rec.data["ratio_authors_over_ours"] = {
        "ttft_median": round(statistics.median(a_ms) / statistics.median(o_ms), 4),
        "ttft_min": round(min(a_ms) / min(o_ms), 4),
    }
    rec.data["budget_exhausted"] = [k for k, v in (("ours", ex_o), ("authors", ex_a)) if v]
    if strict and not all(same.values()):
        rec.finish("failed", "the two pipelines chose differently: " + ", ".join(k for k, v in same.items() if not v))
    else:
        rec.finish("ok")


# ---- part: pytest -m gpu ----------------------------------------------------------------------
SUMMARY = re.compile(r"\b(passed|failed|skipped|errors?|deselected|collected|no tests ran|xfailed|xpassed)\b.* in [\d.]+s")


def summary_line(stdout: str) -> str | None:
    """pytest's last summary line (``=== 1 passed, 1 skipped in 3.1s ===`` or, collecting only,
    ``2/524 tests collected (522 deselected) in 5.1s``), without the ``=`` rules."""
    for line in reversed(stdout.splitlines()):
        text = line.strip().strip("=").strip()
        if SUMMARY.search(text):
            return text
    return None


def parse_junit(path: Path) -> tuple[list[dict], list[dict]]:
    """``(tests, collection_errors)`` from a JUnit XML report: every test's id and outcome
    (passed, failed, error, skipped, xfailed) with the message when there is one."""
    import xml.etree.ElementTree as ET

    tests, collection = [], []
    for case in ET.parse(path).getroot().iter("testcase"):
        classname, name = case.get("classname", ""), case.get("name", "")
        test_id = f"{classname}::{name}" if classname else name
        outcome, message = "passed", None
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                message = child.get("message") or ""
                text = (child.text or "").strip()
                if child.tag == "error" and message.startswith("collection failure"):
                    last = text.splitlines()[-1] if text else message
                    collection.append({"module": name or classname, "error": last[:300]})
                    outcome = None
                    break
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                if child.tag == "skipped" and child.get("type") == "pytest.xfail":
                    outcome = "xfailed"
                if not message and text:
                    message = text.splitlines()[-1]
                break
        if outcome is not None:
            tests.append({"test": test_id, "outcome": outcome, "message": (message or None) and message[:500],
                          "seconds": float(case.get("time", 0) or 0)})
    return tests, collection


def parse_verbose(stdout: str) -> list[dict]:
    """Per-test outcomes from ``-v`` lines (``path::test PASSED [ 50%]``): the fallback when pytest
    was stopped before it wrote its JUnit report."""
    out = []
    for line in stdout.splitlines():
        m = re.match(r"^(\S+::\S+)\s+(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b", line.strip())
        if m:
            out.append({"test": m.group(1), "outcome": m.group(2).lower().replace("xfail", "xfailed"), "message": None})
    return out


def collection_errors_from_output(stdout: str) -> list[dict]:
    """Modules pytest could not import, from its ``ERROR collecting PATH`` sections (the error is
    the last ``E   `` line of each section)."""
    out = []
    blocks = re.split(r"^_+ ERROR collecting (\S+) _+$", stdout, flags=re.M)
    for path, body in zip(blocks[1::2], blocks[2::2]):
        body = re.split(r"^[=_]{3,} .* [=_]{3,}$", body, maxsplit=1, flags=re.M)[0]  # up to the next section
        errors = [ln[1:].strip() for ln in body.splitlines() if ln.startswith("E ")]
        out.append({"module": path, "error": errors[-1][:300] if errors else None})
    return out


def part_pytest(rec: "Recorder", args, deadline: float) -> None:
    if importlib.util.find_spec("pytest") is None:
        raise Skip("pytest not installed")
    devices, why = cuda_devices()
    if args.requested_device == "cpu":
        collect_only = "--device cpu"
    elif devices == 0:
        collect_only = f"no CUDA device ({why})"
    else:
        collect_only = None
    with tempfile.TemporaryDirectory(prefix="nuwa-gpu-check-pytest-") as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", "--continue-on-collection-errors",
               "-rA", f"--junitxml={xml}", *(["--collect-only", "-q"] if collect_only else ["-v"])]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        rec.data.update(command=" ".join(["python", *cmd[1:]]).replace(str(xml), "JUNIT.xml"),
                        mode="collect-only" if collect_only else "run")
        if collect_only:
            rec.data["mode_reason"] = (f"{collect_only}: without a GPU the gpu tests would only skip, after their "
                                       "fixtures built the CUDA kernel library and exported the demo; collected, not run")
        timeout = max(5.0, deadline - time.monotonic())
        rec.phase("pytest")
        t0 = time.perf_counter()
        try:
            done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
            stdout, stderr, rc, late = done.stdout, done.stderr, done.returncode, False
        except subprocess.TimeoutExpired as e:
            stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
            rc, late = None, True
        rec.data.update(seconds=round(time.perf_counter() - t0, 1), returncode=rc, summary=summary_line(stdout),
                        stdout_tail=stdout[-3000:], stderr_tail=stderr[-1500:] or None)
        if collect_only:
            tests = [{"test": ln.strip(), "outcome": "collected", "message": None}
                     for ln in stdout.splitlines() if "::" in ln and not ln.startswith(("ERROR", "FAILED", " "))]
            collection = collection_errors_from_output(stdout)
        elif xml.is_file():
            tests, collection = parse_junit(xml)
        else:
            tests, collection = parse_verbose(stdout), collection_errors_from_output(stdout)
    rec.data.update(tests=tests, collection_errors=collection)
    counts: dict = {}
    for t in tests:
        counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
    rec.data["counts"] = counts
    if collection:
        rec.data["collection_note"] = (f"{len(collection)} test module(s) could not be imported (usually a package this "
                                       "machine lacks); gpu tests inside them, if any, did not run")
    if late:
        rec.finish("timed_out", f"pytest was stopped after {timeout:.0f} s (the part's budget); outcomes so far are kept")
    elif not tests:
        rec.finish("failed", f"no gpu-marked test was {'collected' if collect_only else 'run'} (pytest exit code {rc})")
    elif counts.get("failed") or counts.get("error"):
        rec.finish("failed", f"{counts.get('failed', 0)} failed, {counts.get('error', 0)} errors: "
                   + "; ".join(t["test"] for t in tests if t["outcome"] in ("failed", "error"))[:800])
    else:
        rec.finish("ok")


PART_FUNCS = {"kernel": part_kernel, "reference": part_reference, "eager": part_eager, "pytest_gpu": part_pytest}


# ---- running parts in their own processes -----------------------------------------------------
class Recorder:
    """A part's results, rewritten to its file after every step (so a killed part keeps them)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.data: dict = {"status": "running", "phase": "starting"}
        self.save()

    def phase(self, name: str) -> None:
        self.data["phase"] = name
        self.save()

    def finish(self, status: str, reason: str | None = None) -> None:
        self.data["status"] = status
        self.data["reason"] = reason
        self.save()

    def save(self) -> None:
        write_json(self.path, self.data)


def child_main(args) -> int:
    """Run one part in this process; its results go to ``--_part-out``."""
    rec = Recorder(args._part_out)
    deadline = time.monotonic() + args._soft_s
    try:
        PART_FUNCS[args._part](rec, args, deadline)
    except Skip as e:
        rec.finish("skipped", str(e))
    except BaseException as e:  # every failure becomes a record, never a lost part
        rec.data["traceback"] = traceback.format_exc()[-4000:]
        rec.finish("error", f"during '{rec.data.get('phase')}': {first_line(e)}")
    if rec.data.get("status") == "running":
        rec.finish("error", "the part returned without a result")
    return 0


def run_child(part: str, args, budget_s: float, workdir: Path, state: dict) -> dict:
    """Run ``part`` in a new process group; kill it at ``budget_s``; return its record."""
    out, log_out, log_err = workdir / f"{part}.json", workdir / f"{part}.stdout", workdir / f"{part}.stderr"
    soft = max(1.0, min(budget_s * 0.8, budget_s - 15.0))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_part", part, "--_part-out", str(out), "--_soft-s", f"{soft:.1f}",
           "--device", args.device, "--_requested-device", args.requested_device, "--dtype", args.dtype]
    if args.tiny:
        cmd.append("--tiny")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    with open(log_out, "w") as fo, open(log_err, "w") as fe:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fo, stderr=fe, start_new_session=True)
        state["proc"] = proc
        timed_out = False
        try:
            rc = proc.wait(timeout=budget_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(proc)
            rc = proc.returncode
        except KeyboardInterrupt:
            kill_group(proc)
            raise
        finally:
            state["proc"] = None
    wall = time.perf_counter() - t0
    try:
        data = json.loads(out.read_text())
    except (OSError, ValueError):
        data = {}
    err_tail = log_err.read_text(errors="replace")[-2000:] if log_err.is_file() else ""
    if timed_out:
        data["status"] = "timed_out"
        data["reason"] = (f"stopped at its hard time limit of {budget_s:.0f} s, during '{data.get('phase', 'start-up')}'; "
                          "what it had measured by then is kept")
    elif data.get("status") in (None, "running"):
        data["status"] = "error"
        data["reason"] = (f"its process exited with code {rc} during '{data.get('phase', 'start-up')}' without a result: "
                          + (err_tail.strip().splitlines() or ["no message"])[-1])
    if data["status"] in ("error", "timed_out") and err_tail.strip():
        data["stderr_tail"] = err_tail
    data.update(wall_s=round(wall, 1), budget_s=round(budget_s, 1), soft_budget_s=round(soft, 1), returncode=rc)
    return data


def kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, to the part's process group (it was started in its own session)."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def pre_skip(part: str, args, machine: dict) -> str | None:
    """Why ``part`` cannot run here, found without starting it (None: start it)."""
    if part == "kernel":
        if machine.get("cuda_driver_devices", 0) == 0:
            return f"no CUDA device: {machine.get('cuda_driver_absent_reason', 'the CUDA driver reports none')}"
        if args.requested_device == "cpu":
            return "--device cpu: the kernel check runs only on a GPU"
    if part in ("reference", "eager"):
        if machine.get("torch") is None:
            return f"torch not importable: {machine.get('torch_import_error')}"
        if version_of("transformers") is None:
            return "transformers not installed"
        if args.device == "cuda" and not machine.get("cuda_available"):
            return "--device cuda, but torch sees no CUDA GPU"
    if part == "pytest_gpu" and importlib.util.find_spec("pytest") is None:
        return "pytest not installed"
    return None


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="the JSON file to write (required; e.g. $OUT/gpu_check.json)")
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="auto: cuda when torch sees a GPU")
    ap.add_argument("--tiny", action="store_true", help="tiny model and few runs (seconds on a CPU)")
    ap.add_argument("--quick", action="store_true", help="CI mode: the same as --device cpu --tiny")
    ap.add_argument("--dtype", choices=("auto", "float16", "bfloat16", "float32"), default="auto",
                    help="model dtype (auto: float16 on a GPU, float32 on the CPU)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--budget", action="append", default=[], metavar="PART=SECONDS", help="override a part's time budget")
    ap.add_argument("--total-budget", type=float, default=None, help="seconds for the whole run (default 450; 240 with --tiny)")
    ap.add_argument("--_part", choices=PARTS, help=argparse.SUPPRESS)
    ap.add_argument("--_part-out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--_soft-s", type=float, default=60.0, help=argparse.SUPPRESS)
    ap.add_argument("--_requested-device", dest="requested_device", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.out is None and not args._part:
        ap.error("--out is required (the JSON file to write, e.g. $OUT/gpu_check.json)")
    if args.quick:
        args.device, args.tiny = "cpu", True
    if args.requested_device is None:
        args.requested_device = args.device
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        ap.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    args.parts = parts
    budgets = dict(PART_BUDGET_S["tiny" if args.tiny else "full"])
    for item in args.budget:
        name, _, value = item.partition("=")
        try:
            seconds = float(value)
        except ValueError:
            seconds = float("nan")
        if name not in PARTS or not math.isfinite(seconds) or seconds <= 0:
            ap.error(f"--budget {item!r}: expected PART=SECONDS with PART one of {', '.join(PARTS)}")
        budgets[name] = seconds
    args.budgets = budgets
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._part:
        return child_main(args)
    started, t_start = _dt.datetime.now(_dt.timezone.utc), time.monotonic()
    total = args.total_budget or TOTAL_BUDGET_S["tiny" if args.tiny else "full"]
    machine = describe_machine()
    if args.device == "auto":
        args.device = "cuda" if machine.get("cuda_available") else "cpu"
    if args.dtype == "auto":
        args.dtype = "float16" if args.device == "cuda" else "float32"
    result = {
        "schema": SCHEMA,
        "command": " ".join(["python", *sys.argv]) if argv is None else " ".join(["python", "scripts/gpu_check.py", *argv]),
        "how_to_run": RUN_COMMAND,
        "started_at": started.isoformat(timespec="seconds"),
        "mode": {"device": args.device, "requested_device": args.requested_device, "dtype": args.dtype, "tiny": args.tiny,
                 "parts": args.parts},
        "budgets_s": {"total": total, **{p: args.budgets[p] for p in PARTS}},
        "machine": machine,
        "parts": {p: {"status": "pending"} for p in PARTS},
    }
    write_json(args.out, result)
    state: dict = {"proc": None}
    interrupted = False
    with tempfile.TemporaryDirectory(prefix="nuwa-gpu-check-") as tmp:
        try:
            for part in PARTS:
                t0 = time.monotonic()
                remaining = total - (t0 - t_start) - 5.0
                budget = min(args.budgets[part], remaining)
                if part not in args.parts:
                    record = {"status": "skipped", "reason": f"not selected (--parts {','.join(args.parts)})"}
                elif (why := pre_skip(part, args, machine)) is not None:
                    record = {"status": "skipped", "reason": why}
                elif remaining < 10.0:
                    record = {"status": "skipped", "reason": f"no time left: the whole check is limited to {total:.0f} s "
                                                             f"and {max(0.0, remaining):.0f} s remained"}
                else:
                    print(f"gpu_check: {part} (budget {budget:.0f} s) ...", file=sys.stderr, flush=True)
                    record = run_child(part, args, budget, Path(tmp), state)
                record.setdefault("reason", None)
                record.setdefault("wall_s", round(time.monotonic() - t0, 1))
                result["parts"][part] = record
                print(f"gpu_check: {part}: {record['status']}" + (f" ({record['reason']})" if record["reason"] else ""),
                      file=sys.stderr, flush=True)
                write_json(args.out, result)
        except KeyboardInterrupt:
            interrupted = True
            if state.get("proc") is not None:
                kill_group(state["proc"])
    result["finished_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    result["wall_s"] = round(time.monotonic() - t_start, 1)
    result["summary"] = {p: result["parts"][p]["status"] for p in PARTS}
    if interrupted:
        result["interrupted"] = True
    write_json(args.out, result)
    print(f"gpu_check: wrote {args.out} in {result['wall_s']:.0f} s: "
          + ", ".join(f"{k} {v}" for k, v in result["summary"].items()), file=sys.stderr)
    if interrupted:
        return 130
    return 0 if all(s in ("ok", "skipped") for s in result["summary"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
