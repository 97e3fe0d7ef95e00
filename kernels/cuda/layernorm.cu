/* LayerNorm over the last dimension D, fp32, biased variance, on CUDA.
 *
 * The forward and the input gradient take one warp per row, two passes
 * over the row as the CPU kernel (the mean, then the centred sum of
 * squares, rather than E[x^2] - mean^2, which cancels badly).  dgamma and
 * dbeta are column sums over the rows: a kernel with a fixed reduction
 * tree, so they are bitwise reproducible without float atomics.  Sums run
 * in a different order than the CPU's sequential loops: the results agree
 * to rounding, not bitwise. */
#include <math.h>

#include "cuda_common.cuh"
#include "cuda_kernels.h"

/* ---- kernels ------------------------------------------------------------ */

#define ROW_THREADS 256 /* 8 warps, one row each */

static __global__ void
layernorm_fwd_kernel(float *__restrict__ y, float *__restrict__ mean,
                     float *__restrict__ rstd, const float *__restrict__ x,
                     const float *__restrict__ gamma,
                     const float *__restrict__ beta, size_t N, size_t D)
{
  int lane = threadIdx.x % 32;
  size_t warp = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32,
         nwarps = (size_t)gridDim.x * blockDim.x / 32;

  for (size_t r = warp; r < N; r += nwarps) {
    const float *xr = x + r * D;
    float *yr = y + r * D;
    float m = 0.0f, var = 0.0f;

    for (size_t i = lane; i < D; i += 32)
      m += xr[i];
    m = warp_sum(m) / (float)D;
    for (size_t i = lane; i < D; i += 32) {
      float c = xr[i] - m;
      var += c * c;
    }
    var = warp_sum(var) / (float)D;
    float s = 1.0f / sqrtf(var + BT__CU_LAYERNORM_EPS);
    for (size_t i = lane; i < D; i += 32)
      yr[i] = (xr[i] - m) * s * gamma[i] + beta[i];
    if (lane == 0) {
      mean[r] = m;
      rstd[r] = s;
    }
  }
}

/* With xhat = (x - mean) rstd and g = dy gamma, the row's input gradient
 * is rstd (g - mean(g) - xhat mean(g xhat)).  dx may be dy: each lane
 * reads an element of dy in the last loop just before it writes the same
 * element of dx, and the row's sums are complete (warp_sum is a barrier
 * for the warp) before the first write; no __restrict__ on those two. */
static __global__ void
layernorm_bwd_dx_kernel(float *dx, const float *dy, const float *__restrict__ x,
                        const float *__restrict__ gamma,
                        const float *__restrict__ mean,
                        const float *__restrict__ rstd, size_t N, size_t D)
{
  int lane = threadIdx.x % 32;
  size_t warp = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32,
         nwarps = (size_t)gridDim.x * blockDim.x / 32;

  for (size_t r = warp; r < N; r += nwarps) {
    const float *xr = x + r * D;
    const float *dyr = dy + r * D;
    float *dxr = dx + r * D;
    float m = mean[r], s = rstd[r];
    float g_mean = 0.0f, gx_mean = 0.0f;

    for (size_t i = lane; i < D; i += 32) {
      float xhat = (xr[i] - m) * s;
      float g = dyr[i] * gamma[i];
      g_mean += g;
      gx_mean += g * xhat;
    }
    g_mean = warp_sum(g_mean) / (float)D;
    gx_mean = warp_sum(gx_mean) / (float)D;
    for (size_t i = lane; i < D; i += 32) {
      float xhat = (xr[i] - m) * s;
      dxr[i] = s * (dyr[i] * gamma[i] - g_mean - xhat * gx_mean);
    }
  }
}

#define COLSUM_X 32 /* columns per block, one per lane: coalesced rows */
#define COLSUM_Y 16 /* row slices per block */

/* dbeta[i] += sum_r dy[r, i], dgamma[i] += sum_r dy[r, i] xhat[r, i].  A
 * block (COLSUM_X, COLSUM_Y) owns COLSUM_X columns at a time (grid-stride
 * over such tiles); thread (c, j) sums rows j, j + COLSUM_Y, ... in
 * increasing order, then thread (c, 0) adds the partials in increasing j:
 * a fixed order, so every run gives the same bits. */
