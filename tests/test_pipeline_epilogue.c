/* The embedding API's step epilogue (include/baton/pipeline.h): data-
 * parallel replicas, tied parameters, global gradient-norm clipping and the
 * optimizer update as tasks of the step's graph.
 *
 * A toy model with an exact oracle: every stage s of replica r holds a
 * vector w[r][s] of D floats.  Stage s's forward adds it to its input
 * (stage 0's input is x_q for the global microbatch q = r * m + k, the
 * replica's k-th); the last stage's loss share is 0.5 * |out|^2, so its
 * output gradient is out itself and every stage's backward passes the
 * gradient through unchanged and accumulates it into g[r][s].  Small
 * integers keep every sum exact in float, so the oracle compares bitwise:
 * after the step each stage's gradient is the sum of out_q over every
 * global microbatch (all replicas), twice that on tied stages.
 *
 * Every epilogue callback checks that what the graph promises has
 * happened (atomic counters written by the callbacks it must follow) and
 * records failures for the test thread (callbacks run on runtime
 * threads). */
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>

#include "baton/baton.h"
#include "test.h"

#define D 4
#define MAXR 2
#define MAXS 4
#define MAXM 4

struct toy {
  int32_t R, S, m;
  int32_t tie_a, tie_b; /* -1: no tie */
  float w[MAXR][MAXS][D], g[MAXR][MAXS][D];
  float out[MAXR][MAXM][D]; /* the last stage's outputs, for W */
  _Atomic int bw[MAXR][MAXS];      /* backwards (B or W) done */
  _Atomic int tied[MAXR];          /* tie calls done */
  _Atomic int reduced[MAXS];       /* reduce calls done per stage */
  _Atomic int reduced_by[MAXR][MAXS]; /* replica r's reduce of s done */
  int32_t p;                       /* devices per replica */
  _Atomic int normed;              /* norm calls done */
  _Atomic int updates;
  _Atomic int ready[MAXR][MAXS];   /* grads_ready calls */
  double seen_scale, seen_norm;
  float lr;
  int fail_reduce_stage;           /* -1, or a stage whose reduce fails */
  int nan_stage;                   /* -1, or a stage whose sqnorm is NaN */
  pthread_mutex_t mu;
  char failure[256];
};

static struct toy T;

static void
toy_fail(const char *fmt, ...)
{
  va_list ap;

  pthread_mutex_lock(&T.mu);
  if (T.failure[0] == '\0') {
    va_start(ap, fmt);
    vsnprintf(T.failure, sizeof T.failure, fmt, ap);
    va_end(ap);
  }
  pthread_mutex_unlock(&T.mu);
}

static float
x_of(int32_t q, int i)
{
  return (float)(q + 1 + i);
}

static int
toy_forward(const bt_stage_call_t *c, char *errbuf, size_t errlen)
{
  int32_t r = c->replica, s = c->stage, k = c->microbatch;
  float v[D];

  (void)errbuf;
  (void)errlen;
  for (int i = 0; i < D; i++)
    v[i] = (s == 0 ? x_of(r * T.m + k, i) : ((const float *)c->input)[i]) +
           T.w[r][s][i];
  if (s == T.S - 1) {
    float loss = 0.0f;
    for (int i = 0; i < D; i++) {
      T.out[r][k][i] = v[i];
      loss += 0.5f * v[i] * v[i];
    }
    *(float *)c->output = loss;
  } else {
    memcpy(c->output, v, sizeof v);
  }
  return 0;
}

static const float *
dout_of(const bt_stage_call_t *c)
{
  return c->stage == T.S - 1 ? T.out[c->replica][c->microbatch]
                             : (const float *)c->grad_output;
}

static int
toy_input_grad(const bt_stage_call_t *c, char *errbuf, size_t errlen)
{
  (void)errbuf;
  (void)errlen;
  if (c->grad_input != NULL)
    memcpy(c->grad_input, dout_of(c), D * sizeof(float));
  return 0;
}

static int
toy_weight_grad(const bt_stage_call_t *c, char *errbuf, size_t errlen)
{
  const float *d = dout_of(c);

  (void)errbuf;
  (void)errlen;
  for (int i = 0; i < D; i++)
    T.g[c->replica][c->stage][i] += d[i];
  atomic_fetch_add(&T.bw[c->replica][c->stage], 1);
  return 0;
}

