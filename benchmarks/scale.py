"""Scale: export time and peak memory of a full-size LLaVA-1.5-7B-shaped random checkpoint in fp16 (limit 24 GiB).

Builds the checkpoint locally in a child process (``nuwa_export.tools.synthetic``: CLIP ViT-L/14-336,
Vicuna-7B shapes, vocabulary padded to 32064, random fp16 weights, seed 0, 2 GiB shards), then runs
``nuwa-export --model CKPT --dtype float16 --keep 64`` as a child process. Each child's peak RSS is
its ``ru_maxrss`` (``os.wait4``); a thread also samples ``/proc/PID/status`` every 0.2 s for the
anonymous / file-backed split (mmapped weights count as file RSS) and ``/proc/meminfo`` for the
lowest MemAvailable. Writes ``results/scale.json`` and regenerates ``benchmarks/README.md``.
The 7B run needs about 45 GB of disk in ``--workdir`` (the checkpoint, and an export with both LLM graph pairs).

    .venv/bin/python benchmarks/scale.py --sizes 7b
    .venv/bin/python benchmarks/scale.py --sizes small                   # smoke test, ~30 s
    .venv/bin/python benchmarks/scale.py --checkpoint CKPT_DIR           # reuse a built checkpoint
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NAME = "scale"
LIMIT_GIB = 24
KEEP = 64
#: ``nuwa_export.models.families.llava.synthetic`` preset and shard size per ``--sizes``.
SIZES = {"7b": {"preset": "7b", "shard_gib": 2.0}, "small": {"preset": "small", "shard_gib": 0.001}}
DISK_GB = {"7b": 30, "small": 0}
SAMPLE_S = 0.2
STATUS_FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmSwap")


def _kib_fields(path: str, names: tuple[str, ...]) -> dict[str, int]:
    """``{name: bytes}`` of the ``name: N kB`` lines of a /proc file (missing ones left out)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in names and rest.strip().endswith("kB"):
            out[key] = int(rest.split()[0]) * 1024
    return out


