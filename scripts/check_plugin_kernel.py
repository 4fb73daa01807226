#!/usr/bin/env python3
"""Check the SwarmAggregate CUDA kernel against the PyTorch reference (needs a CUDA GPU).

Builds ``libnuwa_kernels.so`` with CMake (or takes ``--lib``), runs the kernel through its C ABI
on random inputs over several grids (odd sides too), K, D and attribute values (``self_weight`` 1,
LLaVA, and 0, Qwen2.5-VL), in float32 and float16, with int64 and int32 indices and with tied
anchor scores, and compares every output with the body of ``nuwa_export.export.ops.swarm_aggregate``
(the op the exporter emits): ``nuwa_export.pruning.spec.weights(...) @ features``, CPU, float32 inside.

Tolerances (``np.allclose``: ``|out - ref| <= atol + rtol * |ref|``):

- float32: atol = rtol = 1e-4. The kernel sums dot products, the row sum and the merge in a
  different order than torch's matmul; everything else (threshold, penalty, normalisation)
  follows the reference operation by operation, so differences are float32 rounding noise.
- float16: atol = 2e-2, rtol = 1e-2. Both sides compute in float32 from the same float16 inputs
  and round the result to float16 once, so they differ by about one float16 ulp (2^-10
  relative); the margin covers results that straddle a rounding boundary.

Prints one row per case and exits 1 if any case fails, 2 if no CUDA device can be used.

    .venv/bin/python scripts/check_plugin_kernel.py [--lib build/native/libnuwa_kernels.so]
"""

from __future__ import annotations

import argparse
import ctypes
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ABI_VERSION = 2
FLOAT_TYPES = {"float32": 0, "float16": 1}
INDEX_TYPES = {"int64": 0, "int32": 1}
TOLERANCES = {"float32": (1e-4, 1e-4), "float16": (2e-2, 1e-2)}  # (atol, rtol)


@dataclass(frozen=True)
class Case:
    grid: tuple[int, int]
    anchors: int
    dim: int
    sim_dim: int
    batch: int = 2
    distance: float = 280.0
    percentile: float = 0.55
    ties: bool = False  # anchor scores drawn from a few distinct values
    index_type: str = "int64"
    self_weight: int = 1  # 1: self entry set to 1 after normalising (LLaVA); 0: kept (Qwen2.5-VL)

    def label(self) -> str:
        h, w = self.grid
        extra = (" ties" if self.ties else "") + ("" if self.self_weight else " self=0")
        return (f"{h}x{w} K={self.anchors} D={self.dim} Ds={self.sim_dim} B={self.batch} "
                f"dist={self.distance:g} q={self.percentile:g} {self.index_type}{extra}")


CASES = [
    Case((24, 24), 112, 1024, 1024),  # LLaVA-1.5 at --keep 64
    Case((24, 24), 112, 1024, 1024, ties=True),
    Case((16, 16), 49, 64, 48, batch=3, ties=True),  # the demo's grid
    Case((12, 20), 37, 96, 32, index_type="int32"),  # not square
    Case((8, 8), 16, 33, 17, distance=2.0),  # reach 1.4 patches
    Case((8, 8), 64, 40, 8, distance=1e4, percentile=1.0),  # K = N; only the top score is a pillar; reach > grid
    Case((8, 8), 10, 40, 8, percentile=0.0, ties=True),  # every anchor a pillar
    Case((2, 2), 1, 8, 4, batch=1),  # one anchor
    Case((48, 48), 300, 128, 256, batch=1),  # N = 2304 (576 * 4)
    Case((3, 7), 9, 33, 17, distance=2.0),  # odd sides
    # self_weight = 0 (Qwen2.5-VL): pillars and collectors keep their normalised self entry
    Case((5, 7), 35, 40, 8, percentile=0.3, self_weight=0),  # K = N: the zero sim vector is an anchor
    Case((5, 7), 12, 64, 48, batch=3, distance=2.0, ties=True, index_type="int32", self_weight=0),
    # Qwen2.5-VL's settings: reach 0.8 x the padded grid's diagonal (distance = its square), q = 0.1
    Case((25, 19), 120, 256, 128, distance=631.04, percentile=0.1, self_weight=0),
    Case((24, 24), 112, 1024, 1024, distance=677.12, percentile=0.1, ties=True, self_weight=0),
]


def build(build_dir: Path) -> Path:
    """Configure and build the ``nuwa_kernels`` target; return the path of the library."""
    subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release"],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(build_dir), "--target", "nuwa_kernels", "-j2"],
                   check=True, stdout=subprocess.DEVNULL)
    return build_dir / "libnuwa_kernels.so"


