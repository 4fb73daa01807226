"""The demo export quantized once per precision (session), and its float records."""

from __future__ import annotations

import pytest

pytest.importorskip("modelopt.onnx.quantization", reason="nvidia-modelopt not installed (pip install -e '.[quantize]')")


@pytest.fixture(scope="session")
def quantized_factory(demo_export, tmp_path_factory):
    """``make(precision) -> Path``: ``demo_export`` through nuwa-quantize (default set), once each."""
    from nuwa_export.quant.quantize import quantize

    made = {}

    def make(precision: str):
        if precision not in made:
            made[precision] = tmp_path_factory.mktemp("quant") / f"demo-{precision}"
            quantize(demo_export, made[precision], precision, progress=False)
        return made[precision]

    return make


@pytest.fixture(scope="session")
def float_records(demo_export, tmp_path_factory):
    """The float export's records on calib/default.jsonl (what validation holds quantized graphs to)."""
    from nuwa_export.export import manifest as mf
    from nuwa_export.quant import calib

    _, records = calib.calibrate(demo_export, mf.read(demo_export), calib.load_set("default"), tmp_path_factory.mktemp("feeds"), decode_steps=0, tokens=8)
    return records
