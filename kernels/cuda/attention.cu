/* attention: causal multi-head self-attention, fp32, on CUDA with cuBLAS.
 *
 * cuBLAS's strided-batched GEMM wants one stride between the heads' matrices,
 * which the [B, T, 3C] qkv rows do not have (a head's next batch row is
 * 3*T*C floats on, its next head hs), so q, k and v are first permuted to
 * [B, nh, T, hs] and the heads' outputs permuted back, as llm.c does.  The
 * score GEMM computes the whole T x T square, the masked half too (one
 * batched GEMM beats T small ones); the softmax writes exact zeros above
 * the diagonal, so that half never reaches the output.
 *
 * cuBLAS is column-major; a row-major [r, c] matrix is its column-major
 * [c, r] transpose, so each row-major product Z = X Y is computed as the
 * column-major Z^T = Y^T X^T, which is why the operands come swapped. */
#include <limits.h>
#include <math.h>

#include "cuda_common.cuh"
#include "cuda_kernels.h"

/* ---- kernels ------------------------------------------------------------ */

/* [B, T, 3, nh, hs] (qkv) to three [B, nh, T, hs]. */
static __global__ void
permute_kernel(float *__restrict__ q, float *__restrict__ k,
               float *__restrict__ v, const float *__restrict__ qkv, size_t B,
               size_t T, size_t nh, size_t hs)
{
  size_t C = nh * hs, total = B * T * C;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (size_t)gridDim.x * blockDim.x) {
    /* i indexes [B, nh, T, hs]. */
    size_t d = i % hs, t = (i / hs) % T, h = (i / (hs * T)) % nh,
           b = i / (hs * T * nh);
    size_t src = (b * T + t) * 3 * C + h * hs + d;
    q[i] = qkv[src];
    k[i] = qkv[src + C];
    v[i] = qkv[src + 2 * C];
  }
}

/* Three [B, nh, T, hs] back to [B, T, 3, nh, hs]. */
static __global__ void
unpermute3_kernel(float *__restrict__ dqkv, const float *__restrict__ dq,
                  const float *__restrict__ dk, const float *__restrict__ dv,
                  size_t B, size_t T, size_t nh, size_t hs)
{
  size_t C = nh * hs, total = B * T * C;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (size_t)gridDim.x * blockDim.x) {
    size_t d = i % hs, t = (i / hs) % T, h = (i / (hs * T)) % nh,
           b = i / (hs * T * nh);
    size_t dst = (b * T + t) * 3 * C + h * hs + d;
    dqkv[dst] = dq[i];
    dqkv[dst + C] = dk[i];
    dqkv[dst + 2 * C] = dv[i];
  }
}

/* [B, nh, T, hs] to [B, T, nh, hs] (to_heads = false), or back. */
static __global__ void
heads_kernel(float *__restrict__ dst, const float *__restrict__ src, size_t B,
             size_t T, size_t nh, size_t hs, bool to_heads)
{
  size_t total = B * T * nh * hs;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (size_t)gridDim.x * blockDim.x) {
    /* i indexes [B, nh, T, hs]; j the same element in [B, T, nh, hs]. */
    size_t d = i % hs, t = (i / hs) % T, h = (i / (hs * T)) % nh,
           b = i / (hs * T * nh);
    size_t j = ((b * T + t) * nh + h) * hs + d;
    if (to_heads)
      dst[i] = src[j];
    else
      dst[j] = src[i];
  }
}

/* One warp per row of the [B*nh*T, T] scores, in place: row i (of its
 * head's T) becomes softmax(scale * s[0..i]), the rest exact zeros.
 * Subtracting the row's max keeps expf in range; expf, not __expf, for
 * the CPU's accuracy. */
static __global__ void
softmax_fwd_kernel(float *att, size_t rows, int T, float scale)
{
  int lane = threadIdx.x % 32;
  size_t warp = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32,
         nwarps = (size_t)gridDim.x * blockDim.x / 32;

  for (size_t r = warp; r < rows; r += nwarps) {
    float *row = att + r * (size_t)T;
    int i = (int)(r % (size_t)T);
    float mx = -INFINITY;
    for (int j = lane; j <= i; j += 32)
      mx = fmaxf(mx, row[j] * scale);
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int j = lane; j <= i; j += 32)
      sum += expf(row[j] * scale - mx);
    float inv = 1.0f / warp_sum(sum);
    for (int j = lane; j < T; j += 32)
      row[j] = j <= i ? expf(row[j] * scale - mx) * inv : 0.0f;
  }
}

/* One warp per row, in place on datt (dP in, scaled dS out):
 *   dS = P * (dP - rowsum(P * dP)),
 * times scale, as the scores were scale * q k^T.  Exact zeros above the
 * diagonal, where P is 0. */
