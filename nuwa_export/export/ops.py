"""The ``nuwa::SwarmAggregate`` custom node: torch op, ONNX schema and ONNX function body.

The exporter emits the swarm aggregation as one node of domain ``nuwa``. The model carries an
ONNX *function* for it made of standard ops, so ONNX Runtime and TensorRT without our plugin
inline it; :func:`strip_function` removes the body so TensorRT resolves the node from its plugin
registry instead. Inputs:

- ``features [B, N, D]`` float: the patch features to merge (LLaVA's feature layer).
- ``sim [B, N, Ds]`` float: similarity features, L2-normalised inside the op (cosine).
- ``indices [B, K]`` int64: anchor patch indices, ascending.
- ``anchor_scores [B, K]`` float: CLS attention of each anchor (pillar threshold).

Output ``tokens [B, K, D]``. Attributes: ``grid`` ints ``[H, W]`` (any sides), ``distance`` (reach
``sqrt(distance)`` patches), ``percentile``, and ``self_weight`` (int, default 1): 1 sets each row's
self entry to 1.0 after normalising (LLaVA), 0 keeps it as normalised (Qwen2.5-VL).
The torch implementation is :func:`nuwa_export.pruning.aggregation_weights` followed by the
merge, so eager, exported and reference computations are one definition.
"""

from __future__ import annotations

import onnx
import torch
from onnx import defs
from onnxscript import FLOAT, INT64, script
from onnxscript import opset18 as op
from onnxscript.values import Opset

from nuwa_export.constants import OP_ATTRIBUTES, OP_DOMAIN, OP_NAME, OP_VERSION, OPSET
from nuwa_export.pruning.spec import StageOneSpec, weights
from nuwa_export.pruning.stage_one import ROW_EPS

assert OPSET == 18, "the function body below is written against onnxscript.opset18"


def _infer_shape(ctx) -> None:
    """``tokens``: batch and width from ``features``, K from ``indices``."""
    feats, idx = ctx.get_input_type(0), ctx.get_input_type(2)
    out = onnx.TypeProto()
    out.tensor_type.elem_type = feats.tensor_type.elem_type or onnx.TensorProto.FLOAT
    fs, ks = feats.tensor_type, idx.tensor_type
    if fs.HasField("shape") and ks.HasField("shape") and len(fs.shape.dim) == 3 and len(ks.shape.dim) == 2:
        for dim in (fs.shape.dim[0], ks.shape.dim[1], fs.shape.dim[2]):
            out.tensor_type.shape.dim.add().CopyFrom(dim)
    ctx.set_output_type(0, out)


