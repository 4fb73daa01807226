"""The ONNX Runtime graphs: each decoder layer's attention and KV update as one
``com.microsoft::GroupQueryAttention`` node over KV buffers that are updated in place.

The standard graphs (:mod:`nuwa_export.export.llm`) take past KV of length ``P`` and return new
present tensors of length ``P + S``: every decode step copies the whole cache of every layer. The
ONNX Runtime graphs (``llm_prefix.ort.onnx``, ``llm_suffix.ort.onnx``) take instead:

- ``past_key_i`` / ``past_value_i`` ``[B, kv_heads, C, head_dim]``: buffers of a capacity ``C``
  the caller picks (prompt + tokens to generate); entries ``[0, P)`` are the cache, the rest
  unspecified. The graph writes the ``S`` new entries at ``[P, P + S)`` and returns the buffers as
  ``present_key_i`` / ``present_value_i`` (same shape). Bound to the same memory as the past (ONNX
  Runtime's IOBinding), the update is in place: nothing else of the cache is read or written
  besides attention's own reads.
- ``attention_mask [B, P + S]`` int64 instead of ``pad_lengths``: 0 on each row's left padding,
  1 on every other entry (the standard graphs' ``pad_lengths`` as a mask, as Hugging Face models
  take it). Its length tells the graph ``P``.

Everything else — inputs, outputs, masks, positions, the stage-two scores — is the standard
graphs' (module doc of :mod:`nuwa_export.export.llm`). Rotary embeddings (1-D RoPE and M-RoPE
alike) are applied before the node, as in the standard graphs; the node gets the rotated
queries and keys (``do_rotary = 0``), the padding mask as ``attention_bias``, ``seqlens_k = P + S - 1``
for every row (left padding: every row's cache has the same length) and
``total_sequence_length = P + S``.

These graphs run on ONNX Runtime only (the node is a contrib op); TensorRT builds the standard ones.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from onnx import defs
from onnxscript import FLOAT, INT32
from onnxscript.values import Opset

from nuwa_export.constants import GQA_DOMAIN, GQA_NAME, GQA_VERSION

ATTENTION_NAME = "nuwa_group_query_attention"


def register_schema() -> None:
    """ONNX Runtime's contrib schema, as far as these graphs use it (inputs 0-10, three outputs),
    so onnxscript can emit the node and onnx's checker knows it (onnx ships no contrib schemas)."""
    if defs.has(GQA_NAME, GQA_VERSION, GQA_DOMAIN):
        return
    param, attr, kinds = defs.OpSchema.FormalParameter, defs.OpSchema.Attribute, defs.OpSchema.AttrType
    opt = defs.OpSchema.FormalParameterOption.Optional
    schema = defs.OpSchema(
        GQA_NAME, GQA_DOMAIN, GQA_VERSION,
        "ONNX Runtime's grouped-query attention with KV cache (contrib op; inputs 0-10 of it).",
        inputs=[
            param("query", "T"), param("key", "T", param_option=opt), param("value", "T", param_option=opt),
            param("past_key", "T", param_option=opt), param("past_value", "T", param_option=opt),
            param("seqlens_k", "M"), param("total_sequence_length", "M"),
            param("cos_cache", "T", param_option=opt), param("sin_cache", "T", param_option=opt),
            param("position_ids", "P", param_option=opt), param("attention_bias", "T", param_option=opt),
        ],
        outputs=[param("output", "T"), param("present_key", "T"), param("present_value", "T")],
        type_constraints=[
            ("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "float"),
            ("M", ["tensor(int32)"], "lengths"), ("P", ["tensor(int64)"], "positions"),
        ],
        attributes=[
            attr("num_heads", kinds.INT, "query heads", required=True),
            attr("kv_num_heads", kinds.INT, "key/value heads", required=True),
            attr("scale", kinds.FLOAT, "softmax scale", required=False),
        ],
    )
    defs.register_schema(schema)


register_schema()  # before onnxscript resolves MS.GroupQueryAttention
MS = Opset(GQA_DOMAIN, GQA_VERSION)


# ---- torch: one opaque op for the exporter, with a real implementation -----------------------
@torch.library.custom_op("nuwa::group_query_attention", mutates_args=())
def group_query_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, past_key: torch.Tensor, past_value: torch.Tensor,
    seqlens_k: torch.Tensor, total_sequence_length: torch.Tensor, attention_bias: torch.Tensor,
    num_heads: int, kv_num_heads: int, scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ONNX Runtime's ``GroupQueryAttention`` as these graphs use it (no rotary, causal, shared
    buffers): ``query [B, S, H*hd]``, ``key``/``value [B, S, kv*hd]``, buffers ``[B, kv, C, hd]``,
    ``seqlens_k [B]`` int32 (every row ``T - 1``), ``total_sequence_length`` int32 scalar ``T``,
    ``attention_bias [B, 1, S, T]`` → ``output [B, S, H*hd]`` and the buffers with the new
    entries at ``[T - S, T)``."""
    b, s, _ = query.shape
    hd = past_key.shape[3]
    t = int(total_sequence_length)
    start = t - s
    pk, pv = past_key.clone(), past_value.clone()
    pk[:, :, start:t] = key.view(b, s, kv_num_heads, hd).transpose(1, 2)
    pv[:, :, start:t] = value.view(b, s, kv_num_heads, hd).transpose(1, 2)
    q = query.view(b, s, num_heads, hd).transpose(1, 2)
    groups = num_heads // kv_num_heads
    k = pk[:, :, :t].repeat_interleave(groups, dim=1)
    v = pv[:, :, :t].repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(2, 3)) * scale + attention_bias
    causal = torch.arange(t, device=q.device)[None, :] > (start + torch.arange(s, device=q.device))[:, None]
    scores = scores.masked_fill(causal, float("-inf"))
    out = scores.softmax(-1) @ v
    return out.transpose(1, 2).reshape(b, s, num_heads * hd), pk, pv


@group_query_attention.register_fake
def _(query, key, value, past_key, past_value, seqlens_k, total_sequence_length, attention_bias, num_heads, kv_num_heads, scale):
    return torch.empty_like(query), torch.empty_like(past_key), torch.empty_like(past_value)


def _translation(
    query: FLOAT, key: FLOAT, value: FLOAT, past_key: FLOAT, past_value: FLOAT,
    seqlens_k: INT32, total_sequence_length: INT32, attention_bias: FLOAT,
    num_heads: int, kv_num_heads: int, scale: float,
):
    return MS.GroupQueryAttention(
        query, key, value, past_key, past_value, seqlens_k, total_sequence_length, None, None, None, attention_bias,
        num_heads=num_heads, kv_num_heads=kv_num_heads, scale=scale,
    )


CUSTOM_TRANSLATIONS = {torch.ops.nuwa.group_query_attention.default: _translation}


# ---- the decoder layers' side: a cache that hands the buffers to the attention function ---------
class BufferCache:
    """Per-layer KV buffers ``[B, kv, C, hd]`` for one graph run: HF attention calls
    :meth:`update` (which returns the new entries only), then the attention function
    (:func:`attention`) writes them into the layer's buffers through the op."""

    def __init__(self, buffers: dict[int, tuple[torch.Tensor, torch.Tensor]], attention_mask: torch.Tensor) -> None:
        self.buffers = dict(buffers)
        # every row holds T entries (left padding): seqlens_k = T - 1, total_sequence_length = T
        ones = torch.ones_like(attention_mask, dtype=torch.int32)
        self.seqlens_k = ones.sum(1, dtype=torch.int32) - 1
        self.total_sequence_length = ones[0].sum(dtype=torch.int32)

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return key_states, value_states


