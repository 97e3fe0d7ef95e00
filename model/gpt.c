/* The GPT test model: parameters, per-layer forward and backward on the
 * fp32 CPU kernels, and the unpipelined reference step.  gpt.h pins the
 * model, the parameter order, the dropout keys, the initialization and
 * each layer's scratch. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "baton/safetensors.h"
#include "error.h"
#include "gpt.h"
#include "kernels.h"

/* ---- parameters --------------------------------------------------------- */

enum layer_kind { KIND_EMBED, KIND_BLK, KIND_HEAD };

/* Tensors of the embed layer, a block and the head, relative to the
 * layer's first. */
enum { EMB_WTE, EMB_WPE };
enum {
  BLK_LN1_G,
  BLK_LN1_B,
  BLK_QKV_W,
  BLK_QKV_B,
  BLK_AP_W,
  BLK_AP_B,
  BLK_LN2_G,
  BLK_LN2_B,
  BLK_FC_W,
  BLK_FC_B,
  BLK_MP_W,
  BLK_MP_B,
  BLK_NTENSORS
};
enum { HEAD_LN_G, HEAD_LN_B, HEAD_W };

static enum layer_kind
layer_kind(const struct bt__gpt *m, size_t layer)
{
  if (layer == 0)
    return KIND_EMBED;
  return layer <= m->cfg.L ? KIND_BLK : KIND_HEAD;
}

static float *
lparam(const struct bt__gpt *m, size_t layer, size_t i)
{
  return m->params + m->tensors[m->layer_tensor[layer] + i].offset;
}

static float *
lgrad(const struct bt__gpt *m, size_t layer, size_t i)
{
  return m->grads + m->tensors[m->layer_tensor[layer] + i].offset;
}

/* The logits' weight [V,C]: wte when tied, head.w otherwise. */
static float *
head_w(const struct bt__gpt *m)
{
  if (!m->cfg.tied)
    return lparam(m, m->cfg.L + 1, HEAD_W);
  return m->head_wte != NULL ? m->head_wte : lparam(m, 0, EMB_WTE);
}

static float *
head_dw(const struct bt__gpt *m)
{
  if (!m->cfg.tied)
    return lgrad(m, m->cfg.L + 1, HEAD_W);
  return m->head_gwte != NULL ? m->head_gwte : lgrad(m, 0, EMB_WTE);
}

/* The sum of the element counts, checked for overflow.  The caller has
 * bounded C so that 4C, 12C^2 and small multiples of C fit. */
static bool
count_params(const struct bt__gpt_config *c, size_t *out)
{
  size_t C = c->C, t, blk, total;

  if (!bt__mul_fits(c->V, C, &total) || !bt__mul_fits(c->Tmax, C, &t) ||
      __builtin_add_overflow(total, t, &total))
    return false;
  /* one block: 4C (lns) + 3C^2 + 3C + C^2 + C + 4C^2 + 4C + 4C^2 + C */
  if (!bt__mul_fits(C, C, &t) || !bt__mul_fits(t, 12, &blk) ||
      __builtin_add_overflow(blk, 13 * C, &blk))
    return false;
  if (!bt__mul_fits(blk, c->L, &t) || __builtin_add_overflow(total, t, &total))
    return false;
  if (__builtin_add_overflow(total, 2 * C, &total))
    return false;
  if (!c->tied &&
      (!bt__mul_fits(c->V, C, &t) || __builtin_add_overflow(total, t, &total)))
    return false;
  *out = total;
  return true;
}

bt_status
bt__gpt_create(const struct bt__gpt_config *cfg, uint64_t seed,
               struct bt__gpt **out, bt_error_t *err)
{
  struct bt__gpt *m;
  size_t nparams, ntensors, bytes;
  char prefix[BT__GPT_NAME_MAX];
  bt_status st;

  if (out == NULL)
    return bt__errorf(err, BT_EINVAL, "gpt: out is NULL");
  *out = NULL;
  if (cfg == NULL)
    return bt__errorf(err, BT_EINVAL, "gpt: config is NULL");
  if (cfg->V == 0 || cfg->C == 0 || cfg->nh == 0 || cfg->Tmax == 0)
    return bt__errorf(err, BT_EINVAL,
                      "gpt: V, C, nh and Tmax must be at least 1 (got V=%zu, "
                      "C=%zu, nh=%zu, Tmax=%zu)",
                      cfg->V, cfg->C, cfg->nh, cfg->Tmax);
  if (cfg->C % cfg->nh != 0)
    return bt__errorf(err, BT_EINVAL,
                      "gpt: C=%zu does not split into nh=%zu heads (choose "
                      "C a multiple of nh)",
                      cfg->C, cfg->nh);
  if (!(cfg->dropout >= 0.0f && cfg->dropout < 1.0f))
    return bt__errorf(err, BT_EINVAL, "gpt: dropout %g is outside [0, 1)",
                      (double)cfg->dropout);
  if (cfg->C > SIZE_MAX / 64 || cfg->L > SIZE_MAX / 16 ||
      !count_params(cfg, &nparams) ||
      !bt__mul_fits(nparams, sizeof(float), &bytes))
    return bt__errorf(err, BT_ERANGE,
                      "gpt: V=%zu, C=%zu, L=%zu, Tmax=%zu: the parameter "
                      "count overflows size_t",
                      cfg->V, cfg->C, cfg->L, cfg->Tmax);
  ntensors = 2 + BLK_NTENSORS * cfg->L + 2 + (cfg->tied ? 0 : 1);

  m = calloc(1, sizeof(*m));
  if (m == NULL)
    return bt__errorf(err, BT_ENOMEM, "gpt: out of memory");
  m->cfg = *cfg;
  st = bt__params_alloc(&m->table, cfg->L + 2, ntensors, nparams, "gpt", err);
  if (st != BT_OK) {
    free(m);
    return st;
  }

  struct bt__params_builder tb = {&m->table, seed, 0, 0};
  size_t V = cfg->V, C = cfg->C;

