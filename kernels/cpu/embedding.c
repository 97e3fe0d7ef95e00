/* embedding: out = wte[token] + wpe[position], fp32.
 *
 * The forward gathers rows; the backward scatter-adds them, one thread, in
 * row order, so a token that occurs many times collects its gradient in
 * the same order every run (a parallel scatter would need atomics, whose
 * order, and so whose rounding, changes from run to run). */
#include <stdint.h>

#include "kernels.h"

/* ---- kernels ------------------------------------------------------------ */

static void
embedding_fwd(float *restrict out, const int32_t *restrict x,
              const float *restrict wte, const float *restrict wpe, size_t B,
              size_t T, size_t C, size_t t0)
{
  for (size_t b = 0; b < B; b++)
    for (size_t t = 0; t < T; t++) {
      float *o = out + (b * T + t) * C;
      const float *we = wte + (size_t)x[b * T + t] * C;
      const float *pe = wpe + (t0 + t) * C;
      for (size_t c = 0; c < C; c++)
        o[c] = we[c] + pe[c];
    }
}

static void
embedding_bwd(float *restrict dwte, float *restrict dwpe,
              const float *restrict dout, const int32_t *restrict x, size_t B,
              size_t T, size_t C, size_t t0)
{
  for (size_t b = 0; b < B; b++)
    for (size_t t = 0; t < T; t++) {
      const float *d = dout + (b * T + t) * C;
      float *gw = dwte + (size_t)x[b * T + t] * C;
      float *gp = dwpe + (t0 + t) * C;
      for (size_t c = 0; c < C; c++)
        gw[c] += d[c];
      for (size_t c = 0; c < C; c++)
        gp[c] += d[c];
    }
}

/* ---- launchers ---------------------------------------------------------- */

/* Shapes and every token id, before anything is written. */
static bt_status
check_args(const int32_t *x, size_t B, size_t T, size_t C, size_t V,
           size_t Tmax, size_t t0)
{
  size_t n, t;

  if (B == 0 || T == 0 || C == 0 || V == 0 || Tmax == 0)
    return BT_EINVAL;
  if (t0 > Tmax || T > Tmax - t0)
    return BT_EINVAL;
  if (!bt__mul_fits(B, T, &n) || !bt__mul_fits(n, C, &t) ||
      !bt__mul_fits(V, C, &t) || !bt__mul_fits(Tmax, C, &t) ||
      !bt__mul_fits(t, sizeof(float), &t))
    return BT_ERANGE;
  for (size_t i = 0; i < n; i++)
    if (x[i] < 0 || (uint64_t)x[i] >= (uint64_t)V)
      return BT_EINVAL;
  return BT_OK;
}

bt_status
bt__embedding_fwd(float *out, const int32_t *x, const float *wte,
                  const float *wpe, size_t B, size_t T, size_t C, size_t V,
                  size_t Tmax, size_t t0)
{
  bt_status st;

  if (out == NULL || x == NULL || wte == NULL || wpe == NULL)
    return BT_EINVAL;
  if ((st = check_args(x, B, T, C, V, Tmax, t0)) != BT_OK)
    return st;
  embedding_fwd(out, x, wte, wpe, B, T, C, t0);
  return BT_OK;
}

bt_status
bt__embedding_bwd(float *dwte, float *dwpe, const float *dout,
                  const int32_t *x, size_t B, size_t T, size_t C, size_t V,
                  size_t Tmax, size_t t0)
{
  bt_status st;

  if (dwte == NULL || dwpe == NULL || dout == NULL || x == NULL)
    return BT_EINVAL;
  if ((st = check_args(x, B, T, C, V, Tmax, t0)) != BT_OK)
    return st;
  embedding_bwd(dwte, dwpe, dout, x, B, T, C, t0);
  return BT_OK;
}
