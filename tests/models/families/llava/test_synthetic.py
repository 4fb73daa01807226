import hashlib
import json
import math

import pytest
import torch
from safetensors import safe_open

from nuwa_export.models.families.llava import demo, synthetic
from nuwa_export.models.loader import inspect_checkpoint, load

SHARD_BYTES = 300_000  # the default sizes are 2.2 MB in fp16: 8 shards
VOCAB = 640


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _shards(path):
    return sorted(path.glob("model-*-of-*.safetensors"))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return synthetic.build_sharded(tmp_path_factory.mktemp("syn") / "model", shard_bytes=SHARD_BYTES, llm_vocab_size=VOCAB)


@pytest.fixture(scope="module")
def loaded(ckpt):
    return load(str(ckpt), dtype="float16", device="cpu")


def test_loads_with_no_missing_or_unexpected_keys(ckpt, loaded):
    from transformers import LlavaForConditionalGeneration

    _, info = LlavaForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float16, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    with safe_open(_shards(ckpt)[0], "pt") as f:
        assert f.metadata() == {"format": "pt"}
    written = {k for s in _shards(ckpt) for k in safe_open(s, "pt").keys()}
    assert len(written) == len(loaded.model.state_dict())
    assert loaded.parts.num_layers == demo.DEFAULT_SIZES["text_layers"]


def test_names_are_what_save_pretrained_writes(ckpt, demo_dir):
    unpadded = synthetic.build_sharded(ckpt.parent / "unpadded", shard_bytes=SHARD_BYTES)
    index = json.loads((unpadded / synthetic.INDEX).read_text())["weight_map"]
    with safe_open(demo_dir / "model.safetensors", "pt") as f:
        expected = {k: f.get_slice(k).get_shape() for k in f.keys()}
    got = {}
    for s in _shards(unpadded):
        with safe_open(s, "pt") as f:
            got.update({k: f.get_slice(k).get_shape() for k in f.keys()})
    assert set(index) == set(expected)
    assert got == expected


def test_weights_follow_hf_init(loaded):
    std = demo.DEFAULT_SIZES["initializer_range"]
    params = dict(loaded.model.named_parameters())
    assert all(p.dtype == torch.float16 and torch.isfinite(p).all() for p in params.values())
    norms = [n for n in params if "norm" in n and n.endswith("weight")]
    biases = [n for n in params if n.endswith("bias")]
    assert len(norms) > 10 and len(biases) > 10
    assert all(torch.equal(params[n], torch.ones_like(params[n])) for n in norms)
    assert all(torch.equal(params[n], torch.zeros_like(params[n])) for n in biases)
    normal = [n for n in params if n not in norms and n not in biases]
    assert any("class_embedding" in n for n in normal) and any("patch_embedding" in n for n in normal)
    large = [n for n in normal if params[n].numel() >= 16384]  # enough samples for a 5 % estimate
    assert len(large) > 20 and any("embed_tokens" in n for n in large) and any("vision_tower" in n for n in large), large
    for n in large:
        w = params[n].float()
        assert w.std().item() == pytest.approx(std, rel=0.05), n
        assert abs(w.mean().item()) < 0.05 * std, n
    assert not torch.equal(params["lm_head.weight"][:8], loaded.model.get_input_embeddings().weight[:8])