static __global__ void
softmax_bwd_kernel(float *datt, const float *att, size_t rows, int T,
                   float scale)
{
  int lane = threadIdx.x % 32;
  size_t warp = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32,
         nwarps = (size_t)gridDim.x * blockDim.x / 32;

  for (size_t r = warp; r < rows; r += nwarps) {
    float *drow = datt + r * (size_t)T;
    const float *prow = att + r * (size_t)T;
    int i = (int)(r % (size_t)T);
    float dot = 0.0f;
    for (int j = lane; j <= i; j += 32)
      dot += prow[j] * drow[j];
    dot = warp_sum(dot);
    for (int j = lane; j < T; j += 32)
      drow[j] = j <= i ? scale * (prow[j] * (drow[j] - dot)) : 0.0f;
  }
}

/* ---- launchers ---------------------------------------------------------- */

/* Float counts of the scratch's parts. */
struct layout {
  size_t att;  /* B*nh*T*T */
  size_t head; /* B*T*C: one of q, k, v, y, dq, dk, dv */
  size_t total;
};

static bool
get_layout(size_t B, size_t T, size_t C, size_t nh, struct layout *l)
{
  size_t a, h, t;

  if (B == 0 || T == 0 || C == 0 || nh == 0 || C % nh != 0)
    return false;
  if (!bt__cu_mul_fits(B, nh, &a) || !bt__cu_mul_fits(a, T, &a) ||
      !bt__cu_mul_fits(a, T, &a) || !bt__cu_mul_fits(B, T, &h) ||
      !bt__cu_mul_fits(h, C, &h))
    return false;
  /* 2 att + 7 heads, and in bytes. */
  if (!bt__cu_mul_fits(a, 2, &t) || !bt__cu_mul_fits(h, 7, &l->total) ||
      __builtin_add_overflow(t, l->total, &l->total) ||
      !bt__cu_mul_fits(l->total, sizeof(float), &t))
    return false;
  l->att = a;
  l->head = h;
  return true;
}

extern "C" size_t
bt__cu_attention_scratch_bytes(size_t B, size_t T, size_t C, size_t nh)
{
  struct layout l;

  return get_layout(B, T, C, nh, &l) ? l.total * sizeof(float) : 0;
}

/* cuBLAS takes int dimensions and batch counts; qkv's element count must
 * fit size_t (3C included). */
static bt_status
check_dims(size_t B, size_t T, size_t C, size_t nh, struct layout *l)
{
  size_t t;

  if (B == 0 || T == 0 || C == 0 || nh == 0 || C % nh != 0)
    return BT_EINVAL;
  if (T > INT_MAX || C > INT_MAX / 3 || nh > INT_MAX ||
      B > (size_t)INT_MAX / nh)
    return BT_ERANGE;
  if (!bt__cu_mul_fits(B, T, &t) || !bt__cu_mul_fits(t, 3 * C, &t) ||
      !bt__cu_mul_fits(t, sizeof(float), &t) || !get_layout(B, T, C, nh, l))
    return BT_ERANGE;
  return BT_OK;
}

/* One strided-batched fp32 GEMM, C = alpha op(A) op(B) + 0 C, column-major,
 * over `batch` matrices. */
static bt_status
gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
     int k, float alpha, const float *A, int lda, long long sa, const float *Bm,
     int ldb, long long sb, float *Cm, int ldc, long long sc, int batch)
{
  const float beta = 0.0f;

  return bt__cu_blas_status(
      cublasSgemmStridedBatched(h, ta, tb, m, n, k, &alpha, A, lda, sa, Bm, ldb,
                                sb, &beta, Cm, ldc, sc, batch));
}

#define SOFTMAX_THREADS 256 /* 8 warps, one row each */

extern "C" bt_status
bt__cu_attention_fwd(float *out, float *scratch, const float *qkv, size_t B,
                     size_t T, size_t C, size_t nh, cublasHandle_t cublas,
                     cudaStream_t stream)
{
  struct layout l;
  bt_status st;

  if (out == NULL || scratch == NULL || qkv == NULL || cublas == NULL)
    return BT_EINVAL;
  if ((st = check_dims(B, T, C, nh, &l)) != BT_OK)
    return st;
  size_t hs = C / nh, rows = B * nh * T;
  int iT = (int)T, ihs = (int)hs, batch = (int)(B * nh);
  long long sTT = (long long)(T * T), sTh = (long long)(T * hs);
  float *att = scratch, *q = att + l.att, *k = q + l.head, *v = k + l.head,
        *y = v + l.head;

  if ((st = bt__cu_blas_bind(cublas, stream)) != BT_OK)
    return st;
  permute_kernel<<<bt__cu_blocks(B * T * C, 256), 256, 0, stream>>>(
      q, k, v, qkv, B, T, nh, hs);
  if ((st = bt__cu_launch_status()) != BT_OK)
    return st;
  /* Scores S = q k^T, row-major [T, T]: column-major S^T = k q^T. */
  if ((st = gemm(cublas, CUBLAS_OP_T, CUBLAS_OP_N, iT, iT, ihs, 1.0f, k, ihs,
                 sTh, q, ihs, sTh, att, iT, sTT, batch)) != BT_OK)
    return st;
  softmax_fwd_kernel<<<bt__cu_blocks(rows, SOFTMAX_THREADS / 32),
                       SOFTMAX_THREADS, 0, stream>>>(att, rows, iT,
                                                     1.0f / sqrtf((float)hs));
  if ((st = bt__cu_launch_status()) != BT_OK)
    return st;
  /* y = P v, [T, hs]: column-major y^T = v^T P^T. */
  if ((st = gemm(cublas, CUBLAS_OP_N, CUBLAS_OP_N, ihs, iT, iT, 1.0f, v, ihs,
                 sTh, att, iT, sTT, y, ihs, sTh, batch)) != BT_OK)
    return st;
  heads_kernel<<<bt__cu_blocks(B * T * C, 256), 256, 0, stream>>>(
      out, y, B, T, nh, hs, false);
  return bt__cu_launch_status();
}

