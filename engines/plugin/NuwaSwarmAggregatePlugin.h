// TensorRT IPluginV3 plugin for the nuwa::SwarmAggregate ONNX node (vision.plugin.onnx).
//
// How the ONNX node finds this plugin
// -----------------------------------
// TensorRT's ONNX parser (onnx-tensorrt, FallbackPluginImporter) imports a node it has no
// built-in importer for by looking up a plugin creator with
//     name      = node.op_type                                  -> "SwarmAggregate"
//     version   = node attribute "plugin_version", default "1"  -> "1"
//     namespace = node attribute "plugin_namespace", default "" -> ""
// The node's ONNX domain ("nuwa") is not part of that first lookup; parsers from 10.x onwards
// retry with namespace = node.domain only when the first lookup fails. Our exporter writes no
// plugin_version/plugin_namespace attributes, so the creator registers as
// ("SwarmAggregate", "1", ""), which matches in every TensorRT 10/11 parser. Registering under the
// "nuwa" namespace instead would only match the newer parsers' fallback. The version string is
// OP_VERSION: if OP_VERSION changes, the exporter must add plugin_version to the node.
//
// The parser hands the creator only the fields listed by getFieldNames(): "grid" (ONNX ints,
// delivered as kINT32 by the parsers we read; kINT64 is accepted too), "distance" and
// "percentile" (ONNX float -> kFLOAT32; kFLOAT64 is accepted too), and "self_weight" (ONNX int,
// kINT32; kINT64, kINT8 and kINT16 are accepted too). self_weight is optional: exports made
// before it existed lack it, and its absence means 1 (the LLaVA rule: each row's self entry is
// set to 1 after normalising); Qwen2.5-VL exports write 0 (the self entry keeps its value).
//
// vision.onnx keeps the ONNX function body on the node: parsers import it as a local function
// unless the parser flag kENABLE_PLUGIN_OVERRIDE is set. vision.plugin.onnx has no body, so the
// node always resolves to this plugin.
#pragma once

#include "NvInferRuntime.h"

#include <string>
#include <vector>

namespace nuwa
{

//! The plugin: four inputs (features, sim, indices, anchor_scores), one output (tokens).
class SwarmAggregatePlugin : public nvinfer1::IPluginV3,
                             public nvinfer1::IPluginV3OneCore,
                             public nvinfer1::IPluginV3OneBuild,
                             public nvinfer1::IPluginV3OneRuntime
{
public:
    SwarmAggregatePlugin(int32_t gridH, int32_t gridW, float distance, float percentile, int32_t selfWeight);
    ~SwarmAggregatePlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    //! Check ranks and the N = H*W, K, batch agreements between the four inputs (static dims only).
    bool checkShapes(nvinfer1::Dims const* inputDims, int32_t nbInputs) const noexcept;

    int32_t mGrid[2];
    float mDistance;
    float mPercentile;
    int32_t mSelfWeight; // 0 or 1

    std::vector<nvinfer1::PluginField> mFieldsToSerialize;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

//! Creator registered with TensorRT (see the matching rules above).
class SwarmAggregatePluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    SwarmAggregatePluginCreator();
    ~SwarmAggregatePluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

} // namespace nuwa
