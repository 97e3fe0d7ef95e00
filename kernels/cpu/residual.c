/* residual add: y = a + b, fp32, elementwise; its backward accumulates. */
#include "kernels.h"

/* ---- kernels ------------------------------------------------------------ */

/* y may alias a or b (elementwise, read before written): no restrict. */
static void
residual_fwd(float *y, const float *a, const float *b, size_t n)
{
  for (size_t i = 0; i < n; i++)
    y[i] = a[i] + b[i];
}

/* restrict holds: the gradients never alias dy (kernels.h). */
static void
residual_bwd_one(float *restrict d, const float *restrict dy, size_t n)
{
  for (size_t i = 0; i < n; i++)
    d[i] += dy[i];
}

/* ---- launchers ---------------------------------------------------------- */

bt_status
bt__residual_fwd(float *y, const float *a, const float *b, size_t n)
{
  if (y == NULL || a == NULL || b == NULL || n == 0)
    return BT_EINVAL;
  residual_fwd(y, a, b, n);
  return BT_OK;
}

bt_status
bt__residual_bwd(float *da, float *db, const float *dy, size_t n)
{
  if ((da == NULL && db == NULL) || dy == NULL || n == 0)
    return BT_EINVAL;
  /* da == db is fine (y = a + a adds dy twice); dy as an output is not. */
  if (da == dy || db == dy)
    return BT_EINVAL;
  if (da != NULL)
    residual_bwd_one(da, dy, n);
  if (db != NULL)
    residual_bwd_one(db, dy, n);
  return BT_OK;
}
