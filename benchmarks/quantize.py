"""Quantized exports on the benchmark model: per precision, what nuwa-quantize takes and gives.

The benchmark model (``common.BENCH_SIZES``: a LLaVA-1.5-7B-proportioned LLM, 1024 wide, 8
layers) is exported in float32 (keep 64, the standard LLM graphs), then quantized to each
precision with the default calibration set. Per precision: the LLM graphs' file sizes, the time
nuwa-quantize took, the validation policy's figures (against the float export, on the
calibration requests), ONNX Runtime CPU prefill and decode times (the pipeline as shipped,
interleaved rounds), and the engine sizes TensorRT for RTX builds (no GPU needed; not timed:
there is no GPU here to run them). ONNX Runtime's CPU provider emulates int8 / fp8 Q/DQ nodes
(dequantize, then a float matmul), so those are slower here than float32; int4 weight-only
graphs are folded into its 4-bit MatMul kernels. Writes ``results/quantize.json`` and
regenerates ``benchmarks/README.md``. Never asserts on time.

    .venv/bin/python benchmarks/quantize.py --runs 5
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NAME = "quantize"
PRECISIONS = ("int8", "fp8", "int4-awq", "int4-rtn")
TOKENS = 16


def _mib(directory: Path, names) -> float:
    return sum((directory / n).stat().st_size for n in names) / 2**20


def _llm_files(m) -> list[str]:
    return [n for n in m.files if n.startswith(("llm_prefix.onnx", "llm_suffix.onnx"))]


def run(runs: int, warmup: int, workdir: Path, command: str) -> dict:
    from nuwa_export.build.builder import build
    from nuwa_export.errors import NuwaError
    from nuwa_export.export.pipeline import export
    from nuwa_export.models.demo import example_picture
    from nuwa_export.quant.quantize import quantize
    from nuwa_export.sampling import SamplingConfig

    mach = common.machine()
    ckpt = common.bench_model(workdir / "ckpt")
    t0 = time.perf_counter()
    float_manifest = export(str(ckpt), workdir / "float32", keep=common.KEEP, ort_graphs=False, progress=False)
    export_s = time.perf_counter() - t0
    dirs = {"float32": workdir / "float32"}
    per: dict[str, dict] = {"float32": {"quantize_s": None, "llm_mib": _mib(dirs["float32"], _llm_files(float_manifest))}}
    for p in PRECISIONS:
        t = time.perf_counter()
        try:
            m = quantize(dirs["float32"], workdir / p, p, progress=False)
        except NuwaError as e:  # the policy rejected this precision on this model: a result, reported
            per[p] = {"quantize_s": round(time.perf_counter() - t, 1), "rejected": str(e)}
            continue
        dirs[p] = workdir / p
        v = m.validation["quantized"]
        per[p] = {"quantize_s": round(time.perf_counter() - t, 1), "llm_mib": _mib(dirs[p], _llm_files(m)),
                  "opsets": {g: q.opset for g, q in m.quantization.graphs.items()}, "method": m.quantization.method,
                  "block_size": m.quantization.block_size,
                  "calibration": m.quantization.calibration, "policy": v["policy"], "summary": v["summary"]}

    engines: dict[str, dict] = {}
    for name, d in dirs.items():
        t = time.perf_counter()
        built = build(d, builder="tensorrt-rtx", progress=False)
        engines[name] = {"build_s": round(time.perf_counter() - t, 1), "precision": built.precision,
                         "mib": {g: (d / "engines" / s.engine_file).stat().st_size / 2**20 for g, s in built.items()}}

    pipes = {k: common.ort_pipeline(d, spinning=False, llm_graphs="standard") for k, d in dirs.items()}
    image, sampling = example_picture(), SamplingConfig(max_new_tokens=TOKENS, stop_at_eos=False)

    def once(k):
        ms = pipes[k].generate(image, common.PROMPT, sampling).timings_ms
        return {"prefill": ms["prefix"] + ms["stage_two"] + ms["suffix"], "decode_per_token": ms["decode_per_token"],
                "time_to_first_token": ms["time_to_first_token"]}

    for _ in range(warmup):
        for k in pipes:
            once(k)
    times = {k: [] for k in pipes}
    for _ in range(runs):
        for k in pipes:
            times[k].append(once(k))
    for p in pipes.values():
        p.close()
    timings = {k: {s: common.stats([t[s] for t in v]) for s in v[0]} for k, v in times.items()}
    f = timings["float32"]
    accepted = [k for k in PRECISIONS if k in dirs]
    ratios = {k: {"prefill_over_float32": timings[k]["prefill"]["median"] / f["prefill"]["median"],
                  "decode_over_float32": timings[k]["decode_per_token"]["median"] / f["decode_per_token"]["median"],
                  "llm_file_over_float32": per[k]["llm_mib"] / per["float32"]["llm_mib"],
                  "llm_engines_over_float32": (engines[k]["mib"]["llm_prefix"] + engines[k]["mib"]["llm_suffix"])
                  / (engines["float32"]["mib"]["llm_prefix"] + engines["float32"]["mib"]["llm_suffix"])} for k in accepted}
    b = float_manifest.budgets
    return {
        "benchmark": NAME,
        "command": command,
        "model": {"sizes": common.BENCH_SIZES, "weights": "random (seed 0), built locally", "budgets": {"keep": b.keep, "k1": b.stage_one_keep, "k2": b.stage_two_keep, "layer": b.stage_two_layer}},
        "input": {"image": "demo example picture (320x240)", "prompt": common.PROMPT, "max_new_tokens": TOKENS},
        "export_s": round(export_s, 1),
        "precisions": per,
        "engines": engines,
        "runs": runs, "warmup": warmup,
        "onnxruntime_settings": "the pipeline's own, spinning off, the standard LLM graphs (quantized exports have no ONNX Runtime graphs)",
        "machine": mach, "versions": {**common.versions(), **common.tool_versions(("nvidia-modelopt", "tensorrt-rtx-cu13"))},
        "timings_ms": timings,
        "ratios": ratios,
        "load_average_at_end": list(os.getloadavg()),
    }


def render_section(r: dict) -> str:
    t, per, eng, q = r["timings_ms"], r["precisions"], r["engines"], r["ratios"]
    sz, b = r["model"]["sizes"], r["model"]["budgets"]
    rows = []
    for k in ("float32", *PRECISIONS):
        took = "—" if per[k]["quantize_s"] is None else f"{per[k]['quantize_s']:.0f} s"
        if "rejected" in per[k]:
            why = per[k]["rejected"].removeprefix("validation failed: ").split(" for the ")[0]
            rows.append(f"| {k} | — | — | — | — | {took} | **rejected by the policy**: {why} |")
            continue
        e = eng[k]["mib"]
        s = per[k].get("summary")
        fig = "—" if s is None else (f"{s['hidden_cosine']:.3f} / {s['logits_cosine']:.3f} / {s['stage_two_overlap']:.2f} / "
                                     f"{s['token_agreement']:.2f} ({s['tokens_identical']:.2f})")
        rows.append(
            f"| {k} | {per[k]['llm_mib']:.1f} | {e['llm_prefix'] + e['llm_suffix']:.1f} | "
            f"{t[k]['prefill']['median']:.0f} ({t[k]['prefill']['min']:.0f}) | {t[k]['decode_per_token']['median']:.1f} ({t[k]['decode_per_token']['min']:.1f}) | "
            f"{took} | {fig} |"
        )
    ratio_rows = "\n".join(
        f"| {k} | {q[k]['llm_file_over_float32']:.2f}× | {q[k]['llm_engines_over_float32']:.2f}× | {q[k]['prefill_over_float32']:.2f}× | {q[k]['decode_over_float32']:.2f}× |"
        for k in PRECISIONS if k in q
    )
    cal = next(per[k]["calibration"] for k in PRECISIONS if "calibration" in per[k])
    block = next((per[k]["block_size"] for k in ("int4-awq", "int4-rtn") if per[k].get("block_size")), None)
    return f"""## Quantized exports (`quantize.py`)

