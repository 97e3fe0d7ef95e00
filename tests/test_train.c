/* Pipelined training of resmlp (model/train.c) against the single-device
 * reference (bt__resmlp_reference_step): every built-in schedule and a CSV
 * plan, p = 1..4, m = 1, 2, 3, 4, 6, 8 (N = 24), each checkpoint mode, with and
 * without the long skip (cut across stages, or inside the only stage), explicit
 * balances; loss and every gradient within 1e-5 relative.  Checkpointing
 * is bitwise the same as not; two runs, and a run with perturbed timing,
 * are bitwise the same; bad configs fail with BT_EINVAL and a message.
 *
 * Argument 0: the largest microbatch count of the grid (default 8; the
 * sanitizer builds pass 4). */
#define _DEFAULT_SOURCE /* mkstemps */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "baton/model.h"
#include "baton/plan.h"
#include "backend.h"
#include "baton/schedule.h"
#include "resmlp.h"
#include "test.h"
#include "test_util.h"
#include "train.h"

#define D 6
#define H 8
#define C 3
#define L 6 /* 8 layers: room for p = 4 with v = 2 */
#define N 24
#define TOL 1e-5

static test_rng_t rng;

static float xs[N * D];
static int32_t ys[N];

static void
make_batch(void)
{
  rng.state = 42;
  for (size_t i = 0; i < N * D; i++)
    xs[i] = test_rng_uniform_f32(&rng, -2.0f, 2.0f);
  for (size_t r = 0; r < N; r++)
    ys[r] = (int32_t)(test_rng_next(&rng) % C);
}

/* A model with biases and LayerNorm parameters moved off 0 and 1, the same
 * for every call with the same shape. */
static struct bt__resmlp *
make_model(size_t nblocks, bool long_skip)
{
  struct bt__resmlp_config c = {D, H, C, nblocks, long_skip};
  struct bt__resmlp *m = NULL;
  bt_error_t err;

  if (bt__resmlp_create(&c, 7, &m, &err) != BT_OK) {
    fprintf(stderr, "test_train: %s\n", err.message);
    exit(1);
  }
  rng.state = 99;
  for (size_t t = 0; t < m->ntensors; t++) {
    const struct bt__params_tensor *tt = &m->tensors[t];
    size_t len = strlen(tt->name);
    if (len >= 2 && strcmp(tt->name + len - 2, ".w") == 0)
      continue;
    for (size_t j = 0; j < tt->count; j++)
      m->params[tt->offset + j] += test_rng_uniform_f32(&rng, -0.3f, 0.3f);
  }
  return m;
}

/* Every tensor's max |got - ref| over max |ref| within tol; reports the
 * first that is not. */
static bool
grads_close(const struct bt__resmlp *ref, const struct bt__resmlp *got,
            const char *what)
{
  for (size_t t = 0; t < ref->ntensors; t++) {
    const struct bt__params_tensor *tt = &ref->tensors[t];
    double mr;
    double md = test_max_abs_diff(got->grads + tt->offset,
                                  ref->grads + tt->offset, tt->count, &mr);
    if (!(md <= TOL * mr) && !(mr == 0 && md == 0)) {
      test_fail(__FILE__, __LINE__,
                "%s: gradient %s differs: max|d| %.3g, "
                "max|ref| %.3g",
                what, tt->name, md, mr);
      return false;
    }
  }
  return true;
}

static const char *ckpt_name[] = {"never", "except_last", "always"};

/* A schedule by name, or "csv": a 1f1b plan for (p, m) written to a temp
 * CSV file and opened with bt_schedule_open.  BT_EUNSUPPORTED when the
 * policy refuses (p, m). */
static bt_status
open_schedule(const char *name, int32_t p, int32_t m, bt_schedule_t **out)
{
  bt_schedule_params_t sp = BT_SCHEDULE_PARAMS_INIT;
  bt_schedule_t *base = NULL;
  bt_plan_t *plan = NULL;
  bt_error_t err;
  char path[] = "/tmp/test_train_XXXXXX.csv";
  bt_status rc;
  int fd;

  if (strcmp(name, "csv") != 0)
    return bt_schedule_builtin(name, out, &err);
  rc = bt_schedule_builtin("1f1b", &base, &err);
  if (rc != BT_OK)
    return rc;
  sp.devices = p;
  sp.virtual_stages = 1;
  sp.stages = p;
  sp.microbatches = m;
  rc = bt_schedule_make_plan(base, &sp, &plan, &err);
  bt_schedule_destroy(base);
  if (rc != BT_OK)
    return rc;
  fd = mkstemps(path, 4);
  if (fd < 0) {
    bt_plan_destroy(plan);
    return BT_EIO;
  }
  close(fd);
  rc = bt_plan_save_csv(plan, path, &err);
  bt_plan_destroy(plan);
  if (rc == BT_OK)
    rc = bt_schedule_open(path, out, &err);
  if (rc != BT_OK)
    fprintf(stderr, "csv schedule: %s\n", err.message);
  unlink(path);
  return rc;
}

