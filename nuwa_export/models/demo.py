"""What every built-in demo checkpoint shares: the cache it is built into, how it is written, and
the example picture it carries. Each family's own demo builder is in its folder
(``models/families/<family>/demo.py``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from nuwa_export import names
from nuwa_export.atomic import atomic_dir


def cache_dir() -> Path:
    """``$NUWA_EXPORT_CACHE`` or ``~/.cache/nuwa-export``."""
    return Path(os.environ.get("NUWA_EXPORT_CACHE", Path.home() / ".cache" / "nuwa-export"))


def cached(name: str, builder) -> Path:
    """``cache_dir() / name``, built with ``builder(path, seed=0, _race_ok=True)`` on first use."""
    path = cache_dir() / name
    if not (path / "model.safetensors").is_file():
        builder(path, seed=0, _race_ok=True)
    return path


def write_checkpoint(path, model_class, config, seed: int, tokenizer, bos: int, eos: int, processor: dict, race_ok: bool = False) -> Path:
    """``model_class(config)`` with seeded random weights, its tokenizer, processor config and the
    example picture, written atomically as an HF checkpoint directory at ``path``."""
    import torch

    path = Path(path)
    with atomic_dir(path, force=True, exist_ok_if_complete=race_ok) as tmp:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = model_class(config).eval()
        model.generation_config.bos_token_id = bos
        model.generation_config.eos_token_id = eos
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / names.PREPROCESSOR_CONFIG).write_text(json.dumps(processor, indent=2) + "\n")
        example_image(tmp / names.EXAMPLE_PICTURE)
    return path


def example_image(path: str | Path) -> Path:
    """Save :func:`example_picture` as PNG at ``path``."""
    example_picture().save(path, format="PNG")
    return Path(path)


def example_picture():
    """The demo's example picture (320x240: a street with a car on the left, a person on the right)."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (320, 240), (135, 190, 235))
    d = ImageDraw.Draw(im)
    d.rectangle((0, 150, 320, 240), fill=(90, 90, 95))  # road
    d.rectangle((0, 140, 320, 150), fill=(170, 170, 170))  # kerb
    d.ellipse((250, 20, 290, 60), fill=(250, 220, 60))  # sun
    d.rectangle((30, 150, 130, 190), fill=(200, 30, 30))  # car body
    d.rectangle((50, 125, 110, 152), fill=(180, 25, 25))  # car roof
    for x in (45, 100):
        d.ellipse((x, 180, x + 22, 202), fill=(20, 20, 20))  # wheels
    d.ellipse((228, 88, 252, 112), fill=(230, 190, 160))  # head
    d.rectangle((226, 112, 254, 165), fill=(40, 70, 200))  # shirt
    d.rectangle((228, 165, 252, 205), fill=(40, 40, 40))  # trousers
    return im
