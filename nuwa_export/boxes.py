"""Boxes ``(x1, y1, x2, y2)``: found in an answer, mapped between the padded square a model saw
and the original picture, compared.

LLaVA-1.5 answers boxes in 0–1 of the *padded square* it saw (docs/algorithm.md §9), Qwen2.5-VL in
pixels of it; each family's ``grounding`` turns its answer into 0–1 of that square, and
:func:`to_pixels` maps that back through the padding to original pixels before a box is drawn or
scored.
"""

from __future__ import annotations

import re

from nuwa_export.image import ImageConfig, padded_geometry

_NUM = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BOX = re.compile(r"\[" + ",".join([_NUM] * 4) + r"\]")

Box = tuple[float, float, float, float]


def parse_box(text: str) -> Box | None:
    """The first ``[x1, y1, x2, y2]`` in ``text`` (in whatever unit the answer uses), or None."""
    m = _BOX.search(text)
    if not m:
        return None
    x1, y1, x2, y2 = (float(g) for g in m.groups())
    return (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))


def to_pixels(box: Box, width: int, height: int, cfg: ImageConfig) -> Box:
    """Padded-square 0–1 coordinates → pixels of the original ``width × height`` image, clipped."""
    side, ox, oy = padded_geometry(width, height, cfg)
    sx, sy = (side, side) if cfg.pad == "square-mean" else (width, height)
    x1, y1, x2, y2 = box
    clip = lambda v, hi: max(0.0, min(float(hi), v))
    return (clip(x1 * sx - ox, width), clip(y1 * sy - oy, height), clip(x2 * sx - ox, width), clip(y2 * sy - oy, height))


def to_padded(box_px: Box, width: int, height: int, cfg: ImageConfig) -> Box:
    """Inverse of :func:`to_pixels` (without clipping): pixels → padded-square 0–1."""
    side, ox, oy = padded_geometry(width, height, cfg)
    sx, sy = (side, side) if cfg.pad == "square-mean" else (width, height)
    x1, y1, x2, y2 = box_px
    return ((x1 + ox) / sx, (y1 + oy) / sy, (x2 + ox) / sx, (y2 + oy) / sy)


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
