"""Opening an export directory: its manifest read and every file checked against it, and what the
runtime reads from the manifest (budgets, preprocessing, the image plan, the family)."""

from __future__ import annotations

from pathlib import Path

from nuwa_export import manifest as mf
from nuwa_export import names
from nuwa_export.image import ImageConfig
from nuwa_export.models.families import Family, family_named
from nuwa_export.pruning import Budgets, ImagePlan


def is_export_dir(path: str | Path) -> bool:
    return (Path(path).expanduser() / names.MANIFEST).is_file()


def read_export(directory: str | Path) -> mf.Manifest:
    """``DIR/manifest.json`` read strictly, every file it lists hashed, and the files held to it
    (:mod:`nuwa_export.runtime.consistency`): what every verb does when it opens an export."""
    from nuwa_export.runtime.consistency import check

    manifest = mf.read(directory)
    check(directory, manifest)  # files that pass their sha256 may still disagree with the manifest
    return manifest


def family_of(m: mf.Manifest) -> Family:
    return family_named(m.family)


def budgets_of(m: mf.Manifest) -> Budgets:
    b = m.budgets
    return Budgets(
        b.keep, b.stage_one_keep, b.stage_two_keep, b.stage_two_layer, m.num_patches, b.num_layers, b.prune, b.keep_ratio,
        b.per_region if b.keep_ratio is not None else None,
    )


def image_config_of(m: mf.Manifest) -> ImageConfig:
    p = dict(m.preprocessing)
    return ImageConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in p.items()})


def plan_of(m: mf.Manifest) -> ImagePlan:
    """The image plan the export was made for (its family's, on the recorded grid)."""
    return family_of(m).plan(tuple(m.grid), budgets_of(m))
