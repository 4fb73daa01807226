"""Console entry points. Each verb is a thin layer over one library function.

User errors (:class:`NuwaError`) print one line ``<prog>: error: ...`` and exit 1; internal
bugs keep their traceback. Heavy imports (torch, transformers) happen after parsing, so
``--help`` is fast and works anywhere.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable

from nuwa_export import __version__
from nuwa_export.constants import DEFAULT_MAX_BATCH
from nuwa_export.errors import NuwaError


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit code 1, like every other user error."""

    def error(self, message: str):  # noqa: D102 - argparse API
        raise NuwaError(message)


def finite_float(text: str) -> float:
    """argparse type: a finite number (``nan`` and ``inf`` are refused, not passed on)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def user_path(text: str) -> str:
    """argparse type for paths: ``~`` and ``~user`` expanded here, an unknown user refused."""
    import os.path

    if not text:
        raise argparse.ArgumentTypeError("empty path")
    if "\0" in text:
        raise argparse.ArgumentTypeError(f"{text!r} contains a NUL byte")
    expanded = os.path.expanduser(text)
    if text.startswith("~") and expanded == text:  # pathlib would raise on it later
        raise argparse.ArgumentTypeError(f"cannot expand {text.split('/')[0]}: no such user (or no home directory)")
    return expanded


def os_error(e: OSError) -> str:
    """One line for an error the file system raised."""
    name = e.filename if isinstance(e.filename, str) else None
    name = name if name is None or len(name) <= 120 else name[:60] + "..." + name[-40:]
    why = e.strerror or type(e).__name__
    return f"{name}: {why}" if name else why


def seed_int(text: str) -> int:
    """argparse type: a seed in ``[0, 2**64)``, what torch's generator takes."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"must be between 0 and 2**64 - 1, got {text}")
    return value


def _guard(prog: str, main: Callable[[list[str] | None], int], argv: list[str] | None) -> int:
    """Run ``main``: a NuwaError is one line and exit 1; Ctrl-C at any moment is exit 130.

    The :class:`~nuwa_export.interrupt.Session` records every SIGINT, even one Python swallowed
    in a destructor, and undoes what the command wrote when it fails or was interrupted. Here
    (this function's own frame) SIGINT is only recorded, so it cannot escape as a traceback.
    ``argv is None`` is the console script: the process ends right after, so a later Ctrl-C is
    ignored rather than restored to Python's default.
    """
    from nuwa_export.interrupt import Session

    session = Session(_guard.__code__, final=argv is None)
    error = None
    try:
        session.open()
        code = main(argv)
    except NuwaError as e:
        code, error = 1, f"{prog}: error: {' '.join(str(e).strip().splitlines())}"  # one line, always
    except OSError as e:  # the file system said no (a name too long, a full disk, ...): the user's to fix
        code, error = 1, f"{prog}: error: {os_error(e)}"
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        session.close(ok=False)
        raise
    if session.close(ok=code == 0) or code == 130:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    if error:
        print(error, file=sys.stderr)
    return code


#: The budget and stage-one flags (argparse ``dest`` names); each defaults to None = not given.
BUDGET_FLAGS = ("keep", "keep_ratio", "stage_one_keep", "stage_two_keep", "stage_two_layer", "per_region", "distance", "percentile")
#: What an export fixes besides the budgets.
FIXED_AT_EXPORT = (*BUDGET_FLAGS, "image_size")


def given_budget_flags(args: argparse.Namespace, flags: tuple[str, ...] = BUDGET_FLAGS) -> list[str]:
    """The budget flags given on the command line, as typed (``--keep``, ...)."""
    return [f"--{f.replace('_', '-')}" for f in flags if getattr(args, f, None) is not None]


def check_budget_flags(args: argparse.Namespace) -> None:
    """``--no-prune`` keeps every patch: a budget given with it would be silently ignored, so refuse it."""
    given = given_budget_flags(args)
    if args.no_prune and given:
        raise NuwaError(f"--no-prune keeps every patch; {' '.join(given)} would have no effect, drop {'it' if len(given) == 1 else 'them'}")