struct run {
  const char *sched;
  int32_t p, v, m, ckpt;
  const int32_t *balance;
  int32_t nbalance;
  uint64_t perturb;
};

/* One pipelined step of r on model; BT_EUNSUPPORTED when the schedule
 * refuses it. */
static bt_status
run_step(struct bt__resmlp *model, const struct run *r, float *loss,
         bt_error_t *err)
{
  struct bt__train_config cfg = BT__TRAIN_CONFIG_INIT;
  struct bt__train *t = NULL;
  bt_schedule_t *sched = NULL;
  bt_status rc;

  rc = open_schedule(r->sched, r->p, r->m, &sched);
  if (rc != BT_OK)
    return rc;
  cfg.model = model;
  cfg.batch = N;
  cfg.microbatches = r->m;
  cfg.devices = r->p;
  cfg.virtual_stages = r->v;
  cfg.balance = r->balance;
  cfg.nbalance = r->nbalance;
  cfg.schedule = sched;
  cfg.checkpoint = r->ckpt;
  cfg.threads = r->p;
  cfg.perturb = r->perturb;
  rc = bt__train_create(&cfg, &t, err);
  bt_schedule_destroy(sched);
  if (rc != BT_OK)
    return rc;
  rc = bt__train_step(t, xs, ys, loss, err);
  bt__train_destroy(t);
  return rc;
}

/* The reference's loss and gradients for m microbatches, into ref. */
static void
reference(struct bt__resmlp *ref, int32_t m, float *loss)
{
  bt_error_t err;
  bt_status rc =
      bt__resmlp_reference_step(ref, xs, ys, N, (size_t)m, loss, &err);
  if (rc != BT_OK) {
    fprintf(stderr, "test_train: reference: %s\n", err.message);
    exit(1);
  }
}

/* Runs r and checks it against the reference.  Returns false when the
 * schedule refused r (BT_EUNSUPPORTED). */
static bool
check_run(struct bt__resmlp *model, struct bt__resmlp *ref, const struct run *r,
          float ref_loss, const char *tag)
{
  char what[160];
  float loss = NAN;
  bt_error_t err;
  bt_status rc;

  memset(&err, 0, sizeof err);
  snprintf(what, sizeof what, "%s %s p=%d v=%d m=%d ckpt=%s long_skip=%d", tag,
           r->sched, (int)r->p, (int)r->v, (int)r->m, ckpt_name[r->ckpt],
           (int)model->cfg.long_skip);
  rc = run_step(model, r, &loss, &err);
  if (rc == BT_EUNSUPPORTED)
    return false;
  if (rc != BT_OK) {
    test_fail(__FILE__, __LINE__, "%s: %s: %s", what, bt_status_name(rc),
              err.message);
    return true;
  }
  if (!(fabs((double)loss - (double)ref_loss) <= TOL * fabs((double)ref_loss)))
    test_fail(__FILE__, __LINE__, "%s: loss %.9g, reference %.9g", what,
              (double)loss, (double)ref_loss);
  grads_close(ref, model, what);
  return true;
}

static const char *grid_sched[] = {"gpipe", "1f1b",  "interleaved",
                                   "zb-h1", "zb-h2", "csv"};