  bt__params_layer(&tb, 0);
  bt__params_add(&tb, "", "wte", 2, V, C, C, 0.0f);
  bt__params_add(&tb, "", "wpe", 2, cfg->Tmax, C, C, 0.0f);
  for (size_t i = 0; i < cfg->L; i++) {
    bt__params_layer(&tb, 1 + i);
    snprintf(prefix, sizeof(prefix), "blk%zu.", i);
    bt__params_add(&tb, prefix, "ln1.g", 1, C, 0, 0, 1.0f);
    bt__params_add(&tb, prefix, "ln1.b", 1, C, 0, 0, 0.0f);
    bt__params_add(&tb, prefix, "attn.qkv.w", 2, 3 * C, C, C, 0.0f);
    bt__params_add(&tb, prefix, "attn.qkv.b", 1, 3 * C, 0, 0, 0.0f);
    bt__params_add(&tb, prefix, "attn.proj.w", 2, C, C, C, 0.0f);
    bt__params_add(&tb, prefix, "attn.proj.b", 1, C, 0, 0, 0.0f);
    bt__params_add(&tb, prefix, "ln2.g", 1, C, 0, 0, 1.0f);
    bt__params_add(&tb, prefix, "ln2.b", 1, C, 0, 0, 0.0f);
    bt__params_add(&tb, prefix, "mlp.fc.w", 2, 4 * C, C, C, 0.0f);
    bt__params_add(&tb, prefix, "mlp.fc.b", 1, 4 * C, 0, 0, 0.0f);
    bt__params_add(&tb, prefix, "mlp.proj.w", 2, C, 4 * C, 4 * C, 0.0f);
    bt__params_add(&tb, prefix, "mlp.proj.b", 1, C, 0, 0, 0.0f);
  }
  bt__params_layer(&tb, cfg->L + 1);
  bt__params_add(&tb, "", "lnf.g", 1, C, 0, 0, 1.0f);
  bt__params_add(&tb, "", "lnf.b", 1, C, 0, 0, 0.0f);
  if (!cfg->tied)
    bt__params_add(&tb, "", "head.w", 2, V, C, C, 0.0f);
  bt__params_layer(&tb, cfg->L + 2);
  *out = m;
  return BT_OK;
}

void
bt__gpt_destroy(struct bt__gpt *m)
{
  if (m == NULL)
    return;
  bt__params_free(&m->table);
  free(m);
}

const struct bt__params_tensor *
bt__gpt_find(const struct bt__gpt *m, const char *name)
{
  return m != NULL ? bt__params_find(&m->table, name) : NULL;
}

void
bt__gpt_zero_grad(struct bt__gpt *m)
{
  bt__params_zero_grad(&m->table);
}

/* ---- scratch layout ----------------------------------------------------- */


enum { EMB_X, EMB_DS, EMB_NREG };
enum {
  B_H,
  B_MEAN1,
  B_RSTD1,
  B_A1,
  B_QKV,
  B_ATT,
  B_Y,
  B_H2,
  B_MEAN2,
  B_RSTD2,
  B_A2,
  B_P,
  B_G,
  B_DMO,
  B_DP,
  B_DAO,
  B_DQKV,
  B_WORK,
  B_NREG
};
enum { H_H, H_MEAN, H_RSTD, H_U, H_LOGITS, H_LABELS, H_NREG };

static bool
layer_layout(const struct bt__gpt *m, size_t layer, size_t B, size_t T,
             struct bt__scratch_layout *l)
{
  size_t C = m->cfg.C, R, att;

  memset(l, 0, sizeof(*l));
  if (B == 0 || T == 0 || layer >= m->nlayers || !bt__mul_fits(B, T, &R))
    return false;
  switch (layer_kind(m, layer)) {
  case KIND_EMBED:
    return bt__layout_add(l, EMB_X, R, 1, sizeof(int32_t)) &&
           bt__layout_add(l, EMB_DS, R, C, sizeof(float));
  case KIND_BLK:
    att = bt__attention_scratch_bytes(B, T, m->cfg.nh);
    return att != 0 && bt__layout_add(l, B_H, R, C, sizeof(float)) &&
           bt__layout_add(l, B_MEAN1, R, 1, sizeof(float)) &&
           bt__layout_add(l, B_RSTD1, R, 1, sizeof(float)) &&
           bt__layout_add(l, B_A1, R, C, sizeof(float)) &&
           bt__layout_add(l, B_QKV, R, 3 * C, sizeof(float)) &&
           bt__layout_add(l, B_ATT, 1, att, 1) &&
           bt__layout_add(l, B_Y, R, C, sizeof(float)) &&
           bt__layout_add(l, B_H2, R, C, sizeof(float)) &&
           bt__layout_add(l, B_MEAN2, R, 1, sizeof(float)) &&
           bt__layout_add(l, B_RSTD2, R, 1, sizeof(float)) &&
           bt__layout_add(l, B_A2, R, C, sizeof(float)) &&
           bt__layout_add(l, B_P, R, 4 * C, sizeof(float)) &&
           bt__layout_add(l, B_G, R, 4 * C, sizeof(float)) &&
           bt__layout_add(l, B_DMO, R, C, sizeof(float)) &&
           bt__layout_add(l, B_DP, R, 4 * C, sizeof(float)) &&
           bt__layout_add(l, B_DAO, R, C, sizeof(float)) &&
           bt__layout_add(l, B_DQKV, R, 3 * C, sizeof(float)) &&
           bt__layout_add(l, B_WORK, R, C, sizeof(float));
  case KIND_HEAD:
    return bt__layout_add(l, H_H, R, C, sizeof(float)) &&
           bt__layout_add(l, H_MEAN, R, 1, sizeof(float)) &&
           bt__layout_add(l, H_RSTD, R, 1, sizeof(float)) &&
           bt__layout_add(l, H_U, R, C, sizeof(float)) &&
           bt__layout_add(l, H_LOGITS, R, m->cfg.V, sizeof(float)) &&
           bt__layout_add(l, H_LABELS, R, 1, sizeof(int32_t));
  }
  return false;
}

