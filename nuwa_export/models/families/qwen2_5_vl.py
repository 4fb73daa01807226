"""Qwen2.5-VL (Qwen2 LLM with M-RoPE, a window-attention tower with a 2×2 patch merger) on the
family seam. Differences from LLaVA-1.5 are listed in docs/algorithm.md §10."""

from __future__ import annotations

import json
import re

from nuwa_export.eval import grounding
from nuwa_export.models.families import Family, Grounding, register

IMAGE_TOKEN = "<|image_pad|>"
#: How Qwen2.5-VL is asked for a box (its answers are absolute pixels of the image it saw).
QUESTION = 'Locate "{phrase}" in the image and output its bbox coordinates in JSON format.'


def graph_io(m) -> dict[str, tuple[list, list]]:
    """As LLaVA's (:func:`nuwa_export.models.families.llava.graph_io`), with M-RoPE
    ``position_ids [3, B, T]``."""
    from nuwa_export.models.families.llava import graph_io as llava_io

    out = {}
    for graph, (inputs, outputs) in llava_io(m).items():
        inputs = [(n, t, [3, None, None]) if n == "position_ids" else (n, t, d) for n, t, d in inputs]
        out[graph] = (inputs, outputs)
    return out


def question(phrase: str) -> str:
    return QUESTION.format(phrase=phrase.strip().rstrip("."))


def parse_box(text: str):
    """The box in a Qwen answer: ``{"bbox_2d": [x1, y1, x2, y2], ...}`` (JSON, possibly in a
    fenced block or a list), else the first ``[x1, y1, x2, y2]``; absolute pixels of the image
    the model saw. None when there is none."""
    found = _bbox_from_json(text)
    if found is None:
        return grounding.parse_box(text)
    x1, y1, x2, y2 = found
    return (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))


def _bbox_from_json(text: str):
    body = text.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", body, re.S)
    if fence:
        body = fence.group(1)
    start = min((i for i in (body.find("["), body.find("{")) if i >= 0), default=-1)
    if start < 0:
        return None
    try:
        data, _ = json.JSONDecoder().raw_decode(body[start:])
    except ValueError:
        return None
    items = data if isinstance(data, list) else [data]
    for item in items:
        box = item.get("bbox_2d") if isinstance(item, dict) else None
        if isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
            return [float(v) for v in box]
    return None


def unit(box, cfg):
    """Pixels of the ``S×S`` image the model saw → 0–1 of it."""
    s = float(cfg.size)
    return tuple(v / s for v in box)


def to_pixels(box, width: int, height: int, cfg):
    """Pixels of the ``S×S`` image the model saw → pixels of the original image (through the
    square padding, as LLaVA's 0–1 boxes)."""
    return grounding.to_pixels(unit(box, cfg), width, height, cfg)


def _check_config(config) -> None:
    from nuwa_export.models.qwen2_5_vl import check_config

    check_config(config)


def _image_size(config, requested: int | None) -> int:
    from nuwa_export.models.qwen2_5_vl import DEFAULT_IMAGE_SIZE, check_image_size

    size = DEFAULT_IMAGE_SIZE if requested is None else requested
    check_image_size(config, size)
    return size


def _grid(config, image_size: int) -> tuple[int, int]:
    from nuwa_export.models.qwen2_5_vl import grid

    return grid(config, image_size)


def _model_class():
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration


def _parts(model, image_size: int):
    from nuwa_export.models.qwen2_5_vl import QwenParts

    return QwenParts(model, image_size)


def _set_vision_dtype(model, dtype) -> None:
    model.model.visual.to(dtype)


def _image_config(path, image_size: int):
    """The checkpoint's mean, std and resampling; the image is padded to a square with the mean
    colour and resized to the fixed ``S×S`` (aspect kept; Qwen's own processor would pick a
    size per image, which a static graph cannot)."""
    from nuwa_export.image import ImageConfig

    return ImageConfig.from_pretrained(path, image_size)


def _build_prompt(tokenizer, text: str, image_token_id: int):
    from nuwa_export.prompt import build_chat_prompt

    return build_chat_prompt(tokenizer, text, image_token_id, IMAGE_TOKEN)


def _resolve_budgets(grid, num_layers, *, keep=None, k1=None, k2=None, layer=None, prune=True, keep_ratio=None, per_region=None):
    from nuwa_export.pruning.budgets import resolve_qwen_budgets

    return resolve_qwen_budgets(
        grid, num_layers, keep_ratio=keep_ratio, keep=keep, k1=k1, k2=k2, layer=layer, prune=prune, per_region=per_region,
    )


def _stage_one(budgets, grid, per_region=None, distance=None, percentile=None):
    from nuwa_export.pruning.spec import qwen_spec

    return qwen_spec(budgets, grid, per_region, distance, percentile)


def _positions(grid):
    from nuwa_export.pruning.positions import MRopePositions

    return MRopePositions(grid)


QWEN2_5_VL = register(Family(
    name="qwen2_5_vl",
    model_types=("qwen2_5_vl",),
    check_config=_check_config,
    image_size=_image_size,
    grid=_grid,
    num_layers=lambda config: config.text_config.num_hidden_layers,
    model_class=_model_class,
    attn_implementation=lambda text: {"text_config": text, "vision_config": "sdpa", "": "sdpa"},
    parts=_parts,
    set_vision_dtype=_set_vision_dtype,
    image_config=_image_config,
    build_prompt=_build_prompt,
    grounding=Grounding(question, parse_box, to_pixels, unit),
    graph_io=graph_io,
    positions=_positions,
    resolve_budgets=_resolve_budgets,
    stage_one=_stage_one,
))
