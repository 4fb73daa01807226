"""Draw which patches Nüwa kept, on the original image (``nuwa-run --show-tokens OUT.png``).

The patch grid lives on the preprocessed ``S×S`` picture. LLaVA-1.5 pads the image to a square
first (:func:`nuwa_export.image.padded_geometry`), so patch ``p = row·W + col`` is mapped back
through the resize and the padding to original pixels, like grounding boxes
(:func:`nuwa_export.boxes.to_pixels`). Patches that lie wholly in the padding are not drawn; the
legend counts them.

What is drawn:

* patches that stage one dropped are dimmed;
* stage-one anchors are outlined: amber for *pillars* (they keep only themselves), cyan for
  *collectors* (they absorb similar neighbours). That split is known only where the pillar
  mask is (the PyTorch reference, ``--backend torch``); the ONNX graphs output anchor indices
  only, so there every anchor is drawn green;
* stage-two survivors (the ``K2`` tokens that reach layers ``[L, N)``) get a thick magenta
  inner outline.

Small images are enlarged by an integer factor (:func:`scale_for`) so the grid stays legible,
and a legend strip is added below the picture. The file is written atomically.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from nuwa_export.atomic import check_output_file, write_file
from nuwa_export.boxes import Box
from nuwa_export.errors import NuwaError
from nuwa_export.image import ImageConfig, padded_geometry

PILLAR = (255, 176, 0)
COLLECTOR = (0, 200, 255)
ANCHOR = (60, 230, 60)  # pillar / collector unknown (ONNX Runtime, TensorRT)
SURVIVOR = (255, 0, 200)
LEGEND_BG = (24, 24, 24)
#: Images whose long side is shorter than this are enlarged by an integer factor.
MIN_SIDE = 448
BOX = (255, 40, 40)


def save_format(path: str | Path) -> str:
    """The Pillow format an RGB image is saved in for ``path``'s extension, or a one-line error:
    an extension Pillow does not know, a format it reads but cannot write (``.psd``), or one
    that cannot hold an RGB picture (``.xbm``). A 1×1 picture is saved in memory to find out."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise NuwaError(f"{path}: unknown image format '{path.suffix}' (use .png)")
    if fmt not in Image.SAVE:
        raise NuwaError(f"{path}: Pillow reads {fmt} images but cannot write them (use .png)")
    try:
        Image.new("RGB", (1, 1)).save(io.BytesIO(), format=fmt)
    except Exception as e:  # a plugin's own refusal (OSError, ValueError, KeyError...): this format cannot be written
        raise NuwaError(f"{path}: Pillow cannot write an RGB picture as {fmt} ({' '.join(str(e).split())[:120] or type(e).__name__}); use .png") from None
    return fmt


def check_output(path: str | Path) -> Path:
    """Refuse an output path that cannot be written, before any work is done."""
    path = Path(path)
    save_format(path)
    check_output_file(path)  # its directory exists and is writable; not a directory, link or device
    return path


def scale_for(width: int, height: int) -> int:
    """The integer enlargement applied to a ``width × height`` image (1 for large images)."""
    return max(1, math.ceil(MIN_SIDE / max(width, height)))


def patch_boxes(indices: Sequence[int], grid: tuple[int, int], width: int, height: int, cfg: ImageConfig) -> list[Box]:
    """Patch indices → ``(x1, y1, x2, y2)`` in pixels of the original ``width × height`` image.

    Undoes the preprocessing of :func:`nuwa_export.image.preprocess`: pad to a square (or not),
    resize the shortest edge to ``S`` and centre-crop ``S×S``. Boxes are not clipped: a patch
    in the padding lies (partly) outside ``[0, width] × [0, height]``.
    """
    gh, gw = grid
    s = cfg.size
    if cfg.pad == "square-mean":
        side, ox, oy = padded_geometry(width, height, cfg)
        sx = sy = side / s
        shift_x, shift_y = -ox, -oy
    else:
        rw, rh = (s, int(s * height / width)) if width <= height else (int(s * width / height), s)
        sx, sy = width / rw, height / rh
        shift_x, shift_y = (rw - s) // 2 * sx, (rh - s) // 2 * sy
    cw, ch = s / gw * sx, s / gh * sy
    boxes = []
    for p in indices:
        r, c = divmod(int(p), gw)
        boxes.append((c * cw + shift_x, r * ch + shift_y, (c + 1) * cw + shift_x, (r + 1) * ch + shift_y))
    return boxes


def _visible(box: Box, width: int, height: int) -> bool:
    return box[2] > 0 and box[3] > 0 and box[0] < width and box[1] < height


def _rect(box: Box, u: int, inset: int = 0) -> tuple[int, int, int, int]:
    """A box in original pixels → integer rectangle on the canvas enlarged ``u`` times."""
    x1, y1, x2, y2 = (round(v * u) for v in box)
    return x1 + inset, y1 + inset, max(x1 + inset, x2 - 1 - inset), max(y1 + inset, y2 - 1 - inset)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + [line] if line else lines


