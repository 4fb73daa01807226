"""Tiny LLaVA checkpoints, built with the demo builder and loaded through the users' code path."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory):
    """``make(seed=0, **sizes) -> Path``; each distinct checkpoint is built once per session."""
    from nuwa_export.models import demo

    built = {}

    def make(seed: int = 0, **sizes):
        key = (seed, tuple(sorted(sizes.items())))
        if key not in built:
            built[key] = demo.build(tmp_path_factory.mktemp("ckpt") / "model", seed=seed, **sizes)
        return built[key]

    return make


@pytest.fixture(scope="session")
def demo_dir(checkpoint_factory):
    """The demo checkpoint at its default sizes (the same one `--model demo` builds)."""
    return checkpoint_factory(0)


@pytest.fixture(scope="session")
def loaded_demo(demo_dir):
    from nuwa_export.models.loader import load

    return load(str(demo_dir), device="cpu")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """`--model demo` builds into a per-session cache, never the user's."""
    monkeypatch.setenv("NUWA_EXPORT_CACHE", str(tmp_path_factory.getbasetemp() / "nuwa-cache"))

@pytest.fixture(scope="session")
def demo_export(demo_dir, tmp_path_factory):
    """The demo checkpoint exported once (default budgets); tests copy it before changing it."""
    from nuwa_export.export.pipeline import export

    out = tmp_path_factory.mktemp("export") / "demo-k28"
    export(str(demo_dir), out, progress=False)
    return out
