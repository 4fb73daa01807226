"""Readers: VLM-R1 RefCOCO JSON, tiny parquets in the lmms-lab schemas, and one-line refusals."""

from __future__ import annotations

import json
import shutil

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


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("[{\"image\": \"a.jpg\"", "not valid JSON"),
        ('{"image": "a.jpg"}', "expected a list"),
        ('[{"image": "a.jpg", "normal_caption": "x"}]', "entry 0: needs image, normal_caption and solution"),
        ('[{"image": "a.jpg", "normal_caption": "x", "solution": [1, 2]}]', r"entry 0: solution must be \[x1, y1, x2, y2\]"),
    ],
)
def test_bad_json_is_refused(tmp_path, content, match):
    f = tmp_path / "refcoco.json"
    f.write_text(content)
    with pytest.raises(NuwaError, match=match):
        evaldata.load(get_task("refcoco"), f)


def test_jsonl_with_a_malformed_line(refcoco_json, tmp_path):
    anns = json.loads(refcoco_json.read_text())
    f = tmp_path / "refcoco.jsonl"
    f.write_text(json.dumps(anns[0]) + "\n" + json.dumps(anns[1]) + "\n")
    d = evaldata.load(get_task("refcoco"), f, refcoco_json.parent)
    assert len(d) == 2 and d.samples[1].text == "left black shirt"
    d.check_images(range(2))
    f.write_text(json.dumps(anns[0]) + "\n\n" + '{"image": "x.jpg", "normal_caption": \n')
    with pytest.raises(NuwaError, match=r"refcoco.jsonl line 3: not valid JSON"):
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
