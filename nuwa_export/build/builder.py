"""``nuwa-build``: one TensorRT engine per exported graph, with a sidecar each, under ``engines/``."""

from __future__ import annotations

from pathlib import Path

from nuwa_export import __version__
from nuwa_export import names as n
from nuwa_export.atomic import atomic_dir, check_dir_target
from nuwa_export.build.engine import BuildOptions, Profile, build_engine, strongly_typed
from nuwa_export.build.targets import target
from nuwa_export.errors import NuwaError
from nuwa_export.manifest import sha256_file
from nuwa_export.precision import BUILD, QUANTIZED, Precision
from nuwa_export.progress import Steps
from nuwa_export.runtime import sidecar as sc
from nuwa_export.runtime.tensorrt import (
    PLUGIN_ENV,
    check_plugin_library,
    import_tensorrt,
    load_plugin_library,
    plugin_library,
)


def graphs_to_build(plugin: bool) -> tuple[str, ...]:
    return (n.VISION_PLUGIN if plugin else n.VISION, *n.LLM_GRAPHS)


def device_info() -> tuple[str | None, tuple[int, int] | None]:
    """(name, compute capability) of CUDA device 0, or (None, None) without a GPU."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0), tuple(torch.cuda.get_device_capability(0))
    except Exception:  # a CPU build of torch, or no driver
        pass
    return None, None


class BuiltEngines(dict):
    """``graph -> Sidecar`` of what was built, with the precision chosen and why."""

    def __init__(self, sidecars: dict, precision: str, reason: str) -> None:
        super().__init__(sidecars)
        self.precision, self.reason = precision, reason


def choose_precision(requested: str | None, tgt, typed: bool, export_dtype: str, builder: str, quantized: str | None = None) -> tuple[str, str]:
    """``(precision, why)``: what ``--precision`` means for this export and builder.

    A strongly typed builder (TensorRT for RTX, TensorRT 11) runs each graph in its own types, so
    the default follows the export (float32 → fp32, float16 → fp16) and anything else is refused.
    Full TensorRT 10 converts: its default is the target profile's (fp16). A quantized export
    (``quantized``: nuwa-quantize's precision) is built strongly typed by every builder, in its
    own precision only.
    """
    if quantized is not None:
        if requested is not None and requested != quantized:
            raise NuwaError(
                f"this export is quantized to {quantized} (nuwa-quantize): its engines are built in {quantized}; "
                f"--precision {requested} needs the float export it came from"
            )
        return tgt.check_precision(quantized), f"the export is quantized to {quantized} (nuwa-quantize); built strongly typed"
    if requested in QUANTIZED:
        raise NuwaError(f"--precision {requested} needs a quantized export: nuwa-quantize EXPORT_DIR --precision {requested} --out DIR, then build that")
    llm_precision = Precision.of(export_dtype).build
    if typed:
        if requested is not None and requested != llm_precision:
            raise NuwaError(
                f"{builder} builds strongly typed networks only: engines run in the ONNX graphs' own types, "
                f"here {llm_precision} for the LLM (fp32 vision); --precision {requested} needs an export with that dtype "
                f"(nuwa-export --dtype), or use --precision {llm_precision}"
            )
        why = "as given" if requested else f"follows the {export_dtype} export: {builder} builds strongly typed networks"
        return tgt.check_precision(llm_precision), why
    if requested is not None:
        return tgt.check_precision(requested), "as given"
    return tgt.check_precision(tgt.default_precision), f"the {tgt.name} profile's default"


def build(
    directory: str | Path,
    *,
    precision: str | None = None,
    profile: str = "datacenter",
    builder: str = "tensorrt",
    plugin: bool = False,
    plugin_lib: str | Path | None = None,
    progress: bool = True,
) -> dict[str, sc.Sidecar]:
    """Build every engine of the export at ``directory`` into ``directory/engines`` (atomically)."""
    if plugin_lib is not None and not plugin:
        raise NuwaError("--plugin-lib has no effect without --plugin; add --plugin to build vision.plugin.onnx, or drop --plugin-lib")
    from nuwa_export.runtime.exports import read_export

    directory = Path(directory)
    manifest = read_export(directory)  # every graph's profiles are checked here, before the first build
    check_dir_target(directory / n.ENGINES_DIR, force=True)  # never replaced through a symbolic link
    tgt = target(profile)
    if precision is not None:
        if precision in QUANTIZED and not manifest.precision.quantized:
            raise NuwaError(f"--precision {precision} needs a quantized export: nuwa-quantize EXPORT_DIR --precision {precision} --out DIR, then build that")
        tgt.check_precision(precision)  # an unknown precision is refused before TensorRT is imported
    lib = plugin_library(plugin_lib)
    if plugin:
        if builder == "tensorrt-rtx":
            raise NuwaError("--plugin needs full TensorRT: the plugin library links libnvinfer, which TensorRT for RTX does not load")
        if lib is None:
            raise NuwaError(f"--plugin needs the plugin library: pass --plugin-lib PATH or set {PLUGIN_ENV} (see docs/plugin.md)")
        check_plugin_library(lib)  # missing, unreadable or not a shared library: refused before TensorRT is imported
    trt = import_tensorrt(builder)
    if plugin:
        load_plugin_library(lib)
    quantized = manifest.precision.name if manifest.precision.quantized else None
    typed = strongly_typed(trt) or quantized is not None  # Q/DQ graphs: every builder runs them in their own types
    precision, reason = choose_precision(precision, tgt, strongly_typed(trt), manifest.precision.float_type, f"{builder} {trt.__version__}", quantized)
    name, cc = device_info()
    if cc is not None and builder == "tensorrt" and cc not in tgt.compute_capabilities:
        raise NuwaError(f"this GPU ({name}, SM {cc[0]}.{cc[1]}) is not a {profile} device; pick the profile of the GPU you build on")
    if cc is not None and precision == "fp8" and tuple(cc) < (8, 9):
        raise NuwaError(f"fp8 engines need SM 8.9 or later (Ada, Hopper, Blackwell); this GPU ({name}) is SM {cc[0]}.{cc[1]}: quantize to int8 or int4 instead")
    steps = Steps(progress)
    workspace = tgt.workspace_bytes()
    out: dict[str, sc.Sidecar] = {}
    with atomic_dir(directory / n.ENGINES_DIR, force=True) as tmp:
        old_cache = directory / n.ENGINES_DIR / n.TIMING_CACHE
        if old_cache.is_file():
            (tmp / n.TIMING_CACHE).write_bytes(old_cache.read_bytes())
        for graph in graphs_to_build(plugin):
            # strongly typed: no flags ("fp32"); the sidecar records the graph's own precision
            graph_precision = (BUILD["float32"] if graph in n.VISION_GRAPHS else precision) if typed else precision
            options = BuildOptions(BUILD["float32"] if typed else precision, workspace, tgt.optimization_level, tmp / n.TIMING_CACHE, strongly_typed=typed)
            spec = manifest.graphs[graph]
            profiles = manifest.engine_profiles[graph]
            with steps(f"build {graph} ({builder} {trt.__version__}, {graph_precision}, {len(profiles)} profile{'s' * (len(profiles) > 1)})"):
                plan = build_engine(
                    directory / spec.file,
                    [Profile({k: tuple(tuple(s) for s in v) for k, v in p.items()}) for p in profiles],
                    builder=builder, options=options,
                )
            engine_file = n.engine_file(graph)
            (tmp / engine_file).write_bytes(plan)
            uses_plugin = graph == n.VISION_PLUGIN
            out[graph] = sc.Sidecar(
                schema_version=sc.SCHEMA_VERSION, nuwa_export_version=__version__, graph=graph,
                onnx_file=spec.file, onnx_sha256=manifest.files[spec.file].sha256,
                engine_file=engine_file, engine_sha256=sha256_file(tmp / engine_file),
                builder=builder, builder_version=trt.__version__, device_name=name,
                compute_capability=list(cc) if cc else None, target=profile, precision=graph_precision,
                workspace_bytes=workspace, profiles=profiles,
                plugin_library=lib.name if uses_plugin and lib else None,
                plugin_library_sha256=sha256_file(lib) if uses_plugin and lib else None,
            )
            sc.path_for(tmp, graph).write_text(out[graph].to_json())
    return BuiltEngines(out, precision, reason)
