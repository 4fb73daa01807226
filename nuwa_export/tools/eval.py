"""``nuwa-eval``: grounding and VQA accuracy of a checkpoint or an export in lmms-eval's
conventions, with retention against the unpruned model (:func:`nuwa_export.eval.harness.evaluate`);
``nuwa-eval score``: predictions made elsewhere, scored (:func:`nuwa_export.eval.harness.score_predictions`)."""

from __future__ import annotations

import argparse
import json
import sys

from nuwa_export.runtime import BACKENDS
from nuwa_export.tools.common import VERSION, Parser, finite_float, guard, user_path


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="nuwa-eval",
        description="Grounding and VQA accuracy of a checkpoint or an export, in lmms-eval's conventions, with retention "
        "against the unpruned model. To score predictions made elsewhere: nuwa-eval score --help.",
    )
    p.add_argument("task", metavar="TASK", help="refcoco, refcoco+, refcocog, gqa, pope or textvqa")
    p.add_argument("model", type=user_path, metavar="MODEL_OR_EXPORT", help="an export directory, or a checkpoint (llava-1.5-7b, demo, a directory, a hub id)")
    p.add_argument("--data", required=True, type=user_path, help="lmms-lab parquet (a file, a glob or a folder of one split) or VLM-R1 RefCOCO JSON")
    p.add_argument("--images", type=user_path, metavar="DIR", help="image folder (JSON data; GQA: a folder of <imageId>.jpg or the images parquet)")
    p.add_argument("--backend", choices=list(BACKENDS), help="for an export directory (default ort)")
    p.add_argument("--keep", type=int, nargs="+", metavar="K", help="one or more budgets (checkpoints only; default: the default budget)")
    p.add_argument(
        "--keep-ratio", type=finite_float, nargs="+", metavar="R",
        help="Qwen2.5-VL checkpoints: one or more of the paper's keep ratios (0.25, 0.5, 0.75) instead of --keep",
    )
    p.add_argument("--image-size", type=int, metavar="PX", help="Qwen2.5-VL checkpoints: the image side (default 448; an export fixes its own)")
    p.add_argument("--no-prune", action="store_true", help="evaluate the unpruned model only")
    p.add_argument("--baseline", type=user_path, metavar="MODEL", help="the unpruned model for retention (default: the checkpoint itself, or the one the export came from)")
    p.add_argument("--no-baseline", action="store_true", help="skip the unpruned run (no retention)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N samples")
    p.add_argument(
        "--batch-size", type=int, default=1, metavar="N",
        help="samples answered side by side (default 1; at most the export's max_batch); the answers are the same at any size",
    )
    p.add_argument("--out", type=user_path, metavar="DIR", help="results folder (default eval/TASK-MODEL-BACKEND); a rerun resumes it")
    p.add_argument("--force", action="store_true", help="start over in an --out that holds a run with other settings")
    p.add_argument("--box-convention", choices=["lmms-eval", "padded"], default="lmms-eval", help="grounding: the answer box is in 0-1 of the original image (lmms-eval, default) or of the padded square")
    p.add_argument("--max-new-tokens", type=int, help="default 64 for grounding, 16 for VQA")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (torch also cuda:N)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"], help="torch backend")
    p.add_argument("--version", action="version", version=VERSION)
    return p


def score_parser() -> argparse.ArgumentParser:
    p = Parser(prog="nuwa-eval score", description="Score predictions (JSONL lines {\"index\": I, \"answer\": TEXT}) made anywhere.")
    p.add_argument("--task", required=True, help="refcoco, refcoco+, refcocog, gqa, pope or textvqa")
    p.add_argument("--data", required=True, type=user_path, help="the data the indices refer to")
    p.add_argument("--images", type=user_path, metavar="DIR", help="as for nuwa-eval")
    p.add_argument("--predictions", required=True, type=user_path, metavar="FILE.jsonl")
    p.add_argument("--box-convention", choices=["lmms-eval", "padded"], default="lmms-eval")
    from nuwa_export.models.families import families

    p.add_argument(
        "--family", choices=sorted(families()), default="llava",
        help="how the answers write boxes: llava (0-1, default) or qwen2_5_vl (bbox_2d pixels of the --image-size square)",
    )
    p.add_argument("--image-size", type=int, default=448, metavar="PX", help="with --family qwen2_5_vl: the square side the model saw (default 448)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main(argv: list[str] | None = None) -> int:
    return guard("nuwa-eval", _main, argv)


def _main(argv: list[str] | None) -> int:
    from nuwa_export.eval import report

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["score"]:
        args = score_parser().parse_args(argv[1:])
        from nuwa_export.eval.harness import score_predictions

        result = score_predictions(args.task, args.data, args.images, args.predictions, args.box_convention, args.family, args.image_size)
        _print(args.json, result, report.print_score)
        return 0
    args = parser().parse_args(argv)
    from nuwa_export.eval.harness import evaluate
    from nuwa_export.eval.runner import EvalOptions

    summary = evaluate(EvalOptions(**{k: v for k, v in vars(args).items() if k != "json"}))
    _print(args.json, summary, report.print_table)
    return 0


def _print(as_json: bool, result: dict, table) -> None:
    if as_json:
        print(json.dumps(result))
    else:
        table(result)
