"""Qwen2.5-VL's budget schedule and stage-one settings (docs/algorithm.md §10)."""

from __future__ import annotations

import math
from dataclasses import replace

from nuwa_export.errors import NuwaError
from nuwa_export.pruning import (
    BudgetRequest,
    Budgets,
    diagonal_reach,
    keep_fraction,
    real_candidates,
)
from nuwa_export.pruning.spec import StageOneSpec, check_per_region, check_reach

#: Pillars are anchors at or above this quantile of the anchor scores.
PERCENTILE = 0.1
#: The swarm reach as a fraction of the padded grid's diagonal.
REACH_FACTOR = 0.8

#: Qwen2.5-VL's schedule (the authors' code): keep ratio → (s1, s2, slots per region).
SCHEDULE = {0.25: (0.35, 0.42, 3), 0.5: (0.6, 0.66, 3), 0.75: (0.85, 0.70, 4)}


def stage_two_layer(num_layers: int) -> int:
    """Layer ``L`` (stage two runs at ``L − 1``): 15 of 28 as the authors', the same place in
    other depths (``round(15·N/28)``, within ``[1, N − 1]``)."""
    return min(num_layers - 1, max(1, round(15 * num_layers / 28)))


def resolve_budgets(grid: tuple[int, int], num_layers: int, request: BudgetRequest) -> Budgets:
    """Qwen2.5-VL budgets (docs/algorithm.md §10): by ``keep_ratio`` (0.25, 0.5, 0.75; default
    0.5) ``K1 = min(ceil(N·s1), candidates)``, ``K2 = max(1, int(K1·s2))`` in float64; or by an
    average ``keep``: the schedule whose ratio is nearest ``keep / N``, with ``K1`` the smallest
    that averages at least ``keep`` over the layers. Explicit ``k1`` / ``k2`` / ``layer`` override;
    ``per_region`` (``--per-region``) replaces the schedule's slots per region, and the candidates
    ``K1`` is clipped to.
    """
    r = request
    keep, keep_ratio, k1, k2, layer, per_region = r.keep, r.keep_ratio, r.k1, r.k2, r.layer, r.per_region
    n = int(grid[0]) * int(grid[1])
    layer = stage_two_layer(num_layers) if layer is None else layer
    if not 1 <= layer <= num_layers - 1:
        raise NuwaError(f"--stage-two-layer {layer} must be between 1 and {num_layers - 1} (the LLM has {num_layers} layers)")
    if not r.prune:
        return Budgets(n, n, n, layer, n, num_layers, False)
    if keep is not None and keep_ratio is not None:
        raise NuwaError("pass --keep or --keep-ratio, not both")
    if keep is not None:
        if not 1 <= keep <= n:
            raise NuwaError(f"--keep {keep} must be between 1 and the {n} image tokens")
        keep_ratio = min(SCHEDULE, key=lambda ratio: (abs(ratio - keep / n), ratio))
    elif keep_ratio is None:
        keep_ratio = 0.5
    if keep_ratio not in SCHEDULE:
        raise NuwaError(f"--keep-ratio must be one of {', '.join(str(r) for r in SCHEDULE)} (the paper's schedule), got {keep_ratio}")
    s1, s2, scheduled = SCHEDULE[keep_ratio]
    check_per_region(per_region)
    per_region = scheduled if per_region is None else per_region
    candidates = real_candidates(grid, per_region)
    if keep is not None:  # smallest K1 whose average over the layers reaches keep
        d1 = min(max(1, math.floor(keep * num_layers / (layer + (num_layers - layer) * s2))), candidates)
        while d1 < candidates and layer * d1 + (num_layers - layer) * max(1, int(d1 * s2)) < keep * num_layers:
            d1 += 1
        most = (layer * d1 + (num_layers - layer) * max(1, int(d1 * s2))) / num_layers
        if k1 is None and most < keep:
            raise NuwaError(
                f"--keep {keep} cannot be reached: at most {most:.0f} tokens per layer on average with the {keep_ratio} schedule "
                f"({candidates} candidates, K2 = {s2}·K1); pass a smaller --keep or --keep-ratio"
            )
    else:
        d1 = keep_fraction(grid, s1, per_region)
    k1 = d1 if k1 is None else k1
    k2 = max(1, int(k1 * s2)) if k2 is None else k2
    if not 1 <= k1 <= candidates:
        raise NuwaError(f"stage-one keep K1={k1} must be between 1 and the {candidates} candidates ({per_region} per 2x2 region)")
    if not 1 <= k2 <= k1:
        raise NuwaError(f"stage-two keep K2={k2} must be between 1 and K1={k1}")
    budgets = Budgets(0, k1, k2, layer, n, num_layers, True, keep_ratio, per_region)
    return replace(budgets, keep=max(1, round(budgets.average_keep)))


def stage_one_spec(budgets: Budgets, grid: tuple[int, int], request: BudgetRequest) -> StageOneSpec:
    """Qwen2.5-VL's settings: ``n`` from the budget schedule, reach ``0.8·`` the padded grid's
    diagonal (``distance`` = its square), pillar quantile 0.1, no self-weight override."""
    n = request.per_region if request.per_region is not None else (budgets.per_region or 3)
    check_per_region(n)
    distance = diagonal_reach(grid, REACH_FACTOR) ** 2 if request.distance is None else request.distance
    percentile = PERCENTILE if request.percentile is None else request.percentile
    check_reach(distance, percentile)
    if budgets.prune:
        real = real_candidates(grid, n)
        if budgets.k1 > real:
            raise NuwaError(f"--per-region {n} gives {real} candidates on the {grid[0]}x{grid[1]} grid, fewer than K1={budgets.k1}")
    return StageOneSpec(n, float(distance), float(percentile), self_weight=False)
