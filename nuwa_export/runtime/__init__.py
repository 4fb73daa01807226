"""Run a model or an export: engine backends (ONNX Runtime, TensorRT) behind one interface, the
PyTorch reference, and one way to open either (:func:`open_runner`, :class:`Runner`).

Importing this package is cheap (``--help`` and the consistency check need no torch): the names
below load :mod:`nuwa_export.runtime.runner` when first used.
"""

from nuwa_export.constants import BACKENDS

__all__ = ["BACKENDS", "Runner", "open_runner"]


def __getattr__(name: str):
    if name in ("Runner", "open_runner"):
        from nuwa_export.runtime import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
