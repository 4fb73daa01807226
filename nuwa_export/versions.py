"""Versions of installed packages, as manifests and benchmark records keep them."""

from __future__ import annotations


def installed(packages) -> dict[str, str]:
    """``package → version`` for each of ``packages`` that is installed (the others left out)."""
    import importlib.metadata as md

    out = {}
    for pkg in packages:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out
