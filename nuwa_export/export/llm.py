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

``llm_prefix.ort.onnx`` / ``llm_suffix.ort.onnx`` — the same two for ONNX Runtime, each layer's
attention and KV update one ``GroupQueryAttention`` node over KV buffers written in place
(:mod:`nuwa_export.export.fused`: ``Fused*Graph``, ``export_*(..., fused=True)``).

Prefill (P = 0) and decode (S = 1) share each graph. Masks are causal by sequence order; a batch
of prompts of different lengths is left-padded, so every row's last position is the last column
and one decode step appends one entry to every row.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

import torch
from torch import nn

from nuwa_export import contract as ct
from nuwa_export import names as n
from nuwa_export.models.decoder import (
    KVCache,
    cache_keyword,
    causal_mask,
    decoder_stack,
)

#: Trace sizes: not 0 or 1, which torch.export would specialise (validation uses 0 and 1).
TRACE_SEQ, TRACE_PAST, TRACE_BATCH = 5, 3, 2
#: In-place KV buffers' capacity when tracing (more than TRACE_PAST + TRACE_SEQ).
TRACE_CAPACITY = 11
#: A Python object's address in the exporter's metadata (``<function sym_min at 0x7f...>``): it
#: differs from process to process, so it is removed and an export's bytes are the same every time.
_ADDRESS = re.compile(r" at 0x[0-9a-f]+")


def clean_metadata(props: dict) -> None:
    """Drop the node's stack trace (this machine's source paths) and object addresses, in place
    (``props``: an onnx_ir node's ``metadata_props``)."""
    props.pop(n.STACK_TRACE_KEY, None)
    for key, value in list(props.items()):
        if " at 0x" in value:
            props[key] = _ADDRESS.sub("", value)


class _Stack(nn.Module):
    """Decoder layers ``[start, end)`` over stacked past tensors."""

    def __init__(self, parts: Any, start: int, end: int) -> None:
        super().__init__()
        self.start, self.end = start, end
        self.layers = nn.ModuleList(parts.lm.layers[start:end])
        self.rotary = parts.lm.rotary_emb
        self.cache_kw = cache_keyword(parts.lm.layers[0])

    def run(self, hidden, position_ids, pad_lengths, past, *, keep_input_of: int | None = None, attention_mask=None):
        """Standard KV (``attention_mask`` None: past of length P in, P + S out) or in-place
        buffers (:mod:`nuwa_export.export.fused`: ``pad_lengths`` is derived from the mask)."""
        layers = range(self.start, self.end)
        extra = {}
        if attention_mask is None:
            cache = KVCache()
            for j, i in enumerate(layers):
                cache.keys[i], cache.values[i] = past[2 * j], past[2 * j + 1]
            p = past[0].shape[2]
        else:
            from nuwa_export.export.fused import BufferCache

            cache = BufferCache({i: (past[2 * j], past[2 * j + 1]) for j, i in enumerate(layers)}, attention_mask)
            p = attention_mask.shape[1] - hidden.shape[1]
            pad_lengths = attention_mask.shape[1] - attention_mask.sum(1)
            extra = {"nuwa_buffers": cache}
        mask = causal_mask(hidden.shape[1], p, hidden.dtype, hidden.device, pad_lengths)
        layer_input = None
        if keep_input_of is None:
            hidden = decoder_stack(self.layers, self.rotary, hidden, position_ids, cache, mask, self.cache_kw, **extra)
        else:
            split = keep_input_of - self.start
            layer_input = decoder_stack(self.layers[:split], self.rotary, hidden, position_ids, cache, mask, self.cache_kw, **extra)
            hidden = decoder_stack(self.layers[split:], self.rotary, layer_input, position_ids, cache, mask, self.cache_kw, **extra)
        if attention_mask is None:
            present = [t for i in layers for t in (cache.keys[i], cache.values[i])]
            keys = cache.keys
        else:
            present = [t for i in layers for t in cache.buffers[i]]
            keys = {i: cache.buffers[i][0][:, :, : attention_mask.shape[1]] for i in layers}
        return hidden, present, keys, layer_input, pad_lengths


class PrefixGraph(nn.Module):
    def __init__(self, parts: Any, layer: int, k1: int) -> None:
        super().__init__()
        self.stack = _Stack(parts, 0, layer)
        self.layer, self.k1 = layer, k1
        self.stage_two_fn = parts.stage_two_fn

    def forward(self, inputs_embeds, position_ids, vision_start, pad_lengths, past, attention_mask=None):
        last = self.layer - 1
        hidden, present, keys, layer_input, pad_lengths = self.stack.run(
            inputs_embeds, position_ids, pad_lengths, past, keep_input_of=last, attention_mask=attention_mask,
        )
        row = self.stage_two_fn(self.stack.layers[last], self.stack.rotary, layer_input, position_ids, keys[last], pad_lengths)
        columns = vision_start[:, None] + torch.arange(self.k1, device=row.device)[None, :]
        columns = columns.clamp(max=row.shape[1] - 1)  # decode steps: scores are unused
        scores = row.gather(1, columns)
        return hidden, *present, scores


class SuffixGraph(nn.Module):
    def __init__(self, parts: Any, layer: int) -> None:
        super().__init__()
        self.stack = _Stack(parts, layer, parts.num_layers)
        self.norm, self.lm_head = parts.lm.norm, parts.lm_head

    def forward(self, hidden_states, position_ids, pad_lengths, past, attention_mask=None):
        hidden, present, *_ = self.stack.run(hidden_states, position_ids, pad_lengths, past, attention_mask=attention_mask)
        logits = self.lm_head(self.norm(hidden[:, -1:]))[:, 0].float()
        return logits, *present


