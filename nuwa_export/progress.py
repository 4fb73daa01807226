"""A spinner per step of a long command and a ✓ line with its duration (stderr)."""

from __future__ import annotations

import contextlib
import sys
import time


class Steps:
    def __init__(self, enabled: bool = True) -> None:
        from rich.console import Console

        self.console = Console(file=sys.stderr, quiet=not enabled)
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        from nuwa_export.interrupt import checkpoint

        checkpoint()  # a Ctrl-C that a destructor swallowed stops the command at the next step
        t = time.perf_counter()
        with self.console.status(name):
            yield
        checkpoint()
        self.times[name] = time.perf_counter() - t
        self.console.print(f"[green]✓[/] {name} [dim]{self.times[name]:.1f} s[/]")
