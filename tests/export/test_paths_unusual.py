"""Unusual paths: outputs in places that refuse new files even to root, image and chart formats that
cannot be written, and names that are not UTF-8 (which the tokenizer and safetensors libraries
cannot open). Each is one line ``<verb>: error: ...`` before any work (no ``✓`` line), nothing written.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image

from nuwa_export.atomic import (
    UTF8_ONLY,
    check_dir_target,
    check_output_file,
    check_utf8_path,
)
from nuwa_export.errors import NuwaError
from nuwa_export.tools.export import main as export_main
from nuwa_export.tools.run import main as run_main
from tests.helpers import assert_one_line, tree


def _nonutf8(parent: Path, name: bytes) -> str:
    """``parent/name`` as Python holds it (undecodable bytes as lone surrogates)."""
    if sys.getfilesystemencoding().lower() not in ("utf-8", "utf8"):
        pytest.skip("the file system encoding is not UTF-8")
    return os.fsdecode(os.path.join(os.fsencode(str(parent)), name))


# --- places that refuse new entries though os.access says yes (as root) ------------------------


@pytest.mark.parametrize("root", ["/proc", "/sys"])
def test_export_out_under_a_pseudo_file_system_fails_before_loading(demo_dir, capsys, root):
    """As root ``os.access`` passes there: it used to fail after "✓ load checkpoint"."""
    if not os.path.isdir(root):
        pytest.skip(f"no {root} here")
    out = f"{root}/nuwa-test-out"
    assert export_main(["--model", str(demo_dir), "--out", out]) == 1
    assert_one_line("nuwa-export", 1, capsys.readouterr().err, f"cannot write {out}: {root} is not writable")
    assert not os.path.exists(out)


def test_the_writability_probe_leaves_nothing(tmp_path):
    check_dir_target(tmp_path / "new" / "deeper")
    check_output_file(tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_the_probe_reports_a_read_only_file_system(tmp_path, monkeypatch):
    """Whatever os.access says, a directory that cannot take a new entry is refused by its errno."""
    import errno
    import tempfile

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(os, "access", lambda *a, **k: True)
    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    with pytest.raises(NuwaError, match=rf"cannot write {tmp_path}/out: {tmp_path} is not writable \(read-only file system\)"):
        check_dir_target(tmp_path / "out")


# --- image and chart formats ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,match",
    [
        ("k.psd", "Pillow reads PSD images but cannot write them"),
        ("k.xbm", "Pillow cannot write an RGB picture as XBM"),
        ("k.txt", "unknown image format '.txt'"),
    ],
)
def test_show_tokens_format_pillow_cannot_write_is_refused_up_front(tmp_path, capsys, name, match):
    """.psd passed the extension check, the whole answer was generated, then KeyError 'PSD'."""
    code = run_main([str(tmp_path / "no-such-export"), "--prompt", "hi", "--show-tokens", str(tmp_path / name)])
    assert_one_line("nuwa-run", code, capsys.readouterr().err, match)  # refused before the model is even looked for
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["box.psd", "box.xbm"])
def test_grounding_draw_refuses_what_pillow_cannot_write(tmp_path, name):
    from nuwa_export.overlay import draw_box

    with pytest.raises(NuwaError, match="Pillow"):
        draw_box(Image.new("RGB", (8, 8)), (1, 1, 6, 6), tmp_path / name, "x")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name,magic", [("box.tif", (b"II*\x00", b"MM\x00*")), ("box.jpg", (b"\xff\xd8",)), ("box.PNG", (b"\x89PNG",))])
def test_grounding_draw_writes_every_extension_the_check_accepts(tmp_path, name, magic):
    """Its format came from the suffix (``.tif`` → 'TIF', which Pillow does not know)."""
    from nuwa_export.overlay import draw_box

    draw_box(Image.new("RGB", (8, 8)), (1, 1, 6, 6), tmp_path / name, "x")
    assert (tmp_path / name).read_bytes().startswith(magic)


def test_plot_without_matplotlib_is_refused_before_profiling(tmp_path, monkeypatch):
    from nuwa_export.profile.report import check_plot_path

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    with pytest.raises(NuwaError, match="--plot needs matplotlib"):
        check_plot_path(tmp_path / "p.png")


def test_plot_formats_are_ones_matplotlib_writes(tmp_path):
    from matplotlib.figure import Figure

    from nuwa_export.profile.report import PLOT_FORMATS, check_plot_path

    for ext in PLOT_FORMATS:
        assert ext.lstrip(".") in Figure().canvas.get_supported_filetypes()
        check_plot_path(tmp_path / f"p{ext}")
    with pytest.raises(NuwaError, match="the chart is written as"):
        check_plot_path(tmp_path / "p.psd")


# --- names that are not UTF-8 -------------------------------------------------------------------


def test_check_utf8_path(tmp_path, monkeypatch):
    check_utf8_path(tmp_path / "my export ü")  # valid UTF-8, spaces and all: fine
    bad = _nonutf8(tmp_path, b"\xff\xfe-exp")
    with pytest.raises(NuwaError, match=r"\\xff\\xfe-exp \(export directory\): " + UTF8_ONLY.replace("(", r"\(").replace(")", r"\)")):
        check_utf8_path(bad, "export directory")
    with pytest.raises(NuwaError, match=r"\\xff"):
        check_utf8_path(os.fsencode(bad))  # bytes too
    os.mkdir(bad)
    monkeypatch.chdir(bad)
    with pytest.raises(NuwaError, match=r"\\xff\\xfe-exp/exp: nuwa-export needs"):  # relative, below a bad cwd: the absolute path is shown
        check_utf8_path("exp")


def test_export_out_nested_below_a_non_utf8_name_is_one_line(demo_dir, tmp_path, capsys):
    """It used to fail with a UnicodeEncodeError traceback in tokenizer.save, after tracing."""
    out = _nonutf8(tmp_path, b"new/\xff\xfe/exp")
    assert export_main(["--model", str(demo_dir), "--out", out]) == 1
    assert_one_line("nuwa-export", 1, capsys.readouterr().err, "new/\\xff\\xfe/exp (--out): nuwa-export needs paths that are valid UTF-8")
    assert list(tmp_path.iterdir()) == []


def test_export_from_a_non_utf8_checkpoint_dir_is_one_line(demo_dir, tmp_path, capsys):
    ckpt = _nonutf8(tmp_path, b"\xff-ckpt")
    try:
        shutil.copytree(demo_dir, ckpt)
    except OSError as e:
        pytest.skip(f"this file system refuses non-UTF-8 names ({e})")
    before = tree(tmp_path)
    assert export_main(["--model", ckpt, "--out", str(tmp_path / "out")]) == 1
    assert_one_line("nuwa-export", 1, capsys.readouterr().err, "\\xff-ckpt (--model): nuwa-export needs paths that are valid UTF-8")
    assert tree(tmp_path) == before
