"""The graph contract of an export: each graph's inputs and outputs, their dtypes, their static
sizes and named dynamic axes, which inputs carry one value per batch row, and which outputs are
written into an input's buffer. As optimum's per-model ONNX configs do, one description drives
every side:

* tracing (``nuwa_export.export``): input and output names, and the dynamic axes;
* the runtime's buffers (:meth:`Graph.outputs_for`): the shape and dtype of every output for
  given inputs, checked against the contract (one size per axis, the batch limit);
* the TensorRT profiles (:meth:`Graph.profile`), and through them ``trtexec.sh`` and ``nuwa-build``;
* the consistency check of an export directory (``nuwa_export.runtime.consistency``), which holds
  every graph file to it.

A model family builds its contract from the export's numbers (:class:`Numbers`);
:func:`standard` is the contract of the graphs LLaVA-1.5 and Qwen2.5-VL share, with the
family's position rank as a parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nuwa_export import names as n
from nuwa_export.errors import NuwaError

#: The range each dynamic axis is traced with (``torch.export.Dim`` min and max).
TRACE_RANGES = {n.BATCH: (1, 64), n.SEQ: (1, 8192), n.PAST_AXIS: (0, 8192), n.CAPACITY: (1, 16384), n.TOTAL: (1, 16384)}


@dataclass(frozen=True)
class Dim:
    """One dimension: a static ``size`` (and the manifest ``field`` it comes from, for messages),
    or a dynamic ``axis``; an output's axis may be a sum of input axes (``"past+seq"``)."""

    size: int | None = None
    axis: str | None = None
    field: str | None = None

    @property
    def dynamic(self) -> bool:
        return self.size is None

    def resolve(self, sizes: dict[str, int]) -> int:
        if self.size is not None:
            return self.size
        return sum(sizes[a] for a in self.axis.split("+"))


def static(size: int, field: str | None = None) -> Dim:
    return Dim(size=int(size), field=field)


def axis(name: str) -> Dim:
    return Dim(axis=name)


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # a name of nuwa_export.precision
    dims: tuple[Dim, ...]
    dtype_field: str | None = None  # the manifest field the dtype comes from (messages)

    @property
    def dynamic_axes(self) -> dict[int, str]:
        """``{position: axis}`` of the dynamic dimensions (input axes only: no sums)."""
        return {i: d.axis for i, d in enumerate(self.dims) if d.dynamic}

    def shape(self, sizes: dict[str, int]) -> tuple[int, ...]:
        return tuple(d.resolve(sizes) for d in self.dims)


@dataclass(frozen=True)
class Limit:
    """``axis(lo) <= axis(hi)`` for the sizes of one call; ``message`` formats with the sizes and
    ``graph``."""

    lo: str
    hi: str
    message: str


