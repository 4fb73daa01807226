"""Paths the user typed (``--data``, ``--images``, ``--out``, ``--predictions``), refused in one line."""

from __future__ import annotations

import os
from pathlib import Path

from nuwa_export.errors import NuwaError


def user_path(text: str | Path, what: str) -> Path:
    """``text`` as a path, ``~`` expanded; a ``~user`` that does not exist is a one-line error."""
    try:
        return Path(text).expanduser()
    except RuntimeError:  # pathlib: "Could not determine home directory."
        raise NuwaError(f"{what} {text}: cannot expand ~ (no such user, or no home directory)") from None


def check_writable_dir(path: Path, what: str, *, links_ok: bool = False) -> None:
    """Refuse, in one line and before anything is written, a directory that cannot be created
    or written in: a symbolic link (unless ``links_ok``), something that is not a directory, a
    path below a file or a broken link, or a directory (or nearest existing parent) that is not
    writable. Nothing is created."""
    try:
        if path.is_symlink() and not links_ok:
            raise NuwaError(f"{what} {path} is a symbolic link; give the directory itself (outputs are never written through links)")
        if path.exists():
            if not path.is_dir():
                raise NuwaError(f"{what} {path} exists and is not a directory")
            if not os.access(path, os.W_OK | os.X_OK):
                raise NuwaError(f"{what} {path} is not writable")
            return
        if path.is_symlink():
            raise NuwaError(f"{what} {path} is a broken symbolic link")
        parent = path.absolute().parent
        while not parent.exists():
            if parent.is_symlink():
                raise NuwaError(f"{what} {path}: {parent} is a broken symbolic link")
            parent = parent.parent
        if not parent.is_dir():
            raise NuwaError(f"{what} {path}: {parent} is not a directory")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise NuwaError(f"{what} {path}: cannot create it, {parent} is not writable")
    except OSError as e:  # e.g. a name longer than the file system allows; the current directory gone
        raise NuwaError(f"{what} {path}: {e.strerror or type(e).__name__}") from None
