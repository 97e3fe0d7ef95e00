/* The residual-MLP test model: parameters, per-layer forward and backward
 * on the fp32 CPU kernels, and the unpipelined reference step every
 * schedule is checked against.  resmlp.h pins the model, the parameter
 * order, the initialization and each layer's scratch. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "baton/safetensors.h"
#include "error.h"
#include "kernels.h"
#include "resmlp.h"

/* ---- parameters --------------------------------------------------------- */

enum layer_kind { KIND_IN, KIND_BLK, KIND_HEAD };

/* Tensors of a block, relative to its first. */
enum { BLK_LN_G, BLK_LN_B, BLK_FC1_W, BLK_FC1_B, BLK_FC2_W, BLK_FC2_B };
/* Tensors of the head, relative to its first. */
enum { HEAD_LN_G, HEAD_LN_B, HEAD_W, HEAD_B };

static enum layer_kind
layer_kind(const struct bt__resmlp *m, size_t layer)
{
  if (layer == 0)
    return KIND_IN;
  return layer <= m->cfg.L ? KIND_BLK : KIND_HEAD;
}

/* Parameter i of layer (0-based within the layer), and its gradient. */
static float *
lparam(const struct bt__resmlp *m, size_t layer, size_t i)
{
  return m->params + m->tensors[m->layer_tensor[layer] + i].offset;
}

static float *
lgrad(const struct bt__resmlp *m, size_t layer, size_t i)
{
  return m->grads + m->tensors[m->layer_tensor[layer] + i].offset;
}

/* The sum of the element counts, checked for overflow. */
static bool
count_params(const struct bt__resmlp_config *c, size_t E, size_t *out)
{
  size_t D = c->D, H = c->H, C = c->C, t, blk, total;

  /* in */
  if (!bt__mul_fits(H, D, &total) || __builtin_add_overflow(total, H, &total))
    return false;
  /* one block: 2H + EH + E + HE + H */
  if (!bt__mul_fits(E, H, &t) || !bt__mul_fits(t, 2, &blk) ||
      __builtin_add_overflow(blk, 3 * H + E, &blk))
    return false;
  if (!bt__mul_fits(blk, c->L, &t) || __builtin_add_overflow(total, t, &total))
    return false;
  /* head: 2H + CH + C */
  if (!bt__mul_fits(C, H, &t) || __builtin_add_overflow(t, 2 * H + C, &t) ||
      __builtin_add_overflow(total, t, &total))
    return false;
  *out = total;
  return true;
}

bt_status
bt__resmlp_create(const struct bt__resmlp_config *cfg, uint64_t seed,
                  struct bt__resmlp **out, bt_error_t *err)
{
  struct bt__resmlp *m;
  size_t E, nparams, ntensors, bytes;
  char prefix[BT__RESMLP_NAME_MAX];
  bt_status st;

  if (out == NULL)
    return bt__errorf(err, BT_EINVAL, "resmlp: out is NULL");
  *out = NULL;
  if (cfg == NULL)
    return bt__errorf(err, BT_EINVAL, "resmlp: config is NULL");
  if (cfg->D == 0 || cfg->H == 0 || cfg->C == 0)
    return bt__errorf(err, BT_EINVAL,
                      "resmlp: D, H and C must be at least 1 (got D=%zu, "
                      "H=%zu, C=%zu)",
                      cfg->D, cfg->H, cfg->C);
  /* The H and C terms of count_params() (3H + E, 2H + C) stay far below
   * SIZE_MAX once E = 4H fits with room, checked here. */
  if (cfg->H > SIZE_MAX / 16 || cfg->C > SIZE_MAX / 4 ||
      cfg->L > SIZE_MAX / 8 || !bt__mul_fits(cfg->H, 4, &E) ||
      !count_params(cfg, E, &nparams) ||
      !bt__mul_fits(nparams, sizeof(float), &bytes))
    return bt__errorf(err, BT_ERANGE,
                      "resmlp: D=%zu, H=%zu, C=%zu, L=%zu: the parameter "
                      "count overflows size_t",
                      cfg->D, cfg->H, cfg->C, cfg->L);
  ntensors = 2 + 6 * cfg->L + 4;

