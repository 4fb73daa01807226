"""Pure tensor functions of the Nüwa algorithm (docs/algorithm.md); no transformers import here."""

from nuwa_export.pruning.budgets import Budgets, budgets, default_keep, resolve_budgets
from nuwa_export.pruning.positions import decode_position, position_ids
from nuwa_export.pruning.stage_one import (
    QWEN_PERCENTILE,
    QWEN_REACH_FACTOR,
    aggregation_weights,
    alignment,
    default_per_region,
    padded_grid,
    pillar_mask,
    qwen_anchors,
    qwen_reach,
    qwen_stage_one_keep,
    real_candidates,
    separation,
    stage_one,
    swarm_weights,
)
from nuwa_export.pruning.stage_two import stage_two, stage_two_rows

__all__ = [
    "QWEN_PERCENTILE",
    "QWEN_REACH_FACTOR",
    "Budgets",
    "aggregation_weights",
    "alignment",
    "budgets",
    "decode_position",
    "default_keep",
    "default_per_region",
    "padded_grid",
    "pillar_mask",
    "position_ids",
    "qwen_anchors",
    "qwen_reach",
    "qwen_stage_one_keep",
    "real_candidates",
    "resolve_budgets",
    "separation",
    "stage_one",
    "stage_two",
    "stage_two_rows",
    "swarm_weights",
]