size_t
bt__gpt_layer_scratch_bytes(const struct bt__gpt *m, size_t layer, size_t B,
                            size_t T)
{
  struct bt__scratch_layout l;

  if (m == NULL || !layer_layout(m, layer, B, T, &l))
    return 0;
  return l.bytes;
}

/* ---- layers ------------------------------------------------------------- */

#define TRY(call)                                                              \
  do {                                                                         \
    bt_status st_ = (call);                                                    \
    if (st_ != BT_OK)                                                          \
      return st_;                                                              \
  } while (0)

/* Checks the common arguments and lays out the layer's scratch. */
static bool
valid_mb(const struct bt__gpt *m, size_t layer, const void *scratch,
         const struct bt__gpt_mb *mb, struct bt__scratch_layout *l)
{
  return m != NULL && scratch != NULL && mb != NULL && mb->T <= m->cfg.Tmax &&
         layer_layout(m, layer, mb->B, mb->T, l);
}

/* Dropout id `id` over v [R,C] in place (forward and backward are the
 * same operation); nothing when the probability is 0. */
static bt_status
drop_inplace(const struct bt__gpt *m, float *v, size_t R,
             const struct bt__gpt_mb *mb, uint32_t id)
{
  if (m->cfg.dropout == 0.0f)
    return BT_OK;
  return bt__dropout_fwd(v, v, R, m->cfg.C, m->cfg.dropout, mb->seed, mb->step,
                         id, mb->row0);
}

bt_status
bt__gpt_embed_fwd(const struct bt__gpt *m, const int32_t *x, float *out,
                  void *scratch, const struct bt__gpt_mb *mb)
{
  struct bt__scratch_layout l;

  if (x == NULL || out == NULL || !valid_mb(m, 0, scratch, mb, &l))
    return BT_EINVAL;

  size_t R = mb->B * mb->T;
  int32_t *xs = (int32_t *)(void *)bt__layout_region(scratch, &l, EMB_X);

  TRY(bt__embedding_fwd(out, x, lparam(m, 0, EMB_WTE), lparam(m, 0, EMB_WPE),
                        mb->B, mb->T, m->cfg.C, m->cfg.V, m->cfg.Tmax, 0));
  memcpy(xs, x, R * sizeof(int32_t));
  return drop_inplace(m, out, R, mb, 0);
}

bt_status
bt__gpt_layer_fwd(const struct bt__gpt *m, size_t layer, const float *in,
                  float *out, void *scratch, const struct bt__gpt_mb *mb)
{
  struct bt__scratch_layout l;

  if (in == NULL || out == NULL || in == out ||
      !valid_mb(m, layer, scratch, mb, &l) || layer_kind(m, layer) != KIND_BLK)
    return BT_EINVAL;

  size_t B = mb->B, T = mb->T, R = B * T, C = m->cfg.C;
  uint32_t i = (uint32_t)(layer - 1);
  float *h = bt__layout_region(scratch, &l, B_H);
  float *mean1 = bt__layout_region(scratch, &l, B_MEAN1);
  float *rstd1 = bt__layout_region(scratch, &l, B_RSTD1);
  float *a1 = bt__layout_region(scratch, &l, B_A1);
  float *qkv = bt__layout_region(scratch, &l, B_QKV);
  float *att = bt__layout_region(scratch, &l, B_ATT);
  float *y = bt__layout_region(scratch, &l, B_Y);
  float *h2 = bt__layout_region(scratch, &l, B_H2);
  float *mean2 = bt__layout_region(scratch, &l, B_MEAN2);
  float *rstd2 = bt__layout_region(scratch, &l, B_RSTD2);
  float *a2 = bt__layout_region(scratch, &l, B_A2);
  float *p = bt__layout_region(scratch, &l, B_P);
  float *g = bt__layout_region(scratch, &l, B_G);

  memcpy(h, in, R * C * sizeof(float));
  /* h2 = h + drop(attn.proj(attention(qkv(ln1(h))))) */
  TRY(bt__layernorm_fwd(a1, mean1, rstd1, h, lparam(m, layer, BLK_LN1_G),
                        lparam(m, layer, BLK_LN1_B), R, C));
  TRY(bt__linear_fwd(qkv, a1, lparam(m, layer, BLK_QKV_W),
                     lparam(m, layer, BLK_QKV_B), R, C, 3 * C));
  TRY(bt__attention_fwd(y, att, qkv, B, T, C, m->cfg.nh));
  TRY(bt__linear_fwd(h2, y, lparam(m, layer, BLK_AP_W),
                     lparam(m, layer, BLK_AP_B), R, C, C));
  TRY(drop_inplace(m, h2, R, mb, 1 + 2 * i));
  TRY(bt__residual_fwd(h2, h2, h, R * C));
  /* out = h2 + drop(mlp.proj(gelu(mlp.fc(ln2(h2))))) */
  TRY(bt__layernorm_fwd(a2, mean2, rstd2, h2, lparam(m, layer, BLK_LN2_G),
                        lparam(m, layer, BLK_LN2_B), R, C));
  TRY(bt__linear_fwd(p, a2, lparam(m, layer, BLK_FC_W),
                     lparam(m, layer, BLK_FC_B), R, C, 4 * C));
  TRY(bt__gelu_fwd(g, p, R * 4 * C));
  TRY(bt__linear_fwd(out, g, lparam(m, layer, BLK_MP_W),
                     lparam(m, layer, BLK_MP_B), R, 4 * C, C));
  TRY(drop_inplace(m, out, R, mb, 2 + 2 * i));
  return bt__residual_fwd(out, out, h2, R * C);
}

