"""Time to first token with the same Nüwa pruning: the ONNX Runtime pipeline vs the PyTorch
reference vs an authors'-style eager PyTorch run (CPU).

Same benchmark model and budgets as ``pruning_pays.py`` (keep 64 → K1 112, K2 16, L = N/2).
The authors'-style run loads the checkpoint with ``attn_implementation="eager"``. Its CLIP tower
returns every layer's full attention map (``output_attentions=True``, ``output_hidden_states=True``),
and stage one reads the CLS row off the feature layer's map. Its LLM layers [0, L) run with eager
attention, and their full maps are kept, as HF's ``output_attentions=True`` does: forward hooks on
``self_attn``, the same mechanism HF uses. Stage two reads the last row of the map at layer L-1.
Layers [L, N) then run on the kept rows. Before timing, the script checks that all three pick the same stage-one and
stage-two patches and the same first token (and exits non-zero if not). Writes
``results/export_vs_eager.json`` and regenerates ``benchmarks/README.md``. Never asserts on time.

    .venv/bin/python benchmarks/export_vs_eager.py --runs 20
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

NAME = "export_vs_eager"
IMPLS = {
    "ort": "ONNX Runtime pipeline (`open_runner(dir, backend=\"ort\", device=\"cpu\")`) on the pruned export",
    "ort_nospin": "the same, sessions with `session.intra_op.allow_spinning = 0` (what nuwa-export ships since `pruning_pays` measured it)",
    "reference": "PyTorch reference (`Reference.generate`; sdpa attention, CLS row and L-1 row computed alone)",
    "authors": "authors'-style PyTorch: eager attention, full maps in every CLIP layer and LLM layers [0, L)",
}


class AuthorsEager:
    """Nüwa as the authors' code computes it: eager attention and full attention maps."""

    def __init__(self, ckpt: Path, budgets, options, image_config) -> None:
        from transformers import LlavaForConditionalGeneration

        from nuwa_export.models.decoder import cache_keyword
        from nuwa_export.models.families.llava.parts import LlavaParts

        model = LlavaForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32, attn_implementation="eager").eval()
        self.parts, self.b, self.o, self.image_config = LlavaParts(model), budgets, options, image_config
        self.cache_kw = cache_keyword(self.parts.lm.layers[0])
        self.maps: list[torch.Tensor] = []
        # what output_attentions=True does in transformers 5: record self_attn's second output per layer
        for layer in self.parts.lm.layers[: budgets.layer]:
            layer.self_attn.register_forward_hook(lambda _m, _a, out: self.maps.append(out[1]))
        self.map_bytes = 0

    @torch.inference_mode()
    def first_token(self, image, prompt):
        """Preprocess, vision + stage one, prefill with stage two; ``(logits, s1, s2, timings_ms)``."""
        from nuwa_export.generation import Clock
        from nuwa_export.image import preprocess
        from nuwa_export.models.decoder import KVCache, causal_mask, decoder_stack
        from nuwa_export.pruning import position_ids, stage_one, stage_two

        p, b, o = self.parts, self.b, self.o
        clock = Clock()
        pixels = torch.from_numpy(preprocess(image, self.image_config))[None]
        clock.lap("preprocess")
        out = p.vision(pixels, output_attentions=True, output_hidden_states=True)
        hs, fi = out.hidden_states, p.feature_index
        cls = out.attentions[fi - 1][:, :, 0, 1:].sum(dim=1)  # CLS row of the feature layer's full map
        sim = torch.stack(hs[p.sim_start:], dim=0).mean(dim=0)[:, 1:]
        merged, s1 = stage_one(hs[fi][:, 1:], sim, cls, p.grid, b.k1, per_region=o.per_region, distance=o.distance, percentile=o.percentile)
        tokens = p.projector(merged)
        vision_map_bytes = sum(a.numel() * a.element_size() for a in out.attentions)
        del out
        clock.lap("vision")
        nb, nc = len(prompt.before), len(prompt.after)
        hidden = torch.cat([p.embed(torch.tensor([prompt.before])), tokens, p.embed(torch.tensor([prompt.after]))], dim=1)
        pos = position_ids(nb, s1, nc, b.num_patches)
        cache, lm = KVCache(), p.lm
        self.maps.clear()
        hidden = decoder_stack(lm.layers[: b.layer], lm.rotary_emb, hidden, pos, cache, causal_mask(hidden.shape[1], 0, hidden.dtype, hidden.device), self.cache_kw)
        clock.lap("prefix")
        scores = self.maps[b.layer - 1][:, :, -1, nb : nb + b.k1].float().mean(dim=1)  # last row of layer L-1's full map
        self.map_bytes = vision_map_bytes + sum(m.numel() * m.element_size() for m in self.maps)
        self.maps.clear()
        kept = stage_two(scores, b.k2)
        rows = torch.cat([torch.arange(nb), nb + kept[0], nb + b.k1 + torch.arange(nc)])
        hidden, pos = hidden[:, rows], pos[:, rows]
        clock.lap("stage_two")
        hidden = decoder_stack(lm.layers[b.layer :], lm.rotary_emb, hidden, pos, cache, causal_mask(hidden.shape[1], 0, hidden.dtype, hidden.device), self.cache_kw)
        logits = p.logits(hidden[:, -1:])
        clock.lap("suffix")
        clock.first_token()
        return logits, s1[0].tolist(), s1[0, kept[0]].tolist(), clock.ms


