"""Ctrl-C that cannot be lost: every verb ends with exit 130 and nothing new written, or exit 0.

Python turns SIGINT into a ``KeyboardInterrupt`` raised wherever the main thread happens to be.
When that is a destructor (``__del__`` of an ONNX Runtime session, a temporary file, a torch
object), Python swallows it ("Exception ignored in ...") and the command carries on as if
nothing happened. So each CLI command runs in a :class:`Session` that:

* installs a SIGINT handler that records the signal (a sticky flag) and raises
  ``KeyboardInterrupt``, except inside :func:`critical` sections (renames, clean-up), where it
  only records it and raises at the end of the section;
* filters ``KeyboardInterrupt`` out of ``sys.unraisablehook`` (no "Exception ignored" noise);
* keeps a journal of the outputs committed (:mod:`nuwa_export.atomic`), with how to undo each:
  when the command fails or the flag is set, even if the interrupt was swallowed and the
  command returned normally, every commit is undone (the previous output put back) and the
  command exits 130. Otherwise the replaced outputs are deleted.

:func:`checkpoint` raises ``KeyboardInterrupt`` if the flag is set; commits call it last, so a
swallowed interrupt can never be followed by a rename into place.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator


class _State:
    def __init__(self) -> None:
        self.flag = threading.Event()  # a SIGINT arrived during the current session (sticky)
        self.raising = False  # a session is running its command: SIGINT raises KeyboardInterrupt
        self.critical = 0  # depth of critical sections (SIGINT only recorded)
        self.pending = False  # a SIGINT arrived inside a critical section: raise at its end
        self.quiet_code = None  # the code object in which SIGINT is only recorded (the CLI guard)
        self.journal: list[tuple[Callable[[], None], Callable[[], None]]] | None = None  # (undo, finalize)


_state = _State()


def interrupted() -> bool:
    """Whether a SIGINT arrived during this command (even one Python swallowed)."""
    return _state.flag.is_set()


def checkpoint() -> None:
    """Raise ``KeyboardInterrupt`` if a SIGINT arrived (e.g. one swallowed by a destructor)."""
    if _state.flag.is_set() and _state.raising:
        raise KeyboardInterrupt


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """A section SIGINT does not cut in two: it is recorded, and raised when the section ends."""
    _state.critical += 1
    try:
        yield
    finally:
        _state.critical -= 1
        if not _state.critical and _state.pending and _state.raising:
            _state.pending = False
            raise KeyboardInterrupt


def journal(undo: Callable[[], None], finalize: Callable[[], None]) -> None:
    """Record a commit: ``undo`` puts the previous state back, ``finalize`` drops what it replaced.

    Outside a session (library use) there is nothing to undo later: ``finalize`` runs now.
    """
    if _state.journal is None:
        finalize()
    else:
        _state.journal.append((undo, finalize))


def _handler(signum, frame) -> None:
    _state.flag.set()
    if _state.critical or not _state.raising or (frame is not None and frame.f_code is _state.quiet_code):
        _state.pending = True
        return
    raise KeyboardInterrupt


def _unraisable(hook):
    def filtered(info) -> None:
        if isinstance(info.exc_value, KeyboardInterrupt) or (
            isinstance(info.exc_type, type) and issubclass(info.exc_type, KeyboardInterrupt)
        ):
            _state.flag.set()  # swallowed by a destructor: the session still ends with 130
            return
        hook(info)

    return filtered


class Session:
    """One CLI command (see the module docstring). ``quiet_code``: the caller's code object, in
    which SIGINT is only recorded (it decides the exit code); ``final``: the process ends right
    after :meth:`close`, so SIGINT is ignored from then on instead of restored."""

    def __init__(self, quiet_code=None, final: bool = False) -> None:
        self.quiet_code, self.final = quiet_code, final
        self._signal = None
        self._hook = None

    def open(self) -> None:
        _state.flag.clear()
        _state.pending, _state.critical, _state.journal = False, 0, []
        _state.quiet_code = self.quiet_code
        self._hook = sys.unraisablehook
        sys.unraisablehook = _unraisable(self._hook)
        if threading.current_thread() is threading.main_thread():
            self._signal = signal.signal(signal.SIGINT, _handler)
        _state.raising = True

    def close(self, ok: bool) -> bool:
        """Keep the commits (``ok`` and no SIGINT) or undo them; True if interrupted."""
        _state.raising = False  # from here on SIGINT is only recorded
        entries, _state.journal = _state.journal or [], None
        interrupted = _state.flag.is_set()
        keep = ok and not interrupted
        for undo, finalize in entries if keep else reversed(entries):
            try:
                (finalize if keep else undo)()
            except OSError:  # best effort; never turn the outcome into a traceback
                pass
        if self._signal is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN if self.final else self._signal)
        if self._hook is not None:
            sys.unraisablehook = self._hook
        _state.quiet_code = None
        return interrupted
