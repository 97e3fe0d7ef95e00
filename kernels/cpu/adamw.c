/* AdamW update (Loshchilov & Hutter, decoupled weight decay), fp32, in
 * place on the weights and both moments. */
#include <math.h>

#include "kernels.h"

/* ---- kernels ------------------------------------------------------------ */

/* c1 = 1/(1-b1^t), c2 = 1/(1-b2^t): the bias corrections, computed once
 * per call.  The decay term lr wd w sits outside the adaptive scaling:
 * that is the "decoupled" of AdamW (Adam with L2 would add wd w to g). */
static void
adamw_update(float *restrict w, float *restrict m, float *restrict v,
             const float *restrict g, size_t n, float lr, float b1, float b2,
             float eps, float wd, float c1, float c2)
{
  for (size_t i = 0; i < n; i++) {
    float gi = g[i];
    float mi = b1 * m[i] + (1.0f - b1) * gi;
    float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    float mhat = mi * c1;
    float vhat = vi * c2;
    w[i] -= lr * (mhat / (sqrtf(vhat) + eps) + wd * w[i]);
  }
}

/* ---- launchers ---------------------------------------------------------- */

bt_status
bt__adamw_update(float *w, float *m, float *v, const float *g, size_t n,
                 float lr, float b1, float b2, float eps, float wd, int64_t t)
{
  if (w == NULL || m == NULL || v == NULL || g == NULL || n == 0 || t < 1)
    return BT_EINVAL;
  /* Written so that NaN fails every test. */
  if (!isfinite(lr) || !isfinite(wd) || !(b1 >= 0.0f && b1 < 1.0f) ||
      !(b2 >= 0.0f && b2 < 1.0f) || !(eps >= 0.0f && isfinite(eps)))
    return BT_EINVAL;
  /* In double: 1 - b2^t is tiny in early steps (b2 = 0.999, t = 1 gives
   * 1e-3) and pow in float would lose digits of it. */
  float c1 = (float)(1.0 / (1.0 - pow((double)b1, (double)t)));
  float c2 = (float)(1.0 / (1.0 - pow((double)b2, (double)t)));
  adamw_update(w, m, v, g, n, lr, b1, b2, eps, wd, c1, c2);
  return BT_OK;
}
