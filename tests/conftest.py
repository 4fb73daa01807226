"""Tiny LLaVA checkpoints, built with the demo builder and loaded through the users' code path."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub


def _factory(tmp_path_factory, build, prefix: str):
    """``make(seed=0, **sizes) -> Path`` over a demo builder; each distinct checkpoint is built
    once per session."""
    built = {}

    def make(seed: int = 0, **sizes):
        key = (seed, tuple(sorted(sizes.items())))
        if key not in built:
            built[key] = build(tmp_path_factory.mktemp(prefix) / "model", seed=seed, **sizes)
        return built[key]

    return make


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory):
    """Tiny LLaVA checkpoints (the demo builder): ``make(seed=0, **sizes) -> Path``."""
    from nuwa_export.models.families.llava import demo

    return _factory(tmp_path_factory, demo.build, "ckpt")


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


@pytest.fixture(scope="session")
def qwen_factory(tmp_path_factory):
    """Tiny Qwen2.5-VL checkpoints (the demo-qwen2.5-vl builder): ``make(seed=0, **sizes) -> Path``."""
    from nuwa_export.models.families.qwen2_5_vl import demo

    return _factory(tmp_path_factory, demo.build, "qwen")


@pytest.fixture(scope="session")
def qwen_dir(qwen_factory):
    return qwen_factory(0)


@pytest.fixture(scope="session")
def qwen_export_factory(qwen_dir, tmp_path_factory):
    """``make(keep_ratio=0.5, image_size=224, **flags) -> Path``: the Qwen demo exported (once per
    distinct set of flags); tests copy an export before changing it."""
    from nuwa_export.export.pipeline import export

    built = {}

    def make(keep_ratio: float | None = 0.5, image_size: int = 224, checkpoint=None, **flags):
        key = (keep_ratio, image_size, str(checkpoint), tuple(sorted(flags.items())))
        if key not in built:
            out = tmp_path_factory.mktemp("qwen-export") / "exp"
            export(str(checkpoint or qwen_dir), out, keep_ratio=keep_ratio, image_size=image_size, progress=False, **flags)
            built[key] = out
        return built[key]

    return make
