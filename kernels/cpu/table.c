/* The CPU launchers as a backend's kernel table (model/backend.h): each
 * entry drops the ctx and calls the launcher of kernels.h. */
#include <string.h>

#include "../../model/backend.h"
#include "kernels.h"

static bt_status
linear_fwd(void *ctx, float *y, const float *x, const float *w, const float *b,
           size_t N, size_t IN, size_t OUT)
{
  (void)ctx;
  return bt__linear_fwd(y, x, w, b, N, IN, OUT);
}

static bt_status
linear_bwd_input(void *ctx, float *dx, const float *dy, const float *w,
                 size_t N, size_t IN, size_t OUT)
{
  (void)ctx;
  return bt__linear_bwd_input(dx, dy, w, N, IN, OUT);
}

static bt_status
linear_bwd_weight(void *ctx, float *dw, float *db, const float *dy,
                  const float *x, size_t N, size_t IN, size_t OUT)
{
  (void)ctx;
  return bt__linear_bwd_weight(dw, db, dy, x, N, IN, OUT);
}

static bt_status
gelu_fwd(void *ctx, float *y, const float *x, size_t n)
{
  (void)ctx;
  return bt__gelu_fwd(y, x, n);
}

static bt_status
gelu_bwd(void *ctx, float *dx, const float *dy, const float *x, size_t n)
{
  (void)ctx;
  return bt__gelu_bwd(dx, dy, x, n);
}

static bt_status
layernorm_fwd(void *ctx, float *y, float *mean, float *rstd, const float *x,
              const float *gamma, const float *beta, size_t N, size_t D)
{
  (void)ctx;
  return bt__layernorm_fwd(y, mean, rstd, x, gamma, beta, N, D);
}

static bt_status
layernorm_bwd(void *ctx, float *dx, float *dgamma, float *dbeta,
              const float *dy, const float *x, const float *gamma,
              const float *mean, const float *rstd, size_t N, size_t D)
{
  (void)ctx;
  return bt__layernorm_bwd(dx, dgamma, dbeta, dy, x, gamma, mean, rstd, N, D);
}

static bt_status
residual_fwd(void *ctx, float *y, const float *a, const float *b, size_t n)
{
  (void)ctx;
  return bt__residual_fwd(y, a, b, n);
}

static bt_status
residual_bwd(void *ctx, float *da, float *db, const float *dy, size_t n)
{
  (void)ctx;
  return bt__residual_bwd(da, db, dy, n);
}

static bt_status
xent_fwd(void *ctx, float *loss, const float *logits, const int32_t *labels,
         size_t N, size_t C, size_t total_rows)
{
  (void)ctx;
  return bt__xent_fwd(loss, logits, labels, N, C, total_rows);
}

static bt_status
xent_bwd(void *ctx, float *dlogits, const float *logits, const int32_t *labels,
         size_t N, size_t C, size_t total_rows)
{
  (void)ctx;
  return bt__xent_bwd(dlogits, logits, labels, N, C, total_rows);
}

static bt_status
sgd(void *ctx, float *w, const float *g, size_t n, float lr, float wd)
{
  (void)ctx;
  return bt__sgd_update(w, g, n, lr, wd);
}

static bt_status
adamw(void *ctx, float *w, float *m, float *v, const float *g, size_t n,
      float lr, float b1, float b2, float eps, float wd, int64_t t)
{
  (void)ctx;
  return bt__adamw_update(w, m, v, g, n, lr, b1, b2, eps, wd, t);
}

static bt_status
copy(void *ctx, void *dst, const void *src, size_t bytes)
{
  (void)ctx;
  if (dst == NULL || src == NULL)
    return BT_EINVAL;
  if (dst != src)
    memmove(dst, src, bytes);
  return BT_OK;
}

static bt_status
fill(void *ctx, void *dst, int c, size_t bytes)
{
  (void)ctx;
  if (dst == NULL)
    return BT_EINVAL;
  memset(dst, c, bytes);
  return BT_OK;
}

const struct bt__kern bt__cpu_kern = {1,
                                      linear_fwd,
                                      linear_bwd_input,
                                      linear_bwd_weight,
                                      gelu_fwd,
                                      gelu_bwd,
                                      layernorm_fwd,
                                      layernorm_bwd,
                                      residual_fwd,
                                      residual_bwd,
                                      xent_fwd,
                                      xent_bwd,
                                      sgd,
                                      adamw,
                                      copy,
                                      fill};
