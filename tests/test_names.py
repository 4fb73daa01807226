"""Every name of an export (files, graphs, folders, graph tensors) is spelled in nuwa_export/names.py
and nowhere else in the package."""

from __future__ import annotations

import ast
from pathlib import Path

import nuwa_export
from nuwa_export import names

PACKAGE = Path(nuwa_export.__file__).parent
#: String constants that are an export's names: a module spelling one itself would drift from names.py.
SPELLED_ONLY_IN_NAMES = {
    names.MANIFEST, names.EMBEDDINGS, names.TRTEXEC, names.ENGINES_DIR, names.TOKENIZER_DIR,
    names.TIMING_CACHE, names.EXAMPLE_PICTURE, *names.FILES.values(), *names.ORT_FILES.values(), *names.CHECKPOINT_ASSETS,
    names.VISION_PLUGIN, names.LLM_PREFIX, names.LLM_SUFFIX, names.PAD_LENGTHS, names.ATTENTION_MASK, names.VISION_START,
    names.INPUTS_EMBEDS, names.STACK_TRACE_KEY, names.SCOPE_KEY, "past_", "present_",
}


def spelled(root: Path = PACKAGE) -> list[str]:
    """``file:line 'name'`` for each export name spelled as a string constant outside names.py
    (docstrings and messages quoting a name in a longer text are fine)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "names.py" and path.parent == root:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in SPELLED_ONLY_IN_NAMES:
                found.append(f"{path.relative_to(root)}:{node.lineno} {node.value!r}")
    return found


def test_export_names_are_spelled_only_in_names_py():
    assert spelled() == []


def test_the_check_finds_a_name_spelled_elsewhere(tmp_path):
    (tmp_path / "mod.py").write_text('FILE = "llm_prefix.onnx"\nDOC = "see llm_prefix.onnx for the prefix"\n')
    assert spelled(tmp_path) == ["mod.py:1 'llm_prefix.onnx'"]


def test_kv_names_and_their_pairs():
    assert names.kv_names(names.PAST, range(2, 4)) == ["past_key_2", "past_value_2", "past_key_3", "past_value_3"]
    assert names.present_of("past_value_3") == "present_value_3" and names.past_of("present_key_0") == "past_key_0"
    assert names.is_kv("present_key_1") and not names.is_kv("pad_lengths")
    assert set(names.FILES) == set(names.GRAPHS) and set(names.ORT_FILES) == set(names.LLM_GRAPHS)
