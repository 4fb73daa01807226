"""``nuwa-eval`` end to end on the 10 RefCOCO samples with the demo checkpoint and its export.

The demo's answers are nonsense (random weights), so these check the run, the files, resuming
after an interruption, the cached baseline and the retention report, not accuracy.
"""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from nuwa_export.eval import runner
from nuwa_export.tools.eval import main as eval_main

from .conftest import refcoco_rows, write_parquet


def _run(capsys, *argv):
    code = eval_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code, err, match):
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("nuwa-eval: error: "), err
    assert match in lines[0], lines[0]


@pytest.fixture
def calls(monkeypatch):
    """Counts the model's answers; ``calls.stop_at = k`` raises Ctrl-C at the k-th (1-based)."""

    class Calls(list):
        stop_at = None

    seen = Calls()
    real = runner.answer_batch

    def counting(model, samples, sampling):
        for _, prompt in samples:
            seen.append(prompt)
            if seen.stop_at == len(seen):
                raise KeyboardInterrupt
        return real(model, samples, sampling)

    monkeypatch.setattr(runner, "answer_batch", counting)
    return seen


def _lines(path):
    return [json.loads(ln) for ln in path.read_text().splitlines()]


@pytest.mark.slow
def test_checkpoint_run_resumes_and_reports_retention(capsys, tmp_path, monkeypatch, calls, demo_dir, refcoco_json):
    monkeypatch.setenv("NUWA_EXPORT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    argv = ["refcoco", demo_dir, "--data", refcoco_json, "--keep", "16", "28", "--max-new-tokens", "3", "--out", out, "--limit", "4"]

    calls.stop_at = 3  # Ctrl-C during the third sample of keep16
    code, _, err = _run(capsys, *argv)
    assert code == 130 and "keep16: 2 of 4 samples saved" in err and "run the same command again to resume" in err
    preds = out / "predictions" / "keep16.jsonl"
    assert [r["index"] for r in _lines(preds)] == [0, 1]
    assert not (out / "summary.json").exists()  # a partial run leaves no summary
    with open(preds, "a") as f:
        f.write('{"index": 2, "answ')  # a line torn by a kill mid-write

    calls.clear()
    calls.stop_at = None
    code, stdout, err = _run(capsys, *argv)
    assert code == 0, err
    assert len(calls) == 2 + 4 + 4  # the rest of keep16, then keep28 and the unpruned baseline
    assert "box convention: lmms-eval" in stdout and "box convention: lmms-eval" in err
    assert [r["index"] for r in _lines(preds)] == [0, 1, 2, 3]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["box_convention"] == "lmms-eval" and summary["samples"] == 4
    assert [r["label"] for r in summary["runs"]] == ["keep16", "keep28"]
    assert all(r["complete"] and r["n"] == 4 for r in summary["runs"] + [summary["baseline"]])
    assert summary["baseline"]["budgets"]["prune"] is False
    assert len(_lines(out / "predictions" / "full.jsonl")) == 4
    for label in ("keep16", "keep28"):
        ret = summary["retention"][label]
        assert ret["n"] == 4 and set(ret) == {"n", "acc@0.5", "mean_iou"}
        full = summary["baseline"]["metrics"]["acc@0.5"]
        assert ret["acc@0.5"]["full"] == full and (ret["acc@0.5"]["retention_pct"] is None) == (full == 0)
    for name in ("iou_hist.png", "samples.png", "accuracy_vs_keep.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.width > 100
    assert sorted(summary["figures"]) == sorted(str(out / n) for n in ("iou_hist.png", "samples.png", "accuracy_vs_keep.png"))
    assert "keep16 (28/4)" in (out / "summary.md").read_text()
    assert not [p for p in out.rglob(".*")]  # no temporary files left

    # the scorer agrees with the run on the same predictions (and says the file is partial)
    code, stdout, err = _run(capsys, "score", "--task", "refcoco", "--data", refcoco_json, "--predictions", preds, "--json")
    scored = json.loads(stdout)
    assert code == 0 and scored["metrics"] == summary["runs"][0]["metrics"]
    assert scored["complete"] is False and scored["n_expected"] == 10 and "PARTIAL: 4 of 10" in err

    # a longer run interrupted before it saved an answer leaves the folder as it was (its summary
    # still describes the predictions there); once it has saved one, the old summary is gone
    calls.clear()
    calls.stop_at = 1
    code, _, err = _run(capsys, *argv[:-1], "5")
    assert code == 130, err
    assert json.loads((out / "summary.json").read_text())["samples"] == 4 and len(_lines(preds)) == 4
    calls.clear()
    calls.stop_at = 2  # keep16 answers sample 4, keep28 is interrupted
    code, _, err = _run(capsys, *argv[:-1], "5")
    assert code == 130, err
    assert not (out / "summary.json").exists() and not (out / "samples.png").exists() and len(_lines(preds)) == 5


@pytest.mark.slow
def test_export_run_reuses_the_cached_baseline(capsys, tmp_path, monkeypatch, calls, demo_export, refcoco_json):
    monkeypatch.setenv("NUWA_EXPORT_CACHE", str(tmp_path / "cache"))
    argv = ["refcoco", demo_export, "--data", refcoco_json, "--limit", "2", "--max-new-tokens", "3", "--json", "--box-convention", "padded"]
    code, stdout, err = _run(capsys, *argv, "--out", tmp_path / "a")
    assert code == 0, err
    assert len(calls) == 4  # two samples on ONNX Runtime, two on the unpruned checkpoint
    summary = json.loads(stdout)  # --json: exactly one object
    assert summary["backend"] == "ort" and summary["box_convention"] == "padded" and summary["complete"]
    assert [r["label"] for r in summary["runs"]] == ["keep28"] and summary["runs"][0]["budgets"]["stage_one_keep"] == 49
    assert summary["retention"]["keep28"]["n"] == 2
    assert "box convention: padded" in err

    calls.clear()
    code, stdout, _ = _run(capsys, *argv, "--out", tmp_path / "b")
    assert code == 0 and len(calls) == 2  # the baseline's answers come from the cache
    again = json.loads(stdout)
    assert again["baseline"]["metrics"] == summary["baseline"]["metrics"]
    assert _lines(tmp_path / "b" / "predictions" / "full.jsonl") == _lines(tmp_path / "a" / "predictions" / "full.jsonl")

    code, _, err = _run(capsys, "refcoco", demo_export, "--data", refcoco_json, "--keep", "16", "--out", tmp_path / "c")
    _one_line_error(code, err, "--keep: budgets are fixed when exporting")


@pytest.mark.slow
def test_parquet_run(capsys, tmp_path, refcoco_json, demo_dir):
    data = write_parquet(tmp_path / "test-00000-of-00001.parquet", refcoco_rows(refcoco_json))
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, "refcocog", demo_dir, "--data", data, "--no-prune", "--limit", "2", "--max-new-tokens", "2", "--out", out, "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["complete"] and summary["baseline"] is None and summary["retention"] == {}
    assert [r["label"] for r in summary["runs"]] == ["full"] and len(_lines(out / "predictions" / "full.jsonl")) == 2


def _truth_answers(refcoco_json, convention="lmms-eval"):
    from nuwa_export import boxes
    from nuwa_export.image import ImageConfig

    lines = []
    for i, a in enumerate(json.loads(refcoco_json.read_text())):
        w, h = a["width"], a["height"]
        box = [v / s for v, s in zip(a["solution"], (w, h, w, h))]
        if convention == "padded":
            box = boxes.to_padded(a["solution"], w, h, ImageConfig(size=336))
        lines.append({"index": i, "answer": "[" + ", ".join(f"{v:.4f}" for v in box) + "]"})
    return lines


@pytest.mark.parametrize("convention", ["lmms-eval", "padded"])
def test_score_known_answers_on_json_and_parquet(capsys, tmp_path, refcoco_json, convention):
    preds = tmp_path / "p.jsonl"
    lines = _truth_answers(refcoco_json, convention)
    lines[3]["answer"] = "I cannot tell."  # unparsable: an empty box
    preds.write_text("".join(json.dumps(r) + "\n" for r in lines))
    parquet = write_parquet(tmp_path / "test-00000-of-00001.parquet", refcoco_rows(refcoco_json))
    results = []
    for data in (refcoco_json, parquet):
        code, stdout, _ = _run(capsys, "score", "--task", "refcoco", "--data", data, "--predictions", preds, "--json", "--box-convention", convention)
        assert code == 0
        results.append(json.loads(stdout))
    for r in results:
        m = r["metrics"]
        assert r["complete"] and r["box_convention"] == convention and m["n"] == 10
        assert m["acc@0.5"] == pytest.approx(0.9) and m["mean_iou"] == pytest.approx(0.9, abs=1e-3) and m["parsed"] == 0.9
    assert results[0]["metrics"] == pytest.approx(results[1]["metrics"])
    # the same answers under the other convention are off (the images are not square)
    other = "padded" if convention == "lmms-eval" else "lmms-eval"
    code, stdout, _ = _run(capsys, "score", "--task", "refcoco", "--data", refcoco_json, "--predictions", preds, "--json", "--box-convention", other)
    assert json.loads(stdout)["metrics"]["mean_iou"] < 0.85


def test_score_table_output(capsys, tmp_path, refcoco_json):
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({"index": 0, "answer": "[0, 0, 1, 1]"}) + "\n")
    code, stdout, err = _run(capsys, "score", "--task", "refcoco", "--data", refcoco_json, "--predictions", preds)
    assert code == 0 and "1 of 10 samples, box convention lmms-eval (PARTIAL)" in stdout and "acc@0.5" in stdout
    assert "PARTIAL" in err


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ('{"index": 0, "answer": "x"}\nnot json\n', "p.jsonl line 2 is not valid JSON"),
        ("[" * 100_000 + "]" * 100_000 + "\n", "p.jsonl line 1 is not valid JSON (nested too deeply)"),
        ('{"index": 0, "answer": "x", "tokens": ' + "9" * 5000 + "}\n", "p.jsonl line 1 is not valid JSON (a number with too many digits"),
        ('{"index": 0}\n', 'expected {"index": INT, "answer": TEXT}'),
        ('{"index": "0", "answer": "x"}\n', 'expected {"index": INT'),
        ('{"index": 10, "answer": "x"}\n', "index 10 is outside the data (10 samples, 0 to 9)"),
        ('{"index": 1, "answer": "x"}\n{"index": 1, "answer": "y"}\n', "line 2: index 1 already on line 1"),
        ("", "holds no predictions"),
    ],
)
def test_score_refuses_bad_predictions(capsys, tmp_path, refcoco_json, line, match):
    preds = tmp_path / "p.jsonl"
    preds.write_text(line)
    code, _, err = _run(capsys, "score", "--task", "refcoco", "--data", refcoco_json, "--predictions", preds)
    _one_line_error(code, err, match)