bt_status
bt__gpt_head_fwd(const struct bt__gpt *m, const float *h, const int32_t *y,
                 size_t total_rows, void *scratch, const struct bt__gpt_mb *mb,
                 float *loss)
{
  struct bt__scratch_layout l;

  if (h == NULL || y == NULL || loss == NULL || m == NULL ||
      !valid_mb(m, m->cfg.L + 1, scratch, mb, &l))
    return BT_EINVAL;

  size_t R = mb->B * mb->T, C = m->cfg.C, V = m->cfg.V, layer = m->cfg.L + 1;
  float *hs = bt__layout_region(scratch, &l, H_H);
  float *mean = bt__layout_region(scratch, &l, H_MEAN);
  float *rstd = bt__layout_region(scratch, &l, H_RSTD);
  float *u = bt__layout_region(scratch, &l, H_U);
  float *logits = bt__layout_region(scratch, &l, H_LOGITS);
  int32_t *lab = (int32_t *)(void *)bt__layout_region(scratch, &l, H_LABELS);

  if (total_rows < R)
    return BT_EINVAL;
  for (size_t r = 0; r < R; r++)
    if (y[r] < 0 || (size_t)y[r] >= V)
      return BT_EINVAL;
  memcpy(hs, h, R * C * sizeof(float));
  memcpy(lab, y, R * sizeof(int32_t));
  TRY(bt__layernorm_fwd(u, mean, rstd, hs, lparam(m, layer, HEAD_LN_G),
                        lparam(m, layer, HEAD_LN_B), R, C));
  TRY(bt__linear_fwd(logits, u, head_w(m), NULL, R, C, V));
  return bt__xent_fwd(loss, logits, lab, R, V, total_rows);
}

bt_status
bt__gpt_layer_bwd_input(struct bt__gpt *m, size_t layer, const float *dout,
                        float *din, void *scratch, const struct bt__gpt_mb *mb,
                        size_t total_rows)
{
  struct bt__scratch_layout l;

  if (!valid_mb(m, layer, scratch, mb, &l))
    return BT_EINVAL;

  size_t B = mb->B, T = mb->T, R = B * T, C = m->cfg.C, V = m->cfg.V;

  switch (layer_kind(m, layer)) {
  case KIND_EMBED: {
    float *ds = bt__layout_region(scratch, &l, EMB_DS);
    if (dout == NULL || din != NULL)
      return BT_EINVAL;
    memcpy(ds, dout, R * C * sizeof(float));
    return drop_inplace(m, ds, R, mb, 0);
  }
  case KIND_BLK: {
    uint32_t i = (uint32_t)(layer - 1);
    float *h = bt__layout_region(scratch, &l, B_H);
    float *mean1 = bt__layout_region(scratch, &l, B_MEAN1);
    float *rstd1 = bt__layout_region(scratch, &l, B_RSTD1);
    float *qkv = bt__layout_region(scratch, &l, B_QKV);
    float *att = bt__layout_region(scratch, &l, B_ATT);
    float *h2 = bt__layout_region(scratch, &l, B_H2);
    float *mean2 = bt__layout_region(scratch, &l, B_MEAN2);
    float *rstd2 = bt__layout_region(scratch, &l, B_RSTD2);
    float *p = bt__layout_region(scratch, &l, B_P);
    float *dmo = bt__layout_region(scratch, &l, B_DMO);
    float *dp = bt__layout_region(scratch, &l, B_DP);
    float *dao = bt__layout_region(scratch, &l, B_DAO);
    float *dqkv = bt__layout_region(scratch, &l, B_DQKV);
    float *work = bt__layout_region(scratch, &l, B_WORK);

    if (dout == NULL || din == NULL || dout == din)
      return BT_EINVAL;
    /* The MLP branch: dmo = drop(dout); dp = gelu'(p) (dmo W_mp). */
    memcpy(dmo, dout, R * C * sizeof(float));
    TRY(drop_inplace(m, dmo, R, mb, 2 + 2 * i));
    TRY(bt__linear_bwd_input(dp, dmo, lparam(m, layer, BLK_MP_W), R, 4 * C, C));
    TRY(bt__gelu_bwd(dp, dp, p, R * 4 * C));
    /* dh2 = ln2'(dp W_fc) + dout, in din. */
    TRY(bt__linear_bwd_input(din, dp, lparam(m, layer, BLK_FC_W), R, C, 4 * C));
    TRY(bt__layernorm_bwd(din, lgrad(m, layer, BLK_LN2_G),
                          lgrad(m, layer, BLK_LN2_B), din, h2,
                          lparam(m, layer, BLK_LN2_G), mean2, rstd2, R, C));
    TRY(bt__residual_bwd(din, NULL, dout, R * C));
    /* The attention branch: dao = drop(dh2); dy = dao W_ap into work;
     * dqkv from the attention's backward. */
    memcpy(dao, din, R * C * sizeof(float));
    TRY(drop_inplace(m, dao, R, mb, 1 + 2 * i));
    TRY(bt__linear_bwd_input(work, dao, lparam(m, layer, BLK_AP_W), R, C, C));
    TRY(bt__attention_bwd(dqkv, att, work, qkv, B, T, C, m->cfg.nh));
    /* dh = ln1'(dqkv W_qkv) + dh2: the branch into work, then added. */
    TRY(bt__linear_bwd_input(work, dqkv, lparam(m, layer, BLK_QKV_W), R, C,
                             3 * C));
    TRY(bt__layernorm_bwd(work, lgrad(m, layer, BLK_LN1_G),
                          lgrad(m, layer, BLK_LN1_B), work, h,
                          lparam(m, layer, BLK_LN1_G), mean1, rstd1, R, C));
    return bt__residual_bwd(din, NULL, work, R * C);
  }
  case KIND_HEAD: {
    float *hs = bt__layout_region(scratch, &l, H_H);
    float *mean = bt__layout_region(scratch, &l, H_MEAN);
    float *rstd = bt__layout_region(scratch, &l, H_RSTD);
    float *logits = bt__layout_region(scratch, &l, H_LOGITS);
    const int32_t *lab = (const int32_t *)(void *)bt__layout_region(scratch, &l, H_LABELS);

    if (dout != NULL || din == NULL || total_rows < R)
      return BT_EINVAL;
    TRY(bt__xent_bwd(logits, logits, lab, R, V, total_rows));
    TRY(bt__linear_bwd_input(din, logits, head_w(m), R, C, V));
    return bt__layernorm_bwd(din, lgrad(m, layer, HEAD_LN_G),
                             lgrad(m, layer, HEAD_LN_B), din, hs,
                             lparam(m, layer, HEAD_LN_G), mean, rstd, R, C);
  }
  }
  return BT_EINVAL;
}

