/* The public model and trainer API (<baton/model.h>) end to end: parameter
 * names and shapes as pinned; explicit and measured balances; a pipelined
 * step's loss and gradients against bt_model_reference_step for gpipe,
 * 1f1b, zb-h1 and interleaved; SGD and AdamW against a manual loop; save /
 * load; predict against the reference forward; held activation bytes; bad
 * configs with messages; NULL arguments. */
#define _DEFAULT_SOURCE /* mkstemps */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "baton/baton.h"
#include "test.h"
#include "test_util.h"

#define TOL 1e-5

static test_rng_t rng;

static void
make_batch(float *x, int32_t *y, size_t n, size_t d, int32_t c, uint64_t seed)
{
  rng.state = seed;
  for (size_t i = 0; i < n * d; i++)
    x[i] = test_rng_uniform_f32(&rng, -2.0f, 2.0f);
  for (size_t r = 0; r < n; r++)
    y[r] = (int32_t)(test_rng_next(&rng) % (uint64_t)c);
}

static bt_model_t *
make_model(int32_t D, int32_t H, int32_t C, int32_t L, int32_t long_skip,
           uint64_t seed)
{
  bt_resmlp_config_t mc = BT_RESMLP_CONFIG_INIT;
  bt_model_t *m = NULL;
  bt_error_t err;

  mc.inputs = D;
  mc.hidden = H;
  mc.classes = C;
  mc.blocks = L;
  mc.long_skip = long_skip;
  mc.seed = seed;
  if (bt_model_create_resmlp(&mc, &m, &err) != BT_OK) {
    fprintf(stderr, "test_model_api: %s\n", err.message);
    exit(1);
  }
  return m;
}

/* Every tensor's max |a - b| within tol * max |b| (b the reference). */
static bool
tensors_close(const bt_model_t *got, const bt_model_t *ref, bool grads,
              double tol, const char *what)
{
  size_t n = bt_model_param_count(ref);
  for (size_t i = 0; i < n; i++) {
    bt_param_t a, b;
    double mr, md;
    if (bt_model_param(got, i, &a) != BT_OK ||
        bt_model_param(ref, i, &b) != BT_OK || a.count != b.count) {
      test_fail(__FILE__, __LINE__, "%s: parameter %zu mismatch", what, i);
      return false;
    }
    md = test_max_abs_diff(grads ? a.grad : a.value, grads ? b.grad : b.value,
                           a.count, &mr);
    if (!(md <= tol * mr) && !(mr == 0 && md == 0)) {
      test_fail(__FILE__, __LINE__,
                "%s: %s %s differs: max|d| %.3g, max|ref| %.3g", what,
                grads ? "gradient" : "value", b.name, md, mr);
      return false;
    }
  }
  return true;
}

static bt_schedule_t *
schedule(const char *name)
{
  bt_schedule_t *s = NULL;
  bt_error_t err;
  if (bt_schedule_builtin(name, &s, &err) != BT_OK) {
    fprintf(stderr, "test_model_api: schedule %s: %s\n", name, err.message);
    exit(1);
  }
  return s;
}

TEST(names_and_shapes)
{
  bt_model_t *m = make_model(5, 4, 3, 2, 0, 1);
  static const struct {
    const char *name;
    int32_t ndim;
    int64_t s0, s1;
    int32_t layer;
  } want[] = {
      {"in.w", 2, 4, 5, 0},         {"in.b", 1, 4, 0, 0},
      {"blk0.ln.g", 1, 4, 0, 1},    {"blk0.ln.b", 1, 4, 0, 1},
      {"blk0.fc1.w", 2, 16, 4, 1},  {"blk0.fc1.b", 1, 16, 0, 1},
      {"blk0.fc2.w", 2, 4, 16, 1},  {"blk0.fc2.b", 1, 4, 0, 1},
      {"blk1.ln.g", 1, 4, 0, 2},    {"blk1.ln.b", 1, 4, 0, 2},
      {"blk1.fc1.w", 2, 16, 4, 2},  {"blk1.fc1.b", 1, 16, 0, 2},
      {"blk1.fc2.w", 2, 4, 16, 2},  {"blk1.fc2.b", 1, 4, 0, 2},
      {"head.ln.g", 1, 4, 0, 3},    {"head.ln.b", 1, 4, 0, 3},
      {"head.w", 2, 3, 4, 3},       {"head.b", 1, 3, 0, 3},
  };
  static const char *layers[] = {"in", "blk0", "blk1", "head"};
  bt_param_t p;

  ASSERT_INT_EQ(bt_model_layer_count(m), 4);
  for (int32_t l = 0; l < 4; l++)
    EXPECT_TRUE(strcmp(bt_model_layer_name(m, l), layers[l]) == 0);
  EXPECT_TRUE(bt_model_layer_name(m, 4) == NULL);
  EXPECT_TRUE(bt_model_layer_name(m, -1) == NULL);
  ASSERT_INT_EQ(bt_model_param_count(m), 18);
  for (size_t i = 0; i < 18; i++) {
    ASSERT_INT_EQ(bt_model_param(m, i, &p), BT_OK);
    EXPECT_TRUE(strcmp(p.name, want[i].name) == 0);
    EXPECT_INT_EQ(p.ndim, want[i].ndim);
    EXPECT_INT_EQ(p.shape[0], want[i].s0);
    if (p.ndim == 2)
      EXPECT_INT_EQ(p.shape[1], want[i].s1);
    EXPECT_INT_EQ(p.count,
                  want[i].s0 * (want[i].ndim == 2 ? want[i].s1 : 1));
    EXPECT_INT_EQ(p.layer, want[i].layer);
    EXPECT_TRUE(p.value != NULL && p.grad != NULL);
  }
  /* Initialization as pinned: LayerNorm gammas 1, biases 0. */
  ASSERT_INT_EQ(bt_model_param(m, 2, &p), BT_OK);
  EXPECT_TRUE(p.value[0] == 1.0f);
  ASSERT_INT_EQ(bt_model_param(m, 1, &p), BT_OK);
  EXPECT_TRUE(p.value[0] == 0.0f);
  EXPECT_INT_EQ(bt_model_param(m, 18, &p), BT_ERANGE);
  EXPECT_INT_EQ(bt_model_param(NULL, 0, &p), BT_EINVAL);
  EXPECT_INT_EQ(bt_model_param(m, 0, NULL), BT_EINVAL);
  bt_model_destroy(m);
}

