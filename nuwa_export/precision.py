"""Precision: how an export holds and computes its numbers, and the one table of dtype names.

Every dtype nuwa-export records or reads is named as NumPy names it (``float32``, ``float16``,
``int64``, ...). The other vocabularies — torch dtypes, ONNX element types, safetensors and
TensorRT type names, TensorRT build precisions (``fp16``) — are converted here and nowhere else.

:class:`Precision` describes the LLM graphs of an export (the vision graph is always
float32, :data:`VISION`): the type of the weights, of the matmuls' inputs, of the KV cache and of
the graphs' float inputs and outputs. ``nuwa-export --dtype`` gives float32 or float16;
``nuwa-quantize --precision`` int8, fp8 (W8A8) or int4 (weight-only, AWQ or round-to-nearest),
keeping the float type of the export it came from for everything else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from nuwa_export.errors import NuwaError

#: Float types a graph tensor can have.
FLOATS = ("float32", "float16", "bfloat16")
#: ``nuwa-export --dtype``: the LLM graphs' float type (the vision graph is float32 either way).
EXPORT_DTYPES = ("float32", "float16")
#: ``nuwa-quantize --precision`` (and the engines built from such an export).
QUANTIZED = ("int8", "fp8", "int4-awq", "int4-rtn")
#: What the quantized precisions store their weights as, and whether activations are quantized too.
_QUANTIZED_WEIGHTS = {"int8": ("int8", True), "fp8": ("fp8", True), "int4-awq": ("int4", False), "int4-rtn": ("int4", False)}

#: ONNX ``TensorProto.DataType`` → name.
ONNX = {
    1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 8: "str",
    9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16",
}
#: name → (safetensors dtype, bytes per element), for the types an embedding table can have.
SAFETENSORS = {"float32": ("F32", 4), "float16": ("F16", 2), "bfloat16": ("BF16", 2)}
#: TensorRT ``DataType`` names → name.
TENSORRT = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT64": "int64", "INT32": "int32", "BOOL": "bool"}
#: name → TensorRT build precision (``nuwa-build --precision``, engine sidecars).
BUILD = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
#: name → bytes per element.
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "bool": 1, "int8": 1, "fp8": 1}


def torch_dtype(name: str):
    """``float32`` → ``torch.float32`` (and the integer types the graphs use)."""
    import torch

    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32, "bool": torch.bool}
    if name not in table:
        raise NuwaError(f"no torch dtype for '{name}'")
    return table[name]


def name_of(dtype) -> str:
    """A torch or NumPy dtype → its name (``torch.float16`` → ``float16``)."""
    return str(dtype).removeprefix("torch.")


def numpy_dtype(name: str):
    """``float32`` → ``numpy.float32`` (what ONNX Runtime's IOBinding takes)."""
    import numpy as np

    return np.dtype(name).type


@dataclass(frozen=True)
class Precision:
    """The LLM graphs' numbers. ``name`` is what the user asked for (``--dtype`` or
    ``nuwa-quantize --precision``); the other fields follow from it and the float type, and are
    recorded in the manifest so that every reader sees them spelled out."""

    name: str  # float32 | float16 | int8 | fp8 | int4-awq | int4-rtn
    weights: str  # float32 | float16 | int8 | fp8 | int4
    compute: str  # the matmuls' inputs: the float type, or int8 / fp8 (W8A8)
    kv: str  # the KV cache: the float type
    io: str  # inputs_embeds and hidden_states (logits and stage-two scores are always float32)

    def __post_init__(self) -> None:
        want = Precision.of(self.name, self.io)
        if (self.weights, self.compute, self.kv) != (want.weights, want.compute, want.kv):
            raise NuwaError(
                f"precision {self.as_dict()} is inconsistent: a {self.name} export with {self.io} I/O has weights {want.weights}, "
                f"compute {want.compute} and KV cache {want.kv}"
            )

    @classmethod
    def of(cls, name: str, float_type: str | None = None) -> Precision:
        """``of("float16")``; ``of("int8", "float32")``: a quantized precision over a float type."""
        if name in EXPORT_DTYPES:
            if float_type not in (None, name):
                raise NuwaError(f"a {name} export has {name} I/O, not {float_type}")
            return cls._make(name, name, name, name, name)
        if name in QUANTIZED:
            float_type = float_type or "float32"
            if float_type not in EXPORT_DTYPES:
                raise NuwaError(f"a {name} export keeps the float type of its source, float32 or float16, not {float_type}")
            weights, activations = _QUANTIZED_WEIGHTS[name]
            return cls._make(name, weights, weights if activations else float_type, float_type, float_type)
        raise NuwaError(f"unknown precision '{name}' (choose from {', '.join(EXPORT_DTYPES + QUANTIZED)})")

    @classmethod
    def _make(cls, *fields: str) -> Precision:
        obj = object.__new__(cls)  # the rule itself: no check against itself
        for f, v in zip(("name", "weights", "compute", "kv", "io"), fields):
            object.__setattr__(obj, f, v)
        return obj

    @property
    def quantized(self) -> bool:
        return self.name in QUANTIZED

    @property
    def float_type(self) -> str:
        """The float type of everything that is not quantized."""
        return self.io

    @property
    def build(self) -> str:
        """The TensorRT build precision: fp32 / fp16, or the quantized precision."""
        return self.name if self.quantized else BUILD[self.name]

    def as_dict(self) -> dict:
        return asdict(self)


#: The vision graph's precision in every export: stage one ranks patches by attention, and in
#: float16 ONNX Runtime and PyTorch round near-ties apart (docs/architecture.md).
VISION = Precision.of("float32")
