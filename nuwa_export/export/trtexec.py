"""``trtexec.sh``: the trtexec build and timing commands equivalent to each exported graph."""

from __future__ import annotations

import shlex

from nuwa_export import __version__
from nuwa_export import names as n
from nuwa_export.manifest import Manifest

HEADER = """#!/usr/bin/env bash
# Written by nuwa-export {version} from manifest.json. Builds every graph with trtexec into
# {engines}/ and times it, with the shapes recorded in the manifest. Extra arguments go to every
# trtexec call (e.g. --fp16, --memPoolSize=workspace:4096M). The plugin variant of the vision
# graph needs the SwarmAggregate plugin library: NUWA_PLUGIN_LIB=/path/libnuwa_trt_plugins.so.
# Two optimisation profiles (0 prefill, 1 decode) are given by repeating the shape flags.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p {engines}
TRTEXEC="${{TRTEXEC:-trtexec}}"
PLUGIN_LIB="${{NUWA_PLUGIN_LIB:-libnuwa_trt_plugins.so}}"
"""


def _spec(shapes: dict[str, list[int]]) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in dims)}" for name, dims in shapes.items())


def _profile_flags(profiles) -> list[str]:
    flags = []
    for prof in profiles:
        for i, kind in enumerate(("min", "opt", "max")):
            flags.append(f"--{kind}Shapes={_spec({n: r[i] for n, r in prof.items()})}")
    return flags


def _cmd(args: list[str]) -> str:
    return " \\\n  ".join(['"$TRTEXEC"', *(a if '"$' in a else shlex.quote(a) for a in args), '"$@"'])


FLOAT16_NOTE = """# The LLM graphs are float16 (nuwa-export --dtype float16), the vision graph float32. TensorRT 10
# builds weakly typed: pass --fp16 to keep the LLM in fp16, or --stronglyTyped to run every graph
# in its own types (what TensorRT for RTX and TensorRT 11 always do).
"""


QUANTIZED_NOTE = """# The LLM graphs are quantized ({precision}, nuwa-quantize: ModelOpt Q/DQ nodes): they are built
# with --stronglyTyped, so each layer runs in the types the graph gives it.
"""


def script(m: Manifest) -> str:
    note = FLOAT16_NOTE if m.precision.name == "float16" else ""
    if m.precision.quantized:
        note = QUANTIZED_NOTE.format(precision=m.precision.name)
    lines = [HEADER.format(version=__version__, engines=n.ENGINES_DIR) + note]
    for graph, spec in sorted(m.graphs.items()):
        profiles = m.engine_profiles[graph]
        engine = f"{n.ENGINES_DIR}/{n.engine_file(graph)}"
        build = [f"--onnx={spec.file}", f"--saveEngine={engine}", *_profile_flags(profiles)]
        if m.quantization and graph in m.quantization.graphs:
            build.insert(2, "--stronglyTyped")
        if graph == n.VISION_PLUGIN:
            build.insert(1, '--staticPlugins="$PLUGIN_LIB"')
        lines.append(f"echo '== {graph}: build'")
        lines.append(_cmd(build))
        for i, prof in enumerate(profiles):
            opt = {n: r[1] for n, r in prof.items()}
            run = [f"--loadEngine={engine}", f"--shapes={_spec(opt)}", "--dumpProfile", "--separateProfileRun"]
            if len(profiles) > 1:
                run.insert(1, f"--profile={i}")
            if graph == n.VISION_PLUGIN:
                run.insert(1, '--staticPlugins="$PLUGIN_LIB"')
            lines.append(f"echo '== {graph}: time profile {i}'")
            lines.append(_cmd(run))
    return "\n".join(lines) + "\n"


#: trtexec flags for a per-layer profile: timings per layer and the engine's layer information.
PROFILING_FLAGS = ("--dumpProfile", "--dumpLayerInfo", "--profilingVerbosity=detailed", "--separateProfileRun")
#: What the LLM graphs' two engine profiles are (``export/profiles.py``): 0 prefill, 1 decode.
PROFILE_NAMES = ("prefill", "decode")


def profiling_commands(m: Manifest, plugin_lib: str, out_dir: str = n.PROFILES_DIR) -> list[tuple[str, list[str]]]:
    """Per-layer trtexec profiling runs for every graph and engine profile of ``m``.

    Returns ``(stem, argv)`` pairs, ``argv`` without the trtexec executable, with paths
    relative to the export directory: engines are loaded from ``engines/<graph>.plan`` and
    results go to ``<out_dir>/<stem>.profile.json`` and ``<out_dir>/<stem>.layers.json``, where
    ``stem`` is the graph name, or ``<graph>.prefill`` / ``<graph>.decode`` for the LLM graphs.
    Shapes are each profile's ``opt`` shapes from the manifest. The engines must have been built
    with the same profiles (``trtexec.sh`` or ``nuwa-build``); the plugin variant loads
    ``plugin_lib``.
    """
    out = []
    for graph, _ in sorted(m.graphs.items()):
        profiles = m.engine_profiles[graph]
        for i, prof in enumerate(profiles):
            stem = graph if len(profiles) == 1 else f"{graph}.{PROFILE_NAMES[i] if i < len(PROFILE_NAMES) else i}"
            argv = [f"--loadEngine={n.ENGINES_DIR}/{n.engine_file(graph)}"]
            if graph == n.VISION_PLUGIN:
                argv.append(f"--staticPlugins={plugin_lib}")
            if len(profiles) > 1:
                argv.append(f"--profile={i}")
            argv += [
                f"--shapes={_spec({n: r[1] for n, r in prof.items()})}",
                *PROFILING_FLAGS,
                f"--exportProfile={out_dir}/{stem}.profile.json",
                f"--exportLayerInfo={out_dir}/{stem}.layers.json",
            ]
            out.append((stem, argv))
    return out
