/* attention: causal multi-head self-attention, fp32, GEMMs through
 * OpenBLAS's CBLAS.
 *
 * Per (batch row b, head h) the head's q, k and v are [T, hs] views of qkv
 * with row stride 3C, and its output a [T, hs] view of out with stride C,
 * so no head is ever copied out: every GEMM takes the strided view as is.
 * The score GEMM computes the whole T x T square, the masked half too:
 * restricting it to the lower triangle would take T GEMVs, slower than the
 * one GEMM at these sizes; the softmax then writes exact zeros above the
 * diagonal, so the masked half never reaches the output. */
#include <cblas.h>
#include <limits.h>
#include <math.h>

#include "kernels.h"

/* ---- kernels ------------------------------------------------------------ */

/* Row i of the scores s [T, T] becomes softmax over s[i, 0..i]; the rest
 * of the row exactly 0.  Subtracting the row's max keeps expf in range. */
static void
causal_softmax(float *restrict s, int T)
{
  for (int i = 0; i < T; i++) {
    float *row = s + (size_t)i * (size_t)T;
    float mx = row[0];
    for (int j = 1; j <= i; j++)
      mx = row[j] > mx ? row[j] : mx;
    float sum = 0.0f;
    for (int j = 0; j <= i; j++) {
      row[j] = expf(row[j] - mx);
      sum += row[j];
    }
    float inv = 1.0f / sum;
    for (int j = 0; j <= i; j++)
      row[j] *= inv;
    for (int j = i + 1; j < T; j++)
      row[j] = 0.0f;
  }
}

static void
attention_fwd(float *restrict out, float *restrict att,
              const float *restrict qkv, int B, int T, int C, int nh)
{
  int hs = C / nh, C3 = 3 * C;
  float scale = 1.0f / sqrtf((float)hs);

  for (int b = 0; b < B; b++)
    for (int h = 0; h < nh; h++) {
      const float *q = qkv + (size_t)b * (size_t)T * (size_t)C3 +
                       (size_t)h * (size_t)hs;
      const float *k = q + C, *v = q + 2 * (size_t)C;
      float *p = att + ((size_t)b * (size_t)nh + (size_t)h) * (size_t)T *
                           (size_t)T;
      float *o = out + (size_t)b * (size_t)T * (size_t)C +
                 (size_t)h * (size_t)hs;

      /* s = scale q k^T, then p = causal softmax(s), then o = p v. */
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, scale,
                  q, C3, k, C3, 0.0f, p, T);
      causal_softmax(p, T);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, 1.0f,
                  p, T, v, C3, 0.0f, o, C);
    }
}

/* With P the probabilities, dO the head's output gradient:
 *   dV = P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(P * dP)),
 *   dQ = scale dS K,  dK = scale dS^T Q.
 * dS is exactly 0 above the diagonal, where P is. */
static void
attention_bwd(float *restrict dqkv, float *restrict work,
              const float *restrict dout, const float *restrict qkv,
              const float *restrict att, int B, int T, int C, int nh)
{
  int hs = C / nh, C3 = 3 * C;
  float scale = 1.0f / sqrtf((float)hs);

  for (int b = 0; b < B; b++)
    for (int h = 0; h < nh; h++) {
      size_t off = (size_t)b * (size_t)T * (size_t)C3 + (size_t)h * (size_t)hs;
      const float *q = qkv + off, *k = q + C, *v = q + 2 * (size_t)C;
      float *dq = dqkv + off, *dk = dq + C, *dv = dq + 2 * (size_t)C;
      const float *p = att + ((size_t)b * (size_t)nh + (size_t)h) *
                                 (size_t)T * (size_t)T;
      const float *dout_h = dout + (size_t)b * (size_t)T * (size_t)C +
                            (size_t)h * (size_t)hs;

      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, 1.0f, p,
                  T, dout_h, C, 0.0f, dv, C3);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, 1.0f,
                  dout_h, C, v, C3, 0.0f, work, T);
      for (int i = 0; i < T; i++) {
        const float *prow = p + (size_t)i * (size_t)T;
        float *drow = work + (size_t)i * (size_t)T;
        float dot = 0.0f;
        for (int j = 0; j <= i; j++)
          dot += prow[j] * drow[j];
        for (int j = 0; j <= i; j++)
          drow[j] = prow[j] * (drow[j] - dot);
        for (int j = i + 1; j < T; j++)
          drow[j] = 0.0f;
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, scale,
                  work, T, k, C3, 0.0f, dq, C3);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, scale,
                  work, T, q, C3, 0.0f, dk, C3);
    }
}

/* ---- launchers ---------------------------------------------------------- */

/* Floats of att, B*nh*T*T, or 0 when that does not fit. */
static size_t
att_floats(size_t B, size_t T, size_t nh)
{
  size_t n;

  if (!bt__mul_fits(B, nh, &n) || !bt__mul_fits(n, T, &n) ||
      !bt__mul_fits(n, T, &n))
    return 0;
  return n;
}

size_t
bt__attention_scratch_bytes(size_t B, size_t T, size_t nh)
{
  size_t n, tt, bytes;

  if (B == 0 || T == 0 || nh == 0 || (n = att_floats(B, T, nh)) == 0)
    return 0;
  if (!bt__mul_fits(T, T, &tt) || __builtin_add_overflow(n, tt, &n) ||
      !bt__mul_fits(n, sizeof(float), &bytes))
    return 0;
  return bytes;
}

/* BLAS takes int dimensions and leading dimensions (3C the largest); every
 * element count we index with must fit size_t. */
static bt_status
check_dims(size_t B, size_t T, size_t C, size_t nh)
{
  size_t t;

  if (B == 0 || T == 0 || C == 0 || nh == 0 || C % nh != 0)
    return BT_EINVAL;
  if (B > INT_MAX || T > INT_MAX || C > INT_MAX / 3 || nh > INT_MAX)
    return BT_ERANGE;
  if (!bt__mul_fits(B, T, &t) || !bt__mul_fits(t, 3 * C, &t) ||
      !bt__mul_fits(t, sizeof(float), &t) ||
      bt__attention_scratch_bytes(B, T, nh) == 0)
    return BT_ERANGE;
  return BT_OK;
}

bt_status
bt__attention_fwd(float *out, float *scratch, const float *qkv, size_t B,
                  size_t T, size_t C, size_t nh)
{
  bt_status st;

  if (out == NULL || scratch == NULL || qkv == NULL)
    return BT_EINVAL;
  if ((st = check_dims(B, T, C, nh)) != BT_OK)
    return st;
  bt__blas_init();
  attention_fwd(out, scratch, qkv, (int)B, (int)T, (int)C, (int)nh);
  return BT_OK;
}

bt_status
bt__attention_bwd(float *dqkv, float *scratch, const float *dout,
                  const float *qkv, size_t B, size_t T, size_t C, size_t nh)
{
  bt_status st;

  if (dqkv == NULL || scratch == NULL || dout == NULL || qkv == NULL)
    return BT_EINVAL;
  if ((st = check_dims(B, T, C, nh)) != BT_OK)
    return st;
  bt__blas_init();
  attention_bwd(dqkv, scratch + att_floats(B, T, nh), dout, qkv, scratch,
                (int)B, (int)T, (int)C, (int)nh);
  return BT_OK;
}
