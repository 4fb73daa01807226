"""One generation core for every runner (docs/architecture.md, "Runtime").

The engine pipeline (ONNX Runtime / TensorRT) and the PyTorch reference each implement the small
:class:`Stages` interface; prompt layout, left-padded batches, stage-two row selection
(``pruning.stage_two_rows``), the two KV groups, the decode session that admits requests while
others decode (:class:`Session`), the decode loop and sampling live here, once.
"""

from nuwa_export.generation.core import (
    KVGroups,
    Live,
    Prefill,
    Request,
    prefill,
    prompt_embeds,
    replay,
    run_prefix,
    run_suffix,
    select,
    step,
)
from nuwa_export.generation.layout import Batch, Layout, layout_for
from nuwa_export.generation.loop import decode_loop
from nuwa_export.generation.result import Clock, GenerationResult, Transfers
from nuwa_export.generation.session import Row, Session, generate, generate_batch, generate_batches
from nuwa_export.generation.stages import Stages

__all__ = [
    "Batch",
    "Clock",
    "GenerationResult",
    "KVGroups",
    "Layout",
    "Live",
    "Prefill",
    "Request",
    "Row",
    "Session",
    "Stages",
    "Transfers",
    "decode_loop",
    "generate",
    "generate_batch",
    "generate_batches",
    "layout_for",
    "prefill",
    "prompt_embeds",
    "replay",
    "run_prefix",
    "run_suffix",
    "select",
    "step",
]