  m = calloc(1, sizeof(*m));
  if (m == NULL)
    return bt__errorf(err, BT_ENOMEM, "resmlp: out of memory");
  m->cfg = *cfg;
  m->E = E;
  st = bt__params_alloc(&m->table, cfg->L + 2, ntensors, nparams, "resmlp",
                        err);
  if (st != BT_OK) {
    free(m);
    return st;
  }

  struct bt__params_builder tb = {&m->table, seed, 0, 0};
  size_t D = cfg->D, H = cfg->H, C = cfg->C;

  bt__params_layer(&tb, 0);
  bt__params_add(&tb, "in.", "w", 2, H, D, D, 0.0f);
  bt__params_add(&tb, "in.", "b", 1, H, 0, 0, 0.0f);
  for (size_t i = 0; i < cfg->L; i++) {
    bt__params_layer(&tb, 1 + i);
    snprintf(prefix, sizeof(prefix), "blk%zu.", i);
    bt__params_add(&tb, prefix, "ln.g", 1, H, 0, 0, 1.0f);
    bt__params_add(&tb, prefix, "ln.b", 1, H, 0, 0, 0.0f);
    bt__params_add(&tb, prefix, "fc1.w", 2, E, H, H, 0.0f);
    bt__params_add(&tb, prefix, "fc1.b", 1, E, 0, 0, 0.0f);
    bt__params_add(&tb, prefix, "fc2.w", 2, H, E, E, 0.0f);
    bt__params_add(&tb, prefix, "fc2.b", 1, H, 0, 0, 0.0f);
  }
  bt__params_layer(&tb, cfg->L + 1);
  bt__params_add(&tb, "head.", "ln.g", 1, H, 0, 0, 1.0f);
  bt__params_add(&tb, "head.", "ln.b", 1, H, 0, 0, 0.0f);
  bt__params_add(&tb, "head.", "w", 2, C, H, H, 0.0f);
  bt__params_add(&tb, "head.", "b", 1, C, 0, 0, 0.0f);
  bt__params_layer(&tb, cfg->L + 2);
  *out = m;
  return BT_OK;
}

void
bt__resmlp_destroy(struct bt__resmlp *m)
{
  if (m == NULL)
    return;
  bt__params_free(&m->table);
  free(m);
}

const struct bt__params_tensor *
bt__resmlp_find(const struct bt__resmlp *m, const char *name)
{
  return m != NULL ? bt__params_find(&m->table, name) : NULL;
}

void
bt__resmlp_zero_grad(struct bt__resmlp *m)
{
  bt__params_zero_grad(&m->table);
}

/* ---- scratch layout ----------------------------------------------------- */


/* Regions, per kind (resmlp.h lists what each holds). */
enum { IN_X, IN_DOUT, IN_NREG };
enum { BLK_H, BLK_MEAN, BLK_RSTD, BLK_U, BLK_P, BLK_A, BLK_DOUT, BLK_DP,
       BLK_NREG };
enum { HEAD_Z, HEAD_MEAN, HEAD_RSTD, HEAD_U, HEAD_LOGITS, HEAD_LABELS,
       HEAD_NREG };

static bool
layer_layout(const struct bt__resmlp *m, size_t layer, size_t R,
             struct bt__scratch_layout *l)
{
  size_t H = m->cfg.H, E = m->E;

