"""``nuwa-verify --layerwise``: the exported LLM graphs against the PyTorch reference, decoder layer
by decoder layer, with polygraphy's comparator.

Each LLM graph (the standard pair TensorRT builds, and the ONNX Runtime pair when the export has
it) gets the output of every decoder layer marked as a graph output (polygraphy's ``ModifyOutputs``; the layer's output is its second
residual ``Add``, found by the exporter's module scope ``stack.layers.<j>``). Both graphs run in
ONNX Runtime on the reference's own inputs (teacher forcing: the prefix on the reference's prompt
embedding, the suffix on the reference's hidden states at the rows stage two kept), so an error
in one layer shows in that layer and not in every later graph. The reference's layer outputs are
captured with forward hooks on the same prefill. Comparison: polygraphy's ``SimpleCompareFunc``
per layer, with the export's dtype policy (:data:`nuwa_export.verify.checks.POLICIES`; float16 scales
the absolute tolerance by each layer's RMS). Quantized exports (``nuwa-quantize``, which puts the
exporter's scope metadata back on ModelOpt's nodes) are held to their precision's policy instead:
each layer's cosine against the reference at least the floor for the hidden state at the split.
The first layer whose error exceeds the tolerance is named.
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from nuwa_export import names as n
from nuwa_export.errors import NuwaError

_LAYER = re.compile(r"stack\.layers\.(\d+)")


@dataclass(frozen=True)
class LayerCheck:
    layer: int  # global decoder layer index
    graph: str  # file
    tensor: str  # the graph tensor compared
    ok: bool
    max_abs: float
    atol: float  # float exports: the policy's tolerance (quantized exports: 0, the cosine decides)
    rtol: float
    cosine: float | None = None  # quantized exports: against the reference, held to min_cosine
    min_cosine: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def tolerance(self) -> str:
        if self.min_cosine is not None:
            return f"cosine ≥ {self.min_cosine:.4g}"
        return f"{self.atol:.1e} or {self.rtol:.0e}·|x|"

    @property
    def error(self) -> str:
        return f"cosine {self.cosine:.4f}" if self.cosine is not None else f"{self.max_abs:.2e}"


def layer_tensors(model) -> dict[int, str]:
    """Per graph-local decoder layer, the name of its output tensor: the last ``Add`` at the top of
    its module scope (the second residual add)."""
    out: dict[int, str] = {}
    for node in model.graph.node:
        if node.op_type != "Add":
            continue
        scopes = next((p.value for p in node.metadata_props if p.key == n.SCOPE_KEY), None)
        if scopes is None:
            continue
        try:
            parts = ast.literal_eval(scopes)
        except (ValueError, SyntaxError):
            continue
        if isinstance(parts, list) and len(parts) == 3 and isinstance(parts[1], str) and (m := _LAYER.fullmatch(parts[1])):
            out[int(m.group(1))] = node.output[0]
    return out


def _polygraphy():
    try:
        from polygraphy.backend.onnx import BytesFromOnnx, ModifyOutputs, OnnxFromPath
        from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
        from polygraphy.comparator import Comparator
        from polygraphy.comparator.compare import SimpleCompareFunc
        from polygraphy.comparator.struct import IterationResult
        from polygraphy.logger import G_LOGGER
    except ImportError:
        raise NuwaError("--layerwise needs polygraphy: pip install polygraphy") from None
    G_LOGGER.module_severity = G_LOGGER.CRITICAL  # its progress lines would drown the table
    return BytesFromOnnx, ModifyOutputs, OnnxFromPath, OnnxrtRunner, SessionFromOnnx, Comparator, SimpleCompareFunc, IterationResult


def reference_run(reference, image, prompt: str) -> dict:
    """The reference's prefill on ``image`` / ``prompt``: each graph's inputs (NumPy, the export's
    dtypes) and every decoder layer's output, keyed by global layer index."""
    import torch

    from nuwa_export.generation import Request
    from nuwa_export.generation.core import (
        layouts,
        prompt_embeds,
        run_prefix,
        run_suffix,
        suffix_input,
        vision,
    )

    stages = reference.stages()
    requests = [Request(image, prompt)]
    batch = layouts(stages, requests)
    tokens, indices = vision(stages, requests, stages.clock())
    layers = reference.parts.lm.layers
    seen: dict[int, torch.Tensor] = {}
    hooks = [layer.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out[0] if isinstance(out, tuple) else out)) for i, layer in enumerate(layers)]
    try:
        with torch.inference_mode():
            embeds = prompt_embeds(stages, batch, tokens)
            split, pos, _, scores, vision_start, pad = run_prefix(stages, batch, tokens, indices)
            _, hidden, pos2 = suffix_input(stages, batch, split, pos, scores, tokens.shape[1])
            run_suffix(stages, hidden, pos2, pad, 1)
    finally:
        for h in hooks:
            h.remove()
    numpy = lambda t: t.detach().cpu().numpy()  # noqa: E731
    return {
        "prefix": {n.INPUTS_EMBEDS: numpy(embeds), n.POSITION_IDS: numpy(pos), n.VISION_START: numpy(vision_start), n.PAD_LENGTHS: numpy(pad)},
        "suffix": {n.HIDDEN_STATES: numpy(hidden), n.POSITION_IDS: numpy(pos2), n.PAD_LENGTHS: numpy(pad)},
        "layers": {i: numpy(t) for i, t in seen.items()},
    }


