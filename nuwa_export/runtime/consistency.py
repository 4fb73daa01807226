"""Does an export directory hold what its manifest says? Cheap checks, run whenever one is opened.

The sha256 in ``manifest.json`` proves the files are the ones it lists, not that they are right:
a truncated graph or a garbage embedding table whose hashes were re-recorded, or a manifest
whose values are well formed but belong to another export, would otherwise surface as a
traceback deep inside ONNX Runtime, TensorRT or NumPy. :func:`check` (called by
:func:`nuwa_export.runtime.exports.read_export`, so by every verb that opens an export) refuses
them in one line naming what disagrees:

* the manifest against itself: budgets within the grid and the layer count, the grid against
  the image size, token ids within the vocabulary, the preprocessing fields;
* every graph's inputs and outputs, read from the ONNX protobuf without loading its weights
  (a small wire-format scanner: cheap even for a 2 GB graph), against ``graphs`` in the
  manifest and against the export's graph contract (its family's, from the manifest's numbers:
  image size, K1, hidden size, KV heads, head dim, layers, vocabulary, precision);
* the TensorRT profiles against the graph inputs;
* the embedding table's safetensors header: name, dtype, shape, data size.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from nuwa_export import contract as ct
from nuwa_export import manifest as mf
from nuwa_export import names as n
from nuwa_export import precision
from nuwa_export.atomic import check_utf8_path
from nuwa_export.constants import GQA_DOMAIN, GQA_NAME, OP_DOMAIN, OP_NAME
from nuwa_export.errors import NuwaError

_PREPROCESSING = {"size", "mean", "std", "resample", "rescale_factor", "pad"}


def _fail(message: str) -> None:
    raise NuwaError(f"{message}; re-run nuwa-export")


# --- ONNX graph I/O without the weights -------------------------------------------------------


class _Bad(Exception):
    pass


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end:
            raise _Bad("it ends too early: truncated")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise _Bad("corrupt protobuf: a malformed number")


def _fields(buf, start: int, end: int):
    """``(field number, value)`` of one protobuf message: ints, or ``(start, end)`` of bytes."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _Bad("corrupt protobuf: field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire == 2:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise _Bad("it ends too early: truncated")
            value, pos = (pos, pos + n), pos + n
        elif wire in (1, 5):
            value, pos = _Fixed(pos, 8 if wire == 1 else 4), pos + (8 if wire == 1 else 4)
            if pos > end:
                raise _Bad("it ends too early: truncated")
        else:
            raise _Bad(f"corrupt protobuf: wire type {wire}")
        yield field, value


@dataclass(frozen=True)
class _Fixed:
    """A fixed-width protobuf value (float: 4 bytes, double: 8) at ``start`` in the buffer."""

    start: int
    size: int

    def float(self, buf) -> float:
        return struct.unpack("<f" if self.size == 4 else "<d", bytes(buf[self.start : self.start + self.size]))[0]


def _text(buf, span) -> str:
    try:
        return bytes(buf[span[0] : span[1]]).decode()
    except (UnicodeDecodeError, TypeError):
        raise _Bad("corrupt protobuf: a name is not UTF-8") from None


def _value_info(buf, span) -> mf.TensorSpec:
    """ValueInfoProto{1: name, 2: TypeProto{1: tensor{1: elem_type, 2: shape{1: dim{1: value, 2: param}}}}}."""
    name, dtype, dims = None, None, None
    for f, v in _fields(buf, *span):
        if f == 1 and isinstance(v, tuple):
            name = _text(buf, v)
        elif f == 2 and isinstance(v, tuple):
            for f2, v2 in _fields(buf, *v):
                if f2 != 1 or not isinstance(v2, tuple):
                    continue
                for f3, v3 in _fields(buf, *v2):
                    if f3 == 1 and isinstance(v3, int):
                        dtype = precision.ONNX.get(v3, f"onnx type {v3}")
                    elif f3 == 2 and isinstance(v3, tuple):
                        dims = []
                        for f4, v4 in _fields(buf, *v3):
                            if f4 != 1 or not isinstance(v4, tuple):
                                continue
                            dim = "?"
                            for f5, v5 in _fields(buf, *v4):
                                if f5 == 1 and isinstance(v5, int):
                                    dim = v5
                                elif f5 == 2 and isinstance(v5, tuple):
                                    dim = _text(buf, v5)
                            dims.append(dim)
    if name is None or dtype is None or dims is None:
        raise _Bad("an input or output without a name, tensor type or shape")
    return mf.TensorSpec(name, dtype, dims)