  memset(l, 0, sizeof(*l));
  if (R == 0 || layer >= m->nlayers)
    return false;
  switch (layer_kind(m, layer)) {
  case KIND_IN:
    return bt__layout_add(l, IN_X, R, m->cfg.D, sizeof(float)) &&
           bt__layout_add(l, IN_DOUT, R, H, sizeof(float));
  case KIND_BLK:
    return bt__layout_add(l, BLK_H, R, H, sizeof(float)) &&
           bt__layout_add(l, BLK_MEAN, R, 1, sizeof(float)) &&
           bt__layout_add(l, BLK_RSTD, R, 1, sizeof(float)) &&
           bt__layout_add(l, BLK_U, R, H, sizeof(float)) &&
           bt__layout_add(l, BLK_P, R, E, sizeof(float)) &&
           bt__layout_add(l, BLK_A, R, E, sizeof(float)) &&
           bt__layout_add(l, BLK_DOUT, R, H, sizeof(float)) &&
           bt__layout_add(l, BLK_DP, R, E, sizeof(float));
  case KIND_HEAD:
    return bt__layout_add(l, HEAD_Z, R, H, sizeof(float)) &&
           bt__layout_add(l, HEAD_MEAN, R, 1, sizeof(float)) &&
           bt__layout_add(l, HEAD_RSTD, R, 1, sizeof(float)) &&
           bt__layout_add(l, HEAD_U, R, H, sizeof(float)) &&
           bt__layout_add(l, HEAD_LOGITS, R, m->cfg.C, sizeof(float)) &&
           bt__layout_add(l, HEAD_LABELS, R, 1, sizeof(int32_t));
  }
  return false;
}

size_t
bt__resmlp_layer_scratch_bytes(const struct bt__resmlp *m, size_t layer,
                               size_t R)
{
  struct bt__scratch_layout l;

  if (m == NULL || !layer_layout(m, layer, R, &l))
    return 0;
  return l.bytes;
}

/* ---- layers ------------------------------------------------------------- */

/* Every kernel call's status is checked; the first error returns. */
#define TRY(call)                                                             \
  do {                                                                        \
    bt_status st_ = (call);                                                   \
    if (st_ != BT_OK)                                                         \
      return st_;                                                             \
  } while (0)

bt_status
bt__resmlp_layer_fwd_on(const struct bt__kern *K, void *ctx,
                        const struct bt__resmlp *m, size_t layer,
                     const float *in, float *out, void *scratch, size_t R)
{
  struct bt__scratch_layout l;
  size_t H = m != NULL ? m->cfg.H : 0;

  if (m == NULL || in == NULL || out == NULL || scratch == NULL ||
      in == out || !layer_layout(m, layer, R, &l))
    return BT_EINVAL;
  switch (layer_kind(m, layer)) {
  case KIND_IN: {
    float *x = bt__layout_region(scratch, &l, IN_X);
    TRY(K->copy(ctx, x, in, R * m->cfg.D * sizeof(float)));
    return K->linear_fwd(ctx, out, x, lparam(m, 0, 0), lparam(m, 0, 1), R,
                          m->cfg.D, H);
  }
  case KIND_BLK: {
    float *h = bt__layout_region(scratch, &l, BLK_H);
    float *mean = bt__layout_region(scratch, &l, BLK_MEAN);
    float *rstd = bt__layout_region(scratch, &l, BLK_RSTD);
    float *u = bt__layout_region(scratch, &l, BLK_U);
    float *p = bt__layout_region(scratch, &l, BLK_P);
    float *a = bt__layout_region(scratch, &l, BLK_A);

    TRY(K->copy(ctx, h, in, R * H * sizeof(float)));
    TRY(K->layernorm_fwd(ctx, u, mean, rstd, h, lparam(m, layer, BLK_LN_G),
                          lparam(m, layer, BLK_LN_B), R, H));
    TRY(K->linear_fwd(ctx, p, u, lparam(m, layer, BLK_FC1_W),
                       lparam(m, layer, BLK_FC1_B), R, H, m->E));
    TRY(K->gelu_fwd(ctx, a, p, R * m->E));
    TRY(K->linear_fwd(ctx, out, a, lparam(m, layer, BLK_FC2_W),
                       lparam(m, layer, BLK_FC2_B), R, m->E, H));
    return K->residual_fwd(ctx, out, out, h, R * H);
  }
  case KIND_HEAD:
    break;
  }
  return BT_EINVAL; /* the head is bt__resmlp_head_fwd */
}

