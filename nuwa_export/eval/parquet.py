"""Reading lmms-lab parquet files: which files, checked columns, and images fetched lazily.

A data set on the hub is a folder of shards (``data/test-00000-of-00002.parquet`` …). ``--data``
takes one file, a glob, or a folder holding the shards of one split. Light columns are read at
once; image bytes stay on disk and are read one row group at a time, as samples need them.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path

from nuwa_export.errors import NuwaError
from nuwa_export.eval.paths import user_path

_SHARD = re.compile(r"^(?P<split>.+?)-\d{5}-of-\d{5}\.parquet$")


def _pq():
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - a dependency; only a broken install lacks it
        raise NuwaError("reading parquet needs pyarrow: pip install pyarrow") from None
    return pq


def parquet_files(spec: str | Path) -> list[Path]:
    """The files ``spec`` names (a file, a glob or a folder of one split's shards), sorted."""
    spec = str(spec)
    path = user_path(spec, "--data")
    if path.is_dir():
        files = sorted(path.glob("*.parquet"))
        if not files:
            raise NuwaError(f"{path} holds no .parquet files")
        splits = sorted({m["split"] for f in files if (m := _SHARD.match(f.name))})
        if len(splits) > 1:
            raise NuwaError(f"{path} holds several splits ({', '.join(splits)}); pass one, e.g. --data '{path}/{splits[0]}-*.parquet'")
        return files
    if any(c in spec for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(path)))
        if not files:
            raise NuwaError(f"no files match {spec}")
        return files
    if not path.is_file():
        raise NuwaError(f"data file not found: {path}")
    return [path]


def columns_of(file: Path) -> list[str]:
    try:
        return list(_pq().ParquetFile(file).schema_arrow.names)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise NuwaError(f"cannot read {file} as parquet ({str(e).splitlines()[0]})") from None


def require(files: list[Path], needed: list[str], what: str) -> set[str]:
    """The columns every file has; refuses a file that lacks one of ``needed``."""
    common: set[str] | None = None
    for f in files:
        names = columns_of(f)
        missing = [c for c in needed if c not in names]
        if missing:
            raise NuwaError(
                f"{f}: {what} needs column(s) {', '.join(missing)}; the file has {', '.join(names) or 'none'} "
                "(is it the right task and data set?)"
            )
        common = set(names) if common is None else common & set(names)
    return common or set()


def read_rows(files: list[Path], columns: list[str]) -> list[dict]:
    """``columns`` of every row of ``files``, in order (no image bytes unless asked)."""
    pq = _pq()
    rows: list[dict] = []
    for f in files:
        try:
            rows.extend(pq.read_table(f, columns=columns).to_pylist())
        except (OSError, ValueError) as e:
            raise NuwaError(f"cannot read {f} ({str(e).splitlines()[0]})") from None
    return rows


class LazyColumn:
    """One column over several files, fetched a row group at a time (the last one is kept)."""

    def __init__(self, files: list[Path], column: str) -> None:
        pq = _pq()
        self.column = column
        self._groups: list[tuple[Path, int, int, int]] = []  # file, row group, first row, rows
        start = 0
        for f in files:
            meta = pq.ParquetFile(f).metadata
            for g in range(meta.num_row_groups):
                n = meta.row_group(g).num_rows
                self._groups.append((f, g, start, n))
                start += n
        self.num_rows = start
        self._cached: tuple[int, list] | None = None

    def get(self, row: int):
        for k, (f, g, first, n) in enumerate(self._groups):
            if first <= row < first + n:
                if self._cached is None or self._cached[0] != k:
                    try:
                        table = _pq().ParquetFile(f).read_row_group(g, columns=[self.column])
                    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
                        raise NuwaError(f"cannot read {f} row group {g} ({(str(e).splitlines() or [type(e).__name__])[0][:200]})") from None
                    self._cached = (k, table.column(0).to_pylist())
                return self._cached[1][row - first]
        raise IndexError(row)

    def where(self, row: int) -> str:
        for f, _, first, n in self._groups:
            if first <= row < first + n:
                return f"{f.name} row {row - first}"
        return f"row {row}"


def image_bytes(value, where: str, images_dir: Path | None) -> bytes:
    """An lmms-lab image cell (``{bytes, path}`` struct, or raw bytes) → encoded image bytes."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        if isinstance(value.get("path"), str) and value["path"] and images_dir is not None:
            try:
                return (images_dir / value["path"]).read_bytes()
            except (OSError, ValueError):
                pass  # not there: refused below
        raise NuwaError(f"{where}: the image cell has no bytes" + (f" and {value['path']} is not under --images" if value.get("path") else ""))
    if isinstance(value, (bytes, bytearray)) and value:
        return bytes(value)
    raise NuwaError(f"{where}: no image (the image cell is {type(value).__name__})")

