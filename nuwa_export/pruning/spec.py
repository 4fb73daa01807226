"""Stage one's settings, and stage one run from them (docs/algorithm.md §2, §10).

One computation serves every family; what differs is data (:class:`StageOneSpec`): the slots per
2×2 region, the swarm reach (``sqrt(distance)`` patches), the pillar quantile, and whether each
row's self entry is set to 1.0 after normalising or kept as normalised. A family fills in its
defaults (:func:`stage_one_spec` has the paper's).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from nuwa_export.errors import NuwaError
from nuwa_export.pruning.budgets import Budgets
from nuwa_export.pruning.stage_one import (
    DEFAULT_DISTANCE,
    DEFAULT_PERCENTILE,
    alignment,
    default_per_region,
    padded_anchors,
    pillar_mask,
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
    """The paper's settings: fill in the defaults (``None``) and refuse settings stage one cannot meet."""
    distance = DEFAULT_DISTANCE if distance is None else distance
    percentile = DEFAULT_PERCENTILE if percentile is None else percentile
    check_per_region(per_region)
    n = default_per_region(budgets.k1, grid) if per_region is None else per_region
    candidates = n * grid[0] * grid[1] // 4
    if budgets.prune and candidates < budgets.k1:
        raise NuwaError(f"--per-region {n} gives {candidates} candidates, fewer than K1={budgets.k1}")
    check_reach(distance, percentile)
    return StageOneSpec(n, float(distance), float(percentile))


def check_per_region(per_region: int | None) -> None:
    if per_region is not None and not 1 <= per_region <= 4:
        raise NuwaError(f"--per-region must be between 1 and 4, got {per_region}")


def check_reach(distance, percentile) -> None:
    if not (math.isfinite(distance) and distance > 0) or not 0 <= percentile <= 1:
        raise NuwaError(f"--distance must be > 0 and --percentile in [0, 1], got {distance} and {percentile}")


def anchors(salience: torch.Tensor, grid: tuple[int, int], keep: int, per_region: int) -> torch.Tensor:
    """Separation and alignment: ``[B, keep]`` ascending raster indices. Grids with an odd side
    are padded to even sides first (:func:`~nuwa_export.pruning.stage_one.padded_anchors`)."""
    if grid[0] % 2 or grid[1] % 2:
        return padded_anchors(salience, grid, keep, per_region)
    return alignment(salience, separation(salience, grid, per_region), keep)


def weights(sim, indices, anchor_scores, grid, spec: StageOneSpec) -> torch.Tensor:
    """The swarm merge matrix ``[B, K, N]`` for ``spec`` (the ``nuwa::SwarmAggregate`` node)."""
    return swarm_weights(
        sim, indices, anchor_scores, grid, percentile=spec.percentile, reach=math.sqrt(spec.distance), self_override=spec.self_weight,
    )


def swarm_merge(features, sim, indices, scores, grid: tuple[int, int], spec: StageOneSpec) -> torch.Tensor:
    """``tokens [B, K, D]``: the anchors with their swarms merged in, in ``features``' dtype
    (computed in float32). The ``nuwa::SwarmAggregate`` node computes exactly this."""
    return (weights(sim, indices, scores, grid, spec) @ features.float()).to(features.dtype)


Merge = Callable[..., torch.Tensor]


def run_stage_one(features, sim, salience, grid: tuple[int, int], keep: int, spec: StageOneSpec, merge: Merge | None = None):
    """Stage one for a batch: ``(tokens [B, keep, D], indices [B, keep], anchor scores [B, keep])``.
    ``merge`` runs the swarm aggregation (default :func:`swarm_merge`; the exported graph's node)."""
    if features.shape[:2] != sim.shape[:2] or features.shape[:2] != salience.shape:
        raise NuwaError(
            f"stage one shapes disagree: features {tuple(features.shape)}, sim {tuple(sim.shape)}, salience {tuple(salience.shape)}"
        )
    indices = anchors(salience.float(), grid, keep, spec.per_region)
    scores = salience.float().gather(1, indices)
    return (merge or swarm_merge)(features, sim, indices, scores, grid, spec), indices, scores


def pillars(scores: torch.Tensor, spec: StageOneSpec) -> torch.Tensor:
    """``[B, K]`` bool: the anchors that are pillars (they keep only themselves)."""
    return pillar_mask(scores, spec.percentile)