static int
toy_backward(const bt_stage_call_t *c, char *errbuf, size_t errlen)
{
  toy_input_grad(c, errbuf, errlen);
  return toy_weight_grad(c, errbuf, errlen);
}

static bool
is_tied(int32_t s)
{
  return s == T.tie_a || s == T.tie_b;
}

static int
toy_tie(const bt_stage_call_t *c, char *errbuf, size_t errlen)
{
  int32_t r = c->replica;

  (void)errbuf;
  (void)errlen;
  if (c->kind != BT_STAGE_TIE || c->tie != 0 || c->microbatch != -1)
    toy_fail("tie call: kind %d tie %d mb %d", (int)c->kind, (int)c->tie,
             (int)c->microbatch);
  if (atomic_load(&T.bw[r][T.tie_a]) != T.m ||
      atomic_load(&T.bw[r][T.tie_b]) != T.m)
    toy_fail("tie of replica %d ran before both stages' backwards", (int)r);
  for (int i = 0; i < D; i++) {
    float sum = T.g[r][T.tie_a][i] + T.g[r][T.tie_b][i];
    T.g[r][T.tie_a][i] = T.g[r][T.tie_b][i] = sum;
  }
  atomic_fetch_add(&T.tied[r], 1);
  return 0;
}

/* Call r sums element slice r over replicas, in replica order, and writes
 * it to every replica: the R calls of a stage together all-reduce it. */
static int
toy_reduce(const bt_stage_call_t *c, char *errbuf, size_t errlen)
{
  int32_t s = c->stage, r = c->replica;
  int lo = r * D / T.R, hi = (r + 1) * D / T.R;

  if (s == T.fail_reduce_stage) {
    snprintf(errbuf, errlen, "injected all-reduce failure");
    return BT_EIO;
  }
  for (int q = 0; q < T.R; q++) {
    if (atomic_load(&T.bw[q][s]) != T.m)
      toy_fail("reduce %d ran before replica %d's backwards", (int)s, (int)q);
    if (is_tied(s) && atomic_load(&T.tied[q]) != 1)
      toy_fail("reduce %d ran before replica %d's tie", (int)s, (int)q);
  }
  /* A device's reductions come in decreasing stage order (pipeline.h). */
  for (int32_t s2 = s + 1; s2 < T.S; s2++)
    if (s2 % T.p == s % T.p && atomic_load(&T.reduced_by[r][s2]) != 1)
      toy_fail("replica %d reduced stage %d before stage %d of its device",
               (int)r, (int)s, (int)s2);
  atomic_store(&T.reduced_by[r][s], 1);
  for (int i = lo; i < hi; i++) {
    float sum = 0.0f;
    for (int q = 0; q < T.R; q++)
      sum += T.g[q][s][i];
    for (int q = 0; q < T.R; q++)
      T.g[q][s][i] = sum;
  }
  atomic_fetch_add(&T.reduced[s], 1);
  return 0;
}

static int
toy_sqnorm(const bt_stage_call_t *c, char *errbuf, size_t errlen)
{
  int32_t s = c->stage;
  double sum = 0.0;

  (void)errbuf;
  (void)errlen;
  if (c->kind != BT_STAGE_NORM || c->replica != 0 || c->sqnorm == NULL) {
    toy_fail("norm call: kind %d replica %d", (int)c->kind, (int)c->replica);
    return 0;
  }
  if (T.R > 1 && atomic_load(&T.reduced[s]) != T.R)
    toy_fail("norm %d ran before the stage's all-reduce", (int)s);
  if (T.R == 1 && atomic_load(&T.bw[0][s]) != T.m)
    toy_fail("norm %d ran before the stage's backwards", (int)s);
  if (s != T.tie_b) /* a tied parameter counts once */
    for (int i = 0; i < D; i++)
      sum += (double)T.g[0][s][i] * T.g[0][s][i];
  *c->sqnorm = s == T.nan_stage ? NAN : sum;
  atomic_fetch_add(&T.normed, 1);
  return 0;
}

