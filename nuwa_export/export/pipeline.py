"""``nuwa-export``: checkpoint → export directory (graphs, manifest), validated, written atomically."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import replace
from pathlib import Path

from nuwa_export import __version__
from nuwa_export import contract as ct
from nuwa_export import manifest as mf
from nuwa_export import names as n
from nuwa_export.atomic import atomic_dir, check_dir_target, check_utf8_path
from nuwa_export.constants import DEFAULT_MAX_BATCH, MANIFEST_SCHEMA_VERSION, OPSET
from nuwa_export.errors import NuwaError
from nuwa_export.precision import EXPORT_DTYPES, Precision
from nuwa_export.progress import Steps
from nuwa_export.pruning import BudgetRequest

#: Graphs whose weights pass this many bytes are saved with external data (protobuf's 2 GiB cap).
EXTERNAL_DATA_BYTES = 1_800_000_000
#: What export validation generates and compares, token for token.
VALIDATION_PROMPT, VALIDATION_TOKENS = "What is in the picture?", 8
#: The second request of the batched validation (a longer prompt, so the first row is left-padded).
BATCH_PROMPT = "Where is the person standing, and what is to the left of them?"
#: ``--max-batch`` ceiling: the graphs are traced with a batch dimension of at most 64.
MAX_BATCH_LIMIT = 64


@contextlib.contextmanager
def quiet_exporter():
    """The dynamo exporter logs and warns a lot about things that do not concern users."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def graph_spec(model, file: str) -> mf.GraphSpec:
    from onnx import helper

    def spec(v):
        t = v.type.tensor_type
        dims = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
        return mf.TensorSpec(v.name, str(helper.tensor_dtype_to_np_dtype(t.elem_type)), dims)

    return mf.GraphSpec(file, [spec(v) for v in model.graph.input], [spec(v) for v in model.graph.output])


def _versions() -> dict[str, str]:
    from nuwa_export.versions import installed

    return installed(("torch", "transformers", "onnx", "onnxscript", "onnxruntime"))


def export(
    model: str,
    out: str | Path,
    *,
    keep: int | None = None,
    k1: int | None = None,
    k2: int | None = None,
    layer: int | None = None,
    prune: bool = True,
    per_region: int | None = None,
    distance: float | None = None,
    percentile: float | None = None,
    keep_ratio: float | None = None,
    image_size: int | None = None,
    dtype: str = "float32",
    force: bool = False,
    max_batch: int = DEFAULT_MAX_BATCH,
    ort_graphs: bool = True,
    progress: bool = True,
) -> mf.Manifest:
    """Export ``model`` to ``out`` and validate it; nothing is left at ``out`` if anything fails.

    ``dtype`` is the LLM graphs' dtype (weights, activations, KV cache); the vision graph is
    float32 either way (module doc of :mod:`nuwa_export.verify.checks` for how each is validated).
    ``ort_graphs``: also write the ONNX Runtime LLM graphs (fused attention, in-place KV), which
    the ort backend then runs; every LLM graph pair written is validated.
    """
    out = Path(out)
    if dtype not in EXPORT_DTYPES:
        raise NuwaError(f"--dtype must be one of {', '.join(EXPORT_DTYPES)}, got {dtype}")
    if not 1 <= max_batch <= MAX_BATCH_LIMIT:
        raise NuwaError(f"--max-batch must be between 1 and {MAX_BATCH_LIMIT}, got {max_batch}")
    check_utf8_path(out, "--out")  # the tokenizer and safetensors writers take UTF-8 paths only
    if os.path.exists(os.path.expanduser(model)):  # a local checkpoint (not an alias or a hub id)
        check_utf8_path(model, "--model")
    check_dir_target(out, force=force)  # a bad --out is refused before anything slow starts (torch included)

    import gc

    from nuwa_export.models.loader import inspect_checkpoint, load
    from nuwa_export.runtime.runner import open_runner

    info = inspect_checkpoint(model, image_size)  # bad flags are refused before anything slow starts
    here, source = Path(os.path.realpath(out.expanduser())), Path(info.path).resolve()
    if here == source or here in source.parents:
        raise NuwaError(f"--out {out} would replace the checkpoint being exported ({info.path}); pick another directory")
    request = BudgetRequest(keep, k1, k2, layer, prune, keep_ratio, per_region, distance, percentile)
    budgets, spec = info.resolve(request)
    steps = Steps(progress)
    with steps(f"load checkpoint (LLM in {dtype}, vision in float32)"):
        loaded = load(info, dtype=dtype, device="cpu", vision_dtype="float32", text_attention="eager")
    reference = open_runner(loaded, budgets=(budgets, spec))
    del loaded

    with atomic_dir(out, force=force) as tmp:
        manifest = _write_graphs(reference.loaded, budgets, spec, Precision.of(dtype), tmp, steps, max_batch, ort_graphs)
        with steps("run the PyTorch reference on the validation inputs"):
            expected = record_validation(reference)
        del reference  # the PyTorch model and the ONNX Runtime sessions never sit in memory together
        gc.collect()
        with steps(f"validate against the PyTorch reference (ONNX Runtime, CPU, {dtype} policy)"):
            validation = validate(tmp, expected)
            manifest = replace(manifest, validation=validation)
            (tmp / n.MANIFEST).write_text(manifest.to_json())
    _summary(steps, manifest, out)
    return manifest


