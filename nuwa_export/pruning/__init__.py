"""Pure tensor functions of the Nüwa algorithm (docs/algorithm.md); no transformers import and no
model family here: a family passes its settings as parameters."""

from nuwa_export.pruning.budgets import (
    BudgetRequest,
    Budgets,
    budgets,
    default_keep,
    resolve_budgets,
)
from nuwa_export.pruning.plan import ImagePlan, TokenGrid
from nuwa_export.pruning.positions import (
    MRopePositions,
    RopePositions,
    decode_position,
    position_ids,
)
from nuwa_export.pruning.stage_one import (
    aggregation_weights,
    alignment,
    default_per_region,
    diagonal_reach,
    keep_fraction,
    padded_anchors,
    padded_grid,
    pillar_mask,
    real_candidates,
    separation,
    stage_one,
    swarm_weights,
)
from nuwa_export.pruning.stage_two import stage_two, stage_two_rows

__all__ = [
    "BudgetRequest",
    "Budgets",
    "ImagePlan",
    "MRopePositions",
    "RopePositions",
    "TokenGrid",
    "aggregation_weights",
    "alignment",
    "budgets",
    "decode_position",
    "default_keep",
    "default_per_region",
    "diagonal_reach",
    "keep_fraction",
    "padded_anchors",
    "padded_grid",
    "pillar_mask",
    "position_ids",
    "real_candidates",
    "resolve_budgets",
    "separation",
    "stage_one",
    "stage_two",
    "stage_two_rows",
    "swarm_weights",
]