def test_bad_input_is_one_line(capsys, tmp_path, refcoco_json, demo_dir):
    code, _, err = _run(capsys, "vqav2", demo_dir, "--data", refcoco_json)
    _one_line_error(code, err, "unknown task 'vqav2' (choose from refcoco, refcoco+, refcocog, gqa, pope, textvqa)")
    code, _, err = _run(capsys, "score", "--task", "nope", "--data", refcoco_json, "--predictions", tmp_path / "p.jsonl")
    _one_line_error(code, err, "unknown task 'nope'")

    moved = tmp_path / "refcoco.json"
    moved.write_text(refcoco_json.read_text())  # its images stay behind
    code, _, err = _run(capsys, "refcoco", demo_dir, "--data", moved, "--out", tmp_path / "o")
    _one_line_error(code, err, "2 image file(s) missing")
    assert not (tmp_path / "o").exists()

    code, _, err = _run(capsys, "refcoco", demo_dir, "--data", refcoco_json, "--limit", "0")
    _one_line_error(code, err, "--limit must be at least 1")
    code, _, err = _run(capsys, "refcoco", demo_dir, "--data", refcoco_json, "--backend", "ort")
    _one_line_error(code, err, "--backend ort runs an export directory")
    code, _, err = _run(capsys, "refcoco", demo_dir, "--data", refcoco_json, "--keep", "many")
    _one_line_error(code, err, "invalid int value: 'many'")

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    code, _, err = _run(capsys, "refcoco", demo_dir, "--data", refcoco_json, "--out", busy)
    _one_line_error(code, err, "is not empty and holds no nuwa-eval run")
    other = tmp_path / "other"
    other.mkdir()
    (other / "run.json").write_text(json.dumps({"schema_version": 1, "settings": {"task": "gqa"}}))
    code, _, err = _run(capsys, "refcoco", demo_dir, "--data", refcoco_json, "--out", other)
    _one_line_error(code, err, "holds a run with other settings")
    assert "task" in err and "--force" in err


