"""Which models an evaluation runs, and the one place where they answer (``generate``).

A checkpoint runs on the PyTorch reference, once per ``--keep``, loaded once. An export runs on
its backend with the budgets it was exported with. Unless pruning is off or ``--no-baseline`` is
given, the unpruned model runs too: the checkpoint itself, or the one the export came from (in
the export's LLM dtype), or ``--baseline MODEL``. Its answers are cached under
``$NUWA_EXPORT_CACHE/eval/`` so that every budget, precision and engine is compared with the
same full-model answers.

Everything that generates text goes through :func:`answer_batch` (one sample is a batch of one):
samples answered side by side get exactly the answers they get alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nuwa_export.errors import NuwaError

#: The options an export fixes (its budgets and image size), as the user typed them.
BUDGET_OPTIONS = ("keep", "keep_ratio", "image_size", "no_prune")


@dataclass(frozen=True)
class EvalOptions:
    """What ``nuwa-eval TASK MODEL_OR_EXPORT`` runs (its flags; docs/evaluation.md)."""

    task: str
    model: str
    data: str
    images: str | None = None
    backend: str | None = None
    keep: list[int] | None = None
    keep_ratio: list[float] | None = None
    image_size: int | None = None
    no_prune: bool = False
    baseline: str | None = None
    no_baseline: bool = False
    limit: int | None = None
    batch_size: int = 1
    out: str | None = None
    force: bool = False
    box_convention: str = "lmms-eval"
    max_new_tokens: int | None = None
    device: str = "auto"
    dtype: str = "auto"


@dataclass
class Run:
    """One model configuration over the samples; ``open()`` loads it when it is first needed."""

    label: str  # "keep64", "full"
    budgets: dict
    open: Callable[[], object]
    fingerprint: dict = field(default_factory=dict)
    predictions: Path | None = None


@dataclass
class Plan:
    model: str
    backend: str
    image_config: object
    runs: list[Run]
    baseline: Run | None
    fingerprint: dict
    family: str = "llava"  # the model family (its grounding question and box format)


def answer(runner, image, prompt: str, sampling) -> dict:
    """The model's answer to one sample: text, tokens generated and wall time."""
    return answer_batch(runner, [(image, prompt)], sampling)[0]


def check_prompt(runner, prompt: str, sampling, image=None) -> None:
    """Refuse a prompt this model cannot take (too long for its context), before any batch runs."""
    from nuwa_export.generation import layout_for

    layout_for(runner.stages(), prompt, sampling.max_new_tokens, image)


def answer_batch(runner, samples: list[tuple], sampling) -> list[dict]:
    """The answers to ``(image, prompt)`` samples generated side by side: text and tokens per
    sample; ``ms`` is the batch's wall time shared out equally."""
    from nuwa_export.generation import Request

    t = time.perf_counter()
    results = runner.generate_batch([Request(image, prompt, sampling) for image, prompt in samples], len(samples))
    ms = round(1000 * (time.perf_counter() - t) / len(samples), 1)
    return [{"answer": r.text, "tokens": len(r.generated_ids), "ms": ms} for r in results]


def close(runner) -> None:
    runner.close()


def _weights_stamp(path: Path) -> list:
    from nuwa_export.models.loader import weight_files

    files = weight_files(path) + [path / "config.json"]
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


class _Loaded:
    """A checkpoint loaded at most once, shared by every budget that runs on it."""

    def __init__(self, info, dtype: str, device: str, vision_dtype: str | None = None) -> None:
        self.info, self.dtype, self.device, self.vision_dtype, self.value = info, dtype, device, vision_dtype, None

    def __call__(self):
        from nuwa_export.models.loader import load

        if self.value is None:
            self.value = load(self.info, dtype=self.dtype, device=self.device, vision_dtype=self.vision_dtype)
        return self.value


def _reference_run(loaded: _Loaded, info, request, fp: dict) -> Run:
    """``request``: a ``pruning.BudgetRequest``."""
    from nuwa_export.runtime.runner import open_runner

    budgets, spec = info.resolve(request)  # the family's default stage-one settings
    label = f"keep{budgets.keep}" if budgets.prune else "full"
    opener = lambda: open_runner(loaded(), budgets=(budgets, spec))  # noqa: E731
    return Run(label, budgets.as_dict(), opener, {**fp, "budgets": budgets.as_dict()})