bt_status
bt__resmlp_head_fwd_on(const struct bt__kern *K, void *ctx,
                       const struct bt__resmlp *m, const float *z,
                    const int32_t *labels, size_t total_rows, void *scratch,
                    size_t R, float *loss)
{
  struct bt__scratch_layout l;

  if (m == NULL || z == NULL || labels == NULL || scratch == NULL ||
      loss == NULL || total_rows < R ||
      !layer_layout(m, m->cfg.L + 1, R, &l))
    return BT_EINVAL;

  size_t H = m->cfg.H, C = m->cfg.C, layer = m->cfg.L + 1;
  float *zs = bt__layout_region(scratch, &l, HEAD_Z);
  float *mean = bt__layout_region(scratch, &l, HEAD_MEAN);
  float *rstd = bt__layout_region(scratch, &l, HEAD_RSTD);
  float *u = bt__layout_region(scratch, &l, HEAD_U);
  float *logits = bt__layout_region(scratch, &l, HEAD_LOGITS);
  int32_t *lab = (int32_t *)(void *)bt__layout_region(scratch, &l, HEAD_LABELS);

  for (size_t r = 0; K->host && r < R; r++)
    if (labels[r] < 0 || (size_t)labels[r] >= C)
      return BT_EINVAL;
  TRY(K->copy(ctx, zs, z, R * H * sizeof(float)));
  TRY(K->copy(ctx, lab, labels, R * sizeof(int32_t)));
  TRY(K->layernorm_fwd(ctx, u, mean, rstd, zs, lparam(m, layer, HEAD_LN_G),
                        lparam(m, layer, HEAD_LN_B), R, H));
  TRY(K->linear_fwd(ctx, logits, u, lparam(m, layer, HEAD_W),
                     lparam(m, layer, HEAD_B), R, H, C));
  return K->xent_fwd(ctx, loss, logits, lab, R, C, total_rows);
}

bt_status
bt__resmlp_layer_bwd_input_on(const struct bt__kern *K, void *ctx,
                              struct bt__resmlp *m, size_t layer,
                           const float *dout, float *din, void *scratch,
                           size_t R, size_t total_rows)
{
  struct bt__scratch_layout l;

  if (m == NULL || scratch == NULL || !layer_layout(m, layer, R, &l))
    return BT_EINVAL;

  size_t H = m->cfg.H, E = m->E, C = m->cfg.C;

  switch (layer_kind(m, layer)) {
  case KIND_IN:
    if (dout == NULL || dout == din)
      return BT_EINVAL;
    TRY(K->copy(ctx, bt__layout_region(scratch, &l, IN_DOUT), dout,
                R * H * sizeof(float)));
    if (din == NULL)
      return BT_OK;
    return K->linear_bwd_input(ctx, din, dout, lparam(m, 0, 0), R, m->cfg.D, H);
  case KIND_BLK: {
    float *h = bt__layout_region(scratch, &l, BLK_H);
    float *mean = bt__layout_region(scratch, &l, BLK_MEAN);
    float *rstd = bt__layout_region(scratch, &l, BLK_RSTD);
    float *p = bt__layout_region(scratch, &l, BLK_P);
    float *dsave = bt__layout_region(scratch, &l, BLK_DOUT);
    float *dp = bt__layout_region(scratch, &l, BLK_DP);

    if (dout == NULL || din == NULL || dout == din)
      return BT_EINVAL;
    TRY(K->copy(ctx, dsave, dout, R * H * sizeof(float)));
    /* da = dout W2, then dp = da * gelu'(p) in place. */
    TRY(K->linear_bwd_input(ctx, dp, dsave, lparam(m, layer, BLK_FC2_W), R, E,
                             H));
    TRY(K->gelu_bwd(ctx, dp, dp, p, R * E));
    /* du = dp W1 into din, then the LayerNorm's dx over it in place. */
    TRY(K->linear_bwd_input(ctx, din, dp, lparam(m, layer, BLK_FC1_W), R, H,
                             E));
    TRY(K->layernorm_bwd(ctx, din, lgrad(m, layer, BLK_LN_G),
                          lgrad(m, layer, BLK_LN_B), din, h,
                          lparam(m, layer, BLK_LN_G), mean, rstd, R, H));
    /* The residual path: din += dout. */
    return K->residual_bwd(ctx, din, NULL, dsave, R * H);
  }
  case KIND_HEAD: {
    float *zs = bt__layout_region(scratch, &l, HEAD_Z);
    float *mean = bt__layout_region(scratch, &l, HEAD_MEAN);
    float *rstd = bt__layout_region(scratch, &l, HEAD_RSTD);
    float *logits = bt__layout_region(scratch, &l, HEAD_LOGITS);
    const int32_t *lab =
        (const int32_t *)(void *)bt__layout_region(scratch, &l, HEAD_LABELS);

    if (dout != NULL || din == NULL || total_rows < R)
      return BT_EINVAL;
    /* dlogits over the logits: nothing else reads them. */
    TRY(K->xent_bwd(ctx, logits, logits, lab, R, C, total_rows));
    TRY(K->linear_bwd_input(ctx, din, logits, lparam(m, layer, HEAD_W), R, H,
                             C));
    return K->layernorm_bwd(ctx, din, lgrad(m, layer, HEAD_LN_G),
                             lgrad(m, layer, HEAD_LN_B), din, zs,
                             lparam(m, layer, HEAD_LN_G), mean, rstd, R, H);
  }
  }
  return BT_EINVAL;
}

