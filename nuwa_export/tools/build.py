"""``nuwa-build``: TensorRT engines for an export, one per graph with a sidecar each
(:func:`nuwa_export.build.builder.build`), and a table of what was built."""

from __future__ import annotations

import argparse
from pathlib import Path

from nuwa_export.tools.common import VERSION, Parser, guard, user_path


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="nuwa-build", description="Build TensorRT engines (one per graph, with sidecars) for an export directory.")
    p.add_argument("export_dir", type=user_path, metavar="EXPORT_DIR")
    p.add_argument(
        "--precision", choices=["fp16", "bf16", "fp32", "int8", "fp8", "int4-awq", "int4-rtn"],
        help="default: the export's own (fp32, or fp16 for a float16 export) with a strongly typed builder such as tensorrt-rtx; "
        "the profile's (fp16) with full TensorRT; a quantized export (nuwa-quantize) is built in its own precision only",
    )
    p.add_argument("--profile", choices=["orin", "thor", "datacenter"], default="datacenter", help="target device family")
    p.add_argument("--builder", choices=["tensorrt", "tensorrt-rtx"], default="tensorrt", help="TensorRT Python module to build with")
    p.add_argument("--plugin", action="store_true", help="build vision.plugin.onnx with the SwarmAggregate plugin")
    p.add_argument("--plugin-lib", type=user_path, metavar="PATH", help="libnuwa_trt_plugins.so (default: $NUWA_PLUGIN_LIB)")
    p.add_argument("--version", action="version", version=VERSION)
    return p


def main(argv: list[str] | None = None) -> int:
    return guard("nuwa-build", _main, argv)


def _main(argv: list[str] | None) -> int:
    args = parser().parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    from nuwa_export import names
    from nuwa_export.build.builder import build

    sidecars = build(
        args.export_dir, precision=args.precision, profile=args.profile, builder=args.builder,
        plugin=args.plugin, plugin_lib=args.plugin_lib,
    )
    table = Table(title=f"nuwa-build → {Path(args.export_dir) / names.ENGINES_DIR}", title_justify="left")
    for col in ("engine", "MiB", "builder", "precision", "device", "profiles"):
        table.add_column(col)
    for s in sidecars.values():
        size = (Path(args.export_dir) / names.ENGINES_DIR / s.engine_file).stat().st_size / 2**20
        device = s.device_name or "no GPU (built offline)"
        table.add_row(s.engine_file, f"{size:.1f}", f"{s.builder} {s.builder_version}", s.precision, device, str(len(s.profiles)))
    console = Console(stderr=True)
    console.print(table)
    console.print(f"precision {sidecars.precision} ({sidecars.reason})", soft_wrap=True, highlight=False)
    return 0
