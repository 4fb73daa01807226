"""Bad and unusual input through the real console scripts: one line, exit 1, nothing written.

Classes covered here: images (decompression bombs, broken files), prompts that are not UTF-8,
generation and stage-one knobs (nan, inf, out-of-range seeds, unknown devices, flags that would
be ignored) and broken checkpoints. Output paths, Ctrl-C and inconsistent export directories
have their own files (tests/export/test_bad_outputs.py, tests/runtime/test_bad_exports.py).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from tests.helpers import BIN, assert_one_line


def console(verb: str, *argv, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``.venv/bin/<verb>`` as a user would (bytes argv pass through undecoded)."""
    args = [str(BIN / verb)] + [a if isinstance(a, bytes) else str(a) for a in argv]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run(args, capture_output=True, timeout=300, env=env, cwd=cwd)


def assert_one_line_proc(proc: subprocess.CompletedProcess, verb: str, match: str) -> str:
    return assert_one_line(verb, proc.returncode, proc.stderr, match)


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares ``width × height`` in its header but carries almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b""))
    return path


# --- images -------------------------------------------------------------------------------


def _bad_images(tmp: Path, demo_dir: Path) -> dict[str, tuple[Path, str]]:
    good = (demo_dir / "example.png").read_bytes()
    (tmp / "notimage.png").write_bytes(b"this is not a picture at all")
    (tmp / "truncated.png").write_bytes(good[:300])
    (tmp / "empty.png").write_bytes(b"")
    (tmp / "a-directory.png").mkdir()
    return {
        "bomb-30000x30000": (png_header(tmp / "bomb.png", 30000, 30000), "30000x30000 pixels, more than the 144 megapixels"),
        "over-pillow-warning-limit": (png_header(tmp / "warn.png", 10000, 10000), "cannot read"),
        "not-an-image": (tmp / "notimage.png", "cannot read"),
        "truncated": (tmp / "truncated.png", "cannot read"),
        "empty": (tmp / "empty.png", "cannot read"),
        "directory": (tmp / "a-directory.png", "is not an image file"),
        "missing": (tmp / "missing.png", "image file not found"),
    }


@pytest.mark.parametrize("case", ["bomb-30000x30000", "over-pillow-warning-limit", "not-an-image", "truncated", "empty", "directory", "missing"])
def test_bad_images_nuwa_run(case, tmp_path, demo_export, demo_dir):
    image, match = _bad_images(tmp_path, demo_dir)[case]
    assert_one_line_proc(console("nuwa-run", demo_export, "--image", image, "--prompt", "hi"), "nuwa-run", match)


@pytest.mark.parametrize("verb", ["nuwa-verify", "nuwa-profile"])
def test_decompression_bomb_other_verbs(verb, tmp_path, demo_export):
    bomb = png_header(tmp_path / "bomb.png", 30000, 30000)
    assert_one_line_proc(console(verb, demo_export, "--image", bomb), verb, "megapixels")


def test_large_image_under_the_limit_loads_without_warnings(tmp_path):
    """Above Pillow's warning threshold (89.5 MP) but under ours: it loads, and nothing is printed."""
    import warnings

    from PIL import Image

    from nuwa_export.image import MAX_IMAGE_PIXELS, load_image

    w, h = 10_000, 9_000
    assert Image.MAX_IMAGE_PIXELS < w * h <= MAX_IMAGE_PIXELS
    Image.new("L", (w, h)).save(tmp_path / "big.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        im = load_image(tmp_path / "big.png")
    assert im.size == (w, h) and im.mode == "RGB"
    assert Image.MAX_IMAGE_PIXELS < w * h  # Pillow's own limit is restored afterwards


def test_image_bytes_are_checked_too(tmp_path):
    """Images that arrive as bytes (e.g. from a parquet file) get the same checks and wording."""
    import io

    from nuwa_export.errors import NuwaError
    from nuwa_export.image import decode_image

    with pytest.raises(NuwaError, match="cannot read row 3 of data.parquet as an image"):
        decode_image(io.BytesIO(b"garbage"), "row 3 of data.parquet")
    bomb = png_header(tmp_path / "bomb.png", 30000, 30000).read_bytes()
    with pytest.raises(NuwaError, match="row 4 is 30000x30000 pixels"):
        decode_image(io.BytesIO(bomb), "row 4")


# --- prompts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "verb, argv, match",
    [
        ("nuwa-run", ["--prompt", b"caf\xe9 \xff?"], "the prompt is not valid UTF-8 text"),
        ("nuwa-run", ["--ground", b"the \xff man"], "--ground is not valid UTF-8 text"),
        ("nuwa-verify", ["--prompt", b"\xfe\xff"], "the prompt is not valid UTF-8 text"),
        ("nuwa-profile", ["--prompt", b"\xfe\xff", "--runs", "1"], "the prompt is not valid UTF-8 text"),
        ("nuwa-run", ["--prompt", "   "], "--prompt is empty"),
        ("nuwa-run", ["--prompt", "look: <image>"], "must not contain <image>"),
    ],
    ids=["run-prompt", "run-ground", "verify", "profile", "empty", "image-token"],
)
def test_bad_prompts(verb, argv, match, demo_export):
    assert_one_line_proc(console(verb, demo_export, *argv), verb, match)


