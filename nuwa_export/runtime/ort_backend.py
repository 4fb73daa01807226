"""ONNX Runtime backend: CPU, or CUDA when onnxruntime-gpu and a GPU are present."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from nuwa_export.errors import NuwaError
from nuwa_export.export.llm import kv_names
from nuwa_export.export.manifest import Manifest
from nuwa_export.runtime.backend import Backend


def _one_line(e: BaseException) -> str:
    """ONNX Runtime's message, without its ``[ONNXRuntimeError] : N :`` prefix, on one line."""
    text = " ".join(str(e).split()) or type(e).__name__
    return re.sub(r"^\[ONNXRuntimeError\] : \d+ : ", "", text)[:400]


def _ort_errors() -> tuple[type[BaseException], ...]:
    """ONNX Runtime's own exception types (raised when a graph cannot run on these inputs)."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as state
    except ImportError:
        return ()
    return tuple(v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception))


def providers_for(device: str) -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise NuwaError("the ort backend needs onnxruntime: pip install onnxruntime (or onnxruntime-gpu for CUDA)") from None
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise NuwaError("--device cuda needs onnxruntime-gpu with a CUDA GPU: pip install onnxruntime-gpu")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device != "auto":
        raise NuwaError(f"unknown --device '{device}' for the ort backend (auto, cpu, cuda)")
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OrtBackend(Backend):
    name = "ort"

    def __init__(self, directory: Path, manifest: Manifest, device: str = "auto", *, spinning: bool = False) -> None:
        """``spinning=False`` (default): the three sessions run one after another, and ORT's
        spin-waiting threads of one would take CPU from the next (benchmarks/pruning_pays.py
        measured 19 % of the pruned prefill on 2 cores)."""
        self.providers = providers_for(device)  # first: names the package when it is missing
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 4  # fatal only: errors come back as exceptions, reported in one line
        if not spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.add_session_config_entry("session.inter_op.allow_spinning", "0")

        llm_opts = opts
        if manifest.llm.dtype != "float32" and self.providers[0] == "CPUExecutionProvider":
            # ORT's CPU MatMul has no float16 kernel on x86: it runs float16 nodes in float32
            # behind inserted Casts. Full optimisation folds those into float32 copies of every
            # weight (twice the memory: 27 GB for 7B), so: basic optimisation (weights stay
            # float16, memory-mapped), and casts scheduled next to their MatMul (priority order)
            # into freed, not pooled, memory (no arena): the default order runs every Cast first,
            # holding all float32 copies at once (a 7B export was OOM-killed at 24 GiB that way).
            llm_opts = ort.SessionOptions()
            llm_opts.log_severity_level = 4  # fatal only: errors come back as exceptions, reported in one line
            llm_opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            llm_opts.execution_order = ort.ExecutionOrder.PRIORITY_BASED
            llm_opts.enable_cpu_mem_arena = False
            if not spinning:
                llm_opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
                llm_opts.add_session_config_entry("session.inter_op.allow_spinning", "0")

        def session(graph: str, options):
            file = manifest.graphs[graph].file
            try:
                return ort.InferenceSession(str(directory / file), options, providers=self.providers)
            except Exception as e:  # InvalidGraph, InvalidProtobuf, Fail, ...: a broken graph, not a bug here
                raise NuwaError(f"ONNX Runtime cannot load {directory / file}: {_one_line(e)}; re-run nuwa-export") from None

        self._files = {g: manifest.graphs[g].file for g in ("vision", "llm_prefix", "llm_suffix")}
        self._errors = _ort_errors()

        self._vision = session("vision", opts)
        self._prefix, self._suffix = session("llm_prefix", llm_opts), session("llm_suffix", llm_opts)
        layer, n = manifest.budgets.stage_two_layer, manifest.budgets.num_layers
        self._prefix_past = kv_names("past", range(layer))
        self._suffix_past = kv_names("past", range(layer, n))
        self.device = "cuda" if self.providers[0].startswith("CUDA") else "cpu"

    def _run(self, graph: str, session, names, feeds):
        try:
            return session.run(names, feeds)
        except self._errors as e:
            raise NuwaError(f"ONNX Runtime failed running {self._files[graph]}: {_one_line(e)}") from None

    def vision(self, pixel_values):
        tokens, idx = self._run("vision", self._vision, ["image_tokens", "patch_indices"], {"pixel_values": pixel_values})
        return tokens, idx

    def prefix(self, inputs_embeds, position_ids, vision_start, past):
        feeds = {"inputs_embeds": inputs_embeds, "position_ids": position_ids, "vision_start": np.array([vision_start], np.int64)}
        feeds.update(zip(self._prefix_past, past))
        out = self._run("llm_prefix", self._prefix, None, feeds)
        return out[0], out[1:-1], out[-1]

    def suffix(self, hidden, position_ids, past):
        feeds = {"hidden_states": hidden, "position_ids": position_ids}
        feeds.update(zip(self._suffix_past, past))
        out = self._run("llm_suffix", self._suffix, None, feeds)
        return out[0], out[1:]