TEST(model_bad_configs)
{
  bt_resmlp_config_t mc = BT_RESMLP_CONFIG_INIT;
  bt_model_t *m = (bt_model_t *)&mc;
  bt_error_t err;

  mc.classes = 1;
  EXPECT_STATUS(bt_model_create_resmlp(&mc, &m, &err), BT_EINVAL, &err);
  EXPECT_TRUE(m == NULL);
  EXPECT_STR_CONTAINS(err.message, "classes >= 2");
  mc.classes = 10;
  mc.blocks = -1;
  EXPECT_STATUS(bt_model_create_resmlp(&mc, &m, &err), BT_EINVAL, &err);
  mc.blocks = 2;
  mc.hidden = 0;
  EXPECT_STATUS(bt_model_create_resmlp(&mc, &m, &err), BT_EINVAL, &err);
  mc.hidden = 8;
  mc.size = 8;
  EXPECT_STATUS(bt_model_create_resmlp(&mc, &m, &err), BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "BT_RESMLP_CONFIG_INIT");
  EXPECT_INT_EQ(bt_model_create_resmlp(NULL, &m, NULL), BT_EINVAL);
  EXPECT_INT_EQ(bt_model_create_resmlp(&mc, NULL, NULL), BT_EINVAL);
  /* L = 0 is allowed. */
  mc.size = sizeof mc;
  mc.blocks = 0;
  EXPECT_STATUS(bt_model_create_resmlp(&mc, &m, &err), BT_OK, &err);
  EXPECT_INT_EQ(bt_model_layer_count(m), 2);
  bt_model_destroy(m);
  bt_model_destroy(NULL);
  EXPECT_INT_EQ(bt_model_layer_count(NULL), 0);
  EXPECT_INT_EQ(bt_model_param_count(NULL), 0);
}

#define GD 6
#define GH 8
#define GC 3
#define GN 16

static bt_trainer_t *
make_trainer(bt_model_t *m, const char *sched, int32_t p, int32_t v,
             int32_t mb, const int32_t *balance, int32_t nbalance,
             int32_t ckpt, int32_t opt, float lr)
{
  bt_trainer_config_t tc = BT_TRAINER_CONFIG_INIT;
  bt_schedule_t *s = schedule(sched);
  bt_trainer_t *t = NULL;
  bt_error_t err;
  bt_status rc;

  tc.batch = GN;
  tc.microbatches = mb;
  tc.devices = p;
  tc.virtual_stages = v;
  tc.balance = balance;
  tc.nbalance = nbalance;
  tc.schedule = s;
  tc.checkpoint = ckpt;
  tc.optimizer = opt;
  tc.lr = lr;
  tc.threads = p;
  rc = bt_trainer_create(m, &tc, &t, &err);
  bt_schedule_destroy(s); /* used during create only */
  if (rc != BT_OK)
    test_fail(__FILE__, __LINE__, "trainer %s p=%d v=%d m=%d: %s", sched,
              (int)p, (int)v, (int)mb, err.message);
  return t;
}

TEST(backward_matches_reference)
{
  static const struct {
    const char *sched;
    int32_t p, v, m, long_skip;
    int32_t balance[4];
    int32_t nbalance;
  } runs[] = {
      {"gpipe", 2, 1, 4, 0, {2, 4}, 2},
      {"gpipe", 2, 1, 4, 1, {0}, 0},
      {"1f1b", 2, 1, 4, 0, {3, 3}, 2},
      {"1f1b", 3, 1, 8, 1, {0}, 0},
      {"zb-h1", 2, 1, 4, 0, {1, 5}, 2},
      {"zb-h1", 2, 1, 2, 1, {0}, 0},
      {"interleaved", 2, 2, 4, 0, {1, 2, 2, 1}, 4},
      {"interleaved", 2, 0, 4, 1, {0}, 0},
  };
  float x[GN * GD];
  int32_t y[GN];

  make_batch(x, y, GN, GD, GC, 42);
  for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
    bt_model_t *a = make_model(GD, GH, GC, 4, runs[i].long_skip, 7);
    bt_model_t *b = make_model(GD, GH, GC, 4, runs[i].long_skip, 7);
    bt_trainer_t *t =
        make_trainer(a, runs[i].sched, runs[i].p, runs[i].v, runs[i].m,
                     runs[i].nbalance ? runs[i].balance : NULL,
                     runs[i].nbalance, BT_CHECKPOINT_EXCEPT_LAST,
                     BT_OPTIMIZER_SGD, 0.1f);
    float la = NAN, lb = NAN;
    bt_error_t err;
    char what[64];
    int32_t sum = 0;

    snprintf(what, sizeof what, "%s p=%d m=%d skip=%d", runs[i].sched,
             (int)runs[i].p, (int)runs[i].m, (int)runs[i].long_skip);
    if (t == NULL)
      goto next;
    for (int32_t s = 0; s < bt_trainer_stages(t); s++) {
      EXPECT_TRUE(bt_trainer_stage_layers(t, s) >= 1);
      if (runs[i].nbalance)
        EXPECT_INT_EQ(bt_trainer_stage_layers(t, s), runs[i].balance[s]);
      sum += bt_trainer_stage_layers(t, s);
    }
    EXPECT_INT_EQ(sum, 6);
    EXPECT_TRUE(bt_trainer_plan(t) != NULL);
    EXPECT_STATUS(bt_trainer_backward(t, x, y, &la, &err), BT_OK, &err);
    EXPECT_STATUS(bt_model_reference_step(b, x, y, GN, runs[i].m, &lb, &err),
                  BT_OK, &err);
    if (!(fabs(la - lb) <= TOL * fabs(lb)))
      test_fail(__FILE__, __LINE__, "%s: loss %.9g vs reference %.9g", what,
                (double)la, (double)lb);
    tensors_close(a, b, true, TOL, what);
    /* backward alone does not change the parameters. */
    tensors_close(a, b, false, 0.0, what);
  next:
    bt_trainer_destroy(t);
    bt_model_destroy(a);
    bt_model_destroy(b);
  }
}

