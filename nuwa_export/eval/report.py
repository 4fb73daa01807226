"""What ``nuwa-eval`` shows: a progress bar, the summary table, ``summary.json`` / ``summary.md`` and
the figures (an IoU histogram, sample images with predicted and true boxes, accuracy against keep).
Every file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from nuwa_export.eval import records
from nuwa_export.eval.metrics import THRESHOLDS
from nuwa_export.eval.tasks import BOX_CONVENTIONS

SUMMARY_FILES = ("summary.json", "summary.md", "iou_hist.png", "samples.png", "accuracy_vs_keep.png")
GRID = 8  # sample images drawn


def progress_bar(enabled: bool = True):
    """A bar per run on stderr, drawn only on an interactive terminal (``enabled`` and rich
    agreeing: not ``TERM=dumb``); elsewhere it shows nothing at all."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(file=sys.stderr)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    return Progress(*columns, console=console, disable=not (enabled and console.is_interactive))


#: metric key → column header (metrics are shown in %)
_HEADERS = {
    "mean_iou": "IoU", **{f"acc@{t}": f"@{t}" for t in THRESHOLDS}, "centre_acc": "centre", "parsed": "boxed",
    "accuracy": "acc", "precision": "prec", "recall": "recall", "f1": "F1", "yes_ratio": "yes",
}


def _columns(task: str) -> list[str]:
    if task.startswith("refcoco"):
        return ["mean_iou"] + [f"acc@{t}" for t in THRESHOLDS] + ["centre_acc", "parsed"]
    return ["accuracy", "precision", "recall", "f1", "yes_ratio"] if task == "pope" else ["accuracy"]


def _title(s: dict) -> str:
    conv = f" · boxes: {s['box_convention']}" if s.get("box_convention") else ""
    state = "" if s["complete"] else " · PARTIAL"
    return f"{s['task']} · {Path(s['model']).name} · {s['backend']} · {s['samples']} samples{conv}{state}"


def _run_name(r: dict) -> str:
    b = r["budgets"]
    return f"{r['label']} ({b['stage_one_keep']}/{b['stage_two_keep']})" if b["prune"] else r["label"]


def _retention_cell(ret: dict | None) -> str:
    if not ret:
        return ""
    first = next(k for k in ret if k != "n")
    pct = ret[first]["retention_pct"]
    return f"{pct:.1f}" if pct is not None else "n/a"


def _table(s: dict):
    from rich.table import Table

    cols = _columns(s["task"])
    headline = next((k for k in ("acc@0.5", "accuracy") if k in cols), cols[0])
    t = Table(title=_title(s), title_justify="left", caption=f"metrics in %; retention: {_HEADERS[headline]} as % of the full model's", caption_justify="left")
    for name in ["run (K1/K2)", "n", *[_HEADERS[c] for c in cols], "ret."]:
        t.add_column(name, justify="left" if name.startswith("run") else "right", no_wrap=True)
    rows = s["runs"] + ([s["baseline"]] if s.get("baseline") else [])
    for r in rows:
        n = f"{r['n']}" if r["complete"] else f"{r['n']}/{r['n_expected']}"
        ret = _retention_cell(s.get("retention", {}).get(r["label"]))
        t.add_row(_run_name(r), n, *[_fmt(r["metrics"].get(c)) for c in cols], ret)
    return t


def _fmt(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}" if isinstance(v, float) else str(v)


def print_table(summary: dict) -> None:
    from rich.console import Console

    Console(width=max(100, Console().width)).print(_table(summary))
    if summary.get("box_convention"):
        print(f"box convention: {summary['box_convention']}: {BOX_CONVENTIONS[summary['box_convention']]}")
    undefined = {r["why"] for ret in summary.get("retention", {}).values() for k, r in ret.items() if k != "n" and r["retention_pct"] is None}
    for why in sorted(undefined):
        print(f"retention n/a: {why}")