bt_status
bt__resmlp_layer_bwd_weight_on(const struct bt__kern *K, void *ctx,
                               struct bt__resmlp *m, size_t layer,
                            void *scratch, size_t R)
{
  struct bt__scratch_layout l;

  if (m == NULL || scratch == NULL || !layer_layout(m, layer, R, &l))
    return BT_EINVAL;

  size_t H = m->cfg.H, E = m->E, C = m->cfg.C;

  switch (layer_kind(m, layer)) {
  case KIND_IN:
    return K->linear_bwd_weight(ctx, lgrad(m, 0, 0), lgrad(m, 0, 1),
                                 bt__layout_region(scratch, &l, IN_DOUT),
                                 bt__layout_region(scratch, &l, IN_X), R, m->cfg.D, H);
  case KIND_BLK:
    TRY(K->linear_bwd_weight(ctx, lgrad(m, layer, BLK_FC2_W),
                              lgrad(m, layer, BLK_FC2_B),
                              bt__layout_region(scratch, &l, BLK_DOUT),
                              bt__layout_region(scratch, &l, BLK_A), R, E, H));
    return K->linear_bwd_weight(ctx, lgrad(m, layer, BLK_FC1_W),
                                 lgrad(m, layer, BLK_FC1_B),
                                 bt__layout_region(scratch, &l, BLK_DP),
                                 bt__layout_region(scratch, &l, BLK_U), R, H, E);
  case KIND_HEAD:
    return K->linear_bwd_weight(ctx, lgrad(m, layer, HEAD_W),
                                 lgrad(m, layer, HEAD_B),
                                 bt__layout_region(scratch, &l, HEAD_LOGITS),
                                 bt__layout_region(scratch, &l, HEAD_U), R, H, C);
  }
  return BT_EINVAL;
}

bt_status
bt__resmlp_layer_bwd(struct bt__resmlp *m, size_t layer, const float *dout,
                     float *din, void *scratch, size_t R, size_t total_rows)
{
  TRY(bt__resmlp_layer_bwd_input(m, layer, dout, din, scratch, R,
                                 total_rows));
  return bt__resmlp_layer_bwd_weight(m, layer, scratch, R);
}

bt_status
bt__resmlp_long_skip_fwd_on(const struct bt__kern *K, void *ctx,
                            const struct bt__resmlp *m, float *z,
                         const float *hL, const float *h0, size_t R)
{
  size_t n;

  if (m == NULL || !m->cfg.long_skip || R == 0 ||
      !bt__mul_fits(R, m->cfg.H, &n))
    return BT_EINVAL;
  return K->residual_fwd(ctx, z, hL, h0, n);
}

