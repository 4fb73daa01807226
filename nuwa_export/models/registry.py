"""Model names users type, and where the weights are found."""

from __future__ import annotations

import os
from pathlib import Path

from nuwa_export.errors import NuwaError

ALIASES = {
    "llava-1.5-7b": "llava-hf/llava-1.5-7b-hf",
    "llava-1.5-13b": "llava-hf/llava-1.5-13b-hf",
    "qwen2.5-vl-3b": "Qwen/Qwen2.5-VL-3B-Instruct",
    "qwen2.5-vl-7b": "Qwen/Qwen2.5-VL-7B-Instruct",
}
#: Built-in demo checkpoints, built locally on first use (no download).
DEMOS = ("demo", "demo-qwen2.5-vl")
#: Files fetched from the hub when a model is not cached: configs, tokenizer and safetensors only.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt"]


def resolve(model: str) -> tuple[Path, str]:
    """``MODEL`` (alias, a built-in demo, directory or hub id) → (local directory, model id)."""
    if model == "demo":
        from nuwa_export.models import demo

        return demo.ensure_built(), "demo"
    if model == "demo-qwen2.5-vl":
        from nuwa_export.models import demo_qwen2_5_vl

        return demo_qwen2_5_vl.ensure_built(), model
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve(), str(path.resolve())
    if path.exists():
        raise NuwaError(f"--model {model} is a file; pass a checkpoint directory, an alias or 'demo'")
    repo = ALIASES.get(model, model)
    if "/" not in repo or model.startswith((".", "/", "~")):
        raise NuwaError(
            f"unknown model '{model}': not a directory, not an alias ({', '.join(sorted(ALIASES))}, {', '.join(DEMOS)}) "
            "and not a hub id (owner/name)"
        )
    return _from_hub(repo), repo


def _from_hub(repo: str) -> Path:
    from huggingface_hub import snapshot_download

    cache = os.environ.get("HF_HUB_CACHE") or None  # read now, not at import of huggingface_hub
    try:
        return Path(snapshot_download(repo, local_files_only=True, allow_patterns=HUB_PATTERNS, cache_dir=cache))
    except Exception:  # not in the cache (the hub raises several types for that)
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise NuwaError(
            f"'{repo}' is not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
            f"download it elsewhere or pass a local directory with --model /path/to/{repo.split('/')[-1]}"
        )
    try:
        return Path(snapshot_download(repo, allow_patterns=HUB_PATTERNS, cache_dir=cache))
    except Exception as e:
        raise NuwaError(
            f"could not find '{repo}' in the Hugging Face cache or download it ({type(e).__name__}); "
            f"pass a local directory with --model /path/to/{repo.split('/')[-1]}"
        ) from None
