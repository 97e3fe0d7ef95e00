/* The public model API for gpt (<baton/model.h>): thin wrappers over the
 * gpt model (gpt.h) and its pipelined, data-parallel trainer
 * (gpt_train.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "error.h"

#define GPT_CONFIG_V1_SIZE (offsetof(bt_gpt_config_t, seed) + sizeof(uint64_t))

bt_status
bt_model_create_gpt(const bt_gpt_config_t *config, bt_model_t **out,
                    bt_error_t *err)
{
  struct bt__gpt_config gc;
  bt_gpt_config_t c;
  bt_model_t *model;
  bt_status rc;

  if (out == NULL)
    return bt__errorf(err, BT_EINVAL, "bt_model_create_gpt: NULL out");
  *out = NULL;
  if (config == NULL || config->size < GPT_CONFIG_V1_SIZE)
    return bt__errorf(err, BT_EINVAL,
                      "bt_model_create_gpt needs a config started from "
                      "BT_GPT_CONFIG_INIT");
  memset(&c, 0, sizeof c);
  memcpy(&c, config, config->size < sizeof c ? config->size : sizeof c);
  if (c.vocab < 1 || c.embd < 1 || c.heads < 1 || c.layers < 0 ||
      c.seq_max < 1)
    return bt__errorf(err, BT_EINVAL,
                      "gpt needs vocab, embd, heads and seq_max >= 1 and "
                      "layers >= 0 (got V=%d, C=%d, nh=%d, L=%d, Tmax=%d)",
                      (int)c.vocab, (int)c.embd, (int)c.heads, (int)c.layers,
                      (int)c.seq_max);
  gc = BT__GPT_CONFIG_INIT((size_t)c.vocab, (size_t)c.embd, (size_t)c.heads,
                           (size_t)c.layers, (size_t)c.seq_max);
  gc.tied = c.untied == 0;
  gc.dropout = c.dropout;
  model = calloc(1, sizeof *model);
  if (model == NULL)
    return bt__errorf(err, BT_ENOMEM, "out of memory creating a model");
  model->kind = BT__MODEL_GPT;
  rc = bt__gpt_create(&gc, c.seed, &model->g, err);
  if (rc == BT_OK) {
    model->tbl = &model->g->table;
    rc = bt__api_name_layers(model, "embed", err);
  }
  if (rc != BT_OK) {
    bt_model_destroy(model);
    return rc;
  }
  *out = model;
  return BT_OK;
}

static bt_status
need_gpt(const bt_model_t *model, const char *fn, bt_error_t *err)
{
  if (model == NULL)
    return bt__errorf(err, BT_EINVAL, "%s: NULL model", fn);
  if (model->kind != BT__MODEL_GPT)
    return bt__errorf(err, BT_EINVAL,
                      "%s is for gpt models (token ids); this one is %s",
                      fn, bt_model_kind(model));
  return BT_OK;
}

bt_status
bt_model_reference_step_tokens(bt_model_t *model, const int32_t *x,
                               const int32_t *y, size_t B, size_t T,
                               int32_t microbatches, uint64_t dropout_seed,
                               uint32_t step, float *loss, bt_error_t *err)
{
  bt_status rc = need_gpt(model, "bt_model_reference_step_tokens", err);

  if (rc != BT_OK)
    return rc;
  if (microbatches < 1)
    return bt__errorf(err, BT_EINVAL,
                      "bt_model_reference_step_tokens needs microbatches >= "
                      "1 (got %d)",
                      (int)microbatches);
  return bt__gpt_reference_step(model->g, x, y, B, T, (size_t)microbatches,
                                dropout_seed, step, loss, err);
}

bt_status
bt_model_eval_tokens(const bt_model_t *model, const int32_t *x,
                     const int32_t *y, size_t B, size_t T, float *loss,
                     bt_error_t *err)
{
  bt_status rc = need_gpt(model, "bt_model_eval_tokens", err);

  return rc != BT_OK ? rc : bt__gpt_eval_loss(model->g, x, y, B, T, loss, err);
}

bt_status
bt_model_generate(const bt_model_t *model, const int32_t *prompt,
                  size_t nprompt, size_t n, float temperature, uint64_t seed,
                  int32_t *out, bt_error_t *err)
{
  bt_status rc = need_gpt(model, "bt_model_generate", err);

  return rc != BT_OK ? rc
                     : bt__gpt_generate(model->g, prompt, nprompt, n,
                                        temperature, seed, out, err);
}

/* Multiply-adds per token of each layer, forward plus backward (about
 * three forwards): the embedding's gather and scatter are C each; a
 * block's GEMMs 12 C^2 and its attention 2 T C; the head's logits V C.
 * gpt's blocks are identical, so what balancing decides is where the
 * embedding and the (large-V) head go, which this captures without timing
 * runs. */
