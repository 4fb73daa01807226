"""Calibration sets (calib/*.jsonl): the default set loads without downloads; bad sets are one line."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from nuwa_export.errors import NuwaError
from nuwa_export.quant import calib


def test_default_set_needs_no_download():
    s = calib.load_set("default")
    assert s.name == "default" and len(s.entries) == 8 and len(s.sha256) == 64
    assert {e.image.split(":")[0] for e in s.entries} == {"builtin"}
    assert any(e.ground for e in s.entries) and any(e.prompt for e in s.entries)
    pictures = [e.load() for e in s.entries]
    assert {p.size for p in pictures} >= {(320, 240)}
    assert calib.builtin_image("scene-3").tobytes() == calib.builtin_image("scene-3").tobytes()  # seeded
    assert calib.builtin_image("scene-3").tobytes() != calib.builtin_image("scene-4").tobytes()


def test_ground_entries_use_each_family_wording():
    from nuwa_export.models.families import family_named

    e = calib.Entry("builtin:example", ground="the red car")
    assert e.question(family_named("llava")) != e.question(family_named("qwen2_5_vl"))
    assert "the red car" in e.question(family_named("llava")) and "the red car" in e.question(family_named("qwen2_5_vl"))


def test_own_images_relative_to_the_set_and_hashed(tmp_path):
    Image.new("RGB", (64, 48), (10, 20, 30)).save(tmp_path / "a.png")
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"image": "a.png", "prompt": "What is this?"}) + "\n# a comment\n\n")
    first = calib.load_set(str(path))
    assert first.entries[0].image == str((tmp_path / "a.png").resolve()) and first.entries[0].load().size == (64, 48)
    Image.new("RGB", (64, 48), (10, 20, 31)).save(tmp_path / "a.png")
    assert calib.load_set(str(path)).sha256 != first.sha256  # the images are part of the set's identity


@pytest.mark.parametrize(
    "line, message",
    [
        ("{", "mine.jsonl line 1 is not valid JSON"),
        ('["a"]', "mine.jsonl line 1: expected a JSON object"),
        ('{"image": "builtin:example", "prompt": "x", "answer": "y"}', "unknown key 'answer'"),
        ('{"image": "builtin:example", "prompt": "x", "ground": "y"}', 'give "prompt" or "ground", not both'),
        ('{"image": "builtin:example"}', 'no "prompt" (or "ground")'),
        ('{"image": "builtin:example", "prompt": " "}', "prompt must be non-empty text"),
        ('{"image": "nope.png", "prompt": "x"}', "line 1: no image file"),
        ('{"image": "mine.jsonl", "prompt": "x"}', "line 1: "),  # not a picture: its header is checked up front
        ('{"image": "builtin:moon", "prompt": "x"}', "line 1: unknown built-in picture 'builtin:moon'"),
        ("", "holds no requests"),
    ],
)
def test_bad_sets_are_one_line(tmp_path, line, message):
    path = tmp_path / "mine.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(NuwaError) as e:
        calib.load_set(str(path))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_byte_order_mark_and_comments_are_fine(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes("\ufeff# my set\n".encode() + json.dumps({"image": "builtin:example", "prompt": "x"}).encode() + b"\n")
    assert len(calib.load_set(str(path)).entries) == 1


def test_unknown_set_name_lists_the_sets():
    with pytest.raises(NuwaError, match="no calibration set named 'nope' .*default"):
        calib.load_set("nope")


def test_a_refcoco_set_built_as_calib_readme_says_quantizes_the_demo(demo_export, tmp_path):
    """The recipe in calib/README.md, run on the RefCOCO sample beside the clone (real COCO pictures)."""
    import re
    import textwrap
    from pathlib import Path

    sample = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "refcoco-sample"
    if not (sample / "refcoco.json").is_file():
        pytest.skip(f"RefCOCO sample not found at {sample}")
    readme = (Path(__file__).resolve().parents[2] / "calib" / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    snippet = textwrap.dedent(snippet)
    out = tmp_path / "refcoco.jsonl"
    snippet = snippet.replace("refcoco_testA.json", str(sample / "refcoco.json")).replace("/data/coco/", f"{sample}/").replace("calib/refcoco.jsonl", str(out))
    exec(snippet, {})
    s = calib.load_set(str(out))
    assert s.name == "refcoco" and len(s.entries) == 10 and all(e.ground for e in s.entries)

    pytest.importorskip("modelopt.onnx.quantization", reason="nvidia-modelopt not installed (pip install -e '.[quantize]')")
    from nuwa_export.quant.quantize import quantize

    m = quantize(demo_export, tmp_path / "q", "int8", calib=str(out), progress=False)
    assert m.quantization.calibration["set"] == "refcoco" and m.quantization.calibration["sha256"] == s.sha256
    assert all(c["ok"] for c in m.validation["quantized"]["checks"])