TEST(grid_matches_reference)
{
  long max_m = test_arg(0, 8);
  int ran = 0, refused = 0;

  make_batch();
  for (int ls = 0; ls < 2; ls++) {
    struct bt__resmlp *model = make_model(L, ls), *ref = make_model(L, ls);
    float *never = malloc(model->nparams * sizeof(float));
    ASSERT_TRUE(never != NULL);
    static const int32_t ms[] = {1, 2, 3, 4, 6, 8};
    for (size_t mi = 0; mi < sizeof ms / sizeof *ms && ms[mi] <= max_m; mi++) {
      int32_t m = ms[mi];
      float ref_loss;
      reference(ref, m, &ref_loss);
      for (size_t si = 0; si < sizeof grid_sched / sizeof *grid_sched; si++)
        for (int32_t p = 1; p <= 4; p++)
          for (int32_t ck = 0; ck < 3; ck++) {
            struct run r = {grid_sched[si], p, 1, m, ck, NULL, 0, 0};
            if (strcmp(r.sched, "interleaved") == 0)
              r.v = 2;
            if (!check_run(model, ref, &r, ref_loss, "grid")) {
              refused++;
              continue;
            }
            ran++;
            /* Checkpointing changes nothing, bitwise. */
            if (ck == BT__CKPT_NEVER)
              memcpy(never, model->grads, model->nparams * sizeof(float));
            else if (memcmp(never, model->grads,
                            model->nparams * sizeof(float)) != 0)
              test_fail(__FILE__, __LINE__,
                        "%s p=%d m=%d long_skip=%d: checkpoint %s changed "
                        "the gradients",
                        r.sched, (int)p, (int)m, ls, ckpt_name[ck]);
          }
    }
    free(never);
    bt__resmlp_destroy(model);
    bt__resmlp_destroy(ref);
  }
  printf("grid: %d runs checked, %d refused by their schedule\n", ran, refused);
  EXPECT_TRUE(ran >= (max_m >= 8 ? 600 : 200));
}

/* Explicit balances, among them ones that put layer 0 and the head far
 * apart or next to each other, and the long skip inside one stage. */
TEST(balances)
{
  static const int32_t b2a[] = {1, 7}, b2b[] = {7, 1}, b2c[] = {2, 6},
                       b3a[] = {1, 1, 6}, b3b[] = {6, 1, 1},
                       b4a[] = {1, 2, 4, 1}, b4v[] = {2, 1, 1, 4};
  static const struct {
    const char *sched;
    int32_t p, v;
    const int32_t *bal;
  } cases[] = {
      {"1f1b", 2, 1, b2a},        {"1f1b", 2, 1, b2b},  {"zb-h1", 2, 1, b2c},
      {"gpipe", 3, 1, b3a},       {"zb-h2", 3, 1, b3b}, {"1f1b", 4, 1, b4a},
      {"interleaved", 2, 2, b4v},
  };

  make_batch();
  for (int ls = 0; ls < 2; ls++) {
    struct bt__resmlp *model = make_model(L, ls), *ref = make_model(L, ls);
    float ref_loss;
    reference(ref, 4, &ref_loss);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
      for (int32_t ck = 0; ck < 3; ck++) {
        struct run r = {cases[i].sched,
                        cases[i].p,
                        cases[i].v,
                        4,
                        ck,
                        cases[i].bal,
                        cases[i].p * cases[i].v,
                        0};
        EXPECT_TRUE(check_run(model, ref, &r, ref_loss, "balance"));
      }
    bt__resmlp_destroy(model);
    bt__resmlp_destroy(ref);
  }
}

/* L = 0: two layers, in and head; with the long skip, h0 is both the
 * stage input of the head and the skip. */
TEST(no_blocks)
{
  make_batch();
  for (int ls = 0; ls < 2; ls++) {
    struct bt__resmlp *model = make_model(0, ls), *ref = make_model(0, ls);
    float ref_loss;
    reference(ref, 2, &ref_loss);
    for (int32_t p = 1; p <= 2; p++)
      for (int32_t ck = 0; ck < 3; ck++) {
        struct run r = {"1f1b", p, 1, 2, ck, NULL, 0, 0};
        EXPECT_TRUE(check_run(model, ref, &r, ref_loss, "L=0"));
        r.sched = "zb-h1";
        EXPECT_TRUE(check_run(model, ref, &r, ref_loss, "L=0"));
      }
    bt__resmlp_destroy(model);
    bt__resmlp_destroy(ref);
  }
}

/* Same config twice, and with random sleeps in every callback: bitwise
 * the same gradients and loss. */
