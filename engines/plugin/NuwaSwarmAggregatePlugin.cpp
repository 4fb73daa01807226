// TensorRT IPluginV3 plugin for nuwa::SwarmAggregate; see NuwaSwarmAggregatePlugin.h.

#include "NuwaSwarmAggregatePlugin.h"

#include "nuwa_op_constants.h"
#include "swarm_aggregate_kernel.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <string>

using nvinfer1::DataType;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::IPluginCapability;
using nvinfer1::IPluginV3;
using nvinfer1::PluginCapabilityType;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginFieldType;
using nvinfer1::PluginTensorDesc;

namespace nuwa
{
namespace
{

constexpr int32_t kNB_INPUTS = 4; // features, sim, indices, anchor_scores
constexpr int32_t kNB_OUTPUTS = 1; // tokens
constexpr int32_t kFEATURES = 0;
constexpr int32_t kSIM = 1;
constexpr int32_t kINDICES = 2;
constexpr int32_t kSCORES = 3;

#if defined(NUWA_PLUGIN_LIBRARY_ENTRY_POINTS)
nvinfer1::ILoggerFinder* gLoggerFinder{nullptr};
#endif

//! Log through TensorRT's logger (the one the application gave the builder/runtime).
void logMessage(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept
{
    try
    {
        nvinfer1::ILogger* logger = nullptr;
#if defined(NUWA_PLUGIN_LIBRARY_ENTRY_POINTS)
        logger = gLoggerFinder != nullptr ? gLoggerFinder->findLogger() : nullptr;
#else
        logger = getLogger();
#endif
        if (logger != nullptr)
        {
            std::string const text = std::string("[nuwa::") + kOP_NAME + "] " + message;
            logger->log(severity, text.c_str());
        }
    }
    catch (...)
    {
    }
}

void logError(std::string const& message) noexcept
{
    logMessage(nvinfer1::ILogger::Severity::kERROR, message);
}

bool isFloatType(DataType t)
{
    return t == DataType::kFLOAT || t == DataType::kHALF;
}

//! Read one integer array field (ONNX ints reach plugins as kINT32 or kINT64 depending on the parser).
bool readInts(PluginField const& f, int64_t* values, int32_t count)
{
    if (f.data == nullptr || f.length != count)
    {
        return false;
    }
    for (int32_t i = 0; i < count; ++i)
    {
        if (f.type == PluginFieldType::kINT32)
        {
            values[i] = static_cast<int32_t const*>(f.data)[i];
        }
        else if (f.type == PluginFieldType::kINT64)
        {
            values[i] = static_cast<int64_t const*>(f.data)[i];
        }
        else
        {
            return false;
        }
    }
    return true;
}

//! Read one scalar integer field (ONNX int: kINT32 from the ONNX parser; kINT64, kINT8 and kINT16
//! accepted as well).
bool readInt(PluginField const& f, int64_t& value)
{
    if (f.data == nullptr || f.length != 1)
    {
        return false;
    }
    switch (f.type)
    {
    case PluginFieldType::kINT32: value = *static_cast<int32_t const*>(f.data); return true;
    case PluginFieldType::kINT64: value = *static_cast<int64_t const*>(f.data); return true;
    case PluginFieldType::kINT8: value = *static_cast<int8_t const*>(f.data); return true;
    case PluginFieldType::kINT16: value = *static_cast<int16_t const*>(f.data); return true;
    default: return false;
    }
}

//! Read one scalar float field (kFLOAT32 from the ONNX parser; kFLOAT64 accepted for API users).
bool readFloat(PluginField const& f, float& value)
{
    if (f.data == nullptr || f.length != 1)
    {
        return false;
    }
    if (f.type == PluginFieldType::kFLOAT32)
    {
        value = *static_cast<float const*>(f.data);
        return true;
    }
    if (f.type == PluginFieldType::kFLOAT64)
    {
        value = static_cast<float>(*static_cast<double const*>(f.data));
        return true;
    }
    return false;
}

bool known(int64_t d)
{
    return d >= 0;
}

} // namespace

// ---- plugin -----------------------------------------------------------------------------------

SwarmAggregatePlugin::SwarmAggregatePlugin(
    int32_t gridH, int32_t gridW, float distance, float percentile, int32_t selfWeight)
    : mGrid{gridH, gridW}
    , mDistance(distance)
    , mPercentile(percentile)
    , mSelfWeight(selfWeight)
{
}

IPluginCapability* SwarmAggregatePlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    case PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    }
    return nullptr;
}