static __global__ void
layernorm_bwd_params_kernel(float *__restrict__ dgamma,
                            float *__restrict__ dbeta,
                            const float *__restrict__ dy,
                            const float *__restrict__ x,
                            const float *__restrict__ mean,
                            const float *__restrict__ rstd, size_t N, size_t D)
{
  __shared__ float pg[COLSUM_Y][COLSUM_X + 1];
  __shared__ float pb[COLSUM_Y][COLSUM_X + 1];

  /* The loop's condition is the same for the whole block, so every thread
   * reaches the barriers. */
  for (size_t c0 = (size_t)blockIdx.x * COLSUM_X; c0 < D;
       c0 += (size_t)gridDim.x * COLSUM_X) {
    size_t c = c0 + threadIdx.x;
    float ag = 0.0f, ab = 0.0f;

    if (c < D)
      for (size_t r = threadIdx.y; r < N; r += COLSUM_Y) {
        float d = dy[r * D + c];
        ab += d;
        ag += d * ((x[r * D + c] - mean[r]) * rstd[r]);
      }
    pg[threadIdx.y][threadIdx.x] = ag;
    pb[threadIdx.y][threadIdx.x] = ab;
    __syncthreads();
    if (threadIdx.y == 0 && c < D) {
      float sg = pg[0][threadIdx.x], sb = pb[0][threadIdx.x];
      for (int j = 1; j < COLSUM_Y; j++) {
        sg += pg[j][threadIdx.x];
        sb += pb[j][threadIdx.x];
      }
      dgamma[c] += sg;
      dbeta[c] += sb;
    }
    /* pg and pb are rewritten by the next tile. */
    __syncthreads();
  }
}

/* ---- launchers ---------------------------------------------------------- */

static bt_status
check_dims(size_t N, size_t D)
{
  size_t t;

  if (N == 0 || D == 0)
    return BT_EINVAL;
  if (!bt__cu_mul_fits(N, D, &t) || !bt__cu_mul_fits(t, sizeof(float), &t))
    return BT_ERANGE;
  return BT_OK;
}

extern "C" bt_status
bt__cu_layernorm_fwd(float *y, float *mean, float *rstd, const float *x,
                     const float *gamma, const float *beta, size_t N, size_t D,
                     cudaStream_t stream)
{
  bt_status st;

  if (y == NULL || mean == NULL || rstd == NULL || x == NULL || gamma == NULL ||
      beta == NULL)
    return BT_EINVAL;
  if ((st = check_dims(N, D)) != BT_OK)
    return st;
  layernorm_fwd_kernel<<<bt__cu_blocks(N, ROW_THREADS / 32), ROW_THREADS, 0,
                         stream>>>(y, mean, rstd, x, gamma, beta, N, D);
  return bt__cu_launch_status();
}

extern "C" bt_status
bt__cu_layernorm_bwd(float *dx, float *dgamma, float *dbeta, const float *dy,
                     const float *x, const float *gamma, const float *mean,
                     const float *rstd, size_t N, size_t D, cudaStream_t stream)
{
  bt_status st;

  if (dx == NULL || dgamma == NULL || dbeta == NULL || dy == NULL ||
      x == NULL || gamma == NULL || mean == NULL || rstd == NULL)
    return BT_EINVAL;
  if ((st = check_dims(N, D)) != BT_OK)
    return st;
  /* The parameter gradients first: they read dy, which dx may overwrite. */
  dim3 block(COLSUM_X, COLSUM_Y);
  layernorm_bwd_params_kernel<<<bt__cu_blocks(D, COLSUM_X), block, 0, stream>>>(
      dgamma, dbeta, dy, x, mean, rstd, N, D);
  if ((st = bt__cu_launch_status()) != BT_OK)
    return st;
  layernorm_bwd_dx_kernel<<<bt__cu_blocks(N, ROW_THREADS / 32), ROW_THREADS, 0,
                            stream>>>(dx, dy, x, gamma, mean, rstd, N, D);
  return bt__cu_launch_status();
}
