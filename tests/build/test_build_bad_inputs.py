"""nuwa-build on bad input: engine profiles, plugin libraries and export paths TensorRT cannot take.

Every refusal is one line ``nuwa-build: error: ...`` and exit 1, printed before the first
``✓ build`` line when it could be checked up front, and nothing is written under ``engines/``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from nuwa_export import manifest as mf
from nuwa_export.contract import Numbers
from nuwa_export.models.families import family_named
from nuwa_export.runtime.exports import read_export
from nuwa_export.build.engine import Profile, build_engine
from nuwa_export.errors import NuwaError
from nuwa_export.names import MANIFEST
from nuwa_export.runtime.tensorrt import check_plugin_library
from nuwa_export.tools.build import main as build_main
from tests.helpers import assert_one_line, tree

RTX = ["--builder", "tensorrt-rtx"]


@pytest.fixture
def export_copy(demo_export, tmp_path):
    d = tmp_path / "exp"
    shutil.copytree(demo_export, d)
    return d


def _edit_profiles(d: Path, fn) -> None:
    """Change ``engine_profiles`` in manifest.json (not among the hashed files)."""
    m = json.loads((d / MANIFEST).read_text())
    fn(m["engine_profiles"], m)
    (d / MANIFEST).write_text(json.dumps(m))


def _build(capsys, argv) -> tuple[int, str]:
    code = build_main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _suffix_seq(profile: int, shapes: list):
    return lambda p, m: p["llm_suffix"][profile]["hidden_states"].__setitem__(slice(0, 3), shapes)


# --- engine profiles: all of them checked before the first graph is built ----------------------

PROFILE_CASES = {
    # the red-team cases: a max past int32 (TensorRT raised RuntimeError from set_shape after two
    # engines were built) and a seq of 0 (TensorRT refused it after two engines were built)
    "huge-max": (lambda p, m: p["llm_suffix"][0]["hidden_states"].__setitem__(2, [1, 2**31, 128]), "beyond what TensorRT takes (2**31 - 1)"),
    "zero-seq": (_suffix_seq(0, [[1, 0, 128]] * 3), "(seq) has min 0; it must be at least 1"),
    "zero-batch": (lambda p, m: p["vision"][0].__setitem__("pixel_values", [[0, 3, 224, 224]] * 3), "(batch) has min 0; it must be at least 1"),
    "seq-over-context": (
        lambda p, m: [p["llm_prefix"][0][n].__setitem__(2, [1, m["llm"]["max_positions"] + 1, *p["llm_prefix"][0][n][2][2:]]) for n in ("inputs_embeds", "position_ids")],
        "beyond manifest.json llm.max_positions",
    ),
    "past-over-context": (
        lambda p, m: [p["llm_suffix"][1][n].__setitem__(2, [p["llm_suffix"][1][n][2][0], 4, m["llm"]["max_positions"], 32]) for n in p["llm_suffix"][1] if n.startswith("past_")],
        "beyond manifest.json llm.max_positions - 1",
    ),
    "contradictory-seq": (_suffix_seq(0, [[1, 9, 128], [1, 55, 128], [1, 263, 128]]), "one dimension, two ranges"),
    "seq-plus-past-over-context": (
        lambda p, m: [p["llm_suffix"][1][n].__setitem__(slice(0, 3), [[s[0], 2, *s[2:]] for s in p["llm_suffix"][1][n]]) for n in ("hidden_states", "position_ids")],
        "max seq 2 + max past 2047 is beyond manifest.json llm.max_positions = 2048",
    ),
}


@pytest.mark.parametrize("case", sorted(PROFILE_CASES))
def test_bad_profiles_are_one_line_before_any_engine_is_built(export_copy, tmp_path, capsys, case):
    edit, match = PROFILE_CASES[case]
    _edit_profiles(export_copy, edit)
    before = tree(tmp_path)
    code, err = _build(capsys, [export_copy, *RTX])
    assert_one_line("nuwa-build", code, err, match)  # one line: no "✓ build vision" before it
    assert f"engine_profiles.{'vision' if case == 'zero-batch' else 'llm_'}" in err
    assert tree(tmp_path) == before and not (export_copy / "engines").exists()


def test_good_profiles_pass_the_profile_checks(demo_export):
    """The profiles nuwa-export writes come from the graph contract, pass every check, and are a
    prefill (no past) and a one-token decode profile per LLM graph."""
    m = read_export(demo_export)  # raises on a profile that breaks a rule
    contract = family_named(m.family).contract(Numbers.of_manifest(m))
    for graph in ("llm_prefix", "llm_suffix"):
        prefill, decode = m.engine_profiles[graph]
        first = "inputs_embeds" if graph == "llm_prefix" else "hidden_states"
        pasts = [k for k in prefill if k.startswith("past_")]
        assert pasts and all(prefill[k][i][2] == 0 for k in pasts for i in range(3))  # prefill: past 0
        assert decode[first] == [[b, 1, m.llm.hidden_size] for b in (1, 8, 8)]  # decode: one token, batch 1..max_batch
        assert set(prefill) == set(contract.graphs[graph].input_names)  # every input of the graph, as the contract says
    assert m.engine_profiles["vision"] == [{"pixel_values": [[1, 3, 224, 224]] * 3}]


@pytest.mark.trt_rtx
@pytest.mark.parametrize(
    "seq,match",
    [
        ((1, 2**31, 128), r"TensorRT \(tensorrt-rtx\) refused profile 0 of llm_suffix.onnx, input hidden_states"),
        ((1, 0, 128), r"TensorRT \(tensorrt-rtx\) failed to build an engine from llm_suffix.onnx: .*seq"),
    ],
)
def test_tensorrt_failures_are_one_error_naming_the_graph(demo_export, seq, match):
    """Profiles that get past the manifest check (a caller of build_engine) still fail as one NuwaError."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX not installed (pip install tensorrt-rtx-cu13)")
    m = mf.read(demo_export)
    shapes = {n: tuple(tuple(s) for s in v) for n, v in m.engine_profiles["llm_suffix"][0].items()}
    shapes["hidden_states"] = (shapes["hidden_states"][0], shapes["hidden_states"][1], seq) if seq[1] > 1 else (seq,) * 3
    with pytest.raises(NuwaError, match=match):
        build_engine(demo_export / "llm_suffix.onnx", [Profile(shapes)], builder="tensorrt-rtx")