IPluginV3* SwarmAggregatePlugin::clone() noexcept
{
    try
    {
        return new SwarmAggregatePlugin(mGrid[0], mGrid[1], mDistance, mPercentile, mSelfWeight);
    }
    catch (std::exception const& e)
    {
        logError(std::string("clone failed: ") + e.what());
    }
    return nullptr;
}

char const* SwarmAggregatePlugin::getPluginName() const noexcept
{
    return kOP_NAME;
}

char const* SwarmAggregatePlugin::getPluginVersion() const noexcept
{
    return kPLUGIN_VERSION;
}

char const* SwarmAggregatePlugin::getPluginNamespace() const noexcept
{
    return kPLUGIN_NAMESPACE;
}

int32_t SwarmAggregatePlugin::getNbOutputs() const noexcept
{
    return kNB_OUTPUTS;
}

int32_t SwarmAggregatePlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (outputTypes == nullptr || inputTypes == nullptr || nbOutputs != kNB_OUTPUTS || nbInputs != kNB_INPUTS)
    {
        logError("expects 4 inputs and 1 output");
        return -1;
    }
    outputTypes[0] = inputTypes[kFEATURES]; // tokens have the type of features
    return 0;
}

int32_t SwarmAggregatePlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* /* shapeInputs */, int32_t /* nbShapeInputs */, DimsExprs* outputs, int32_t nbOutputs,
    nvinfer1::IExprBuilder& /* exprBuilder */) noexcept
{
    if (inputs == nullptr || outputs == nullptr || nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS)
    {
        logError("expects 4 inputs and 1 output");
        return -1;
    }
    if (inputs[kFEATURES].nbDims != 3 || inputs[kINDICES].nbDims != 2)
    {
        logError("features must be [B, N, D] and indices [B, K]");
        return -1;
    }
    // tokens [B, K, D]: batch and width from features, K from indices.
    outputs[0].nbDims = 3;
    outputs[0].d[0] = inputs[kFEATURES].d[0];
    outputs[0].d[1] = inputs[kINDICES].d[1];
    outputs[0].d[2] = inputs[kFEATURES].d[2];
    return 0;
}

bool SwarmAggregatePlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (inOut == nullptr || nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS || pos < 0
        || pos >= kNB_INPUTS + kNB_OUTPUTS)
    {
        return false;
    }
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != nvinfer1::TensorFormat::kLINEAR)
    {
        return false;
    }
    switch (pos)
    {
    case kFEATURES: return isFloatType(desc.type);
    // sim, anchor_scores and tokens share the type of features (the ONNX schema's type T).
    case kSIM:
    case kSCORES:
    case kNB_INPUTS: return desc.type == inOut[kFEATURES].desc.type;
    // The ONNX graph carries int64 indices; int32 is accepted too so TensorRT may choose either.
    case kINDICES: return desc.type == DataType::kINT64 || desc.type == DataType::kINT32;
    default: return false;
    }
}

bool SwarmAggregatePlugin::checkShapes(nvinfer1::Dims const* dims, int32_t nbInputs) const noexcept
{
    if (nbInputs != kNB_INPUTS)
    {
        logError("expects 4 inputs");
        return false;
    }
    nvinfer1::Dims const& f = dims[kFEATURES];
    nvinfer1::Dims const& u = dims[kSIM];
    nvinfer1::Dims const& idx = dims[kINDICES];
    nvinfer1::Dims const& s = dims[kSCORES];
    if (f.nbDims != 3 || u.nbDims != 3 || idx.nbDims != 2 || s.nbDims != 2)
    {
        logError("expected features [B, N, D], sim [B, N, Ds], indices [B, K], anchor_scores [B, K]");
        return false;
    }
    auto agree = [](int64_t a, int64_t b) { return !known(a) || !known(b) || a == b; };
    bool const ok = agree(f.d[0], u.d[0]) && agree(f.d[0], idx.d[0]) && agree(f.d[0], s.d[0])
        && agree(f.d[1], u.d[1]) && agree(idx.d[1], s.d[1])
        && agree(f.d[1], static_cast<int64_t>(mGrid[0]) * mGrid[1]);
    if (!ok)
    {
        logError("inputs disagree on B, N or K, or N != grid H*W (" + std::to_string(mGrid[0]) + "x"
            + std::to_string(mGrid[1]) + ")");
    }
    return ok;
}

int32_t SwarmAggregatePlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (in == nullptr || out == nullptr || nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS)
    {
        logError("expects 4 inputs and 1 output");
        return -1;
    }
    nvinfer1::Dims dims[kNB_INPUTS];
    for (int32_t i = 0; i < kNB_INPUTS; ++i)
    {
        dims[i] = in[i].desc.dims; // -1 where a dimension is dynamic
    }
    return checkShapes(dims, nbInputs) ? 0 : -1;
}

