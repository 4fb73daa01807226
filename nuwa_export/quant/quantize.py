"""``nuwa-quantize``: a float export → a quantized export directory, validated, written atomically.

The LLM graphs (``llm_prefix.onnx``, ``llm_suffix.onnx``) go through NVIDIA ModelOpt's ONNX
post-training quantization on the CPU, calibrated with the tensors they really see
(:func:`nuwa_export.quant.calib.calibrate`). The vision graph keeps its float32 type (stage one
ranks patches by attention, which is sensitive). Everything else is copied. The ONNX Runtime
graphs (fused attention) are not carried over: the ort backend runs the quantized standard
graphs. The manifest records each quantized graph's precision and opset and the lineage (the
source manifest's sha256, tool versions, the calibration set's hash), and the validation the
graphs passed (:mod:`nuwa_export.verify.quantized`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from nuwa_export import manifest as mf
from nuwa_export import names as n
from nuwa_export.atomic import atomic_dir, check_dir_target, check_utf8_path
from nuwa_export.errors import NuwaError
from nuwa_export.names import LLM_GRAPHS
from nuwa_export.precision import Precision
from nuwa_export.progress import Steps
from nuwa_export.quant import PRECISIONS
from nuwa_export.versions import installed

#: What ``pip install`` needs for nuwa-quantize (the ``[quantize]`` extra): ModelOpt and the
#: requirements of its ONNX extra named one by one, because ``nvidia-modelopt[onnx]`` pulls
#: onnxruntime-gpu, which cannot sit beside the CPU onnxruntime.
INSTALL = 'pip install -e ".[quantize]" in the nuwa-export checkout (or: pip install nvidia-modelopt onnx-graphsurgeon onnxconverter-common onnxslim polygraphy cppimport lief ml_dtypes)'
WORK_DIR = ".work"
TOOLS = ("nvidia-modelopt", "onnxruntime", "onnx", "onnx-graphsurgeon")


def modelopt_quantize():
    """ModelOpt's ``modelopt.onnx.quantization.quantize``, or one line naming what to install."""
    try:
        from modelopt.onnx.quantization import quantize
    except ImportError as e:
        missing = getattr(e, "name", None) or "nvidia-modelopt"
        raise NuwaError(f"nuwa-quantize needs NVIDIA ModelOpt's ONNX quantization ({missing} is missing): {INSTALL}") from None
    return quantize


def _external_files(path: Path) -> set[str]:
    """The external-data files a graph's initializers point at (relative names)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    out = set()
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            out.update(e.value for e in t.external_data if e.key == "location")
    return out


@contextlib.contextmanager
def _to_log(log: Path):
    """ModelOpt, ONNX Runtime and graphsurgeon print progress bars, warnings and an NVML error
    on a machine without a GPU: their output (file descriptors 1 and 2) goes to ``log``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(log, "ab") as f, open(log, "a", buffering=1) as text:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):  # Python-level writers too (sys.stdout may not be fd 1)
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _last_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def _restore_scopes(model, source: Path) -> bool:
    """Put the exporter's module-scope metadata (which ModelOpt drops) back on the nodes of
    ``model`` that keep their names from ``source``: ``nuwa-verify --layerwise`` finds each
    decoder layer's output by it. Returns whether any node changed."""
    import onnx

    scopes = {}
    for node in onnx.load(str(source), load_external_data=False).graph.node:
        value = next((p.value for p in node.metadata_props if p.key == n.SCOPE_KEY), None)
        if value is not None:
            scopes[node.name] = value
    changed = False
    for node in model.graph.node:
        if node.name in scopes and not any(p.key == n.SCOPE_KEY for p in node.metadata_props):
            node.metadata_props.add(key=n.SCOPE_KEY, value=scopes[node.name])
            changed = True
    return changed


#: int4 block sizes tried, largest first: TensorRT needs each weight's input dimension to be whole
#: blocks (LLaVA-7B's 4096 / 11008 and Qwen2.5-VL's 3584 / 18944 take 128; a 2752-wide MLP 64).
INT4_BLOCKS = (128, 64, 32, 16)


def int4_block(paths: list[Path]) -> int:
    """The largest block size in :data:`INT4_BLOCKS` that divides the input dimension of every
    MatMul weight in the graphs at ``paths``."""
    import onnx

    dims = set()
    for path in paths:
        model = onnx.load(str(path), load_external_data=False)
        weights = {t.name: list(t.dims) for t in model.graph.initializer if len(t.dims) == 2}
        dims.update(weights[node.input[1]][0] for node in model.graph.node if node.op_type == "MatMul" and node.input[1] in weights)
    for block in INT4_BLOCKS:
        if all(d % block == 0 for d in dims):
            return block
    raise NuwaError(f"int4 needs every weight's input dimension to be a multiple of {INT4_BLOCKS[-1]} (TensorRT takes whole blocks only); these graphs have {sorted(dims)}")


