"""TensorRT's Python module and the SwarmAggregate plugin library, as the runtime and the builder
load them: imported lazily (every verb and ``--help`` work without TensorRT), refused in one line.

Both Python modules (``tensorrt`` 10.x/11.x and ``tensorrt_rtx``) share the API used here.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from nuwa_export.errors import NuwaError

#: Where the plugin library is when ``--plugin-lib`` is not given.
PLUGIN_ENV = "NUWA_PLUGIN_LIB"

BUILDERS = {"tensorrt": ("tensorrt", "tensorrt-cu12 (or JetPack's python3-libnvinfer)"), "tensorrt-rtx": ("tensorrt_rtx", "tensorrt-rtx-cu13")}


def import_tensorrt(builder: str):
    """The ``tensorrt`` or ``tensorrt_rtx`` module, or a one-line error naming the package."""
    if builder not in BUILDERS:
        raise NuwaError(f"unknown builder '{builder}' (choose from {', '.join(BUILDERS)})")
    module, package = BUILDERS[builder]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise NuwaError(f"the {builder} builder needs the Python module '{module}': pip install {package}") from None


def check_plugin_library(path: Path) -> None:
    """Refuse, in one line, a plugin library that is missing, unreadable or not a shared library
    (an ELF file), before TensorRT is imported or anything is built."""
    if path.is_dir():
        raise NuwaError(f"plugin library {path} is a directory, not a shared library (libnuwa_trt_plugins.so)")
    if not path.is_file():
        raise NuwaError(f"plugin library not found: {path} (build it with CMake: see docs/plugin.md)")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise NuwaError(f"cannot read the plugin library {path} ({e.strerror or type(e).__name__})") from None
    if magic != b"\x7fELF":
        raise NuwaError(f"plugin library {path} is not a shared library (no ELF header); build libnuwa_trt_plugins.so with CMake: see docs/plugin.md")


def load_plugin_library(path: Path) -> None:
    """Load the SwarmAggregate plugin library (it registers its creator with TensorRT on load)."""
    import ctypes

    check_plugin_library(path)
    try:
        ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    except OSError as e:
        raise NuwaError(f"cannot load the plugin library {path}: {e}") from None


def plugin_library(explicit: str | Path | None) -> Path | None:
    """``--plugin-lib``, else ``$NUWA_PLUGIN_LIB``; None when neither is given."""
    value = explicit or os.environ.get(PLUGIN_ENV)
    return Path(value).expanduser() if value else None