def graph_io(path: Path) -> tuple[list[mf.TensorSpec], list[mf.TensorSpec], dict[str, int]]:
    """(inputs, outputs, opsets by domain) of the ONNX model at ``path``, weights not loaded.

    A file that is not a complete ONNX protobuf is a one-line :class:`NuwaError`.
    """
    try:
        with open(path, "rb") as f:
            if f.seek(0, 2) == 0:
                raise NuwaError(f"{path} is empty, not an ONNX model; re-run nuwa-export")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _scan_model(buf)
    except OSError as e:
        raise NuwaError(f"cannot read {path} ({e.strerror or e})") from None
    except _Bad as e:
        raise NuwaError(f"{path} is not a valid ONNX model ({e}); re-run nuwa-export") from None


def _check_op(op: str, domain: str, node: str, opsets: dict[str, int], functions: set) -> None:
    """The node's operator exists: a standard ONNX op, a function of the model, ours, or the
    ONNX Runtime contrib op the ONNX Runtime graphs use."""
    domain = "" if domain == "ai.onnx" else domain
    if domain not in opsets and not (domain == "" and "ai.onnx" in opsets):
        raise _Bad(f"{op} node '{node}' uses domain '{domain}', which the model does not import")
    if domain == "":
        try:
            import onnx.defs
        except ImportError:
            return
        if not onnx.defs.has(op):
            raise _Bad(f"{op} node '{node}': there is no ONNX operator {op}")
    elif (domain, op) not in functions and (domain, op) not in ((OP_DOMAIN, OP_NAME), (GQA_DOMAIN, GQA_NAME)):
        raise _Bad(f"{op} node '{node}': nothing defines {domain}::{op}")


def _scan_model(buf):
    graph, opsets, ir_version, functions = None, {}, None, set()
    for f, v in _fields(buf, 0, len(buf)):
        if f == 1 and isinstance(v, int):
            ir_version = v
        elif f == 25 and isinstance(v, tuple):  # FunctionProto{1: name, 10: domain}
            name = domain = ""
            for f2, v2 in _fields(buf, *v):
                if f2 in (1, 10) and isinstance(v2, tuple):
                    name, domain = (_text(buf, v2), domain) if f2 == 1 else (name, _text(buf, v2))
            functions.add((domain, name))
        elif f == 7 and isinstance(v, tuple):
            graph = v
        elif f == 8 and isinstance(v, tuple):
            domain, version = "", None
            for f2, v2 in _fields(buf, *v):
                if f2 == 1 and isinstance(v2, tuple):
                    domain = _text(buf, v2)
                elif f2 == 2 and isinstance(v2, int):
                    version = v2
            if version is not None:
                opsets[domain] = version
    if ir_version is None or graph is None:
        raise _Bad("no graph in it")
    inputs, outputs, nodes, defined = [], [], [], set()
    for f, v in _fields(buf, *graph):
        if f == 11 and isinstance(v, tuple):
            inputs.append(_value_info(buf, v))
        elif f == 12 and isinstance(v, tuple):
            outputs.append(_value_info(buf, v))
        elif f == 1 and isinstance(v, tuple):
            nodes.append(v)
        elif f == 5 and isinstance(v, tuple):  # TensorProto{8: name}
            defined.update(_text(buf, v2) for f2, v2 in _fields(buf, *v) if f2 == 8 and isinstance(v2, tuple))
        elif f == 15 and isinstance(v, tuple):  # SparseTensorProto{1: values TensorProto{8: name}}
            for f2, v2 in _fields(buf, *v):
                if f2 == 1 and isinstance(v2, tuple):
                    defined.update(_text(buf, v3) for f3, v3 in _fields(buf, *v2) if f3 == 8 and isinstance(v3, tuple))
    if not outputs:
        raise _Bad("a graph without outputs")
    # Nodes are topologically sorted (an ONNX rule): every input is defined before it is read.
    defined.update(t.name for t in inputs)
    for node in nodes:
        ins, outs, name, op, domain = [], [], "", "?", ""
        for f, v in _fields(buf, *node):
            if isinstance(v, tuple) and f in (1, 2, 3, 4, 7):
                text = _text(buf, v)
                if f == 1:
                    ins.append(text)
                elif f == 2:
                    outs.append(text)
                elif f == 3:
                    name = text
                elif f == 4:
                    op = text
                else:
                    domain = text
        _check_op(op, domain, name, opsets, functions)
        for i in ins:
            if i and i not in defined:
                raise _Bad(f"{op} node '{name}' reads '{i}', which nothing before it defines")
        defined.update(outs)
    for t in outputs:
        if t.name not in defined:
            raise _Bad(f"output '{t.name}' is not computed by any node")
    return inputs, outputs, opsets


