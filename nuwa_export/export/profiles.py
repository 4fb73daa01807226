"""Shape ranges for engines: static vision, and a prefill and a decode profile per LLM graph.

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


def llm_profiles(part: str, *, layers: range, kv_heads: int, head_dim: int, hidden: int, vision_tokens: int, max_positions: int):
    """Profile 0: prefill (past 0, prompt of ``vision_tokens`` + text); profile 1: decode (1 token)."""
    first = "inputs_embeds" if part == "prefix" else "hidden_states"
    lo_seq = vision_tokens + 1
    opt_seq = min(vision_tokens + TYPICAL_TEXT, max_positions)
    hi_seq = min(vision_tokens + MAX_TEXT, max_positions)
    max_past = max_positions - 1
    opt_past = min(opt_seq + 64, max_past)

    def profile(seq: tuple[int, int, int], past: tuple[int, int, int]) -> dict[str, list[list[int]]]:
        p = {first: [[1, s, hidden] for s in seq], "position_ids": [[1, s] for s in seq]}
        for name in kv_names("past", layers):
            p[name] = [[1, kv_heads, t, head_dim] for t in past]
        return p

    return [profile((lo_seq, opt_seq, hi_seq), (0, 0, 0)), profile((1, 1, 1), (1, opt_past, max_past))]
