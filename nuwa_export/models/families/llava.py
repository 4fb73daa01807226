"""LLaVA-1.5 (Llama LLM, CLIP tower with a class token, one square grid) on the family seam."""

from __future__ import annotations

from nuwa_export.errors import NuwaError
from nuwa_export.eval import grounding
from nuwa_export.models.families import Family, Grounding, register


def graph_io(m) -> dict[str, tuple[list, list]]:
    """Per graph, (inputs, outputs) as ``(name, dtype, dims)``; a dim is None (any, e.g. batch),
    an int, or ``(int, "manifest field")``; a dtype is a str or ``(str, "manifest field")``."""
    b, llm = m.budgets, m.llm
    L, N = b.stage_two_layer, llm.num_layers
    s = (m.preprocessing["size"], "preprocessing.size")
    k1 = (b.stage_one_keep, "budgets.stage_one_keep")
    d = (llm.hidden_size, "llm.hidden_size")
    heads, hd = (llm.num_kv_heads, "llm.num_kv_heads"), (llm.head_dim, "llm.head_dim")
    t = (llm.dtype, "llm.dtype")

    def kv(kind, layers):
        return [(f"{kind}_{w}_{i}", t, [None, heads, None, hd]) for i in layers for w in ("key", "value")]

    vision = (
        [("pixel_values", "float32", [None, 3, s, s])],
        [("image_tokens", "float32", [None, k1, d]), ("patch_indices", "int64", [None, k1])],
    )
    prefix = (
        [("inputs_embeds", t, [None, None, d]), ("position_ids", "int64", [None, None]), ("vision_start", "int64", [None]),
         ("pad_lengths", "int64", [None]), *kv("past", range(L))],
        [("hidden_states", t, [None, None, d]), *kv("present", range(L)), ("stage_two_scores", "float32", [None, k1])],
    )
    suffix = (
        [("hidden_states", t, [None, None, d]), ("position_ids", "int64", [None, None]), ("pad_lengths", "int64", [None]), *kv("past", range(L, N))],
        [("logits", "float32", [None, (llm.vocab_size, "llm.vocab_size")]), *kv("present", range(L, N))],
    )
    return {"vision": vision, "vision_plugin": vision, "llm_prefix": prefix, "llm_suffix": suffix}


def _check_config(config) -> None:
    from nuwa_export.models.llava import check_config

    check_config(config)


def _image_size(config, requested: int | None) -> int:
    size = config.vision_config.image_size
    if requested is not None and requested != size:
        raise NuwaError(f"--image-size {requested}: this LLaVA tower takes {size} px images only")
    return size


def _grid(config, image_size: int) -> tuple[int, int]:
    vc = config.vision_config
    return (vc.image_size // vc.patch_size, vc.image_size // vc.patch_size)


def _model_class():
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration


def _parts(model, image_size: int):
    from nuwa_export.models.llava import LlavaParts

    return LlavaParts(model)


def _set_vision_dtype(model, dtype) -> None:
    model.model.vision_tower.to(dtype)
    model.model.multi_modal_projector.to(dtype)


def _image_config(path, image_size: int):
    from nuwa_export.image import ImageConfig

    return ImageConfig.from_pretrained(path, image_size)


def _build_prompt(tokenizer, text: str, image_token_id: int):
    from nuwa_export.prompt import build_prompt

    return build_prompt(tokenizer, text, image_token_id)


def _resolve_budgets(grid, num_layers, *, keep=None, k1=None, k2=None, layer=None, prune=True, keep_ratio=None, per_region=None):
    """``per_region`` is checked with the stage-one settings (:func:`_stage_one`)."""
    from nuwa_export.pruning import resolve_budgets

    n = grid[0] * grid[1]
    if keep_ratio is not None:
        if keep is not None:
            raise NuwaError("pass --keep or --keep-ratio, not both")
        if not 0 < keep_ratio <= 1:
            raise NuwaError(f"--keep-ratio must be in (0, 1], got {keep_ratio}")
        keep = max(1, round(keep_ratio * n))  # LLaVA's schedule is by average keep: 64/128/192 of 576
        if 7 * keep // 4 > n:
            raise NuwaError(f"--keep-ratio {keep_ratio} asks for keep {keep}; LLaVA's K1 = 7·keep/4 must fit in the {n} patches, "
                            f"so keep is at most {4 * n // 7} (ratio {4 * n // 7 / n:.2f})")
    return resolve_budgets(n, num_layers, keep, k1, k2, layer, prune=prune)


def _stage_one(budgets, grid, per_region=None, distance=None, percentile=None):
    from nuwa_export.pruning.spec import stage_one_spec

    return stage_one_spec(budgets, grid, per_region, distance, percentile)


def _positions(grid):
    from nuwa_export.pruning.positions import RopePositions

    return RopePositions(grid[0] * grid[1])


def _lmms_eval_prompt(expression: str) -> str:
    """lmms-eval's RefCOCO ``bbox_rec`` prompt (what the paper's LLaVA numbers were measured with)."""
    from nuwa_export.eval.tasks import BBOX_REC_PROMPT

    return BBOX_REC_PROMPT.format(expression=expression)


LLAVA = register(Family(
    name="llava",
    model_types=("llava",),
    check_config=_check_config,
    image_size=_image_size,
    grid=_grid,
    num_layers=lambda config: config.text_config.num_hidden_layers,
    model_class=_model_class,
    attn_implementation=lambda text: {"text_config": text, "vision_config": "sdpa", "": "sdpa"},  # CLIP keeps its fused attention
    parts=_parts,
    set_vision_dtype=_set_vision_dtype,
    image_config=_image_config,
    build_prompt=_build_prompt,
    grounding=Grounding(grounding.question, grounding.parse_box, grounding.to_pixels, eval_prompt=_lmms_eval_prompt),
    graph_io=graph_io,
    positions=_positions,
    resolve_budgets=_resolve_budgets,
    stage_one=_stage_one,
))
