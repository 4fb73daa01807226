"""Model families: one adapter per family, registered by the checkpoint's ``model_type``.

An adapter says what differs between families (docs/architecture.md, "Model families"): which
checkpoints it takes and how they load (the transformers class, attention settings, the parts
Nüwa drives, the grid, the image preprocessing), the prompt template, the grounding question and
answer format, and the inputs and outputs each exported graph declares. Code outside ``models/`` asks the adapter
(:func:`family_for` for a checkpoint's config, :func:`family_named` for an export's manifest)
instead of comparing ``model_type`` itself.

Families: LLaVA-1.5 (:mod:`~nuwa_export.models.families.llava`) and Qwen2.5-VL
(:mod:`~nuwa_export.models.families.qwen2_5_vl`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nuwa_export.errors import NuwaError

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Grounding:
    """How a family is asked for a box and answers it."""

    question: Callable[[str], str]  # phrase → the question the model was trained on
    parse: Callable[[str], Box | None]  # answer → the box in the family's own coordinates, or None
    to_pixels: Callable[[Box, int, int, Any], Box]  # (box, width, height, ImageConfig) → pixels of the original image
    unit: Callable[[Box, Any], Box] = lambda box, cfg: box  # (box, ImageConfig) → 0–1 of the square the model saw
    eval_prompt: Callable[[str], str] | None = None  # the benchmark harness's question (nuwa-eval), when not `question`


@dataclass(frozen=True)
class Family:
    name: str  # recorded in manifest.json (``family``)
    model_types: tuple[str, ...]  # the checkpoint configs' ``model_type`` it takes
    check_config: Callable[[Any], None]  # refuse a config this adapter was not written for (NuwaError)
    image_size: Callable[[Any, int | None], int]  # (config, --image-size or None) → the image side (refused if it cannot be)
    grid: Callable[[Any, int], tuple[int, int]]  # (config, image side) → the token grid (rows, columns)
    num_layers: Callable[[Any], int]  # config → decoder layers of the LLM
    model_class: Callable[[], type]  # the transformers class its checkpoints load with
    attn_implementation: Callable[[str], Any]  # LLM attention ("sdpa", "eager") → from_pretrained's attn_implementation
    parts: Callable[[Any, int], Any]  # (loaded model, image side) → the pieces Nüwa drives (LlavaParts, QwenParts)
    set_vision_dtype: Callable[[Any, Any], None]  # (model, torch dtype): the vision tower and projector in another dtype
    image_config: Callable[[Any, int], Any]  # (checkpoint dir, image side) → image.ImageConfig
    build_prompt: Callable[[Any, str, int], Any]  # (tokenizer, text, image token id) → prompt.Prompt
    grounding: Grounding
    graph_io: Callable[[Any], dict[str, tuple[list, list]]]  # manifest → per graph (inputs, outputs) it must declare
    positions: Callable[[tuple[int, int]], Any]  # grid → position scheme (pruning.positions.RopePositions / MRopePositions)
    resolve_budgets: Callable[..., Any]  # (grid, num_layers, keep=, k1=, k2=, layer=, prune=, keep_ratio=, per_region=) → pruning.Budgets
    stage_one: Callable[..., Any]  # (budgets, grid, per_region, distance, percentile) → pruning.StageOneSpec, defaults filled


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    _FAMILIES[family.name] = family
    return family


def families() -> dict[str, Family]:
    _load()
    return dict(_FAMILIES)


def family_named(name: str) -> Family:
    """The adapter an export's manifest names."""
    _load()
    if name not in _FAMILIES:
        raise NuwaError(f"model family '{name}' is not one this nuwa-export knows ({', '.join(sorted(_FAMILIES))})")
    return _FAMILIES[name]


def family_for(config) -> Family:
    """The adapter for a checkpoint's config (by its ``model_type``)."""
    _load()
    model_type = getattr(config, "model_type", None)
    for family in _FAMILIES.values():
        if model_type in family.model_types:
            return family
    known = ", ".join(sorted(t for f in _FAMILIES.values() for t in f.model_types))
    raise NuwaError(f"unsupported checkpoint: model_type '{model_type}' (supported: {known})")


def _load() -> None:
    if not _FAMILIES:
        from nuwa_export.models.families import llava, qwen2_5_vl  # noqa: F401  (they register themselves)
