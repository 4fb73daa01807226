"""Decode scaling: ms per token against the KV length (and against the machine's memory
roofline), tokens/s against the batch size, and the time to first token, for three paths:

* **in place** — the runtime as shipped: the export's ONNX Runtime graphs (``GroupQueryAttention``
  over KV buffers preallocated per generation and updated in place, :mod:`nuwa_export.export.fused`);
* **concat** — the same sessions on the standard graphs (the ones TensorRT builds), whose present
  KV is a new tensor of the whole past plus the new entry every step;
* **NumPy** — the runtime before sessions, on the standard graphs (every input and output through
  host NumPy; a benchmark-local baseline).

Builds the benchmark model (``common.BENCH_SIZES``, LLaVA-1.5-7B proportions at 1/4 width and
depth), exports it once pruned (keep 64), then on the CPU:

* the machine's DRAM read bandwidth through ONNX Runtime (``roofline.limits``), same threads;
* KV length 128 … 2048 (batch 1): a cache of that many entries in both KV groups, then
  ``--steps`` decode steps, timed per step; the memory roofline of a step is the bytes it must read
  (every weight, and the whole cache of every layer) over the measured bandwidth;
* batch 1, 2, 4, 8: the same request B times through ``Pipeline.generate_batch`` (greedy,
  ``MAX_NEW_TOKENS`` tokens, EOS ignored), decode tokens/s = B / decode ms per step;
* time to first token of one request (preprocess, vision, prefill).

Writes ``results/decode_scaling.json`` and regenerates ``benchmarks/README.md``. Never asserts on time;
it does assert that every path generates the same tokens.

    .venv/bin/python benchmarks/decode_scaling.py --runs 5
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import roofline  # noqa: E402

NAME = "decode_scaling"
KV_LENGTHS = (128, 256, 512, 1024, 2048)
BATCHES = (1, 2, 4, 8)
MAX_NEW_TOKENS = 16
PATHS = ("in_place", "concat", "numpy")
TARGETS = {"batch8_over_batch1": 5.0, "kv2048_over_kv128": 1.3, "ttft_new_over_numpy": 1.05, "memory_roofline_fraction": 0.9}


class NumpyPath:
    """The runtime before sessions (benchmark-local baseline): NumPy feeds to ``InferenceSession.run``,
    every KV tensor, hidden state and logits array copied out and fed back in as NumPy."""

    def __init__(self, pipeline) -> None:
        from nuwa_export.names import kv_names

        self.p = pipeline
        self.sessions = pipeline.backend.sessions
        b = pipeline.budgets
        self.prefix_past, self.suffix_past = kv_names("past", range(b.layer)), kv_names("past", range(b.layer, b.num_layers))
        self.table = pipeline.embeddings.numpy()

    def empty(self, names, batch):
        llm = self.p.manifest.llm
        return [np.zeros((batch, llm.num_kv_heads, 0, llm.head_dim), self.table.dtype) for _ in names]

    def prefix(self, embeds, pos, vision_start, pad, past):
        feeds = {"inputs_embeds": embeds, "position_ids": pos, "vision_start": vision_start, "pad_lengths": pad, **dict(zip(self.prefix_past, past))}
        out = self.sessions["llm_prefix"].run(None, feeds)
        return out[0], out[1:-1], out[-1]

    def suffix(self, hidden, pos, pad, past):
        out = self.sessions["llm_suffix"].run(None, {"hidden_states": hidden, "position_ids": pos, "pad_lengths": pad, **dict(zip(self.suffix_past, past))})
        return out[0], out[1:]

    def step(self, tokens, positions, vision_start, pad, kv):
        e = self.table[np.asarray(tokens)][:, None]
        pos = np.asarray(positions, np.int64)[:, None]
        h, kv[0], _ = self.prefix(e, pos, vision_start, pad, kv[0])
        logits, kv[1] = self.suffix(h, pos, pad, kv[1])
        return logits

    def generate(self, image, prompt, n: int) -> tuple[list[int], dict]:
        """Greedy, batch 1, as the runtime did it: returns tokens and stage timings (ms)."""
        from nuwa_export.generation import layout_for
        from nuwa_export.image import preprocess
        from nuwa_export.pruning import stage_two, stage_two_rows

        t = {}
        t0 = time.perf_counter()
        layout = layout_for(self.p.stages(), prompt, n)
        pixels = preprocess(image, self.p.image_config)[None]
        tokens, idx = self.sessions["vision"].run(["image_tokens", "patch_indices"], {"pixel_values": pixels})
        embeds = np.concatenate([self.table[list(layout.prompt.before)][None], tokens.astype(self.table.dtype), self.table[list(layout.prompt.after)][None]], axis=1)
        pos = layout.positions(torch.from_numpy(idx)).numpy()
        zero = np.zeros(1, np.int64)
        split, past1, scores = self.prefix(embeds, pos, np.array([layout.before]), zero, self.empty(self.prefix_past, 1))
        kept = stage_two(torch.from_numpy(scores), self.p.budgets.k2)
        rows = stage_two_rows(layout.before, kept, idx.shape[1], layout.after).numpy()
        logits, past2 = self.suffix(np.ascontiguousarray(split[:, rows]), np.ascontiguousarray(pos[:, rows]), zero, self.empty(self.suffix_past, 1))
        t["time_to_first_token"] = (time.perf_counter() - t0) * 1e3
        out = [int(np.argmax(logits[0]))]
        kv = [past1, past2]
        t1 = time.perf_counter()
        for i in range(n - 1):
            logits = self.step([out[-1]], [layout.decode_position(i)], np.array([layout.before]), zero, kv)
            out.append(int(np.argmax(logits[0])))
        t["decode_per_token"] = (time.perf_counter() - t1) * 1e3 / (n - 1)
        return out, t


def _kv(pipeline, batch: int, length: int, path: str, room: int = 0):
    """Random KV groups of ``length`` entries per row (values do not matter for timing), as
    ``path`` holds them; ``in_place`` buffers have ``room`` entries to spare."""
    from nuwa_export.runtime.kv import KVBuffers

    llm, b = pipeline.manifest.llm, pipeline.budgets
    g = torch.Generator().manual_seed(0)
    make = lambda: torch.randn(batch, llm.num_kv_heads, length, llm.head_dim, generator=g).to(pipeline.embeddings.dtype)  # noqa: E731
    groups = [[make() for _ in range(2 * b.layer)], [make() for _ in range(2 * (b.num_layers - b.layer))]]
    if path == "numpy":
        return [[t.numpy() for t in grp] for grp in groups]
    if path == "in_place":
        return [KVBuffers(grp, length).reserve(room) if room else KVBuffers(grp, length) for grp in groups]
    return groups


def time_decode_at(pipelines: dict, numpy_path: NumpyPath, length: int, steps: int) -> dict:
    """ms per decode step at KV ``length`` (batch 1), for every path, from the same cache."""
    from nuwa_export import generation
    from nuwa_export.generation import Batch, KVGroups, Layout, Live
    from nuwa_export.prompt import Prompt

    out = {}
    for path in ("in_place", "concat"):
        pipeline = pipelines[path]
        stages = pipeline.stages()
        layout = Layout(Prompt((1,), (2,), pipeline.manifest.llm.image_token_id), stages.plan_for(None))
        vs, pad = stages.to_device([[1], [0]])
        kv = _kv(pipeline, 1, length, path, room=steps)
        live = Live(Batch((layout,)), KVGroups(kv[0], kv[1]), vs, pad)
        t = time.perf_counter()
        for i in range(steps):
            stages.to_host(generation.step(stages, live, [5], length + i))
        out[path] = (time.perf_counter() - t) * 1e3 / steps
    kv = _kv(pipelines["concat"], 1, length, "numpy")
    t = time.perf_counter()
    for i in range(steps):
        numpy_path.step([5], [length + i], np.array([1]), np.array([0]), kv)
    out["numpy"] = (time.perf_counter() - t) * 1e3 / steps
    return out


def time_batch(pipelines: dict, numpy_path: NumpyPath, image, batch: int) -> dict:
    """Decode ms per step and tokens/s at ``batch`` identical requests, every path."""
    from nuwa_export.generation import Request
    from nuwa_export.sampling import SamplingConfig

    cfg = SamplingConfig(max_new_tokens=MAX_NEW_TOKENS, stop_at_eos=False)
    out, ids = {}, {}
    for path in ("in_place", "concat"):
        results = pipelines[path].generate_batch([Request(image, common.PROMPT, cfg) for _ in range(batch)], batch)
        out[f"{path}_ms_per_step"] = results[0].timings_ms["decode_per_token"]
        ids[path] = [r.generated_ids for r in results]
    # the NumPy path at the same batch: decode steps from a prefilled cache of the prompt's length
    length = len(results[0].prompt.before) + len(results[0].prompt.after) + pipelines["concat"].budgets.k1
    kv = _kv(pipelines["concat"], batch, length, "numpy")
    t = time.perf_counter()
    for i in range(MAX_NEW_TOKENS - 1):
        numpy_path.step([5] * batch, [length + i] * batch, np.ones(batch, np.int64), np.zeros(batch, np.int64), kv)
    out["numpy_ms_per_step"] = (time.perf_counter() - t) * 1e3 / (MAX_NEW_TOKENS - 1)
    return out, ids


def memory_roofline(dec: "roofline.Decoder", layers: int, kv_entries: int, kv_bytes_per_entry: int, lim: dict) -> dict:
    """One decode step's floor: every weight of the layers and the lm_head, and the whole cache
    (``kv_entries`` in every layer; ``kv_bytes_per_entry``: keys and values of all layers), read
    once at the measured DRAM bandwidth."""
    cost = dec.graph(layers, 1, kv_entries, lm_head=True)
    kv_bytes = kv_entries * kv_bytes_per_entry
    cost = {"flops": cost["flops"], "weight_bytes": cost["weight_bytes"] + kv_bytes}
    return {**roofline.roofline_ms(cost, lim), "weight_bytes": cost["weight_bytes"] - kv_bytes, "kv_bytes": kv_bytes}


def op_profile(directory: Path, manifest, batch: int, lengths: dict[str, int], in_place: bool, steps: int = 10) -> dict:
    """ONNX Runtime's own per-op profile of one decode step of each LLM graph (sessions of their own
    with profiling on, the shipped thread settings), with ``lengths[graph]`` KV entries per row:
    kernel ms per step and each op type's ms."""
    out = common.op_profile(directory, manifest, batch, {"llm_prefix": 1, "llm_suffix": 1}, lengths, steps, in_place=in_place)
    out["kv_lengths"] = lengths
    for key, ops in (("concat_ms", ("Concat",)), ("matmul_ms", ("MatMul",)), ("attention_ms", ("GroupQueryAttention",))):
        out[key] = sum(g["op_ms"].get(o, 0.0) for g in out["graphs"].values() for o in ops)
    return out


