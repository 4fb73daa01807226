"""Prompt layout: ``[text before][kept vision tokens][text after]`` and where each sits, per
request (:class:`Layout`) and for a left-padded batch of requests (:class:`Batch`).

Spatial positions (docs/algorithm.md §3): a kept patch ``p`` sits at ``b + p``; text after the
image, and every generated token, sits where it would with all patches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nuwa_export.prompt import Prompt, check_context
from nuwa_export.pruning import ImagePlan, stage_two_rows


@dataclass(frozen=True)
class Layout:
    """One request's prompt and its image's plan (token grids and position scheme:
    ``pruning.positions.RopePositions`` or ``MRopePositions``)."""

    prompt: Prompt
    plan: ImagePlan

    @property
    def scheme(self) -> Any:
        return self.plan.positions

    @property
    def before(self) -> int:
        return len(self.prompt.before)

    @property
    def after(self) -> int:
        return len(self.prompt.after)

    def positions(self, indices: torch.Tensor) -> torch.Tensor:
        """Positions of the prompt with vision tokens at patch ``indices [1, K]``: int64
        ``[1, b + K + c]`` (1-D) or ``[3, 1, b + K + c]`` (M-RoPE)."""
        return self.scheme.prompt(self.before, indices, self.after)

    def decode_position(self, step: int) -> int:
        """Position of the token fed back at decode step ``step`` (0-based; every M-RoPE row)."""
        return self.scheme.decode(self.before, self.after, step)


@dataclass(frozen=True)
class Batch:
    """Requests side by side, left-padded to one length (docs/architecture.md, "Batches").

    Every row's cache is ``[pad][text before][vision tokens][text after]``; as the budgets fix K1
    and K2, a row needs the same padding ``pad = max(b + c) - (b + c)`` in both KV groups, and
    every row's last prompt entry is the last column, so one decode step appends one entry to
    every row. Padding entries are masked from every real query (``pad_lengths``). ``pads`` is
    computed from ``rows`` unless given (rows taken from a batch keep the padding their caches have).
    """

    rows: tuple[Layout, ...]
    pads: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.pads:
            text = max(r.before + r.after for r in self.rows)
            object.__setattr__(self, "pads", tuple(text - r.before - r.after for r in self.rows))

    @property
    def size(self) -> int:
        return len(self.rows)

    @property
    def text(self) -> int:
        """Text entries (padding included) of every row: the widest ``b + c``."""
        return self.pads[0] + self.rows[0].before + self.rows[0].after

    @property
    def vision_starts(self) -> list[int]:
        """Per row, the cache index of its first vision token."""
        return [p + r.before for p, r in zip(self.pads, self.rows)]

    def text_ids(self, k: int) -> list[list[int]]:
        """``[B, text + k]`` token ids with ``k`` vision slots; padding and vision slots hold id 0
        (their embeddings are replaced or masked)."""
        return [[0] * p + list(r.prompt.before) + [0] * k + list(r.prompt.after) for p, r in zip(self.pads, self.rows)]

    @property
    def position_rows(self) -> int:
        """1 (positions ``[B, T]``) or 3 (M-RoPE, ``[3, B, T]``)."""
        return self.rows[0].scheme.rows

    def positions(self, indices: torch.Tensor) -> torch.Tensor:
        """``[B, text + K]`` (or ``[3, B, text + K]``) int64 on ``indices``' device; padding
        entries sit at 0."""
        out = []
        for r, (p, row) in enumerate(zip(self.pads, self.rows)):
            pos = row.positions(indices[r : r + 1])
            out.append(torch.cat([pos.new_zeros((*pos.shape[:-1], p)), pos], dim=-1))
        return torch.cat(out, dim=-2)

    def rows_after_stage_two(self, kept: torch.Tensor, k1: int) -> torch.Tensor:
        """``[B, text + K2]`` cache rows that go on to layers ``[L, N)``: each row's padding, its
        text and its kept vision rows (``pruning.stage_two_rows``), in order."""
        out = []
        for r, (p, row) in enumerate(zip(self.pads, self.rows)):
            go_on = p + stage_two_rows(row.before, kept[r], k1, row.after)
            out.append(torch.cat([torch.arange(p, device=kept.device), go_on]))
        return torch.stack(out)

    def decode_positions(self, step: int | Sequence[int]) -> list[int]:
        """Each row's position for its decode step ``step`` (one for every row, or one per row)."""
        steps = [step] * self.size if isinstance(step, int) else step
        return [row.decode_position(s) for row, s in zip(self.rows, steps)]

    def take(self, keep: list[int]) -> Batch:
        """The rows ``keep`` (in order), with the padding they had (their caches keep it)."""
        return Batch(tuple(self.rows[i] for i in keep), tuple(self.pads[i] for i in keep))


def layout_for(stages, text: str, max_new_tokens: int, image=None) -> Layout:
    """Tokenise ``text`` around ``image`` (its plan: :meth:`Stages.plan_for`) and check it fits
    the context (refused with NuwaError)."""
    prompt = stages.family.build_prompt(stages.tokenizer, text, stages.image_token_id)
    stages.check_prompt(prompt)
    plan = stages.plan_for(image)
    check_context(prompt, plan.span, max_new_tokens, stages.max_positions)
    return Layout(prompt, plan)


def take_positions(positions: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``positions [B, T]`` or ``[3, B, T]`` at the cache rows ``rows [B, T2]`` (per batch row)."""
    if positions.dim() == 3:
        return positions.gather(2, rows[None].expand(positions.shape[0], -1, -1))
    return positions.gather(1, rows)


def step_positions(batch: Batch, pos: torch.Tensor) -> torch.Tensor:
    """``[B, 1]`` decode positions as the graphs take them (``[3, B, 1]`` for M-RoPE)."""
    rows = batch.position_rows
    return pos if rows == 1 else pos[None].expand(rows, -1, -1).contiguous()