TEST(auto_balance)
{
  bt_model_t *m = make_model(GD, GH, GC, 6, 0, 3); /* 8 layers */
  static const struct {
    const char *sched;
    int32_t p, v, want_stages;
  } runs[] = {{"1f1b", 2, 0, 2}, {"gpipe", 3, 1, 3}, {"interleaved", 2, 0, 4},
              {"1f1b", 1, 1, 1}, {"gpipe", 8, 1, 8}};

  for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
    bt_trainer_t *t = make_trainer(m, runs[i].sched, runs[i].p, runs[i].v, 4,
                                   NULL, 0, BT_CHECKPOINT_NEVER,
                                   BT_OPTIMIZER_SGD, 0.1f);
    int32_t sum = 0;
    if (t == NULL)
      continue;
    EXPECT_INT_EQ(bt_trainer_stages(t), runs[i].want_stages);
    for (int32_t s = 0; s < bt_trainer_stages(t); s++) {
      EXPECT_TRUE(bt_trainer_stage_layers(t, s) >= 1);
      sum += bt_trainer_stage_layers(t, s);
    }
    EXPECT_INT_EQ(sum, 8);
    EXPECT_INT_EQ(bt_trainer_stage_layers(t, -1), 0);
    EXPECT_INT_EQ(bt_trainer_stage_layers(t, bt_trainer_stages(t)), 0);
    bt_trainer_destroy(t);
  }
  /* Measuring leaves the gradients as they were. */
  {
    bt_param_t p;
    bt_trainer_t *t;
    ASSERT_INT_EQ(bt_model_param(m, 0, &p), BT_OK);
    p.grad[0] = 123.0f;
    t = make_trainer(m, "1f1b", 2, 1, 4, NULL, 0, BT_CHECKPOINT_NEVER,
                     BT_OPTIMIZER_SGD, 0.1f);
    EXPECT_TRUE(p.grad[0] == 123.0f);
    bt_trainer_destroy(t);
  }
  bt_model_destroy(m);
}

/* The update rules as the header states them, in float. */
static void
manual_sgd(bt_model_t *m, float lr, float wd)
{
  for (size_t i = 0; i < bt_model_param_count(m); i++) {
    bt_param_t p;
    bt_model_param(m, i, &p);
    for (size_t j = 0; j < p.count; j++)
      p.value[j] -= lr * (p.grad[j] + wd * p.value[j]);
  }
}

static void
manual_adamw(bt_model_t *m, float *mm, float *vv, float lr, float b1,
             float b2, float eps, float wd, int t)
{
  size_t at = 0;
  double c1 = 1.0 / (1.0 - pow(b1, t)), c2 = 1.0 / (1.0 - pow(b2, t));
  for (size_t i = 0; i < bt_model_param_count(m); i++) {
    bt_param_t p;
    bt_model_param(m, i, &p);
    for (size_t j = 0; j < p.count; j++, at++) {
      float g = p.grad[j];
      mm[at] = b1 * mm[at] + (1.0f - b1) * g;
      vv[at] = b2 * vv[at] + (1.0f - b2) * g * g;
      float mhat = mm[at] * (float)c1, vhat = vv[at] * (float)c2;
      p.value[j] -= lr * (mhat / (sqrtf(vhat) + eps) + wd * p.value[j]);
    }
  }
}

static size_t
total_params(const bt_model_t *m)
{
  size_t n = 0;
  for (size_t i = 0; i < bt_model_param_count(m); i++) {
    bt_param_t p;
    bt_model_param(m, i, &p);
    n += p.count;
  }
  return n;
}

/* 1f1b accumulates each stage's microbatches in order 0 .. m-1, as the
 * reference does, so its gradients are bitwise the reference's and the
 * update rules can be compared without AdamW amplifying summation-order
 * noise in near-zero gradients. */
