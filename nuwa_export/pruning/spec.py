"""Stage one's settings per family, and stage one run from them (docs/algorithm.md §2, §10).

One computation serves every family; what differs is data (:class:`StageOneSpec`): the slots per
2×2 region, the swarm reach (``sqrt(distance)`` patches), the pillar quantile, and whether each
row's self entry is set to 1.0 after normalising (LLaVA) or kept as normalised (Qwen2.5-VL).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nuwa_export.errors import NuwaError
from nuwa_export.pruning.budgets import Budgets
from nuwa_export.pruning.stage_one import (
    DEFAULT_DISTANCE,
    DEFAULT_PERCENTILE,
    QWEN_PERCENTILE,
    alignment,
    default_per_region,
    pillar_mask,
    qwen_anchors,
    qwen_reach,
    real_candidates,
    separation,
    swarm_weights,
)


@dataclass(frozen=True)
class StageOneSpec:
    """Stage-one settings, baked into the vision graph and recorded in the manifest."""

    per_region: int
    distance: float  # reach is sqrt(distance) patches
    percentile: float
    self_weight: bool = True  # set each row's self entry to 1.0 after normalising

    def as_dict(self) -> dict:
        out = {"per_region": self.per_region, "distance": self.distance, "percentile": self.percentile}
        if not self.self_weight:
            out["self_weight"] = False
        return out


def stage_one_spec(
    budgets: Budgets, grid: tuple[int, int], per_region: int | None, distance: float | None = None, percentile: float | None = None
) -> StageOneSpec:
    """LLaVA's settings: fill in the defaults (``None``) and refuse settings stage one cannot meet."""
    distance = DEFAULT_DISTANCE if distance is None else distance
    percentile = DEFAULT_PERCENTILE if percentile is None else percentile
    if per_region is not None and not 1 <= per_region <= 4:
        raise NuwaError(f"--per-region must be between 1 and 4, got {per_region}")
    n = default_per_region(budgets.k1, grid) if per_region is None else per_region
    candidates = n * grid[0] * grid[1] // 4
    if budgets.prune and candidates < budgets.k1:
        raise NuwaError(f"--per-region {n} gives {candidates} candidates, fewer than K1={budgets.k1}")
    _check_numbers(distance, percentile)
    return StageOneSpec(n, float(distance), float(percentile))


def qwen_spec(budgets: Budgets, grid: tuple[int, int], per_region: int | None = None, distance: float | None = None,
              percentile: float | None = None) -> StageOneSpec:
    """Qwen2.5-VL's settings: ``n`` from the budget schedule, reach ``0.8·`` the padded grid's
    diagonal (``distance`` = its square), pillar quantile 0.1, no self-weight override."""
    n = per_region if per_region is not None else (budgets.per_region or 3)
    if not 1 <= n <= 4:
        raise NuwaError(f"--per-region must be between 1 and 4, got {n}")
    distance = qwen_reach(grid) ** 2 if distance is None else distance
    percentile = QWEN_PERCENTILE if percentile is None else percentile
    _check_numbers(distance, percentile)
    if budgets.prune:
        qwen_anchors_possible(grid, budgets.k1, n)
    return StageOneSpec(n, float(distance), float(percentile), self_weight=False)


def qwen_anchors_possible(grid: tuple[int, int], k1: int, per_region: int) -> None:
    real = real_candidates(grid, per_region)
    if k1 > real:
        raise NuwaError(f"--per-region {per_region} gives {real} candidates on the {grid[0]}x{grid[1]} grid, fewer than K1={k1}")


def _check_numbers(distance, percentile) -> None:
    if not (math.isfinite(distance) and distance > 0) or not 0 <= percentile <= 1:
        raise NuwaError(f"--distance must be > 0 and --percentile in [0, 1], got {distance} and {percentile}")


def anchors(salience: torch.Tensor, grid: tuple[int, int], keep: int, per_region: int) -> torch.Tensor:
    """Separation and alignment: ``[B, keep]`` ascending raster indices. Grids with an odd side
    are padded to even sides first (:func:`~nuwa_export.pruning.stage_one.qwen_anchors`)."""
    if grid[0] % 2 or grid[1] % 2:
        return qwen_anchors(salience, grid, keep, per_region)
    return alignment(salience, separation(salience, grid, per_region), keep)


def weights(sim, indices, anchor_scores, grid, spec: StageOneSpec) -> torch.Tensor:
    """The swarm merge matrix ``[B, K, N]`` for ``spec`` (the ``nuwa::SwarmAggregate`` node)."""
    return swarm_weights(
        sim, indices, anchor_scores, grid, percentile=spec.percentile, reach=math.sqrt(spec.distance), self_override=spec.self_weight,
    )


def run_stage_one(features, sim, salience, grid: tuple[int, int], keep: int, spec: StageOneSpec):
    """Stage one for a batch: ``(tokens [B, keep, D], indices [B, keep], pillars [B, keep])``."""
    if features.shape[:2] != sim.shape[:2] or features.shape[:2] != salience.shape:
        raise NuwaError(
            f"stage one shapes disagree: features {tuple(features.shape)}, sim {tuple(sim.shape)}, salience {tuple(salience.shape)}"
        )
    indices = anchors(salience.float(), grid, keep, spec.per_region)
    scores = salience.float().gather(1, indices)
    tokens = (weights(sim, indices, scores, grid, spec) @ features.float()).to(features.dtype)
    return tokens, indices, pillar_mask(scores, spec.percentile)
