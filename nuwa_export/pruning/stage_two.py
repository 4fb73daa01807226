"""Stage two of Nüwa, inside the LLM (docs/algorithm.md §4)."""

from __future__ import annotations

import torch

from nuwa_export.errors import NuwaError


def stage_two(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Keep the ``keep`` vision tokens the last prompt token attends to most.

    Args:
        scores: ``[B, K1]`` float, head-mean attention of the last prompt token over the K1
            vision tokens at layer ``L-1``.
        keep: K2, ``1 <= keep <= K1``.
    Returns:
        ``[B, keep]`` int64 positions *within the K1 vision tokens*, ascending (sequence order).
        Ties: higher score first, then lower position.
    """
    if not 1 <= keep <= scores.shape[1]:
        raise NuwaError(f"stage-two keep must be between 1 and {scores.shape[1]}, got {keep}")
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :keep]
    return order.sort(dim=1).values


def stage_two_rows(before: int, kept: torch.Tensor, k1: int, after: int) -> torch.Tensor:
    """Rows of ``[text before][K1 vision tokens][text after]`` that go on to layers ``[L, N)``.

    Args:
        before: ``b``, tokens before the image.
        kept: ``[1, K2]`` (or ``[K2]``) positions within the K1 vision tokens, from :func:`stage_two`.
        k1: vision tokens in the sequence.
        after: ``c``, tokens after the image.
    Returns:
        int64 ``[b + K2 + c]`` on ``kept``'s device: every text row and the kept vision rows, in order.
    """
    kept = kept.reshape(-1).long()
    device = kept.device
    return torch.cat([torch.arange(before, device=device), before + kept, before + k1 + torch.arange(after, device=device)])
