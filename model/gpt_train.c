/* Pipelined, data-parallel training of gpt: stage and epilogue callbacks
 * over the model's layer functions, driven by bt_pipeline.  See
 * gpt_train.h for the contract. */
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "baton/pipeline.h"
#include "error.h"
#include "gpt_train.h"
#include "kernels.h"

#define ALIGN 64

struct gstage {
  struct bt__gpt_train *t;
  int32_t s;
  size_t first, last; /* layers [first, last] */
  size_t lo, hi;      /* the layers' slice of the flat blocks */
  size_t mb_bytes;    /* scratch bytes of one microbatch */
  /* Per replica: one block of m microbatches' scratch, two [Rows,C]
   * buffers between the stage's layers, the dropped flags. */
  unsigned char **block;  /* [R] */
  void **scratch;         /* [R * m * nl] */
  float **tmp;            /* [R * 2] */
  bool *dropped;          /* [R * m] */
  int32_t nslots;         /* scratch slots per replica (bt__stages_slots) */
  struct bt__slots *pool; /* [R]: each microbatch's slot */
};

struct bt__gpt_train {
  struct bt__gpt_train_config cfg; /* copy; balance/schedule/stage_device
                                      cleared */
  int32_t R, S, p, m;
  size_t B, T, Bm, rows; /* rows = Bm * T per microbatch */
  struct bt__gpt **rep;  /* [R]; rep[0] is the caller's */
  struct gstage *st;     /* [S] */
  int32_t *layer_stage;  /* [nlayers] */
  bool split_tie;
  int32_t embed_stage, head_stage;
  float *wte_copy; /* [R][2][V C]: head_wte, head_gwte per replica */
  struct bt__params_adamw_state *adam;  /* [R], the flat blocks */
  struct bt__params_adamw_state *adamh; /* [R], the head's wte copy */
  int64_t adam_t;                       /* AdamW steps taken */
  bt_pipeline_t *pl;
  struct bt__held held;
  bt_comm_t *comm;
  double *shares;      /* [R * m]: the loss shares of the last step */
  int32_t *stage_rank; /* [R * S]: the rank of each (replica, stage) */
  /* Written by bt__gpt_train_step before bt_pipeline_step (the runtime's
   * step start publishes them), read-only during the step. */
  const int32_t *x, *y;
  uint32_t step;
  bool do_update;
};

static size_t
round_up(size_t n)
{
  return (n + ALIGN - 1) / ALIGN * ALIGN;
}

static size_t
nlayers_of(const struct gstage *st)
{
  return st->last - st->first + 1;
}

/* Replica r's microbatch k's scratch of layer (k holds a slot). */
static void *
scratch_of(const struct gstage *st, int32_t r, int32_t k, size_t layer)
{
  size_t nl = nlayers_of(st);
  return st
      ->scratch[((size_t)r * (size_t)st->nslots + (size_t)st->pool[r].of[k]) *
                    nl +
                (layer - st->first)];
}

/* The global first sequence of replica r's microbatch k. */
static size_t
seq0_of(const struct bt__gpt_train *t, int32_t r, int32_t k)
{
  return (size_t)r * (t->B / (size_t)t->R) + (size_t)k * t->Bm;
}

static struct bt__gpt_mb
mb_of(const struct bt__gpt_train *t, int32_t r, int32_t k)
{
  struct bt__gpt_mb mb;

  mb.B = t->Bm;
  mb.T = t->T;
  mb.row0 = seq0_of(t, r, k) * t->T;
  mb.seed = t->cfg.dropout_seed;
  mb.step = t->step;
  return mb;
}

/* The stage's per-replica buffer that is not `a`. */
static float *
other_tmp(const struct gstage *st, int32_t r, const float *a)
{
  float *t0 = st->tmp[2 * (size_t)r], *t1 = st->tmp[2 * (size_t)r + 1];
  return t0 != a ? t0 : t1;
}

/* Forward of replica r's microbatch k through the stage.  When rebuilding
 * (recompute) it does not write the pipeline's output: its consumer has
 * read it, and the value would be bitwise the same. */
static int
stage_forward(struct gstage *st, const bt_stage_call_t *c, bool rebuilding,
              char *errbuf, size_t errlen)
{
  struct bt__gpt_train *t = st->t;
  int32_t r = c->replica, k = c->microbatch;
  struct bt__gpt *m = t->rep[r];
  struct bt__gpt_mb mb = mb_of(t, r, k);
  size_t off = seq0_of(t, r, k) * t->T, L = m->cfg.L;
  const float *cur = c->input;
  bt_status rc;

  for (size_t l = st->first; l <= st->last; l++) {
    void *scr = scratch_of(st, r, k, l);
    if (l == L + 1) {
      float share = 0.0f;
      rc = bt__gpt_head_fwd(m, cur, t->y + off, t->B * t->T, scr, &mb, &share);
      if (rc != BT_OK)
        return bt__stages_layer_error(errbuf, errlen, "gpt", "forward", l, rc);
      if (!rebuilding)
        *(float *)c->output = share;
      continue;
    }
    float *out =
        l == st->last && !rebuilding ? c->output : other_tmp(st, r, cur);
    rc = l == 0 ? bt__gpt_embed_fwd(m, t->x + off, out, scr, &mb)
                : bt__gpt_layer_fwd(m, l, cur, out, scr, &mb);
    if (rc != BT_OK)
      return bt__stages_layer_error(errbuf, errlen, "gpt", "forward", l, rc);
    cur = out;
  }
  return 0;
}