size_t SwarmAggregatePlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    DynamicPluginTensorDesc const* /* outputs */, int32_t /* nbOutputs */) const noexcept
{
    if (inputs == nullptr || nbInputs != kNB_INPUTS)
    {
        return 0;
    }
    // One float threshold per image, for the largest batch of the optimisation profile.
    return swarmAggregateWorkspaceSize(static_cast<int32_t>(inputs[kFEATURES].max.d[0]));
}

int32_t SwarmAggregatePlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (in == nullptr || out == nullptr || nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS)
    {
        logError("expects 4 inputs and 1 output");
        return -1;
    }
    nvinfer1::Dims dims[kNB_INPUTS];
    for (int32_t i = 0; i < kNB_INPUTS; ++i)
    {
        dims[i] = in[i].dims;
    }
    return checkShapes(dims, nbInputs) ? 0 : -1;
}

int32_t SwarmAggregatePlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /* outputDesc */,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    if (inputDesc == nullptr || inputs == nullptr || outputs == nullptr)
    {
        logError("enqueue called without tensors");
        return -1;
    }
    nvinfer1::Dims const& f = inputDesc[kFEATURES].dims;
    nvinfer1::Dims const& u = inputDesc[kSIM].dims;
    nvinfer1::Dims const& idx = inputDesc[kINDICES].dims;
    if (f.d[0] == 0 || f.d[2] == 0 || idx.d[1] == 0)
    {
        return 0; // empty output: nothing to compute
    }
    SwarmAggregateParams const params{static_cast<int32_t>(f.d[0]), static_cast<int32_t>(f.d[1]),
        static_cast<int32_t>(f.d[2]), static_cast<int32_t>(u.d[2]), static_cast<int32_t>(idx.d[1]), mGrid[0],
        mGrid[1], mDistance, mPercentile, mSelfWeight};
    if (char const* why = validateSwarmAggregate(params))
    {
        logError(why);
        return -1;
    }
    FloatType const floatType
        = inputDesc[kFEATURES].type == DataType::kHALF ? FloatType::kFLOAT16 : FloatType::kFLOAT32;
    IndexType const indexType = inputDesc[kINDICES].type == DataType::kINT32 ? IndexType::kINT32 : IndexType::kINT64;
    cudaError_t const status = launchSwarmAggregate(params, floatType, indexType, inputs[kFEATURES], inputs[kSIM],
        inputs[kINDICES], inputs[kSCORES], outputs[0], workspace, stream);
    if (status != cudaSuccess)
    {
        logError(std::string("kernel launch failed: ") + cudaGetErrorString(status));
        return -1;
    }
    return 0;
}

IPluginV3* SwarmAggregatePlugin::attachToContext(nvinfer1::IPluginResourceContext* /* context */) noexcept
{
    return clone(); // no per-context resources
}

PluginFieldCollection const* SwarmAggregatePlugin::getFieldsToSerialize() noexcept
{
    try
    {
        mFieldsToSerialize.clear();
        mFieldsToSerialize.emplace_back(kATTR_GRID, mGrid, PluginFieldType::kINT32, 2);
        mFieldsToSerialize.emplace_back(kATTR_DISTANCE, &mDistance, PluginFieldType::kFLOAT32, 1);
        mFieldsToSerialize.emplace_back(kATTR_PERCENTILE, &mPercentile, PluginFieldType::kFLOAT32, 1);
        mFieldsToSerialize.emplace_back(kATTR_SELF_WEIGHT, &mSelfWeight, PluginFieldType::kINT32, 1);
        mFieldCollection.nbFields = static_cast<int32_t>(mFieldsToSerialize.size());
        mFieldCollection.fields = mFieldsToSerialize.data();
        return &mFieldCollection;
    }
    catch (std::exception const& e)
    {
        logError(std::string("serialisation failed: ") + e.what());
    }
    return nullptr;
}

// ---- creator ----------------------------------------------------------------------------------

SwarmAggregatePluginCreator::SwarmAggregatePluginCreator()
{
    // The ONNX parser passes exactly the attributes named here, with the types it derives from
    // the node (ints -> kINT32, float -> kFLOAT32); the types below are what we serialise.
    // self_weight is optional (absent from older exports: 1).
    mFields.emplace_back(kATTR_GRID, nullptr, PluginFieldType::kINT32, 2);
    mFields.emplace_back(kATTR_DISTANCE, nullptr, PluginFieldType::kFLOAT32, 1);
    mFields.emplace_back(kATTR_PERCENTILE, nullptr, PluginFieldType::kFLOAT32, 1);
    mFields.emplace_back(kATTR_SELF_WEIGHT, nullptr, PluginFieldType::kINT32, 1);
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
}

