"""The strict manifest reader: tampering of any kind is one clear error."""

from __future__ import annotations

import json
import shutil

import pytest

from nuwa_export import manifest as mf
from nuwa_export.errors import NuwaError
from nuwa_export.names import MANIFEST
from nuwa_export.runtime.exports import read_export


@pytest.fixture
def copy(demo_export, tmp_path):
    d = tmp_path / "export"
    shutil.copytree(demo_export, d)
    return d


def _edit(d, fn):
    data = json.loads((d / MANIFEST).read_text())
    fn(data)
    (d / MANIFEST).write_text(json.dumps(data))


def test_round_trip(copy):
    m = mf.read(copy)
    assert m.to_json() == (copy / MANIFEST).read_text()


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda d: d.update(extra=1), "unknown key manifest.extra"),
        (lambda d: d["budgets"].update(bogus=True), "unknown key manifest.budgets.bogus"),
        (lambda d: d.pop("grid"), "missing key manifest.grid"),
        (lambda d: d["graphs"]["vision"]["inputs"][0].pop("dtype"), r"missing key manifest.graphs.vision.inputs\[0\].dtype"),
        (lambda d: d.update(schema_version=99), "schema_version 99, newer than this nuwa-export reads"),
        (lambda d: d.update(max_batch=0), "max_batch must be >= 1, got 0"),
        (lambda d: d.update(max_batch=4), r"engine_profiles.llm_prefix\[0\].inputs_embeds dimension 0 \(batch\) has max 8, beyond manifest.json max_batch = 4"),
        (lambda d: d.update(num_patches="256"), "num_patches should be int"),
        (lambda d: d["budgets"].update(prune=1), "prune should be bool"),
        (lambda d: d["files"]["vision.onnx"].update(sha256="0" * 64), "does not match its sha256"),
    ],
)
def test_tampered_manifest(copy, edit, match):
    _edit(copy, edit)
    with pytest.raises(NuwaError, match=match):
        read_export(copy)  # the manifest read strictly, and the export's files held to it


def test_tampered_graph_file(copy):
    data = bytearray((copy / "vision.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "vision.onnx").write_bytes(bytes(data))
    with pytest.raises(NuwaError, match="vision.onnx does not match its sha256"):
        mf.read(copy)
    assert mf.read(copy, verify=False).budgets.keep == 28


def test_missing_graph_file(copy):
    (copy / "vision.plugin.onnx").unlink()
    with pytest.raises(NuwaError, match="vision.plugin.onnx is missing"):
        mf.read(copy)


def test_not_an_export(tmp_path):
    with pytest.raises(NuwaError, match="has no manifest.json"):
        mf.read(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(NuwaError, match="is not valid JSON"):
        mf.read(tmp_path)


def _as_schema_2(d: dict) -> None:
    """What nuwa-export wrote before ``precision``: ``llm.dtype`` (and ``quantization.precision``)."""
    d["schema_version"], d["llm"]["dtype"] = 2, d.pop("precision")["io"]


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda d: d["llm"].update(dtype="bfloat16"), "manifest.json: llm.dtype is 'bfloat16', not one of float32, float16"),
        (lambda d: d["llm"].pop("dtype"), "missing key manifest.llm.dtype"),
        (lambda d: d.update(quantization={"method": "max"}), "missing key manifest.quantization.precision"),
        (lambda d: d.update(quantization={"precision": "int3"}), "quantization.precision is 'int3', not one of int8, fp8, int4-awq, int4-rtn"),
    ],
)
def test_a_bad_schema_2_manifest_names_its_own_field(copy, edit, match):
    _edit(copy, lambda d: (_as_schema_2(d), edit(d)))
    with pytest.raises(NuwaError, match=match):
        mf.read(copy, verify=False)


def test_a_schema_2_manifest_reads_as_schema_3(copy, demo_export):
    _edit(copy, _as_schema_2)
    old, new = mf.read(copy, verify=False), mf.read(demo_export)
    assert old.precision == new.precision and old.schema_version == 3 and old.llm == new.llm
