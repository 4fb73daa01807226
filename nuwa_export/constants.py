"""Constants shared by the exporter, the manifest, the runtime and the TensorRT plugin."""

#: ONNX opset of every exported graph (the SwarmAggregate function body uses the same).
OPSET = 18

#: The custom node that carries the swarm aggregation. The C++ plugin (engines/) registers a
#: creator with the same name, version and namespace; tests compare the two.
OP_DOMAIN = "nuwa"
OP_NAME = "SwarmAggregate"
OP_VERSION = 1
OP_ATTRIBUTES = ("grid", "distance", "percentile")  # ints [H, W], float, float

#: Version of manifest.json this code writes and reads.
MANIFEST_SCHEMA_VERSION = 1
