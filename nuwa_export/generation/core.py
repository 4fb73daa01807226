"""Generation, written once over :class:`~nuwa_export.generation.stages.Stages`.

preprocess → vision → prefix (layers ``[0, L)``) → stage two → suffix (layers ``[L, N)``) → decode.
Two KV groups: the prefix layers keep ``b + K1 + c`` prompt entries, the suffix layers
``b + K2 + c``; every decode step runs both with their own past lengths.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from nuwa_export.generation.layout import Layout, layout_for
from nuwa_export.generation.loop import decode_loop
from nuwa_export.generation.result import Clock, GenerationResult
from nuwa_export.image import load_image, preprocess
from nuwa_export.pruning import stage_two, stage_two_rows
from nuwa_export.sampling import SamplingConfig


@dataclass
class KVGroups:
    """The two KV groups: layers ``[0, L)`` (``prefix``) and ``[L, N)`` (``suffix``)."""

    prefix: Any
    suffix: Any

    def nbytes(self, stages) -> int:
        return stages.past_bytes(self.prefix) + stages.past_bytes(self.suffix)


@dataclass
class Prefill:
    layout: Layout
    logits: Any  # [1, V] of the last prompt row
    kv: KVGroups
    split_hidden: torch.Tensor  # [1, b + K1 + c, D] after layer L-1, every row
    positions: torch.Tensor  # [1, b + K1 + c]
    stage_two_scores: torch.Tensor | None  # [1, K1]
    stage_two: torch.Tensor | None  # [1, K2] positions within K1; None unpruned


def prompt_embeds(stages, layout: Layout, tokens: torch.Tensor) -> torch.Tensor:
    """``[1, b + K1 + c, D]``: text before, the vision tokens (in the LLM's dtype), text after."""
    head, tail = stages.embed(layout.prompt.before), stages.embed(layout.prompt.after)
    return torch.cat([head, tokens.to(head.dtype), tail], dim=1)


def run_prefix(stages, layout: Layout, tokens: torch.Tensor, indices: torch.Tensor):
    """Layers ``[0, L)`` on the prompt → (hidden at the split, positions, prefix KV, scores)."""
    b = stages.budgets
    pos = layout.positions(indices)
    split, past, scores = stages.prefix(prompt_embeds(stages, layout, tokens), pos, layout.before, stages.empty_past(0, b.layer))
    return split, pos, past, scores


def select(stages, layout: Layout, scores: torch.Tensor, k1: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage two: ``kept [1, K2]`` within the K1 vision tokens and the rows that go on."""
    kept = stage_two(scores.float(), stages.budgets.k2)
    return kept, stage_two_rows(layout.before, kept, k1, layout.after)


def run_suffix(stages, hidden: torch.Tensor, positions: torch.Tensor):
    """Layers ``[L, N)`` on the rows that go on → (logits, suffix KV)."""
    b = stages.budgets
    return stages.suffix(hidden, positions, stages.empty_past(b.layer, b.num_layers))


def prefill(stages, layout: Layout, tokens: torch.Tensor, indices: torch.Tensor, clock: Clock) -> Prefill:
    """The prompt through both graphs with stage two between them (batch 1)."""
    with torch.inference_mode():
        split, pos, past1, scores = run_prefix(stages, layout, tokens, indices)
        clock.lap("prefix")
        kept = None
        hidden, pos2 = split, pos
        if stages.budgets.prune:
            kept, rows = select(stages, layout, scores, tokens.shape[1])
            hidden, pos2 = split[:, rows], pos[:, rows]
        clock.lap("stage_two")
        logits, past2 = run_suffix(stages, hidden, pos2)
        clock.lap("suffix")
    return Prefill(layout, logits, KVGroups(past1, past2), split, pos, scores, kept)


def step(stages, layout: Layout, kv: KVGroups, token: int, i: int, device=None):
    """Feed back generated token ``i`` through both KV groups → the next logits."""
    with torch.inference_mode():
        e = stages.embed([token])
        p = torch.tensor([[layout.decode_position(i)]], device=device)
        h, kv.prefix, _ = stages.prefix(e, p, layout.before, kv.prefix)
        logits, kv.suffix = stages.suffix(h, p, kv.suffix)
    return logits


def replay(stages, layout: Layout, kv: KVGroups, tokens: list[int], device=None) -> list:
    """Teacher forcing: feed ``tokens`` back in order (no picking) → the logits after each."""
    return [step(stages, layout, kv, token, i, device) for i, token in enumerate(tokens)]


def generate(
    stages,
    image,
    prompt: str,
    sampling: SamplingConfig | None = None,
    on_token: Callable[[int], None] | None = None,
    trace: dict | None = None,
) -> GenerationResult:
    """Answer ``prompt`` about ``image`` (path or PIL image).

    ``trace`` collects intermediates in the stages' own types: ``vision_tokens``,
    ``patch_indices``, ``split_hidden``, ``stage_two_scores``, ``stage_two``, ``first_logits`` and
    ``logits`` (the logits before each generated token).
    """
    sampling = sampling or SamplingConfig()
    layout = layout_for(stages, prompt, sampling.max_new_tokens)
    clock = stages.clock()
    if not hasattr(image, "size"):
        image = load_image(image)
    pixels = preprocess(image, stages.image_config)[None]
    clock.lap("preprocess")
    tokens, indices = stages.vision(pixels, clock)
    clock.lap("vision")
    pre = prefill(stages, layout, tokens, indices, clock)
    clock.first_token()
    seen = [pre.logits]
    if trace is not None:
        trace.update(
            vision_tokens=tokens, patch_indices=indices, split_hidden=pre.split_hidden,
            stage_two_scores=pre.stage_two_scores, stage_two=pre.stage_two, first_logits=pre.logits, logits=seen,
        )

    def next_logits(token: int, i: int):
        out = step(stages, layout, pre.kv, token, i, indices.device)
        if trace is not None:
            seen.append(out)
        return out

    generated = decode_loop(pre.logits, next_logits, sampling, stages.eos_token_ids, on_token)
    clock.finish(len(generated))
    s1 = indices[0].tolist()
    return GenerationResult(
        prompt=layout.prompt,
        generated_ids=generated,
        text=stages.tokenizer.decode(generated, skip_special_tokens=True).strip(),
        stage_one_indices=s1,
        stage_two_indices=None if pre.stage_two is None else [s1[i] for i in pre.stage_two[0].tolist()],
        budgets=stages.budgets,
        timings_ms=clock.ms,
        kv_cache_bytes=pre.kv.nbytes(stages),
        backend=stages.name,
    )
