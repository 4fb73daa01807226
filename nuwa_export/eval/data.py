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

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from nuwa_export import jsonio
from nuwa_export.errors import NuwaError
from nuwa_export.eval import parquet as pqio
from nuwa_export.eval.paths import user_path
from nuwa_export.eval.tasks import Task

#: The image placeholder of lmms-eval's data: the prompt template places the image itself.
IMAGE_TOKEN = "<image>"

_IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def _show(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
        return f"sample {i} ({ref if isinstance(ref, Path) else self.column.where(ref)})"

    def image(self, i: int):
        """Sample ``i``'s image, RGB; its size is checked against the annotation's."""
        from nuwa_export.image import decode_image

        ref = self.samples[i].image
        if isinstance(ref, Path):
            if not _is_file(ref):
                raise NuwaError(f"{self.where(i)}: image file not found; pass --images DIR where the images are")
            img = decode_image(ref, self.where(i))
        else:
            img = decode_image(io.BytesIO(self._bytes(i)), self.where(i))
        self._check_size(i, img.size)
        self._sizes[i] = img.size
        return img

    def size(self, i: int) -> tuple[int, int]:
        """(width, height) of sample ``i``'s original image: the annotation's, or read from the
        image's header (no pixel is decoded)."""
        if self.samples[i].size is not None:
            return self.samples[i].size
        if i not in self._sizes:
            self._sizes[i] = self._peek(i)
        return self._sizes[i]

    def check_images(self, indices) -> None:
        """Refuse, in one line, before anything runs: image files missing for the samples about to
        run, and images whose header cannot be read, is over the size limit, or disagrees with
        the annotation's size. Only headers are read; pixels are decoded when a sample runs."""
        first: dict = {}  # image → the first sample that shows it
        for i in indices:
            first.setdefault(self.samples[i].image, i)
        missing = sorted(str(ref) for ref in first if isinstance(ref, Path) and not _is_file(ref))
        if missing:
            raise NuwaError(f"{len(missing)} image file(s) missing, e.g. {missing[0]}; pass --images DIR where they are")
        sizes = {ref: self._peek(i) for ref, i in first.items()}
        for i in indices:
            self._check_size(i, sizes[self.samples[i].image])
            self._sizes[i] = sizes[self.samples[i].image]

    def _bytes(self, i: int) -> bytes:
        return pqio.image_bytes(self.column.get(self.samples[i].image), self.where(i), self.images_dir)

    def _peek(self, i: int) -> tuple[int, int]:
        ref = self.samples[i].image
        return _header_size(ref if isinstance(ref, Path) else io.BytesIO(self._bytes(i)), self.where(i))

    def _check_size(self, i: int, size: tuple[int, int]) -> None:
        want = self.samples[i].size
        if want is not None and tuple(size) != tuple(want):
            raise NuwaError(f"{self.where(i)} is {size[0]}x{size[1]} but its annotation says {want[0]}x{want[1]}: wrong --images?")

    def fingerprint(self) -> dict:
        """What identifies this data for caching: files with sizes and modification times."""
        stat = lambda p: [str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns]
        return {"task": self.task.name, "files": [stat(f) for f in self.files], "images": str(self.images_dir.resolve()) if self.images_dir else None}


def load(task: Task, data: str | Path, images: str | Path | None = None) -> EvalData:
    """Read ``data`` for ``task``; the format follows from the path (``.json``/``.jsonl`` or parquet)."""
    try:
        images_dir = user_path(images, "--images") if images else None
        if images_dir is not None and not images_dir.exists():
            raise NuwaError(f"--images {images_dir}: no such file or folder")
        name = str(data).lower()
        if name.endswith((".json", ".jsonl")):
            if not task.grounding:
                raise NuwaError(f"{data}: JSON data (VLM-R1's RefCOCO format) is for the refcoco tasks; {task.name} reads lmms-lab parquet")
            return _vlm_r1(task, user_path(data, "--data"), images_dir)
        files = pqio.parquet_files(data)
        reader = _grounding_parquet if task.grounding else {"gqa": _gqa, "pope": _pope, "textvqa": _textvqa}[task.name]
        return reader(task, files, images_dir)
    except OSError as e:  # e.g. a name longer than the file system allows
        raise NuwaError(f"cannot read {e.filename or data} ({e.strerror or type(e).__name__})") from None


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
        image = e["image"]
        if not isinstance(image, str) or not image.strip() or "\0" in image:
            raise NuwaError(f"{where}: image must be a file name (a path under --images), got {_show(image)}")
        x1, y1, x2, y2 = _box(e["solution"], f"{where}: solution", "[x1, y1, x2, y2] pixels")
        if x2 <= x1 or y2 <= y1:
            raise NuwaError(f"{where}: solution {_show(e['solution'])} has no area (x2 must exceed x1 and y2 exceed y1)")
        text = _text(e["normal_caption"], where, "normal_caption", "expression")
        samples.append(Sample(i, str(e.get("id", i)), text, (x1, y1, x2, y2), root / image, _size(e, where)))
    return EvalData(task, [path], samples, root)


def _read_json(path: Path):
    """A JSON list, or JSON Lines (``.jsonl``): every way the text can be broken is one line."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise NuwaError(f"cannot read {path} ({e.strerror or type(e).__name__})") from None
    if path.suffix.lower() != ".jsonl":
        return jsonio.loads(raw, str(path))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NuwaError(f"{path} is not UTF-8 text (byte {e.start + 1})") from None
    # "\n" only: JSON strings may hold U+2028 and other characters str.splitlines() breaks at
    return [jsonio.loads(line, f"{path} line {k}") for k, line in enumerate(text.split("\n"), 1) if line.strip()]


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _box(value, what: str, rule: str) -> tuple[float, float, float, float]:
    """Four finite numbers; ``what`` names the field (``data.json entry 3: solution``)."""
    if not isinstance(value, (list, tuple)) or len(value) != 4 or not all(_number(v) for v in value):
        raise NuwaError(f"{what} must be {rule}, got {_show(value)}")
    try:
        box = tuple(float(v) for v in value)
    except OverflowError:
        box = (math.inf,)
    if not all(math.isfinite(v) for v in box):
        raise NuwaError(f"{what} must be {rule}, finite numbers; got {_show(value)}")
    return box


def _size(e: dict, where: str) -> tuple[int, int] | None:
    """The annotation's ``(width, height)``: both or neither, each a positive whole number."""
    given = [k for k in ("width", "height") if k in e]
    if not given:
        return None
    if len(given) == 1:
        other = "height" if given[0] == "width" else "width"
        raise NuwaError(f"{where}: has {given[0]} but no {other}; give both or neither")
    size = []
    for k in ("width", "height"):
        v = e[k]
        whole = _number(v) and (isinstance(v, int) or (math.isfinite(v) and float(v).is_integer()))
        if not whole or v < 1:
            raise NuwaError(f"{where}: {k} must be a positive whole number of pixels, got {_show(v)}")
        size.append(int(v))
    return size[0], size[1]


def _text(value, where: str, field: str, noun: str) -> str:
    """A referring expression or a question: non-empty UTF-8 text without ``<image>``."""
    if not isinstance(value, str):
        raise NuwaError(f"{where}: {field} must be text, got {_show(value)}")
    if not value.strip():
        raise NuwaError(f"{where}: {field} is empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise NuwaError(f"{where}: {field} is not valid UTF-8 text (character {e.start + 1})") from None
    if IMAGE_TOKEN in value:
        raise NuwaError(f"{where}: the {noun} {_show(value)} contains {IMAGE_TOKEN}; the prompt template places the image itself, so the data must not")
    return value


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system; a NUL byte
        return False


def _header_size(source, where: str) -> tuple[int, int]:
    """An image's (width, height) from its header alone, with the limits of image decoding."""
    from nuwa_export.image import image_size

    return image_size(source, where)


def _id(row: dict, *keys: str, default) -> str:
    return next((str(row[k]) for k in keys if row.get(k) is not None), str(default))


def _grounding_parquet(task: Task, files: list[Path], images_dir: Path | None) -> EvalData:
    have = pqio.require(files, ["image", "answer", "bbox"], f"the {task.name} reader (lmms-lab RefCOCO schema)")
    rows = pqio.read_rows(files, ["answer", "bbox"] + (["question_id"] if "question_id" in have else []))
    samples = []
    for r, row in enumerate(rows):
        where = f"{task.name} row {r}"
        x, y, w, h = _box(row["bbox"], f"{where}: bbox", "[x, y, w, h] pixels")
        if not (w > 0 and h > 0):
            raise NuwaError(f"{where}: bbox {_show(row['bbox'])} has no area (width and height must be positive)")
        expressions = row["answer"] if isinstance(row["answer"], list) else [row["answer"]]
        for k, expression in enumerate(expressions):
            text = _text(expression, f"{where} (sample {len(samples)})", f"answer[{k}]" if isinstance(row["answer"], list) else "answer", "expression")
            samples.append(Sample(len(samples), _id(row, "question_id", default=r), text, (x, y, x + w, y + h), r))
    return EvalData(task, files, samples, images_dir, pqio.LazyColumn(files, "image"))


def _gqa(task: Task, files: list[Path], images_dir: Path | None) -> EvalData:
    have = pqio.require(files, ["question", "answer", "imageId"], "the gqa reader (lmms-lab GQA testdev_balanced_instructions)")
    rows = pqio.read_rows(files, ["question", "answer", "imageId"] + [k for k in ("id", "question_id") if k in have])
    if "image" in have:
        column, refs = pqio.LazyColumn(files, "image"), list(range(len(rows)))
        return EvalData(task, files, _vqa(task, rows, "answer", refs), images_dir, column)
    if images_dir is None:
        raise NuwaError("gqa: images live apart from the questions; pass --images (the testdev_balanced_images parquet, or a folder of <imageId>.jpg)")
    if images_dir.is_dir() and not list(images_dir.glob("*.parquet")):
        refs = [_image_file(images_dir, str(row["imageId"])) for row in rows]
        return EvalData(task, files, _vqa(task, rows, "answer", refs), images_dir)
    image_files = pqio.parquet_files(images_dir)
    pqio.require(image_files, ["id", "image"], "GQA images (lmms-lab testdev_balanced_images)")
    ids = {str(row["id"]): k for k, row in enumerate(pqio.read_rows(image_files, ["id"]))}
    unknown = [str(row["imageId"]) for row in rows if str(row["imageId"]) not in ids]
    if unknown:
        raise NuwaError(f"{len(unknown)} GQA image id(s) not in {images_dir}, e.g. {unknown[0]}")
    refs = [ids[str(row["imageId"])] for row in rows]
    return EvalData(task, files + image_files, _vqa(task, rows, "answer", refs), images_dir, pqio.LazyColumn(image_files, "image"))


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
    return EvalData(task, files, _vqa(task, rows, "answer", list(range(len(rows)))), images_dir, pqio.LazyColumn(files, "image"))


def _textvqa(task: Task, files: list[Path], images_dir: Path | None) -> EvalData:
    have = pqio.require(files, ["question", "answers", "image"], "the textvqa reader (lmms-lab textvqa schema)")
    rows = pqio.read_rows(files, ["question", "answers"] + (["question_id"] if "question_id" in have else []))
    for r, row in enumerate(rows):
        if not isinstance(row["answers"], list) or not row["answers"] or not all(isinstance(a, str) for a in row["answers"]):
            raise NuwaError(f"textvqa row {r}: no human answers (the test split has none; use validation)")
    return EvalData(task, files, _vqa(task, rows, "answers", list(range(len(rows)))), images_dir, pqio.LazyColumn(files, "image"))


def _vqa(task: Task, rows: list[dict], truth: str, refs: list) -> list[Sample]:
    samples = []
    for i, row in enumerate(rows):
        where = f"{task.name} row {i}"
        if truth == "answer" and not isinstance(row[truth], str):
            raise NuwaError(f"{where}: answer must be text, got {_show(row[truth])}")
        text = _text(row["question"], where, "question", "question")
        samples.append(Sample(i, _id(row, "question_id", "id", default=i), text, row[truth], refs[i]))
    return samples


def sha_key(obj) -> str:
    """A short stable key for a JSON-able object (cache file names)."""
    import hashlib

    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]