def compare_layers(directory: Path, manifest, run: dict, policy) -> list[LayerCheck]:
    """Every decoder layer of each LLM graph pair of the export (the standard graphs, and the
    ONNX Runtime graphs when present) against ``run`` (:func:`reference_run`). ``policy``: the
    float policy (:class:`nuwa_export.verify.checks.Policy`: polygraphy's atol / rtol comparison), or a
    quantized export's (:class:`nuwa_export.verify.quantized.QuantPolicy`: each layer's cosine against
    the reference, at least the policy's floor for the hidden state at the split)."""
    import onnx

    BytesFromOnnx, ModifyOutputs, OnnxFromPath, OnnxrtRunner, SessionFromOnnx, Comparator, SimpleCompareFunc, IterationResult = _polygraphy()
    llm, b = manifest.llm, manifest.budgets
    checks: list[LayerCheck] = []
    pairs = [(manifest.graphs, False)] + ([(manifest.ort_graphs, True)] if manifest.ort_graphs else [])
    for graphs, in_place in pairs:
        for graph, layers, feeds in ((n.LLM_PREFIX, range(b.stage_two_layer), run["prefix"]), (n.LLM_SUFFIX, range(b.stage_two_layer, llm.num_layers), run["suffix"])):
            file = graphs[graph].file
            path = directory / file
            local = layer_tensors(onnx.load(str(path), load_external_data=False))
            if sorted(local) != list(range(len(layers))):
                raise NuwaError(f"cannot find the decoder layers' outputs in {file} (found {sorted(local)}); --layerwise needs graphs from this nuwa-export")
            names = {layers[j]: local[j] for j in range(len(layers))}
            data = _feeds(feeds, graph, n.kv_names(n.PAST, layers), llm, in_place)
            want = {names[i]: run["layers"][i].astype(np.float32) for i in layers}
            quantized = hasattr(policy, "min_hidden_cosine")
            atol = {n: 0.0 if quantized else float(policy.atol_for(w)) for n, w in want.items()}
            runner = OnnxrtRunner(SessionFromOnnx(BytesFromOnnx(ModifyOutputs(OnnxFromPath(str(path)), outputs=list(names.values())))), name="onnxruntime")
            with contextlib.redirect_stdout(io.StringIO()):
                results = Comparator.run([runner], data_loader=[data])
                got = results[0][1][0]
                results = type(results)([(runner.name, [IterationResult(outputs={n: np.asarray(got[n], np.float32) for n in names.values()}, runner_name="onnxruntime")]),
                                         ("pytorch", [IterationResult(outputs=want, runner_name="pytorch")])])
                accuracy = Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(atol=atol, rtol=0.0 if quantized else policy.rtol, check_shapes=True))
            per = _per_output(accuracy, ("onnxruntime", "pytorch"))
            for i in layers:
                r, name = per[names[i]], names[i]
                if quantized:
                    from nuwa_export.verify.quantized import cosine

                    cos = cosine(got[name], want[name])
                    checks.append(LayerCheck(i, file, name, cos >= policy.min_hidden_cosine, float(r.max_absdiff), 0.0, 0.0, cos, policy.min_hidden_cosine))
                else:
                    checks.append(LayerCheck(i, file, name, bool(r), float(r.max_absdiff), atol[name], policy.rtol))
    return checks


def _feeds(feeds: dict, graph: str, past_names: list[str], llm, in_place: bool) -> dict:
    """A prefill's inputs for the standard graphs (``pad_lengths``, empty past) or the ONNX Runtime
    graphs (``attention_mask``, KV buffers of exactly the prompt's length)."""
    import torch

    from nuwa_export.runtime.kv import padding_mask
    first = feeds[n.INPUTS_EMBEDS if graph == n.LLM_PREFIX else n.HIDDEN_STATES]
    batch, seq = first.shape[:2]
    data = {k: v for k, v in feeds.items() if k != n.PAD_LENGTHS}
    if in_place:
        data[n.ATTENTION_MASK] = padding_mask(torch.from_numpy(feeds[n.PAD_LENGTHS]), seq).numpy()
        past = np.zeros((batch, llm.num_kv_heads, seq, llm.head_dim), first.dtype)
    else:
        data[n.PAD_LENGTHS] = feeds[n.PAD_LENGTHS]
        past = np.zeros((batch, llm.num_kv_heads, 0, llm.head_dim), first.dtype)
    return {**data, **dict.fromkeys(past_names, past)}


def _per_output(accuracy, pair) -> dict:
    """``{output: OutputCompareResult}`` of the first iteration of ``pair`` (polygraphy wraps its
    ``AccuracyResult`` in a list in some versions)."""
    result = accuracy
    while not (hasattr(result, "keys") and pair in result.keys()):
        result = result.lst[0]
    return result[pair][0]


def layerwise(directory: Path, manifest, image, prompt: str) -> tuple[list[LayerCheck], LayerCheck | None, str]:
    """``nuwa-verify --layerwise``: every decoder layer of the export at ``directory`` against the
    reference on ``image`` / ``prompt`` → (the layers' checks, the first layer beyond tolerance or
    None, the policy's name)."""
    import gc

    from nuwa_export.runtime.runner import open_runner
    from nuwa_export.verify.checks import policy_for

    _polygraphy()  # the missing package is named before the checkpoint loads
    with open_runner(directory, backend="torch", device="cpu", dtype=manifest.precision.float_type, manifest=manifest) as reference:
        run = reference_run(reference, image, prompt)
    del reference
    gc.collect()
    if manifest.precision.quantized:
        from nuwa_export.verify.quantized import policy_for as quantized_policy

        policy, policy_name = quantized_policy(manifest.precision.name), manifest.precision.name
    else:
        policy = policy_for(manifest.precision.float_type)
        policy_name = policy.dtype
    checks = compare_layers(directory, manifest, run, policy)
    first = min((c for c in checks if not c.ok), key=lambda c: c.layer, default=None)
    return checks, first, policy_name
