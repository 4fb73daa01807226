"""Parse an exported ONNX graph and build a serialized engine with TensorRT or TensorRT for RTX.

Both Python modules (``tensorrt`` 10.x/11.x and ``tensorrt_rtx``) share the API used here.
TensorRT for RTX builds without a GPU, which is how CI proves every graph builds.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from nuwa_export.errors import NuwaError

BUILDERS = {"tensorrt": ("tensorrt", "tensorrt-cu12 (or JetPack's python3-libnvinfer)"), "tensorrt-rtx": ("tensorrt_rtx", "tensorrt-rtx-cu13")}


def import_tensorrt(builder: str):
    """The ``tensorrt`` or ``tensorrt_rtx`` module, or a one-line error naming the package."""
    if builder not in BUILDERS:
        raise NuwaError(f"unknown builder '{builder}' (choose from {', '.join(BUILDERS)})")
    module, package = BUILDERS[builder]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise NuwaError(f"the {builder} builder needs the Python module '{module}': pip install {package}") from None


@dataclass(frozen=True)
class Profile:
    """One optimisation profile: input name → (min, opt, max) shapes."""

    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


def parse(trt, onnx_path: Path):
    """Returns ``(builder, network, parser)``; parser errors become one :class:`NuwaError`."""
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10+
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        first = errors[0] if errors else None
        detail = f"{first.node_operator()} node '{first.node_name()}': {first.desc()}" if first else "no detail"
        raise NuwaError(f"TensorRT could not parse {onnx_path.name}: {detail}")
    return builder, network, parser


def build_engine(onnx_path: str | Path, profiles: list[Profile], *, builder: str = "tensorrt-rtx") -> bytes:
    """Parse ``onnx_path`` and build a serialized engine with the given optimisation profiles."""
    trt = import_tensorrt(builder)
    onnx_path = Path(onnx_path)
    trt_builder, network, _parser = parse(trt, onnx_path)
    config = trt_builder.create_builder_config()
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    names = {t.name for t in inputs if -1 in tuple(t.shape)}  # static inputs need no profile
    for prof in profiles:
        missing = names - set(prof.shapes)
        if missing:
            raise NuwaError(f"profile for {onnx_path.name} lacks shapes for inputs {sorted(missing)}")
        p = trt_builder.create_optimization_profile()
        for name, (lo, opt, hi) in prof.shapes.items():
            p.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(p)
    blob = trt_builder.build_serialized_network(network, config)
    if blob is None:
        raise NuwaError(f"TensorRT ({builder}) failed to build an engine from {onnx_path.name}")
    return bytes(blob)
