"""The PyTorch reference: equal to HF generate without pruning; stages and positions as specified."""

from __future__ import annotations

import pytest
import torch

from nuwa_export import generation
from nuwa_export.models.families.llava import build_prompt
from nuwa_export.models.loader import load
from nuwa_export.pruning import BudgetRequest, position_ids, stage_one, stage_two
from nuwa_export.runtime.runner import open_runner
from nuwa_export.sampling import SamplingConfig
from tests.helpers import SMALL


def _reference(loaded, prune=True, **kw):
    return open_runner(loaded, budgets=BudgetRequest(prune=prune, **kw))


def _prefill(ref, vis, prompt):
    """The generation core's prefill of one prompt on the reference's stages → (Prefill, Layout)."""
    stages = ref.stages()
    layout = generation.Layout(prompt, ref.plan)
    return generation.prefill(stages, generation.Batch((layout,)), vis.tokens, vis.indices, stages.clock()), layout


def _hf_generate(loaded, ref, image, prompt, n):
    pr = build_prompt(loaded.tokenizer, prompt, loaded.image_token_id)
    ids = torch.tensor([[*pr.before, *[pr.image_token_id] * ref.parts.num_patches, *pr.after]])
    out = loaded.model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=ref.pixel_values(image),
        max_new_tokens=n, do_sample=False,
    )
    return out[0, ids.shape[1] :].tolist()


CASES = [
    (0, {}, "What is in the picture?"),
    (1, {**SMALL, "text_kv_heads": 2}, "Where is the red car?"),  # grouped-query attention
    (2, {**SMALL, "text_layers": 6, "vision_layers": 5}, "How many people are in the image?"),
]


@pytest.mark.parametrize("seed,sizes,prompt", CASES)
def test_no_prune_equals_hf_generate(checkpoint_factory, seed, sizes, prompt):
    loaded = load(str(checkpoint_factory(seed, **sizes)), device="cpu")
    ref = _reference(loaded, prune=False)
    image = loaded.path / "example.png"
    res = ref.generate(image, prompt, SamplingConfig(max_new_tokens=24))
    assert res.generated_ids == _hf_generate(loaded, ref, image, prompt, 24)
    assert res.stage_two_indices is None and res.stage_one_indices == list(range(ref.parts.num_patches))


