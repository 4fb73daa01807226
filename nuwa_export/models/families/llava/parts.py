"""LLaVA-1.5 wiring: what Nüwa needs from an HF ``LlavaForConditionalGeneration`` instance.

Nothing here assigns to a transformers class or to a model instance. The modules of the loaded
model are driven directly (embeddings, encoder layers, decoder layers) so the reference can
take the extra signals Nüwa needs — one CLS attention row in the tower, one last-token attention
row at the stage-two layer — without eager attention maps and without patching.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nuwa_export.errors import NuwaError
from nuwa_export.models.decoder import cache_keyword, query_attention
from nuwa_export.models.families.parts import Parts, VisionSignals

SUPPORTED_TEXT_MODELS = ("llama",)
SUPPORTED_VISION_MODELS = ("clip_vision_model",)


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


class LlavaParts(Parts):
    """The pieces of a loaded LLaVA model, and the few computations Nüwa adds to them."""

    position_rows = 1  # 1-D RoPE: positions are [B, T]

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
    def vision_dtype(self) -> torch.dtype:
        """The vision tower's dtype (float32 in exports, whatever the LLM's)."""
        return self.projector.linear_1.weight.dtype

    # ---- vision -----------------------------------------------------------------------------
    def vision_signals(self, pixel_values: torch.Tensor) -> VisionSignals:
        """Tower pass and the CLS row (see :func:`vision_signals`)."""
        return vision_signals(self.vision, pixel_values, self.feature_index, self.sim_start)

    @property
    def stage_two_fn(self):
        """The stage-two row as a function of ``(layer, rotary, layer_input, position_ids, keys,
        pad)`` (for the exported prefix graph): :func:`last_token_attention`."""
        return last_token_attention

    @property
    def vision_module(self) -> nn.Module:
        """The module holding every weight :meth:`vision_signals` uses."""
        return self.vision



def last_token_attention(layer: nn.Module, rotary: nn.Module, layer_input, position_ids, keys, pad=None) -> torch.Tensor:
    """Head-mean softmax attention of the last position in ``layer`` over all its keys (those
    after each row's left padding ``pad [B]``, when given): LLaVA's stage-two row.

    Call after the layer ran on the prefill, so ``keys`` (its cache) hold every position.
    Args:
        layer_input: ``[B, T, D]`` the layer's input hidden states.
        position_ids: ``[B, T]``.
        keys: ``[B, kv_heads, T_all, head_dim]`` the layer's cached (rotated) keys.
        pad: ``[B]`` int64 padding entries at the start of each row's cache, or None.
    Returns:
        ``[B, T_all]`` float32 (0 on padding entries).
    """
    return query_attention(layer, rotary, layer_input, position_ids, keys, pad).mean(dim=1)[:, 0]


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
