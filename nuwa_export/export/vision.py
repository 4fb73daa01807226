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

from nuwa_export import contract as ct
from nuwa_export import names as n
from nuwa_export.export import ops
from nuwa_export.pruning import Budgets
from nuwa_export.pruning.spec import StageOneSpec

#: Batch size of the trace (1 would be specialised away by torch.export; validation uses others).
TRACE_BATCH = 2


def graph_merge(features, sim, indices, scores, grid: tuple[int, int], spec: StageOneSpec) -> torch.Tensor:
    """Stage one's swarm merge as the exported graph has it: one ``nuwa::SwarmAggregate`` node."""
    return ops.swarm_aggregate(features, sim, indices, scores, list(grid), spec.distance, spec.percentile, int(spec.self_weight))


class VisionGraph(nn.Module):
    """The module traced into ``vision.onnx``: the family's tower pass, stage one with ``spec``
    and the projector (``parts.vision_tokens``, with the merge as one custom node)."""

    def __init__(self, parts, budgets: Budgets, spec: StageOneSpec) -> None:
        super().__init__()
        self.vision = parts.vision_module  # registered here so that export lifts its weights
        self.projector = parts.projector
        self.parts = parts
        self.budgets, self.spec = budgets, spec
        self.prune = budgets.prune

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.parts.vision_tokens(pixel_values, self.budgets, self.spec, graph_merge)
        return out.tokens, out.indices


def trace(graph: VisionGraph, contract: ct.Graph):
    """Export with the dynamo exporter (traced at batch 2) as the contract's ``graph`` says, and
    attach the op's function body.

    Returns ``(model_with_function, plugin_model)`` as ``onnx.ModelProto``.
    """
    import onnx

    from nuwa_export.export.llm import clean_metadata, trace_dims

    pixels = contract.input(n.PIXEL_VALUES)
    example = torch.zeros(TRACE_BATCH, *(d.size for d in pixels.dims[1:]))
    dims = trace_dims(contract)
    del dims[n.PAST]
    program = torch.onnx.export(
        graph.eval(), (example,), input_names=contract.input_names, output_names=contract.output_names,
        dynamic_shapes=dims, dynamo=True, opset_version=ops.OPSET,
        custom_translation_table=ops.CUSTOM_TRANSLATIONS, optimize=True, verbose=False,
    )
    for node in program.model.graph.all_nodes():  # no local source paths or addresses in the export
        clean_metadata(node.metadata_props)
    model = program.model_proto  # a fresh copy on each access: read it once
    model.producer_name = "nuwa-export"
    if graph.prune:
        ops.attach_function(model)
    plugin = onnx.ModelProto()
    plugin.CopyFrom(model)
    ops.strip_function(plugin)
    return model, plugin
