"""LLaVA-1.5 (Llama LLM, CLIP tower with a class token, one square grid) on the family seam."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from nuwa_export.contract import Contract, Numbers, standard
from nuwa_export.errors import NuwaError
from nuwa_export.models.families.base import Family
from nuwa_export.models.families.llava.grounding import LlavaGrounding
from nuwa_export.prompt import Prompt, check_question, split_at_image

if TYPE_CHECKING:  # importing a family is cheap: pruning (torch) loads when a method runs
    from nuwa_export.pruning import BudgetRequest, Budgets, ImagePlan
    from nuwa_export.pruning.spec import StageOneSpec

IMAGE_TOKEN = "<image>"
#: LLaVA-1.5's prompt (the llava-hf chat template renders the same string).
TEMPLATE = "USER: <image>\n{prompt} ASSISTANT:"


def build_prompt(tokenizer, text: str, image_token_id: int) -> Prompt:
    """Tokenize ``text`` in the LLaVA-1.5 template (BOS included) and find the image slot."""
    check_question(tokenizer, text, image_token_id, IMAGE_TOKEN)
    return split_at_image(list(tokenizer(TEMPLATE.format(prompt=text)).input_ids), image_token_id, "the tokenized prompt")


class Llava(Family):
    name = "llava"
    model_types = ("llava",)
    aliases = {"llava-1.5-7b": "llava-hf/llava-1.5-7b-hf", "llava-1.5-13b": "llava-hf/llava-1.5-13b-hf"}
    demos = ("demo",)
    grounding = LlavaGrounding()

    def check_config(self, config) -> None:
        from nuwa_export.models.families.llava.parts import check_config

        check_config(config)

    def image_size(self, config, requested: int | None) -> int:
        size = config.vision_config.image_size
        if requested is not None and requested != size:
            raise NuwaError(f"--image-size {requested}: this LLaVA tower takes {size} px images only")
        return size

    def grid(self, config, image_size: int) -> tuple[int, int]:
        vc = config.vision_config
        return (vc.image_size // vc.patch_size, vc.image_size // vc.patch_size)

    def model_class(self) -> type:
        from transformers import LlavaForConditionalGeneration

        return LlavaForConditionalGeneration

    def parts(self, model, image_size: int):
        from nuwa_export.models.families.llava.parts import LlavaParts

        return LlavaParts(model)

    def set_vision_dtype(self, model, dtype) -> None:
        model.model.vision_tower.to(dtype)
        model.model.multi_modal_projector.to(dtype)

    def build_demo(self, name: str) -> Path:
        from nuwa_export.models.families.llava import demo

        return demo.ensure_built()

    def plan(self, grid: tuple[int, int], budgets: Budgets) -> ImagePlan:
        """One grid (24×24 for LLaVA-1.5-7B); 1-D positions, the image spanning all its patches."""
        from nuwa_export.pruning import ImagePlan, RopePositions, TokenGrid

        return ImagePlan((TokenGrid(grid[0], grid[1], budgets.k1),), RopePositions(grid[0] * grid[1]))

    def resolve_budgets(self, grid: tuple[int, int], num_layers: int, request: BudgetRequest) -> Budgets:
        """The paper's rule (K1 = 7·keep/4, K2 = keep/4, L = N/2); ``--keep-ratio R`` is keep =
        R·patches. ``per_region`` is checked with the stage-one settings (:meth:`stage_one`)."""
        from nuwa_export.pruning import resolve_budgets

        n = grid[0] * grid[1]
        keep, ratio = request.keep, request.keep_ratio
        if ratio is not None:
            if keep is not None:
                raise NuwaError("pass --keep or --keep-ratio, not both")
            if not 0 < ratio <= 1:
                raise NuwaError(f"--keep-ratio must be in (0, 1], got {ratio}")
            keep = max(1, round(ratio * n))  # LLaVA's schedule is by average keep: 64/128/192 of 576
            if 7 * keep // 4 > n:
                raise NuwaError(f"--keep-ratio {ratio} asks for keep {keep}; LLaVA's K1 = 7·keep/4 must fit in the {n} patches, "
                                f"so keep is at most {4 * n // 7} (ratio {4 * n // 7 / n:.2f})")
        return resolve_budgets(n, num_layers, keep, request.k1, request.k2, request.layer, prune=request.prune)

    def stage_one(self, budgets: Budgets, grid: tuple[int, int], request: BudgetRequest) -> StageOneSpec:
        """The paper's: per region from K1, reach √280, pillars at 0.55, self entry 1.0."""
        from nuwa_export.pruning.spec import stage_one_spec

        return stage_one_spec(budgets, grid, request.per_region, request.distance, request.percentile)

    def build_prompt(self, tokenizer, text: str, image_token_id: int) -> Prompt:
        return build_prompt(tokenizer, text, image_token_id)

    def contract(self, numbers: Numbers) -> Contract:
        return standard(numbers, position_rows=1)


FAMILY = Llava()
