"""Token budgets (docs/algorithm.md §1): an average `keep` split into stage one K1 and stage two K2.

The paper's rule (:func:`resolve_budgets`) is here; a family with a schedule of its own resolves
a :class:`BudgetRequest` its own way into the same :class:`Budgets`.
"""

from __future__ import annotations

from dataclasses import dataclass

from nuwa_export.errors import NuwaError

#: The paper's reference point: keep 64 of 576 patches.
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
class BudgetRequest:
    """What a user asked for (``--keep``, ``--keep-ratio``, ``--stage-one-keep``, ...); None is
    the family's default. ``per_region``, ``distance`` and ``percentile`` are stage one's knobs."""

    keep: int | None = None
    k1: int | None = None
    k2: int | None = None
    layer: int | None = None
    prune: bool = True
    keep_ratio: float | None = None
    per_region: int | None = None
    distance: float | None = None
    percentile: float | None = None


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
    keep_ratio: float | None = None  # a family's keep-ratio schedule (--keep-ratio), when it set the budgets
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