def test_padded_vocabulary(ckpt, loaded):
    m, tok = loaded.model, loaded.tokenizer
    assert len(tok) == demo.DEFAULT_SIZES["vocab_size"] + 2 < VOCAB
    assert m.config.text_config.vocab_size == VOCAB
    assert m.lm_head.weight.shape == (VOCAB, demo.DEFAULT_SIZES["text_hidden_size"])
    assert m.get_input_embeddings().weight.shape == (VOCAB, demo.DEFAULT_SIZES["text_hidden_size"])
    assert loaded.image_token_id == tok.convert_tokens_to_ids("<image>") < len(tok)
    assert max(tok("a red car")["input_ids"]) < len(tok)
    gen = json.loads((ckpt / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert json.loads((ckpt / "config.json").read_text())["dtype"] == "float16"


def test_index_lists_every_shard_and_tensor(ckpt):
    index = json.loads((ckpt / synthetic.INDEX).read_text())
    shards = _shards(ckpt)
    assert len(shards) >= 2 and not (ckpt / "model.safetensors").exists()
    assert {s.name for s in shards} == set(index["weight_map"].values())
    assert all(s.name.endswith(f"-of-{len(shards):05d}.safetensors") for s in shards)
    total = 0
    for s in shards:
        with safe_open(s, "pt") as f:
            keys = set(f.keys())
            assert keys == {k for k, v in index["weight_map"].items() if v == s.name}
            sizes = [f.get_tensor(k).nbytes for k in keys]
        assert sum(sizes) <= SHARD_BYTES or len(keys) == 1, s.name
        total += sum(sizes)
    assert index["metadata"]["total_size"] == total


def test_deterministic_per_seed(ckpt, tmp_path):
    again = synthetic.build_sharded(tmp_path / "again", shard_bytes=SHARD_BYTES, llm_vocab_size=VOCAB)
    assert [_sha(s) for s in _shards(again)] == [_sha(s) for s in _shards(ckpt)]
    assert _sha(again / synthetic.INDEX) == _sha(ckpt / synthetic.INDEX)
    other = synthetic.build_sharded(tmp_path / "other", seed=1, shard_bytes=SHARD_BYTES, llm_vocab_size=VOCAB)
    assert len(_shards(other)) == len(_shards(ckpt))
    assert any(_sha(a) != _sha(b) for a, b in zip(_shards(other), _shards(ckpt)))
    for a, b in zip(_shards(other), _shards(ckpt)):
        with safe_open(a, "pt") as fa, safe_open(b, "pt") as fb:
            for k in fa.keys():
                same = k.endswith("bias") or ("norm" in k and k.endswith("weight"))
                assert torch.equal(fa.get_tensor(k), fb.get_tensor(k)) == same, k


def test_inspect_checkpoint(ckpt):
    info = inspect_checkpoint(str(ckpt))
    side = demo.DEFAULT_SIZES["image_size"] // demo.DEFAULT_SIZES["patch_size"]
    assert info.grid == (side, side) and info.num_layers == demo.DEFAULT_SIZES["text_layers"]
    assert info.config.text_config.vocab_size == VOCAB


def test_shard_plan_gives_oversized_tensors_their_own_shard():
    plan = [("a", (10,), "normal"), ("b", (100,), "normal"), ("c", (3,), "ones"), ("d", (4,), "zeros")]
    assert synthetic.shard_plan(plan, 2, 40) == [[0], [1], [2, 3]]
    assert synthetic.shard_plan(plan, 2, 10**6) == [[0, 1, 2, 3]]


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        synthetic.build_sharded(tmp_path / "x", llm_vocab_size=100)
    with pytest.raises(TypeError, match="unknown sizes"):
        synthetic.build_sharded(tmp_path / "x", bogus=1)
    with pytest.raises(ValueError, match="dtype"):
        synthetic.build_sharded(tmp_path / "x", dtype="int8")
    assert not (tmp_path / "x").exists()


def _hand_count() -> int:
    """LLaVA-1.5-7B by hand: Llama-7B, CLIP ViT-L/14-336 and the 2-layer projector."""
    h, v, d, vi = 4096, 32064, 1024, 4096
    llama = 6_738_415_616 + 2 * (v - 32000) * h  # published Llama-7B count at vocab 32000; embeddings and lm_head grow
    tokens = (336 // 14) ** 2 + 1
    clip_layer = 4 * (d * d + d) + (d * vi + vi) + (vi * d + d) + 2 * 2 * d
    clip = d + 3 * 14 * 14 * d + tokens * d + 2 * d + 24 * clip_layer + 2 * d  # CLS, patch conv, positions, pre/post LN
    projector = (d * h + h) + (h * h + h)
    return llama + clip + projector


def test_llava_7b_sizes_give_the_known_parameter_count():
    from transformers import LlavaForConditionalGeneration

    _, config = synthetic.build_config(synthetic.LLAVA_7B_SIZES, synthetic.LLAVA_7B_VOCAB)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    count = sum(p.numel() for p in model.parameters())
    assert count == _hand_count() == 7_063_427_072
    plan = synthetic.tensor_plan(config)
    assert sum(math.prod(shape) for _, shape, _ in plan) == count
    assert config.vision_config.image_size == 336 and config.image_seq_length == 576
    assert config.text_config.num_hidden_layers == 32 and config.text_config.intermediate_size == 11008
