"""Deliberately broken quantized graphs, for tests that the quantized policy rejects them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


def weight_dequants(model) -> list:
    """The DequantizeLinear nodes of weights, in graph order: fed by an initializer (int4: packed
    weights) or by a QuantizeLinear of one (int8 / fp8)."""
    inits = {t.name for t in model.graph.initializer}
    made_by = {o: n for n in model.graph.node for o in n.output}
    out = []
    for n in model.graph.node:
        if n.op_type != "DequantizeLinear" or n.input[1] not in inits:
            continue
        q = made_by.get(n.input[0])
        if n.input[0] in inits or (q is not None and q.op_type == "QuantizeLinear" and q.input[0] in inits):
            out.append(n)
    return out


def scale_weight_dequant(path: Path, index: int, factor: float) -> str:
    """Multiply the scale of the ``index``-th weight DequantizeLinear by ``factor`` (a wrong
    calibration scale); returns the node's name."""
    model = onnx.load(str(path))
    node = weight_dequants(model)[index]
    scale = next(t for t in model.graph.initializer if t.name == node.input[1])
    arr = numpy_helper.to_array(scale)
    # a scale of the DequantizeLinear alone (int8 / fp8 share one with the QuantizeLinear, whose
    # change would only coarsen the grid)
    model.graph.initializer.append(numpy_helper.from_array((arr * np.asarray(factor, arr.dtype)).astype(arr.dtype), scale.name + "_broken"))
    node.input[1] = scale.name + "_broken"
    onnx.save(model, str(path))
    return node.name


def shift_positions_after_image(path: Path, by: int) -> None:
    """``position_ids`` of the image and every later token moved by ``by`` (text before the image
    keeps its own): the mistake of mis-counting the tokens before the image."""
    model = onnx.load(str(path))
    g = model.graph
    consumers = [n for n in g.node if "position_ids" in n.input]
    nodes = [
        helper.make_node("Unsqueeze", ["vision_start", "_shift_axes"], ["_vs"]),
        helper.make_node("GreaterOrEqual", ["position_ids", "_vs"], ["_after"]),
        helper.make_node("Cast", ["_after"], ["_after_i"], to=onnx.TensorProto.INT64),
        helper.make_node("Mul", ["_after_i", "_shift_by"], ["_delta"]),
        helper.make_node("Add", ["position_ids", "_delta"], ["_shifted_positions"]),
    ]
    g.initializer.extend([numpy_helper.from_array(np.array([1], np.int64), "_shift_axes"), numpy_helper.from_array(np.array(by, np.int64), "_shift_by")])
    for n in consumers:
        for i, name in enumerate(n.input):
            if name == "position_ids":
                n.input[i] = "_shifted_positions"
    for i, n in enumerate(nodes):
        g.node.insert(i, n)
    onnx.save(model, str(path))