def test_vision_signals_match_eager_attention_maps(demo_dir, loaded_demo):
    """The CLS row computed alone equals the row of HF's full eager attention map."""
    from transformers import LlavaForConditionalGeneration

    eager = LlavaForConditionalGeneration.from_pretrained(demo_dir, attn_implementation="eager").eval()
    ref = _reference(loaded_demo)
    px = ref.pixel_values(demo_dir / "example.png")
    sig = loaded_demo.parts.vision_signals(px)
    out = eager.model.vision_tower(px, output_hidden_states=True, output_attentions=True)
    f = loaded_demo.parts.feature_index
    torch.testing.assert_close(sig.cls_attention, out.attentions[f - 1][:, :, 0, 1:].sum(1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(sig.features, out.hidden_states[-2][:, 1:], atol=1e-6, rtol=1e-5)
    n_v = len(out.hidden_states) - 1
    want_sim = torch.stack(out.hidden_states[-(n_v - (2 * n_v + 2) // 3 + 1) :]).mean(0)[:, 1:]
    torch.testing.assert_close(sig.sim, want_sim, atol=1e-6, rtol=1e-5)


def test_pruned_prefill_as_specified(demo_dir, loaded_demo):
    """Stage one on the tower's signals, spatial positions, stage two from layer L-1's last row."""
    from transformers import LlavaForConditionalGeneration

    ref = _reference(loaded_demo)
    b = ref.budgets
    parts = loaded_demo.parts
    px = ref.pixel_values(demo_dir / "example.png")
    prompt = build_prompt(loaded_demo.tokenizer, "Where is the person?", loaded_demo.image_token_id)
    vis = ref.vision(px)
    sig = parts.vision_signals(px)
    merged, idx = stage_one(sig.features, sig.sim, sig.cls_attention, parts.grid, b.k1)
    assert torch.equal(vis.indices, idx)
    torch.testing.assert_close(vis.tokens, parts.projector(merged))

    pre, layout = _prefill(ref, vis, prompt)
    nb, nc = len(prompt.before), len(prompt.after)
    for layer in range(b.num_layers):
        want = nb + (b.k1 if layer < b.layer else b.k2) + nc
        group = pre.kv.prefix if layer < b.layer else pre.kv.suffix
        assert group.length(layer) == want, layer  # two KV groups
    assert layout.decode_position(0) == nb + b.num_patches + nc

    # stage-two scores: the last row of HF's eager attention map at layer L-1, head mean
    eager = LlavaForConditionalGeneration.from_pretrained(demo_dir, attn_implementation="eager").eval()
    embeds = torch.cat([parts.embed(torch.tensor([prompt.before])), vis.tokens, parts.embed(torch.tensor([prompt.after]))], 1)
    pos = position_ids(nb, vis.indices, nc, b.num_patches)
    out = eager.model.language_model(inputs_embeds=embeds, position_ids=pos, output_attentions=True)
    scores = out.attentions[b.layer - 1][:, :, -1, nb : nb + b.k1].mean(1)
    assert torch.equal(pre.stage_two, stage_two(scores, b.k2))


def test_stage_two_keeping_everything_equals_one_unsplit_pass(loaded_demo, demo_dir):
    """With K2 = K1 the split at L must not change the logits of the K1-token sequence."""
    parts = loaded_demo.parts
    ref = _reference(loaded_demo, keep=28, k2=49, layer=3)
    prompt = build_prompt(loaded_demo.tokenizer, "What is in the picture?", loaded_demo.image_token_id)
    vis = ref.vision(ref.pixel_values(demo_dir / "example.png"))
    pre, _ = _prefill(ref, vis, prompt)
    nb, nc = len(prompt.before), len(prompt.after)
    embeds = torch.cat([parts.embed(torch.tensor([prompt.before])), vis.tokens, parts.embed(torch.tensor([prompt.after]))], 1)
    pos = position_ids(nb, vis.indices, nc, ref.budgets.num_patches)
    with torch.inference_mode():
        hidden = loaded_demo.model.model.language_model(inputs_embeds=embeds, position_ids=pos).last_hidden_state
        want = loaded_demo.model.lm_head(hidden[:, -1])
    torch.testing.assert_close(pre.logits, want, atol=1e-5, rtol=1e-5)


def test_generation_with_pruning_runs_and_reports(loaded_demo, demo_dir):
    ref = _reference(loaded_demo)
    res = ref.generate(demo_dir / "example.png", "Where is the car?", SamplingConfig(max_new_tokens=12, stop_at_eos=False))
    assert len(res.generated_ids) == 12
    assert len(res.stage_one_indices) == ref.budgets.k1 and len(res.stage_two_indices) == ref.budgets.k2
    assert set(res.stage_two_indices) <= set(res.stage_one_indices)
    ms = res.timings_ms
    prefill = ("preprocess", "vision", "stage_one", "projector", "prefix", "stage_two", "suffix")
    assert all(ms[stage] > 0 for stage in (*prefill, "decode")), ms  # every stage lapped, in real time
    assert ms["time_to_first_token"] == pytest.approx(sum(ms[stage] for stage in prefill))  # taken after the suffix
    assert ms["total"] == pytest.approx(ms["time_to_first_token"] + ms["decode"])
    assert ms["decode_per_token"] == pytest.approx(ms["decode"] / 11)  # 12 tokens: 11 decode steps
    # two KV groups: the bytes held match the per-group lengths
    t = 12 - 1
    pr, b = res.prompt, ref.budgets
    text = len(pr.before) + len(pr.after) + t
    per_entry = 2 * 4 * loaded_demo.model.config.text_config.hidden_size  # K and V, fp32, kv heads == heads
    assert res.kv_cache_bytes == per_entry * (b.layer * (text + b.k1) + (b.num_layers - b.layer) * (text + b.k2))


def test_sampling_is_seeded(loaded_demo, demo_dir):
    ref = _reference(loaded_demo)
    image = demo_dir / "example.png"
    run = lambda **kw: ref.generate(image, "Describe it.", SamplingConfig(max_new_tokens=16, stop_at_eos=False, **kw)).generated_ids
    hot = dict(temperature=5.0, top_p=1.0)
    assert run(seed=1, **hot) == run(seed=1, **hot)
    assert run(seed=1, **hot) != run(seed=2, **hot)
    assert run(temperature=1.0, top_p=1e-6, seed=3) == run()  # top-p keeps only the argmax


def test_model_instances_are_untouched(demo_dir, loaded_demo):
    """Nothing is patched: module state and classes are the same before and after, and a
    second instance still generates exactly what the first does through HF."""
    twin = load(str(demo_dir), device="cpu")

    def snapshot(model):
        return {
            name: (type(m), dict(vars(m)).keys() - {"_forward_hooks", "_forward_pre_hooks"}, tuple(m._forward_hooks), tuple(m._forward_pre_hooks))
            for name, m in model.named_modules()
        }

    before = snapshot(loaded_demo.model)
    weights = {k: v.clone() for k, v in loaded_demo.model.state_dict().items()}
    classes = {c: dict(vars(c)) for c in {type(m) for m in loaded_demo.model.modules()}}
    ref = _reference(loaded_demo)
    ref.generate(demo_dir / "example.png", "What is in the picture?", SamplingConfig(max_new_tokens=4))
    assert snapshot(loaded_demo.model) == before
    assert all(torch.equal(v, weights[k]) for k, v in loaded_demo.model.state_dict().items())
    assert {c: dict(vars(c)) for c in classes} == classes
    off = _reference(twin, prune=False)
    image = demo_dir / "example.png"
    assert _hf_generate(loaded_demo, off, image, "Hi", 8) == _hf_generate(twin, off, image, "Hi", 8)
