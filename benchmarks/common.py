"""What the benchmark scripts share: the machine record, versions, timing statistics, the
benchmark-sized LLaVA-1.5-7B-proportioned model, and ``README.md`` assembled from every JSON
under ``results/``.

Each benchmark module defines ``NAME`` (its JSON is ``results/NAME.json``) and
``render_section(results) -> str`` (its part of the README, numbers taken from the JSON only).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE / "README.md"
#: README sections, in this order (each one only if its JSON exists).
BENCHMARKS = ("pruning_pays", "decode_scaling", "export_vs_eager", "vision_overhead", "quantize", "scale")
PACKAGES = ("torch", "transformers", "onnx", "onnxscript", "onnxruntime")

#: A LLaVA-1.5-7B-proportioned model that fits a 2-core CPU (used by pruning_pays and export_vs_eager).
#: LLM: Vicuna-7B's proportions scaled by 1/4 in width and depth: hidden:intermediate = 1024:2752
#: (= 4096:11008), head_dim 128 (8 heads, no GQA, as Vicuna's 32×128), 8 layers instead of 32
#: (so L = N/2 = 4). Vision: the real 336 px / 14 px geometry (24×24 = 576 patches + CLS) but a
#: thin tower (4 layers, 128 wide), because these benchmarks measure the LLM. initializer_range
#: is Llama's 0.02 (the demo's 0.1 makes a 1024-wide random model's activations explode).
BENCH_SIZES = dict(
    image_size=336, patch_size=14, vision_hidden_size=128, vision_layers=4, vision_heads=4,
    vision_intermediate_size=512, text_hidden_size=1024, text_intermediate_size=2752, text_layers=8,
    text_heads=8, text_kv_heads=8, vocab_size=600, initializer_range=0.02,
)
KEEP = 64
PROMPT = "What is in the picture?"


def bench_model(path: Path) -> Path:
    """Build the benchmark checkpoint (random weights, seed 0) at ``path``."""
    from nuwa_export.models.families.llava import demo

    return demo.build(path, seed=0, **BENCH_SIZES)


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")), platform.processor())
    mem = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
    os_name = next((ln.split("=", 1)[1].strip('"') for ln in Path("/etc/os-release").read_text().splitlines() if ln.startswith("PRETTY_NAME")), platform.platform())
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)), "memory_gib": round(mem / 2**20, 1),
            "os": os_name, "kernel": platform.release(), "python": platform.python_version(), "load_average": list(os.getloadavg())}


def versions() -> dict:
    return {p: md.version(p) for p in PACKAGES}


def tool_versions(packages) -> dict:
    """Versions of the optional packages a benchmark used (those installed)."""
    from nuwa_export.versions import installed

    return installed(packages)


def machine_line(r: dict) -> str:
    m = r["machine"]
    return (f"Machine: {m['cpu']}, {m['usable_cores']} usable cores ({m['logical_cores']} logical), {m['memory_gib']} GiB, "
            f"{m['os']} (kernel {m['kernel']}), Python {m['python']}. Versions: "
            + ", ".join(f"{k} {x}" for k, x in r["versions"].items()) + ".")


def stats(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "runs": [round(x, 2) for x in xs]}


def command_line(script: str, argv: list[str] | None) -> str:
    return " ".join([f".venv/bin/python benchmarks/{script}", *(argv if argv is not None else sys.argv[1:])])


def write_results(name: str, results: dict, out: Path | None = None) -> Path:
    out = out or RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return out


def render_readme(results_dir: Path = RESULTS, overrides: dict[str, dict] | None = None) -> str:
    """The whole ``README.md``: the header, then every benchmark whose JSON is in ``results_dir``."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    loaded = {}
    for name in BENCHMARKS:
        path = results_dir / f"{name}.json"
        if overrides and name in overrides:
            loaded[name] = overrides[name]
        elif path.is_file():
            loaded[name] = json.loads(path.read_text())
    run_all = results_dir / "run_all.json"
    last = ""
    if run_all.is_file():
        ra = json.loads(run_all.read_text())
        parts = ", ".join(f"`{k}` {v['wall_s'] / 60:.1f} min" + (" (reused)" if v.get("reused") else "") for k, v in ra["scripts"].items())
        last = (f"\nThe last `run_all.py` took {ra['wall_s'] / 60:.1f} minutes ({parts}) on {ra['machine']['cpu']}, "
                f"{ra['machine']['usable_cores']} cores (load average {ra['machine']['load_average'][0]:.1f} at its start).\n")
    sections = "\n".join(_section(name, r) for name, r in loaded.items())
    return f"""# Benchmarks

Timings only; nothing here asserts on time (the scripts do assert that the implementations they
compare compute the same thing). Each script writes JSON under `results/` (with the machine and
library versions) and regenerates this file from all of them. Every number below comes from those JSON files.

Regenerate every number on a clean clone (after `scripts/setup.sh`; the time the last full run took is right below):

```bash
.venv/bin/python benchmarks/run_all.py                          # runs every benchmark, then renders this file
.venv/bin/python benchmarks/run_all.py --reuse scale            # keep results/scale.json (the longest: a 7B-shaped export, ~45 GB of disk)
.venv/bin/python benchmarks/run_all.py --render-only            # only re-render this file from results/*.json
```
{last}
**Contention.** These numbers come from a shared 2-core machine with other jobs running at the same time.
Wall times vary from run to run (every run is in the JSON). Compare ratios measured within one run, not
absolute times across runs or machines.

{sections}"""


def _section(name: str, r: dict) -> str:
    """One benchmark's section; a JSON written by an older version of its script gets a one-line note instead."""
    try:
        return importlib.import_module(name).render_section(r)
    except (KeyError, TypeError) as e:
        return f"## `{name}.py`\n\n`results/{name}.json` was written by an older version of the script (missing {e}); re-run it.\n"