static void
drop_scratch(struct gstage *st, int32_t r, int32_t k)
{
  const struct bt__gpt_train *t = st->t;

  for (size_t l = st->first; l <= st->last; l++)
    memset(scratch_of(st, r, k, l), 0xff,
           bt__gpt_layer_scratch_bytes(t->rep[r], l, t->Bm, t->T));
  bt__slots_give(&st->pool[r], k);
  st->dropped[(size_t)r * (size_t)t->m + (size_t)k] = true;
}

static int
cb_forward(const bt_stage_call_t *c, char *errbuf, size_t errlen)
{
  struct gstage *st = c->user;
  struct bt__gpt_train *t = st->t;
  int rc;

  bt__stages_perturb(t->cfg.perturb, c);
  rc = bt__slots_claim(&st->pool[c->replica], c->microbatch, st->s, errbuf,
                       errlen);
  if (rc == 0)
    rc = stage_forward(st, c, false, errbuf, errlen);
  if (rc != 0)
    return rc;
  /* A checkpointed microbatch's scratch is poisoned (a missed recompute
   * shows in every gradient) and rebuilt before its backward. */
  if (bt__stages_checkpointed(t->cfg.checkpoint, c->microbatch, t->m))
    drop_scratch(st, c->replica, c->microbatch);
  else
    bt__held_add(&t->held, c->device, st->mb_bytes);
  return 0;
}

static int
cb_recompute(const bt_stage_call_t *c, char *errbuf, size_t errlen)
{
  struct gstage *st = c->user;
  struct bt__gpt_train *t = st->t;
  size_t at = (size_t)c->replica * (size_t)t->m + (size_t)c->microbatch;
  int rc;

  if (!st->dropped[at])
    return 0;
  bt__stages_perturb(t->cfg.perturb, c);
  rc = bt__slots_claim(&st->pool[c->replica], c->microbatch, st->s, errbuf,
                       errlen);
  if (rc == 0)
    rc = stage_forward(st, c, true, errbuf, errlen);
  if (rc == 0) {
    st->dropped[at] = false;
    bt__held_add(&t->held, c->device, st->mb_bytes);
  }
  return rc;
}

static int
stage_input_grad(struct gstage *st, const bt_stage_call_t *c, char *errbuf,
                 size_t errlen)
{
  struct bt__gpt_train *t = st->t;
  int32_t r = c->replica, k = c->microbatch;
  struct bt__gpt *m = t->rep[r];
  struct bt__gpt_mb mb = mb_of(t, r, k);
  const float *dcur = c->grad_output;
  bt_status rc;

  if (st->dropped[(size_t)r * (size_t)t->m + (size_t)k]) {
    snprintf(errbuf, errlen,
             "microbatch %d's activations were dropped and not recomputed",
             (int)k);
    return BT_EINVAL;
  }
  for (size_t l = st->last + 1; l-- > st->first;) {
    void *scr = scratch_of(st, r, k, l);
    float *din = NULL;
    if (l > 0)
      din = l == st->first ? c->grad_input : other_tmp(st, r, dcur);
    rc = bt__gpt_layer_bwd_input(m, l, l == m->cfg.L + 1 ? NULL : dcur, din,
                                 scr, &mb, t->B * t->T);
    if (rc != BT_OK)
      return bt__stages_layer_error(errbuf, errlen, "gpt", "input grad", l, rc);
    dcur = din;
  }
  return 0;
}

static int
stage_weight_grad(struct gstage *st, const bt_stage_call_t *c, char *errbuf,
                  size_t errlen)
{
  struct bt__gpt_train *t = st->t;
  struct bt__gpt_mb mb = mb_of(t, c->replica, c->microbatch);
  bt_status rc;

  for (size_t l = st->last + 1; l-- > st->first;) {
    rc = bt__gpt_layer_bwd_weight(t->rep[c->replica], l,
                                  scratch_of(st, c->replica, c->microbatch, l),
                                  &mb);
    if (rc != BT_OK)
      return bt__stages_layer_error(errbuf, errlen, "gpt", "weight grad", l,
                                    rc);
  }
  return 0;
}

static int
cb_input_grad(const bt_stage_call_t *c, char *errbuf, size_t errlen)
{
  struct gstage *st = c->user;

  bt__stages_perturb(st->t->cfg.perturb, c);
  return stage_input_grad(st, c, errbuf, errlen);
}

static int
cb_weight_grad(const bt_stage_call_t *c, char *errbuf, size_t errlen)
{
  struct gstage *st = c->user;
  int rc;

  bt__stages_perturb(st->t->cfg.perturb, c);
  rc = stage_weight_grad(st, c, errbuf, errlen);
  if (rc == 0) {
    bt__held_sub(&st->t->held, c->device, st->mb_bytes);
    bt__slots_give(&st->pool[c->replica], c->microbatch);
  }
  return rc;
}

