// CUDA kernels of nuwa::SwarmAggregate; see swarm_aggregate_kernel.h for the math.
//
// Two kernels per call:
//   1. pillarThresholdKernel, one block per image: t_b = torch.quantile(s[b], percentile,
//      interpolation="linear"), written to the workspace (B floats).
//   2. swarmAggregateKernel, one block per (anchor k, image b): anchor's unit vector and the
//      weight row W[k, :] live in shared memory; the row is reduced and normalised there and then
//      applied to F. Nothing of size K x N is written to global memory.
//
// Bit-level choices that follow the PyTorch reference (nuwa_export/pruning/stage_one.py):
//   - the quantile position is float32(percentile) * float32(K - 1), as in ATen's quantile; the
//     interpolation is ATen's lerp (weight < 0.5 ? lo + w (hi - lo) : hi - (hi - lo)(1 - w));
//   - the penalty is 1 - min(1, dist / float32(sqrt(distance))) with IEEE sqrt and division
//     (this file must not be built with --use_fast_math);
//   - the row is normalised by (sum + 1e-8f) and the self entry is then set to 1 when
//     p.self_weight is 1 (self_override in the reference); with 0 it keeps its normalised value.
// Sums (dot products, row sum, merge) run in a different order than torch's matmul, so results
// agree to float32 rounding, not bit for bit.

#include "swarm_aggregate_kernel.h"

#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

