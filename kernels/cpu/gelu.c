/* GELU, tanh approximation (as GPT-2 uses), fp32, elementwise. */
#include <math.h>

#include "kernels.h"

/* ---- kernels ------------------------------------------------------------ */

#define GELU_SCALE 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_CUBE 0.044715f

/* Both directions use 0.5 (1 + tanh u) = s, the logistic sigmoid of 2u,
 * s = 1 / (1 + q) with q = exp(-2u), and 1 - tanh^2 u = 4 s (1 - s) with
 * 1 - s = q s.  Why not tanhf: glibc's goes through expm1f and costs ~12 ns
 * an element here against ~2 ns for expf, which made the GELU of an MLP as
 * slow as the GEMM before it; and 1 - tanh^2 from a rounded tanh loses all
 * its digits where tanh is near +-1, while q s keeps them.  u is clamped
 * to +-40 so that q neither overflows (q s would be inf * 0) nor takes
 * expf's slow out-of-range paths; past 40, s is 1 or below 2e-35, so
 * nothing visible in fp32 changes. */
static inline float
gelu_u(float x)
{
  float u = GELU_SCALE * (x + GELU_CUBE * x * x * x);
  /* Comparisons, not fminf/fmaxf: those are libm calls at -O2 (NaN rules),
   * and a NaN u passes through these unchanged. */
  return u < -40.0f ? -40.0f : (u > 40.0f ? 40.0f : u);
}

/* No restrict: in place (y == x, dx == dy) is allowed, and each element is
 * read before it is written. */
static void
gelu_fwd(float *y, const float *x, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    float xi = x[i];
    y[i] = xi / (1.0f + expf(-2.0f * gelu_u(xi)));
  }
}

/* d/dx [0.5 x (1 + tanh u)] = 0.5 (1 + tanh u) + 0.5 x sech^2(u) u'
 *                           = s + 2 x s (1 - s) u'. */
static void
gelu_bwd(float *dx, const float *dy, const float *x, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    float xi = x[i];
    float q = expf(-2.0f * gelu_u(xi));
    float s = 1.0f / (1.0f + q);
    float du = GELU_SCALE * (1.0f + 3.0f * GELU_CUBE * xi * xi);
    dx[i] = dy[i] * (s + 2.0f * xi * (q * s) * s * du);
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
