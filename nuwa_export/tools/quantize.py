"""``nuwa-quantize``: a float export → a quantized export directory, calibrated on the real
pipeline's tensors and validated (:func:`nuwa_export.quant.quantize.quantize`)."""

from __future__ import annotations

import argparse

from nuwa_export.precision import QUANTIZED
from nuwa_export.tools.common import VERSION, Parser, guard, user_path


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="nuwa-quantize",
        description="Quantize an export's LLM graphs with NVIDIA ModelOpt (post-training, calibrated on the real pipeline's "
        "tensors), validate them against the float export, and write a new export directory.",
    )
    p.add_argument("export_dir", type=user_path, metavar="EXPORT_DIR", help="a float export (nuwa-export)")
    p.add_argument(
        "--precision", required=True, choices=list(QUANTIZED),
        help="int8 (W8A8, Orin / Ampere and later), fp8 (W8A8 E4M3: Ada, Hopper, Blackwell, Thor), int4-awq / int4-rtn "
        "(4-bit weights in blocks of 128, or 64 / 32 / 16 where the widths need it; AWQ clipping or round-to-nearest; not Turing)",
    )
    p.add_argument("--calib", default="default", metavar="SET", help="a calibration set: a name in calib/ (default: default) or a JSONL file (calib/README.md)")
    p.add_argument("--out", required=True, type=user_path, help="the quantized export directory (written atomically)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.add_argument("--decode-steps", type=int, default=1, metavar="N", help="decode steps per batch recorded for calibration, after the prefill (default 1; int4-awq uses the prefill only)")
    p.add_argument("--tokens", type=int, default=8, metavar="N", help="greedy tokens per request the validation compares (default 8)")
    p.add_argument("--version", action="version", version=VERSION)
    return p


def main(argv: list[str] | None = None) -> int:
    return guard("nuwa-quantize", _main, argv)


def _main(argv: list[str] | None) -> int:
    args = parser().parse_args(argv)
    from nuwa_export.quant.quantize import quantize

    quantize(args.export_dir, args.out, args.precision, args.calib, decode_steps=args.decode_steps, tokens=args.tokens, force=args.force)
    return 0
