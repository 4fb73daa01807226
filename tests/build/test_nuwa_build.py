"""nuwa-build: engines and sidecars (TensorRT for RTX, no GPU), targets, and refusals."""

from __future__ import annotations

import json
import shutil

import pytest

from nuwa_export import manifest as mf
from nuwa_export.build.builder import build
from nuwa_export.build.targets import GIB, TARGETS
from nuwa_export.errors import NuwaError
from nuwa_export.runtime import sidecar as sc
from nuwa_export.runtime.trt_backend import checked_sidecars
from nuwa_export.tools.build import main as build_main
from nuwa_export.tools.run import main as run_main


def test_targets():
    orin = TARGETS["orin"]
    assert orin.workspace_bytes(8 * GIB) == 1 * GIB and orin.workspace_bytes(64 * GIB) == 8 * GIB
    assert TARGETS["thor"].workspace_bytes(128 * GIB) == 16 * GIB
    assert (8, 7) in orin.compute_capabilities and (11, 0) in TARGETS["thor"].compute_capabilities
    with pytest.raises(NuwaError, match="not supported on the orin profile"):
        orin.check_precision("fp64")
    with pytest.raises(NuwaError, match="fp8 engines do not run on the orin profile"):
        orin.check_precision("fp8")
    assert orin.check_precision("int4-awq") == "int4-awq" and TARGETS["thor"].check_precision("fp8") == "fp8"


@pytest.fixture(scope="module")
def built(demo_export, tmp_path_factory):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX not installed (pip install tensorrt-rtx-cu13)")
    d = tmp_path_factory.mktemp("built") / "exp"
    shutil.copytree(demo_export, d)
    sidecars = build(d, precision="fp32", builder="tensorrt-rtx", progress=False)
    return d, sidecars


@pytest.mark.trt_rtx
def test_builds_every_graph_with_correct_sidecars(built):
    d, sidecars = built
    m = mf.read(d)
    assert sorted(sidecars) == ["llm_prefix", "llm_suffix", "vision"]
    import tensorrt_rtx

    for graph, s in sidecars.items():
        on_disk = sc.read(sc.path_for(d / "engines", graph))
        assert on_disk == s
        assert s.builder == "tensorrt-rtx" and s.builder_version == tensorrt_rtx.__version__
        assert s.precision == "fp32" and s.target == "datacenter"
        assert (s.device_name, s.compute_capability) == _gpu()  # None, None: built offline
        assert s.onnx_sha256 == m.files[s.onnx_file].sha256
        assert s.engine_sha256 == mf.sha256_file(d / "engines" / s.engine_file)
        assert s.profiles == m.engine_profiles[graph] and s.plugin_library_sha256 is None
    assert len(sidecars["llm_prefix"].profiles) == 2
    assert not (d / "engines" / "timing.cache").exists()  # TensorRT for RTX has no timing cache
    trt, checked, env = checked_sidecars(d)
    assert checked == sidecars and env.builder == "tensorrt-rtx"