def test_nothing_is_downloaded(capsys, monkeypatch, tmp_path, refcoco_json):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    code, _, err = _run(capsys, "refcoco", "nobody/no-such-llava", "--data", refcoco_json, "--out", tmp_path / "o")
    _one_line_error(code, err, "'nobody/no-such-llava' is not in the Hugging Face cache and HF_HUB_OFFLINE is set")
    import os

    assert "HF_HUB_OFFLINE" not in os.environ  # restored after the command


def test_help_needs_no_torch():
    import subprocess
    import sys

    probe = "import sys\nfrom nuwa_export.tools.eval import main as eval_main, parser as eval_parser, score_parser as eval_score_parser\n" \
        "eval_parser().format_help(); eval_score_parser().format_help()\nprint('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr


def test_samples_figure_draws_true_and_predicted_boxes(tmp_path, refcoco_json):
    import numpy as np

    from nuwa_export.eval import data as evaldata
    from nuwa_export.eval import metrics, report
    from nuwa_export.eval.tasks import get_task

    d = evaldata.load(get_task("refcoco"), refcoco_json)
    answers = {r["index"]: r["answer"] for r in _truth_answers(refcoco_json)[:2]}
    answers[1] = "[0.6, 0.1, 0.9, 0.3]"  # off target: its own red box
    _, rows = metrics.score(d, answers)
    path = report.samples_figure(tmp_path / "samples.png", d, "keep64", rows)
    px = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3).astype(int)
    red = (px[:, 0] > 200) & (px[:, 1] < 40) & (px[:, 2] < 40)
    green = (px[:, 0] < 40) & (px[:, 1] > 200) & (px[:, 2] < 40)
    assert red.sum() > 200 and green.sum() > 200
    assert not list(tmp_path.glob(".*"))


