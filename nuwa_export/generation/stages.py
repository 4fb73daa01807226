"""The small interface the generation core runs on; the engine pipeline and the PyTorch reference
each implement it once (:class:`nuwa_export.runtime.pipeline.EngineStages`,
:class:`nuwa_export.runtime.reference.TorchStages`).

Tensors crossing it are torch tensors on the stages' ``device`` (the engine's: CPU, or a CUDA
GPU); host data enters through :meth:`to_device` and leaves through :meth:`to_host`, which count
the bytes in ``transfers``. KV ``past`` / ``present`` objects are opaque to the core (they go
back to the stage that made them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from nuwa_export.generation.result import Clock, Transfers
from nuwa_export.image import ImageConfig
from nuwa_export.prompt import Prompt
from nuwa_export.pruning import Budgets, ImagePlan


class Stages(Protocol):
    name: str  # GenerationResult.backend
    tokenizer: Any
    image_config: ImageConfig
    budgets: Budgets
    image_token_id: int
    max_positions: int  # context window (prompt + every patch position + generated tokens)
    eos_token_ids: set[int]
    device: torch.device
    transfers: Transfers
    family: Any  # the model family (nuwa_export.models.families.Family): prompt template, grounding

    def clock(self) -> Clock:
        """A fresh per-stage clock (synchronising the device if it runs asynchronously)."""

    def plan_for(self, image) -> ImagePlan:
        """How ``image`` (a path, a PIL image, or None for the export's own) becomes LLM tokens:
        its family's plan (token grids, tokens kept, positions)."""

    def check_prompt(self, prompt: Prompt) -> None:
        """Refuse token ids this model cannot embed (a :class:`NuwaError`), or do nothing."""

    def to_device(self, arrays: Sequence) -> list[torch.Tensor]:
        """Nested lists of ints → int64 tensors on ``device`` (bytes counted as host → device)."""

    def to_host(self, t: torch.Tensor) -> torch.Tensor:
        """A device tensor → a CPU tensor of the same dtype (bytes counted as device → host)."""

    def vision(self, pixel_values: np.ndarray, clock: Clock | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``[1, 3, S, S]`` float32 → ``tokens [1, K1, D]``, ``indices [1, K1]`` int64 ascending.
        A stage may lap finer sub-stages on ``clock``; the core laps ``vision`` after it."""

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` int64 token ids on ``device`` → ``[B, T, D]`` in the LLM's dtype."""

    def empty_past(self, start: int, end: int, batch: int, capacity: int = 0) -> Any:
        """An empty KV group of ``batch`` rows for decoder layers ``[start, end)``; ``capacity``:
        entries per row it will hold at most (stages that update KV in place reserve them)."""

    def past_bytes(self, past: Any) -> int:
        """Bytes a KV group holds."""

    def take_rows(self, past: Any, rows: torch.Tensor) -> Any:
        """The KV group of batch rows ``rows`` (``[R]`` int64 on ``device``) only."""

    def past_length(self, past: Any) -> int:
        """Entries per row a KV group holds (left padding included)."""

    def join_past(self, pasts: list, shifts: list[int], room: int) -> Any:
        """KV groups side by side (batch rows in order), each padded on the left by ``shifts[i]``
        entries (masked as padding) so that all have one length; ``room``: entries to come."""

    def prefix(self, embeds, positions, vision_start, pad, past) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
        """Layers ``[0, L)`` → ``hidden [B, T, D]``, present KV, stage-two ``scores [B, K1]`` float32
        (head-mean attention of the last row at layer ``L-1`` over each row's vision tokens from
        ``vision_start [B]``); ``pad [B]``: left padding of each row's cache. A stage may return
        None scores on decode steps, where the core never reads them."""

    def suffix(self, hidden, positions, pad, past) -> tuple[torch.Tensor, Any]:
        """Layers ``[L, N)``, norm and lm_head → ``logits [B, V]`` of the last row, present KV."""
