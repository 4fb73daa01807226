"""Does pruning pay? Pruned (keep 64) vs unpruned export of a LLaVA-1.5-7B-proportioned model,
both through the ONNX Runtime pipeline on the CPU, next to the paper's analytic FLOPs model.

Builds the benchmark model (``common.BENCH_SIZES``: Vicuna-7B proportions at 1/4 width and depth,
576 vision tokens from a thin 336 px / 14 px tower), exports it twice with
``nuwa_export.export.pipeline.export`` (``keep=64`` → K1 112, K2 16, L = N/2; and ``prune=False``),
runs both with the same picture, prompt and greedy decoding, warm-up first, then interleaved runs.
Writes ``results/pruning_pays.json`` and regenerates ``benchmarks/README.md``. Never asserts on time.

    .venv/bin/python benchmarks/pruning_pays.py --runs 8
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import roofline  # noqa: E402

from nuwa_export.profile import flops  # noqa: E402

NAME = "pruning_pays"
STAGES = ("vision", "prefix", "stage_two", "suffix", "prefill", "time_to_first_token", "decode_per_token")
MAX_NEW_TOKENS = 16


def timed_generate(pipeline, image, sampling) -> tuple[dict, list[int], int, dict]:
    """One generation; its stage timings (plus ``prefill`` and process CPU time) and output."""
    c = time.process_time()
    r = pipeline.generate(image, common.PROMPT, sampling)
    t = dict(r.timings_ms)
    t["cpu_total"] = (time.process_time() - c) * 1e3
    t["prefill"] = t["prefix"] + t["stage_two"] + t["suffix"]
    return t, r.generated_ids, r.kv_cache_bytes, {"stage_one": r.stage_one_indices, "stage_two": r.stage_two_indices, "prompt": r.prompt}


def run(runs: int, warmup: int, workdir: Path, command: str) -> dict:
    from nuwa_export import manifest as mf
    from nuwa_export.export.pipeline import export
    from nuwa_export.models.demo import example_picture
    from nuwa_export.models.loader import inspect_checkpoint
    from nuwa_export.sampling import SamplingConfig

    mach = common.machine()  # load average at the start
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    ckpt = common.bench_model(workdir / "ckpt")
    t0 = time.perf_counter()
    export(str(ckpt), workdir / "pruned", keep=common.KEEP, progress=False)
    t1 = time.perf_counter()
    export(str(ckpt), workdir / "unpruned", prune=False, progress=False)
    t2 = time.perf_counter()
    pipes = {"pruned": common.ort_pipeline(workdir / "pruned"), "unpruned": common.ort_pipeline(workdir / "unpruned"),
             "pruned_nospin": common.ort_pipeline(workdir / "pruned", spinning=False),
             "unpruned_nospin": common.ort_pipeline(workdir / "unpruned", spinning=False),
             # the shipped sessions run the ONNX Runtime graphs (fused attention, in-place KV); these the standard ones
             "pruned_standard": common.ort_pipeline(workdir / "pruned", spinning=False, llm_graphs="standard"),
             "unpruned_standard": common.ort_pipeline(workdir / "unpruned", spinning=False, llm_graphs="standard")}
    image = example_picture()
    sampling = SamplingConfig(max_new_tokens=MAX_NEW_TOKENS, temperature=0.0, stop_at_eos=False)
    limits = roofline.limits()  # the machine's GEMM peak and DRAM read bandwidth, same threads as the sessions
    outputs, kv, info = {}, {}, {}
    times = {k: [] for k in pipes}
    # Two phases, each interleaving pruned and unpruned so drifting background load hits both
    # alike. The spinning sessions run apart from the shipped ones: their threads keep spinning
    # after a run and would take the CPU from whichever session runs next.
    for phase in (("pruned", "unpruned"), ("pruned_nospin", "unpruned_nospin", "pruned_standard", "unpruned_standard")):
        for _ in range(warmup):
            for k in phase:
                _, outputs[k], kv[k], info[k] = timed_generate(pipes[k], image, sampling)
        for _ in range(runs):
            for k in phase:
                t, ids, kv[k], info[k] = timed_generate(pipes[k], image, sampling)
                if outputs.setdefault(k, ids) != ids:
                    raise SystemExit(f"{k}: greedy output changed between runs")
                times[k].append(t)
    for p in pipes.values():
        p.close()
    for k in ("pruned", "unpruned"):
        if not outputs[k] == outputs[f"{k}_nospin"] == outputs[f"{k}_standard"]:
            raise SystemExit(f"{k}: the no-spinning sessions or the standard graphs generated other tokens")

    prompt = info["pruned"]["prompt"]
    text_tokens = len(prompt.before) + len(prompt.after)
    shape = flops.LlmShape.from_config(inspect_checkpoint(str(ckpt)).config.text_config)
    b = pipes["pruned"].budgets
    n = b.num_patches
    analytic = {
        "llava_1_5_7b_paper": flops.summary(flops.LLAVA_7B, flops.LLAVA_7B_PATCHES, 112, 16, flops.LLAVA_7B_LAYERS // 2),
        "llava_1_5_7b_with_text": flops.summary(flops.LLAVA_7B, flops.LLAVA_7B_PATCHES, 112, 16, flops.LLAVA_7B_LAYERS // 2, text_tokens),
        "bench_model": flops.summary(shape, n, b.k1, b.k2, b.layer),
        "bench_model_with_text": flops.summary(shape, n, b.k1, b.k2, b.layer, text_tokens),
    }
    # per graph: the FLOPs model of that graph alone, and the throughput it reached (median)
    graphs = {}
    for g, layers, kp in (("prefix", b.layer, b.k1), ("suffix", b.num_layers - b.layer, b.k2)):
        fl = {"unpruned": layers * flops.layer_flops(n + text_tokens, shape.hidden, shape.intermediate),
              "pruned": layers * flops.layer_flops(kp + text_tokens, shape.hidden, shape.intermediate)}
        med = {k: common.stats([t[g] for t in times[k]])["median"] for k in ("pruned", "unpruned")}
        graphs[g] = {"tokens": {"unpruned": n + text_tokens, "pruned": kp + text_tokens}, "model_gflops": {k: v / 1e9 for k, v in fl.items()},
                     "median_ms": med, "gflops_per_s": {k: fl[k] / 1e9 / (med[k] / 1e3) for k in med},
                     "measured_speedup": med["unpruned"] / med["pruned"], "flops_ratio": fl["unpruned"] / fl["pruned"]}
    res = {k: {s: common.stats([t[s] for t in times[k]]) for s in (*STAGES, "cpu_total")} for k in pipes}
    measured = {
        "prefill_median": res["unpruned"]["prefill"]["median"] / res["pruned"]["prefill"]["median"],
        "prefill_min": res["unpruned"]["prefill"]["min"] / res["pruned"]["prefill"]["min"],
        "ttft_median": res["unpruned"]["time_to_first_token"]["median"] / res["pruned"]["time_to_first_token"]["median"],
        "prefill_median_nospin": res["unpruned_nospin"]["prefill"]["median"] / res["pruned_nospin"]["prefill"]["median"],
        "prefill_min_nospin": res["unpruned_nospin"]["prefill"]["min"] / res["pruned_nospin"]["prefill"]["min"],
        "ttft_median_nospin": res["unpruned_nospin"]["time_to_first_token"]["median"] / res["pruned_nospin"]["time_to_first_token"]["median"],
    }
    bound = analytic["bench_model_with_text"]["speedup_bound"]
    roof = _roofline(ckpt, b, text_tokens, res, limits)
    roof["standard_graphs"] = _roofline(ckpt, b, text_tokens, res, limits, "standard")
    profiles = {k + ("_ort" if ort else ""): common.op_profile(workdir / k, mf.read(workdir / k), 1,
                                                            {"llm_prefix": text_tokens + kk[0], "llm_suffix": text_tokens + kk[1]},
                                                            {"llm_prefix": 0, "llm_suffix": 0}, steps=3, in_place=ort)
                for k, kk in (("pruned", (b.k1, b.k2)), ("unpruned", (n, n))) for ort in (False, True)}
    return {
        "benchmark": NAME,
        "command": command,
        "model": {"sizes": common.BENCH_SIZES, "weights": "random (seed 0), built locally", "llm_shape": dataclasses.asdict(shape),
                  "budgets": {k: v.budgets.as_dict() for k, v in pipes.items()}, "num_patches": n},
        "input": {"image": "demo example picture (320x240), LLaVA-1.5 preprocessing", "prompt": common.PROMPT,
                  "prompt_ids": prompt.input_ids, "text_tokens": text_tokens,
                  "sampling": {"greedy": True, "max_new_tokens": MAX_NEW_TOKENS, "stop_at_eos": False}},
        "export_s": {"pruned": round(t1 - t0, 1), "unpruned": round(t2 - t1, 1)},
        "runs": runs, "warmup": warmup, "torch_threads": torch.get_num_threads(),
        "onnxruntime_settings": "the pipeline's own (nuwa_export.runtime.ort_backend: ORT defaults, CPUExecutionProvider)",
        "machine": mach, "versions": common.versions(),
        "timings_ms": res,
        "kv_cache_bytes": {k: kv[k] for k in ("pruned", "unpruned")},
        "generated_ids": {k: outputs[k] for k in ("pruned", "unpruned")},
        "stage_two_indices_pruned": info["pruned"]["stage_two"],
        "measured_speedup": measured,
        "analytic": analytic,
        "graphs": graphs,
        "measured_over_bound": {"prefill_median": measured["prefill_median"] / bound, "prefill_min": measured["prefill_min"] / bound,
                                "vs_bound_without_text": measured["prefill_median"] / analytic["bench_model"]["speedup_bound"],
                                "prefill_median_nospin": measured["prefill_median_nospin"] / bound, "prefill_min_nospin": measured["prefill_min_nospin"] / bound},
        "target": "measured prefill speed-up >= 80 % of the analytic bound",
        "machine_limits": limits,
        "roofline": roof,
        "prefill_op_profiles": profiles,
        "load_average_at_end": list(os.getloadavg()),
        "raw_runs_ms": {k: [{s: round(v, 2) for s, v in t.items()} for t in times[k]] for k in pipes},
    }


def _roofline(ckpt, b, text: int, res: dict, limits: dict, sessions: str = "nospin") -> dict:
    """Each prefill graph's time against ``max(FLOPs / peak, weight bytes / bandwidth)`` (shipped
    sessions: spinning off, the ONNX Runtime graphs; ``sessions="standard"``: the standard
    graphs), pruned and unpruned, and the speed-ups measured and allowed."""
    from nuwa_export.models.loader import inspect_checkpoint

    dec = roofline.Decoder.from_config(inspect_checkpoint(str(ckpt)).config.text_config)
    out = {"decoder": dec.as_dict(), "graphs": {}}
    n = b.num_patches
    for k, (k1, k2) in (("unpruned", (n, n)), ("pruned", (b.k1, b.k2))):
        t = res[f"{k}_{sessions}"]
        cost = {"prefix": dec.graph(b.layer, text + k1, text + k1), "suffix": dec.graph(b.num_layers - b.layer, text + k2, text + k2, lm_head=True)}
        graphs = {}
        for g, c in cost.items():
            lim = roofline.roofline_ms(c, limits)
            graphs[g] = {**c, "roofline": lim, "measured_ms": t[g]["median"], "efficiency": lim["ms"] / t[g]["median"],
                         "gflops_per_s": c["flops"] / 1e9 / (t[g]["median"] / 1e3)}
        floor = sum(v["roofline"]["ms"] for v in graphs.values())
        out["graphs"][k] = graphs
        out[k] = {"roofline_ms": floor, "measured_ms": t["prefill"]["median"], "efficiency": floor / t["prefill"]["median"]}
    out["speedup"] = {"measured": out["unpruned"]["measured_ms"] / out["pruned"]["measured_ms"],
                      "roofline": out["unpruned"]["roofline_ms"] / out["pruned"]["roofline_ms"]}
    out["speedup"]["of_roofline"] = out["speedup"]["measured"] / out["speedup"]["roofline"]
    return out


def roofline_line(r: dict) -> str:
    rf = r["roofline"]
    return (f"roofline: pruned prefill {100 * rf['pruned']['efficiency']:.0f} %, unpruned prefill {100 * rf['unpruned']['efficiency']:.0f} %, "
            f"speed-up {100 * rf['speedup']['of_roofline']:.0f} % of roofline")


def _dram(d: dict) -> str:
    """How the DRAM bandwidth was measured (results written before the GEMV existed: ReduceSum only)."""
    if "kernels_gb_per_s" not in d:
        return f"ReduceSum over {d['bytes'] / 2**20:.0f} MiB"
    k = d["kernels_gb_per_s"]
    return (f"the faster of a one-row MatMul over a {d['bytes'] / 2**20:.0f} MiB weight, {k['gemv']:.1f} GB/s, and ReduceSum over "
            f"{d['bytes'] / 2**20:.0f} MiB, {k['reduce_sum']:.1f} GB/s")


def _matmul_line(r: dict, pr: dict, mm: dict, gp: dict) -> str:
    """What the pruned graphs' weight matmuls reach against the GEMM peak, from the profile."""
    peak = r["machine_limits"]["gemm"]["gflops"]
    parts, rates = [], []
    for g in ("llm_prefix", "llm_suffix"):
        rows = r["graphs"][g.removeprefix("llm_")]["tokens"]["pruned"]
        flops = 2 * rows * gp[g]["weight_bytes"] / 4  # the weights' matmuls only (float32: 4 bytes a weight)
        rates.append(flops / 1e9 / (mm[g] / 1e3) if mm[g] else 0.0)
        parts.append(f"`{g}` ({rows} rows): {rates[-1]:.0f} GFLOP/s, {100 * rates[-1] / peak:.0f} % of the peak, with {pr[g]['kernel_ms'] - mm[g]:.1f} ms in other ops")
    text = ("The weights' matmuls (their FLOPs over the profiled `MatMul` time) against the cache-resident GEMM peak of " + f"{peak:.0f} GFLOP/s: " + "; ".join(parts) +
            ". The fewer the rows, the further below the peak a matmul that streams its weights from DRAM stays.")
    if max(rates) > peak:
        text += (" A rate above the peak means the small GEMM that measures it falls short of the machine's true peak: the compute"
                 " rooflines here are then somewhat loose, and the percentages of roofline somewhat high.")
    st = r["roofline"].get("standard_graphs")
    if st:
        text += (f" Fusing attention into `GroupQueryAttention` does not change them: the pruned prefill takes {r['roofline']['pruned']['measured_ms']:.1f} ms"
                 f" on the ONNX Runtime graphs and {st['pruned']['measured_ms']:.1f} ms on the standard ones.")
    return text


