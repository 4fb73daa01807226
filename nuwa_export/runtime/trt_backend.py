"""TensorRT backend: engines from ``nuwa-build``, run through the same pipeline as ONNX Runtime.

Sidecars are read and checked before any engine is touched (TensorRT version, compute
capability, engine and plugin sha256); the plugin library is loaded before deserialising.
Device memory is torch CUDA tensors that the session keeps from prefill to the last token: inputs
are bound by address (``set_tensor_address``), outputs allocated on the GPU from the manifest's
contract (:meth:`~nuwa_export.runtime.backend.Backend.output_plan`, checked against the shapes TensorRT
infers) and returned without a copy, so each present KV is the next call's past where it lies.
Each LLM engine gets one execution context per optimisation profile (0 prefill, 1 decode).
"""

from __future__ import annotations

from pathlib import Path

from nuwa_export import names as n
from nuwa_export.errors import NuwaError
from nuwa_export.manifest import Manifest
from nuwa_export.precision import TENSORRT
from nuwa_export.runtime import sidecar as sc
from nuwa_export.runtime.backend import Backend
from nuwa_export.runtime.tensorrt import (
    import_tensorrt,
    load_plugin_library,
    plugin_library,
)


def vision_graph(engines: Path) -> str:
    """``vision`` when built, else ``vision_plugin`` (``nuwa-build --plugin``)."""
    for graph in n.VISION_GRAPHS:
        if sc.path_for(engines, graph).is_file():
            return graph
    raise NuwaError(f"no vision engine in {engines}; build the engines first: nuwa-build {engines.parent}")


def checked_sidecars(directory: Path, plugin_lib: str | Path | None = None, compute_capability=None):
    """Read and check every sidecar; returns ``(trt module, {graph: Sidecar}, RuntimeEnv)``.

    ``compute_capability`` is this GPU's (None: not checked here; the caller checks it once a GPU
    is known).
    """
    engines = directory / n.ENGINES_DIR
    if not engines.is_dir():
        raise NuwaError(f"{directory} has no engines/; build them first: nuwa-build {directory}")
    graphs = (vision_graph(engines), *n.LLM_GRAPHS)
    sidecars = {g: sc.read(sc.path_for(engines, g)) for g in graphs}
    builders = {s.builder for s in sidecars.values()}
    if len(builders) != 1:
        raise NuwaError(f"engines in {engines} come from different builders ({', '.join(sorted(builders))}); rebuild with nuwa-build")
    builder = builders.pop()
    trt = import_tensorrt(builder)
    env = sc.RuntimeEnv(builder, trt.__version__, compute_capability, plugin_library(plugin_lib))
    for s in sidecars.values():
        sc.check(s, engines, env, directory)
    return trt, sidecars, env


def choose_profile(graph: str, shapes: dict[str, tuple[int, ...]]) -> int:
    """The optimisation profile for these input shapes: vision 0; LLM graphs 0 (prefill: no past)
    or 1 (decode: one new token over a past), as ``export/profiles.py`` builds them."""
    if graph in n.VISION_GRAPHS:
        return 0
    first = n.INPUTS_EMBEDS if graph == n.LLM_PREFIX else n.HIDDEN_STATES
    seq = shapes[first][1]
    past = next(v[2] for k, v in shapes.items() if n.is_kv(k))
    if past == 0:
        return 0
    if seq == 1:
        return 1
    raise NuwaError(f"{graph}: {seq} new tokens over a past of {past} fits neither engine profile (prefill or one-token decode)")


