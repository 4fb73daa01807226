"""Shape ranges for engines, from the export's graph contract: vision at batch 1 (the runtime runs
one image at a time), and a prefill and a decode profile per LLM graph, both for batches of 1 to
``max_batch`` requests.

Recorded in the manifest so ``trtexec.sh`` and ``nuwa-build`` use the same numbers.
"""

from __future__ import annotations

from nuwa_export import contract as ct
from nuwa_export import names as n

#: Text tokens around the image that the prefill profiles are built for (typical, maximum).
TYPICAL_TEXT, MAX_TEXT = 48, 256


def vision_profiles(graph: ct.Graph) -> list[dict[str, list[list[int]]]]:
    return [graph.profile({n.BATCH: (1, 1, 1)})]


def llm_profiles(graph: ct.Graph, *, vision_tokens: int, max_positions: int, max_batch: int = 1) -> list[dict[str, list[list[int]]]]:
    """Profile 0: prefill (past 0, prompts of ``vision_tokens`` + text); profile 1: decode (1
    token). Batch ``[1, 1, max_batch]`` in prefill (one request is the common case there) and
    ``[1, min(8, max_batch), max_batch]`` in decode, where batching pays."""
    opt_seq = min(vision_tokens + TYPICAL_TEXT, max_positions)
    max_past = max_positions - 1
    prefill = {n.BATCH: (1, 1, max_batch), n.SEQ: (vision_tokens + 1, opt_seq, min(vision_tokens + MAX_TEXT, max_positions)), n.PAST_AXIS: (0, 0, 0)}
    decode = {n.BATCH: (1, min(8, max_batch), max_batch), n.SEQ: (1, 1, 1), n.PAST_AXIS: (1, min(opt_seq + 64, max_past), max_past)}
    return [graph.profile(prefill), graph.profile(decode)]