static void
optimizer_case(int32_t opt)
{
  const float lr = opt == BT_OPTIMIZER_SGD ? 0.05f : 0.01f, wd = 0.01f;
  bt_model_t *a = make_model(GD, GH, GC, 2, 1, 11);
  bt_model_t *b = make_model(GD, GH, GC, 2, 1, 11);
  bt_trainer_config_t tc = BT_TRAINER_CONFIG_INIT;
  bt_schedule_t *s = schedule("1f1b");
  bt_trainer_t *t = NULL;
  size_t np = total_params(b);
  float *mm = calloc(np, sizeof(float)), *vv = calloc(np, sizeof(float));
  float x[GN * GD], first = NAN, loss = NAN, lb;
  int32_t y[GN];
  bt_error_t err;

  make_batch(x, y, GN, GD, GC, 5);
  tc.batch = GN;
  tc.microbatches = 4;
  tc.devices = 2;
  tc.schedule = s;
  tc.optimizer = opt;
  tc.lr = lr;
  tc.weight_decay = wd;
  tc.threads = 2;
  EXPECT_STATUS(bt_trainer_create(a, &tc, &t, &err), BT_OK, &err);
  bt_schedule_destroy(s);
  if (t == NULL || mm == NULL || vv == NULL)
    goto out;
  for (int k = 1; k <= 3; k++) {
    EXPECT_STATUS(bt_trainer_step(t, x, y, &loss, &err), BT_OK, &err);
    EXPECT_STATUS(bt_model_reference_step(b, x, y, GN, 4, &lb, &err), BT_OK,
                  &err);
    if (opt == BT_OPTIMIZER_SGD)
      manual_sgd(b, lr, wd);
    else
      manual_adamw(b, mm, vv, lr, 0.9f, 0.999f, 1e-8f, wd, k);
    EXPECT_NEAR(loss, lb, TOL);
  }
  tensors_close(a, b, false, TOL,
                opt == BT_OPTIMIZER_SGD ? "sgd 3 steps" : "adamw 3 steps");
  /* 20 steps on the fixed batch lower its loss. */
  for (int k = 0; k < 20; k++) {
    EXPECT_STATUS(bt_trainer_step(t, x, y, &loss, &err), BT_OK, &err);
    if (k == 0)
      first = loss;
  }
  if (!(loss < first * 0.9f))
    test_fail(__FILE__, __LINE__, "%s: loss %g -> %g did not decrease",
              opt == BT_OPTIMIZER_SGD ? "sgd" : "adamw", (double)first,
              (double)loss);
out:
  free(mm);
  free(vv);
  bt_trainer_destroy(t);
  bt_model_destroy(a);
  bt_model_destroy(b);
}

TEST(sgd_update)
{
  optimizer_case(BT_OPTIMIZER_SGD);
}

TEST(adamw_update)
{
  optimizer_case(BT_OPTIMIZER_ADAMW);
}

TEST(save_load_round_trip)
{
  bt_model_t *a = make_model(GD, GH, GC, 2, 0, 1);
  bt_model_t *b = make_model(GD, GH, GC, 2, 0, 2);
  bt_model_t *c = make_model(GD, GH, GC, 3, 0, 2);
  char path[] = "/tmp/test_model_api_XXXXXX.safetensors";
  bt_error_t err;
  bt_param_t p;
  int fd = mkstemps(path, 12);
  float before;

  ASSERT_TRUE(fd >= 0);
  close(fd);
  EXPECT_STATUS(bt_model_save(a, path, &err), BT_OK, &err);
  EXPECT_STATUS(bt_model_load(b, path, &err), BT_OK, &err);
  tensors_close(b, a, false, 0.0, "loaded");
  /* Another config: refused, nothing changed. */
  ASSERT_INT_EQ(bt_model_param(c, 0, &p), BT_OK);
  before = p.value[0];
  EXPECT_STATUS(bt_model_load(c, path, &err), BT_EINVAL, &err);
  EXPECT_TRUE(p.value[0] == before);
  EXPECT_INT_EQ(bt_model_save(NULL, path, NULL), BT_EINVAL);
  EXPECT_INT_EQ(bt_model_save(a, NULL, NULL), BT_EINVAL);
  EXPECT_INT_EQ(bt_model_load(NULL, path, NULL), BT_EINVAL);
  EXPECT_INT_EQ(bt_model_load(a, NULL, NULL), BT_EINVAL);
  unlink(path);
  bt_model_destroy(a);
  bt_model_destroy(b);
  bt_model_destroy(c);
}

/* A separable toy set: the class is the largest of x0, x1, x2. */
#define PD 4
#define PC 3
#define PN 64

static void
toy_set(float *x, int32_t *y, size_t n, uint64_t seed)
{
  rng.state = seed;
  for (size_t r = 0; r < n; r++) {
    int32_t best = 0;
    for (size_t d = 0; d < PD; d++)
      x[r * PD + d] = test_rng_uniform_f32(&rng, -1.0f, 1.0f);
    for (int32_t c = 1; c < PC; c++)
      if (x[r * PD + c] > x[r * PD + best])
        best = c;
    y[r] = best;
  }
}

