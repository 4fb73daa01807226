"""nuwa-export as users run it: atomic output, refusals, interruption, --help without extras."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nuwa_export.errors import NuwaError
from nuwa_export.export import pipeline
from nuwa_export.tools.export import main as export_main

BIN = Path(sys.executable).parent


def _leftovers(parent: Path, name: str):
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def test_cli_exports_and_refuses_non_empty_out(demo_dir, tmp_path, capsys):
    out = tmp_path / "exp"
    assert export_main(["--model", str(demo_dir), "--out", str(out), "--keep", "16", "--no-ort-graphs"]) == 0
    err = capsys.readouterr().err
    assert "validate against the PyTorch reference" in err and "K1 28" in err
    assert export_main(["--model", str(demo_dir), "--out", str(out)]) == 1
    assert capsys.readouterr().err.strip() == f"nuwa-export: error: {out} exists and is not empty; pass --force to replace it"
    before = (out / "manifest.json").read_text()
    assert export_main(["--model", str(demo_dir), "--out", str(out), "--keep", "8", "--force", "--no-ort-graphs"]) == 0
    assert (out / "manifest.json").read_text() != before
    assert not _leftovers(tmp_path, "exp")


@pytest.mark.parametrize(
    "args,match",
    [
        (["--keep", "300"], "more than the 256 image patches"),
        (["--stage-one-keep", "8", "--stage-two-keep", "9"], "K2=9 must be between 1 and K1=8"),
        (["--stage-two-layer", "9"], "between 1 and 3"),
        (["--per-region", "1", "--stage-one-keep", "100"], "fewer than K1=100"),
        (["--per-region", "5"], "between 1 and 4"),
        (["--max-batch", "0"], "--max-batch must be between 1 and 64, got 0"),
        (["--max-batch", "65"], "--max-batch must be between 1 and 64, got 65"),
    ],
)
def test_cli_bad_budgets(demo_dir, tmp_path, capsys, args, match):
    assert export_main(["--model", str(demo_dir), "--out", str(tmp_path / "x"), *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nuwa-export: error: ") and match in err[0]
    assert not (tmp_path / "x").exists()


def test_failed_validation_leaves_nothing(demo_dir, tmp_path, monkeypatch):
    import nuwa_export.export.validate as validate

    def broken(path, expected):
        raise NuwaError("validation failed: vision.onnx image_tokens differs from the reference")

    monkeypatch.setattr(validate, "check_vision", broken)
    with pytest.raises(NuwaError, match="validation failed"):
        pipeline.export(str(demo_dir), tmp_path / "exp", progress=False, ort_graphs=False)
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_the_previous_export(demo_dir, demo_export, tmp_path, monkeypatch):
    import shutil

    import nuwa_export.export.validate as validate

    out = tmp_path / "exp"
    shutil.copytree(demo_export, out)
    snapshot = lambda: {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    before = snapshot()
    monkeypatch.setattr(validate, "check_vision", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        pipeline.export(str(demo_dir), out, force=True, progress=False, ort_graphs=False)
    assert snapshot() == before
    assert not _leftovers(tmp_path, "exp")


def test_ctrl_c_leaves_nothing_half_written(demo_dir, tmp_path):
    """A real SIGINT to a running nuwa-export, while it writes into its temporary directory."""
    out = tmp_path / "exp"
    proc = subprocess.Popen(
        [str(BIN / "nuwa-export"), "--model", str(demo_dir), "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def read():  # stderr, line by line, then None at EOF
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen, deadline = [], time.monotonic() + 300
    try:
        # the first step done inside the temporary directory: the export is now writing into it
        while not any(line.startswith("✓ trace vision tower") for line in seen):
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail("nuwa-export printed no '✓ trace vision tower' line within 300 s:\n" + "".join(seen))
            assert line is not None, "nuwa-export exited before it could be interrupted:\n" + "".join(seen)
            seen.append(line)
        assert proc.poll() is None and _leftovers(tmp_path, "exp"), "".join(seen)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        proc.kill()  # a no-op once it has exited
        proc.wait()
    reader.join(timeout=30)
    while not lines.empty():
        seen.append(lines.get_nowait() or "")
    err = "".join(seen)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().endswith("nuwa-export: interrupted"), err
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing at --out, no temporary left


BLOCK = """
import importlib.machinery, sys
class Block:  # these packages behave as if not installed
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('onnxruntime', 'tensorrt', 'tensorrt_rtx'):
            return importlib.machinery.ModuleSpec(name, self)
    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named '{spec.name}'", name=spec.name)
    def exec_module(self, module):
        pass
sys.meta_path.insert(0, Block())
"""


def test_help_and_import_without_onnxruntime_or_tensorrt():
    code = BLOCK + (
        "import nuwa_export, nuwa_export.tools.export, nuwa_export.export.pipeline, nuwa_export.build.engine, nuwa_export.runtime.runner\n"
        "from nuwa_export.tools.export import main as export_main, parser as export_parser\n"
        "print(export_parser().format_help())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--stage-one-keep" in proc.stdout and "--force" in proc.stdout


def test_missing_onnxruntime_is_one_line(demo_dir, tmp_path):
    code = BLOCK + f"from nuwa_export.tools.export import main as export_main; sys.exit(export_main(['--model', {str(demo_dir)!r}, '--out', {str(tmp_path / 'x')!r}, '--no-ort-graphs']))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env={**os.environ})
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == "nuwa-export: error: onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu)"
    assert not (tmp_path / "x").exists()