def breakdown(ms: dict) -> dict:
    """Common stage names: vision (tower + stage one + projector), prefill, time to first token."""
    return {
        "vision": sum(ms.get(k, 0.0) for k in ("vision", "stage_one", "projector")),
        "prefill": ms["prefix"] + ms["stage_two"] + ms["suffix"],
        "time_to_first_token": ms["time_to_first_token"],
        "prefix": ms["prefix"], "stage_two": ms["stage_two"], "suffix": ms["suffix"],
        **{f"lap_{k}": v for k, v in ms.items() if k not in ("time_to_first_token", "prefix", "stage_two", "suffix")},
    }


def run(runs: int, warmup: int, workdir: Path, command: str) -> dict:
    from nuwa_export.export.pipeline import export
    from nuwa_export.models.demo import example_picture
    from nuwa_export.models.loader import load
    from nuwa_export.models.families.llava import build_prompt
    from nuwa_export.pruning.spec import StageOneSpec
    from nuwa_export.runtime.runner import open_runner
    from nuwa_export.sampling import SamplingConfig

    threads = len(os.sched_getaffinity(0))
    mach = common.machine()  # load average at the start
    torch.set_num_threads(threads)
    ckpt = common.bench_model(workdir / "ckpt")
    t0 = time.perf_counter()
    manifest = export(str(ckpt), workdir / "pruned", keep=common.KEEP, progress=False)
    export_s = time.perf_counter() - t0
    pipe = common.ort_pipeline(workdir / "pruned")
    nospin = common.ort_pipeline(workdir / "pruned", spinning=False)
    mb = manifest.budgets
    options = StageOneSpec(mb.per_region, mb.distance, mb.percentile, mb.self_weight)
    loaded = load(str(ckpt), dtype="float32", device="cpu")
    reference = open_runner(loaded, budgets=(pipe.budgets, options))
    authors = AuthorsEager(ckpt, pipe.budgets, options, loaded.image_config)
    image, one = example_picture(), SamplingConfig(max_new_tokens=1, temperature=0.0)
    prompt = build_prompt(loaded.tokenizer, common.PROMPT, loaded.image_token_id)

    # ---- like for like: same patches at both stages, same first token ----------------------
    trace: dict = {}
    r_ort = pipe.generate(image, common.PROMPT, one, trace=trace)
    r_ns = nospin.generate(image, common.PROMPT, one)
    ref_trace: dict = {}
    r_ref = reference.generate(image, common.PROMPT, one, trace=ref_trace)
    a_logits, a_s1, a_s2, _ = authors.first_token(image, prompt)
    picks = {
        "ort": (r_ort.stage_one_indices, r_ort.stage_two_indices, r_ort.generated_ids[0]),
        "ort_nospin": (r_ns.stage_one_indices, r_ns.stage_two_indices, r_ns.generated_ids[0]),
        "reference": (r_ref.stage_one_indices, r_ref.stage_two_indices, r_ref.generated_ids[0]),
        "authors": (a_s1, a_s2, int(a_logits.argmax(dim=-1)[0])),
    }
    for k, (s1, s2, tok) in picks.items():
        for what, got, want in (("stage-one patches", s1, picks["reference"][0]), ("stage-two patches", s2, picks["reference"][1]), ("first token", tok, picks["reference"][2])):
            if got != want:
                raise SystemExit(f"{k}: {what} differ from the PyTorch reference; the comparison would not be like for like")
    ref_logits = ref_trace["first_logits"].numpy()
    logit_err = {"ort": float(np.abs(trace["first_logits"] - ref_logits).max()), "authors": float(np.abs(a_logits.numpy() - ref_logits).max())}

    # ---- timing: warm-up, then rounds interleaving the three ------------------------------
    fns = {
        "ort": lambda: breakdown(pipe.generate(image, common.PROMPT, one).timings_ms),
        "ort_nospin": lambda: breakdown(nospin.generate(image, common.PROMPT, one).timings_ms),
        "reference": lambda: breakdown(reference.generate(image, common.PROMPT, one).timings_ms),
        "authors": lambda: breakdown(authors.first_token(image, prompt)[3]),
    }
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(runs):
        for k, fn in fns.items():
            times[k].append(fn())
    pipe.close()
    nospin.close()
    res = {k: {s: common.stats([t[s] for t in v]) for s in v[0]} for k, v in times.items()}
    ratios = {}
    for stat in ("median", "min"):
        x = lambda k, s: res[k][s][stat]  # noqa: E731
        ratios[stat] = {
            "authors_over_ort_ttft": x("authors", "time_to_first_token") / x("ort", "time_to_first_token"),
            "authors_over_ort_prefill": x("authors", "prefill") / x("ort", "prefill"),
            "authors_over_ort_nospin_ttft": x("authors", "time_to_first_token") / x("ort_nospin", "time_to_first_token"),
            "authors_over_ort_nospin_prefill": x("authors", "prefill") / x("ort_nospin", "prefill"),
            "reference_over_ort_ttft": x("reference", "time_to_first_token") / x("ort", "time_to_first_token"),
            "authors_over_reference_ttft": x("authors", "time_to_first_token") / x("reference", "time_to_first_token"),
        }
    b = pipe.budgets
    return {
        "benchmark": NAME,
        "command": command,
        "model": {"sizes": common.BENCH_SIZES, "weights": "random (seed 0), built locally", "budgets": b.as_dict(),
                  "stage_one": {"per_region": mb.per_region, "distance": mb.distance, "percentile": mb.percentile}},
        "input": {"image": "demo example picture (320x240), LLaVA-1.5 preprocessing", "prompt": common.PROMPT,
                  "prompt_ids": prompt.input_ids, "text_tokens": len(prompt.before) + len(prompt.after), "max_new_tokens": 1},
        "export_s": round(export_s, 1),
        "checks": {"stage_one_patches": "identical", "stage_two_patches": "identical", "first_token": picks["reference"][2],
                   "stage_two_indices": picks["reference"][1], "first_logits_max_abs_vs_reference": logit_err},
        "authors_attention_map_bytes_per_image": authors.map_bytes,
        "runs": runs, "warmup": warmup, "torch_threads": torch.get_num_threads(),
        "onnxruntime_settings": "the pipeline's own (nuwa_export.runtime.ort_backend: ORT defaults, CPUExecutionProvider)",
        "machine": mach, "versions": common.versions(),
        "timings_ms": res,
        "ratios": ratios,
        "load_average_at_end": list(os.getloadavg()),
        "target": "ORT pruned time to first token >= 2x faster than the authors'-style eager pruned run",
    }


