"""The repository stands alone: no file points at documents outside it, and only tests read data
that sits beside the clone (the RefCOCO sample). The algorithm is in docs/algorithm.md."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Built by concatenation so this file does not name them itself.
FORBIDDEN_EVERYWHERE = ("NUWA" + "_SPEC", "shared/" + "ARCHITECTURE")
FORBIDDEN_OUTSIDE_TESTS = (".." + "/shared", "shared" + "/data")
#: A path built by joins, e.g. ``root.parent / "shared" / "data"`` (outside tests/ too).
SHARED_JOIN = re.compile(r"""['"]shared['"]\s*/|/\s*['"]shared['"]""")


def repo_files() -> list[str]:
    """Tracked files plus untracked files git does not ignore (work in progress counts too)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, capture_output=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"not a git checkout, or git is missing: {e}")
    return sorted({f for f in out.decode().split("\0") if f and (ROOT / f).is_file()})


def offending(files: list[str], root: Path = ROOT) -> list[str]:
    """``path: what`` for every forbidden reference in ``files`` (paths relative to ``root``)."""
    found = []
    for name in files:
        text = (root / name).read_bytes().decode("utf-8", errors="replace")
        lowered = text.lower()
        in_tests = name.startswith("tests/")
        forbidden = FORBIDDEN_EVERYWHERE + (() if in_tests else FORBIDDEN_OUTSIDE_TESTS)
        found += [f"{name}: {s}" for s in forbidden if s.lower() in lowered]
        if not in_tests and SHARED_JOIN.search(text):
            found.append(f"{name}: a path joined through 'shared'")
    return found


def test_no_file_refers_outside_the_repository():
    files = repo_files()
    assert "docs/algorithm.md" in files
    assert offending(files) == []


def test_the_check_catches_a_reference(tmp_path):
    """Each forbidden string is found where it is forbidden; the shared data may be read by tests."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "tests").mkdir()
    doc, test = "docs/probe.md", "tests/probe.py"
    for s in FORBIDDEN_EVERYWHERE + FORBIDDEN_OUTSIDE_TESTS:
        (tmp_path / doc).write_text(f"see {s.lower()} for details\n")
        assert offending([doc], tmp_path) == [f"{doc}: {s}"]
    for s in FORBIDDEN_EVERYWHERE:
        (tmp_path / test).write_text(f"# see {s}\n")
        assert offending([test], tmp_path) == [f"{test}: {s}"]
    join = 'DATA = ROOT.parent / "shared" / "data" / "refcoco-sample"\n'
    for s in FORBIDDEN_OUTSIDE_TESTS:
        (tmp_path / test).write_text(f"DATA = '{s}'\n" + join)
        assert offending([test], tmp_path) == []
    (tmp_path / "nuwa_export.py").write_text(join)
    assert offending(["nuwa_export.py"], tmp_path) == ["nuwa_export.py: a path joined through 'shared'"]