def attention(module, query, key, value, attention_mask, scaling: float, dropout: float = 0.0, **kwargs):
    """HF attention interface (registered as :data:`ATTENTION_NAME`): ``query [B, H, S, hd]``
    (rotated), ``key``/``value [B, kv, S, hd]`` (this step's only) → ``[B, S, H, hd]``."""
    cache: BufferCache = kwargs["nuwa_buffers"]
    b, h, s, hd = query.shape
    kv = key.shape[1]
    pk, pv = cache.buffers[module.layer_idx]
    out, pk, pv = torch.ops.nuwa.group_query_attention(
        query.transpose(1, 2).reshape(b, s, h * hd), key.transpose(1, 2).reshape(b, s, kv * hd),
        value.transpose(1, 2).reshape(b, s, kv * hd), pk, pv, cache.seqlens_k, cache.total_sequence_length,
        attention_mask, h, kv, float(scaling),
    )
    cache.buffers[module.layer_idx] = (pk, pv)
    return out.view(b, s, h, hd), None


@contextlib.contextmanager
def attention_implementation(text: Any):
    """Decoder layers whose attention ``config`` is ``text`` call :func:`attention` while this is open."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, attention)
    before = text._attn_implementation_internal
    text._attn_implementation_internal = ATTENTION_NAME
    try:
        yield
    finally:
        text._attn_implementation_internal = before
