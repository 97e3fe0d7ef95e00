/* baton: helpers shared by the CUDA kernels' launchers (private to
 * kernels/cuda/). */
#ifndef BATON_KERNELS_CUDA_CUDA_COMMON_CUH
#define BATON_KERNELS_CUDA_CUDA_COMMON_CUH

#include <stddef.h>
#include <stdint.h>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "baton/status.h"

/* Out of memory is the one failure a caller can act on (smaller
 * microbatches); everything else is a device or driver failure. */
static inline bt_status
bt__cu_status(cudaError_t e)
{
  if (e == cudaSuccess)
    return BT_OK;
  return e == cudaErrorMemoryAllocation ? BT_ENOMEM : BT_EIO;
}

static inline bt_status
bt__cu_blas_status(cublasStatus_t s)
{
  if (s == CUBLAS_STATUS_SUCCESS)
    return BT_OK;
  return s == CUBLAS_STATUS_ALLOC_FAILED ? BT_ENOMEM : BT_EIO;
}

/* Binds the handle to stream unless it already is: cublasSetStream also
 * resets the handle's workspace to cuBLAS's default pool, which would undo
 * a workspace set with cublasSetWorkspace (the CUDA backend sets one so
 * that cuBLAS never allocates inside a captured CUDA graph). */
static inline bt_status
bt__cu_blas_bind(cublasHandle_t h, cudaStream_t stream)
{
  cudaStream_t now = NULL;

  if (cublasGetStream(h, &now) == CUBLAS_STATUS_SUCCESS && now == stream)
    return BT_OK;
  return bt__cu_blas_status(cublasSetStream(h, stream));
}

/* The status of the launches just made: cudaGetLastError reports a bad
 * launch configuration, and a sticky error of an earlier kernel. */
static inline bt_status
bt__cu_launch_status(void)
{
  return bt__cu_status(cudaGetLastError());
}

static inline bool
bt__cu_mul_fits(size_t a, size_t b, size_t *out)
{
  return !__builtin_mul_overflow(a, b, out);
}

/* Blocks for a grid-stride loop over n items of `per` items per block;
 * capped, as the loops cover the rest. */
static inline unsigned
bt__cu_blocks(size_t n, unsigned per)
{
  size_t b = (n + per - 1) / per;
  const size_t cap = (size_t)1 << 20;
  return (unsigned)(b == 0 ? 1 : b < cap ? b : cap);
}

/* A warp's sum and maximum of v (every lane gets the result); a
 * butterfly, so every lane adds in the same order: deterministic. */
static __device__ __forceinline__ float
warp_sum(float v)
{
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

static __device__ __forceinline__ float
warp_max(float v)
{
  for (int o = 16; o > 0; o >>= 1)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

#endif /* BATON_KERNELS_CUDA_CUDA_COMMON_CUH */