char const* SwarmAggregatePluginCreator::getPluginName() const noexcept
{
    return kOP_NAME;
}

char const* SwarmAggregatePluginCreator::getPluginVersion() const noexcept
{
    return kPLUGIN_VERSION;
}

char const* SwarmAggregatePluginCreator::getPluginNamespace() const noexcept
{
    return kPLUGIN_NAMESPACE;
}

PluginFieldCollection const* SwarmAggregatePluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

IPluginV3* SwarmAggregatePluginCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, nvinfer1::TensorRTPhase /* phase */) noexcept
{
    try
    {
        std::string const node = name != nullptr ? name : "?";
        if (fc == nullptr || (fc->nbFields > 0 && fc->fields == nullptr))
        {
            logError(node + ": no plugin fields");
            return nullptr;
        }
        int64_t grid[2] = {0, 0};
        float distance = 0.F;
        float percentile = -1.F;
        int64_t selfWeight = 1; // absent in exports made before the attribute existed: the LLaVA rule
        bool seen[3] = {false, false, false};
        for (int32_t i = 0; i < fc->nbFields; ++i)
        {
            PluginField const& f = fc->fields[i];
            if (f.name == nullptr)
            {
                continue;
            }
            bool ok = true;
            if (std::strcmp(f.name, kATTR_GRID) == 0)
            {
                ok = seen[0] = readInts(f, grid, 2);
            }
            else if (std::strcmp(f.name, kATTR_DISTANCE) == 0)
            {
                ok = seen[1] = readFloat(f, distance);
            }
            else if (std::strcmp(f.name, kATTR_PERCENTILE) == 0)
            {
                ok = seen[2] = readFloat(f, percentile);
            }
            else if (std::strcmp(f.name, kATTR_SELF_WEIGHT) == 0)
            {
                ok = readInt(f, selfWeight);
            }
            if (!ok)
            {
                logError(node + ": attribute '" + f.name + "' has an unexpected type or length");
                return nullptr;
            }
        }
        if (!(seen[0] && seen[1] && seen[2]))
        {
            logError(node + ": attributes grid, distance and percentile are all required");
            return nullptr;
        }
        if (grid[0] < 1 || grid[1] < 1 || grid[0] > INT32_MAX || grid[1] > INT32_MAX
            || grid[0] * grid[1] > INT32_MAX)
        {
            logError(node + ": grid must be two positive integers");
            return nullptr;
        }
        if (!(distance > 0.F) || !std::isfinite(distance) || !(percentile >= 0.F && percentile <= 1.F))
        {
            logError(node + ": distance must be > 0 and percentile in [0, 1]");
            return nullptr;
        }
        if (selfWeight != 0 && selfWeight != 1)
        {
            logError(node + ": self_weight must be 0 or 1, got " + std::to_string(selfWeight));
            return nullptr;
        }
        return new SwarmAggregatePlugin(static_cast<int32_t>(grid[0]), static_cast<int32_t>(grid[1]), distance,
            percentile, static_cast<int32_t>(selfWeight));
    }
    catch (std::exception const& e)
    {
        logError(std::string("createPlugin failed: ") + e.what());
    }
    return nullptr;
}

} // namespace nuwa

// ---- registration ------------------------------------------------------------------------------
#if defined(NUWA_PLUGIN_LIBRARY_ENTRY_POINTS)
// For IPluginRegistry::loadLibrary / trtexec --dynamicPlugins / version-compatible engines with
// plugins_to_serialize: TensorRT calls these entry points and registers the creators itself.
// Static registration must then be off, or loadLibrary would find the creator already registered.
extern "C" TENSORRTAPI void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    nuwa::gLoggerFinder = finder;
}

extern "C" TENSORRTAPI nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static nuwa::SwarmAggregatePluginCreator creator;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator};
    nbCreators = 1;
    return creators;
}
#else
// Registers the creator in TensorRT's global plugin registry when the library is loaded
// (dlopen/ctypes.CDLL before parsing, trtexec --staticPlugins, or linking the library in).
using nuwa::SwarmAggregatePluginCreator;
REGISTER_TENSORRT_PLUGIN(SwarmAggregatePluginCreator);
#endif
