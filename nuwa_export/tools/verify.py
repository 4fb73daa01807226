"""``nuwa-verify``: an export's backends against the PyTorch reference, stage by stage
(:func:`nuwa_export.verify.verify`) or decoder layer by decoder layer
(:func:`nuwa_export.verify.layerwise.layerwise`); a table or one JSON object, exit 1 on a difference."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nuwa_export.tools.common import VERSION, Parser, guard, user_path


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="nuwa-verify", description="Compare every backend present against the PyTorch reference, stage by stage.")
    p.add_argument("export_dir", type=user_path, metavar="EXPORT_DIR")
    p.add_argument("--image", type=user_path, help="image file (default: the demo street picture)")
    p.add_argument("--prompt", default="What is in the picture?")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument(
        "--layerwise", action="store_true",
        help="compare the LLM graphs with the reference decoder layer by decoder layer (polygraphy) and name the first layer beyond tolerance",
    )
    p.add_argument("--version", action="version", version=VERSION)
    return p


def main(argv: list[str] | None = None) -> int:
    return guard("nuwa-verify", _main, argv)


def _main(argv: list[str] | None) -> int:
    args = parser().parse_args(argv)
    from nuwa_export.image import load_image
    from nuwa_export.models.demo import example_picture
    from nuwa_export.runtime.exports import read_export

    directory = Path(args.export_dir)
    manifest = read_export(directory)
    image = load_image(args.image) if args.image else example_picture()
    if args.layerwise:
        return _layerwise(args, directory, manifest, image)
    from nuwa_export.verify import verify

    report = verify(directory, image, args.prompt, args.max_new_tokens, manifest)
    if args.json:
        print(json.dumps(report))
    else:
        from rich.console import Console
        from rich.table import Table

        q = f", graphs quantized to {report['quantized']}: its policy" if report["quantized"] else ""
        table = Table(title=f"nuwa-verify {directory} (reference: PyTorch on the CPU, LLM in {report['dtype']}{q})", title_justify="left")
        for col in ("backend", "stage", "ok", "detail"):
            table.add_column(col)
        for name, checks in report["backends"].items():
            for c in checks:
                table.add_row(name, c["stage"], "[green]yes[/]" if c["ok"] else "[red]NO[/]", c["detail"])
        Console().print(table)
    if not report["ok"]:
        print("nuwa-verify: error: some stages differ from the reference", file=sys.stderr)
    return 0 if report["ok"] else 1


def _layerwise(args, directory: Path, manifest, image) -> int:
    """``--layerwise``: a table (or JSON) of every decoder layer; exit 1 on a failing one."""
    from nuwa_export.verify.layerwise import layerwise

    checks, first, policy_name = layerwise(directory, manifest, image, args.prompt)
    quantized = manifest.precision.quantized
    dtype = manifest.precision.float_type
    if args.json:
        print(json.dumps({"export": str(directory), "ok": first is None, "dtype": dtype, "policy": policy_name,
                          "first_failing_layer": None if first is None else first.layer, "layers": [c.as_dict() for c in checks]}))
    else:
        from rich.console import Console
        from rich.table import Table

        q = f", graphs quantized to {policy_name}" if quantized else ""
        table = Table(title=f"nuwa-verify --layerwise {directory} (reference: PyTorch on the CPU, LLM in {dtype}{q}; polygraphy)", title_justify="left")
        error = "cosine" if quantized else "max abs error"
        for col in ("layer", "graph", "ok", error, "tolerance"):
            table.add_column(col, justify="right" if col in ("layer", error, "tolerance") else "left")
        for c in checks:
            table.add_row(str(c.layer), c.graph, "[green]yes[/]" if c.ok else "[red]NO[/]", c.error.removeprefix("cosine "), c.tolerance)
        Console().print(table)
        print("every decoder layer within tolerance" if first is None else
              f"first layer beyond tolerance: layer {first.layer} ({first.graph}, {first.error}, tolerance {first.tolerance})")
    if first is not None:
        print(f"nuwa-verify: error: decoder layer {first.layer} ({first.graph}) differs from the reference", file=sys.stderr)
        return 1
    return 0
