"""Stage one of Nüwa, after the vision tower (docs/algorithm.md §2).

Separation picks the ``n`` most-attended slots of every 2×2 region, alignment keeps the ``K``
most-attended of those as anchors (ascending raster order), and swarm aggregation merges each
collector anchor's neighbours into it. Ties are broken deterministically: higher score first,
then lower patch index (stable sorts over index-ordered candidates).

Only the ``K×N`` rows of the similarity matrix that are used are ever computed.

Grids with an odd side (a merged grid may have them; run with a family's settings by
:func:`nuwa_export.pruning.spec.run_stage_one`): separation runs on the grid zero-padded to even
sides (bottom row / right column) with the padding ranked ``-inf`` (:func:`padded_anchors`);
alignment keeps at most the real candidates (:func:`keep_fraction`), so no padding is ever picked
and shapes stay static. Anchors are returned as unpadded raster indices. A reach can be a
fraction of the padded grid's diagonal (:func:`diagonal_reach`), and the self-weight override
after normalising can be off (a collector's row then includes its own entry, normalised like the
others).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nuwa_export.errors import NuwaError

#: Added to each row sum before normalising (the authors' constant).
ROW_EPS = 1e-8
#: Swarm distance (reach √280 ≈ 16.7 patches) and pillar quantile: the paper's defaults.
DEFAULT_DISTANCE = 280.0
DEFAULT_PERCENTILE = 0.55


def default_per_region(keep: int, grid: tuple[int, int]) -> int:
    """``n = min(4, ceil(keep / number_of_2x2_regions))``."""
    h, w = grid
    return min(4, math.ceil(keep / (h * w // 4)))


def _check_grid(grid: tuple[int, int], n: int, *, even: bool = True) -> tuple[int, int]:
    h, w = int(grid[0]), int(grid[1])
    if even and (h < 2 or w < 2 or h % 2 or w % 2):
        raise NuwaError(f"the patch grid must have even sides of at least 2, got {h}x{w}")
    if not even and (h < 1 or w < 1):
        raise NuwaError(f"the patch grid must have sides of at least 1, got {h}x{w}")
    if h * w != n:
        raise NuwaError(f"grid {h}x{w} has {h * w} patches but the features have {n}")
    return h, w


def separation(cls_attention: torch.Tensor, grid: tuple[int, int], per_region: int) -> torch.Tensor:
    """Candidates: the ``per_region`` highest-scoring slots of every 2×2 region.

    Args:
        cls_attention: ``[B, N]`` float, ``N = H·W`` patch scores in raster order.
        grid: ``(H, W)``, both even.
        per_region: ``n`` in 1..4.
    Returns:
        ``[B, n·H·W/4]`` int64 patch indices, ascending.
    """
    b, n = cls_attention.shape
    h, w = _check_grid(grid, n)
    if not 1 <= per_region <= 4:
        raise NuwaError(f"per_region must be between 1 and 4, got {per_region}")
    device = cls_attention.device
    # [B, H/2, 2, W/2, 2] -> [B, H/2, W/2, 2, 2] -> [B, R, 4]; slot order (0,0) (0,1) (1,0) (1,1)
    slots = cls_attention.reshape(b, h // 2, 2, w // 2, 2).permute(0, 1, 3, 2, 4).reshape(b, -1, 4)
    ry = torch.arange(h // 2, device=device).repeat_interleave(w // 2)
    rx = torch.arange(w // 2, device=device).repeat(h // 2)
    base = 2 * ry * w + 2 * rx  # [R] index of each region's top-left slot
    offsets = torch.tensor([0, 1, w, w + 1], device=device)
    order = torch.sort(slots, dim=-1, descending=True, stable=True).indices[..., :per_region]
    patches = base[None, :, None] + offsets[order]  # [B, R, n]
    return patches.reshape(b, -1).sort(dim=-1).values


def alignment(cls_attention: torch.Tensor, candidates: torch.Tensor, keep: int) -> torch.Tensor:
    """Anchors: the ``keep`` highest-scoring candidates, returned in ascending index order.

    Args:
        cls_attention: ``[B, N]`` float.
        candidates: ``[B, C]`` int64, ascending, ``C >= keep``.
    Returns:
        ``[B, keep]`` int64, ascending.
    """
    if not 1 <= keep <= candidates.shape[1]:
        raise NuwaError(f"cannot keep {keep} anchors out of {candidates.shape[1]} candidates")
    scores = cls_attention.gather(1, candidates)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :keep]
    return candidates.gather(1, order).sort(dim=1).values


def aggregation_weights(
    sim: torch.Tensor,
    cls_attention: torch.Tensor,
    indices: torch.Tensor,
    grid: tuple[int, int],
    distance: float = 280.0,
    percentile: float = 0.55,
    *,
    reach: float | None = None,
    self_override: bool = True,
) -> torch.Tensor:
    """The swarm merge matrix ``W`` such that ``tokens = W @ features``.

    Args:
        sim: ``[B, N, Ds]`` similarity features (L2-normalised per patch here).
        cls_attention: ``[B, N]`` float patch scores.
        indices: ``[B, K]`` int64 anchor indices, ascending.
        grid: ``(H, W)`` with ``H·W = N``; even sides unless ``reach`` is given.
        distance: penalty reach is ``sqrt(distance)`` patches (ignored when ``reach`` is given).
        percentile: pillar threshold quantile of the anchor scores (linear interpolation).
        reach: penalty reach in patches, ``penalty = 1 − min(1, dist / reach)``; ``None`` means
            ``sqrt(distance)``. Giving it also allows odd grid sides.
        self_override: set the self entry of every row to 1.0 after normalising; ``False``
            keeps the normalised self entry.
    Returns:
        ``[B, K, N]`` float32. Pillar rows are one-hot at the anchor; collector rows are the
        normalised ``relu(cos) · penalty`` weights, with the self entry set to 1.0 when
        ``self_override``.
    """
    return swarm_weights(
        sim, indices, cls_attention.float().gather(1, indices), grid, distance, percentile,
        reach=reach, self_override=self_override,
    )


def swarm_weights(
    sim: torch.Tensor,
    indices: torch.Tensor,
    anchor_scores: torch.Tensor,
    grid: tuple[int, int],
    distance: float = 280.0,
    percentile: float = 0.55,
    *,
    reach: float | None = None,
    self_override: bool = True,
) -> torch.Tensor:
    """:func:`aggregation_weights` given the anchors' own scores ``anchor_scores [B, K]``.

    This is the computation of the exported ``nuwa::SwarmAggregate`` node (before ``@ features``).
    ``reach`` and ``self_override`` are as in :func:`aggregation_weights`.
    """
    b, n, _ = sim.shape
    h, w = _check_grid(grid, n, even=reach is None)
    if reach is None:
        reach = math.sqrt(distance)
    u = F.normalize(sim.float(), dim=-1)
    anchors = u.gather(1, indices[..., None].expand(-1, -1, u.shape[-1]))  # [B, K, Ds]
    affinity = torch.relu(anchors @ u.transpose(1, 2))  # [B, K, N] — only the K used rows
    patch = torch.arange(n, device=sim.device)
    ay, ax = (indices // w).float(), (indices % w).float()
    py, px = (patch // w).float(), (patch % w).float()
    dist = torch.sqrt((ay[..., None] - py) ** 2 + (ax[..., None] - px) ** 2)
    penalty = 1.0 - torch.clamp(dist / reach, max=1.0)
    weights = affinity * penalty

    pillar = pillar_mask(anchor_scores, percentile)
    is_self = patch[None, None, :] == indices[..., None]  # [B, K, N]
    weights = torch.where(pillar[..., None] & ~is_self, torch.zeros_like(weights), weights)
    weights = weights / (weights.sum(dim=-1, keepdim=True) + ROW_EPS)
    if not self_override:
        return weights
    return torch.where(is_self, torch.ones_like(weights), weights)


def pillar_mask(anchor_scores: torch.Tensor, percentile: float = 0.55) -> torch.Tensor:
    """Pillars: anchors whose score is at or above the ``percentile`` quantile (linear).

    Args:
        anchor_scores: ``[B, K]`` float, the anchors' CLS attention.
    Returns:
        ``[B, K]`` bool.
    """
    scores = anchor_scores.float()
    return scores >= torch.quantile(scores, percentile, dim=1, keepdim=True, interpolation="linear")


def stage_one(
    agg: torch.Tensor,
    sim: torch.Tensor,
    cls_attention: torch.Tensor,
    grid: tuple[int, int],
    keep: int,
    *,
    per_region: int | None = None,
    distance: float = 280.0,
    percentile: float = 0.55,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Separation, alignment and swarm aggregation for a batch of images.

    Args:
        agg: ``[B, N, D]`` features to merge (e.g. a CLIP feature layer, CLS removed), any float dtype.
        sim: ``[B, N, Ds]`` similarity features (mean of the last third of the tower); they are
            L2-normalised per patch here.
        cls_attention: ``[B, N]`` CLS-row attention of the feature layer, summed over heads.
        grid: ``(H, W)``, even sides, ``H·W = N``.
        keep: anchors to keep (K1), ``1 <= keep <= n·N/4``.
        per_region: slots per 2×2 region; ``None`` means :func:`default_per_region`.
    Returns:
        ``tokens [B, keep, D]`` in the dtype of ``agg`` (computed in float32) and
        ``indices [B, keep]`` int64, ascending.
    """
    if agg.shape[:2] != sim.shape[:2] or agg.shape[:2] != cls_attention.shape:
        raise NuwaError(
            f"stage_one shapes disagree: agg {tuple(agg.shape)}, sim {tuple(sim.shape)}, "
            f"cls_attention {tuple(cls_attention.shape)}"
        )
    n = agg.shape[1]
    _check_grid(grid, n)
    if not 1 <= keep <= n:
        raise NuwaError(f"stage-one keep must be between 1 and {n} patches, got {keep}")
    if per_region is None:
        per_region = default_per_region(keep, grid)
    candidates = separation(cls_attention, grid, per_region)
    indices = alignment(cls_attention, candidates, keep)
    weights = aggregation_weights(sim, cls_attention, indices, grid, distance, percentile)
    tokens = (weights @ agg.float()).to(agg.dtype)
    return tokens, indices


