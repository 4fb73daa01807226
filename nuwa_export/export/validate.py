"""Right after export: run the vision graph in ONNX Runtime (CPU) and hold it to the PyTorch reference
(:mod:`nuwa_export.runtime.reference`); the LLM graphs are held to it by :mod:`nuwa_export.verify.checks`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nuwa_export import names as n
from nuwa_export.errors import NuwaError
from nuwa_export.image import preprocess

#: fp32 ORT vs torch (ARCHITECTURE / brief).
ATOL = RTOL = 1e-4
#: Validation batch: differs from the trace batch (2), so a batch axis baked in is caught.
VALIDATION_BATCH = 3


def validation_pixels(reference, batch: int = VALIDATION_BATCH) -> torch.Tensor:
    """Deterministic pictures: the demo street scene, then seeded noise of several aspect ratios."""
    from PIL import Image

    from nuwa_export.models.demo import example_picture

    rng = np.random.default_rng(0)
    pictures = []
    for i in range(batch):
        if i == 0:
            pictures.append(example_picture())
        else:
            h, w = (180, 320) if i % 2 else (300, 200)
            pictures.append(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
    cfg = reference.loaded.image_config
    return torch.from_numpy(np.stack([preprocess(p, cfg) for p in pictures]))


def ort_session(path: Path, providers: list[str] | None = None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise NuwaError("onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu)") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])


def compare(name: str, got: np.ndarray, want: np.ndarray) -> dict:
    """Max / median / p99 absolute error; raises when outside atol/rtol 1e-4."""
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    stats = {"max_abs": float(err.max()), "median_abs": float(np.median(err)), "p99_abs": float(np.quantile(err, 0.99))}
    if got.shape != want.shape or not np.allclose(got, want, atol=ATOL, rtol=RTOL):
        raise NuwaError(f"validation failed: {name} differs from the reference (max abs error {stats['max_abs']:.3g} > {ATOL})")
    return stats


def record_vision(reference) -> dict[str, np.ndarray]:
    """What :meth:`Reference.vision` gives on :func:`validation_pixels` (NumPy: see :func:`check_vision`)."""
    pixels = validation_pixels(reference)
    with torch.inference_mode():
        want = reference.vision(pixels.to(reference.parts.vision_dtype))
    return {n.PIXEL_VALUES: pixels.numpy(), n.IMAGE_TOKENS: want.tokens.float().cpu().numpy(), n.PATCH_INDICES: want.indices.cpu().numpy()}


def check_vision(path: Path, rec: dict[str, np.ndarray]) -> dict:
    """ORT ``vision.onnx`` vs :func:`record_vision`, on a batch the graph was not traced with."""
    tokens, indices = ort_session(path).run([n.IMAGE_TOKENS, n.PATCH_INDICES], {n.PIXEL_VALUES: rec[n.PIXEL_VALUES]})
    want_idx = rec[n.PATCH_INDICES]
    if indices.shape != want_idx.shape or not np.array_equal(indices, want_idx):
        raise NuwaError("validation failed: vision.onnx patch_indices differ from the reference")
    return {"batch": int(rec[n.PIXEL_VALUES].shape[0]), n.IMAGE_TOKENS: compare("vision.onnx image_tokens", tokens, rec[n.IMAGE_TOKENS]), n.PATCH_INDICES: "identical"}


def validate_vision(path: Path, reference) -> dict:
    """:func:`record_vision` then :func:`check_vision`."""
    return check_vision(path, record_vision(reference))