def _write_graphs(loaded, budgets, spec, precision: Precision, tmp: Path, steps: Steps, max_batch: int, ort_graphs: bool) -> mf.Manifest:
    """Trace the three graphs as the family's contract says, write them with the assets, check
    them, hash everything."""
    import onnx

    from nuwa_export.export import ops
    from nuwa_export.export.llm import contract_of, export_prefix, export_suffix
    from nuwa_export.export.vision import VisionGraph, trace

    parts = loaded.parts
    x, contract = contract_of(parts, budgets.layer, budgets.k1, precision, max_batch)
    with steps(f"trace vision tower + stage one (K1={budgets.k1})"), quiet_exporter():
        vision, plugin = trace(VisionGraph(parts, budgets, spec), contract.graphs[n.VISION])
        onnx.save(vision, tmp / n.FILES[n.VISION])
        onnx.save(plugin, tmp / n.FILES[n.VISION_PLUGIN])
        del vision, plugin
    with steps(f"trace LLM layers [0, {budgets.layer}) and [{budgets.layer}, {budgets.num_layers}) with explicit KV"), quiet_exporter():
        big = _layer_bytes(parts) > EXTERNAL_DATA_BYTES
        export_prefix(parts, x, contract.graphs[n.LLM_PREFIX], tmp / n.FILES[n.LLM_PREFIX], external=big)
        export_suffix(parts, x, contract.graphs[n.LLM_SUFFIX], tmp / n.FILES[n.LLM_SUFFIX], external=big)
    files = list(n.FILES.values())
    if ort_graphs:
        with steps("trace the ONNX Runtime LLM graphs (GroupQueryAttention, in-place KV)"), quiet_exporter():
            export_prefix(parts, x, contract.ort_graphs[n.LLM_PREFIX], tmp / n.ORT_FILES[n.LLM_PREFIX], external=big, fused=True)
            export_suffix(parts, x, contract.ort_graphs[n.LLM_SUFFIX], tmp / n.ORT_FILES[n.LLM_SUFFIX], external=big, fused=True)
        files += list(n.ORT_FILES.values())
    with steps("write embeddings, tokenizer, preprocessing; check graphs"):
        from nuwa_export.export import fused

        _write_assets(loaded, tmp)
        ops.register_schema()
        fused.register_schema()
        for f in files:
            onnx.checker.check_model(str(tmp / f), full_check=True)
    with steps("hash weights and write manifest and trtexec.sh"):
        return _manifest(loaded, budgets, spec, precision, x, tmp, max_batch=max_batch, ort_graphs=ort_graphs)


