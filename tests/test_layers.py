"""The package's layers, top to bottom, and what each may import (docs/architecture.md, "Layers").

Every import in ``nuwa_export/`` is parsed, function-level ones included, and held to the order
below: a module imports its own layer or lower ones, never a higher one, and no modules (nor the
packages of one layer) import each other in a cycle. ``tools/`` is imported by nothing, and only
``tools/`` parses arguments.
"""

from __future__ import annotations

import ast
from pathlib import Path

import nuwa_export

PACKAGE = Path(nuwa_export.__file__).parent

#: Top to bottom. A module's layer is that of the longest prefix listed; every other module
#: (``nuwa_export.names``, ``nuwa_export.precision``, ...) is the ground floor.
LAYERS = (
    ("tools", ("nuwa_export.tools",)),
    ("serve", ("nuwa_export.serve",)),
    ("libraries", ("nuwa_export.export", "nuwa_export.quant", "nuwa_export.verify", "nuwa_export.eval", "nuwa_export.profile", "nuwa_export.build")),
    ("runtime", ("nuwa_export.runtime",)),
    ("generation", ("nuwa_export.generation",)),
    ("models", ("nuwa_export.models",)),
    ("pruning", ("nuwa_export.pruning",)),
    ("ground floor", ("nuwa_export",)),
)
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}


def modules(root: Path = PACKAGE, package: str = "nuwa_export") -> dict[str, Path]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(found: dict[str, Path]) -> dict[str, set[str]]:
    """Module → the package modules it imports (``from X import Y`` of a submodule Y counts as Y)."""
    edges: dict[str, set[str]] = {}
    for name, path in found.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        out = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else [])) if node.level else node.module
                if not base or not base.startswith("nuwa_export"):
                    continue
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    out.add(full if full in found else base)
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names if a.name.startswith("nuwa_export"))
        edges[name] = {m for m in out if m != name}
    return edges


def layer_of(module: str) -> str:
    best = max(((layer, prefix) for layer, prefixes in LAYERS for prefix in prefixes
                if module == prefix or module.startswith(prefix + ".")), key=lambda lp: len(lp[1]))
    return best[0]


def upward(edges: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} ({layer_of(a)}) imports {b} ({layer_of(b)})" for a, bs in edges.items() for b in bs if RANK[layer_of(b)] < RANK[layer_of(a)])


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def package_edges(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """The same imports between the packages of the libraries layer (``export``, ``verify``, ...)."""
    def pkg(m):
        parts = m.split(".")
        return ".".join(parts[:2]) if layer_of(m) == "libraries" else None

    out: dict[str, set[str]] = {}
    for a, bs in edges.items():
        if pkg(a):
            out.setdefault(pkg(a), set()).update(pkg(b) for b in bs if pkg(b) and pkg(b) != pkg(a))
    return out


def test_no_upward_import_and_no_cycle():
    edges = imports(modules())
    assert upward(edges) == []
    assert cycles(edges) == []
    assert cycles(package_edges(edges)) == []


def test_nothing_imports_the_verbs_and_only_they_parse_arguments():
    found = modules()
    edges = imports(found)
    assert [a for a, bs in edges.items() if not a.startswith("nuwa_export.tools") and any(b.startswith("nuwa_export.tools") for b in bs)] == []
    parsing = sorted(name for name, path in found.items() if "nuwa_export.tools" not in name and
                     any(isinstance(n, (ast.Import, ast.ImportFrom)) and "argparse" in ast.unparse(n) for n in ast.walk(ast.parse(path.read_text()))))
    assert parsing == []


def test_the_check_finds_an_upward_import_and_a_cycle(tmp_path):
    """The test itself: a runtime module that imports a verb, and two modules importing each other."""
    (tmp_path / "runtime").mkdir()
    (tmp_path / "tools").mkdir()
    (tmp_path / "runtime" / "a.py").write_text("def f():\n    from nuwa_export.tools import b\n")
    (tmp_path / "tools" / "b.py").write_text("from nuwa_export.runtime.a import f\n")
    (tmp_path / "x.py").write_text("from nuwa_export import y\n")
    (tmp_path / "y.py").write_text("import nuwa_export.x\n")
    edges = imports(modules(tmp_path))
    assert upward(edges) == ["nuwa_export.runtime.a (runtime) imports nuwa_export.tools.b (tools)"]
    assert sorted(cycles(edges)) == [["nuwa_export.runtime.a", "nuwa_export.tools.b"], ["nuwa_export.x", "nuwa_export.y"]]
