import hashlib
import json

import pytest

from nuwa_export.errors import NuwaError
from nuwa_export.models import registry
from nuwa_export.models.families.llava import TEMPLATE, build_prompt, demo
from nuwa_export.models.loader import load, weight_files


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_demo_is_complete_and_loads(demo_dir, loaded_demo):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json", "chat_template.jinja"):
        assert (demo_dir / name).is_file(), name
    p = loaded_demo.parts
    assert p.grid == (16, 16) and p.num_patches == 256 and p.num_layers == 4
    assert json.loads((demo_dir / "preprocessor_config.json").read_text())["do_pad"] is True
    assert loaded_demo.image_config.pad == "square-mean"


def test_demo_is_deterministic(tmp_path, demo_dir):
    again = demo.build(tmp_path / "again", seed=0)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "example.png"):
        assert _sha(again / name) == _sha(demo_dir / name), name
    other = demo.build(tmp_path / "other", seed=1)
    assert _sha(other / "model.safetensors") != _sha(demo_dir / "model.safetensors")


def test_chat_template_renders_the_llava_prompt(loaded_demo):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Where is the car?"}]}]
    rendered = loaded_demo.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == TEMPLATE.format(prompt="Where is the car?")


def test_prompt_split_around_the_image(loaded_demo):
    tok = loaded_demo.tokenizer
    p = build_prompt(tok, "Where is the car?", loaded_demo.image_token_id)
    assert p.before[0] == tok.bos_token_id
    assert p.input_ids.count(loaded_demo.image_token_id) == 1
    assert tok.decode(p.after) .strip().startswith("Where is the car? ASSISTANT:")


def test_demo_alias_builds_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NUWA_EXPORT_CACHE", str(tmp_path))
    path, model_id = registry.resolve("demo")
    assert model_id == "demo" and path.parent == tmp_path and (path / "model.safetensors").is_file()
    assert registry.resolve("demo")[0] == path  # second call reuses it


def test_unknown_sizes_rejected(tmp_path):
    with pytest.raises(TypeError):
        demo.build(tmp_path / "x", bogus=1)


def test_aliases_resolve_to_llava_hf():
    assert registry.aliases()["llava-1.5-7b"] == "llava-hf/llava-1.5-7b-hf"
    assert registry.aliases()["llava-1.5-13b"] == "llava-hf/llava-1.5-13b-hf"


def test_alias_not_cached_offline_says_how_to_pass_a_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(NuwaError, match=r"llava-hf/llava-1.5-7b-hf.*--model /path/to/llava-1.5-7b-hf"):
        registry.resolve("llava-1.5-7b")


def test_alias_found_in_the_hf_cache(tmp_path, monkeypatch, demo_dir):
    """A snapshot laid out like huggingface_hub's cache is used without any download."""
    repo = tmp_path / "models--llava-hf--llava-1.5-7b-hf"
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    for f in demo_dir.iterdir():
        (snap / f.name).symlink_to(f)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    path, model_id = registry.resolve("llava-1.5-7b")
    assert model_id == "llava-hf/llava-1.5-7b-hf" and (path / "config.json").is_file()


@pytest.mark.parametrize("name", ["nope", "./missing-dir", "/no/such/dir"])
def test_unknown_model(name):
    with pytest.raises(NuwaError, match="unknown model"):
        registry.resolve(name)


def test_pickle_only_checkpoint_refused(tmp_path, demo_dir):
    for f in demo_dir.iterdir():
        if f.suffix != ".safetensors":
            (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(NuwaError, match="pickle files are never loaded"):
        weight_files(tmp_path)
    with pytest.raises(NuwaError, match="no .safetensors"):
        load(str(tmp_path))
