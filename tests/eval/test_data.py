"""Readers: VLM-R1 RefCOCO JSON, tiny parquets in the lmms-lab schemas, and one-line refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from nuwa_export.errors import NuwaError
from nuwa_export.eval import data as evaldata
from nuwa_export.eval.tasks import get_task

from .conftest import png_bytes, refcoco_rows, write_parquet


def test_vlm_r1_json(refcoco_json):
    d = evaldata.load(get_task("refcoco"), refcoco_json)
    anns = json.loads(refcoco_json.read_text())
    assert len(d) == 10
    for i, a in enumerate(anns):
        s = d.samples[i]
        assert s.text == a["normal_caption"] and s.truth == tuple(a["solution"]) and d.size(i) == (a["width"], a["height"])
    d.check_images(range(10))
    assert d.image(2).size == (640, 425)


def test_lmms_lab_refcoco_parquet_matches_the_json(refcoco_json, tmp_path):
    """Built in the lmms-lab schema (images embedded, [x, y, w, h] boxes, expressions exploded)."""
    rows = refcoco_rows(refcoco_json)
    assert len(rows) == 4  # four objects, ten expressions
    path = write_parquet(tmp_path / "test-00000-of-00001.parquet", rows, row_group_size=1)
    d = evaldata.load(get_task("refcoco"), path)
    j = evaldata.load(get_task("refcoco"), refcoco_json)
    assert len(d) == 10
    for i in range(10):
        assert d.samples[i].text == j.samples[i].text
        assert d.samples[i].truth == pytest.approx(j.samples[i].truth)
        assert d.size(i) == j.size(i)  # read from the embedded image
    assert d.samples[0].id == "q0" and d.samples[9].id == "q3"


def test_a_folder_of_shards_is_one_split(refcoco_json, tmp_path):
    rows = refcoco_rows(refcoco_json)
    write_parquet(tmp_path / "data" / "test-00000-of-00002.parquet", rows[:2])
    write_parquet(tmp_path / "data" / "test-00001-of-00002.parquet", rows[2:])
    d = evaldata.load(get_task("refcocog"), tmp_path / "data")
    assert len(d) == 10 and d.image(9).size == (640, 425)
    write_parquet(tmp_path / "data" / "val-00000-of-00001.parquet", rows[:1])
    with pytest.raises(NuwaError, match=r"several splits \(test, val\); pass one"):
        evaldata.load(get_task("refcoco"), tmp_path / "data")
    assert len(evaldata.load(get_task("refcoco"), str(tmp_path / "data" / "test-*.parquet"))) == 10


def _pope_rows(n=4):
    return [
        {"id": str(i), "question_id": str(100 + i), "question": f"Is there a thing {i}?", "answer": "yes" if i % 2 else "no",
         "image_source": f"COCO_val2014_{i}", "image": {"bytes": png_bytes(colour=(i, 0, 0)), "path": None}, "category": "adversarial"}
        for i in range(n)
    ]


def test_pope_parquet(tmp_path):
    d = evaldata.load(get_task("pope"), write_parquet(tmp_path / "pope.parquet", _pope_rows()))
    assert [s.truth for s in d.samples] == ["no", "yes", "no", "yes"] and d.samples[1].id == "101"
    assert d.image(3).getpixel((0, 0)) == (3, 0, 0)


def test_pope_refuses_an_answer_that_is_not_yes_or_no(tmp_path):
    rows = _pope_rows()
    rows[2]["answer"] = "maybe"
    with pytest.raises(NuwaError, match="pope row 2: the answer must be yes or no"):
        evaldata.load(get_task("pope"), write_parquet(tmp_path / "pope.parquet", rows))


def test_textvqa_parquet(tmp_path):
    rows = [{"image_id": "a", "question_id": 7, "question": "what is written?", "answers": ["stop"] * 10,
             "image": {"bytes": png_bytes(), "path": "a.jpg"}}]
    d = evaldata.load(get_task("textvqa"), write_parquet(tmp_path / "tv.parquet", rows))
    assert d.samples[0].truth == ["stop"] * 10 and d.samples[0].id == "7"
    rows[0]["answers"] = []
    with pytest.raises(NuwaError, match="no human answers"):
        evaldata.load(get_task("textvqa"), write_parquet(tmp_path / "tv2.parquet", rows))


def _gqa(tmp_path):
    q = [{"id": f"q{i}", "imageId": f"n{i % 2}", "question": "What colour?", "answer": "red", "fullAnswer": "It is red."} for i in range(3)]
    return write_parquet(tmp_path / "testdev_balanced_instructions" / "testdev-00000-of-00001.parquet", q)


def test_gqa_images_from_the_images_parquet_or_a_folder(tmp_path):
    questions = _gqa(tmp_path)
    images = [{"id": f"n{i}", "image": {"bytes": png_bytes(colour=(0, 9 * i, 0)), "path": None}} for i in range(2)]
    img_dir = tmp_path / "testdev_balanced_images"
    write_parquet(img_dir / "testdev-00000-of-00001.parquet", images)
    d = evaldata.load(get_task("gqa"), questions, img_dir)
    assert d.samples[2].id == "q2" and d.image(1).getpixel((0, 0)) == (0, 9, 0)
    folder = tmp_path / "jpgs"
    folder.mkdir()
    (folder / "n0.png").write_bytes(png_bytes(colour=(1, 2, 3)))
    d = evaldata.load(get_task("gqa"), questions, folder)
    assert d.image(0).getpixel((0, 0)) == (1, 2, 3)
    with pytest.raises(NuwaError, match=r"1 image file\(s\) missing, e.g. .*n1.jpg; pass --images"):
        d.check_images(range(3))
    with pytest.raises(NuwaError, match="images live apart from the questions; pass --images"):
        evaldata.load(get_task("gqa"), questions)
    write_parquet(img_dir / "testdev-00000-of-00001.parquet", images[:1])
    with pytest.raises(NuwaError, match="1 GQA image id.* not in"):
        evaldata.load(get_task("gqa"), questions, img_dir)


def test_column_mismatch_is_one_clear_line(tmp_path):
    pope = write_parquet(tmp_path / "pope.parquet", _pope_rows())
    with pytest.raises(NuwaError) as e:
        evaldata.load(get_task("refcoco"), pope)
    msg = str(e.value)
    assert "needs column(s) bbox" in msg and "question_id" in msg and "right task" in msg and "\n" not in msg
    with pytest.raises(NuwaError, match="needs column.* answers"):
        evaldata.load(get_task("textvqa"), pope)


_GOOD = {"image": "a.png", "normal_caption": "the red thing", "solution": [2, 3, 30, 40], "width": 64, "height": 48}


def _entry(**changes) -> str:
    return json.dumps([{**_GOOD, **changes}])


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("[{\"image\": \"a.jpg\"", "not valid JSON"),
        ("[" * 200_000 + "]" * 200_000, r"refcoco.json is not valid JSON \(nested too deeply\)"),
        ('[{"image": "a.png", "normal_caption": "x", "solution": [1, 2, 3, ' + "9" * 5000 + "]}]", r"refcoco.json is not valid JSON \(a number with too many digits\)"),
        (_entry(width="wide"), r"entry 0: width must be a positive whole number of pixels, got 'wide'"),
        (_entry(width=None), r"entry 0: width must be a positive whole number of pixels, got None"),
        (_entry(width=-64, height=-48), r"entry 0: width must be a positive whole number of pixels, got -64"),
        (_entry(height=0), r"entry 0: height must be a positive whole number of pixels, got 0"),
        (_entry(width=64.5), r"entry 0: width must be a positive whole number"),
        (_entry(width=True), r"entry 0: width must be a positive whole number"),
        (json.dumps([{k: v for k, v in _GOOD.items() if k != "height"}]), "entry 0: has width but no height; give both or neither"),
        (_entry(image=123), r"entry 0: image must be a file name \(a path under --images\), got 123"),
        (_entry(image=["a.png"]), r"entry 0: image must be a file name .*got \['a.png'\]"),
        (_entry(image=""), "entry 0: image must be a file name"),
        (_entry(image="a\u0000.png"), "entry 0: image must be a file name"),
        ('[{"image": "a.png", "normal_caption": "x", "solution": [NaN, 2, 30, 40]}]', r"entry 0: solution must be \[x1, y1, x2, y2\] pixels, finite numbers; got \[nan, 2, 30, 40\]"),
        ('[{"image": "a.png", "normal_caption": "x", "solution": [1, 2, Infinity, 40]}]', "entry 0: solution .* finite numbers"),
        ('[{"image": "a.png", "normal_caption": "x", "solution": [1, 2, 3, 1' + "0" * 400 + "]}]", "entry 0: solution .* finite numbers"),
        (_entry(solution=[30, 3, 2, 40]), r"entry 0: solution \[30, 3, 2, 40\] has no area"),
        (_entry(solution=[2, 3, 2, 40]), r"entry 0: solution .* has no area"),
        (_entry(solution=[True, 3, 20, 40]), r"entry 0: solution must be \[x1, y1, x2, y2\] pixels"),
        (_entry(solution=["1", "2", "3", "4"]), r"entry 0: solution must be \[x1, y1, x2, y2\] pixels"),
        (_entry(normal_caption="the <image> thing"), r"entry 0: the expression 'the <image> thing' contains <image>"),
        (_entry(normal_caption="  "), "entry 0: normal_caption is empty"),
        (_entry(normal_caption=5), "entry 0: normal_caption must be text, got 5"),
        ('[{"image": "a.png", "normal_caption": "x \\ud800", "solution": [1, 2, 3, 4]}]', "entry 0: normal_caption is not valid UTF-8 text"),
        ('{"image": "a.jpg"}', "expected a list"),
        ('[{"image": "a.jpg", "normal_caption": "x"}]', "entry 0: needs image, normal_caption and solution"),
        ('[{"image": "a.jpg", "normal_caption": "x", "solution": [1, 2]}]', r"entry 0: solution must be \[x1, y1, x2, y2\]"),
    ],
)
def test_bad_json_is_refused(tmp_path, content, match):
    f = tmp_path / "refcoco.json"
    f.write_text(content)
    with pytest.raises(NuwaError, match=match) as e:
        evaldata.load(get_task("refcoco"), f)
    assert "\n" not in str(e.value) and len(str(e.value)) < 400


def test_annotations_that_are_fine(tmp_path):
    f = tmp_path / "refcoco.json"
    f.write_text(json.dumps([{**_GOOD, "width": 64.0, "height": 48.0}, {k: v for k, v in _GOOD.items() if k not in ("width", "height")}]))
    d = evaldata.load(get_task("refcoco"), f)
    assert d.samples[0].size == (64, 48) and d.samples[1].size is None
    assert d.samples[0].truth == (2.0, 3.0, 30.0, 40.0)


def test_bad_jsonl_lines_are_refused(tmp_path):
    f = tmp_path / "refcoco.jsonl"
    f.write_text(json.dumps(_GOOD) + "\n" + "[" * 200_000 + "]" * 200_000 + "\n")
    with pytest.raises(NuwaError, match=r"refcoco.jsonl line 2 is not valid JSON \(nested too deeply\)"):
        evaldata.load(get_task("refcoco"), f)
    f.write_bytes(json.dumps(_GOOD).encode() + b"\n{\"image\": \"\xff\"}\n")
    with pytest.raises(NuwaError, match=r"refcoco.jsonl is not UTF-8 text"):
        evaldata.load(get_task("refcoco"), f)


def test_jsonl_lines_end_at_newlines_only(tmp_path):
    """JSON strings may hold U+2028 and U+0085 raw; str.splitlines() would break a line there."""
    f = tmp_path / "refcoco.jsonl"
    f.write_text(json.dumps({**_GOOD, "normal_caption": "left\u2028man\x85here"}, ensure_ascii=False) + "\r\n", encoding="utf-8")
    d = evaldata.load(get_task("refcoco"), f)
    assert len(d) == 1 and d.samples[0].text == "left\u2028man\x85here"


def test_jsonl_with_a_malformed_line(refcoco_json, tmp_path):
    anns = json.loads(refcoco_json.read_text())
    f = tmp_path / "refcoco.jsonl"
    f.write_text(json.dumps(anns[0]) + "\n" + json.dumps(anns[1]) + "\n")
    d = evaldata.load(get_task("refcoco"), f, refcoco_json.parent)
    assert len(d) == 2 and d.samples[1].text == "left black shirt"
    d.check_images(range(2))
    f.write_text(json.dumps(anns[0]) + "\n\n" + '{"image": "x.jpg", "normal_caption": \n')
    with pytest.raises(NuwaError, match=r"refcoco.jsonl line 3 is not valid JSON"):
        evaldata.load(get_task("refcoco"), f)


def test_json_is_for_grounding_only(refcoco_json):
    with pytest.raises(NuwaError, match="JSON data .* is for the refcoco tasks"):
        evaldata.load(get_task("gqa"), refcoco_json)


def test_missing_images_and_wrong_sizes(refcoco_json, tmp_path):
    shutil.copy(refcoco_json, tmp_path / "refcoco.json")
    d = evaldata.load(get_task("refcoco"), tmp_path / "refcoco.json")
    with pytest.raises(NuwaError, match=r"2 image file\(s\) missing, e.g. .*COCO_train2014_000000580668.jpg"):
        d.check_images(range(10))
    other = tmp_path / "imgs" / "train2014"
    other.mkdir(parents=True)
    for name in ("COCO_train2014_000000580668.jpg", "COCO_train2014_000000581282.jpg"):
        (other / name).write_bytes(png_bytes((50, 40)))
    d = evaldata.load(get_task("refcoco"), tmp_path / "refcoco.json", tmp_path / "imgs")
    # found from the headers, before anything runs
    with pytest.raises(NuwaError, match=r"^sample 0 \(.*581282.jpg\) is 50x40 but its annotation says 640x480: wrong --images"):
        d.check_images(range(10))
    with pytest.raises(NuwaError, match="is 50x40 but its annotation says 640x480: wrong --images"):
        d.image(0)


def test_missing_data_paths(tmp_path):
    with pytest.raises(NuwaError, match="data file not found"):
        evaldata.load(get_task("pope"), tmp_path / "nope.parquet")
    with pytest.raises(NuwaError, match="no files match"):
        evaldata.load(get_task("pope"), str(tmp_path / "x-*.parquet"))
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(NuwaError, match="cannot read .*junk.parquet as parquet"):
        evaldata.load(get_task("pope"), tmp_path / "junk.parquet")


def _refcoco_parquet(tmp_path, **row):
    base = {"question_id": "q0", "image": {"bytes": png_bytes(), "path": "a.png"}, "answer": ["the red thing"], "bbox": [2.0, 3.0, 20.0, 20.0]}
    return write_parquet(tmp_path / "test-00000-of-00001.parquet", [{**base, **row}])


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ({"bbox": [float("nan"), 3.0, 20.0, 20.0]}, r"refcoco row 0: bbox must be \[x, y, w, h\] pixels, finite numbers; got \[nan"),
        ({"bbox": [2.0, 3.0, float("inf"), 20.0]}, "refcoco row 0: bbox .* finite numbers"),
        ({"bbox": [2.0, 3.0, 0.0, 20.0]}, r"refcoco row 0: bbox \[2.0, 3.0, 0.0, 20.0\] has no area"),
        ({"bbox": [2.0, 3.0, 20.0, -5.0]}, "refcoco row 0: bbox .* has no area"),
        ({"bbox": None}, r"refcoco row 0: bbox must be \[x, y, w, h\] pixels, got None"),
        ({"answer": ["fine", "the <image> thing"]}, r"refcoco row 0 \(sample 1\): the expression 'the <image> thing' contains <image>"),
        ({"answer": ["fine", ""]}, r"refcoco row 0 \(sample 1\): answer\[1\] is empty"),
        ({"answer": [None]}, r"refcoco row 0 \(sample 0\): answer\[0\] must be text, got None"),
    ],
)
def test_bad_refcoco_parquet_rows(tmp_path, row, match):
    with pytest.raises(NuwaError, match=match):
        evaldata.load(get_task("refcoco"), _refcoco_parquet(tmp_path, **row))


def test_a_vqa_question_with_an_image_token(tmp_path):
    rows = _pope_rows()
    rows[1]["question"] = "<image>\nIs there a dog?"
    with pytest.raises(NuwaError, match=r"pope row 1: the question '<image>\\nIs there a dog\?' contains <image>"):
        evaldata.load(get_task("pope"), write_parquet(tmp_path / "pope.parquet", rows))


def _json_data(tmp_path, images: dict, entries: list) -> Path:
    for name, data in images.items():
        (tmp_path / name).write_bytes(data)
    f = tmp_path / "refcoco.json"
    f.write_text(json.dumps(entries))
    return f


def test_image_headers_are_checked_before_anything_runs(tmp_path):
    import struct
    import zlib

    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")
    f = _json_data(tmp_path, {"a.png": png_bytes(), "bomb.png": bomb, "text.png": b"not an image"},
                   [_GOOD, {**_GOOD, "image": "bomb.png", "width": 30000, "height": 30000}, {**_GOOD, "image": "text.png"}])
    d = evaldata.load(get_task("refcoco"), f)
    d.check_images([0])
    with pytest.raises(NuwaError, match=r"^sample 1 \(.*bomb.png\) is 30000x30000 pixels, more than the 144 megapixels accepted"):
        d.check_images([0, 1])
    with pytest.raises(NuwaError, match=r"^cannot read sample 2 \(.*text.png\) as an image \(not a format Pillow knows\)"):
        d.check_images([0, 2])
    truncated = png_bytes()[:60]  # the header is whole: only decoding the pixels finds it
    f = _json_data(tmp_path, {"t.png": truncated}, [{**_GOOD, "image": "t.png"}])
    d = evaldata.load(get_task("refcoco"), f)
    d.check_images([0])
    with pytest.raises(NuwaError, match=r"^cannot read sample 0 \(.*t.png\) as an image \(OSError: image file is truncated"):
        d.image(0)


def test_parquet_image_headers_are_checked_and_sizes_come_from_them(tmp_path):
    rows = _pope_rows(3)
    rows[2]["image"] = {"bytes": b"not an image at all", "path": "x.png"}
    d = evaldata.load(get_task("pope"), write_parquet(tmp_path / "pope.parquet", rows, row_group_size=2))
    d.check_images([0, 1])
    assert d.size(1) == (64, 48)
    with pytest.raises(NuwaError, match=r"^cannot read sample 2 \(pope.parquet row 0\) as an image \(not a format Pillow knows\)"):
        d.check_images([0, 1, 2])
    rows = _pope_rows(1)
    rows[0]["image"] = {"bytes": png_bytes()[:60], "path": None}
    d = evaldata.load(get_task("pope"), write_parquet(tmp_path / "pope2.parquet", rows))
    assert d.size(0) == (64, 48)  # from the header: scoring never decodes pixels


@pytest.mark.parametrize("flag", ["data", "images"])
def test_paths_that_cannot_be_used(tmp_path, refcoco_json, flag):
    args = {"data": refcoco_json, "images": None}
    for bad, match in (("~nosuchuser-nuwa/x.json", f"--{flag} ~nosuchuser-nuwa/x.json: cannot expand ~"),
                       (str(tmp_path / ("n" * 300 + ".json")), r"^cannot read .*nnnn.json \(File name too long\)$")):
        with pytest.raises(NuwaError, match=match):
            evaldata.load(get_task("refcoco"), **{**args, flag: bad})
