"""Prompt layout: ``[text before][kept vision tokens][text after]`` and where each sits.

Spatial positions (docs/algorithm.md §3): a kept patch ``p`` sits at ``b + p``; text after the
image, and every generated token, sits where it would with all patches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nuwa_export.prompt import Prompt, build_prompt, check_context
from nuwa_export.pruning import decode_position, position_ids


@dataclass(frozen=True)
class Layout:
    prompt: Prompt
    num_patches: int  # patches in the full image

    @property
    def before(self) -> int:
        return len(self.prompt.before)

    @property
    def after(self) -> int:
        return len(self.prompt.after)

    def positions(self, indices: torch.Tensor) -> torch.Tensor:
        """``[1, b + K + c]`` int64 positions of the prompt with vision tokens at patch ``indices``."""
        return position_ids(self.before, indices, self.after, self.num_patches)

    def decode_position(self, step: int) -> int:
        """Position of the token fed back at decode step ``step`` (0-based)."""
        return decode_position(self.before, self.after, self.num_patches, step)


def layout_for(stages, text: str, max_new_tokens: int) -> Layout:
    """Tokenise ``text`` around the image and check it fits the context (refused with NuwaError)."""
    prompt = build_prompt(stages.tokenizer, text, stages.image_token_id)
    stages.check_prompt(prompt)
    check_context(prompt, stages.budgets.num_patches, max_new_tokens, stages.max_positions)
    return Layout(prompt, stages.budgets.num_patches)