# --- bad input is one line, and nothing is written before the first answer is saved -------------

_ENTRY = {"image": "a.png", "normal_caption": "the red thing", "solution": [2, 3, 30, 40], "width": 64, "height": 48}


def _tiny_data(tmp_path, entries=None, images=None) -> list:
    """VLM-R1 JSON with 64x48 PNGs under tmp/imgs; returns the --data/--images flags."""
    from .conftest import png_bytes

    (tmp_path / "imgs").mkdir(exist_ok=True)
    for name, data in ({"a.png": png_bytes()} | (images or {})).items():
        (tmp_path / "imgs" / name).write_bytes(data)
    (tmp_path / "data.json").write_text(json.dumps([_ENTRY] if entries is None else entries))
    return ["--data", tmp_path / "data.json", "--images", tmp_path / "imgs"]


def _bomb() -> bytes:
    import struct
    import zlib

    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def test_out_that_cannot_be_used(capsys, tmp_path, demo_dir):
    flags = ["refcoco", demo_dir, *_tiny_data(tmp_path), "--no-prune"]
    (tmp_path / "f").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    cases = [
        (tmp_path / "f" / "ev", f"--out {tmp_path / 'f' / 'ev'}: {tmp_path / 'f'} is not a directory"),
        (tmp_path / "f", "exists and is not a directory"),
        (tmp_path / "link", "is a symbolic link; give the directory itself"),
        (tmp_path / ("n" * 300), "File name too long"),
        ("~nosuchuser-nuwa/ev", "cannot expand ~"),
    ]
    for out, match in cases:
        before = sorted(tmp_path.rglob("*"))
        code, _, err = _run(capsys, *flags, "--out", out)
        _one_line_error(code, err, match)
        assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "entries", "images", "match"),
    [
        (["--device", "tpu"], None, None, "unknown --device 'tpu' for the ort backend"),
        (["--backend", "trt"], None, None, "has no engines/; build them first"),
        ([], [dict(_ENTRY, normal_caption="the <image> thing")], None, "data.json entry 0: the expression 'the <image> thing' contains <image>"),
        ([], [dict(_ENTRY, width=640, height=480)], None, "is 64x48 but its annotation says 640x480: wrong --images?"),
        ([], [dict(_ENTRY, width=30000, height=30000)], {"a.png": _bomb()}, "is 30000x30000 pixels, more than the 144 megapixels accepted"),
        ([], None, {"a.png": b"\x89PNG\r\n\x1a\n garbage"}, "cannot read sample 0"),
        ([], [dict(_ENTRY, solution=[float("nan"), 2, 30, 40])], None, "entry 0: solution must be [x1, y1, x2, y2] pixels, finite numbers"),
        ([], [dict(_ENTRY, width=-64, height=-48)], None, "entry 0: width must be a positive whole number of pixels, got -64"),
        # decoding the pixels of the only sample finds it: still nothing written
        ([], None, {"a.png": None}, "cannot read sample 0 ("),
    ],
)
def test_errors_before_the_first_answer_leave_nothing(capsys, tmp_path, demo_export, flags, entries, images, match):
    from .conftest import png_bytes

    if images == {"a.png": None}:
        images = {"a.png": png_bytes()[:60]}  # a whole header, truncated pixels
    data = _tiny_data(tmp_path, entries, images)
    before = sorted(tmp_path.rglob("*"))
    code, _, err = _run(capsys, "refcoco", demo_export, *data, "--no-baseline", "--max-new-tokens", "2", "--out", tmp_path / "ev", *flags)
    _one_line_error(code, err, match)
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.slow
def test_a_broken_tokenizer_is_found_before_anything_is_written(capsys, tmp_path, demo_dir):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(demo_dir, ckpt)
    (ckpt / "tokenizer.json").write_text("garbage")
    data = _tiny_data(tmp_path)
    code, _, err = _run(capsys, "refcoco", ckpt, *data, "--no-baseline", "--max-new-tokens", "2", "--out", tmp_path / "ev")
    _one_line_error(code, err, "cannot load the tokenizer")
    assert not (tmp_path / "ev").exists()


