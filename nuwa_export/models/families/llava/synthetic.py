"""Full-size random-weight LLaVA checkpoints, written shard by shard without ever holding the model.

:func:`build_sharded` takes the tensor names and shapes from a meta-device model, then generates
each tensor from a seed (HF's init semantics: weights ~ N(0, initializer_range), norm weights 1,
biases 0; the LLM's initializer_range everywhere, CLIP's per-layer scaling is not reproduced) and
writes them as sharded safetensors. Peak memory is about one shard plus one chunk,
so a LLaVA-1.5-7B-shaped checkpoint (13.5 GB in fp16) builds on a machine with far less RAM.

    python -m nuwa_export.tools.synthetic CKPT_DIR --sizes 7b
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from nuwa_export import precision
from nuwa_export.atomic import atomic_dir
from nuwa_export.models import demo as shared
from nuwa_export.models.families.llava import demo
from nuwa_export.names import EXAMPLE_PICTURE, PREPROCESSOR_CONFIG
from nuwa_export.precision import FLOATS

#: LLaVA-1.5-7B's shapes: CLIP ViT-L/14-336 and Vicuna/Llama-7B; ``vocab_size`` is the demo
#: tokenizer's (the LLM's vocabulary is padded with ``llm_vocab_size``).
LLAVA_7B_SIZES = {
    "image_size": 336,
    "patch_size": 14,
    "vision_hidden_size": 1024,
    "vision_layers": 24,
    "vision_heads": 16,
    "vision_intermediate_size": 4096,
    "text_hidden_size": 4096,
    "text_layers": 32,
    "text_heads": 32,
    "text_kv_heads": 32,
    "text_intermediate_size": 11008,
    "vocab_size": 600,
    "max_position_embeddings": 4096,
    "initializer_range": 0.02,
}
#: llava-1.5-7b-hf's padded vocabulary (embed_tokens and lm_head rows).
LLAVA_7B_VOCAB = 32064
PRESETS = {"7b": (LLAVA_7B_SIZES, LLAVA_7B_VOCAB), "small": (demo.DEFAULT_SIZES, None)}
INDEX = "model.safetensors.index.json"
_CHUNK = 1 << 24  # elements generated in fp32 at a time


def build_config(sizes: dict, llm_vocab_size: int | None = None, dtype: str = "float16"):
    """``(tokenizer, LlavaConfig)`` for ``sizes``, the LLM's vocabulary padded to ``llm_vocab_size``."""
    unknown = set(sizes) - set(demo.DEFAULT_SIZES)
    if unknown:
        raise TypeError(f"unknown sizes: {sorted(unknown)}")
    sizes = {**demo.DEFAULT_SIZES, **sizes}
    tokenizer = demo.build_tokenizer(sizes["vocab_size"])
    config = demo.build_config(tokenizer, sizes)
    if llm_vocab_size is not None:
        if llm_vocab_size < len(tokenizer):
            raise ValueError(f"llm_vocab_size {llm_vocab_size} is smaller than the tokenizer ({len(tokenizer)} tokens)")
        config.text_config.vocab_size = llm_vocab_size
    config.dtype = dtype
    config.architectures = ["LlavaForConditionalGeneration"]
    return tokenizer, config


def tensor_plan(config) -> list[tuple[str, tuple[int, ...], str]]:
    """``(checkpoint name, shape, init)`` per tensor, in the model's order; init is normal, ones or zeros.

    Names are what ``save_pretrained`` writes for this transformers version (tied weights dropped,
    the checkpoint conversion reverted).
    """
    from torch import nn
    from transformers import LlavaForConditionalGeneration
    from transformers.core_model_loading import revert_weight_conversion
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    state = remove_tied_weights_from_state_dict(model.state_dict(), model)
    kinds = {}
    for mod_name, mod in model.named_modules():
        for p_name, _ in mod.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if p_name == "bias":
                kinds[full] = "zeros"
            elif isinstance(mod, nn.LayerNorm) or type(mod).__name__.endswith("RMSNorm"):
                kinds[full] = "ones"
            elif isinstance(mod, (nn.Linear, nn.Embedding, nn.Conv2d)) or p_name == "class_embedding":
                kinds[full] = "normal"
            else:
                raise TypeError(f"no init rule for {full} ({type(mod).__name__})")
    unknown = set(state) - set(kinds)
    if unknown:
        raise TypeError(f"state-dict entries that are not parameters: {sorted(unknown)}")
    plan = []
    for name, t in state.items():
        saved = revert_weight_conversion(model, {name: t})
        if len(saved) != 1:
            raise TypeError(f"{name} is saved as {len(saved)} tensors")
        plan.append((next(iter(saved)), tuple(t.shape), kinds[name]))
    return plan


