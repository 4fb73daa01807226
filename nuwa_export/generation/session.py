"""Continuous batching: a decode session that admits requests while others decode.

A :class:`Session` holds the live rows of one batch on one :class:`Stages`. :meth:`Session.admit`
prefills the joining requests together (their own left-padded batch, vision and stage two as
always) and places their rows of both KV groups beside the running ones; :meth:`Session.step`
feeds every live row's last token through both groups in one call and picks each row's next
token; a row that stops (EOS, its token limit) or is :meth:`Session.cancel` led leaves the batch at
once, so it stops costing compute. ``generation.generate_batch`` is a client of it (one admission,
then steps until every row is done), as the server is (admissions between steps).

Rows of different lengths share one call through left padding: when a joining batch's cache is
longer or shorter than the running one, the shorter side is padded on the left (its KV entries
moved right, its ``pad`` grown), which every graph masks. A kept patch's position, and every
text and generated token's, is its own row's (explicit ``position_ids``), so a row gives exactly
the tokens it gives alone, however it was interleaved (tested, greedy and seeded sampling).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from nuwa_export.errors import NuwaError
from nuwa_export.generation.core import Live, Request, layouts, prefill, step, vision
from nuwa_export.generation.layout import Batch, Layout
from nuwa_export.generation.loop import decode_loop
from nuwa_export.generation.result import Clock, GenerationResult, Transfers
from nuwa_export.sampling import SamplingConfig, TokenPicker

#: Why a row left the batch (``GenerationResult.finish_reason``, as OpenAI names it).
STOP, LENGTH, CANCELLED = "stop", "length", "cancelled"


@dataclass
class Group:
    """Requests admitted together: one prefill, whose timings and transfers its rows share."""

    clock: Clock
    size: int
    stage_one: list[list[int]]
    stage_two: list[list[int]] | None
    entry_bytes: tuple[int, int]
    prefill_transfers: dict
    decode_start: Transfers


@dataclass
class Row:
    """One request in a session: its layout, picker and tokens so far; ``result`` once it is done."""

    request: Request
    layout: Layout
    group: Group
    index: int  # within its group
    picker: TokenPicker
    generated: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    result: GenerationResult | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def remaining(self) -> int:
        return self.request.sampling.max_new_tokens - len(self.generated)


class Session:
    """The live rows of one batch (module doc). ``trace`` collects, for a session of one admission,
    the intermediates :func:`nuwa_export.generation.generate_batch` documents."""

    def __init__(self, stages, trace: dict | None = None, capacity: int | None = None) -> None:
        self.stages = stages
        self.trace = trace
        self.capacity = capacity  # the most rows side by side (an export's max_batch); None: any
        self.live: Live | None = None
        self.rows: list[Row] = []  # aligned with self.live.batch.rows

    @property
    def size(self) -> int:
        """Live rows."""
        return len(self.rows)

    @property
    def free(self) -> int | None:
        """Rows that can still join (None: any number)."""
        return None if self.capacity is None else self.capacity - self.size

    # ---- admission ----------------------------------------------------------------------------
    def admit(self, requests: Sequence[Request]) -> list[Row]:
        """Prefill ``requests`` together and add their rows to the batch; their first token is
        picked (and streamed) here. Every prompt is checked before any work (a ``NuwaError``)."""
        stages, requests = self.stages, list(requests)
        if self.capacity is not None and self.size + len(requests) > self.capacity:
            raise NuwaError(f"{len(requests)} more requests beside {self.size} live ones are beyond this session's {self.capacity} rows")
        batch = layouts(stages, requests)
        clock = stages.clock()
        before = stages.transfers.snapshot()
        tokens, indices = vision(stages, requests, clock)
        pre = prefill(stages, batch, tokens, indices, clock, max(r.sampling.max_new_tokens for r in requests) - 1)
        first = stages.to_host(pre.logits)
        clock.first_token()
        s1 = stages.to_host(indices).tolist()
        s2 = None if pre.stage_two is None else stages.to_host(pre.stage_two).tolist()
        group = Group(clock, len(requests), s1, s2, _entry_bytes(stages, pre), stages.transfers.since(before), stages.transfers.snapshot())
        if self.trace is not None:
            self.trace.update(
                vision_tokens=tokens, patch_indices=indices, split_hidden=pre.split_hidden,
                stage_two_scores=pre.stage_two_scores, stage_two=pre.stage_two, first_logits=pre.logits, logits=[pre.logits],
            )
        rows = [Row(r, layout, group, i, TokenPicker(r.sampling)) for i, (r, layout) in enumerate(zip(requests, batch.rows))]
        for row, logits in zip(rows, first):
            self._pick(row, logits)
        joining = Live(batch, pre.kv, pre.vision_start, pre.pad)
        keep = [i for i, row in enumerate(rows) if not row.done]
        if len(keep) < len(rows):
            joining = joining.take(stages, keep) if keep else None
        for row in rows:
            if row.done:
                self._result(row)
        if joining is not None:
            self._join(joining, [rows[i] for i in keep])
        return rows

    def _join(self, joining: Live, rows: list[Row]) -> None:
        """The joining rows beside the running ones: both KV groups padded on the left to one
        length, each row's ``pad`` and ``vision_start`` moved by its shift."""
        if self.live is None:
            self.live, self.rows = joining, rows
            return
        stages, a, b = self.stages, self.live, joining
        lengths = [(stages.past_length(x.kv.prefix), stages.past_length(x.kv.suffix)) for x in (a, b)]
        shifts = [max(lengths[0][0], lengths[1][0]) - lengths[i][0] for i in range(2)]
        if any(max(lengths[0][1], lengths[1][1]) - lengths[i][1] != shifts[i] for i in range(2)):
            raise RuntimeError(f"the two KV groups of a session would need different paddings: {lengths}")
        every = self.rows + rows
        room = max(row.remaining for row in every)  # decode entries still to come, beyond the cache
        kv = [stages.join_past([x.kv.prefix if g == 0 else x.kv.suffix for x in (a, b)], shifts, room) for g in (0, 1)]
        vision_start = torch.cat([a.vision_start + shifts[0], b.vision_start + shifts[1]])
        pad = torch.cat([a.pad + shifts[0], b.pad + shifts[1]])
        pads = tuple(p + shifts[0] for p in a.batch.pads) + tuple(p + shifts[1] for p in b.batch.pads)
        batch = Batch(a.batch.rows + b.batch.rows, pads)
        self.live = Live(batch, type(a.kv)(*kv), vision_start, pad)
        self.rows = every

    # ---- decoding -----------------------------------------------------------------------------
    def step(self) -> list[Row]:
        """One decode step for every live row → the rows that finished in it."""
        if self.live is None:
            return []
        stages = self.stages
        tokens = [row.generated[-1] for row in self.rows]
        logits = step(stages, self.live, tokens, [len(row.generated) - 1 for row in self.rows])
        if self.trace is not None:
            self.trace["logits"].append(logits)
        host = stages.to_host(logits)
        for row, row_logits in zip(self.rows, host):
            self._pick(row, row_logits)
        done = [row for row in self.rows if row.done]
        self._drop(done)
        return done

    def cancel(self, row: Row) -> None:
        """Stop ``row`` now: it leaves the batch (its slot is free at once) with what it has."""
        if row.done:
            return
        row.finish_reason = CANCELLED
        self._drop([row])

    def _pick(self, row: Row, logits) -> None:
        token = row.picker(logits)
        row.generated.append(token)
        if row.request.on_token:
            row.request.on_token(token)
        cfg = row.request.sampling
        if cfg.stop_at_eos and token in self.stages.eos_token_ids:
            row.finish_reason = STOP
        elif len(row.generated) == cfg.max_new_tokens:
            row.finish_reason = LENGTH

    def _drop(self, rows: list[Row]) -> None:
        """``rows`` (done) leave the batch, their KV rows with them, and get their results."""
        gone = {id(r) for r in rows}
        keep = [i for i, row in enumerate(self.rows) if id(row) not in gone]
        if len(keep) < len(self.rows):
            self.rows = [self.rows[i] for i in keep]
            self.live = self.live.take(self.stages, keep) if keep else None
        for row in rows:
            self._result(row)

    def _result(self, row: Row) -> None:
        """A done row's result: its group's prefill timings, its own decode (from the prefill to
        now) and its own transfers per decode step."""
        stages, group, ids = self.stages, row.group, row.generated
        steps = len(ids) - 1
        s1 = group.stage_one[row.index]
        row.result = GenerationResult(
            prompt=row.layout.prompt,
            generated_ids=ids,
            text=stages.tokenizer.decode(ids, skip_special_tokens=True).strip(),
            stage_one_indices=s1,
            stage_two_indices=None if group.stage_two is None else [s1[i] for i in group.stage_two[row.index]],
            budgets=stages.budgets,
            timings_ms=group.clock.finished(len(ids)),
            kv_cache_bytes=_row_kv_bytes(stages, row.layout, group.entry_bytes, steps),
            backend=stages.name,
            batch_size=group.size,
            transfers={"prefill": group.prefill_transfers, "decode_per_step": Transfers.per(stages.transfers.since(group.decode_start), steps),
                       "decode_steps": steps},
            finish_reason=row.finish_reason,
        )


