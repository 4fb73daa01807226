"""The README's two commands are the ones users run: command (1) is run here, verbatim;
command (2) is what `.ci/run` runs (checked textually, since running it here would recurse)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    cmds = []
    for block in blocks[:2]:
        lines = [ln for ln in block.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        assert len(lines) == 1, block
        cmds.append(lines[0])
    return cmds


def test_ci_runs_the_readme_test_command():
    assert readme_commands()[1] in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
def test_readme_demo_command(tmp_path):
    cmd = readme_commands()[0]
    proc = subprocess.run(["bash", "-c", cmd], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip(), "an answer is printed"
    for stage in ("vision", "prefix", "stage_two", "suffix", "time_to_first_token"):
        assert stage in proc.stderr