static int
toy_update(const bt_stage_call_t *c, char *errbuf, size_t errlen)
{
  int32_t r = c->replica, s = c->stage;

  (void)errbuf;
  (void)errlen;
  if (c->kind != BT_STAGE_UPDATE)
    toy_fail("update call: kind %d", (int)c->kind);
  if (!isnan(c->grad_norm) && atomic_load(&T.normed) != T.S)
    toy_fail("update %d ran before every stage's norm", (int)s);
  if (T.R > 1 && atomic_load(&T.reduced[s]) != T.R)
    toy_fail("update %d ran before the stage's all-reduce", (int)s);
  if (is_tied(s) && atomic_load(&T.tied[r]) != 1)
    toy_fail("update %d ran before the tie", (int)s);
  pthread_mutex_lock(&T.mu);
  T.seen_scale = c->grad_scale;
  T.seen_norm = c->grad_norm;
  pthread_mutex_unlock(&T.mu);
  for (int i = 0; i < D; i++)
    T.w[r][s][i] -= T.lr * (float)c->grad_scale * T.g[r][s][i];
  atomic_fetch_add(&T.updates, 1);
  return 0;
}

static void
toy_grads_ready(int32_t stage, void *user)
{
  (void)user;
  /* Which replica: the one whose backward count just reached m and has not
   * been announced yet. */
  for (int r = 0; r < T.R; r++) {
    int zero = 0;
    if (atomic_load(&T.bw[r][stage]) == T.m &&
        atomic_compare_exchange_strong(&T.ready[r][stage], &zero, 1))
      return;
  }
  toy_fail("grads_ready(%d) with no stage complete", (int)stage);
}

static void
toy_reset(int32_t R, int32_t S, int32_t m, bool tie)
{
  memset(&T.w, 0, sizeof T.w);
  memset(&T.g, 0, sizeof T.g);
  for (int r = 0; r < MAXR; r++)
    for (int s = 0; s < MAXS; s++) {
      for (int i = 0; i < D; i++)
        T.w[r][s][i] = (float)(s + i % 2);
      atomic_store(&T.ready[r][s], 0);
      atomic_store(&T.bw[r][s], 0);
    }
  T.R = R;
  T.S = S;
  T.p = S; /* callers with virtual stages say otherwise */
  T.m = m;
  T.tie_a = tie ? 0 : -1;
  T.tie_b = tie ? S - 1 : -1;
  for (int r = 0; tie && r < MAXR; r++) /* tied copies start equal */
    memcpy(T.w[r][S - 1], T.w[r][0], sizeof T.w[r][0]);
  T.lr = 0.5f;
  T.fail_reduce_stage = -1;
  T.nan_stage = -1;
  T.failure[0] = '\0';
}

/* Between steps: zero the gradients and the counters. */
static void
toy_new_step(void)
{
  memset(&T.g, 0, sizeof T.g);
  for (int r = 0; r < MAXR; r++) {
    atomic_store(&T.tied[r], 0);
    for (int s = 0; s < MAXS; s++) {
      atomic_store(&T.bw[r][s], 0);
      atomic_store(&T.ready[r][s], 0);
      atomic_store(&T.reduced_by[r][s], 0);
    }
  }
  for (int s = 0; s < MAXS; s++)
    atomic_store(&T.reduced[s], 0);
  atomic_store(&T.normed, 0);
  atomic_store(&T.updates, 0);
  T.seen_scale = T.seen_norm = -1.0;
}