def test_valid_utf8_prompt_still_runs(demo_export):
    proc = console("nuwa-run", demo_export, "--prompt", "Qu'est-ce que c'est ? 这是什么", "--max-new-tokens", "2", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["generated_ids"]


# --- generation and stage-one knobs -------------------------------------------------------

KNOBS = [
    (["--temperature", "nan"], "argument --temperature: must be a finite number"),
    (["--temperature", "inf"], "argument --temperature: must be a finite number"),
    (["--temperature", "-1"], "--temperature must be a finite number >= 0"),
    (["--top-p", "nan"], "argument --top-p: must be a finite number"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--seed", str(2**64)], "argument --seed: must be between 0 and 2**64 - 1"),
    (["--seed", "-1"], "argument --seed: must be between 0 and 2**64 - 1"),
    (["--seed", "1e3"], "argument --seed: invalid integer"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["--max-new-tokens", str(10**20)], "the model's context is"),
]


@pytest.mark.parametrize("argv, match", KNOBS, ids=[" ".join(a) for a, _ in KNOBS])
def test_bad_generation_knobs(argv, match, demo_export):
    assert_one_line_proc(console("nuwa-run", demo_export, "--prompt", "hi", *argv), "nuwa-run", match)


CHECKPOINT_KNOBS = [
    (["--device", "tpu"], "unknown --device 'tpu' for the torch backend"),
    (["--device", "cpu:3"], "unknown --device 'cpu:3' for the torch backend"),
    (["--distance", "nan"], "argument --distance: must be a finite number"),
    (["--distance", "1e400"], "argument --distance: must be a finite number"),
    (["--distance", "0"], "--distance must be > 0"),
    (["--percentile", "inf"], "argument --percentile: must be a finite number"),
    (["--percentile", "1.5"], "--percentile in [0, 1]"),
    (["--no-prune", "--keep", "8"], "--no-prune keeps every patch; --keep would have no effect"),
    (["--no-prune", "--distance", "100", "--per-region", "2"], "--per-region --distance would have no effect"),
    (["--keep", "0"], "--keep must be at least 1"),
]


@pytest.mark.parametrize("argv, match", CHECKPOINT_KNOBS, ids=[" ".join(a) for a, _ in CHECKPOINT_KNOBS])
def test_bad_knobs_on_a_checkpoint(argv, match, demo_dir):
    assert_one_line_proc(console("nuwa-run", demo_dir, "--prompt", "hi", *argv), "nuwa-run", match)


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--backend", "torch", "--device", "tpu"], "unknown --device 'tpu' for the torch backend"),
        (["--device", "tpu"], "unknown --device 'tpu' for the ort backend"),
        (["--distance", "100"], "--distance: budgets are fixed when exporting"),
        (["--percentile", "0.3"], "--percentile: budgets are fixed when exporting"),
    ],
    ids=["torch-tpu", "ort-tpu", "distance", "percentile"],
)
def test_bad_knobs_on_an_export(argv, match, demo_export):
    assert_one_line_proc(console("nuwa-run", demo_export, "--prompt", "hi", *argv), "nuwa-run", match)