/* A full backward: every layer's input half, then every weight half.  The
 * layers' weight gradients are disjoint (the LayerNorms' are accumulated by
 * the input halves), so this is bitwise bt__gpt_layer_bwd per layer. */
static int
cb_backward(const bt_stage_call_t *c, char *errbuf, size_t errlen)
{
  struct gstage *st = c->user;
  int rc;

  bt__stages_perturb(st->t->cfg.perturb, c);
  rc = stage_input_grad(st, c, errbuf, errlen);
  if (rc == 0)
    rc = stage_weight_grad(st, c, errbuf, errlen);
  if (rc == 0) {
    bt__held_sub(&st->t->held, c->device, st->mb_bytes);
    bt__slots_give(&st->pool[c->replica], c->microbatch);
  }
  return rc;
}

/* ---- the epilogue ---------------------------------------------------------
 */

static size_t
vc(const struct bt__gpt_train *t)
{
  return t->rep[0]->cfg.V * t->rep[0]->cfg.C;
}

static float *
wte_of(const struct bt__gpt *m, bool grad)
{
  const struct bt__params_tensor *w = &m->tensors[m->layer_tensor[0]];
  return (grad ? m->grads : m->params) + w->offset;
}

/* Gradient memory for baton's own tie sum and all-reduce (pipeline.h):
 * part 0 of a stage is its layers' slice of the flat block, part 1 of the
 * head's stage (split tie) the head's copy of wte's gradient. */
static float *
grad_tensor(int32_t r, int32_t s, int32_t part, size_t *count, void *user)
{
  struct bt__gpt_train *t = user;
  const struct gstage *st = &t->st[s];
  /* A replica this rank does not run has no model here: the pipeline asks
   * for its tensors only to size transfers (pipeline.h), and gets replica
   * 0's, which have the same sizes. */
  struct bt__gpt *m = t->rep[r] != NULL ? t->rep[r] : t->rep[0];

  if (part == 0) {
    *count = st->hi - st->lo;
    return m->grads + st->lo;
  }
  if (part == 1 && t->split_tie && s == t->head_stage) {
    *count = vc(t);
    return m->head_gwte;
  }
  return NULL;
}

/* The tie's copies: embed's wte gradient (side 0), the head's (side 1).
 * baton writes a + b into both, embed's first, as the one-device model
 * order would have them summed. */
static float *
tie_tensor(int32_t r, int32_t tie, int32_t side, size_t *count, void *user)
{
  struct bt__gpt_train *t = user;
  struct bt__gpt *m = t->rep[r] != NULL ? t->rep[r] : t->rep[0];

  (void)tie;
  *count = vc(t);
  return side == 0 ? wte_of(m, true) : m->head_gwte;
}

/* The stage's squared gradient norm on replica 0 (the head's wte copy is
 * the embed stage's wte, counted there). */
static int
cb_sqnorm(const bt_stage_call_t *c, char *errbuf, size_t errlen)
{
  struct bt__gpt_train *t = c->user;
  const struct gstage *st = &t->st[c->stage];
  const float *g = t->rep[0]->grads;
  double sum = 0.0;

  (void)errbuf;
  (void)errlen;
  for (size_t i = st->lo; i < st->hi; i++)
    sum += (double)g[i] * (double)g[i];
  *c->sqnorm = sum;
  return 0;
}

static void
scale_by(float *g, size_t n, float scale)
{
  for (size_t i = 0; i < n; i++)
    g[i] *= scale;
}

/* Replica r's optimizer step on stage s, gradients scaled first. */
static bt_status
update_stage(struct bt__gpt_train *t, int32_t r, int32_t s, double scale)
{
  const struct gstage *st = &t->st[s];
  struct bt__gpt *m = t->rep[r];
  const struct bt__gpt_train_config *o = &t->cfg;
  size_t n = st->hi - st->lo;
  bool head = t->split_tie && s == t->head_stage;
  bt_status rc;

  if (scale != 1.0) {
    scale_by(m->grads + st->lo, n, (float)scale);
    if (head)
      scale_by(m->head_gwte, vc(t), (float)scale);
  }
  if (o->optimizer == BT__OPT_SGD) {
    rc = bt__sgd_update(m->params + st->lo, m->grads + st->lo, n, o->lr, 0.0f);
    if (rc == BT_OK && head)
      rc = bt__sgd_update(m->head_wte, m->head_gwte, vc(t), o->lr, 0.0f);
    return rc;
  }
  rc = bt__adamw_update(m->params + st->lo, t->adam[r].m + st->lo,
                        t->adam[r].v + st->lo, m->grads + st->lo, n, o->lr,
                        o->beta1, o->beta2, o->eps, o->weight_decay,
                        t->adam_t + 1);
  if (rc == BT_OK && head)
    rc = bt__adamw_update(m->head_wte, t->adamh[r].m, t->adamh[r].v,
                          m->head_gwte, vc(t), o->lr, o->beta1, o->beta2,
                          o->eps, o->weight_decay, t->adam_t + 1);
  return rc;
}

