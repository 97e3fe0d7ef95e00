/* linear: y = x W^T + b, fp32, GEMMs through OpenBLAS's CBLAS.
 *
 * Row-major throughout; W is [OUT, IN] as PyTorch stores it, so the
 * forward multiplies by W transposed and the input gradient by W as is. */
#include <cblas.h>
#include <limits.h>
#include <pthread.h>
#include <string.h>

#include "kernels.h"

/* ---- kernels ------------------------------------------------------------ */

/* OpenBLAS runs single-threaded per call.  The pipeline owns the
 * parallelism: every device (stage) already runs on its own thread, so a
 * threaded GEMM inside each would put stages x OpenBLAS threads on the
 * cores; OpenBLAS also serializes concurrent threaded level-3 calls behind
 * one global lock (level3_lock), so stages would queue on each other, and
 * its workers spin between calls, taking cycles from the other stages.
 * Run in the calling thread, concurrent GEMMs from different stages are
 * independent.  The setting is process-wide (the Debian OpenBLAS, 0.3.21,
 * has no per-thread knob), so it also applies to the host program's own
 * OpenBLAS calls once a baton kernel has run; set once, before the first
 * GEMM, by whichever launcher comes first. */
static pthread_once_t blas_once = PTHREAD_ONCE_INIT;

static void
blas_single_thread(void)
{
  openblas_set_num_threads(1);
}

void
bt__blas_init(void)
{
  pthread_once(&blas_once, blas_single_thread);
}

static void
linear_fwd(float *restrict y, const float *restrict x,
           const float *restrict w, const float *restrict b, int N, int IN,
           int OUT)
{
  float beta = 0.0f;

  /* Seeding y with the bias and accumulating into it (beta = 1) costs one
   * pass over y, the same as OpenBLAS's own scaling pass for beta = 0. */
  if (b != NULL) {
    for (int r = 0; r < N; r++)
      memcpy(y + (size_t)r * (size_t)OUT, b, (size_t)OUT * sizeof(float));
    beta = 1.0f;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OUT, IN, 1.0f, x,
              IN, w, IN, beta, y, OUT);
}

static void
linear_bwd_input(float *restrict dx, const float *restrict dy,
                 const float *restrict w, int N, int IN, int OUT)
{
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, IN, OUT, 1.0f,
              dy, OUT, w, IN, 0.0f, dx, IN);
}

static void
linear_bwd_weight(float *restrict dw, float *restrict db,
                  const float *restrict dy, const float *restrict x, int N,
                  int IN, int OUT)
{
  /* beta = 1: microbatches add their gradients into the same dW. */
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OUT, IN, N, 1.0f, dy,
              OUT, x, IN, 1.0f, dw, IN);
  if (db == NULL)
    return;
  /* Row by row, so both streams are contiguous and the inner loop
   * vectorizes. */
  for (int r = 0; r < N; r++) {
    const float *row = dy + (size_t)r * (size_t)OUT;
    for (int o = 0; o < OUT; o++)
      db[o] += row[o];
  }
}

/* ---- launchers ---------------------------------------------------------- */

/* BLAS takes int dimensions; every product we index with must fit size_t. */
static bt_status
check_dims(size_t N, size_t IN, size_t OUT)
{
  size_t t;

  if (N == 0 || IN == 0 || OUT == 0)
    return BT_EINVAL;
  if (N > INT_MAX || IN > INT_MAX || OUT > INT_MAX)
    return BT_ERANGE;
  if (!bt__mul_fits(N, IN, &t) || !bt__mul_fits(N, OUT, &t) ||
      !bt__mul_fits(OUT, IN, &t) || !bt__mul_fits(t, sizeof(float), &t))
    return BT_ERANGE;
  return BT_OK;
}

bt_status
bt__linear_fwd(float *y, const float *x, const float *w, const float *b,
               size_t N, size_t IN, size_t OUT)
{
  bt_status st;

  if (y == NULL || x == NULL || w == NULL)
    return BT_EINVAL;
  if ((st = check_dims(N, IN, OUT)) != BT_OK)
    return st;
  bt__blas_init();
  linear_fwd(y, x, w, b, (int)N, (int)IN, (int)OUT);
  return BT_OK;
}

bt_status
bt__linear_bwd_input(float *dx, const float *dy, const float *w, size_t N,
                     size_t IN, size_t OUT)
{
  bt_status st;

  if (dx == NULL || dy == NULL || w == NULL)
    return BT_EINVAL;
  if ((st = check_dims(N, IN, OUT)) != BT_OK)
    return st;
  bt__blas_init();
  linear_bwd_input(dx, dy, w, (int)N, (int)IN, (int)OUT);
  return BT_OK;
}

bt_status
bt__linear_bwd_weight(float *dw, float *db, const float *dy, const float *x,
                      size_t N, size_t IN, size_t OUT)
{
  bt_status st;

  if (dw == NULL || dy == NULL || x == NULL)
    return BT_EINVAL;
  if ((st = check_dims(N, IN, OUT)) != BT_OK)
    return st;
  bt__blas_init();
  linear_bwd_weight(dw, db, dy, x, (int)N, (int)IN, (int)OUT);
  return BT_OK;
}

bt_status
bt__linear_bwd(float *dx, float *dw, float *db, const float *dy,
               const float *x, const float *w, size_t N, size_t IN,
               size_t OUT)
{
  bt_status st;

  if (dx == NULL || dw == NULL || dy == NULL || x == NULL || w == NULL)
    return BT_EINVAL;
  if ((st = check_dims(N, IN, OUT)) != BT_OK)
    return st;
  bt__blas_init();
  linear_bwd_input(dx, dy, w, (int)N, (int)IN, (int)OUT);
  linear_bwd_weight(dw, db, dy, x, (int)N, (int)IN, (int)OUT);
  return BT_OK;
}
