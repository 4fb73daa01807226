"""The pieces of a loaded model Nüwa drives (a family's ``parts.py`` derives from :class:`Parts`),
and what stage one reads from and makes of one tower pass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from nuwa_export.models.decoder import DecoderParts
from nuwa_export.pruning.budgets import Budgets
from nuwa_export.pruning.spec import Merge, StageOneSpec, run_stage_one


@dataclass(frozen=True)
class VisionSignals:
    """What stage one reads from one tower pass, every tensor in raster order of the token grid.

    features: ``[B, N, Dv]`` the features merged into the kept tokens.
    sim: ``[B, N, Ds]`` similarity features (not normalised).
    cls_attention: ``[B, N]`` float32 salience (LLaVA: the CLS row; Qwen2.5-VL: attention received).
    """

    features: torch.Tensor
    sim: torch.Tensor
    cls_attention: torch.Tensor


@dataclass(frozen=True)
class VisionTokens:
    """``tokens [B, K1, D_llm]`` projected, ``indices [B, K1]`` int64 ascending patch indices and
    ``scores [B, K1]`` the kept anchors' salience (None without pruning)."""

    tokens: torch.Tensor
    indices: torch.Tensor
    scores: torch.Tensor | None = None


class Parts(DecoderParts):
    """The pieces of a loaded model Nüwa drives, and the computations it adds to them.

    A family's parts set, besides :class:`DecoderParts`' ``lm``, ``lm_head``, ``config`` and
    ``_cache_kw``: ``grid`` (rows, columns of the token grid), ``num_patches``, ``image_size``,
    ``num_layers``, ``projector`` and ``vision_module`` (the modules holding the vision weights),
    and implement :meth:`vision_signals`, :attr:`stage_two_fn` and :attr:`vision_dtype`.
    """

    grid: tuple[int, int]
    num_patches: int
    image_size: int
    num_layers: int
    projector: nn.Module
    vision_module: nn.Module

    @property
    def vision_dtype(self) -> torch.dtype:
        raise NotImplementedError

    def vision_signals(self, pixel_values: torch.Tensor) -> VisionSignals:
        """One tower pass on ``[B, 3, S, S]`` pixels in the tower's dtype."""
        raise NotImplementedError

    @property
    def stage_two_fn(self):
        """The family's stage-two row as a function of ``(layer, rotary, layer_input, position_ids,
        keys, pad)`` → ``[B, T]`` float32 (traced into the prefix graph too)."""
        raise NotImplementedError

    def vision_tokens(self, pixel_values: torch.Tensor, budgets: Budgets, spec: StageOneSpec, merge: Merge | None = None,
                      lap: Callable[[str], None] | None = None) -> VisionTokens:
        """Tower, stage one on the token grid (unless pruning is off) and projector. ``merge``
        runs the swarm aggregation (default: the PyTorch function); the exported vision graph
        traces this with its ``nuwa::SwarmAggregate`` node. ``lap(name)`` is called after each
        part (``vision``, ``stage_one``, ``projector``) for the per-stage timings."""
        lap = lap or (lambda name: None)
        signals = self.vision_signals(pixel_values)
        lap("vision")
        if budgets.prune:
            merged, indices, scores = run_stage_one(signals.features, signals.sim, signals.cls_attention, self.grid, budgets.k1, spec, merge)
        else:
            merged, scores = signals.features, None
            indices = torch.arange(merged.shape[1], device=merged.device).expand(merged.shape[0], merged.shape[1])
        lap("stage_one")
        tokens = self.projector(merged)
        lap("projector")
        return VisionTokens(tokens, indices, scores)
