"""TensorRT for RTX (no GPU needed) parses and builds the exported graphs."""

from __future__ import annotations

import pytest

from nuwa_export.build.engine import Profile, build_engine
from nuwa_export.errors import NuwaError

trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX not installed (pip install tensorrt-rtx-cu13)")
pytestmark = pytest.mark.trt_rtx

STATIC = Profile({"pixel_values": ((1, 3, 224, 224),) * 3})


def test_vision_graph_builds_with_the_function_inlined(demo_export):
    plan = build_engine(demo_export / "vision.onnx", [STATIC], builder="tensorrt-rtx")
    assert len(plan) > 100_000
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    engine = runtime.deserialize_cuda_engine(plan) if hasattr(runtime, "deserialize_cuda_engine") else None
    if engine is not None:  # deserialising may need a GPU; when it works, check the I/O
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        assert names == ["pixel_values", "image_tokens", "patch_indices"]


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
    from nuwa_export.export import manifest as mf

    m = mf.read(demo_export)
    profiles = _profiles(m, graph)
    assert len(profiles) == 2
    prefill, decode = profiles
    first = "inputs_embeds" if graph == "llm_prefix" else "hidden_states"
    assert prefill.shapes["past_key_" + str(0 if graph == "llm_prefix" else m.budgets.stage_two_layer)][2][2] == 0
    assert decode.shapes[first][0][1] == decode.shapes[first][2][1] == 1
    plan = build_engine(demo_export / m.graphs[graph].file, profiles, builder="tensorrt-rtx")
    assert len(plan) > 10_000
