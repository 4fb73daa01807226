"""LLaVA-1.5 grounding: ask for a box, parse ``[x1, y1, x2, y2]``, map it back to the image.

LLaVA-1.5 answers boxes in 0–1 of the *padded square* it saw (docs/algorithm.md §9). The box is mapped
back through the padding to original pixels before it is drawn or scored.
"""

from __future__ import annotations

import re
from pathlib import Path

from nuwa_export.image import ImageConfig, padded_geometry

#: The RefCOCO ``bbox_rec`` question LLaVA-1.5 was trained on.
QUESTION = "Please provide the bounding box coordinate of the region this sentence describes: {phrase}."
_NUM = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BOX = re.compile(r"\[" + ",".join([_NUM] * 4) + r"\]")

Box = tuple[float, float, float, float]


def question(phrase: str) -> str:
    return QUESTION.format(phrase=phrase.strip().rstrip("."))


def parse_box(text: str) -> Box | None:
    """The first ``[x1, y1, x2, y2]`` in ``text`` (normalised 0–1), or None."""
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


def draw(image, box_px: Box, path: str | Path, label: str = "") -> Path:
    """Save ``image`` with ``box_px`` drawn (atomically: a temporary file, then rename)."""
    from PIL import ImageDraw

    from nuwa_export.atomic import write_file

    out = image.convert("RGB").copy()
    d = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 200))
    d.rectangle(box_px, outline=(255, 40, 40), width=width)
    if label:
        d.text((box_px[0] + width + 2, box_px[1] + width + 2), label, fill=(255, 40, 40))
    path = Path(path)
    from nuwa_export.overlay import check_output, save_format

    check_output(path)  # a format Pillow cannot write is one line (run.py checks it before the model runs too)
    return write_file(path, lambda tmp: out.save(tmp, format=save_format(path)))
