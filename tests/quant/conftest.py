"""The demo export quantized once per precision (session), and float records of held-out requests."""

from __future__ import annotations

import pytest


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


#: Requests that are not in calib/default.jsonl: the policy is held on pictures and prompts the
#: graphs were not calibrated on.
HELD_OUT = [
    {"image": "builtin:scene-11", "prompt": "What is the biggest object in the image?"},
    {"image": "builtin:scene-12", "ground": "the shape at the bottom"},
    {"image": "builtin:scene-13", "prompt": "What colors do you see?\nAnswer the question using a single word or phrase."},
    {"image": "builtin:example", "prompt": "Is there a car in the image? Please answer yes or no."},
]


@pytest.fixture(scope="session")
def float_records(demo_export, tmp_path_factory):
    """The float export's records on :data:`HELD_OUT` (what the policy tests hold quantized graphs to)."""
    import json

    from nuwa_export import manifest as mf
    from nuwa_export.quant import calib

    d = tmp_path_factory.mktemp("held-out")
    (d / "held-out.jsonl").write_text("".join(json.dumps(r) + "\n" for r in HELD_OUT))
    _, records = calib.calibrate(demo_export, mf.read(demo_export), calib.load_set(str(d / "held-out.jsonl")), d / "feeds", decode_steps=0, tokens=8)
    return records
