"""``--model demo-qwen2.5-vl``: a Qwen2.5-VL-shaped model small enough to run in seconds on a CPU.

Built locally with transformers' own Qwen2.5-VL classes and seeded random weights, like the LLaVA
demo (:mod:`nuwa_export.models.demo`): window-attention and full-attention vision blocks, the 2×2
patch merger, an M-RoPE Qwen2 decoder with grouped KV heads, a byte-level BPE tokenizer with
Qwen's special tokens and chat template, and a ``Qwen2VLImageProcessorPil`` processor config.
Tests build variants with ``build(path, seed, **sizes)``.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from nuwa_export.image import CLIP_MEAN, CLIP_STD
from nuwa_export.models.demo import cached, write_checkpoint

#: Bump when the demo's contents change, so caches rebuild.
DEMO_VERSION = 1
NAME = "demo-qwen2.5-vl"

DEFAULT_SIZES = {
    "patch_size": 14,
    "window_size": 56,  # 2x2 merged cells per window: a 224 px image has 4x4 windows of 8x8 cells
    "vision_hidden_size": 64,
    "vision_depth": 4,
    "fullatt_block_indexes": (1, 3),
    "vision_heads": 4,
    "vision_intermediate_size": 128,
    "text_hidden_size": 128,
    "text_layers": 4,
    "text_heads": 4,
    "text_kv_heads": 2,
    "text_intermediate_size": 256,
    "mrope_section": (4, 6, 6),  # head_dim 32: 16 rotary frequencies
    "vocab_size": 600,
    "max_position_embeddings": 4096,
    "initializer_range": 0.1,
}
#: The demo's image size (16×16 LLM tokens of 28 px), the ``--image-size`` default for it.
DEMO_IMAGE_SIZE = 448

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for c in message['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def ensure_built() -> Path:
    """The Qwen demo checkpoint in the cache directory, built on first use."""
    return cached(f"demo-qwen2.5-vl-v{DEMO_VERSION}", build)


def build_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer (as Qwen's) trained on the shipped corpus, with Qwen's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = files("nuwa_export.models").joinpath("demo_corpus.txt").read_text().splitlines()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_config(tokenizer, sizes: dict):
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = sizes["text_hidden_size"] // sizes["text_heads"]
    if 2 * sum(sizes["mrope_section"]) != head_dim:
        raise ValueError(f"mrope_section {sizes['mrope_section']} must sum to head_dim/2 = {head_dim // 2}")
    return Qwen2_5_VLConfig(
        vision_config={
            "depth": sizes["vision_depth"],
            "hidden_size": sizes["vision_hidden_size"],
            "intermediate_size": sizes["vision_intermediate_size"],
            "num_heads": sizes["vision_heads"],
            "patch_size": sizes["patch_size"],
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": sizes["window_size"],
            "fullatt_block_indexes": list(sizes["fullatt_block_indexes"]),
            "out_hidden_size": sizes["text_hidden_size"],
            "initializer_range": sizes["initializer_range"],
        },
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": sizes["text_hidden_size"],
            "intermediate_size": sizes["text_intermediate_size"],
            "num_hidden_layers": sizes["text_layers"],
            "num_attention_heads": sizes["text_heads"],
            "num_key_value_heads": sizes["text_kv_heads"],
            "max_position_embeddings": sizes["max_position_embeddings"],
            "initializer_range": sizes["initializer_range"],
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": list(sizes["mrope_section"])},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "tie_word_embeddings": False,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def build(path: str | Path, seed: int = 0, _race_ok: bool = False, **size_overrides) -> Path:
    """Write a complete HF Qwen2.5-VL checkpoint directory (deterministic for a seed and sizes)."""
    from transformers import Qwen2_5_VLForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    unknown = set(size_overrides) - set(DEFAULT_SIZES)
    if unknown:
        raise TypeError(f"unknown demo sizes: {sorted(unknown)}")
    sizes = {**DEFAULT_SIZES, **size_overrides}
    tokenizer = build_tokenizer(sizes["vocab_size"])
    config = build_config(tokenizer, sizes)
    ids = tokenizer.convert_tokens_to_ids
    return write_checkpoint(
        path, Qwen2_5_VLForConditionalGeneration, config, seed, tokenizer, ids("<|endoftext|>"), ids("<|im_end|>"),
        processor_config(sizes["patch_size"]), _race_ok,
    )


def processor_config(patch_size: int = 14) -> dict:
    """``Qwen2VLImageProcessorPil`` settings (the fast processor needs torchvision)."""
    return {
        "image_processor_type": "Qwen2VLImageProcessorPil",
        "processor_class": "Qwen2_5_VLProcessor",
        "do_resize": True,
        "size": {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "resample": 3,
        "do_convert_rgb": True,
        "patch_size": patch_size,
        "temporal_patch_size": 2,
        "merge_size": 2,
    }