/* With P the probabilities, dO the head's output gradient:
 *   dV = P^T dO,  dP = dO V^T,  dS = scale P * (dP - rowsum(P * dP)),
 *   dQ = dS K,  dK = dS^T Q. */
extern "C" bt_status
bt__cu_attention_bwd(float *dqkv, float *scratch, const float *dout,
                     const float *qkv, size_t B, size_t T, size_t C, size_t nh,
                     cublasHandle_t cublas, cudaStream_t stream)
{
  struct layout l;
  bt_status st;

  if (dqkv == NULL || scratch == NULL || dout == NULL || qkv == NULL ||
      cublas == NULL)
    return BT_EINVAL;
  if ((st = check_dims(B, T, C, nh, &l)) != BT_OK)
    return st;
  size_t hs = C / nh, rows = B * nh * T;
  int iT = (int)T, ihs = (int)hs, batch = (int)(B * nh);
  long long sTT = (long long)(T * T), sTh = (long long)(T * hs);
  const float *att = scratch;
  float *q = scratch + l.att, *k = q + l.head, *v = k + l.head,
        *dy = v + l.head, *datt = dy + l.head, *dq = datt + l.att,
        *dk = dq + l.head, *dv = dk + l.head;

  if ((st = bt__cu_blas_bind(cublas, stream)) != BT_OK)
    return st;
  /* From the qkv argument, as the CPU kernel reads it, not from what the
   * forward left in the workspace. */
  permute_kernel<<<bt__cu_blocks(B * T * C, 256), 256, 0, stream>>>(
      q, k, v, qkv, B, T, nh, hs);
  if ((st = bt__cu_launch_status()) != BT_OK)
    return st;
  heads_kernel<<<bt__cu_blocks(B * T * C, 256), 256, 0, stream>>>(
      dy, dout, B, T, nh, hs, true);
  if ((st = bt__cu_launch_status()) != BT_OK)
    return st;
  /* dP = dO V^T, [T, T]: column-major dP^T = V dO^T. */
  if ((st = gemm(cublas, CUBLAS_OP_T, CUBLAS_OP_N, iT, iT, ihs, 1.0f, v, ihs,
                 sTh, dy, ihs, sTh, datt, iT, sTT, batch)) != BT_OK)
    return st;
  /* dV = P^T dO, [T, hs]: column-major dV^T = dO^T P. */
  if ((st = gemm(cublas, CUBLAS_OP_N, CUBLAS_OP_T, ihs, iT, iT, 1.0f, dy, ihs,
                 sTh, att, iT, sTT, dv, ihs, sTh, batch)) != BT_OK)
    return st;
  softmax_bwd_kernel<<<bt__cu_blocks(rows, SOFTMAX_THREADS / 32),
                       SOFTMAX_THREADS, 0, stream>>>(datt, att, rows, iT,
                                                     1.0f / sqrtf((float)hs));
  if ((st = bt__cu_launch_status()) != BT_OK)
    return st;
  /* dQ = dS K, [T, hs]: column-major dQ^T = K^T dS^T. */
  if ((st = gemm(cublas, CUBLAS_OP_N, CUBLAS_OP_N, ihs, iT, iT, 1.0f, k, ihs,
                 sTh, datt, iT, sTT, dq, ihs, sTh, batch)) != BT_OK)
    return st;
  /* dK = dS^T Q, [T, hs]: column-major dK^T = Q^T dS. */
  if ((st = gemm(cublas, CUBLAS_OP_N, CUBLAS_OP_T, ihs, iT, iT, 1.0f, q, ihs,
                 sTh, datt, iT, sTT, dk, ihs, sTh, batch)) != BT_OK)
    return st;
  unpermute3_kernel<<<bt__cu_blocks(B * T * C, 256), 256, 0, stream>>>(
      dqkv, dq, dk, dv, B, T, nh, hs);
  return bt__cu_launch_status();
}
