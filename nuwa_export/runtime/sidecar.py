"""``engines/<graph>.json``: what an engine was built with, read before the engine is loaded.

The runtime refuses an engine whose TensorRT version, compute capability or plugin library
differs from what is here, with one line saying what to rebuild.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from nuwa_export import jsonio
from nuwa_export import names as n
from nuwa_export.errors import NuwaError
from nuwa_export.manifest import build_record, sha256_file

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Sidecar:
    schema_version: int
    nuwa_export_version: str
    graph: str
    onnx_file: str
    onnx_sha256: str
    engine_file: str
    engine_sha256: str
    builder: str  # tensorrt | tensorrt-rtx
    builder_version: str
    device_name: str | None  # None: built without a GPU (TensorRT for RTX)
    compute_capability: list[int] | None
    target: str
    precision: str
    workspace_bytes: int
    profiles: list[dict[str, list]]
    plugin_library: str | None
    plugin_library_sha256: str | None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def path_for(engines: Path, graph: str) -> Path:
    return engines / n.sidecar_file(graph)


def read(path: Path) -> Sidecar:
    if not path.is_file():
        raise NuwaError(f"{path} is missing: every engine needs its sidecar; rebuild with nuwa-build")
    data = jsonio.read(path, "; rebuild with nuwa-build", expect=None)
    if isinstance(data, dict) and isinstance(data.get("schema_version"), int) and data["schema_version"] > SCHEMA_VERSION:
        raise NuwaError(f"{path} has schema_version {data['schema_version']}, newer than this nuwa-export reads ({SCHEMA_VERSION})")
    try:
        return build_record(Sidecar, data, path.name)
    except NuwaError as e:
        raise NuwaError(f"{path}: {str(e).removeprefix('manifest: ')}; rebuild with nuwa-build") from None


@dataclass(frozen=True)
class RuntimeEnv:
    """What the loading machine has: the TensorRT module, its version, the GPU, the plugin."""

    builder: str
    version: str
    compute_capability: tuple[int, int] | None
    plugin_library: Path | None


def check(sc: Sidecar, engines: Path, env: RuntimeEnv, directory: Path) -> None:
    """Refuse what this machine cannot serve, naming what to rebuild."""
    rebuild = f"rebuild on this machine: nuwa-build {directory} --builder {env.builder}"
    engine = engines / sc.engine_file
    if not engine.is_file():
        raise NuwaError(f"{engine} is missing; {rebuild}")
    if sha256_file(engine) != sc.engine_sha256:
        raise NuwaError(f"{engine} does not match the sha256 in {n.sidecar_file(sc.graph)} (corrupt or replaced); {rebuild}")
    if sc.builder != env.builder:
        raise NuwaError(f"{sc.engine_file} was built with {sc.builder}, but this runtime is {env.builder}; {rebuild}")
    if sc.builder_version != env.version:
        raise NuwaError(f"{sc.engine_file} was built with {sc.builder} {sc.builder_version}, this is {env.version}; {rebuild}")
    if sc.compute_capability is not None and env.compute_capability is not None and tuple(sc.compute_capability) != tuple(env.compute_capability):
        cc = ".".join(map(str, sc.compute_capability))
        here = ".".join(map(str, env.compute_capability))
        raise NuwaError(f"{sc.engine_file} was built for compute capability {cc}, this GPU is {here}; {rebuild}")
    if sc.plugin_library_sha256 is not None:
        lib = env.plugin_library
        if lib is None or not lib.is_file():
            raise NuwaError(
                f"{sc.engine_file} needs the SwarmAggregate plugin library ({sc.plugin_library}); "
                "pass --plugin-lib PATH or set NUWA_PLUGIN_LIB (build it with CMake: see docs/plugin.md)"
            )
        if sha256_file(lib) != sc.plugin_library_sha256:
            raise NuwaError(f"{lib} is not the plugin library {sc.engine_file} was built with (sha256 differs); {rebuild} --plugin")