def _checkpoint_runs(model: str, options: EvalOptions, dtype: str, vision_dtype: str | None = None, baseline_only: bool = False,
                     image_size: int | None = None):
    from nuwa_export.models.loader import inspect_checkpoint, pick_device, pick_dtype
    from nuwa_export.pruning import BudgetRequest

    info = inspect_checkpoint(model, image_size if image_size is not None else options.image_size)
    loaded = _Loaded(info, dtype, options.device, vision_dtype)
    device = pick_device(options.device)
    resolved = str(pick_dtype(dtype, getattr(info.config, "dtype", None), device)).removeprefix("torch.")
    fp = {
        "checkpoint": str(info.path), "weights": _weights_stamp(info.path), "backend": "torch",
        "dtype": resolved, "vision_dtype": vision_dtype or resolved, "device": device.type,
    }
    full = _reference_run(loaded, info, BudgetRequest(prune=False), fp)
    if baseline_only or options.no_prune:
        return info, loaded, [], full
    ratios = options.keep_ratio
    if options.keep and ratios:
        raise NuwaError("pass --keep or --keep-ratio, not both")
    if ratios:
        runs = [_reference_run(loaded, info, BudgetRequest(keep_ratio=r), fp) for r in sorted(set(ratios))]
    else:
        keeps = sorted(set(options.keep or [None]), key=lambda k: (k is None, k))
        runs = [_reference_run(loaded, info, BudgetRequest(keep=k), fp) for k in keeps]
    return info, loaded, runs, full


def plan(options: EvalOptions) -> Plan:
    """Resolve MODEL_OR_EXPORT and the options into runs; refuses bad combinations before any work."""
    from nuwa_export import manifest as mf
    from nuwa_export import names
    from nuwa_export.runtime.exports import (
        budgets_of,
        image_config_of,
        is_export_dir,
        read_export,
    )
    from nuwa_export.runtime.runner import open_runner

    if not is_export_dir(options.model):
        if options.backend not in (None, "torch"):
            raise NuwaError(f"--backend {options.backend} runs an export directory; export first: nuwa-export --model {options.model} --out DIR")
        info, loaded, runs, full = _checkpoint_runs(options.model, options, options.dtype)
        baseline = None if options.no_baseline or not runs else (_baseline(options) if options.baseline else full)
        return Plan(info.model_id, "torch", _image_config(info), runs or [full], baseline, {"model": full.fingerprint}, info.family.name)

    given = [f"--{f.replace('_', '-')}" for f in BUDGET_OPTIONS if getattr(options, f)]
    if given:
        raise NuwaError(f"{' '.join(given)}: budgets are fixed when exporting; re-run nuwa-export to change them")
    directory = Path(options.model).expanduser()
    manifest = read_export(directory)
    backend = options.backend or "ort"
    b = budgets_of(manifest)
    opener = lambda: open_runner(directory, backend=backend, device=options.device, dtype=options.dtype, manifest=manifest)  # noqa: E731
    manifest_sha = mf.sha256_file(directory / names.MANIFEST)
    fp = {"export": str(directory.resolve()), "manifest_sha256": manifest_sha, "backend": backend}
    run = Run(f"keep{b.keep}" if b.prune else "full", b.as_dict(), opener, fp)
    baseline = None
    if b.prune and not options.no_baseline:
        baseline = _baseline(options, manifest.preprocessing.get("size")) if options.baseline else _export_baseline(manifest, options)
    return Plan(manifest.model.id, backend, image_config_of(manifest), [run], baseline, {"model": fp}, manifest.family)


def _image_config(info):
    return info.family.image_config(info.path, info.image_size)


def _export_baseline(manifest, options) -> Run:
    """The unpruned checkpoint an export came from, in the export's LLM dtype, vision in float32."""
    try:
        _, _, _, full = _checkpoint_runs(
            manifest.model.id, options, manifest.precision.float_type, "float32", baseline_only=True, image_size=manifest.preprocessing.get("size"),
        )
    except NuwaError as e:
        raise NuwaError(f"the unpruned baseline needs the checkpoint this export came from ({e}); pass --baseline MODEL or --no-baseline") from None
    return full


def _baseline(options, image_size: int | None = None) -> Run:
    """``--baseline MODEL``: an unpruned export (its backend) or a checkpoint (unpruned, torch; at
    ``image_size``, the evaluated export's, when given)."""
    from nuwa_export import manifest as mf
    from nuwa_export import names
    from nuwa_export.runtime.exports import budgets_of, is_export_dir, read_export
    from nuwa_export.runtime.runner import open_runner

    if not is_export_dir(options.baseline):
        return _checkpoint_runs(options.baseline, options, options.dtype, baseline_only=True, image_size=image_size)[3]
    directory = Path(options.baseline).expanduser()
    manifest = read_export(directory)
    if manifest.budgets.prune:
        raise NuwaError(f"--baseline {directory} is a pruned export; the baseline must be unpruned (nuwa-export --no-prune)")
    backend = options.backend if options.backend in ("ort", "trt") else "ort"
    fp = {"export": str(directory.resolve()), "manifest_sha256": mf.sha256_file(directory / names.MANIFEST), "backend": backend}
    return Run("full", budgets_of(manifest).as_dict(), lambda: open_runner(directory, backend=backend, device=options.device, manifest=manifest), fp)