TEST(deterministic_under_perturbation)
{
  static const struct run runs[] = {
      {"1f1b", 4, 1, 8, BT__CKPT_NEVER, NULL, 0, 0},
      {"zb-h2", 2, 1, 4, BT__CKPT_EXCEPT_LAST, NULL, 0, 0},
      {"interleaved", 2, 2, 4, BT__CKPT_ALWAYS, NULL, 0, 0},
      {"gpipe", 3, 1, 8, BT__CKPT_EXCEPT_LAST, NULL, 0, 0},
  };

  make_batch();
  for (int ls = 0; ls < 2; ls++) {
    struct bt__resmlp *model = make_model(L, ls);
    float *first = malloc(model->nparams * sizeof(float));
    ASSERT_TRUE(first != NULL);
    for (size_t i = 0; i < sizeof runs / sizeof *runs; i++) {
      struct run r = runs[i];
      float loss0, loss;
      bt_error_t err;
      ASSERT_INT_EQ(run_step(model, &r, &loss0, &err), BT_OK);
      memcpy(first, model->grads, model->nparams * sizeof(float));
      for (int rep = 0; rep < 3; rep++) {
        r.perturb = (uint64_t)rep * 0x1234567u; /* first rep unperturbed */
        ASSERT_INT_EQ(run_step(model, &r, &loss, &err), BT_OK);
        EXPECT_TRUE(memcmp(&loss, &loss0, sizeof loss) == 0);
        if (memcmp(first, model->grads, model->nparams * sizeof(float)) != 0)
          test_fail(__FILE__, __LINE__,
                    "%s p=%d m=%d long_skip=%d rep %d (perturb %llu): "
                    "gradients differ bitwise",
                    r.sched, (int)r.p, (int)r.m, ls, rep,
                    (unsigned long long)r.perturb);
      }
    }
    free(first);
    bt__resmlp_destroy(model);
  }
}

/* One trainer, several steps: each step's gradients are the step's own
 * (zeroed first), equal to the reference's. */
TEST(repeated_steps)
{
  struct bt__train_config cfg = BT__TRAIN_CONFIG_INIT;
  struct bt__resmlp *model = make_model(L, true), *ref = make_model(L, true);
  struct bt__train *t = NULL;
  bt_schedule_t *sched = NULL;
  bt_error_t err;
  float loss, ref_loss;

  make_batch();
  ASSERT_INT_EQ(bt_schedule_builtin("1f1b", &sched, &err), BT_OK);
  cfg.model = model;
  cfg.batch = N;
  cfg.microbatches = 4;
  cfg.devices = 2;
  cfg.schedule = sched;
  cfg.checkpoint = BT__CKPT_EXCEPT_LAST;
  cfg.threads = 2;
  EXPECT_STATUS(bt__train_create(&cfg, &t, &err), BT_OK, &err);
  bt_schedule_destroy(sched);
  ASSERT_TRUE(t != NULL);
  EXPECT_INT_EQ(bt__train_stages(t), 2);
  EXPECT_INT_EQ(bt__train_stage_of_layer(t, 0), 0);
  EXPECT_INT_EQ(bt__train_stage_of_layer(t, L + 1), 1);
  for (int step = 0; step < 3; step++) {
    EXPECT_STATUS(bt__train_step(t, xs, ys, &loss, &err), BT_OK, &err);
    reference(ref, 4, &ref_loss);
    EXPECT_NEAR(loss, ref_loss, TOL);
    grads_close(ref, model, "repeated");
    /* Move both models the same way. */
    bt__resmlp_sgd(model, 0.1f);
    bt__resmlp_sgd(ref, 0.1f);
  }
  bt__train_destroy(t);
  bt__resmlp_destroy(model);
  bt__resmlp_destroy(ref);
}

/* Scratch bytes of layers [first, last] for R rows, as the trainer
 * rounds them. */
static size_t
stage_bytes(const struct bt__resmlp *m, size_t first, size_t last, size_t R)
{
  size_t sum = 0;
  for (size_t l = first; l <= last; l++)
    sum += (bt__resmlp_layer_scratch_bytes(m, l, R) + 63) / 64 * 64;
  return sum;
}

/* Held activation bytes: in flight count times the stage's scratch, and
 * checkpointing lowers the peak to one microbatch; nothing is held after
 * a step. */