# ---- grids with odd sides are zero-padded to even sides for separation ---------------------------
def padded_grid(grid: tuple[int, int]) -> tuple[int, int]:
    """``(Hp, Wp) = (H + H % 2, W + W % 2)``: the grid padded to even sides (bottom / right)."""
    h, w = int(grid[0]), int(grid[1])
    if h < 1 or w < 1:
        raise NuwaError(f"the patch grid must have sides of at least 1, got {h}x{w}")
    return h + h % 2, w + w % 2


def diagonal_reach(grid: tuple[int, int], factor: float) -> float:
    """A swarm reach of ``factor·sqrt((Hp−1)² + (Wp−1)²)`` patches, on the padded sides."""
    hp, wp = padded_grid(grid)
    return factor * math.sqrt((hp - 1) ** 2 + (wp - 1) ** 2)


def real_candidates(grid: tuple[int, int], per_region: int) -> int:
    """``Σ_regions min(n, real slots of the region)`` over the 2×2 regions of the padded grid."""
    h, w = int(grid[0]), int(grid[1])
    hp, wp = padded_grid(grid)
    if not 1 <= per_region <= 4:
        raise NuwaError(f"per_region must be between 1 and 4, got {per_region}")
    return sum(
        min(per_region, min(2, h - y) * min(2, w - x)) for y in range(0, hp, 2) for x in range(0, wp, 2)
    )