def _summary(steps: Steps, manifest: mf.Manifest, out: Path) -> None:
    from rich.table import Table

    b = manifest.budgets
    table = Table(title=f"nuwa-export → {out}", title_justify="left")
    table.add_column("file")
    table.add_column("MiB", justify="right")
    table.add_column("sha256")
    for name, entry in manifest.files.items():
        table.add_row(name, f"{entry.size / 2**20:.1f}", entry.sha256[:16])
    steps.console.print(table)
    v = manifest.validation
    checks = {c["stage"]: c for c in v["pipeline"]["checks"]}
    if manifest.precision.float_type == "float32":
        llm = f"stage-two indices and {VALIDATION_TOKENS} greedy tokens identical"
    else:
        tf = [c for c in checks.values() if c["stage"].startswith(("stage-two indices", "greedy tokens")) and "batch" not in c["stage"]]
        llm = "teacher-forced: " + "; ".join(f"{c['stage']} {c['detail']}" for c in tf)
    pairs = "the standard and the ONNX Runtime LLM graphs" if manifest.ort_graphs else "the standard LLM graphs"
    steps.console.print(
        f"budgets: keep {b.keep}, K1 {b.stage_one_keep}, K2 {b.stage_two_keep} from layer {b.stage_two_layer} "
        f"({manifest.num_patches} patches), LLM in {manifest.precision.float_type}. Validated in ONNX Runtime ({pairs}, alone and "
        f"in a batch of 2): vision at batch "
        f"{v['vision']['batch']} (max abs error {v['vision'][n.IMAGE_TOKENS]['max_abs']:.2g}), stage-one indices identical; "
        f"first logits max abs error {checks['first logits']['max_abs']:.2g}; {llm}."
    )


def _layer_bytes(parts) -> int:
    return sum(p.numel() * p.element_size() for p in parts.lm.layers.parameters())


def _write_assets(loaded, tmp: Path) -> None:
    """Embedding table (safetensors), tokenizer, processor config and chat template."""
    import shutil

    from safetensors.numpy import save_file

    table = loaded.parts.lm.embed_tokens.weight.detach().cpu().numpy()  # the LLM's dtype
    save_file({"embed_tokens": table}, str(tmp / n.EMBEDDINGS), metadata={"format": "nuwa-export"})
    loaded.tokenizer.save_pretrained(tmp / n.TOKENIZER_DIR)
    for name in n.CHECKPOINT_ASSETS:
        if (loaded.path / name).is_file():
            shutil.copyfile(loaded.path / name, tmp / name)


def _manifest(loaded, budgets, spec, precision: Precision, x: ct.Numbers, tmp: Path, max_batch: int, ort_graphs: bool = True) -> mf.Manifest:
    import onnx

    from nuwa_export.export.profiles import llm_profiles, vision_profiles
    from nuwa_export.models.loader import weight_files

    parts = loaded.parts
    tc = parts.config.text_config
    eos = loaded.model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [loaded.tokenizer.eos_token_id])
    graphs = {name: graph_spec(onnx.load(str(tmp / f), load_external_data=False), f) for name, f in n.FILES.items()}
    contract = loaded.family.contract(x)
    k = {n.LLM_PREFIX: budgets.k1, n.LLM_SUFFIX: budgets.k2}
    profiles = {
        name: vision_profiles(g) if name in n.VISION_GRAPHS else llm_profiles(g, vision_tokens=k[name], max_positions=tc.max_position_embeddings, max_batch=max_batch)
        for name, g in contract.graphs.items()
    }
    manifest = mf.Manifest(
        schema_version=MANIFEST_SCHEMA_VERSION,
        nuwa_export_version=__version__,
        family=loaded.family.name,
        model=mf.ModelInfo(loaded.model_id, {p.name: mf.sha256_file(p) for p in weight_files(loaded.path)}),
        budgets=mf.BudgetInfo(
            budgets.keep, budgets.k1, budgets.k2, budgets.layer, budgets.num_layers, budgets.prune,
            spec.per_region, spec.distance, spec.percentile, budgets.keep_ratio, spec.self_weight,
        ),
        grid=list(parts.grid),
        num_patches=parts.num_patches,
        max_batch=max_batch,
        llm=mf.LlmInfo(
            budgets.num_layers, x.hidden_size, x.num_kv_heads, x.head_dim, x.vocab_size, tc.max_position_embeddings, loaded.image_token_id, [int(e) for e in eos],
        ),
        precision=precision,
        preprocessing=loaded.image_config.as_dict(),
        opset=OPSET,
        versions=_versions(),
        graphs=graphs,
        engine_profiles=profiles,
        files={},
        validation={},
        ort_graphs={
            name: graph_spec(onnx.load(str(tmp / f), load_external_data=False), f) for name, f in n.ORT_FILES.items() if ort_graphs
        },
    )
    return finish(manifest, tmp)