static bt_status
toy_pipeline(const char *sched_name, int32_t p, int32_t v, double max_norm,
             bool with_update, bt_pipeline_t **out, bt_error_t *err)
{
  bt_stage_desc_t desc[MAXS];
  bt_pipeline_config_t pc = BT_PIPELINE_CONFIG_INIT;
  bt_pipeline_tie_t tie = {"w", 0, 0};
  bt_schedule_t *sched = NULL;
  bt_status rc = bt_schedule_builtin(sched_name, &sched, err);

  if (rc != BT_OK)
    return rc;
  for (int32_t s = 0; s < T.S; s++) {
    desc[s] = (bt_stage_desc_t)BT_STAGE_DESC_INIT;
    desc[s].forward = toy_forward;
    desc[s].backward = toy_backward;
    desc[s].input_grad = toy_input_grad;
    desc[s].weight_grad = toy_weight_grad;
    desc[s].output_bytes = s == T.S - 1 ? sizeof(float) : D * sizeof(float);
    desc[s].grad_input_bytes = s == 0 ? 0 : D * sizeof(float);
  }
  pc.stages = T.S;
  pc.stage = desc;
  pc.devices = p;
  pc.virtual_stages = v;
  pc.microbatches = T.m;
  pc.schedule = sched;
  pc.threads = 2;
  pc.replicas = T.R;
  pc.grads_ready = toy_grads_ready;
  if (T.tie_a >= 0) {
    tie.stage_a = T.tie_a;
    tie.stage_b = T.tie_b;
    pc.ties = &tie;
    pc.nties = 1;
    pc.tie_grads = toy_tie;
  }
  pc.reduce_grads = T.R > 1 ? toy_reduce : NULL;
  pc.grad_sqnorm = max_norm > 0 ? toy_sqnorm : NULL;
  pc.max_grad_norm = max_norm;
  pc.update = with_update ? toy_update : NULL;
  rc = bt_pipeline_create(&pc, out, err);
  bt_schedule_destroy(sched);
  return rc;
}

/* The oracle: g_s = sum over all R * m global microbatches of out_q, out_q
 * = x_q + sum_s w_s (w as before the step, equal across replicas), times 2
 * on tied stages. */
static void
oracle_grad(const float w[MAXS][D], float g[MAXS][D])
{
  float sum[D] = {0};

  for (int32_t q = 0; q < T.R * T.m; q++)
    for (int i = 0; i < D; i++) {
      float o = x_of(q, i);
      for (int32_t s = 0; s < T.S; s++)
        o += w[s][i];
      sum[i] += o;
    }
  for (int32_t s = 0; s < T.S; s++)
    for (int i = 0; i < D; i++)
      g[s][i] = is_tied(s) ? 2 * sum[i] : sum[i];
}

static void
check_run(const char *sched, int32_t R, int32_t p, int32_t v, int32_t m,
          bool tie, double max_norm)
{
  bt_pipeline_t *pl = NULL;
  bt_error_t err = {0};
  float w0[MAXS][D], g[MAXS][D];
  double norm2 = 0.0, scale = 1.0;

  toy_reset(R, p * v, m, tie);
  T.p = p;
  if (toy_pipeline(sched, p, v, max_norm, true, &pl, &err) != BT_OK) {
    test_fail(__FILE__, __LINE__, "%s R=%d p=%d: %s", sched, (int)R, (int)p,
              err.message);
    return;
  }
  for (int step = 0; step < 2; step++) {
    /* The first step is exact (small integers); after a clipped update the
     * weights are not, and the oracle's summation order differs. */
    double tol = step == 0 ? 0.0 : 1e-6;
    memcpy(w0, T.w[0], sizeof w0);
    toy_new_step();
    if (bt_pipeline_step(pl, &err) != BT_OK) {
      test_fail(__FILE__, __LINE__, "%s: step: %s", sched, err.message);
      break;
    }
    if (T.failure[0] != '\0')
      test_fail(__FILE__, __LINE__, "%s R=%d p=%d v=%d m=%d tie=%d: %s",
                sched, (int)R, (int)p, (int)v, (int)m, (int)tie, T.failure);
    oracle_grad(w0, g);
    norm2 = 0.0;
    for (int32_t s = 0; s < T.S; s++)
      for (int i = 0; i < D; i++)
        if (s != T.tie_b)
          norm2 += (double)g[s][i] * g[s][i];
    scale = max_norm > 0 && max_norm / (sqrt(norm2) + 1e-6) < 1.0
                ? max_norm / (sqrt(norm2) + 1e-6)
                : 1.0;
    EXPECT_INT_EQ(atomic_load(&T.updates), R * T.S);
    if (max_norm > 0) {
      EXPECT_TRUE(fabs(bt_pipeline_grad_norm(pl) - sqrt(norm2)) <=
                  tol * sqrt(norm2));
      EXPECT_TRUE(fabs(T.seen_scale - scale) <= tol * scale);
    } else {
      EXPECT_TRUE(isnan(bt_pipeline_grad_norm(pl)));
      EXPECT_TRUE(T.seen_scale == 1.0);
    }
    for (int32_t r = 0; r < R; r++)
      for (int32_t s = 0; s < T.S; s++) {
        if (atomic_load(&T.ready[r][s]) != 1)
          test_fail(__FILE__, __LINE__,
                    "%s R=%d p=%d v=%d m=%d: grads_ready(%d) of replica %d "
                    "ran %d times",
                    sched, (int)R, (int)p, (int)v, (int)m, (int)s, (int)r,
                    atomic_load(&T.ready[r][s]));
        for (int i = 0; i < D; i++) {
          float want = w0[s][i] - T.lr * (float)scale * g[s][i];
          if (fabsf(T.g[r][s][i] - g[s][i]) > tol * fabsf(g[s][i]) ||
              fabsf(T.w[r][s][i] - want) > tol * (1 + fabsf(want)) ||
              T.w[r][s][i] != T.w[0][s][i] ||
              (is_tied(s) && T.w[r][T.tie_a][i] != T.w[r][T.tie_b][i])) {
            test_fail(__FILE__, __LINE__,
                      "%s R=%d p=%d v=%d m=%d tie=%d step %d: replica %d "
                      "stage %d [%d]: g %g want %g, w %g want %g",
                      sched, (int)R, (int)p, (int)v, (int)m, (int)tie, step,
                      (int)r, (int)s, i, (double)T.g[r][s][i],
                      (double)g[s][i], (double)T.w[r][s][i], (double)want);
            r = R;
            s = T.S;
            break;
          }
        }
      }
  }
  bt_pipeline_destroy(pl);
}

