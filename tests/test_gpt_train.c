/* The pipelined, data-parallel gpt trainer (model/gpt_train.c) against the
 * unpipelined single-replica reference (bt__gpt_reference_step on the
 * whole batch with R m microbatches):
 *   - the grid: gpipe, 1f1b, interleaved and zb-h1; p in {1,2,4};
 *     m in {1,2,4}; tied and untied; every checkpoint mode; R in {1,2};
 *     dropout off and on.  Loss and every gradient within 1e-5 (max-abs
 *     relative per tensor); replicas bitwise equal; a split tie's two
 *     copies bitwise equal;
 *   - several steps with global-norm clipping and SGD / AdamW in the graph
 *     against the reference step followed by the same clipping and
 *     optimizer, parameters within 1e-5, copies and replicas bitwise equal;
 *   - thread timing does not change a bit (the perturbation hook);
 *   - bad input: tokens out of range, configs, the step after a failure. */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpt.h"
#include "gpt_train.h"
#include "kernels.h"
#include "test.h"
#include "test_util.h"

#define V_ 11
#define C_ 8
#define NH 2
#define L_ 6 /* 8 layers: room for 4 devices x 2 virtual stages */
#define T_ 4
#define B_ 8
/* AdamW's eps: the key bias's gradient is 0 in exact arithmetic (softmax
 * ignores a constant added to every score), so in float it is rounding
 * noise, whose sign AdamW with a tiny eps turns into a full +-lr step; an
 * eps above that noise keeps the comparison about the pipeline. */
#define ADAM_EPS 1e-4f

static test_rng_t rng;

static struct bt__gpt *
model(bool tied, float dropout, uint64_t seed)
{
  struct bt__gpt_config c = BT__GPT_CONFIG_INIT(V_, C_, NH, L_, T_);
  struct bt__gpt *m = NULL;
  bt_error_t err;

  c.tied = tied;
  c.dropout = dropout;
  if (bt__gpt_create(&c, seed, &m, &err) != BT_OK) {
    fprintf(stderr, "test_gpt_train: %s\n", err.message);
    exit(1);
  }
  /* Biases and gains off their initial 0 and 1: a generic point. */
  test_rng_seed(&rng, seed + 7);
  for (size_t t = 0; t < m->ntensors; t++)
    if (m->tensors[t].ndim == 1)
      for (size_t j = 0; j < m->tensors[t].count; j++)
        m->params[m->tensors[t].offset + j] +=
            (float)test_rng_uniform(&rng, -0.2, 0.2);
  return m;
}

static void
batch(uint64_t seed, int32_t *x, int32_t *y)
{
  test_rng_seed(&rng, seed);
  for (size_t i = 0; i < B_ * T_; i++) {
    x[i] = (int32_t)(test_rng_next(&rng) % V_);
    y[i] = (int32_t)(test_rng_next(&rng) % V_);
  }
}

struct run {
  const char *sched;
  int32_t p, v, m, R, ckpt;
  bool tied;
  float dropout;
  double clip;
  int32_t optimizer;
  uint64_t perturb;
};

static bt_status
make_trainer(const struct run *c, struct bt__gpt *mdl,
             struct bt__gpt_train **out, bt_schedule_t **sched,
             bt_error_t *err)
{
  struct bt__gpt_train_config tc = BT__GPT_TRAIN_CONFIG_INIT;
  bt_status rc = bt_schedule_builtin(c->sched, sched, err);

  if (rc != BT_OK)
    return rc;
  tc.model = mdl;
  tc.batch = B_;
  tc.seq = T_;
  tc.microbatches = c->m;
  tc.devices = c->p;
  tc.virtual_stages = c->v;
  tc.replicas = c->R;
  tc.schedule = *sched;
  tc.checkpoint = c->ckpt;
  tc.threads = 2;
  tc.perturb = c->perturb;
  tc.max_grad_norm = c->clip;
  tc.optimizer = c->optimizer;
  tc.lr = c->optimizer == BT__OPT_SGD ? 0.1f : 0.01f;
  tc.weight_decay = c->optimizer == BT__OPT_SGD ? 0.0f : 0.1f;
  tc.eps = ADAM_EPS;
  tc.dropout_seed = 99;
  return bt__gpt_train_create(&tc, out, err);
}

