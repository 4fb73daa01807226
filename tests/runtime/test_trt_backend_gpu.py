"""The TensorRT backend against ONNX Runtime, token for token — on a machine with a GPU and TensorRT."""

from __future__ import annotations

import shutil

import pytest

pytestmark = pytest.mark.gpu
# before any fixture runs: without TensorRT there is nothing to export for
pytest.importorskip("tensorrt", reason="full TensorRT (tensorrt) is not installed: the TensorRT backend cannot run here")


def _gpu_trt():
    try:
        import tensorrt  # noqa: F401
        import torch
    except ImportError:
        pytest.skip("full TensorRT (tensorrt) is not installed: the TensorRT backend cannot run here")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to torch: the TensorRT backend cannot run here")


def test_trt_backend_matches_ort(demo_export, tmp_path):
    _gpu_trt()
    from nuwa_export.build.builder import build
    from nuwa_export.models.demo import example_picture
    from nuwa_export.runtime.runner import open_runner
    from nuwa_export.sampling import SamplingConfig

    d = tmp_path / "exp"
    shutil.copytree(demo_export, d)
    build(d, precision="fp32", builder="tensorrt", progress=False)
    cfg = SamplingConfig(max_new_tokens=20, stop_at_eos=False)
    trace_trt, trace_ort = {}, {}
    got = open_runner(d, backend="trt").generate(example_picture(), "What is in the picture?", cfg, trace=trace_trt)
    want = open_runner(d, backend="ort", device="cpu").generate(example_picture(), "What is in the picture?", cfg, trace=trace_ort)
    assert got.stage_one_indices == want.stage_one_indices
    assert got.stage_two_indices == want.stage_two_indices
    assert got.generated_ids == want.generated_ids
