"""``vision.onnx``: pixels → vision tower → stage one → projector, at a static token budget.

Inputs ``pixel_values [B, 3, S, S]`` float32 (B dynamic). Outputs ``image_tokens [B, K1, D_llm]``
and ``patch_indices [B, K1]`` int64 ascending. Inside: the family's tower (LLaVA: CLIP with its
fused attention in every layer plus the CLS attention row of the feature layer computed alone;
Qwen2.5-VL: patchify, window and full-attention blocks, the last block's probabilities, the
merger); separation and alignment as standard ops; the swarm aggregation as one
``nuwa::SwarmAggregate`` node.
"""

from __future__ import annotations

import torch
from torch import nn

from nuwa_export.export import ops
from nuwa_export.export.llm import STACK_TRACE_KEY
from nuwa_export.pruning import Budgets
from nuwa_export.pruning.spec import StageOneSpec, anchors, stage_one_spec

__all__ = ["INPUTS", "OUTPUTS", "TRACE_BATCH", "StageOneSpec", "VisionGraph", "stage_one_spec", "trace"]

INPUTS = ("pixel_values",)
OUTPUTS = ("image_tokens", "patch_indices")
#: Batch size of the trace (1 would be specialised away by torch.export; validation uses others).
TRACE_BATCH = 2


class VisionGraph(nn.Module):
    """The module traced into ``vision.onnx``: the family's tower pass (``parts.vision_signals``),
    stage one with ``spec`` and the projector."""

    def __init__(self, parts, budgets: Budgets, spec: StageOneSpec) -> None:
        super().__init__()
        self.vision = parts.vision_module  # registered here so that export lifts its weights
        self.projector = parts.projector
        self.parts = parts
        self.grid = parts.grid
        self.k1, self.prune, self.spec = budgets.k1, budgets.prune, spec

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sig = self.parts.vision_signals(pixel_values)
        if not self.prune:
            n = sig.features.shape[1]
            idx = torch.arange(n, device=pixel_values.device).expand(pixel_values.shape[0], n)
            return self.projector(sig.features), idx
        s = self.spec
        idx = anchors(sig.cls_attention, self.grid, self.k1, s.per_region)
        scores = sig.cls_attention.gather(1, idx)
        merged = ops.swarm_aggregate(
            sig.features, sig.sim, idx, scores, list(self.grid), s.distance, s.percentile, int(s.self_weight),
        )
        return self.projector(merged), idx


def trace(graph: VisionGraph, image_size: int):
    """Export with the dynamo exporter (traced at batch 2) and attach the op's function body.

    Returns ``(model_with_function, plugin_model)`` as ``onnx.ModelProto``.
    """
    import onnx

    example = torch.zeros(TRACE_BATCH, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.onnx.export(
        graph.eval(), (example,), input_names=list(INPUTS), output_names=list(OUTPUTS),
        dynamic_shapes={"pixel_values": {0: batch}}, dynamo=True, opset_version=ops.OPSET,
        custom_translation_table=ops.CUSTOM_TRANSLATIONS, optimize=True, verbose=False,
    )
    model = program.model_proto  # a fresh copy on each access: read it once
    model.producer_name = "nuwa-export"
    for node in model.graph.node:  # no local source paths in the export (export.llm.STACK_TRACE_KEY)
        keep = [p for p in node.metadata_props if p.key != STACK_TRACE_KEY]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    if graph.prune:
        ops.attach_function(model)
    plugin = onnx.ModelProto()
    plugin.CopyFrom(model)
    ops.strip_function(plugin)
    return model, plugin
