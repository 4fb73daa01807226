"""``nuwa-run --requests FILE.jsonl``: many questions, read and checked before any work starts.

One JSON object per line: ``{"image": PATH, "prompt": TEXT}`` with optional ``max_new_tokens``,
``temperature``, ``top_p``, ``seed`` (defaults: the command line's flags) and ``ground`` (a
phrase: the prompt becomes the grounding question, and ``prompt`` may be left out). Relative
image paths are read from the folder that holds FILE. Blank lines are skipped; anything else that
is wrong is refused in one line naming its line number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from nuwa_export import jsonio
from nuwa_export.errors import NuwaError
from nuwa_export.sampling import SamplingConfig

KEYS = ("image", "prompt", "ground", "max_new_tokens", "temperature", "top_p", "seed")
#: Lines a requests file may hold (each becomes a result kept in memory until the end).
MAX_LINES = 100_000


@dataclass(frozen=True)
class FileRequest:
    line: int
    image: Path
    prompt: str  # the question asked ("" for ``ground`` until the model family words its grounding question)
    ground: str | None
    sampling: SamplingConfig


def _int(value, key: str, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise NuwaError(f"{where}: {key} must be an integer, got {value!r}"[:300])
    return value


def _number(value, key: str, where: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise NuwaError(f"{where}: {key} must be a finite number, got {value!r}"[:300])
    return float(value)


def _text(value, key: str, where: str) -> str:
    from nuwa_export.prompt import check_text

    if not isinstance(value, str) or not value.strip():
        raise NuwaError(f"{where}: {key} must be non-empty text")
    check_text(value, f"{where}: {key}")
    return value


def jsonl_objects(path: str | Path, what: str, keys, *, comments: bool = False):
    """``(line number, where, object)`` for every non-blank line of the JSONL file ``path`` (``what`` names it in
    errors, e.g. "--requests"): read as UTF-8, at most :data:`MAX_LINES`, each line a JSON object
    with no key outside ``keys``; ``comments``: lines starting with ``#`` are skipped too."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise NuwaError(f"cannot read {what} {path} ({e.strerror or type(e).__name__})") from None
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark some editors write is not content
    except UnicodeDecodeError:
        raise NuwaError(f"{what} {path} is not UTF-8 text") from None
    count = 0
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or (comments and line.lstrip().startswith("#")):
            continue
        where = f"{path} line {n}"
        if count == MAX_LINES:
            raise NuwaError(f"{where}: more than {MAX_LINES} requests; split the file")
        data = jsonio.loads(line, where)
        if not isinstance(data, dict):
            raise NuwaError(f"{where}: expected a JSON object like {{\"image\": \"a.jpg\", \"prompt\": \"...\"}}")
        unknown = sorted(set(data) - set(keys))
        if unknown:
            raise NuwaError(f"{where}: unknown key {unknown[0]!r}"[:200] + f" (keys: {', '.join(keys)})")
        count += 1
        yield n, where, data
    if not count:
        raise NuwaError(f"{what} {path} holds no requests")


def image_and_question(data: dict, where: str, folder: Path, builtin: str | None = None) -> tuple[str | Path, str, str | None]:
    """``(image, prompt, ground)`` of one request line: the image a file (relative to ``folder``)
    whose header is checked, or ``builtin:NAME`` when ``builtin`` is that prefix; exactly one of
    ``prompt`` and ``ground`` (``prompt`` is "" for ``ground``: the model family words it)."""
    from nuwa_export.image import image_size

    if "image" not in data:
        raise NuwaError(f"{where}: no \"image\"")
    name = _text(data["image"], "image", where)
    ground = _text(data["ground"], "ground", where) if data.get("ground") is not None else None
    if ground is None and "prompt" not in data:
        raise NuwaError(f"{where}: no \"prompt\" (or \"ground\")")
    if ground is not None and "prompt" in data:
        raise NuwaError(f"{where}: give \"prompt\" or \"ground\", not both")
    prompt = "" if ground is not None else _text(data["prompt"], "prompt", where)
    if builtin is not None and name.startswith(builtin):
        return name, prompt, ground
    image = Path(name).expanduser()
    if not image.is_absolute():
        image = folder / image
    if not image.is_file():
        raise NuwaError(f"{where}: no image file {image}")
    try:
        image_size(image, str(image))  # exists, is an image, within the pixel limit
    except NuwaError as e:
        raise NuwaError(f"{where}: {e}") from None
    return image, prompt, ground


def read_requests(path: str | Path, defaults: SamplingConfig) -> list[FileRequest]:
    """Every request of ``path``, each line checked (keys, types, sampling ranges, the image's
    header); raises :class:`NuwaError` naming the first bad line."""
    path = Path(path)
    out: list[FileRequest] = []
    for n, where, data in jsonl_objects(path, "--requests", KEYS):
        image, prompt, ground = image_and_question(data, where, path.parent)
        try:
            sampling = SamplingConfig(
                _int(data.get("max_new_tokens", defaults.max_new_tokens), "max_new_tokens", where),
                _number(data.get("temperature", defaults.temperature), "temperature", where),
                _number(data.get("top_p", defaults.top_p), "top_p", where),
                _int(data.get("seed", defaults.seed), "seed", where),
            )
        except NuwaError as e:
            message = str(e)
            for flag, key in (("--max-new-tokens", "max_new_tokens"), ("--temperature", "temperature"), ("--top-p", "top_p"), ("--seed", "seed")):
                message = message.replace(flag, key)
            raise NuwaError(message if message.startswith(where) else f"{where}: {message}") from None
        out.append(FileRequest(n, image, prompt, ground, sampling))
    return out