TEST(held_activation_bytes)
{
  static const struct {
    const char *sched;
    int32_t p, ckpt;
    size_t want0; /* device 0's peak, in microbatches of stage 0 */
  } cases[] = {
      /* gpipe runs its backwards in ascending order, so except_last's
       * recompute of microbatch 0 overlaps the kept microbatch 3. */
      {"gpipe", 1, BT__CKPT_NEVER, 4},
      {"gpipe", 1, BT__CKPT_EXCEPT_LAST, 2},
      {"gpipe", 1, BT__CKPT_ALWAYS, 1},
      {"1f1b", 2, BT__CKPT_NEVER, 2},
      {"1f1b", 2, BT__CKPT_ALWAYS, 1},
      {"gpipe", 2, BT__CKPT_NEVER, 4},
      /* Split backwards: held from the recompute until the deferred W. */
      {"zb-h1", 2, BT__CKPT_ALWAYS, 3},
  };
  struct bt__resmlp *model = make_model(L, true);

  make_batch();
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    struct bt__train_config cfg = BT__TRAIN_CONFIG_INIT;
    struct bt__train *t = NULL;
    bt_schedule_t *sched = NULL;
    bt_error_t err;
    float loss;
    size_t last0 = (L + 2) / (size_t)cases[i].p - 1;
    size_t b0 = stage_bytes(model, 0, last0, N / 4);

    ASSERT_INT_EQ(bt_schedule_builtin(cases[i].sched, &sched, &err), BT_OK);
    cfg.model = model;
    cfg.batch = N;
    cfg.microbatches = 4;
    cfg.devices = cases[i].p;
    cfg.schedule = sched;
    cfg.checkpoint = cases[i].ckpt;
    cfg.threads = cases[i].p;
    EXPECT_STATUS(bt__train_create(&cfg, &t, &err), BT_OK, &err);
    bt_schedule_destroy(sched);
    ASSERT_TRUE(t != NULL);
    EXPECT_STATUS(bt__train_step(t, xs, ys, &loss, &err), BT_OK, &err);
    if (bt__train_peak_held_bytes(t, 0) != cases[i].want0 * b0)
      test_fail(__FILE__, __LINE__,
                "%s p=%d ckpt=%s: device 0 peak %zu "
                "bytes, wanted %zu x %zu",
                cases[i].sched, (int)cases[i].p, ckpt_name[cases[i].ckpt],
                bt__train_peak_held_bytes(t, 0), cases[i].want0, b0);
    /* What is allocated is what the accounting counts: the pool holds
     * exactly the peak number of microbatches, not m. */
    EXPECT_INT_EQ(bt__train_stage_slots(t, 0), cases[i].want0);
    for (int32_t d = 0; d < cases[i].p; d++) {
      EXPECT_INT_EQ(bt__train_held_bytes(t, d), 0);
      EXPECT_TRUE(bt__train_peak_held_bytes(t, d) > 0);
    }
    bt__train_destroy(t);
  }
  bt__resmlp_destroy(model);
}

/* A trainer on the host test backend (backend.h: its own "device" copies
 * of parameters, gradients, activations and the optimizer's state, reached
 * only through the backend's kernel table and copies) against the plain
 * CPU trainer: the same losses and, once pulled, the same gradients and
 * parameters, bitwise, over two steps with the optimizer between them on
 * the devices.  The model itself stays untouched until the pull. */
static struct bt__train *
make_trainer(struct bt__resmlp *model, const struct run *r,
             struct bt_backend *be, int32_t replicas, int32_t graph)
{
  struct bt__train_config cfg = BT__TRAIN_CONFIG_INIT;
  struct bt__train *t = NULL;
  bt_schedule_t *sched = NULL;
  bt_error_t err;
  bt_status rc;

  if (open_schedule(r->sched, r->p, r->m, &sched) != BT_OK)
    return NULL;
  cfg.model = model;
  cfg.batch = N;
  cfg.microbatches = r->m;
  cfg.devices = r->p;
  cfg.virtual_stages = r->v;
  cfg.schedule = sched;
  cfg.checkpoint = r->ckpt;
  cfg.threads = r->p * replicas;
  cfg.backend = be;
  cfg.replicas = replicas;
  cfg.graph = graph;
  rc = bt__train_create(&cfg, &t, &err);
  bt_schedule_destroy(sched);
  if (rc != BT_OK && rc != BT_EUNSUPPORTED)
    test_fail(__FILE__, __LINE__, "%s p=%d: %s", r->sched, (int)r->p,
              err.message);
  return rc == BT_OK ? t : NULL;
}

static bool
all_zero(const float *v, size_t n)
{
  for (size_t i = 0; i < n; i++)
    if (v[i] != 0.0f)
      return false;
  return true;
}

