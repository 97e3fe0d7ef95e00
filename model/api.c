/* The public model and trainer API (<baton/model.h>): thin wrappers over
 * the resmlp model (resmlp.h) and the pipelined trainer (train.h), plus
 * what only the public API does: config checks, the optimizer step and its
 * state, prediction, and balance by measured time. */
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "baton/model.h"
#include "error.h"
#include "kernels.h"
#include "api.h"
#include "backend.h"

/* The first version of each config ends at its last field: what a caller's
 * size must cover.  Newer, longer configs are read up to what this library
 * knows. */
#define RESMLP_CONFIG_V1_SIZE                                                 \
  (offsetof(bt_resmlp_config_t, seed) + sizeof(uint64_t))

/* Rows per forward in bt_model_predict: bounds its scratch. */
#define PREDICT_ROWS 256

/* Balance by time: timed repetitions per layer (after one warm-up); the
 * median is the layer's cost. */
#define BALANCE_REPS 5


/* ---- model ---------------------------------------------------------------- */

bt_status
bt_model_create_resmlp(const bt_resmlp_config_t *config, bt_model_t **out,
                       bt_error_t *err)
{
  bt_resmlp_config_t c;
  struct bt__resmlp_config rc_cfg;
  bt_model_t *model;
  bt_status rc;

  if (out == NULL)
    return bt__errorf(err, BT_EINVAL, "bt_model_create_resmlp: NULL out");
  *out = NULL;
  if (config == NULL || config->size < RESMLP_CONFIG_V1_SIZE)
    return bt__errorf(err, BT_EINVAL,
                      "bt_model_create_resmlp needs a config started from "
                      "BT_RESMLP_CONFIG_INIT");
  memset(&c, 0, sizeof c);
  memcpy(&c, config, config->size < sizeof c ? config->size : sizeof c);
  if (c.inputs < 1 || c.hidden < 1 || c.classes < 2 || c.blocks < 0)
    return bt__errorf(err, BT_EINVAL,
                      "resmlp needs inputs >= 1, hidden >= 1, classes >= 2 "
                      "and blocks >= 0 (got D=%d, H=%d, C=%d, L=%d)",
                      (int)c.inputs, (int)c.hidden, (int)c.classes,
                      (int)c.blocks);
  rc_cfg.D = (size_t)c.inputs;
  rc_cfg.H = (size_t)c.hidden;
  rc_cfg.C = (size_t)c.classes;
  rc_cfg.L = (size_t)c.blocks;
  rc_cfg.long_skip = c.long_skip != 0;

  model = calloc(1, sizeof *model);
  if (model == NULL)
    return bt__errorf(err, BT_ENOMEM, "out of memory creating a model");
  model->kind = BT__MODEL_RESMLP;
  rc = bt__resmlp_create(&rc_cfg, c.seed, &model->m, err);
  if (rc != BT_OK)
    goto out_free_model;
  model->tbl = &model->m->table;
  rc = bt__api_name_layers(model, "in", err);
  if (rc != BT_OK)
    goto out_free_model;
  *out = model;
  return BT_OK;

out_free_model:
  bt_model_destroy(model);
  return rc;
}

bt_status
bt__api_name_layers(bt_model_t *model, const char *first, bt_error_t *err)
{
  size_t nl = model->tbl->nlayers;

  model->layer_names = calloc(nl, sizeof *model->layer_names);
  if (model->layer_names == NULL)
    return bt__errorf(err, BT_ENOMEM, "out of memory creating a model");
  for (size_t l = 0; l < nl; l++) {
    if (l == 0)
      snprintf(model->layer_names[l], LAYER_NAME_MAX, "%s", first);
    else if (l == nl - 1)
      snprintf(model->layer_names[l], LAYER_NAME_MAX, "head");
    else
      snprintf(model->layer_names[l], LAYER_NAME_MAX, "blk%zu", l - 1);
  }
  return BT_OK;
}

const char *
bt_model_kind(const bt_model_t *model)
{
  if (model == NULL)
    return NULL;
  return model->kind == BT__MODEL_GPT ? "gpt" : "resmlp";
}

void
bt_model_destroy(bt_model_t *model)
{
  if (model == NULL)
    return;
  bt__resmlp_destroy(model->m);
  bt__gpt_destroy(model->g);
  free(model->layer_names);
  free(model);
}

int32_t
bt_model_layer_count(const bt_model_t *model)
{
  return model != NULL ? (int32_t)model->tbl->nlayers : 0;
}

const char *
bt_model_layer_name(const bt_model_t *model, int32_t layer)
{
  if (model == NULL || layer < 0 || (size_t)layer >= model->tbl->nlayers)
    return NULL;
  return model->layer_names[layer];
}

size_t
bt_model_param_count(const bt_model_t *model)
{
  return model != NULL ? model->tbl->ntensors : 0;
}

