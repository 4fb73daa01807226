"""LLaVA-1.5 wiring: what Nüwa needs from an HF ``LlavaForConditionalGeneration`` instance.

Nothing here assigns to a transformers class or to a model instance. The modules of the loaded
model are driven directly (embeddings, encoder layers, decoder layers) so the reference can
take the extra signals Nüwa needs — one CLS attention row in the tower, one last-token attention
row at the stage-two layer — without eager attention maps and without patching.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
from torch import nn

from nuwa_export.errors import NuwaError

SUPPORTED_TEXT_MODELS = ("llama",)
SUPPORTED_VISION_MODELS = ("clip_vision_model",)


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


def check_config(config) -> None:
    """Refuse checkpoints this code was not written for, with one line saying why."""
    if getattr(config, "model_type", None) != "llava":
        raise NuwaError(f"expected a LLaVA checkpoint (model_type 'llava'), got '{getattr(config, 'model_type', None)}'")
    text, vision = config.text_config.model_type, config.vision_config.model_type
    if text not in SUPPORTED_TEXT_MODELS:
        raise NuwaError(f"unsupported LLM '{text}' in this LLaVA checkpoint (supported: {', '.join(SUPPORTED_TEXT_MODELS)})")
    if vision not in SUPPORTED_VISION_MODELS:
        raise NuwaError(f"unsupported vision tower '{vision}' (supported: {', '.join(SUPPORTED_VISION_MODELS)})")
    if not isinstance(config.vision_feature_layer, int):
        raise NuwaError("multi-layer vision features (a list vision_feature_layer) are not supported")
    if config.vision_feature_select_strategy != "default":
        raise NuwaError(f"vision_feature_select_strategy '{config.vision_feature_select_strategy}' is not supported (LLaVA-1.5 uses 'default')")
    vc, tc = config.vision_config, config.text_config
    for name, value in (("vision_config.image_size", vc.image_size), ("vision_config.patch_size", vc.patch_size)):
        if not isinstance(value, int) or value < 1:
            raise NuwaError(f"config.json: {name} must be a positive integer, got {value!r}")
    if vc.image_size % vc.patch_size:
        raise NuwaError(f"config.json: image_size {vc.image_size} is not a multiple of patch_size {vc.patch_size}")
    if not isinstance(tc.num_hidden_layers, int) or tc.num_hidden_layers < 2:
        raise NuwaError(
            f"config.json: the LLM has {tc.num_hidden_layers!r} layers; at least 2 are needed to split it at the stage-two layer"
        )
    side = vc.image_size // vc.patch_size
    if side % 2:
        raise NuwaError(f"the {side}x{side} patch grid has odd sides; Nüwa tiles it into 2x2 regions")


@dataclass(frozen=True)
class VisionSignals:
    """What stage one reads from one tower pass.

    features: ``[B, N, Dv]`` LLaVA's feature layer, CLS removed.
    sim: ``[B, N, Dv]`` mean of the last third of the tower's hidden states (not normalised).
    cls_attention: ``[B, N]`` float32, CLS row of the feature layer's attention, summed over heads.
    """

    features: torch.Tensor
    sim: torch.Tensor
    cls_attention: torch.Tensor


class LlavaParts:
    """The pieces of a loaded LLaVA model, and the few computations Nüwa adds to them."""

    def __init__(self, model) -> None:
        check_config(model.config)
        self.model = model
        self.config = model.config
        self.vision = model.model.vision_tower
        self.projector = model.model.multi_modal_projector
        self.lm = model.model.language_model
        self.lm_head = model.lm_head
        vc = model.config.vision_config
        self.num_vision_layers = vc.num_hidden_layers
        self.grid = (vc.image_size // vc.patch_size, vc.image_size // vc.patch_size)
        self.num_patches = self.grid[0] * self.grid[1]
        self.image_size = vc.image_size
        # hidden state index of LLaVA's feature layer: h[0] = embeddings, h[i] = after layer i
        self.feature_index = model.config.vision_feature_layer % (self.num_vision_layers + 1)
        if self.feature_index < 1:
            raise NuwaError("vision_feature_layer must select the output of an encoder layer")
        self.sim_start = math.ceil(2 * self.num_vision_layers / 3)
        self.num_layers = model.config.text_config.num_hidden_layers
        self._cache_kw = cache_keyword(self.lm.layers[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def vision_dtype(self) -> torch.dtype:
        """The vision tower's dtype (float32 in exports, whatever the LLM's)."""
        return self.projector.linear_1.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    # ---- vision -----------------------------------------------------------------------------
    def vision_signals(self, pixel_values: torch.Tensor) -> VisionSignals:
        """Tower pass and the CLS row (see :func:`vision_signals`)."""
        return vision_signals(self.vision, pixel_values, self.feature_index, self.sim_start)

    # ---- language model ---------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` int64 → ``[B, T, D]``."""
        return self.lm.embed_tokens(input_ids)

    def run_layers(
        self, hidden: torch.Tensor, position_ids: torch.Tensor, cache: KVCache, start: int, end: int,
        pad: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decoder layers ``[start, end)`` on ``hidden [B, T, D]`` at ``position_ids [B, T]``.

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

    def last_token_attention(
        self, layer_idx: int, layer_input: torch.Tensor, position_ids: torch.Tensor, cache: KVCache,
        pad: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """See :func:`last_token_attention`."""
        return last_token_attention(self.lm.layers[layer_idx], self.lm.rotary_emb, layer_input, position_ids, cache.keys[layer_idx], pad)

    def logits(self, hidden_last: torch.Tensor) -> torch.Tensor:
        """Final norm and lm_head: ``[B, 1, D]`` → ``[B, V]`` float32."""
        return self.lm_head(self.lm.norm(hidden_last))[:, -1].float()


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


def decoder_stack(layers, rotary: nn.Module, hidden, position_ids, cache: KVCache, mask, cache_kw: str):
    """Run HF decoder ``layers`` in order, each attending over its own entry of ``cache``."""
    position_embeddings = rotary(hidden, position_ids=position_ids)
    for layer in layers:
        hidden = layer(
            hidden,
            attention_mask=mask,
            position_ids=position_ids,
            position_embeddings=position_embeddings,
            use_cache=True,
            **{cache_kw: cache},
        )
    return hidden


def last_token_attention(layer: nn.Module, rotary: nn.Module, layer_input, position_ids, keys, pad=None) -> torch.Tensor:
    """Head-mean softmax attention of the last position in ``layer`` over all its keys (those
    after each row's left padding ``pad [B]``, when given).

    Call after the layer ran on the prefill, so ``keys`` (its cache) hold every position.
    Args:
        layer_input: ``[B, T, D]`` the layer's input hidden states.
        position_ids: ``[B, T]``.
        keys: ``[B, kv_heads, T_all, head_dim]`` the layer's cached (rotated) keys.
        pad: ``[B]`` int64 padding entries at the start of each row's cache, or None.
    Returns:
        ``[B, T_all]`` float32 (0 on padding entries).
    """
    attn = layer.self_attn
    last = layer.input_layernorm(layer_input[:, -1:])
    q = attn.q_proj(last).view(last.shape[0], 1, -1, attn.head_dim).transpose(1, 2)
    cos, sin = rotary(last, position_ids=position_ids[:, -1:])
    q = q * cos[:, None] + _rotate_half(q) * sin[:, None]
    keys = keys.repeat_interleave(attn.num_key_value_groups, dim=1)
    scores = (q.float() @ keys.float().transpose(2, 3)) * attn.scaling  # [B, H, 1, T]
    if pad is not None:
        cols = torch.arange(keys.shape[2], device=keys.device)
        scores = scores.masked_fill((cols[None, :] < pad[:, None])[:, None, None], float("-inf"))
    return scores.softmax(dim=-1).mean(dim=1)[:, 0]


def vision_signals(vision: nn.Module, pixel_values: torch.Tensor, feature_index: int, sim_start: int) -> VisionSignals:
    """Run a CLIP tower once (its own attention kernels) and compute the CLS row alone.

    Args:
        vision: ``CLIPVisionModel`` (or its ``vision_model``).
        pixel_values: ``[B, 3, S, S]`` in the tower's dtype.
        feature_index: hidden-state index of LLaVA's feature layer (``h[0]`` = embeddings).
        sim_start: first hidden state averaged into the similarity features.
    """
    vm = getattr(vision, "vision_model", vision)
    hidden = vm.pre_layrnorm(vm.embeddings(pixel_values))
    states = [hidden]
    for layer in vm.encoder.layers:
        hidden = layer(hidden, None)
        states.append(hidden)
    cls_attention = cls_attention_row(vm.encoder.layers[feature_index - 1], states[feature_index - 1])
    sim = torch.stack(states[sim_start:], dim=0).mean(dim=0)[:, 1:]
    return VisionSignals(states[feature_index][:, 1:], sim, cls_attention[:, 1:])


def cls_attention_row(layer: nn.Module, layer_input: torch.Tensor) -> torch.Tensor:
    """Softmax attention of the CLS query in a CLIP encoder layer, summed over heads.

    Args:
        layer: a CLIP encoder layer (``layer_norm1``, ``self_attn.{q,k}_proj``).
        layer_input: ``[B, 1 + N, Dv]`` hidden states entering that layer.
    Returns:
        ``[B, 1 + N]`` float32 (column 0 is CLS → CLS).
    """
    attn = layer.self_attn
    x = layer.layer_norm1(layer_input)
    b, t, _ = x.shape
    q = attn.q_proj(x[:, :1]).view(b, 1, attn.num_heads, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(b, t, attn.num_heads, attn.head_dim).transpose(1, 2)
    scores = (q.float() @ k.float().transpose(2, 3)) * attn.scale  # [B, heads, 1, T]
    return scores.softmax(dim=-1).sum(dim=1)[:, 0]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
