/* linear: y = x W^T + b, fp32, on CUDA with cuBLAS.
 *
 * The CPU kernel's method: the bias is broadcast into y and the GEMM
 * accumulates onto it (beta = 1), so the bias costs one write of y and
 * needs neither scratch nor cuBLASLt (whose bias epilogue would save that
 * pass, but takes a cublasLtHandle_t and a workspace this API has no room
 * for).  The bias gradient is a column-sum kernel with a fixed reduction
 * tree, so it is bitwise reproducible (no float atomics).
 *
 * cuBLAS is column-major; a row-major [r, c] matrix is its column-major
 * [c, r] transpose, so each row-major product Z = X Y is computed as the
 * column-major Z^T = Y^T X^T, which is why the operands come swapped. */
#include <limits.h>

#include "cuda_common.cuh"
#include "cuda_kernels.h"

/* ---- kernels ------------------------------------------------------------ */

/* y[r, o] = b[o]: the GEMM then adds x W^T. */
static __global__ void
bias_broadcast_kernel(float *__restrict__ y, const float *__restrict__ b,
                      size_t N, size_t OUT)
{
  size_t total = N * OUT;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (size_t)gridDim.x * blockDim.x)
    y[i] = b[i % OUT];
}

#define COLSUM_X 32 /* columns per block, one per lane: coalesced rows */
#define COLSUM_Y 16 /* row slices per block */

/* db[o] += sum over rows of dy[r, o].  A block (COLSUM_X, COLSUM_Y) owns
 * COLSUM_X columns at a time (grid-stride over such tiles); thread (x, y)
 * sums rows y, y + COLSUM_Y, ... of its column in increasing order, then
 * thread (x, 0) adds the COLSUM_Y partial sums in increasing y: a fixed
 * order, so every run gives the same bits. */
static __global__ void
colsum_acc_kernel(float *__restrict__ db, const float *__restrict__ dy,
                  size_t N, size_t OUT)
{
  __shared__ float part[COLSUM_Y][COLSUM_X + 1];

  /* The loop's condition is the same for the whole block, so every thread
   * reaches the barriers. */
  for (size_t o0 = (size_t)blockIdx.x * COLSUM_X; o0 < OUT;
       o0 += (size_t)gridDim.x * COLSUM_X) {
    size_t o = o0 + threadIdx.x;
    float acc = 0.0f;

    if (o < OUT)
      for (size_t r = threadIdx.y; r < N; r += COLSUM_Y)
        acc += dy[r * OUT + o];
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && o < OUT) {
      float s = part[0][threadIdx.x];
      for (int j = 1; j < COLSUM_Y; j++)
        s += part[j][threadIdx.x];
      db[o] += s;
    }
    /* part is rewritten by the next tile. */
    __syncthreads();
  }
}

/* ---- launchers ---------------------------------------------------------- */

/* The CPU kernel's rules: cuBLAS takes int dimensions, and every product
 * we index with must fit size_t. */
static bt_status
check_dims(size_t N, size_t IN, size_t OUT)
{
  size_t t;

  if (N == 0 || IN == 0 || OUT == 0)
    return BT_EINVAL;
  if (N > INT_MAX || IN > INT_MAX || OUT > INT_MAX)
    return BT_ERANGE;
  if (!bt__cu_mul_fits(N, IN, &t) || !bt__cu_mul_fits(N, OUT, &t) ||
      !bt__cu_mul_fits(OUT, IN, &t) || !bt__cu_mul_fits(t, sizeof(float), &t))
    return BT_ERANGE;
  return BT_OK;
}

static bt_status
sgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
      int n, int k, const float *A, int lda, const float *Bm, int ldb,
      float beta, float *Cm, int ldc)
{
  const float alpha = 1.0f;

  return bt__cu_blas_status(
      cublasSgemm(h, ta, tb, m, n, k, &alpha, A, lda, Bm, ldb, &beta, Cm, ldc));
}

/* dx = dy W, [N, IN]: column-major dx^T = W^T dy^T, with W^T the
 * column-major view of W as is. */
static bt_status
bwd_input(float *dx, const float *dy, const float *w, int N, int IN, int OUT,
          cublasHandle_t h)
{
  return sgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, IN, N, OUT, w, IN, dy, OUT, 0.0f,
               dx, IN);
}

