"""The machine's own limits, measured the way the graphs run, and each LLM graph's roofline.

- GEMM peak: a cache-resident ``MatMul`` (weights of a few hundred KiB) through ONNX Runtime with
  the pipeline's thread settings (all cores, spinning off), best of several timed batches.
- DRAM read bandwidth: the faster of two ONNX Runtime kernels reading 256 MiB, far more than the
  caches hold: ``ReduceSum`` over a buffer, and a one-row ``MatMul`` (GEMV) over a weight, which is
  how decode streams its weights (on the 2-core benchmark machine the GEMV reads ~2.7× faster).
- Per graph, real FLOPs (Q/K/V/O projections with grouped KV, attention scores and values, the
  three SwiGLU matrices, the lm_head on the last position) and the weight bytes it streams; its
  roofline time is ``max(FLOPs / peak, weight bytes / bandwidth)``.

Used by ``pruning_pays.py``; never asserts on time.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

import numpy as np

#: Cache-resident GEMM: A [M, K] x B [K, N], B a 512 KiB weight (float32).
GEMM_M, GEMM_K, GEMM_N = 256, 512, 256
#: DRAM: 256 MiB of float32, read once per run.
DRAM_FLOATS = 64 * 2**20
#: The GEMV's weight: [GEMV_K, GEMV_N] float32, 256 MiB.
GEMV_K, GEMV_N = 4096, 16384


def _session(model, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _best(fn, seconds: float, repeats: int) -> float:
    """The best per-call time (s) over ``repeats`` batches of calls lasting about ``seconds`` each."""
    fn()
    t = time.perf_counter()
    n = 0
    while time.perf_counter() - t < seconds / 4:
        fn()
        n += 1
    calls = max(1, int(4 * n))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t) / calls)
    return best


def gemm_peak(threads: int, seconds: float = 1.0, repeats: int = 5) -> dict:
    """GFLOP/s of a cache-resident float32 MatMul through ONNX Runtime."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((GEMM_K, GEMM_N), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["y"])], "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [GEMM_M, GEMM_K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [GEMM_M, GEMM_N])], [w],
    )
    sess = _session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), threads)
    a = rng.standard_normal((GEMM_M, GEMM_K), dtype=np.float32)
    s = _best(lambda: sess.run(None, {"a": a}), seconds, repeats)
    return {"gflops": 2 * GEMM_M * GEMM_K * GEMM_N / s / 1e9, "shape_mkn": [GEMM_M, GEMM_K, GEMM_N], "best_ms": s * 1e3}


def dram_read(threads: int, seconds: float = 1.0, repeats: int = 3) -> dict:
    """GB/s of ONNX Runtime reading 256 MiB of float32: ``ReduceSum`` of a buffer and a one-row
    ``MatMul`` over a weight; ``gb_per_s`` is the faster (the machine's demonstrated limit)."""
    from onnx import TensorProto, helper, numpy_helper

    opset = [helper.make_opsetid("", 18)]
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0)], "read",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [DRAM_FLOATS])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    )
    sess = _session(helper.make_model(graph, opset_imports=opset), threads)
    x = np.ones(DRAM_FLOATS, dtype=np.float32)
    reduce_s = _best(lambda: sess.run(None, {"x": x}), seconds, repeats)
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((GEMV_K, GEMV_N), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["y"])], "gemv",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, GEMV_K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, GEMV_N])], [w],
    )
    sess = _session(helper.make_model(graph, opset_imports=opset), threads)
    a = rng.standard_normal((1, GEMV_K), dtype=np.float32)
    gemv_s = _best(lambda: sess.run(None, {"a": a}), seconds, repeats)
    kernels = {"reduce_sum": DRAM_FLOATS * 4 / reduce_s / 1e9, "gemv": GEMV_K * GEMV_N * 4 / gemv_s / 1e9}
    best = max(kernels, key=kernels.get)
    return {"gb_per_s": kernels[best], "kernel": best, "kernels_gb_per_s": kernels, "bytes": DRAM_FLOATS * 4,
            "best_ms": (reduce_s if best == "reduce_sum" else gemv_s) * 1e3}


def limits(threads: int | None = None) -> dict:
    threads = threads or len(os.sched_getaffinity(0))
    return {"threads": threads, "gemm": gemm_peak(threads), "dram": dram_read(threads)}


@dataclass(frozen=True)
class Decoder:
    """What the FLOPs and bytes of a decoder stack depend on (float32 weights)."""

    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    bytes_per_weight: int = 4

    @classmethod
    def from_config(cls, tc) -> "Decoder":
        head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
        return cls(tc.hidden_size, tc.intermediate_size, tc.num_attention_heads, tc.num_key_value_heads, head_dim, tc.vocab_size)

    def layer_weights(self) -> int:
        h, kv = self.hidden, self.kv_heads * self.head_dim
        return h * (self.heads * self.head_dim) + 2 * h * kv + (self.heads * self.head_dim) * h + 3 * h * self.intermediate

    def layer_flops(self, tokens: int, keys: int) -> int:
        """One layer on ``tokens`` new rows attending over ``keys`` cache entries (causal prefill:
        on average half of them; counted in full, as the graph's matmuls compute them)."""
        attention = 2 * 2 * tokens * keys * self.heads * self.head_dim  # q·kᵀ and probabilities·v
        return 2 * tokens * self.layer_weights() + attention

    def graph(self, layers: int, tokens: int, keys: int, lm_head: bool = False) -> dict:
        flops = layers * self.layer_flops(tokens, keys) + (2 * self.hidden * self.vocab if lm_head else 0)
        weights = layers * self.layer_weights() + (self.hidden * self.vocab if lm_head else 0)
        return {"flops": flops, "weight_bytes": weights * self.bytes_per_weight}

    def as_dict(self) -> dict:
        return asdict(self)


def roofline_ms(cost: dict, lim: dict) -> dict:
    """``max(FLOPs / peak, bytes / bandwidth)`` and which of the two binds."""
    compute = cost["flops"] / (lim["gemm"]["gflops"] * 1e9) * 1e3
    memory = cost["weight_bytes"] / (lim["dram"]["gb_per_s"] * 1e9) * 1e3
    return {"ms": max(compute, memory), "compute_ms": compute, "memory_ms": memory, "bound": "compute" if compute >= memory else "memory"}
