"""``nuwa-profile``: an export timed stage by stage over repeated runs (:func:`nuwa_export.profile.runs.profile`),
as a table, JSON and a chart; ``--trtexec``: the trtexec per-layer profiling commands, run with
``--run`` (:mod:`nuwa_export.profile.trtexec`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nuwa_export.errors import NuwaError
from nuwa_export.runtime import BACKENDS
from nuwa_export.tools.common import VERSION, Parser, guard, user_path


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="nuwa-profile", description="Time an export stage by stage over repeated runs (median, p90), with memory and KV-cache size.")
    p.add_argument("export_dir", type=user_path, metavar="EXPORT_DIR")
    p.add_argument("--image", type=user_path, help="image file (default: the demo's example picture, for demo exports)")
    p.add_argument("--prompt", default="What is in the picture?")
    p.add_argument("--backend", choices=list(BACKENDS), default="ort", help="torch runs the PyTorch reference (default ort)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (torch also cuda:N)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"], help="torch backend only")
    p.add_argument("--runs", type=int, default=5, help="timed runs (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="tokens per run; EOS is ignored (default 16)")
    p.add_argument("--json", type=user_path, metavar="OUT.json", help="write the full report (every run) as JSON")
    p.add_argument("--plot", type=user_path, metavar="OUT.png", help="draw the stage breakdown (medians, p90 whiskers)")
    g = p.add_argument_group("TensorRT per-layer profiles")
    g.add_argument("--trtexec", action="store_true", help="print trtexec per-layer profiling commands for engines/<graph>.plan")
    g.add_argument("--run", action="store_true", help="with --trtexec: run them (needs trtexec on PATH or $TRTEXEC)")
    p.add_argument("--version", action="version", version=VERSION)
    return p


def main(argv: list[str] | None = None) -> int:
    return guard("nuwa-profile", _main, argv)


def _main(argv: list[str] | None) -> int:
    """Check every output path first, profile, then the table, JSON and chart."""
    args = parser().parse_args(argv)
    if args.run and not args.trtexec:
        raise NuwaError("--run needs --trtexec")
    if args.trtexec:
        return _trtexec(Path(args.export_dir), args.run)
    from nuwa_export.profile.report import check_plot_path, plot, print_table
    from nuwa_export.profile.runs import profile, write_json

    if args.plot:
        check_plot_path(args.plot)
    if args.json:
        from nuwa_export.atomic import check_output_file

        check_output_file(args.json)
    report = profile(
        args.export_dir, args.image, args.prompt, backend=args.backend, device=args.device, dtype=args.dtype,
        runs=args.runs, warmup=args.warmup, max_new_tokens=args.max_new_tokens, progress=sys.stderr.isatty(),
    )
    print_table(report)
    if args.json:
        print(f"report: {write_json(report, Path(args.json).expanduser())}")
    if args.plot:
        print(f"chart: {plot(report, Path(args.plot).expanduser())}")
    return 0


def _trtexec(directory: Path, execute: bool) -> int:
    """Print the commands; with ``execute`` run them and list each profile's slowest layers."""
    from nuwa_export.profile.trtexec import (
        commands,
        find_trtexec,
        render,
        run,
        slowest_layers,
    )

    directory = Path(directory).expanduser().resolve()
    cmds = commands(directory)
    exe = find_trtexec() if execute else "trtexec"
    print(render(directory, cmds, exe), end="")
    if not execute:
        return 0
    for stem, path in run(directory, cmds, exe).items():
        print(f"\n{stem}: {path}")
        for name, ms, pct in slowest_layers(path):
            print(f"  {ms:8.3f} ms {pct:5.1f}%  {name}")
    return 0
