/* GELU, tanh approximation (as GPT-2 uses), fp32, elementwise. */
#include <math.h>

#include "kernels.h"

/* ---- kernels ------------------------------------------------------------ */

#define GELU_SCALE 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_CUBE 0.044715f

/* No restrict: in place (y == x, dx == dy) is allowed, and each element is
 * read before it is written. */
static void
gelu_fwd(float *y, const float *x, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    float xi = x[i];
    float u = GELU_SCALE * (xi + GELU_CUBE * xi * xi * xi);
    y[i] = 0.5f * xi * (1.0f + tanhf(u));
  }
}

/* d/dx [0.5 x (1 + tanh u)] = 0.5 (1 + tanh u) + 0.5 x sech^2(u) u',
 * with sech^2 = 1 - tanh^2, so one tanhf per element serves both terms. */
static void
gelu_bwd(float *dx, const float *dy, const float *x, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    float xi = x[i];
    float x2 = xi * xi;
    float u = GELU_SCALE * (xi + GELU_CUBE * x2 * xi);
    float th = tanhf(u);
    float du = GELU_SCALE * (1.0f + 3.0f * GELU_CUBE * x2);
    float d = 0.5f * (1.0f + th) + 0.5f * xi * (1.0f - th * th) * du;
    dx[i] = dy[i] * d;
  }
}

/* ---- launchers ---------------------------------------------------------- */

bt_status
bt__gelu_fwd(float *y, const float *x, size_t n)
{
  if (y == NULL || x == NULL || n == 0)
    return BT_EINVAL;
  gelu_fwd(y, x, n);
  return BT_OK;
}

bt_status
bt__gelu_bwd(float *dx, const float *dy, const float *x, size_t n)
{
  if (dx == NULL || dy == NULL || x == NULL || n == 0)
    return BT_EINVAL;
  gelu_bwd(dx, dy, x, n);
  return BT_OK;
}
