"""The paper's analytic FLOPs model for vision tokens in the LLM, and the prefill speed-up bound.

docs/algorithm.md §9: one decoder layer processing ``S`` tokens costs

    8·S·H²  (Q, K, V, O projections: 4 matmuls of [S, H] × [H, H], 2 FLOPs per MAC)
  + 4·S²·H  (Q·Kᵀ and attention·V: 2 matmuls of [S, H] × [H, S])
  + 4·S·H·I (the MLP as the paper counts it: 2 matmuls of [S, H] × [H, I]; SwiGLU's third
             projection is not counted, so the numbers match the paper's)

With LLaVA-1.5-7B's shape (H 4096, I 11008, 32 layers) this reproduces the paper's numbers:

* full model, 576 vision tokens in every layer: 32 · f(576) = 5.9722e12 → **5.97 TFLOPs**;
* Nüwa-64: K1 = 112 tokens in layers [0, 16), K2 = 16 in layers [16, 32):
  16 · f(112) + 16 · f(16) = 6.4760e11 → **0.648 TFLOPs**.

  The same average budget spread evenly (64 tokens in all 32 layers) would give 32 · f(64) =
  0.646 TFLOPs, so the paper's 0.648 is the two-group split, not the average. Stage one's own
  cost (a K1×N similarity, in the vision tower) and stage two's one attention row are not in
  the model, as in the paper.

All counts are plain FLOPs (1 TFLOP = 1e12), integers so tests can check them exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from nuwa_export.errors import NuwaError

#: LLaVA-1.5-7B (Vicuna-7B): width, MLP width, decoder layers, vision patches.
LLAVA_7B_HIDDEN, LLAVA_7B_INTERMEDIATE, LLAVA_7B_LAYERS, LLAVA_7B_PATCHES = 4096, 11008, 32, 576


@dataclass(frozen=True)
class LlmShape:
    """What the FLOPs model needs of a decoder: width ``H``, MLP width ``I``, layer count ``N``."""

    hidden: int
    intermediate: int
    layers: int

    @classmethod
    def from_config(cls, text_config) -> "LlmShape":
        """From an HF Llama config (``hidden_size``, ``intermediate_size``, ``num_hidden_layers``)."""
        return cls(int(text_config.hidden_size), int(text_config.intermediate_size), int(text_config.num_hidden_layers))


LLAVA_7B = LlmShape(LLAVA_7B_HIDDEN, LLAVA_7B_INTERMEDIATE, LLAVA_7B_LAYERS)


def layer_flops(tokens: int, hidden: int, intermediate: int) -> int:
    """``8·S·H² + 4·S²·H + 4·S·H·I`` for one decoder layer over ``S = tokens`` tokens."""
    s, h, i = int(tokens), int(hidden), int(intermediate)
    if s < 0:
        raise NuwaError(f"tokens must be >= 0, got {s}")
    return 8 * s * h * h + 4 * s * s * h + 4 * s * h * i


def full_flops(shape: LlmShape, patches: int, text_tokens: int = 0) -> int:
    """Every layer sees all ``patches`` vision tokens (plus ``text_tokens``, 0 in the paper)."""
    return shape.layers * layer_flops(patches + text_tokens, shape.hidden, shape.intermediate)


def nuwa_flops(shape: LlmShape, k1: int, k2: int, layer: int, text_tokens: int = 0) -> int:
    """Layers ``[0, layer)`` see ``K1`` vision tokens, layers ``[layer, N)`` see ``K2``.

    ``text_tokens`` (0 in the paper) are added to both groups: text is never pruned.
    """
    if not 0 <= layer <= shape.layers:
        raise NuwaError(f"layer must be in [0, {shape.layers}], got {layer}")
    h, i = shape.hidden, shape.intermediate
    return layer * layer_flops(k1 + text_tokens, h, i) + (shape.layers - layer) * layer_flops(k2 + text_tokens, h, i)


def speedup_bound(shape: LlmShape, patches: int, k1: int, k2: int, layer: int, text_tokens: int = 0) -> float:
    """Analytic prefill speed-up of Nüwa over the full model: ``full_flops / nuwa_flops``.

    An upper bound for the LLM part of prefill: it ignores memory traffic, kernel launch
    overheads, the vision tower (the same in both) and the cost of the two pruning stages.
    With ``text_tokens`` the prompt's text is counted too, which lowers the bound.
    """
    pruned = nuwa_flops(shape, k1, k2, layer, text_tokens)
    if pruned == 0:
        raise NuwaError("the pruned model does no work (K1 = K2 = 0 and no text)")
    return full_flops(shape, patches, text_tokens) / pruned


def summary(shape: LlmShape, patches: int, k1: int, k2: int, layer: int, text_tokens: int = 0) -> dict:
    """JSON-ready ``{full_tflops, nuwa_tflops, speedup_bound, ...}`` for one configuration."""
    full = full_flops(shape, patches, text_tokens)
    pruned = nuwa_flops(shape, k1, k2, layer, text_tokens)
    return {
        "hidden": shape.hidden,
        "intermediate": shape.intermediate,
        "layers": shape.layers,
        "patches": patches,
        "stage_one_keep": k1,
        "stage_two_keep": k2,
        "stage_two_layer": layer,
        "text_tokens": text_tokens,
        "full_tflops": full / 1e12,
        "nuwa_tflops": pruned / 1e12,
        "speedup_bound": full / pruned if pruned else None,
    }
