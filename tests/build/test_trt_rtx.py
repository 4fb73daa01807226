"""TensorRT for RTX (no GPU needed) parses and builds the exported graphs."""

from __future__ import annotations

import pytest

from nuwa_export.build.engine import Profile, build_engine, parse
from nuwa_export.errors import NuwaError
from tests.helpers import cuda_device_count

trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX not installed (pip install tensorrt-rtx-cu13)")
pytestmark = pytest.mark.trt_rtx

STATIC = Profile({"pixel_values": ((1, 3, 224, 224),) * 3})
VISION_IO = [  # name, shape (-1: dynamic batch), TensorRT type name
    ("pixel_values", (-1, 3, 224, 224), "FLOAT"), ("image_tokens", (-1, 49, 128), "FLOAT"), ("patch_indices", (-1, 49), "INT64"),
]


def test_vision_graph_builds_with_the_function_inlined(demo_export):
    plan = build_engine(demo_export / "vision.onnx", [STATIC], builder="tensorrt-rtx")
    assert len(plan) > 100_000
    # the engine's I/O is its network's: check it on the parsed INetworkDefinition (no GPU needed)
    _, network, _ = parse(trt, demo_export / "vision.onnx")
    tensors = [network.get_input(i) for i in range(network.num_inputs)] + [network.get_output(i) for i in range(network.num_outputs)]
    assert [(t.name, tuple(t.shape), t.dtype.name) for t in tensors] == VISION_IO


@pytest.mark.gpu
def test_vision_engine_deserializes_with_the_same_io(demo_export):
    if cuda_device_count() == 0:
        pytest.skip("no CUDA GPU (libcuda.so.1 missing or no device): TensorRT for RTX cannot deserialize an engine here")
    plan = build_engine(demo_export / "vision.onnx", [STATIC], builder="tensorrt-rtx")
    engine = trt.Runtime(trt.Logger(trt.Logger.ERROR)).deserialize_cuda_engine(plan)
    assert engine is not None, "TensorRT for RTX could not deserialize the vision engine on this GPU"
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    io = [(n, tuple(engine.get_tensor_shape(n)), engine.get_tensor_dtype(n).name) for n in names]
    assert io == VISION_IO
    modes = [engine.get_tensor_mode(n) for n in names]
    assert modes == [trt.TensorIOMode.INPUT, trt.TensorIOMode.OUTPUT, trt.TensorIOMode.OUTPUT]


def test_plugin_variant_asks_for_the_plugin(demo_export):
    with pytest.raises(NuwaError, match="SwarmAggregate node .*Plugin not found"):
        build_engine(demo_export / "vision.plugin.onnx", [STATIC], builder="tensorrt-rtx")


def test_dynamic_batch_profile_builds(demo_export):
    plan = build_engine(demo_export / "vision.onnx", [Profile({"pixel_values": ((1, 3, 224, 224), (2, 3, 224, 224), (4, 3, 224, 224))})])
    assert plan


def _profiles(manifest, graph):
    return [Profile({name: tuple(tuple(s) for s in rng) for name, rng in prof.items()}) for prof in manifest.engine_profiles[graph]]


@pytest.mark.parametrize("graph", ["llm_prefix", "llm_suffix"])
def test_llm_graphs_build_with_prefill_and_decode_profiles(demo_export, graph):
    from nuwa_export import manifest as mf

    m = mf.read(demo_export)
    profiles = _profiles(m, graph)
    assert len(profiles) == 2
    prefill, decode = profiles
    first = "inputs_embeds" if graph == "llm_prefix" else "hidden_states"
    assert prefill.shapes["past_key_" + str(0 if graph == "llm_prefix" else m.budgets.stage_two_layer)][2][2] == 0
    assert decode.shapes[first][0][1] == decode.shapes[first][2][1] == 1
    # batched: every per-row input spans 1 .. max_batch requests in both profiles
    per_row = ["position_ids", "pad_lengths", *(["vision_start"] if graph == "llm_prefix" else [])]
    for profile in profiles:
        for name in (first, *per_row):
            assert profile.shapes[name][0][0] == 1 and profile.shapes[name][2][0] == m.max_batch == 8, (name, profile.shapes[name])
    assert decode.shapes[first][1][0] == 8  # decode is built for full batches
    plan = build_engine(demo_export / m.graphs[graph].file, profiles, builder="tensorrt-rtx")
    assert len(plan) > 10_000
    from tests.helpers import cuda_device_count

    if cuda_device_count():  # TensorRT for RTX builds without a GPU but deserialises only with one
        from nuwa_export.runtime.tensorrt import import_tensorrt

        trt = import_tensorrt("tensorrt-rtx")
        engine = trt.Runtime(trt.Logger(trt.Logger.ERROR)).deserialize_cuda_engine(plan)
        assert tuple(engine.get_tensor_profile_shape("pad_lengths", 1)[2]) == (8,)


@pytest.mark.parametrize("graph", ["vision", "llm_prefix", "llm_suffix"])
def test_qwen_graphs_build(qwen_export_factory, graph):
    """Qwen2.5-VL on an odd 11x11 grid: window attention and Qwen's swarm in the vision graph
    (function inlined), M-RoPE positions [3, batch, seq] in the LLM graphs' profiles."""
    from nuwa_export import manifest as mf

    d = qwen_export_factory(0.25, 308)
    m = mf.read(d)
    plan = build_engine(d / m.graphs[graph].file, _profiles(m, graph), builder="tensorrt-rtx")
    assert len(plan) > 10_000
    if graph != "vision":
        _, network, _ = parse(trt, d / m.graphs[graph].file)
        inputs = {network.get_input(i).name: tuple(network.get_input(i).shape) for i in range(network.num_inputs)}
        assert inputs["position_ids"] == (3, -1, -1)