def test_export_refuses_nan_before_work(tmp_path, demo_dir):
    out = tmp_path / "out"
    assert_one_line_proc(console("nuwa-export", "--model", demo_dir, "--out", out, "--percentile", "nan"), "nuwa-export", "finite")
    assert_one_line_proc(console("nuwa-export", "--model", demo_dir, "--out", out, "--no-prune", "--keep", "4"), "nuwa-export", "--no-prune")
    assert not out.exists() and list(tmp_path.iterdir()) == []


# --- checkpoints ----------------------------------------------------------------------------


def _corrupt(kind: str, ckpt: Path) -> None:
    weights = ckpt / "model.safetensors"
    if kind == "not-safetensors":
        weights.write_bytes(b"garbage, not safetensors")
    elif kind == "truncated-safetensors":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif kind == "no-tokenizer":
        for f in ckpt.glob("tokenizer*"):
            f.unlink()
    elif kind == "garbage-tokenizer":
        (ckpt / "tokenizer.json").write_text("{not json")
    elif kind == "garbage-preprocessor":
        (ckpt / "preprocessor_config.json").write_text("{not json")
    elif kind == "preprocessor-bad-mean":
        cfg = json.loads((ckpt / "preprocessor_config.json").read_text())
        cfg["image_mean"] = [0.5, "x"]
        (ckpt / "preprocessor_config.json").write_text(json.dumps(cfg))
    elif kind == "invalid-config":
        cfg = json.loads((ckpt / "config.json").read_text())
        cfg["text_config"]["hidden_size"] = 999  # not a multiple of the heads
        (ckpt / "config.json").write_text(json.dumps(cfg))
    elif kind in ("missing-tensor", "shape-mismatch"):
        from safetensors.torch import load_file, save_file

        if kind == "missing-tensor":
            tensors = load_file(weights)
            del tensors[sorted(tensors)[3]]
            save_file(tensors, weights, metadata={"format": "pt"})
        else:
            cfg = json.loads((ckpt / "config.json").read_text())
            cfg["text_config"]["intermediate_size"] *= 2
            (ckpt / "config.json").write_text(json.dumps(cfg))
    elif kind == "pickle-only":
        weights.rename(ckpt / "pytorch_model.bin")
    else:
        raise AssertionError(kind)


CHECKPOINTS = {
    "not-safetensors": "model.safetensors is not a valid safetensors file",
    "truncated-safetensors": "model.safetensors is not a valid safetensors file",
    "no-tokenizer": "has no tokenizer",
    "garbage-tokenizer": "cannot load the tokenizer",
    "garbage-preprocessor": "preprocessor_config.json is not valid JSON (Expecting property name",
    "preprocessor-bad-mean": "preprocessor_config.json",
    "invalid-config": "cannot read",
    "missing-tensor": "do not fit its config.json",
    "shape-mismatch": "do not fit its config.json",
    "pickle-only": "pickle files are never loaded",
}


@pytest.mark.parametrize("kind", sorted(CHECKPOINTS))
def test_broken_checkpoints_nuwa_run(kind, tmp_path, demo_dir):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(demo_dir, ckpt)
    _corrupt(kind, ckpt)
    assert_one_line_proc(console("nuwa-run", ckpt, "--prompt", "hi"), "nuwa-run", CHECKPOINTS[kind])


@pytest.mark.parametrize("kind", ["not-safetensors", "no-tokenizer", "missing-tensor"])
def test_broken_checkpoints_nuwa_export_writes_nothing(kind, tmp_path, demo_dir):
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    shutil.copytree(demo_dir, ckpt)
    _corrupt(kind, ckpt)
    assert_one_line_proc(console("nuwa-export", "--model", ckpt, "--out", out), "nuwa-export", CHECKPOINTS[kind])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


# --- found by a red-team run: hostile JSON, numeric edges, odd paths ---------------------------


@pytest.mark.parametrize(
    "text, why",
    [("[" * 100_000 + "]" * 100_000, "nested too deeply"), ('{"a": ' + "9" * 5000 + "}", "digits"), (b"\xff\xfe{}", "not UTF-8"), ("{", "Expecting")],
    ids=["deep", "5000-digit-int", "not-utf8", "truncated"],
)
def test_hostile_json_is_one_line(text, why, tmp_path):
    from nuwa_export import jsonio
    from nuwa_export.errors import NuwaError

    f = tmp_path / "x.json"
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(NuwaError, match=f"x.json is not valid JSON .*{why}"):
        jsonio.read(f)