bt_status
bt_model_param(const bt_model_t *model, size_t index, bt_param_t *out)
{
  const struct bt__params *m;
  const struct bt__params_tensor *t;
  int32_t layer = 0;

  if (model == NULL || out == NULL)
    return BT_EINVAL;
  m = model->tbl;
  if (index >= m->ntensors)
    return BT_ERANGE;
  t = &m->tensors[index];
  while ((size_t)layer + 1 < m->nlayers &&
         m->layer_tensor[layer + 1] <= index)
    layer++;
  memset(out, 0, sizeof *out);
  out->name = t->name;
  out->ndim = t->ndim;
  for (int d = 0; d < t->ndim; d++)
    out->shape[d] = (int64_t)t->shape[d];
  out->value = m->params + t->offset;
  out->grad = m->grads + t->offset;
  out->count = t->count;
  out->layer = layer;
  return BT_OK;
}

bt_status
bt_model_save(const bt_model_t *model, const char *path, bt_error_t *err)
{
  if (model == NULL || path == NULL)
    return bt__errorf(err, BT_EINVAL,
                      "bt_model_save: model and path must not be NULL");
  return model->kind == BT__MODEL_GPT ? bt__gpt_save(model->g, path, err)
                                      : bt__resmlp_save(model->m, path, err);
}

bt_status
bt_model_load(bt_model_t *model, const char *path, bt_error_t *err)
{
  if (model == NULL || path == NULL)
    return bt__errorf(err, BT_EINVAL,
                      "bt_model_load: model and path must not be NULL");
  return model->kind == BT__MODEL_GPT ? bt__gpt_load(model->g, path, err)
                                      : bt__resmlp_load(model->m, path, err);
}

bt_status
bt_model_reference_step(bt_model_t *model, const float *x, const int32_t *y,
                        size_t n, int32_t microbatches, float *loss,
                        bt_error_t *err)
{
  if (model == NULL || x == NULL || y == NULL || loss == NULL)
    return bt__errorf(err, BT_EINVAL,
                      "bt_model_reference_step: model, x, y and loss must "
                      "not be NULL");
  if (microbatches < 1)
    return bt__errorf(err, BT_EINVAL,
                      "bt_model_reference_step needs microbatches >= 1 (got "
                      "%d)",
                      (int)microbatches);
  if (model->kind != BT__MODEL_RESMLP)
    return bt__errorf(err, BT_EINVAL, "bt_model_reference_step is for "
                      "resmlp; a gpt model takes token ids: use "
                      "bt_model_reference_step_tokens");
  return bt__resmlp_reference_step(model->m, x, y, n, (size_t)microbatches,
                                   loss, err);
}

/* Forward of R rows through layers 0 .. L and the head's LayerNorm and
 * linear, computed as the head's forward does (the same kernels on the same
 * inputs, so the logits are bitwise the training forward's) without the
 * loss, which would need labels. */
static bt_status
predict_rows(const struct bt__resmlp *m, const float *x, size_t R,
             void *scratch, float *a, float *b, float *h0, float *u,
             float *mean, float *rstd, float *logits, int32_t *classes)
{
  const struct bt__params_tensor *g = bt__resmlp_find(m, "head.ln.g");
  const struct bt__params_tensor *be = bt__resmlp_find(m, "head.ln.b");
  const struct bt__params_tensor *w = bt__resmlp_find(m, "head.w");
  const struct bt__params_tensor *bias = bt__resmlp_find(m, "head.b");
  size_t H = m->cfg.H, C = m->cfg.C;
  float *cur = a, *next = b;
  bt_status rc;

  if (g == NULL || be == NULL || w == NULL || bias == NULL)
    return BT_EINVAL;
  rc = bt__resmlp_layer_fwd(m, 0, x, cur, scratch, R);
  if (rc != BT_OK)
    return rc;
  if (m->cfg.long_skip)
    memcpy(h0, cur, R * H * sizeof(float));
  for (size_t l = 1; l <= m->cfg.L; l++) {
    float *tmp;
    rc = bt__resmlp_layer_fwd(m, l, cur, next, scratch, R);
    if (rc != BT_OK)
      return rc;
    tmp = cur;
    cur = next;
    next = tmp;
  }
  if (m->cfg.long_skip) {
    rc = bt__resmlp_long_skip_fwd(m, cur, cur, h0, R);
    if (rc != BT_OK)
      return rc;
  }
  rc = bt__layernorm_fwd(u, mean, rstd, cur, m->params + g->offset,
                         m->params + be->offset, R, H);
  if (rc != BT_OK)
    return rc;
  rc = bt__linear_fwd(logits, u, m->params + w->offset,
                      m->params + bias->offset, R, H, C);
  if (rc != BT_OK)
    return rc;
  for (size_t r = 0; r < R; r++) {
    const float *row = logits + r * C;
    size_t best = 0;
    for (size_t c = 1; c < C; c++)
      if (row[c] > row[best])
        best = c;
    classes[r] = (int32_t)best;
  }
  return BT_OK;
}