TEST(predict)
{
  bt_model_t *m = make_model(PD, 16, PC, 2, 1, 9);
  bt_trainer_config_t tc = BT_TRAINER_CONFIG_INIT;
  bt_schedule_t *s = schedule("1f1b");
  bt_trainer_t *t = NULL;
  float x[PN * PD], loss;
  int32_t y[PN], pred[PN];
  bt_error_t err;
  int correct = 0;

  toy_set(x, y, PN, 17);
  tc.batch = PN;
  tc.microbatches = 4;
  tc.devices = 2;
  tc.schedule = s;
  tc.optimizer = BT_OPTIMIZER_ADAMW;
  tc.lr = 0.01f;
  tc.threads = 2;
  EXPECT_STATUS(bt_trainer_create(m, &tc, &t, &err), BT_OK, &err);
  bt_schedule_destroy(s);
  ASSERT_TRUE(t != NULL);
  for (int k = 0; k < 50; k++)
    EXPECT_STATUS(bt_trainer_step(t, x, y, &loss, &err), BT_OK, &err);
  EXPECT_STATUS(bt_model_predict(m, x, PN, pred, &err), BT_OK, &err);
  for (int r = 0; r < PN; r++)
    correct += pred[r] == y[r];
  if (!(correct > 0.9 * PN))
    test_fail(__FILE__, __LINE__, "accuracy %d / %d after 50 steps", correct,
              PN);
  /* The reference forward agrees: the predicted class has the smallest
   * one-row cross-entropy, i.e. the largest logit. */
  for (int r = 0; r < 16; r++) {
    float lc[PC];
    int32_t best = 0;
    for (int32_t c = 0; c < PC; c++)
      EXPECT_STATUS(bt_model_reference_step(m, x + r * PD, &c, 1, 1, &lc[c],
                                            &err),
                    BT_OK, &err);
    for (int32_t c = 1; c < PC; c++)
      if (lc[c] < lc[best])
        best = c;
    EXPECT_INT_EQ(pred[r], best);
  }
  /* Row chunks (predict works in blocks of rows) give the same classes. */
  {
    int32_t one[PN];
    for (int r = 0; r < PN; r++)
      EXPECT_STATUS(bt_model_predict(m, x + r * PD, 1, &one[r], &err), BT_OK,
                    &err);
    EXPECT_TRUE(memcmp(one, pred, sizeof one) == 0);
  }
  EXPECT_INT_EQ(bt_model_predict(NULL, x, PN, pred, NULL), BT_EINVAL);
  EXPECT_INT_EQ(bt_model_predict(m, NULL, PN, pred, NULL), BT_EINVAL);
  EXPECT_INT_EQ(bt_model_predict(m, x, PN, NULL, NULL), BT_EINVAL);
  bt_trainer_destroy(t);
  bt_model_destroy(m);
}

/* Held activation bytes on device 0 (stage 0 with v = 1): gpipe keeps all
 * m microbatches' activations at once, 1f1b at most p (m >= p), as the
 * simulator's memory model has them (peak = microbatches in flight x
 * M_B); always-checkpointing holds one microbatch's at a time. */
TEST(peak_activation_bytes)
{
  const int32_t p = 2, mb = 4, bal[2] = {2, 2};
  float x[GN * GD], loss;
  int32_t y[GN];
  double peak[2][3], mb_bytes = 0;
  static const char *scheds[] = {"gpipe", "1f1b"};
  bt_error_t err;

  make_batch(x, y, GN, GD, GC, 3);
  for (int si = 0; si < 2; si++)
    for (int32_t ck = 0; ck < 3; ck++) {
      bt_model_t *m = make_model(GD, GH, GC, 2, 0, 1);
      bt_trainer_t *t = make_trainer(m, scheds[si], p, 1, mb, bal, 2, ck,
                                     BT_OPTIMIZER_SGD, 0.1f);
      peak[si][ck] = -1;
      if (t != NULL) {
        EXPECT_STATUS(bt_trainer_backward(t, x, y, &loss, &err), BT_OK,
                      &err);
        peak[si][ck] = bt_trainer_peak_activation_bytes(t, 0);
        mb_bytes = bt_trainer_stage_activation_bytes(t, 0);
        EXPECT_TRUE(bt_trainer_stage_activation_bytes(t, 1) > 0);
        EXPECT_TRUE(bt_trainer_stage_activation_bytes(t, 2) == 0);
        EXPECT_TRUE(bt_trainer_peak_activation_bytes(t, 2) == 0);
      }
      bt_trainer_destroy(t);
      bt_model_destroy(m);
    }
  ASSERT_TRUE(mb_bytes > 0);
  EXPECT_TRUE(peak[0][BT_CHECKPOINT_NEVER] == mb * mb_bytes);
  EXPECT_TRUE(peak[1][BT_CHECKPOINT_NEVER] == p * mb_bytes);
  for (int si = 0; si < 2; si++) {
    EXPECT_TRUE(peak[si][BT_CHECKPOINT_ALWAYS] <
                peak[si][BT_CHECKPOINT_NEVER]);
    EXPECT_TRUE(peak[si][BT_CHECKPOINT_ALWAYS] == mb_bytes);
    EXPECT_TRUE(peak[si][BT_CHECKPOINT_EXCEPT_LAST] <=
                peak[si][BT_CHECKPOINT_NEVER]);
  }
  EXPECT_TRUE(bt_trainer_peak_activation_bytes(NULL, 0) == 0);
  EXPECT_TRUE(bt_trainer_stage_activation_bytes(NULL, 0) == 0);
}

TEST(slices)
{
  bt_model_t *m = make_model(GD, GH, GC, 2, 0, 1);
  bt_trainer_config_t tc = BT_TRAINER_CONFIG_INIT;
  bt_schedule_t *s = schedule("gpipe");
  bt_trainer_t *t = NULL;
  bt_slice_t *sl;
  float x[GN * GD], loss;
  int32_t y[GN];
  size_t count = 0;
  bt_error_t err;

  make_batch(x, y, GN, GD, GC, 3);
  tc.batch = GN;
  tc.devices = 2;
  tc.schedule = s;
  tc.trace = 1;
  tc.threads = 2;
  EXPECT_STATUS(bt_trainer_create(m, &tc, &t, &err), BT_OK, &err);
  bt_schedule_destroy(s);
  ASSERT_TRUE(t != NULL);
  EXPECT_STATUS(bt_trainer_step(t, x, y, &loss, &err), BT_OK, &err);
  EXPECT_INT_EQ(bt_trainer_slices(t, NULL, &count), BT_OK);
  /* gpipe, 2 stages, 4 microbatches: F and B of each, plus recomputes. */
  EXPECT_TRUE(count >= 16);
  sl = calloc(count, sizeof *sl);
  ASSERT_TRUE(sl != NULL);
  EXPECT_INT_EQ(bt_trainer_slices(t, sl, &count), BT_OK);
  for (size_t i = 0; i < count; i++)
    EXPECT_TRUE(sl[i].end >= sl[i].start);
  free(sl);
  EXPECT_INT_EQ(bt_trainer_slices(NULL, NULL, &count), BT_EINVAL);
  EXPECT_INT_EQ(bt_trainer_slices(t, NULL, NULL), BT_EINVAL);
  bt_trainer_destroy(t);
  /* Without trace: refused. */
  t = make_trainer(m, "gpipe", 2, 1, 4, NULL, 0, 0, 0, 0.1f);
  EXPECT_INT_EQ(bt_trainer_slices(t, NULL, &count), BT_EINVAL);
  bt_trainer_destroy(t);
  bt_model_destroy(m);
}