def _graph_sets(r: dict) -> str:
    """The shipped sessions' graphs (the ONNX Runtime ones) against the standard graphs, same run."""
    rf = r["roofline"]
    if "standard_graphs" not in rf:
        return ""
    st, prof = rf["standard_graphs"], r["prefill_op_profiles"]
    rows = "\n".join(
        f"| {k} | {st[k]['measured_ms']:.1f} ({100 * st[k]['efficiency']:.0f} %) | {rf[k]['measured_ms']:.1f} ({100 * rf[k]['efficiency']:.0f} %) | "
        f"{prof[k]['kernel_ms']:.1f} | {prof[k + '_ort']['kernel_ms']:.1f} | "
        f"{sum(g['op_ms'].get('GroupQueryAttention', 0) for g in prof[k + '_ort']['graphs'].values()):.1f} |"
        for k in ("unpruned", "pruned"))
    return f"""The rows above are the shipped sessions, which run the export's ONNX Runtime graphs (`llm_*.ort.onnx`: each layer's attention
and KV update one `GroupQueryAttention` node). The standard graphs (the ones TensorRT builds: attention as MatMul, Softmax and
Concat) in the same run, spinning off:

| | standard graphs: prefill ms (% of roofline) | ONNX Runtime graphs: prefill ms (% of roofline) | profiled kernels, standard | profiled kernels, ONNX Runtime | of which `GroupQueryAttention` |
|---|---:|---:|---:|---:|---:|
{rows}

Speed-up with the standard graphs: {st['speedup']['measured']:.2f}× ({100 * st['speedup']['of_roofline']:.0f} % of the roofline's)."""


