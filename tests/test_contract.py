"""The graph contract: what the runtime allocates, what TensorRT's profiles cover, what an export's
graph files are held to, all from one description per family."""

from __future__ import annotations

import pytest

from nuwa_export import contract as ct
from nuwa_export import names as n
from nuwa_export.errors import NuwaError

X = ct.Numbers(image_size=224, stage_one_keep=49, hidden_size=128, num_kv_heads=4, head_dim=32, vocab_size=602, num_layers=4,
               stage_two_layer=2, io="float32", kv="float32", max_batch=8)


def _kv(layers, length):
    return {name: (2, 4, length, 32) for name in n.kv_names(n.PAST, layers)}


def test_output_shapes_follow_the_inputs():
    c = ct.standard(X)
    prefix = c.graphs[n.LLM_PREFIX]
    shapes = {n.INPUTS_EMBEDS: (2, 5, 128), n.POSITION_IDS: (2, 5), n.VISION_START: (2,), n.PAD_LENGTHS: (2,), **_kv(range(2), 3)}
    out = {t.name: shape for t, shape in prefix.outputs_for(shapes)}
    assert out[n.HIDDEN_STATES] == (2, 5, 128) and out["present_key_1"] == (2, 4, 8, 32) and out[n.STAGE_TWO_SCORES] == (2, 49)
    ort = c.ort_graphs[n.LLM_SUFFIX]
    shapes = {n.HIDDEN_STATES: (2, 1, 128), n.POSITION_IDS: (2, 1), n.ATTENTION_MASK: (2, 9), **_kv(range(2, 4), 16)}
    out = {t.name: shape for t, shape in ort.outputs_for(shapes)}
    assert out[n.LOGITS] == (2, 602) and out["present_value_3"] == (2, 4, 16, 32)  # the buffers' capacity
    assert ort.written_into["present_value_3"] == "past_value_3" and n.PAD_LENGTHS not in ort.input_names
    assert ct.standard(X, position_rows=3).graphs[n.LLM_SUFFIX].input(n.POSITION_IDS).dims[0].size == 3


def test_inputs_outside_the_contract_are_refused():
    g = ct.standard(X).graphs[n.LLM_SUFFIX]
    good = {n.HIDDEN_STATES: (1, 1, 128), n.POSITION_IDS: (1, 1), n.PAD_LENGTHS: (1,), **{k: (1, 4, 3, 32) for k in _kv(range(2, 4), 3)}}
    assert g.sizes(good) == {n.BATCH: 1, n.SEQ: 1, n.PAST_AXIS: 3}
    cases = [
        ({n.HIDDEN_STATES: (1, 1, 64)}, "hidden_states has shape [1, 1, 64], the export's contract [batch, seq, 128]"),
        ({n.POSITION_IDS: (1, 1, 1)}, "the export's contract has rank 2"),
        ({"past_key_3": (1, 4, 5, 32)}, "past KV tensors of different lengths [3, 5]"),
        ({n.PAD_LENGTHS: (2,)}, "batch of hidden_states and pad_lengths differ [1, 2]"),
        ({k: (9, *v[1:]) for k, v in good.items()}, "a batch of 9 is beyond this export's max_batch 8; re-export with --max-batch 9"),
    ]
    for change, match in cases:
        with pytest.raises(NuwaError, match=match.replace("[", r"\[").replace("]", r"\]")):
            g.sizes({**good, **change})
    mask = ct.standard(X).ort_graphs[n.LLM_SUFFIX]
    shapes = {n.HIDDEN_STATES: (1, 2, 128), n.POSITION_IDS: (1, 2), n.ATTENTION_MASK: (1, 9), **{k: (1, 4, 8, 32) for k in _kv(range(2, 4), 8)}}
    with pytest.raises(NuwaError, match=r"an attention_mask of \[1, 9\] over KV buffers of 8 entries for 2 new tokens"):
        mask.sizes(shapes)


def test_profiles_cover_every_dynamic_input():
    g = ct.standard(X).graphs[n.LLM_PREFIX]
    prof = g.profile({n.BATCH: (1, 2, 8), n.SEQ: (50, 60, 70), n.PAST_AXIS: (0, 0, 0)})
    assert list(prof) == g.input_names
    assert prof[n.INPUTS_EMBEDS] == [[1, 50, 128], [2, 60, 128], [8, 70, 128]] and prof["past_key_0"][2] == [8, 4, 0, 32]
    vision = ct.standard(X).graphs[n.VISION]
    assert vision.profile({n.BATCH: (1, 1, 1)}) == {n.PIXEL_VALUES: [[1, 3, 224, 224]] * 3}
    assert vision.max_batch is None  # the vision graph runs one image at a time but takes any batch


def test_per_row_inputs_are_the_batch_vectors():
    c = ct.standard(X)
    assert c.graphs[n.LLM_PREFIX].per_row == [n.VISION_START, n.PAD_LENGTHS] and c.graphs[n.LLM_SUFFIX].per_row == [n.PAD_LENGTHS]
    assert c.ort_graphs[n.LLM_PREFIX].per_row == [n.VISION_START] and c.graphs[n.VISION].per_row == []
