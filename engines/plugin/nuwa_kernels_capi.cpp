// C ABI around nuwa::launchSwarmAggregate; see nuwa_kernels_capi.h.

#include "nuwa_kernels_capi.h"

#include "swarm_aggregate_kernel.h"

#include <cuda_runtime_api.h>

#include <cstring>

namespace
{

nuwa::SwarmAggregateParams makeParams(int32_t batch, int32_t patches, int32_t dim, int32_t simDim, int32_t anchors,
    int32_t gridH, int32_t gridW, float distance, float percentile, int32_t selfWeight)
{
    return nuwa::SwarmAggregateParams{
        batch, patches, dim, simDim, anchors, gridH, gridW, distance, percentile, selfWeight};
}

bool validTypes(int32_t floatType, int32_t indexType)
{
    return (floatType == NUWA_FLOAT32 || floatType == NUWA_FLOAT16)
        && (indexType == NUWA_INT64 || indexType == NUWA_INT32);
}

//! Device buffer freed on scope exit.
class DeviceBuffer
{
public:
    DeviceBuffer() = default;
    DeviceBuffer(DeviceBuffer const&) = delete;
    DeviceBuffer& operator=(DeviceBuffer const&) = delete;
    ~DeviceBuffer()
    {
        if (mPtr != nullptr)
        {
            cudaFree(mPtr);
        }
    }
    cudaError_t allocate(size_t bytes)
    {
        return cudaMalloc(&mPtr, bytes > 0 ? bytes : 1);
    }
    void* get() const
    {
        return mPtr;
    }

private:
    void* mPtr{nullptr};
};

//! Allocate `dst` and copy `bytes` from host `src` into it.
cudaError_t upload(DeviceBuffer& dst, void const* src, size_t bytes)
{
    cudaError_t status = dst.allocate(bytes);
    if (status != cudaSuccess)
    {
        return status;
    }
    return cudaMemcpy(dst.get(), src, bytes, cudaMemcpyHostToDevice);
}

} // namespace

extern "C" {

int32_t nuwa_kernels_abi_version(void)
{
    return NUWA_KERNELS_ABI_VERSION;
}

const char* nuwa_status_string(int32_t status)
{
    if (status == NUWA_OK)
    {
        return "ok";
    }
    if (status == NUWA_ERROR_INVALID_ARGUMENT)
    {
        return "invalid argument (shapes, attributes, types or a NULL pointer)";
    }
    if (status > 0)
    {
        return cudaGetErrorString(static_cast<cudaError_t>(status));
    }
    return "unknown nuwa status";
}

const char* nuwa_swarm_aggregate_check(int32_t batch, int32_t patches, int32_t dim, int32_t sim_dim, int32_t anchors,
    int32_t grid_h, int32_t grid_w, float distance, float percentile, int32_t self_weight)
{
    return nuwa::validateSwarmAggregate(
        makeParams(batch, patches, dim, sim_dim, anchors, grid_h, grid_w, distance, percentile, self_weight));
}

size_t nuwa_swarm_aggregate_workspace_size(int32_t batch)
{
    return nuwa::swarmAggregateWorkspaceSize(batch);
}

int32_t nuwa_swarm_aggregate(const void* features, const void* sim, const void* indices, const void* anchor_scores,
    void* tokens, void* workspace, int32_t batch, int32_t patches, int32_t dim, int32_t sim_dim, int32_t anchors,
    int32_t grid_h, int32_t grid_w, float distance, float percentile, int32_t self_weight, int32_t float_type,
    int32_t index_type, void* stream)
{
    nuwa::SwarmAggregateParams const p
        = makeParams(batch, patches, dim, sim_dim, anchors, grid_h, grid_w, distance, percentile, self_weight);
    if (nuwa::validateSwarmAggregate(p) != nullptr || !validTypes(float_type, index_type) || features == nullptr
        || sim == nullptr || indices == nullptr || anchor_scores == nullptr || tokens == nullptr
        || workspace == nullptr)
    {
        return NUWA_ERROR_INVALID_ARGUMENT;
    }
    return static_cast<int32_t>(nuwa::launchSwarmAggregate(p, static_cast<nuwa::FloatType>(float_type),
        static_cast<nuwa::IndexType>(index_type), features, sim, indices, anchor_scores, tokens, workspace,
        static_cast<cudaStream_t>(stream)));
}

int32_t nuwa_swarm_aggregate_host(const void* features, const void* sim, const void* indices,
    const void* anchor_scores, void* tokens, int32_t batch, int32_t patches, int32_t dim, int32_t sim_dim,
    int32_t anchors, int32_t grid_h, int32_t grid_w, float distance, float percentile, int32_t self_weight,
    int32_t float_type, int32_t index_type)
{
    nuwa::SwarmAggregateParams const p
        = makeParams(batch, patches, dim, sim_dim, anchors, grid_h, grid_w, distance, percentile, self_weight);
    if (nuwa::validateSwarmAggregate(p) != nullptr || !validTypes(float_type, index_type) || features == nullptr
        || sim == nullptr || indices == nullptr || anchor_scores == nullptr || tokens == nullptr)
    {
        return NUWA_ERROR_INVALID_ARGUMENT;
    }
    size_t const elem = float_type == NUWA_FLOAT16 ? 2 : 4;
    size_t const idxElem = index_type == NUWA_INT32 ? 4 : 8;
    size_t const B = static_cast<size_t>(batch);
    size_t const N = static_cast<size_t>(patches);
    size_t const K = static_cast<size_t>(anchors);
    size_t const outBytes = B * K * static_cast<size_t>(dim) * elem;

    DeviceBuffer dFeatures, dSim, dIndices, dScores, dTokens, dWorkspace;
    cudaError_t status = upload(dFeatures, features, B * N * static_cast<size_t>(dim) * elem);
    if (status == cudaSuccess)
    {
        status = upload(dSim, sim, B * N * static_cast<size_t>(sim_dim) * elem);
    }
    if (status == cudaSuccess)
    {
        status = upload(dIndices, indices, B * K * idxElem);
    }
    if (status == cudaSuccess)
    {
        status = upload(dScores, anchor_scores, B * K * elem);
    }
    if (status == cudaSuccess)
    {
        status = dTokens.allocate(outBytes);
    }
    if (status == cudaSuccess)
    {
        status = dWorkspace.allocate(nuwa::swarmAggregateWorkspaceSize(batch));
    }
    if (status == cudaSuccess)
    {
        status = nuwa::launchSwarmAggregate(p, static_cast<nuwa::FloatType>(float_type),
            static_cast<nuwa::IndexType>(index_type), dFeatures.get(), dSim.get(), dIndices.get(), dScores.get(),
            dTokens.get(), dWorkspace.get(), nullptr);
    }
    if (status == cudaSuccess)
    {
        status = cudaMemcpy(tokens, dTokens.get(), outBytes, cudaMemcpyDeviceToHost); // synchronises
    }
    return static_cast<int32_t>(status);
}

} // extern "C"
