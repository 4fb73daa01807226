"""The one small interface every engine backend implements (NumPy arrays in and out)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from nuwa_export.errors import NuwaError
from nuwa_export.export.manifest import Manifest


class Backend(ABC):
    """Runs the three graphs of an export. KV tensors are ``[B, kv_heads, T, head_dim]``."""

    name: str

    @abstractmethod
    def vision(self, pixel_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``[B, 3, S, S]`` → ``image_tokens [B, K1, D]``, ``patch_indices [B, K1]``."""

    @abstractmethod
    def prefix(
        self, inputs_embeds: np.ndarray, position_ids: np.ndarray, vision_start: int, past: list[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
        """Layers ``[0, L)`` → ``hidden [B, S, D]``, present KV (2 per layer), ``scores [B, K1]``."""

    @abstractmethod
    def suffix(self, hidden: np.ndarray, position_ids: np.ndarray, past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Layers ``[L, N)``, norm, lm_head → ``logits [B, V]``, present KV."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release engines and device memory."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


BACKENDS = ("ort", "trt", "torch")


def make_backend(name: str, directory: Path, manifest: Manifest, device: str = "auto") -> Backend:
    """An engine backend for ``directory`` (``torch`` is not one: it runs the reference)."""
    if name == "ort":
        from nuwa_export.runtime.ort_backend import OrtBackend

        return OrtBackend(directory, manifest, device)
    if name == "trt":
        from nuwa_export.runtime.trt_backend import TrtBackend

        return TrtBackend(directory, manifest, device)
    raise NuwaError(f"unknown backend '{name}' (choose from {', '.join(BACKENDS)})")