@pytest.mark.slow
def test_a_parquet_image_that_is_not_an_image(capsys, tmp_path, demo_export):
    from .conftest import png_bytes

    rows = [{"question_id": f"q{i}", "image": {"bytes": png_bytes() if i else b"not an image at all", "path": "a.png"},
             "answer": ["the red thing"], "bbox": [2.0, 3.0, 20.0, 20.0]} for i in range(2)]
    data = write_parquet(tmp_path / "d.parquet", rows)
    code, _, err = _run(capsys, "refcoco", demo_export, "--data", data, "--no-baseline", "--out", tmp_path / "ev")
    _one_line_error(code, err, "cannot read sample 0 (d.parquet row 0) as an image (not a format Pillow knows)")
    assert not (tmp_path / "ev").exists()


@pytest.mark.slow
def test_a_broken_image_mid_run(capsys, tmp_path, calls, demo_export):
    """Sample 2's pixels are broken (its header is fine): found when it runs. The answers saved
    so far stay for a rerun; the error is the last line; there is no summary."""
    from .conftest import png_bytes

    entries = [_ENTRY, _ENTRY, dict(_ENTRY, image="b.png"), _ENTRY]
    data = _tiny_data(tmp_path, entries, {"b.png": png_bytes()[:60]})
    argv = ["refcoco", demo_export, *data, "--no-baseline", "--max-new-tokens", "2", "--out", tmp_path / "ev"]
    code, stdout, err = _run(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 1 and stdout == "" and "Traceback" not in err, err
    assert lines[-1].startswith("nuwa-eval: error: cannot read sample 2 (") and "b.png) as an image" in lines[-1], err
    assert all(ln.startswith("nuwa-eval: ") for ln in lines), err  # no progress bar left behind
    preds = tmp_path / "ev" / "predictions" / "keep28.jsonl"
    assert [r["index"] for r in _lines(preds)] == [0, 1] and (tmp_path / "ev" / "run.json").is_file()
    assert not (tmp_path / "ev" / "summary.json").exists() and not (tmp_path / "ev" / "summary.md").exists()

    (tmp_path / "imgs" / "b.png").write_bytes(png_bytes())
    calls.clear()
    code, _, err = _run(capsys, *argv, "--json")
    assert code == 0, err
    assert len(calls) == 2 and [r["index"] for r in _lines(preds)] == [0, 1, 2, 3]
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["complete"]


def test_batches_give_the_answers_of_single_samples(capsys, tmp_path, calls, demo_export, refcoco_json):
    """--batch-size answers samples side by side; every answer is the one it gets alone."""
    base = ["refcoco", demo_export, "--data", refcoco_json, "--limit", "5", "--no-baseline", "--max-new-tokens", "6"]
    for size in (1, 3):
        code, _, err = _run(capsys, *base, "--batch-size", size, "--out", tmp_path / f"b{size}")
        assert code == 0, err
    one, three = (_lines(tmp_path / f"b{n}" / "predictions" / "keep28.jsonl") for n in (1, 3))
    assert [r["index"] for r in three] == [0, 1, 2, 3, 4]
    assert [(r["answer"], r["tokens"]) for r in three] == [(r["answer"], r["tokens"]) for r in one]
    code, _, err = _run(capsys, *base, "--batch-size", "0", "--out", tmp_path / "b0")
    _one_line_error(code, err, "--batch-size must be at least 1, got 0")


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _on_a_terminal(argv: list, tmp_path) -> tuple[int, bytes, list[str]]:
    """Run nuwa-eval with stderr on a pseudo-terminal; its exit code and stderr's lines, the
    escape sequences that draw and erase the bars removed."""
    import os
    import pty
    import subprocess
    import sys

    master, slave = pty.openpty()
    code = "import sys; from nuwa_export.tools.eval import main as eval_main; sys.exit(eval_main(sys.argv[1:]))"
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "120"}
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, argv)], stdout=subprocess.PIPE, stderr=slave, env=env, cwd=tmp_path)
    os.close(slave)
    raw = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the other end closed
            break
        if not chunk:
            break
        raw += chunk
    os.close(master)
    proc.communicate(timeout=120)
    text = _ANSI.sub("", raw.decode("utf-8", errors="replace")).replace("\r\n", "\n")
    return proc.returncode, raw, [ln.split("\r")[-1] for ln in text.split("\n") if ln.split("\r")[-1].strip()]


