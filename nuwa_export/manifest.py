"""``manifest.json``: what was exported, from what, with which budgets — read strictly.

Unknown keys, missing keys, a newer ``schema_version`` and files whose sha256 differs are all
one-line :class:`NuwaError` s naming what to do. That the files also hold what the manifest says
(graphs, embeddings, profiles) is checked when an export is opened
(``nuwa_export.runtime.exports.read_export``).

Schema 3 records the LLM graphs' :class:`~nuwa_export.precision.Precision` (``precision``);
schema 2 manifests (``llm.dtype``, ``quantization.precision``) are read and converted.
"""

from __future__ import annotations

import hashlib
import json
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

from nuwa_export import jsonio, names
from nuwa_export.constants import MANIFEST_SCHEMA_VERSION
from nuwa_export.errors import NuwaError
from nuwa_export.precision import EXPORT_DTYPES, QUANTIZED, Precision


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy-style: float32, int64, ...
    shape: list  # ints, or strings for dynamic axes ("batch")


@dataclass(frozen=True)
class GraphSpec:
    file: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class ModelInfo:
    id: str
    weights: dict[str, str]  # file name → sha256


@dataclass(frozen=True)
class BudgetInfo:
    keep: int
    stage_one_keep: int
    stage_two_keep: int
    stage_two_layer: int
    num_layers: int
    prune: bool
    per_region: int
    distance: float
    percentile: float
    keep_ratio: float | None = None  # Qwen2.5-VL's schedule, when it set the budgets
    self_weight: bool = True  # the swarm's self entry is 1.0 after normalising (LLaVA); False: Qwen2.5-VL


@dataclass(frozen=True)
class LlmInfo:
    num_layers: int
    hidden_size: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_positions: int
    image_token_id: int
    eos_token_ids: list[int]


@dataclass(frozen=True)
class QuantizedGraph:
    precision: str  # int8 | fp8 | int4-awq | int4-rtn (Precision.name of the export)
    opset: int  # ModelOpt raises the opset (19 for int8 / fp8, 21 for int4)
    source_sha256: str  # the float graph it was quantized from


@dataclass(frozen=True)
class QuantizationInfo:
    """What ``nuwa-quantize`` did, and from what (the lineage); the precision itself is the
    manifest's ``precision``."""

    method: str  # ModelOpt's calibration method: max | awq_clip | rtn_dq
    graphs: dict[str, QuantizedGraph]  # the quantized graphs; the others keep their float type
    source_manifest_sha256: str
    source_nuwa_export_version: str
    tools: dict[str, str]  # package → version (nvidia-modelopt, onnxruntime, onnx)
    calibration: dict[str, typing.Any]  # set name, sha256, requests, recorded runs per graph
    policy: dict[str, typing.Any]  # the thresholds validation held the graphs to
    block_size: int | None = None  # int4: weights per scale (128, or the largest of 64 / 32 / 16 that fits)


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    nuwa_export_version: str
    family: str  # the model family (a folder of nuwa_export/models/families/) that exported it
    model: ModelInfo
    budgets: BudgetInfo
    grid: list[int]
    num_patches: int
    max_batch: int  # requests side by side (engine profiles and the runtime's batches)
    llm: LlmInfo
    precision: Precision  # the LLM graphs' (the vision graph is float32: precision.VISION)
    preprocessing: dict[str, typing.Any]
    opset: int
    versions: dict[str, str]
    graphs: dict[str, GraphSpec]
    engine_profiles: dict[str, list[dict[str, list]]]  # graph → profiles → input → [min, opt, max]
    files: dict[str, FileEntry]
    validation: dict[str, typing.Any]
    #: The ONNX Runtime graphs (``llm_prefix``, ``llm_suffix``: fused attention, in-place KV;
    #: :mod:`nuwa_export.export.fused`); empty when exported with ``--no-ort-graphs``.
    ort_graphs: dict[str, GraphSpec] = field(default_factory=dict)
    #: Set by ``nuwa-quantize`` (:mod:`nuwa_export.quant`); absent from float exports.
    quantization: QuantizationInfo | None = None

    def to_json(self) -> str:
        """The manifest as written; optional budget keys at their defaults are left out (and
        ``ort_graphs`` / ``quantization`` when empty), so a LLaVA manifest reads in every
        nuwa-export that reads ``schema_version`` 2."""
        data = asdict(self)
        for f in fields(BudgetInfo):
            if f.default is not MISSING and data["budgets"][f.name] == f.default:
                del data["budgets"][f.name]
        if not data["ort_graphs"]:
            del data["ort_graphs"]
        if data["quantization"] is None:
            del data["quantization"]
        return json.dumps(data, indent=2, sort_keys=True) + "\n"


def graph_opset(m: Manifest, graph: str) -> int:
    """The ONNX opset of one of the export's graphs (a quantized graph's may be higher)."""
    q = m.quantization.graphs.get(graph) if m.quantization else None
    return q.opset if q else m.opset


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entries(directory: Path, names: list[str]) -> dict[str, FileEntry]:
    return {n: FileEntry(sha256_file(directory / n), (directory / n).stat().st_size) for n in sorted(names)}


