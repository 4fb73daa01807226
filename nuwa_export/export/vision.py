"""``vision.onnx``: pixels → vision tower → stage one → projector, at a static token budget.

Inputs ``pixel_values [B, 3, S, S]`` float32 (B dynamic). Outputs ``image_tokens [B, K1, D_llm]``
and ``patch_indices [B, K1]`` int64 ascending. Inside: the CLIP tower with its fused attention in
every layer plus the CLS attention row of the feature layer computed alone; separation and
alignment as standard ops; the swarm aggregation as one ``nuwa::SwarmAggregate`` node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from nuwa_export.errors import NuwaError
from nuwa_export.export import ops
from nuwa_export.models.llava import LlavaParts, vision_signals
from nuwa_export.pruning import Budgets, alignment, default_per_region, separation
from nuwa_export.pruning.stage_one import DEFAULT_DISTANCE, DEFAULT_PERCENTILE

INPUTS = ("pixel_values",)
OUTPUTS = ("image_tokens", "patch_indices")
#: Batch size of the trace (1 would be specialised away by torch.export; validation uses others).
TRACE_BATCH = 2


@dataclass(frozen=True)
class StageOneSpec:
    """Stage-one settings baked into the graph."""

    per_region: int
    distance: float
    percentile: float


class VisionGraph(nn.Module):
    """The module traced into ``vision.onnx``."""

    def __init__(self, parts: LlavaParts, budgets: Budgets, spec: StageOneSpec) -> None:
        super().__init__()
        self.vision = parts.vision
        self.projector = parts.projector
        self.grid = parts.grid
        self.feature_index, self.sim_start = parts.feature_index, parts.sim_start
        self.k1, self.prune, self.spec = budgets.k1, budgets.prune, spec

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sig = vision_signals(self.vision, pixel_values, self.feature_index, self.sim_start)
        if not self.prune:
            n = sig.features.shape[1]
            idx = torch.arange(n, device=pixel_values.device).expand(pixel_values.shape[0], n)
            return self.projector(sig.features), idx
        candidates = separation(sig.cls_attention, self.grid, self.spec.per_region)
        idx = alignment(sig.cls_attention, candidates, self.k1)
        scores = sig.cls_attention.gather(1, idx)
        s = self.spec
        merged = ops.swarm_aggregate(sig.features, sig.sim, idx, scores, list(self.grid), s.distance, s.percentile)
        return self.projector(merged), idx


def stage_one_spec(
    budgets: Budgets, grid: tuple[int, int], per_region: int | None, distance: float | None = None, percentile: float | None = None
) -> StageOneSpec:
    """Fill in the defaults (``None``) and refuse settings stage one cannot meet."""
    distance = DEFAULT_DISTANCE if distance is None else distance
    percentile = DEFAULT_PERCENTILE if percentile is None else percentile
    if per_region is not None and not 1 <= per_region <= 4:
        raise NuwaError(f"--per-region must be between 1 and 4, got {per_region}")
    n = default_per_region(budgets.k1, grid) if per_region is None else per_region
    candidates = n * grid[0] * grid[1] // 4
    if budgets.prune and candidates < budgets.k1:
        raise NuwaError(f"--per-region {n} gives {candidates} candidates, fewer than K1={budgets.k1}")
    if not (math.isfinite(distance) and distance > 0) or not 0 <= percentile <= 1:
        raise NuwaError(f"--distance must be > 0 and --percentile in [0, 1], got {distance} and {percentile}")
    return StageOneSpec(n, float(distance), float(percentile))


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
    if graph.prune:
        ops.attach_function(model)
    plugin = onnx.ModelProto()
    plugin.CopyFrom(model)
    ops.strip_function(plugin)
    return model, plugin