@pytest.mark.trt_rtx
@pytest.mark.parametrize(
    "tamper,match",
    [
        (lambda d: _edit(d, "llm_suffix", builder_version="1.0.0"), "built with tensorrt-rtx 1.0.0, this is"),
        (lambda d: _edit(d, "vision", extra=1), "unknown key vision.json.extra"),
        (lambda d: (d / "engines" / "llm_prefix.json").unlink(), "llm_prefix.json is missing"),
        (lambda d: (d / "engines" / "vision.plan").write_bytes(b"junk"), "vision.plan does not match the sha256"),
        (lambda d: _edit(d, "vision", plugin_library="libnuwa_trt_plugins.so", plugin_library_sha256="0" * 64), "needs the SwarmAggregate plugin library"),
        (lambda d: _edit(d, "llm_prefix", compute_capability=[8, 7]), None),  # checked once a GPU is known
    ],
)
def test_runtime_refuses_what_it_cannot_serve(built, tmp_path, capsys, tamper, match):
    d = tmp_path / "exp"
    shutil.copytree(built[0], d)
    tamper(d)
    if match is None:
        checked_sidecars(d)
        with pytest.raises(NuwaError, match="built for compute capability 8.7, this GPU is 9.0"):
            checked_sidecars(d, compute_capability=(9, 0))
        return
    with pytest.raises(NuwaError, match=match):
        checked_sidecars(d)
    assert run_main([str(d), "--prompt", "hi", "--backend", "trt"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nuwa-run: error: ") and "Traceback" not in err[0]


def test_wrong_plugin_library_is_refused(built, tmp_path):
    d = tmp_path / "exp"
    shutil.copytree(built[0], d)
    lib = tmp_path / "libnuwa_trt_plugins.so"
    lib.write_bytes(b"not the library the engine was built with")
    _edit(d, "vision", plugin_library=lib.name, plugin_library_sha256="0" * 64)
    with pytest.raises(NuwaError, match="is not the plugin library vision.plan was built with"):
        checked_sidecars(d, plugin_lib=lib)


def test_no_gpu_is_one_line(built, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # no GPU, whatever this machine has
    assert run_main([str(built[0]), "--prompt", "hi", "--backend", "trt"]) == 1
    assert capsys.readouterr().err.strip() == "nuwa-run: error: the trt backend needs a CUDA GPU and a CUDA build of torch (this torch sees no GPU)"


def _gpu() -> tuple[str | None, list[int] | None]:
    """(name, compute capability) of the GPU torch sees, as a sidecar records them; (None, None) without."""
    import torch

    if not torch.cuda.is_available():
        return None, None
    return torch.cuda.get_device_name(0), list(torch.cuda.get_device_capability(0))


def _edit(d, graph, **changes):
    p = sc.path_for(d / "engines", graph)
    data = json.loads(p.read_text())
    data.update(changes)
    p.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "args,match",
    [
        (["--builder", "tensorrt-rtx", "--precision", "fp16"], "builds strongly typed networks only"),
        (["--builder", "tensorrt-rtx", "--plugin"], "--plugin needs full TensorRT"),
        (["--profile", "orin", "--precision", "fp32", "--builder", "nope"], "invalid choice: 'nope'"),
    ],
)
def test_build_refusals(demo_export, capsys, args, match):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX not installed")
    assert build_main([str(demo_export), *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nuwa-build: error: ") and match in err[0]
    assert not (demo_export / "engines").exists()


def test_full_tensorrt_missing_names_the_package(demo_export, capsys):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("full TensorRT is installed here")
    except ImportError:
        pass
    assert build_main([str(demo_export)]) == 1
    assert "pip install tensorrt-cu12" in capsys.readouterr().err


@pytest.mark.trt_rtx
def test_float16_export_builds_strongly_typed(checkpoint_factory, tmp_path, capsys):
    """TensorRT for RTX takes a float16 export as typed: fp16 LLM engines, an fp32 vision engine;
    asking for fp32 engines from float16 graphs is refused."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX not installed (pip install tensorrt-rtx-cu13)")
    from nuwa_export.export.pipeline import export
    from tests.helpers import SMALL

    d = tmp_path / "exp"
    export(str(checkpoint_factory(0, **SMALL)), d, keep=8, dtype="float16", progress=False)
    assert build_main([str(d), "--builder", "tensorrt-rtx", "--precision", "fp32"]) == 1
    assert "here fp16 for the LLM (fp32 vision)" in capsys.readouterr().err
    sidecars = build(d, precision="fp16", builder="tensorrt-rtx", progress=False)
    assert {g: s.precision for g, s in sidecars.items()} == {"vision": "fp32", "llm_prefix": "fp16", "llm_suffix": "fp16"}
    assert all((d / "engines" / s.engine_file).stat().st_size > 0 for s in sidecars.values())
