"""Helpers shared by test modules (import them from here; fixtures live in conftest.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

#: Demo checkpoint sizes for the variant tests: 8x8 patches, fast.
SMALL = {"image_size": 112, "vision_layers": 3, "text_layers": 4}


def cuda_device_count() -> int:
    """GPUs the CUDA driver sees (0 without a driver); torch may be a CPU build, so ask the driver."""
    import ctypes

    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def record_ort_sessions(monkeypatch) -> dict:
    """``{model file name: onnxruntime.InferenceSession}`` of every session created from now on.

    Through ONNX Runtime's public class, so tests can read the options a backend gave each of
    its sessions (``get_session_options()``) without reaching into the backend.
    """
    import onnxruntime as ort

    sessions: dict = {}

    class Recorded(ort.InferenceSession):
        def __init__(self, path_or_bytes, *args, **kwargs):
            super().__init__(path_or_bytes, *args, **kwargs)
            sessions[Path(path_or_bytes).name] = self

    monkeypatch.setattr(ort, "InferenceSession", Recorded)
    return sessions


def rehash(d: Path) -> None:
    """Re-record the size and sha256 of every file an export's manifest lists, as a careless (or
    clever) editor would: the files then pass their hashes, whatever they hold."""
    import json

    from nuwa_export.manifest import sha256_file
    from nuwa_export.names import MANIFEST

    m = json.loads((d / MANIFEST).read_text())
    for name in m["files"]:
        if (d / name).is_file():
            m["files"][name] = {"sha256": sha256_file(d / name), "size": (d / name).stat().st_size}
    (d / MANIFEST).write_text(json.dumps(m))


def noise_picture(seed: int, size=(150, 260)):
    """A picture of seeded noise, ``size`` = (height, width)."""
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))


# --- console scripts and one-line errors ------------------------------------------------------

#: Where the console scripts of this environment are (``.venv/bin``).
BIN = Path(sys.executable).parent


def assert_one_line(verb: str, code: int, err: str | bytes, match: str) -> str:
    """Exit 1 and exactly one stderr line ``<verb>: error: ...`` containing ``match``; no
    traceback and no warning. Returns the line."""
    err = err.decode("utf-8", "replace") if isinstance(err, bytes) else err
    lines = err.strip().splitlines()
    assert code == 1, (code, err)
    assert len(lines) == 1 and lines[0].startswith(f"{verb}: error: "), err
    assert match in lines[0], lines[0]
    assert "Traceback" not in err and "Warning" not in err, err
    return lines[0]


def tree(root: Path) -> dict:
    """Every entry under ``root`` (links not followed) with file contents: a snapshot to compare
    before and after a command that must change nothing."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_file():
                out[rel] = p.read_bytes()
            else:
                out[rel] = "dir"
    return out


def read_only_argv(directory: Path, argv: list[str]) -> list[str]:
    """``argv`` run where ``directory`` cannot be written. Root ignores permissions, so as root
    it is a read-only bind mount in a private mount namespace (skipped where that is not allowed)."""
    import pytest

    if os.geteuid() != 0:
        directory.chmod(0o555)
        return argv
    if not shutil.which("unshare"):
        pytest.skip("running as root, where chmod does not stop writes, and unshare(1) is missing")
    mount = f"mount --bind -o ro '{directory}' '{directory}'"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", mount], capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"running as root, where chmod does not stop writes, and no mount namespace here: {probe.stderr.strip()}")
    return ["unshare", "-m", "sh", "-c", f"{mount} && exec \"$@\"", "sh", *argv]
