"""Write outputs atomically: build in a temporary sibling, rename into place at the end.

Outputs are never written through or over a symbolic link, and every commit is journalled with
:mod:`nuwa_export.interrupt`: a CLI command that fails or is interrupted (even by a Ctrl-C that
Python swallowed in a destructor) puts the previous output back, so it never leaves a new,
half-new or ``.NAME.old-PID`` entry behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from nuwa_export import interrupt
from nuwa_export.errors import NuwaError


def _why(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


#: Why a path that is not UTF-8 is refused (:func:`check_utf8_path`).
UTF8_ONLY = "nuwa-export needs paths that are valid UTF-8 (the tokenizer and safetensors libraries cannot open others)"


def check_utf8_path(path: str | bytes | Path, what: str = "") -> None:
    """Refuse, in one line, a path that the Rust libraries (tokenizers, safetensors) and ONNX
    Runtime / TensorRT cannot be given: one whose bytes are not UTF-8 (Python holds them as lone
    surrogates). The absolute path is checked too, so a relative path below a non-UTF-8 current
    directory is refused as well. ``what`` (e.g. "export directory") is added to the message.
    """
    given = os.fsdecode(path) if isinstance(path, bytes) else str(path)
    candidates = [given]
    try:
        candidates.append(os.path.abspath(os.path.expanduser(given)))
    except OSError:  # the current directory is gone: only the path as given can be checked
        pass
    for text in candidates:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            try:
                shown = os.fsencode(text).decode("utf-8", "backslashreplace")  # the bad bytes as \xNN
            except UnicodeEncodeError:  # a lone surrogate that came from no byte
                shown = text.encode("utf-8", "backslashreplace").decode()
            raise NuwaError(f"{shown}{f' ({what})' if what else ''}: {UTF8_ONLY}") from None


def absolute(path: str | Path) -> Path:
    """``path`` made absolute, with the links in its parent resolved; its own name kept as is
    (a link there is refused, never followed). A parent that is a file or a broken link is a
    one-line :class:`NuwaError` (``mkdir -p`` would fail there, or create the link's target)."""
    shown = Path(path)
    path = shown.expanduser()
    try:
        parent = path.parent if path.is_absolute() else Path.cwd() / path.parent
    except OSError as e:
        raise NuwaError(f"cannot write {shown}: the current directory is gone ({_why(e)})") from None
    existing = parent
    while not (existing.exists() or existing.is_symlink()) and existing != existing.parent:
        existing = existing.parent
    if existing.is_symlink() and not existing.exists():
        raise NuwaError(f"cannot write {shown}: {existing} is a broken symbolic link")
    if not existing.is_dir():
        raise NuwaError(f"cannot write {shown}: {existing} is not a directory")
    return Path(os.path.realpath(parent)) / path.name


def _check_parent(path: Path, shown: Path) -> None:
    """``path``'s nearest existing directory (the one a new parent would go in) is writable.

    Probed by creating (and at once removing) a directory there: ``os.access`` says yes to root
    everywhere, also in ``/proc`` and ``/sys``, which refuse new entries all the same.
    """
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        why = "read-only file system" if _read_only(parent) else "permission denied"
        raise NuwaError(f"cannot write {shown}: {parent} is not writable ({why})")
    try:
        with interrupt.critical():  # a Ctrl-C here never leaves the probe behind
            os.rmdir(tempfile.mkdtemp(prefix=".nuwa-probe-", dir=parent))
    except OSError as e:
        why = "read-only file system" if e.errno == errno.EROFS or _read_only(parent) else _why(e)
        raise NuwaError(f"cannot write {shown}: {parent} is not writable ({why})") from None


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def check_dir_target(target: str | Path, *, force: bool = False) -> Path:
    """Refuse, in one line, an output directory that :func:`atomic_dir` could not replace safely."""
    shown = Path(target)
    if shown.expanduser().name in ("", ".", ".."):
        raise NuwaError(f"{shown} cannot be an output directory; name the directory itself")
    target = absolute(shown)
    if target.is_symlink():
        raise NuwaError(f"{shown} is a symbolic link; give the directory itself or a new path (outputs are never written through links)")
    if target.exists() and not target.is_dir():
        raise NuwaError(f"{shown} exists and is not a directory")
    if target.is_dir():
        try:
            full = any(target.iterdir())
        except OSError as e:
            raise NuwaError(f"cannot read {shown} ({_why(e)})") from None
        if full and not force:
            raise NuwaError(f"{shown} exists and is not empty; pass --force to replace it")
        try:
            here = Path.cwd().resolve()
        except OSError:
            here = None
        if here is not None and (target.resolve() == here or target.resolve() in here.parents):
            raise NuwaError(f"{shown} is the current directory or contains it; it cannot be replaced, pick another path")
    _check_parent(target, shown)
    return target


def check_output_file(path: str | Path) -> Path:
    """Refuse, in one line, an output file that :func:`write_file` could not write safely."""
    shown = Path(path)
    if shown.expanduser().name in ("", ".", ".."):
        raise NuwaError(f"cannot write {shown}: not a file name")
    path = absolute(shown)
    if path.is_symlink():
        raise NuwaError(f"cannot write {shown}: it is a symbolic link (outputs are never written through links)")
    if path.is_dir():
        raise NuwaError(f"cannot write {shown}: it is a directory")
    if path.exists() and not path.is_file():
        raise NuwaError(f"cannot write {shown}: it exists and is not a regular file")
    if not path.parent.is_dir():
        raise NuwaError(f"cannot write {shown}: directory {path.parent} does not exist")
    _check_parent(path, shown)
    return path


def _free_name(target: Path, tag: str) -> Path:
    """An unused hidden sibling of ``target``: ``.NAME.TAG-PID`` (a counter if that is taken)."""
    base = f".{target.name}.{tag}-{os.getpid()}"
    candidate, i = target.with_name(base), 0
    while candidate.exists() or candidate.is_symlink():
        i += 1
        candidate = target.with_name(f"{base}-{i}")
    return candidate


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def _commit(tmp: Path, target: Path, *, exist_ok_if_complete: bool = False, created: list[Path] = ()) -> None:
    """Rename ``tmp`` onto ``target`` and journal how to undo it (``created``: parent directories
    made for it, removed by the undo too). Call inside ``critical()``. A shared output
    (``exist_ok_if_complete``, e.g. the demo cache) is committed for good: others may use it."""
    interrupt.checkpoint()  # a Ctrl-C swallowed earlier refuses the rename
    old = None
    if target.exists() or target.is_symlink():
        old = _free_name(target, "old")
        if target.is_dir():
            os.rename(target, old)
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(old, target)
                raise
        else:  # a file: keep the old one aside without a moment where target is missing
            try:
                os.link(target, old)
            except OSError:
                shutil.copy2(target, old)
            try:
                os.replace(tmp, target)
            except BaseException:
                _remove(old)
                raise
    else:
        try:
            os.rename(tmp, target)
        except OSError:
            if exist_ok_if_complete and target.is_dir():
                return  # lost a race to another writer of the same complete output
            raise

    def undo() -> None:
        if old is not None and target.is_dir() and not target.is_symlink():
            trash = _free_name(target, "new")
            os.rename(target, trash)
            os.rename(old, target)
            _remove(trash)
        elif old is not None:
            os.replace(old, target)
        else:
            _remove(target)
            _remove_created(list(created))

    def finalize() -> None:
        if old is not None:
            _remove(old)

    if exist_ok_if_complete:
        finalize()
    else:
        interrupt.journal(undo, finalize)


def _make_parents(directory: Path) -> list[Path]:
    """``mkdir -p``; returns what it created (deepest last), removing it again on failure."""
    missing = []
    p = directory
    while not (p.exists() or p.is_symlink()) and p != p.parent:
        missing.append(p)
        p = p.parent
    created: list[Path] = []
    try:
        for d in reversed(missing):
            d.mkdir()
            created.append(d)
    except OSError:
        _remove_created(created)
        raise
    return created


def _remove_created(created: list[Path]) -> None:
    for d in reversed(created):
        try:
            d.rmdir()
        except OSError:
            break


def write_file(path: str | Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` a temporary sibling of ``path``, then ``os.replace`` it into place.

    Errors are one-line :class:`NuwaError` s; nothing is left behind on failure or Ctrl-C.
    """
    shown = Path(path)
    path = check_output_file(path)
    tmp, done = None, False
    try:
        with interrupt.critical():
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
            tmp = Path(name)
            os.close(fd)
            umask = os.umask(0)
            os.umask(umask)
            tmp.chmod(0o666 & ~umask)  # mkstemp makes it private; the result is an ordinary file
        write(tmp)
        with interrupt.critical():
            _commit(tmp, path)
            done = True
    except OSError as e:
        raise NuwaError(f"cannot write {shown} ({_why(e)})") from None
    finally:
        with interrupt.critical():
            if tmp is not None and not done:
                tmp.unlink(missing_ok=True)
    return shown


@contextlib.contextmanager
def atomic_dir(target: Path, *, force: bool = False, exist_ok_if_complete: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; on success it replaces ``target``.

    Any exception (Ctrl-C included) removes the temporary directory and leaves ``target`` as it
    was. A non-empty existing ``target`` is refused unless ``force``; a symbolic link always
    (:func:`check_dir_target`). With ``exist_ok_if_complete``, losing a race to another writer
    of the same target is fine. Inside a CLI command the replaced directory is kept aside until
    the command ends, so an interrupt or failure after this returns can still put it back.
    """
    shown = Path(target)
    target = check_dir_target(target, force=force)
    tmp, created, done = None, [], False
    try:
        with interrupt.critical():
            try:
                created = _make_parents(target.parent)
                tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
                umask = os.umask(0)
                os.umask(umask)
                tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary directory
            except OSError as e:
                raise NuwaError(f"cannot create {shown} ({_why(e)})") from None
        yield tmp
        with interrupt.critical():
            try:
                _commit(tmp, target, exist_ok_if_complete=exist_ok_if_complete, created=created)
            except OSError as e:
                raise NuwaError(f"cannot move the new {shown} into place ({_why(e)})") from None
            done = True
    finally:
        with interrupt.critical():
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            if not done:
                _remove_created(created)