def test_hostile_manifest_through_the_console(tmp_path, demo_export):
    d = tmp_path / "exp"
    shutil.copytree(demo_export, d)
    (d / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    assert_one_line_proc(console("nuwa-run", d, "--prompt", "hi"), "nuwa-run", "manifest.json is not valid JSON (nested too deeply)")


@pytest.mark.parametrize("temperature", ["1e-45", "1e-300"])
def test_tiny_temperature_is_greedy_not_a_crash(temperature, demo_export):
    greedy = console("nuwa-run", demo_export, "--prompt", "hi", "--max-new-tokens", "4", "--json")
    tiny = console("nuwa-run", demo_export, "--prompt", "hi", "--max-new-tokens", "4", "--json", "--temperature", temperature)
    assert tiny.returncode == 0, tiny.stderr.decode()
    assert json.loads(tiny.stdout)["generated_ids"] == json.loads(greedy.stdout)["generated_ids"]


def test_non_finite_logits_are_refused():
    import torch

    from nuwa_export.errors import NuwaError
    from nuwa_export.sampling import SamplingConfig, TokenPicker

    for cfg in (SamplingConfig(), SamplingConfig(temperature=1.0)):
        with pytest.raises(NuwaError, match="non-finite logits"):
            TokenPicker(cfg)(torch.tensor([0.0, float("nan"), 1.0]))


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda c, p: c["vision_config"].update(patch_size=0), "patch_size must be a positive integer"),
        (lambda c, p: c["vision_config"].update(patch_size=5), "is not a multiple of patch_size"),
        (lambda c, p: c["text_config"].update(num_hidden_layers=1), "at least 2 are needed"),
        (lambda c, p: p.update(crop_size={"height": float("inf")}), "preprocessor_config.json"),
        (lambda c, p: p.update(resample=1e999), "preprocessor_config.json"),
    ],
    ids=["patch-0", "patch-not-dividing", "one-layer", "crop-inf", "resample-inf"],
)
def test_config_values_that_crashed(edit, match, tmp_path, demo_dir):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(demo_dir, ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    pre = json.loads((ckpt / "preprocessor_config.json").read_text())
    edit(cfg, pre)
    (ckpt / "config.json").write_text(json.dumps(cfg))
    (ckpt / "preprocessor_config.json").write_text(json.dumps(pre))  # json writes inf as Infinity
    assert_one_line_proc(console("nuwa-run", ckpt, "--prompt", "hi", "--no-prune"), "nuwa-run", match)


def test_verify_refuses_more_tokens_than_the_context(demo_export):
    proc = console("nuwa-verify", demo_export, "--max-new-tokens", "100000")
    assert_one_line_proc(proc, "nuwa-verify", "the model's context is")


def test_palette_image_with_transparency_runs_without_warnings(tmp_path, demo_export):
    from PIL import Image

    im = Image.new("P", (64, 48))
    im.putpalette([i % 256 for i in range(768)])
    im.info["transparency"] = b"\x00" * 10
    im.save(tmp_path / "p.png", transparency=b"\x00" * 10)
    proc = console("nuwa-run", demo_export, "--image", tmp_path / "p.png", "--prompt", "hi", "--max-new-tokens", "1", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"Warning" not in proc.stderr


@pytest.mark.parametrize(
    "verb, argv, match",
    [
        ("nuwa-export", ["--model", "demo", "--out", "~nosuchuser-nuwa/x"], "cannot expand ~nosuchuser-nuwa: no such user"),
        ("nuwa-run", ["{EXPORT}", "--prompt", "hi", "--image", "~nosuchuser-nuwa/a.png"], "cannot expand ~nosuchuser-nuwa"),
        ("nuwa-profile", ["~nosuchuser-nuwa/exp"], "cannot expand ~nosuchuser-nuwa"),
        ("nuwa-run", ["{EXPORT}", "--prompt", "hi", "--image", "x" * 300 + ".png"], "File name too long"),
        ("nuwa-verify", ["y" * 300], "File name too long"),
    ],
    ids=["export-out-tilde", "run-image-tilde", "profile-tilde", "run-image-long", "verify-long"],
)
def test_odd_paths_are_one_line(verb, argv, match, demo_export):
    argv = [str(demo_export) if a == "{EXPORT}" else a for a in argv]
    assert_one_line_proc(console(verb, *argv), verb, match)
