"""The one small interface every engine backend implements.

Backends take and return torch tensors on their own device (CPU, or a CUDA GPU): the session's
KV and hidden states never pass through NumPy or the host. Outputs are allocated from the
export's graph contract (:meth:`Backend.output_plan`, :mod:`nuwa_export.contract`), so a present
KV tensor is bound back as the next past exactly where the engine wrote it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from nuwa_export import names as n
from nuwa_export.contract import Numbers
from nuwa_export.manifest import Manifest
from nuwa_export.models.families import family_named
from nuwa_export.precision import torch_dtype
from nuwa_export.runtime.kv import KVBuffers


@dataclass(frozen=True)
class OutputSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype


def output_specs(m: Manifest, graph: str, shapes: dict[str, tuple[int, ...]], in_place: bool = False) -> list[OutputSpec]:
    """Every output of ``graph`` (in graph order) for inputs of ``shapes``: what to allocate and
    bind before running it, from the export's contract. Raises :class:`NuwaError` for inputs
    outside it. ``in_place``: the ONNX Runtime LLM graphs, whose present KV are the past buffers
    (their capacity), written at ``[P, P + S)`` with ``P + S`` the ``attention_mask`` length."""
    contract = family_named(m.family).contract(Numbers.of_manifest(m))
    return plan_outputs(contract.graph(graph, in_place), shapes)


def plan_outputs(graph, shapes: dict[str, tuple[int, ...]]) -> list[OutputSpec]:
    """:func:`output_specs` for one :class:`~nuwa_export.contract.Graph`."""
    return [OutputSpec(t.name, shape, torch_dtype(t.dtype)) for t, shape in graph.outputs_for(shapes)]


class Backend(ABC):
    """Runs the three graphs of an export on ``device``. KV tensors are ``[B, kv_heads, T, head_dim]``."""

    name: str
    device: torch.device

    #: True for a backend running the ONNX Runtime LLM graphs (KV groups are :class:`KVBuffers`).
    in_place = False

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.contract = family_named(manifest.family).contract(Numbers.of_manifest(manifest))
        layer, layers = manifest.budgets.stage_two_layer, manifest.budgets.num_layers
        self._prefix_past = n.kv_names(n.PAST, range(layer))
        self._suffix_past = n.kv_names(n.PAST, range(layer, layers))

    def output_plan(self, graph: str, inputs: dict[str, torch.Tensor]) -> list[OutputSpec]:
        """The outputs to allocate for one run of ``graph`` (the in-place graphs when this backend
        runs them): checked against the export's contract."""
        in_place = self.in_place and graph in n.LLM_GRAPHS
        return plan_outputs(self.contract.graph(graph, in_place), {k: tuple(v.shape) for k, v in inputs.items()})

    @abstractmethod
    def run(self, graph: str, inputs: dict[str, torch.Tensor], out: dict[str, torch.Tensor] | None = None) -> list[torch.Tensor]:
        """One graph on tensors already on ``device`` → its outputs in graph order, on ``device``;
        outputs named in ``out`` are written into those tensors (in-place KV)."""

    def vision(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, 3, S, S]`` → ``image_tokens [B, K1, D]``, ``patch_indices [B, K1]``."""
        tokens, idx = self.run(n.VISION, {n.PIXEL_VALUES: pixel_values})
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
    def past_length(past) -> int:
        """Entries per row a KV group holds (padding included)."""
        return past.length if isinstance(past, KVBuffers) else int(past[0].shape[2])

    @staticmethod
    def join_past(pasts: list, shifts: list[int], room: int):
        """KV groups side by side, each padded on the left by its shift (zeros, masked as
        padding); in-place buffers get room for ``room`` more entries."""
        if isinstance(pasts[0], KVBuffers):
            return KVBuffers.join(pasts, shifts, pasts[0].length + shifts[0] + room)
        return [torch.cat([torch.nn.functional.pad(p[j], (0, 0, s, 0)) for p, s in zip(pasts, shifts)]) for j in range(len(pasts[0]))]

    @staticmethod
    def past_bytes(past) -> int:
        return past.nbytes() if isinstance(past, KVBuffers) else int(sum(t.numel() * t.element_size() for t in past))

    def _llm(self, graph: str, feeds: dict, names: list[str], pad_lengths, past, seq: int):
        """Run an LLM graph with its past KV → (its outputs, the KV group after it: the buffers
        written in place, or None when the outputs hold the new present tensors)."""
        if isinstance(past, KVBuffers):
            past = past.reserve(seq)
            feeds[n.ATTENTION_MASK] = past.attention_mask(pad_lengths, seq)
            feeds.update(zip(names, past.tensors))
            # the contract's outputs written into an input's buffer: each present KV into its past
            out = self.run(graph, feeds, {o: feeds[i] for o, i in self.contract.graph(graph, True).written_into.items()})
            past.length += seq
            return out, past
        feeds[n.PAD_LENGTHS] = pad_lengths
        feeds.update(zip(names, past))
        return self.run(graph, feeds), None

    def prefix(self, inputs_embeds, position_ids, vision_start, pad_lengths, past):
        """Layers ``[0, L)`` → ``hidden [B, S, D]``, present KV (2 per layer), ``scores [B, K1]``."""
        feeds = {n.INPUTS_EMBEDS: inputs_embeds, n.POSITION_IDS: position_ids, n.VISION_START: vision_start}
        out, kept = self._llm(n.LLM_PREFIX, feeds, self._prefix_past, pad_lengths, past, inputs_embeds.shape[1])
        return out[0], kept if kept is not None else out[1:-1], out[-1]

    def suffix(self, hidden, position_ids, pad_lengths, past):
        """Layers ``[L, N)``, norm, lm_head → ``logits [B, V]``, present KV."""
        feeds = {n.HIDDEN_STATES: hidden, n.POSITION_IDS: position_ids}
        out, kept = self._llm(n.LLM_SUFFIX, feeds, self._suffix_past, pad_lengths, past, hidden.shape[1])
        return out[0], kept if kept is not None else out[1:]

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release engines and device memory."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
