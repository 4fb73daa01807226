"""Model families: one folder each under ``models/families/``, found by listing this package.

A family (:class:`~nuwa_export.models.families.base.Family`) says what differs between families
(docs/architecture.md, "Model families"). Each subpackage defines ``FAMILY``, an instance of its
subclass; adding a family is adding a folder. Code outside ``models/`` asks the family
(:func:`family_for` for a checkpoint's config, :func:`family_named` for an export's manifest)
instead of comparing ``model_type`` itself.

Families: LLaVA-1.5 (:mod:`~nuwa_export.models.families.llava`) and Qwen2.5-VL
(:mod:`~nuwa_export.models.families.qwen2_5_vl`).
"""

from __future__ import annotations

import importlib
import pkgutil

from nuwa_export.errors import NuwaError
from nuwa_export.models.families.base import Family, Grounding

__all__ = ["Family", "Grounding", "families", "family_for", "family_named"]

_FAMILIES: dict[str, Family] = {}


def families() -> dict[str, Family]:
    """Every family, by name (each subpackage's ``FAMILY``), sorted."""
    if not _FAMILIES:
        found = {}
        for info in pkgutil.iter_modules(__path__):
            if info.ispkg:
                family = importlib.import_module(f"{__name__}.{info.name}").FAMILY
                found[family.name] = family
        _FAMILIES.update(sorted(found.items()))
    return dict(_FAMILIES)


def family_named(name: str) -> Family:
    """The family an export's manifest names."""
    known = families()
    if name not in known:
        raise NuwaError(f"model family '{name}' is not one this nuwa-export knows ({', '.join(sorted(known))})")
    return known[name]


def family_for(config) -> Family:
    """The family of a checkpoint's config (by its ``model_type``)."""
    model_type = getattr(config, "model_type", None)
    known = families().values()
    for family in known:
        if model_type in family.model_types:
            return family
    supported = ", ".join(sorted(t for f in known for t in f.model_types))
    raise NuwaError(f"unsupported checkpoint: model_type '{model_type}' (supported: {supported})")
