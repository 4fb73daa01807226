"""``nuwa-export``: a checkpoint → an export directory (graphs, manifest), validated, written
atomically (:func:`nuwa_export.export.pipeline.export`)."""

from __future__ import annotations

import argparse

from nuwa_export.constants import DEFAULT_MAX_BATCH
from nuwa_export.tools.common import (
    VERSION,
    Parser,
    add_budget_flags,
    check_budget_flags,
    guard,
    user_path,
)


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="nuwa-export", description="Export LLaVA-1.5 or Qwen2.5-VL with Nüwa pruning to ONNX.")
    p.add_argument("--model", required=True, type=user_path, help="llava-1.5-7b, llava-1.5-13b, qwen2.5-vl-3b, qwen2.5-vl-7b, demo, demo-qwen2.5-vl, a checkpoint directory or a hub id")
    p.add_argument("--out", required=True, type=user_path, help="export directory (written atomically)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.add_argument(
        "--dtype", default="float32", choices=["float32", "float16"],
        help="LLM weights, activations and KV cache (default float32; float16 halves the files and the memory "
        "an export needs, e.g. for 7B). The vision graph is float32 either way.",
    )
    p.add_argument(
        "--max-batch", type=int, default=DEFAULT_MAX_BATCH, metavar="N",
        help=f"most requests served side by side (nuwa-run --requests, TensorRT profiles; default {DEFAULT_MAX_BATCH})",
    )
    p.add_argument(
        "--no-ort-graphs", action="store_true",
        help="skip the ONNX Runtime LLM graphs (llm_*.ort.onnx: fused attention, KV updated in place), which double "
        "the LLM files; the ort backend then runs the standard graphs TensorRT builds",
    )
    add_budget_flags(p)
    p.add_argument("--version", action="version", version=VERSION)
    return p


def main(argv: list[str] | None = None) -> int:
    return guard("nuwa-export", _main, argv)


def _main(argv: list[str] | None) -> int:
    args = parser().parse_args(argv)
    check_budget_flags(args)
    from nuwa_export.export.pipeline import export

    export(
        args.model, args.out, keep=args.keep, k1=args.stage_one_keep, k2=args.stage_two_keep,
        layer=args.stage_two_layer, prune=not args.no_prune, per_region=args.per_region,
        distance=args.distance, percentile=args.percentile, keep_ratio=args.keep_ratio, image_size=args.image_size,
        dtype=args.dtype, force=args.force, max_batch=args.max_batch, ort_graphs=not args.no_ort_graphs,
    )
    return 0