def run(runs: int, warmup: int, workdir: Path, command: str, steps: int = 8) -> dict:
    from nuwa_export.export.pipeline import export
    from nuwa_export.models.demo import example_picture
    from nuwa_export.models.loader import inspect_checkpoint
    from nuwa_export.sampling import SamplingConfig

    mach = common.machine()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    ckpt = common.bench_model(workdir / "ckpt")
    export(str(ckpt), workdir / "pruned", keep=common.KEEP, progress=False)
    lim = roofline.limits()  # DRAM read bandwidth (and GEMM peak), the sessions' threads
    dec = roofline.Decoder.from_config(inspect_checkpoint(str(ckpt)).config.text_config)
    pipelines = {"in_place": common.ort_pipeline(workdir / "pruned", spinning=False),  # what nuwa-export ships
                 "concat": common.ort_pipeline(workdir / "pruned", spinning=False, llm_graphs="standard")}
    if not pipelines["in_place"].backend.in_place:
        raise SystemExit("the export has no ONNX Runtime graphs")
    baseline = NumpyPath(pipelines["concat"])
    image = example_picture()
    cfg = SamplingConfig(max_new_tokens=MAX_NEW_TOKENS, stop_at_eos=False)

    kv_times = {n: {p: [] for p in PATHS} for n in KV_LENGTHS}
    batch_times = {b: {f"{p}_ms_per_step": [] for p in PATHS} for b in BATCHES}
    ttft = {p: [] for p in PATHS}
    ids = {}
    for rnd in range(warmup + runs):  # interleaved rounds: drifting background load hits every case alike
        keep = rnd >= warmup
        for n in KV_LENGTHS:
            t = time_decode_at(pipelines, baseline, n, steps)
            for k in t:
                kv_times[n][k].append(t[k]) if keep else None
        for b in BATCHES:
            t, got = time_batch(pipelines, baseline, image, b)
            if b == 1:
                ids["batch1"] = got["in_place"][0]
            if any(g != ids["batch1"] for rows in got.values() for g in rows):
                raise SystemExit(f"batch {b}: a row generated other tokens than the request alone")
            for k in batch_times[b]:
                batch_times[b][k].append(t[k]) if keep else None
        results = {p: pipelines[p].generate(image, common.PROMPT, cfg) for p in ("in_place", "concat")}
        tokens, tn = baseline.generate(image, common.PROMPT, MAX_NEW_TOKENS)
        if any(tokens != r.generated_ids for r in results.values()):
            raise SystemExit("the paths generated different tokens")
        if keep:
            for p, r in results.items():
                ttft[p].append(r.timings_ms["time_to_first_token"])
            ttft["numpy"].append(tn["time_to_first_token"])
    for p in pipelines.values():
        p.close()
    manifest, budgets = pipelines["in_place"].manifest, pipelines["in_place"].budgets
    r = results["in_place"]
    text = len(r.prompt.before) + len(r.prompt.after)
    real = {"llm_prefix": text + budgets.k1, "llm_suffix": text + budgets.k2}  # the batches' caches
    d = workdir / "pruned"
    profiles = {f"{name}_{kind}": op_profile(d, manifest, batch, lengths, kind == "in_place")
                for kind in ("in_place", "concat")
                for name, batch, lengths in (("batch1", 1, real), ("batch8", 8, real), ("kv128", 1, dict.fromkeys(real, 128)), ("kv2048", 1, dict.fromkeys(real, 2048)))}

    med = lambda xs: common.stats(xs)["median"]  # noqa: E731
    llm = manifest.llm
    kv_bytes_per_entry = 2 * llm.num_layers * llm.num_kv_heads * llm.head_dim * 4
    kv = {n: {k: common.stats(v) for k, v in d.items()} for n, d in kv_times.items()}
    for n, v in kv.items():
        v["roofline"] = memory_roofline(dec, llm.num_layers, n, kv_bytes_per_entry, lim)
        v["roofline_fraction"] = {p: v["roofline"]["ms"] / v[p]["median"] for p in PATHS}
    batches = {b: {k: common.stats(v) for k, v in d.items()} for b, d in batch_times.items()}
    for b, d in batches.items():
        for path in PATHS:
            d[f"{path}_tokens_per_s"] = b * 1e3 / d[f"{path}_ms_per_step"]["median"]
    measured = {
        "batch8_over_batch1": {p: batches[8][f"{p}_tokens_per_s"] / batches[1][f"{p}_tokens_per_s"] for p in PATHS},
        "kv2048_over_kv128": {p: kv[2048][p]["median"] / kv[128][p]["median"] for p in PATHS},
        "ttft_new_over_numpy": med(ttft["in_place"]) / med(ttft["numpy"]),
        "memory_roofline_fraction": {p: min(kv[n]["roofline_fraction"][p] for n in KV_LENGTHS) for p in PATHS},
    }
    return {
        "benchmark": NAME, "command": command, "runs": runs, "warmup": warmup, "decode_steps_per_kv_length": steps,
        "model": {"sizes": common.BENCH_SIZES, "budgets": budgets.as_dict(), "llm_dtype": manifest.precision.float_type, "decoder": dec.as_dict()},
        "machine": mach, "versions": common.versions(), "torch_threads": torch.get_num_threads(), "limits": lim,
        "kv_lengths": {str(n): v for n, v in kv.items()},
        "batches": {str(b): v for b, v in batches.items()},
        "time_to_first_token_ms": {k: common.stats(v) for k, v in ttft.items()},
        "measured": measured, "targets": TARGETS,
        "op_profiles": profiles,
        "kv_bytes_per_entry": kv_bytes_per_entry,
        "generated_ids": ids["batch1"],
        "load_average_at_end": list(os.getloadavg()),
    }