static int
cb_update(const bt_stage_call_t *c, char *errbuf, size_t errlen)
{
  struct bt__gpt_train *t = c->user;
  bt_status rc;

  if (!t->do_update)
    return 0;
  rc = update_stage(t, c->replica, c->stage, c->grad_scale);
  if (rc != BT_OK)
    snprintf(errbuf, errlen, "the optimizer step failed: %s", bt_strerror(rc));
  return (int)rc;
}

static void sync_replicas(struct bt__gpt_train *t);

/* ---- create ---------------------------------------------------------------
 */

static bt_status
check_config(const struct bt__gpt_train_config *c, bt_error_t *err)
{
  size_t parts;

  if (c == NULL || c->size < sizeof *c || c->model == NULL ||
      c->schedule == NULL)
    return bt__errorf(err, BT_EINVAL,
                      "bt__gpt_train_create needs a config started from "
                      "BT__GPT_TRAIN_CONFIG_INIT with a model and a "
                      "schedule");
  if (c->microbatches < 1 || c->devices < 1 || c->virtual_stages < 0 ||
      c->replicas < 1 || c->replicas > 4096)
    return bt__errorf(err, BT_EINVAL,
                      "training needs microbatches >= 1, devices >= 1, "
                      "virtual_stages >= 0 and 1 <= replicas <= 4096 (got "
                      "m=%d, p=%d, v=%d, R=%d)",
                      (int)c->microbatches, (int)c->devices,
                      (int)c->virtual_stages, (int)c->replicas);
  parts = (size_t)c->microbatches * (size_t)c->replicas;
  if (c->batch == 0 || c->batch % parts != 0)
    return bt__errorf(err, BT_EINVAL,
                      "the batch's %zu sequences do not split evenly into "
                      "%d replicas x %d microbatches; choose a batch that "
                      "is a multiple of %zu",
                      c->batch, (int)c->replicas, (int)c->microbatches, parts);
  if (c->seq == 0 || c->seq > c->model->cfg.Tmax)
    return bt__errorf(err, BT_EINVAL,
                      "sequence length %zu is outside 1 .. %zu (the model's "
                      "positions)",
                      c->seq, c->model->cfg.Tmax);
  if (!(c->max_grad_norm >= 0.0) || isinf(c->max_grad_norm))
    return bt__errorf(err, BT_EINVAL,
                      "max_grad_norm %g: give a finite value > 0 to clip, "
                      "or 0 not to",
                      c->max_grad_norm);
  if (c->optimizer != BT__OPT_SGD && c->optimizer != BT__OPT_ADAMW)
    return bt__errorf(err, BT_EINVAL,
                      "optimizer %d is not sgd (%d) or "
                      "adamw (%d)",
                      (int)c->optimizer, BT__OPT_SGD, BT__OPT_ADAMW);
  return bt__stages_check_mode(c->checkpoint, err);
}

static size_t
flat_offset(const struct bt__gpt *m, size_t layer)
{
  return layer >= m->nlayers ? m->nparams
                             : m->tensors[m->layer_tensor[layer]].offset;
}

/* Stage st's scratch (`slots` per replica) and buffers, for the replicas
 * this rank runs (none elsewhere). */
static bt_status
alloc_stage(struct bt__gpt_train *t, struct gstage *st, int32_t slots,
            bt_error_t *err)
{
  const struct bt__gpt *m = t->rep[0];
  size_t nl = nlayers_of(st), per_mb = 0, total, rc_bytes;
  int32_t me = bt_comm_rank(t->comm);

  for (size_t l = st->first; l <= st->last; l++) {
    size_t b = bt__gpt_layer_scratch_bytes(m, l, t->Bm, t->T);
    if (b == 0 || __builtin_add_overflow(per_mb, round_up(b), &per_mb))
      goto range;
  }
  if (!bt__mul_fits(t->rows, m->cfg.C, &rc_bytes) ||
      !bt__mul_fits(rc_bytes, sizeof(float), &rc_bytes) ||
      !bt__mul_fits(per_mb, (size_t)slots, &total) ||
      __builtin_add_overflow(total, 2 * round_up(rc_bytes), &total))
    goto range;
  st->mb_bytes = per_mb;
  st->nslots = slots;
  st->block = calloc((size_t)t->R, sizeof *st->block);
  st->scratch = calloc((size_t)t->R * (size_t)slots * nl, sizeof *st->scratch);
  st->tmp = calloc(2 * (size_t)t->R, sizeof *st->tmp);
  st->dropped = calloc((size_t)t->R * (size_t)t->m, sizeof *st->dropped);
  st->pool = calloc((size_t)t->R, sizeof *st->pool);
  if (!st->block || !st->scratch || !st->tmp || !st->dropped || !st->pool)
    goto nomem;
  for (int32_t r = 0; r < t->R; r++) {
    size_t off = 0;
    unsigned char *b;
    if (t->stage_rank[(size_t)r * t->S + st->s] != me)
      continue; /* another rank runs it */
    b = aligned_alloc(ALIGN, total);
    if (b == NULL || bt__slots_init(&st->pool[r], slots, t->m) != BT_OK) {
      free(b);
      goto nomem;
    }
    memset(b, 0, total);
    st->block[r] = b;
    for (int32_t k = 0; k < slots; k++)
      for (size_t l = st->first; l <= st->last; l++) {
        st->scratch[((size_t)r * (size_t)slots + (size_t)k) * nl +
                    (l - st->first)] = b + off;
        off += round_up(bt__gpt_layer_scratch_bytes(m, l, t->Bm, t->T));
      }
    st->tmp[2 * (size_t)r] = (float *)(void *)(b + off);
    st->tmp[2 * (size_t)r + 1] =
        (float *)(void *)(b + off + round_up(rc_bytes));
  }
  return BT_OK;
nomem:
  return bt__errorf(err, BT_ENOMEM,
                    "out of memory for stage %d's activations (%zu bytes per "
                    "replica; use more microbatches or a shorter sequence)",
                    (int)st->s, per_mb * (size_t)slots);
range:
  return bt__errorf(err, BT_ERANGE,
                    "stage %d's activations for %zu rows overflow size_t "
                    "(use more microbatches)",
                    (int)st->s, t->rows);
}