def render_roofline(r: dict) -> str:
    """The roofline subsection (results written before it existed render without it)."""
    if "roofline" not in r:
        return ""
    rf, lim, prof = r["roofline"], r["machine_limits"], r["prefill_op_profiles"]
    g = lim["gemm"]
    rows = []
    for k in ("unpruned", "pruned"):
        for name, v in rf["graphs"][k].items():
            rl = v["roofline"]
            rows.append(f"| {k} | `llm_{name}` | {v['flops'] / 1e9:.1f} | {v['weight_bytes'] / 2**20:.0f} | {rl['compute_ms']:.1f} | {rl['memory_ms']:.1f} | "
                        f"{rl['ms']:.1f} ({rl['bound']}) | {v['measured_ms']:.1f} | {100 * v['efficiency']:.0f} % | {v['gflops_per_s']:.0f} |")
        rows.append(f"| {k} | **prefill** | | | | | {rf[k]['roofline_ms']:.1f} | {rf[k]['measured_ms']:.1f} | **{100 * rf[k]['efficiency']:.0f} %** | |")
    sp = rf["speedup"]

    def met(x):
        return "met" if x >= 0.8 else "not met"

    shipped = {k: prof.get(f"{k}_ort", prof[k]) for k in ("unpruned", "pruned")}  # the graphs the shipped sessions run
    ops = sorted({op for p in shipped.values() for gr in p["graphs"].values() for op in gr["op_ms"]},
                 key=lambda op: -sum(gr["op_ms"].get(op, 0) for gr in shipped["pruned"]["graphs"].values()))[:8]
    op_rows = "\n".join(
        f"| {op} | " + " | ".join(f"{shipped[k]['graphs'][gname]['op_ms'].get(op, 0):.1f}" for k in ("unpruned", "pruned") for gname in ("llm_prefix", "llm_suffix")) + " |"
        for op in ops)
    kern = " | ".join(f"{shipped[k]['graphs'][gname]['kernel_ms']:.1f}" for k in ("unpruned", "pruned") for gname in ("llm_prefix", "llm_suffix"))
    pr = shipped["pruned"]["graphs"]
    mm = {gname: pr[gname]["op_ms"].get("MatMul", 0) + pr[gname]["op_ms"].get("FusedMatMul", 0) for gname in pr}
    other = {gname: pr[gname]["kernel_ms"] - mm[gname] for gname in pr}
    gp = {gname: rf["graphs"]["pruned"][gname.removeprefix("llm_")] for gname in pr}
    all_met = min(rf["pruned"]["efficiency"], rf["unpruned"]["efficiency"], sp["of_roofline"]) >= 0.8
    return f"""### Against the machine's own limit (roofline)

Measured in the same run, with the sessions' thread settings ({lim['threads']} threads, spinning off): a cache-resident GEMM
({'×'.join(str(d) for d in g['shape_mkn'])} MatMul through ONNX Runtime) peaks at **{g['gflops']:.0f} GFLOP/s**, and ONNX Runtime reads DRAM at
**{lim['dram']['gb_per_s']:.1f} GB/s** ({_dram(lim['dram'])}). Each graph's roofline is
`max(FLOPs / peak, weight bytes / bandwidth)` with its real FLOPs (Q/K/V/O projections, attention scores and values over the whole
causal square, SwiGLU's three matrices, the lm_head on the last row) and the float32 weights it streams
(`benchmarks/roofline.py`). Times are the shipped sessions' medians (spinning off).

| | graph | GFLOP | weights MiB | compute ms | memory ms | roofline ms | measured ms | % of roofline | GFLOP/s |
|---|---|---:|---:|---:|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

| target | result | |
|---|---:|---|
| pruned prefill ≥ 80 % of its roofline | {100 * rf['pruned']['efficiency']:.1f} % | {met(rf['pruned']['efficiency'])} |
| unpruned prefill ≥ 80 % of its roofline | {100 * rf['unpruned']['efficiency']:.1f} % | {met(rf['unpruned']['efficiency'])} |
| measured prefill speed-up ≥ 80 % of the roofline speed-up | {sp['measured']:.2f}× of {sp['roofline']:.2f}× = {100 * sp['of_roofline']:.1f} % | {met(sp['of_roofline'])} |

{_graph_sets(r)}

Where the time goes: ONNX Runtime's per-op profile of each prefill graph alone (one request, random inputs of the same shapes,
kernel ms per run, the op types that cost the pruned graphs most):

| op type | unpruned prefix | unpruned suffix | pruned prefix | pruned suffix |
|---|---:|---:|---:|---:|
{op_rows}
| **all kernels** | {kern} |

{"All three targets are met." if all_met else "Not every target is met."} What the pruned graphs spend above their roofline, in the profile's numbers
(the profiler's own overhead makes its kernel totals a little larger than the measured times):

| pruned graph | measured ms | roofline ms | kernels ms (profiled) | of which MatMul | other ops |
|---|---:|---:|---:|---:|---:|
| `llm_prefix` | {gp['llm_prefix']['measured_ms']:.1f} | {gp['llm_prefix']['roofline']['ms']:.1f} | {pr['llm_prefix']['kernel_ms']:.1f} | {mm['llm_prefix']:.1f} | {other['llm_prefix']:.1f} |
| `llm_suffix` | {gp['llm_suffix']['measured_ms']:.1f} | {gp['llm_suffix']['roofline']['ms']:.1f} | {pr['llm_suffix']['kernel_ms']:.1f} | {mm['llm_suffix']:.1f} | {other['llm_suffix']:.1f} |

{_matmul_line(r, pr, mm, gp)}
""" + "\n"


