"""Constants shared by the exporter, the manifest, the runtime and the TensorRT plugin."""

#: ONNX opset of every exported graph (the SwarmAggregate function body uses the same).
OPSET = 18

#: The custom node that carries the swarm aggregation. The C++ plugin (engines/) registers a
#: creator with the same name, version and namespace; tests compare the two.
OP_DOMAIN = "nuwa"
OP_NAME = "SwarmAggregate"
OP_VERSION = 1
OP_ATTRIBUTES = ("grid", "distance", "percentile", "self_weight")  # ints [H, W], float, float, int (optional, default 1)

#: ONNX Runtime's contrib op the ONNX Runtime LLM graphs use for attention (nuwa_export.export.fused).
GQA_DOMAIN, GQA_NAME, GQA_VERSION = "com.microsoft", "GroupQueryAttention", 1

#: Version of manifest.json this code writes and reads. 2: batched LLM graphs (per-row
#: ``vision_start``, ``pad_lengths``) and ``max_batch``; exports of version 1 must be re-exported.
#: 3: ``precision`` (weights, compute, KV, I/O) instead of ``llm.dtype`` and
#: ``quantization.precision``; version 2 manifests are read and converted.
MANIFEST_SCHEMA_VERSION = 3

#: ``--backend`` choices: the engine backends of an export (``runtime.runner.make_backend``), and
#: the PyTorch reference.
BACKENDS = ("ort", "trt", "torch")

#: Requests an export serves side by side unless ``nuwa-export --max-batch`` says otherwise.
DEFAULT_MAX_BATCH = 8
