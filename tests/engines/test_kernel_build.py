"""The CUDA kernel library builds with CMake + nvcc and exports its C ABI (no GPU needed)."""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

SYMBOLS = {
    "nuwa_kernels_abi_version",
    "nuwa_status_string",
    "nuwa_swarm_aggregate_check",
    "nuwa_swarm_aggregate_workspace_size",
    "nuwa_swarm_aggregate",
    "nuwa_swarm_aggregate_host",
}


def test_library_exports_exactly_the_c_abi(kernel_library):
    if shutil.which("nm") is None:
        pytest.skip("cannot list the library's exported symbols: nm not found (install binutils)")
    listing = subprocess.run(["nm", "-D", "--defined-only", str(kernel_library)],
                             capture_output=True, text=True, check=True).stdout
    exported = {line.split()[-1] for line in listing.splitlines() if " T " in line}
    assert SYMBOLS <= exported
    # Everything else stays hidden: no C++ (mangled) or CUDA runtime symbols leak out.
    assert not {s for s in exported if s.startswith("_Z") or s.startswith("cuda")}


def test_library_loads_without_a_gpu_and_validates_arguments(kernel_library):
    # The CUDA runtime is linked statically, so loading needs no libcudart.so and no driver.
    lib = ctypes.CDLL(str(kernel_library))
    assert lib.nuwa_kernels_abi_version() == 2  # 2: self_weight after percentile
    check = lib.nuwa_swarm_aggregate_check
    check.argtypes = [ctypes.c_int32] * 7 + [ctypes.c_float] * 2 + [ctypes.c_int32]
    check.restype = ctypes.c_char_p
    assert check(2, 576, 1024, 1024, 112, 24, 24, 280.0, 0.55, 1) is None
    assert check(2, 576, 1024, 1024, 112, 24, 24, 280.0, 0.55, 0) is None
    assert check(1, 35, 8, 8, 5, 5, 7, 47.36, 0.1, 0) is None  # odd sides are fine
    assert b"grid" in check(2, 575, 1024, 1024, 112, 24, 24, 280.0, 0.55, 1)
    assert b"percentile" in check(2, 576, 1024, 1024, 112, 24, 24, 280.0, 1.5, 1)
    assert b"distance" in check(2, 576, 1024, 1024, 112, 24, 24, 0.0, 0.55, 1)
    assert b"self_weight" in check(2, 576, 1024, 1024, 112, 24, 24, 280.0, 0.55, 2)
    assert b"self_weight" in check(2, 576, 1024, 1024, 112, 24, 24, 280.0, 0.55, -1)
    lib.nuwa_swarm_aggregate_workspace_size.argtypes = [ctypes.c_int32]
    lib.nuwa_swarm_aggregate_workspace_size.restype = ctypes.c_size_t
    assert lib.nuwa_swarm_aggregate_workspace_size(3) == 12


def test_host_entry_point_rejects_bad_shapes_before_touching_cuda(kernel_library):
    lib = ctypes.CDLL(str(kernel_library))
    lib.nuwa_status_string.restype = ctypes.c_char_p
    host = lib.nuwa_swarm_aggregate_host
    host.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int32] * 7 + [ctypes.c_float] * 2 + [ctypes.c_int32] * 3
    host.restype = ctypes.c_int32
    buf = np.zeros(64, np.float32).ctypes.data_as(ctypes.c_void_p)
    # N = 15 is not 4 x 4
    status = host(buf, buf, buf, buf, buf, 1, 15, 2, 2, 1, 4, 4, 280.0, 0.55, 1, 0, 0)
    assert status == -1
    assert b"invalid argument" in lib.nuwa_status_string(status)
    # unknown float type
    assert host(buf, buf, buf, buf, buf, 1, 16, 2, 2, 1, 4, 4, 280.0, 0.55, 1, 7, 0) == -1
    # self_weight is 0 or 1
    assert host(buf, buf, buf, buf, buf, 1, 16, 2, 2, 1, 4, 4, 280.0, 0.55, 3, 0, 0) == -1