# --- plugin libraries ---------------------------------------------------------------------------


@pytest.mark.parametrize("lib", ["missing.so", "text.so"])
def test_plugin_lib_without_plugin_is_refused(export_copy, tmp_path, capsys, lib):
    """It used to be ignored silently (the engines were built without the plugin)."""
    (tmp_path / "text.so").write_text("not a shared library")
    before = tree(tmp_path)
    code, err = _build(capsys, [export_copy, *RTX, "--plugin-lib", tmp_path / lib])
    assert_one_line("nuwa-build", code, err, "--plugin-lib has no effect without --plugin")
    assert tree(tmp_path) == before


@pytest.mark.trt_rtx
def test_plugin_lib_from_the_environment_without_plugin_is_fine(export_copy, capsys, monkeypatch):
    """$NUWA_PLUGIN_LIB is set once for every build: a build without --plugin does not look at it."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX not installed (pip install tensorrt-rtx-cu13)")
    monkeypatch.setenv("NUWA_PLUGIN_LIB", "/nonexistent/libnuwa_trt_plugins.so")
    code, err = _build(capsys, [export_copy, *RTX])
    assert code == 0, err
    assert sorted(p.name for p in (export_copy / "engines").glob("*.plan")) == ["llm_prefix.plan", "llm_suffix.plan", "vision.plan"]


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda p: None, "plugin library not found"),
        (lambda p: p.write_text("not elf"), "is not a shared library (no ELF header)"),
        (lambda p: p.write_bytes(b""), "is not a shared library (no ELF header)"),
        (lambda p: p.mkdir(), "is a directory, not a shared library"),
    ],
    ids=["missing", "text", "empty", "directory"],
)
def test_bad_plugin_library_with_plugin_is_one_line_before_tensorrt(export_copy, tmp_path, capsys, make, match):
    """Checked before TensorRT is imported (full TensorRT need not be installed to hear about it)."""
    lib = tmp_path / "libnuwa_trt_plugins.so"
    make(lib)
    before = tree(tmp_path)
    code, err = _build(capsys, [export_copy, "--plugin", "--plugin-lib", lib])
    assert_one_line("nuwa-build", code, err, match)
    assert tree(tmp_path) == before


def test_unreadable_plugin_library_is_one_line(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    lib = tmp_path / "libnuwa_trt_plugins.so"
    lib.write_bytes(b"\x7fELF")
    lib.chmod(0)
    with pytest.raises(NuwaError, match="cannot read the plugin library"):
        check_plugin_library(lib)


def test_a_real_shared_library_passes_the_check():
    import _ctypes

    check_plugin_library(Path(_ctypes.__file__))  # an ELF extension module of this Python


# --- paths TensorRT's parser cannot take --------------------------------------------------------


@pytest.fixture
def nonutf8_export(demo_export, tmp_path):
    if sys.getfilesystemencoding().lower() not in ("utf-8", "utf8"):
        pytest.skip("the file system encoding is not UTF-8")
    raw = os.path.join(os.fsencode(str(tmp_path)), b"\xff-exp")
    try:
        shutil.copytree(os.fsencode(str(demo_export)), raw)
    except OSError as e:
        pytest.skip(f"this file system refuses non-UTF-8 names ({e})")
    return os.fsdecode(raw)


def test_non_utf8_export_dir_is_one_line(nonutf8_export, tmp_path, capsys):
    """It was a TypeError traceback from parse_from_file (after the sha256 and consistency checks)."""
    before = tree(tmp_path)
    code, err = _build(capsys, [nonutf8_export, *RTX])
    line = assert_one_line("nuwa-build", code, err, "nuwa-export needs paths that are valid UTF-8")
    assert "\\xff-exp (export directory)" in line  # the bad byte shown as \xff
    assert tree(tmp_path) == before


def test_every_verb_that_opens_a_non_utf8_export_refuses_it(nonutf8_export):
    with pytest.raises(NuwaError, match=r"\\xff-exp \(export directory\): nuwa-export needs paths that are valid UTF-8"):
        mf.read(nonutf8_export)


def test_build_engine_refuses_a_non_utf8_graph_path(nonutf8_export):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX not installed (pip install tensorrt-rtx-cu13)")
    static = Profile({"pixel_values": ((1, 3, 224, 224),) * 3})
    with pytest.raises(NuwaError, match="ONNX graph.*valid UTF-8"):
        build_engine(Path(nonutf8_export) / "vision.onnx", [static], builder="tensorrt-rtx")
