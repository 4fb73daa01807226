"""The CUDA kernel agrees with the PyTorch reference (scripts/check_plugin_kernel.py) on a GPU."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import cuda_device_count

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check_plugin_kernel.py"


def check_script():
    spec = importlib.util.spec_from_file_location("_nuwa_check_plugin_kernel", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def covered(case) -> tuple[bool, bool]:
    """(self_weight 0, a grid with an odd side)."""
    return case.self_weight == 0, any(side % 2 for side in case.grid)


@pytest.mark.gpu
def test_kernel_matches_the_reference(kernel_library):
    if cuda_device_count() == 0:
        pytest.skip("no CUDA GPU (libcuda.so.1 missing or no device): kernel numerics not checked")
    done = subprocess.run([sys.executable, str(SCRIPT), "--lib", str(kernel_library)], capture_output=True, text=True)
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    passed = [line for line in done.stdout.splitlines() if line.endswith("  ok")]
    assert any("self=0" in line for line in passed)  # Qwen2.5-VL's rule
    assert any(line.startswith(("5x7 ", "3x7 ")) for line in passed)  # odd sides


def test_check_script_covers_both_self_weights_and_odd_grids():
    """No GPU: the script's cases cover self_weight 0 (also on odd grids) and its reference is the
    exported op (``torch.ops.nuwa.swarm_aggregate``) with that self_weight."""
    ck = check_script()
    kinds = {covered(case) for case in ck.CASES}
    assert {(False, False), (False, True), (True, False), (True, True)} <= kinds
    from nuwa_export.export import ops  # registers torch.ops.nuwa.swarm_aggregate

    for number, case in enumerate(ck.CASES):
        if not any(covered(case)):
            continue
        features, sim, indices, scores = ck.make_inputs(case, "float32", seed=number)
        got = ck.reference(case, features, sim, indices, scores)
        tensors = [torch.from_numpy(a) for a in (features, sim, indices.astype(np.int64), scores)]
        want = ops.swarm_aggregate(*tensors, list(case.grid), case.distance, case.percentile, case.self_weight)
        np.testing.assert_array_equal(got, want.numpy())
        if case.self_weight == 0:  # the LLaVA rule would give other tokens
            other = ops.swarm_aggregate(*tensors, list(case.grid), case.distance, case.percentile, 1)
            assert not np.allclose(got, other.numpy(), atol=1e-4, rtol=1e-4)