/* Whether this rank runs any stage of replica r. */
static bool
replica_here(const struct bt__gpt_train *t, int32_t r)
{
  int32_t me = bt_comm_rank(t->comm);

  for (int32_t s = 0; s < t->S; s++)
    if (t->stage_rank[(size_t)r * t->S + s] == me)
      return true;
  return false;
}

/* Replicas 1 .. R-1 that this rank runs (the others stay NULL), the head's
 * wte copies and the optimizer state. */
static bt_status
alloc_replicas(struct bt__gpt_train *t, bt_error_t *err)
{
  const struct bt__gpt *m0 = t->cfg.model;

  t->rep = calloc((size_t)t->R, sizeof *t->rep);
  if (t->rep == NULL)
    return bt__errorf(err, BT_ENOMEM, "out of memory creating the trainer");
  t->rep[0] = t->cfg.model;
  for (int32_t r = 1; r < t->R; r++) {
    bt_status rc;
    if (!replica_here(t, r))
      continue; /* another rank runs it */
    rc = bt__gpt_create(&m0->cfg, 0, &t->rep[r], err);
    if (rc != BT_OK)
      return rc;
  }
  if (t->split_tie) {
    size_t n = vc(t), bytes;
    if (!bt__mul_fits(n, 2 * (size_t)t->R * sizeof(float), &bytes))
      return bt__errorf(err, BT_ERANGE, "the wte copies overflow size_t");
    t->wte_copy = calloc(1, bytes);
    if (t->wte_copy == NULL)
      return bt__errorf(err, BT_ENOMEM,
                        "out of memory for the head's copies of wte");
    for (int32_t r = 0; r < t->R; r++) {
      if (t->rep[r] == NULL)
        continue;
      t->rep[r]->head_wte = t->wte_copy + 2 * (size_t)r * n;
      t->rep[r]->head_gwte = t->wte_copy + (2 * (size_t)r + 1) * n;
    }
  }
  if (t->cfg.optimizer == BT__OPT_ADAMW) {
    t->adam = calloc((size_t)t->R, sizeof *t->adam);
    t->adamh = calloc((size_t)t->R, sizeof *t->adamh);
    if (t->adam == NULL || t->adamh == NULL)
      return bt__errorf(err, BT_ENOMEM, "out of memory for AdamW's state");
    for (int32_t r = 0; r < t->R; r++) {
      if (t->rep[r] == NULL)
        continue;
      if (bt__gpt_adamw_init(t->rep[r], &t->adam[r]) != BT_OK)
        return bt__errorf(err, BT_ENOMEM, "out of memory for AdamW's state");
      if (t->split_tie) {
        t->adamh[r].m = calloc(vc(t), sizeof(float));
        t->adamh[r].v = calloc(vc(t), sizeof(float));
        if (t->adamh[r].m == NULL || t->adamh[r].v == NULL)
          return bt__errorf(err, BT_ENOMEM, "out of memory for AdamW's state");
      }
    }
  }
  return BT_OK;
}

static bt_status
make_stages(struct bt__gpt_train *t, int32_t v, bt_error_t *err)
{
  const struct bt__gpt *m = t->cfg.model;
  size_t *first = malloc(((size_t)t->S + 1) * sizeof *first);
  bt_status rc;

  t->st = calloc((size_t)t->S, sizeof *t->st);
  t->layer_stage = calloc(m->nlayers, sizeof *t->layer_stage);
  if (first == NULL || t->st == NULL || t->layer_stage == NULL) {
    free(first);
    return bt__errorf(err, BT_ENOMEM, "out of memory creating the trainer");
  }
  rc = bt__stages_partition(m->nlayers, t->S, t->p, v, t->cfg.balance,
                            t->cfg.nbalance, "embed", first, err);
  for (int32_t s = 0; rc == BT_OK && s < t->S; s++) {
    struct gstage *st = &t->st[s];
    st->t = t;
    st->s = s;
    st->first = first[s];
    st->last = first[s + 1] - 1;
    st->lo = flat_offset(m, st->first);
    st->hi = flat_offset(m, st->last + 1);
    for (size_t l = st->first; l <= st->last; l++)
      t->layer_stage[l] = s;
  }
  free(first);
  if (rc != BT_OK)
    return rc;
  t->embed_stage = t->layer_stage[0];
  t->head_stage = t->layer_stage[m->nlayers - 1];
  t->split_tie = m->cfg.tied && t->embed_stage != t->head_stage;
  return BT_OK;
}

