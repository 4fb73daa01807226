"""Parse an exported ONNX graph and build a serialized engine with TensorRT or TensorRT for RTX.

Both Python modules (``tensorrt`` 10.x/11.x and ``tensorrt_rtx``) share the API used here.
TensorRT for RTX builds without a GPU, which is how CI proves every graph builds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nuwa_export.atomic import check_utf8_path
from nuwa_export.errors import NuwaError
from nuwa_export.runtime.tensorrt import import_tensorrt


@dataclass(frozen=True)
class Profile:
    """One optimisation profile: input name → (min, opt, max) shapes."""

    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


_LOGGERS: dict = {}


def quiet_logger(trt):
    """A TensorRT logger that keeps errors instead of printing them (our errors are one line).

    One per module, alive as long as the process, as TensorRT requires of a logger.
    """
    if trt not in _LOGGERS:

        class Quiet(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, severity, msg) -> None:
                if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                    self.errors.append(" ".join(str(msg).split()))

        _LOGGERS[trt] = Quiet()
    return _LOGGERS[trt]


def parse(trt, onnx_path: Path, typed: bool = False):
    """Returns ``(builder, network, parser)``; parser errors become one :class:`NuwaError`.
    ``typed``: a strongly typed network where this TensorRT still has weakly typed ones (10.x),
    as quantized (Q/DQ) graphs need."""
    check_utf8_path(onnx_path, "ONNX graph")  # parse_from_file takes a str that must encode as UTF-8
    logger = quiet_logger(trt)
    logger.errors.clear()  # what an earlier graph logged is not this graph's error
    builder = trt.Builder(logger)
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None) if typed else None
    # explicit batch is the only mode in TensorRT 10+; TensorRT for RTX is strongly typed already
    network = builder.create_network(0 if flag is None or strongly_typed(trt) else 1 << int(flag))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        first = errors[0] if errors else None
        detail = f"{first.node_operator()} node '{first.node_name()}': {first.desc()}" if first else "no detail"
        raise NuwaError(f"TensorRT could not parse {onnx_path.name}: {detail}")
    return builder, network, parser


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp32"  # fp32 | fp16 | bf16
    workspace_bytes: int | None = None
    optimization_level: int | None = None
    timing_cache: Path | None = None  # read if present, written back (TensorRT; RTX has none)
    strongly_typed: bool = False  # quantized graphs: a strongly typed network on TensorRT 10 too


def strongly_typed(trt) -> bool:
    """TensorRT for RTX (and TensorRT 11) have no precision flags: each engine runs in the ONNX
    graph's own types (``nuwa-export --dtype``)."""
    return getattr(trt.BuilderFlag, "FP16", None) is None


def set_precision(trt, config, precision: str, builder: str) -> None:
    """fp16 / bf16 through the builder flags where this TensorRT still has them (10.x).

    Strongly typed builders take ``fp32`` here, meaning "no flag": the graph's types decide
    (:func:`nuwa_export.build.builder.build` has refused a precision the graphs do not have).
    """
    if precision == "fp32":
        return
    flag = getattr(trt.BuilderFlag, precision.upper(), None)
    if flag is None:
        raise NuwaError(
            f"{builder} {trt.__version__} builds strongly typed networks only: --precision {precision} needs a "
            f"{precision} ONNX export, and nuwa-export writes float32 graphs; use --precision fp32"
        )
    config.set_flag(flag)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__


def _logged(trt) -> str:
    """``": <the last error TensorRT logged>"``, or nothing."""
    errors = quiet_logger(trt).errors
    return f": {errors[-1][:300]}" if errors else ""


def build_engine(
    onnx_path: str | Path, profiles: list[Profile], *, builder: str = "tensorrt-rtx", options: BuildOptions | None = None
) -> bytes:
    """Parse ``onnx_path`` and build a serialized engine with the given optimisation profiles."""
    options = options or BuildOptions()
    trt = import_tensorrt(builder)
    onnx_path = Path(onnx_path)
    trt_builder, network, _parser = parse(trt, onnx_path, options.strongly_typed)
    config = trt_builder.create_builder_config()
    set_precision(trt, config, options.precision, builder)
    if options.workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    if options.optimization_level is not None:
        config.builder_optimization_level = options.optimization_level
    timing_cache = options.timing_cache if builder == "tensorrt" else None  # a no-op in TensorRT for RTX
    if timing_cache:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    names = {t.name for t in inputs if -1 in tuple(t.shape)}  # static inputs need no profile
    for i, prof in enumerate(profiles):
        missing = names - set(prof.shapes)
        if missing:
            raise NuwaError(f"profile for {onnx_path.name} lacks shapes for inputs {sorted(missing)}")
        p = trt_builder.create_optimization_profile()
        for name, (lo, opt, hi) in prof.shapes.items():
            try:
                p.set_shape(name, lo, opt, hi)
            except (RuntimeError, ValueError, TypeError, OverflowError) as e:  # TensorRT's bindings reject the shape
                raise NuwaError(f"TensorRT ({builder}) refused profile {i} of {onnx_path.name}, input {name} {[list(lo), list(opt), list(hi)]}: {_one_line(e)}") from None
        if config.add_optimization_profile(p) < 0:
            raise NuwaError(f"TensorRT ({builder}) refused profile {i} of {onnx_path.name} as invalid{_logged(trt)}")
    try:
        blob = trt_builder.build_serialized_network(network, config)
    except RuntimeError as e:  # some TensorRT versions raise instead of returning None
        raise NuwaError(f"TensorRT ({builder}) failed to build an engine from {onnx_path.name}: {_one_line(e)}") from None
    if blob is None:
        raise NuwaError(f"TensorRT ({builder}) failed to build an engine from {onnx_path.name}{_logged(trt)}")
    if timing_cache:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(blob)