def add_budget_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pruning budgets (docs/algorithm.md §1, §6)")
    g.add_argument("--keep", type=int, help="average vision tokens per LLM layer (default: 64 of 576 for LLaVA, same fraction elsewhere)")
    g.add_argument(
        "--keep-ratio", type=finite_float, metavar="R",
        help="Qwen2.5-VL: the paper's schedule, 0.25, 0.5 (default) or 0.75 of the image tokens (LLaVA: keep = R·patches)",
    )
    g.add_argument("--stage-one-keep", type=int, metavar="K1", help="tokens kept after the vision tower (default 7·keep/4)")
    g.add_argument("--stage-two-keep", type=int, metavar="K2", help="tokens kept from the stage-two layer on (default keep/4)")
    g.add_argument("--stage-two-layer", type=int, metavar="L", help="first LLM layer that sees only K2 tokens (default N/2)")
    g.add_argument("--no-prune", action="store_true", help="keep every patch in every layer (the plain model)")
    g.add_argument("--per-region", type=int, metavar="N", help="stage-one slots per 2x2 region (default min(4, ceil(K1/regions)))")
    g.add_argument("--distance", type=finite_float, help="swarm distance (reach sqrt(distance) patches; default 280)")
    g.add_argument("--percentile", type=finite_float, help="pillar quantile of anchor scores (default 0.55; Qwen2.5-VL 0.1)")
    g.add_argument(
        "--image-size", type=int, metavar="PX",
        help="Qwen2.5-VL: the fixed image side the vision graph takes, a multiple of 28 (default 448: 16x16 tokens)",
    )


def run_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nuwa-run", description="Answer a question about an image with Nüwa-pruned LLaVA-1.5 or Qwen2.5-VL.")
    p.add_argument(
        "model", type=user_path, metavar="MODEL",
        help="an export directory (from nuwa-export), or llava-1.5-7b, llava-1.5-13b, qwen2.5-vl-3b, qwen2.5-vl-7b, demo, "
        "demo-qwen2.5-vl, a checkpoint directory or a hub id",
    )
    p.add_argument("--image", type=user_path, help="image file (optional for the demo model: its example picture)")
    p.add_argument("--prompt", help="the question")
    p.add_argument(
        "--requests", type=user_path, metavar="FILE.jsonl",
        help='many questions, one JSON object per line: {"image": PATH, "prompt": TEXT} with optional max_new_tokens, '
        "temperature, top_p, seed, ground (relative images are read next to FILE); answered in batches",
    )
    p.add_argument("--batch-size", type=int, metavar="N", help="with --requests: requests side by side (default: the export's max_batch)")
    p.add_argument("--ground", metavar="PHRASE", help="ask for the box of PHRASE (in the model family's own grounding format) and print it in pixels")
    p.add_argument("--draw", type=user_path, metavar="OUT.png", help="with --ground: save the image with the box drawn")
    p.add_argument(
        "--show-tokens", type=user_path, metavar="OUT.png",
        help="save the image with the patches stage one kept and stage two's survivors drawn (pillars vs collectors with --backend torch)",
    )
    p.add_argument(
        "--backend", choices=["ort", "trt", "torch"],
        help="engine backend for an export directory (default ort); torch runs the PyTorch reference",
    )
    add_budget_flags(p)
    g = p.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=finite_float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-p", type=finite_float, default=1.0, help="nucleus sampling mass in (0, 1] (default 1)")
    g.add_argument("--seed", type=seed_int, default=0, help="sampling seed, 0 to 2**64 - 1 (default 0)")
    g.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    g.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    g = p.add_argument_group("device")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda (torch also cuda:N)")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    p.add_argument("--version", action="version", version=f"nuwa-export {__version__}")
    return p


def _run(argv: list[str] | None) -> int:
    args = run_parser().parse_args(argv)
    check_budget_flags(args)
    from nuwa_export.run import run

    run(args)
    return 0


def run_main(argv: list[str] | None = None) -> int:
    return _guard("nuwa-run", _run, argv)


def verify_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nuwa-verify", description="Compare every backend present against the PyTorch reference, stage by stage.")
    p.add_argument("export_dir", type=user_path, metavar="EXPORT_DIR")
    p.add_argument("--image", type=user_path, help="image file (default: the demo street picture)")
    p.add_argument("--prompt", default="What is in the picture?")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument(
        "--layerwise", action="store_true",
        help="compare the LLM graphs with the reference decoder layer by decoder layer (polygraphy) and name the first layer beyond tolerance",
    )
    p.add_argument("--version", action="version", version=f"nuwa-export {__version__}")
    return p


def _verify(argv: list[str] | None) -> int:
    args = verify_parser().parse_args(argv)
    from nuwa_export.verify import verify_cli

    return verify_cli(args)


def verify_main(argv: list[str] | None = None) -> int:
    return _guard("nuwa-verify", _verify, argv)


def profile_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nuwa-profile", description="Time an export stage by stage over repeated runs (median, p90), with memory and KV-cache size.")
    p.add_argument("export_dir", type=user_path, metavar="EXPORT_DIR")
    p.add_argument("--image", type=user_path, help="image file (default: the demo's example picture, for demo exports)")
    p.add_argument("--prompt", default="What is in the picture?")
    p.add_argument("--backend", choices=["ort", "trt", "torch"], default="ort", help="torch runs the PyTorch reference (default ort)")
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
    p.add_argument("--version", action="version", version=f"nuwa-export {__version__}")
    return p


