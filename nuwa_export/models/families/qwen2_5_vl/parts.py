"""Qwen2.5-VL wiring: what Nüwa needs from an HF ``Qwen2_5_VLForConditionalGeneration``.

As for LLaVA (:mod:`nuwa_export.models.families.llava.parts`), the loaded model is only read: its modules are
driven directly. The vision tower runs here at a fixed image size (static shapes for export):

- the image ``[B, 3, S, S]`` is cut into 14 px patches in the processor's order (2×2 merge units
  in raster order, each patch repeated over the 2 temporal frames) and embedded by the tower's
  own patch embedding;
- every block runs in that order (raster order of the merged grid). Window attention is full
  attention with a block mask of the 112 px windows; attention does not depend on the order of
  its tokens, so this equals transformers' window-ordered pass, without its reordering and without
  the authors' bug of leaving the similarity features in window order;
- the last block (a full-attention block) also yields its softmax probabilities: the salience.

The LLM is Qwen2's decoder with M-RoPE: positions are ``[3, B, T]`` (temporal, height, width).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nuwa_export.errors import NuwaError
from nuwa_export.models.decoder import cache_keyword, query_attention, rotate_half
from nuwa_export.models.families.parts import Parts, VisionSignals

#: The image side the vision graph is fixed to unless ``--image-size`` says otherwise (16×16 tokens).
DEFAULT_IMAGE_SIZE = 448
#: The largest image side, in LLM tokens (48 × 28 = 1344 px: 2304 tokens, 9216 patches; Qwen's
#: default ``max_pixels`` allows about 1280 tokens).
MAX_IMAGE_CELLS = 48
#: Stage two reads the last this many prompt positions (mean over them, max over heads).
STAGE_TWO_QUERIES = 3


def check_config(config) -> None:
    """Refuse Qwen2.5-VL checkpoints this code was not written for, with one line saying why."""
    vc, tc = config.vision_config, config.text_config
    for name, value in (("vision_config.patch_size", vc.patch_size), ("vision_config.spatial_merge_size", vc.spatial_merge_size),
                        ("vision_config.temporal_patch_size", vc.temporal_patch_size), ("vision_config.window_size", vc.window_size),
                        ("vision_config.depth", vc.depth)):
        if not isinstance(value, int) or value < 1:
            raise NuwaError(f"config.json: {name} must be a positive integer, got {value!r}")
    if vc.spatial_merge_size != 2:
        raise NuwaError(f"config.json: spatial_merge_size {vc.spatial_merge_size} is not supported (Qwen2.5-VL merges 2x2 patches)")
    if (vc.depth - 1) not in set(vc.fullatt_block_indexes):
        raise NuwaError("the last vision block must be a full-attention block (its attention is the salience stage one reads)")
    if vc.depth < 4:
        raise NuwaError(f"config.json: the vision tower has {vc.depth} blocks; at least 4 are needed (middle-half features)")
    if not isinstance(tc.num_hidden_layers, int) or tc.num_hidden_layers < 2:
        raise NuwaError(
            f"config.json: the LLM has {tc.num_hidden_layers!r} layers; at least 2 are needed to split it at the stage-two layer"
        )
    if getattr(tc, "use_sliding_window", False):
        raise NuwaError("config.json: sliding-window attention in the LLM is not supported")
    if config.vision_config.out_hidden_size != tc.hidden_size:
        raise NuwaError("config.json: vision_config.out_hidden_size must equal the LLM's hidden_size")


def cell_size(config) -> int:
    """Pixels per LLM image token side (28 for Qwen2.5-VL)."""
    return config.vision_config.patch_size * config.vision_config.spatial_merge_size


def check_image_size(config, image_size: int) -> None:
    cell = cell_size(config)
    if not isinstance(image_size, int) or image_size < 2 * cell or image_size % cell:
        raise NuwaError(f"--image-size must be a multiple of {cell} px of at least {2 * cell}, got {image_size}")
    if image_size > MAX_IMAGE_CELLS * cell:
        raise NuwaError(
            f"--image-size {image_size} is more than {MAX_IMAGE_CELLS * cell} px ({MAX_IMAGE_CELLS}x{MAX_IMAGE_CELLS} tokens): the vision graph "
            "attends over every patch at once"
        )


def grid(config, image_size: int | None = None) -> tuple[int, int]:
    """The merged (LLM token) grid at ``image_size`` (default :data:`DEFAULT_IMAGE_SIZE`)."""
    size = image_size or DEFAULT_IMAGE_SIZE
    check_image_size(config, size)
    side = size // cell_size(config)
    return (side, side)


def window_ids(grid_hw: tuple[int, int], window_cells: int) -> torch.Tensor:
    """Per patch (processor order: 2×2 merge units in raster order), the id of its window.

    Windows are ``window_cells × window_cells`` merged cells, tiled from the top-left corner
    (the last row and column of windows may be smaller), as transformers' window index does.
    """
    h, w = grid_hw
    cells = torch.arange(h * w)
    cy, cx = cells // w, cells % w
    per_row = math.ceil(w / window_cells)
    ids = (cy // window_cells) * per_row + cx // window_cells
    return ids.repeat_interleave(4)


def vision_positions(grid_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per patch (processor order), its (row, column) in the 14 px patch grid."""
    h, w = 2 * grid_hw[0], 2 * grid_hw[1]
    hpos = torch.arange(h)[:, None].expand(h, w).reshape(h // 2, 2, w // 2, 2).transpose(1, 2).flatten()
    wpos = torch.arange(w)[None, :].expand(h, w).reshape(h // 2, 2, w // 2, 2).transpose(1, 2).flatten()
    return hpos, wpos


class QwenParts(Parts):
    """The pieces of a loaded Qwen2.5-VL model, and the computations Nüwa adds to them."""

    position_rows = 3  # M-RoPE: positions are [3, B, T]

    def __init__(self, model, image_size: int | None = None) -> None:
        check_config(model.config)
        self.model = model
        self.config = model.config
        self.visual = model.model.visual
        self.lm = model.model.language_model
        self.lm_head = model.lm_head
        self.projector = nn.Identity()  # the tower's merger already maps to the LLM width
        vc = model.config.vision_config
        self.image_size = image_size or DEFAULT_IMAGE_SIZE
        self.grid = grid(model.config, self.image_size)
        self.num_patches = self.grid[0] * self.grid[1]
        self.num_layers = model.config.text_config.num_hidden_layers
        self.patch, self.temporal = vc.patch_size, vc.temporal_patch_size
        self.full_attention = frozenset(vc.fullatt_block_indexes)
        # similarity features: mean of the states after blocks D/4-1 .. 3D/4-1 (7..23 of 32)
        self.sim_blocks = (vc.depth // 4 - 1, 3 * vc.depth // 4 - 1)
        self.window_cells = vc.window_size // vc.spatial_merge_size // vc.patch_size
        self._cache_kw = cache_keyword(self.lm.layers[0])

    @property
    def vision_dtype(self) -> torch.dtype:
        return self.visual.patch_embed.proj.weight.dtype

    # ---- vision -----------------------------------------------------------------------------
    def patchify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` → ``[B, 4·H·W, 3·T·p·p]`` in the processor's layout (transformers'
        ``Qwen2VLImageProcessor.patchify`` of the same pixels; a test holds it to that)."""
        b, c, s, _ = pixel_values.shape
        p, g = self.patch, s // self.patch
        x = pixel_values.reshape(b, c, g // 2, 2, p, g // 2, 2, p).permute(0, 2, 5, 3, 6, 1, 4, 7)
        x = x.reshape(b, g * g, c, 1, p * p).expand(b, g * g, c, self.temporal, p * p)  # rank <= 8 (TensorRT's limit)
        return x.reshape(b, g * g, c * self.temporal * p * p)

    def vision_signals(self, pixel_values: torch.Tensor) -> VisionSignals:
        """One tower pass → features to merge (the merged embeddings), similarity features (the
        middle-half mean through the merger) and salience, all ``[B, N, ...]`` in raster order."""
        v = self.visual
        b = pixel_values.shape[0]
        patches = self.patchify(pixel_values.to(self.vision_dtype))
        n4 = patches.shape[1]
        x = v.patch_embed(patches.reshape(b * n4, -1)).reshape(b, n4, -1)
        cos, sin = self._rotary(x)
        windows = window_ids(self.grid, self.window_cells).to(x.device)
        blocked = torch.full((), torch.finfo(x.dtype).min, dtype=x.dtype, device=x.device)
        window_mask = torch.where(windows[:, None] == windows[None, :], torch.zeros((), dtype=x.dtype, device=x.device), blocked)
        first, last = self.sim_blocks
        states, salience = [], None
        for i, blk in enumerate(v.blocks):
            full = i in self.full_attention
            x, probs = vision_block(blk, x, cos, sin, None if full else window_mask, want_probs=i == len(v.blocks) - 1)
            if first <= i <= last:
                states.append(x)
            if probs is not None:  # [B, heads, N4, N4] → attention each patch receives, per merged token
                salience = probs.mean(dim=1).sum(dim=1).reshape(b, -1, 4).mean(dim=-1)
        features = self._merge(v.merger, x)
        sim = self._merge(v.merger, torch.stack(states).mean(dim=0))
        return VisionSignals(features, sim, salience)

    @staticmethod
    def _merge(merger: nn.Module, x: torch.Tensor) -> torch.Tensor:
        b, n4, e = x.shape
        return merger(x.reshape(b * n4, e)).reshape(b, n4 // 4, -1)

    def _rotary(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The tower's 2-D rotary tables ``[N4, head_dim]`` (float32)."""
        inv_freq = self.visual.rotary_pos_emb.inv_freq.float().to(x.device)
        hpos, wpos = (t.to(x.device) for t in vision_positions(self.grid))
        emb = torch.cat([hpos[:, None].float() * inv_freq, wpos[:, None].float() * inv_freq], dim=-1)
        emb = torch.cat([emb, emb], dim=-1)
        return emb.cos(), emb.sin()

    # ---- language model (models.decoder.DecoderParts: embed, run_layers, stage_two_row, logits) --
    @property
    def stage_two_fn(self):
        """The stage-two row as a function (for the exported prefix graph): :func:`stage_two_attention`."""
        return stage_two_attention

    @property
    def vision_module(self) -> nn.Module:
        """The module holding every weight :meth:`vision_signals` uses."""
        return self.visual


def vision_block(blk: nn.Module, x: torch.Tensor, cos, sin, mask, want_probs: bool = False):
    """One Qwen2.5-VL vision block on ``x [B, N4, E]`` (its own weights; ``mask`` additive
    ``[N4, N4]`` or None) → (output, softmax probabilities ``[B, heads, N4, N4]`` or None)."""
    attn = blk.attn
    b, n, e = x.shape
    h = blk.norm1(x)
    qkv = attn.qkv(h).reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # [B, heads, N4, hd]
    dtype = q.dtype
    q = (q.float() * cos + rotate_half(q.float()) * sin).to(dtype)
    k = (k.float() * cos + rotate_half(k.float()) * sin).to(dtype)
    scores = (q @ k.transpose(2, 3)) * attn.scaling
    if mask is not None:
        scores = scores + mask
    probs = scores.softmax(dim=-1, dtype=torch.float32)  # float32 (the salience sums ~N4 of them per key)
    out = (probs.to(dtype) @ v).transpose(1, 2).reshape(b, n, e)
    x = x + attn.proj(out)
    x = x + blk.mlp(blk.norm2(x))
    return x, (probs if want_probs else None)


def stage_two_attention(layer: nn.Module, rotary: nn.Module, layer_input, position_ids, keys, pad=None, queries: int = STAGE_TWO_QUERIES):
    """Qwen's stage-two row: softmax attention of the last ``queries`` prompt positions in
    ``layer`` (causal: each sees keys up to itself), mean over those queries, max over heads.

    Args:
        layer_input: ``[B, T, D]`` the layer's input; ``position_ids`` ``[3, B, T]``;
        keys: ``[B, kv_heads, T, hd]`` the layer's cached (rotated) keys after the prefill.
        pad: ``[B]`` left-padding entries per row, or None.
    Returns:
        ``[B, T]`` float32.
    """
    return query_attention(layer, rotary, layer_input, position_ids, keys, pad, queries).mean(dim=2).amax(dim=1)