def keep_fraction(grid: tuple[int, int], s1: float, per_region: int) -> int:
    """A static K1 for a fraction ``s1`` of the cells: ``min(ceil(N·s1), real candidates)``.

    Args:
        grid: ``(H, W)`` merged patch grid, any sides ≥ 1.
        s1: fraction of the ``N = H·W`` patches to keep, in ``(0, 1]`` (``ceil`` in float64).
        per_region: ``n`` in 1..4; a region of the padded grid offers ``min(n, its real slots)``.
    Returns:
        ``K1 >= 1``; :func:`padded_anchors` with this ``keep`` never picks padding.
    """
    h, w = int(grid[0]), int(grid[1])
    real = real_candidates(grid, per_region)
    if not 0.0 < s1 <= 1.0:
        raise NuwaError(f"the stage-one fraction must be in (0, 1], got {s1}")
    return min(math.ceil(h * w * float(s1)), real)


def padded_anchors(salience: torch.Tensor, grid: tuple[int, int], keep: int, per_region: int) -> torch.Tensor:
    """Separation on the padded grid (padding ranked ``-inf``) and alignment, in unpadded indices.

    Args:
        salience: ``[B, N]`` float patch scores in raster order of the ``H×W`` grid.
        grid: ``(H, W)``, any sides ≥ 1, ``H·W = N``.
        keep: anchors to keep (K1), ``1 <= keep <=`` the real candidates (see
            :func:`keep_fraction`), so that no padding slot is ever picked.
        per_region: slots per 2×2 region of the padded grid, 1..4.
    Returns:
        ``[B, keep]`` int64 unpadded raster indices ``y·W + x``, ascending.
    """
    b, n = salience.shape
    h, w = _check_grid(grid, n, even=False)
    hp, wp = padded_grid(grid)
    real = real_candidates(grid, per_region)
    if not 1 <= keep <= real:
        raise NuwaError(
            f"cannot keep {keep} anchors out of the {real} real candidates of the {h}x{w} grid "
            f"with {per_region} per region"
        )
    if not salience.is_floating_point():
        salience = salience.float()
    padded = F.pad(salience.reshape(b, h, w), (0, wp - w, 0, hp - h), value=float("-inf")).reshape(b, -1)
    candidates = separation(padded, (hp, wp), per_region)
    # keep <= real candidates and padding ranks last, so every pick is real: nothing to drop, and
    # padded → unpadded raster is increasing on real slots, so the result stays ascending.
    picked = alignment(padded, candidates, keep)
    return (picked // wp) * w + picked % wp
