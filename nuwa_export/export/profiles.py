"""Shape ranges for engines: vision at batch 1 (the runtime runs one image at a time), and a
prefill and a decode profile per LLM graph, both for batches of 1 to ``max_batch`` requests.

Recorded in the manifest so ``trtexec.sh`` and ``nuwa-build`` use the same numbers.
"""

from __future__ import annotations

from nuwa_export.export.llm import kv_names

#: Text tokens around the image that the prefill profiles are built for (typical, maximum).
TYPICAL_TEXT, MAX_TEXT = 48, 256


def _dims(shape) -> list[int]:
    return [int(d) for d in shape]


def vision_profiles(image_size: int) -> list[dict[str, list[list[int]]]]:
    static = [1, 3, image_size, image_size]
    return [{"pixel_values": [static, static, static]}]


def llm_profiles(part: str, *, layers: range, kv_heads: int, head_dim: int, hidden: int, vision_tokens: int, max_positions: int, max_batch: int = 1,
                 position_rows: int = 1):
    """Profile 0: prefill (past 0, prompts of ``vision_tokens`` + text); profile 1: decode (1
    token). Batch ``[1, 1, max_batch]`` in prefill (one request is the common case there) and
    ``[1, min(8, max_batch), max_batch]`` in decode, where batching pays. ``position_rows`` 3:
    M-RoPE positions ``[3, B, S]``."""
    first = "inputs_embeds" if part == "prefix" else "hidden_states"
    lo_seq = vision_tokens + 1
    opt_seq = min(vision_tokens + TYPICAL_TEXT, max_positions)
    hi_seq = min(vision_tokens + MAX_TEXT, max_positions)
    max_past = max_positions - 1
    opt_past = min(opt_seq + 64, max_past)

    def profile(seq: tuple[int, int, int], past: tuple[int, int, int], batch: tuple[int, int, int]) -> dict[str, list[list[int]]]:
        p = {first: [[b, s, hidden] for b, s in zip(batch, seq)], "position_ids": [[b, s] if position_rows == 1 else [position_rows, b, s] for b, s in zip(batch, seq)]}
        if part == "prefix":
            p["vision_start"] = [[b] for b in batch]
        p["pad_lengths"] = [[b] for b in batch]
        for name in kv_names("past", layers):
            p[name] = [[b, kv_heads, t, head_dim] for b, t in zip(batch, past)]
        return p

    prefill_batch = (1, 1, max_batch)
    decode_batch = (1, min(8, max_batch), max_batch)
    return [profile((lo_seq, opt_seq, hi_seq), (0, 0, 0), prefill_batch), profile((1, 1, 1), (1, opt_past, max_past), decode_batch)]