def quantize_graph(source: Path, output: Path, precision: str, reader, dtype: str, work: Path, block: int | None = None) -> None:
    """One graph through ModelOpt (its intermediate files stay in ``work``); ``block``: int4's block size."""
    quantize = modelopt_quantize()
    mode, method, attention = PRECISIONS[precision]
    work.mkdir(parents=True, exist_ok=True)
    copy = work / source.name  # ModelOpt writes intermediates beside its input: never in the source export
    shutil.copyfile(source, copy)
    external = _external_files(source)
    for name in external:
        shutil.copyfile(source.parent / name, work / name)
    log = work / "modelopt.log"
    try:
        with _to_log(log):
            quantize(
                str(copy), quantize_mode=mode, calibration_method=method, calibration_data_reader=reader,
                calibration_eps=["cpu"], output_path=str(output), log_level="ERROR",
                high_precision_dtype="fp32" if dtype == "float32" else "fp16",
                use_external_data_format=bool(external), disable_mha_qdq=not attention,
                **({"block_size": block} if block else {}),
            )
    except (KeyboardInterrupt, NuwaError):
        raise
    except Exception as e:  # ModelOpt's and ONNX Runtime's own errors: the graph could not be quantized
        why = " ".join(str(e).split())[:300] or type(e).__name__
        raise NuwaError(f"ModelOpt could not quantize {source.name} to {precision}: {why} (log: {_last_line(log) or 'empty'})") from None
    if not output.is_file():
        raise NuwaError(f"ModelOpt wrote no {output.name} ({_last_line(log) or 'no log'})")


def quantize(
    export_dir: str | Path,
    out: str | Path,
    precision: str,
    calib: str | Path = "default",
    *,
    decode_steps: int = 1,
    tokens: int = 8,
    force: bool = False,
    progress: bool = True,
) -> mf.Manifest:
    """Quantize the float export at ``export_dir`` into ``out`` (module doc); nothing is left at
    ``out`` if anything fails, validation included."""
    import onnx

    from nuwa_export.export.pipeline import finish, graph_spec
    from nuwa_export.quant import calib as cb
    from nuwa_export.runtime.exports import read_export
    from nuwa_export.verify import quantized as qp

    if precision not in PRECISIONS:
        raise NuwaError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision}")
    if decode_steps < 0 or tokens < 1:
        raise NuwaError("--decode-steps must be >= 0 and --tokens >= 1")
    source, out = Path(export_dir), Path(out)
    check_utf8_path(out, "--out")
    check_dir_target(out, force=force)
    here, src = Path(os.path.realpath(out.expanduser())), Path(os.path.realpath(source.expanduser()))
    if here == src or here in src.parents or src in here.parents:
        raise NuwaError(f"--out {out} would replace, hold or sit inside the export being quantized ({source}); pick another directory")
    manifest = read_export(source)  # every file hashed and checked
    if manifest.precision.quantized:
        raise NuwaError(f"{source} is already quantized ({manifest.precision.name}); quantize the float export it came from")
    modelopt_quantize()  # a missing ModelOpt is one line before anything slow starts
    calib_set = cb.load_set(calib)
    policy = qp.policy_for(precision)
    mode, method, _ = PRECISIONS[precision]
    block = int4_block([source / manifest.graphs[g].file for g in LLM_GRAPHS]) if mode == "int4" else None  # refused before anything slow
    steps = Steps(progress)
    src_sha = mf.sha256_file(source / n.MANIFEST)

    with atomic_dir(out, force=force) as tmp:
        work = tmp / WORK_DIR
        awq = method == "awq_clip"  # AWQ concatenates calibration runs: every request in one batch, prefills only
        with steps(f"calibrate: {len(calib_set.entries)} requests of '{calib_set.name}' through the float export (ONNX Runtime, CPU)"):
            store, records = cb.calibrate(source, manifest, calib_set, work / "feeds", decode_steps=0 if awq else decode_steps, tokens=tokens, one_batch=awq)
        graphs = dict(manifest.graphs)
        quantized = {}
        for graph in LLM_GRAPHS:
            spec = manifest.graphs[graph]
            reader = store.reader(graph, prefill_only=awq)
            blocks = f", blocks of {block}" if block else ""
            with steps(f"quantize {spec.file} (ModelOpt {mode}, {method}{blocks}, {len(reader)} calibration runs)"):
                quantize_graph(source / spec.file, tmp / spec.file, precision, reader, manifest.precision.float_type, work / graph, block)
                model = onnx.load(str(tmp / spec.file), load_external_data=False)
                if _restore_scopes(model, source / spec.file):
                    onnx.save(model, str(tmp / spec.file))  # external data (if any) stays where ModelOpt put it
                graphs[graph] = graph_spec(model, spec.file)
                opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
                quantized[graph] = mf.QuantizedGraph(precision, int(opset), manifest.files[spec.file].sha256)
                del model
        shutil.rmtree(work)
        skip = {n.MANIFEST, n.TRTEXEC}  # both rewritten
        for g in [*(manifest.graphs[x] for x in LLM_GRAPHS), *manifest.ort_graphs.values()]:  # replaced, or not carried over
            skip.add(g.file)
            skip.update(_external_files(source / g.file))
        with steps("copy the vision graphs, embeddings, tokenizer and preprocessing"):
            for name in manifest.files:
                if name not in skip:
                    (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source / name, tmp / name)
        info = mf.QuantizationInfo(
            method=method, block_size=block, graphs=quantized, source_manifest_sha256=src_sha,
            source_nuwa_export_version=manifest.nuwa_export_version, tools=installed(TOOLS),
            calibration={
                "set": calib_set.name, "sha256": calib_set.sha256, "requests": len(calib_set.entries),
                "decode_steps": 0 if awq else decode_steps, "batches": store.batches,
                "runs": {g: len(store.reader(g, prefill_only=awq)) for g in LLM_GRAPHS},
            },
            policy=policy.as_dict(),
        )
        new = replace(manifest, graphs=graphs, ort_graphs={}, quantization=info, precision=Precision.of(precision, manifest.precision.float_type),
                      files={}, validation={"vision": manifest.validation.get("vision")})
        new = finish(new, tmp)  # trtexec.sh (with --stronglyTyped), every file hashed
        with steps(f"validate the {precision} graphs against the float export on the {len(records)} calibration requests ({tokens} tokens each)"):
            validation = validate_quantized(tmp, new, records, policy)
        new = replace(new, validation={**new.validation, "quantized": validation})
        (tmp / n.MANIFEST).write_text(new.to_json())
    _summary(steps, manifest, new, out, validation)
    return new


