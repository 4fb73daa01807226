"""Output paths and Ctrl-C: one line and exit 1 for a bad --out, exit 130 and nothing new on Ctrl-C.

The console scripts run for real (subprocesses). Faults that cannot be timed from outside (a
Ctrl-C swallowed by a destructor) are injected with a ``sitecustomize`` module on PYTHONPATH,
which the real ``nuwa-export`` imports at start-up. The atomic writers and the CLI guard are
also tested in-process, deterministically.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from nuwa_export.atomic import atomic_dir, write_file
from nuwa_export.errors import NuwaError
from nuwa_export.tools.common import guard
from nuwa_export.tools.export import main as export_main
from tests.helpers import BIN, assert_one_line, read_only_argv, tree


def _one_line_error(proc, verb: str, match: str) -> None:
    assert_one_line(verb, proc.returncode, proc.stderr, match)


def _export(*args, cwd=None, env=None, timeout=300):
    return subprocess.run(
        [str(BIN / "nuwa-export"), *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env
    )


# --- bad --out --------------------------------------------------------------------------------


def _layout(root: Path) -> None:
    (root / "afile").write_text("a file\n")
    (root / "full").mkdir()
    (root / "full" / "keep.txt").write_text("precious\n")
    (root / "empty").mkdir()
    (root / "link-full").symlink_to("full")
    (root / "link-empty").symlink_to("empty")
    (root / "dangling").symlink_to("nowhere")


@pytest.mark.parametrize(
    "out,extra,match",
    [
        ("afile/sub", [], "afile is not a directory"),
        ("afile/a/b", [], "afile is not a directory"),
        ("afile", ["--force"], "afile exists and is not a directory"),
        ("link-full", ["--force"], "link-full is a symbolic link"),
        ("link-empty", [], "link-empty is a symbolic link"),
        ("dangling", [], "dangling is a symbolic link"),
        ("dangling/sub", [], "dangling is a broken symbolic link"),
        (".", ["--force"], "cannot be an output directory"),
        ("full/..", ["--force"], "cannot be an output directory"),
        ("../work", ["--force"], "is the current directory or contains it"),
        ("full", [], "full exists and is not empty; pass --force"),
    ],
)
def test_bad_out_is_one_line_and_changes_nothing(tmp_path, demo_dir, out, extra, match):
    root = tmp_path / "work"
    root.mkdir()
    _layout(root)
    before = tree(root)
    proc = _export("--model", demo_dir, "--out", out, *extra, cwd=root, timeout=120)
    _one_line_error(proc, "nuwa-export", match)
    assert tree(root) == before  # nothing written, nothing followed through a link


def test_out_that_would_replace_the_checkpoint_is_refused(tmp_path, demo_dir, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(demo_dir, ckpt)
    before = tree(tmp_path)
    for out in (ckpt, tmp_path):
        assert export_main(["--model", str(ckpt), "--out", str(out), "--force"]) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("nuwa-export: error: ") and "would replace the checkpoint" in lines[0]
    assert tree(tmp_path) == before


@pytest.mark.parametrize("sub", ["x", "x/y/z"])
def test_out_in_a_read_only_directory(tmp_path, demo_dir, sub):
    ro = tmp_path / "ro"
    ro.mkdir()
    argv = read_only_argv(ro, [str(BIN / "nuwa-export"), "--model", str(demo_dir), "--out", str(ro / sub)])
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    finally:
        ro.chmod(0o755)
    _one_line_error(proc, "nuwa-export", "is not writable")
    assert list(ro.iterdir()) == []


# --- the atomic writers and the guard, in-process ---------------------------------------------


class _SwallowedCtrlC:
    """Its destructor gets the SIGINT: Python prints "Exception ignored" and carries on."""

    def __del__(self):
        signal.raise_signal(signal.SIGINT)  # the Python handler runs before this returns


def _guarded(main, capsys):
    handler = signal.getsignal(signal.SIGINT)
    code = guard("nuwa-test", main, [])
    assert signal.getsignal(signal.SIGINT) is handler  # in-process: the previous handler is back
    return code, capsys.readouterr().err


def test_ctrl_c_swallowed_in_the_body_refuses_the_rename(tmp_path, capsys):
    out = tmp_path / "out"
    reached = []

    def main(argv):
        with atomic_dir(out) as tmp:
            (tmp / "f").write_text("new")
            _SwallowedCtrlC()  # dropped at once: its __del__ swallows the KeyboardInterrupt
            reached.append("end of body")  # Python carried on as if nothing happened
        return 0

    code, err = _guarded(main, capsys)
    assert reached and code == 130
    assert err == "nuwa-test: interrupted\n"  # no "Exception ignored in ..." noise
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_swallowed_after_the_commit_undoes_it(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "f").write_text("old")

    def main(argv):
        with atomic_dir(out, force=True) as tmp:
            (tmp / "f").write_text("new")
        _SwallowedCtrlC()
        return 0  # returns normally: the guard still sees the SIGINT

    code, err = _guarded(main, capsys)
    assert code == 130 and err == "nuwa-test: interrupted\n"
    assert tree(tmp_path) == {"out": "dir", "out/f": b"old"}


def test_ctrl_c_after_the_commit_restores_the_previous_output(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "f").write_text("old")
    report = tmp_path / "report.json"
    report.write_text("old report")

    def main(argv):
        with atomic_dir(out, force=True) as tmp:
            (tmp / "f").write_text("new")
        write_file(report, lambda tmp: tmp.write_text("new report"))
        assert (out / "f").read_text() == "new" and report.read_text() == "new report"
        signal.raise_signal(signal.SIGINT)  # KeyboardInterrupt here, after both renames
        return 0

    code, err = _guarded(main, capsys)
    assert code == 130 and err == "nuwa-test: interrupted\n"
    assert tree(tmp_path) == {"out": "dir", "out/f": b"old", "report.json": b"old report"}


def test_error_after_the_commit_restores_and_is_one_line(tmp_path, capsys):
    out = tmp_path / "deep" / "er" / "out"

    def main(argv):
        with atomic_dir(out) as tmp:
            (tmp / "f").write_text("new")
        raise NuwaError("later step failed\nwith a second line")

    code, err = _guarded(main, capsys)
    assert code == 1 and err == "nuwa-test: error: later step failed with a second line\n"
    assert list(tmp_path.iterdir()) == []  # the parents it created are gone too


def test_failed_rename_restores_and_leaves_no_old_entry(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "f").write_text("old")
    real = os.rename

    def rename(src, dst):
        if ".tmp-" in str(src):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(NuwaError, match="cannot move the new .* into place"):
        with atomic_dir(out, force=True) as tmp:
            (tmp / "f").write_text("new")
    assert tree(tmp_path) == {"out": "dir", "out/f": b"old"}


def test_library_use_replaces_at_once_without_leftovers(tmp_path):
    out = tmp_path / "out"
    for content in ("one", "two"):
        with atomic_dir(out, force=True) as tmp:
            (tmp / "f").write_text(content)
        write_file(tmp_path / "r.txt", lambda tmp, c=content: tmp.write_text(c))
    assert tree(tmp_path) == {"out": "dir", "out/f": b"two", "r.txt": b"two"}


def test_write_file_failures_leave_the_old_file(tmp_path):
    target = tmp_path / "r.txt"
    target.write_text("old")

    def boom(tmp):
        tmp.write_text("half")
        raise OSError(5, "Input/output error")

    with pytest.raises(NuwaError, match="cannot write .*r.txt .*Input/output error"):
        write_file(target, boom)
    with pytest.raises(KeyboardInterrupt):
        write_file(target, lambda tmp: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert tree(tmp_path) == {"r.txt": b"old"}


def test_engines_symlink_is_never_replaced_through(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.plan").write_text("precious")
    (tmp_path / "engines").symlink_to(elsewhere)
    with pytest.raises(NuwaError, match="is a symbolic link"):
        with atomic_dir(tmp_path / "engines", force=True):
            pass
    assert (elsewhere / "keep.plan").read_text() == "precious" and (tmp_path / "engines").is_symlink()


# --- Ctrl-C to a running nuwa-export -----------------------------------------------------------


def _lines(proc) -> queue.Queue:
    q: queue.Queue = queue.Queue()

    def pump():
        for line in proc.stderr:
            q.put(line)
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def _interrupt_when(proc, marker: str, timeout: float = 240) -> str:
    """Send SIGINT as soon as ``marker`` appears on stderr; returns the whole stderr."""
    q, seen, deadline = _lines(proc), [], time.time() + timeout
    while time.time() < deadline:
        try:
            line = q.get(timeout=1)
        except queue.Empty:
            continue
        if line is None:
            break
        seen.append(line)
        if marker in line:
            proc.send_signal(signal.SIGINT)
            break
    else:
        proc.kill()
    assert seen and marker in seen[-1], f"never saw {marker!r}: {''.join(seen)}"
    proc.wait(timeout=120)
    while (line := q.get(timeout=10)) is not None:
        seen.append(line)
    return "".join(seen)


def _assert_interrupted(proc, err: str) -> None:
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert err.strip().splitlines()[-1] == "nuwa-export: interrupted", err


def test_ctrl_c_right_after_loading(tmp_path, demo_dir):
    """SIGINT once the checkpoint is loaded, as the temporary directory is being made."""
    out = tmp_path / "new" / "exp"
    proc = subprocess.Popen(
        [str(BIN / "nuwa-export"), "--model", str(demo_dir), "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    err = _interrupt_when(proc, "✓ load checkpoint")
    _assert_interrupted(proc, err)
    assert list(tmp_path.iterdir()) == []  # not even the parent it created


def test_ctrl_c_as_the_export_is_renamed_into_place(tmp_path, demo_dir, demo_export):
    """SIGINT the moment validation is reported, i.e. while the new export replaces the previous
    one (--force) or just after: either exit 130 with the previous export exactly as it was, or
    (a Ctrl-C too late to count) exit 0 with the new one. Never 130 with the new one in place."""
    out = tmp_path / "exp"
    shutil.copytree(demo_export, out)
    before = tree(tmp_path)
    proc = subprocess.Popen(
        [str(BIN / "nuwa-export"), "--model", str(demo_dir), "--out", str(out), "--force", "--keep", "8", "--no-ort-graphs"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    err = _interrupt_when(proc, "✓ validate")
    assert "Traceback" not in err and "Exception ignored" not in err, err
    if proc.returncode == 130:
        assert err.strip().splitlines()[-1] == "nuwa-export: interrupted"
        assert tree(tmp_path) == before
    else:
        assert proc.returncode == 0, err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]  # no .exp.old-PID, no .exp.tmp-*
        assert '"stage_one_keep": 14' in (out / "manifest.json").read_text()  # the new export, complete


SWALLOW = """
import os, signal
import nuwa_export.export.vision as vision

_trace = vision.trace

class SwallowedCtrlC:
    def __del__(self):
        open(os.environ["NUWA_TEST_SWALLOWED"], "w").close()
        signal.raise_signal(signal.SIGINT)  # as if Ctrl-C landed in an ORT / torch destructor

def trace(*args, **kwargs):
    result = _trace(*args, **kwargs)
    SwallowedCtrlC()  # Python prints "Exception ignored" and carries on
    return result

vision.trace = trace
"""


def test_ctrl_c_swallowed_by_a_destructor_still_ends_with_130(tmp_path, demo_dir):
    """Without the SIGINT record, the export would complete and exit 0 after this."""
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(SWALLOW)
    mark = inject / "swallowed"
    env = {
        **os.environ, "NUWA_TEST_SWALLOWED": str(mark),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(inject), os.environ.get("PYTHONPATH")])),
    }
    out = tmp_path / "exp"
    proc = _export("--model", demo_dir, "--out", out, env=env)
    assert mark.exists()  # the destructor ran and got the SIGINT
    _assert_interrupted(proc, proc.stderr)
    assert "trace LLM" not in proc.stderr  # it stopped at the end of that step, not at the end of the export
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inject"]