bt_status
bt__gpt_layer_bwd_weight(struct bt__gpt *m, size_t layer, void *scratch,
                         const struct bt__gpt_mb *mb)
{
  struct bt__scratch_layout l;

  if (!valid_mb(m, layer, scratch, mb, &l))
    return BT_EINVAL;

  size_t R = mb->B * mb->T, C = m->cfg.C;

  switch (layer_kind(m, layer)) {
  case KIND_EMBED:
    return bt__embedding_bwd(
        lgrad(m, 0, EMB_WTE), lgrad(m, 0, EMB_WPE), bt__layout_region(scratch, &l, EMB_DS),
        (const int32_t *)(void *)bt__layout_region(scratch, &l, EMB_X), mb->B, mb->T, C,
        m->cfg.V, m->cfg.Tmax, 0);
  case KIND_BLK:
    TRY(bt__linear_bwd_weight(
        lgrad(m, layer, BLK_MP_W), lgrad(m, layer, BLK_MP_B),
        bt__layout_region(scratch, &l, B_DMO), bt__layout_region(scratch, &l, B_G), R, 4 * C, C));
    TRY(bt__linear_bwd_weight(
        lgrad(m, layer, BLK_FC_W), lgrad(m, layer, BLK_FC_B),
        bt__layout_region(scratch, &l, B_DP), bt__layout_region(scratch, &l, B_A2), R, C, 4 * C));
    TRY(bt__linear_bwd_weight(
        lgrad(m, layer, BLK_AP_W), lgrad(m, layer, BLK_AP_B),
        bt__layout_region(scratch, &l, B_DAO), bt__layout_region(scratch, &l, B_Y), R, C, C));
    return bt__linear_bwd_weight(
        lgrad(m, layer, BLK_QKV_W), lgrad(m, layer, BLK_QKV_B),
        bt__layout_region(scratch, &l, B_DQKV), bt__layout_region(scratch, &l, B_A1), R, C, 3 * C);
  case KIND_HEAD:
    return bt__linear_bwd_weight(head_dw(m), NULL,
                                 bt__layout_region(scratch, &l, H_LOGITS),
                                 bt__layout_region(scratch, &l, H_U), R, C, m->cfg.V);
  }
  return BT_EINVAL;
}

bt_status
bt__gpt_layer_bwd(struct bt__gpt *m, size_t layer, const float *dout,
                  float *din, void *scratch, const struct bt__gpt_mb *mb,
                  size_t total_rows)
{
  TRY(bt__gpt_layer_bwd_input(m, layer, dout, din, scratch, mb, total_rows));
  return bt__gpt_layer_bwd_weight(m, layer, scratch, mb);
}

/* ---- the reference step ------------------------------------------------- */

/* One microbatch through every layer and back; bufs are three [R,C]
 * buffers (two alternating activations / gradients and one more). */
static bt_status
reference_microbatch(struct bt__gpt *m, const int32_t *x, const int32_t *y,
                     const struct bt__gpt_mb *mb, size_t total_rows,
                     void *const *scratch, float *bufs, float *loss)
{
  size_t L = m->cfg.L, RC = mb->B * mb->T * m->cfg.C;
  float *buf[3] = {bufs, bufs + RC, bufs + 2 * RC};
  float *cur = buf[0];

  TRY(bt__gpt_embed_fwd(m, x, cur, scratch[0], mb));
  for (size_t i = 0; i < L; i++) {
    float *next = buf[(i + 1) % 2];
    TRY(bt__gpt_layer_fwd(m, 1 + i, cur, next, scratch[1 + i], mb));
    cur = next;
  }
  TRY(bt__gpt_head_fwd(m, cur, y, total_rows, scratch[L + 1], mb, loss));

  float *dcur = buf[2];
  TRY(bt__gpt_layer_bwd(m, L + 1, NULL, dcur, scratch[L + 1], mb, total_rows));
  for (size_t i = L; i-- > 0;) {
    float *dnext = dcur == buf[2] ? buf[0] : buf[2];
    TRY(bt__gpt_layer_bwd(m, 1 + i, dcur, dnext, scratch[1 + i], mb,
                          total_rows));
    dcur = dnext;
  }
  return bt__gpt_layer_bwd(m, 0, dcur, NULL, scratch[0], mb, total_rows);
}

static bt_status
range_error(bt_error_t *err, size_t Bm, size_t T)
{
  return bt__errorf(err, BT_ERANGE,
                    "gpt reference step: the activations of %zu sequences "
                    "of %zu tokens overflow size_t (use more microbatches)",
                    Bm, T);
}