/* dW += dy^T x, [OUT, IN]: column-major dW^T = x^T dy, beta = 1 so that
 * microbatches add into the same dW; then db += the column sums of dy. */
static bt_status
bwd_weight(float *dw, float *db, const float *dy, const float *x, int N, int IN,
           int OUT, cublasHandle_t h, cudaStream_t stream)
{
  bt_status st;

  if ((st = sgemm(h, CUBLAS_OP_N, CUBLAS_OP_T, IN, OUT, N, x, IN, dy, OUT, 1.0f,
                  dw, IN)) != BT_OK)
    return st;
  if (db == NULL)
    return BT_OK;
  dim3 block(COLSUM_X, COLSUM_Y);
  colsum_acc_kernel<<<bt__cu_blocks((size_t)OUT, COLSUM_X), block, 0, stream>>>(
      db, dy, (size_t)N, (size_t)OUT);
  return bt__cu_launch_status();
}

extern "C" bt_status
bt__cu_linear_fwd(float *y, const float *x, const float *w, const float *b,
                  size_t N, size_t IN, size_t OUT, cublasHandle_t cublas,
                  cudaStream_t stream)
{
  bt_status st;
  float beta = 0.0f;

  if (y == NULL || x == NULL || w == NULL || cublas == NULL)
    return BT_EINVAL;
  if ((st = check_dims(N, IN, OUT)) != BT_OK)
    return st;
  if ((st = bt__cu_blas_bind(cublas, stream)) != BT_OK)
    return st;
  if (b != NULL) {
    bias_broadcast_kernel<<<bt__cu_blocks(N * OUT, 256), 256, 0, stream>>>(
        y, b, N, OUT);
    if ((st = bt__cu_launch_status()) != BT_OK)
      return st;
    beta = 1.0f;
  }
  /* y = x W^T, [N, OUT]: column-major y^T = W x^T, with W the transpose of
   * W's column-major view. */
  return sgemm(cublas, CUBLAS_OP_T, CUBLAS_OP_N, (int)OUT, (int)N, (int)IN, w,
               (int)IN, x, (int)IN, beta, y, (int)OUT);
}

extern "C" bt_status
bt__cu_linear_bwd_input(float *dx, const float *dy, const float *w, size_t N,
                        size_t IN, size_t OUT, cublasHandle_t cublas,
                        cudaStream_t stream)
{
  bt_status st;

  if (dx == NULL || dy == NULL || w == NULL || cublas == NULL)
    return BT_EINVAL;
  if ((st = check_dims(N, IN, OUT)) != BT_OK)
    return st;
  if ((st = bt__cu_blas_bind(cublas, stream)) != BT_OK)
    return st;
  return bwd_input(dx, dy, w, (int)N, (int)IN, (int)OUT, cublas);
}

extern "C" bt_status
bt__cu_linear_bwd_weight(float *dw, float *db, const float *dy, const float *x,
                         size_t N, size_t IN, size_t OUT, cublasHandle_t cublas,
                         cudaStream_t stream)
{
  bt_status st;

  if (dw == NULL || dy == NULL || x == NULL || cublas == NULL)
    return BT_EINVAL;
  if ((st = check_dims(N, IN, OUT)) != BT_OK)
    return st;
  if ((st = bt__cu_blas_bind(cublas, stream)) != BT_OK)
    return st;
  return bwd_weight(dw, db, dy, x, (int)N, (int)IN, (int)OUT, cublas, stream);
}

extern "C" bt_status
bt__cu_linear_bwd(float *dx, float *dw, float *db, const float *dy,
                  const float *x, const float *w, size_t N, size_t IN,
                  size_t OUT, cublasHandle_t cublas, cudaStream_t stream)
{
  bt_status st;

  if (dx == NULL || dw == NULL || dy == NULL || x == NULL || w == NULL ||
      cublas == NULL)
    return BT_EINVAL;
  if ((st = check_dims(N, IN, OUT)) != BT_OK)
    return st;
  if ((st = bt__cu_blas_bind(cublas, stream)) != BT_OK)
    return st;
  if ((st = bwd_input(dx, dy, w, (int)N, (int)IN, (int)OUT, cublas)) != BT_OK)
    return st;
  return bwd_weight(dw, db, dy, x, (int)N, (int)IN, (int)OUT, cublas, stream);
}
