"""What the device paths allocate and bind, checked without a GPU: the output plan against the
graphs themselves (ONNX Runtime's own NumPy run), and TensorRT's profile choice per call."""

from __future__ import annotations

import numpy as np
import pytest

from nuwa_export import manifest as mf
from nuwa_export.errors import NuwaError
from nuwa_export.names import kv_names
from nuwa_export.runtime.backend import output_specs
from nuwa_export.runtime.trt_backend import choose_profile


def _feeds(m: mf.Manifest, graph: str, batch: int, seq: int, past: int) -> dict:
    llm, b = m.llm, m.budgets
    rng = np.random.default_rng(0)
    layers = range(b.stage_two_layer) if graph == "llm_prefix" else range(b.stage_two_layer, llm.num_layers)
    first = "inputs_embeds" if graph == "llm_prefix" else "hidden_states"
    feeds = {
        first: rng.standard_normal((batch, seq, llm.hidden_size)).astype(np.float32),
        "position_ids": np.tile(np.arange(past, past + seq), (batch, 1)),
        "pad_lengths": np.arange(batch, dtype=np.int64) % 2,
    }
    if graph == "llm_prefix":
        feeds["vision_start"] = np.ones(batch, np.int64)
    for name in kv_names("past", layers):
        feeds[name] = rng.standard_normal((batch, llm.num_kv_heads, past, llm.head_dim)).astype(np.float32)
    return feeds


@pytest.mark.parametrize("graph", ["llm_prefix", "llm_suffix"])
@pytest.mark.parametrize("batch,seq,past", [(1, 60, 0), (3, 60, 0), (3, 1, 61), (2, 1, 5)])
def test_output_plan_is_what_the_graph_makes(demo_export, graph, batch, seq, past):
    import onnxruntime as ort

    m = mf.read(demo_export)
    feeds = _feeds(m, graph, batch, seq, past)
    session = ort.InferenceSession(str(demo_export / m.graphs[graph].file), providers=["CPUExecutionProvider"])
    got = session.run(None, feeds)
    plan = output_specs(m, graph, {k: v.shape for k, v in feeds.items()})
    assert [s.name for s in plan] == [o.name for o in session.get_outputs()]
    assert [s.shape for s in plan] == [a.shape for a in got]
    assert [str(s.dtype).removeprefix("torch.") for s in plan] == [str(a.dtype) for a in got]
    assert all(np.isfinite(a).all() for a in got if a.dtype.kind == "f")  # padding never poisons a row


def test_vision_plan(demo_export):
    m = mf.read(demo_export)
    plan = output_specs(m, "vision", {"pixel_values": (1, 3, 224, 224)})
    assert [(s.name, s.shape) for s in plan] == [("image_tokens", (1, 49, m.llm.hidden_size)), ("patch_indices", (1, 49))]


def test_trt_profile_choice():
    prefill = {"inputs_embeds": (3, 70, 64), "past_key_0": (3, 2, 0, 16)}
    decode = {"hidden_states": (3, 1, 64), "past_key_2": (3, 2, 71, 16)}
    assert choose_profile("llm_prefix", prefill) == 0
    assert choose_profile("llm_suffix", decode) == 1
    assert choose_profile("vision", {"pixel_values": (1, 3, 224, 224)}) == 0
    with pytest.raises(NuwaError, match="fits neither engine profile"):
        choose_profile("llm_prefix", {"inputs_embeds": (1, 4, 64), "past_key_0": (1, 2, 9, 16)})


def test_plan_refuses_mismatched_pasts(demo_export):
    m = mf.read(demo_export)
    shapes = {k: v.shape for k, v in _feeds(m, "llm_suffix", 1, 1, 4).items()}
    shapes["past_value_3"] = (1, m.llm.num_kv_heads, 5, m.llm.head_dim)
    with pytest.raises(NuwaError, match="past KV tensors of different lengths"):
        output_specs(m, "llm_suffix", shapes)


