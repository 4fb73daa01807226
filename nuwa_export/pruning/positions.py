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
        full_patches: patches in the full image (576 for LLaVA-1.5).
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