def validate_quantized(tmp: Path, manifest: mf.Manifest, records: list, policy) -> dict:
    """The quantized pipeline (ONNX Runtime, CPU) on every calibration request, held to ``policy``."""
    from nuwa_export.runtime import consistency
    from nuwa_export.runtime.runner import open_runner
    from nuwa_export.verify import quantized as qp

    consistency.check(tmp, manifest)  # the graphs against the manifest (the files were hashed just now)
    with open_runner(tmp, backend="ort", device="cpu", manifest=manifest) as pipeline:
        measures = [qp.measure(pipeline, r) for r in records]
    summary = qp.summarize(measures, policy.near_tie)
    checks = qp.judge(summary, policy)
    failed = [c for c in checks if not c.ok]
    if failed:
        raise NuwaError(f"validation failed: {failed[0].stage} {failed[0].detail} for the {policy.precision} graphs; nothing was written")
    return {"backend": "ort", "device": "cpu", "reference": "the float export", "policy": policy.as_dict(), "summary": summary,
            "checks": [c.as_dict() for c in checks], "requests": measures}


def _summary(steps: Steps, before: mf.Manifest, after: mf.Manifest, out: Path, validation: dict) -> None:
    from rich.table import Table

    table = Table(title=f"nuwa-quantize → {out}", title_justify="left")
    for col in ("graph", "precision", "MiB before", "MiB after"):
        table.add_column(col, justify="right" if col.startswith("MiB") else "left")
    q = after.quantization
    for graph, spec in after.graphs.items():
        size = lambda m, s: sum(e.size for name, e in m.files.items() if name.startswith(s.file)) / 2**20  # noqa: E731 - with its external data
        precision = q.graphs[graph].precision if graph in q.graphs else ("float32" if graph in n.VISION_GRAPHS else after.precision.float_type)
        table.add_row(spec.file, precision, f"{size(before, before.graphs[graph]):.1f}", f"{size(after, spec):.1f}")
    steps.console.print(table)
    s = validation["summary"]
    overlap = f", stage-two overlap {s['stage_two_overlap']:.2f}" if s["stage_two_overlap"] is not None else ""
    steps.console.print(
        f"validated against the float export on {s['requests']} calibration requests ({after.precision.name} policy): "
        f"hidden at split cosine ≥ {s['hidden_cosine']:.4f} (SQNR ≥ {s['hidden_sqnr_db']:.1f} dB), logits cosine ≥ "
        f"{s['logits_cosine']:.4f} (SQNR ≥ {s['logits_sqnr_db']:.1f} dB){overlap}, greedy tokens {s['token_agreement']:.2f} agree "
        f"({s['tokens_identical']:.2f} identical; teacher-forced).", soft_wrap=True, highlight=False,
    )