bt_status
bt_model_predict(const bt_model_t *model, const float *x, size_t n,
                 int32_t *classes, bt_error_t *err)
{
  const struct bt__resmlp *m;
  size_t rows, scratch_bytes = 0, rh, D, H, C;
  void *scratch = NULL;
  float *buf = NULL;
  bt_status rc = BT_OK;

  if (model == NULL || x == NULL || classes == NULL || n == 0)
    return bt__errorf(err, BT_EINVAL,
                      "bt_model_predict: model, x and classes must not be "
                      "NULL and n must be >= 1");
  if (model->kind != BT__MODEL_RESMLP)
    return bt__errorf(err, BT_EINVAL, "bt_model_predict is for resmlp; a "
                      "gpt model predicts tokens: use bt_model_generate or "
                      "bt_model_eval_tokens");
  m = model->m;
  D = m->cfg.D;
  H = m->cfg.H;
  C = m->cfg.C;
  rows = n < PREDICT_ROWS ? n : PREDICT_ROWS;
  for (size_t l = 0; l <= m->cfg.L; l++) {
    size_t s = bt__resmlp_layer_scratch_bytes(m, l, rows);
    if (s == 0)
      return bt__errorf(err, BT_ERANGE,
                        "bt_model_predict: layer %zu's scratch for %zu rows "
                        "overflows size_t",
                        l, rows);
    if (s > scratch_bytes)
      scratch_bytes = s;
  }
  if (!bt__mul_fits(rows, H, &rh) || rh > SIZE_MAX / sizeof(float) / 8 ||
      rows * C / C != rows)
    return bt__errorf(err, BT_ERANGE,
                      "bt_model_predict: %zu rows of width %zu overflow "
                      "size_t",
                      rows, H);
  scratch = malloc(scratch_bytes);
  /* a, b, h0, u [rows,H]; mean, rstd [rows]; logits [rows,C]. */
  buf = malloc((4 * rh + 2 * rows + rows * C) * sizeof(float));
  if (scratch == NULL || buf == NULL) {
    rc = bt__errorf(err, BT_ENOMEM,
                    "out of memory for bt_model_predict's buffers");
    goto out_free;
  }
  for (size_t at = 0; at < n; at += rows) {
    size_t R = n - at < rows ? n - at : rows;
    rc = predict_rows(m, x + at * D, R, scratch, buf, buf + rh, buf + 2 * rh,
                      buf + 3 * rh, buf + 4 * rh, buf + 4 * rh + rows,
                      buf + 4 * rh + 2 * rows, classes + at);
    if (rc != BT_OK) {
      rc = bt__errorf(err, rc, "bt_model_predict: the forward failed: %s",
                      bt_strerror(rc));
      goto out_free;
    }
  }

out_free:
  free(buf);
  free(scratch);
  return rc;
}

/* ---- balance by time -------------------------------------------------------
 * As torchgpipe's balance_by_time: each layer's forward plus backward on one
 * microbatch of random data is timed (median of BALANCE_REPS after a
 * warm-up), then the layers are cut into S contiguous stages minimising the
 * slowest stage.  The timing decides only the partition; every partition
 * computes the same loss and gradients (up to summation order), so results
 * equal the reference step whatever the clock says. */