TEST(trainer_bad_configs)
{
  bt_model_t *m = make_model(GD, GH, GC, 2, 0, 1); /* 4 layers */
  bt_schedule_t *s = schedule("1f1b");
  bt_trainer_config_t tc = BT_TRAINER_CONFIG_INIT;
  bt_trainer_t *t = (bt_trainer_t *)&tc;
  float x[GN * GD], loss;
  int32_t y[GN];
  const int32_t bad_sum[2] = {2, 3}, zero[2] = {0, 4};
  bt_error_t err;

  tc.batch = GN;
  tc.devices = 2;
  tc.schedule = NULL;
  EXPECT_STATUS(bt_trainer_create(m, &tc, &t, &err), BT_EINVAL, &err);
  EXPECT_TRUE(t == NULL);
  EXPECT_STR_CONTAINS(err.message, "schedule");
  tc.schedule = s;

  tc.microbatches = 3;
  EXPECT_STATUS(bt_trainer_create(m, &tc, &t, &err), BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "microbatch count that divides");
  tc.microbatches = 4;

  tc.balance = bad_sum;
  tc.nbalance = 2;
  EXPECT_STATUS(bt_trainer_create(m, &tc, &t, &err), BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "sum to");
  tc.balance = zero;
  EXPECT_STATUS(bt_trainer_create(m, &tc, &t, &err), BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "at least one layer");
  tc.nbalance = 3;
  tc.balance = bad_sum;
  EXPECT_STATUS(bt_trainer_create(m, &tc, &t, &err), BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "one entry per stage");
  tc.balance = NULL;
  EXPECT_STATUS(bt_trainer_create(m, &tc, &t, &err), BT_EINVAL, &err);
  tc.nbalance = 0;

  tc.devices = 5;
  EXPECT_STATUS(bt_trainer_create(m, &tc, &t, &err), BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "more stages than layers");
  tc.devices = 2;

  /* interleaved refuses m not a multiple of p. */
  {
    bt_schedule_t *il = schedule("interleaved");
    tc.schedule = il;
    tc.microbatches = 1;
    EXPECT_STATUS(bt_trainer_create(m, &tc, &t, &err), BT_EUNSUPPORTED,
                  &err);
    EXPECT_STR_CONTAINS(err.message, "multiple of devices");
    tc.microbatches = 4;
    tc.schedule = s;
    bt_schedule_destroy(il);
  }

  tc.checkpoint = 7;
  EXPECT_STATUS(bt_trainer_create(m, &tc, &t, &err), BT_EINVAL, &err);
  tc.checkpoint = BT_CHECKPOINT_EXCEPT_LAST;
  tc.optimizer = 9;
  EXPECT_STATUS(bt_trainer_create(m, &tc, &t, &err), BT_EINVAL, &err);
  tc.optimizer = BT_OPTIMIZER_ADAMW;
  tc.beta2 = 1.0f;
  EXPECT_STATUS(bt_trainer_create(m, &tc, &t, &err), BT_EINVAL, &err);
  tc.beta2 = 0.999f;
  tc.lr = NAN;
  EXPECT_STATUS(bt_trainer_create(m, &tc, &t, &err), BT_EINVAL, &err);
  tc.lr = 0.1f;
  tc.size = 16;
  EXPECT_STATUS(bt_trainer_create(m, &tc, &t, &err), BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "BT_TRAINER_CONFIG_INIT");
  tc.size = sizeof tc;

  EXPECT_INT_EQ(bt_trainer_create(NULL, &tc, &t, NULL), BT_EINVAL);
  EXPECT_INT_EQ(bt_trainer_create(m, NULL, &t, NULL), BT_EINVAL);
  EXPECT_INT_EQ(bt_trainer_create(m, &tc, NULL, NULL), BT_EINVAL);

  /* A good one; NULL arguments and bad labels at step time. */
  EXPECT_STATUS(bt_trainer_create(m, &tc, &t, &err), BT_OK, &err);
  bt_schedule_destroy(s);
  ASSERT_TRUE(t != NULL);
  make_batch(x, y, GN, GD, GC, 1);
  EXPECT_INT_EQ(bt_trainer_backward(NULL, x, y, &loss, NULL), BT_EINVAL);
  EXPECT_INT_EQ(bt_trainer_backward(t, NULL, y, &loss, NULL), BT_EINVAL);
  EXPECT_INT_EQ(bt_trainer_backward(t, x, NULL, &loss, NULL), BT_EINVAL);
  EXPECT_INT_EQ(bt_trainer_backward(t, x, y, NULL, NULL), BT_EINVAL);
  EXPECT_INT_EQ(bt_trainer_step(NULL, x, y, &loss, NULL), BT_EINVAL);
  EXPECT_INT_EQ(bt_trainer_update(NULL, NULL), BT_EINVAL);
  y[3] = GC;
  EXPECT_STATUS(bt_trainer_step(t, x, y, &loss, &err), BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "outside");
  EXPECT_INT_EQ(bt_trainer_stages(NULL), 0);
  EXPECT_INT_EQ(bt_trainer_stage_layers(NULL, 0), 0);
  EXPECT_TRUE(bt_trainer_plan(NULL) == NULL);
  EXPECT_INT_EQ(bt_model_reference_step(NULL, x, y, GN, 1, &loss, NULL),
                BT_EINVAL);
  EXPECT_INT_EQ(bt_model_reference_step(m, x, y, GN, 0, &loss, NULL),
                BT_EINVAL);
  EXPECT_INT_EQ(bt_model_reference_step(m, x, y, GN, 3, &loss, NULL),
                BT_EINVAL);
  bt_trainer_destroy(t);
  bt_trainer_destroy(NULL);
  bt_model_destroy(m);
}