TEST(epilogue_grid)
{
  static const char *scheds[] = {"gpipe", "1f1b", "zb-h1", "zb-h2"};

  for (size_t i = 0; i < sizeof scheds / sizeof *scheds; i++)
    for (int32_t R = 1; R <= 2; R++)
      for (int32_t p = 1; p <= 4; p *= 2)
        for (int32_t m = 1; m <= 4; m *= 2)
          for (int tie = 0; tie <= 1; tie++) {
            if (tie && p == 1)
              continue; /* one stage: nothing to tie */
            check_run(scheds[i], R, p, 1, m, tie, 0.0);
            check_run(scheds[i], R, p, 1, m, tie, 1.0);  /* clips */
            check_run(scheds[i], R, p, 1, m, tie, 1e9);  /* does not */
          }
  /* Interleaved: stages 0 and S-1 on the same device. */
  for (int32_t R = 1; R <= 2; R++) {
    check_run("interleaved", R, 2, 2, 4, true, 1.0);
    check_run("interleaved", R, 1, 2, 2, true, 0.0);
  }
}

TEST(epilogue_errors)
{
  bt_pipeline_t *pl = NULL;
  bt_error_t err = {0};
  bt_status rc;

  /* A failing all-reduce is named, with the device of its replica, and
   * no update runs; the next step runs normally. */
  toy_reset(2, 2, 2, false);
  ASSERT_TRUE(toy_pipeline("1f1b", 2, 1, 0.0, true, &pl, &err) == BT_OK);
  T.fail_reduce_stage = 1;
  toy_new_step();
  rc = bt_pipeline_step(pl, &err);
  EXPECT_INT_EQ(rc, BT_EIO);
  EXPECT_TRUE(strstr(err.message, "reduce 1 on cpu:") != NULL &&
              strstr(err.message, "injected all-reduce failure") != NULL);
  EXPECT_TRUE(atomic_load(&T.updates) < 4);
  T.fail_reduce_stage = -1;
  toy_new_step();
  EXPECT_INT_EQ(bt_pipeline_step(pl, &err), BT_OK);
  EXPECT_INT_EQ(atomic_load(&T.updates), 4);
  bt_pipeline_destroy(pl);

  /* A NaN gradient norm stops the step at "clip" before any update. */
  toy_reset(1, 2, 2, false);
  ASSERT_TRUE(toy_pipeline("gpipe", 2, 1, 1.0, true, &pl, &err) == BT_OK);
  T.nan_stage = 1;
  toy_new_step();
  rc = bt_pipeline_step(pl, &err);
  EXPECT_INT_EQ(rc, BT_ERANGE);
  EXPECT_TRUE(strstr(err.message, "clip on cpu:0: the global gradient norm "
                                  "is nan") != NULL);
  EXPECT_INT_EQ(atomic_load(&T.updates), 0);
  bt_pipeline_destroy(pl);

  /* Config errors say what is missing. */
  toy_reset(2, 2, 1, false);
  {
    bt_stage_desc_t desc[2];
    bt_pipeline_config_t pc = BT_PIPELINE_CONFIG_INIT;
    bt_pipeline_tie_t bad = {"w", 1, 1};
    for (int s = 0; s < 2; s++) {
      desc[s] = (bt_stage_desc_t)BT_STAGE_DESC_INIT;
      desc[s].forward = toy_forward;
      desc[s].backward = toy_backward;
      desc[s].output_bytes = D * sizeof(float);
      desc[s].grad_input_bytes = D * sizeof(float);
    }
    pc.stages = 2;
    pc.stage = desc;
    pc.devices = 2;
    pc.microbatches = 1;
    bt_schedule_t *sched = NULL;
    ASSERT_TRUE(bt_schedule_builtin("gpipe", &sched, &err) == BT_OK);
    pc.schedule = sched;
    pc.replicas = 2;
    EXPECT_INT_EQ(bt_pipeline_create(&pc, &pl, &err), BT_EINVAL);
    EXPECT_TRUE(strstr(err.message, "reduce_grads") != NULL);
    pc.replicas = 1;
    pc.max_grad_norm = 1.0;
    EXPECT_INT_EQ(bt_pipeline_create(&pc, &pl, &err), BT_EINVAL);
    EXPECT_TRUE(strstr(err.message, "grad_sqnorm") != NULL);
    pc.max_grad_norm = NAN;
    pc.grad_sqnorm = toy_sqnorm;
    EXPECT_INT_EQ(bt_pipeline_create(&pc, &pl, &err), BT_EINVAL);
    EXPECT_TRUE(strstr(err.message, "max_grad_norm") != NULL);
    pc.max_grad_norm = 0.0;
    pc.ties = &bad;
    pc.nties = 1;
    EXPECT_INT_EQ(bt_pipeline_create(&pc, &pl, &err), BT_EINVAL);
    EXPECT_TRUE(strstr(err.message, "tie_grads") != NULL);
    pc.tie_grads = toy_tie;
    EXPECT_INT_EQ(bt_pipeline_create(&pc, &pl, &err), BT_EINVAL);
    EXPECT_TRUE(strstr(err.message, "stage_a < stage_b") != NULL);
    bt_schedule_destroy(sched);
  }
}

