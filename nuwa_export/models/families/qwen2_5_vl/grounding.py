"""How Qwen2.5-VL is asked for a box, and how it answers (absolute pixels of the image it saw)."""

from __future__ import annotations

import json
import re

from nuwa_export import boxes
from nuwa_export.models.families.base import Grounding

QUESTION = 'Locate "{phrase}" in the image and output its bbox coordinates in JSON format.'


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


class QwenGrounding(Grounding):
    def question(self, phrase: str) -> str:
        return QUESTION.format(phrase=phrase.strip().rstrip("."))

    def parse(self, answer: str) -> boxes.Box | None:
        """The box in a Qwen answer: ``{"bbox_2d": [x1, y1, x2, y2], ...}`` (JSON, possibly in a
        fenced block or a list), else the first ``[x1, y1, x2, y2]``; absolute pixels of the image
        the model saw. None when there is none."""
        found = _bbox_from_json(answer)
        if found is None:
            return boxes.parse_box(answer)
        x1, y1, x2, y2 = found
        return (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))

    def unit(self, box: boxes.Box, cfg) -> boxes.Box:
        """Pixels of the ``S×S`` image the model saw → 0–1 of it."""
        s = float(cfg.size)
        return tuple(v / s for v in box)
