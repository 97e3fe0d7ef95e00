/* dropout with a counter-based generator, fp32, on CUDA.
 *
 * The same Philox4x32-10 as kernels/cpu/dropout.c (Salmon et al., SC'11):
 * the mask of element (row, col) is a pure function of (seed, step, layer,
 * global row, col), so the GPU draws bitwise the CPU's mask, for any split
 * of the batch and on recomputation.  One thread per Philox block, i.e.
 * per 4 columns of a row.  The backward redraws the mask. */
#include "cuda_common.cuh"
#include "cuda_kernels.h"

/* ---- kernels ------------------------------------------------------------ */

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u /* golden ratio */
#define PHILOX_W1 0xBB67AE85u /* sqrt(3) - 1 */

static __device__ __forceinline__ uint4
philox4x32_10(uint4 c, uint2 k)
{
#pragma unroll
  for (int r = 0; r < 10; r++) {
    if (r > 0) {
      k.x += PHILOX_W0;
      k.y += PHILOX_W1;
    }
    uint32_t hi0 = __umulhi(PHILOX_M0, c.x), lo0 = PHILOX_M0 * c.x;
    uint32_t hi1 = __umulhi(PHILOX_M1, c.z), lo1 = PHILOX_M1 * c.z;
    c = make_uint4(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
  }
  return c;
}

static __global__ void
dropout_kernel(float *y, const float *x, size_t N, size_t D, float p,
               float scale, uint2 key, uint32_t step, uint32_t layer,
               uint32_t row_offset)
{
  size_t blocks_per_row = (D + 3) / 4, total = N * blocks_per_row;

  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (size_t)gridDim.x * blockDim.x) {
    size_t r = i / blocks_per_row, cb = i - r * blocks_per_row;
    /* row_offset + r < 2^32: checked by the launcher. */
    uint4 w = philox4x32_10(
        make_uint4((uint32_t)cb, row_offset + (uint32_t)r, step, layer), key);
    uint32_t ws[4] = {w.x, w.y, w.z, w.w};
    size_t c0 = cb * 4, n = D - c0 < 4 ? D - c0 : 4;
    const float *xr = x + r * D + c0;
    float *yr = y + r * D + c0;
    for (size_t j = 0; j < n; j++) {
      /* w >> 8 < 2^24: exact in float, as is the scaling by 2^-24. */
      float u = (float)(ws[j] >> 8) * 0x1.0p-24f;
      yr[j] = u >= p ? __fmul_rn(xr[j], scale) : 0.0f;
    }
  }
}

static __global__ void
philox_kernel(uint32_t *out, const uint32_t *ctr, uint2 key, size_t n)
{
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    uint4 w = philox4x32_10(
        make_uint4(ctr[4 * i], ctr[4 * i + 1], ctr[4 * i + 2], ctr[4 * i + 3]),
        key);
    out[4 * i] = w.x;
    out[4 * i + 1] = w.y;
    out[4 * i + 2] = w.z;
    out[4 * i + 3] = w.w;
  }
}

/* ---- launchers ---------------------------------------------------------- */

/* The CPU kernel's rules. */
static bt_status
check_args(size_t N, size_t D, float p, size_t row_offset)
{
  size_t t;

  if (N == 0 || D == 0 || !(p >= 0.0f && p < 1.0f))
    return BT_EINVAL;
  if (!bt__cu_mul_fits(N, D, &t) || !bt__cu_mul_fits(t, sizeof(float), &t))
    return BT_ERANGE;
  if ((uint64_t)row_offset > UINT32_MAX ||
      (uint64_t)N > (uint64_t)UINT32_MAX + 1 - (uint64_t)row_offset ||
      (uint64_t)(D - 1) / 4 > UINT32_MAX)
    return BT_ERANGE;
  return BT_OK;
}

static bt_status
dropout_launch(float *y, const float *x, size_t N, size_t D, float p,
               uint64_t seed, uint32_t step, uint32_t layer, size_t row_offset,
               cudaStream_t stream)
{
  bt_status st;

  if (y == NULL || x == NULL)
    return BT_EINVAL;
  if ((st = check_args(N, D, p, row_offset)) != BT_OK)
    return st;
  if (p == 0.0f) { /* every u >= 0: the identity, without drawing */
    if (y == x)
      return BT_OK;
    return bt__cu_status(cudaMemcpyAsync(y, x, N * D * sizeof(float),
                                         cudaMemcpyDeviceToDevice, stream));
  }
  uint2 key = make_uint2((uint32_t)seed, (uint32_t)(seed >> 32));
  dropout_kernel<<<bt__cu_blocks(N * ((D + 3) / 4), 256), 256, 0, stream>>>(
      y, x, N, D, p, 1.0f / (1.0f - p), key, step, layer, (uint32_t)row_offset);
  return bt__cu_launch_status();
}

extern "C" bt_status
bt__cu_dropout_fwd(float *y, const float *x, size_t N, size_t D, float p,
                   uint64_t seed, uint32_t step, uint32_t layer,
                   size_t row_offset, cudaStream_t stream)
{
  return dropout_launch(y, x, N, D, p, seed, step, layer, row_offset, stream);
}

/* The backward of y = x * m * s is dx = dy * m * s: the same operation on
 * dy, with the same mask. */
extern "C" bt_status
bt__cu_dropout_bwd(float *dx, const float *dy, size_t N, size_t D, float p,
                   uint64_t seed, uint32_t step, uint32_t layer,
                   size_t row_offset, cudaStream_t stream)
{
  return dropout_launch(dx, dy, N, D, p, seed, step, layer, row_offset, stream);
}

extern "C" bt_status
bt__cu_philox4x32_10(uint32_t *out, const uint32_t *ctr, const uint32_t key[2],
                     size_t n, cudaStream_t stream)
{
  size_t t;

  if (out == NULL || ctr == NULL || key == NULL || n == 0)
    return BT_EINVAL;
  if (!bt__cu_mul_fits(n, 4 * sizeof(uint32_t), &t))
    return BT_ERANGE;
  philox_kernel<<<bt__cu_blocks(n, 256), 256, 0, stream>>>(
      out, ctr, make_uint2(key[0], key[1]), n);
  return bt__cu_launch_status();
}