def test_ort_outputs_reach_torch_without_dlpack_too(demo_export, monkeypatch):
    """An onnxruntime whose OrtValue has no DLPack still runs on the CPU (a copy per output)."""
    from nuwa_export.models.demo import example_picture
    from nuwa_export.runtime.runner import open_runner
    from nuwa_export.sampling import SamplingConfig

    pipeline = open_runner(demo_export, backend="ort", device="cpu")
    cfg = SamplingConfig(max_new_tokens=5, stop_at_eos=False)
    want = pipeline.generate(example_picture(), "Hi", cfg).generated_ids

    class Plain:  # what an older onnxruntime hands back: numpy() only
        def __init__(self, value):
            self.value = value

        def numpy(self):
            return self.value.numpy()

    real = pipeline.backend.torch_view
    monkeypatch.setattr(pipeline.backend, "torch_view", lambda v: real(Plain(v)))
    assert pipeline.generate(example_picture(), "Hi", cfg).generated_ids == want


class _FakeDtype:
    def __init__(self, name):
        self.name = name


class _FakeEngine:
    """TensorRT's ICudaEngine as ``bind`` uses it: the type of each I/O tensor."""

    def __init__(self, types):
        self.types = types

    def get_tensor_dtype(self, name):
        return _FakeDtype(self.types.get(name, "FLOAT"))


class _FakeContext:
    """IExecutionContext: records shapes and addresses; infers output shapes from ``plan``."""

    def __init__(self, inferred):
        self.inferred, self.shapes, self.addresses = inferred, {}, {}

    def set_input_shape(self, name, shape):
        self.shapes[name] = shape

    def set_tensor_address(self, name, address):
        self.addresses[name] = address

    def get_tensor_shape(self, name):
        return self.inferred[name]


def test_trt_binding_keeps_the_session_tensors_in_place(demo_export):
    """``trt_backend.bind`` (what TrtBackend.run calls inside its CUDA stream), driven on CPU
    tensors: every input is bound at its own address (no copy when the engine's type matches),
    every output is allocated from the plan and bound at its address, a shape TensorRT infers
    differently is refused in one line."""
    import torch

    from nuwa_export.runtime.trt_backend import bind

    m = mf.read(demo_export)
    feeds = {k: torch.from_numpy(v) for k, v in _feeds(m, "llm_suffix", 3, 1, 40).items()}
    plan = output_specs(m, "llm_suffix", {k: tuple(v.shape) for k, v in feeds.items()})
    engine = _FakeEngine({"position_ids": "INT64", "pad_lengths": "INT64"})
    ctx = _FakeContext({s.name: s.shape for s in plan})
    held, outputs = bind(ctx, engine, "llm_suffix", feeds, plan, torch.device("cpu"), lambda t: t.data_ptr())
    assert all(ctx.addresses[k] == v.data_ptr() for k, v in feeds.items())  # bound where they lie
    assert all(ctx.shapes[k] == tuple(v.shape) for k, v in feeds.items())
    assert [tuple(o.shape) for o in outputs] == [s.shape for s in plan]
    assert [ctx.addresses[s.name] for s in plan] == [o.data_ptr() for o in outputs]
    assert outputs[1].shape[2] == 41  # present = past + 1

    # an engine that takes int32 ids gets a converted copy, kept alive until the launch
    engine32 = _FakeEngine({"position_ids": "INT32", "pad_lengths": "INT64"})
    held, _ = bind(_FakeContext({s.name: s.shape for s in plan}), engine32, "llm_suffix", feeds, plan, torch.device("cpu"), lambda t: t.data_ptr())
    assert any(t.dtype == torch.int32 for t in held)

    wrong = _FakeContext({**{s.name: s.shape for s in plan}, "logits": (3, 7)})
    with pytest.raises(NuwaError, match="TensorRT's llm_suffix engine makes logits \\[3, 7\\], the export's contract"):
        bind(wrong, engine, "llm_suffix", feeds, plan, torch.device("cpu"), lambda t: t.data_ptr())