namespace nuwa
{
namespace
{

constexpr int kTHRESHOLD_THREADS = 512;
constexpr int kAGGREGATE_THREADS = 256;
constexpr int kWARP = 32;
constexpr float kNORM_EPS = 1e-12F; // torch.nn.functional.normalize
constexpr float kROW_EPS = 1e-8F;   // nuwa_export.pruning.stage_one.ROW_EPS

__device__ __forceinline__ float toFloat(float v)
{
    return v;
}
__device__ __forceinline__ float toFloat(__half v)
{
    return __half2float(v);
}
template <typename T>
__device__ __forceinline__ T fromFloat(float v);
template <>
__device__ __forceinline__ float fromFloat<float>(float v)
{
    return v;
}
template <>
__device__ __forceinline__ __half fromFloat<__half>(float v)
{
    return __float2half_rn(v);
}

__device__ __forceinline__ float warpSum(float v)
{
    for (int offset = kWARP / 2; offset > 0; offset /= 2)
    {
        v += __shfl_xor_sync(0xffffffffU, v, offset);
    }
    return v;
}

//! Sum of `v` over the block; every thread gets the result. `scratch` holds >= 32 floats.
__device__ float blockSum(float v, float* scratch)
{
    int const lane = threadIdx.x % kWARP;
    int const warp = threadIdx.x / kWARP;
    int const nbWarps = (blockDim.x + kWARP - 1) / kWARP;
    v = warpSum(v);
    __syncthreads(); // scratch may still be read by a previous call
    if (lane == 0)
    {
        scratch[warp] = v;
    }
    __syncthreads();
    float total = lane < nbWarps ? scratch[lane] : 0.F;
    return warpSum(total);
}

//! ATen's lerp (aten/src/ATen/native/Lerp.h), fused like its vectorised CPU path.
__device__ __forceinline__ float atenLerp(float lo, float hi, float w)
{
    bool const small = fabsf(w) < 0.5F;
    float const coeff = small ? w : w - 1.F;
    float const base = small ? lo : hi;
    return fmaf(coeff, hi - lo, base);
}

// ---- kernel 1: pillar threshold per image ------------------------------------------------------
//
// The quantile needs the values at two sorted positions. Instead of sorting, every element gets
// its stable rank (number of smaller elements + number of equal elements before it), which is a
// permutation of 0..K-1; the element whose rank is the wanted position supplies the value. This
// is O(K^2 / threads) per image, a few microseconds for K in the thousands, and needs no shared
// buffer of size K. NaN scores make the result undefined (torch would return NaN).
template <typename T>
__global__ void pillarThresholdKernel(T const* __restrict__ scores, int32_t K, float percentile,
    float* __restrict__ thresholds)
{
    __shared__ float picked[2];
    T const* s = scores + static_cast<size_t>(blockIdx.x) * K;

    float const pos = __fmul_rn(percentile, static_cast<float>(K - 1)); // float32, as in ATen
    int32_t const below = static_cast<int32_t>(pos);                   // pos >= 0: truncation = floor
    int32_t const above = static_cast<int32_t>(ceilf(pos));

    for (int32_t i = threadIdx.x; i < K; i += blockDim.x)
    {
        float const v = toFloat(s[i]);
        int32_t rank = 0;
        for (int32_t j = 0; j < K; ++j)
        {
            float const u = toFloat(s[j]);
            rank += (u < v) || (u == v && j < i);
        }
        if (rank == below)
        {
            picked[0] = v;
        }
        if (rank == above)
        {
            picked[1] = v;
        }
    }
    __syncthreads();
    if (threadIdx.x == 0)
    {
        float const weight = __fsub_rn(pos, static_cast<float>(below));
        thresholds[blockIdx.x] = atenLerp(picked[0], picked[1], weight);
    }
}

// ---- kernel 2: fused gather -> cosine -> penalty -> pillar mask -> normalise -> merge ----------
//
// Block (k, b). Dynamic shared memory: weights[N] | anchorUnit[Ds] | scratch[32].
template <typename T, typename I>
__global__ void swarmAggregateKernel(SwarmAggregateParams p, T const* __restrict__ features,
    T const* __restrict__ sim, I const* __restrict__ indices, T const* __restrict__ anchorScores,
    float const* __restrict__ thresholds, T* __restrict__ tokens)
{
    extern __shared__ float shared[];
    float* weights = shared;
    float* anchorUnit = weights + p.patches;
    float* scratch = anchorUnit + p.sim_dim;

    int32_t const k = blockIdx.x;
    int32_t const b = blockIdx.y;
    int32_t const N = p.patches;
    int32_t const D = p.dim;
    int32_t const Ds = p.sim_dim;

    T const* F = features + static_cast<size_t>(b) * N * D;
    T const* U = sim + static_cast<size_t>(b) * N * Ds;
    T* out = tokens + (static_cast<size_t>(b) * p.anchors + k) * D;

    int64_t const a64 = static_cast<int64_t>(indices[static_cast<size_t>(b) * p.anchors + k]);
    if (a64 < 0 || a64 >= N)
    {
        for (int32_t d = threadIdx.x; d < D; d += blockDim.x)
        {
            out[d] = fromFloat<T>(0.F);
        }
        return;
    }
    int32_t const a = static_cast<int32_t>(a64);

    // Pillars keep only themselves. With self_weight 1 their row is one-hot at the anchor, so
    // Z = F[a] exactly; with self_weight 0 the self entry is A[k, a] / (A[k, a] + 1e-8), computed
    // below like a collector's row with every other entry zeroed.
    float const score = toFloat(anchorScores[static_cast<size_t>(b) * p.anchors + k]);
    bool const pillar = score >= thresholds[b];
    if (pillar && p.self_weight != 0)
    {
        for (int32_t d = threadIdx.x; d < D; d += blockDim.x)
        {
            out[d] = F[static_cast<size_t>(a) * D + d];
        }
        return;
    }

    // Anchor unit vector u_a = U_a / max(|U_a|, eps), kept in shared memory.
    T const* Ua = U + static_cast<size_t>(a) * Ds;
    float sq = 0.F;
    for (int32_t c = threadIdx.x; c < Ds; c += blockDim.x)
    {
        float const v = toFloat(Ua[c]);
        anchorUnit[c] = v;
        sq += v * v;
    }
    float const anchorNorm = fmaxf(sqrtf(blockSum(sq, scratch)), kNORM_EPS);
    for (int32_t c = threadIdx.x; c < Ds; c += blockDim.x)
    {
        anchorUnit[c] = anchorUnit[c] / anchorNorm;
    }
    __syncthreads();

    // Row of weights, one warp per patch j. Patches the penalty zeroes skip the dot product (their
    // weight is exactly 0 in the reference too), and so do a pillar's patches other than a.
    float const reach = static_cast<float>(sqrt(static_cast<double>(p.distance)));
    int32_t const ay = a / p.grid_w;
    int32_t const ax = a % p.grid_w;
    int32_t const lane = threadIdx.x % kWARP;
    int32_t const warp = threadIdx.x / kWARP;
    int32_t const nbWarps = blockDim.x / kWARP;
    float partial = 0.F; // this thread's share of the row sum
    for (int32_t j = warp; j < N; j += nbWarps)
    {
        float const dy = static_cast<float>(ay - j / p.grid_w);
        float const dx = static_cast<float>(ax - j % p.grid_w);
        float const dist = sqrtf(__fadd_rn(__fmul_rn(dy, dy), __fmul_rn(dx, dx)));
        float const penalty = 1.F - fminf(dist / reach, 1.F);
        float w = 0.F;
        if (penalty > 0.F && (!pillar || j == a))
        {
            T const* Uj = U + static_cast<size_t>(j) * Ds;
            float dot = 0.F;
            float norm = 0.F;
            for (int32_t c = lane; c < Ds; c += kWARP)
            {
                float const v = toFloat(Uj[c]);
                dot += v * anchorUnit[c];
                norm += v * v;
            }
            dot = warpSum(dot);
            norm = warpSum(norm);
            float const cosine = dot / fmaxf(sqrtf(norm), kNORM_EPS);
            w = __fmul_rn(fmaxf(cosine, 0.F), penalty);
        }
        if (lane == 0)
        {
            weights[j] = w;
            partial += w;
        }
    }
    float const denom = __fadd_rn(blockSum(partial, scratch), kROW_EPS); // syncs: weights complete
    for (int32_t j = threadIdx.x; j < N; j += blockDim.x)
    {
        weights[j] = j == a && p.self_weight != 0 ? 1.F : weights[j] / denom;
    }
    __syncthreads();

    // Merge: Z[d] = sum_j W[j] F[j, d]. Rows farther than the reach hold only zero weights; the
    // zero test is uniform across the block (W[j] is shared), so it costs no divergence.
    // A pillar's row (self_weight 0) is zero except at a.
    int32_t const rows = static_cast<int32_t>(fminf(floorf(reach), static_cast<float>(p.grid_h)));
    int32_t const jBegin = pillar ? a : max(ay - rows, 0) * p.grid_w;
    int32_t const jEnd = pillar ? a + 1 : min(ay + rows + 1, p.grid_h) * p.grid_w;
    for (int32_t d = threadIdx.x; d < D; d += blockDim.x)
    {
        float acc = 0.F;
        for (int32_t j = jBegin; j < jEnd; ++j)
        {
            float const w = weights[j];
            if (w != 0.F)
            {
                acc = fmaf(w, toFloat(F[static_cast<size_t>(j) * D + d]), acc);
            }
        }
        out[d] = fromFloat<T>(acc);
    }
}

template <typename T, typename I>
cudaError_t launchTyped(SwarmAggregateParams const& p, void const* features, void const* sim, void const* indices,
    void const* anchorScores, void* tokens, void* workspace, cudaStream_t stream)
{
    auto* thresholds = static_cast<float*>(workspace);
    pillarThresholdKernel<T><<<p.batch, kTHRESHOLD_THREADS, 0, stream>>>(
        static_cast<T const*>(anchorScores), p.anchors, p.percentile, thresholds);
    cudaError_t status = cudaGetLastError();
    if (status != cudaSuccess)
    {
        return status;
    }

    size_t const sharedBytes = swarmAggregateSharedBytes(p);
    auto kernel = swarmAggregateKernel<T, I>;
    if (sharedBytes > 48 * 1024) // above the default limit the kernel must opt in
    {
        status = cudaFuncSetAttribute(
            kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(sharedBytes));
        if (status != cudaSuccess)
        {
            return status;
        }
    }
    dim3 const grid(static_cast<unsigned>(p.anchors), static_cast<unsigned>(p.batch));
    kernel<<<grid, kAGGREGATE_THREADS, sharedBytes, stream>>>(p, static_cast<T const*>(features),
        static_cast<T const*>(sim), static_cast<I const*>(indices), static_cast<T const*>(anchorScores), thresholds,
        static_cast<T*>(tokens));
    return cudaGetLastError();
}

} // namespace

char const* validateSwarmAggregate(SwarmAggregateParams const& p) noexcept
{
    if (p.batch < 1 || p.patches < 1 || p.dim < 1 || p.sim_dim < 1 || p.anchors < 1)
    {
        return "SwarmAggregate: batch, patches, dim, sim_dim and anchors must all be >= 1";
    }
    if (p.batch > 65535)
    {
        return "SwarmAggregate: batch must be <= 65535 (CUDA grid y limit)";
    }
    if (p.grid_h < 1 || p.grid_w < 1 || static_cast<int64_t>(p.grid_h) * p.grid_w != p.patches)
    {
        return "SwarmAggregate: grid H*W must equal the number of patches N";
    }
    if (!(p.distance > 0.F) || !std::isfinite(p.distance))
    {
        return "SwarmAggregate: distance must be a finite number > 0";
    }
    if (!(p.percentile >= 0.F && p.percentile <= 1.F))
    {
        return "SwarmAggregate: percentile must be in [0, 1]";
    }
    if (p.self_weight != 0 && p.self_weight != 1)
    {
        return "SwarmAggregate: self_weight must be 0 or 1";
    }
    return nullptr;
}

size_t swarmAggregateWorkspaceSize(int32_t batch) noexcept
{
    return static_cast<size_t>(batch > 0 ? batch : 0) * sizeof(float);
}

size_t swarmAggregateSharedBytes(SwarmAggregateParams const& p) noexcept
{
    return (static_cast<size_t>(p.patches) + static_cast<size_t>(p.sim_dim) + kWARP) * sizeof(float);
}

cudaError_t launchSwarmAggregate(SwarmAggregateParams const& p, FloatType floatType, IndexType indexType,
    void const* features, void const* sim, void const* indices, void const* anchorScores, void* tokens,
    void* workspace, cudaStream_t stream) noexcept
{
    if (validateSwarmAggregate(p) != nullptr || features == nullptr || sim == nullptr || indices == nullptr
        || anchorScores == nullptr || tokens == nullptr || workspace == nullptr)
    {
        return cudaErrorInvalidValue;
    }
    bool const half = floatType == FloatType::kFLOAT16;
    bool const int32 = indexType == IndexType::kINT32;
    if (!half && floatType != FloatType::kFLOAT32)
    {
        return cudaErrorInvalidValue;
    }
    if (!int32 && indexType != IndexType::kINT64)
    {
        return cudaErrorInvalidValue;
    }
    if (half)
    {
        return int32 ? launchTyped<__half, int32_t>(p, features, sim, indices, anchorScores, tokens, workspace, stream)
                     : launchTyped<__half, int64_t>(p, features, sim, indices, anchorScores, tokens, workspace, stream);
    }
    return int32 ? launchTyped<float, int32_t>(p, features, sim, indices, anchorScores, tokens, workspace, stream)
                 : launchTyped<float, int64_t>(p, features, sim, indices, anchorScores, tokens, workspace, stream);
}

} // namespace nuwa
