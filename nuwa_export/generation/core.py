"""Generation, written once over :class:`~nuwa_export.generation.stages.Stages`.

preprocess → vision → prefix (layers ``[0, L)``) → stage two → suffix (layers ``[L, N)``) → decode,
for a batch of requests side by side (one request is a batch of one). Two KV groups: the prefix
layers keep ``pad + b + K1 + c`` prompt entries per row, the suffix layers ``pad + b + K2 + c``;
every decode step runs both with their own past lengths.

Tensors stay on the stages' device from the vision output to the last token; what crosses to
the host is token ids and positions (in), last-position logits and stage-two scores' choices
(out), counted in ``stages.transfers``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from nuwa_export.generation.layout import (
    Batch,
    layout_for,
    step_positions,
    take_positions,
)
from nuwa_export.generation.result import Clock
from nuwa_export.image import load_image, preprocess
from nuwa_export.pruning import stage_two
from nuwa_export.sampling import SamplingConfig


@dataclass
class Request:
    """One question about one image (a path or PIL image), with its own sampling and stream."""

    image: Any
    prompt: str
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    on_token: Callable[[int], None] | None = None


@dataclass
class KVGroups:
    """The two KV groups: layers ``[0, L)`` (``prefix``) and ``[L, N)`` (``suffix``)."""

    prefix: Any
    suffix: Any

    def take(self, stages, rows: torch.Tensor) -> KVGroups:
        return KVGroups(stages.take_rows(self.prefix, rows), stages.take_rows(self.suffix, rows))


@dataclass
class Prefill:
    batch: Batch
    logits: Any  # [B, V] of the last prompt row
    kv: KVGroups
    split_hidden: torch.Tensor  # [B, pad + b + K1 + c, D] after layer L-1, every row
    positions: torch.Tensor  # [B, pad + b + K1 + c]
    stage_two_scores: torch.Tensor | None  # [B, K1]
    stage_two: torch.Tensor | None  # [B, K2] positions within K1; None unpruned
    vision_start: torch.Tensor  # [B] int64 on the stages' device
    pad: torch.Tensor  # [B] int64 on the stages' device


def prompt_embeds(stages, batch: Batch, tokens: torch.Tensor) -> torch.Tensor:
    """``[B, pad + b + K1 + c, D]``: padding (zeros), text before, the vision tokens (in the LLM's
    dtype), text after — the text embedded on the stages' device from its token ids."""
    k = tokens.shape[1]
    embeds = stages.embed(stages.to_device([batch.text_ids(k)])[0])
    for r, (pad, start) in enumerate(zip(batch.pads, batch.vision_starts)):
        embeds[r, :pad] = 0
        embeds[r, start : start + k] = tokens[r].to(embeds.dtype)
    return embeds


@torch.inference_mode()
def run_prefix(stages, batch: Batch, tokens: torch.Tensor, indices: torch.Tensor, extra: int = 0):
    """Layers ``[0, L)`` on the prompts → (hidden at the split, positions, prefix KV, scores,
    vision_start, pad). ``extra``: decode entries the KV group will take after the prompt (its
    capacity, where the stages update KV in place)."""
    b = stages.budgets
    pos = batch.positions(indices)
    vision_start, pad = stages.to_device([batch.vision_starts, batch.pads])
    past = stages.empty_past(0, b.layer, batch.size, batch.text + tokens.shape[1] + extra)
    split, past, scores = stages.prefix(prompt_embeds(stages, batch, tokens), pos, vision_start, pad, past)
    return split, pos, past, scores, vision_start, pad


