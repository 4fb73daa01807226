"""Model names users type, and where the weights are found: the families' aliases and demo
checkpoints, local directories and hub ids."""

from __future__ import annotations

import os
from pathlib import Path

from nuwa_export.errors import NuwaError
from nuwa_export.models.families import families

#: Files fetched from the hub when a model is not cached: configs, tokenizer and safetensors only.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt"]


def aliases() -> dict[str, str]:
    """Every family's aliases: the names users type → hub ids."""
    return {a: repo for f in families().values() for a, repo in f.aliases.items()}


def demos() -> dict[str, object]:
    """Built-in demo checkpoints (built locally on first use, no download) → their family."""
    return {d: f for f in families().values() for d in f.demos}


def demo_dir(model_id: str) -> Path | None:
    """Where the built-in demo ``model_id`` is (built on first use), or None for another model."""
    family = demos().get(model_id)
    return family.build_demo(model_id) if family is not None else None


def resolve(model: str) -> tuple[Path, str]:
    """``MODEL`` (alias, a built-in demo, directory or hub id) → (local directory, model id)."""
    demo = demo_dir(model)
    if demo is not None:
        return demo, model
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve(), str(path.resolve())
    if path.exists():
        raise NuwaError(f"--model {model} is a file; pass a checkpoint directory, an alias or 'demo'")
    repo = aliases().get(model, model)
    if "/" not in repo or model.startswith((".", "/", "~")):
        raise NuwaError(
            f"unknown model '{model}': not a directory, not an alias ({', '.join(sorted(aliases()))}, {', '.join(demos())}) "
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
