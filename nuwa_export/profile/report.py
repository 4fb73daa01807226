"""Show a ``nuwa-profile`` report: a rich table on the terminal and a stage-breakdown chart.

The chart (matplotlib, Agg) has two panels:

* top: the median time to first token as one horizontal bar stacked from its parts
  (preprocess, vision, prefix, stage two, suffix), next to the median decode time per token;
* bottom: every stage's median as a bar with a whisker out to its p90.

Its size is fixed (:data:`FIGSIZE` at :data:`DPI`), so tests and documents can rely on it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from nuwa_export.atomic import check_output_file, write_file
from nuwa_export.errors import NuwaError
from nuwa_export.profile.runs import PREFILL_PARTS

FIGSIZE, DPI = (10.0, 6.0), 100  # inches, dots per inch → 1000 × 600 pixels
#: One colour per stage (the chart's only colours besides black, white and greys).
COLOURS = {
    "preprocess": "#8c8c8c",
    "vision": "#1f77b4",
    "prefix": "#2ca02c",
    "stage_two": "#d62728",
    "suffix": "#ff7f0e",
    "decode_per_token": "#9467bd",
}
_PLOTTED = (*PREFILL_PARTS, "time_to_first_token", "decode_per_token")
PLOT_FORMATS = (".png", ".svg", ".pdf")


def _title(report: dict) -> str:
    e, s = report["export"], report["settings"]
    b = e["budgets"]
    kept = f"K1={b['stage_one_keep']}, K2={b['stage_two_keep']} from layer {b['stage_two_layer']}" if b["prune"] else "no pruning"
    return f"nuwa-profile · {e['model']} · {s['backend']} · {e['num_patches']} patches, {kept}"


def print_table(report: dict, file=None) -> None:
    """Median, p90 per stage, then memory and KV cache, as a rich table."""
    from rich.console import Console
    from rich.table import Table

    s = report["settings"]
    table = Table(title=_title(report), caption=f"{s['runs']} runs after {s['warmup']} warm-up, {report['generated_tokens']} tokens each", title_justify="left")
    table.add_column("stage")
    table.add_column("median", justify="right")
    table.add_column("p90", justify="right")
    for name, st in report["stages_ms"].items():
        unit = "tok/s" if name == "tokens_per_s" else "ms"
        table.add_row(name, f"{st['median']:.2f} {unit}", f"{st['p90']:.2f} {unit}")
    mib = lambda n: "—" if n is None else f"{n / 2**20:.2f} MiB"
    kv, mem = report["kv_cache"], report["memory"]
    table.add_section()
    table.add_row("peak RSS (process)", mib(mem["rss_peak_bytes"]), "")
    if mem["cuda_peak_allocated_bytes"] is not None:
        table.add_row("peak CUDA allocated", mib(mem["cuda_peak_allocated_bytes"]), "")
    for group in ("prefix_layers", "suffix_layers"):
        g = kv[group]
        table.add_row(f"KV layers [{g['layers'][0]}, {g['layers'][1]}), {g['vision_tokens']} vision", mib(g["bytes"]), "")
    table.add_row("KV cache total (unpruned)", mib(kv["total_bytes"]), f"({mib(kv['unpruned_bytes'])})")
    if report.get("flops"):
        f = report["flops"]
        table.add_row("LLM prefill TFLOPs, Nüwa vs full", f"{f['nuwa_tflops']:.4g}", f"{f['full_tflops']:.4g} (bound ×{f['speedup_bound']:.2f})")
    Console(file=file or sys.stdout).print(table)


def check_plot_path(path: str | Path) -> Path:
    """Refuse, before profiling, a chart path that :func:`plot` could not write: a format outside
    :data:`PLOT_FORMATS` or one this matplotlib cannot save, no matplotlib, a bad place."""
    path = Path(path)
    if path.suffix.lower() not in PLOT_FORMATS:
        raise NuwaError(f"{path}: the chart is written as {', '.join(PLOT_FORMATS)}, not '{path.suffix}'")
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise NuwaError("--plot needs matplotlib: pip install 'matplotlib>=3.8'") from None
    if path.suffix.lower().lstrip(".") not in Figure().canvas.get_supported_filetypes():
        raise NuwaError(f"{path}: this matplotlib cannot write '{path.suffix}' charts; use .png")
    check_output_file(path)  # its directory exists and is writable; not a directory, link or device
    return path


def plot(report: dict, path: str | Path) -> Path:
    """Draw the stage breakdown of ``report`` to ``path`` (atomically) and return the path."""
    path = check_plot_path(path)
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        raise NuwaError("--plot needs matplotlib: pip install 'matplotlib>=3.8'") from None
    stages = report["stages_ms"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=FIGSIZE, dpi=DPI, gridspec_kw={"height_ratios": [1, 1.6]})
    try:
        _stacked(top, stages)
        _bars(bottom, stages)
        fig.suptitle(_title(report), fontsize=11, x=0.01, ha="left")
        fig.tight_layout(rect=(0, 0, 1, 0.95))
        write_file(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip(".").lower(), dpi=DPI))
    finally:
        plt.close(fig)
    return path


def _stacked(ax, stages: dict) -> None:
    """Time to first token stacked from its parts; decode per token beside it (medians)."""
    left = 0.0
    for name in PREFILL_PARTS:
        if name not in stages:
            continue
        ms = stages[name]["median"]
        ax.barh(1, ms, left=left, color=COLOURS[name], label=f"{name} {ms:.1f} ms")
        left += ms
    ttft = stages["time_to_first_token"]["median"]
    ax.text(left, 1, f"  {ttft:.1f} ms", va="center", fontsize=9)
    dpt = stages["decode_per_token"]["median"]
    ax.barh(0, dpt, color=COLOURS["decode_per_token"], label=f"decode {dpt:.2f} ms/token")
    ax.text(dpt, 0, f"  {dpt:.2f} ms ({stages['tokens_per_s']['median']:.0f} tok/s)", va="center", fontsize=9)
    ax.set_yticks([1, 0], ["time to first token", "decode / token"])
    ax.set_xlim(0, max(ttft, dpt) * 1.3)
    ax.set_xlabel("ms (median)")
    ax.legend(loc="best", fontsize=8, ncol=3, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)


def _bars(ax, stages: dict) -> None:
    """Each stage's median with a whisker to its p90."""
    names = [n for n in _PLOTTED if n in stages][::-1]
    med = [stages[n]["median"] for n in names]
    p90 = [stages[n]["p90"] for n in names]
    colours = [COLOURS.get(n, "#444444") for n in names]
    ax.barh(names, med, color=colours, xerr=[[0] * len(names), [max(0.0, q - m) for q, m in zip(p90, med)]], capsize=3)
    for y, (m, q) in enumerate(zip(med, p90)):
        ax.text(q, y, f"  {m:.2f} (p90 {q:.2f}) ms", va="center", fontsize=8)
    ax.set_xlim(0, max(p90) * 1.35)
    ax.set_xlabel("ms per stage: median, whisker to p90")
    ax.spines[["top", "right"]].set_visible(False)
