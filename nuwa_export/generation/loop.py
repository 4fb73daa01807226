"""The decode loop: step a session until every row is done (the only decode loop in the package)."""

from __future__ import annotations


def decode_loop(session) -> None:
    """Step ``session`` (:class:`~nuwa_export.generation.session.Session`) until no row is live:
    each row stops at EOS or its ``max_new_tokens``, with its own picker (seed), limit and stream,
    exactly as when it runs alone."""
    while session.live is not None:
        session.step()