bt_status
bt__gpt_reference_step(struct bt__gpt *m, const int32_t *x, const int32_t *y,
                       size_t B, size_t T, size_t microbatches, uint64_t seed,
                       uint32_t step, float *loss, bt_error_t *err)
{
  size_t Bm, N, total = 0, bufs_bytes, sizes_bytes;
  void **scratch = NULL;
  char *block = NULL;
  float sum = 0.0f;
  bt_status st = BT_OK;

  if (m == NULL || x == NULL || y == NULL || loss == NULL)
    return bt__errorf(err, BT_EINVAL,
                      "gpt reference step: model, x, y and loss must not be "
                      "NULL");
  if (B == 0 || T == 0 || T > m->cfg.Tmax)
    return bt__errorf(err, BT_EINVAL,
                      "gpt reference step: B=%zu, T=%zu: need B >= 1 and "
                      "1 <= T <= Tmax=%zu",
                      B, T, m->cfg.Tmax);
  if (microbatches == 0 || B % microbatches != 0)
    return bt__errorf(err, BT_EINVAL,
                      "gpt reference step: the batch's %zu sequences must "
                      "split evenly into %zu microbatches (choose a "
                      "microbatch count that divides B)",
                      B, microbatches);
  if (!bt__mul_fits(B, T, &N))
    return range_error(err, B, T);
  for (size_t r = 0; r < N; r++) {
    if (x[r] < 0 || (size_t)x[r] >= m->cfg.V)
      return bt__errorf(err, BT_EINVAL,
                        "gpt reference step: token x[%zu] = %" PRId32
                        " is outside [0, V=%zu)",
                        r, x[r], m->cfg.V);
    if (y[r] < 0 || (size_t)y[r] >= m->cfg.V)
      return bt__errorf(err, BT_EINVAL,
                        "gpt reference step: target y[%zu] = %" PRId32
                        " is outside [0, V=%zu)",
                        r, y[r], m->cfg.V);
  }
  Bm = B / microbatches;

  for (size_t layer = 0; layer < m->nlayers; layer++) {
    size_t b = bt__gpt_layer_scratch_bytes(m, layer, Bm, T);
    if (b == 0 || __builtin_add_overflow(b, BT__SCRATCH_ALIGN - 1, &b) ||
        __builtin_add_overflow(total, b & ~(size_t)(BT__SCRATCH_ALIGN - 1), &total))
      return range_error(err, Bm, T);
  }
  if (!bt__mul_fits(Bm * T, m->cfg.C, &bufs_bytes) ||
      !bt__mul_fits(bufs_bytes, 3 * sizeof(float), &bufs_bytes) ||
      __builtin_add_overflow(total, bufs_bytes, &sizes_bytes) ||
      sizes_bytes > SIZE_MAX - BT__SCRATCH_ALIGN)
    return range_error(err, Bm, T);
  scratch = calloc(m->nlayers, sizeof(*scratch));
  block = aligned_alloc(BT__SCRATCH_ALIGN, (sizes_bytes + BT__SCRATCH_ALIGN - 1) &
                                           ~(size_t)(BT__SCRATCH_ALIGN - 1));
  if (scratch == NULL || block == NULL) {
    st = bt__errorf(err, BT_ENOMEM,
                    "gpt reference step: out of memory for %zu bytes of "
                    "activations (use more microbatches)",
                    sizes_bytes);
    goto out_free;
  }
  total = 0;
  for (size_t layer = 0; layer < m->nlayers; layer++) {
    size_t b = bt__gpt_layer_scratch_bytes(m, layer, Bm, T);
    scratch[layer] = block + total;
    total += (b + BT__SCRATCH_ALIGN - 1) & ~(size_t)(BT__SCRATCH_ALIGN - 1);
  }

  bt__gpt_zero_grad(m);
  for (size_t k = 0; k < microbatches; k++) {
    struct bt__gpt_mb mb = {Bm, T, k * Bm * T, seed, step};
    float share = 0.0f;
    st =
        reference_microbatch(m, x + k * Bm * T, y + k * Bm * T, &mb, N, scratch,
                             (float *)(void *)(block + total), &share);
    if (st != BT_OK) {
      bt__errorf(err, st,
                 "gpt reference step: microbatch %zu of %zu failed: %s", k,
                 microbatches, bt_strerror(st));
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

/* ---- inference ---------------------------------------------------------- */

/* Regions of an evaluation block: the layers' scratch, two activations,
 * then the caller's own (bt__gpt_logits': the last rows, their LayerNorm
 * and its statistics). */
enum { I_SCRATCH, I_ACT0, I_ACT1, I_LAST, I_U, I_MEAN, I_RSTD, I_NREG };

/* The forward of embed and every block over x [B,T] in evaluation mode
 * (dropout off), into one block the caller frees (*block): the scratch
 * (as large as the largest of layers 0 .. upto's, the layers running one
 * after another), two [R,C] activations, and nextra more regions I_LAST ..
 * of extra[i][0] x extra[i][1] floats.  *h is the blocks' output.
 * Checks the arguments and the tokens; who names the caller. */
static bt_status
eval_blocks(const struct bt__gpt *m, const int32_t *x, size_t B, size_t T,
            size_t upto, const size_t (*extra)[2], int nextra, const char *who,
            struct bt__scratch_layout *l, char **block, float **h,
            bt_error_t *err)
{
  size_t R, C = m->cfg.C, sbytes = 0, bytes;
  bt_status st;

  *block = NULL;
  if (B == 0 || T == 0 || T > m->cfg.Tmax)
    return bt__errorf(err, BT_EINVAL,
                      "gpt %s: B=%zu, T=%zu: need B >= 1 and 1 <= T <= "
                      "Tmax=%zu (keep only the last Tmax tokens)",
                      who, B, T, m->cfg.Tmax);
  if (!bt__mul_fits(B, T, &R))
    goto out_range;
  for (size_t r = 0; r < R; r++)
    if (x[r] < 0 || (size_t)x[r] >= m->cfg.V)
      return bt__errorf(err, BT_EINVAL,
                        "gpt %s: token x[%zu] = %" PRId32
                        " is outside [0, V=%zu)",
                        who, r, x[r], m->cfg.V);
  for (size_t layer = 0; layer <= upto; layer++) {
    size_t b = bt__gpt_layer_scratch_bytes(m, layer, B, T);
    if (b == 0)
      goto out_range;
    sbytes = b > sbytes ? b : sbytes;
  }
  memset(l, 0, sizeof(*l));
  if (!bt__layout_add(l, I_SCRATCH, 1, sbytes, 1) ||
      !bt__layout_add(l, I_ACT0, R, C, sizeof(float)) ||
      !bt__layout_add(l, I_ACT1, R, C, sizeof(float)))
    goto out_range;
  for (int i = 0; i < nextra; i++)
    if (!bt__layout_add(l, I_LAST + i, extra[i][0], extra[i][1],
                        sizeof(float)))
      goto out_range;
  if (__builtin_add_overflow(l->bytes, (size_t)BT__SCRATCH_ALIGN - 1, &bytes))
    goto out_range;
  bytes &= ~(size_t)(BT__SCRATCH_ALIGN - 1);
  *block = aligned_alloc(BT__SCRATCH_ALIGN, bytes);
  if (*block == NULL)
    return bt__errorf(err, BT_ENOMEM,
                      "gpt %s: out of memory for %zu bytes of activations "
                      "(pass fewer or shorter sequences)",
                      who, bytes);

  /* Evaluation mode: a copy of the model's header with dropout 0, whose
   * table points at the same parameters, so the layers draw no masks
   * (their mb keys are then unused). */
  struct bt__gpt eval = *m;
  eval.cfg.dropout = 0.0f;
  const struct bt__gpt_mb mb = {B, T, 0, 0, 0};
  void *scratch = bt__layout_region(*block, l, I_SCRATCH);
  float *act[2] = {bt__layout_region(*block, l, I_ACT0),
                   bt__layout_region(*block, l, I_ACT1)};

  st = bt__gpt_embed_fwd(&eval, x, act[0], scratch, &mb);
  for (size_t i = 0; i < m->cfg.L && st == BT_OK; i++)
    st = bt__gpt_layer_fwd(&eval, 1 + i, act[i % 2], act[(i + 1) % 2], scratch,
                           &mb);
  if (st != BT_OK) {
    free(*block);
    *block = NULL;
    return bt__errorf(err, st, "gpt %s: a layer's forward failed: %s", who,
                      bt_strerror(st));
  }
  *h = act[m->cfg.L % 2];
  return BT_OK;

out_range:
  return bt__errorf(err, BT_ERANGE,
                    "gpt %s: the activations of %zu sequences of %zu tokens "
                    "overflow size_t (pass fewer sequences)",
                    who, B, T);
}

bt_status
bt__gpt_logits(const struct bt__gpt *m, const int32_t *x, size_t B, size_t T,
               float *logits, bt_error_t *err)
{
  struct bt__scratch_layout l;
  size_t C, head;
  char *block;
  float *h, *last, *u;
  bt_status st;

  if (m == NULL || x == NULL || logits == NULL)
    return bt__errorf(err, BT_EINVAL,
                      "gpt logits: model, x and logits must not be NULL");
  C = m->cfg.C;
  head = m->cfg.L + 1;
  {
    const size_t extra[4][2] = {{B, C}, {B, C}, {B, 1}, {B, 1}};
    st = eval_blocks(m, x, B, T, m->cfg.L, extra, 4, "logits", &l, &block, &h,
                     err);
  }
  if (st != BT_OK)
    return st;
  last = bt__layout_region(block, &l, I_LAST);
  u = bt__layout_region(block, &l, I_U);
  /* Only the last position's rows go through the head. */
  for (size_t b = 0; b < B; b++)
    memcpy(last + b * C, h + (b * T + T - 1) * C, C * sizeof(float));
  st = bt__layernorm_fwd(u, bt__layout_region(block, &l, I_MEAN),
                         bt__layout_region(block, &l, I_RSTD), last,
                         lparam(m, head, HEAD_LN_G), lparam(m, head, HEAD_LN_B),
                         B, C);
  if (st == BT_OK)
    st = bt__linear_fwd(logits, u, head_w(m), NULL, B, C, m->cfg.V);
  if (st != BT_OK)
    bt__errorf(err, st, "gpt logits: the head's forward failed: %s",
               bt_strerror(st));
  free(block);
  return st;
}

bt_status
bt__gpt_eval_loss(const struct bt__gpt *m, const int32_t *x, const int32_t *y,
                  size_t B, size_t T, float *loss, bt_error_t *err)
{
  struct bt__scratch_layout l;
  char *block;
  float *h;
  bt_status st;

  if (m == NULL || x == NULL || y == NULL || loss == NULL)
    return bt__errorf(err, BT_EINVAL,
                      "gpt eval: model, x, y and loss must not be NULL");
  for (size_t r = 0; B > 0 && T > 0 && T <= m->cfg.Tmax && r < B * T; r++)
    if (y[r] < 0 || (size_t)y[r] >= m->cfg.V)
      return bt__errorf(err, BT_EINVAL,
                        "gpt eval: target y[%zu] = %" PRId32
                        " is outside [0, V=%zu)",
                        r, y[r], m->cfg.V);
  st = eval_blocks(m, x, B, T, m->cfg.L + 1, NULL, 0, "eval", &l, &block, &h,
                   err);
  if (st != BT_OK)
    return st;
  {
    /* The head in evaluation mode too (it draws no masks anyway). */
    struct bt__gpt eval = *m;
    const struct bt__gpt_mb mb = {B, T, 0, 0, 0};
    eval.cfg.dropout = 0.0f;
    st = bt__gpt_head_fwd(&eval, h, y, B * T,
                          bt__layout_region(block, &l, I_SCRATCH), &mb, loss);
  }
  if (st != BT_OK)
    bt__errorf(err, st, "gpt eval: the head's forward failed: %s",
               bt_strerror(st));
  free(block);
  return st;
}

/* The first maximal logit. */
static size_t
argmax(const float *v, size_t n)
{
  size_t best = 0;

  for (size_t i = 1; i < n; i++)
    if (v[i] > v[best])
      best = i;
  return best;
}

/* A draw from softmax(logits [V] / temperature) with the uniform u in
 * [0, 1); the weights are summed in double, and rounding that leaves the
 * target past the last token falls back on the last token of nonzero
 * weight. */
static size_t
sample(const float *logits, size_t V, float temperature, double u)
{
  size_t top = argmax(logits, V), pick = top;
  double sum = 0.0, target, acc = 0.0;

  for (size_t i = 0; i < V; i++)
    sum += exp(((double)logits[i] - (double)logits[top]) / temperature);
  target = u * sum;
  for (size_t i = 0; i < V; i++) {
    double w = exp(((double)logits[i] - (double)logits[top]) / temperature);
    if (w <= 0.0)
      continue;
    pick = i;
    acc += w;
    if (acc > target)
      break;
  }
  return pick;
}

bt_status
bt__gpt_generate(const struct bt__gpt *m, const int32_t *prompt, size_t nprompt,
                 size_t n, float temperature, uint64_t seed, int32_t *out,
                 bt_error_t *err)
{
  static const int32_t newline = 10;
  int32_t *win;
  float *logits;
  size_t len, Tmax, V;
  bt_status st = BT_OK;

  if (m == NULL || (out == NULL && n > 0) || (prompt == NULL && nprompt > 0))
    return bt__errorf(err, BT_EINVAL,
                      "gpt generate: model must not be NULL, nor out when "
                      "n > 0, nor prompt when nprompt > 0");
  if (!(temperature >= 0.0f) || isinf(temperature))
    return bt__errorf(err, BT_EINVAL,
                      "gpt generate: temperature %g must be finite and >= 0 "
                      "(0 takes the most likely token)",
                      (double)temperature);
  V = m->cfg.V;
  Tmax = m->cfg.Tmax;
  for (size_t i = 0; i < nprompt; i++)
    if (prompt[i] < 0 || (size_t)prompt[i] >= V)
      return bt__errorf(err, BT_EINVAL,
                        "gpt generate: prompt[%zu] = %" PRId32
                        " is outside [0, V=%zu)",
                        i, prompt[i], V);
  if (nprompt == 0) {
    if (V <= (size_t)newline)
      return bt__errorf(err, BT_EINVAL,
                        "gpt generate: an empty prompt starts from the byte "
                        "'\\n' (10), outside [0, V=%zu); pass a prompt",
                        V);
    prompt = &newline;
    nprompt = 1;
  }
  if (n == 0)
    return BT_OK;

  win = malloc(Tmax * sizeof(*win));
  logits = malloc(V * sizeof(*logits));
  if (win == NULL || logits == NULL) {
    st = bt__errorf(err, BT_ENOMEM,
                    "gpt generate: out of memory for a window of %zu tokens "
                    "and %zu logits",
                    Tmax, V);
    goto out_free;
  }
  len = nprompt < Tmax ? nprompt : Tmax;
  memcpy(win, prompt + (nprompt - len), len * sizeof(*win));
  for (size_t i = 0; i < n; i++) {
    size_t tok;

    st = bt__gpt_logits(m, win, 1, len, logits, err);
    if (st != BT_OK)
      goto out_free;
    if (temperature == 0.0f) {
      tok = argmax(logits, V);
    } else {
      double u = (double)(bt__splitmix64_at(seed, i) >> 11) * 0x1p-53;
      tok = sample(logits, V, temperature, u);
    }
    out[i] = (int32_t)tok;
    /* Slide the window: drop the oldest token once it holds Tmax. */
    if (len == Tmax) {
      memmove(win, win + 1, (Tmax - 1) * sizeof(*win));
      len--;
    }
    win[len++] = (int32_t)tok;
  }

out_free:
  free(logits);
  free(win);
  return st;
}

/* ---- optimizers --------------------------------------------------------- */

bt_status
bt__gpt_sgd(struct bt__gpt *m, float lr)
{
  return bt__params_sgd(m != NULL ? &m->table : NULL, lr);
}

bt_status
bt__gpt_adamw_init(const struct bt__gpt *m, struct bt__params_adamw_state *state)
{
  return bt__params_adamw_init(m != NULL ? &m->table : NULL, state);
}

void
bt__gpt_adamw_deinit(struct bt__params_adamw_state *state)
{
  bt__params_adamw_deinit(state);
}

bt_status
bt__gpt_adamw(struct bt__gpt *m, float lr, float b1, float b2, float eps,
              float wd, int64_t t, struct bt__params_adamw_state *state)
{
  return bt__params_adamw(m != NULL ? &m->table : NULL, lr, b1, b2, eps, wd,
                          t, state);
}

/* ---- files -------------------------------------------------------------- */

bt_status
bt__gpt_dump(const struct bt__gpt *m, const char *path, const int32_t *x,
             const int32_t *y, size_t B, size_t T, float loss, bt_error_t *err)
{
  size_t nx;

  if (m == NULL || path == NULL || x == NULL || y == NULL || B == 0 || T == 0)
    return bt__errorf(err, BT_EINVAL,
                      "gpt dump: model, path, x and y must not be NULL and "
                      "B, T at least 1");
  if (!bt__mul_fits(B, T, &nx) || !bt__mul_fits(nx, sizeof(int32_t), &nx))
    return bt__errorf(err, BT_ERANGE, "gpt dump: x of %zu x %zu overflows", B,
                      T);

  const bt_st_tensor_t lead[3] = {
      {.name = "x", .dtype = BT_ST_I32, .ndim = 2,
       .shape = {(int64_t)B, (int64_t)T}, .data = x, .bytes = nx},
      {.name = "y", .dtype = BT_ST_I32, .ndim = 2,
       .shape = {(int64_t)B, (int64_t)T}, .data = y, .bytes = nx},
      {.name = "loss", .dtype = BT_ST_F32, .ndim = 1, .shape = {1},
       .data = &loss, .bytes = sizeof(float)}};
  return bt__params_dump(&m->table, path, lead, 3, "gpt", err);
}

bt_status
bt__gpt_save(const struct bt__gpt *m, const char *path, bt_error_t *err)
{
  return bt__params_save(m != NULL ? &m->table : NULL, path, "gpt", err);
}

bt_status
bt__gpt_load(struct bt__gpt *m, const char *path, bt_error_t *err)
{
  char missing[160] = "", shape[128] = "", extra[128] = "";

  if (m != NULL) {
    const char *tie = m->cfg.tied ? "tied" : "untied";
    snprintf(missing, sizeof(missing), "V=%zu, C=%zu, L=%zu, Tmax=%zu, %s",
             m->cfg.V, m->cfg.C, m->cfg.L, m->cfg.Tmax, tie);
    snprintf(shape, sizeof(shape), "V=%zu, C=%zu, L=%zu, Tmax=%zu", m->cfg.V,
             m->cfg.C, m->cfg.L, m->cfg.Tmax);
    snprintf(extra, sizeof(extra), "V=%zu, C=%zu, L=%zu, %s", m->cfg.V,
             m->cfg.C, m->cfg.L, tie);
  }
  const struct bt__params_load_desc desc = {missing, shape, extra};
  return bt__params_load(m != NULL ? &m->table : NULL, path, "gpt", &desc,
                         err);
}