TEST(host_backend_matches_cpu)
{
  static const char *sched[] = {"gpipe", "1f1b", "interleaved", "zb-h1"};
  int ran = 0;

  make_batch();
  for (int ls = 0; ls < 2; ls++)
    for (size_t si = 0; si < sizeof sched / sizeof *sched; si++)
      for (int32_t p = 1; p <= 4; p *= 2)
        for (int32_t ck = 0; ck < 3; ck++)
          for (int adamw = 0; adamw < 2; adamw++)
          for (int32_t nr = 1; nr <= 2; nr++) {
            struct run r = {sched[si], p, 1, nr == 1 ? 4 : 2, ck, NULL, 0, 0};
            struct bt__resmlp *a = make_model(L, ls), *b = make_model(L, ls);
            struct bt__resmlp *init = make_model(L, ls);
            struct bt_backend *be = NULL;
            struct bt__train *ta, *tb;
            struct bt__params_adamw_state st = {0};
            /* bt__resmlp_sgd has no weight decay. */
            struct bt__train_optim o = {adamw, 0.05f, adamw ? 0.01f : 0.0f,
                                        0.9f, 0.999f, 1e-8f, 1};
            bt_error_t err;
            char what[120];
            float la = NAN, lb = NAN;

            if (strcmp(r.sched, "interleaved") == 0)
              r.v = 2;
            snprintf(what, sizeof what,
                     "%s p=%d ckpt=%s long_skip=%d %s replicas=%d", r.sched,
                     (int)p, ckpt_name[ck], ls, adamw ? "adamw" : "sgd",
                     (int)nr);
            ASSERT_INT_EQ(bt__backend_host_create(p * nr, &be, &err), BT_OK);
            ta = make_trainer(a, &r, NULL, nr, 0);
            tb = make_trainer(b, &r, be, nr, 0);
            if (ta != NULL && tb != NULL) {
              ran++;
              for (int step = 1; step <= 2; step++) {
                EXPECT_INT_EQ(bt__train_step(ta, xs, ys, &la, &err), BT_OK);
                EXPECT_INT_EQ(bt__train_step(tb, xs, ys, &lb, &err), BT_OK);
                if (memcmp(&la, &lb, sizeof la) != 0)
                  test_fail(__FILE__, __LINE__,
                            "%s step %d: loss %.9g on the backend, %.9g on "
                            "the CPU",
                            what, step, (double)lb, (double)la);
                /* The model is the host's: untouched until the pull. */
                if (step == 1 &&
                    (!all_zero(b->grads, b->nparams) ||
                     memcmp(b->params, init->params,
                            b->nparams * sizeof(float)) != 0))
                  test_fail(__FILE__, __LINE__,
                            "%s: the step wrote the host model", what);
                EXPECT_INT_EQ(bt__train_pull(tb, &err), BT_OK);
                if (memcmp(a->grads, b->grads, a->nparams * sizeof(float)) !=
                        0 ||
                    memcmp(a->params, b->params,
                           a->nparams * sizeof(float)) != 0)
                  test_fail(__FILE__, __LINE__,
                            "%s step %d: parameters or gradients differ",
                            what, step);
                /* The optimizer: on the host for a, on the devices for b. */
                o.t = step;
                if (!adamw)
                  EXPECT_INT_EQ(bt__resmlp_sgd(a, o.lr), BT_OK);
                else {
                  if (st.m == NULL)
                    EXPECT_INT_EQ(bt__resmlp_adamw_init(a, &st), BT_OK);
                  EXPECT_INT_EQ(bt__resmlp_adamw(a, o.lr, o.b1, o.b2, o.eps, o.wd,
                                             o.t, &st),
                            BT_OK);
                }
                EXPECT_INT_EQ(bt__train_update(tb, &o, &err), BT_OK);
              }
              EXPECT_INT_EQ(bt__train_pull(tb, &err), BT_OK);
              if (memcmp(a->params, b->params, a->nparams * sizeof(float)) !=
                  0)
                test_fail(__FILE__, __LINE__,
                          "%s: parameters differ after the second update",
                          what);
            }
            bt__train_destroy(ta);
            bt__train_destroy(tb);
            bt__resmlp_adamw_deinit(&st);
            bt_backend_destroy(be);
            bt__resmlp_destroy(a);
            bt__resmlp_destroy(b);
            bt__resmlp_destroy(init);
          }
  printf("host backend: %d configurations equal the CPU trainer\n", ran);
  EXPECT_TRUE(ran >= 200);
}

/* Whole-step graphs on the host backend (it records the captured step's
 * kernels and replays them): step 1 eager, step 2 captured and replayed,
 * steps 3.. replayed, each on a different batch with SGD between steps,
 * equal the CPU trainer bitwise.  Work left out of the capture (the
 * gradients' zeroing, say) would be missing from the replays, and inputs
 * captured by value would repeat the old batch: both would show. */