def build_record(cls, data, where: str):
    """Build ``cls`` from JSON data, refusing unknown and missing keys at every level."""
    origin = typing.get_origin(cls)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(cls) if a is not type(None)]
        if data is None and len(options) < len(typing.get_args(cls)):
            return None
        return build_record(options[0], data, where)
    if is_dataclass(cls):
        if not isinstance(data, dict):
            raise NuwaError(f"manifest: {where} should be an object")
        names = {f.name for f in fields(cls)}
        optional = {f.name for f in fields(cls) if f.default is not MISSING or f.default_factory is not MISSING}  # added later; older manifests lack them
        unknown, missing = sorted(set(data) - names), sorted(names - set(data) - optional)
        if unknown:
            raise NuwaError(f"manifest: unknown key {where}.{unknown[0]} (written by a different nuwa-export?)")
        if missing:
            raise NuwaError(f"manifest: missing key {where}.{missing[0]}")
        hints = typing.get_type_hints(cls)
        try:
            return cls(**{k: build_record(hints[k], data[k], f"{where}.{k}") for k in names if k in data})
        except NuwaError as e:  # a record's own check (Precision)
            if str(e).startswith("manifest:"):
                raise
            raise NuwaError(f"manifest: {where}: {e}") from None
    if origin is dict:
        _, value_type = typing.get_args(cls)
        if not isinstance(data, dict):
            raise NuwaError(f"manifest: {where} should be an object")
        return {k: build_record(value_type, v, f"{where}.{k}") for k, v in data.items()}
    if origin is list:
        (item_type,) = typing.get_args(cls) or (typing.Any,)
        if not isinstance(data, list):
            raise NuwaError(f"manifest: {where} should be a list")
        return [build_record(item_type, v, f"{where}[{i}]") for i, v in enumerate(data)]
    if cls is list:
        if not isinstance(data, list):
            raise NuwaError(f"manifest: {where} should be a list")
        return data
    if cls is typing.Any:
        return data
    ok = isinstance(data, cls) and not (cls is int and isinstance(data, bool))
    if cls is float and isinstance(data, int) and not isinstance(data, bool):
        return float(data)
    if not ok:
        raise NuwaError(f"manifest: {where} should be {cls.__name__}, got {type(data).__name__}")
    return data


def read(directory: str | Path, *, verify: bool = True) -> Manifest:
    """Load and check ``DIR/manifest.json``; with ``verify``, every listed file's sha256 too."""
    directory = Path(directory)
    if verify:
        from nuwa_export.atomic import check_utf8_path

        check_utf8_path(directory, "export directory")  # before hashing every file
    path = directory / names.MANIFEST
    if not path.is_file():
        raise NuwaError(f"{directory} has no {names.MANIFEST}; is it a nuwa-export directory?")
    data = jsonio.read(path)
    version = data.get("schema_version")
    if isinstance(version, int) and version > MANIFEST_SCHEMA_VERSION:
        raise NuwaError(
            f"{path} has schema_version {version}, newer than this nuwa-export reads ({MANIFEST_SCHEMA_VERSION}); "
            "upgrade nuwa-export or re-export with this version"
        )
    if version == 2:
        data = _from_schema_2(data)
    elif isinstance(version, int) and 1 <= version < MANIFEST_SCHEMA_VERSION:
        raise NuwaError(
            f"{path} has schema_version {version}, from an older nuwa-export whose graphs take one request at a time; "
            f"re-export the model with this version (nuwa-export --model ... --out ...)"
        )
    manifest = build_record(Manifest, data, "manifest")
    if manifest.schema_version < 1:
        raise NuwaError(f"{path}: schema_version must be >= 1, got {manifest.schema_version}")
    if manifest.max_batch < 1:
        raise NuwaError(f"{path}: max_batch must be >= 1, got {manifest.max_batch}")
    if verify:
        verify_files(directory, manifest)
    return manifest


def _from_schema_2(data: dict) -> dict:
    """A schema 2 manifest as schema 3: ``llm.dtype`` and ``quantization.precision`` become
    ``precision``; a bad one of them is refused naming it (anything else is left for the strict
    reading)."""
    llm, q = data.get("llm"), data.get("quantization")
    if not isinstance(llm, dict) or (q is not None and not isinstance(q, dict)):
        return data
    for where, record, key in (("llm", llm, "dtype"), ("quantization", q, "precision")):
        if record is not None and key not in record:
            raise NuwaError(f"manifest: missing key manifest.{where}.{key}")
    dtype, name = llm["dtype"], (q or {}).get("precision", llm["dtype"])
    if dtype not in EXPORT_DTYPES:
        raise NuwaError(f"manifest.json: llm.dtype is {dtype!r}, not one of {', '.join(EXPORT_DTYPES)}; re-run nuwa-export")
    if q is not None and name not in QUANTIZED:
        raise NuwaError(f"manifest.json: quantization.precision is {name!r}, not one of {', '.join(QUANTIZED)}; re-run nuwa-export")
    data = {**data, "llm": {k: v for k, v in llm.items() if k != "dtype"}, "schema_version": MANIFEST_SCHEMA_VERSION,
            "precision": Precision.of(name, dtype).as_dict()}
    if q is not None:
        data["quantization"] = {k: v for k, v in q.items() if k != "precision"}
    return data


def verify_files(directory: Path, manifest: Manifest) -> None:
    for name, entry in sorted(manifest.files.items()):
        f = directory / name
        if not f.is_file():
            raise NuwaError(f"{f} is missing from the export; re-run nuwa-export")
        if f.stat().st_size != entry.size or sha256_file(f) != entry.sha256:
            raise NuwaError(f"{f} does not match its sha256 in {names.MANIFEST} (corrupt or changed); re-run nuwa-export")
