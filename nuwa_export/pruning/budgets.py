"""Token budgets (docs/algorithm.md §1): an average `keep` split into stage one K1 and stage two K2."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from nuwa_export.errors import NuwaError

#: LLaVA-1.5's reference point: keep 64 of 576 patches.
_REFERENCE_KEEP, _REFERENCE_PATCHES = 64, 576


def budgets(keep: int) -> tuple[int, int]:
    """Split an average budget into (K1, K2): ``K1 = 7·keep/4``, ``K2 = keep/4``.

    For a ``keep`` that is not a multiple of 4, ``K2 = max(1, keep // 4)`` and
    ``K1 = 2·keep - K2`` so that the average over the two halves of the LLM stays ``keep``.
    """
    if keep < 1:
        raise NuwaError(f"--keep must be at least 1, got {keep}")
    k2 = max(1, keep // 4)
    return 2 * keep - k2, k2


def default_keep(num_patches: int) -> int:
    """64 for 576 patches; the same fraction of other grids, rounded to a multiple of 4 (≥ 4)."""
    return max(4, 4 * round(num_patches * _REFERENCE_KEEP / _REFERENCE_PATCHES / 4))


@dataclass(frozen=True)
class Budgets:
    """Resolved budgets. ``prune=False`` means every patch reaches every layer."""

    keep: int
    k1: int
    k2: int
    layer: int
    num_patches: int
    num_layers: int
    prune: bool = True
    keep_ratio: float | None = None  # Qwen2.5-VL's schedule (--keep-ratio), when it set the budgets
    per_region: int | None = None  # slots per 2x2 region the schedule asks for (None: stage one's default)

    def as_dict(self) -> dict:
        out = {
            "keep": self.keep,
            "stage_one_keep": self.k1,
            "stage_two_keep": self.k2,
            "stage_two_layer": self.layer,
            "num_patches": self.num_patches,
            "num_layers": self.num_layers,
            "prune": self.prune,
        }
        if self.keep_ratio is not None:
            out["keep_ratio"] = self.keep_ratio
        return out

    @property
    def average_keep(self) -> float:
        """Vision tokens per LLM layer, averaged over the layers: ``(L·K1 + (N−L)·K2) / N``."""
        k2 = self.k2 if self.prune else self.k1
        return (self.layer * self.k1 + (self.num_layers - self.layer) * k2) / self.num_layers


def resolve_budgets(
    num_patches: int,
    num_layers: int,
    keep: int | None = None,
    k1: int | None = None,
    k2: int | None = None,
    layer: int | None = None,
    prune: bool = True,
) -> Budgets:
    """Fill in defaults and refuse impossible combinations with a :class:`NuwaError`.

    Defaults: ``keep`` = :func:`default_keep`, (K1, K2) = :func:`budgets`, ``L = N // 2``.
    Explicit ``k1`` / ``k2`` override the split of ``keep``.
    """
    if not prune:  # every patch everywhere; the LLM is still split at N/2 for export
        return Budgets(num_patches, num_patches, num_patches, num_layers // 2, num_patches, num_layers, False)
    if keep is None:
        keep = default_keep(num_patches)
    if keep < 1:
        raise NuwaError(f"--keep must be at least 1, got {keep}")
    if keep > num_patches:
        raise NuwaError(f"--keep {keep} is more than the {num_patches} image patches")
    d1, d2 = budgets(keep)
    k1 = d1 if k1 is None else k1
    k2 = d2 if k2 is None else k2
    layer = num_layers // 2 if layer is None else layer
    if not 1 <= k1 <= num_patches:
        raise NuwaError(
            f"stage-one keep K1={k1} must be between 1 and the {num_patches} image patches"
            + (" (K1 = 7·keep/4; pass a smaller --keep or --stage-one-keep)" if k1 > num_patches else "")
        )
    if not 1 <= k2 <= k1:
        raise NuwaError(f"stage-two keep K2={k2} must be between 1 and K1={k1}")
    if not 1 <= layer <= num_layers - 1:
        raise NuwaError(f"--stage-two-layer {layer} must be between 1 and {num_layers - 1} (the LLM has {num_layers} layers)")
    return Budgets(keep, k1, k2, layer, num_patches, num_layers, True)


#: Qwen2.5-VL's schedule (the authors' code): keep ratio → (s1, s2, slots per region).
QWEN_SCHEDULE = {0.25: (0.35, 0.42, 3), 0.5: (0.6, 0.66, 3), 0.75: (0.85, 0.70, 4)}


def qwen_stage_two_layer(num_layers: int) -> int:
    """Layer ``L`` (stage two runs at ``L − 1``): 15 of 28 as the authors', the same place in
    other depths (``round(15·N/28)``, within ``[1, N − 1]``)."""
    return min(num_layers - 1, max(1, round(15 * num_layers / 28)))


def resolve_qwen_budgets(
    grid: tuple[int, int],
    num_layers: int,
    *,
    keep_ratio: float | None = None,
    keep: int | None = None,
    k1: int | None = None,
    k2: int | None = None,
    layer: int | None = None,
    prune: bool = True,
    per_region: int | None = None,
) -> Budgets:
    """Qwen2.5-VL budgets (docs/algorithm.md §10): by ``keep_ratio`` (0.25, 0.5, 0.75; default
    0.5) ``K1 = min(ceil(N·s1), candidates)``, ``K2 = max(1, int(K1·s2))`` in float64; or by an
    average ``keep``: the schedule whose ratio is nearest ``keep / N``, with ``K1`` the smallest
    that averages at least ``keep`` over the layers. Explicit ``k1`` / ``k2`` / ``layer`` override;
    ``per_region`` (``--per-region``) replaces the schedule's slots per region, and the candidates
    ``K1`` is clipped to.
    """
    from nuwa_export.pruning.stage_one import qwen_stage_one_keep, real_candidates

    n = int(grid[0]) * int(grid[1])
    layer = qwen_stage_two_layer(num_layers) if layer is None else layer
    if not 1 <= layer <= num_layers - 1:
        raise NuwaError(f"--stage-two-layer {layer} must be between 1 and {num_layers - 1} (the LLM has {num_layers} layers)")
    if not prune:
        return Budgets(n, n, n, layer, n, num_layers, False)
    if keep is not None and keep_ratio is not None:
        raise NuwaError("pass --keep or --keep-ratio, not both")
    if keep is not None:
        if not 1 <= keep <= n:
            raise NuwaError(f"--keep {keep} must be between 1 and the {n} image tokens")
        keep_ratio = min(QWEN_SCHEDULE, key=lambda r: (abs(r - keep / n), r))
    elif keep_ratio is None:
        keep_ratio = 0.5
    if keep_ratio not in QWEN_SCHEDULE:
        raise NuwaError(f"--keep-ratio must be one of {', '.join(str(r) for r in QWEN_SCHEDULE)} (the paper's schedule), got {keep_ratio}")
    s1, s2, scheduled = QWEN_SCHEDULE[keep_ratio]
    if per_region is not None and not 1 <= per_region <= 4:
        raise NuwaError(f"--per-region must be between 1 and 4, got {per_region}")
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
        d1 = qwen_stage_one_keep(grid, s1, per_region)
    k1 = d1 if k1 is None else k1
    k2 = max(1, int(k1 * s2)) if k2 is None else k2
    if not 1 <= k1 <= candidates:
        raise NuwaError(f"stage-one keep K1={k1} must be between 1 and the {candidates} candidates ({per_region} per 2x2 region)")
    if not 1 <= k2 <= k1:
        raise NuwaError(f"stage-two keep K2={k2} must be between 1 and K1={k1}")
    budgets = Budgets(0, k1, k2, layer, n, num_layers, True, keep_ratio, per_region)
    return replace(budgets, keep=max(1, round(budgets.average_keep)))