TEST(host_backend_graphs)
{
  static const char *sched[] = {"gpipe", "1f1b", "zb-h1", "interleaved"};
  static float xb[N * D];
  static int32_t yb[N];
  int ran = 0;

  make_batch();
  for (size_t si = 0; si < sizeof sched / sizeof *sched; si++)
    for (int32_t p = 1; p <= 2; p++)
      for (int32_t ck = 0; ck < 3; ck += 2)
        for (int32_t nr = 1; nr <= 2; nr++) {
          struct run r = {sched[si], p, 1, 2, ck, NULL, 0, 0};
          struct bt__resmlp *a = make_model(L, 1), *b = make_model(L, 1);
          struct bt_backend *be = NULL;
          struct bt__train *ta, *tb;
          struct bt__train_optim o = {0, 0.05f, 0.0f, 0.9f, 0.999f, 1e-8f, 1};
          bt_error_t err;
          float la, lb;
          if (strcmp(r.sched, "interleaved") == 0)
            r.v = 2;
          ASSERT_INT_EQ(bt__backend_host_create(p * nr, &be, &err), BT_OK);
          ta = make_trainer(a, &r, NULL, nr, 0);
          tb = make_trainer(b, &r, be, nr, 1);
          if (ta == NULL || tb == NULL) {
            bt__train_destroy(ta);
            bt__train_destroy(tb);
            bt_backend_destroy(be);
            bt__resmlp_destroy(a);
            bt__resmlp_destroy(b);
            continue;
          }
          ran++;
          for (int step = 1; step <= 5; step++) {
            for (size_t i = 0; i < N * D; i++)
              xb[i] = xs[(i + (size_t)step * D) % (N * D)];
            for (size_t i = 0; i < N; i++)
              yb[i] = ys[(i + (size_t)step) % N];
            EXPECT_STATUS(bt__train_step(ta, xb, yb, &la, &err), BT_OK, &err);
            EXPECT_STATUS(bt__train_step(tb, xb, yb, &lb, &err), BT_OK, &err);
            EXPECT_STATUS(bt__train_pull(tb, &err), BT_OK, &err);
            if (memcmp(&la, &lb, sizeof la) != 0 ||
                memcmp(a->grads, b->grads, a->nparams * sizeof(float)) != 0)
              test_fail(__FILE__, __LINE__,
                        "%s p=%d ckpt=%s replicas=%d, graphs, step %d: loss "
                        "%.9g against %.9g, or the gradients differ",
                        r.sched, (int)p, ckpt_name[ck], (int)nr, step,
                        (double)lb, (double)la);
            EXPECT_STATUS(bt__resmlp_sgd(a, o.lr), BT_OK, NULL);
            EXPECT_STATUS(bt__train_update(tb, &o, &err), BT_OK, &err);
          }
          bt__train_destroy(ta);
          bt__train_destroy(tb);
          bt_backend_destroy(be);
          bt__resmlp_destroy(a);
          bt__resmlp_destroy(b);
        }
  printf("graphs: %d configurations replay the CPU trainer's steps\n", ran);
  EXPECT_TRUE(ran >= 28);
}

/* Data-parallel replicas: R replicas of m microbatches give the
 * reference's loss for R m microbatches bitwise (the shares add in the
 * same order) and its gradients within TOL (the replicas' sums add in
 * another order); every replica's gradients are the reduced ones. */
