"""The LLM split at the stage-two layer L, exported with explicit per-layer KV tensors.

``llm_prefix.onnx`` — decoder layers ``[0, L)``:
  inputs ``inputs_embeds [B, S, D]``, ``position_ids [B, S]`` int64 (``[3, B, S]`` for M-RoPE), ``vision_start [B]`` int64
  (per row, the cache index of its first vision token), ``pad_lengths [B]`` int64 (per row, the
  left-padding entries at the start of its cache, hidden from every real query),
  ``past_key_i`` / ``past_value_i`` ``[B, kv_heads, P, head_dim]`` for ``i < L`` (P may be 0);
  outputs ``hidden_states [B, S, D]``, ``present_key_i`` / ``present_value_i`` ``[B, kv, P+S, hd]``,
  and ``stage_two_scores [B, K1]``: the family's stage-two score at layer L-1 over the K1 cache
  entries from ``vision_start`` (LLaVA: head-mean attention of the last position; Qwen2.5-VL:
  the last 3 positions' mean, max over heads) — a few extra rows, no attention map.
``llm_suffix.onnx`` — layers ``[L, N)``, final norm and lm_head:
  inputs ``hidden_states``, ``position_ids``, ``pad_lengths``, ``past_key_i`` / ``past_value_i``
  for ``i >= L``; outputs ``logits [B, V]`` of the last position and the present key/values.

Prefill (P = 0) and decode (S = 1) share each graph. Masks are causal by sequence order; a batch
of prompts of different lengths is left-padded, so every row's last position is the last column
and one decode step appends one entry to every row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nuwa_export.models.decoder import KVCache, cache_keyword, causal_mask, decoder_stack

#: Node metadata the exporter writes with this machine's source paths and line numbers; dropped, so
#: an export carries no local paths and its bytes do not depend on where nuwa-export is installed.
STACK_TRACE_KEY = "pkg.torch.onnx.stack_trace"
#: Trace sizes: not 0 or 1, which torch.export would specialise (validation uses 0 and 1).
TRACE_SEQ, TRACE_PAST, TRACE_BATCH = 5, 3, 2


def kv_names(kind: str, layers: range) -> list[str]:
    """``past``/``present`` key and value names, per global layer index."""
    return [f"{kind}_{what}_{i}" for i in layers for what in ("key", "value")]


class _Stack(nn.Module):
    """Decoder layers ``[start, end)`` over stacked past tensors."""

    def __init__(self, parts: Any, start: int, end: int) -> None:
        super().__init__()
        self.start, self.end = start, end
        self.layers = nn.ModuleList(parts.lm.layers[start:end])
        self.rotary = parts.lm.rotary_emb
        self.cache_kw = cache_keyword(parts.lm.layers[0])

    def run(self, hidden, position_ids, pad_lengths, past, *, keep_input_of: int | None = None):
        cache = KVCache()
        for j, i in enumerate(range(self.start, self.end)):
            cache.keys[i], cache.values[i] = past[2 * j], past[2 * j + 1]
        p = past[0].shape[2]
        mask = causal_mask(hidden.shape[1], p, hidden.dtype, hidden.device, pad_lengths)
        layer_input = None
        if keep_input_of is None:
            hidden = decoder_stack(self.layers, self.rotary, hidden, position_ids, cache, mask, self.cache_kw)
        else:
            split = keep_input_of - self.start
            layer_input = decoder_stack(self.layers[:split], self.rotary, hidden, position_ids, cache, mask, self.cache_kw)
            hidden = decoder_stack(self.layers[split:], self.rotary, layer_input, position_ids, cache, mask, self.cache_kw)
        present = [t for i in range(self.start, self.end) for t in (cache.keys[i], cache.values[i])]
        return hidden, present, cache, layer_input


class PrefixGraph(nn.Module):
    def __init__(self, parts: Any, layer: int, k1: int) -> None:
        super().__init__()
        self.stack = _Stack(parts, 0, layer)
        self.layer, self.k1 = layer, k1
        self.stage_two_fn = parts.stage_two_fn

    def forward(self, inputs_embeds, position_ids, vision_start, pad_lengths, past):
        last = self.layer - 1
        hidden, present, cache, layer_input = self.stack.run(inputs_embeds, position_ids, pad_lengths, past, keep_input_of=last)
        row = self.stage_two_fn(self.stack.layers[last], self.stack.rotary, layer_input, position_ids, cache.keys[last], pad_lengths)
        columns = vision_start[:, None] + torch.arange(self.k1, device=row.device)[None, :]
        columns = columns.clamp(max=row.shape[1] - 1)  # decode steps: scores are unused
        scores = row.gather(1, columns)
        return hidden, *present, scores


class SuffixGraph(nn.Module):
    def __init__(self, parts: Any, layer: int) -> None:
        super().__init__()
        self.stack = _Stack(parts, layer, parts.num_layers)
        self.norm, self.lm_head = parts.lm.norm, parts.lm_head

    def forward(self, hidden_states, position_ids, pad_lengths, past):
        hidden, present, _, _ = self.stack.run(hidden_states, position_ids, pad_lengths, past)
        logits = self.lm_head(self.norm(hidden[:, -1:]))[:, 0].float()
        return logits, *present


def _trace_positions(parts) -> torch.Tensor:
    """``[B, S]`` (1-D RoPE) or ``[3, B, S]`` (M-RoPE) trace positions."""
    pos = torch.arange(TRACE_SEQ).expand(TRACE_BATCH, -1)
    return (pos if parts.position_rows == 1 else pos.expand(parts.position_rows, -1, -1)).contiguous()


def _position_dims(parts, batch, seq) -> dict:
    return {0: batch, 1: seq} if parts.position_rows == 1 else {1: batch, 2: seq}


@dataclass(frozen=True)
class LlmShapes:
    hidden: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def of(cls, parts: Any) -> "LlmShapes":
        tc = parts.config.text_config
        head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
        return cls(tc.hidden_size, tc.num_key_value_heads, head_dim, tc.vocab_size)


def _export(module: nn.Module, args: tuple, input_names, output_names, dynamic_shapes, path, external: bool):
    program = torch.onnx.export(
        module.eval(), args, input_names=input_names, output_names=output_names,
        dynamic_shapes=dynamic_shapes, dynamo=True, opset_version=18, optimize=True, verbose=False,
    )
    program.model.producer_name = "nuwa-export"
    for node in program.model.graph.all_nodes():
        node.metadata_props.pop(STACK_TRACE_KEY, None)
    program.save(str(path), external_data=external)


def export_prefix(parts: Any, layer: int, k1: int, path, *, external: bool = False) -> None:
    s = LlmShapes.of(parts)
    batch, seq, past_len = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("seq", min=1, max=8192), torch.export.Dim("past", min=0, max=8192)
    kv = torch.zeros(TRACE_BATCH, s.kv_heads, TRACE_PAST, s.head_dim, dtype=parts.dtype)
    past = tuple(kv.clone() for _ in range(2 * layer))
    args = (
        torch.zeros(TRACE_BATCH, TRACE_SEQ, s.hidden, dtype=parts.dtype),
        _trace_positions(parts),
        torch.tensor([1, 2]),
        torch.tensor([0, 1]),
        past,
    )
    dyn = {
        "inputs_embeds": {0: batch, 1: seq},
        "position_ids": _position_dims(parts, batch, seq),
        "vision_start": {0: batch},
        "pad_lengths": {0: batch},
        "past": tuple({0: batch, 2: past_len} for _ in past),
    }
    names_in = ["inputs_embeds", "position_ids", "vision_start", "pad_lengths", *kv_names("past", range(layer))]
    names_out = ["hidden_states", *kv_names("present", range(layer)), "stage_two_scores"]
    _export(PrefixGraph(parts, layer, k1), args, names_in, names_out, dyn, path, external)


def export_suffix(parts: Any, layer: int, path, *, external: bool = False) -> None:
    s = LlmShapes.of(parts)
    n = parts.num_layers
    batch, seq, past_len = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("seq", min=1, max=8192), torch.export.Dim("past", min=0, max=8192)
    kv = torch.zeros(TRACE_BATCH, s.kv_heads, TRACE_PAST, s.head_dim, dtype=parts.dtype)
    past = tuple(kv.clone() for _ in range(2 * (n - layer)))
    args = (
        torch.zeros(TRACE_BATCH, TRACE_SEQ, s.hidden, dtype=parts.dtype),
        _trace_positions(parts),
        torch.tensor([0, 1]),
        past,
    )
    dyn = {
        "hidden_states": {0: batch, 1: seq},
        "position_ids": _position_dims(parts, batch, seq),
        "pad_lengths": {0: batch},
        "past": tuple({0: batch, 2: past_len} for _ in past),
    }
    names_in = ["hidden_states", "position_ids", "pad_lengths", *kv_names("past", range(layer, n))]
    names_out = ["logits", *kv_names("present", range(layer, n))]
    _export(SuffixGraph(parts, layer), args, names_in, names_out, dyn, path, external)
