"""One way to open a runner for a model or an export: :func:`open_runner`.

Every verb, the evaluation harness, calibration, export validation and ``--layerwise`` open
what they run through it, and get a :class:`Runner`: an export directory on an engine backend (ONNX Runtime,
TensorRT; :class:`~nuwa_export.runtime.pipeline.Pipeline`), the PyTorch reference configured as
an export was made (``backend="torch"``), or the reference on a checkpoint with the budgets asked
for (:class:`~nuwa_export.runtime.reference.Reference`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from nuwa_export import manifest as mf
from nuwa_export import names
from nuwa_export.constants import BACKENDS
from nuwa_export.errors import NuwaError
from nuwa_export.generation import GenerationResult, Request, Session, Stages
from nuwa_export.image import ImageConfig
from nuwa_export.models.families import Family
from nuwa_export.models.loader import CheckpointInfo, LoadedModel
from nuwa_export.pruning import BudgetRequest, Budgets, ImagePlan
from nuwa_export.pruning.spec import StageOneSpec
from nuwa_export.runtime.backend import Backend
from nuwa_export.runtime.exports import budgets_of, is_export_dir, read_export
from nuwa_export.sampling import SamplingConfig


class Runner(Protocol):
    """What every runner offers (and the server, the verbs and the harness use)."""

    name: str  # the backend: ort, trt or torch
    family: Family
    tokenizer: Any
    image_config: ImageConfig
    budgets: Budgets
    plan: ImagePlan  # how its images become tokens (the export's, or the checkpoint's at these budgets)
    max_batch: int | None  # the most requests side by side (an export's max_batch), None: any

    def stages(self) -> Stages: ...

    def session(self) -> Session: ...

    def generate(self, image, prompt: str, sampling: SamplingConfig | None = None, on_token: Callable[[int], None] | None = None,
                 trace: dict | None = None) -> GenerationResult: ...

    def generate_batch(self, requests: Sequence[Request], batch_size: int | None = None) -> list[GenerationResult]: ...

    def stage_one_pillars(self, image, stage_one_indices: list[int]) -> list[bool] | None: ...

    def close(self) -> None: ...

    def __enter__(self): ...

    def __exit__(self, *exc) -> None: ...


def make_backend(name: str, directory: Path, manifest: mf.Manifest, device: str = "auto", llm_graphs: str = "auto") -> Backend:
    """An engine backend for ``directory`` (``torch`` is not one: it runs the reference).
    ``llm_graphs`` picks the ort backend's LLM graphs (:class:`~nuwa_export.runtime.ort_backend.OrtBackend`);
    TensorRT always builds the standard ones."""
    if name == "ort":
        from nuwa_export.runtime.ort_backend import OrtBackend

        return OrtBackend(directory, manifest, device, llm_graphs=llm_graphs)
    if name == "trt":
        from nuwa_export.runtime.trt_backend import TrtBackend

        return TrtBackend(directory, manifest, device)
    raise NuwaError(f"unknown backend '{name}' (choose from {', '.join(BACKENDS)})")


def open_runner(
    model_or_export: str | Path | CheckpointInfo | LoadedModel,
    *,
    backend: str | Backend | None = None,
    device: str = "auto",
    dtype: str = "auto",
    budgets: BudgetRequest | tuple[Budgets, StageOneSpec] | None = None,
    image_size: int | None = None,
    llm_graphs: str = "auto",
    manifest: mf.Manifest | None = None,
) -> Runner:
    """A runner for ``model_or_export``:

    * an export directory: ``backend`` ``ort`` (default) or ``trt``, or a :class:`Backend` already
      made for it (calibration records through one); ``torch`` runs the PyTorch reference on the
      checkpoint it came from with its budgets (``dtype`` auto: the export's LLM dtype). Its
      budgets were fixed when exporting: ``budgets`` must be None. ``manifest``: the export's,
      already read and checked (:func:`~nuwa_export.runtime.exports.read_export`), for callers
      that open one export more than once; read and checked here otherwise. ``llm_graphs``
      picks the ort backend's LLM graphs.
    * a checkpoint (alias, demo, directory, hub id; or its :class:`CheckpointInfo`, already
      inspected): the PyTorch reference with ``budgets`` (a request the family resolves, or
      budgets and stage-one settings already resolved; None: the family's defaults) at
      ``image_size``, loaded in ``dtype`` on ``device``;
    * a :class:`LoadedModel`: the same on the model as it was loaded (its device, dtype and image
      size; ``device``, ``dtype`` and ``image_size`` must be left at their defaults).
    """
    if isinstance(model_or_export, (CheckpointInfo, LoadedModel)) or not is_export_dir(model_or_export):
        if backend not in (None, "torch"):
            raise NuwaError(f"--backend {backend} runs an export directory; export first: nuwa-export --model {model_or_export} --out DIR")
        return _reference(model_or_export, budgets, device, dtype, image_size)
    if budgets is not None:
        raise NuwaError("budgets are fixed when exporting; re-run nuwa-export to change them")
    directory = Path(model_or_export).expanduser()
    manifest = manifest or read_export(directory)
    backend = backend or "ort"
    if backend == "torch":
        return reference_for_export(directory, manifest, device, dtype)
    from nuwa_export.runtime.pipeline import Pipeline

    engine = backend if isinstance(backend, Backend) else make_backend(backend, directory, manifest, device, llm_graphs)
    try:
        return Pipeline(directory, engine, manifest)
    except BaseException:
        engine.close()
        raise


def _reference(model: str | Path | CheckpointInfo | LoadedModel, budgets, device: str, dtype: str, image_size: int | None):
    from nuwa_export.models.loader import inspect_checkpoint, load
    from nuwa_export.runtime.reference import Reference

    if isinstance(model, LoadedModel):
        if (device, dtype, image_size) != ("auto", "auto", None):
            raise ValueError("a LoadedModel runs as it was loaded: load it on another device or in another dtype instead")
        return Reference(model, *(budgets if isinstance(budgets, tuple) else model.resolve(budgets)))
    info = model if isinstance(model, CheckpointInfo) else inspect_checkpoint(str(model), image_size)
    resolved = budgets if isinstance(budgets, tuple) else info.resolve(budgets)  # refused before any weight is read
    return Reference(load(info, dtype=dtype, device=device), *resolved)


def reference_for_export(directory: Path, manifest: mf.Manifest, device: str = "auto", dtype: str = "auto"):
    """The PyTorch reference configured exactly as ``directory`` was exported: its budgets and
    stage-one settings, its LLM dtype (``dtype="auto"``) and a float32 vision tower, as in
    ``vision.onnx``. The checkpoint must be the one it was exported from (weights' sha256)."""
    from nuwa_export.models.loader import inspect_checkpoint, load, weight_files
    from nuwa_export.runtime.reference import Reference

    info = inspect_checkpoint(manifest.model.id, manifest.preprocessing.get("size"))
    files = {p.name: mf.sha256_file(p) for p in weight_files(info.path)}
    if files != manifest.model.weights:
        raise NuwaError(f"the checkpoint at {info.path} is not the one {directory} was exported from (weights sha256 differ)")
    b = manifest.budgets
    dtype = manifest.precision.float_type if dtype in (None, "auto") else dtype
    loaded = load(info, dtype=dtype, device=device, vision_dtype="float32")
    return Reference(loaded, budgets_of(manifest), StageOneSpec(b.per_region, b.distance, b.percentile, b.self_weight))


def checkpoint_dir(model_id: str) -> Path | None:
    """Where a checkpoint an export names is on this machine, if it is (a built-in demo is built
    on first use): for its example picture."""
    from nuwa_export.models.registry import demo_dir

    demo = demo_dir(model_id)
    if demo is not None:
        return demo
    return Path(model_id) if Path(model_id).is_dir() else None


def example_picture_of(model: str | Path | None) -> Path | None:
    """The example picture a demo-built checkpoint carries (``model``: its directory), or None."""
    if model is None:
        return None
    picture = Path(model) / names.EXAMPLE_PICTURE
    return picture if picture.is_file() else None
