"""The one small interface every engine backend implements, and the binding plan they share.

Backends take and return torch tensors on their own device (CPU, or a CUDA GPU): the session's
KV and hidden states never pass through NumPy or the host. Outputs are allocated by the caller
from :func:`output_specs` (the graph contract in the manifest), so a present KV tensor is bound
back as the next past exactly where the engine wrote it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch

from nuwa_export.errors import NuwaError
from nuwa_export.export.llm import kv_names
from nuwa_export.export.manifest import Manifest

#: torch dtype per manifest dtype name
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32, "bool": torch.bool}


@dataclass(frozen=True)
class OutputSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype


def output_specs(m: Manifest, graph: str, shapes: dict[str, tuple[int, ...]]) -> list[OutputSpec]:
    """Every output of ``graph`` (in graph order) for inputs of ``shapes``: what to allocate and
    bind before running it. Raises :class:`NuwaError` for inputs outside the export's contract."""
    b, llm = m.budgets, m.llm
    t = TORCH_DTYPES[llm.dtype]
    if graph in ("vision", "vision_plugin"):
        batch = shapes["pixel_values"][0]
        return [OutputSpec("image_tokens", (batch, b.stage_one_keep, llm.hidden_size), torch.float32),
                OutputSpec("patch_indices", (batch, b.stage_one_keep), torch.int64)]
    first = "inputs_embeds" if graph == "llm_prefix" else "hidden_states"
    batch, seq = shapes[first][:2]
    layers = range(b.stage_two_layer) if graph == "llm_prefix" else range(b.stage_two_layer, llm.num_layers)
    past = {shapes[n][2] for n in kv_names("past", layers)}
    if len(past) != 1:
        raise NuwaError(f"{graph}: past KV tensors of different lengths {sorted(past)}")
    if batch > m.max_batch:
        raise NuwaError(f"a batch of {batch} is beyond this export's max_batch {m.max_batch}; re-export with --max-batch {batch}")
    total = past.pop() + seq
    present = [OutputSpec(n, (batch, llm.num_kv_heads, total, llm.head_dim), t) for n in kv_names("present", layers)]
    if graph == "llm_prefix":
        return [OutputSpec("hidden_states", (batch, seq, llm.hidden_size), t), *present, OutputSpec("stage_two_scores", (batch, b.stage_one_keep), torch.float32)]
    return [OutputSpec("logits", (batch, llm.vocab_size), torch.float32), *present]


class Backend(ABC):
    """Runs the three graphs of an export on ``device``. KV tensors are ``[B, kv_heads, T, head_dim]``."""

    name: str
    device: torch.device

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        layer, n = manifest.budgets.stage_two_layer, manifest.budgets.num_layers
        self._prefix_past = kv_names("past", range(layer))
        self._suffix_past = kv_names("past", range(layer, n))

    @abstractmethod
    def run(self, graph: str, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """One graph on tensors already on ``device`` → its outputs in graph order, on ``device``."""

    def vision(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, 3, S, S]`` → ``image_tokens [B, K1, D]``, ``patch_indices [B, K1]``."""
        tokens, idx = self.run("vision", {"pixel_values": pixel_values})
        return tokens, idx

    def prefix(self, inputs_embeds, position_ids, vision_start, pad_lengths, past):
        """Layers ``[0, L)`` → ``hidden [B, S, D]``, present KV (2 per layer), ``scores [B, K1]``."""
        feeds = {"inputs_embeds": inputs_embeds, "position_ids": position_ids, "vision_start": vision_start, "pad_lengths": pad_lengths}
        feeds.update(zip(self._prefix_past, past))
        out = self.run("llm_prefix", feeds)
        return out[0], out[1:-1], out[-1]

    def suffix(self, hidden, position_ids, pad_lengths, past):
        """Layers ``[L, N)``, norm, lm_head → ``logits [B, V]``, present KV."""
        feeds = {"hidden_states": hidden, "position_ids": position_ids, "pad_lengths": pad_lengths}
        feeds.update(zip(self._suffix_past, past))
        out = self.run("llm_suffix", feeds)
        return out[0], out[1:]

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
