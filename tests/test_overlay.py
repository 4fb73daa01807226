"""--show-tokens: patch geometry through LLaVA's padding, the drawing, and the pillar mask."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from nuwa_export.boxes import to_padded
from nuwa_export.image import ImageConfig
from nuwa_export.overlay import (
    ANCHOR,
    COLLECTOR,
    PILLAR,
    SURVIVOR,
    draw_tokens,
    patch_boxes,
    scale_for,
)
from nuwa_export.tools.run import main as run_main


def _colours(path) -> set[tuple[int, int, int]]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return {tuple(p) for p in np.asarray(im.convert("RGB")).reshape(-1, 3)}


@pytest.mark.parametrize("size", [(200, 100), (90, 150), (64, 64)])
def test_patch_boxes_follow_the_padding_like_grounding_boxes(size):
    w, h = size
    cfg, grid = ImageConfig(size=32), (4, 4)
    boxes = patch_boxes(range(16), grid, w, h, cfg)
    for p, box in enumerate(boxes):
        r, c = divmod(p, 4)
        assert to_padded(box, w, h, cfg) == pytest.approx((c / 4, r / 4, (c + 1) / 4, (r + 1) / 4))
    if (w, h) == (200, 100):  # side 200, the image 50 px down: the top row is all padding
        assert boxes[0] == pytest.approx((0, -50, 50, 0)) and boxes[4] == pytest.approx((0, 0, 50, 50))


def test_patch_boxes_without_padding_undo_resize_and_crop():
    cfg = ImageConfig(size=32, pad="none")
    # 64x128: resized to 32x64, centre crop rows 16..48 → original rows 32..96
    boxes = patch_boxes([0, 15], (4, 4), 64, 128, cfg)
    assert boxes[0] == pytest.approx((0, 32, 16, 48)) and boxes[1] == pytest.approx((48, 80, 64, 96))


def test_draw_tokens_size_and_colours(tmp_path):
    image = Image.new("RGB", (120, 80), (90, 90, 90))
    cfg, grid = ImageConfig(size=64), (8, 8)
    anchors = [9, 10, 20, 27, 36, 45, 50, 54]  # rows 1..6 lie in the image (rows 0 and 7 are padding)
    path = draw_tokens(image, tmp_path / "t.png", grid, cfg, anchors, [10, 36], [True, False] * 4, layer=2)
    u = scale_for(120, 80)
    with Image.open(path) as im:
        assert im.width == 120 * u and im.height > 80 * u
    colours = _colours(path)
    assert {PILLAR, COLLECTOR, SURVIVOR} <= colours and ANCHOR not in colours
    unknown = draw_tokens(image, tmp_path / "u.png", grid, cfg, anchors, [20], None)
    colours = _colours(unknown)
    assert {ANCHOR, SURVIVOR} <= colours and PILLAR not in colours
    unpruned = draw_tokens(image, tmp_path / "n.png", grid, cfg, list(range(64)))  # nothing to outline
    assert not {ANCHOR, PILLAR, COLLECTOR, SURVIVOR} & _colours(unpruned)
    assert not list(tmp_path.glob(".*.tmp"))


def test_reference_pillars_are_the_one_hot_rows_of_the_swarm(loaded_demo):
    from nuwa_export.pruning import aggregation_weights
    from nuwa_export.runtime.runner import open_runner

    parts = loaded_demo.parts
    ref = open_runner(loaded_demo)
    pixels = ref.pixel_values(Image.new("RGB", (200, 120), (30, 120, 200)))
    vision = ref.vision(pixels)
    signals = parts.vision_signals(pixels)
    with torch.inference_mode():
        weights = aggregation_weights(signals.sim, signals.cls_attention, vision.indices, parts.grid)
    pillars = vision.pillars[0]
    assert pillars.shape == vision.indices[0].shape and 0 < int(pillars.sum()) < len(pillars)
    nonzero = (weights[0] != 0).sum(dim=1)
    assert bool((nonzero[pillars] == 1).all()) and bool((nonzero[~pillars] > 1).any())


def test_nuwa_run_show_tokens_ort_and_torch(demo_export, tmp_path, capsys):
    for backend, colour in (("ort", ANCHOR), ("torch", PILLAR)):
        out = tmp_path / f"{backend}.png"
        code = run_main([str(demo_export), "--prompt", "Hi", "--max-new-tokens", "2", "--json", "--backend", backend, "--show-tokens", str(out)])
        data = json.loads(capsys.readouterr().out)
        assert code == 0 and data["tokens_drawn"] == str(out)
        colours = _colours(out)
        assert colour in colours and SURVIVOR in colours


@pytest.mark.parametrize("name", ["no/such/dir/x.png", "x.notanimage"])
def test_show_tokens_bad_path_is_one_line_before_any_work(demo_export, tmp_path, capsys, name):
    code = run_main([str(demo_export), "--prompt", "Hi", "--show-tokens", str(tmp_path / name)])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("nuwa-run: error: ") and err.count("\n") == 1
