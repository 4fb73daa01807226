"""``nuwa-profile``: per-stage timings, memory and KV-cache size of an export, over repeated runs.

Each run is one :meth:`Pipeline.generate` (or the PyTorch reference's ``generate`` with
``--backend torch``); the stage timings are the ones every backend already records
(``GenerationResult.timings_ms``). After ``warmup`` untimed runs, ``runs`` timed runs give a
median, a p90 and every value per stage. EOS is ignored, so each run generates exactly
``max_new_tokens`` tokens and decode rates compare across runs and backends.

``vision`` is the vision graph's scope on every backend: tower, stage one and projector (the
reference's separate laps are also reported as ``vision_tower``, ``stage_one``, ``projector``).
``tokens_per_s`` is the decode rate, ``1000 / decode_per_token``.

The trtexec side (``--trtexec``) is in :mod:`nuwa_export.profile.trtexec`.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

import numpy as np

from nuwa_export import __version__
from nuwa_export import manifest as mf
from nuwa_export.errors import NuwaError
from nuwa_export.precision import ITEMSIZE

SCHEMA_VERSION = 2  # 2: "transfers"
#: Stages in the order they run; those a backend does not record are left out.
STAGES = (
    "preprocess", "vision", "vision_tower", "stage_one", "projector", "prefix", "stage_two", "suffix",
    "time_to_first_token", "decode", "decode_per_token", "tokens_per_s", "total",
)
#: The parts of the time to first token, for the chart.
PREFILL_PARTS = ("preprocess", "vision", "prefix", "stage_two", "suffix")
_TORCH_VISION = ("vision", "stage_one", "projector")


def stats(values: list[float]) -> dict:
    """``{median, p90, all}`` (linear interpolation, as NumPy's default percentile)."""
    a = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(a)), "p90": float(np.percentile(a, 90)), "all": [float(v) for v in values]}


def stage_times(timings_ms: dict[str, float]) -> dict[str, float]:
    """One run's ``timings_ms`` → the profile's stages (see the module docstring)."""
    t = dict(timings_ms)
    if "stage_one" in t:  # the reference laps tower, stage one and projector separately
        t["vision_tower"] = t["vision"]
        t["vision"] = sum(t[k] for k in _TORCH_VISION)
    t["tokens_per_s"] = 1000.0 / t["decode_per_token"] if t.get("decode_per_token") else 0.0
    return {k: t[k] for k in STAGES if k in t}


def kv_cache(result, manifest: mf.Manifest) -> dict:
    """KV-cache bytes after a run, split into the two groups (docs/algorithm.md §5).

    Layers ``[0, L)`` hold ``b + K1 + c`` prompt entries, layers ``[L, N)`` hold ``b + K2 + c``;
    both hold ``g - 1`` generated entries (the last token is never fed back). ``unpruned_bytes``
    is what plain LLaVA would hold: all patches in every layer. The bytes per element are those
    of the caches measured (``total_bytes``), or the export's LLM dtype if they do not divide.
    """
    b, llm = result.budgets, manifest.llm
    text = len(result.prompt.before) + len(result.prompt.after)
    gen = max(0, len(result.generated_ids) - 1)
    e1, e2 = text + b.k1 + gen, text + b.k2 + gen
    per_entry = 2 * llm.num_kv_heads * llm.head_dim  # K and V, elements per layer and token
    elements = per_entry * (b.layer * e1 + (b.num_layers - b.layer) * e2)
    itemsize, rest = divmod(result.kv_cache_bytes, elements) if elements else (0, 0)
    if rest or not itemsize:  # a backend that reports allocated capacity: use the export's dtype
        itemsize = ITEMSIZE[manifest.precision.kv]
    return {
        "total_bytes": int(result.kv_cache_bytes),
        "prefix_layers": {"layers": [0, b.layer], "vision_tokens": b.k1, "entries": e1, "bytes": b.layer * e1 * per_entry * itemsize},
        "suffix_layers": {
            "layers": [b.layer, b.num_layers], "vision_tokens": b.k2, "entries": e2,
            "bytes": (b.num_layers - b.layer) * e2 * per_entry * itemsize,
        },
        "unpruned_bytes": b.num_layers * (text + b.num_patches + gen) * per_entry * itemsize,
        "bytes_per_element": int(itemsize),
    }