static bt_status
make_pipeline(struct bt__gpt_train *t, int32_t v, bt_error_t *err)
{
  bt_pipeline_config_t pc = BT_PIPELINE_CONFIG_INIT;
  bt_pipeline_tie_t tie;
  bt_stage_desc_t *desc = calloc((size_t)t->S, sizeof *desc);
  size_t rc_bytes = t->rows * t->rep[0]->cfg.C * sizeof(float);
  bt_status rc;

  if (desc == NULL)
    return bt__errorf(err, BT_ENOMEM, "out of memory creating the trainer");
  for (int32_t s = 0; s < t->S; s++) {
    struct gstage *st = &t->st[s];
    desc[s] = (bt_stage_desc_t)BT_STAGE_DESC_INIT;
    desc[s].forward = cb_forward;
    desc[s].backward = cb_backward;
    desc[s].input_grad = cb_input_grad;
    desc[s].weight_grad = cb_weight_grad;
    desc[s].recompute = cb_recompute;
    desc[s].output_bytes = s == t->S - 1 ? sizeof(float) : rc_bytes;
    desc[s].grad_input_bytes = s == 0 ? 0 : rc_bytes;
    desc[s].cost_f = desc[s].cost_b = desc[s].cost_w = (double)nlayers_of(st);
    desc[s].user = st;
  }
  pc.stages = t->S;
  pc.stage = desc;
  pc.devices = t->p;
  pc.virtual_stages = v;
  pc.microbatches = t->m;
  pc.schedule = t->cfg.schedule;
  pc.stage_device = t->cfg.stage_device;
  pc.threads = t->cfg.threads;
  pc.trace = t->cfg.trace;
  pc.replicas = t->R;
  pc.user = t;
  pc.comm = t->comm;
  if (t->split_tie) {
    tie.name = "wte";
    tie.stage_a = t->embed_stage;
    tie.stage_b = t->head_stage;
    pc.ties = &tie;
    pc.nties = 1;
    pc.tie_tensor = tie_tensor;
  }
  pc.grad_tensor = grad_tensor;
  pc.max_grad_norm = t->cfg.max_grad_norm;
  pc.grad_sqnorm = t->cfg.max_grad_norm > 0 ? cb_sqnorm : NULL;
  pc.update = cb_update;
  rc = bt_pipeline_create(&pc, &t->pl, err);
  free(desc);
  return rc;
}

bt_status
bt__gpt_train_create(const struct bt__gpt_train_config *cfg,
                     struct bt__gpt_train **out, bt_error_t *err)
{
  struct bt__gpt_train *t;
  int32_t v;
  bt_status rc;

  if (out == NULL)
    return bt__errorf(err, BT_EINVAL, "bt__gpt_train_create: NULL out");
  *out = NULL;
  rc = check_config(cfg, err);
  if (rc != BT_OK)
    return rc;
  v = cfg->virtual_stages ? cfg->virtual_stages
                          : bt_schedule_default_virtual(cfg->schedule);
  if (cfg->devices > INT32_MAX / v / cfg->replicas)
    return bt__errorf(err, BT_EINVAL,
                      "%d devices x %d virtual stages x %d "
                      "replicas is too many",
                      (int)cfg->devices, (int)v, (int)cfg->replicas);
  t = calloc(1, sizeof *t);
  if (t == NULL)
    return bt__errorf(err, BT_ENOMEM, "out of memory creating the trainer");
  t->cfg = *cfg;
  t->R = cfg->replicas;
  t->p = cfg->devices;
  t->m = cfg->microbatches;
  t->S = cfg->devices * v;
  t->B = cfg->batch;
  t->T = cfg->seq;
  t->Bm = t->B / ((size_t)t->R * (size_t)t->m);
  t->rows = t->Bm * t->T;
  t->comm = cfg->comm;
  if ((size_t)t->S > cfg->model->nlayers) {
    rc = bt__stages_partition(cfg->model->nlayers, t->S, t->p, v, NULL, 0,
                              "embed", NULL, err);
    goto out_free;
  }
  rc = make_stages(t, v, err);
  if (rc == BT_OK && (bt__held_init(&t->held, t->R * t->p) != BT_OK ||
                      (t->stage_rank = calloc((size_t)t->R * (size_t)t->S,
                                              sizeof *t->stage_rank)) == NULL ||
                      (t->shares = calloc((size_t)t->R * (size_t)t->m,
                                          sizeof *t->shares)) == NULL))
    rc = bt__errorf(err, BT_ENOMEM, "out of memory creating the trainer");
  for (int32_t r = 0; rc == BT_OK && r < t->R; r++)
    for (int32_t s = 0; s < t->S; s++)
      t->stage_rank[(size_t)r * t->S + s] =
          bt__stages_rank(t->comm, cfg->stage_device, s, r, t->p, t->R);
  if (rc == BT_OK)
    rc = alloc_replicas(t, err);
  if (rc == BT_OK)
    sync_replicas(t);
  if (rc == BT_OK)
    rc = make_pipeline(t, v, err);
  /* Activation scratch: as many slots per stage as the plan ever holds. */
  if (rc == BT_OK) {
    int32_t *slots = calloc((size_t)t->S, sizeof *slots);
    if (slots == NULL)
      rc = bt__errorf(err, BT_ENOMEM, "out of memory creating the trainer");
    else
      bt__stages_slots(bt_pipeline_plan(t->pl), t->m, t->cfg.checkpoint, slots);
    for (int32_t s = 0; rc == BT_OK && s < t->S; s++)
      rc = alloc_stage(t, &t->st[s], slots[s], err);
    free(slots);
  }
  if (rc != BT_OK)
    goto out_free;
  t->cfg.balance = NULL;
  t->cfg.schedule = NULL;
  t->cfg.stage_device = NULL;
  *out = t;
  return BT_OK;
out_free:
  bt__gpt_train_destroy(t);
  return rc;
}