def render_section(r: dict) -> str:
    t, a, m, sz, g = r["timings_ms"], r["analytic"], r["measured_speedup"], r["model"]["sizes"], r["graphs"]
    bp = r["model"]["budgets"]["pruned"]
    n, tt = r["model"]["num_patches"], r["input"]["text_tokens"]
    rows = {
        "vision": "vision (tower + stage one + projector)",
        "prefix": f"`llm_prefix` (layers [0, {bp['stage_two_layer']}))",
        "stage_two": "stage two (selection; 0 unpruned)",
        "suffix": f"`llm_suffix` (layers [{bp['stage_two_layer']}, {bp['num_layers']}) + lm_head)",
        "prefill": "**prefill** = prefix + stage two + suffix",
        "time_to_first_token": "time to first token (preprocess + vision + prefill)",
        "decode_per_token": "decode, ms per token",
    }
    fmt = lambda s: f"{s['median']:.1f} | {s['min']:.1f}"  # noqa: E731
    ratio = lambda k: "" if k == "stage_two" else f"{t['unpruned'][k]['median'] / t['pruned'][k]['median']:.2f}×"  # noqa: E731
    table = "\n".join(f"| {label} | {fmt(t['unpruned'][k])} | {fmt(t['pruned'][k])} | {ratio(k)} |" for k, label in rows.items())
    kv = r["kv_cache_bytes"]
    kvrow = f"| KV cache after {r['input']['sampling']['max_new_tokens']} tokens (MiB) | {kv['unpruned'] / 2**20:.1f} | | {kv['pruned'] / 2**20:.1f} | | {kv['unpruned'] / kv['pruned']:.2f}× |"

    def arow(label, s):
        return f"| {label} | {s['hidden']}/{s['intermediate']}/{s['layers']} | {s['text_tokens']} | {s['full_tflops']:.3g} | {s['nuwa_tflops']:.3g} | {s['speedup_bound']:.2f}× |"

    ana = "\n".join([
        arow("LLaVA-1.5-7B, vision tokens only (the paper's §7 numbers)", a["llava_1_5_7b_paper"]),
        arow("LLaVA-1.5-7B with this prompt's text tokens", a["llava_1_5_7b_with_text"]),
        arow("benchmark model, vision tokens only", a["bench_model"]),
        arow("benchmark model with this prompt's text tokens (**the bound measured against**)", a["bench_model_with_text"]),
    ])
    mob = r["measured_over_bound"]
    met = mob["prefill_median"] >= 0.8
    bound = a["bench_model_with_text"]["speedup_bound"]
    graph_rows = "\n".join(
        f"| `llm_{k}` | {v['tokens']['unpruned']} → {v['tokens']['pruned']} | {v['flops_ratio']:.2f}× | {v['measured_speedup']:.2f}× | "
        f"{v['gflops_per_s']['unpruned']:.0f} | {v['gflops_per_s']['pruned']:.0f} |" for k, v in g.items())
    dpt = t["pruned"]["decode_per_token"]["median"]
    gain = lambda k: 100 * (1 - t[f"{k}_nospin"]["prefill"]["median"] / t[k]["prefill"]["median"])  # noqa: E731
    ns = lambda k, c: f"{t[k][c]['median']:.1f} ({t[k][c]['min']:.1f})"  # noqa: E731
    nospin = f"""**ONNX Runtime's default thread settings cost the pruned model the most.** The pipeline's backend gives each of its three sessions
its own intra-op thread pool, and ORT's threads spin-wait by default. When one session finishes and the next starts, the first one's
threads keep spinning on the same {r['machine']['usable_cores']} cores and take CPU from the next one. Turning spinning off shortens
the prefill by {gain('pruned'):.0f} % pruned and {gain('unpruned'):.0f} % unpruned (medians), so it raises the measured speed-up. The same exports were run through a benchmark-local backend with
`session.intra_op.allow_spinning = 0` (`common.ort_pipeline(..., spinning=False)`), in rounds of their own after the spinning ones
(a spinning session's threads would otherwise still be spinning when the next session starts). It generated the same tokens:

| ms, median (min) | unpruned | pruned | unpruned / pruned | measured / bound |
|---|---:|---:|---:|---:|
| prefill, ORT default threads (spinning) | {ns('unpruned', 'prefill')} | {ns('pruned', 'prefill')} | {m['prefill_median']:.2f}× | {100 * mob['prefill_median']:.0f} % |
| prefill, spinning off (shipped) | {ns('unpruned_nospin', 'prefill')} | {ns('pruned_nospin', 'prefill')} | {m['prefill_median_nospin']:.2f}× | **{100 * mob['prefill_median_nospin']:.0f} %** |
| time to first token, spinning off (shipped) | {ns('unpruned_nospin', 'time_to_first_token')} | {ns('pruned_nospin', 'time_to_first_token')} | {m['ttft_median_nospin']:.2f}× | |
| decode ms/token, spinning off (shipped) | {ns('unpruned_nospin', 'decode_per_token')} | {ns('pruned_nospin', 'decode_per_token')} | | |

Without spinning, the measured speed-up is {100 * mob['prefill_median_nospin']:.0f} % of the bound ({100 * mob['prefill_min_nospin']:.0f} % on the
minima){' and the 80 % target is met' if mob['prefill_median_nospin'] >= 0.8 else ', still short of the 80 % target'}. Since this measurement,
`nuwa_export/runtime/ort_backend.py` turns spinning off by default (`OrtBackend(..., spinning=False)`); the rows above labelled
"ORT default threads" are what it did before."""
    verdict = (f"**Target met** with ORT's default threads: the measured prefill speed-up is {100 * mob['prefill_median']:.0f} % of the analytic bound (target ≥ 80 %)."
               if met else
               f"**Target not met** with ORT's default threads: the measured prefill speed-up is {100 * mob['prefill_median']:.0f} % of the analytic bound "
               f"(min-based {100 * mob['prefill_min']:.0f} %; target ≥ 80 %).")
    return f"""## LLM prefill: does pruning pay? (`pruning_pays.py`)

The benchmark model has LLaVA-1.5-7B's proportions at a size that fits this CPU. Its LLM is Vicuna-7B scaled by ¼ in width and depth:
hidden {sz['text_hidden_size']}, MLP {sz['text_intermediate_size']} (the ratio 4096:11008), {sz['text_heads']} heads of
{sz['text_hidden_size'] // sz['text_heads']} (no GQA, like Vicuna), {sz['text_layers']} layers, so L = N/2 = {bp['stage_two_layer']}.
The vision geometry is the real one: {sz['image_size']} px in {sz['patch_size']} px patches, so {n} vision tokens on a
24×24 grid. The tower itself is thin ({sz['vision_layers']} layers, {sz['vision_hidden_size']} wide), because this benchmark measures
the LLM; the full CLIP-L tower is measured in the vision section below. Weights are random (seed 0, initializer range
{sz['initializer_range']}) and built locally.

It is exported twice with `nuwa_export.export.pipeline.export`: pruned with keep {bp['keep']} (K1 {bp['stage_one_keep']},
K2 {bp['stage_two_keep']}, L {bp['stage_two_layer']}), and unpruned with `prune=False`. Both exports passed the export's own
validation against the PyTorch reference. Both run through `open_runner(dir, backend="ort", device="cpu")` with the demo picture and the prompt
"{r['input']['prompt']}" ({tt} text tokens in the LLaVA template). Decoding is greedy with
{r['input']['sampling']['max_new_tokens']} new tokens (EOS ignored). There were {r['warmup']} warm-up run(s) each, then
{r['runs']} rounds interleaving the two exports, first with ORT's default threads, then, apart, with spinning off (below). Exports took {r['export_s']['pruned']:.0f} s (pruned) and
{r['export_s']['unpruned']:.0f} s (unpruned).

| ms (median \\| min) | unpruned | | pruned | | unpruned / pruned (median) |
|---|---:|---:|---:|---:|---:|
{table}
{kvrow}

**Measured prefill speed-up: {m['prefill_median']:.2f}×** with ORT's default (spinning) threads (median; {m['prefill_min']:.2f}× from the
minima; time to first token {m['ttft_median']:.2f}×), and **{m['prefill_median_nospin']:.2f}× with the sessions as shipped** (spinning off;
the table above is ORT's default threads, the shipped sessions' rows are below).

The analytic FLOPs model is `nuwa_export/profile/flops.py`: `8·S·H² + 4·S²·H + 4·S·H·I` per layer, with vision tokens S = {n} in
every layer (full) or K1 in layers [0, L) and K2 in [L, N) (Nüwa). The text tokens, when counted, are added to S in every layer.

| model | H/I/N | text tokens | full TFLOPs | Nüwa TFLOPs | bound (full / Nüwa) |
|---|---|---:|---:|---:|---:|
{ana}

**Measured / bound (ORT default threads; spinning off below): {100 * mob['prefill_median']:.0f} %** ({m['prefill_median']:.2f}× of {bound:.2f}×; against the bound without text
tokens, {a['bench_model']['speedup_bound']:.2f}×, it is {100 * mob['vs_bound_without_text']:.0f} %). {verdict}

{nospin}

What is left of the gap: the FLOPs model assumes time is proportional to FLOPs. On a CPU that holds only at large token counts. Each graph
of the benchmark model (ORT default threads), with its own FLOPs ratio and the model-FLOP throughput it reached (median):

| graph | tokens (unpruned → pruned) | FLOPs ratio | measured speed-up | GFLOP/s unpruned | GFLOP/s pruned |
|---|---|---:|---:|---:|---:|
{graph_rows}

- With {g['suffix']['tokens']['pruned']} tokens the GEMMs are thin (M = {g['suffix']['tokens']['pruned']}). Every layer still streams its whole
  weight matrices from memory, and packing and threading overheads do not shrink with M. A single decode token, which is almost
  only that fixed cost, takes {dpt:.0f} ms for all {bp['num_layers']} layers (≈ {dpt / 2:.0f} ms per graph). That fixed cost does not get smaller with pruning, so it caps the speed-up.
  The paper's own A100 prefill numbers (`docs/algorithm.md` §9: 124 ms full, ≈ 47 ms Nüwa-64) are 2.6× against the same model's 9.2× bound.
- The FLOPs model counts 2 MLP matmuls where Llama's SwiGLU runs 3, and it leaves out the lm_head, the embeddings and
  stage two. All of these are small here ({r['model']['sizes']['vocab_size']}-token vocabulary; stage two is
  {t['pruned']['stage_two']['median']:.1f} ms).
- Vision time is the same in both (thin tower); at the real CLIP-L size it adds ~4 s to both on this CPU
  (see the vision section), which dilutes the time-to-first-token speed-up but not the prefill one.

{render_roofline(r)}{common.machine_line(r)} Load average (1 min) {r['machine']['load_average'][0]:.2f} at the start, {r['load_average_at_end'][0]:.2f} at the end. The whole script took
{r['wall_s'] / 60:.1f} minutes.

Regenerate (writes `benchmarks/results/pruning_pays.json` and this file):

```bash
{r['command']}
```
"""


def show(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="pruning pays (median ms)", title_justify="left")
    for col in ("stage", "unpruned", "pruned", "ratio"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for s in STAGES:
        u, p = r["timings_ms"]["unpruned"][s]["median"], r["timings_ms"]["pruned"][s]["median"]
        table.add_row(s, f"{u:.1f}", f"{p:.1f}", f"{u / p:.2f}" if p else "")
    c = Console()
    c.print(table)
    c.print(f"prefill speed-up {r['measured_speedup']['prefill_median']:.2f}x, bound {r['analytic']['bench_model_with_text']['speedup_bound']:.2f}x, "
            f"measured/bound {100 * r['measured_over_bound']['prefill_median']:.0f} %; paper 7B: "
            f"{r['analytic']['llava_1_5_7b_paper']['full_tflops']:.3g} vs {r['analytic']['llava_1_5_7b_paper']['nuwa_tflops']:.3g} TFLOPs")
    print(roofline_line(r), flush=True)  # the last line, as the roofline issue asks


def main(argv: list[str] | None = None) -> int:
    return common.bench_main(NAME, "pruning_pays.py", __doc__, run, show, runs=8, warmup=2, argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())
