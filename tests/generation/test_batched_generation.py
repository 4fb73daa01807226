"""Batches of requests give, row for row, what each request gives alone; sessions keep KV where
the engine runs (ONNX Runtime IOBinding: presents bound back as pasts, nothing through NumPy)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from nuwa_export import manifest as mf
from nuwa_export.generation import Request
from nuwa_export.runtime.backend import Backend
from nuwa_export.runtime.runner import open_runner, reference_for_export
from nuwa_export.sampling import SamplingConfig
from tests.helpers import noise_picture


def mixed_requests(first: Image.Image, second: Image.Image, streams: dict | None = None) -> list[Request]:
    """Different images, prompt lengths, greedy and seeded sampling, token limits (one stops at EOS)."""
    cfgs = [
        ("What is in the picture?", SamplingConfig(max_new_tokens=10, stop_at_eos=False)),
        ("Describe the colours of this picture in a few long words, please, and in some detail.", SamplingConfig(max_new_tokens=6, temperature=0.8, seed=3, stop_at_eos=False)),
        ("Hi", SamplingConfig(max_new_tokens=14, temperature=1.0, top_p=0.9, seed=7, stop_at_eos=False)),
        ("Where is the red car?", SamplingConfig(max_new_tokens=3)),
    ]
    images = [first, second, second, first]
    out = []
    for i, ((prompt, cfg), image) in enumerate(zip(cfgs, images)):
        on_token = streams.setdefault(i, []).append if streams is not None else None
        out.append(Request(image, prompt, cfg, on_token))
    return out


def assert_rows_as_alone(runner, requests: list[Request], batch_size: int) -> None:
    alone = [runner.generate(r.image, r.prompt, r.sampling) for r in requests]
    together = runner.generate_batch(requests, batch_size)
    assert len(together) == len(requests)
    for i, (a, b) in enumerate(zip(alone, together)):
        assert b.prompt.input_ids == a.prompt.input_ids, i
        assert b.stage_one_indices == a.stage_one_indices, i
        assert b.stage_two_indices == a.stage_two_indices, i
        assert b.generated_ids == a.generated_ids, (i, a.generated_ids, b.generated_ids)
        assert b.text == a.text and b.kv_cache_bytes == a.kv_cache_bytes, i
        assert b.batch_size == min(batch_size, len(requests) - i // batch_size * batch_size), i


@pytest.mark.parametrize("backend", ["ort", "torch"])
def test_mixed_batch_matches_each_request_alone(demo_export, backend):
    from nuwa_export.models.demo import example_picture

    runner = open_runner(demo_export, backend="ort", device="cpu") if backend == "ort" else reference_for_export(demo_export, mf.read(demo_export), "cpu", "float32")
    requests = mixed_requests(example_picture(), noise_picture(1))
    assert len({len(runner.generate_batch([r])[0].prompt.input_ids) for r in requests}) == len(requests)  # prompt lengths differ
    assert_rows_as_alone(runner, requests, batch_size=4)
    assert_rows_as_alone(runner, requests, batch_size=3)  # a batch of 3, then one alone


def test_each_request_streams_its_own_tokens(demo_export):
    from nuwa_export.models.demo import example_picture

    streams: dict = {}
    results = open_runner(demo_export, backend="ort", device="cpu").generate_batch(mixed_requests(example_picture(), noise_picture(2), streams))
    assert [streams[i] for i in range(len(results))] == [r.generated_ids for r in results]
    assert [len(r.generated_ids) for r in results][:3] == [10, 6, 14]


class Recording(Backend):
    """Wraps a backend; records every LLM call's batch size and the memory its KV tensors occupy."""

    def __init__(self, inner):
        super().__init__(inner.manifest)
        self.inner, self.name, self.device, self.calls, self.in_place = inner, inner.name, inner.device, [], inner.in_place

    def run(self, graph, inputs, out=None):
        out = self.inner.run(graph, inputs, out)
        if graph != "vision":
            past = [v for k, v in inputs.items() if k.startswith("past_")]
            present = out[1:-1] if graph == "llm_prefix" else out[1:]
            self.calls.append({
                "graph": graph, "batch": inputs["position_ids"].shape[0], "seq": inputs["position_ids"].shape[1],
                "past": [t.data_ptr() for t in past], "present": [t.data_ptr() for t in present],
                "past_len": past[0].shape[2], "device": {t.device.type for t in [*past, *present]},
                "filled": inputs["attention_mask"].shape[1] if "attention_mask" in inputs else None,
            })
        return out


