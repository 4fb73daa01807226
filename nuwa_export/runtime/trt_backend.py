"""TensorRT backend: engines from ``nuwa-build``, run through the same pipeline as ONNX Runtime.

Sidecars are read and checked before any engine is touched (TensorRT version, compute
capability, engine and plugin sha256); the plugin library is loaded before deserialising.
Device memory is handled with torch CUDA tensors; each LLM engine gets one execution context
per optimisation profile (0 prefill, 1 decode).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nuwa_export.build import sidecar as sc
from nuwa_export.build.builder import ENGINES_DIR, plugin_library
from nuwa_export.build.engine import import_tensorrt, load_plugin_library
from nuwa_export.errors import NuwaError
from nuwa_export.export.llm import kv_names
from nuwa_export.export.manifest import Manifest
from nuwa_export.runtime.backend import Backend


def vision_graph(engines: Path) -> str:
    """``vision`` when built, else ``vision_plugin`` (``nuwa-build --plugin``)."""
    for graph in ("vision", "vision_plugin"):
        if sc.path_for(engines, graph).is_file():
            return graph
    raise NuwaError(f"no vision engine in {engines}; build the engines first: nuwa-build {engines.parent}")


def checked_sidecars(directory: Path, plugin_lib: str | Path | None = None, compute_capability=None):
    """Read and check every sidecar; returns ``(trt module, {graph: Sidecar}, RuntimeEnv)``.

    ``compute_capability`` is this GPU's (None: not checked here; the caller checks it once a GPU
    is known).
    """
    engines = directory / ENGINES_DIR
    if not engines.is_dir():
        raise NuwaError(f"{directory} has no engines/; build them first: nuwa-build {directory}")
    graphs = (vision_graph(engines), "llm_prefix", "llm_suffix")
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


_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT64": "int64", "INT32": "int32", "BOOL": "bool"}


class TrtBackend(Backend):
    name = "trt"

    def __init__(self, directory: Path, manifest: Manifest, device: str = "auto", plugin_lib: str | Path | None = None) -> None:
        import torch

        trt, sidecars, env = checked_sidecars(directory, plugin_lib)  # before anything else
        if device == "cpu":
            raise NuwaError("the trt backend runs on a CUDA GPU; use --backend ort for the CPU")
        if not torch.cuda.is_available():
            raise NuwaError("the trt backend needs a CUDA GPU and a CUDA build of torch (this torch sees no GPU)")
        cc = tuple(torch.cuda.get_device_capability(0))
        env = sc.RuntimeEnv(env.builder, env.version, cc, env.plugin_library)
        for s in sidecars.values():
            sc.check(s, directory / ENGINES_DIR, env, directory)
        if any(s.plugin_library_sha256 for s in sidecars.values()):
            load_plugin_library(env.plugin_library)
        self.torch, self.trt = torch, trt
        self.stream = torch.cuda.Stream()
        self._spare: dict = {}
        runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        self.engines = {}
        for graph, s in sidecars.items():
            engine = runtime.deserialize_cuda_engine((directory / ENGINES_DIR / s.engine_file).read_bytes())
            if engine is None:
                raise NuwaError(f"TensorRT could not load {s.engine_file}; rebuild on this machine: nuwa-build {directory}")
            self.engines["vision" if graph.startswith("vision") else graph] = engine
        self.contexts = {name: [self._context(e, i) for i in range(e.num_optimization_profiles)] for name, e in self.engines.items()}
        layer, n = manifest.budgets.stage_two_layer, manifest.budgets.num_layers
        self._prefix_past, self._suffix_past = kv_names("past", range(layer)), kv_names("past", range(layer, n))

    def _context(self, engine, profile: int):
        ctx = engine.create_execution_context()
        ctx.set_optimization_profile_async(profile, self.stream.cuda_stream)
        return ctx

    def _run(self, name: str, profile: int, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch, engine = self.torch, self.engines[name]
        ctx = self.contexts[name][profile]
        keep = []  # device buffers must outlive the launch
        with torch.cuda.stream(self.stream):
            for key, array in inputs.items():
                want = getattr(torch, _DTYPES[engine.get_tensor_dtype(key).name])  # the engine's type decides
                t = torch.from_numpy(np.ascontiguousarray(array)).cuda(non_blocking=False).to(want)
                keep.append(t)
                ctx.set_input_shape(key, tuple(t.shape))
                ctx.set_tensor_address(key, self._address(t))
            outputs = []
            for i in range(engine.num_io_tensors):
                key = engine.get_tensor_name(i)
                if engine.get_tensor_mode(key) != self.trt.TensorIOMode.OUTPUT:
                    continue
                shape = tuple(ctx.get_tensor_shape(key))
                dtype = getattr(torch, _DTYPES[engine.get_tensor_dtype(key).name])
                t = torch.empty(shape, dtype=dtype, device="cuda")
                outputs.append(t)
                ctx.set_tensor_address(key, self._address(t))
            if not ctx.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"TensorRT failed to run the {name} engine")
        self.stream.synchronize()
        # float16 KV stays float16 (it is fed back as the next past); NumPy has no bfloat16
        return [(t.float() if t.dtype == torch.bfloat16 else t).cpu().numpy() for t in outputs]

    def _address(self, t) -> int:
        if t.numel() == 0:  # empty past: TensorRT still wants a valid address
            spare = self._spare.setdefault(t.dtype, self.torch.empty(1, dtype=t.dtype, device="cuda"))
            return spare.data_ptr()
        return t.data_ptr()

    def vision(self, pixel_values):
        tokens, idx = self._run("vision", 0, {"pixel_values": pixel_values})
        return tokens, idx

    def prefix(self, inputs_embeds, position_ids, vision_start, past):
        profile = 1 if inputs_embeds.shape[1] == 1 and past[0].shape[2] > 0 else 0
        feeds = {"inputs_embeds": inputs_embeds, "position_ids": position_ids, "vision_start": np.array([vision_start], np.int64)}
        feeds.update(zip(self._prefix_past, past))
        out = self._run("llm_prefix", profile, feeds)
        return out[0], out[1:-1], out[-1]

    def suffix(self, hidden, position_ids, past):
        profile = 1 if hidden.shape[1] == 1 and past[0].shape[2] > 0 else 0
        feeds = {"hidden_states": hidden, "position_ids": position_ids}
        feeds.update(zip(self._suffix_past, past))
        out = self._run("llm_suffix", profile, feeds)
        return out[0], out[1:]

    def close(self) -> None:
        self.contexts, self.engines = {}, {}
