"""nuwa-build's default precision follows the export for strongly typed builders, and says why."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nuwa_export.build.builder import choose_precision
from nuwa_export.build.targets import TARGETS
from nuwa_export.errors import NuwaError

DC = TARGETS["datacenter"]


@pytest.mark.parametrize(
    "requested, typed, dtype, want",
    [
        (None, True, "float32", "fp32"),  # TensorRT for RTX on a float32 export
        (None, True, "float16", "fp16"),  # ... and on a float16 export
        ("fp32", True, "float32", "fp32"),
        (None, False, "float32", "fp16"),  # full TensorRT 10 converts: the profile's default
        (None, False, "float16", "fp16"),
        ("bf16", False, "float32", "bf16"),
        ("fp32", False, "float16", "fp32"),
    ],
)
def test_choose_precision(requested, typed, dtype, want):
    precision, why = choose_precision(requested, DC, typed, dtype, "builder x")
    assert precision == want
    if requested:
        assert why == "as given"
    elif typed:
        assert why == f"follows the {dtype} export: builder x builds strongly typed networks"
    else:
        assert why == "the datacenter profile's default"


@pytest.mark.parametrize("requested, dtype", [("fp16", "float32"), ("fp32", "float16"), ("bf16", "float32")])
def test_strongly_typed_refuses_a_precision_the_graphs_do_not_have(requested, dtype):
    with pytest.raises(NuwaError, match=f"--precision {requested} needs an export with that dtype"):
        choose_precision(requested, DC, True, dtype, "tensorrt-rtx 1.7")


@pytest.mark.trt_rtx
def test_nuwa_build_rtx_without_precision_on_a_float32_export(demo_export, tmp_path):
    """The README's command with no --precision: fp32 engines, and the summary says why."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX not installed (pip install tensorrt-rtx-cu13)")
    d = tmp_path / "exp"
    shutil.copytree(demo_export, d)
    env = {**os.environ, "COLUMNS": "250"}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "nuwa-build"), str(d), "--builder", "tensorrt-rtx"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "precision fp32 (follows the float32 export: tensorrt-rtx" in proc.stderr
    sidecars = {p.name: json.loads(p.read_text()) for p in (d / "engines").glob("*.json")}
    assert sorted(s["precision"] for s in sidecars.values()) == ["fp32", "fp32", "fp32"]
