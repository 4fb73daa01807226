"""``nuwa-run``: one question about one image, or a file of them (``--requests``, answered in
batches), from a checkpoint (torch) or an export directory."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nuwa_export.errors import NuwaError
from nuwa_export.export import manifest as mf
from nuwa_export.sampling import SamplingConfig



def is_export_dir(model: str) -> bool:
    return (Path(model).expanduser() / mf.FILENAME).is_file()


def pick_image(args: argparse.Namespace, model_path: Path | None) -> Path:
    """``--image``, or the example picture a demo-built checkpoint carries."""
    if args.image:
        return Path(args.image)
    if model_path is not None and (model_path / "example.png").is_file():
        return model_path / "example.png"
    raise NuwaError("--image is required (only the demo model has a built-in example picture)")


def _checkpoint_dir(model_id: str) -> Path | None:
    """Where the exported checkpoint lives, if it is here (for the demo's example picture)."""
    from nuwa_export.models.registry import DEMOS, resolve

    if model_id in DEMOS:
        return resolve(model_id)[0]
    return Path(model_id) if Path(model_id).is_dir() else None


def reference_for_export(directory: Path, manifest: mf.Manifest, device: str = "auto", dtype: str = "auto"):
    """The PyTorch reference configured exactly as ``directory`` was exported: its budgets, its
    LLM dtype (``dtype="auto"``) and a float32 vision tower, as in ``vision.onnx``."""
    from nuwa_export.models.loader import inspect_checkpoint, load, weight_files
    from nuwa_export.reference import Reference, StageOneOptions
    from nuwa_export.runtime.pipeline import budgets_of

    info = inspect_checkpoint(manifest.model.id, manifest.preprocessing.get("size"))
    files = {p.name: mf.sha256_file(p) for p in weight_files(info.path)}
    if files != manifest.model.weights:
        raise NuwaError(f"the checkpoint at {info.path} is not the one {directory} was exported from (weights sha256 differ)")
    b = manifest.budgets
    dtype = manifest.llm.dtype if dtype in (None, "auto") else dtype
    loaded = load(info, dtype=dtype, device=device, vision_dtype="float32")
    return Reference(loaded, budgets_of(manifest), StageOneOptions(b.per_region, b.distance, b.percentile))


def build_runner(args: argparse.Namespace, need_image: bool = True):
    """(runner, image or None, model id, backend name); refuses bad flags first.

    A runner (:class:`~nuwa_export.reference.Reference` or
    :class:`~nuwa_export.runtime.pipeline.Pipeline`) offers ``generate``, ``tokenizer``,
    ``image_config``, ``budgets``, ``grid``, ``stage_one_pillars`` and ``close``."""
    from nuwa_export.image import load_image

    if is_export_dir(args.model):
        directory = Path(args.model).expanduser()
        from nuwa_export.cli import FIXED_AT_EXPORT, given_budget_flags

        given = given_budget_flags(args, FIXED_AT_EXPORT) + (["--no-prune"] if args.no_prune else [])
        if given:
            raise NuwaError(f"{' '.join(given)}: budgets are fixed when exporting; re-run nuwa-export to change them")
        manifest = mf.read(directory)
        backend = args.backend or "ort"
        image = load_image(pick_image(args, None if args.image else _checkpoint_dir(manifest.model.id))) if need_image else None
        if backend == "torch":
            runner = reference_for_export(directory, manifest, args.device, args.dtype)
        else:
            from nuwa_export.runtime.pipeline import Pipeline

            runner = Pipeline(directory, backend, args.device)
        return runner, image, manifest.model.id, backend

    from nuwa_export.models.loader import inspect_checkpoint, load
    from nuwa_export.reference import Reference, StageOneOptions

    if args.backend not in (None, "torch"):
        raise NuwaError(f"--backend {args.backend} runs an export directory; export first: nuwa-export --model {args.model} --out DIR")
    info = inspect_checkpoint(args.model, args.image_size)
    image = load_image(pick_image(args, info.path)) if need_image else None
    budgets = info.budgets(
        args.keep, args.stage_one_keep, args.stage_two_keep, args.stage_two_layer, prune=not args.no_prune, keep_ratio=args.keep_ratio,
        per_region=args.per_region,
    )
    spec = info.stage_one(budgets, args.per_region, args.distance, args.percentile)
    loaded = load(info, dtype=args.dtype, device=args.device)
    return Reference(loaded, budgets, StageOneOptions(spec.per_region, spec.distance, spec.percentile)), image, info.model_id, "torch"


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
    sampling = SamplingConfig(args.max_new_tokens, args.temperature, args.top_p, args.seed)
    runner, image, model_id, backend = build_runner(args)
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

    given = [f"--{f.replace('_', '-')}" for f in SINGLE_REQUEST_FLAGS if getattr(args, f, None)]
    if given:
        raise NuwaError(f"{given[0]} describes one request; with --requests each line of the file gives its own")
    if args.batch_size is not None and args.batch_size < 1:
        raise NuwaError(f"--batch-size must be at least 1, got {args.batch_size}")
    defaults = SamplingConfig(args.max_new_tokens, args.temperature, args.top_p, args.seed)
    lines = read_requests(args.requests, defaults)
    runner, _, model_id, backend = build_runner(args, need_image=False)
    try:
        cap = getattr(runner, "max_batch", None)
        if cap is not None and args.batch_size is not None and args.batch_size > cap:
            raise NuwaError(f"--batch-size {args.batch_size} is beyond this export's max_batch {cap}; re-export with --max-batch {args.batch_size}")
        stages = runner.stages()
        from nuwa_export.generation import layout_for

        ground = runner.family.grounding
        lines = [replace(line, prompt=ground.question(line.ground)) if line.ground is not None else line for line in lines]
        for line in lines:  # prompts that do not fit are refused with their line, before any work
            try:
                layout_for(stages, line.prompt, line.sampling.max_new_tokens)
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
    while i < len(results):  # results of one batch are consecutive and share their timings
        seconds += results[i].timings_ms.get("total", 0.0) / 1e3
        i += results[i].batch_size
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
    return draw_tokens(
        image, path, runner.grid, runner.image_config, result.stage_one_indices, result.stage_two_indices, pillars, b.layer if b.prune else None
    )


def _ground(args, image, text: str, runner) -> dict:
    from nuwa_export.eval import grounding

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
        grounding.draw(image, px, args.draw, args.ground)
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
