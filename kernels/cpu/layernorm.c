/* LayerNorm over the last dimension D, fp32, biased variance. */
#include <math.h>

#include "kernels.h"

/* ---- kernels ------------------------------------------------------------ */

/* Two passes over the row (mean, then the centred sum of squares) rather
 * than E[x^2] - mean^2, which cancels badly when |mean| >> std. */
static void
layernorm_fwd(float *restrict y, float *restrict mean, float *restrict rstd,
              const float *restrict x, const float *restrict gamma,
              const float *restrict beta, size_t N, size_t D)
{
  for (size_t r = 0; r < N; r++) {
    const float *xr = x + r * D;
    float *yr = y + r * D;
    float m = 0.0f, var = 0.0f;

    for (size_t i = 0; i < D; i++)
      m += xr[i];
    m /= (float)D;
    for (size_t i = 0; i < D; i++) {
      float c = xr[i] - m;
      var += c * c;
    }
    var /= (float)D;
    float s = 1.0f / sqrtf(var + BT__LAYERNORM_EPS);
    for (size_t i = 0; i < D; i++)
      yr[i] = (xr[i] - m) * s * gamma[i] + beta[i];
    mean[r] = m;
    rstd[r] = s;
  }
}

/* With xhat = (x - mean) rstd and g = dy gamma, the row's input gradient
 * is rstd (g - mean(g) - xhat mean(g xhat)): the two means are the
 * gradient flowing through mean and rstd.  dx may be dy: each element of
 * the row is read in the last loop just before it is written, so no
 * restrict on those two. */
static void
layernorm_bwd(float *dx, float *restrict dgamma, float *restrict dbeta,
              const float *dy, const float *restrict x,
              const float *restrict gamma, const float *restrict mean,
              const float *restrict rstd, size_t N, size_t D)
{
  for (size_t r = 0; r < N; r++) {
    const float *xr = x + r * D;
    const float *dyr = dy + r * D;
    float *dxr = dx + r * D;
    float m = mean[r], s = rstd[r];
    float g_mean = 0.0f, gx_mean = 0.0f;

    for (size_t i = 0; i < D; i++) {
      float xhat = (xr[i] - m) * s;
      float g = dyr[i] * gamma[i];
      g_mean += g;
      gx_mean += g * xhat;
    }
    g_mean /= (float)D;
    gx_mean /= (float)D;
    for (size_t i = 0; i < D; i++) {
      float xhat = (xr[i] - m) * s;
      float d = dyr[i];
      dbeta[i] += d;
      dgamma[i] += d * xhat;
      dxr[i] = s * (d * gamma[i] - g_mean - xhat * gx_mean);
    }
  }
}

/* ---- launchers ---------------------------------------------------------- */

bt_status
bt__layernorm_fwd(float *y, float *mean, float *rstd, const float *x,
                  const float *gamma, const float *beta, size_t N, size_t D)
{
  size_t nd;

  if (y == NULL || mean == NULL || rstd == NULL || x == NULL ||
      gamma == NULL || beta == NULL || N == 0 || D == 0)
    return BT_EINVAL;
  if (!bt__mul_fits(N, D, &nd))
    return BT_ERANGE;
  layernorm_fwd(y, mean, rstd, x, gamma, beta, N, D);
  return BT_OK;
}

bt_status
bt__layernorm_bwd(float *dx, float *dgamma, float *dbeta, const float *dy,
                  const float *x, const float *gamma, const float *mean,
                  const float *rstd, size_t N, size_t D)
{
  size_t nd;

  if (dx == NULL || dgamma == NULL || dbeta == NULL || dy == NULL ||
      x == NULL || gamma == NULL || mean == NULL || rstd == NULL || N == 0 ||
      D == 0)
    return BT_EINVAL;
  if (!bt__mul_fits(N, D, &nd))
    return BT_ERANGE;
  layernorm_bwd(dx, dgamma, dbeta, dy, x, gamma, mean, rstd, N, D);
  return BT_OK;
}
