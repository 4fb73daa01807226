"""Reading JSON that users (or their tools) wrote: every way it can be broken is one line.

``json.loads`` raises more than :class:`json.JSONDecodeError` on hostile input: ``RecursionError``
for deeply nested arrays, ``ValueError`` for integers over Python's 4300-digit limit, and the
file may not be UTF-8 at all. Every JSON file nuwa-export reads goes through here.
"""

from __future__ import annotations

import json
from pathlib import Path

from nuwa_export.errors import NuwaError


def loads(text: str | bytes, where: str, hint: str = ""):
    """Parse ``text``; ``where`` names it in the error (a path, or "line 3 of FILE")."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return json.loads(text)
    except json.JSONDecodeError as e:
        why = f"{e.msg} at line {e.lineno} column {e.colno}"
    except UnicodeDecodeError:
        why = "not UTF-8 text"
    except RecursionError:
        why = "nested too deeply"
    except ValueError as e:  # e.g. an integer with more digits than Python converts
        msg = (str(e).splitlines() or ["invalid value"])[0]
        why = "a number with too many digits" if "digits" in msg else msg.split(";")[0][:120]
    raise NuwaError(f"{where} is not valid JSON ({why}){hint}")


def read(path: str | Path, hint: str = "", *, expect: type | None = dict):
    """Read and parse the JSON file at ``path``; with ``expect``, refuse another top-level type."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise NuwaError(f"cannot read {path} ({e.strerror or type(e).__name__}){hint}") from None
    data = loads(raw, str(path), hint)
    if expect is not None and not isinstance(data, expect):
        raise NuwaError(f"{path} is not a JSON {'object' if expect is dict else expect.__name__}{hint}")
    return data