def _legend(width: int, entries: list[tuple[tuple[int, int, int] | None, str]]) -> Image.Image:
    """A dark strip: one swatch (or none) and wrapped text per entry."""
    size = max(11, width // 40)
    font, pad, sw = _font(size), size // 2, size
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped = [(colour, _wrap(probe, text, font, width - 3 * pad - sw)) for colour, text in entries]
    line_h = size + size // 3
    strip = Image.new("RGB", (width, pad * 2 + line_h * sum(len(w) for _, w in wrapped)), LEGEND_BG)
    d = ImageDraw.Draw(strip)
    y = pad
    for colour, lines in wrapped:
        if colour:
            d.rectangle((pad, y + 1, pad + sw - 1, y + sw - 1), outline=colour, width=max(2, sw // 4))
        for line in lines:
            d.text((2 * pad + sw, y), line, fill=(235, 235, 235), font=font)
            y += line_h
    return strip


def draw_tokens(
    image: Image.Image,
    path: str | Path,
    grid: tuple[int, int],
    cfg: ImageConfig,
    stage_one: Sequence[int],
    stage_two: Sequence[int] | None = None,
    pillars: Sequence[bool] | None = None,
    layer: int | None = None,
) -> Path:
    """Save ``image`` with the kept patches drawn (see the module docstring); returns the path.

    Args:
        image: the original RGB image (not padded), ``W × H``.
        grid: ``(H_p, W_p)`` patch grid; patch indices are raster order over it.
        stage_one: ``K1`` anchor patch indices (all patches when pruning is off).
        stage_two: ``K2`` surviving patch indices (a subset of ``stage_one``), or None.
        pillars: ``K1`` booleans aligned with ``stage_one`` (True = pillar), or None if unknown.
        layer: the stage-two layer ``L``, for the legend.
    Output size: ``(W·u, H·u + legend)`` with ``u =`` :func:`scale_for` ``(W, H)``.
    """
    path = check_output(path)
    if pillars is not None and len(pillars) != len(stage_one):
        raise NuwaError(f"pillar mask has {len(pillars)} entries for {len(stage_one)} anchors")
    w, h = image.size
    u = scale_for(w, h)
    base = image.convert("RGB").resize((w * u, h * u), Image.Resampling.BICUBIC) if u > 1 else image.convert("RGB").copy()
    boxes = dict(zip(stage_one, patch_boxes(stage_one, grid, w, h, cfg)))
    shown = {p: b for p, b in boxes.items() if _visible(b, w, h)}

    keep_mask = Image.new("L", base.size, 0)
    mask_draw = ImageDraw.Draw(keep_mask)
    for box in shown.values():
        mask_draw.rectangle(_rect(box, u), fill=255)
    canvas = Image.composite(base, Image.blend(base, Image.new("RGB", base.size), 0.6), keep_mask)

    x1, y1, x2, y2 = patch_boxes([0], grid, w, h, cfg)[0]
    line = max(1, round(u * min(x2 - x1, y2 - y1) / 10))  # outline width: a tenth of a patch
    d = ImageDraw.Draw(canvas)
    if stage_two is not None:  # without pruning every patch is kept: nothing to outline
        for i, p in enumerate(stage_one):
            if p in shown:
                colour = ANCHOR if pillars is None else (PILLAR if pillars[i] else COLLECTOR)
                d.rectangle(_rect(shown[p], u), outline=colour, width=line)
        for p in stage_two:
            if p in shown:
                d.rectangle(_rect(shown[p], u, inset=line), outline=SURVIVOR, width=2 * line)

    entries = _entries(grid, stage_one, stage_two, pillars, layer, hidden=len(boxes) - len(shown))
    legend = _legend(canvas.width, entries)
    out = Image.new("RGB", (canvas.width, canvas.height + legend.height))
    out.paste(canvas, (0, 0))
    out.paste(legend, (0, canvas.height))
    return _save(out, path)


def _entries(grid, stage_one, stage_two, pillars, layer, hidden: int) -> list[tuple[tuple[int, int, int] | None, str]]:
    """The legend's lines: (swatch colour or None, text)."""
    total = grid[0] * grid[1]
    if stage_two is None:
        return [(None, f"no pruning: all {total} patches reach every layer")]
    entries = [(None, f"stage one kept {len(stage_one)} of {total} patches (the rest dimmed)")]
    if pillars is None:
        entries.append((ANCHOR, "anchor (pillar / collector split not recorded by the ONNX graphs; run --backend torch to see it)"))
    else:
        n_p = sum(bool(x) for x in pillars)
        entries += [(PILLAR, f"pillar ({n_p}): keeps only itself"), (COLLECTOR, f"collector ({len(stage_one) - n_p}): absorbs similar neighbours")]
    where = f" to layers [{layer}, N)" if layer is not None else ""
    entries.append((SURVIVOR, f"stage two: {len(stage_two)} survivors go on{where}"))
    if hidden:
        entries.append((None, f"{hidden} kept patches lie in the square padding (not shown)"))
    return entries


def _save(image: Image.Image, path: Path) -> Path:
    check_output(path)
    return write_file(path, lambda tmp: image.save(tmp, format=save_format(path)))


def draw_box(image: Image.Image, box_px: Box, path: str | Path, label: str = "") -> Path:
    """Save ``image`` with ``box_px`` (pixels of ``image``) drawn and labelled, atomically."""
    path = check_output(path)  # a format Pillow cannot write is one line (nuwa-run checks it before the model runs too)
    out = image.convert("RGB").copy()
    d = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 200))
    d.rectangle(box_px, outline=BOX, width=width)
    if label:
        d.text((box_px[0] + width + 2, box_px[1] + width + 2), label, fill=BOX)
    return write_file(path, lambda tmp: out.save(tmp, format=save_format(path)))
