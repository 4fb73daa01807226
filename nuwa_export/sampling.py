"""Choosing the next token: greedy, or temperature + top-p sampling with a seeded generator."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nuwa_export.errors import NuwaError


@dataclass(frozen=True)
class SamplingConfig:
    """``temperature == 0`` means greedy (argmax, first index on ties, as HF ``generate``)."""

    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop_at_eos: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise NuwaError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise NuwaError(f"--temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:  # also refuses nan
            raise NuwaError(f"--top-p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.seed < 2**64:
            raise NuwaError(f"--seed must be between 0 and 2**64 - 1, got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class TokenPicker:
    """Stateful picker: one per generation, so a seed reproduces the same sample."""

    def __init__(self, cfg: SamplingConfig) -> None:
        self.cfg = cfg
        self.generator = torch.Generator().manual_seed(cfg.seed)

    def __call__(self, logits: torch.Tensor) -> int:
        """``logits [V]`` float (torch or NumPy) → token id."""
        logits = torch.as_tensor(logits).detach().float().cpu()
        if not bool(torch.isfinite(logits).all()):
            raise NuwaError(
                "the model produced non-finite logits (nan or inf); its weights or the export are broken "
                "(nuwa-verify compares an export with the reference)"
            )
        if self.cfg.greedy:
            return int(torch.argmax(logits))
        # shifted so the largest is 0 before dividing: a tiny temperature gives -inf for the others
        # (probability 0), never inf - inf = nan; this is greedy in the limit, as it should be
        scaled = (logits.double() - logits.max().double()) / self.cfg.temperature
        probs = torch.softmax(scaled, dim=-1)
        if self.cfg.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True, stable=True)
            cumulative = sorted_probs.cumsum(0)
            drop = (cumulative - sorted_probs) >= self.cfg.top_p  # mass before this token already enough
            drop[0] = False
            sorted_probs[drop] = 0.0
            probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        return int(torch.multinomial(probs / probs.sum(), 1, generator=self.generator))