static char *
describe(const struct run *c, char *buf, size_t n)
{
  snprintf(buf, n, "%s p=%d v=%d m=%d R=%d ckpt=%d %s dropout=%g",
           c->sched, (int)c->p, (int)c->v, (int)c->m, (int)c->R,
           (int)c->ckpt, c->tied ? "tied" : "untied", (double)c->dropout);
  return buf;
}

/* Every tensor of got within tol (max-abs relative) of want; false after
 * reporting the first miss. */
static bool
grads_close(const struct bt__gpt *got, const struct bt__gpt *want,
            bool params, double tol, const char *what)
{
  for (size_t t = 0; t < want->ntensors; t++) {
    const struct bt__params_tensor *tt = &want->tensors[t];
    const float *a = (params ? got->params : got->grads) + tt->offset;
    const float *b = (params ? want->params : want->grads) + tt->offset;
    double mr, md = test_max_abs_diff(a, b, tt->count, &mr);
    if (!(md <= tol * mr + 1e-30)) {
      test_fail(__FILE__, __LINE__, "%s: %s %s: max diff %.3g, max %.3g",
                what, params ? "p" : "g", tt->name, md, mr);
      return false;
    }
  }
  return true;
}

/* Replicas bitwise equal to replica 0, and a split tie's copies bitwise
 * equal to wte (values and gradients). */
static bool
copies_equal(const struct bt__gpt_train *t, const char *what)
{
  const struct bt__gpt *m0 = bt__gpt_train_replica(t, 0);
  size_t vc = (size_t)V_ * C_;

  for (int32_t r = 0; bt__gpt_train_replica(t, r) != NULL; r++) {
    const struct bt__gpt *m = bt__gpt_train_replica(t, r);
    if (memcmp(m->params, m0->params, m0->nparams * sizeof(float)) != 0 ||
        memcmp(m->grads, m0->grads, m0->nparams * sizeof(float)) != 0) {
      test_fail(__FILE__, __LINE__, "%s: replica %d differs from replica 0",
                what, (int)r);
      return false;
    }
    if (bt__gpt_train_split_tie(t) &&
        (memcmp(m->head_wte, m->params, vc * sizeof(float)) != 0 ||
         memcmp(m->head_gwte, m->grads, vc * sizeof(float)) != 0)) {
      test_fail(__FILE__, __LINE__, "%s: replica %d's head copy of wte "
                "differs from wte", what, (int)r);
      return false;
    }
  }
  return true;
}

/* One step without update against the reference. */
static void
check_step(const struct run *c)
{
  struct bt__gpt *mdl = model(c->tied, c->dropout, 5);
  struct bt__gpt *ref = model(c->tied, c->dropout, 5);
  struct bt__gpt_train *t = NULL;
  bt_schedule_t *sched = NULL;
  bt_error_t err = {0};
  int32_t x[B_ * T_], y[B_ * T_];
  float loss = 0, rloss = 0;
  char what[128];

  describe(c, what, sizeof what);
  batch(3, x, y);
  if (make_trainer(c, mdl, &t, &sched, &err) != BT_OK) {
    test_fail(__FILE__, __LINE__, "%s: create: %s", what, err.message);
    goto out;
  }
  if (bt__gpt_train_step(t, x, y, 4, false, &loss, &err) != BT_OK) {
    test_fail(__FILE__, __LINE__, "%s: step: %s", what, err.message);
    goto out;
  }
  if (bt__gpt_reference_step(ref, x, y, B_, T_, (size_t)(c->R * c->m), 99, 4,
                             &rloss, &err) != BT_OK) {
    test_fail(__FILE__, __LINE__, "%s: reference: %s", what, err.message);
    goto out;
  }
  if (!(fabsf(loss - rloss) <= 1e-5f * fabsf(rloss)))
    test_fail(__FILE__, __LINE__, "%s: loss %.9g vs reference %.9g", what,
              (double)loss, (double)rloss);
  if (grads_close(mdl, ref, false, 1e-5, what))
    copies_equal(t, what);
out:
  bt__gpt_train_destroy(t);
  bt_schedule_destroy(sched);
  bt__gpt_destroy(mdl);
  bt__gpt_destroy(ref);
}

