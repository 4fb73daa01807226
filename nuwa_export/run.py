"""``nuwa-run`` with the torch backend: load, prune, generate, report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nuwa_export.errors import NuwaError
from nuwa_export.pruning import resolve_budgets
from nuwa_export.sampling import SamplingConfig


def pick_image(args: argparse.Namespace, model_path: Path) -> Path:
    """``--image``, or the demo checkpoint's example picture when MODEL is ``demo``."""
    if args.image:
        return Path(args.image)
    example = model_path / "example.png"
    if args.model == "demo" and example.is_file():
        return example
    raise NuwaError("--image is required (only the demo model has a built-in example picture)")


def run_torch(args: argparse.Namespace):
    """Run one question through :class:`nuwa_export.reference.Reference` and print it."""
    from nuwa_export.export.vision import stage_one_spec
    from nuwa_export.image import load_image
    from nuwa_export.models.loader import inspect_checkpoint, load
    from nuwa_export.reference import Reference, StageOneOptions

    # everything that can be refused is refused before the weights are read
    sampling = SamplingConfig(args.max_new_tokens, args.temperature, args.top_p, args.seed)
    info = inspect_checkpoint(args.model)
    image = load_image(pick_image(args, info.path))
    budgets = resolve_budgets(
        info.num_patches, info.num_layers, args.keep, args.stage_one_keep, args.stage_two_keep,
        args.stage_two_layer, prune=not args.no_prune,
    )
    spec = stage_one_spec(budgets, info.grid, args.per_region, args.distance, args.percentile)
    options = StageOneOptions(spec.per_region, spec.distance, spec.percentile)
    loaded = load(info, dtype=args.dtype, device=args.device)
    ref = Reference(loaded, budgets, options)
    streamer = _Streamer(loaded.tokenizer) if args.stream and not args.json else None
    result = ref.generate(image, args.prompt, sampling, on_token=streamer)
    if not args.json:
        if streamer:
            streamer.finish()
        else:
            print(result.text)
        print_summary(result, loaded.model_id, "torch")
    return result


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