def _profile(argv: list[str] | None) -> int:
    args = profile_parser().parse_args(argv)
    from nuwa_export.profile import profile_cli

    return profile_cli(args)


def profile_main(argv: list[str] | None = None) -> int:
    return _guard("nuwa-profile", _profile, argv)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nuwa-build", description="Build TensorRT engines (one per graph, with sidecars) for an export directory.")
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
    p.add_argument("--version", action="version", version=f"nuwa-export {__version__}")
    return p


def _build(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from nuwa_export.build.builder import build_cli

    return build_cli(args)


def build_main(argv: list[str] | None = None) -> int:
    return _guard("nuwa-build", _build, argv)


def export_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nuwa-export", description="Export LLaVA-1.5 or Qwen2.5-VL with Nüwa pruning to ONNX.")
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
    p.add_argument("--version", action="version", version=f"nuwa-export {__version__}")
    return p


def _export(argv: list[str] | None) -> int:
    args = export_parser().parse_args(argv)
    check_budget_flags(args)
    from nuwa_export.export.pipeline import export_cli

    return export_cli(args)


def export_main(argv: list[str] | None = None) -> int:
    return _guard("nuwa-export", _export, argv)


def quantize_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="nuwa-quantize",
        description="Quantize an export's LLM graphs with NVIDIA ModelOpt (post-training, calibrated on the real pipeline's "
        "tensors), validate them against the float export, and write a new export directory.",
    )
    p.add_argument("export_dir", type=user_path, metavar="EXPORT_DIR", help="a float export (nuwa-export)")
    from nuwa_export.quant import PRECISIONS

    p.add_argument(
        "--precision", required=True, choices=list(PRECISIONS),
        help="int8 (W8A8, Orin / Ampere and later), fp8 (W8A8 E4M3: Ada, Hopper, Blackwell, Thor), int4-awq / int4-rtn "
        "(4-bit weights in blocks of 128, or 64 / 32 / 16 where the widths need it; AWQ clipping or round-to-nearest; not Turing)",
    )
    p.add_argument("--calib", default="default", metavar="SET", help="a calibration set: a name in calib/ (default: default) or a JSONL file (calib/README.md)")
    p.add_argument("--out", required=True, type=user_path, help="the quantized export directory (written atomically)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.add_argument("--decode-steps", type=int, default=1, metavar="N", help="decode steps per batch recorded for calibration, after the prefill (default 1; int4-awq uses the prefill only)")
    p.add_argument("--tokens", type=int, default=8, metavar="N", help="greedy tokens per request the validation compares (default 8)")
    p.add_argument("--version", action="version", version=f"nuwa-export {__version__}")
    return p


def _quantize(argv: list[str] | None) -> int:
    args = quantize_parser().parse_args(argv)
    from nuwa_export.quant.quantize import quantize_cli

    return quantize_cli(args)


def quantize_main(argv: list[str] | None = None) -> int:
    return _guard("nuwa-quantize", _quantize, argv)


def eval_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="nuwa-eval",
        description="Grounding and VQA accuracy of a checkpoint or an export, in lmms-eval's conventions, with retention "
        "against the unpruned model. To score predictions made elsewhere: nuwa-eval score --help.",
    )
    p.add_argument("task", metavar="TASK", help="refcoco, refcoco+, refcocog, gqa, pope or textvqa")
    p.add_argument("model", type=user_path, metavar="MODEL_OR_EXPORT", help="an export directory, or a checkpoint (llava-1.5-7b, demo, a directory, a hub id)")
    p.add_argument("--data", required=True, type=user_path, help="lmms-lab parquet (a file, a glob or a folder of one split) or VLM-R1 RefCOCO JSON")
    p.add_argument("--images", type=user_path, metavar="DIR", help="image folder (JSON data; GQA: a folder of <imageId>.jpg or the images parquet)")
    p.add_argument("--backend", choices=["ort", "trt", "torch"], help="for an export directory (default ort)")
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
    p.add_argument("--version", action="version", version=f"nuwa-export {__version__}")
    return p


def eval_score_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nuwa-eval score", description="Score predictions (JSONL lines {\"index\": I, \"answer\": TEXT}) made anywhere.")
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


def _eval(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["score"]:
        args = eval_score_parser().parse_args(argv[1:])
        from nuwa_export.eval.command import score_cli

        return score_cli(args)
    args = eval_parser().parse_args(argv)
    from nuwa_export.eval.command import eval_cli

    return eval_cli(args)


def eval_main(argv: list[str] | None = None) -> int:
    return _guard("nuwa-eval", _eval, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_main())
