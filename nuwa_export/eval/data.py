"""Evaluation data on the user's disk: lmms-lab parquet files, or VLM-R1's RefCOCO JSON.

Samples are numbered in file order; that number is the ``index`` of a prediction line. An
lmms-lab RefCOCO row lists several referring expressions (``answer``); each is one sample, in
order, as lmms-eval explodes them. Nothing is downloaded.

- VLM-R1 RefCOCO JSON (``.json`` list or ``.jsonl``): ``image`` (path under ``--images``, default
  the JSON's folder), ``normal_caption``, ``solution`` (``[x1, y1, x2, y2]`` pixels), and
  ``width`` / ``height``.
- lmms-lab RefCOCO / RefCOCO+ / RefCOCOg: ``image``, ``answer`` (list), ``bbox`` (``[x, y, w, h]``
  pixels), ``question_id``.
- GQA: ``question``, ``answer``, ``imageId``, ``id``; images from ``--images``: the
  ``testdev_balanced_images`` parquet (``id``, ``image``) or a folder of ``<imageId>.jpg``.
- POPE: ``question``, ``answer`` (yes / no), ``image``, ``question_id``.
- TextVQA: ``question``, ``answers`` (ten), ``image``, ``question_id``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from nuwa_export.errors import NuwaError
from nuwa_export.eval import parquet as pqio
from nuwa_export.eval.tasks import Task

_IMAGE_EXTS = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class Sample:
    index: int
    id: str
    text: str  # the referring expression, or the question
    truth: object  # grounding: (x1, y1, x2, y2) pixels; GQA / POPE: the answer; TextVQA: the answers
    image: object  # a Path, or a row of the data's lazy image column
    size: tuple[int, int] | None = None  # (width, height) when the annotation says


@dataclass
class EvalData:
    task: Task
    files: list[Path]
    samples: list[Sample]
    images_dir: Path | None = None
    column: pqio.LazyColumn | None = None  # images kept in parquet
    _sizes: dict[int, tuple[int, int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.samples)

    def where(self, i: int) -> str:
        ref = self.samples[i].image
        return str(ref) if isinstance(ref, Path) else f"sample {i} ({self.column.where(ref)})"

    def image(self, i: int):
        """Sample ``i``'s image, RGB; its size is checked against the annotation's."""
        from nuwa_export.image import load_image

        ref = self.samples[i].image
        if isinstance(ref, Path):
            img = load_image(ref)
        else:
            img = pqio.decode(pqio.image_bytes(self.column.get(ref), self.where(i), self.images_dir), self.where(i))
        want = self.samples[i].size
        if want is not None and tuple(img.size) != tuple(want):
            raise NuwaError(f"{self.where(i)} is {img.width}x{img.height} but its annotation says {want[0]}x{want[1]}: wrong --images?")
        self._sizes[i] = img.size
        return img

    def size(self, i: int) -> tuple[int, int]:
        """(width, height) of sample ``i``'s original image (from the annotation if it has one)."""
        if self.samples[i].size is not None:
            return self.samples[i].size
        if i not in self._sizes:
            self._sizes[i] = self.image(i).size
        return self._sizes[i]

    def check_images(self, indices) -> None:
        """Refuse, in one line, image files that are missing for the samples about to run."""
        missing = sorted({str(s.image) for s in (self.samples[i] for i in indices) if isinstance(s.image, Path) and not s.image.is_file()})
        if missing:
            raise NuwaError(f"{len(missing)} image file(s) missing, e.g. {missing[0]}; pass --images DIR where they are")

    def fingerprint(self) -> dict:
        """What identifies this data for caching: files with sizes and modification times."""
        stat = lambda p: [str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns]
        return {"task": self.task.name, "files": [stat(f) for f in self.files], "images": str(self.images_dir.resolve()) if self.images_dir else None}


def load(task: Task, data: str | Path, images: str | Path | None = None) -> EvalData:
    """Read ``data`` for ``task``; the format follows from the path (``.json``/``.jsonl`` or parquet)."""
    images_dir = Path(images).expanduser() if images else None
    if images_dir is not None and not images_dir.exists():
        raise NuwaError(f"--images {images_dir}: no such file or folder")
    name = str(data).lower()
    if name.endswith((".json", ".jsonl")):
        if not task.grounding:
            raise NuwaError(f"{data}: JSON data (VLM-R1's RefCOCO format) is for the refcoco tasks; {task.name} reads lmms-lab parquet")
        return _vlm_r1(task, Path(data).expanduser(), images_dir)
    files = pqio.parquet_files(data)
    reader = _grounding_parquet if task.grounding else {"gqa": _gqa, "pope": _pope, "textvqa": _textvqa}[task.name]
    return reader(task, files, images_dir)


def _vlm_r1(task: Task, path: Path, images_dir: Path | None) -> EvalData:
    if not path.is_file():
        raise NuwaError(f"data file not found: {path}")
    entries = _read_json(path)
    if not isinstance(entries, list):
        raise NuwaError(f"{path}: expected a list of annotations (VLM-R1 RefCOCO format)")
    root = images_dir or path.parent
    samples = []
    for i, e in enumerate(entries):
        where = f"{path.name} entry {i}"
        if not isinstance(e, dict) or any(k not in e for k in ("image", "normal_caption", "solution")):
            raise NuwaError(f"{where}: needs image, normal_caption and solution (VLM-R1 RefCOCO format)")
        box = _box(e["solution"], where, "solution must be [x1, y1, x2, y2] pixels")
        size = (int(e["width"]), int(e["height"])) if "width" in e and "height" in e else None
        samples.append(Sample(i, str(e.get("id", i)), str(e["normal_caption"]), box, root / e["image"], size))
    return EvalData(task, [path], samples, root)


