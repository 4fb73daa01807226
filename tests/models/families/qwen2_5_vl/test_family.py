"""Qwen2.5-VL on the family seam: the tower pass, its signals, M-RoPE positions, the stage-two
rule and budgets, each against transformers' own model or a plain loop written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nuwa_export.errors import NuwaError
from nuwa_export.image import load_image, preprocess
from nuwa_export.models.families.qwen2_5_vl.budgets import SCHEDULE as QWEN_SCHEDULE
from nuwa_export.models.families.qwen2_5_vl.budgets import (
    resolve_budgets as resolve_qwen_budgets,
)
from nuwa_export.models.families.qwen2_5_vl.budgets import (
    stage_two_layer as qwen_stage_two_layer,
)
from nuwa_export.models.families.qwen2_5_vl.parts import stage_two_attention, window_ids
from nuwa_export.models.loader import inspect_checkpoint, load
from nuwa_export.pruning import BudgetRequest
from nuwa_export.pruning.positions import MRopePositions, mrope_position_ids
from nuwa_export.runtime.runner import open_runner
from nuwa_export.sampling import SamplingConfig

#: Tiny configurations: default (MHA 4/2 GQA), MHA, a wider window, an odd grid.
CONFIGS = [
    ({}, 224),
    ({"text_kv_heads": 4, "text_layers": 3}, 280),
    ({"window_size": 112, "fullatt_block_indexes": (3,), "text_kv_heads": 1}, 224),
    ({"vision_depth": 8, "fullatt_block_indexes": (3, 7)}, 308),  # 11x11 tokens: odd sides, partial windows
]


def _loaded(qwen_factory, sizes, image_size, **kw):
    info = inspect_checkpoint(str(qwen_factory(0, **sizes)), image_size)
    return info, load(info, device="cpu", **kw)


def _hf_inputs(loaded, prompt, image):
    p = loaded.parts
    h, w = p.grid
    px = torch.from_numpy(preprocess(image, loaded.image_config))[None]
    ids = torch.tensor([list(prompt.before) + [loaded.image_token_id] * (h * w) + list(prompt.after)])
    return dict(
        input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=p.patchify(px)[0],
        image_grid_thw=torch.tensor([[1, 2 * h, 2 * w]]), mm_token_type_ids=(ids == loaded.image_token_id).int(),
    )


@pytest.mark.parametrize("sizes,image_size", CONFIGS)
def test_unpruned_reference_generates_what_transformers_generates(qwen_factory, sizes, image_size):
    info, loaded = _loaded(qwen_factory, sizes, image_size)
    ref = open_runner(loaded, budgets=BudgetRequest(prune=False))
    image = load_image(info.path / "example.png")
    ours = ref.generate(image, "What is in the picture?", SamplingConfig(max_new_tokens=24))
    with torch.no_grad():
        out = loaded.model.generate(**_hf_inputs(loaded, ours.prompt, image), max_new_tokens=24, do_sample=False)
    hf = out[0, len(ours.prompt.before) + info.num_patches + len(ours.prompt.after) :].tolist()
    assert ours.generated_ids == hf
    assert len(hf) == 24


def test_patchify_is_the_processors_layout(qwen_dir):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    from nuwa_export.models.families.qwen2_5_vl.demo import processor_config

    info = inspect_checkpoint(str(qwen_dir), 280)
    loaded = load(info, device="cpu")
    rng = np.random.default_rng(0)
    from PIL import Image

    image = Image.fromarray((rng.random((280, 280, 3)) * 255).astype(np.uint8))
    settings = {k: v for k, v in processor_config().items() if k not in ("image_processor_type", "processor_class")}
    hf = Qwen2VLImageProcessorPil(**settings)(images=[image], return_tensors="pt")
    ours = loaded.parts.patchify(torch.from_numpy(preprocess(image, loaded.image_config))[None])[0]
    assert hf["image_grid_thw"].tolist() == [[1, 20, 20]]
    torch.testing.assert_close(ours, hf["pixel_values"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("sizes,image_size", [CONFIGS[0], CONFIGS[3]])
def test_tower_signals_equal_a_plain_computation_on_transformers_window_ordered_pass(qwen_factory, sizes, image_size):
    """Features, similarity features and salience in raster order, from hooks on transformers' own
    window-ordered tower pass and a per-head loop here."""
    info, loaded = _loaded(qwen_factory, sizes, image_size)
    p, visual = loaded.parts, loaded.model.model.visual
    torch.manual_seed(1)
    px = torch.randn(1, 3, image_size, image_size)
    ours = p.vision_signals(px)

    seen = {}
    hooks = [visual.blocks[-1].register_forward_pre_hook(lambda m, a, k: seen.update(last_in=a[0], pe=k["position_embeddings"]), with_kwargs=True)]
    outs = []
    hooks += [b.register_forward_hook(lambda m, a, o: outs.append(o)) for b in visual.blocks]
    h, w = p.grid
    with torch.no_grad():
        pooled = visual(p.patchify(px)[0], grid_thw=torch.tensor([[1, 2 * h, 2 * w]])).pooler_output
    for hook in hooks:
        hook.remove()

    # the window order transformers used: merged cells sorted by (window, row, col)
    cells = torch.arange(h * w)
    win = window_ids(p.grid, p.window_cells)[::4]
    order = sorted(cells.tolist(), key=lambda c: (int(win[c]), c // w, c % w))
    back = torch.argsort(torch.tensor(order))

    torch.testing.assert_close(ours.features[0], pooled, atol=1e-5, rtol=1e-5)
    first, last = p.sim_blocks
    mean = torch.stack(outs[first : last + 1]).mean(dim=0)
    sim = visual.merger(mean)[back]
    torch.testing.assert_close(ours.sim[0], sim, atol=1e-5, rtol=1e-5)

    # salience: every head's softmax over all patches in the last block, summed over queries
    blk = visual.blocks[-1]
    x = blk.norm1(seen["last_in"])
    n4 = x.shape[0]
    qkv = blk.attn.qkv(x).reshape(n4, 3, blk.attn.num_heads, -1)
    cos, sin = seen["pe"]
    received = torch.zeros(n4)
    for head in range(blk.attn.num_heads):
        q, k = qkv[:, 0, head], qkv[:, 1, head]
        rot = lambda t: t * cos + torch.cat([-t[:, t.shape[1] // 2 :], t[:, : t.shape[1] // 2]], dim=1) * sin
        probs = ((rot(q) @ rot(k).T) * blk.attn.scaling).softmax(dim=-1)
        received += probs.sum(dim=0) / blk.attn.num_heads
    per_cell = received.reshape(-1, 4).mean(dim=1)[back]
    torch.testing.assert_close(ours.cls_attention[0], per_cell.detach(), atol=1e-5, rtol=1e-5)


def test_mrope_positions_are_transformers_rope_index_and_kept_tokens_keep_theirs(qwen_dir):
    info = inspect_checkpoint(str(qwen_dir), 308)
    loaded = load(info, device="cpu")
    h, w = info.grid
    b, c = 7, 5
    ids = torch.tensor([[1] * b + [loaded.image_token_id] * (h * w) + [2] * c])
    want, delta = loaded.model.model.get_rope_index(
        ids, mm_token_type_ids=(ids == loaded.image_token_id).int(), image_grid_thw=torch.tensor([[1, 2 * h, 2 * w]]),
    )
    full = mrope_position_ids(b, torch.arange(h * w)[None], c, (h, w))
    assert full.tolist() == want.tolist()
    kept = torch.tensor([[0, 5, 12, 120]])
    pruned = mrope_position_ids(b, kept, c, (h, w))
    columns = torch.cat([torch.arange(b), b + kept[0], b + h * w + torch.arange(c)])
    assert pruned.tolist() == full[:, :, columns].tolist()
    scheme = MRopePositions((h, w))
    assert scheme.decode(b, c, 0) == b + max(h, w) + c == int(full.max()) + 1
    assert scheme.decode(b, c, 0) - ids.shape[1] == int(delta)  # transformers' rope_deltas


def test_stage_two_rule_is_last_three_queries_mean_then_head_max_causal(qwen_dir):
    """A plain per-head, per-query loop: softmax over every key the query may see, mean over the
    last 3 prompt positions, max over heads."""
    info = inspect_checkpoint(str(qwen_dir), 224)
    loaded = load(info, device="cpu")
    p = loaded.parts
    layer, rotary = p.lm.layers[1], p.lm.rotary_emb
    torch.manual_seed(0)
    t = 11
    x = torch.randn(2, t, p.config.text_config.hidden_size)
    pos = torch.arange(t).expand(3, 2, -1).clone()
    pos[1:, :, 3:7] += torch.tensor([[0, 0, 1, 1], [0, 1, 0, 1]])[:, None, :]  # a 2x2 image's (h, w)
    from nuwa_export.models.decoder import KVCache

    cache = KVCache()
    p.run_layers(x, pos, cache, 1, 2)
    pad = torch.tensor([0, 2])
    ours = stage_two_attention(layer, rotary, x, pos, cache.keys[1], pad)

    attn = layer.self_attn
    h_in = layer.input_layernorm(x)
    q_all = attn.q_proj(h_in).view(2, t, -1, attn.head_dim).transpose(1, 2)
    cos, sin = rotary(h_in, position_ids=pos)
    half = attn.head_dim // 2
    q_all = q_all * cos[:, None] + torch.cat([-q_all[..., half:], q_all[..., :half]], dim=-1) * sin[:, None]
    keys = cache.keys[1].repeat_interleave(attn.num_key_value_groups, dim=1)
    want = torch.zeros(2, t)
    for row in range(2):
        per_head = []
        for head in range(keys.shape[1]):
            acc = torch.zeros(t)
            for query in range(t - 3, t):
                scores = torch.full((t,), float("-inf"))
                for key in range(int(pad[row]), query + 1):
                    scores[key] = (q_all[row, head, query] @ keys[row, head, key]) * attn.scaling
                acc += scores.softmax(dim=0) / 3
            per_head.append(acc)
        want[row] = torch.stack(per_head).amax(dim=0)
    torch.testing.assert_close(ours, want.detach(), atol=1e-6, rtol=1e-5)
    assert float(ours[1, :2].detach().abs().max()) == 0.0  # padding gets nothing


def test_budgets_follow_the_papers_schedule():
    grid, layers = (16, 16), 28
    for ratio, (s1, s2, n) in QWEN_SCHEDULE.items():
        b = resolve_qwen_budgets(grid, layers, BudgetRequest(keep_ratio=ratio))
        assert (b.k1, b.k2, b.layer, b.per_region, b.keep_ratio) == (math.ceil(256 * s1), max(1, int(math.ceil(256 * s1) * s2)), 15, n, ratio)
        assert b.layer == qwen_stage_two_layer(28) == 15
        assert b.keep == round((15 * b.k1 + 13 * b.k2) / 28)
    # the authors' float64 products: 400 x 0.85 = 340 anchors, 340 x 0.7 = 237.99.. -> 237
    b = resolve_qwen_budgets((20, 20), 28, BudgetRequest(keep_ratio=0.75))
    assert (b.k1, b.k2) == (340, 237)
    # an average keep picks the nearest schedule and the smallest K1 that reaches it
    b = resolve_qwen_budgets(grid, layers, BudgetRequest(keep=64))
    assert b.keep_ratio == 0.25 and b.average_keep >= 64 and resolve_qwen_budgets(grid, layers, BudgetRequest(keep=64, k1=b.k1 - 1)).average_keep < 64
    # K1 never exceeds the real candidates of an odd grid (3 per 2x2 region, fewer at the edges)
    b = resolve_qwen_budgets((3, 3), 4, BudgetRequest(keep_ratio=0.75))
    assert b.k1 == min(math.ceil(9 * 0.85), 4 + 2 + 2 + 1)
    with pytest.raises(NuwaError, match="--keep-ratio must be one of 0.25, 0.5, 0.75"):
        resolve_qwen_budgets(grid, layers, BudgetRequest(keep_ratio=0.3))
    with pytest.raises(NuwaError, match="--keep or --keep-ratio, not both"):
        resolve_qwen_budgets(grid, layers, BudgetRequest(keep_ratio=0.5, keep=64))
    off = resolve_qwen_budgets(grid, layers, BudgetRequest(prune=False))
    assert (off.k1, off.k2, off.prune) == (256, 256, False)


def test_image_size_is_checked_against_the_cell(qwen_dir):
    with pytest.raises(NuwaError, match="--image-size must be a multiple of 28 px of at least 56, got 300"):
        inspect_checkpoint(str(qwen_dir), 300)
    assert inspect_checkpoint(str(qwen_dir)).grid == (16, 16)  # 448 px by default


@pytest.mark.parametrize("ratio", sorted(QWEN_SCHEDULE))
def test_pruned_reference_runs_at_each_keep_ratio_with_spatial_positions(qwen_dir, ratio):
    info = inspect_checkpoint(str(qwen_dir), 224)
    loaded = load(info, device="cpu")
    ref = open_runner(loaded, budgets=BudgetRequest(keep_ratio=ratio))
    b = ref.budgets
    assert (ref.spec.self_weight, ref.spec.percentile, ref.spec.per_region) == (False, 0.1, QWEN_SCHEDULE[ratio][2])
    assert ref.spec.distance == pytest.approx((0.8 * math.sqrt(2 * 7**2)) ** 2)
    trace = {}
    r = ref.generate(info.path / "example.png", "Where is the car?", SamplingConfig(max_new_tokens=6), trace=trace)
    assert len(r.stage_one_indices) == b.k1 and len(r.stage_two_indices) == b.k2
    assert r.stage_one_indices == sorted(r.stage_one_indices) and set(r.stage_two_indices) <= set(r.stage_one_indices)
    assert len(r.generated_ids) == 6


def test_grounding_reads_qwens_json_and_maps_pixels_back():
    from nuwa_export.image import ImageConfig
    from nuwa_export.models.families import family_named

    g = family_named("qwen2_5_vl").grounding
    assert g.question("the red car.") == 'Locate "the red car" in the image and output its bbox coordinates in JSON format.'
    fenced = '```json\n[\n  {"bbox_2d": [30, 150, 130, 205], "label": "red car"}\n]\n```'
    assert g.parse(fenced) == (30.0, 150.0, 130.0, 205.0)
    assert g.parse('{"bbox_2d": [130, 205, 30, 150]}') == (30.0, 150.0, 130.0, 205.0)  # corners ordered
    assert g.parse("The car is at [10, 20, 30, 40].") == (10.0, 20.0, 30.0, 40.0)
    assert g.parse('[{"label": "car"}]') is None and g.parse("no box here") is None
    assert g.parse('{"bbox_2d": [1, 2, 3]} then [5, 6, 7, 8]') == (5.0, 6.0, 7.0, 8.0)
    # a 320x240 picture padded to 320x320 (40 px on top), shown at 448x448: pixels scale by 320/448
    cfg = ImageConfig(size=448)
    x1, y1, x2, y2 = g.to_pixels((42.0, 266.0, 182.0, 343.0), 320, 240, cfg)
    assert (x1, y1, x2, y2) == pytest.approx((30.0, 150.0, 130.0, 205.0))


def test_prompt_is_the_chat_template_split_at_one_image_token(qwen_dir):
    from transformers import AutoTokenizer

    from nuwa_export.models.families import family_named

    tok = AutoTokenizer.from_pretrained(qwen_dir)
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    prompt = family_named("qwen2_5_vl").build_prompt(tok, "What is in the picture?", image_id)
    text = tok.decode(prompt.before) + "<IMG>" + tok.decode(prompt.after)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|><IMG><|vision_end|>"
        "What is in the picture?<|im_end|>\n<|im_start|>assistant\n"
    )
    with pytest.raises(NuwaError, match="must not contain <\\|image_pad\\|>"):
        family_named("qwen2_5_vl").build_prompt(tok, "look <|image_pad|>", image_id)


def test_settings_that_cannot_be_met_are_refused():
    from nuwa_export.models.families import family_named
    from nuwa_export.models.families.qwen2_5_vl.budgets import (
        stage_one_spec as qwen_spec,
    )
    from nuwa_export.pruning.stage_one import real_candidates

    b = resolve_qwen_budgets((16, 16), 28, BudgetRequest(keep_ratio=0.5))
    with pytest.raises(NuwaError, match="--per-region must be between 1 and 4, got 0"):
        qwen_spec(b, (16, 16), BudgetRequest(per_region=0))
    with pytest.raises(NuwaError, match="--keep 256 cannot be reached: at most 220 "):
        resolve_qwen_budgets((16, 16), 28, BudgetRequest(keep=256))
    # a user's --per-region sets the candidates K1 is clipped to (17x17 at 0.75: ceil(289·0.85) = 246 > 225)
    clipped = resolve_qwen_budgets((17, 17), 28, BudgetRequest(keep_ratio=0.75, per_region=3))
    assert clipped.k1 == real_candidates((17, 17), 3) == 225 and clipped.per_region == 3
    llava = family_named("llava")
    for ratio in (-1.0, 0.0, 2.0):
        with pytest.raises(NuwaError, match=r"--keep-ratio must be in \(0, 1\]"):
            llava.resolve_budgets((24, 24), 32, BudgetRequest(keep_ratio=ratio))
    with pytest.raises(NuwaError, match="K1 = 7·keep/4 must fit in the 576 patches, so keep is at most 329"):
        llava.resolve_budgets((24, 24), 32, BudgetRequest(keep_ratio=0.75))
    assert llava.resolve_budgets((24, 24), 32, BudgetRequest(keep_ratio=0.25)).keep == 144


def test_image_size_has_an_upper_bound(qwen_dir):
    with pytest.raises(NuwaError, match="--image-size 1372 is more than 1344 px"):
        inspect_checkpoint(str(qwen_dir), 1372)
    assert inspect_checkpoint(str(qwen_dir), 1344).grid == (48, 48)


def test_eval_plans_qwen_checkpoints_by_keep_ratio_and_image_size(qwen_dir):
    from nuwa_export.eval import runner
    from nuwa_export.tools.eval import parser as eval_parser

    args = eval_parser().parse_args(["refcoco", str(qwen_dir), "--data", "x.json", "--keep-ratio", "0.25", "0.75", "--image-size", "224"])
    plan = runner.plan(args)
    assert plan.family == "qwen2_5_vl" and plan.image_config.size == 224
    assert [r.budgets["keep_ratio"] for r in plan.runs] == [0.25, 0.75]
    assert plan.baseline.budgets["num_patches"] == 64  # the unpruned run at the same 224 px
    args = eval_parser().parse_args(["refcoco", str(qwen_dir), "--data", "x.json", "--keep-ratio", "0.5", "--keep", "20"])
    with pytest.raises(NuwaError, match="--keep or --keep-ratio, not both"):
        runner.plan(args)


@pytest.mark.parametrize("edit,match", [
    (lambda c: setattr(c.vision_config, "spatial_merge_size", 3), "spatial_merge_size 3 is not supported"),
    (lambda c: setattr(c.vision_config, "fullatt_block_indexes", [1, 2]), "the last vision block must be a full-attention block"),
    (lambda c: (setattr(c.vision_config, "depth", 3), setattr(c.vision_config, "fullatt_block_indexes", [2])), "at least 4 are needed"),
    (lambda c: setattr(c.vision_config, "patch_size", 0), "vision_config.patch_size must be a positive integer"),
    (lambda c: setattr(c.text_config, "num_hidden_layers", 1), "at least 2 are needed to split it"),
    (lambda c: setattr(c.text_config, "use_sliding_window", True), "sliding-window attention in the LLM is not supported"),
    (lambda c: setattr(c.vision_config, "out_hidden_size", 64), "out_hidden_size must equal the LLM's hidden_size"),
])
def test_checkpoints_the_code_was_not_written_for_are_refused(qwen_dir, edit, match):
    from transformers import AutoConfig

    from nuwa_export.models.families.qwen2_5_vl.parts import check_config

    config = AutoConfig.from_pretrained(qwen_dir)
    check_config(config)
    edit(config)
    with pytest.raises(NuwaError, match=match):
        check_config(config)


def test_a_llava_tower_takes_its_own_image_size_only(demo_dir):
    assert inspect_checkpoint(str(demo_dir), 224).image_size == 224
    with pytest.raises(NuwaError, match="--image-size 448: this LLaVA tower takes 224 px images only"):
        inspect_checkpoint(str(demo_dir), 448)


def test_a_chat_prompt_needs_a_template_and_one_image_slot(qwen_dir):
    from transformers import AutoTokenizer

    from nuwa_export.prompt import build_chat_prompt

    tok = AutoTokenizer.from_pretrained(qwen_dir)
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    tok.chat_template = "{% for m in messages %}{{ m['content'][1]['text'] }}{% endfor %}"  # drops the image
    with pytest.raises(NuwaError, match="the chat template has 0 image tokens, expected 1"):
        build_chat_prompt(tok, "hi", image_id, "<|image_pad|>")
    tok.chat_template = None
    with pytest.raises(NuwaError, match="has no chat template"):
        build_chat_prompt(tok, "hi", image_id, "<|image_pad|>")