@dataclass(frozen=True)
class Graph:
    name: str  # names.VISION, names.LLM_PREFIX, ...
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    #: output → the input whose buffer it is written into (KV updated in place)
    written_into: dict[str, str] = field(default_factory=dict)
    limits: tuple[Limit, ...] = ()
    max_batch: int | None = None

    def input(self, name: str) -> Tensor:
        return next(t for t in self.inputs if t.name == name)

    @property
    def per_row(self) -> list[str]:
        """The inputs holding one value per batch row (``[batch]``): per-row lengths and offsets."""
        return [t.name for t in self.inputs if len(t.dims) == 1 and t.dims[0].axis == n.BATCH]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def sizes(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
        """Each dynamic axis's size in a call with inputs of ``shapes``; refuses (one line) inputs
        outside the contract: a wrong rank or static size, one axis of two sizes, a batch beyond
        the export's ``max_batch``, a broken limit."""
        sizes: dict[str, int] = {}
        seen: dict[str, str] = {}
        for t in self.inputs:
            shape = tuple(shapes[t.name])
            if len(shape) != len(t.dims):
                raise NuwaError(f"{self.name}: {t.name} has shape {list(shape)}, the export's contract has rank {len(t.dims)}")
            for d, got in zip(t.dims, shape):
                if not d.dynamic:
                    if got != d.size:
                        raise NuwaError(f"{self.name}: {t.name} has shape {list(shape)}, the export's contract {self._shown(t)}")
                    continue
                if d.axis in sizes and sizes[d.axis] != got:
                    what = "past KV tensors of different lengths" if d.axis == n.PAST_AXIS else f"{d.axis} of {seen[d.axis]} and {t.name} differ"
                    raise NuwaError(f"{self.name}: {what} {sorted({sizes[d.axis], got})}")
                sizes[d.axis] = got
                seen.setdefault(d.axis, t.name)
        batch = sizes.get(n.BATCH)
        if self.max_batch is not None and batch is not None and batch > self.max_batch:
            raise NuwaError(f"a batch of {batch} is beyond this export's max_batch {self.max_batch}; re-export with --max-batch {batch}")
        for limit in self.limits:
            if sizes[limit.lo] > sizes[limit.hi]:
                raise NuwaError(limit.message.format(graph=self.name, **sizes))
        return sizes

    def outputs_for(self, shapes: dict[str, tuple[int, ...]]) -> list[tuple[Tensor, tuple[int, ...]]]:
        """``(output, shape)`` of every output, in graph order, for inputs of ``shapes``."""
        sizes = self.sizes(shapes)
        return [(t, t.shape(sizes)) for t in self.outputs]

    def profile(self, ranges: dict[str, tuple[int, int, int]]) -> dict[str, list[list[int]]]:
        """One TensorRT optimisation profile: ``{input: [min, opt, max] shapes}`` for every input
        with a dynamic axis, each axis at its ``(min, opt, max)`` of ``ranges``."""
        out = {}
        for t in self.inputs:
            if not any(d.dynamic for d in t.dims):
                continue
            out[t.name] = [[d.size if not d.dynamic else ranges[d.axis][k] for d in t.dims] for k in range(3)]
        return out

    @staticmethod
    def _shown(t: Tensor) -> str:
        return "[" + ", ".join(d.axis if d.dynamic else str(d.size) for d in t.dims) + "]"


@dataclass(frozen=True)
class Contract:
    """Every graph of one export: the standard graphs (``graphs``, which TensorRT builds) and the
    ONNX Runtime LLM graphs (``ort_graphs``: fused attention over KV buffers updated in place)."""

    graphs: dict[str, Graph]
    ort_graphs: dict[str, Graph]

    def graph(self, name: str, in_place: bool = False) -> Graph:
        return (self.ort_graphs if in_place else self.graphs)[name]


@dataclass(frozen=True)
class Numbers:
    """What an export's contract is made of (read from its manifest, or from the model at export)."""

    image_size: int
    stage_one_keep: int
    hidden_size: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    num_layers: int
    stage_two_layer: int
    io: str  # the LLM graphs' float type (precision.io)
    kv: str  # the KV cache's (precision.kv)
    max_batch: int | None = None

    @classmethod
    def of_manifest(cls, m) -> Numbers:
        b, llm = m.budgets, m.llm
        return cls(m.preprocessing["size"], b.stage_one_keep, llm.hidden_size, llm.num_kv_heads, llm.head_dim, llm.vocab_size,
                   llm.num_layers, b.stage_two_layer, m.precision.io, m.precision.kv, m.max_batch)


def _kv(kind: str, layers, x: Numbers, length: str) -> list[Tensor]:
    dims = (axis(n.BATCH), static(x.num_kv_heads, "llm.num_kv_heads"), axis(length), static(x.head_dim, "llm.head_dim"))
    return [Tensor(name, x.kv, dims, "precision.kv") for name in n.kv_names(kind, layers)]


def standard(x: Numbers, position_rows: int = 1) -> Contract:
    """The contract of the graphs LLaVA-1.5 and Qwen2.5-VL share (docs/architecture.md, the
    export's graphs); ``position_rows`` 3 is M-RoPE's ``position_ids [3, batch, seq]``."""
    batch, seq = axis(n.BATCH), axis(n.SEQ)
    s = static(x.image_size, "preprocessing.size")
    k1 = static(x.stage_one_keep, "budgets.stage_one_keep")
    d = static(x.hidden_size, "llm.hidden_size")
    io = lambda name, dims: Tensor(name, x.io, dims, "precision.io")  # noqa: E731
    positions = Tensor(n.POSITION_IDS, "int64", (batch, seq) if position_rows == 1 else (static(position_rows), batch, seq))
    row_vector = lambda name: Tensor(name, "int64", (batch,))  # noqa: E731
    vision = Graph(
        n.VISION,
        (Tensor(n.PIXEL_VALUES, "float32", (batch, static(3), s, s)),),
        (Tensor(n.IMAGE_TOKENS, "float32", (batch, k1, d)), Tensor(n.PATCH_INDICES, "int64", (batch, k1))),
    )
    prefix_layers, suffix_layers = range(x.stage_two_layer), range(x.stage_two_layer, x.num_layers)
    scores = Tensor(n.STAGE_TWO_SCORES, "float32", (batch, k1))
    logits = Tensor(n.LOGITS, "float32", (batch, static(x.vocab_size, "llm.vocab_size")))

    def prefix(pad: Tensor, past: str, present: str) -> tuple[tuple, tuple]:
        return ((io(n.INPUTS_EMBEDS, (batch, seq, d)), positions, row_vector(n.VISION_START), pad, *_kv(n.PAST, prefix_layers, x, past)),
                (io(n.HIDDEN_STATES, (batch, seq, d)), *_kv(n.PRESENT, prefix_layers, x, present), scores))

    def suffix(pad: Tensor, past: str, present: str) -> tuple[tuple, tuple]:
        return ((io(n.HIDDEN_STATES, (batch, seq, d)), positions, pad, *_kv(n.PAST, suffix_layers, x, past)),
                (logits, *_kv(n.PRESENT, suffix_layers, x, present)))

    graphs = {g.name: g for g in (vision, Graph(n.VISION_PLUGIN, vision.inputs, vision.outputs))}
    ort = {}
    pad_lengths = row_vector(n.PAD_LENGTHS)
    mask = Tensor(n.ATTENTION_MASK, "int64", (batch, axis(n.TOTAL)))
    in_place = "{graph}: an attention_mask of [{batch}, {total}] over KV buffers of {capacity} entries for {seq} new tokens"
    buffers = Limit(n.SEQ, n.TOTAL, in_place), Limit(n.TOTAL, n.CAPACITY, in_place)
    for name, build in ((n.LLM_PREFIX, prefix), (n.LLM_SUFFIX, suffix)):
        inputs, outputs = build(pad_lengths, n.PAST_AXIS, f"{n.PAST_AXIS}+{n.SEQ}")
        graphs[name] = Graph(name, inputs, outputs, max_batch=x.max_batch)
        inputs, outputs = build(mask, n.CAPACITY, n.CAPACITY)
        ort[name] = Graph(name, inputs, outputs, {t.name: n.past_of(t.name) for t in outputs if n.is_kv(t.name)}, buffers, x.max_batch)
    return Contract(graphs, ort)