class FusedPrefixGraph(PrefixGraph):
    """:class:`PrefixGraph` over in-place KV buffers (:mod:`nuwa_export.export.fused`)."""

    def forward(self, inputs_embeds, position_ids, vision_start, attention_mask, past):
        return super().forward(inputs_embeds, position_ids, vision_start, None, past, attention_mask)


class FusedSuffixGraph(SuffixGraph):
    """:class:`SuffixGraph` over in-place KV buffers (:mod:`nuwa_export.export.fused`)."""

    def forward(self, hidden_states, position_ids, attention_mask, past):
        return super().forward(hidden_states, position_ids, None, past, attention_mask)


def _trace_positions(parts) -> torch.Tensor:
    """``[B, S]`` (1-D RoPE) or ``[3, B, S]`` (M-RoPE) trace positions."""
    pos = torch.arange(TRACE_SEQ).expand(TRACE_BATCH, -1)
    return (pos if parts.position_rows == 1 else pos.expand(parts.position_rows, -1, -1)).contiguous()


def numbers(parts: Any, layer: int, k1: int, precision, max_batch: int | None = None) -> ct.Numbers:
    """The contract's numbers of an export of ``parts`` split at ``layer`` with ``k1`` vision tokens."""
    tc = parts.config.text_config
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    return ct.Numbers(parts.image_size, k1, tc.hidden_size, tc.num_key_value_heads, head_dim, tc.vocab_size, parts.num_layers, layer,
                      precision.io, precision.kv, max_batch)


def contract_of(parts: Any, layer: int, k1: int, precision, max_batch: int | None = None) -> tuple[ct.Numbers, ct.Contract]:
    """The numbers and the family's graph contract of an export of ``parts`` (see :func:`numbers`)."""
    from nuwa_export.models.families import family_for

    x = numbers(parts, layer, k1, precision, max_batch)
    return x, family_for(parts.config).contract(x)


def trace_dims(graph: ct.Graph) -> dict:
    """``torch.onnx.export``'s ``dynamic_shapes`` for ``graph``: each input's dynamic axes as
    ``torch.export.Dim`` s of the contract's trace ranges, the KV inputs as one ``past`` tuple."""
    dims = {}

    def dim(name: str):
        if name not in dims:
            lo, hi = ct.TRACE_RANGES[name]
            dims[name] = torch.export.Dim(name, min=lo, max=hi)
        return dims[name]

    out = {t.name: {i: dim(a) for i, a in t.dynamic_axes.items()} for t in graph.inputs if not n.is_kv(t.name)}
    out[n.PAST] = tuple({i: dim(a) for i, a in t.dynamic_axes.items()} for t in graph.inputs if n.is_kv(t.name))
    return out


def _export(module: nn.Module, args: tuple, graph: ct.Graph, path, external: bool, fused: bool = False):
    from nuwa_export.export import fused as fz

    table = fz.CUSTOM_TRANSLATIONS if fused else None
    ctx = fz.attention_implementation(module.stack.layers[0].self_attn.config) if fused else contextlib.nullcontext()
    with ctx:
        program = torch.onnx.export(
            module.eval(), args, input_names=graph.input_names, output_names=graph.output_names,
            dynamic_shapes=trace_dims(graph), dynamo=True, opset_version=18, optimize=True, verbose=False,
            custom_translation_table=table,
        )
    program.model.producer_name = "nuwa-export"
    for node in program.model.graph.all_nodes():
        clean_metadata(node.metadata_props)
    program.save(str(path), external_data=external)


def _kv_args(parts, x: ct.Numbers, count: int, fused: bool):
    """Trace past KV (``TRACE_PAST`` entries; in-place buffers hold ``TRACE_CAPACITY``) and the
    mask or pad lengths input."""
    if fused:
        kv = torch.zeros(TRACE_BATCH, x.num_kv_heads, TRACE_CAPACITY, x.head_dim, dtype=parts.dtype)
        mask = torch.ones(TRACE_BATCH, TRACE_PAST + TRACE_SEQ, dtype=torch.int64)
        mask[1, 0] = 0
        return mask, tuple(kv.clone() for _ in range(count))
    kv = torch.zeros(TRACE_BATCH, x.num_kv_heads, TRACE_PAST, x.head_dim, dtype=parts.dtype)
    return torch.tensor([0, 1]), tuple(kv.clone() for _ in range(count))


def export_prefix(parts: Any, x: ct.Numbers, graph: ct.Graph, path, *, external: bool = False, fused: bool = False) -> None:
    """``llm_prefix.onnx`` (or, ``fused``, ``llm_prefix.ort.onnx``: :mod:`nuwa_export.export.fused`)
    as the contract's ``graph`` says."""
    pads, past = _kv_args(parts, x, 2 * x.stage_two_layer, fused)
    args = (torch.zeros(TRACE_BATCH, TRACE_SEQ, x.hidden_size, dtype=parts.dtype), _trace_positions(parts), torch.tensor([1, 2]), pads, past)
    module = (FusedPrefixGraph if fused else PrefixGraph)(parts, x.stage_two_layer, x.stage_one_keep)
    _export(module, args, graph, path, external, fused)


def export_suffix(parts: Any, x: ct.Numbers, graph: ct.Graph, path, *, external: bool = False, fused: bool = False) -> None:
    """``llm_suffix.onnx`` (or, ``fused``, ``llm_suffix.ort.onnx``) as the contract's ``graph`` says."""
    pads, past = _kv_args(parts, x, 2 * (x.num_layers - x.stage_two_layer), fused)
    args = (torch.zeros(TRACE_BATCH, TRACE_SEQ, x.hidden_size, dtype=parts.dtype), _trace_positions(parts), pads, past)
    module = (FusedSuffixGraph if fused else SuffixGraph)(parts, x.stage_two_layer)
    _export(module, args, graph, path, external, fused)