def select(stages, batch: Batch, scores: torch.Tensor, k1: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage two: ``kept [B, K2]`` within the K1 vision tokens and ``[B, T2]`` rows that go on."""
    kept = stage_two(scores.float(), stages.budgets.k2)
    return kept, batch.rows_after_stage_two(kept, k1)


def suffix_input(stages, batch: Batch, split: torch.Tensor, pos: torch.Tensor, scores, k1: int):
    """Stage two on the prefix's output → (``kept [B, K2]`` or None unpruned, the hidden states
    and positions of the rows that go on to layers ``[L, N)``)."""
    if not stages.budgets.prune:
        return None, split, pos
    kept, rows = select(stages, batch, scores, k1)
    return kept, split.gather(1, rows[..., None].expand(-1, -1, split.shape[2])), take_positions(pos, rows)


@torch.inference_mode()
def run_suffix(stages, hidden: torch.Tensor, positions: torch.Tensor, pad: torch.Tensor, size: int, extra: int = 0):
    """Layers ``[L, N)`` on the rows that go on → (logits, suffix KV)."""
    b = stages.budgets
    return stages.suffix(hidden, positions, pad, stages.empty_past(b.layer, b.num_layers, size, hidden.shape[1] + extra))


def prefill(stages, batch: Batch, tokens: torch.Tensor, indices: torch.Tensor, clock: Clock, extra: int = 0) -> Prefill:
    """The prompts through both graphs with stage two between them (``extra``: decode steps to
    come, see :func:`run_prefix`)."""
    with torch.inference_mode():
        split, pos, past1, scores, vision_start, pad = run_prefix(stages, batch, tokens, indices, extra)
        clock.lap("prefix")
        kept, hidden, pos2 = suffix_input(stages, batch, split, pos, scores, tokens.shape[1])
        clock.lap("stage_two")
        logits, past2 = run_suffix(stages, hidden, pos2, pad, batch.size, extra)
        clock.lap("suffix")
    return Prefill(batch, logits, KVGroups(past1, past2), split, pos, scores, kept, vision_start, pad)


@dataclass
class Live:
    """What a decode step needs about the rows still generating."""

    batch: Batch
    kv: KVGroups
    vision_start: torch.Tensor
    pad: torch.Tensor

    def take(self, stages, keep: list[int]) -> Live:
        """Only rows ``keep``: finished rows stop costing compute (their KV rows are dropped)."""
        rows = stages.to_device([keep])[0]
        return Live(self.batch.take(keep), self.kv.take(stages, rows), self.vision_start[rows], self.pad[rows])


def step(stages, live: Live, tokens: Sequence[int], i: int | Sequence[int]):
    """Feed back each live row's generated token (its ``i``-th, 0-based: one number for every
    row, or one per row) through both KV groups → ``[B, V]``."""
    with torch.inference_mode():
        ids, pos = stages.to_device([[[t] for t in tokens], [[p] for p in live.batch.decode_positions(i)]])
        pos = step_positions(live.batch, pos)
        e = stages.embed(ids)
        h, live.kv.prefix, _ = stages.prefix(e, pos, live.vision_start, live.pad, live.kv.prefix)
        logits, live.kv.suffix = stages.suffix(h, pos, live.pad, live.kv.suffix)
    return logits


def replay(stages, live: Live, tokens: list[int]) -> list:
    """Teacher forcing (batch of one): feed ``tokens`` back in order (no picking) → the logits
    after each."""
    return [step(stages, live, [token], i) for i, token in enumerate(tokens)]


def layouts(stages, requests: Sequence[Request]) -> Batch:
    """Every request's prompt, tokenised around its image's plan and checked, before any work starts."""
    return Batch(tuple(layout_for(stages, r.prompt, r.sampling.max_new_tokens, r.image) for r in requests))


def vision(stages, requests: Sequence[Request], clock: Clock) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image through the vision graph (one at a time: the tower is compute-bound, and each
    image meets stage one exactly as when it runs alone) → ``tokens [B, K1, D]``, ``indices [B, K1]``."""
    tokens, indices = [], []
    for r in requests:
        image = r.image if hasattr(r.image, "size") else load_image(r.image)
        pixels = preprocess(image, stages.image_config)[None]
        clock.lap("preprocess")
        t, i = stages.vision(pixels, clock)
        clock.lap("vision")
        tokens.append(t)
        indices.append(i)
    return torch.cat(tokens), torch.cat(indices)
