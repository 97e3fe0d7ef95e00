/* softmax cross-entropy, fp32: the loss and the gradient of the logits,
 * as a microbatch's share of the mean over the whole batch. */
#include <math.h>

#include "kernels.h"

/* ---- kernels ------------------------------------------------------------ */

/* Row maximum and sum of exp(z - max): subtracting the maximum keeps every
 * exponent <= 0, so nothing overflows and the sum is >= 1. */
static void
row_softmax_stats(const float *z, size_t C, float *max_out, float *sum_out)
{
  float mx = z[0], sum = 0.0f;

  for (size_t i = 1; i < C; i++)
    mx = z[i] > mx ? z[i] : mx;
  for (size_t i = 0; i < C; i++)
    sum += expf(z[i] - mx);
  *max_out = mx;
  *sum_out = sum;
}

static float
xent_fwd(const float *logits, const int32_t *labels, size_t N, size_t C,
         size_t total_rows)
{
  /* Summed in double: a microbatch may hold thousands of rows whose losses
   * are all of the same size. */
  double total = 0.0;

  for (size_t r = 0; r < N; r++) {
    const float *z = logits + r * C;
    float mx, sum;

    row_softmax_stats(z, C, &mx, &sum);
    /* -log softmax(z)[y] = log(sum exp(z - max)) + max - z[y] */
    total += (double)(logf(sum) + (mx - z[labels[r]]));
  }
  return (float)(total / (double)total_rows);
}

/* dlogits may be logits: the row's maximum is taken before the row is
 * overwritten, and then each element is read just before it is written. */
static void
xent_bwd(float *dlogits, const float *logits, const int32_t *labels,
         size_t N, size_t C, size_t total_rows)
{
  float scale = 1.0f / (float)total_rows;

  for (size_t r = 0; r < N; r++) {
    const float *z = logits + r * C;
    float *d = dlogits + r * C;

    /* One expf per element, not two: the exponentials go into d as they
     * are summed, then are scaled. */
    float mx = z[0], sum = 0.0f;
    for (size_t i = 1; i < C; i++)
      mx = z[i] > mx ? z[i] : mx;
    for (size_t i = 0; i < C; i++) {
      float e = expf(z[i] - mx);
      d[i] = e;
      sum += e;
    }
    float k = scale / sum;
    for (size_t i = 0; i < C; i++)
      d[i] *= k;
    d[labels[r]] -= scale;
  }
}

/* ---- launchers ---------------------------------------------------------- */

static bt_status
check_args(const float *logits, const int32_t *labels, size_t N, size_t C,
           size_t total_rows)
{
  size_t nc;

  if (logits == NULL || labels == NULL || N == 0 || C == 0 ||
      total_rows < N)
    return BT_EINVAL;
  if (!bt__mul_fits(N, C, &nc))
    return BT_ERANGE;
  /* All labels before any output, so a bad one leaves nothing half
   * written. */
  for (size_t r = 0; r < N; r++)
    if (labels[r] < 0 || (size_t)labels[r] >= C)
      return BT_EINVAL;
  return BT_OK;
}

bt_status
bt__xent_fwd(float *loss, const float *logits, const int32_t *labels,
             size_t N, size_t C, size_t total_rows)
{
  bt_status st;

  if (loss == NULL)
    return BT_EINVAL;
  if ((st = check_args(logits, labels, N, C, total_rows)) != BT_OK)
    return st;
  *loss = xent_fwd(logits, labels, N, C, total_rows);
  return BT_OK;
}

bt_status
bt__xent_bwd(float *dlogits, const float *logits, const int32_t *labels,
             size_t N, size_t C, size_t total_rows)
{
  bt_status st;

  if (dlogits == NULL)
    return BT_EINVAL;
  if ((st = check_args(logits, labels, N, C, total_rows)) != BT_OK)
    return st;
  xent_bwd(dlogits, logits, labels, N, C, total_rows);
  return BT_OK;
}
