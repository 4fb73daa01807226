"""KV groups as the engine backends hold them (opaque to the generation core).

Standard graphs: a list of ``[B, kv_heads, T, head_dim]`` tensors, two per layer; each graph run
returns new ones of length ``T + S`` (the engine writes them; they are bound back as the next past).

ONNX Runtime graphs (:mod:`nuwa_export.export.fused`): :class:`KVBuffers`, the same list as
buffers of a fixed capacity allocated once per generation, of which the first ``length``
entries are the cache. Each graph run writes its ``S`` new entries in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def padding_mask(pad: torch.Tensor, total: int) -> torch.Tensor:
    """``[B, total]`` int64: 0 on each row's left padding (``pad [B]``), 1 elsewhere."""
    cols = torch.arange(total, device=pad.device)
    return (cols[None, :] >= pad[:, None]).to(torch.int64)


@dataclass
class KVBuffers:
    """Per-layer key/value buffers ``[B, kv_heads, capacity, head_dim]`` and how many entries
    of each row are filled (the same for every row: batches are left-padded)."""

    tensors: list[torch.Tensor]
    length: int = 0

    @classmethod
    def empty(cls, count: int, batch: int, kv_heads: int, capacity: int, head_dim: int, dtype, device) -> KVBuffers:
        shape = (batch, kv_heads, max(capacity, 1), head_dim)
        return cls([torch.empty(shape, dtype=dtype, device=device) for _ in range(count)])

    @property
    def capacity(self) -> int:
        return self.tensors[0].shape[2]

    def reserve(self, more: int) -> KVBuffers:
        """Room for ``more`` entries: itself, or (a caller that asked for too little capacity)
        larger buffers holding the same entries."""
        need = self.length + more
        if need <= self.capacity:
            return self
        grown = KVBuffers.empty(len(self.tensors), *self.tensors[0].shape[:2], max(need, 2 * self.capacity), self.tensors[0].shape[3],
                                self.tensors[0].dtype, self.tensors[0].device)
        for new, old in zip(grown.tensors, self.tensors):
            new[:, :, : self.length] = old[:, :, : self.length]
        grown.length = self.length
        return grown

    def attention_mask(self, pad: torch.Tensor, seq: int) -> torch.Tensor:
        """The ONNX Runtime graphs' ``attention_mask`` for ``seq`` new entries (:func:`padding_mask`)."""
        return padding_mask(pad, self.length + seq)

    @classmethod
    def join(cls, groups: list[KVBuffers], shifts: list[int], capacity: int) -> KVBuffers:
        """``groups`` side by side (batch rows in order), each moved ``shifts[i]`` entries to the
        right so that all end at one length; the entries before a shift are zeros (masked as
        padding, and finite: a masked entry still meets its zero probability)."""
        first = groups[0].tensors[0]
        length = groups[0].length + shifts[0]
        rows = sum(g.tensors[0].shape[0] for g in groups)
        shape = (rows, first.shape[1], max(capacity, length, 1), first.shape[3])
        out = cls([torch.zeros(shape, dtype=first.dtype, device=first.device) for _ in groups[0].tensors], length)
        at = 0
        for g, shift in zip(groups, shifts):
            b = g.tensors[0].shape[0]
            for new, old in zip(out.tensors, g.tensors):
                new[at : at + b, :, shift : shift + g.length] = old[:, :, : g.length]
            at += b
        return out

    def take(self, rows: torch.Tensor) -> KVBuffers:
        return KVBuffers([t.index_select(0, rows) for t in self.tensors], self.length)

    def nbytes(self) -> int:
        """Bytes of the filled entries (what the cache holds, not the capacity reserved)."""
        return sum(t[:, :, : self.length].numel() * t.element_size() for t in self.tensors)
