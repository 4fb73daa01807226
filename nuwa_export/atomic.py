"""Write a directory atomically: build in a temporary sibling, rename into place at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from nuwa_export.errors import NuwaError


@contextlib.contextmanager
def atomic_dir(target: Path, *, force: bool = False, exist_ok_if_complete: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; on success it replaces ``target``.

    Any exception (Ctrl-C included) removes the temporary directory and leaves ``target`` as it
    was. A non-empty existing ``target`` is refused unless ``force``. With
    ``exist_ok_if_complete``, losing a race to another writer of the same target is fine.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise NuwaError(f"{target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise NuwaError(f"{target} exists and is not empty; pass --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary directory
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
            try:
                tmp.rename(target)
            except BaseException:
                old.rename(target)
                raise
            shutil.rmtree(old)
        else:
            try:
                tmp.rename(target)
            except OSError:
                if not (exist_ok_if_complete and target.is_dir()):
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
