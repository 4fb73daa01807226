// CUDA implementation of the nuwa::SwarmAggregate node (docs/algorithm.md §2.4).
//
// Inputs (row-major, contiguous, on the device):
//   features      F [B, N, D]   float32 or float16: patch features to merge
//   sim           U [B, N, Ds]  same type as F: raw similarity features (L2-normalised here)
//   indices     idx [B, K]      int64 (or int32): anchor patch indices, ascending, in [0, N)
//   anchor_scores s [B, K]      same type as F: CLS attention of each anchor
// Output:
//   tokens        Z [B, K, D]   same type as F
//
// For every batch b and anchor k, with a = idx[b, k], R = sqrt(distance) and t_b the linearly
// interpolated quantile of s[b, :] at `percentile` (torch.quantile):
//   A[k, j] = relu(cos(U_a, U_j)) * (1 - min(1, |grid(a) - grid(j)| / R))
//   pillar anchors (s[b, k] >= t_b) keep only A[k, a]; collectors keep the whole row
//   W[k, :] = A[k, :] / (sum_j A[k, j] + 1e-8), then W[k, a] = 1 when self_weight is 1 (LLaVA);
//   with self_weight 0 (Qwen2.5-VL) W[k, a] keeps its normalised value
//   Z[b, k, :] = sum_j W[k, j] F[b, j, :]
// This is exactly nuwa_export.pruning.stage_one.swarm_weights (self_override = self_weight)
// followed by the merge. The grid may have any sides, odd ones included. All arithmetic is
// float32 whatever the I/O type. The K x N weights never touch global memory: one thread block
// per (b, k) keeps its row in shared memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cuda_runtime_api.h>

namespace nuwa
{

//! Element type of features, sim, anchor_scores and tokens.
enum class FloatType : int32_t
{
    kFLOAT32 = 0,
    kFLOAT16 = 1,
};

//! Element type of indices.
enum class IndexType : int32_t
{
    kINT64 = 0,
    kINT32 = 1,
};

//! Shapes and attributes of one call.
struct SwarmAggregateParams
{
    int32_t batch;       //!< B
    int32_t patches;     //!< N (= grid_h * grid_w)
    int32_t dim;         //!< D, width of features and tokens
    int32_t sim_dim;     //!< Ds, width of sim
    int32_t anchors;     //!< K
    int32_t grid_h;      //!< H
    int32_t grid_w;      //!< W
    float distance;      //!< > 0; the distance penalty reaches sqrt(distance) patches
    float percentile;    //!< in [0, 1]; pillar threshold quantile of anchor_scores
    int32_t self_weight; //!< 1: W[k, a] = 1 after normalising (LLaVA); 0: kept as normalised (Qwen2.5-VL)
};

//! Returns nullptr when `p` describes a valid call, otherwise a static message saying why not.
char const* validateSwarmAggregate(SwarmAggregateParams const& p) noexcept;

//! Bytes of device workspace a call with `batch` images needs (one float threshold per image).
size_t swarmAggregateWorkspaceSize(int32_t batch) noexcept;

//! Dynamic shared memory one (b, k) block of the fused kernel needs, in bytes.
size_t swarmAggregateSharedBytes(SwarmAggregateParams const& p) noexcept;

//! Enqueue the computation on `stream`. All pointers are device pointers; `workspace` holds at
//! least swarmAggregateWorkspaceSize(p.batch) bytes (4-byte aligned). Returns cudaSuccess, or
//! cudaErrorInvalidValue for invalid parameters (see validateSwarmAggregate), or the launch error.
//! Out-of-range anchor indices produce a zero output row instead of reading out of bounds.
cudaError_t launchSwarmAggregate(SwarmAggregateParams const& p, FloatType floatType, IndexType indexType,
    void const* features, void const* sim, void const* indices, void const* anchorScores, void* tokens,
    void* workspace, cudaStream_t stream) noexcept;

} // namespace nuwa