def load(path: Path) -> ctypes.CDLL:
    """Load the library and declare the C signatures used here."""
    lib = ctypes.CDLL(str(path))
    i32, f32, ptr = ctypes.c_int32, ctypes.c_float, ctypes.c_void_p
    lib.nuwa_kernels_abi_version.restype = i32
    lib.nuwa_status_string.argtypes = [i32]
    lib.nuwa_status_string.restype = ctypes.c_char_p
    lib.nuwa_swarm_aggregate_check.argtypes = [i32] * 7 + [f32, f32, i32]
    lib.nuwa_swarm_aggregate_check.restype = ctypes.c_char_p
    lib.nuwa_swarm_aggregate_host.argtypes = [ptr] * 5 + [i32] * 7 + [f32, f32, i32, i32, i32]
    lib.nuwa_swarm_aggregate_host.restype = i32
    if lib.nuwa_kernels_abi_version() != ABI_VERSION:
        raise RuntimeError(f"{path}: ABI version {lib.nuwa_kernels_abi_version()}, expected {ABI_VERSION}")
    return lib


def run_kernel(lib: ctypes.CDLL, case: Case, features, sim, indices, scores) -> tuple[int, np.ndarray]:
    """Run the kernel on host arrays; returns (status, tokens)."""
    b, n, d = features.shape
    tokens = np.zeros((b, case.anchors, d), dtype=features.dtype)
    arrays = [np.ascontiguousarray(a) for a in (features, sim, indices, scores)]
    status = lib.nuwa_swarm_aggregate_host(
        *(a.ctypes.data_as(ctypes.c_void_p) for a in arrays), tokens.ctypes.data_as(ctypes.c_void_p),
        b, n, d, sim.shape[2], case.anchors, case.grid[0], case.grid[1], case.distance, case.percentile,
        case.self_weight, FLOAT_TYPES[str(features.dtype)], INDEX_TYPES[str(indices.dtype)])
    return status, tokens


def make_inputs(case: Case, dtype: str, seed: int):
    rng = np.random.default_rng(seed)
    h, w = case.grid
    n = h * w
    features = rng.standard_normal((case.batch, n, case.dim)).astype(dtype)
    sim = rng.standard_normal((case.batch, n, case.sim_dim)).astype(dtype)
    sim[:, n // 3] = 0  # a zero similarity vector exercises the normalisation epsilon
    indices = np.stack([np.sort(rng.choice(n, case.anchors, replace=False)) for _ in range(case.batch)])
    scores = rng.random((case.batch, case.anchors))
    if case.ties:
        scores = np.round(scores * 4) / 4
    return features, sim, indices.astype(case.index_type), scores.astype(dtype)


def reference(case: Case, features, sim, indices, scores) -> np.ndarray:
    import torch

    from nuwa_export.pruning.spec import StageOneSpec, weights as merge_weights  # the body of export/ops.py's op

    f = torch.from_numpy(features)
    spec = StageOneSpec(1, case.distance, case.percentile, bool(case.self_weight))
    weights = merge_weights(torch.from_numpy(sim), torch.from_numpy(indices.astype(np.int64)), torch.from_numpy(scores),
                            tuple(case.grid), spec)
    return (weights @ f.float()).to(f.dtype).numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lib", type=Path, help="a built libnuwa_kernels.so (default: build one in a temp dir)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="nuwa-kernels-") as tmp:
        lib = load(args.lib if args.lib else build(Path(tmp)))
        header = f"{'case':<66} {'dtype':<8} {'max |err|':>10} {'max rel':>9} {'atol/rtol':>13}  result"
        print(header)
        print("-" * len(header))
        failures = 0
        for number, case in enumerate(CASES):
            for dtype in ("float32", "float16"):
                inputs = make_inputs(case, dtype, seed=number)
                status, out = run_kernel(lib, case, *inputs)
                if status != 0:
                    message = lib.nuwa_status_string(status).decode()
                    print(f"{case.label():<66} {dtype:<8} kernel failed: {message} ({status})")
                    if status > 0 and number == 0 and dtype == "float32":
                        print("no usable CUDA device; nothing was checked", file=sys.stderr)
                        return 2
                    failures += 1
                    continue
                ref = reference(case, *inputs)
                atol, rtol = TOLERANCES[dtype]
                out32, ref32 = out.astype(np.float64), ref.astype(np.float64)
                err = np.abs(out32 - ref32)
                rel = err / np.maximum(np.abs(ref32), 1e-6)
                ok = bool(np.allclose(out32, ref32, atol=atol, rtol=rtol)) and np.isfinite(out32).all()
                failures += not ok
                print(f"{case.label():<66} {dtype:<8} {err.max():>10.2e} {rel.max():>9.1e} "
                      f"{f'{atol:g}/{rtol:g}':>13}  {'ok' if ok else 'FAIL'}")
        total = 2 * len(CASES)
        print(f"\n{total - failures}/{total} cases within tolerance")
        return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
