/* Optimizer updates on CUDA, fp32, in place: SGD with L2 weight decay and
 * AdamW (Loshchilov & Hutter, decoupled weight decay).
 *
 * The arithmetic is spelled with round-to-nearest intrinsics (__fmul_rn,
 * __fadd_rn, ...), which nvcc never contracts into FMAs, in the CPU
 * kernels' order of operations, and the bias corrections are computed on
 * the host as the CPU kernel computes them.  So each element goes through
 * the CPU kernel's roundings: the results are bitwise the CPU's wherever
 * the C compiler does not contract either (the default for ISO C on
 * x86-64), and within an ulp or so elsewhere. */
#include <math.h>

#include <cmath>

#include "cuda_common.cuh"
#include "cuda_kernels.h"

/* ---- kernels ------------------------------------------------------------ */

/* w -= lr (g + wd w). */
static __global__ void
sgd_kernel(float *__restrict__ w, const float *__restrict__ g, size_t n,
           float lr, float wd)
{
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    float wi = w[i];
    float step = __fmul_rn(lr, __fadd_rn(g[i], __fmul_rn(wd, wi)));
    w[i] = __fsub_rn(wi, step);
  }
}

/* omb1 = 1 - b1, omb2 = 1 - b2, c1 = 1/(1-b1^t), c2 = 1/(1-b2^t). */
static __global__ void
adamw_kernel(float *__restrict__ w, float *__restrict__ m,
             float *__restrict__ v, const float *__restrict__ g, size_t n,
             float lr, float b1, float b2, float omb1, float omb2, float eps,
             float wd, float c1, float c2)
{
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    float gi = g[i], wi = w[i];
    float mi = __fadd_rn(__fmul_rn(b1, m[i]), __fmul_rn(omb1, gi));
    float vi =
        __fadd_rn(__fmul_rn(b2, v[i]), __fmul_rn(__fmul_rn(omb2, gi), gi));
    m[i] = mi;
    v[i] = vi;
    float mhat = __fmul_rn(mi, c1);
    float vhat = __fmul_rn(vi, c2);
    float upd = __fdiv_rn(mhat, __fadd_rn(__fsqrt_rn(vhat), eps));
    float step = __fmul_rn(lr, __fadd_rn(upd, __fmul_rn(wd, wi)));
    w[i] = __fsub_rn(wi, step);
  }
}

/* ---- launchers ---------------------------------------------------------- */

extern "C" bt_status
bt__cu_sgd_update(float *w, const float *g, size_t n, float lr, float wd,
                  cudaStream_t stream)
{
  if (w == NULL || g == NULL || n == 0 || !std::isfinite(lr) ||
      !std::isfinite(wd))
    return BT_EINVAL;
  if (n > SIZE_MAX / sizeof(float))
    return BT_ERANGE;
  sgd_kernel<<<bt__cu_blocks(n, 256), 256, 0, stream>>>(w, g, n, lr, wd);
  return bt__cu_launch_status();
}

extern "C" bt_status
bt__cu_adamw_update(float *w, float *m, float *v, const float *g, size_t n,
                    float lr, float b1, float b2, float eps, float wd,
                    int64_t t, cudaStream_t stream)
{
  if (w == NULL || m == NULL || v == NULL || g == NULL || n == 0 || t < 1)
    return BT_EINVAL;
  /* Written so that NaN fails every test. */
  if (!std::isfinite(lr) || !std::isfinite(wd) || !(b1 >= 0.0f && b1 < 1.0f) ||
      !(b2 >= 0.0f && b2 < 1.0f) || !(eps >= 0.0f && std::isfinite(eps)))
    return BT_EINVAL;
  if (n > SIZE_MAX / sizeof(float))
    return BT_ERANGE;
  /* In double, as the CPU kernel: 1 - b2^t is tiny in early steps. */
  float c1 = (float)(1.0 / (1.0 - pow((double)b1, (double)t)));
  float c2 = (float)(1.0 / (1.0 - pow((double)b2, (double)t)));
  adamw_kernel<<<bt__cu_blocks(n, 256), 256, 0, stream>>>(
      w, m, v, g, n, lr, b1, b2, 1.0f - b1, 1.0f - b2, eps, wd, c1, c2);
  return bt__cu_launch_status();
}
