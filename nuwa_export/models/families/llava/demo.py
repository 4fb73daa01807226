"""The built-in demo checkpoint: a LLaVA-1.5-shaped model small enough to run in seconds on a CPU.

Its weights are random (seeded): answers are fluent-looking nonsense made of the demo
vocabulary, but every code path — preprocessing, both pruning stages, positions, two KV groups,
export — runs exactly as on LLaVA-1.5-7B. Tests build variants with ``build(path, seed, **sizes)``.
"""

from __future__ import annotations

import string
from importlib.resources import files
from pathlib import Path

from nuwa_export.image import CLIP_MEAN, CLIP_STD
from nuwa_export.models.demo import cached, write_checkpoint

#: Bump when the demo's contents change, so caches rebuild.
DEMO_VERSION = 1

DEFAULT_SIZES = {
    "image_size": 224,  # 16x16 patches of 14 px
    "patch_size": 14,
    "vision_hidden_size": 64,
    "vision_layers": 4,
    "vision_heads": 4,
    "vision_intermediate_size": 256,
    "text_hidden_size": 128,
    "text_layers": 4,
    "text_heads": 4,
    "text_kv_heads": 4,
    "text_intermediate_size": 256,
    "vocab_size": 600,  # BPE vocabulary trained on the corpus, before <image> and <pad>
    "max_position_embeddings": 2048,
    "initializer_range": 0.1,
}

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>\n"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %} "
    "{% else %}ASSISTANT: {% for c in message['content'] %}{{ c['text'] }}{% endfor %}</s>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def ensure_built() -> Path:
    """The demo checkpoint in the cache directory, built on first use."""
    return cached(f"demo-v{DEMO_VERSION}", build)


def build_tokenizer(vocab_size: int):
    """A Llama-style BPE tokenizer (metaspace, BOS added) trained on the shipped corpus."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    corpus = files("nuwa_export.models").joinpath("demo_corpus.txt").read_text().splitlines()
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    alphabet = sorted(set(string.printable) - set(" \t\r\x0b\x0c"))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_config(tokenizer, sizes: dict):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    side = sizes["image_size"] // sizes["patch_size"]
    vision = CLIPVisionConfig(
        hidden_size=sizes["vision_hidden_size"],
        intermediate_size=sizes["vision_intermediate_size"],
        num_hidden_layers=sizes["vision_layers"],
        num_attention_heads=sizes["vision_heads"],
        image_size=sizes["image_size"],
        patch_size=sizes["patch_size"],
        projection_dim=sizes["vision_hidden_size"],
        hidden_act="quick_gelu",
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=sizes["text_hidden_size"],
        intermediate_size=sizes["text_intermediate_size"],
        num_hidden_layers=sizes["text_layers"],
        num_attention_heads=sizes["text_heads"],
        num_key_value_heads=sizes["text_kv_heads"],
        max_position_embeddings=sizes["max_position_embeddings"],
        initializer_range=sizes["initializer_range"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=side * side,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )


def build(path: str | Path, seed: int = 0, _race_ok: bool = False, **size_overrides) -> Path:
    """Write a complete HF LLaVA checkpoint directory (deterministic for a given seed and sizes).

    ``size_overrides`` are keys of :data:`DEFAULT_SIZES`. Returns ``path``.
    """
    from transformers import LlavaForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    unknown = set(size_overrides) - set(DEFAULT_SIZES)
    if unknown:
        raise TypeError(f"unknown demo sizes: {sorted(unknown)}")
    sizes = {**DEFAULT_SIZES, **size_overrides}
    tokenizer = build_tokenizer(sizes["vocab_size"])
    config = build_config(tokenizer, sizes)
    return write_checkpoint(
        path, LlavaForConditionalGeneration, config, seed, tokenizer, tokenizer.bos_token_id, tokenizer.eos_token_id,
        processor_config(sizes["image_size"]), _race_ok,
    )


def processor_config(size: int) -> dict:
    return {
        "image_processor_type": "LlavaImageProcessor",
        "processor_class": "LlavaProcessor",
        "do_pad": True,
        "do_resize": True,
        "size": {"shortest_edge": size},
        "do_center_crop": True,
        "crop_size": {"height": size, "width": size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "resample": 3,
        "do_convert_rgb": True,
    }