static double
now_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int
cmp_double(const void *a, const void *b)
{
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Median forward + backward time of each layer, in ns (at least 1), into
 * cost[nlayers].  Leaves the model's parameters and gradients as they were
 * (the backward accumulates gradients; they are saved and restored). */
static bt_status
measure_layers(struct bt__resmlp *m, size_t R, double *cost, bt_error_t *err)
{
  size_t nl = m->nlayers, D = m->cfg.D, H = m->cfg.H, C = m->cfg.C;
  size_t scratch_bytes = 0, width = D > H ? D : H, nin;
  double reps[BALANCE_REPS];
  void *scratch = NULL;
  float *saved = NULL, *in = NULL, *out = NULL, *dout = NULL;
  int32_t *labels = NULL;
  uint64_t state = 0x62616c616e6365ull; /* fixed: the data is irrelevant */
  bt_status rc = BT_OK;

  for (size_t l = 0; l < nl; l++) {
    size_t s = bt__resmlp_layer_scratch_bytes(m, l, R);
    if (s == 0)
      return bt__errorf(err, BT_ERANGE,
                        "layer %zu's activations for %zu rows overflow "
                        "size_t (use more microbatches)",
                        l, R);
    if (s > scratch_bytes)
      scratch_bytes = s;
  }
  if (!bt__mul_fits(R, width, &nin) || nin > SIZE_MAX / sizeof(float))
    return bt__errorf(err, BT_ERANGE,
                      "%zu rows of width %zu overflow size_t", R, width);
  scratch = malloc(scratch_bytes);
  saved = malloc(m->nparams * sizeof(float));
  in = malloc(nin * sizeof(float));
  out = malloc(nin * sizeof(float));
  dout = malloc(nin * sizeof(float));
  labels = malloc(R * sizeof(int32_t));
  if (scratch == NULL || saved == NULL || in == NULL || out == NULL ||
      dout == NULL || labels == NULL) {
    rc = bt__errorf(err, BT_ENOMEM,
                    "out of memory measuring the layers' times to balance "
                    "the stages (give a balance instead)");
    goto out_free;
  }
  memcpy(saved, m->grads, m->nparams * sizeof(float));
  for (size_t i = 0; i < nin; i++) {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    in[i] = (float)(z >> 40) * 0x1.0p-23f - 1.0f;
    dout[i] = in[i] * 1e-3f;
  }
  for (size_t r = 0; r < R; r++)
    labels[r] = (int32_t)(r % C);

  for (size_t l = 0; l < nl; l++) {
    for (int k = -1; k < BALANCE_REPS; k++) {
      double t0 = now_ns();
      float loss;
      if (l == nl - 1) {
        rc = bt__resmlp_head_fwd(m, in, labels, R, scratch, R, &loss);
        if (rc == BT_OK)
          rc = bt__resmlp_layer_bwd(m, l, NULL, out, scratch, R, R);
      } else {
        rc = bt__resmlp_layer_fwd(m, l, in, out, scratch, R);
        if (rc == BT_OK)
          rc = bt__resmlp_layer_bwd(m, l, dout, l == 0 ? NULL : out, scratch,
                                    R, R);
      }
      if (rc != BT_OK) {
        rc = bt__errorf(err, rc,
                        "timing layer %zu to balance the stages failed: %s",
                        l, bt_strerror(rc));
        goto out_restore;
      }
      if (k >= 0)
        reps[k] = now_ns() - t0;
    }
    qsort(reps, BALANCE_REPS, sizeof reps[0], cmp_double);
    cost[l] = reps[BALANCE_REPS / 2] > 1.0 ? reps[BALANCE_REPS / 2] : 1.0;
  }

out_restore:
  memcpy(m->grads, saved, m->nparams * sizeof(float));
out_free:
  free(labels);
  free(dout);
  free(out);
  free(in);
  free(saved);
  free(scratch);
  return rc;
}

/* The contiguous partition of n layers (costs cost[n]) into S <= n stages,
 * each >= 1 layer, that minimises the largest stage cost, into balance[S].
 * best[k][i] is the smallest possible maximum over the suffix [i, n) cut
 * into k stages (exact DP); among optimal partitions the earlier stages
 * take as many layers as they can.  Every segment cost is prefix[j] -
 * prefix[i], computed the same way everywhere, so the comparisons with the
 * optimum are exact. */
bt_status
bt__api_partition_by_cost(const double *cost, size_t n, int32_t S, int32_t *balance,
                  bt_error_t *err)
{
  double *prefix = malloc((n + 1) * sizeof *prefix);
  double *best = malloc((size_t)(S + 1) * (n + 1) * sizeof *best);
  size_t at = 0;
  double opt;

  if (prefix == NULL || best == NULL) {
    free(prefix);
    free(best);
    return bt__errorf(err, BT_ENOMEM,
                      "out of memory balancing the stages (give a balance "
                      "instead)");
  }
#define BEST(k, i) best[(size_t)(k) * (n + 1) + (i)]
#define SEG(i, j) (prefix[j] - prefix[i])
  prefix[0] = 0.0;
  for (size_t l = 0; l < n; l++)
    prefix[l + 1] = prefix[l] + cost[l];
  for (size_t i = 0; i <= n; i++)
    BEST(0, i) = i == n ? 0.0 : INFINITY;
  for (int32_t k = 1; k <= S; k++)
    for (size_t i = 0; i <= n; i++) {
      double b = INFINITY;
      /* The first of the k stages is [i, j); k - 1 stages need j <= n - k + 1. */
      for (size_t j = i + 1; j + (size_t)k <= n + 1; j++) {
        double c = fmax(SEG(i, j), BEST(k - 1, j));
        if (c < b)
          b = c;
      }
      BEST(k, i) = b;
    }
  opt = BEST(S, 0);
  for (int32_t s = 0; s < S; s++) {
    size_t rem = (size_t)(S - s - 1), take = 0;
    if (rem == 0) {
      take = n - at;
    } else {
      for (size_t j = at + 1; j + rem <= n; j++)
        if (SEG(at, j) <= opt && BEST(rem, j) <= opt)
          take = j - at;
      if (take == 0) /* cannot happen: the optimum's own cut qualifies */
        take = 1;
    }
    balance[s] = (int32_t)take;
    at += take;
  }
#undef BEST
#undef SEG
  free(prefix);
  free(best);
  return BT_OK;
}

/* ---- trainer -------------------------------------------------------------- */

static bt_status
check_trainer_config(const bt_trainer_config_t *c, bt_error_t *err)
{
  if (c->schedule == NULL)
    return bt__errorf(err, BT_EINVAL,
                      "the trainer needs a schedule (config.schedule, e.g. "
                      "from bt_schedule_builtin(\"1f1b\"))");
  if (c->batch < 1 || c->microbatches < 1 || c->devices < 1 ||
      c->virtual_stages < 0 || c->threads < 0)
    return bt__errorf(err, BT_EINVAL,
                      "the trainer needs batch >= 1, microbatches >= 1, "
                      "devices >= 1, virtual_stages >= 0 and threads >= 0 "
                      "(got N=%d, m=%d, p=%d, v=%d, threads=%d)",
                      (int)c->batch, (int)c->microbatches, (int)c->devices,
                      (int)c->virtual_stages, (int)c->threads);
  if (c->batch % c->microbatches != 0)
    return bt__errorf(err, BT_EINVAL,
                      "the batch's %d rows do not split evenly into %d "
                      "microbatches; choose a microbatch count that divides "
                      "N",
                      (int)c->batch, (int)c->microbatches);
  if (c->checkpoint < BT_CHECKPOINT_NEVER ||
      c->checkpoint > BT_CHECKPOINT_ALWAYS)
    return bt__errorf(err, BT_EINVAL,
                      "checkpoint mode %d is not one of never (0), "
                      "except_last (1), always (2)",
                      (int)c->checkpoint);
  if (c->balance == NULL && c->nbalance != 0)
    return bt__errorf(err, BT_EINVAL,
                      "nbalance is %d but balance is NULL; set both, or "
                      "nbalance = 0 to balance by measured time",
                      (int)c->nbalance);
  if (!isfinite(c->lr) || !isfinite(c->weight_decay))
    return bt__errorf(err, BT_EINVAL,
                      "lr and weight_decay must be finite (got %g, %g)",
                      (double)c->lr, (double)c->weight_decay);
  switch (c->optimizer) {
  case BT_OPTIMIZER_SGD:
    break;
  case BT_OPTIMIZER_ADAMW:
    if (!(c->beta1 >= 0.0f && c->beta1 < 1.0f) ||
        !(c->beta2 >= 0.0f && c->beta2 < 1.0f) || !(c->eps >= 0.0f) ||
        !isfinite(c->eps))
      return bt__errorf(err, BT_EINVAL,
                        "AdamW needs beta1 and beta2 in [0, 1) and a finite "
                        "eps >= 0 (got %g, %g, %g)",
                        (double)c->beta1, (double)c->beta2, (double)c->eps);
    break;
  default:
    return bt__errorf(err, BT_EINVAL,
                      "optimizer %d is not one of sgd (%d), adamw (%d)",
                      (int)c->optimizer, BT_OPTIMIZER_SGD,
                      BT_OPTIMIZER_ADAMW);
  }
  return BT_OK;
}

bt_status
bt_trainer_create(bt_model_t *model, const bt_trainer_config_t *config,
                  bt_trainer_t **out, bt_error_t *err)
{
  struct bt__train_config tc = BT__TRAIN_CONFIG_INIT;
  bt_trainer_config_t c;
  bt_trainer_t *tr;
  int32_t *auto_balance = NULL, v, nl;
  double *cost = NULL;
  bt_status rc;

  if (out == NULL)
    return bt__errorf(err, BT_EINVAL, "bt_trainer_create: NULL out");
  *out = NULL;
  if (model == NULL)
    return bt__errorf(err, BT_EINVAL, "bt_trainer_create: NULL model");
  if (config == NULL || config->size < TRAINER_CONFIG_V1_SIZE)
    return bt__errorf(err, BT_EINVAL,
                      "bt_trainer_create needs a config started from "
                      "BT_TRAINER_CONFIG_INIT");
  memset(&c, 0, sizeof c);
  memcpy(&c, config, config->size < sizeof c ? config->size : sizeof c);
  c.size = sizeof c;
  nl = (int32_t)model->tbl->nlayers;
  rc = check_trainer_config(&c, err);
  if (rc != BT_OK)
    return rc;
  v = c.virtual_stages ? c.virtual_stages
                       : bt_schedule_default_virtual(c.schedule);
  if (v < 1)
    v = 1;
  if (c.devices > INT32_MAX / v || c.devices * v > nl)
    return bt__errorf(err, BT_EINVAL,
                      "more stages than layers: %d devices x %d virtual "
                      "stages, but the model has only %d layers (in, %d "
                      "blocks, head); use fewer devices or virtual stages, "
                      "or more blocks",
                      (int)c.devices, (int)v, (int)nl, (int)(nl - 2));

  tr = calloc(1, sizeof *tr);
  if (tr == NULL)
    return bt__errorf(err, BT_ENOMEM, "out of memory creating the trainer");
  tr->model = model;
  tr->S = c.devices * v;
  tr->stage_layers = calloc((size_t)tr->S, sizeof *tr->stage_layers);
  if (tr->stage_layers == NULL) {
    rc = bt__errorf(err, BT_ENOMEM, "out of memory creating the trainer");
    goto out_free_trainer;
  }
  if (c.balance == NULL) {
    auto_balance = calloc((size_t)tr->S, sizeof *auto_balance);
    if (auto_balance == NULL) {
      rc = bt__errorf(err, BT_ENOMEM, "out of memory creating the trainer");
      goto out_free_trainer;
    }
    if (tr->S == 1 || tr->S == nl) {
      /* The partition is forced: nothing to measure. */
      for (int32_t s = 0; s < tr->S; s++)
        auto_balance[s] = tr->S == 1 ? nl : 1;
    } else {
      cost = calloc((size_t)nl, sizeof *cost);
      if (cost == NULL) {
        rc = bt__errorf(err, BT_ENOMEM,
                        "out of memory creating the trainer");
        goto out_free_trainer;
      }
      if (model->kind == BT__MODEL_GPT)
        rc = bt__api_gpt_layer_costs(model->g, &c, cost, err);
      else
        rc = measure_layers(model->m,
                            (size_t)(c.batch / c.microbatches /
                                     (c.replicas > 1 ? c.replicas : 1)),
                            cost, err);
      if (rc != BT_OK)
        goto out_free_trainer;
      rc = bt__api_partition_by_cost(cost, (size_t)nl, tr->S, auto_balance, err);
      if (rc != BT_OK)
        goto out_free_trainer;
      /* Across processes every rank must cut the same way: rank 0's
       * measurement decides. */
      if (bt_comm_size(c.comm) > 1) {
        double *b = calloc((size_t)tr->S, sizeof *b);
        if (b == NULL) {
          rc = bt__errorf(err, BT_ENOMEM, "out of memory balancing");
          goto out_free_trainer;
        }
        for (int32_t s = 0; bt_comm_rank(c.comm) == 0 && s < tr->S; s++)
          b[s] = auto_balance[s];
        rc = bt_comm_allreduce_sum(c.comm, b, (size_t)tr->S, err);
        for (int32_t s = 0; s < tr->S; s++)
          auto_balance[s] = (int32_t)b[s];
        free(b);
        if (rc != BT_OK)
          goto out_free_trainer;
      }
    }
  }

  if (model->kind == BT__MODEL_GPT && c.backend != NULL) {
    rc = bt__errorf(err, BT_EUNSUPPORTED,
                    "gpt does not run on the %s backend yet; train it on "
                    "the CPU devices (config.backend = NULL)",
                    c.backend->name);
    goto out_free_trainer;
  }
  if (model->kind == BT__MODEL_GPT) {
    rc = bt__api_gpt_trainer_create(
        tr, &c, v, c.balance != NULL ? c.balance : auto_balance,
        c.balance != NULL ? c.nbalance : tr->S, err);
    if (rc != BT_OK)
      goto out_free_trainer;
  } else {
    tc.model = model->m;
    tc.batch = (size_t)c.batch;
    tc.microbatches = c.microbatches;
    tc.devices = c.devices;
    tc.virtual_stages = v;
    tc.balance = c.balance != NULL ? c.balance : auto_balance;
    tc.nbalance = c.balance != NULL ? c.nbalance : tr->S;
    tc.schedule = c.schedule;
    tc.checkpoint = c.checkpoint;
    tc.threads = c.threads;
    tc.trace = c.trace != 0;
    tc.stage_device = c.stage_device;
    tc.perturb = c.perturb_seed;
    tc.comm = c.comm;
    tc.backend = c.backend;
    tc.graph = c.cuda_graph;
    tc.replicas = c.replicas;
    rc = bt__train_create(&tc, &tr->t, err);
    if (rc != BT_OK)
      goto out_free_trainer;
  }
  for (int32_t l = 0; l < nl; l++) {
    int32_t s = tr->gt != NULL
                    ? bt__gpt_train_stage_of_layer(tr->gt, (size_t)l)
                    : bt__train_stage_of_layer(tr->t, (size_t)l);
    if (s >= 0 && s < tr->S)
      tr->stage_layers[s]++;
  }
  c.balance = NULL;
  c.nbalance = 0;
  c.schedule = NULL;
  c.stage_device = NULL;
  c.virtual_stages = v;
  tr->cfg = c;
  free(cost);
  free(auto_balance);
  *out = tr;
  return BT_OK;

out_free_trainer:
  free(cost);
  free(auto_balance);
  bt_trainer_destroy(tr);
  return rc;
}

void
bt_trainer_destroy(bt_trainer_t *trainer)
{
  if (trainer == NULL)
    return;
  bt__train_destroy(trainer->t);
  bt__gpt_train_destroy(trainer->gt);
  bt__resmlp_adamw_deinit(&trainer->adam);
  free(trainer->stage_layers);
  free(trainer);
}

bt_status
bt_trainer_backward(bt_trainer_t *trainer, const float *x, const int32_t *y,
                    float *loss, bt_error_t *err)
{
  if (trainer == NULL || loss == NULL)
    return bt__errorf(err, BT_EINVAL,
                      "bt_trainer_backward: trainer and loss must not be "
                      "NULL (x and y may be, on a rank that does not read "
                      "them: bt_trainer_needs_data)");
  if (trainer->t == NULL)
    return bt__errorf(err, BT_EINVAL, "a gpt trainer takes token ids: use "
                      "bt_trainer_backward_tokens or bt_trainer_step_tokens");
  return bt__train_step(trainer->t, x, y, loss, err);
}

bt_status
bt_trainer_update(bt_trainer_t *trainer, bt_error_t *err)
{
  struct bt__resmlp *m;
  const bt_trainer_config_t *c;
  bt_status rc;

  if (trainer == NULL)
    return bt__errorf(err, BT_EINVAL, "bt_trainer_update: NULL trainer");
  if (trainer->gt != NULL) {
    rc = bt__gpt_train_update(trainer->gt, err);
    if (rc == BT_OK)
      trainer->updates++;
    return rc;
  }
  m = trainer->model->m;
  c = &trainer->cfg;
  if (c->backend != NULL) {
    struct bt__train_optim o = {c->optimizer != BT_OPTIMIZER_SGD, c->lr,
                                c->weight_decay, c->beta1, c->beta2, c->eps,
                                trainer->updates + 1};
    rc = bt__train_update(trainer->t, &o, err);
    if (rc == BT_OK)
      trainer->updates++;
    return rc;
  }
  if (c->optimizer == BT_OPTIMIZER_SGD) {
    /* w -= lr * (g + wd * w): weight decay as an L2 term. */
    rc = bt__sgd_update(m->params, m->grads, m->nparams, c->lr,
                        c->weight_decay);
  } else {
    if (trainer->adam.m == NULL) {
      rc = bt__resmlp_adamw_init(m, &trainer->adam);
      if (rc != BT_OK)
        return bt__errorf(err, rc,
                          "out of memory for AdamW's moments (%zu "
                          "parameters)",
                          m->nparams);
    }
    rc = bt__resmlp_adamw(m, c->lr, c->beta1, c->beta2, c->eps,
                          c->weight_decay, trainer->updates + 1,
                          &trainer->adam);
  }
  if (rc != BT_OK)
    return bt__errorf(err, rc, "the optimizer step failed: %s",
                      bt_strerror(rc));
  trainer->updates++;
  return BT_OK;
}

bt_status
bt_trainer_step(bt_trainer_t *trainer, const float *x, const int32_t *y,
                float *loss, bt_error_t *err)
{
  bt_status rc = bt_trainer_backward(trainer, x, y, loss, err);
  if (rc != BT_OK)
    return rc;
  return bt_trainer_update(trainer, err);
}

int32_t
bt_trainer_stages(const bt_trainer_t *trainer)
{
  return trainer != NULL ? trainer->S : 0;
}

int32_t
bt_trainer_stage_layers(const bt_trainer_t *trainer, int32_t stage)
{
  if (trainer == NULL || stage < 0 || stage >= trainer->S)
    return 0;
  return trainer->stage_layers[stage];
}

const bt_plan_t *
bt_trainer_plan(const bt_trainer_t *trainer)
{
  if (trainer == NULL)
    return NULL;
  return trainer->gt != NULL ? bt__gpt_train_plan(trainer->gt)
                             : bt__train_plan(trainer->t);
}

double
bt_trainer_peak_activation_bytes(const bt_trainer_t *trainer, int32_t device)
{
  if (trainer == NULL)
    return 0.0;
  if (trainer->gt != NULL)
    return (double)bt__gpt_train_peak_held_bytes(trainer->gt, device);
  return (double)bt__train_peak_held_bytes(trainer->t, device);
}

double
bt_trainer_stage_activation_bytes(const bt_trainer_t *trainer, int32_t stage)
{
  if (trainer == NULL)
    return 0.0;
  if (trainer->gt != NULL)
    return (double)bt__gpt_train_stage_bytes(trainer->gt, stage);
  return (double)bt__train_stage_bytes(trainer->t, stage);
}

bt_status
bt_trainer_slices(const bt_trainer_t *trainer, bt_slice_t *slices,
                  size_t *count)
{
  if (trainer == NULL || count == NULL || !trainer->cfg.trace)
    return BT_EINVAL;
  if (trainer->gt != NULL)
    return bt__gpt_train_slices(trainer->gt, slices, count);
  return bt__train_slices(trainer->t, slices, count);
}

/* ---- across processes ------------------------------------------------------
 */

void
bt_trainer_needs_data(const bt_trainer_t *trainer, int *inputs, int *labels)
{
  int x = 1, y = 1;

  if (trainer != NULL && trainer->gt != NULL)
    bt__gpt_train_needs(trainer->gt, &x, &y);
  else if (trainer != NULL && trainer->t != NULL)
    bt__train_needs(trainer->t, &x, &y);
  if (inputs != NULL)
    *inputs = x;
  if (labels != NULL)
    *labels = y;
}

int32_t
bt_trainer_param_rank(const bt_trainer_t *trainer, size_t index)
{
  bt_param_t p;
  int32_t s;

  if (trainer == NULL || bt_model_param(trainer->model, index, &p) != BT_OK)
    return -1;
  if (trainer->gt != NULL) {
    s = bt__gpt_train_stage_of_layer(trainer->gt, (size_t)p.layer);
    return bt__gpt_train_stage_rank(trainer->gt, s);
  }
  s = bt__train_stage_of_layer(trainer->t, (size_t)p.layer);
  return bt__train_stage_rank(trainer->t, s);
}

bt_status
bt_trainer_sync(bt_trainer_t *trainer, bt_error_t *err)
{
  if (trainer == NULL)
    return bt__errorf(err, BT_EINVAL, "bt_trainer_sync: NULL trainer");
  return bt__train_pull(trainer->t, err);
}

const char *
bt_trainer_note(const bt_trainer_t *trainer)
{
  return trainer != NULL ? bt__train_note(trainer->t) : NULL;
}

void
bt_backend_destroy(bt_backend_t *backend)
{
  if (backend != NULL)
    backend->destroy(backend);
}

bt_status
bt_trainer_gather(bt_trainer_t *trainer, int grads, bt_error_t *err)
{
  bt_comm_t *comm;
  int32_t me;
  size_t n;
  bt_status sync;

  if (trainer == NULL)
    return bt__errorf(err, BT_EINVAL, "bt_trainer_gather: NULL trainer");
  sync = bt_trainer_sync(trainer, err);
  if (sync != BT_OK)
    return sync;
  comm = trainer->cfg.comm;
  if (bt_comm_size(comm) <= 1)
    return BT_OK;
  me = bt_comm_rank(comm);
  n = bt_model_param_count(trainer->model);
  for (size_t i = 0; i < n; i++) {
    int32_t owner = bt_trainer_param_rank(trainer, i);
    bt_param_t p;
    bt_status rc = BT_OK;
    bt_model_param(trainer->model, i, &p);
    if (owner == 0 || (me != 0 && me != owner))
      continue;
    for (int k = 0; k <= (grads != 0) && rc == BT_OK; k++) {
      float *v = k == 0 ? p.value : p.grad;
      int32_t tag = (int32_t)(2 * i + (size_t)k) % (1 << 19);
      rc = me == 0 ? bt_comm_recv(comm, v, p.count * sizeof *v, owner, tag,
                                  err)
                   : bt_comm_send(comm, v, p.count * sizeof *v, 0, tag, err);
    }
    if (rc != BT_OK)
      return rc;
  }
  /* gpt: rank 0's head reads its own copy of a tied wte. */
  if (me == 0 && trainer->gt != NULL)
    bt__gpt_train_refresh_tie(trainer->gt);
  return BT_OK;
}

/* Writes the index of a sharded checkpoint: {"format": "baton-sharded",
 * "ranks": W, "weight_map": {name: shard}}, atomically. */
static bt_status
write_index(const bt_trainer_t *trainer, const char *path, int32_t W,
            bt_error_t *err)
{
  const char *slash = strrchr(path, '/');
  const char *base = slash != NULL ? slash + 1 : path;
  json_t *root = json_object(), *map = json_object();
  char tmp[4200], shard[4200];
  bt_status rc = BT_OK;

  if (root == NULL || map == NULL || strlen(path) > 4000) {
    json_decref(root);
    json_decref(map);
    return bt__errorf(err, BT_ENOMEM, "cannot write the index %s", path);
  }
  for (size_t i = 0; i < bt_model_param_count(trainer->model); i++) {
    bt_param_t p;
    bt_model_param(trainer->model, i, &p);
    snprintf(shard, sizeof shard, "%s.rank%d.safetensors", base,
             (int)bt_trainer_param_rank(trainer, i));
    json_object_set_new(map, p.name, json_string(shard));
  }
  json_object_set_new(root, "format", json_string("baton-sharded"));
  json_object_set_new(root, "ranks", json_integer(W));
  json_object_set_new(root, "weight_map", map);
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  if (json_dump_file(root, tmp, JSON_INDENT(1) | JSON_SORT_KEYS) != 0 ||
      rename(tmp, path) != 0) {
    remove(tmp);
    rc = bt__errorf(err, BT_EIO, "cannot write the checkpoint index %s; "
                    "check the directory", path);
  }
  json_decref(root);
  return rc;
}

bt_status
bt_trainer_save(bt_trainer_t *trainer, const char *path, bt_error_t *err)
{
  bt_comm_t *comm;
  int32_t me, W;
  bool *keep;
  char shard[4200];
  bt_status rc, all;
  double failed;

  if (trainer == NULL || path == NULL)
    return bt__errorf(err, BT_EINVAL,
                      "bt_trainer_save: trainer and path must not be NULL");
  rc = bt_trainer_sync(trainer, err);
  if (rc != BT_OK)
    return rc;
  comm = trainer->cfg.comm;
  W = bt_comm_size(comm);
  if (W <= 1)
    return bt_model_save(trainer->model, path, err);
  me = bt_comm_rank(comm);
  keep = calloc(bt_model_param_count(trainer->model) + 1, sizeof *keep);
  if (keep == NULL || strlen(path) > 4000) {
    free(keep);
    return bt__errorf(err, BT_ENOMEM, "cannot save %s", path);
  }
  for (size_t i = 0; i < bt_model_param_count(trainer->model); i++)
    keep[i] = bt_trainer_param_rank(trainer, i) == me;
  snprintf(shard, sizeof shard, "%s.rank%d.safetensors", path, (int)me);
  rc = bt__params_save_some(trainer->model->tbl, shard, keep,
                            bt_model_kind(trainer->model), err);
  free(keep);
  if (rc == BT_OK && me == 0)
    rc = write_index(trainer, path, W, err);
  /* Every rank learns whether all shards were written. */
  failed = rc != BT_OK;
  all = bt_comm_allreduce_sum(comm, &failed, 1, err);
  if (all != BT_OK)
    return all;
  if (rc == BT_OK && failed > 0)
    return bt__errorf(err, BT_EIO, "another rank could not write its shard "
                      "of %s (see its message)", path);
  return rc;
}