def machine() -> dict:
    """CPU model, cores, memory and GPU of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None,
        "platform": platform.platform(),
        "gpu": None,
    }
    import torch

    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def versions() -> dict:
    out = {"nuwa_export": __version__, "python": platform.python_version()}
    for pkg in ("torch", "onnxruntime", "onnxruntime-gpu", "transformers", "numpy", "tensorrt"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _rss_peak_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB


def profile(
    export_dir: str | Path,
    image: str | Path | None = None,
    prompt: str = "What is in the picture?",
    *,
    backend: str = "ort",
    device: str = "auto",
    dtype: str = "auto",
    runs: int = 5,
    warmup: int = 1,
    max_new_tokens: int = 16,
    progress: bool = False,
) -> dict:
    """Profile ``export_dir`` and return the JSON-ready report (``schema_version`` 2); ``image``
    None: the example picture of the demo checkpoint the export came from."""
    from nuwa_export.image import load_image
    from nuwa_export.runtime.exports import read_export
    from nuwa_export.runtime.runner import (
        checkpoint_dir,
        example_picture_of,
        open_runner,
    )
    from nuwa_export.sampling import SamplingConfig

    if runs < 1 or warmup < 0:
        raise NuwaError(f"--runs must be >= 1 and --warmup >= 0, got {runs} and {warmup}")
    if max_new_tokens < 2:
        raise NuwaError(f"--max-new-tokens must be at least 2 to time decoding, got {max_new_tokens}")
    directory = Path(export_dir).expanduser()
    manifest = read_export(directory)
    image_path = Path(image) if image else example_picture_of(checkpoint_dir(manifest.model.id))
    if image_path is None:
        raise NuwaError("--image is required (only the demo model has a built-in example picture)")
    picture = load_image(image_path)
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, stop_at_eos=False)
    runner = open_runner(directory, backend=backend, device=device, dtype=dtype, manifest=manifest)
    engine_device = runner.stages().device
    # which LLM graphs ran: the ONNX Runtime ones (fused attention, in-place KV) or the standard ones
    llm_graphs = None if backend == "torch" else ("ort" if getattr(runner.backend, "in_place", False) else "standard")
    cuda = backend == "torch" and engine_device.type == "cuda"
    try:
        samples, results = [], []
        with _progress(progress, warmup + runs) as advance:
            for i in range(warmup + runs):
                if cuda and i == warmup:
                    import torch

                    torch.cuda.reset_peak_memory_stats()
                result = runner.generate(picture, prompt, sampling)
                if i >= warmup:
                    samples.append(stage_times(result.timings_ms))
                    results.append(result)
                advance()
    finally:
        runner.close()
    memory = {"rss_peak_bytes": _rss_peak_bytes(), "cuda_peak_allocated_bytes": None}
    if cuda:
        import torch

        memory["cuda_peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    last = results[-1]
    return {
        "schema_version": SCHEMA_VERSION,
        "machine": machine(),
        "versions": versions(),
        "export": {
            "directory": str(directory.resolve()),
            "model": manifest.model.id,
            "grid": list(manifest.grid),
            "num_patches": manifest.num_patches,
            "budgets": asdict(manifest.budgets),
            "llm_dtype": manifest.precision.float_type,
            "exported_with": dict(manifest.versions),
        },
        "settings": {
            "backend": backend, "device": device, "runs": runs, "warmup": warmup, "max_new_tokens": max_new_tokens,
            "llm_graphs": llm_graphs,
            "image": str(image_path), "prompt": prompt, "prompt_tokens": len(last.prompt.input_ids) - 1,
        },
        "generated_tokens": len(last.generated_ids),
        "stages_ms": {k: stats([s[k] for s in samples]) for k in STAGES if k in samples[0]},
        "memory": memory,
        "kv_cache": kv_cache(last, manifest),
        "transfers": {
            "device": str(engine_device),
            "what": "bytes copied between host memory and the engine's tensors (on a CPU engine: what a GPU engine would copy)",
            **last.transfers,
        },
        "flops": _flops(runner, last) if backend == "torch" else None,
    }


def _flops(runner, result) -> dict:
    """The analytic FLOPs model for this export (needs the checkpoint's config: torch only)."""
    from nuwa_export.profile.flops import LlmShape, summary

    b = result.budgets
    text = len(result.prompt.before) + len(result.prompt.after)
    return summary(LlmShape.from_config(runner.parts.config.text_config), b.num_patches, b.k1, b.k2, b.layer, text)


class _progress:
    """A transient rich progress bar on stderr; ``advance()`` moves it one run."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total, self.bar = enabled, total, None

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.console import Console
        from rich.progress import Progress

        self.bar = Progress(console=Console(file=sys.stderr), transient=True)
        self.bar.start()
        task = self.bar.add_task("profiling", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc):
        if self.bar:
            self.bar.stop()


def write_json(report: dict, path: str | Path) -> Path:
    """Write ``report`` atomically (a temporary sibling, then rename)."""
    from nuwa_export.atomic import write_file

    text = json.dumps(report, indent=2) + "\n"
    return write_file(path, lambda tmp: tmp.write_text(text))
