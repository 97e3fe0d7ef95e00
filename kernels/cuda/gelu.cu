/* GELU, tanh approximation (as GPT-2 uses), fp32, elementwise, on CUDA.
 *
 * The CPU kernel's formulation (kernels/cpu/gelu.c says why): with
 * u = sqrt(2/pi) (x + 0.044715 x^3) clamped to +-40 and q = exp(-2u),
 * 0.5 (1 + tanh u) = s = 1 / (1 + q) and 1 - tanh^2 u = 4 s (1 - s) with
 * 1 - s = q s.  expf, not __expf, for the CPU's accuracy; results agree
 * with the CPU's to a few ulps (expf differs, and nvcc contracts to FMA),
 * not bitwise. */
#include "cuda_common.cuh"
#include "cuda_kernels.h"

/* ---- kernels ------------------------------------------------------------ */

#define GELU_SCALE 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_CUBE 0.044715f

static __device__ __forceinline__ float
gelu_u(float x)
{
  float u = GELU_SCALE * (x + GELU_CUBE * x * x * x);
  /* Comparisons, as the CPU's: a NaN u passes through unchanged. */
  return u < -40.0f ? -40.0f : (u > 40.0f ? 40.0f : u);
}

/* No __restrict__: y may be x (each element read before written). */
static __global__ void
gelu_fwd_kernel(float *y, const float *x, size_t n)
{
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    float xi = x[i];
    y[i] = xi / (1.0f + expf(-2.0f * gelu_u(xi)));
  }
}

/* d/dx [0.5 x (1 + tanh u)] = s + 2 x s (1 - s) u'.  dx may be dy. */
static __global__ void
gelu_bwd_kernel(float *dx, const float *dy, const float *x, size_t n)
{
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    float xi = x[i];
    float q = expf(-2.0f * gelu_u(xi));
    float s = 1.0f / (1.0f + q);
    float du = GELU_SCALE * (1.0f + 3.0f * GELU_CUBE * xi * xi);
    dx[i] = dy[i] * (s + 2.0f * xi * (q * s) * s * du);
  }
}

/* ---- launchers ---------------------------------------------------------- */

/* The CPU's rules, plus BT_ERANGE for a count no float array can have. */
static bt_status
check_n(size_t n)
{
  if (n == 0)
    return BT_EINVAL;
  if (n > SIZE_MAX / sizeof(float))
    return BT_ERANGE;
  return BT_OK;
}

extern "C" bt_status
bt__cu_gelu_fwd(float *y, const float *x, size_t n, cudaStream_t stream)
{
  bt_status st;

  if (y == NULL || x == NULL)
    return BT_EINVAL;
  if ((st = check_n(n)) != BT_OK)
    return st;
  gelu_fwd_kernel<<<bt__cu_blocks(n, 256), 256, 0, stream>>>(y, x, n);
  return bt__cu_launch_status();
}

extern "C" bt_status
bt__cu_gelu_bwd(float *dx, const float *dy, const float *x, size_t n,
                cudaStream_t stream)
{
  bt_status st;

  if (dx == NULL || dy == NULL || x == NULL)
    return BT_EINVAL;
  if ((st = check_n(n)) != BT_OK)
    return st;
  gelu_bwd_kernel<<<bt__cu_blocks(n, 256), 256, 0, stream>>>(dx, dy, x, n);
  return bt__cu_launch_status();
}