def run_measured(cmd: list[str], log: Path, env: dict | None = None) -> dict:
    """Run ``cmd`` (stdout and stderr to ``log``): exit code, wall time, exact peak RSS and sampled peaks."""
    peaks = dict.fromkeys(STATUS_FIELDS, 0)
    low = {"MemAvailable": None}
    samples = [0]
    stop = threading.Event()

    def sample(pid: int) -> None:
        while not stop.is_set():
            for k, v in _kib_fields(f"/proc/{pid}/status", STATUS_FIELDS).items():
                peaks[k] = max(peaks[k], v)
            avail = _kib_fields("/proc/meminfo", ("MemAvailable",)).get("MemAvailable")
            if avail is not None and (low["MemAvailable"] is None or avail < low["MemAvailable"]):
                low["MemAvailable"] = avail
            samples[0] += 1
            stop.wait(SAMPLE_S)

    with open(log, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        sampler = threading.Thread(target=sample, args=(proc.pid,), daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        stop.set()
        sampler.join()
    return {
        "command": cmd, "exit_code": proc.returncode, "wall_s": round(wall, 1),
        "peak_rss_bytes": usage.ru_maxrss * 1024,  # Linux reports KiB
        "sampled_peak_bytes": {"rss": peaks["VmRSS"], "anon": peaks["RssAnon"], "file": peaks["RssFile"],
                               "shmem": peaks["RssShmem"], "swap": peaks["VmSwap"]},
        "min_mem_available_bytes": low["MemAvailable"], "samples": samples[0], "sample_interval_s": SAMPLE_S,
        "user_cpu_s": round(usage.ru_utime, 1), "system_cpu_s": round(usage.ru_stime, 1), "major_faults": usage.ru_majflt,
    }


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def file_sizes(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_size for p in sorted(directory.rglob("*")) if p.is_file()}


def validation_summary(v: dict) -> dict:
    """Every check in the manifest's ``validation`` (``stage``, ``ok``, ``max_abs``, ``detail``) and whether all passed."""
    checks = []

    def walk(x) -> None:
        if isinstance(x, dict):
            if "ok" in x and "stage" in x:
                checks.append({k: x.get(k) for k in ("stage", "ok", "max_abs", "detail")})
            else:
                for y in x.values():
                    walk(y)
        elif isinstance(x, list):
            for y in x:
                walk(y)

    walk(v)
    return {"ok": bool(checks) and all(c["ok"] for c in checks), "checks": checks}


def fail(step: str, m: dict, log: Path) -> None:
    print(f"{step} failed (exit code {m['exit_code']}); the last lines of {log}:\n{tail(log)}", file=sys.stderr)


def run(args: argparse.Namespace, workdir: Path, command: str) -> dict:
    mach = common.machine()  # load average at the start
    venv_bin = Path(sys.executable).parent
    cli = venv_bin / "nuwa-export"
    ckpt, out = workdir / "ckpt", workdir / "export"
    spec = SIZES[args.sizes]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}  # wide: one progress line per step
    result = {"benchmark": NAME, "command": command, "sizes": args.sizes, "dtype": args.dtype, "keep": args.keep,
              "limit_gib": LIMIT_GIB, "machine": mach, "versions": common.versions()}
    if args.checkpoint:
        ckpt = args.checkpoint.resolve()
        result["build"] = None
        print(f"== reusing the checkpoint {ckpt}", flush=True)
    else:
        build_cmd = [sys.executable, "-m", "nuwa_export.tools.synthetic", str(ckpt), "--sizes", spec["preset"],
                     "--dtype", "float16", "--seed", "0", "--shard-gib", str(spec["shard_gib"])]
        print(f"== building the {args.sizes} checkpoint in {ckpt}", flush=True)
        result["build"] = build = run_measured(build_cmd, workdir / "build.log", env)
        if build["exit_code"] != 0:
            fail("the checkpoint build", build, workdir / "build.log")
            raise SystemExit(1)
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    config = json.loads((ckpt / "config.json").read_text())
    sizes = file_sizes(ckpt)
    tc, vc = config["text_config"], config["vision_config"]
    result["checkpoint"] = {
        "builder": "nuwa_export.models.families.llava.synthetic.build_sharded (random weights, seed 0)" + (f", reused from {ckpt}" if args.checkpoint else ""),
        "dtype": config.get("dtype", "float16"),
        "parameters": index["metadata"]["total_size"] // 2, "weights_bytes": index["metadata"]["total_size"],
        "bytes": sum(sizes.values()), "shards": len(set(index["weight_map"].values())),
        "text": {k: tc[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size")},
        "vision": {k: vc[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size")},
    }
    export_cmd = [str(cli), "--model", str(ckpt), "--dtype", args.dtype, "--keep", str(args.keep), "--out", str(out), "--force"]
    print(f"== exporting: {' '.join(export_cmd)}", flush=True)
    export = run_measured(export_cmd, workdir / "export.log", env)
    export["peak_rss_gib"] = export["peak_rss_bytes"] / 2**30
    result["export"] = export
    result["within_limit"] = export["exit_code"] == 0 and export["peak_rss_bytes"] <= LIMIT_GIB * 2**30
    if export["exit_code"] != 0:
        export["log_tail"] = tail(workdir / "export.log")
        fail("the export", export, workdir / "export.log")
        return result
    export["steps_s"] = step_times(workdir / "export.log")
    for step in (result.get("build"), export):
        if step:
            step["command"] = portable(step["command"], workdir, args.checkpoint)
    manifest = json.loads((out / "manifest.json").read_text())
    files = file_sizes(out)
    result["output"] = {"bytes": sum(files.values()), "files": files}
    result["budgets"] = manifest["budgets"]
    result["llm_dtype"] = manifest["precision"]["io"]
    result["validation"] = manifest["validation"]
    result["validation_summary"] = validation_summary(manifest["validation"])
    result["load_average_at_end"] = list(os.getloadavg())
    return result


def portable(cmd: list[str], workdir: Path, checkpoint: Path | None = None) -> list[str]:
    """``cmd`` as recorded in the JSON: this machine's paths become ``WORKDIR``, ``CHECKPOINT``
    and ``.venv/bin/...``, so the record reads the same wherever it ran."""
    venv_bin = os.path.abspath(Path(sys.executable).parent)
    out = []
    for a in cmd:
        if checkpoint is not None and a == str(checkpoint.resolve()):
            a = "CHECKPOINT"
        elif a.startswith(str(workdir)):
            a = "WORKDIR" + a[len(str(workdir)):]
        elif a.startswith(venv_bin + "/"):
            a = ".venv/bin/" + a[len(venv_bin) + 1:]
        out.append(a)
    return out


def step_times(log: Path) -> dict[str, float]:
    """``{step: seconds}`` from nuwa-export's progress lines (``✓ name 12.3 s``)."""
    out = {}
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("✓ ") and line.endswith(" s"):
            name, _, secs = line[2:-2].rpartition(" ")
            try:
                out[name] = float(secs)
            except ValueError:
                pass
    return out


def _gib(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2**30:.2f}"


def _size(b: int) -> str:
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 / 10 else f"{b / 2**20:.1f} MiB"


def _cmd(cmd: list[str]) -> str:
    return " ".join(["python" if i == 0 and "python" in Path(x).name else Path(x).name if i == 0 else x for i, x in enumerate(cmd)])


def render_section(r: dict) -> str:
    b, e, c = r["build"], r["export"], r["checkpoint"]
    tc, vc = c["text"], c["vision"]
    ok = e["exit_code"] == 0
    sp = e["sampled_peak_bytes"]
    full = r["sizes"] == "7b"
    built = [("checkpoint build: wall time", f"{b['wall_s']:.1f} s"), ("checkpoint build: peak RSS (`ru_maxrss`)", f"{_gib(b['peak_rss_bytes'])} GiB")] if b else [
        ("checkpoint build", "not in this run (`--checkpoint`: an existing checkpoint was reused)")]
    rows = [
        *built,
        ("checkpoint on disk", f"{_size(c['bytes'])} ({c['shards']} shards, {c['parameters']:,} parameters)"),
        ("export: exit code", str(e["exit_code"])),
        ("export: wall time", f"{e['wall_s']:.1f} s ({e['wall_s'] / 60:.1f} min; CPU {e['user_cpu_s']:.0f} s user, {e['system_cpu_s']:.0f} s system)"),
        *((f"&nbsp;&nbsp;step: {k}", f"{v:.1f} s") for k, v in e.get("steps_s", {}).items()),
        ("**export: peak RSS** (`ru_maxrss`)", f"**{_gib(e['peak_rss_bytes'])} GiB**"),
        ("export: sampled peak RSS (anonymous / file-backed)", f"{_gib(sp['rss'])} GiB ({_gib(sp['anon'])} / {_gib(sp['file'])})"),
        ("export: sampled peak swap", f"{_gib(sp['swap'])} GiB"),
        ("lowest MemAvailable during the export", f"{_gib(e['min_mem_available_bytes'])} GiB of {r['machine']['memory_gib']} GiB"),
    ]
    if ok:
        rows.append(("export on disk", _size(r["output"]["bytes"])))
    rows.append((f"**within {r['limit_gib']} GiB**", f"**{'yes' if r['within_limit'] else 'no'}**"))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    if ok:
        v = r["validation_summary"]
        checks = "\n".join(f"| {x['stage']} | {'ok' if x['ok'] else '**failed**'} | {x['detail']} |" for x in v["checks"])
        bud = r["budgets"]
        big = sorted(r["output"]["files"].items(), key=lambda kv: -kv[1])[:6]
        files = ", ".join(f"`{k}` {_size(n)}" for k, n in big)
        body = f"""The export's own validation against the PyTorch reference {'**passed**' if v['ok'] else '**failed**'} (LLM in {r['llm_dtype']};
budgets keep {bud['keep']}, K1 {bud['stage_one_keep']}, K2 {bud['stage_two_keep']} from layer {bud['stage_two_layer']} of {bud['num_layers']}):

| check | result | detail |
|---|---|---|
{checks}

Largest export files: {files}."""
    else:
        body = f"**The export failed** (exit code {e['exit_code']}). The last lines of its log:\n\n```\n{e.get('log_tail', '')}\n```"
    tower = f"CLIP ViT-L/{vc['patch_size']}-{vc['image_size']}" if full else f"a CLIP tower ({vc['image_size']} px, {vc['patch_size']} px patches)"
    llm = "a Vicuna-7B-shaped LLM" if full else "a Llama LLM"
    note = "" if full and r["dtype"] == "float16" else (
        f"\n**This run used `--sizes {r['sizes']} --dtype {r['dtype']}`" + (", smoke-test shapes, not LLaVA-1.5-7B" if not full else "") + ".**\n")
    how = f"built in a child process by\n\n```bash\n{_cmd(b['command'])}\n```\n" if b else "reused (`--checkpoint`).\n"
    return f"""## `scale.py`: a full-size LLaVA-1.5-7B-shaped export in fp16
{note}
The checkpoint has random {c['dtype']} weights (seed 0, `nuwa_export.models.families.llava.synthetic.build_sharded`): {tower}
({vc['num_hidden_layers']} layers, {vc['hidden_size']} wide) and {llm} ({tc['num_hidden_layers']} layers, hidden
{tc['hidden_size']}, MLP {tc['intermediate_size']}, {tc['num_attention_heads']} heads, vocabulary {tc['vocab_size']}),
{c['parameters']:,} parameters in {c['shards']} safetensors shards. It was {how}
Then the export runs as a child process:

```bash
{_cmd(e['command'])}
```

Peak RSS is the child's `ru_maxrss` (from `os.wait4`), which counts the file-backed pages of mmapped weights too.
The anonymous / file-backed split and MemAvailable come from sampling `/proc` every {e['sample_interval_s']} s, so
they can miss short peaks. The limit is {r['limit_gib']} GiB.

| | |
|---|---:|
{table}

{body}

{common.machine_line(r)} Load average (1 min) {r['machine']['load_average'][0]:.2f} at the start. The whole script took {r['wall_s'] / 60:.1f} minutes.

Regenerate (writes `benchmarks/results/scale.json` and this file):

```bash
{r['command']}
```
"""


def show(r: dict) -> None:
    e, b = r["export"], r["build"]
    if b:
        print(f"build: {b['wall_s']:.1f} s, peak RSS {_gib(b['peak_rss_bytes'])} GiB")
    print(f"checkpoint: {_size(r['checkpoint']['bytes'])}, {r['checkpoint']['parameters']:,} parameters")
    print(f"export: exit {e['exit_code']}, {e['wall_s']:.1f} s, peak RSS {_gib(e['peak_rss_bytes'])} GiB "
          f"(sampled anon {_gib(e['sampled_peak_bytes']['anon'])}, file {_gib(e['sampled_peak_bytes']['file'])}), "
          f"min MemAvailable {_gib(e['min_mem_available_bytes'])} GiB; within {r['limit_gib']} GiB: {r['within_limit']}")
    if "validation_summary" in r:
        print(f"validation ok: {r['validation_summary']['ok']}; export {_size(r['output']['bytes'])}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", choices=sorted(SIZES), default="7b", help="7b: LLaVA-1.5-7B shapes; small: the demo's, a smoke test")
    ap.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="passed to nuwa-export --dtype")
    ap.add_argument("--keep", type=int, default=KEEP)
    ap.add_argument("--workdir", type=Path, help="where the checkpoint and export go (default: a new directory under /tmp)")
    ap.add_argument("--keep-files", action="store_true", help="keep the checkpoint and export in the workdir")
    ap.add_argument("--checkpoint", type=Path, help="export this existing checkpoint (never deleted) instead of building one")
    ap.add_argument("--out", type=Path, default=common.RESULTS / f"{NAME}.json")
    ap.add_argument("--readme", type=Path, default=common.README)
    ap.add_argument("--render-only", action="store_true", help="only rewrite the README from the JSON files")
    args = ap.parse_args(argv)
    if args.render_only:
        common.write_readme(args.readme, args.out.parent)
        return 0
    own = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="nuwa-scale-", dir="/tmp")) if own else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    if args.checkpoint and not (args.checkpoint / "model.safetensors.index.json").is_file():
        ap.error(f"--checkpoint {args.checkpoint}: no model.safetensors.index.json (build one with python -m nuwa_export.tools.synthetic)")
    need = DISK_GB[args.sizes] // (2 if args.checkpoint else 1)
    free = shutil.disk_usage(workdir).free / 1e9
    if free < need:
        ap.error(f"--sizes {args.sizes} needs about {need} GB free in {workdir}; it has {free:.1f} GB")
    try:
        start = time.perf_counter()
        results = run(args, workdir, common.command_line("scale.py", argv))
        results["wall_s"] = round(time.perf_counter() - start, 1)
    finally:
        if not args.keep_files:
            for d in ([] if args.checkpoint else [workdir / "ckpt"]) + [workdir / "export"]:
                shutil.rmtree(d, ignore_errors=True)
            if own:
                shutil.rmtree(workdir, ignore_errors=True)
    common.write_results(NAME, results, args.out)
    show(results)
    common.write_readme(args.readme, args.out.parent)
    if results["export"]["exit_code"] != 0:
        return 1
    if args.keep_files:
        print(f"kept {workdir / 'ckpt'} and {workdir / 'export'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
