/* C ABI of libnuwa_kernels.so: the SwarmAggregate kernel without TensorRT.
 *
 * Two entry points compute the same thing (see swarm_aggregate_kernel.h for the math):
 *   nuwa_swarm_aggregate       device pointers, asynchronous on `stream` (a cudaStream_t or NULL);
 *   nuwa_swarm_aggregate_host  host pointers (e.g. NumPy arrays through ctypes): allocates device
 *                              buffers, copies in, runs, copies out and frees; synchronous.
 * Tensors are contiguous row-major. `float_type` is NUWA_FLOAT32 or NUWA_FLOAT16 for features, sim,
 * anchor_scores and tokens (float16 is IEEE binary16, NumPy's float16); `index_type` is NUWA_INT64
 * or NUWA_INT32 for indices. `self_weight` is the node attribute: 1 sets each row's self entry
 * to 1 after normalising (LLaVA), 0 keeps it as normalised (Qwen2.5-VL). Every function returns
 * NUWA_OK (0), a negative nuwa status, or a positive cudaError_t value; nuwa_status_string() names
 * any of them.
 */
#ifndef NUWA_KERNELS_CAPI_H
#define NUWA_KERNELS_CAPI_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define NUWA_API __declspec(dllexport)
#else
#define NUWA_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped when a signature below changes; check it from Python before calling.
 * 2: self_weight after percentile in nuwa_swarm_aggregate_check/_host and nuwa_swarm_aggregate. */
#define NUWA_KERNELS_ABI_VERSION 2

enum
{
    NUWA_OK = 0,
    NUWA_ERROR_INVALID_ARGUMENT = -1, /* shapes, attributes, types or a NULL pointer */
};

enum
{
    NUWA_FLOAT32 = 0,
    NUWA_FLOAT16 = 1,
};

enum
{
    NUWA_INT64 = 0,
    NUWA_INT32 = 1,
};

/* NUWA_KERNELS_ABI_VERSION of the library. */
NUWA_API int32_t nuwa_kernels_abi_version(void);

/* Human-readable text for a status returned by this library (static storage). */
NUWA_API const char* nuwa_status_string(int32_t status);

/* Why the shapes/attributes are invalid (static storage), or NULL when they are valid. */
NUWA_API const char* nuwa_swarm_aggregate_check(int32_t batch, int32_t patches, int32_t dim, int32_t sim_dim,
    int32_t anchors, int32_t grid_h, int32_t grid_w, float distance, float percentile, int32_t self_weight);

/* Bytes of device workspace nuwa_swarm_aggregate needs for `batch` images. */
NUWA_API size_t nuwa_swarm_aggregate_workspace_size(int32_t batch);

/* Device pointers; enqueued on `stream` (cudaStream_t, NULL = legacy default stream). */
NUWA_API int32_t nuwa_swarm_aggregate(const void* features, const void* sim, const void* indices,
    const void* anchor_scores, void* tokens, void* workspace, int32_t batch, int32_t patches, int32_t dim,
    int32_t sim_dim, int32_t anchors, int32_t grid_h, int32_t grid_w, float distance, float percentile,
    int32_t self_weight, int32_t float_type, int32_t index_type, void* stream);

/* Host pointers; synchronous. tokens [batch, anchors, dim] is written on success only. */
NUWA_API int32_t nuwa_swarm_aggregate_host(const void* features, const void* sim, const void* indices,
    const void* anchor_scores, void* tokens, int32_t batch, int32_t patches, int32_t dim, int32_t sim_dim,
    int32_t anchors, int32_t grid_h, int32_t grid_w, float distance, float percentile, int32_t self_weight,
    int32_t float_type, int32_t index_type);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* NUWA_KERNELS_CAPI_H */
