"""The CUDA kernel agrees with the PyTorch reference (scripts/check_plugin_kernel.py) on a GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import cuda_device_count

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.gpu


def test_kernel_matches_the_reference(kernel_library):
    if cuda_device_count() == 0:
        pytest.skip("no CUDA GPU (libcuda.so.1 missing or no device): kernel numerics not checked")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_plugin_kernel.py"), "--lib", str(kernel_library)],
                          capture_output=True, text=True)
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