def write_readme(readme: Path = README, results_dir: Path = RESULTS) -> None:
    readme.write_text(render_readme(results_dir))


def ort_pipeline(directory: Path, spinning: bool = True, llm_graphs: str = "auto"):
    """The library's ONNX Runtime pipeline on the CPU, with ORT's default spin-waiting threads
    (``spinning=True``) or with spinning off (``False``: what nuwa-export ships).

    The backend gives each of its three sessions its own intra-op thread pool. When the sessions
    run one after another, spinning threads of the one that just finished take CPU from the next
    one on a 2-core machine. This benchmark measured that, and the backend turns spinning off since.
    ``llm_graphs``: ``auto`` (as shipped: the ONNX Runtime graphs when the export has them), ``ort`` or ``standard``.
    """
    from nuwa_export.runtime.exports import read_export
    from nuwa_export.runtime.ort_backend import OrtBackend
    from nuwa_export.runtime.runner import open_runner

    manifest = read_export(directory)
    return open_runner(directory, backend=OrtBackend(directory, manifest, "cpu", spinning=spinning, llm_graphs=llm_graphs), manifest=manifest)




def op_profile(directory: Path, manifest, batch: int, seq: dict[str, int], past: dict[str, int], steps: int = 10, in_place: bool = False) -> dict:
    """ONNX Runtime's own per-op profile of each LLM graph of an export (sessions of their own with
    profiling on, the shipped thread settings) on ``seq[graph]`` new rows over ``past[graph]``
    cache entries, random inputs: kernel ms per run and each op type's ms, largest first.
    ``in_place``: the ONNX Runtime graphs, past buffers of ``past + seq`` entries bound as the present."""
    import json

    import numpy as np
    import onnxruntime as ort

    from nuwa_export.names import kv_names

    llm, b = manifest.llm, manifest.budgets
    rng = np.random.default_rng(0)
    out = {"batch": batch, "seq": seq, "past": past, "graphs": {}}
    for graph, layers in (("llm_prefix", range(b.stage_two_layer)), ("llm_suffix", range(b.stage_two_layer, llm.num_layers))):
        opts = ort.SessionOptions()
        opts.enable_profiling = True
        opts.profile_file_prefix = str(directory / f"ort_profile_{graph}_b{batch}_s{seq[graph]}")
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        file = (manifest.ort_graphs if in_place else manifest.graphs)[graph].file
        session = ort.InferenceSession(str(directory / file), opts, providers=["CPUExecutionProvider"])
        s, n = seq[graph], past[graph]
        first = "inputs_embeds" if graph == "llm_prefix" else "hidden_states"
        feeds = {first: rng.standard_normal((batch, s, llm.hidden_size), dtype=np.float32),
                 "position_ids": np.broadcast_to(np.arange(n, n + s, dtype=np.int64), (batch, s)).copy()}
        if in_place:
            feeds["attention_mask"] = np.ones((batch, n + s), np.int64)
        else:
            feeds["pad_lengths"] = np.zeros(batch, np.int64)
        if graph == "llm_prefix":
            feeds["vision_start"] = np.ones(batch, np.int64)
        kv = {name: ort.OrtValue.ortvalue_from_numpy(rng.standard_normal((batch, llm.num_kv_heads, n + s if in_place else n, llm.head_dim), dtype=np.float32))
              for name in kv_names("past", layers)}
        io = session.io_binding()
        for name, value in feeds.items():
            io.bind_cpu_input(name, value)
        for name, value in kv.items():
            io.bind_ortvalue_input(name, value)
        for o in session.get_outputs():
            past_name = o.name.replace("present_", "past_", 1)
            if in_place and past_name in kv:
                io.bind_ortvalue_output(o.name, kv[past_name])  # the same buffer: written in place
            else:
                io.bind_output(o.name)
        for _ in range(steps):
            session.run_with_iobinding(io)
        events = json.loads(Path(session.end_profiling()).read_text())
        per_op: dict[str, float] = {}
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                per_op[e["args"]["op_name"]] = per_op.get(e["args"]["op_name"], 0) + e["dur"] / 1e3 / steps
        out["graphs"][graph] = {"kernel_ms": sum(per_op.values()), "op_ms": dict(sorted(per_op.items(), key=lambda kv: -kv[1]))}
    out["kernel_ms"] = sum(g["kernel_ms"] for g in out["graphs"].values())
    return out


def bench_main(name: str, script: str, doc: str, run, show, runs: int, warmup: int, argv: list[str] | None) -> int:
    """The command line every LLM benchmark shares: run, write JSON, show, re-render the README.

    ``run(runs, warmup, workdir, command_line) -> dict`` does the measuring; ``show(results)`` prints.
    """
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--runs", type=int, default=runs, help="timed rounds (median and min reported)")
    ap.add_argument("--warmup", type=int, default=warmup, help="untimed rounds first")
    ap.add_argument("--out", type=Path, default=RESULTS / f"{name}.json")
    ap.add_argument("--readme", type=Path, default=README)
    ap.add_argument("--render-only", action="store_true", help="only rewrite the README from the JSON files")
    args = ap.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        ap.error("--runs must be >= 1 and --warmup >= 0")
    if not args.render_only:
        with tempfile.TemporaryDirectory(prefix="nuwa-bench-") as tmp:
            start = time.perf_counter()
            results = run(args.runs, args.warmup, Path(tmp), command_line(script, argv))
            results["wall_s"] = round(time.perf_counter() - start, 1)
        write_results(name, results, args.out)
        show(results)
    write_readme(args.readme, args.out.parent)
    return 0