def swarm_attributes(path: Path) -> list[dict]:
    """The attributes of every ``nuwa::SwarmAggregate`` node of the ONNX model at ``path``
    (``grid`` ints, ``distance`` and ``percentile`` floats, ``self_weight`` int), weights not loaded."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            found = []
            graph = next((v for f1, v in _fields(buf, 0, len(buf)) if f1 == 7 and isinstance(v, tuple)), None)
            for f1, node in _fields(buf, *graph) if graph else ():
                if f1 != 1 or not isinstance(node, tuple):
                    continue
                fields = list(_fields(buf, *node))
                texts = {f2: _text(buf, v2) for f2, v2 in fields if f2 in (4, 7) and isinstance(v2, tuple)}
                if (texts.get(7, ""), texts.get(4)) != (OP_DOMAIN, OP_NAME):
                    continue
                attrs = {}
                for f2, v2 in fields:
                    if f2 == 5 and isinstance(v2, tuple):  # AttributeProto{1: name, 2: f, 3: i, 8: ints}
                        name, value = None, None
                        for f3, v3 in _fields(buf, *v2):
                            if f3 == 1 and isinstance(v3, tuple):
                                name = _text(buf, v3)
                            elif f3 == 2 and isinstance(v3, _Fixed):
                                value = v3.float(buf)
                            elif f3 == 3 and isinstance(v3, int):
                                value = v3 - (1 << 64) if v3 >= 1 << 63 else v3
                            elif f3 == 8 and isinstance(v3, int):
                                value = [*(value or []), v3]
                            elif f3 == 8 and isinstance(v3, tuple):  # packed
                                value, pos = [], v3[0]
                                while pos < v3[1]:
                                    item, pos = _varint(buf, pos, v3[1])
                                    value.append(item)
                        if name is not None:
                            attrs[name] = value
                found.append(attrs)
            return found
    except (OSError, ValueError) as e:
        raise NuwaError(f"cannot read {path} ({e})") from None
    except _Bad as e:
        raise NuwaError(f"{path} is not a valid ONNX model ({e}); re-run nuwa-export") from None


def _check_swarm(directory: Path, m: mf.Manifest) -> None:
    """The vision graphs' swarm node carries the manifest's stage-one settings (one node when
    pruning, none without)."""
    b = m.budgets
    for graph in n.VISION_GRAPHS:
        file = m.graphs[graph].file
        nodes = swarm_attributes(directory / file)
        if len(nodes) != (1 if b.prune else 0):
            _fail(f"{file} has {len(nodes)} SwarmAggregate nodes, expected {1 if b.prune else 0}")
        for attrs in nodes:
            got = (attrs.get("grid"), attrs.get("self_weight", 1))
            if got != (list(m.grid), int(b.self_weight)) or not all(
                isinstance(attrs.get(k), float) and math.isclose(attrs[k], float(v), rel_tol=1e-6) for k, v in (("distance", b.distance), ("percentile", b.percentile))
            ):
                _fail(f"{file}'s SwarmAggregate node (grid {attrs.get('grid')}, distance {attrs.get('distance')}, percentile {attrs.get('percentile')}, "
                      f"self_weight {attrs.get('self_weight', 1)}) does not match manifest.json (grid {m.grid}, budgets.distance {b.distance}, "
                      f"budgets.percentile {b.percentile}, budgets.self_weight {b.self_weight})")


# --- what the manifest's numbers imply --------------------------------------------------------


def _shape(dims) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def _contract(m: mf.Manifest) -> ct.Contract:
    """The graph contract the export's model family declares for the manifest's numbers."""
    from nuwa_export.models.families import families

    known = families()
    if m.family not in known:
        _fail(f"manifest.json: family '{m.family}' is not a model family this nuwa-export knows ({', '.join(sorted(known))})")
    return known[m.family].contract(ct.Numbers.of_manifest(m))


def _compare(m: mf.Manifest, graph: str, file: str, side: str, got: list[mf.TensorSpec], want: tuple[ct.Tensor, ...], where: str = "graphs") -> None:
    names, want_names = [t.name for t in got], [w.name for w in want]
    if names != want_names:
        missing = [x for x in want_names if x not in names]
        extra = [x for x in names if x not in want_names]
        what = f"lacks {side} {missing[0]}" if missing else f"has an unexpected {side} {extra[0]}" if extra else f"has its {side}s in another order"
        if (missing or extra) and all(n.is_kv(x) for x in missing + extra):
            why = f"manifest.json says llm.num_layers {m.llm.num_layers} split at budgets.stage_two_layer {m.budgets.stage_two_layer}"
        else:
            why = f"manifest.json {where}.{graph} describes another graph"
        _fail(f"{file} {what}, but {why}")
    for t, w in zip(got, want):
        if t.dtype != w.dtype:
            by = f"manifest.json {w.dtype_field} is {w.dtype}" if w.dtype_field else f"it should be {w.dtype}"
            _fail(f"{file} {side} {w.name} is {t.dtype}, but {by}")
        if len(t.shape) != len(w.dims):
            _fail(f"{file} {side} {w.name} has shape {_shape(t.shape)}, expected rank {len(w.dims)}")
        for got_dim, want_dim in zip(t.shape, w.dims):
            if want_dim.dynamic:
                continue
            if got_dim != want_dim.size:
                by = f"manifest.json {want_dim.field} is {want_dim.size}" if want_dim.field else f"it should be {want_dim.size} there"
                _fail(f"{file} {side} {w.name} has shape {_shape(t.shape)}, but {by}")


# --- the manifest against itself --------------------------------------------------------------


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_values(m: mf.Manifest) -> None:
    b, llm, kind = m.budgets, m.llm, m.precision
    say = lambda what: _fail(f"manifest.json: {what}")  # noqa: E731
    if kind.io not in precision.EXPORT_DTYPES:
        say(f"precision.io is '{kind.io}', not one of {', '.join(precision.EXPORT_DTYPES)}")
    q = m.quantization
    if kind.quantized != (q is not None):
        say(f"precision.name is {kind.name}, but the manifest {'lacks' if kind.quantized else 'has'} a quantization record")
    if q is not None:
        for graph, info in q.graphs.items():
            if graph not in m.graphs:
                say(f"quantization.graphs names '{graph}', which is not one of the export's graphs")
            if info.precision != kind.name or not isinstance(info.opset, int) or info.opset < m.opset:
                say(f"quantization.graphs.{graph} is inconsistent (precision {info.precision}, opset {info.opset})")
        if m.ort_graphs:  # the ort backend would run them, unquantized, instead of the quantized graphs
            say("a quantized export lists ort_graphs; nuwa-quantize writes none")
    for field in ("num_layers", "hidden_size", "num_kv_heads", "head_dim", "vocab_size", "max_positions"):
        if getattr(llm, field) < 1:
            say(f"llm.{field} is {getattr(llm, field)}, it must be at least 1")
    if b.num_layers != llm.num_layers:
        say(f"budgets.num_layers is {b.num_layers} but llm.num_layers is {llm.num_layers}")
    if not 1 <= b.stage_two_layer < llm.num_layers:
        say(f"budgets.stage_two_layer is {b.stage_two_layer}, not between 1 and llm.num_layers - 1 = {llm.num_layers - 1}")
    if len(m.grid) != 2 or not all(_is_int(g) and g > 0 for g in m.grid) or m.grid[0] != m.grid[1]:
        say(f"grid is {m.grid}, not a square [rows, columns] of positive ints (the image is a square of preprocessing.size)")
    if m.num_patches != m.grid[0] * m.grid[1]:
        say(f"num_patches is {m.num_patches} but grid {m.grid} has {m.grid[0] * m.grid[1]}")
    if not 1 <= b.stage_two_keep <= b.stage_one_keep <= m.num_patches:
        say(f"budgets need 1 <= stage_two_keep ({b.stage_two_keep}) <= stage_one_keep ({b.stage_one_keep}) <= num_patches ({m.num_patches})")
    if not b.prune and b.stage_one_keep != m.num_patches:
        say(f"budgets.prune is false but stage_one_keep is {b.stage_one_keep}, not all {m.num_patches} patches")
    if b.keep < 1 or not 1 <= b.per_region <= 4 or not _is_number(b.distance) or b.distance <= 0 or not 0 <= b.percentile <= 1:
        say("budgets: keep >= 1, per_region in 1..4, distance > 0 and percentile in [0, 1] are required")
    if not llm.eos_token_ids:
        say("llm.eos_token_ids is empty")
    bad_ids = [i for i in (llm.image_token_id, *llm.eos_token_ids) if not 0 <= i < llm.vocab_size]
    if bad_ids:
        say(f"token id {bad_ids[0]} (llm.image_token_id / eos_token_ids) is outside the vocabulary of llm.vocab_size {llm.vocab_size}")
    p = m.preprocessing
    if set(p) != _PREPROCESSING:
        odd = sorted(set(p) ^ _PREPROCESSING)[0]
        say(f"preprocessing.{odd} is {'unknown' if odd in p else 'missing'}")
    if not _is_int(p["size"]) or p["size"] < 1:
        say(f"preprocessing.size is {p['size']!r}, not a positive int")
    if p["size"] % m.grid[0]:
        say(f"preprocessing.size {p['size']} is not a whole number of patches of grid {m.grid}")
    for key in ("mean", "std"):
        if not isinstance(p[key], list) or len(p[key]) != 3 or not all(_is_number(x) for x in p[key]):
            say(f"preprocessing.{key} is {p[key]!r}, not 3 numbers")
    if not all(x > 0 for x in p["std"]):
        say(f"preprocessing.std {p['std']} must be positive")
    if not _is_int(p["resample"]) or not 0 <= p["resample"] <= 5:
        say(f"preprocessing.resample is {p['resample']!r}, not a PIL resampling filter (0-5)")
    if not _is_number(p["rescale_factor"]) or p["rescale_factor"] <= 0:
        say(f"preprocessing.rescale_factor is {p['rescale_factor']!r}, not a positive number")
    if p["pad"] not in ("square-mean", "none"):
        say(f"preprocessing.pad is {p['pad']!r}, not 'square-mean' or 'none'")
    for name in m.files:
        pure = PurePosixPath(name)
        if pure.is_absolute() or ".." in pure.parts or "\\" in name or not name:
            say(f"files lists '{name}', which is not a path inside the export")
    graphs = set(m.graphs)
    if graphs != set(n.GRAPHS):
        odd = sorted(graphs ^ set(n.GRAPHS))[0]
        say(f"graphs.{odd} is {'unknown' if odd in graphs else 'missing'}")
    if m.ort_graphs and set(m.ort_graphs) != set(n.LLM_GRAPHS):
        odd = sorted(set(m.ort_graphs) ^ set(n.LLM_GRAPHS))[0]
        say(f"ort_graphs.{odd} is {'unknown' if odd in m.ort_graphs else 'missing'}")
    for where, graph, spec in [*(("graphs", g, s) for g, s in m.graphs.items()), *(("ort_graphs", g, s) for g, s in m.ort_graphs.items())]:
        if spec.file not in m.files:
            say(f"{where}.{graph}.file '{spec.file}' is not among the files it hashes")
    if n.EMBEDDINGS not in m.files:
        say(f"{n.EMBEDDINGS} is not among the files it hashes")
    if not any(name.startswith(n.TOKENIZER_DIR + "/") for name in m.files):
        say(f"no {n.TOKENIZER_DIR}/ files among the files it hashes")


def _check_profiles(m: mf.Manifest, io: dict[str, list[mf.TensorSpec]]) -> None:
    if set(m.engine_profiles) != set(n.GRAPHS):
        odd = sorted(set(m.engine_profiles) ^ set(n.GRAPHS))[0]
        _fail(f"manifest.json: engine_profiles.{odd} is {'unknown' if odd in m.engine_profiles else 'missing'}")
    for graph, profiles in m.engine_profiles.items():
        inputs = {t.name: t.shape for t in io[graph]}
        dynamic = {n for n, dims in inputs.items() if any(not _is_int(d) for d in dims)}
        if not profiles:
            _fail(f"manifest.json: engine_profiles.{graph} is empty")
        for i, profile in enumerate(profiles):
            where = f"manifest.json: engine_profiles.{graph}[{i}]"
            if not isinstance(profile, dict):
                _fail(f"{where} should be an object")
            if dynamic - set(profile):
                _fail(f"{where} has no shapes for input {sorted(dynamic - set(profile))[0]}")
            for name, shapes in profile.items():
                if name not in inputs:
                    _fail(f"{where} names {name}, not an input of {m.graphs[graph].file}")
                dims = inputs[name]
                ok = isinstance(shapes, list) and len(shapes) == 3 and all(
                    isinstance(s, list) and len(s) == len(dims) and all(_is_int(x) and x >= 0 for x in s) for s in shapes
                )
                ok = ok and all(
                    lo <= mid <= hi and (not _is_int(d) or lo == d == hi)
                    for lo, mid, hi, d in zip(*shapes, dims)
                )
                if not ok:
                    _fail(f"{where}.{name} is not [min, opt, max] shapes of {_shape(dims)}")
            _check_profile_dims(m, where, profile, inputs)


#: TensorRT takes every dimension as an int32.
INT32_MAX = 2**31 - 1


def _check_profile_dims(m: mf.Manifest, where: str, profile: dict, inputs: dict[str, list]) -> None:
    """The dynamic dimensions of one well-formed profile: within int32 and the range each can take
    (batch and seq at least 1, past at least 0; seq + past within llm.max_positions), and the same
    range for a named dimension wherever it occurs (TensorRT refuses contradictory ones, but only
    when it builds that graph, after the graphs before it were built)."""
    limit = m.llm.max_positions
    lowest = {"past": 0}
    highest = {"seq": (limit, "llm.max_positions"), "past": (limit - 1, "llm.max_positions - 1"), "batch": (m.max_batch, "max_batch")}
    ranges: dict[str, tuple[str, list]] = {}
    for name, shapes in profile.items():
        for axis, dim in enumerate(inputs[name]):
            if _is_int(dim):
                continue
            lo, opt, hi = (s[axis] for s in shapes)
            at = f"{where}.{name} dimension {axis} ({dim})"
            if hi > INT32_MAX:
                _fail(f"{at} has max {hi}, beyond what TensorRT takes (2**31 - 1)")
            if lo < lowest.get(dim, 1):
                _fail(f"{at} has min {lo}; it must be at least {lowest.get(dim, 1)}")
            top, field = highest.get(dim, (None, None))
            if top is not None and hi > top:
                _fail(f"{at} has max {hi}, beyond manifest.json {field} = {top}")
            seen = ranges.setdefault(dim, (name, [lo, opt, hi]))
            if seen[1] != [lo, opt, hi]:
                _fail(f"{at} is {[lo, opt, hi]} but {dim} of {seen[0]} is {seen[1]}: one dimension, two ranges")
    if "seq" in ranges and "past" in ranges:
        seq, past = ranges["seq"][1][2], ranges["past"][1][2]
        if seq + past > limit:
            _fail(f"{where}: max seq {seq} + max past {past} is beyond manifest.json llm.max_positions = {limit}")


# --- the embedding table ----------------------------------------------------------------------


def _check_embeddings(directory: Path, m: mf.Manifest) -> None:
    """The embedding table's safetensors header, read (and fully validated) by safetensors itself."""
    from safetensors import SafetensorError, safe_open

    path = directory / n.EMBEDDINGS
    llm = m.llm
    want_dtype, _ = precision.SAFETENSORS[m.precision.io]
    dtype = shape = why = None
    try:
        with safe_open(str(path), framework="numpy") as st:
            if "embed_tokens" in st.keys():
                t = st.get_slice("embed_tokens")
                dtype, shape = t.get_dtype(), list(t.get_shape())
    except OSError as e:
        raise NuwaError(f"cannot read {path} ({e.strerror or e})") from None
    except (SafetensorError, ValueError) as e:  # a header that is not safetensors, or data it does not cover
        why = (str(e).splitlines() or [type(e).__name__])[0][:160]
    if why is not None:
        kind = "is truncated or corrupt" if "not fully covered" in why else "is not a safetensors file"
        _fail(f"{path} {kind} ({why})")
    if dtype is None:
        _fail(f"{path} has no embed_tokens tensor")
    if dtype != want_dtype:
        _fail(f"{path} holds embed_tokens as {dtype}, but manifest.json precision.io is {m.precision.io} ({want_dtype})")
    if shape != [llm.vocab_size, llm.hidden_size]:
        _fail(f"{path} holds embed_tokens {shape}, but manifest.json llm.vocab_size and llm.hidden_size say [{llm.vocab_size}, {llm.hidden_size}]")


