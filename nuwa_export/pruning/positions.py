"""Spatial positions (docs/algorithm.md §3): kept tokens keep the position they had with every patch."""

from __future__ import annotations

import torch


def position_ids(before: int, patch_indices: torch.Tensor, after: int, full_patches: int) -> torch.Tensor:
    """Positions of ``[text before][vision tokens][text after]``.

    Args:
        before: ``b``, tokens before the image (BOS included).
        patch_indices: ``[B, K]`` or ``[K]`` int64 grid indices of the kept vision tokens,
            ascending.
        after: ``c``, tokens after the image.
        full_patches: patches in the full image (e.g. 576 for a 24×24 grid).
    Returns:
        int64 ``[B, b + K + c]`` (or ``[b + K + c]`` for 1-D ``patch_indices``):
        ``0..b-1``, then ``b + p`` per patch ``p``, then ``b + full_patches + j``.
    """
    squeeze = patch_indices.dim() == 1
    idx = patch_indices.long()
    if squeeze:
        idx = idx[None]
    device = idx.device
    head = torch.arange(before, device=device).expand(idx.shape[0], -1)
    tail = (before + full_patches + torch.arange(after, device=device)).expand(idx.shape[0], -1)
    pos = torch.cat([head, before + idx, tail], dim=1)
    return pos[0] if squeeze else pos


def decode_position(before: int, after: int, full_patches: int, step: int) -> int:
    """Position of generated token ``step`` (0-based): ``b + full_patches + c + step``."""
    return before + full_patches + after + step


def mrope_position_ids(before: int, patch_indices: torch.Tensor, after: int, grid: tuple[int, int]) -> torch.Tensor:
    """M-RoPE ``(t, h, w)`` positions of ``[text before][vision tokens][text after]``.

    The numbering of the unpruned sequence (transformers' ``get_rope_index`` for one still image):
    text token ``i`` before the image is ``(i, i, i)``; the image cell ``(y, x)`` is
    ``(b, b + y, b + x)``; text token ``j`` after the image is ``b + max(H, W) + j`` in all three.
    Kept tokens keep theirs.

    Args:
        patch_indices: ``[B, K]`` int64 raster indices of the kept cells of the ``H×W`` grid.
    Returns:
        int64 ``[3, B, b + K + c]``.
    """
    idx = patch_indices.long()
    if idx.dim() == 1:
        idx = idx[None]
    device, bsz = idx.device, idx.shape[0]
    h, w = grid
    head = torch.arange(before, device=device).expand(3, bsz, -1)
    vision = torch.stack([torch.full_like(idx, before), before + idx // w, before + idx % w])
    tail = (before + max(h, w) + torch.arange(after, device=device)).expand(3, bsz, -1)
    return torch.cat([head, vision, tail], dim=2)


class RopePositions:
    """1-D positions: ``[B, T]``; the image spans ``num_patches`` positions."""

    rows = 1

    def __init__(self, num_patches: int) -> None:
        self.num_patches = num_patches
        self.image_span = num_patches

    def prompt(self, before: int, indices: torch.Tensor, after: int) -> torch.Tensor:
        return position_ids(before, indices, after, self.num_patches)

    def decode(self, before: int, after: int, step: int) -> int:
        return decode_position(before, after, self.num_patches, step)


class MRopePositions:
    """M-RoPE positions: ``[3, B, T]``; the image spans ``max(H, W)`` positions."""

    rows = 3

    def __init__(self, grid: tuple[int, int]) -> None:
        self.grid = (int(grid[0]), int(grid[1]))
        self.num_patches = self.grid[0] * self.grid[1]
        self.image_span = max(self.grid)

    def prompt(self, before: int, indices: torch.Tensor, after: int) -> torch.Tensor:
        return mrope_position_ids(before, indices, after, self.grid)

    def decode(self, before: int, after: int, step: int) -> int:
        """All three rows of a generated token are this one number."""
        return before + self.image_span + after + step