def bind(ctx, engine, graph: str, inputs: dict, plan, device, address) -> tuple[list, list]:
    """Bind one call on an execution context (TensorRT's documented ``IExecutionContext`` API):
    each input by address after ``set_input_shape`` (converted only if the engine's type differs),
    each output allocated on ``device`` from ``plan`` after checking the shape TensorRT infers.
    Returns (inputs as bound, which must outlive the launch; outputs in plan order)."""
    import torch

    from nuwa_export.precision import torch_dtype

    held = []
    for key, t in inputs.items():
        want = torch_dtype(TENSORRT[engine.get_tensor_dtype(key).name])  # the engine's type decides
        t = t.to(device, want).contiguous()  # on the device already: a no-op unless the type differs
        held.append(t)
        ctx.set_input_shape(key, tuple(t.shape))
        ctx.set_tensor_address(key, address(t))
    outputs = []
    for spec in plan:
        trt_shape = tuple(ctx.get_tensor_shape(spec.name))
        if trt_shape != spec.shape:
            raise NuwaError(f"TensorRT's {graph} engine makes {spec.name} {list(trt_shape)}, the export's contract {list(spec.shape)}; rebuild with nuwa-build")
        t = torch.empty(spec.shape, dtype=torch_dtype(TENSORRT[engine.get_tensor_dtype(spec.name).name]), device=device)
        outputs.append(t)
        ctx.set_tensor_address(spec.name, address(t))
    return held, outputs


class TrtBackend(Backend):
    name = "trt"

    def __init__(self, directory: Path, manifest: Manifest, device: str = "auto", plugin_lib: str | Path | None = None) -> None:
        import torch

        super().__init__(manifest)
        trt, sidecars, env = checked_sidecars(directory, plugin_lib)  # before anything else
        if device == "cpu":
            raise NuwaError("the trt backend runs on a CUDA GPU; use --backend ort for the CPU")
        if not torch.cuda.is_available():
            raise NuwaError("the trt backend needs a CUDA GPU and a CUDA build of torch (this torch sees no GPU)")
        cc = tuple(torch.cuda.get_device_capability(0))
        env = sc.RuntimeEnv(env.builder, env.version, cc, env.plugin_library)
        for s in sidecars.values():
            sc.check(s, directory / n.ENGINES_DIR, env, directory)
        if any(s.plugin_library_sha256 for s in sidecars.values()):
            load_plugin_library(env.plugin_library)
        self.torch, self.trt = torch, trt
        self.stream = torch.cuda.Stream()
        self._spare: dict = {}
        runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        self.engines = {}
        for graph, s in sidecars.items():
            engine = runtime.deserialize_cuda_engine((directory / n.ENGINES_DIR / s.engine_file).read_bytes())
            if engine is None:
                raise NuwaError(f"TensorRT could not load {s.engine_file}; rebuild on this machine: nuwa-build {directory}")
            self.engines[n.VISION if graph in n.VISION_GRAPHS else graph] = engine
        self.contexts = {name: [self._context(e, i) for i in range(e.num_optimization_profiles)] for name, e in self.engines.items()}
        self.device = torch.device("cuda", torch.cuda.current_device())

    def _context(self, engine, profile: int):
        ctx = engine.create_execution_context()
        ctx.set_optimization_profile_async(profile, self.stream.cuda_stream)
        return ctx

    def run(self, graph: str, inputs: dict, out: dict | None = None) -> list:  # standard graphs: no in-place outputs
        torch = self.torch
        engine = self.engines[n.VISION if graph in n.VISION_GRAPHS else graph]
        shapes = {k: tuple(v.shape) for k, v in inputs.items()}
        ctx = self.contexts[graph][choose_profile(graph, shapes)]
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # inputs written by torch
        with torch.cuda.stream(self.stream):
            held, outputs = bind(ctx, engine, graph, inputs, self.output_plan(graph, inputs), self.device, self._address)
            if not ctx.execute_async_v3(self.stream.cuda_stream):
                raise NuwaError(f"TensorRT failed to run the {graph} engine")
        torch.cuda.current_stream(self.device).wait_stream(self.stream)  # later torch work sees the outputs
        del held  # converted inputs outlived the launch
        return outputs

    def _address(self, t) -> int:
        if t.numel() == 0:  # empty past: TensorRT still wants a valid address
            spare = self._spare.setdefault(t.dtype, self.torch.empty(1, dtype=t.dtype, device="cuda"))
            return spare.data_ptr()
        return t.data_ptr()

    def close(self) -> None:
        self.contexts, self.engines = {}, {}
