"""``nuwa-eval``: run a model over evaluation data, resumably, and report accuracy and retention.

``OUT/`` holds ``run.json`` (the settings, so a rerun resumes only the same run),
``predictions/<label>.jsonl`` (one line per sample, appended as it finishes), and at the end
``summary.json``, ``summary.md`` and the figures. The summary files are removed when a run
starts and written only when every run has every sample, so a partial run never looks complete.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from nuwa_export import __version__
from nuwa_export.errors import NuwaError
from nuwa_export.eval import metrics as scoring
from nuwa_export.eval import records, report, runner
from nuwa_export.eval.data import EvalData, load, sha_key
from nuwa_export.eval.tasks import BOX_CONVENTIONS, Task, get_task

SCHEMA_VERSION = 1
FAMILY = "llava"  # the grounding prompt and parser; the model family issue picks it per model


def _say(msg: str) -> None:
    print(f"nuwa-eval: {msg}", file=sys.stderr)


def _open_data(args) -> tuple[Task, EvalData]:
    task = get_task(args.task)
    data = load(task, args.data, args.images)
    if not len(data):
        raise NuwaError(f"{args.data}: no samples")
    return task, data


def _prepare_out(out: Path, settings: dict, force: bool) -> None:
    """Resume only a run with the same settings; clear stale summaries so they cannot mislead."""
    if out.exists() and not out.is_dir():
        raise NuwaError(f"--out {out} exists and is not a directory")
    state = out / "run.json"
    if state.is_file():
        try:
            old = json.loads(state.read_text()).get("settings")
        except (json.JSONDecodeError, AttributeError):
            old = None
        if old != settings:
            if not force:
                changed = sorted(k for k in settings if not isinstance(old, dict) or old.get(k) != settings[k]) or ["format"]
                raise NuwaError(f"{out} holds a run with other settings (different {', '.join(changed)}); pass --force to start over, or another --out")
            for f in (out / "predictions").glob("*.jsonl"):
                f.unlink()
    elif out.is_dir() and any(out.iterdir()) and not force:
        raise NuwaError(f"--out {out} is not empty and holds no nuwa-eval run; pass --force or another --out")
    for name in report.SUMMARY_FILES:
        (out / name).unlink(missing_ok=True)
    records.write_json(state, {"schema_version": SCHEMA_VERSION, "settings": settings})


def _execute(run: runner.Run, data: EvalData, indices: list[int], task: Task, sampling, progress) -> None:
    done = records.read_predictions(run.predictions, len(data), repair=True)
    todo = [i for i in indices if i not in done]
    bar = progress.add_task(run.label, total=len(indices), completed=len(indices) - len(todo))
    if not todo:
        return
    model = run.open()
    try:
        with records.Appender(run.predictions) as out:
            for i in todo:
                sample = data.samples[i]
                rec = runner.answer(model, data.image(i), task.prompt(sample.text, FAMILY), sampling)
                out.write({"index": i, "id": sample.id, **rec})
                progress.advance(bar)
    finally:
        runner.close(model)


def _result(run: runner.Run, data: EvalData, indices: list[int], convention: str, cfg) -> tuple[dict, dict]:
    recs = records.read_predictions(run.predictions, len(data))
    answers = {i: recs[i]["answer"] for i in indices if i in recs}
    metrics, rows = scoring.score(data, answers, convention, cfg)
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


def eval_cli(args: argparse.Namespace) -> int:
    with _offline():
        return _eval(args)


def _eval(args: argparse.Namespace) -> int:
    from nuwa_export.models.demo import cache_dir
    from nuwa_export.sampling import SamplingConfig

    if args.limit is not None and args.limit < 1:
        raise NuwaError(f"--limit must be at least 1, got {args.limit}")
    task, data = _open_data(args)
    indices = list(range(min(len(data), args.limit or len(data))))
    data.check_images(indices)
    sampling = SamplingConfig(task.max_new_tokens if args.max_new_tokens is None else args.max_new_tokens)
    plan = runner.plan(args)
    out = Path(args.out or Path("eval") / f"{task.name}-{Path(args.model).name}-{plan.backend}").expanduser()
    settings = {"task": task.name, "data": data.fingerprint(), "family": FAMILY, "max_new_tokens": sampling.max_new_tokens, **plan.fingerprint}
    _prepare_out(out, settings, args.force)
    for run in plan.runs:
        run.predictions = out / "predictions" / f"{run.label}.jsonl"
    if plan.baseline is not None:
        key = sha_key({k: settings[k] for k in ("task", "data", "family", "max_new_tokens")} | {"model": plan.baseline.fingerprint})
        plan.baseline.predictions = cache_dir() / "eval" / f"{task.name}-full-{key}.jsonl"
    _say(f"{task.name}: {len(indices)} of {len(data)} samples · {plan.model} · {plan.backend} · writing {out}")
    if task.grounding:
        _say(f"box convention: {args.box_convention}: {BOX_CONVENTIONS[args.box_convention]}")
    runs = plan.runs + ([plan.baseline] if plan.baseline else [])
    with report.progress_bar() as progress:
        for run in runs:
            try:
                _execute(run, data, indices, task, sampling, progress)
            except KeyboardInterrupt:
                have = len(records.read_predictions(run.predictions, len(data), repair=True))
                _say(f"{run.label}: {have} of {len(indices)} samples saved in {run.predictions}; run the same command again to resume")
                raise
    summary = _summarise(args, task, data, indices, plan, out)
    if args.json:
        print(json.dumps(summary))
    else:
        report.print_table(summary)
    if not summary["complete"]:
        _say("some samples have no answer (was a predictions file changed meanwhile?); nothing summarised, run again to resume")
        return 1
    return 0


def _summarise(args, task: Task, data: EvalData, indices: list[int], plan: runner.Plan, out: Path) -> dict:
    convention = args.box_convention
    results, rows = [], {}
    for run in plan.runs:
        res, rows[run.label] = _result(run, data, indices, convention, plan.image_config)
        results.append(res)
    baseline, retention = None, {}
    if plan.baseline is not None:
        baseline, base_rows = _result(plan.baseline, data, indices, convention, plan.image_config)
        baseline["cache"] = baseline["predictions"]
        copy = out / "predictions" / "full.jsonl"
        recs = records.read_predictions(plan.baseline.predictions, len(data))
        records.write_atomic(copy, "".join(json.dumps(recs[i], ensure_ascii=False) + "\n" for i in indices if i in recs))
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
        "data": str(args.data),
        "samples": len(indices),
        "data_samples": len(data),
        "limit": args.limit,
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


def score_cli(args: argparse.Namespace) -> int:
    """``nuwa-eval score``: score a predictions file made anywhere against the data."""
    task, data = _open_data(args)
    recs = records.read_predictions(Path(args.predictions), len(data))
    if not recs:
        raise NuwaError(f"{args.predictions} holds no predictions")
    metrics, _ = scoring.score(data, {i: r["answer"] for i, r in recs.items()}, args.box_convention)
    result = {
        "task": task.name,
        "data": str(args.data),
        "predictions": str(args.predictions),
        "box_convention": args.box_convention if task.grounding else None,
        "n_expected": len(data),
        "complete": len(recs) == len(data),
        "metrics": metrics,
    }
    if not result["complete"]:
        _say(f"warning: PARTIAL: {len(recs)} of {len(data)} samples have predictions; the metrics cover those only")
    if args.json:
        print(json.dumps(result))
    else:
        report.print_score(result)
    return 0