TEST(grid_against_reference)
{
  static const char *scheds[] = {"gpipe", "1f1b", "interleaved", "zb-h1"};
  static const int32_t ps[] = {1, 2, 4}, ms[] = {1, 2, 4};
  int ndone = 0;

  for (size_t si = 0; si < 4; si++)
    for (size_t pi = 0; pi < 3; pi++)
      for (size_t mi = 0; mi < 3; mi++)
        for (int tied = 0; tied <= 1; tied++)
          for (int32_t ckpt = 0; ckpt <= 2; ckpt++)
            for (int32_t R = 1; R <= 2; R++)
              for (int drop = 0; drop <= 1; drop++) {
                struct run c = {scheds[si], ps[pi], 0, ms[mi], R, ckpt,
                                tied != 0, drop ? 0.1f : 0.0f, 0.0,
                                BT__OPT_SGD, 0};
                /* interleaved: 2 virtual stages per device; it needs m to
                 * be a multiple of p. */
                if (si == 2) {
                  c.v = 2;
                  if (c.m % c.p != 0)
                    continue;
                }
                check_step(&c);
                ndone++;
              }
  printf("  %d configurations\n", ndone);
}

/* The reference's optimizer: clip the global norm as the graph does
 * (double sum in table order; scale = min(1, max / (norm + 1e-6))), then
 * SGD or AdamW. */
static void
reference_update(struct bt__gpt *m, const struct run *c,
                 struct bt__params_adamw_state *st, int64_t step)
{
  double sum = 0.0, scale = 1.0;

  if (c->clip > 0) {
    for (size_t i = 0; i < m->nparams; i++)
      sum += (double)m->grads[i] * m->grads[i];
    scale = c->clip / (sqrt(sum) + 1e-6);
    if (scale > 1.0)
      scale = 1.0;
  }
  if (scale != 1.0)
    for (size_t i = 0; i < m->nparams; i++)
      m->grads[i] *= (float)scale;
  if (c->optimizer == BT__OPT_SGD)
    bt__gpt_sgd(m, 0.1f);
  else
    bt__gpt_adamw(m, 0.01f, 0.9f, 0.999f, ADAM_EPS, 0.1f, step, st);
}

static void
check_steps(const struct run *c, int steps, bool in_graph)
{
  struct bt__gpt *mdl = model(c->tied, c->dropout, 8);
  struct bt__gpt *ref = model(c->tied, c->dropout, 8);
  struct bt__params_adamw_state st = {0};
  struct bt__gpt_train *t = NULL;
  bt_schedule_t *sched = NULL;
  bt_error_t err = {0};
  int32_t x[B_ * T_], y[B_ * T_];
  char what[160];

  describe(c, what, sizeof what);
  snprintf(what + strlen(what), sizeof what - strlen(what),
           " clip=%g opt=%d %s", c->clip, (int)c->optimizer,
           in_graph ? "in-graph" : "separate");
  if (make_trainer(c, mdl, &t, &sched, &err) != BT_OK) {
    test_fail(__FILE__, __LINE__, "%s: create: %s", what, err.message);
    goto out;
  }
  if (c->optimizer == BT__OPT_ADAMW)
    bt__gpt_adamw_init(ref, &st);
  for (int s = 1; s <= steps; s++) {
    float loss, rloss;
    batch((uint64_t)s, x, y);
    if (bt__gpt_train_step(t, x, y, (uint32_t)s, in_graph, &loss, &err) !=
            BT_OK ||
        (!in_graph && bt__gpt_train_update(t, &err) != BT_OK)) {
      test_fail(__FILE__, __LINE__, "%s: step %d: %s", what, s, err.message);
      break;
    }
    bt__gpt_reference_step(ref, x, y, B_, T_, (size_t)(c->R * c->m), 99,
                           (uint32_t)s, &rloss, &err);
    if (c->clip > 0) {
      double sum = 0.0;
      for (size_t i = 0; i < ref->nparams; i++)
        sum += (double)ref->grads[i] * ref->grads[i];
      if (!(fabs(bt__gpt_train_grad_norm(t) - sqrt(sum)) <= 1e-5 * sqrt(sum)))
        test_fail(__FILE__, __LINE__, "%s: step %d: norm %.9g vs %.9g", what,
                  s, bt__gpt_train_grad_norm(t), sqrt(sum));
    }
    reference_update(ref, c, &st, s);
    if (!grads_close(mdl, ref, true, 1e-5, what) || !copies_equal(t, what))
      break;
  }
out:
  bt__gpt_adamw_deinit(&st);
  bt__gpt_train_destroy(t);
  bt_schedule_destroy(sched);
  bt__gpt_destroy(mdl);
  bt__gpt_destroy(ref);
}