def print_score(result: dict) -> None:
    m = result["metrics"]
    conv = f", box convention {result['box_convention']}" if result.get("box_convention") else ""
    print(f"{result['task']}: {m['n']} of {result['n_expected']} samples{conv}" + ("" if result["complete"] else " (PARTIAL)"))
    for k in _columns(result["task"]):
        if k in m:
            print(f"  {k:<11} {100 * m[k]:6.2f} %")


def write_summary(out: Path, summary: dict) -> None:
    """``summary.md``, then ``summary.json`` last: it is what marks the run complete."""
    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=120, color_system=None).print(_table(summary))
    records.write_atomic(out / "summary.md", f"# {_title(summary)}\n\n```\n{buf.getvalue()}```\n")
    records.write_json(out / "summary.json", summary)


def _save(fig, path: Path) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    records.write_atomic(path, buf.getvalue())
    return str(path)


def figures(out: Path, task, data, summary: dict, rows: dict) -> list[str]:
    """The PNGs for a complete run; returns their paths."""
    made = []
    if task.grounding:
        made.append(_iou_hist(out / "iou_hist.png", summary, rows))
        made.append(samples_figure(out / "samples.png", data, summary["runs"][0]["label"], rows[summary["runs"][0]["label"]]))
    if len([r for r in summary["runs"] if r["budgets"]["prune"]]) >= 2:
        made.append(_vs_keep(out / "accuracy_vs_keep.png", task, summary))
    return made


def _iou_hist(path: Path, summary: dict, rows: dict) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.add_subplot()
    bins = [k / 20 for k in range(21)]
    for label, per in rows.items():
        ax.hist([r["iou"] for r in per.values()], bins=bins, histtype="step", linewidth=1.5, label=label)
    ax.set(xlabel="IoU", ylabel="samples", title=f"{summary['task']}: IoU per sample ({summary['box_convention']})", xlim=(0, 1))
    ax.legend()
    return _save(fig, path)


def samples_figure(path: Path, data, label: str, rows: dict) -> str:
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    picked = sorted(rows)[:GRID]
    cols = min(4, len(picked))
    nrows = (len(picked) + cols - 1) // cols
    fig = Figure(figsize=(2.6 * cols, 2.6 * nrows), layout="constrained")
    for k, i in enumerate(picked):
        ax = fig.add_subplot(nrows, cols, k + 1)
        img = data.image(i)
        w, h = img.size
        thumb = img.copy()
        thumb.thumbnail((320, 320))
        ax.imshow(thumb, extent=(0, w, h, 0))
        t = data.samples[i].truth
        ax.add_patch(Rectangle((t[0], t[1]), t[2] - t[0], t[3] - t[1], fill=False, color="lime", linewidth=2))
        if rows[i]["parsed"]:
            p = rows[i]["box"]
            ax.add_patch(Rectangle((p[0] * w, p[1] * h), (p[2] - p[0]) * w, (p[3] - p[1]) * h, fill=False, color="red", linewidth=2))
        ax.set_title(f"{data.samples[i].text[:32]}\nIoU {rows[i]['iou']:.2f}" + ("" if rows[i]["parsed"] else " (no box)"), fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{label}: true box green, predicted red", fontsize=9)
    return _save(fig, path)


def _vs_keep(path: Path, task, summary: dict) -> str:
    from matplotlib.figure import Figure

    runs = sorted((r for r in summary["runs"] if r["budgets"]["prune"]), key=lambda r: r["budgets"]["keep"])
    fig = Figure(figsize=(5, 3.5), layout="constrained")
    ax = fig.add_subplot()
    key = task.headline
    ax.plot([r["budgets"]["keep"] for r in runs], [100 * r["metrics"].get(key, 0) for r in runs], "o-", label="Nüwa")
    if summary.get("baseline"):
        ax.axhline(100 * summary["baseline"]["metrics"].get(key, 0), linestyle="--", color="grey", label="full model")
    ax.set(xlabel="keep (vision tokens per layer, average)", ylabel=f"{key} (%)", title=f"{summary['task']}: {key} against keep", ylim=(0, 100))
    ax.legend()
    return _save(fig, path)
