"""The small interface the generation core runs on; the engine pipeline and the PyTorch reference
each implement it once (:class:`nuwa_export.runtime.pipeline.EngineStages`,
:class:`nuwa_export.reference.TorchStages`).

Tensors crossing it are torch tensors (CPU for the engines, the model's device for the reference);
KV ``past`` / ``present`` objects and ``logits`` are opaque to the core (they go back to the stage
that made them, or to the token picker).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from nuwa_export.generation.result import Clock
from nuwa_export.image import ImageConfig
from nuwa_export.prompt import Prompt
from nuwa_export.pruning import Budgets


class Stages(Protocol):
    name: str  # GenerationResult.backend
    tokenizer: Any
    image_config: ImageConfig
    budgets: Budgets
    image_token_id: int
    max_positions: int  # context window (prompt + every patch position + generated tokens)
    eos_token_ids: set[int]

    def clock(self) -> Clock:
        """A fresh per-stage clock (synchronising the device if it runs asynchronously)."""

    def check_prompt(self, prompt: Prompt) -> None:
        """Refuse token ids this model cannot embed (a :class:`NuwaError`), or do nothing."""

    def vision(self, pixel_values: np.ndarray, clock: Clock | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``[1, 3, S, S]`` float32 → ``tokens [1, K1, D]``, ``indices [1, K1]`` int64 ascending.
        A stage may lap finer sub-stages on ``clock``; the core laps ``vision`` after it."""

    def embed(self, ids: Sequence[int]) -> torch.Tensor:
        """Token ids → ``[1, T, D]`` in the LLM's dtype."""

    def empty_past(self, start: int, end: int) -> Any:
        """An empty KV group for decoder layers ``[start, end)``."""

    def past_bytes(self, past: Any) -> int:
        """Bytes a KV group holds."""

    def prefix(self, embeds: torch.Tensor, positions: torch.Tensor, vision_start: int, past: Any) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
        """Layers ``[0, L)`` → ``hidden [1, T, D]``, present KV, stage-two ``scores [1, K1]`` float32
        (head-mean attention of the last row at layer ``L-1`` over the vision tokens; a stage may
        return None on decode steps, where the core never reads them)."""

    def suffix(self, hidden: torch.Tensor, positions: torch.Tensor, past: Any) -> tuple[Any, Any]:
        """Layers ``[L, N)``, norm and lm_head → ``logits [1, V]`` of the last row, present KV."""