def render_section(r: dict) -> str:
    t, q, sz, b = r["timings_ms"], r["ratios"], r["model"]["sizes"], r["model"]["budgets"]
    cols = ("vision", "prefill", "time_to_first_token")
    rows = "\n".join(f"| `{k}` | {IMPLS[k]} | " + " | ".join(f"{t[k][c]['median']:.0f} ({t[k][c]['min']:.0f})" for c in cols) + " |" for k in IMPLS)
    m = q["median"]
    x, xmin = m["authors_over_ort_ttft"], q["min"]["authors_over_ort_ttft"]
    if x >= 2.0 and xmin >= 2.0:
        verdict = f"**Target met** (≥ 2×): the ONNX Runtime pipeline reaches the first token {x:.2f}× faster than the authors'-style eager run ({xmin:.2f}× from the minima)."
    else:
        verdict = (f"**Target not met** (≥ 2× faster, on both the median and the minimum): authors'-style / ORT time to first token is "
                   f"{x:.2f}× on the medians and {xmin:.2f}× on the minima; prefill alone {m['authors_over_ort_prefill']:.2f}× and "
                   f"{q['min']['authors_over_ort_prefill']:.2f}×.")
        if xmin < 1.0:
            verdict += (" On the minima, which are the least contended runs, PyTorch is as fast as ONNX Runtime or faster on this CPU. It runs these"
                        " layers at least as fast, and the eager maps of a pruned prefix are too small to matter.")
        if x >= 2.0 > xmin:
            verdict += (" The median looks like a win only because of contention. PyTorch's OpenMP threads slow down far more than ONNX"
                        " Runtime's when another process takes a core (see `runs` in the JSON: single PyTorch runs take up to"
                        f" {max(t['authors']['time_to_first_token']['max'], t['reference']['time_to_first_token']['max']):.0f} ms)."
                        " The minima are the like-for-like comparison here.")
    y, ymin = m["authors_over_ort_nospin_ttft"], q["min"]["authors_over_ort_nospin_ttft"]
    verdict += (f" With spinning off (what the backend now ships; `ort` above is ORT's default threads), ORT is {y:.2f}× faster on the medians and {ymin:.2f}× on the minima"
                + (", which meets the target." if min(y, ymin) >= 2.0 else ", still short of 2×."))
    ch = r["checks"]
    return f"""## Same pruning, three implementations (`export_vs_eager.py`)

The model is the one from `pruning_pays.py` ({sz['text_layers']}-layer, {sz['text_hidden_size']}-wide LLM; {(sz['image_size'] // sz['patch_size']) ** 2} vision tokens from a
thin tower), with the same budgets (keep {b['keep']}: K1 {b['stage_one_keep']}, K2 {b['stage_two_keep']}, L {b['stage_two_layer']}).
The same picture and prompt ("{r['input']['prompt']}", {r['input']['text_tokens']} text tokens) produce one greedy token. There
were {r['warmup']} warm-up run(s), then {r['runs']} rounds, each running all of them one after the other. PyTorch used {r['torch_threads']}
threads; ONNX Runtime used the pipeline's own settings.

- `authors` loads the checkpoint with `attn_implementation="eager"` and calls the HF CLIP tower with `output_attentions=True,
  output_hidden_states=True`. That keeps all {sz['vision_layers']} maps, and stage one reads the CLS row off the feature layer's map.
  Its LLM layers [0, {b['stage_two_layer']}) run with eager attention, and their full maps are kept: forward hooks on `self_attn`
  record them, the same mechanism as HF's `output_attentions=True`. Stage two reads the last row of layer {b['stage_two_layer'] - 1}'s map,
  and layers [{b['stage_two_layer']}, {b['num_layers']}) run on the kept rows. It keeps
  {r['authors_attention_map_bytes_per_image'] / 2**20:.1f} MiB of attention maps per image.
- Checked before timing (the script exits if not): all four pick the same {b['stage_one_keep']} stage-one and {b['stage_two_keep']} stage-two patches, and
  the same first token (id {ch['first_token']}). First-logit max abs error against the reference: ORT
  {ch['first_logits_max_abs_vs_reference']['ort']:.1e}, authors' {ch['first_logits_max_abs_vs_reference']['authors']:.1e}.

| impl | what | vision ms | prefill ms | time to first token ms |
|---|---|---:|---:|---:|
{rows}

Median (min in brackets). Vision = tower + stage one + projector; prefill = LLM prefix + stage two + suffix; time to first
token adds preprocessing.

| ratio | median | min |
|---|---:|---:|
| authors'-style / ORT, time to first token (**target ≥ 2×**) | {m['authors_over_ort_ttft']:.2f}× | {q['min']['authors_over_ort_ttft']:.2f}× |
| authors'-style / ORT, prefill only | {m['authors_over_ort_prefill']:.2f}× | {q['min']['authors_over_ort_prefill']:.2f}× |
| authors'-style / ORT without spinning, time to first token | {m['authors_over_ort_nospin_ttft']:.2f}× | {q['min']['authors_over_ort_nospin_ttft']:.2f}× |
| authors'-style / ORT without spinning, prefill only | {m['authors_over_ort_nospin_prefill']:.2f}× | {q['min']['authors_over_ort_nospin_prefill']:.2f}× |
| reference / ORT, time to first token | {m['reference_over_ort_ttft']:.2f}× | {q['min']['reference_over_ort_ttft']:.2f}× |
| authors'-style / reference, time to first token | {m['authors_over_reference_ttft']:.2f}× | {q['min']['authors_over_reference_ttft']:.2f}× |

{verdict}

How to read it:
- On a CPU every path runs the same float32 GEMMs (MLAS in ONNX Runtime, oneDNN/MKL in PyTorch), and those GEMMs are
  most of the work. With K1 = {b['stage_one_keep']} tokens, the eager maps of the pruned LLM prefix are small
  ({sz['text_heads']} heads × ~{b['stage_one_keep'] + r['input']['text_tokens']}² per layer), and the thin tower's maps cost little.
  So the authors' extra work is small next to the GEMMs, and the difference between the rows is mostly the engine: ORT's fused
  graph against PyTorch's op-by-op execution.
- Full eager maps cost the most at full CLIP-L size and with a fused attention kernel (FlashAttention or TensorRT MHA on a GPU)
  to compare against. The vision section below measures the CLIP-L tower on this CPU. A GPU run would be needed to test the 2× claim where the paper makes it.

{common.machine_line(r)} Load average (1 min) {r['machine']['load_average'][0]:.2f} at the start, {r['load_average_at_end'][0]:.2f} at the end. Export took {r['export_s']:.0f} s;
the whole script took {r['wall_s'] / 60:.1f} minutes.

Regenerate (writes `benchmarks/results/export_vs_eager.json` and this file):

```bash
{r['command']}
```
"""


def show(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="time to first token, pruned (median ms)", title_justify="left")
    for col in ("impl", "vision", "prefill", "ttft"):
        table.add_column(col, justify="left" if col == "impl" else "right")
    for k, v in r["timings_ms"].items():
        table.add_row(k, *(f"{v[c]['median']:.1f}" for c in ("vision", "prefill", "time_to_first_token")))
    c = Console()
    c.print(table)
    c.print({k: round(v, 3) for k, v in r["ratios"]["median"].items()})


def main(argv: list[str] | None = None) -> int:
    return common.bench_main(NAME, "export_vs_eager.py", __doc__, run, show, runs=20, warmup=3, argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())
