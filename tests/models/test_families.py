"""The model-family seam: one folder per family, found by listing the package and picked by ``model_type``;
code outside ``models/`` asks the family."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import types
from pathlib import Path

import pytest

import nuwa_export
from nuwa_export import manifest as mf
from nuwa_export.contract import Numbers
from nuwa_export.errors import NuwaError
from nuwa_export.models.families import families, family_for, family_named
from tests.helpers import BIN, assert_one_line

PACKAGE = Path(nuwa_export.__file__).parent


def test_families_are_registered_by_their_model_type():
    assert set(families()) == {"llava", "qwen2_5_vl"}
    assert family_for(types.SimpleNamespace(model_type="llava")) is family_named("llava")
    assert family_for(types.SimpleNamespace(model_type="qwen2_5_vl")) is family_named("qwen2_5_vl")
    with pytest.raises(NuwaError, match=r"unsupported checkpoint: model_type 'idefics2' \(supported: llava, qwen2_5_vl\)"):
        family_for(types.SimpleNamespace(model_type="idefics2"))
    with pytest.raises(NuwaError, match="model family 'nope' is not one this nuwa-export knows"):
        family_named("nope")


def test_no_model_type_comparison_outside_models():
    """A second family adds a folder, not branches across the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if (PACKAGE / "models") in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare):
                names = {n.attr if isinstance(n, ast.Attribute) else getattr(n, "id", None) for n in ast.walk(node)}
                consts = {n.value for n in ast.walk(node) if isinstance(n, ast.Constant)}
                if "model_type" in names or consts & {"llava", "qwen2_5_vl"}:
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not found, found


def test_the_export_records_its_family_and_its_graphs_follow_its_contract(demo_export):
    m = mf.read(demo_export)
    assert m.family == "llava"
    declared = family_named("llava").contract(Numbers.of_manifest(m))
    for graph, spec in m.graphs.items():
        assert [t.name for t in spec.inputs] == declared.graphs[graph].input_names, graph
        assert [t.name for t in spec.outputs] == declared.graphs[graph].output_names, graph


def test_unknown_family_in_a_manifest_is_one_line(demo_export, tmp_path):
    d = tmp_path / "exp"
    shutil.copytree(demo_export, d)
    data = json.loads((d / "manifest.json").read_text())
    data["family"] = "idefics2"
    (d / "manifest.json").write_text(json.dumps(data))
    proc = subprocess.run([str(BIN / "nuwa-run"), str(d), "--prompt", "hi"], capture_output=True, text=True, timeout=120)
    assert_one_line("nuwa-run", proc.returncode, proc.stderr, "family 'idefics2' is not a model family this nuwa-export knows (llava, qwen2_5_vl)")


def test_a_llava_export_relabelled_as_qwen_is_refused_by_its_graphs(demo_export, tmp_path):
    """The family's declared graph I/O is checked: LLaVA's 1-D positions are not M-RoPE's."""
    d = tmp_path / "exp"
    shutil.copytree(demo_export, d)
    data = json.loads((d / "manifest.json").read_text())
    data["family"] = "qwen2_5_vl"
    (d / "manifest.json").write_text(json.dumps(data))
    proc = subprocess.run([str(BIN / "nuwa-run"), str(d), "--prompt", "hi"], capture_output=True, text=True, timeout=120)
    assert_one_line("nuwa-run", proc.returncode, proc.stderr, "llm_prefix.onnx input position_ids has shape [batch, seq], expected rank 3")


def test_unsupported_checkpoint_is_one_line(demo_dir, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(demo_dir, ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["model_type"] = "idefics2"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    proc = subprocess.run([str(BIN / "nuwa-export"), "--model", str(ckpt), "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert_one_line("nuwa-export", proc.returncode, proc.stderr, "unsupported checkpoint: model_type 'idefics2'")
    assert not (tmp_path / "out").exists()


def test_a_family_is_one_folder_found_by_listing_the_package():
    """Every subpackage of models/families/ is a family (its FAMILY), and nothing else is; each
    implements the whole protocol (an abstract method left out could not be instantiated)."""
    import pkgutil

    import nuwa_export.models.families as fams
    from nuwa_export.models.families.base import Family

    folders = {i.name for i in pkgutil.iter_modules(fams.__path__) if i.ispkg}
    assert folders == set(families()) == {"llava", "qwen2_5_vl"}
    for family in families().values():
        assert isinstance(family, Family) and not type(family).__abstractmethods__
        assert family.model_types and family.demos and family.grounding


def test_no_library_imports_a_family_folder_and_pruning_names_none():
    """Only models/families/<family>/ (and the verbs) import a family's own modules; pruning/ takes
    parameters, never a family's name."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[:2] == ("models", "families") or rel.parts[0] == "tools":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            if module and module.startswith("nuwa_export.models.families.") and module.split(".")[3] in families():
                found.append(f"{rel}:{node.lineno} {module}")
    assert found == []
    named = [f"{p.name}:{i}" for p in sorted((PACKAGE / "pruning").glob("*.py"))
             for i, line in enumerate(p.read_text().lower().splitlines(), 1) if "llava" in line or "qwen" in line]
    assert named == []
