"""One Precision per export (weights, compute, KV cache, I/O), and the one table of dtype names."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nuwa_export import precision as p
from nuwa_export.errors import NuwaError
from nuwa_export.precision import Precision


@pytest.mark.parametrize(
    "name,float_type,want",
    [
        ("float32", None, ("float32", "float32", "float32", "float32")),
        ("float16", "float16", ("float16", "float16", "float16", "float16")),
        ("int8", "float32", ("int8", "int8", "float32", "float32")),  # W8A8, KV and I/O in the float type
        ("fp8", "float16", ("fp8", "fp8", "float16", "float16")),
        ("int4-awq", "float16", ("int4", "float16", "float16", "float16")),  # weight-only: the matmuls run in float16
        ("int4-rtn", None, ("int4", "float32", "float32", "float32")),
    ],
)
def test_each_precision_spells_out_its_parts(name, float_type, want):
    got = Precision.of(name, float_type)
    assert (got.weights, got.compute, got.kv, got.io) == want
    assert got.quantized == (name in p.QUANTIZED) and got.float_type == want[3]
    assert Precision(**got.as_dict()) == got  # what the manifest records reads back
    assert got.build == {"float32": "fp32", "float16": "fp16"}.get(name, name)


def test_inconsistent_or_unknown_precisions_are_refused():
    with pytest.raises(NuwaError, match="is inconsistent"):
        Precision("int8", "int8", "int8", "float16", "float32")  # KV in another float type than the I/O
    with pytest.raises(NuwaError, match="unknown precision 'int3'"):
        Precision.of("int3")
    with pytest.raises(NuwaError, match="a float16 export has float16 I/O, not float32"):
        Precision.of("float16", "float32")
    with pytest.raises(NuwaError, match="keeps the float type of its source"):
        Precision.of("int8", "bfloat16")
    assert p.VISION == Precision.of("float32")


def test_dtype_vocabularies_agree():
    for name in ("float32", "float16", "bfloat16", "int64", "int32", "bool"):
        assert p.name_of(p.torch_dtype(name)) == name
        assert torch.empty((), dtype=p.torch_dtype(name)).element_size() == p.ITEMSIZE[name]
    for name in ("float32", "float16", "int64", "int32", "bool"):
        assert np.dtype(p.numpy_dtype(name)).name == name and p.name_of(np.dtype(name)) == name
    assert {p.ONNX[1], p.ONNX[10], p.ONNX[7]} == {"float32", "float16", "int64"}
    assert all(p.TENSORRT[k] in p.ITEMSIZE for k in p.TENSORRT)
    with pytest.raises(NuwaError, match="no torch dtype for 'int4'"):
        p.torch_dtype("int4")
