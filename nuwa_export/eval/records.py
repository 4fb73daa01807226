"""Prediction files (JSONL, one line per sample, appended as samples finish) and atomic writes.

A prediction line is ``{"index": I, "answer": TEXT, ...}`` with ``I`` the sample's position in
the data. Lines are flushed and synced one by one, so an interrupted run loses at most the line
being written; reading drops such a torn last line, and the run resumes after the last whole one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from nuwa_export import jsonio
from nuwa_export.errors import NuwaError


def _parse(line: str, where: str, size: int | None) -> dict:
    rec = jsonio.loads(line, where)  # every way a line can be broken (nesting, huge numbers) is one line
    if not isinstance(rec, dict) or type(rec.get("index")) is not int or not isinstance(rec.get("answer"), str):
        raise NuwaError(f'{where}: expected {{"index": INT, "answer": TEXT}}, got {line.strip()[:80]}')
    if rec["index"] < 0 or (size is not None and rec["index"] >= size):
        raise NuwaError(f"{where}: index {rec['index']} is outside the data ({size} samples, 0 to {size - 1})" if size else f"{where}: negative index")
    return rec


def read_predictions(path: Path, size: int | None = None, *, repair: bool = False) -> dict[int, dict]:
    """Index → record. ``repair`` (our own files): a torn last line (no newline, cut by a kill) is
    skipped and a repeated index keeps its first answer; the file itself is not changed
    (:class:`Appender` cuts the torn line before it appends)."""
    path = Path(path)
    try:
        if not path.is_file():
            if repair:
                return {}
            raise NuwaError(f"predictions file not found: {path}")
        raw = path.read_bytes()
    except OSError as e:
        raise NuwaError(f"cannot read {path} ({e.strerror or type(e).__name__})") from None
    if repair and raw and not raw.endswith(b"\n"):
        raw = raw[: raw.rfind(b"\n") + 1]
    out: dict[int, dict] = {}
    seen: dict[int, int] = {}
    # lines end at "\n" only: answers are written unescaped and may hold U+2028 and the like
    for k, line in enumerate(raw.split(b"\n"), 1):
        text = line.decode("utf-8", errors="replace")
        if not text.strip():
            continue
        rec = _parse(text, f"{path} line {k}", size)
        if rec["index"] in seen:
            if repair:  # our own file: the first answer stands
                continue
            raise NuwaError(f"{path} line {k}: index {rec['index']} already on line {seen[rec['index']]}")
        seen[rec["index"]] = k
        out[rec["index"]] = rec
    return out


def line_of(record: dict) -> bytes:
    """One prediction line, UTF-8, newline-terminated."""
    try:
        return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate in an answer: written escaped, as JSON allows
        return (json.dumps(record) + "\n").encode("ascii")


class Appender:
    """Appends prediction lines to ``path``, each flushed and synced before the next sample.

    It holds an exclusive lock on the file, so two runs never append to one file together, and
    first cuts off a last line torn by a kill, so the next line starts on a line of its own.
    """

    def __init__(self, path: Path) -> None:
        import fcntl

        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "ab")
        except OSError as e:
            raise NuwaError(f"cannot write {self.path} ({e.strerror or e})") from None
        try:
            fcntl.flock(self._f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._f.close()
            raise NuwaError(f"another nuwa-eval is writing {self.path}; wait for it, or give another --out") from None
        try:
            self._cut_torn_line()
        except OSError as e:
            self._f.close()
            raise NuwaError(f"cannot write {self.path} ({e.strerror or e})") from None

    def _cut_torn_line(self) -> None:
        size = os.fstat(self._f.fileno()).st_size
        end, pos = 0, size
        with open(self.path, "rb") as f:
            while pos > 0:
                start = max(0, pos - (1 << 16))
                f.seek(start)
                chunk = f.read(pos - start)
                if pos == size and chunk.endswith(b"\n"):
                    return  # whole lines only
                k = chunk.rfind(b"\n")
                if k >= 0:
                    end = start + k + 1
                    break
                pos = start
        if end < size:
            os.ftruncate(self._f.fileno(), end)

    def write(self, record: dict) -> None:
        self._f.write(line_of(record))
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "Appender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path, obj) -> Path:
    return write_atomic(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
