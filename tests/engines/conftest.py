"""Build the native kernel library once per session (CMake + nvcc), for the tests that need it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def nvcc() -> str | None:
    """The CUDA compiler CMake would use: $CUDACXX, nvcc on PATH, or the default toolkit's."""
    for candidate in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@pytest.fixture(scope="session")
def kernel_library(tmp_path_factory) -> Path:
    """``libnuwa_kernels.so`` built from this checkout into a temporary directory."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed: cannot build the CUDA kernel library")
    compiler = nvcc()
    if compiler is None:
        pytest.skip("nvcc (the CUDA toolkit) is not installed: cannot build the CUDA kernel library")
    build = tmp_path_factory.mktemp("native")
    env = {**os.environ, "CUDACXX": compiler}
    for command in (
        ["cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"],
        ["cmake", "--build", str(build), "--target", "nuwa_kernels", "-j2"],
    ):
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    library = build / "libnuwa_kernels.so"
    assert library.is_file()
    return library
