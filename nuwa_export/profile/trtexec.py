"""``nuwa-profile --trtexec``: per-layer TensorRT profiles of an export's engines.

The commands come from the manifest (:func:`nuwa_export.export.trtexec.profiling_commands`):
one trtexec run per graph and engine profile, loading ``EXPORT_DIR/engines/<graph>.plan`` (built
by ``trtexec.sh`` or ``nuwa-build``) and exporting the per-layer timings and layer information
to ``EXPORT_DIR/profiles/<stem>.profile.json`` and ``<stem>.layers.json``. With ``--run`` they
are executed (trtexec from ``$TRTEXEC`` or ``PATH``), each logged to ``profiles/<stem>.log``,
and the slowest layers of each profile are listed.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from nuwa_export import jsonio
from nuwa_export import manifest as mf
from nuwa_export import names as n
from nuwa_export.errors import NuwaError
from nuwa_export.export.trtexec import profiling_commands
from nuwa_export.runtime.tensorrt import PLUGIN_ENV

OUT_DIR = n.PROFILES_DIR
DEFAULT_PLUGIN_LIB = "libnuwa_trt_plugins.so"


def commands(directory: Path) -> list[tuple[str, list[str]]]:
    """``(stem, argv)`` per graph and profile; paths are relative to ``directory``."""
    m = mf.read(directory, verify=False)
    return profiling_commands(m, os.environ.get(PLUGIN_ENV, DEFAULT_PLUGIN_LIB), OUT_DIR)


def render(directory: Path, cmds: list[tuple[str, list[str]]], exe: str = "trtexec") -> str:
    """A shell script that runs ``cmds`` from ``directory``."""
    lines = [f"cd {shlex.quote(str(directory))} && mkdir -p {OUT_DIR}"]
    for stem, argv in cmds:
        lines.append(f"# {stem}")
        lines.append(" \\\n  ".join([shlex.quote(exe), *(shlex.quote(a) for a in argv)]))
    return "\n".join(lines) + "\n"


def find_trtexec() -> str:
    name = os.environ.get("TRTEXEC", "trtexec")
    exe = shutil.which(name)
    if exe is None:
        raise NuwaError(f"trtexec is not installed ('{name}' is not on PATH); install TensorRT or set TRTEXEC=/path/to/trtexec")
    return exe


def run(directory: Path, cmds: list[tuple[str, list[str]]], exe: str) -> dict[str, Path]:
    """Run every command whose engine exists; returns ``stem → profile JSON``."""
    present = [(s, a) for s, a in cmds if (directory / _engine(a)).is_file()]
    if not present:
        raise NuwaError(f"no engines in {directory / n.ENGINES_DIR}; build them first (bash {directory / n.TRTEXEC}, or nuwa-build {directory})")
    for stem, argv in cmds:
        if (stem, argv) not in present:
            print(f"nuwa-profile: warning: {_engine(argv)} not built, {stem} skipped", file=sys.stderr)
    (directory / OUT_DIR).mkdir(exist_ok=True)
    written = {}
    for stem, argv in present:
        log = directory / OUT_DIR / f"{stem}.log"
        with open(log, "w") as f:
            rc = subprocess.run([exe, *argv], cwd=directory, stdout=f, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            raise NuwaError(f"trtexec failed on {stem} (exit {rc}); see {log}")
        written[stem] = directory / OUT_DIR / f"{stem}.profile.json"
    return written


def _engine(argv: list[str]) -> str:
    return next(a.split("=", 1)[1] for a in argv if a.startswith("--loadEngine="))


def slowest_layers(profile_json: Path, top: int = 5) -> list[tuple[str, float, float]]:
    """``(layer name, average ms, percent)`` of the ``top`` slowest layers in a trtexec profile.

    trtexec's ``--exportProfile`` writes ``[{"count": n}, {"name", "averageMs", "percentage", ...}, ...]``.
    """
    data = jsonio.read(profile_json, expect=list)
    try:
        layers = [d for d in data if isinstance(d, dict) and "name" in d and "averageMs" in d]
        layers.sort(key=lambda d: -float(d["averageMs"]))
        return [(str(d["name"]), float(d["averageMs"]), float(d.get("percentage", 0.0))) for d in layers[:top]]
    except (TypeError, ValueError) as e:
        raise NuwaError(f"{profile_json} is not a trtexec profile ({e})") from None