/* Replica 0's parameters to the other replicas and to the head's copies. */
static void
sync_replicas(struct bt__gpt_train *t)
{
  const struct bt__gpt *m0 = t->rep[0];

  for (int32_t r = 1; r < t->R; r++)
    if (t->rep[r] != NULL)
      memcpy(t->rep[r]->params, m0->params, m0->nparams * sizeof(float));
  for (int32_t r = 0; t->split_tie && r < t->R; r++)
    if (t->rep[r] != NULL)
      memcpy(t->rep[r]->head_wte, wte_of(m0, false), vc(t) * sizeof(float));
}

void
bt__gpt_train_refresh_tie(struct bt__gpt_train *t)
{
  if (t != NULL && t->split_tie)
    memcpy(t->rep[0]->head_wte, wte_of(t->rep[0], false),
           vc(t) * sizeof(float));
}

void
bt__gpt_train_needs(const struct bt__gpt_train *t, int *x, int *y)
{
  int32_t me = bt_comm_rank(t->comm);

  *x = *y = 0;
  for (int32_t r = 0; r < t->R; r++) {
    *x |= t->stage_rank[(size_t)r * t->S + t->embed_stage] == me;
    *y |= t->stage_rank[(size_t)r * t->S + t->head_stage] == me;
  }
}

int32_t
bt__gpt_train_stage_rank(const struct bt__gpt_train *t, int32_t s)
{
  return t != NULL && s >= 0 && s < t->S ? t->stage_rank[s] : -1;
}

/* x or y [B,T]: every token in [0, V). */
static bt_status
check_tokens(const struct bt__gpt_train *t, const int32_t *v, const char *n,
             bt_error_t *err)
{
  size_t V = t->rep[0]->cfg.V;

  for (size_t i = 0; v != NULL && i < t->B * t->T; i++)
    if (v[i] < 0 || (size_t)v[i] >= V)
      return bt__errorf(err, BT_EINVAL,
                        "token %zu (%s %" PRId32 ") is outside [0, V=%zu)", i,
                        n, v[i], V);
  return BT_OK;
}

bt_status
bt__gpt_train_step(struct bt__gpt_train *t, const int32_t *x, const int32_t *y,
                   uint32_t step, bool update, float *loss, bt_error_t *err)
{
  size_t n;
  int need_x, need_y;
  int32_t me;
  bt_status rc;

  if (t == NULL || loss == NULL)
    return bt__errorf(err, BT_EINVAL,
                      "bt__gpt_train_step: trainer and loss must not be NULL");
  bt__gpt_train_needs(t, &need_x, &need_y);
  if ((need_x && x == NULL) || (need_y && y == NULL))
    return bt__errorf(err, BT_EINVAL,
                      "bt__gpt_train_step: this rank runs %s and needs %s",
                      need_x && x == NULL ? "an embed stage" : "a head stage",
                      need_x && x == NULL ? "x" : "y");
  if ((rc = check_tokens(t, need_x ? x : NULL, "x", err)) != BT_OK ||
      (rc = check_tokens(t, need_y ? y : NULL, "y", err)) != BT_OK)
    return rc;
  n = (size_t)t->R * (size_t)t->m;
  memset(t->shares, 0, n * sizeof *t->shares);
  if (bt_comm_size(t->comm) <= 1)
    sync_replicas(t);
  for (int32_t r = 0; r < t->R; r++) {
    if (t->rep[r] == NULL)
      continue;
    bt__gpt_zero_grad(t->rep[r]);
    if (t->split_tie)
      memset(t->rep[r]->head_gwte, 0, vc(t) * sizeof(float));
  }
  t->x = x;
  t->y = y;
  t->step = step;
  t->do_update = update;
  bt__held_reset(&t->held);
  for (int32_t s = 0; s < t->S; s++) {
    for (int32_t r = 0; r < t->R; r++)
      if (t->st[s].pool[r].of != NULL)
        bt__slots_reset(&t->st[s].pool[r]);
    memset(t->st[s].dropped, 0,
           (size_t)t->R * (size_t)t->m * sizeof *t->st[s].dropped);
  }
  rc = bt_pipeline_step(t->pl, err);
  t->x = t->y = NULL;
  if (rc == BT_OK) {
    if (update)
      t->adam_t++;
    /* The shares in replica then microbatch order, in float: the
     * reference's order for R m microbatches. */
    me = bt_comm_rank(t->comm);
    for (int32_t r = 0; r < t->R; r++)
      for (int32_t k = 0; k < t->m; k++)
        if (t->stage_rank[(size_t)r * t->S + t->S - 1] == me)
          t->shares[(size_t)r * t->m + (size_t)k] =
              *(const float *)bt_pipeline_replica_output(t->pl, r, t->S - 1, k,
                                                         NULL);
    rc = bt__stages_loss(t->comm, t->shares, n, loss, err);
  }
  return rc;
}

