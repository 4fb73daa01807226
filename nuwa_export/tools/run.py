"""``nuwa-run``: one question about one image, or a file of them (``--requests``, answered in
batches), from a checkpoint (torch) or an export directory."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nuwa_export.errors import NuwaError
from nuwa_export.runtime import BACKENDS
from nuwa_export.tools.common import (
    VERSION,
    Parser,
    add_budget_flags,
    budget_request,
    check_budget_flags,
    finite_float,
    guard,
    refuse_budgets_for_export,
    seed_int,
    user_path,
)


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="nuwa-run", description="Answer a question about an image with Nüwa-pruned LLaVA-1.5 or Qwen2.5-VL.")
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
        "--backend", choices=list(BACKENDS),
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
    p.add_argument("--version", action="version", version=VERSION)
    return p


def main(argv: list[str] | None = None) -> int:
    return guard("nuwa-run", _main, argv)


def _main(argv: list[str] | None) -> int:
    args = parser().parse_args(argv)
    check_budget_flags(args)
    run(args)
    return 0


def pick_image(args: argparse.Namespace, model_path: Path | None) -> Path:
    """``--image``, or the example picture a demo-built checkpoint carries."""
    from nuwa_export.runtime.runner import example_picture_of

    if args.image:
        return Path(args.image)
    picture = example_picture_of(model_path)
    if picture is None:
        raise NuwaError("--image is required (only the demo model has a built-in example picture)")
    return picture


def open_for(args: argparse.Namespace, need_image: bool = True):
    """(runner, image or None, model id); refuses bad flags first, and a bad image before any
    weight is loaded."""
    from nuwa_export.image import load_image
    from nuwa_export.runtime.exports import is_export_dir, read_export
    from nuwa_export.runtime.runner import checkpoint_dir, open_runner

    if is_export_dir(args.model):
        refuse_budgets_for_export(args)
        directory = Path(args.model).expanduser()
        manifest = read_export(directory)
        image = load_image(pick_image(args, None if args.image else checkpoint_dir(manifest.model.id))) if need_image else None
        runner = open_runner(directory, backend=args.backend or "ort", device=args.device, dtype=args.dtype, manifest=manifest)
        return runner, image, manifest.model.id

    from nuwa_export.models.loader import inspect_checkpoint

    if args.backend not in (None, "torch"):
        raise NuwaError(f"--backend {args.backend} runs an export directory; export first: nuwa-export --model {args.model} --out DIR")
    info = inspect_checkpoint(args.model, args.image_size)
    image = load_image(pick_image(args, info.path)) if need_image else None
    resolved = info.resolve(budget_request(args))
    return open_runner(info, budgets=resolved, device=args.device, dtype=args.dtype), image, info.model_id


def run(args: argparse.Namespace):
    """Run one question and print it (text, or one JSON object with ``--json``)."""
    if args.requests:
        return run_requests(args)
    if args.batch_size is not None:
        raise NuwaError("--batch-size needs --requests FILE")
    if args.draw and not args.ground:
        raise NuwaError("--draw needs --ground PHRASE")
    if args.draw:
        from nuwa_export.overlay import check_output as check_draw

        check_draw(args.draw)  # a bad --draw path is refused before the model runs
    if getattr(args, "show_tokens", None):
        from nuwa_export.overlay import check_output

        check_output(args.show_tokens)
    if not args.prompt and not args.ground:
        raise NuwaError("give --prompt TEXT or --ground PHRASE")
    if args.ground:
        from nuwa_export.prompt import check_text

        check_text(args.ground, "--ground")
    from nuwa_export.sampling import SamplingConfig

    sampling = SamplingConfig(args.max_new_tokens, args.temperature, args.top_p, args.seed)
    runner, image, model_id = open_for(args)
    backend = runner.name
    prompt = runner.family.grounding.question(args.ground) if args.ground else args.prompt  # the family's own wording
    streamer = _Streamer(runner.tokenizer) if args.stream and not args.json else None
    try:
        result = runner.generate(image, prompt, sampling, on_token=streamer)
    finally:
        runner.close()
    record = result.to_json()
    if args.ground:
        record.update(_ground(args, image, result.text, runner))
    if getattr(args, "show_tokens", None):
        record["tokens_drawn"] = str(show_tokens(args.show_tokens, image, result, runner))
    if args.json:
        print(json.dumps(record))
        return result
    if streamer:
        streamer.finish()
    else:
        print(result.text)
    if args.ground:
        px = record["box_pixels"]
        print(f"box: {', '.join(f'{v:.0f}' for v in px)} (x1, y1, x2, y2 pixels of {image.width}x{image.height})" if px else "box: none in the answer")
    print_summary(result, model_id, backend)
    if "tokens_drawn" in record:
        print(f"kept tokens drawn: {record['tokens_drawn']}", file=sys.stderr)
    return result


#: flags that describe one request; --requests FILE gives each line its own
SINGLE_REQUEST_FLAGS = ("image", "prompt", "ground", "draw", "show_tokens", "stream")


def run_requests(args: argparse.Namespace) -> list:
    """``--requests FILE``: every line checked first, then answered ``--batch-size`` at a time;
    with ``--json`` one JSON object per request, in file order."""
    from dataclasses import replace

    from nuwa_export.generation import Request
    from nuwa_export.image import image_size
    from nuwa_export.requests_file import read_requests
    from nuwa_export.sampling import SamplingConfig

    given = [f"--{f.replace('_', '-')}" for f in SINGLE_REQUEST_FLAGS if getattr(args, f, None)]
    if given:
        raise NuwaError(f"{given[0]} describes one request; with --requests each line of the file gives its own")
    if args.batch_size is not None and args.batch_size < 1:
        raise NuwaError(f"--batch-size must be at least 1, got {args.batch_size}")
    defaults = SamplingConfig(args.max_new_tokens, args.temperature, args.top_p, args.seed)
    lines = read_requests(args.requests, defaults)
    runner, _, model_id = open_for(args, need_image=False)
    backend = runner.name
    try:
        cap = runner.max_batch
        if cap is not None and args.batch_size is not None and args.batch_size > cap:
            raise NuwaError(f"--batch-size {args.batch_size} is beyond this export's max_batch {cap}; re-export with --max-batch {args.batch_size}")
        stages = runner.stages()
        from nuwa_export.generation import layout_for

        ground = runner.family.grounding
        lines = [replace(line, prompt=ground.question(line.ground)) if line.ground is not None else line for line in lines]
        for line in lines:  # prompts that do not fit are refused with their line, before any work
            try:
                layout_for(stages, line.prompt, line.sampling.max_new_tokens, line.image)
            except NuwaError as e:
                raise NuwaError(f"{args.requests} line {line.line}: {e}") from None
        requests = [Request(line.image, line.prompt, line.sampling) for line in lines]  # decoded batch by batch, not all at once
        results = runner.generate_batch(requests, args.batch_size)  # default: the export's max_batch (8 for the reference)
    finally:
        runner.close()
    for line, result in zip(lines, results):
        record = result.to_json()
        if line.ground is not None:
            box = ground.parse(result.text)
            px = ground.to_pixels(box, *image_size(line.image, str(line.image)), runner.image_config) if box else None
            record.update(ground=line.ground, box=list(box) if box else None, box_pixels=list(px) if px else None)
        if args.json:
            print(json.dumps(record))
        else:
            print(f"[{line.line}] {result.text}")
            if line.ground is not None:
                px = record["box_pixels"]
                print(f"[{line.line}] box: {', '.join(f'{v:.0f}' for v in px)}" if px else f"[{line.line}] box: none in the answer")
    if not args.json:
        print_batch_summary(results, model_id, backend)
    return results


def print_batch_summary(results: list, model_id: str, backend: str) -> None:
    """Requests, batches and generated tokens per second, on stderr."""
    from rich.console import Console
    from rich.table import Table

    batches, seconds, tokens = 0, 0.0, sum(len(r.generated_ids) for r in results)
    i = 0
    while i < len(results):  # a batch's results are consecutive; it lasts until its last row is done
        group = results[i : i + results[i].batch_size]
        seconds += max(r.timings_ms.get("total", 0.0) for r in group) / 1e3
        i += len(group)
        batches += 1
    table = Table(title=f"nuwa-run --requests · {model_id} · {backend}", title_justify="left")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("requests", str(len(results)))
    table.add_row("batches", str(batches))
    table.add_row("tokens generated", str(tokens))
    table.add_row("tokens/s", f"{tokens / seconds:.1f}" if seconds else "-")
    Console(file=sys.stderr).print(table)


def show_tokens(path, image, result, runner) -> Path:
    """``--show-tokens``: draw stage one's anchors and stage two's survivors on ``image``.

    Pillars and collectors are told apart only with the PyTorch reference, whose vision stage
    keeps the pillar mask (run again here, deterministically); the ONNX graphs return indices only.
    """
    from nuwa_export.overlay import draw_tokens

    pillars = runner.stage_one_pillars(image, result.stage_one_indices)
    b = result.budgets
    grid = runner.plan.grids[0]
    return draw_tokens(
        image, path, (grid.rows, grid.cols), runner.image_config, result.stage_one_indices, result.stage_two_indices, pillars,
        b.layer if b.prune else None,
    )


def _ground(args, image, text: str, runner) -> dict:
    from nuwa_export.overlay import draw_box

    cfg = runner.image_config
    ground = runner.family.grounding
    box = ground.parse(text)
    out = {"ground": args.ground, "box": list(box) if box else None, "box_pixels": None}
    if box is None:
        print("nuwa-run: warning: the answer has no [x1, y1, x2, y2] box", file=sys.stderr)
        if args.draw:
            print(f"nuwa-run: warning: nothing drawn, {args.draw} not written", file=sys.stderr)
        return out
    px = ground.to_pixels(box, image.width, image.height, cfg)
    out["box_pixels"] = list(px)
    if args.draw:
        draw_box(image, px, args.draw, args.ground)
        out["drawn"] = str(args.draw)
    return out


class _Streamer:
    """Prints the decoded answer as tokens arrive (decoding the whole prefix keeps spaces right)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.ids, self.shown = tokenizer, [], ""

    def __call__(self, token: int) -> None:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).lstrip()
        if text.startswith(self.shown):
            sys.stdout.write(text[len(self.shown) :])
            sys.stdout.flush()
            self.shown = text

    def finish(self) -> None:
        sys.stdout.write("\n")


def print_summary(result, model_id: str, backend: str) -> None:
    """Budgets and per-stage timings as a table on stderr (stdout keeps only the answer)."""
    from rich.console import Console
    from rich.table import Table

    b = result.budgets
    kept = f"K1={b.k1}, K2={b.k2} from layer {b.layer}" if b.prune else "no pruning"
    table = Table(title=f"nuwa-run · {model_id} · {backend} · {b.num_patches} patches, {kept}", title_justify="left")
    table.add_column("stage")
    table.add_column("ms", justify="right")
    for name, ms in result.timings_ms.items():
        table.add_row(name, f"{ms:.1f}")
    table.add_row("tokens generated", str(len(result.generated_ids)))
    table.add_row("KV cache", f"{result.kv_cache_bytes / 2**20:.2f} MiB")
    Console(file=sys.stderr).print(table)
