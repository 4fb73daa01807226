"""How one image becomes LLM tokens: its token grids, what each keeps, and their positions.

A model family plans every image (``Family.plan``): one grid of a size fixed by the export, or,
for a family whose images become several grids of different shapes (a base image and a canvas of
crops), all of them. The generation core lays out each request from its
image's plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TokenGrid:
    """``rows × cols`` cells in raster order, of which stage one keeps ``keep`` (all of them
    without pruning)."""

    rows: int
    cols: int
    keep: int

    @property
    def cells(self) -> int:
        return self.rows * self.cols


@dataclass(frozen=True)
class ImagePlan:
    """An image's token grids and its position scheme (:mod:`nuwa_export.pruning.positions`)."""

    grids: tuple[TokenGrid, ...]
    positions: Any

    @property
    def tokens(self) -> int:
        """Vision tokens the image puts into the LLM's sequence (K1 when pruning)."""
        return sum(g.keep for g in self.grids)

    @property
    def patches(self) -> int:
        """Cells of every grid: the tokens the image would have unpruned."""
        return sum(g.cells for g in self.grids)

    @property
    def span(self) -> int:
        """Positions the image takes in the sequence, whatever is pruned."""
        return self.positions.image_span