bt_status
bt__gpt_train_update(struct bt__gpt_train *t, bt_error_t *err)
{
  double scale = 1.0;
  int32_t me;

  if (t == NULL)
    return bt__errorf(err, BT_EINVAL, "bt__gpt_train_update: NULL trainer");
  /* The clip's scale, as the graph computed it (pipeline.h). */
  if (t->cfg.max_grad_norm > 0) {
    scale = t->cfg.max_grad_norm / (bt_pipeline_grad_norm(t->pl) + 1e-6);
    if (scale > 1.0)
      scale = 1.0;
  }
  me = bt_comm_rank(t->comm);
  for (int32_t r = 0; r < t->R; r++)
    for (int32_t s = 0; s < t->S; s++) {
      bt_status rc;
      if (t->stage_rank[(size_t)r * t->S + s] != me)
        continue;
      rc = update_stage(t, r, s, scale);
      if (rc != BT_OK)
        return bt__errorf(err, rc,
                          "the optimizer step failed on stage %d: "
                          "%s",
                          (int)s, bt_strerror(rc));
    }
  t->adam_t++;
  return BT_OK;
}

double
bt__gpt_train_grad_norm(const struct bt__gpt_train *t)
{
  return t != NULL ? bt_pipeline_grad_norm(t->pl) : NAN;
}

struct bt__gpt *
bt__gpt_train_replica(const struct bt__gpt_train *t, int32_t r)
{
  return t != NULL && r >= 0 && r < t->R ? t->rep[r] : NULL;
}

int32_t
bt__gpt_train_stages(const struct bt__gpt_train *t)
{
  return t != NULL ? t->S : 0;
}

int32_t
bt__gpt_train_stage_of_layer(const struct bt__gpt_train *t, size_t layer)
{
  if (t == NULL || layer >= t->rep[0]->nlayers)
    return -1;
  return t->layer_stage[layer];
}

bool
bt__gpt_train_split_tie(const struct bt__gpt_train *t)
{
  return t != NULL && t->split_tie;
}

size_t
bt__gpt_train_stage_bytes(const struct bt__gpt_train *t, int32_t s)
{
  if (t == NULL || s < 0 || s >= t->S)
    return 0;
  return t->st[s].mb_bytes;
}

size_t
bt__gpt_train_peak_held_bytes(const struct bt__gpt_train *t, int32_t device)
{
  if (t == NULL || device < 0 || device >= t->R * t->p)
    return 0;
  return t->held.peak[device];
}

const bt_plan_t *
bt__gpt_train_plan(const struct bt__gpt_train *t)
{
  return t != NULL ? bt_pipeline_plan(t->pl) : NULL;
}

bt_status
bt__gpt_train_slices(const struct bt__gpt_train *t, bt_slice_t *slices,
                     size_t *count)
{
  if (t == NULL)
    return BT_EINVAL;
  return bt_pipeline_slices(t->pl, slices, count);
}

void
bt__gpt_train_destroy(struct bt__gpt_train *t)
{
  if (t == NULL)
    return;
  bt_pipeline_destroy(t->pl);
  for (int32_t s = 0; t->st != NULL && s < t->S; s++) {
    struct gstage *st = &t->st[s];
    for (int32_t r = 0; st->block != NULL && r < t->R; r++)
      free(st->block[r]);
    free(st->block);
    free(st->scratch);
    free(st->tmp);
    free(st->dropped);
    for (int32_t r = 0; st->pool != NULL && r < t->R; r++)
      bt__slots_free(&st->pool[r]);
    free(st->pool);
  }
  free(t->st);
  free(t->layer_stage);
  for (int32_t r = 0; t->rep != NULL && r < t->R; r++) {
    if (t->rep[r] == NULL)
      continue;
    t->rep[r]->head_wte = t->rep[r]->head_gwte = NULL;
    if (t->adam != NULL)
      bt__gpt_adamw_deinit(&t->adam[r]);
    if (t->adamh != NULL) {
      free(t->adamh[r].m);
      free(t->adamh[r].v);
    }
    if (r > 0)
      bt__gpt_destroy(t->rep[r]);
  }
  free(t->rep);
  free(t->adam);
  free(t->adamh);
  free(t->wte_copy);
  bt__held_free(&t->held);
  free(t->stage_rank);
  free(t->shares);
  free(t);
}
