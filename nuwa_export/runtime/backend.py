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
from nuwa_export.runtime.kv import KVBuffers

#: torch dtype per manifest dtype name
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32, "bool": torch.bool}


@dataclass(frozen=True)
class OutputSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype


def output_specs(m: Manifest, graph: str, shapes: dict[str, tuple[int, ...]], in_place: bool = False) -> list[OutputSpec]:
    """Every output of ``graph`` (in graph order) for inputs of ``shapes``: what to allocate and
    bind before running it. Raises :class:`NuwaError` for inputs outside the export's contract.
    ``in_place``: the ONNX Runtime LLM graphs, whose present KV are the past buffers (their
    capacity), written at ``[P, P + S)`` with ``P + S`` the ``attention_mask`` length."""
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
    total = past.pop()
    if in_place:
        filled = shapes["attention_mask"][1]
        if shapes["attention_mask"][0] != batch or not seq <= filled <= total:
            raise NuwaError(f"{graph}: an attention_mask of {list(shapes['attention_mask'])} over KV buffers of {total} entries for {seq} new tokens")
    else:
        total += seq
    present = [OutputSpec(n, (batch, llm.num_kv_heads, total, llm.head_dim), t) for n in kv_names("present", layers)]
    if graph == "llm_prefix":
        return [OutputSpec("hidden_states", (batch, seq, llm.hidden_size), t), *present, OutputSpec("stage_two_scores", (batch, b.stage_one_keep), torch.float32)]
    return [OutputSpec("logits", (batch, llm.vocab_size), torch.float32), *present]


class Backend(ABC):
    """Runs the three graphs of an export on ``device``. KV tensors are ``[B, kv_heads, T, head_dim]``."""

    name: str
    device: torch.device

    #: True for a backend running the ONNX Runtime LLM graphs (KV groups are :class:`KVBuffers`).
    in_place = False

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        layer, n = manifest.budgets.stage_two_layer, manifest.budgets.num_layers
        self._prefix_past = kv_names("past", range(layer))
        self._suffix_past = kv_names("past", range(layer, n))

    @abstractmethod
    def run(self, graph: str, inputs: dict[str, torch.Tensor], out: dict[str, torch.Tensor] | None = None) -> list[torch.Tensor]:
        """One graph on tensors already on ``device`` → its outputs in graph order, on ``device``;
        outputs named in ``out`` are written into those tensors (in-place KV)."""

    def vision(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, 3, S, S]`` → ``image_tokens [B, K1, D]``, ``patch_indices [B, K1]``."""
        tokens, idx = self.run("vision", {"pixel_values": pixel_values})
        return tokens, idx

    def empty_past(self, start: int, end: int, batch: int, capacity: int, dtype: torch.dtype):
        """An empty KV group for layers ``[start, end)``: ``capacity`` entries per row reserved
        when KV is updated in place (else tensors of length 0)."""
        llm = self.manifest.llm
        count = 2 * (end - start)
        if self.in_place:
            return KVBuffers.empty(count, batch, llm.num_kv_heads, capacity, llm.head_dim, dtype, self.device)
        return [torch.empty((batch, llm.num_kv_heads, 0, llm.head_dim), dtype=dtype, device=self.device) for _ in range(count)]

    @staticmethod
    def take_rows(past, rows: torch.Tensor):
        return past.take(rows) if isinstance(past, KVBuffers) else [t.index_select(0, rows) for t in past]

    @staticmethod
    def past_bytes(past) -> int:
        return past.nbytes() if isinstance(past, KVBuffers) else int(sum(t.numel() * t.element_size() for t in past))

    def _llm(self, graph: str, feeds: dict, names: list[str], pad_lengths, past, seq: int):
        """Run an LLM graph with its past KV → (its outputs, the KV group after it: the buffers
        written in place, or None when the outputs hold the new present tensors)."""
        present = [n.replace("past_", "present_", 1) for n in names]
        if isinstance(past, KVBuffers):
            past = past.reserve(seq)
            feeds["attention_mask"] = past.attention_mask(pad_lengths, seq)
            feeds.update(zip(names, past.tensors))
            out = self.run(graph, feeds, dict(zip(present, past.tensors)))
            past.length += seq
            return out, past
        feeds["pad_lengths"] = pad_lengths
        feeds.update(zip(names, past))
        return self.run(graph, feeds), None

    def prefix(self, inputs_embeds, position_ids, vision_start, pad_lengths, past):
        """Layers ``[0, L)`` → ``hidden [B, S, D]``, present KV (2 per layer), ``scores [B, K1]``."""
        feeds = {"inputs_embeds": inputs_embeds, "position_ids": position_ids, "vision_start": vision_start}
        out, kept = self._llm("llm_prefix", feeds, self._prefix_past, pad_lengths, past, inputs_embeds.shape[1])
        return out[0], kept if kept is not None else out[1:-1], out[-1]

    def suffix(self, hidden, position_ids, pad_lengths, past):
        """Layers ``[L, N)``, norm, lm_head → ``logits [B, V]``, present KV."""
        feeds = {"hidden_states": hidden, "position_ids": position_ids}
        out, kept = self._llm("llm_suffix", feeds, self._suffix_past, pad_lengths, past, hidden.shape[1])
        return out[0], kept if kept is not None else out[1:]

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release engines and device memory."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


BACKENDS = ("ort", "trt", "torch")


def make_backend(name: str, directory: Path, manifest: Manifest, device: str = "auto", llm_graphs: str = "auto") -> Backend:
    """An engine backend for ``directory`` (``torch`` is not one: it runs the reference).
    ``llm_graphs`` picks the ort backend's LLM graphs (:class:`~nuwa_export.runtime.ort_backend.OrtBackend`);
    TensorRT always builds the standard ones."""
    if name == "ort":
        from nuwa_export.runtime.ort_backend import OrtBackend

        return OrtBackend(directory, manifest, device, llm_graphs=llm_graphs)
    if name == "trt":
        from nuwa_export.runtime.trt_backend import TrtBackend

        return TrtBackend(directory, manifest, device)
    raise NuwaError(f"unknown backend '{name}' (choose from {', '.join(BACKENDS)})")
