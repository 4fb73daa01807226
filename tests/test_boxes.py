"""Grounding boxes: parsing, the padded-square mapping (checked on real RefCOCO annotations), drawing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nuwa_export import boxes
from nuwa_export.image import ImageConfig
from nuwa_export.models.families.llava.grounding import LlavaGrounding
from nuwa_export.overlay import draw_box

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "refcoco-sample"


def test_parse_box():
    assert boxes.parse_box("The man is at [0.52, 0.31, 0.87, 0.95].") == (0.52, 0.31, 0.87, 0.95)
    assert boxes.parse_box("[0.9,0.1,0.2,0.5]") == (0.2, 0.1, 0.9, 0.5)  # corners ordered
    assert boxes.parse_box("no box here [1, 2]") is None


def test_question_matches_refcoco():
    assert LlavaGrounding().question("man on right") == (
        "Please provide the bounding box coordinate of the region this sentence describes: man on right."
    )


def _annotations():
    if not (SHARED / "refcoco.json").is_file():  # the project's shared data sits beside the clone
        pytest.skip(f"RefCOCO sample not found at {SHARED}")
    return json.loads((SHARED / "refcoco.json").read_text())


def test_padded_mapping_on_refcoco_annotations():
    """A box in padded-square coordinates maps back onto the annotated pixels, and the
    annotation's 0–1000 original-size normalisation differs from it whenever the image is not square."""
    cfg = ImageConfig(size=336)
    for ann in _annotations():
        w, h = ann["width"], ann["height"]
        with Image.open(SHARED / ann["image"]) as im:
            assert im.size == (w, h)
        x, y, bw, bh = ann["solution"][0], ann["solution"][1], ann["solution"][2], ann["solution"][3]
        px = (x, y, bw, bh)  # the sample stores [x1, y1, x2, y2] pixels
        padded = boxes.to_padded(px, w, h, cfg)
        back = boxes.to_pixels(padded, w, h, cfg)
        np.testing.assert_allclose(back, px, atol=1e-6)
        lmms = tuple(v / 1000 for v in ann["normalized_solution"])  # original-size convention
        np.testing.assert_allclose(lmms, (x / w, y / h, bw / w, bh / h), atol=2e-3)
        assert w != h and not np.allclose(padded, lmms, atol=1e-2)


def test_to_pixels_known_case():
    cfg = ImageConfig(size=336)
    # 640x480: padded to 640x640 with 80 px bands top and bottom
    assert boxes.to_pixels((0.0, 0.125, 1.0, 0.875), 640, 480, cfg) == (0.0, 0.0, 640.0, 480.0)
    assert boxes.to_pixels((0.5, 0.0, 0.6, 0.1), 640, 480, cfg) == (320.0, 0.0, 384.0, 0.0)  # clipped to the image


def test_iou():
    assert boxes.iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert boxes.iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0


def test_draw(tmp_path):
    img = Image.new("RGB", (200, 100), (0, 0, 0))
    out = draw_box(img, (20, 10, 120, 90), tmp_path / "boxed.png", "man")
    arr = np.asarray(Image.open(out))
    assert tuple(arr[10, 60]) == (255, 40, 40) and tuple(arr[50, 60]) == (0, 0, 0)
    assert not list(tmp_path.glob(".*"))
