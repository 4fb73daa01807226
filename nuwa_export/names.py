"""Every name of an export directory: its files, graphs, tensors and folders (spelled only here).

An export directory holds::

    manifest.json              what was exported (nuwa_export.manifest)
    vision.onnx                pixels → tower → stage one → projector
    vision.plugin.onnx         the same, the SwarmAggregate node left to the TensorRT plugin
    llm_prefix.onnx            decoder layers [0, L)
    llm_suffix.onnx            decoder layers [L, N), norm, lm_head
    llm_prefix.ort.onnx        the two LLM graphs for ONNX Runtime (fused attention, KV in place)
    llm_suffix.ort.onnx
    embeddings.safetensors     the token embedding table
    tokenizer/                 the tokenizer, as ``save_pretrained`` writes it
    preprocessor_config.json   copied from the checkpoint, when it has them
    chat_template.json / .jinja
    trtexec.sh                 the trtexec commands equivalent to each graph
    engines/<graph>.plan       TensorRT engines (nuwa-build), each with engines/<graph>.json
    profiles/                  trtexec per-layer profiles (nuwa-profile --trtexec --run)
"""

from __future__ import annotations

# ---- files and folders ----------------------------------------------------------------------
MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.safetensors"
TOKENIZER_DIR = "tokenizer"
TRTEXEC = "trtexec.sh"
ENGINES_DIR = "engines"
PROFILES_DIR = "profiles"
#: TensorRT's timing cache, kept in ``engines/`` between builds.
TIMING_CACHE = "timing.cache"
#: A checkpoint's image preprocessing (transformers' processor config).
PREPROCESSOR_CONFIG = "preprocessor_config.json"
#: Checkpoint files an export carries over when the checkpoint has them.
CHECKPOINT_ASSETS = (PREPROCESSOR_CONFIG, "chat_template.json", "chat_template.jinja")
#: The example picture a demo checkpoint carries.
EXAMPLE_PICTURE = "example.png"

# ---- graphs ---------------------------------------------------------------------------------
VISION, VISION_PLUGIN = "vision", "vision_plugin"
LLM_PREFIX, LLM_SUFFIX = "llm_prefix", "llm_suffix"
#: The graphs every export has (manifest ``graphs``), in the order they are built.
GRAPHS = (VISION, VISION_PLUGIN, LLM_PREFIX, LLM_SUFFIX)
VISION_GRAPHS = (VISION, VISION_PLUGIN)
LLM_GRAPHS = (LLM_PREFIX, LLM_SUFFIX)
#: Graph → its file (the standard graphs, which TensorRT builds).
FILES = {VISION: "vision.onnx", VISION_PLUGIN: "vision.plugin.onnx", LLM_PREFIX: "llm_prefix.onnx", LLM_SUFFIX: "llm_suffix.onnx"}
#: The ONNX Runtime LLM graphs (manifest ``ort_graphs``; optional): graph → file.
ORT_FILES = {LLM_PREFIX: "llm_prefix.ort.onnx", LLM_SUFFIX: "llm_suffix.ort.onnx"}


def engine_file(graph: str) -> str:
    """``engines/``'s file of ``graph``'s TensorRT engine."""
    return f"{graph}.plan"


def sidecar_file(graph: str) -> str:
    """``engines/``'s file of ``graph``'s engine sidecar (what it was built with)."""
    return f"{graph}.json"


# ---- graph tensors --------------------------------------------------------------------------
PIXEL_VALUES = "pixel_values"
IMAGE_TOKENS, PATCH_INDICES = "image_tokens", "patch_indices"
INPUTS_EMBEDS, HIDDEN_STATES = "inputs_embeds", "hidden_states"
POSITION_IDS = "position_ids"
VISION_START = "vision_start"
PAD_LENGTHS = "pad_lengths"
ATTENTION_MASK = "attention_mask"
STAGE_TWO_SCORES = "stage_two_scores"
LOGITS = "logits"
PAST, PRESENT = "past", "present"


def kv_names(kind: str, layers) -> list[str]:
    """``past`` / ``present`` key and value tensor names for the global decoder layers ``layers``:
    ``past_key_0, past_value_0, past_key_1, ...``."""
    return [f"{kind}_{what}_{i}" for i in layers for what in ("key", "value")]


def present_of(past_name: str) -> str:
    """``past_key_3`` → ``present_key_3``."""
    return PRESENT + past_name.removeprefix(PAST)


def past_of(present_name: str) -> str:
    """``present_key_3`` → ``past_key_3``."""
    return PAST + present_name.removeprefix(PRESENT)


def is_kv(name: str) -> bool:
    return name.startswith((PAST + "_", PRESENT + "_"))


# ---- dynamic axes of the graphs (the ONNX dim_params) -----------------------------------------
BATCH, SEQ, PAST_AXIS, CAPACITY, TOTAL = "batch", "seq", "past", "capacity", "total"

# ---- ONNX metadata keys the exporter writes ---------------------------------------------------
#: Per node: this machine's source paths and line numbers (dropped, so exports carry no local paths).
STACK_TRACE_KEY = "pkg.torch.onnx.stack_trace"
#: Per node: the module scope it was traced in (``nuwa-verify --layerwise`` finds each layer by it).
SCOPE_KEY = "pkg.torch.onnx.name_scopes"
