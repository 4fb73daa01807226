"""Continuous batching: a request that joins a session while others decode gives exactly the
tokens it gives alone (greedy and seeded sampling; the torch reference and ONNX Runtime's
standard and in-place graphs), whether its cache is longer or shorter than the running one; a
finished or cancelled row leaves the batch at once."""

from __future__ import annotations

import pytest

from nuwa_export import manifest as mf
from nuwa_export.errors import NuwaError
from nuwa_export.generation import Request, Session
from nuwa_export.generation.session import CANCELLED, LENGTH, STOP
from nuwa_export.runtime.runner import open_runner, reference_for_export
from nuwa_export.sampling import SamplingConfig
from tests.generation.test_batched_generation import Recording
from tests.helpers import noise_picture

SHORT = "Hi"
LONG = "Describe the colours of this picture in a few long words, please, and in some detail."


def _runner(demo_export, kind: str):
    if kind == "torch":
        return reference_for_export(demo_export, mf.read(demo_export), "cpu", "float32")
    return open_runner(demo_export, backend="ort", device="cpu", llm_graphs=kind)


def _alone(runner, request: Request):
    return runner.generate(request.image, request.prompt, request.sampling)


def _same(a, b, what) -> None:
    assert b.generated_ids == a.generated_ids, (what, a.generated_ids, b.generated_ids)
    assert b.stage_one_indices == a.stage_one_indices and b.stage_two_indices == a.stage_two_indices, what
    assert b.text == a.text and b.kv_cache_bytes == a.kv_cache_bytes, what
    assert b.finish_reason == a.finish_reason, what


@pytest.mark.parametrize("kind", ["torch", "standard", "ort"])
@pytest.mark.parametrize("running_prompt", [SHORT, LONG], ids=["joiner-longer", "joiner-shorter"])
def test_a_request_admitted_mid_flight_gives_what_it_gives_alone(demo_export, kind, running_prompt):
    from nuwa_export.models.demo import example_picture

    runner = _runner(demo_export, kind)
    first = Request(example_picture(), running_prompt, SamplingConfig(max_new_tokens=12, stop_at_eos=False))
    joining = [
        Request(noise_picture(3), LONG if running_prompt == SHORT else SHORT, SamplingConfig(max_new_tokens=9, temperature=0.9, seed=5, stop_at_eos=False)),
        Request(example_picture(), "Where is the red car?", SamplingConfig(max_new_tokens=4)),
    ]
    late = Request(noise_picture(4), "What is in the picture?", SamplingConfig(max_new_tokens=3, temperature=1.0, top_p=0.8, seed=11, stop_at_eos=False))
    session = runner.session()
    (row,) = session.admit([first])
    for _ in range(3):
        session.step()
    rows = session.admit(joining)  # two join the one that has decoded 3 steps
    assert session.size == 3
    session.step()
    rows += session.admit([late])  # and one more, a step later
    while session.live is not None:
        session.step()
    for r, request in zip([row, *rows], [first, *joining, late]):
        _same(_alone(runner, request), r.result, request.prompt)
    assert row.result.finish_reason == LENGTH and len(row.generated) == 12
    assert rows[0].result.batch_size == 2 and rows[2].result.batch_size == 1  # the prefill each shared


def test_a_request_admitted_mid_flight_on_a_fresh_session_matches_the_fixed_batch(demo_export):
    """``generate_batch`` is a session of one admission: the same rows from a session match it."""
    from nuwa_export.models.demo import example_picture

    runner = _runner(demo_export, "ort")
    requests = [Request(example_picture(), p, SamplingConfig(max_new_tokens=5, stop_at_eos=False)) for p in (SHORT, LONG)]
    fixed = runner.generate_batch(requests)
    session = runner.session()
    rows = session.admit(requests)
    while session.live is not None:
        session.step()
    for a, r in zip(fixed, rows):
        _same(a, r.result, r.request.prompt)


def test_cancel_frees_the_slot_at_once(demo_export):
    from nuwa_export.models.demo import example_picture

    rec = Recording(open_runner(demo_export, backend="ort", device="cpu").backend)
    runner = open_runner(demo_export, backend=rec)
    session = runner.session()
    cfg = SamplingConfig(max_new_tokens=8, stop_at_eos=False)
    keep, gone = session.admit([Request(example_picture(), SHORT, cfg), Request(example_picture(), LONG, cfg)])
    session.step()
    session.cancel(gone)
    assert session.size == 1 and gone.result.finish_reason == CANCELLED and gone.result.generated_ids == gone.generated[:2]
    session.cancel(gone)  # twice: nothing more
    while session.live is not None:
        session.step()
    decode = [c["batch"] for c in rec.calls if c["graph"] == "llm_prefix" and c["seq"] == 1]
    assert decode == [2] + [1] * 6  # one step of both, then the kept row alone
    _same(_alone(runner, keep.request), keep.result, "kept")


def test_a_session_holds_at_most_the_exports_rows(demo_export):
    from nuwa_export.models.demo import example_picture

    runner = _runner(demo_export, "ort")
    m = runner.max_batch
    session = runner.session()
    cfg = SamplingConfig(max_new_tokens=3, stop_at_eos=False)
    session.admit([Request(example_picture(), SHORT, cfg)] * (m - 1))
    assert session.free == 1
    with pytest.raises(NuwaError, match=f"2 more requests beside {m - 1} live ones are beyond this session's {m} rows"):
        session.admit([Request(example_picture(), SHORT, cfg)] * 2)
    session.admit([Request(example_picture(), SHORT, cfg)])
    assert session.free == 0


def test_eos_stops_a_row_with_finish_reason_stop(demo_export):
    from nuwa_export.models.demo import example_picture

    runner = _runner(demo_export, "ort")
    probe = runner.generate(example_picture(), SHORT, SamplingConfig(max_new_tokens=4, stop_at_eos=False)).generated_ids
    stages = runner.stages()
    stages.eos_token_ids = {probe[1]}  # the second greedy token is "EOS" here
    session = Session(stages)
    (row,) = session.admit([Request(example_picture(), SHORT, SamplingConfig(max_new_tokens=4))])
    while session.live is not None:
        session.step()
    assert row.result.finish_reason == STOP and row.result.generated_ids == probe[: probe.index(probe[1]) + 1]
