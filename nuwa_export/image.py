"""LLaVA-1.5 image preprocessing: pad to a square with the mean colour, resize, normalise.

Written with PIL and NumPy (no torchvision); it matches transformers' ``LlavaImageProcessorPil``
with ``do_pad=True`` (a test holds it to that).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from nuwa_export import jsonio, names
from nuwa_export.errors import NuwaError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: The largest image accepted, in pixels (144 MP, e.g. 12000×12000). Checked from the header,
#: before any pixel is decoded, so a crafted file cannot exhaust memory (a decompression bomb).
MAX_IMAGE_PIXELS = 144_000_000


@dataclass(frozen=True)
class ImageConfig:
    """Preprocessing, as recorded in an export manifest.

    ``pad`` is ``"square-mean"`` (LLaVA-1.5: pad to a square with the mean colour, image
    centred) or ``"none"``.
    """

    size: int
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    resample: int = 3  # PIL bicubic
    rescale_factor: float = 1 / 255
    pad: str = "square-mean"

    @classmethod
    def from_pretrained(cls, path: Path, image_size: int) -> "ImageConfig":
        """Read ``preprocessor_config.json`` if present; LLaVA-1.5 pads unless it says ``do_pad: false``.

        The llava-hf checkpoints ship a CLIP processor config without ``do_pad``; LLaVA-1.5 was
        trained on padded images and grounding depends on it, so padding is the default.
        """
        file = Path(path) / names.PREPROCESSOR_CONFIG
        try:
            raw = jsonio.read(file) if file.is_file() else {}
            crop = raw.get("crop_size") or {}
            size = crop.get("height") if isinstance(crop, dict) else crop
            size = int(size or image_size)
            cfg = cls(
                size=size,
                mean=_triple(raw.get("image_mean", CLIP_MEAN)),
                std=_triple(raw.get("image_std", CLIP_STD)),
                resample=int(raw.get("resample", 3)),
                rescale_factor=float(raw.get("rescale_factor", 1 / 255)),
                pad="square-mean" if raw.get("do_pad", True) else "none",
            )
        except NuwaError:
            raise
        except (ValueError, TypeError, AttributeError, OverflowError) as e:
            raise NuwaError(f"cannot read {file}: {_why(e)}") from None
        if size != image_size:
            raise NuwaError(f"{file}: crop size {size} does not match the vision tower's {image_size}")
        if min(cfg.std) <= 0 or cfg.resample not in range(6):
            raise NuwaError(f"{file}: image_std must be > 0 and resample a PIL filter (0-5)")
        return cfg

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _triple(v) -> tuple[float, float, float]:
    """Three finite floats (per-channel mean or std), or ValueError/TypeError."""
    out = tuple(float(x) for x in v)
    if len(out) != 3 or not all(math.isfinite(x) for x in out):
        raise ValueError(f"expected three finite numbers, got {v!r}")
    return out


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB, or raise a one-line :class:`NuwaError`."""
    p = Path(path)
    if not p.exists():
        raise NuwaError(f"image file not found: {p}")
    if not p.is_file():
        raise NuwaError(f"{p} is not an image file (a directory or a device)")
    return decode_image(p, str(p))


@contextlib.contextmanager
def _opened(source: Path | BinaryIO, name: str) -> Iterator[Image.Image]:
    """Open an image lazily (header only) and refuse it in one line if it is not an image, or is
    larger than :data:`MAX_IMAGE_PIXELS` or empty. This replaces Pillow's decompression-bomb
    warning and error, so nothing but one :class:`NuwaError` line ever reaches the user."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # our own limit, below
            try:
                im = Image.open(source)
            finally:
                Image.MAX_IMAGE_PIXELS = limit
    except UnidentifiedImageError:
        raise NuwaError(f"cannot read {name} as an image (not a format Pillow knows)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise NuwaError(f"cannot read {name} as an image ({_why(e)})") from None
    with im:
        w, h = im.size
        if w * h > MAX_IMAGE_PIXELS:
            raise NuwaError(
                f"{name} is {w}x{h} pixels, more than the {MAX_IMAGE_PIXELS // 1_000_000} megapixels accepted; scale it down first"
            )
        if w < 1 or h < 1:
            raise NuwaError(f"{name} has no pixels ({w}x{h})")
        yield im


def image_size(source: Path | BinaryIO, name: str) -> tuple[int, int]:
    """``(width, height)`` from the header alone (no pixels decoded), with :func:`decode_image`'s checks."""
    with _opened(source, name) as im:
        return im.size


def decode_image(source: Path | BinaryIO, name: str) -> Image.Image:
    """Decode an image file or file-like object (e.g. bytes from a parquet file) as RGB.

    The header is checked first (:func:`image_size`'s limits); ``name`` is how errors call it.
    """
    with _opened(source, name) as im:
        try:
            with warnings.catch_warnings():  # e.g. palette transparency notes: the conversion is what LLaVA does
                warnings.simplefilter("ignore")
                return im.convert("RGB")
        except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
            raise NuwaError(f"cannot read {name} as an image ({_why(e)})") from None


def _why(e: BaseException) -> str:
    """``Type: first line of the message`` (shortened), for one-line errors."""
    msg = (str(e).splitlines() or [""])[0].strip()
    msg = msg if len(msg) <= 80 else msg[:77] + "..."
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def pad_to_square(image: Image.Image, mean: tuple[float, float, float]) -> Image.Image:
    """LLaVA's ``expand2square``: the image centred on a square of colour ``int(255·mean)``."""
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    out = Image.new("RGB", (side, side), tuple(int(x * 255) for x in mean))
    out.paste(image, ((side - w) // 2, (side - h) // 2))
    return out


def preprocess(image: Image.Image, cfg: ImageConfig) -> np.ndarray:
    """RGB image → ``[3, S, S]`` float32 pixel values."""
    if cfg.pad == "square-mean":
        image = pad_to_square(image, cfg.mean)
    w, h = image.size
    # shortest edge to S (long edge truncated, as transformers does), then centre crop
    if w <= h:
        rw, rh = cfg.size, int(cfg.size * h / w)
    else:
        rw, rh = int(cfg.size * w / h), cfg.size
    image = image.resize((rw, rh), resample=Image.Resampling(cfg.resample))
    left, top = (rw - cfg.size) // 2, (rh - cfg.size) // 2
    image = image.crop((left, top, left + cfg.size, top + cfg.size))
    x = np.asarray(image, dtype=np.float32) * np.float32(cfg.rescale_factor)
    x = (x - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def padded_geometry(width: int, height: int, cfg: ImageConfig) -> tuple[int, int, int]:
    """``(side, offset_x, offset_y)`` of the original image inside the padded square."""
    if cfg.pad != "square-mean":
        return max(width, height), 0, 0
    side = max(width, height)
    return side, (side - width) // 2, (side - height) // 2
