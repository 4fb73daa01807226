"""``nuwa-run EXPORT --requests FILE.jsonl``: batches give every request's own answer; a bad line
is refused with its line number before any work starts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from nuwa_export.tools.run import main as run_main
from tests.helpers import assert_one_line


def _run(capsys, *argv):
    code = run_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def requests_file(tmp_path):
    from nuwa_export.models.demo import example_picture

    example_picture().save(tmp_path / "street.png")
    (tmp_path / "img").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 200, 3), dtype=np.uint8)).save(tmp_path / "img" / "noise.jpg")
    lines = [
        {"image": "street.png", "prompt": "What is in the picture?"},
        {"image": "img/noise.jpg", "prompt": "Describe the colours of this picture in a few long words, please.", "temperature": 0.8, "seed": 3, "max_new_tokens": 5},
        {"image": str(tmp_path / "img" / "noise.jpg"), "ground": "the red thing", "max_new_tokens": 9},
        {"image": "street.png", "prompt": "Hi", "temperature": 1.0, "top_p": 0.9, "seed": 7},
    ]
    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines[:2]) + "\n\n" + "\n".join(json.dumps(x) for x in lines[2:]) + "\n")
    return path


def test_batch_of_three_and_batch_of_one_agree(capsys, demo_export, requests_file):
    outs = {}
    for size in (3, 1):
        code, out, err = _run(capsys, demo_export, "--requests", requests_file, "--batch-size", size, "--json", "--max-new-tokens", 7)
        assert code == 0, err
        outs[size] = [json.loads(line) for line in out.splitlines()]
    assert len(outs[3]) == len(outs[1]) == 4
    for a, b in zip(outs[3], outs[1]):
        assert a["generated_ids"] == b["generated_ids"] and a["stage_two_indices"] == b["stage_two_indices"]
        assert set(a) >= {"backend", "input_ids", "generated_ids", "text", "stage_one_indices", "stage_two_indices", "budgets", "timings_ms", "kv_cache_bytes"}
    lengths = [len(r["generated_ids"]) for r in outs[3]]
    assert lengths[1] <= 5 and lengths[2] <= 9 and lengths[0] <= 7  # per-line limits, the flag as default
    assert outs[3][2]["ground"] == "the red thing" and "box" in outs[3][2]
    # the same answers as single requests with --image/--prompt
    code, out, _ = _run(capsys, demo_export, "--image", requests_file.parent / "street.png", "--prompt", "What is in the picture?", "--json", "--max-new-tokens", 7)
    assert code == 0 and json.loads(out)["generated_ids"] == outs[3][0]["generated_ids"]


def test_text_output_names_lines_and_summarises(capsys, demo_export, requests_file):
    code, out, err = _run(capsys, demo_export, "--requests", requests_file, "--max-new-tokens", 3)
    assert code == 0
    assert [line.split("]")[0] for line in out.splitlines() if not line.startswith("[4] box")] == ["[1", "[2", "[4", "[5"]
    assert "tokens/s" in err and "batches" in err


BAD = [
    ('{"image": "street.png"}', "line 2: no \"prompt\""),
    ('{"prompt": "hi"}', "line 2: no \"image\""),
    ('{"image": "nope.png", "prompt": "hi"}', "line 2: no image file"),
    ('{"image": "street.png", "prompt": "hi", "colour": 1}', "line 2: unknown key 'colour'"),
    ('{"image": "street.png", "prompt": "hi", "temperature": -1}', "line 2: temperature must be a finite number >= 0"),
    ('{"image": "street.png", "prompt": "hi", "max_new_tokens": "5"}', "line 2: max_new_tokens must be an integer"),
    ('{"image": "street.png", "prompt": "hi", "top_p": 2}', "line 2: top_p must be in (0, 1]"),
    ('{"image": "street.png", "prompt": "hi", "seed": -3}', "line 2: seed must be between 0 and 2**64 - 1"),
    ('{"image": "street.png", "prompt": "hi", "ground": "x"}', "line 2: give \"prompt\" or \"ground\", not both"),
    ('["street.png", "hi"]', "line 2: expected a JSON object"),
    ('{"image": "street.png", "prompt": "hi"', "line 2 is not valid JSON"),
    ('{"image": "street.png", "prompt": "' + "word " * 3000 + '"}', "line 2: prompt ("),
    ('{"image": "street.png", "prompt": "hi", "max_new_tokens": 5000}', "line 2: "),
]


@pytest.mark.parametrize("line,match", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_line_is_refused_with_its_number_before_any_work(capsys, demo_export, tmp_path, line, match, monkeypatch):
    from nuwa_export.models.demo import example_picture
    from nuwa_export.runtime import pipeline

    example_picture().save(tmp_path / "street.png")
    path = tmp_path / "r.jsonl"
    path.write_text('{"image": "street.png", "prompt": "fine"}\n' + line + "\n")
    ran = []
    monkeypatch.setattr(pipeline.Pipeline, "generate_batch", lambda *a, **k: ran.append(1))
    code, out, err = _run(capsys, demo_export, "--requests", path, "--json")
    assert_one_line("nuwa-run", code, err, match)
    assert f"{path} line 2" in err and out == "" and not ran


@pytest.mark.parametrize(
    "args,match",
    [
        (["--image", "x.png"], "--image describes one request; with --requests each line of the file gives its own"),
        (["--stream"], "--stream describes one request"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--batch-size", "9"], "--batch-size 9 is beyond this export's max_batch 8; re-export with --max-batch 9"),
    ],
)
def test_bad_flags_with_requests(capsys, demo_export, requests_file, args, match):
    code, out, err = _run(capsys, demo_export, "--requests", requests_file, *args)
    assert_one_line("nuwa-run", code, err, match)
    assert out == ""


def test_batch_size_needs_requests(capsys, demo_export):
    code, _, err = _run(capsys, demo_export, "--prompt", "hi", "--batch-size", "2")
    assert_one_line("nuwa-run", code, err, "--batch-size needs --requests FILE")


def test_empty_and_unreadable_files(capsys, demo_export, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    code, _, err = _run(capsys, demo_export, "--requests", empty)
    assert_one_line("nuwa-run", code, err, "holds no requests")
    code, _, err = _run(capsys, demo_export, "--requests", tmp_path / "missing.jsonl")
    assert_one_line("nuwa-run", code, err, "cannot read --requests")
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(b"\xff\xfe{}")
    code, _, err = _run(capsys, demo_export, "--requests", binary)
    assert_one_line("nuwa-run", code, err, "is not UTF-8 text")


def test_requests_on_the_pytorch_reference(capsys, demo_export, requests_file):
    code, out, err = _run(capsys, demo_export, "--requests", requests_file, "--backend", "torch", "--json", "--max-new-tokens", 4, "--batch-size", 2)
    assert code == 0, err
    ort_code, ort_out, _ = _run(capsys, demo_export, "--requests", requests_file, "--json", "--max-new-tokens", 4)
    assert [json.loads(x)["generated_ids"] for x in out.splitlines()] == [json.loads(x)["generated_ids"] for x in ort_out.splitlines()]