TEST(clip_and_optimizers_over_steps)
{
  static const char *scheds[] = {"1f1b", "zb-h1", "interleaved"};

  for (size_t si = 0; si < 3; si++)
    for (int32_t R = 1; R <= 2; R++)
      for (int opt = 0; opt <= 1; opt++)
        for (int tied = 0; tied <= 1; tied++) {
          /* 0.5 clips (the tutorial's value); 1e6 never does. */
          struct run c = {scheds[si], 2, si == 2 ? 2 : 0, 2, R,
                          BT__CKPT_EXCEPT_LAST, tied != 0, 0.1f, 0.5, opt, 0};
          check_steps(&c, 3, true);
          c.clip = 1e6;
          check_steps(&c, 2, true);
          c.clip = 0.0;
          check_steps(&c, 2, false);
        }
}

/* Thread timing does not change a bit: random sleeps in every callback. */
TEST(perturbed_timing_is_bitwise_equal)
{
  struct run c = {"zb-h1", 2, 0, 4, 2, BT__CKPT_EXCEPT_LAST, true, 0.1f, 0.5,
                  BT__OPT_ADAMW, 0};
  struct bt__gpt *a = model(true, 0.1f, 2), *b = model(true, 0.1f, 2);
  struct bt__gpt_train *ta = NULL, *tb = NULL;
  bt_schedule_t *sa = NULL, *sb = NULL;
  bt_error_t err = {0};
  int32_t x[B_ * T_], y[B_ * T_];
  float la, lb;

  ASSERT_TRUE(make_trainer(&c, a, &ta, &sa, &err) == BT_OK);
  c.perturb = 12345;
  ASSERT_TRUE(make_trainer(&c, b, &tb, &sb, &err) == BT_OK);
  for (uint32_t s = 1; s <= 3; s++) {
    batch(s, x, y);
    ASSERT_TRUE(bt__gpt_train_step(ta, x, y, s, true, &la, &err) == BT_OK);
    ASSERT_TRUE(bt__gpt_train_step(tb, x, y, s, true, &lb, &err) == BT_OK);
    EXPECT_TRUE(la == lb);
    EXPECT_TRUE(memcmp(a->params, b->params, a->nparams * sizeof(float)) ==
                0);
  }
  bt__gpt_train_destroy(ta);
  bt__gpt_train_destroy(tb);
  bt_schedule_destroy(sa);
  bt_schedule_destroy(sb);
  bt__gpt_destroy(a);
  bt__gpt_destroy(b);
}

