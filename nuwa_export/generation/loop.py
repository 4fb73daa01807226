"""The decode loop: pick tokens until EOS or ``max_new_tokens`` (the only one in the package)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from nuwa_export.sampling import SamplingConfig, TokenPicker


def decode_loop(
    first_logits,
    step: Callable[[list[int], int, list[int] | None], object],
    samplings: Sequence[SamplingConfig],
    eos: set[int],
    on_tokens: Sequence[Callable[[int], None] | None],
    to_host: Callable = lambda t: t,
) -> list[list[int]]:
    """Pick tokens for every row until each stops (EOS or its ``max_new_tokens``).

    ``first_logits`` are on the host already; ``step(tokens, i, keep)`` feeds token ``i`` of each live row back and returns the next
    ``[live, V]`` logits; ``keep`` (positions among the previous live rows) is given when rows
    finished since the last step, so the stages drop them, else None. Each row has its own
    :class:`TokenPicker` (seed), limit and stream, exactly as when it runs alone.
    """
    pickers = [TokenPicker(s) for s in samplings]
    generated: list[list[int]] = [[] for _ in samplings]
    live = list(range(len(samplings)))  # request index of each row of the logits
    host, i = first_logits, 0
    while True:
        still = []
        for row, r in enumerate(live):
            token = pickers[r](host[row])
            generated[r].append(token)
            if on_tokens[r]:
                on_tokens[r](token)
            cfg = samplings[r]
            if not ((cfg.stop_at_eos and token in eos) or len(generated[r]) == cfg.max_new_tokens):
                still.append(row)
        if not still:
            return generated
        keep = None if len(still) == len(live) else still
        live = [live[row] for row in still]
        host = to_host(step([generated[r][-1] for r in live], i, keep))
        i += 1
