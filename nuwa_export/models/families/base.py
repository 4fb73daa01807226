"""What a model family is: the typed protocol every folder under ``models/families/`` implements.

A family says everything that differs between vision-language models (docs/architecture.md,
"Model families"): which checkpoints it takes and how they load, the pieces of a loaded model Nüwa
drives (:class:`~nuwa_export.models.families.parts.Parts`), how an image becomes token grids (:meth:`Family.plan`), its budget
schedule and stage-one settings, its positions, prompt template and grounding format, and the
graph contract of its exports. Code outside ``models/`` asks the family instead of comparing
``model_type`` itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from nuwa_export import boxes
from nuwa_export.contract import Contract, Numbers
from nuwa_export.image import ImageConfig
from nuwa_export.prompt import Prompt

if TYPE_CHECKING:  # importing a family is cheap (``--help`` needs no torch); its parts and pruning load when used
    import torch

    from nuwa_export.models.families.parts import Parts
    from nuwa_export.pruning import BudgetRequest, Budgets, ImagePlan
    from nuwa_export.pruning.spec import StageOneSpec


class Grounding(ABC):
    """How a family is asked for a box and writes it."""

    @abstractmethod
    def question(self, phrase: str) -> str:
        """The question the model was trained on for ``phrase``."""

    def eval_prompt(self, expression: str) -> str:
        """The benchmark harness's question (``nuwa-eval``, lmms-eval's wording where it has one)."""
        return self.question(expression)

    @abstractmethod
    def parse(self, answer: str) -> boxes.Box | None:
        """The box in ``answer``, in the family's own coordinates, or None."""

    def unit(self, box: boxes.Box, cfg: ImageConfig) -> boxes.Box:
        """The family's coordinates → 0–1 of the square the model saw (default: they are)."""
        return box

    def to_pixels(self, box: boxes.Box, width: int, height: int, cfg: ImageConfig) -> boxes.Box:
        """The family's coordinates → pixels of the original ``width × height`` picture."""
        return boxes.to_pixels(self.unit(box, cfg), width, height, cfg)


class Family(ABC):
    """One model family (module doc). Families register themselves by being a package under
    ``models/families/`` whose ``FAMILY`` is an instance of a subclass."""

    #: recorded in an export's manifest (``family``)
    name: ClassVar[str]
    #: the checkpoint configs' ``model_type`` it takes
    model_types: ClassVar[tuple[str, ...]]
    #: names users type → hub ids
    aliases: ClassVar[dict[str, str]] = {}
    #: built-in demo checkpoints, built locally on first use (:meth:`build_demo`)
    demos: ClassVar[tuple[str, ...]] = ()
    grounding: Grounding

    # ---- checkpoints ----------------------------------------------------------------------------
    @abstractmethod
    def check_config(self, config) -> None:
        """Refuse a config this family's code was not written for (one-line :class:`NuwaError`)."""

    @abstractmethod
    def image_size(self, config, requested: int | None) -> int:
        """The image side the vision graph takes (``--image-size`` or the tower's), refused if impossible."""

    @abstractmethod
    def grid(self, config, image_size: int) -> tuple[int, int]:
        """The token grid (rows, columns) of an image of ``image_size``."""

    def num_layers(self, config) -> int:
        """Decoder layers of the LLM."""
        return config.text_config.num_hidden_layers

    @abstractmethod
    def model_class(self) -> type:
        """The transformers class its checkpoints load with."""

    def attn_implementation(self, text: str) -> Any:
        """``from_pretrained``'s ``attn_implementation`` with the LLM's ``text`` (sdpa, eager); the
        tower keeps its fused attention."""
        return {"text_config": text, "vision_config": "sdpa", "": "sdpa"}

    @abstractmethod
    def parts(self, model, image_size: int) -> Parts:
        """The pieces of a loaded model Nüwa drives."""

    @abstractmethod
    def set_vision_dtype(self, model, dtype: "torch.dtype") -> None:
        """Put the vision tower and projector in ``dtype`` (exports keep them in float32)."""

    def image_config(self, path: Path, image_size: int) -> ImageConfig:
        """Preprocessing, from the checkpoint's ``preprocessor_config.json``."""
        return ImageConfig.from_pretrained(path, image_size)

    def build_demo(self, name: str) -> Path:
        """The demo checkpoint ``name`` (one of :attr:`demos`), built on first use."""
        raise NotImplementedError

    # ---- images, budgets, stage one -------------------------------------------------------------
    @abstractmethod
    def plan(self, grid: tuple[int, int], budgets: Budgets) -> ImagePlan:
        """How an image becomes LLM tokens: its token grids, what each keeps, and the positions."""

    @abstractmethod
    def resolve_budgets(self, grid: tuple[int, int], num_layers: int, request: BudgetRequest) -> Budgets:
        """The budgets for ``request`` (defaults filled in), refused in one line if impossible."""

    @abstractmethod
    def stage_one(self, budgets: Budgets, grid: tuple[int, int], request: BudgetRequest) -> StageOneSpec:
        """Stage one's settings with the request's knobs (None: the family's defaults)."""

    # ---- prompts and graphs ---------------------------------------------------------------------
    @abstractmethod
    def build_prompt(self, tokenizer, text: str, image_token_id: int) -> Prompt:
        """``text`` asked about one image in the family's template, split around the image."""

    @abstractmethod
    def contract(self, numbers: Numbers) -> Contract:
        """Every graph's inputs and outputs for an export of these numbers."""
