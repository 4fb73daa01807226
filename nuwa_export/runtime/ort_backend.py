"""ONNX Runtime backend: CPU, or CUDA when onnxruntime-gpu and a GPU are present.

Every graph runs through an IOBinding: inputs are bound where their torch tensors live, outputs
are allocated by ONNX Runtime on the same device (from its memory arena) and handed to torch
through DLPack without a copy, then checked against the manifest's contract; each present KV
tensor is bound back as the next past where it lies, with no NumPy in between.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from nuwa_export import names as n
from nuwa_export.errors import NuwaError
from nuwa_export.manifest import Manifest
from nuwa_export.precision import name_of, numpy_dtype
from nuwa_export.runtime.backend import Backend


def _element(dtype: torch.dtype):
    """The NumPy type IOBinding takes for a torch dtype."""
    return numpy_dtype(name_of(dtype))


def _one_line(e: BaseException) -> str:
    """ONNX Runtime's message, without its ``[ONNXRuntimeError] : N :`` prefix, on one line."""
    text = " ".join(str(e).split()) or type(e).__name__
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : ", "", text)
    return re.sub(r"^Error in execution: ", "", text)[:400]


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


#: Which LLM graphs the ort backend runs (``OrtBackend(llm_graphs=...)``, ``Pipeline(..., llm_graphs=...)``).
LLM_GRAPHS = ("auto", "ort", "standard")


class OrtBackend(Backend):
    name = "ort"

    def __init__(self, directory: Path, manifest: Manifest, device: str = "auto", *, spinning: bool = False, llm_graphs: str = "auto") -> None:
        """``spinning=False`` (default): the three sessions run one after another, and ORT's
        spin-waiting threads of one would take CPU from the next (benchmarks/pruning_pays.py
        measured 19 % of the pruned prefill on 2 cores).

        ``llm_graphs``: ``ort`` runs the export's ONNX Runtime LLM graphs (fused attention, KV
        updated in place: :mod:`nuwa_export.export.fused`), ``standard`` the graphs TensorRT
        builds, ``auto`` (default) the ONNX Runtime ones when the export has them."""
        super().__init__(manifest)
        if llm_graphs not in LLM_GRAPHS:
            raise NuwaError(f"unknown LLM graphs '{llm_graphs}' (choose from {', '.join(LLM_GRAPHS)})")
        if llm_graphs == "ort" and not manifest.ort_graphs:
            raise NuwaError(f"{directory} has no ONNX Runtime LLM graphs (exported with --no-ort-graphs or by an older nuwa-export); re-export, or run the standard graphs")
        self.providers = providers_for(device)  # first: names the package when it is missing
        import onnxruntime as ort

        cuda = self.providers[0].startswith("CUDA")
        # ONNX Runtime's CUDA GroupQueryAttention kernels are float16/bfloat16: with a float32
        # export, ``auto`` keeps the standard graphs on CUDA (not run here: no onnxruntime-gpu)
        self.in_place = llm_graphs == "ort" or (llm_graphs == "auto" and bool(manifest.ort_graphs) and not (cuda and manifest.precision.io == "float32"))

        opts = ort.SessionOptions()
        opts.log_severity_level = 4  # fatal only: errors come back as exceptions, reported in one line
        if not spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.add_session_config_entry("session.inter_op.allow_spinning", "0")

        llm_opts = opts
        if manifest.precision.float_type != "float32" and self.providers[0] == "CPUExecutionProvider":
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

        llm = manifest.ort_graphs if self.in_place else manifest.graphs
        files = {n.VISION: manifest.graphs[n.VISION].file, **{g: llm[g].file for g in n.LLM_GRAPHS}}

        def session(graph: str, options):
            file = files[graph]
            try:
                return ort.InferenceSession(str(directory / file), options, providers=self.providers)
            except Exception as e:  # InvalidGraph, InvalidProtobuf, Fail, ...: a broken graph, not a bug here
                raise NuwaError(f"ONNX Runtime cannot load {directory / file}: {_one_line(e)}; re-run nuwa-export") from None

        self._files = files
        self._errors = _ort_errors()

        self.sessions = {n.VISION: session(n.VISION, opts), **{g: session(g, llm_opts) for g in n.LLM_GRAPHS}}
        self.device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        self._bind_device = ("cuda", self.device.index) if cuda else ("cpu", 0)

    def run(self, graph: str, inputs: dict[str, torch.Tensor], out: dict[str, torch.Tensor] | None = None) -> list[torch.Tensor]:
        session = self.sessions[graph]
        out = out or {}
        io = session.io_binding()
        kind, index = self._bind_device
        held = []  # contiguous copies (if any) must outlive the run
        for name, t in inputs.items():
            t = t.contiguous()
            held.append(t)
            io.bind_input(name, kind, index, _element(t.dtype), tuple(t.shape), t.data_ptr())
        plan = self.output_plan(graph, inputs)
        for spec in plan:
            if spec.name in out:  # written where the caller says (in-place KV: the past buffer itself)
                t = out[spec.name]
                if tuple(t.shape) != spec.shape or t.dtype != spec.dtype or not t.is_contiguous():
                    raise NuwaError(f"{self._files[graph]}: {spec.name} cannot be written into a {list(t.shape)} {t.dtype} tensor")
                io.bind_output(spec.name, kind, index, _element(t.dtype), spec.shape, t.data_ptr())
            else:  # allocated by ONNX Runtime on the device (its arena: no fresh pages every step)
                io.bind_output(spec.name, kind, index)
        if kind == "cuda":  # torch wrote the inputs on its stream; ORT runs on its own
            torch.cuda.synchronize(self.device)
        try:
            session.run_with_iobinding(io)
        except (*self._errors, RuntimeError) as e:  # run_with_iobinding reports a failed run as RuntimeError
            raise NuwaError(f"ONNX Runtime failed running {self._files[graph]}: {_one_line(e)}") from None
        outputs = [out[spec.name] if spec.name in out else self.torch_view(v) for spec, v in zip(plan, io.get_outputs())]
        for spec, t in zip(plan, outputs):
            if tuple(t.shape) != spec.shape or t.dtype != spec.dtype:
                raise NuwaError(f"{self._files[graph]} made {spec.name} {list(t.shape)} {t.dtype}, not the export's contract {list(spec.shape)}; re-run nuwa-export")
        return outputs

    def torch_view(self, value) -> torch.Tensor:
        """An ONNX Runtime output as a torch tensor over the same memory (DLPack: the public
        ``OrtValue`` has it since onnxruntime 1.2x, its C object for longer). An onnxruntime
        without DLPack gets a copy on the CPU, and a one-line refusal on CUDA."""
        for obj in (value, getattr(value, "_ortvalue", None)):
            if obj is not None and hasattr(obj, "__dlpack__"):
                return torch.from_dlpack(obj)
        if self.device.type == "cpu":
            return torch.from_numpy(value.numpy())
        raise NuwaError("this onnxruntime cannot hand CUDA outputs to torch (no DLPack); upgrade it: pip install -U onnxruntime-gpu")
