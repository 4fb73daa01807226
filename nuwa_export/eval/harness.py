"""``nuwa-eval``'s harness: run a model over evaluation data, resumably, and report accuracy and retention.

``OUT/`` holds ``run.json`` (the settings, so a rerun resumes only the same run),
``predictions/<label>.jsonl`` (one line per sample, appended as it finishes), and at the end
``summary.json``, ``summary.md`` and the figures.

Everything that can be checked is checked before anything is written or shown: the flags, the
data (annotations, and every image's header), ``--out`` and the first model to run (opened, so
its device, engines and tokenizer are known good). ``OUT/`` is first touched when the first
answer is saved: then a stale summary is removed, ``run.json`` written and the run's header
printed. A command that fails before that leaves ``OUT/`` as it was; one that fails later (an
image whose pixels are broken, found when its sample runs) keeps the answers saved so far, for
a rerun to resume, ends with its one error line and leaves no summary. The summary is written
only when every run has every sample, so a partial run never looks complete. Progress bars
are shown only on a terminal.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from nuwa_export import __version__, jsonio
from nuwa_export.errors import NuwaError
from nuwa_export.eval import metrics as scoring
from nuwa_export.eval import records, report, runner
from nuwa_export.eval.data import EvalData, load, sha_key
from nuwa_export.eval.paths import check_writable_dir, user_path
from nuwa_export.eval.tasks import BOX_CONVENTIONS, Task, get_task

SCHEMA_VERSION = 1


def _say(msg: str) -> None:
    print(f"nuwa-eval: {msg}", file=sys.stderr)


def _interactive() -> bool:
    """Whether stderr is a terminal (progress bars and spinners are drawn only there)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed
        return False


def _open_data(task_name: str, data_path: str, images: str | None) -> tuple[Task, EvalData]:
    task = get_task(task_name)
    data = load(task, data_path, images)
    if not len(data):
        raise NuwaError(f"{data_path}: no samples")
    return task, data


def _inspect_out(out: Path, settings: dict, force: bool) -> bool:
    """Whether ``out`` can hold this run, read only: True when its predictions are to be
    discarded (``--force`` over other settings); refuses another run's or a foreign folder."""
    check_writable_dir(out, "--out")
    state = out / "run.json"
    try:
        if state.is_file() or state.is_symlink():
            try:
                old = jsonio.loads(state.read_bytes(), str(state))
            except (OSError, NuwaError):
                old = None
            old = old.get("settings") if isinstance(old, dict) else None
            if old == settings:
                return False
            if not force:
                changed = sorted(k for k in settings if not isinstance(old, dict) or old.get(k) != settings[k]) or ["format"]
                raise NuwaError(f"{out} holds a run with other settings (different {', '.join(changed)}); pass --force to start over, or another --out")
            return True
        if out.is_dir() and any(out.iterdir()):
            if not force:
                raise NuwaError(f"--out {out} is not empty and holds no nuwa-eval run; pass --force or another --out")
            return True
    except OSError as e:
        raise NuwaError(f"cannot read --out {out} ({e.strerror or type(e).__name__})") from None
    return False


def _commit_out(out: Path, settings: dict, fresh: bool) -> None:
    """The run takes ``out`` over: old predictions go (``fresh``), and so does a stale summary."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        if fresh:
            for f in (out / "predictions").glob("*.jsonl"):
                f.unlink()
        for name in report.SUMMARY_FILES:
            (out / name).unlink(missing_ok=True)
        records.write_json(out / "run.json", {"schema_version": SCHEMA_VERSION, "settings": settings})
    except OSError as e:
        raise NuwaError(f"cannot write --out {out} ({e.strerror or type(e).__name__})") from None


def _open(run: runner.Run, spinner: bool):
    """Load ``run``'s model (a spinner on a terminal: it can take a while)."""
    if not spinner:
        return run.open()
    from rich.console import Console

    with Console(file=sys.stderr).status(f"loading the model for {run.label} ..."):
        return run.open()