bt_status
bt__resmlp_long_skip_bwd_on(const struct bt__kern *K, void *ctx,
                            const struct bt__resmlp *m, float *dh0,
                         const float *dz, size_t R)
{
  size_t n;

  if (m == NULL || !m->cfg.long_skip || R == 0 ||
      !bt__mul_fits(R, m->cfg.H, &n))
    return BT_EINVAL;
  return K->residual_bwd(ctx, dh0, NULL, dz, n);
}


/* The CPU entry points: the layer functions on the CPU kernels. */
bt_status
bt__resmlp_layer_fwd(const struct bt__resmlp *m, size_t layer,
                     const float *in, float *out, void *scratch, size_t R)
{
  return bt__resmlp_layer_fwd_on(&bt__cpu_kern, NULL, m, layer, in, out,
                                 scratch, R);
}

bt_status
bt__resmlp_head_fwd(const struct bt__resmlp *m, const float *z,
                    const int32_t *labels, size_t total_rows, void *scratch,
                    size_t R, float *loss)
{
  return bt__resmlp_head_fwd_on(&bt__cpu_kern, NULL, m, z, labels, total_rows,
                                scratch, R, loss);
}

bt_status
bt__resmlp_layer_bwd_input(struct bt__resmlp *m, size_t layer,
                           const float *dout, float *din, void *scratch,
                           size_t R, size_t total_rows)
{
  return bt__resmlp_layer_bwd_input_on(&bt__cpu_kern, NULL, m, layer, dout,
                                       din, scratch, R, total_rows);
}

bt_status
bt__resmlp_layer_bwd_weight(struct bt__resmlp *m, size_t layer,
                            void *scratch, size_t R)
{
  return bt__resmlp_layer_bwd_weight_on(&bt__cpu_kern, NULL, m, layer,
                                        scratch, R);
}

bt_status
bt__resmlp_long_skip_fwd(const struct bt__resmlp *m, float *z,
                         const float *hL, const float *h0, size_t R)
{
  return bt__resmlp_long_skip_fwd_on(&bt__cpu_kern, NULL, m, z, hL, h0, R);
}

bt_status
bt__resmlp_long_skip_bwd(const struct bt__resmlp *m, float *dh0,
                         const float *dz, size_t R)
{
  return bt__resmlp_long_skip_bwd_on(&bt__cpu_kern, NULL, m, dh0, dz, R);
}

/* ---- the reference step ------------------------------------------------- */

/* Runs one microbatch through every layer and back.  bufs are six [R,H]
 * buffers: two for the activations, h0, z, dz and one more gradient
 * buffer, used as two alternating ones with h0's. */
static bt_status
reference_microbatch(struct bt__resmlp *m, const float *x, const int32_t *y,
                     size_t R, size_t N, void *const *scratch, float *bufs,
                     float *loss)
{
  size_t L = m->cfg.L, RH = R * m->cfg.H;
  float *act[2] = {bufs, bufs + RH};
  float *h0 = bufs + 2 * RH, *z = bufs + 3 * RH, *dz = bufs + 4 * RH;
  float *grad[2] = {bufs + 5 * RH, bufs};
  float *cur;

  TRY(bt__resmlp_layer_fwd(m, 0, x, h0, scratch[0], R));
  cur = h0;
  for (size_t i = 0; i < L; i++) {
    float *next = act[i % 2];
    TRY(bt__resmlp_layer_fwd(m, 1 + i, cur, next, scratch[1 + i], R));
    cur = next;
  }
  if (m->cfg.long_skip) {
    TRY(bt__resmlp_long_skip_fwd(m, z, cur, h0, R));
    cur = z;
  }
  TRY(bt__resmlp_head_fwd(m, cur, y, N, scratch[L + 1], R, loss));

  /* Backward; the activation buffers are free now, so grad[1] reuses
   * act[0]. */
  TRY(bt__resmlp_layer_bwd(m, L + 1, NULL, dz, scratch[L + 1], R, N));
  const float *dcur = dz;
  float *dh0 = NULL;
  for (size_t i = L; i-- > 0;) {
    float *dnext = grad[i % 2];
    TRY(bt__resmlp_layer_bwd(m, 1 + i, dcur, dnext, scratch[1 + i], R, N));
    dcur = dnext;
    dh0 = dnext;
  }
  if (m->cfg.long_skip) {
    if (dh0 == NULL) { /* L = 0: h(L) is h0, dz reaches it twice */
      dh0 = grad[0];
      memcpy(dh0, dz, RH * sizeof(float));
    }
    TRY(bt__resmlp_long_skip_bwd(m, dh0, dz, R));
    dcur = dh0;
  }
  return bt__resmlp_layer_bwd(m, 0, dcur, NULL, scratch[0], R, N);
}