TEST(bad_input)
{
  struct run c = {"1f1b", 2, 0, 2, 2, 0, true, 0.0f, 0.0, BT__OPT_SGD, 0};
  struct bt__gpt *mdl = model(true, 0.0f, 1);
  struct bt__gpt_train *t = NULL;
  bt_schedule_t *sched = NULL;
  struct bt__gpt_train_config tc = BT__GPT_TRAIN_CONFIG_INIT;
  bt_error_t err = {0};
  int32_t x[B_ * T_], y[B_ * T_];
  float loss;

  ASSERT_TRUE(make_trainer(&c, mdl, &t, &sched, &err) == BT_OK);
  EXPECT_TRUE(bt__gpt_train_split_tie(t));
  EXPECT_INT_EQ(bt__gpt_train_stage_of_layer(t, 0), 0);
  EXPECT_INT_EQ(bt__gpt_train_stage_of_layer(t, L_ + 1), 1);
  batch(1, x, y);
  y[5] = V_;
  EXPECT_INT_EQ(bt__gpt_train_step(t, x, y, 1, true, &loss, &err), BT_EINVAL);
  EXPECT_TRUE(strstr(err.message, "outside [0, V=11)") != NULL);
  batch(1, x, y);
  EXPECT_INT_EQ(bt__gpt_train_step(t, x, y, 1, true, &loss, &err), BT_OK);
  EXPECT_TRUE(isfinite(loss));
  bt__gpt_train_destroy(t);
  EXPECT_TRUE(mdl->head_wte == NULL && mdl->head_gwte == NULL);

  tc.model = mdl;
  tc.schedule = sched;
  tc.batch = 6;
  tc.seq = T_;
  tc.microbatches = 2;
  tc.replicas = 2;
  EXPECT_INT_EQ(bt__gpt_train_create(&tc, &t, &err), BT_EINVAL);
  EXPECT_TRUE(strstr(err.message, "multiple of 4") != NULL);
  tc.batch = 8;
  tc.seq = T_ + 1;
  EXPECT_INT_EQ(bt__gpt_train_create(&tc, &t, &err), BT_EINVAL);
  EXPECT_TRUE(strstr(err.message, "sequence length 5") != NULL);
  tc.seq = T_;
  tc.devices = 5;
  tc.virtual_stages = 2;
  EXPECT_INT_EQ(bt__gpt_train_create(&tc, &t, &err), BT_EINVAL);
  EXPECT_TRUE(strstr(err.message, "only 8 layers") != NULL);
  tc.devices = 2;
  tc.virtual_stages = 1;
  tc.max_grad_norm = -1.0;
  EXPECT_INT_EQ(bt__gpt_train_create(&tc, &t, &err), BT_EINVAL);
  EXPECT_TRUE(strstr(err.message, "max_grad_norm") != NULL);
  tc.max_grad_norm = 0.0;
  {
    int32_t bal[2] = {4, 3};
    tc.balance = bal;
    tc.nbalance = 2;
    EXPECT_INT_EQ(bt__gpt_train_create(&tc, &t, &err), BT_EINVAL);
    EXPECT_TRUE(strstr(err.message, "embed, 6 blocks, head") != NULL);
  }
  EXPECT_TRUE(t == NULL);
  bt_schedule_destroy(sched);
  bt__gpt_destroy(mdl);
}

/* Evaluation: the forward-only loss equals the reference step's with
 * dropout 0, for a model trained with dropout (evaluation turns it off). */
TEST(eval_loss_matches_reference)
{
  for (int tied = 0; tied <= 1; tied++) {
    struct bt__gpt *a = model(tied != 0, 0.3f, 4), *b = model(tied != 0, 0.0f, 4);
    int32_t x[B_ * T_], y[B_ * T_];
    float la = 0, lb = 0;
    bt_error_t err = {0};

    batch(9, x, y);
    EXPECT_INT_EQ(bt__gpt_eval_loss(a, x, y, B_, T_, &la, &err), BT_OK);
    EXPECT_INT_EQ(bt__gpt_reference_step(b, x, y, B_, T_, 1, 0, 0, &lb, &err),
                  BT_OK);
    EXPECT_TRUE(la == lb);
    y[3] = -1;
    EXPECT_INT_EQ(bt__gpt_eval_loss(a, x, y, B_, T_, &la, &err), BT_EINVAL);
    EXPECT_TRUE(strstr(err.message, "outside [0, V=11)") != NULL);
    bt__gpt_destroy(a);
    bt__gpt_destroy(b);
  }
}
