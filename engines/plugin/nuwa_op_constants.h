// Identity of the nuwa::SwarmAggregate ONNX node, as the C++ side sees it.
//
// These values mirror nuwa_export/constants.py (OP_NAME, OP_DOMAIN, OP_VERSION, OP_ATTRIBUTES);
// tests/engines/test_plugin_constants.py parses this header and fails if the two disagree.
// Keep every value a plain string/integer literal on one line so that the test can read it.
// The attributes are grid, distance, percentile (required) and self_weight (optional, default 1:
// exports made before it existed lack it and mean 1, the LLaVA rule; Qwen2.5-VL writes 0).
#pragma once

namespace nuwa
{

//! ONNX op_type of the node; TensorRT's ONNX parser looks the plugin creator up by this name.
constexpr char const* kOP_NAME = "SwarmAggregate";
//! ONNX domain of the node (the parser does not use it for the first registry lookup; see
//! NuwaSwarmAggregatePlugin.h for the matching rules).
constexpr char const* kOP_DOMAIN = "nuwa";
//! ONNX opset version of the domain; the plugin version string is its decimal form.
constexpr int kOP_VERSION = 1;
//! Plugin version string: the ONNX parser uses the node attribute `plugin_version`, default "1".
constexpr char const* kPLUGIN_VERSION = "1";
//! Plugin namespace: the ONNX parser uses the node attribute `plugin_namespace`, default "".
constexpr char const* kPLUGIN_NAMESPACE = "";

//! Attribute names, in the order of OP_ATTRIBUTES.
constexpr char const* kATTR_GRID = "grid";               // ints [H, W], H*W = N (any sides)
constexpr char const* kATTR_DISTANCE = "distance";       // float, reach is sqrt(distance) patches
constexpr char const* kATTR_PERCENTILE = "percentile";   // float in [0, 1], pillar quantile
constexpr char const* kATTR_SELF_WEIGHT = "self_weight"; // int 0/1, optional (default 1): self entry = 1

} // namespace nuwa