/* A program built against the first header (no epilogue fields) still
 * gets its plain pipeline. */
TEST(epilogue_old_config_size)
{
  bt_stage_desc_t desc[2];
  bt_pipeline_config_t pc = BT_PIPELINE_CONFIG_INIT;
  bt_pipeline_t *pl = NULL;
  bt_error_t err = {0};

  toy_reset(1, 2, 2, false);
  for (int s = 0; s < 2; s++) {
    desc[s] = (bt_stage_desc_t)BT_STAGE_DESC_INIT;
    desc[s].forward = toy_forward;
    desc[s].backward = toy_backward;
    desc[s].output_bytes = s == 1 ? sizeof(float) : D * sizeof(float);
    desc[s].grad_input_bytes = s == 0 ? 0 : D * sizeof(float);
  }
  pc.size = offsetof(bt_pipeline_config_t, trace) + sizeof(int32_t);
  pc.stages = 2;
  pc.stage = desc;
  pc.devices = 2;
  pc.microbatches = 2;
  bt_schedule_t *sched = NULL;
  ASSERT_TRUE(bt_schedule_builtin("1f1b", &sched, &err) == BT_OK);
  pc.schedule = sched;
  pc.replicas = 7; /* beyond the old size: must be ignored */
  ASSERT_TRUE(bt_pipeline_create(&pc, &pl, &err) == BT_OK);
  toy_new_step();
  EXPECT_INT_EQ(bt_pipeline_step(pl, &err), BT_OK);
  EXPECT_INT_EQ(atomic_load(&T.bw[0][0]), 2);
  EXPECT_TRUE(bt_pipeline_replica_output(pl, 1, 0, 0, NULL) == NULL);
  bt_pipeline_destroy(pl);
  bt_schedule_destroy(sched);
}

__attribute__((constructor)) static void
toy_init(void)
{
  pthread_mutex_init(&T.mu, NULL);
}