@pytest.mark.slow
def test_on_a_terminal_the_bars_go_and_the_error_is_last(tmp_path, demo_export):
    from .conftest import png_bytes

    data = _tiny_data(tmp_path, [_ENTRY] * 3 + [dict(_ENTRY, image="b.png")], {"b.png": png_bytes()[:60]})
    argv = ["refcoco", demo_export, *data, "--no-baseline", "--max-new-tokens", "2", "--out", tmp_path / "ev"]
    code, raw, lines = _on_a_terminal(argv, tmp_path)
    assert code == 1 and b"Traceback" not in raw, raw
    assert b"keep28" in raw and b"\x1b[" in raw  # the bar was drawn (and erased) on the terminal
    assert lines[-1].startswith("nuwa-eval: error: cannot read sample 3 ("), lines


@pytest.mark.slow
def test_a_failed_run_keeps_the_previous_complete_state(capsys, tmp_path, demo_dir):
    """--force over other settings discards nothing until the new run saves its first answer."""
    from .conftest import png_bytes

    data = _tiny_data(tmp_path, [_ENTRY, dict(_ENTRY, image="b.png")], {"b.png": png_bytes()})
    out = tmp_path / "ev"
    argv = ["refcoco", demo_dir, *data, "--no-prune", "--max-new-tokens", "2", "--out", out, "--json"]
    code, _, err = _run(capsys, *argv)
    assert code == 0, err
    snapshot = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (tmp_path / "imgs" / "a.png").write_bytes(png_bytes()[:60])  # the data changed: other settings
    code, _, err = _run(capsys, *argv[:-1], "--max-new-tokens", "3", "--force")
    _one_line_error(code, err, "cannot read sample 0 (")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == snapshot