def _execute(run: runner.Run, todo: list[int], total: int, data: EvalData, task: Task, sampling, progress, started, model=None, batch_size: int = 1,
             family: str = "llava") -> None:
    """Answer ``todo`` with ``run``'s model (``model``: already open), ``batch_size`` samples side
    by side; ``started()`` is called before the first answer is saved."""
    bar = progress.add_task(run.label, total=total, completed=total - len(todo))
    if not todo:
        return
    if model is None:
        model = run.open()
    out = None
    try:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            samples = []
            for i in chunk:
                image = data.image(i)  # a broken image names its sample
                prompt = task.prompt(data.samples[i].text, family)
                try:
                    runner.check_prompt(model, prompt, sampling)
                except NuwaError as e:
                    raise NuwaError(f"{run.label}, sample {i}: {e}") from None
                samples.append((image, prompt))
            try:
                recs = runner.answer_batch(model, samples, sampling)
            except NuwaError as e:
                where = f"sample {chunk[0]}" if len(chunk) == 1 else f"samples {chunk[0]}-{chunk[-1]}"
                raise NuwaError(f"{run.label}, {where}: {e}") from None
            if out is None:
                started()
                out = records.Appender(run.predictions)
            for i, rec in zip(chunk, recs):
                out.write({"index": i, "id": data.samples[i].id, **rec})
            progress.advance(bar, len(chunk))
    finally:
        if out is not None:
            out.close()
        runner.close(model)


def _result(run: runner.Run, data: EvalData, indices: list[int], convention: str, cfg, family: str = "llava") -> tuple[dict, dict]:
    recs = records.read_predictions(run.predictions, len(data), repair=True)
    answers = {i: recs[i]["answer"] for i in indices if i in recs}
    metrics, rows = scoring.score(data, answers, convention, cfg, family)
    timed = [recs[i] for i in answers if "ms" in recs[i]]
    return {
        "label": run.label,
        "budgets": run.budgets,
        "predictions": str(run.predictions),
        "n": len(answers),
        "n_expected": len(indices),
        "complete": len(answers) == len(indices),
        "metrics": metrics,
        "ms_per_sample": round(sum(r["ms"] for r in timed) / len(timed), 1) if timed else None,
    }, rows


