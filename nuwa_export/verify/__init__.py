"""``nuwa-verify``'s library: an export's backends against the PyTorch reference, stage by stage
(:mod:`.checks`; quantized graphs under their own policy, :mod:`.quantized`) and decoder layer by
decoder layer (:mod:`.layerwise`)."""

from __future__ import annotations

import gc
from pathlib import Path

from nuwa_export import names
from nuwa_export.errors import NuwaError


def available_backends(directory: Path) -> list[tuple[str, str]]:
    """(backend, device) pairs this machine can run for the export at ``directory``."""
    out = []
    try:
        import onnxruntime as ort

        out.append(("ort", "cpu"))
        if "CUDAExecutionProvider" in ort.get_available_providers():
            out.append(("ort", "cuda"))
    except ImportError:
        pass
    try:
        import torch

        if (directory / names.ENGINES_DIR).is_dir() and torch.cuda.is_available():
            out.append(("trt", "cuda"))
    except ImportError:
        pass
    return out


def held_to(manifest):
    """The check an export's backends are held to: ``check(pipeline, record) -> [Check]``, the
    float policies (:func:`.checks.check`) or a quantized export's (:func:`.quantized.check`)."""
    from nuwa_export.verify import checks, quantized

    return quantized.check if manifest.precision.quantized else checks.check


def verify(directory: str | Path, image, prompt: str, max_new_tokens: int = 20, manifest=None) -> dict:
    """Every backend this machine has for the export at ``directory`` against the PyTorch
    reference on ``image`` / ``prompt`` (``manifest``: already read and checked). Returns
    ``{"export", "ok", "dtype", "quantized", "backends": {name: [check, ...]}}``; ONNX Runtime is
    checked on the graphs it runs and on the standard graphs TensorRT builds."""
    from nuwa_export.runtime.exports import read_export
    from nuwa_export.runtime.runner import open_runner
    from nuwa_export.verify.checks import record

    directory = Path(directory)
    manifest = manifest or read_export(directory)
    backends = available_backends(directory)
    if not backends:
        raise NuwaError("no backend to verify: pip install onnxruntime (or onnxruntime-gpu)")
    dtype = manifest.precision.float_type
    check = held_to(manifest)
    with open_runner(directory, backend="torch", device="cpu", dtype=dtype, manifest=manifest) as reference:
        rec = record(reference, image, prompt, max_new_tokens)
    del reference  # the graphs and the PyTorch model need not fit in memory together
    gc.collect()
    report = {}
    for backend, device in backends:
        pairs = [("auto", "")] + ([("standard", "-standard")] if backend == "ort" and manifest.ort_graphs else [])
        for graphs, suffix in pairs:
            with open_runner(directory, backend=backend, device=device, llm_graphs=graphs, manifest=manifest) as pipeline:
                report[f"{backend}-{device}{suffix}"] = [c.as_dict() for c in check(pipeline, rec)]
    ok = all(c["ok"] for checks in report.values() for c in checks)
    quantized = manifest.precision.name if manifest.precision.quantized else None
    return {"export": str(directory), "ok": ok, "dtype": dtype, "quantized": quantized, "backends": report}
