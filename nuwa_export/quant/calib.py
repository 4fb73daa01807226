"""Calibration sets and calibration tensors.

A calibration set is a JSONL file, one request per line::

    {"image": "images/kitchen.jpg", "prompt": "What is on the table?"}
    {"image": "builtin:scene-3", "ground": "the red car"}

``image`` is a path relative to the JSONL file (or absolute), or ``builtin:NAME`` for a picture
drawn here (``builtin:example``: the demo's street; ``builtin:scene-N``: seeded shapes on a
background). ``prompt`` is a question; ``ground`` a phrase asked in the model family's own
grounding wording (LLaVA's RefCOCO question, Qwen2.5-VL's ``bbox_2d`` request). The sets live
in the top-level ``calib/`` folder; ``--calib default`` is ``calib/default.jsonl``.

Calibration tensors are what the LLM graphs really see: the float export runs the requests
through the real pipeline (vision, stage one, prefix, stage two, suffix, a few decode steps) on
ONNX Runtime, and every input of ``llm_prefix`` / ``llm_suffix`` is kept (:class:`RecordingBackend`),
spilled to ``.npz`` files so that a large model's KV does not have to fit in memory
(:func:`calibrate`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nuwa_export.errors import NuwaError
from nuwa_export.names import LLM_GRAPHS
from nuwa_export.runtime.backend import Backend

BUILTIN = "builtin:"
KEYS = ("image", "prompt", "ground")


def sets_dir() -> Path:
    """The top-level ``calib/`` folder of the source tree this package runs from."""
    return Path(__file__).resolve().parents[2] / "calib"


@dataclass(frozen=True)
class Entry:
    image: str  # an absolute path, or builtin:NAME
    prompt: str | None = None
    ground: str | None = None

    def question(self, family) -> str:
        """The prompt as the model family asks it."""
        return family.grounding.question(self.ground) if self.ground is not None else self.prompt

    def load(self):
        from nuwa_export.image import load_image

        if self.image.startswith(BUILTIN):
            return builtin_image(self.image[len(BUILTIN):])
        return load_image(self.image)


@dataclass(frozen=True)
class CalibSet:
    name: str
    path: Path
    entries: tuple[Entry, ...]
    sha256: str  # of the JSONL file and every image file it names (builtin pictures: their names)


def builtin_image(name: str):
    """``example`` (the demo picture) or ``scene-N`` (N ≥ 0: seeded rectangles and ellipses on a
    two-tone background, 320x240 or 240x320, so that both paddings occur)."""
    from PIL import Image, ImageDraw

    from nuwa_export.models.demo import example_picture

    if name == "example":
        return example_picture()
    if not (name.startswith("scene-") and name[6:].isdigit()):
        raise NuwaError(f"unknown built-in picture '{BUILTIN}{name}' (builtin:example or builtin:scene-N)")
    rng = np.random.default_rng(int(name[6:]))
    size = (320, 240) if rng.random() < 0.5 else (240, 320)
    sky, ground = (tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(2))
    im = Image.new("RGB", size, sky)
    d = ImageDraw.Draw(im)
    horizon = int(size[1] * rng.uniform(0.4, 0.7))
    d.rectangle((0, horizon, size[0], size[1]), fill=ground)
    for _ in range(int(rng.integers(3, 8))):
        x0, y0 = int(rng.integers(0, size[0] - 20)), int(rng.integers(0, size[1] - 20))
        x1, y1 = x0 + int(rng.integers(15, size[0] // 2)), y0 + int(rng.integers(15, size[1] // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)((x0, y0, x1, y1), fill=colour)
    return im


def resolve(spec: str | Path) -> Path:
    """``--calib``: a JSONL path, or the name of a set in ``calib/`` (``default``)."""
    path = Path(spec).expanduser()
    if path.suffix == ".jsonl" or path.exists() or "/" in str(spec):
        return path
    named = sets_dir() / f"{spec}.jsonl"
    if not named.is_file():
        found = sorted(p.stem for p in sets_dir().glob("*.jsonl")) if sets_dir().is_dir() else []
        where = f" (sets in {sets_dir()}: {', '.join(found)})" if found else f" ({sets_dir()} is not here: pass --calib PATH.jsonl)"
        raise NuwaError(f"no calibration set named '{spec}'{where}")
    return named


def load_set(spec: str | Path) -> CalibSet:
    """Read and check a calibration set before anything slow starts: every line one request (the
    line checks of ``nuwa-run --requests``: keys, text, the image's header), every image present."""
    from nuwa_export.manifest import sha256_file
    from nuwa_export.requests_file import image_and_question, jsonl_objects

    path = resolve(spec)
    h = hashlib.sha256()
    entries = []
    for _, where, data in jsonl_objects(path, "the calibration set", KEYS, comments=True):
        image, prompt, ground = image_and_question(data, where, path.parent, builtin=BUILTIN)
        if isinstance(image, str):
            try:
                builtin_image(image[len(BUILTIN):])  # an unknown name is refused here, not halfway through
            except NuwaError as e:
                raise NuwaError(f"{where}: {e}") from None
            h.update(image.encode())
        else:
            image = str(image.resolve())
            h.update(sha256_file(Path(image)).encode())
        entries.append(Entry(image, prompt if ground is None else None, ground))
    h.update(path.read_bytes())
    return CalibSet(path.stem, path, tuple(entries), h.hexdigest())


class FeedStore:
    """Graph inputs spilled to ``directory/<graph>-<batch>-<step>.npz`` as they are recorded."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, list[Path]] = {g: [] for g in LLM_GRAPHS}
        self.prefills: dict[str, list[Path]] = {g: [] for g in LLM_GRAPHS}
        self.left: dict[str, int] = {}
        self.batches = 0

    def begin(self, runs: int) -> None:
        """Record the next ``runs`` runs of each LLM graph (a batch's prefill, then decode steps)."""
        self.left = {g: runs for g in LLM_GRAPHS}
        self.step = {g: 0 for g in LLM_GRAPHS}
        self.batches += 1

    def stop(self) -> None:
        """Record nothing more."""
        self.left = {}

    def add(self, graph: str, inputs: dict) -> None:
        if self.left.get(graph, 0) <= 0:
            return
        self.left[graph] -= 1
        file = self.directory / f"{graph}-{self.batches:03d}-{self.step[graph]:03d}.npz"
        np.savez(file, **{k: v.detach().cpu().numpy() for k, v in inputs.items()})
        self.files[graph].append(file)
        if self.step[graph] == 0:
            self.prefills[graph].append(file)
        self.step[graph] += 1

    def reader(self, graph: str, prefill_only: bool = False) -> FeedReader:
        """The recorded runs of ``graph`` (``prefill_only``: the batches' prefills)."""
        return FeedReader(self.prefills[graph] if prefill_only else self.files[graph])


class FeedReader:
    """ModelOpt's ``calibration_data_reader``: ONNX Runtime's reader interface (``get_next``,
    ``rewind``; ModelOpt also calls ``get_first``) and iteration (its int4 path), loading one
    recorded run at a time."""

    def __init__(self, files: list[Path]) -> None:
        self.files, self.position = list(files), 0

    def _load(self, file: Path) -> dict[str, np.ndarray]:
        with np.load(file) as z:
            return {k: z[k] for k in z.files}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.files):
            return None
        self.position += 1
        return self._load(self.files[self.position - 1])

    def get_first(self) -> dict[str, np.ndarray]:
        return self._load(self.files[0])

    def rewind(self) -> None:
        self.position = 0

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return (self._load(f) for f in self.files)

    def __len__(self) -> int:
        return len(self.files)


class RecordingBackend(Backend):
    """Another backend (running the standard LLM graphs) whose LLM graph inputs are recorded."""

    def __init__(self, inner: Backend, store: FeedStore) -> None:
        if inner.in_place:
            raise ValueError("record the standard LLM graphs (llm_graphs='standard')")
        super().__init__(inner.manifest)
        self.inner, self.store = inner, store
        self.name, self.device = inner.name, inner.device

    def run(self, graph, inputs, out=None):
        if graph in LLM_GRAPHS:
            self.store.add(graph, inputs)
        return self.inner.run(graph, inputs, out)

    def close(self) -> None:
        self.inner.close()


def calibrate(directory: Path, manifest, calib: CalibSet, work: Path, *, decode_steps: int, tokens: int, one_batch: bool = False):
    """Run ``calib`` through the float export at ``directory`` (ONNX Runtime, CPU).

    Calibration tensors: the requests side by side in batches of the export's ``max_batch``
    (left-padded, as the runtime batches); the inputs of each batch's prefill and first
    ``decode_steps`` decode steps are recorded (a :class:`FeedStore` in ``work``). ``one_batch``:
    every request in one batch, so that each graph's prefill inputs are one tensor of one shape
    (ModelOpt's AWQ search concatenates activations across runs); ONNX Runtime's graphs take any
    batch (``max_batch`` bounds TensorRT's profiles), so the limit is lifted for this run only.

    Float records: each request alone, ``tokens`` greedy tokens, every stage kept
    (:func:`nuwa_export.verify.checks.record`): what the quantized graphs are held to."""
    from dataclasses import replace

    from nuwa_export import generation
    from nuwa_export.runtime.ort_backend import OrtBackend
    from nuwa_export.runtime.runner import open_runner
    from nuwa_export.sampling import SamplingConfig
    from nuwa_export.verify.checks import record

    size = len(calib.entries) if one_batch else manifest.max_batch
    manifest = replace(manifest, max_batch=max(size, manifest.max_batch))
    store = FeedStore(work)
    backend = RecordingBackend(OrtBackend(directory, manifest, "cpu", llm_graphs="standard"), store)
    with open_runner(directory, backend=backend, manifest=manifest) as pipeline:
        family, stages = pipeline.family, pipeline.stages()
        sampling = SamplingConfig(max_new_tokens=1 + decode_steps, stop_at_eos=False)
        requests = [generation.Request(e.load(), e.question(family), sampling) for e in calib.entries]
        for i in range(0, len(requests), size):
            store.begin(1 + decode_steps)
            generation.generate_batch(stages, requests[i : i + size])
        store.stop()
        records = [record(pipeline, r.image, r.prompt, tokens) for r in requests]
    return store, records
