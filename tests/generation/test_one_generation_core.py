"""Generation is written once: only nuwa_export/generation/ carries a decode loop.

Every runner (the engine pipeline, the PyTorch reference, nuwa-verify's record and teacher-forced
check) goes through nuwa_export.generation; a second loop that feeds tokens back through the
LLM, picks tokens or re-selects stage-two rows would let the runners drift apart.
"""

from __future__ import annotations

import ast
from pathlib import Path

import nuwa_export

PACKAGE = Path(nuwa_export.__file__).parent
CORE = PACKAGE / "generation"
#: calls that, inside a loop, make the loop a decode loop
STEP_CALLS = {"prefix", "suffix", "decode_step", "run_layers", "step", "decode_loop", "TokenPicker"}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        if CORE not in path.parents:
            yield path, ast.parse(path.read_text(encoding="utf-8"))


def _called(node) -> set[str]:
    names = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            f = sub.func
            names.add(f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", ""))
    return names


def _names(node) -> set[str]:
    return {n.id if isinstance(n, ast.Name) else n.attr for n in ast.walk(node) if isinstance(n, (ast.Name, ast.Attribute))}


def test_the_core_is_a_package_with_the_one_decode_loop():
    assert (CORE / "__init__.py").is_file() and not (PACKAGE / "generation.py").exists()
    loops = [n for n in ast.walk(ast.parse((CORE / "loop.py").read_text(encoding="utf-8"))) if isinstance(n, (ast.For, ast.While))]
    assert loops, "the decode loop moved out of nuwa_export/generation/loop.py; update this test"


def test_no_other_module_carries_a_decode_loop():
    found = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if not isinstance(node, (ast.For, ast.While, ast.ListComp, ast.GeneratorExp, ast.SetComp, ast.DictComp)):
                continue
            hits = _called(node) & STEP_CALLS
            bound = node.iter if isinstance(node, ast.For) else node.test if isinstance(node, ast.While) else node
            if "max_new_tokens" in _names(bound):
                hits.add("max_new_tokens")
            if hits:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} ({', '.join(sorted(hits))})")
    assert not found, "decode loops outside nuwa_export/generation/: " + "; ".join(found)


def test_no_other_module_picks_tokens_or_selects_stage_two_rows():
    found = []
    for path, tree in _modules():
        hits = _called(tree) & {"decode_loop", "TokenPicker"}
        if hits:
            found.append(f"{path.relative_to(PACKAGE.parent)} ({', '.join(sorted(hits))})")
        if path.name != "stage_two.py" and "stage_two_rows" in {
            n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)
        }:
            found.append(f"{path.relative_to(PACKAGE.parent)} (defines stage_two_rows)")
    assert not found, "generation pieces outside nuwa_export/generation/: " + "; ".join(found)
