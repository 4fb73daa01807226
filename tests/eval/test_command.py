"""``nuwa-eval`` end to end on the 10 RefCOCO samples with the demo checkpoint and its export.

The demo's answers are nonsense (random weights), so these check the run, the files, resuming
after an interruption, the cached baseline and the retention report, not accuracy.
"""

from __future__ import annotations

import json

import pytest
from PIL import Image

from nuwa_export.cli import eval_main
from nuwa_export.eval import runner

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
    real = runner.answer

    def counting(model, image, prompt, sampling):
        seen.append(prompt)
        if seen.stop_at == len(seen):
            raise KeyboardInterrupt
        return real(model, image, prompt, sampling)

    monkeypatch.setattr(runner, "answer", counting)
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

    # a longer run that is interrupted removes the old summary: it never looks complete
    calls.clear()
    calls.stop_at = 1
    code, _, err = _run(capsys, *argv[:-1], "5")
    assert code == 130, err and not (out / "summary.json").exists() and not (out / "samples.png").exists()


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
    from nuwa_export.eval import grounding
    from nuwa_export.image import ImageConfig

    lines = []
    for i, a in enumerate(json.loads(refcoco_json.read_text())):
        w, h = a["width"], a["height"]
        box = [v / s for v, s in zip(a["solution"], (w, h, w, h))]
        if convention == "padded":
            box = grounding.to_padded(a["solution"], w, h, ImageConfig(size=336))
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
        ('{"index": 0, "answer": "x"}\nnot json\n', "p.jsonl line 2: not JSON"),
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

    probe = "import sys\nfrom nuwa_export.cli import eval_main, eval_parser, eval_score_parser\n" \
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
    path = report._samples(tmp_path / "samples.png", d, "keep64", rows)
    px = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3).astype(int)
    red = (px[:, 0] > 200) & (px[:, 1] < 40) & (px[:, 2] < 40)
    green = (px[:, 0] < 40) & (px[:, 1] > 200) & (px[:, 2] < 40)
    assert red.sum() > 200 and green.sum() > 200
    assert not list(tmp_path.glob(".*"))
