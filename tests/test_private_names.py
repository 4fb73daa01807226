"""Tests use what users use: no test imports or reads a private name of the package (one whose
name starts with ``_``), so a refactor of internals never needs a test changed to keep passing."""

from __future__ import annotations

import ast
from pathlib import Path

import nuwa_export

PACKAGE = Path(nuwa_export.__file__).parent
TESTS = Path(__file__).resolve().parent


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_names(root: Path = PACKAGE) -> set[str]:
    """Every private function, class, method and attribute the package defines."""
    out = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and _private(node.name):
                out.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and _private(node.attr):
                out.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and _private(node.id):
                out.add(node.id)
    return out


def readers(tests: Path, defined: set[str]) -> list[str]:
    found = []
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(("nuwa_export", "tests")):
                found += [f"{path.relative_to(tests)}:{node.lineno} imports {a.name}" for a in node.names if _private(a.name)]
            elif isinstance(node, ast.Attribute) and node.attr in defined:
                found.append(f"{path.relative_to(tests)}:{node.lineno} reads .{node.attr}")
    return found


def test_no_test_reads_a_private_name():
    assert readers(TESTS, private_names()) == []


def test_the_check_finds_one(tmp_path):
    (tmp_path / "test_x.py").write_text("from nuwa_export.tools.common import _hidden\nbackend._torch_view(1)\nm._forward_hooks\n")
    assert readers(tmp_path, {"_torch_view"}) == ["test_x.py:1 imports _hidden", "test_x.py:2 reads ._torch_view"]
