"""The decode loop: pick tokens until EOS or ``max_new_tokens`` (the only one in the package)."""

from __future__ import annotations

from collections.abc import Callable

from nuwa_export.sampling import SamplingConfig, TokenPicker


def decode_loop(
    first_logits,
    step: Callable[[int, int], object],
    sampling: SamplingConfig,
    eos: set[int],
    on_token: Callable[[int], None] | None = None,
) -> list[int]:
    """Pick tokens until EOS or ``max_new_tokens``; ``step(token, i)`` returns the next logits.

    ``logits`` are anything :class:`TokenPicker` accepts as ``[V]`` (row 0 of ``[1, V]``).
    """
    pick = TokenPicker(sampling)
    generated: list[int] = []
    logits = first_logits
    while True:
        token = pick(logits[0])
        generated.append(token)
        if on_token:
            on_token(token)
        if (sampling.stop_at_eos and token in eos) or len(generated) == sampling.max_new_tokens:
            return generated
        logits = step(token, len(generated) - 1)