def test_finished_rows_stop_costing_compute(demo_export):
    """Rows that finished are dropped from the batch: later steps run only the live rows."""
    from nuwa_export.models.demo import example_picture

    rec = Recording(open_runner(demo_export, backend="ort", device="cpu").backend)
    pipeline = open_runner(demo_export, backend=rec)
    lengths = [2, 5, 3]
    requests = [Request(example_picture(), "Hi", SamplingConfig(max_new_tokens=n, stop_at_eos=False)) for n in lengths]
    results = pipeline.generate_batch(requests)
    assert [len(r.generated_ids) for r in results] == lengths
    decode = [c["batch"] for c in rec.calls if c["graph"] == "llm_prefix" and c["seq"] == 1]
    assert decode == [3, 2, 1, 1]  # steps 0..3: all, then without the 2-token row, then only the 5-token row


@pytest.mark.parametrize("llm_graphs", ["standard", "ort"])
def test_ort_session_keeps_kv_where_the_engine_writes_it(demo_export, monkeypatch, llm_graphs):
    """Standard graphs: each present KV tensor is bound back as the next step's past at the same
    address (no copy, no NumPy). ONNX Runtime graphs: one buffer per layer, allocated once for the
    prompt and every token to generate, is past and present of every call (written in place).
    ONNX Runtime runs only through IOBinding, and per decode step only token ids, positions and
    last-position logits cross."""
    import onnxruntime as ort

    from nuwa_export.models.demo import example_picture

    def refuse(*a, **k):
        raise AssertionError("InferenceSession.run copies every input and output through NumPy")

    monkeypatch.setattr(ort.InferenceSession, "run", refuse)
    rec = Recording(open_runner(demo_export, backend="ort", device="cpu", llm_graphs=llm_graphs).backend)
    pipeline = open_runner(demo_export, backend=rec)
    n = 6
    requests = [Request(example_picture(), p, SamplingConfig(max_new_tokens=n, stop_at_eos=False)) for p in ("Hi", "What is in the picture?")]
    results = pipeline.generate_batch(requests)
    for graph in ("llm_prefix", "llm_suffix"):
        calls = [c for c in rec.calls if c["graph"] == graph]
        assert len(calls) == n  # prefill and n - 1 decode steps
        for before, after in zip(calls, calls[1:]):
            assert after["past"] == before["present"], graph  # the very tensors the engine wrote
            if llm_graphs == "ort":
                assert after["past"] == after["present"] == calls[0]["past"], graph  # one buffer, written in place
                assert after["past_len"] == calls[0]["past_len"] == calls[0]["seq"] + n - 1  # prompt + fed tokens: no regrowth
                assert after["filled"] == before["filled"] + after["seq"]
            else:
                assert after["past_len"] == before["past_len"] + before["seq"]
        assert all(c["device"] == {"cpu"} for c in calls)
    vocab = pipeline.manifest.llm.vocab_size
    step = results[0].transfers["decode_per_step"]
    assert step == {"host_to_device": 2 * 2 * 8, "device_to_host": 2 * vocab * 4}  # ids + positions in, logits out
    llm = pipeline.manifest.llm
    one_entry = 2 * llm.num_kv_heads * llm.head_dim * 4
    assert results[0].kv_cache_bytes > 50 * one_entry  # the caches that stayed put are far larger


def test_batch_beyond_max_batch_is_split(demo_export):
    from nuwa_export.models.demo import example_picture

    pipeline = open_runner(demo_export, backend="ort", device="cpu")
    m = pipeline.manifest.max_batch
    requests = [Request(example_picture(), "Hi", SamplingConfig(max_new_tokens=2)) for _ in range(m + 1)]
    results = pipeline.generate_batch(requests, batch_size=m + 5)
    assert [r.batch_size for r in results] == [m] * m + [1]


def test_backend_refuses_a_batch_beyond_the_export(demo_export):
    from nuwa_export.errors import NuwaError

    pipeline = open_runner(demo_export, backend="ort", device="cpu")
    llm, m = pipeline.manifest.llm, pipeline.manifest.max_batch
    b = m + 1
    past = pipeline.backend.empty_past(0, pipeline.budgets.layer, b, 3, torch.float32)
    with pytest.raises(NuwaError, match=f"beyond this export's max_batch {m}; re-export with --max-batch {b}"):
        pipeline.backend.prefix(torch.zeros(b, 3, llm.hidden_size), torch.zeros(b, 3, dtype=torch.long), torch.zeros(b, dtype=torch.long), torch.zeros(b, dtype=torch.long), past)