def test_a_qwen_export_is_asked_and_scored_its_own_way(capsys, tmp_path, monkeypatch, calls, qwen_export_factory, refcoco_json):
    """Qwen2.5-VL gets its own grounding question, the unpruned baseline runs at the export's image
    size, and a ``bbox_2d`` answer in pixels of the S×S square is scored through the padding."""
    from nuwa_export.eval import metrics
    from nuwa_export.eval.data import load
    from nuwa_export.eval.tasks import get_task
    from nuwa_export.image import ImageConfig

    monkeypatch.setenv("NUWA_EXPORT_CACHE", str(tmp_path / "cache"))
    d = qwen_export_factory(0.5, 224)
    code, stdout, err = _run(capsys, "refcoco", d, "--data", refcoco_json, "--limit", "2", "--max-new-tokens", "3", "--json", "--out", tmp_path / "q")
    assert code == 0, err
    assert len(calls) == 4 and all(p.startswith('Locate "') and p.endswith('in JSON format.') for p in calls)
    summary = json.loads(stdout)
    assert summary["runs"][0]["budgets"]["keep_ratio"] == 0.5 and summary["retention"]["keep" + str(summary["runs"][0]["budgets"]["keep"])]["n"] == 2

    task = get_task("refcoco")
    data = load(task, str(refcoco_json), None)
    w, h = data.size(0)
    truth = data.samples[0].truth  # pixels of the original image
    side, s = max(w, h), 224
    ox, oy = (side - w) / 2, (side - h) / 2
    answer = json.dumps([{"bbox_2d": [round((truth[0] + ox) * s / side), round((truth[1] + oy) * s / side),
                                      round((truth[2] + ox) * s / side), round((truth[3] + oy) * s / side)], "label": "x"}])
    m, rows = metrics.score(data, {0: answer}, "padded", ImageConfig(size=s), "qwen2_5_vl")
    assert rows[0]["parsed"] and rows[0]["iou"] > 0.95
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({"index": 0, "answer": answer}) + "\n")
    code, stdout, err = _run(capsys, "score", "--task", "refcoco", "--data", refcoco_json, "--predictions", preds, "--json",
                             "--box-convention", "padded", "--family", "qwen2_5_vl", "--image-size", s)
    assert code == 0, err
    assert json.loads(stdout)["metrics"]["mean_iou"] == pytest.approx(rows[0]["iou"])