def _read_json(path: Path):
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise NuwaError(f"cannot read {path} ({type(e).__name__})") from None
    if path.suffix != ".jsonl":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise NuwaError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    entries = []
    for k, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise NuwaError(f"{path} line {k}: not valid JSON ({e.msg})") from None
    return entries


def _box(value, where: str, rule: str) -> tuple[float, float, float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 4 or not all(isinstance(v, (int, float)) for v in value):
        raise NuwaError(f"{where}: {rule}, got {value!r}")
    return tuple(float(v) for v in value)


def _id(row: dict, *keys: str, default) -> str:
    return next((str(row[k]) for k in keys if row.get(k) is not None), str(default))


def _grounding_parquet(task: Task, files: list[Path], images_dir: Path | None) -> EvalData:
    have = pqio.require(files, ["image", "answer", "bbox"], f"the {task.name} reader (lmms-lab RefCOCO schema)")
    rows = pqio.read_rows(files, ["answer", "bbox"] + (["question_id"] if "question_id" in have else []))
    samples = []
    for r, row in enumerate(rows):
        x, y, w, h = _box(row["bbox"], f"row {r}", "bbox must be [x, y, w, h] pixels")
        if w <= 0 or h <= 0:
            raise NuwaError(f"row {r}: bbox {row['bbox']} has no area")
        expressions = row["answer"] if isinstance(row["answer"], list) else [row["answer"]]
        for expression in expressions:
            samples.append(Sample(len(samples), _id(row, "question_id", default=r), str(expression), (x, y, x + w, y + h), r))
    return EvalData(task, files, samples, images_dir, pqio.LazyColumn(files, "image"))


def _gqa(task: Task, files: list[Path], images_dir: Path | None) -> EvalData:
    have = pqio.require(files, ["question", "answer", "imageId"], "the gqa reader (lmms-lab GQA testdev_balanced_instructions)")
    rows = pqio.read_rows(files, ["question", "answer", "imageId"] + [k for k in ("id", "question_id") if k in have])
    if "image" in have:
        column, refs = pqio.LazyColumn(files, "image"), list(range(len(rows)))
        return EvalData(task, files, _vqa(rows, "answer", refs), images_dir, column)
    if images_dir is None:
        raise NuwaError("gqa: images live apart from the questions; pass --images (the testdev_balanced_images parquet, or a folder of <imageId>.jpg)")
    if images_dir.is_dir() and not list(images_dir.glob("*.parquet")):
        refs = [_image_file(images_dir, str(row["imageId"])) for row in rows]
        return EvalData(task, files, _vqa(rows, "answer", refs), images_dir)
    image_files = pqio.parquet_files(images_dir)
    pqio.require(image_files, ["id", "image"], "GQA images (lmms-lab testdev_balanced_images)")
    ids = {str(row["id"]): k for k, row in enumerate(pqio.read_rows(image_files, ["id"]))}
    unknown = [str(row["imageId"]) for row in rows if str(row["imageId"]) not in ids]
    if unknown:
        raise NuwaError(f"{len(unknown)} GQA image id(s) not in {images_dir}, e.g. {unknown[0]}")
    refs = [ids[str(row["imageId"])] for row in rows]
    return EvalData(task, files + image_files, _vqa(rows, "answer", refs), images_dir, pqio.LazyColumn(image_files, "image"))


def _image_file(folder: Path, image_id: str) -> Path:
    for ext in _IMAGE_EXTS:
        if (folder / f"{image_id}{ext}").is_file():
            return folder / f"{image_id}{ext}"
    return folder / f"{image_id}.jpg"  # reported missing by check_images


def _pope(task: Task, files: list[Path], images_dir: Path | None) -> EvalData:
    have = pqio.require(files, ["question", "answer", "image"], "the pope reader (lmms-lab POPE schema)")
    rows = pqio.read_rows(files, [c for c in ("question_id", "id", "question", "answer") if c in have])
    for r, row in enumerate(rows):
        row["answer"] = str(row["answer"]).lower().strip()
        if row["answer"] not in ("yes", "no"):
            raise NuwaError(f"pope row {r}: the answer must be yes or no, got {row['answer']!r}")
    return EvalData(task, files, _vqa(rows, "answer", list(range(len(rows)))), images_dir, pqio.LazyColumn(files, "image"))


def _textvqa(task: Task, files: list[Path], images_dir: Path | None) -> EvalData:
    have = pqio.require(files, ["question", "answers", "image"], "the textvqa reader (lmms-lab textvqa schema)")
    rows = pqio.read_rows(files, ["question", "answers"] + (["question_id"] if "question_id" in have else []))
    for r, row in enumerate(rows):
        if not row["answers"] or not all(isinstance(a, str) for a in row["answers"]):
            raise NuwaError(f"textvqa row {r}: no human answers (the test split has none; use validation)")
    return EvalData(task, files, _vqa(rows, "answers", list(range(len(rows)))), images_dir, pqio.LazyColumn(files, "image"))


def _vqa(rows: list[dict], truth: str, refs: list) -> list[Sample]:
    return [
        Sample(i, _id(row, "question_id", "id", default=i), str(row["question"]), row[truth], refs[i])
        for i, row in enumerate(rows)
    ]


def sha_key(obj) -> str:
    """A short stable key for a JSON-able object (cache file names)."""
    import hashlib

    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]