static bt_status
range_error(bt_error_t *err, size_t R)
{
  return bt__errorf(err, BT_ERANGE,
                    "resmlp reference step: the activations of %zu rows "
                    "overflow size_t (use more microbatches)",
                    R);
}

bt_status
bt__resmlp_reference_step(struct bt__resmlp *m, const float *x,
                          const int32_t *y, size_t N, size_t microbatches,
                          float *loss, bt_error_t *err)
{
  size_t R, total = 0, bufs_bytes, sizes_bytes;
  void **scratch = NULL;
  char *block = NULL;
  float sum = 0.0f;
  bt_status st = BT_OK;

  if (m == NULL || x == NULL || y == NULL || loss == NULL)
    return bt__errorf(err, BT_EINVAL,
                      "resmlp reference step: model, x, y and loss must "
                      "not be NULL");
  if (N == 0 || microbatches == 0 || N % microbatches != 0)
    return bt__errorf(err, BT_EINVAL,
                      "resmlp reference step: the batch's %zu rows must "
                      "split evenly into %zu microbatches (choose a "
                      "microbatch count that divides N)",
                      N, microbatches);
  for (size_t r = 0; r < N; r++)
    if (y[r] < 0 || (size_t)y[r] >= m->cfg.C)
      return bt__errorf(err, BT_EINVAL,
                        "resmlp reference step: label y[%zu] = %" PRId32
                        " is outside [0, C=%zu)",
                        r, y[r], m->cfg.C);
  R = N / microbatches;

  /* One block: the per-layer scratch regions, then six [R,H] buffers. */
  for (size_t layer = 0; layer < m->nlayers; layer++) {
    size_t b = bt__resmlp_layer_scratch_bytes(m, layer, R);
    if (b == 0 || __builtin_add_overflow(b, BT__SCRATCH_ALIGN - 1, &b) ||
        __builtin_add_overflow(total, b & ~(size_t)(BT__SCRATCH_ALIGN - 1),
                               &total))
      return range_error(err, R);
  }
  if (!bt__mul_fits(R, m->cfg.H, &bufs_bytes) ||
      !bt__mul_fits(bufs_bytes, 6 * sizeof(float), &bufs_bytes) ||
      __builtin_add_overflow(total, bufs_bytes, &sizes_bytes) ||
      sizes_bytes > SIZE_MAX - BT__SCRATCH_ALIGN)
    return range_error(err, R);
  scratch = calloc(m->nlayers, sizeof(*scratch));
  block = aligned_alloc(BT__SCRATCH_ALIGN, (sizes_bytes + BT__SCRATCH_ALIGN - 1) &
                                           ~(size_t)(BT__SCRATCH_ALIGN - 1));
  if (scratch == NULL || block == NULL) {
    st = bt__errorf(err, BT_ENOMEM,
                    "resmlp reference step: out of memory for %zu bytes of "
                    "activations (use more microbatches)",
                    sizes_bytes);
    goto out_free;
  }
  total = 0;
  for (size_t layer = 0; layer < m->nlayers; layer++) {
    size_t b = bt__resmlp_layer_scratch_bytes(m, layer, R);
    scratch[layer] = block + total;
    total += (b + BT__SCRATCH_ALIGN - 1) & ~(size_t)(BT__SCRATCH_ALIGN - 1);
  }

  bt__resmlp_zero_grad(m);
  for (size_t k = 0; k < microbatches; k++) {
    float share = 0.0f;
    st = reference_microbatch(m, x + k * R * m->cfg.D, y + k * R, R, N,
                              scratch, (float *)(void *)(block + total),
                              &share);
    if (st != BT_OK) {
      bt__errorf(err, st,
                 "resmlp reference step: microbatch %zu of %zu failed: %s",
                 k, microbatches, bt_strerror(st));
      goto out_free;
    }
    sum += share;
  }
  *loss = sum;

out_free:
  free(block);
  free(scratch);
  return st;
}