TEST(replicas_match_reference)
{
  static const char *sched[] = {"gpipe", "1f1b", "zb-h1", "interleaved"};
  int ran = 0;

  make_batch();
  for (int ls = 0; ls < 2; ls++)
    for (int32_t nr = 2; nr <= 3; nr++) {
      struct bt__resmlp *ref = make_model(L, ls);
      float ref_loss;
      int32_t m = nr == 2 ? 4 : 2;
      reference(ref, nr * m, &ref_loss);
      for (size_t si = 0; si < sizeof sched / sizeof *sched; si++)
        for (int32_t p = 1; p <= 4; p *= 2)
          for (int32_t ck = 0; ck < 3; ck++) {
            struct run r = {sched[si], p, 1, m, ck, NULL, 0, 0};
            struct bt__resmlp *a = make_model(L, ls);
            struct bt__train *t;
            bt_error_t err;
            char what[120];
            float loss = NAN;
            if (strcmp(r.sched, "interleaved") == 0)
              r.v = 2;
            snprintf(what, sizeof what, "%s p=%d m=%d ckpt=%s long_skip=%d "
                     "replicas=%d", r.sched, (int)p, (int)m, ckpt_name[ck],
                     ls, (int)nr);
            t = make_trainer(a, &r, NULL, nr, 0);
            if (t != NULL) {
              ran++;
              EXPECT_STATUS(bt__train_step(t, xs, ys, &loss, &err), BT_OK,
                            &err);
              if (memcmp(&loss, &ref_loss, sizeof loss) != 0)
                test_fail(__FILE__, __LINE__, "%s: loss %.9g, reference %.9g",
                          what, (double)loss, (double)ref_loss);
              grads_close(ref, a, what);
              /* Every device's held bytes are back to 0. */
              for (int32_t d = 0; d < p * nr; d++)
                EXPECT_INT_EQ(bt__train_held_bytes(t, d), 0);
              EXPECT_TRUE(bt__train_peak_held_bytes(t, p * nr - 1) > 0);
            }
            bt__train_destroy(t);
            bt__resmlp_destroy(a);
          }
      bt__resmlp_destroy(ref);
    }
  printf("replicas: %d configurations match the reference\n", ran);
  EXPECT_TRUE(ran >= 80);
  /* Refusals: a batch the replicas and microbatches do not divide. */
  {
    struct bt__train_config cfg = BT__TRAIN_CONFIG_INIT;
    struct bt__resmlp *a = make_model(L, 0);
    struct bt__train *t = NULL;
    bt_schedule_t *s = NULL;
    bt_error_t err;
    ASSERT_INT_EQ(bt_schedule_builtin("1f1b", &s, &err), BT_OK);
    cfg.model = a;
    cfg.batch = N;
    cfg.microbatches = 4;
    cfg.devices = 2;
    cfg.schedule = s;
    cfg.replicas = 5;
    EXPECT_STATUS(bt__train_create(&cfg, &t, &err), BT_EINVAL, &err);
    EXPECT_STR_CONTAINS(err.message, "5 replicas");
    bt_schedule_destroy(s);
    bt__resmlp_destroy(a);
  }
}

TEST(bad_configs)
{
  static const int32_t short_sum[] = {3, 4}, zero[] = {0, 8},
                       three[] = {2, 3, 3};
  struct bt__train_config cfg = BT__TRAIN_CONFIG_INIT;
  struct bt__resmlp *model = make_model(L, true);
  struct bt__train *t = (struct bt__train *)&cfg;
  bt_schedule_t *sched = NULL;
  bt_error_t err;
  int32_t y_bad[N] = {0};
  float loss;

  ASSERT_INT_EQ(bt_schedule_builtin("gpipe", &sched, &err), BT_OK);
  cfg.model = model;
  cfg.batch = N;
  cfg.microbatches = 5;
  cfg.devices = 2;
  cfg.schedule = sched;
  EXPECT_STATUS(bt__train_create(&cfg, &t, &err), BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "do not split evenly into 5");
  EXPECT_TRUE(t == NULL);

  cfg.microbatches = 2;
  cfg.balance = short_sum;
  cfg.nbalance = 2;
  EXPECT_STATUS(bt__train_create(&cfg, &t, &err), BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "sum to 7 layers, but the model has 8");

  cfg.balance = zero;
  EXPECT_STATUS(bt__train_create(&cfg, &t, &err), BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "balance[0] = 0");

  cfg.balance = three;
  cfg.nbalance = 3;
  EXPECT_STATUS(bt__train_create(&cfg, &t, &err), BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "3 entries but there are 2 stages");

  cfg.balance = NULL;
  cfg.nbalance = 0;
  cfg.devices = 3;
  cfg.virtual_stages = 3;
  EXPECT_STATUS(bt__train_create(&cfg, &t, &err), BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "only 8 layers");

  cfg.devices = 2;
  cfg.virtual_stages = 1;
  cfg.checkpoint = 7;
  EXPECT_STATUS(bt__train_create(&cfg, &t, &err), BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "checkpoint mode 7");

  cfg.checkpoint = BT__CKPT_NEVER;
  EXPECT_STATUS(bt__train_create(&cfg, &t, &err), BT_OK, &err);
  ASSERT_TRUE(t != NULL);
  y_bad[5] = C;
  make_batch();
  EXPECT_STATUS(bt__train_step(t, xs, y_bad, &loss, &err), BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "y[5] = 3");
  EXPECT_STATUS(bt__train_step(t, xs, ys, &loss, &err), BT_OK, &err);
  bt__train_destroy(t);
  bt__train_destroy(NULL);
  bt_schedule_destroy(sched);
  bt__resmlp_destroy(model);
}