TEST(explicit_placement)
{
  /* Stages placed against the loop order (stage 0 on device 1, stage 1 on
   * device 0) give the reference's results; a device outside the trainer's
   * devices is refused. */
  static const int32_t swapped[2] = {1, 0}, outside[2] = {0, 2};
  static const int32_t balance[2] = {3, 3};
  bt_trainer_config_t tc = BT_TRAINER_CONFIG_INIT;
  bt_model_t *a = make_model(GD, GH, GC, 4, 1, 7);
  bt_model_t *b = make_model(GD, GH, GC, 4, 1, 7);
  bt_schedule_t *s = schedule("1f1b");
  bt_trainer_t *t = NULL;
  float x[GN * GD], la = NAN, lb = NAN;
  int32_t y[GN];
  bt_error_t err;

  make_batch(x, y, GN, GD, GC, 43);
  tc.batch = GN;
  tc.microbatches = 4;
  tc.devices = 2;
  tc.balance = balance;
  tc.nbalance = 2;
  tc.schedule = s;
  tc.threads = 2;
  tc.stage_device = outside;
  EXPECT_STATUS(bt_trainer_create(a, &tc, &t, &err), BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "device 2");
  tc.stage_device = swapped;
  EXPECT_STATUS(bt_trainer_create(a, &tc, &t, &err), BT_OK, &err);
  if (t != NULL) {
    const bt_plan_t *plan = bt_trainer_plan(t);
    /* Device 0 runs stage 1's actions. */
    EXPECT_INT_EQ(bt_plan_action(plan, 0, 0).stage, 1);
    EXPECT_STATUS(bt_trainer_backward(t, x, y, &la, &err), BT_OK, &err);
    EXPECT_STATUS(bt_model_reference_step(b, x, y, GN, 4, &lb, &err), BT_OK,
                  &err);
    EXPECT_NEAR(la, lb, TOL);
    tensors_close(a, b, true, TOL, "swapped placement");
  }
  bt_trainer_destroy(t);
  bt_schedule_destroy(s);
  bt_model_destroy(a);
  bt_model_destroy(b);
}

/* ---- gpt through the public API ------------------------------------------ */

static bt_model_t *
make_gpt(int untied, float dropout, uint64_t seed)
{
  bt_gpt_config_t gc = BT_GPT_CONFIG_INIT;
  bt_model_t *m = NULL;
  bt_error_t err;

  gc.vocab = 13;
  gc.embd = 8;
  gc.heads = 2;
  gc.layers = 2;
  gc.seq_max = 6;
  gc.untied = untied;
  gc.dropout = dropout;
  gc.seed = seed;
  if (bt_model_create_gpt(&gc, &m, &err) != BT_OK) {
    fprintf(stderr, "test_model_api: %s\n", err.message);
    exit(1);
  }
  return m;
}

static void
token_batch(int32_t *x, int32_t *y, size_t n, uint64_t seed)
{
  rng.state = seed;
  for (size_t i = 0; i < n; i++) {
    x[i] = (int32_t)(test_rng_next(&rng) % 13);
    y[i] = (int32_t)(test_rng_next(&rng) % 13);
  }
}

/* Names as pinned, the layers, and the kind checks. */
TEST(gpt_names_and_kind)
{
  bt_model_t *m = make_gpt(1, 0.0f, 1), *r = make_model(4, 4, 3, 1, 0, 1);
  static const char *want[] = {"wte", "wpe", "blk0.ln1.g", "blk0.ln1.b",
                               "blk0.attn.qkv.w", "blk0.attn.qkv.b",
                               "blk0.attn.proj.w", "blk0.attn.proj.b",
                               "blk0.ln2.g", "blk0.ln2.b", "blk0.mlp.fc.w",
                               "blk0.mlp.fc.b", "blk0.mlp.proj.w",
                               "blk0.mlp.proj.b"};
  bt_param_t p;
  bt_error_t err = {0};
  int32_t x[6] = {0}, y[6] = {0}, out[4];
  float loss;
  float xf[4] = {0};

  EXPECT_TRUE(strcmp(bt_model_kind(m), "gpt") == 0);
  EXPECT_TRUE(strcmp(bt_model_kind(r), "resmlp") == 0);
  EXPECT_INT_EQ(bt_model_layer_count(m), 4);
  EXPECT_TRUE(strcmp(bt_model_layer_name(m, 0), "embed") == 0);
  EXPECT_TRUE(strcmp(bt_model_layer_name(m, 3), "head") == 0);
  for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
    ASSERT_TRUE(bt_model_param(m, i, &p) == BT_OK);
    EXPECT_TRUE(strcmp(p.name, want[i]) == 0);
  }
  ASSERT_TRUE(bt_model_param(m, bt_model_param_count(m) - 1, &p) == BT_OK);
  EXPECT_TRUE(strcmp(p.name, "head.w") == 0 && p.shape[0] == 13 &&
              p.shape[1] == 8 && p.layer == 3);
  EXPECT_INT_EQ(bt_model_eval_tokens(r, x, y, 1, 6, &loss, &err), BT_EINVAL);
  EXPECT_TRUE(strstr(err.message, "is for gpt models") != NULL);
  EXPECT_INT_EQ(bt_model_predict(m, xf, 1, out, &err), BT_EINVAL);
  EXPECT_TRUE(strstr(err.message, "bt_model_generate") != NULL);
  EXPECT_INT_EQ(bt_model_reference_step(m, xf, y, 1, 1, &loss, &err),
                BT_EINVAL);
  EXPECT_INT_EQ(bt_model_generate(m, NULL, 0, 4, 0.0f, 1, out, &err), BT_OK);
  for (int i = 0; i < 4; i++)
    EXPECT_TRUE(out[i] >= 0 && out[i] < 13);
  bt_model_destroy(m);
  bt_model_destroy(r);
}