def tensor_seed(seed: int, index: int) -> int:
    """The generator seed of tensor ``index`` (CPU generators keep only 32 bits, so hash the pair)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}/{index}".encode(), digest_size=4).digest(), "little")


def make_tensor(shape: tuple[int, ...], kind: str, std: float, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """One tensor; ``normal`` is drawn in fp32 chunks from a generator seeded with ``seed``."""
    if kind == "ones":
        return torch.ones(shape, dtype=dtype)
    if kind == "zeros":
        return torch.zeros(shape, dtype=dtype)
    out = torch.empty(shape, dtype=dtype)
    flat = out.view(-1)
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, flat.numel(), _CHUNK):
        n = min(_CHUNK, flat.numel() - start)
        flat[start : start + n].copy_(torch.randn(n, generator=gen, dtype=torch.float32).mul_(std))
    return out


def shard_plan(plan: list[tuple[str, tuple[int, ...], str]], itemsize: int, shard_bytes: int) -> list[list[int]]:
    """Tensor indices per shard: a shard is closed when the next tensor would take it past ``shard_bytes``."""
    shards: list[list[int]] = [[]]
    size = 0
    for i, (_, shape, _) in enumerate(plan):
        nbytes = itemsize * _numel(shape)
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(i)
        size += nbytes
    return shards


def build_sharded(
    path: str | Path,
    *,
    seed: int = 0,
    dtype: str = "float16",
    llm_vocab_size: int | None = None,
    shard_bytes: int = 2 * 2**30,
    **sizes,
) -> Path:
    """Write a complete, sharded HF LLaVA checkpoint with random weights (deterministic per seed).

    ``sizes`` are keys of :data:`demo.DEFAULT_SIZES` (e.g. ``**LLAVA_7B_SIZES``); ``llm_vocab_size``
    pads the LLM's vocabulary beyond the tokenizer's. Returns ``path``.
    """
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    if dtype not in FLOATS:
        raise ValueError(f"dtype must be one of {', '.join(FLOATS)}, not {dtype!r}")
    torch_dtype = precision.torch_dtype(dtype)
    tokenizer, config = build_config(sizes, llm_vocab_size, dtype)
    std = config.text_config.initializer_range
    plan = tensor_plan(config)
    itemsize = torch.empty((), dtype=torch_dtype).element_size()
    shards = shard_plan(plan, itemsize, shard_bytes)
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {plan[i][0]: names[s] for s, idx in enumerate(shards) for i in idx}
    total = sum(itemsize * _numel(shape) for _, shape, _ in plan)
    path = Path(path)
    with atomic_dir(path, force=True) as tmp:
        for name, idx in zip(names, shards):
            tensors = {plan[i][0]: make_tensor(plan[i][1], plan[i][2], std, torch_dtype, tensor_seed(seed, i)) for i in idx}
            save_file(tensors, tmp / name, metadata={"format": "pt"})
            del tensors
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        config.save_pretrained(tmp)
        gen = GenerationConfig.from_model_config(config)
        gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
        gen.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        image_size = {**demo.DEFAULT_SIZES, **sizes}["image_size"]
        (tmp / PREPROCESSOR_CONFIG).write_text(json.dumps(demo.processor_config(image_size), indent=2) + "\n")
        shared.example_image(tmp / EXAMPLE_PICTURE)
    return path


def build_7b(path: str | Path, *, seed: int = 0, dtype: str = "float16", **kwargs) -> Path:
    """A LLaVA-1.5-7B-shaped checkpoint (vocabulary padded to 32064) at ``path``."""
    return build_sharded(path, seed=seed, dtype=dtype, llm_vocab_size=LLAVA_7B_VOCAB, **{**LLAVA_7B_SIZES, **kwargs})


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
