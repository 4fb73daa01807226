"""Pure tensor functions of the Nüwa algorithm (docs/algorithm.md); no transformers import here."""

from nuwa_export.pruning.budgets import Budgets, budgets, default_keep, resolve_budgets
from nuwa_export.pruning.positions import decode_position, position_ids
from nuwa_export.pruning.stage_one import (
    aggregation_weights,
    alignment,
    default_per_region,
    pillar_mask,
    separation,
    stage_one,
    swarm_weights,
)
from nuwa_export.pruning.stage_two import stage_two, stage_two_rows

__all__ = [
    "Budgets",
    "aggregation_weights",
    "alignment",
    "budgets",
    "decode_position",
    "default_keep",
    "default_per_region",
    "pillar_mask",
    "position_ids",
    "resolve_budgets",
    "separation",
    "stage_one",
    "stage_two",
    "stage_two_rows",
    "swarm_weights",
]