/* A pipelined, data-parallel, tied, clipped run through bt_trainer_*:
 * gradients against bt_model_reference_step_tokens (R m microbatches),
 * and bt_trainer_step_tokens (optimizer in the graph) against
 * bt_trainer_backward_tokens + bt_trainer_update, bitwise. */
TEST(gpt_trainer_matches_reference)
{
  static const char *scheds[] = {"1f1b", "zb-h1", "interleaved"};

  for (size_t si = 0; si < 3; si++) {
    bt_model_t *a = make_gpt(0, 0.1f, 3), *b = make_gpt(0, 0.1f, 3);
    bt_model_t *c = make_gpt(0, 0.1f, 3);
    bt_schedule_t *s = schedule(scheds[si]);
    bt_trainer_config_t tc = BT_TRAINER_CONFIG_INIT;
    bt_trainer_t *ta = NULL, *tc2 = NULL;
    bt_error_t err = {0};
    int32_t x[8 * 6], y[8 * 6];
    float la, lc, lr;

    tc.batch = 8;
    tc.seq = 6;
    tc.microbatches = 2;
    tc.devices = 2;
    tc.virtual_stages = si == 2 ? 2 : 0;
    tc.replicas = 2;
    tc.schedule = s;
    tc.optimizer = BT_OPTIMIZER_ADAMW;
    tc.lr = 1e-2f;
    tc.eps = 1e-4f;
    tc.max_grad_norm = 0.5f;
    tc.dropout_seed = 77;
    tc.threads = 2;
    if (si == 2) {
      /* 4 stages over embed, 2 blocks, head: give the partition. */
      static const int32_t bal[4] = {1, 1, 1, 1};
      tc.balance = bal;
      tc.nbalance = 4;
    }
    ASSERT_TRUE(bt_trainer_create(a, &tc, &ta, &err) == BT_OK);
    ASSERT_TRUE(bt_trainer_create(c, &tc, &tc2, &err) == BT_OK);
    token_batch(x, y, 48, 5);
    ASSERT_TRUE(bt_trainer_backward_tokens(ta, x, y, &la, &err) == BT_OK);
    ASSERT_TRUE(bt_model_reference_step_tokens(b, x, y, 8, 6, 4, 77, 1, &lr,
                                               &err) == BT_OK);
    EXPECT_TRUE(fabsf(la - lr) <= 1e-5f * fabsf(lr));
    tensors_close(a, b, true, TOL, scheds[si]);
    EXPECT_TRUE(bt_trainer_grad_norm(ta) > 0.0);
    ASSERT_TRUE(bt_trainer_update(ta, &err) == BT_OK);
    ASSERT_TRUE(bt_trainer_step_tokens(tc2, x, y, &lc, &err) == BT_OK);
    EXPECT_TRUE(la == lc);
    tensors_close(c, a, false, 0.0, "in-graph vs separate update");
    bt_trainer_destroy(ta);
    bt_trainer_destroy(tc2);
    bt_schedule_destroy(s);
    bt_model_destroy(a);
    bt_model_destroy(b);
    bt_model_destroy(c);
  }
}

TEST(gpt_trainer_bad_configs)
{
  bt_model_t *m = make_gpt(0, 0.0f, 1);
  bt_schedule_t *s = schedule("1f1b");
  bt_trainer_config_t tc = BT_TRAINER_CONFIG_INIT;
  bt_trainer_t *t = NULL;
  bt_error_t err = {0};
  float xf[4] = {0}, loss;
  int32_t y[4] = {0};

  tc.schedule = s;
  tc.batch = 8;
  tc.microbatches = 2;
  tc.seq = 0;
  EXPECT_INT_EQ(bt_trainer_create(m, &tc, &t, &err), BT_EINVAL);
  EXPECT_TRUE(strstr(err.message, "config.seq") != NULL);
  tc.seq = 6;
  tc.replicas = 3;
  EXPECT_INT_EQ(bt_trainer_create(m, &tc, &t, &err), BT_EINVAL);
  EXPECT_TRUE(strstr(err.message, "multiple of 6") != NULL);
  tc.replicas = 1;
  ASSERT_TRUE(bt_trainer_create(m, &tc, &t, &err) == BT_OK);
  EXPECT_INT_EQ(bt_trainer_backward(t, xf, y, &loss, &err), BT_EINVAL);
  EXPECT_TRUE(strstr(err.message, "bt_trainer_backward_tokens") != NULL);
  bt_trainer_destroy(t);
  bt_schedule_destroy(s);
  bt_model_destroy(m);
}