def finish(manifest: mf.Manifest, tmp: Path) -> mf.Manifest:
    """Write ``trtexec.sh`` for ``manifest``, hash every file in ``tmp`` into it, write it."""
    from nuwa_export.export.trtexec import script

    (tmp / n.TRTEXEC).write_text(script(manifest))
    (tmp / n.TRTEXEC).chmod(0o755)
    files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file() and p.name != n.MANIFEST)
    manifest = replace(manifest, files=mf.file_entries(tmp, files))
    (tmp / n.MANIFEST).write_text(manifest.to_json())
    return manifest


def record_validation(reference) -> dict:
    """Everything validation compares against, computed by the reference (NumPy only)."""
    import numpy as np
    from PIL import Image

    from nuwa_export.export.validate import record_vision
    from nuwa_export.models.demo import example_picture
    from nuwa_export.verify.checks import record

    second = Image.fromarray(np.random.default_rng(1).integers(0, 256, (200, 300, 3), dtype=np.uint8))  # seeded noise
    return {
        "vision": record_vision(reference),
        "pipeline": record(reference, example_picture(), VALIDATION_PROMPT, VALIDATION_TOKENS),
        "second": record(reference, second, BATCH_PROMPT, VALIDATION_TOKENS),
    }


def validate(tmp: Path, expected: dict) -> dict:
    """ORT vision at an untraced batch, then the whole pipeline stage by stage vs the record, alone
    and in a batch of two, on every LLM graph pair written (standard, and the ONNX Runtime graphs)."""
    from nuwa_export.export.validate import check_vision
    from nuwa_export.runtime.exports import read_export
    from nuwa_export.runtime.runner import open_runner
    from nuwa_export.verify.checks import check, check_batch

    result = {"vision": check_vision(tmp / n.FILES[n.VISION], expected["vision"])}
    manifest = read_export(tmp)  # every file hashed and checked once, for both pairs
    pairs = [("pipeline", "standard")] + ([("pipeline_ort", "ort")] if manifest.ort_graphs else [])
    for key, graphs in pairs:
        with open_runner(tmp, backend="ort", device="cpu", llm_graphs=graphs, manifest=manifest) as pipeline:
            checks = check(pipeline, expected["pipeline"]) + check_batch(pipeline, [expected["pipeline"], expected["second"]])
            policy = manifest.precision.float_type
        failed = [c for c in checks if not c.ok]
        files = ", ".join(g.file for g in (manifest.ort_graphs if graphs == "ort" else manifest.graphs).values() if g.file.startswith("llm_"))
        if failed:
            raise NuwaError(f"validation failed: {failed[0].stage} ({failed[0].detail}) for the ONNX Runtime pipeline on {files}")
        result[key] = {"backend": "ort", "graphs": files, "policy": policy, "prompt": VALIDATION_PROMPT, "batch_prompt": BATCH_PROMPT,
                       "checks": [c.as_dict() for c in checks]}
    return result
