/* residual add: y = a + b, fp32, elementwise, on CUDA; its backward
 * accumulates.  One IEEE add per element, as on the CPU, so the results
 * are bitwise the CPU kernel's. */
#include "cuda_common.cuh"
#include "cuda_kernels.h"

/* ---- kernels ------------------------------------------------------------ */

/* y may alias a or b (elementwise, read before written): no restrict. */
static __global__ void
residual_fwd_kernel(float *y, const float *a, const float *b, size_t n)
{
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    y[i] = a[i] + b[i];
}

/* da += dy, then db += dy, each optional.  da == db is allowed (the same
 * thread adds dy twice, in the CPU's order), so no restrict on them; dy
 * aliases neither (the launcher checks). */
static __global__ void
residual_bwd_kernel(float *da, float *db, const float *__restrict__ dy,
                    size_t n)
{
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    float d = dy[i];
    if (da != NULL)
      da[i] += d;
    if (db != NULL)
      db[i] += d;
  }
}

/* ---- launchers ---------------------------------------------------------- */

extern "C" bt_status
bt__cu_residual_fwd(float *y, const float *a, const float *b, size_t n,
                    cudaStream_t stream)
{
  if (y == NULL || a == NULL || b == NULL || n == 0)
    return BT_EINVAL;
  if (n > SIZE_MAX / sizeof(float))
    return BT_ERANGE;
  residual_fwd_kernel<<<bt__cu_blocks(n, 256), 256, 0, stream>>>(y, a, b, n);
  return bt__cu_launch_status();
}

extern "C" bt_status
bt__cu_residual_bwd(float *da, float *db, const float *dy, size_t n,
                    cudaStream_t stream)
{
  if ((da == NULL && db == NULL) || dy == NULL || n == 0)
    return BT_EINVAL;
  /* da == db is fine (y = a + a adds dy twice); dy as an output is not. */
  if (da == dy || db == dy)
    return BT_EINVAL;
  if (n > SIZE_MAX / sizeof(float))
    return BT_ERANGE;
  residual_bwd_kernel<<<bt__cu_blocks(n, 256), 256, 0, stream>>>(da, db, dy, n);
  return bt__cu_launch_status();
}
