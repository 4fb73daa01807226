"""nuwa-run: output contract and one-line errors for bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from nuwa_export.tools.run import main as run_main


def _run(capsys, *argv):
    code = run_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code, err, match):
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nuwa-run: error: "), err
    assert match in lines[0], lines[0]


def test_json_output(capsys, demo_dir):
    code, out, _ = _run(capsys, demo_dir, "--image", demo_dir / "example.png", "--prompt", "Where is the car?", "--json", "--max-new-tokens", "5")
    assert code == 0
    data = json.loads(out)  # exactly one JSON object
    for key in ("input_ids", "image_token_id", "generated_ids", "text", "stage_one_indices", "stage_two_indices", "timings_ms"):
        assert key in data
    assert data["input_ids"].count(data["image_token_id"]) == 1
    assert len(data["stage_one_indices"]) == 49 and len(data["stage_two_indices"]) == 7
    assert 1 <= len(data["generated_ids"]) <= 5


def test_json_no_prune(capsys, demo_dir):
    code, out, _ = _run(capsys, demo_dir, "--image", demo_dir / "example.png", "--prompt", "Hi", "--json", "--no-prune", "--max-new-tokens", "2")
    data = json.loads(out)
    assert code == 0 and data["stage_two_indices"] is None and len(data["stage_one_indices"]) == 256


def test_text_output_and_summary(capsys, demo_dir):
    code, out, err = _run(capsys, demo_dir, "--image", demo_dir / "example.png", "--prompt", "Hi", "--max-new-tokens", "3", "--stream")
    assert code == 0 and out.endswith("\n")
    assert "time_to_first_token" in err and "K1=49, K2=7" in err


@pytest.fixture(scope="module")
def odd_grid_dir(checkpoint_factory):
    return checkpoint_factory(0, image_size=98)  # 7x7 patches


@pytest.fixture(scope="module")
def no_placeholder_dir(demo_dir, tmp_path_factory):
    """A checkpoint whose config names an image token id its tokenizer cannot produce."""
    d = tmp_path_factory.mktemp("noimg") / "model"
    shutil.copytree(demo_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["image_token_id"] = 5
    (d / "config.json").write_text(json.dumps(cfg))
    return d


BAD = [
    ("odd", ["--prompt", "x"], "odd sides"),
    ("demo", ["--prompt", "x", "--keep", "300"], "more than the 256 image patches"),
    ("demo", ["--prompt", "x", "--keep", "0"], "at least 1"),
    ("demo", ["--prompt", "x", "--stage-one-keep", "10", "--stage-two-keep", "20"], "K2=20 must be between 1 and K1=10"),
    ("demo", ["--prompt", "x", "--stage-two-layer", "4"], "between 1 and 3"),
    ("demo", ["--prompt", "x", "--stage-two-layer", "0"], "between 1 and 3"),
    ("noimg", ["--prompt", "x"], "no image placeholder possible"),
    ("demo", ["--prompt", "look at <image>"], "must not contain <image>"),
    ("demo", ["--prompt", "x", "--image", "MISSING"], "image file not found"),
    ("demo", ["--prompt", "x", "--image", "NOTIMAGE"], "cannot read"),
    ("llava-1.5-9b", ["--prompt", "x"], "unknown model 'llava-1.5-9b'"),
    ("llava-1.5-7b", ["--prompt", "x"], "pass a local directory"),
    ("demo", ["--prompt", "x", "--max-new-tokens", "5000"], "the model's context is 2048"),
    ("demo", ["--prompt", "x", "--bogus"], "unrecognized arguments: --bogus"),
]


@pytest.mark.parametrize("model,args,match", BAD, ids=[m for _, _, m in BAD])
def test_bad_input_one_line(capsys, tmp_path, demo_dir, odd_grid_dir, no_placeholder_dir, monkeypatch, model, args, match):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    notimage = tmp_path / "notes.jpg"
    notimage.write_text("definitely not a JPEG")
    model = {"odd": odd_grid_dir, "demo": demo_dir, "noimg": no_placeholder_dir}.get(model, model)
    args = [{"MISSING": tmp_path / "missing.png", "NOTIMAGE": notimage}.get(a, a) for a in args]
    if "--image" not in args:
        args += ["--image", demo_dir / "example.png"]
    code, out, err = _run(capsys, model, *args)
    _one_line_error(code, err, match)
    assert out == ""


def test_console_script_error_has_no_traceback(tmp_path, demo_dir):
    exe = shutil.which("nuwa-run", path=str(__import__("pathlib").Path(sys.executable).parent))
    proc = subprocess.run(
        [exe, str(demo_dir), "--image", str(tmp_path / "nope.png"), "--prompt", "hi"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"nuwa-run: error: image file not found: {tmp_path / 'nope.png'}"
    assert "Traceback" not in proc.stderr


def test_help_works_without_heavy_imports():
    code = "import sys; from nuwa_export.tools.run import parser as run_parser; run_parser().format_help(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