/* ---- optimizers --------------------------------------------------------- */

bt_status
bt__resmlp_sgd(struct bt__resmlp *m, float lr)
{
  return bt__params_sgd(m != NULL ? &m->table : NULL, lr);
}

bt_status
bt__resmlp_adamw_init(const struct bt__resmlp *m,
                      struct bt__params_adamw_state *state)
{
  return bt__params_adamw_init(m != NULL ? &m->table : NULL, state);
}

void
bt__resmlp_adamw_deinit(struct bt__params_adamw_state *state)
{
  bt__params_adamw_deinit(state);
}

bt_status
bt__resmlp_adamw(struct bt__resmlp *m, float lr, float b1, float b2,
                 float eps, float wd, int64_t t,
                 struct bt__params_adamw_state *state)
{
  return bt__params_adamw(m != NULL ? &m->table : NULL, lr, b1, b2, eps, wd,
                          t, state);
}

/* ---- files -------------------------------------------------------------- */

bt_status
bt__resmlp_dump(const struct bt__resmlp *m, const char *path, const float *x,
                const int32_t *y, size_t N, float loss, bt_error_t *err)
{
  size_t nx;

  if (m == NULL || path == NULL || x == NULL || y == NULL || N == 0)
    return bt__errorf(err, BT_EINVAL,
                      "resmlp dump: model, path, x and y must not be NULL "
                      "and N at least 1");
  if (!bt__mul_fits(N, m->cfg.D, &nx) || !bt__mul_fits(nx, sizeof(float), &nx))
    return bt__errorf(err, BT_ERANGE, "resmlp dump: x of %zu rows overflows",
                      N);

  const bt_st_tensor_t lead[3] = {
      {.name = "x", .dtype = BT_ST_F32, .ndim = 2,
       .shape = {(int64_t)N, (int64_t)m->cfg.D}, .data = x, .bytes = nx},
      {.name = "y", .dtype = BT_ST_I32, .ndim = 1, .shape = {(int64_t)N},
       .data = y, .bytes = N * sizeof(int32_t)},
      {.name = "loss", .dtype = BT_ST_F32, .ndim = 1, .shape = {1},
       .data = &loss, .bytes = sizeof(float)}};
  return bt__params_dump(&m->table, path, lead, 3, "resmlp", err);
}

bt_status
bt__resmlp_save(const struct bt__resmlp *m, const char *path,
                bt_error_t *err)
{
  return bt__params_save(m != NULL ? &m->table : NULL, path, "resmlp", err);
}

bt_status
bt__resmlp_load(struct bt__resmlp *m, const char *path, bt_error_t *err)
{
  char cfg_s[128] = "";

  if (m != NULL)
    snprintf(cfg_s, sizeof(cfg_s), "D=%zu, H=%zu, C=%zu, L=%zu", m->cfg.D,
             m->cfg.H, m->cfg.C, m->cfg.L);
  const struct bt__params_load_desc desc = {cfg_s, cfg_s, cfg_s};
  return bt__params_load(m != NULL ? &m->table : NULL, path, "resmlp", &desc,
                         err);
}
