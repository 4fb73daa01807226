"""The roofline model the benchmarks report against (benchmarks/roofline.py): FLOPs and bytes
counted by hand for a small decoder, and which limit binds."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import roofline  # noqa: E402


def test_flops_and_bytes_of_a_small_decoder():
    d = roofline.Decoder(hidden=8, intermediate=16, heads=2, kv_heads=1, head_dim=4, vocab=10)
    # q (8x8) + k, v (8x4 each, grouped KV) + o (8x8) + SwiGLU's three 8x16 matrices
    assert d.layer_weights() == 64 + 2 * 32 + 64 + 3 * 128 == 576
    # 2 FLOPs per weight per row, and q·kᵀ plus probabilities·v over every key: 2·2·rows·keys·heads·head_dim
    assert d.layer_flops(tokens=3, keys=5) == 2 * 3 * 576 + 4 * 3 * 5 * 2 * 4
    g = d.graph(layers=2, tokens=3, keys=5, lm_head=True)
    assert g == {"flops": 2 * d.layer_flops(3, 5) + 2 * 8 * 10, "weight_bytes": (2 * 576 + 80) * 4}


def test_the_larger_of_compute_and_memory_binds():
    lim = {"gemm": {"gflops": 100.0}, "dram": {"gb_per_s": 10.0}}
    compute = roofline.roofline_ms({"flops": 2e9, "weight_bytes": 1e6}, lim)
    assert compute["bound"] == "compute" and compute["ms"] == pytest.approx(20.0)
    memory = roofline.roofline_ms({"flops": 1e6, "weight_bytes": 5e8}, lim)
    assert memory["bound"] == "memory" and memory["ms"] == pytest.approx(50.0)


def test_the_machine_limits_are_measured_through_onnx_runtime():
    pytest.importorskip("onnxruntime")
    peak = roofline.gemm_peak(threads=1, seconds=0.05, repeats=1)
    assert peak["gflops"] > 0 and peak["shape_mkn"] == [roofline.GEMM_M, roofline.GEMM_K, roofline.GEMM_N]