The benchmark model ({sz['text_layers']}-layer, {sz['text_hidden_size']}-wide LLM; keep {b['keep']}: K1 {b['k1']}, K2 {b['k2']}, L {b['layer']}) exported in
float32, then `nuwa-quantize` to each precision with the default calibration set ({cal['requests']} requests of `calib/default.jsonl`,
{cal['batches']} batch(es) of at most the export's max_batch, prefill and {cal['decode_steps']} decode step(s) recorded; int4-awq: one batch of prefills). Times are ONNX Runtime on this CPU, the pipeline as shipped
(standard LLM graphs), {r['input']['max_new_tokens']} greedy tokens, {r['warmup']} warm-up round(s) then {r['runs']} interleaved rounds; engine sizes are
what TensorRT for RTX builds without a GPU (nothing here can run them).

| precision | LLM ONNX MiB | LLM engines MiB | prefill ms | decode ms/token | nuwa-quantize | policy: hidden cos / logits cos / stage-two overlap / agreement (identical) |
|---|---:|---:|---:|---:|---:|---|
{chr(10).join(rows)}

Median (min in brackets). The policy's figures are the lowest cosine over the calibration requests, the mean overlap, and the
share of teacher-forced greedy picks that agree (equal, or a near-tie), against the float export.

| precision | LLM ONNX / float32 | LLM engines / float32 | prefill / float32 | decode / float32 |
|---|---:|---:|---:|---:|
{ratio_rows}

How to read it:
- Sizes are what deployment carries. int4 weights are a quarter of int8's plus one scale per block (of {block} here: this
  model's widths are {sz['text_hidden_size']} and {sz['text_intermediate_size']}, and TensorRT takes whole blocks only); ModelOpt keeps
  int8 / fp8 weights in float32 with Q/DQ nodes in the ONNX file (TensorRT folds them when it builds), so their ONNX files
  do not shrink but their engines do.
- ONNX Runtime's CPU provider has no fp8 kernels and runs int8 / fp8 Q/DQ by dequantizing to float, so those rows are slower
  than float32 here; this table is not how they run on a GPU. int4 weight-only graphs use its 4-bit MatMul kernels.
- The policy's figures come from a random-weight model, which quantizes worse than a trained one (docs/verification.md). Its
  stage-two scores are nearly flat, so stage two's choice among K1 tokens is the most fragile figure here; a precision the
  policy rejects writes nothing, and is shown as rejected with the figure that failed.

{common.machine_line(r)} Load average (1 min) {r['machine']['load_average'][0]:.2f} at the start, {r['load_average_at_end'][0]:.2f} at the end. Export took
{r['export_s']:.0f} s; the whole script took {r['wall_s'] / 60:.1f} minutes.

Regenerate (writes `benchmarks/results/quantize.json` and this file):

```bash
{r['command']}
```
"""


def show(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="quantized exports (median ms; MiB)", title_justify="left")
    for col in ("precision", "LLM onnx", "engines", "prefill", "decode/token"):
        table.add_column(col, justify="left" if col == "precision" else "right")
    for k, v in r["timings_ms"].items():
        e = r["engines"][k]["mib"]
        table.add_row(k, f"{r['precisions'][k]['llm_mib']:.1f}", f"{e['llm_prefix'] + e['llm_suffix']:.1f}", f"{v['prefill']['median']:.1f}", f"{v['decode_per_token']['median']:.2f}")
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    return common.bench_main(NAME, "quantize.py", __doc__, run, show, runs=5, warmup=1, argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())