@contextlib.contextmanager
def _offline():
    """Nothing is downloaded: a model id must already be in the Hugging Face cache."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def evaluate(options: runner.EvalOptions) -> dict:
    """Run ``options`` (module doc) and return the summary (also written to ``OUT/``); nothing is
    downloaded. Raises :class:`NuwaError` for bad options or data, before anything is written."""
    with _offline():
        return _evaluate(options)


def _evaluate(options: runner.EvalOptions) -> dict:
    from nuwa_export.models.demo import cache_dir
    from nuwa_export.sampling import SamplingConfig

    # 1. everything that can be checked, before anything is written or shown
    if options.limit is not None and options.limit < 1:
        raise NuwaError(f"--limit must be at least 1, got {options.limit}")
    if options.batch_size < 1:
        raise NuwaError(f"--batch-size must be at least 1, got {options.batch_size}")
    task, data = _open_data(options.task, options.data, options.images)
    indices = list(range(min(len(data), options.limit or len(data))))
    data.check_images(indices)
    sampling = SamplingConfig(task.max_new_tokens if options.max_new_tokens is None else options.max_new_tokens)
    plan = runner.plan(options)
    out = user_path(options.out, "--out") if options.out else Path("eval") / f"{task.name}-{Path(options.model).name}-{plan.backend}"
    settings = {"task": task.name, "data": data.fingerprint(), "family": plan.family, "max_new_tokens": sampling.max_new_tokens, **plan.fingerprint}
    fresh = _inspect_out(out, settings, options.force)
    for run in plan.runs:
        run.predictions = out / "predictions" / f"{run.label}.jsonl"
    if plan.baseline is not None:
        key = sha_key({k: settings[k] for k in ("task", "data", "family", "max_new_tokens")} | {"model": plan.baseline.fingerprint})
        cache = cache_dir() / "eval"
        check_writable_dir(cache, "the baseline cache", links_ok=True)
        plan.baseline.predictions = cache / f"{task.name}-full-{key}.jsonl"
    runs = plan.runs + ([plan.baseline] if plan.baseline else [])
    work = []
    for run in runs:
        ours = run is not plan.baseline
        done = {} if fresh and ours else records.read_predictions(run.predictions, len(data), repair=True)
        work.append((run, [i for i in indices if i not in done]))
    first = next((run for run, todo in work if todo), None)
    tty = _interactive()
    model = _open(first, tty) if first is not None else None  # its device, engines and tokenizer

    # 2. the run: OUT is taken over when the first answer is saved
    taken = []

    def take_over() -> None:
        if taken:
            return
        _commit_out(out, settings, fresh)
        taken.append(True)
        _say(f"{task.name}: {len(indices)} of {len(data)} samples · {plan.model} · {plan.backend} · writing {out}")
        if task.grounding:
            _say(f"box convention: {options.box_convention}: {BOX_CONVENTIONS[options.box_convention]}")

    with report.progress_bar(enabled=tty) as progress:
        try:
            for run, todo in work:
                _execute(run, todo, len(indices), data, task, sampling, progress, take_over, model if run is first else None, options.batch_size, plan.family)
        except KeyboardInterrupt:
            if taken or not fresh:
                have = len(records.read_predictions(run.predictions, len(data), repair=True))
                if have:
                    _say(f"{run.label}: {have} of {len(indices)} samples saved in {run.predictions}; run the same command again to resume")
            raise
        except BaseException:
            progress.live.transient = True  # on a terminal the bars go; the error is the last line
            raise
    take_over()  # nothing was left to run: the summary is made again
    summary = _summarise(options, task, data, indices, plan, out)
    if not summary["complete"]:
        raise NuwaError("some samples have no answer (was a predictions file changed meanwhile?); nothing summarised, run the same command again to resume")
    return summary


def _summarise(options: runner.EvalOptions, task: Task, data: EvalData, indices: list[int], plan: runner.Plan, out: Path) -> dict:
    convention = options.box_convention
    results, rows = [], {}
    for run in plan.runs:
        res, rows[run.label] = _result(run, data, indices, convention, plan.image_config, plan.family)
        results.append(res)
    baseline, retention = None, {}
    if plan.baseline is not None:
        baseline, base_rows = _result(plan.baseline, data, indices, convention, plan.image_config, plan.family)
        baseline["cache"] = baseline["predictions"]
        copy = out / "predictions" / "full.jsonl"
        recs = records.read_predictions(plan.baseline.predictions, len(data), repair=True)
        records.write_atomic(copy, b"".join(records.line_of(recs[i]) for i in indices if i in recs))
        baseline["predictions"] = str(copy)
        for res in results:
            common = sorted(set(rows[res["label"]]) & set(base_rows))
            pruned = scoring.aggregate(task, [rows[res["label"]][i] for i in common])
            full = scoring.aggregate(task, [base_rows[i] for i in common])
            retention[res["label"]] = {"n": len(common), **scoring.retention(task, pruned, full)}
        rows["full"] = base_rows  # drawn beside the pruned runs
    complete = all(r["complete"] for r in results) and (baseline is None or baseline["complete"])
    summary = {
        "schema_version": SCHEMA_VERSION,
        "nuwa_export_version": __version__,
        "task": task.name,
        "data": str(options.data),
        "samples": len(indices),
        "data_samples": len(data),
        "limit": options.limit,
        "box_convention": convention if task.grounding else None,
        "model": plan.model,
        "backend": plan.backend,
        "runs": results,
        "baseline": baseline,
        "retention": retention,
        "complete": complete,
        "out": str(out),
    }
    if complete:  # a partial run leaves its predictions, never a summary
        summary["figures"] = report.figures(out, task, data, summary, rows)
        report.write_summary(out, summary)
    return summary


def score_predictions(task_name: str, data_path: str, images: str | None, predictions: str, box_convention: str = "lmms-eval",
                      family: str = "llava", image_size: int = 448) -> dict:
    """``nuwa-eval score``: score a predictions file made anywhere against the data (``family``:
    how the answers write boxes; ``image_size``: the square a Qwen2.5-VL model saw)."""
    task, data = _open_data(task_name, data_path, images)
    recs = records.read_predictions(user_path(predictions, "--predictions"), len(data))
    if not recs:
        raise NuwaError(f"{predictions} holds no predictions")
    if image_size < 1:
        raise NuwaError(f"--image-size must be at least 1, got {image_size}")
    from nuwa_export.image import ImageConfig

    metrics, _ = scoring.score(data, {i: r["answer"] for i, r in recs.items()}, box_convention, ImageConfig(size=image_size), family)
    if len(recs) != len(data):
        _say(f"warning: PARTIAL: {len(recs)} of {len(data)} samples have predictions; the metrics cover those only")
    return {
        "task": task.name,
        "data": str(data_path),
        "predictions": str(predictions),
        "box_convention": box_convention if task.grounding else None,
        "n_expected": len(data),
        "complete": len(recs) == len(data),
        "metrics": metrics,
    }
