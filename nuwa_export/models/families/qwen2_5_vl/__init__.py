"""Qwen2.5-VL (Qwen2 LLM with M-RoPE, a window-attention tower with a 2×2 patch merger) on the
family seam. Differences from LLaVA-1.5 are listed in docs/algorithm.md §10."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from nuwa_export.contract import Contract, Numbers, standard
from nuwa_export.models.families.base import Family
from nuwa_export.models.families.qwen2_5_vl.grounding import QwenGrounding
from nuwa_export.prompt import Prompt, build_chat_prompt

if TYPE_CHECKING:  # importing a family is cheap: pruning (torch) loads when a method runs
    from nuwa_export.pruning import BudgetRequest, Budgets, ImagePlan
    from nuwa_export.pruning.spec import StageOneSpec

IMAGE_TOKEN = "<|image_pad|>"


class Qwen2_5_VL(Family):
    """The image is padded to a square with the mean colour and resized to the fixed ``S×S`` of
    ``--image-size`` (aspect kept; Qwen's own processor picks a size per image, which a static
    graph cannot), with the checkpoint's mean, std and resampling."""

    name = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    aliases = {"qwen2.5-vl-3b": "Qwen/Qwen2.5-VL-3B-Instruct", "qwen2.5-vl-7b": "Qwen/Qwen2.5-VL-7B-Instruct"}
    demos = ("demo-qwen2.5-vl",)
    grounding = QwenGrounding()

    def check_config(self, config) -> None:
        from nuwa_export.models.families.qwen2_5_vl.parts import check_config

        check_config(config)

    def image_size(self, config, requested: int | None) -> int:
        """``--image-size`` (a multiple of 28; default 448): the tower takes any size, the graph one."""
        from nuwa_export.models.families.qwen2_5_vl.parts import (
            DEFAULT_IMAGE_SIZE,
            check_image_size,
        )

        size = DEFAULT_IMAGE_SIZE if requested is None else requested
        check_image_size(config, size)
        return size

    def grid(self, config, image_size: int) -> tuple[int, int]:
        from nuwa_export.models.families.qwen2_5_vl.parts import grid

        return grid(config, image_size)

    def model_class(self) -> type:
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration

    def parts(self, model, image_size: int):
        from nuwa_export.models.families.qwen2_5_vl.parts import QwenParts

        return QwenParts(model, image_size)

    def set_vision_dtype(self, model, dtype) -> None:
        model.model.visual.to(dtype)

    def build_demo(self, name: str) -> Path:
        from nuwa_export.models.families.qwen2_5_vl import demo

        return demo.ensure_built()

    def plan(self, grid: tuple[int, int], budgets: Budgets) -> ImagePlan:
        """One merged grid; M-RoPE positions from the unpruned numbering (the image spans max(H, W))."""
        from nuwa_export.pruning import ImagePlan, MRopePositions, TokenGrid

        return ImagePlan((TokenGrid(grid[0], grid[1], budgets.k1),), MRopePositions(grid))

    def resolve_budgets(self, grid: tuple[int, int], num_layers: int, request: BudgetRequest) -> Budgets:
        from nuwa_export.models.families.qwen2_5_vl import budgets as schedule

        return schedule.resolve_budgets(grid, num_layers, request)

    def stage_one(self, budgets: Budgets, grid: tuple[int, int], request: BudgetRequest) -> StageOneSpec:
        from nuwa_export.models.families.qwen2_5_vl import budgets as schedule

        return schedule.stage_one_spec(budgets, grid, request)

    def build_prompt(self, tokenizer, text: str, image_token_id: int) -> Prompt:
        """The tokenizer's own chat template."""
        return build_chat_prompt(tokenizer, text, image_token_id, IMAGE_TOKEN)

    def contract(self, numbers: Numbers) -> Contract:
        """The standard graphs, with M-RoPE ``position_ids [3, batch, seq]``."""
        return standard(numbers, position_rows=3)


FAMILY = Qwen2_5_VL()