def register_schema() -> None:
    """Register the ONNX schema of ``nuwa::SwarmAggregate`` (checker, shape inference)."""
    if defs.has(OP_NAME, OP_VERSION, OP_DOMAIN):
        return
    param, attr, kinds = defs.OpSchema.FormalParameter, defs.OpSchema.Attribute, defs.OpSchema.AttrType
    schema = defs.OpSchema(
        OP_NAME, OP_DOMAIN, OP_VERSION,
        "Nüwa swarm aggregation: tokens = W(sim, indices, anchor_scores) @ features.",
        inputs=[param("features", "T"), param("sim", "T"), param("indices", "I"), param("anchor_scores", "T")],
        outputs=[param("tokens", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float"), ("I", ["tensor(int64)"], "indices")],
        attributes=[
            attr("grid", kinds.INTS, "[H, W] with H*W = N", required=True),
            attr("distance", kinds.FLOAT, "reach is sqrt(distance) patches", required=True),
            attr("percentile", kinds.FLOAT, "pillar quantile of anchor_scores", required=True),
            defs.OpSchema.Attribute("self_weight", onnx.helper.make_attribute("self_weight", 1), "1: self entry 1.0 after normalising"),
        ],
    )
    schema.set_type_and_shape_inference_function(_infer_shape)
    defs.register_schema(schema)


register_schema()  # before onnxscript resolves NUWA.SwarmAggregate
NUWA = Opset(OP_DOMAIN, OP_VERSION)


# ---- torch: an opaque op for export whose implementation is the reference ---------------------
@torch.library.custom_op("nuwa::swarm_aggregate", mutates_args=())
def swarm_aggregate(
    features: torch.Tensor, sim: torch.Tensor, indices: torch.Tensor, anchor_scores: torch.Tensor,
    grid: list[int], distance: float, percentile: float, self_weight: int = 1,
) -> torch.Tensor:
    spec = StageOneSpec(1, distance, percentile, bool(self_weight))
    return (weights(sim, indices, anchor_scores, tuple(grid), spec) @ features.float()).to(features.dtype)


@swarm_aggregate.register_fake
def _(features, sim, indices, anchor_scores, grid, distance, percentile, self_weight=1):
    return features.new_empty(features.shape[0], indices.shape[1], features.shape[2])


# ---- ONNX function body: standard ops only; attributes are read by reference -------------------
@script(NUWA, default_opset=op)
def SwarmAggregate(
    features: FLOAT, sim: FLOAT, indices: INT64, anchor_scores: FLOAT,
    grid: list[int], distance: float, percentile: float, self_weight: int = 1,
) -> FLOAT:
    one = op.Constant(value_float=1.0)
    width = op.Gather(op.Constant(value_ints=grid), op.Constant(value_int=1), axis=0)
    # cosine similarity of the K anchors with all N patches: [B, K, N]
    norm = op.ReduceL2(sim, op.Constant(value_ints=[-1]), keepdims=1)
    unit = op.Div(sim, op.Max(norm, op.Constant(value_float=1e-12)))
    idx3 = op.Unsqueeze(indices, op.Constant(value_ints=[-1]))
    gather_at = op.Expand(idx3, op.Concat(op.Shape(indices), op.Shape(unit, start=2), axis=0))
    anchors = op.GatherElements(unit, gather_at, axis=1)
    affinity = op.Relu(op.MatMul(anchors, op.Transpose(unit, perm=[0, 2, 1])))
    # distance penalty 1 - min(1, dist / sqrt(distance))
    patch = op.Range(op.Constant(value_int=0), op.Squeeze(op.Shape(unit, start=1, end=2)), op.Constant(value_int=1))
    dy = op.Cast(op.Div(idx3, width), to=1) - op.Cast(op.Div(patch, width), to=1)
    dx = op.Cast(op.Mod(idx3, width), to=1) - op.Cast(op.Mod(patch, width), to=1)
    dist = op.Sqrt(dy * dy + dx * dx)
    weights = affinity * (one - op.Min(dist / op.Sqrt(op.Constant(value_float=distance)), one))
    # pillar threshold: linear-interpolated quantile of the anchor scores
    k = op.Shape(anchor_scores, start=1, end=2)
    ascending, ascending_idx = op.TopK(anchor_scores, k, axis=1, largest=0, sorted=1)
    pos = op.Constant(value_float=percentile) * (op.Cast(k, to=1) - one)
    low = op.Floor(pos)
    v_low = op.Gather(ascending, op.Cast(low, to=7), axis=1)
    v_high = op.Gather(ascending, op.Cast(op.Ceil(pos), to=7), axis=1)
    threshold = v_low + (pos - low) * (v_high - v_low)
    pillar = op.Unsqueeze(op.GreaterOrEqual(anchor_scores, threshold), op.Constant(value_ints=[-1]))
    is_self = op.Equal(idx3, patch)
    kept = op.Where(op.And(pillar, op.Not(is_self)), op.Constant(value_float=0.0), weights)
    row_sum = op.ReduceSum(kept, op.Constant(value_ints=[-1]), keepdims=1)
    normalised = kept / (row_sum + op.Constant(value_float=ROW_EPS))
    override = op.And(is_self, op.Cast(op.Constant(value_int=self_weight), to=9))
    merge = op.Where(override, one, normalised)
    return op.MatMul(merge, features)


def _translation(
    features: FLOAT, sim: FLOAT, indices: INT64, anchor_scores: FLOAT,
    grid: list[int], distance: float, percentile: float, self_weight: int = 1,
) -> FLOAT:
    # One opaque node. Handing the @script function itself to the exporter would get it inlined
    # (torch.onnx always runs onnxscript's version converter, which inlines functions).
    return NUWA.SwarmAggregate(
        features, sim, indices, anchor_scores, grid=grid, distance=distance, percentile=percentile, self_weight=self_weight,
    )


def _sort_stable(self, *, stable=None, dim=-1, descending=False):
    """``aten.sort.stable`` → ``TopK(k = size)``: ONNX TopK puts ties lowest index first."""
    if dim >= 0:
        k = op.Shape(self, start=dim, end=dim + 1)
    else:
        k = op.Reshape(op.Gather(op.Shape(self), dim), op.Constant(value_ints=[1]))
    return op.TopK(self, k, axis=dim, largest=1 if descending else 0, sorted=1)


CUSTOM_TRANSLATIONS = {
    torch.ops.nuwa.swarm_aggregate.default: _translation,
    torch.ops.aten.sort.stable: _sort_stable,
}


def function_proto() -> onnx.FunctionProto:
    fp = SwarmAggregate.to_function_proto()
    names = [*fp.attribute, *(a.name for a in fp.attribute_proto)]  # attribute_proto: those with a default
    assert sorted(names) == sorted(OP_ATTRIBUTES), names
    return fp


def attach_function(model: onnx.ModelProto) -> onnx.ModelProto:
    """Add the standard-op body of ``nuwa::SwarmAggregate`` to ``model`` (in place)."""
    fp = function_proto()
    versions = {o.domain: o.version for o in model.opset_import}
    for o in fp.opset_import:
        if versions.get(o.domain, o.version) != o.version:
            raise RuntimeError(f"function body uses opset {o.domain}:{o.version}, model has {versions[o.domain]}")
    strip_function(model)
    model.functions.append(fp)
    if OP_DOMAIN not in versions:
        model.opset_import.append(onnx.helper.make_opsetid(OP_DOMAIN, OP_VERSION))
    return model


def strip_function(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove the body (in place): the node stays, for TensorRT's plugin registry."""
    keep = [f for f in model.functions if (f.domain, f.name) != (OP_DOMAIN, OP_NAME)]
    del model.functions[:]
    model.functions.extend(keep)
    return model