def _entry_bytes(stages, pre) -> tuple[int, int]:
    """Bytes one cache entry (one row, one position) takes over all layers of each KV group."""
    b, batch = stages.budgets, pre.batch
    k2 = b.k2 if b.prune else b.k1
    return (
        stages.past_bytes(pre.kv.prefix) // (batch.size * (batch.text + b.k1)),
        stages.past_bytes(pre.kv.suffix) // (batch.size * (batch.text + k2)),
    )


def _row_kv_bytes(stages, row: Layout, entry_bytes: tuple[int, int], fed: int) -> int:
    """The bytes one request's own KV entries take at its end (``fed`` generated tokens fed back;
    the batch's padding not counted): as when it runs alone."""
    b = stages.budgets
    text = row.before + row.after
    return entry_bytes[0] * (text + b.k1 + fed) + entry_bytes[1] * (text + (b.k2 if b.prune else b.k1) + fed)


# ---- the clients that answer a fixed set of requests ---------------------------------------------
def generate_batch(stages, requests: Sequence[Request], trace: dict | None = None) -> list[GenerationResult]:
    """Answer every request side by side; results in request order: a :class:`Session` of one
    admission, decoded until every row is done.

    ``trace`` collects intermediates in the stages' own types: ``vision_tokens``,
    ``patch_indices``, ``split_hidden``, ``stage_two_scores``, ``stage_two``, ``first_logits`` and
    ``logits`` (the ``[B, V]`` logits before each token is picked, the first included).
    """
    session = Session(stages, trace)
    rows = session.admit(requests)
    decode_loop(session)
    return [row.result for row in rows]


def generate_batches(stages, requests: Sequence[Request], batch_size: int) -> list[GenerationResult]:
    """Every request, ``batch_size`` at a time in order (every prompt checked before any work)."""
    requests = list(requests)
    layouts(stages, requests)
    out: list[GenerationResult] = []
    for i in range(0, len(requests), batch_size):
        out += generate_batch(stages, requests[i : i + batch_size])
    return out


def generate(
    stages,
    image,
    prompt: str,
    sampling: SamplingConfig | None = None,
    on_token: Callable[[int], None] | None = None,
    trace: dict | None = None,
) -> GenerationResult:
    """Answer ``prompt`` about ``image`` (path or PIL image): a batch of one."""
    return generate_batch(stages, [Request(image, prompt, sampling or SamplingConfig(), on_token)], trace)[0]