def render_section(r: dict) -> str:
    kv, bt, m, tg = r["kv_lengths"], r["batches"], r["measured"], r["targets"]
    kv_rows = "\n".join(
        f"| {n} | {v['in_place']['median']:.1f} | {v['concat']['median']:.1f} | {v['numpy']['median']:.1f} | "
        f"{v['roofline']['ms']:.1f} ({(v['roofline']['weight_bytes'] + v['roofline']['kv_bytes']) / 2**20:.0f} MiB) | "
        f"{100 * v['roofline_fraction']['in_place']:.0f} % | {100 * v['roofline_fraction']['concat']:.0f} % |" for n, v in kv.items())
    b_rows = "\n".join(
        f"| {b} | {v['in_place_ms_per_step']['median']:.1f} | {v['in_place_tokens_per_s']:.1f} | {v['concat_tokens_per_s']:.1f} | {v['numpy_tokens_per_s']:.1f} |"
        for b, v in bt.items())
    t = r["time_to_first_token_ms"]
    lim = r["limits"]

    def verdict(value, target, lower_is_better=True):
        ok = value <= target if lower_is_better else value >= target
        return f"{'met' if ok else '**not met**'} (target {'≤' if lower_is_better else '≥'} {target:g})"

    b8, k, tt, rf = m["batch8_over_batch1"]["in_place"], m["kv2048_over_kv128"]["in_place"], m["ttft_new_over_numpy"], m["memory_roofline_fraction"]["in_place"]
    prof = r["op_profiles"]
    ip128, ip2048, c128, c2048 = prof["kv128_in_place"], prof["kv2048_in_place"], prof["kv128_concat"], prof["kv2048_concat"]
    ip1, ip8 = prof["batch1_in_place"], prof["batch8_in_place"]
    kv_mib = lambda n: int(n) * r["kv_bytes_per_entry"] / 2**20  # noqa: E731
    worst = min(kv, key=lambda n: kv[n]["roofline_fraction"]["in_place"])
    w = kv[worst]
    gap_ms = w["in_place"]["median"] - w["roofline"]["ms"]
    other = lambda p: p["kernel_ms"] - p["matmul_ms"] - p["attention_ms"]  # noqa: E731
    r128 = kv["128"]["roofline"]
    rest: dict[str, float] = {}
    for g in ip128["graphs"].values():
        for op, ms in g["op_ms"].items():
            if op not in ("MatMul", "GroupQueryAttention"):
                rest[op] = rest.get(op, 0.0) + ms
    top_other = ", ".join(f"`{op}` {ms:.2f} ms" for op, ms in sorted(rest.items(), key=lambda kv: -kv[1])[:6])
    in_the_way = f"""**Where the time goes**, from ONNX Runtime's own per-op profile of one decode step of both graphs, in the same run
(kernel time only; profiled sessions, not the timed steps above):
- concat (standard graphs): `Concat` takes {c128['concat_ms']:.1f} ms of {c128['kernel_ms']:.1f} ms at KV 128 and {c2048['concat_ms']:.1f} ms of
  {c2048['kernel_ms']:.1f} ms at KV 2048: each step copies the whole cache ({kv_mib(2048):.0f} MiB at 2048 entries) into a new present tensor.
- in place (ONNX Runtime graphs): no copy. At KV 128 the `MatMul`s (the weights) take {ip128['matmul_ms']:.1f} ms, `GroupQueryAttention`
  {ip128['attention_ms']:.1f} ms and everything else {other(ip128):.1f} ms of {ip128['kernel_ms']:.1f} ms; at KV 2048: {ip2048['matmul_ms']:.1f},
  {ip2048['attention_ms']:.1f} and {other(ip2048):.1f} of {ip2048['kernel_ms']:.1f} ms. Attention reads the {kv_mib(2048):.0f} MiB cache in
  {ip2048['attention_ms'] - ip128['attention_ms']:.1f} ms more than at KV 128 ({(kv_mib(2048) - kv_mib(128)) * 2**20 / 1e6 / max(ip2048['attention_ms'] - ip128['attention_ms'], 1e-9):.1f} GB/s; DRAM reads {lim['dram']['gb_per_s']:.1f} GB/s).
- batch (in place, at the batches' real cache lengths: {ip1['kv_lengths']['llm_prefix']} entries in layers [0, L), {ip1['kv_lengths']['llm_suffix']} in [L, N)):
  kernels {ip1['kernel_ms']:.1f} ms at batch 1, {ip8['kernel_ms']:.1f} ms at batch 8; `MatMul` {ip1['matmul_ms']:.1f} → {ip8['matmul_ms']:.1f} ms.
- against the roofline: the furthest KV length is {worst}, at {100 * w['roofline_fraction']['in_place']:.0f} % ({gap_ms:+.1f} ms against the floor of
  {w['roofline']['ms']:.1f} ms). The weights' `MatMul`s alone stream {r128['weight_bytes'] / 2**20:.0f} MiB in {ip128['matmul_ms']:.1f} ms at KV 128,
  {r128['weight_bytes'] / 1e6 / ip128['matmul_ms']:.1f} GB/s against the roofline's {lim['dram']['gb_per_s']:.1f} GB/s: with every other op free the
  step would be at {100 * r128['ms'] / (ip128['matmul_ms'] + r128['kv_bytes'] / 1e6 / lim['dram']['gb_per_s']):.0f} % of its roofline. The other {other(ip128):.1f} ms, by op type:
  {top_other}."""
    return f"""## Decode scaling: in-place KV, concatenated KV and the NumPy path (`decode_scaling.py`)

The benchmark model of the section above, exported pruned (keep {r['model']['budgets']['keep']}), LLM in {r['model']['llm_dtype']}, on ONNX Runtime (CPU,
spinning off), three ways:
- **in place** — the runtime as shipped: the export's ONNX Runtime graphs (`llm_*.ort.onnx`), each layer's attention one
  `GroupQueryAttention` node over a KV buffer allocated once per generation (prompt + tokens to generate) and written in place;
- **concat** — the same sessions on the standard graphs (the ones TensorRT builds): each step's present KV is a new tensor holding
  the whole past plus one entry, bound back as the next past;
- **NumPy** — the runtime before sessions (benchmark-local copy) on the standard graphs: `InferenceSession.run` with NumPy feeds,
  every KV tensor copied out and back in each step.

All three generate the same tokens (checked every round). {r['runs']} rounds after {r['warmup']} warm-up, interleaved; medians.

Decode ms per token against the KV length (batch 1; a cache of that many entries in every layer, {r['decode_steps_per_kv_length']} steps each).
The **memory roofline** of a step is what it must read — every weight of the {r['model']['sizes']['text_layers']} layers and the lm_head, and the
whole cache of every layer — at the DRAM read bandwidth measured in the same run ({lim['dram']['gb_per_s']:.1f} GB/s through ONNX Runtime,
{lim['threads']} threads: the faster of a one-row MatMul over a 256 MiB weight, as decode streams its weights, and ReduceSum over 256 MiB;
`benchmarks/roofline.py`); the FLOPs of one token are far below the GEMM peak's limit:

| KV length | in place ms | concat ms | NumPy ms | memory roofline ms (bytes read) | in place, % of roofline | concat, % of roofline |
|---:|---:|---:|---:|---:|---:|---:|
{kv_rows}

Decode throughput against the batch size (the same request B times through `Pipeline.generate_batch`, {MAX_NEW_TOKENS} tokens each):

| batch | in place ms/step | in place tokens/s | concat tokens/s | NumPy tokens/s |
|---:|---:|---:|---:|---:|
{b_rows}

Time to first token of one request: in place {t['in_place']['median']:.1f} ms, concat {t['concat']['median']:.1f} ms, NumPy {t['numpy']['median']:.1f} ms.

| target (this 2-core CPU, one run) | measured (in place) | verdict |
|---|---:|---|
| decode, % of its memory roofline, at every KV length to 2048 | {100 * rf:.0f} % at worst (concat {100 * m['memory_roofline_fraction']['concat']:.0f} %) | {verdict(rf, tg['memory_roofline_fraction'], False)} |
| decode ms/token at KV 2048 / at KV 128 | {k:.2f}× (concat {m['kv2048_over_kv128']['concat']:.2f}×, NumPy {m['kv2048_over_kv128']['numpy']:.2f}×) | {verdict(k, tg['kv2048_over_kv128'])} |
| batch-8 decode throughput / batch-1 | {b8:.2f}× (concat {m['batch8_over_batch1']['concat']:.2f}×, NumPy {m['batch8_over_batch1']['numpy']:.2f}×) | {verdict(b8, tg['batch8_over_batch1'], False)} |
| time to first token, in place / NumPy | {tt:.3f}× | {verdict(tt, tg['ttft_new_over_numpy'])} |

The KV-length ratio includes the roofline's own growth: at 2048 entries a step must read {kv_mib(2048):.0f} MiB of cache besides the
weights, so even a step at the roofline is {kv['2048']['roofline']['ms'] / kv['128']['roofline']['ms']:.2f}× the one at 128.

{in_the_way}

{common.machine_line(r)} Load average (1 min) {r['machine']['load_average'][0]:.2f} at the start, {r['load_average_at_end'][0]:.2f} at the end. The whole script took
{r['wall_s'] / 60:.1f} minutes.

Regenerate (writes `benchmarks/results/decode_scaling.json` and this file):

```bash
{r['command']}
```
"""


def show(r: dict) -> None:
    from rich.console import Console

    m = r["measured"]
    Console().print(
        f"decode at worst {100 * m['memory_roofline_fraction']['in_place']:.0f} % of its memory roofline in place "
        f"(concat {100 * m['memory_roofline_fraction']['concat']:.0f} %); "
        f"batch 8 / batch 1 throughput: {m['batch8_over_batch1']['in_place']:.2f}x (concat {m['batch8_over_batch1']['concat']:.2f}x); "
        f"KV 2048 / 128: {m['kv2048_over_kv128']['in_place']:.2f}x (concat {m['kv2048_over_kv128']['concat']:.2f}x); "
        f"TTFT in place / numpy {m['ttft_new_over_numpy']:.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    return common.bench_main(NAME, "decode_scaling.py", __doc__, run, show, runs=5, warmup=1, argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())
