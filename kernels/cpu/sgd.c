/* SGD update, fp32, in place, with optional (L2) weight decay. */
#include <math.h>

#include "kernels.h"

/* ---- kernels ------------------------------------------------------------ */

static void
sgd_update(float *restrict w, const float *restrict g, size_t n, float lr,
           float wd)
{
  for (size_t i = 0; i < n; i++)
    w[i] -= lr * (g[i] + wd * w[i]);
}

/* ---- launchers ---------------------------------------------------------- */

bt_status
bt__sgd_update(float *w, const float *g, size_t n, float lr, float wd)
{
  if (w == NULL || g == NULL || n == 0 || !isfinite(lr) || !isfinite(wd))
    return BT_EINVAL;
  sgd_update(w, g, n, lr, wd);
  return BT_OK;
}
