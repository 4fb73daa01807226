"""The decoder side every family shares: per-layer KV caches, masks, the layer stack, and the
few attention rows Nüwa computes on its own (no attention maps).

A family's parts (:class:`~nuwa_export.models.families.llava.parts.LlavaParts`,
:class:`~nuwa_export.models.families.qwen2_5_vl.parts.QwenParts`) derive from :class:`DecoderParts` and set
``lm`` (the HF text model: ``embed_tokens``, ``layers``, ``rotary_emb``, ``norm``), ``lm_head``,
``config``, ``_cache_kw`` and ``stage_two_fn`` (the family's stage-two row).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn


class KVCache:
    """Key/value tensors per decoder layer, each layer with its own length.

    Duck-types the one method HF attention calls (``update``), so layers before the stage-two
    layer can hold ``b + K1 + c`` entries while later layers hold ``b + K2 + c``.
    Tensors are ``[B, kv_heads, T, head_dim]``.
    """

    def __init__(self) -> None:
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if layer_idx in self.keys:
            key_states = torch.cat([self.keys[layer_idx], key_states], dim=2)
            value_states = torch.cat([self.values[layer_idx], value_states], dim=2)
        self.keys[layer_idx], self.values[layer_idx] = key_states, value_states
        return key_states, value_states

    def length(self, layer_idx: int) -> int:
        return self.keys[layer_idx].shape[2] if layer_idx in self.keys else 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for d in (self.keys, self.values) for t in d.values())


def cache_keyword(layer: nn.Module) -> str:
    """``cache`` (transformers ≥ 5.2x) or ``past_key_values`` (older 5.x) for decoder layers."""
    params = inspect.signature(type(layer).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def causal_mask(q: int | torch.Tensor, past: int | torch.Tensor, dtype: torch.dtype, device, pad: torch.Tensor | None = None) -> torch.Tensor:
    """Additive ``[1, 1, q, past + q]`` mask: query ``i`` sees keys ``0 .. past + i``.

    With ``pad [B]`` (left padding of a batch, docs/architecture.md "Batches"): ``[B, 1, q,
    past + q]``, and keys before ``pad[b]`` are hidden from every query of row ``b`` except the
    padding entry itself (a padding query sees only itself: never an all-blocked row, whose
    softmax would be NaN and poison the cache). Built from comparisons of ``arange`` so it traces
    with symbolic ``q``, ``past`` and batch.
    """
    rows = torch.arange(q, device=device)[:, None] + past
    cols = torch.arange(past + q, device=device)[None, :]
    seen = cols <= rows
    if pad is not None:
        seen = ((cols >= pad[:, None, None]) & seen) | (cols == rows)  # [B, q, past + q]
        seen = seen[:, None]
    else:
        seen = seen[None, None]
    blocked = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=device)
    return torch.where(seen, torch.zeros((), dtype=dtype, device=device), blocked)


def decoder_stack(layers, rotary: nn.Module, hidden, position_ids, cache: KVCache, mask, cache_kw: str, **extra):
    """Run HF decoder ``layers`` in order, each attending over its own entry of ``cache``
    (``extra`` keywords reach the attention function)."""
    position_embeddings = rotary(hidden, position_ids=position_ids)
    for layer in layers:
        hidden = layer(
            hidden,
            attention_mask=mask,
            position_ids=position_ids,
            position_embeddings=position_embeddings,
            use_cache=True,
            **{cache_kw: cache},
            **extra,
        )
    return hidden


def query_attention(layer: nn.Module, rotary: nn.Module, layer_input, position_ids, keys, pad=None, queries: int = 1) -> torch.Tensor:
    """Softmax attention of the last ``queries`` positions in ``layer`` over its cached ``keys``
    (causal: each query sees keys up to itself; none sees a row's left padding ``pad [B]``).

    ``position_ids`` are ``[B, T]`` or M-RoPE ``[3, B, T]``. Returns ``[B, heads, queries, T_all]``
    float32 probabilities (0 on hidden keys). Only these rows are computed: no attention map.
    """
    attn = layer.self_attn
    last = layer.input_layernorm(layer_input[:, -queries:])
    b, nq = last.shape[0], 1 if queries == 1 else last.shape[1]
    q = attn.q_proj(last).view(b, nq, -1, attn.head_dim).transpose(1, 2)
    cos, sin = rotary(last, position_ids=position_ids[..., -queries:])
    q = q * cos[:, None] + rotate_half(q) * sin[:, None]
    keys = keys.repeat_interleave(attn.num_key_value_groups, dim=1)
    scores = (q.float() @ keys.float().transpose(2, 3)) * attn.scaling  # [B, H, nq, T]
    cols = torch.arange(keys.shape[2], device=keys.device)
    if queries > 1:  # the last query sees everything; earlier ones not what follows them
        rows = keys.shape[2] - nq + torch.arange(nq, device=keys.device)
        scores = scores.masked_fill((cols[None, :] > rows[:, None])[None, None], float("-inf"))
    if pad is not None:
        scores = scores.masked_fill((cols[None, :] < pad[:, None])[:, None, None], float("-inf"))
    return scores.softmax(dim=-1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class DecoderParts:
    """The language-model half of a family's parts."""

    position_rows = 1  # 1: positions [B, T]; 3: M-RoPE [3, B, T]

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` int64 → ``[B, T, D]``."""
        return self.lm.embed_tokens(input_ids)

    def run_layers(
        self, hidden: torch.Tensor, position_ids: torch.Tensor, cache: KVCache, start: int, end: int,
        pad: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decoder layers ``[start, end)`` on ``hidden [B, T, D]`` at ``position_ids`` (``[B, T]``, or
        ``[3, B, T]`` for M-RoPE).

        The causal mask is by sequence order; each layer attends over its own cache. ``pad [B]``
        int64: left-padding entries at the start of each row's cache, which no real query sees
        (see :func:`causal_mask`).
        """
        if start >= end:
            return hidden
        mask = self._causal_mask(hidden, cache.length(start), pad)
        return decoder_stack(self.lm.layers[start:end], self.lm.rotary_emb, hidden, position_ids, cache, mask, self._cache_kw)

    def _causal_mask(self, hidden: torch.Tensor, past: int, pad: torch.Tensor | None) -> torch.Tensor | None:
        q = hidden.shape[1]
        if pad is not None and bool((pad > 0).any()):
            return causal_mask(q, past, hidden.dtype, hidden.device, pad)
        if q == 1 or (past == 0 and self.config.text_config._attn_implementation == "sdpa"):
            return None  # one query sees everything; sdpa applies is_causal itself
        return causal_mask(q, past, hidden.dtype, hidden.device)

    def stage_two_row(self, layer_idx: int, layer_input, position_ids, cache: KVCache, pad=None) -> torch.Tensor:
        """The family's stage-two row (``stage_two_fn``) at ``layer_idx``, after the layer ran on
        the prefill: ``[B, T]`` float32 over every cache entry."""
        return self.stage_two_fn(self.lm.layers[layer_idx], self.lm.rotary_emb, layer_input, position_ids, cache.keys[layer_idx], pad)

    def logits(self, hidden_last: torch.Tensor) -> torch.Tensor:
        """Final norm and lm_head: ``[B, 1, D]`` → ``[B, V]`` float32."""
        return self.lm_head(self.lm.norm(hidden_last))[:, -1].float()