# --- all of it --------------------------------------------------------------------------------


def check(directory: str | Path, m: mf.Manifest) -> None:
    """Refuse, in one line, an export whose files and manifest values disagree (module doc)."""
    check_utf8_path(directory, "export directory")  # ONNX Runtime, TensorRT and the tokenizer take UTF-8 paths only
    directory = Path(directory)
    _check_values(m)
    contract = _contract(m)
    io = {}
    for where, graph, spec, want in [*(("graphs", g, m.graphs[g], contract.graphs[g]) for g in n.GRAPHS),
                                     *(("ort_graphs", g, m.ort_graphs[g], contract.ort_graphs[g]) for g in m.ort_graphs)]:
        path = directory / spec.file
        inputs, outputs, opsets = graph_io(path)
        for side, got, recorded, w in (("input", inputs, spec.inputs, want.inputs), ("output", outputs, spec.outputs, want.outputs)):
            _compare(m, graph, spec.file, side, got, w, where)
            if [(t.name, t.dtype, list(t.shape)) for t in got] != [(t.name, t.dtype, list(t.shape)) for t in recorded]:
                diff = next((r for r, g in zip(recorded, got) if (r.name, r.dtype, list(r.shape)) != (g.name, g.dtype, list(g.shape))), None)
                name = diff.name if diff else f"{len(recorded)} vs {len(got)} {side}s"
                _fail(f"{spec.file} does not match manifest.json {where}.{graph}.{side}s ({name})")
        want_opset = mf.graph_opset(m, graph) if where == "graphs" else m.opset
        if opsets.get("", opsets.get("ai.onnx")) != want_opset:
            _fail(f"{spec.file} uses ONNX opset {opsets.get('', '(none)')}, but manifest.json says {want_opset}")
        if where == "graphs":
            io[graph] = inputs
    _check_profiles(m, io)
    _check_swarm(directory, m)
    _check_embeddings(directory, m)
    _check_json_files(directory, m)


def _check_json_files(directory: Path, m: mf.Manifest) -> None:
    """Every JSON file (tokenizer, processor config) parses; ``tokenizer.json`` as a tokenizer."""
    for name in sorted(m.files):
        if not name.endswith(".json"):
            continue
        path = directory / name
        try:
            text = path.read_text()
            json.loads(text)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            _fail(f"{path} is not valid JSON ({type(e).__name__})")
        if PurePosixPath(name).name == "tokenizer.json":
            try:
                from tokenizers import Tokenizer
            except ImportError:
                continue
            try:
                Tokenizer.from_str(text)
            except Exception as e:  # the tokenizers library's own parse errors
                _fail(f"{path} is not a tokenizer ({' '.join(str(e).split())[:200]})")