bt_status
bt__api_gpt_layer_costs(const struct bt__gpt *g, const bt_trainer_config_t *c,
                        double *cost, bt_error_t *err)
{
  double C = (double)g->cfg.C, V = (double)g->cfg.V;
  double T = c->seq > 0 ? (double)c->seq : (double)g->cfg.Tmax;

  (void)err;
  cost[0] = 3.0 * C;
  for (size_t l = 1; l <= g->cfg.L; l++)
    cost[l] = 3.0 * (12.0 * C * C + 2.0 * T * C);
  cost[g->cfg.L + 1] = 3.0 * (V * C + 8.0 * C);
  return BT_OK;
}

bt_status
bt__api_gpt_trainer_create(bt_trainer_t *tr, const bt_trainer_config_t *c,
                           int32_t v, const int32_t *balance, int32_t nbalance,
                           bt_error_t *err)
{
  struct bt__gpt_train_config tc = BT__GPT_TRAIN_CONFIG_INIT;

  if (c->seq < 1)
    return bt__errorf(err, BT_EINVAL,
                      "a gpt trainer needs config.seq, the tokens per "
                      "sequence (1 .. %zu)",
                      tr->model->g->cfg.Tmax);
  if (c->replicas < 0 || !(c->max_grad_norm >= 0.0f) ||
      isinf(c->max_grad_norm))
    return bt__errorf(err, BT_EINVAL,
                      "replicas must be >= 0 (0 = 1) and max_grad_norm a "
                      "finite number >= 0 (0 = no clipping); got %d, %g",
                      (int)c->replicas, (double)c->max_grad_norm);
  tc.model = tr->model->g;
  tc.batch = (size_t)c->batch;
  tc.seq = (size_t)c->seq;
  tc.microbatches = c->microbatches;
  tc.devices = c->devices;
  tc.virtual_stages = v;
  tc.replicas = c->replicas > 0 ? c->replicas : 1;
  tc.balance = balance;
  tc.nbalance = nbalance;
  tc.schedule = c->schedule;
  tc.checkpoint = c->checkpoint;
  tc.threads = c->threads;
  tc.perturb = c->perturb_seed;
  tc.trace = c->trace != 0;
  tc.stage_device = c->stage_device;
  tc.max_grad_norm = c->max_grad_norm;
  tc.optimizer = c->optimizer == BT_OPTIMIZER_ADAMW ? BT__OPT_ADAMW
                                                    : BT__OPT_SGD;
  tc.lr = c->lr;
  tc.beta1 = c->beta1;
  tc.beta2 = c->beta2;
  tc.eps = c->eps;
  tc.weight_decay = c->weight_decay;
  tc.dropout_seed = c->dropout_seed;
  tc.comm = c->comm;
  return bt__gpt_train_create(&tc, &tr->gt, err);
}

static bt_status
tokens_step(bt_trainer_t *trainer, const int32_t *x, const int32_t *y,
            bool update, float *loss, bt_error_t *err)
{
  bt_status rc;

  if (trainer == NULL || loss == NULL)
    return bt__errorf(err, BT_EINVAL,
                      "the trainer and loss must not be NULL (x and y may "
                      "be, on a rank that does not read them)");
  if (trainer->gt == NULL)
    return bt__errorf(err, BT_EINVAL,
                      "a resmlp trainer takes rows of features: use "
                      "bt_trainer_backward or bt_trainer_step");
  rc = bt__gpt_train_step(trainer->gt, x, y, trainer->steps + 1, update,
                          loss, err);
  if (rc == BT_OK) {
    trainer->steps++;
    if (update)
      trainer->updates++;
  }
  return rc;
}

bt_status
bt_trainer_backward_tokens(bt_trainer_t *trainer, const int32_t *x,
                           const int32_t *y, float *loss, bt_error_t *err)
{
  return tokens_step(trainer, x, y, false, loss, err);
}

bt_status
bt_trainer_step_tokens(bt_trainer_t *trainer, const int32_t *x,
                       const int32_t *y, float *loss, bt_error_t *err)
{
  return tokens_step(trainer, x, y, true, loss, err);
}

double
bt_trainer_grad_norm(const bt_trainer_t *trainer)
{
  return trainer != NULL && trainer->gt != NULL
             ? bt__gpt_train_grad_norm(trainer->gt)
             : NAN;
}
