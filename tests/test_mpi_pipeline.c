/* The embedding API across processes (pipeline.h's comm, comm.h), run by
 * CTest under `mpirun -np 2` and `-np 4` (and alone as a job of one).
 *
 * Each rank runs every configuration twice: spread over the job's ranks,
 * and on its own as one process (comm NULL) over the same devices.  A toy
 * model with exact arithmetic (small integers) makes the two comparable
 * bitwise: stage s of replica r adds its weights w[r][s] to its input; a
 * skip carries stage 0's output to the last stage, which adds it; the last
 * stage's loss is 0.5 |out|^2; backwards pass the gradient through and
 * accumulate it into g[r][s].  The epilogue is baton's own (grad_tensor and
 * tie_tensor): a tie between the first and the last stage, the all-reduce
 * over replicas, clipping, and an SGD update in the graph.  After two steps
 * the weights and gradients of every stage this rank runs, and the loss
 * where this rank has it, must equal the one-process run's bits.
 *
 * A device backend across processes: the resmlp trainer on the host test
 * backend (its own "device" memory) with the pipeline's transport between
 * ranks (chained send and receive tasks, one order per pair of devices)
 * equals the CPU trainer in one process, bitwise, over two steps with SGD
 * on the devices.
 *
 * Then faults: a stage that fails on one rank ends the step on every rank,
 * the failing one naming its task and the others naming the failed rank,
 * and the job refuses further steps. */
#define _DEFAULT_SOURCE /* mkstemps */
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "baton/baton.h"
#include "baton/comm.h"
#include "resmlp.h"
#include "test.h"
#include "train.h"

#define D 4
#define MAXR 2
#define MAXS 8
#define MAXM 4

static bt_comm_t *comm;

struct toy {
  int32_t R, S, m;
  int tie;
  float w[MAXR][MAXS][D], g[MAXR][MAXS][D];
  float out[MAXR][MAXM][D];
  float lr;
  int fail_stage, fail_step; /* inject: stage's forward fails on a step */
};

static float
x_of(int32_t q, int i)
{
  return (float)(q + 1 + i);
}

static int
toy_forward(const bt_stage_call_t *c, char *errbuf, size_t errlen)
{
  struct toy *t = c->user;
  int32_t r = c->replica, s = c->stage, k = c->microbatch;
  float v[D];

  if (s == t->fail_stage && (int)c->step == t->fail_step) {
    snprintf(errbuf, errlen, "injected failure");
    return BT_EIO;
  }
  for (int i = 0; i < D; i++)
    v[i] = (s == 0 ? x_of(r * t->m + k, i) : ((const float *)c->input)[i]) +
           t->w[r][s][i];
  if (s == 0 && c->nskip_out == 1)
    memcpy(c->skip_out[0].data, v, sizeof v);
  if (s == t->S - 1) {
    float loss = 0.0f;
    if (c->nskip_in == 1)
      for (int i = 0; i < D; i++)
        v[i] += ((const float *)c->skip_in[0].data)[i];
    for (int i = 0; i < D; i++) {
      t->out[r][k][i] = v[i];
      loss += 0.5f * v[i] * v[i];
    }
    *(float *)c->output = loss;
  } else {
    memcpy(c->output, v, sizeof v);
  }
  return 0;
}

static int
toy_backward(const bt_stage_call_t *c, char *errbuf, size_t errlen)
{
  struct toy *t = c->user;
  int32_t r = c->replica, s = c->stage;
  float d[D];

  (void)errbuf;
  (void)errlen;
  memcpy(d,
         s == t->S - 1 ? t->out[r][c->microbatch]
                       : (const float *)c->grad_output,
         sizeof d);
  if (s == t->S - 1 && c->nskip_in == 1)
    memcpy(c->skip_grad_out[0].data, d, sizeof d);
  if (s == 0 && c->nskip_out == 1)
    for (int i = 0; i < D; i++)
      d[i] += ((const float *)c->skip_grad_in[0].data)[i];
  for (int i = 0; i < D; i++)
    t->g[r][s][i] += d[i];
  if (c->grad_input != NULL)
    memcpy(c->grad_input, d, sizeof d);
  return 0;
}

static float *
toy_grad_tensor(int32_t r, int32_t s, int32_t part, size_t *count, void *user)
{
  struct toy *t = user;

  if (part > 0)
    return NULL;
  *count = D;
  return t->g[r][s];
}

static float *
toy_tie_tensor(int32_t r, int32_t tie, int32_t side, size_t *count, void *user)
{
  struct toy *t = user;

  (void)tie;
  *count = D;
  return t->g[r][side == 0 ? 0 : t->S - 1];
}

static int
toy_sqnorm(const bt_stage_call_t *c, char *errbuf, size_t errlen)
{
  struct toy *t = c->user;
  double sum = 0.0;

  (void)errbuf;
  (void)errlen;
  if (!(t->tie && c->stage == t->S - 1))
    for (int i = 0; i < D; i++)
      sum += (double)t->g[0][c->stage][i] * t->g[0][c->stage][i];
  *c->sqnorm = sum;
  return 0;
}

static int
toy_update(const bt_stage_call_t *c, char *errbuf, size_t errlen)
{
  struct toy *t = c->user;

  (void)errbuf;
  (void)errlen;
  for (int i = 0; i < D; i++)
    t->w[c->replica][c->stage][i] -=
        t->lr * (float)c->grad_scale * t->g[c->replica][c->stage][i];
  return 0;
}

static void
toy_init(struct toy *t, int32_t R, int32_t S, int32_t m, int tie)
{
  memset(t, 0, sizeof *t);
  t->R = R;
  t->S = S;
  t->m = m;
  t->tie = tie;
  t->lr = 0.25f;
  t->fail_stage = -1;
  for (int r = 0; r < R; r++)
    for (int s = 0; s < S; s++)
      for (int i = 0; i < D; i++)
        t->w[r][s][i] = (float)((s + i) % 3);
  if (tie)
    for (int r = 0; r < R; r++)
      memcpy(t->w[r][S - 1], t->w[r][0], sizeof t->w[r][0]);
}

struct cfg {
  const char *sched;
  int32_t R, p, m;
  int tie, skip, clip;
};

static bt_status
make(struct toy *t, const struct cfg *c, bt_comm_t *cm, bt_pipeline_t **out,
     bt_error_t *err)
{
  bt_stage_desc_t desc[MAXS];
  bt_pipeline_config_t pc = BT_PIPELINE_CONFIG_INIT;
  bt_pipeline_tie_t tie = {"w", 0, 0};
  bt_pipeline_skip_t skip = {"h0", 0, 0, D * sizeof(float)};
  bt_schedule_t *sched = NULL;
  bt_status rc = bt_schedule_builtin(c->sched, &sched, err);

  if (rc != BT_OK)
    return rc;
  for (int32_t s = 0; s < t->S; s++) {
    desc[s] = (bt_stage_desc_t)BT_STAGE_DESC_INIT;
    desc[s].forward = toy_forward;
    desc[s].backward = toy_backward;
    desc[s].output_bytes = s == t->S - 1 ? sizeof(float) : D * sizeof(float);
    desc[s].grad_input_bytes = s == 0 ? 0 : D * sizeof(float);
    desc[s].user = t;
  }
  pc.stages = t->S;
  pc.stage = desc;
  pc.devices = c->p;
  pc.microbatches = c->m;
  pc.schedule = sched;
  pc.threads = 2;
  pc.replicas = c->R;
  pc.user = t;
  pc.comm = cm;
  pc.grad_tensor = toy_grad_tensor;
  if (c->tie) {
    tie.stage_b = t->S - 1;
    pc.ties = &tie;
    pc.nties = 1;
    pc.tie_tensor = toy_tie_tensor;
  }
  if (c->skip) {
    skip.pop_stage = t->S - 1;
    pc.skips = &skip;
    pc.nskips = 1;
  }
  if (c->clip) {
    pc.max_grad_norm = 1.0;
    pc.grad_sqnorm = toy_sqnorm;
  }
  pc.update = toy_update;
  rc = bt_pipeline_create(&pc, out, err);
  bt_schedule_destroy(sched);
  return rc;
}

static void
zero_grads(struct toy *t)
{
  memset(t->g, 0, sizeof t->g);
}

/* Runs cfg spread and alone; compares what this rank owns. */
static void
check(const struct cfg *c)
{
  static struct toy dist, solo;
  bt_pipeline_t *pd = NULL, *ps = NULL;
  bt_error_t err = {0};
  int32_t W = bt_comm_size(comm), me = bt_comm_rank(comm);
  int32_t per = c->R * c->p / W;
  char what[160];

  snprintf(what, sizeof what, "%s R=%d p=%d m=%d tie=%d skip=%d clip=%d",
           c->sched, (int)c->R, (int)c->p, (int)c->m, c->tie, c->skip, c->clip);
  toy_init(&dist, c->R, c->p, c->m, c->tie);
  toy_init(&solo, c->R, c->p, c->m, c->tie);
  if (make(&dist, c, comm, &pd, &err) != BT_OK) {
    test_fail(__FILE__, __LINE__, "%s: %s", what, err.message);
    return;
  }
  if (make(&solo, c, NULL, &ps, &err) != BT_OK) {
    test_fail(__FILE__, __LINE__, "%s: %s", what, err.message);
    bt_pipeline_destroy(pd);
    return;
  }
  for (int step = 0; step < 2; step++) {
    zero_grads(&dist);
    zero_grads(&solo);
    if (bt_pipeline_step(pd, &err) != BT_OK) {
      test_fail(__FILE__, __LINE__, "%s: distributed step: %s", what,
                err.message);
      break;
    }
    if (bt_pipeline_step(ps, &err) != BT_OK) {
      test_fail(__FILE__, __LINE__, "%s: step: %s", what, err.message);
      break;
    }
    for (int32_t r = 0; r < c->R; r++)
      for (int32_t s = 0; s < c->p; s++) {
        int32_t dev = r * c->p + s; /* stage s on device s of replica r */
        if (dev / per != me)
          continue;
        if (memcmp(dist.g[r][s], solo.g[r][s], sizeof dist.g[r][s]) != 0 ||
            memcmp(dist.w[r][s], solo.w[r][s], sizeof dist.w[r][s]) != 0) {
          test_fail(__FILE__, __LINE__,
                    "%s step %d: rank %d replica %d stage %d: g %g vs %g, w "
                    "%g vs %g",
                    what, step, (int)me, (int)r, (int)s,
                    (double)dist.g[r][s][0], (double)solo.g[r][s][0],
                    (double)dist.w[r][s][0], (double)solo.w[r][s][0]);
          r = c->R;
          break;
        }
        if (s == c->p - 1)
          for (int32_t k = 0; k < c->m; k++) {
            const float *a = bt_pipeline_replica_output(pd, r, s, k, NULL);
            const float *b = bt_pipeline_replica_output(ps, r, s, k, NULL);
            if (*a != *b)
              test_fail(__FILE__, __LINE__, "%s: loss share %d.%d differs",
                        what, (int)r, (int)k);
          }
      }
    if (c->clip && me == 0 &&
        bt_pipeline_grad_norm(pd) != bt_pipeline_grad_norm(ps))
      test_fail(__FILE__, __LINE__, "%s: the gradient norms differ", what);
  }
  bt_pipeline_destroy(pd);
  bt_pipeline_destroy(ps);
}

TEST(spread_equals_one_process)
{
  static const char *scheds[] = {"gpipe", "1f1b", "zb-h1"};
  int32_t W = bt_comm_size(comm);
  int n = 0;

  for (size_t si = 0; si < 3; si++)
    for (int32_t R = 1; R <= 2; R++)
      for (int32_t p = 2; p <= 4; p += 2)
        for (int32_t m = 2; m <= 4; m += 2)
          for (int variant = 0; variant < 4; variant++) {
            struct cfg c = {scheds[si],         R,           p, m, variant & 1,
                            (variant >> 1) & 1, variant == 3};
            if ((R * p) % W != 0)
              continue;
            if (strcmp(scheds[si], "zb-h1") == 0)
              continue; /* the toy has full backwards only */
            check(&c);
            n++;
          }
  if (bt_comm_rank(comm) == 0)
    printf("  %d configurations over %d ranks\n", n, (int)W);
}

/* The resmlp trainer on a backend across processes (the transport). */
static struct bt__train *
resmlp_trainer(struct bt__resmlp *m, const char *sched, int32_t ckpt,
               struct bt_backend *be, bt_comm_t *c, int32_t p, int32_t R)
{
  struct bt__train_config cfg = BT__TRAIN_CONFIG_INIT;
  struct bt__train *t = NULL;
  bt_schedule_t *s = NULL;
  bt_error_t err = {0};
  bt_status rc;

  if (bt_schedule_builtin(sched, &s, &err) != BT_OK)
    return NULL;
  cfg.model = m;
  cfg.batch = 16;
  cfg.microbatches = 4 / R;
  cfg.devices = p;
  cfg.virtual_stages = strcmp(sched, "interleaved") == 0 ? 2 : 1;
  cfg.schedule = s;
  cfg.checkpoint = ckpt;
  cfg.threads = 4;
  cfg.backend = be;
  cfg.comm = c;
  cfg.replicas = R;
  rc = bt__train_create(&cfg, &t, &err);
  bt_schedule_destroy(s);
  if (rc != BT_OK)
    test_fail(__FILE__, __LINE__, "%s: %s", sched, err.message);
  return t;
}

TEST(backend_transport_equals_one_process)
{
  static const char *scheds[] = {"gpipe", "1f1b", "zb-h1", "interleaved"};
  struct bt__resmlp_config mc = {6, 8, 3, 6, true};
  int32_t W = bt_comm_size(comm), me = bt_comm_rank(comm);
  float x[16 * 6];
  int32_t y[16];
  int n = 0;

  if (4 % W != 0)
    return;
  for (int i = 0; i < 16 * 6; i++)
    x[i] = (float)((i * 37) % 17) / 8.0f - 1.0f;
  for (int i = 0; i < 16; i++)
    y[i] = i % 3;
  /* Four devices: one pipeline of 4, or two replicas of 2; on the host
   * backend and (CPU) without one. */
  for (int variant = 0; variant < 3; variant++)
    for (size_t si = 0; si < 4; si++)
      for (int32_t ck = 0; ck < 3; ck += 2) {
        int32_t R = variant == 0 ? 1 : 2, p = 4 / R;
        int cpu = variant == 2;
        struct bt__resmlp *a = NULL, *b = NULL;
        struct bt_backend *be = NULL;
        struct bt__train *ta, *tb;
        struct bt__train_optim o = {0, 0.1f, 0.0f, 0.9f, 0.999f, 1e-8f, 1};
        bt_error_t err = {0};
        float la, lb;
        if (R > 1 && strcmp(scheds[si], "interleaved") == 0)
          continue; /* two stages per device need 4 layers per replica */
        ASSERT_INT_EQ(bt__resmlp_create(&mc, 3, &a, &err), BT_OK);
        ASSERT_INT_EQ(bt__resmlp_create(&mc, 3, &b, &err), BT_OK);
        if (!cpu)
          ASSERT_INT_EQ(bt__backend_host_create(4 / W, &be, &err), BT_OK);
        ta = resmlp_trainer(a, scheds[si], ck, NULL, NULL, p, R);
        tb = resmlp_trainer(b, scheds[si], ck, be, comm, p, R);
        for (int step = 0; ta != NULL && tb != NULL && step < 2; step++) {
          int nx, ny;
          bt__train_needs(tb, &nx, &ny);
          EXPECT_STATUS(bt__train_step(ta, x, y, &la, &err), BT_OK, &err);
          EXPECT_STATUS(
              bt__train_step(tb, nx ? x : NULL, ny ? y : NULL, &lb, &err),
              BT_OK, &err);
          EXPECT_STATUS(bt__train_pull(tb, &err), BT_OK, &err);
          if (memcmp(&la, &lb, sizeof la) != 0)
            test_fail(__FILE__, __LINE__,
                      "%s ckpt %d R=%d%s step %d rank %d: "
                      "loss %.9g, one process %.9g",
                      scheds[si], (int)ck, (int)R, cpu ? " cpu" : "", step,
                      (int)me, (double)lb, (double)la);
          /* This rank's stages: their parameters and gradients. */
          for (int32_t s = 0; s < bt__train_stages(tb); s++) {
            if (bt__train_stage_rank(tb, s) != me)
              continue;
            for (size_t l = 0; l < a->nlayers; l++) {
              size_t lo, hi;
              if (bt__train_stage_of_layer(tb, l) != s)
                continue;
              lo = a->tensors[a->layer_tensor[l]].offset;
              hi = l + 1 < a->nlayers
                       ? a->tensors[a->layer_tensor[l + 1]].offset
                       : a->nparams;
              if (memcmp(a->grads + lo, b->grads + lo,
                         (hi - lo) * sizeof(float)) != 0 ||
                  memcmp(a->params + lo, b->params + lo,
                         (hi - lo) * sizeof(float)) != 0)
                test_fail(__FILE__, __LINE__,
                          "%s ckpt %d R=%d%s step %d rank "
                          "%d: layer %zu differs",
                          scheds[si], (int)ck, (int)R, cpu ? " cpu" : "", step,
                          (int)me, l);
            }
          }
          EXPECT_INT_EQ(bt__resmlp_sgd(a, o.lr), BT_OK);
          if (cpu) {
            /* On the CPU the optimizer runs on the model (this rank's
             * stages are the ones compared). */
            EXPECT_INT_EQ(bt__resmlp_sgd(b, o.lr), BT_OK);
          } else {
            EXPECT_STATUS(bt__train_update(tb, &o, &err), BT_OK, &err);
          }
        }
        if (ta != NULL && tb != NULL)
          n++;
        bt__train_destroy(ta);
        bt__train_destroy(tb);
        bt_backend_destroy(be);
        bt__resmlp_destroy(a);
        bt__resmlp_destroy(b);
      }
  if (me == 0)
    printf("  backend transport: %d configurations over %d ranks\n", n, (int)W);
  EXPECT_INT_EQ(n, 20);
}

/* A plan whose producer sends a pair of devices' transfers in another
 * order than the consumer takes them: through a transport (which moves
 * them in one order) it would deadlock, so create refuses it, naming the
 * devices.  Device 0 runs F1 before F0; device 1 takes F0 first. */
TEST(transport_refuses_crossed_order)
{
  struct bt__resmlp_config mc = {6, 8, 3, 2, false};
  struct bt__train_config cfg = BT__TRAIN_CONFIG_INIT;
  struct bt__resmlp *m = NULL;
  struct bt_backend *be = NULL;
  struct bt__train *t = NULL;
  bt_schedule_t *s = NULL;
  bt_error_t err = {0};
  char path[] = "/tmp/test_mpi_crossed_XXXXXX.csv";
  int fd;
  FILE *f;

  if (bt_comm_size(comm) != 2)
    return;
  fd = mkstemps(path, 4);
  ASSERT_TRUE(fd >= 0);
  f = fdopen(fd, "w");
  ASSERT_TRUE(f != NULL);
  fputs("# baton plan v1: devices=2 stages=2 microbatches=2\n"
        "0F1,0F0,0B0,0B1\n"
        "1F0,1F1,1B0,1B1\n",
        f);
  fclose(f);
  ASSERT_INT_EQ(bt_schedule_open(path, &s, &err), BT_OK);
  ASSERT_INT_EQ(bt__resmlp_create(&mc, 3, &m, &err), BT_OK);
  ASSERT_INT_EQ(bt__backend_host_create(1, &be, &err), BT_OK);
  cfg.model = m;
  cfg.batch = 4;
  cfg.microbatches = 2;
  cfg.devices = 2;
  cfg.schedule = s;
  cfg.backend = be;
  cfg.comm = comm;
  EXPECT_STATUS(bt__train_create(&cfg, &t, &err), BT_EPLAN, &err);
  EXPECT_STR_CONTAINS(err.message, "from device 0 to device 1");
  if (bt_comm_rank(comm) == 0)
    printf("  crossed plan: %s\n", err.message);
  bt__train_destroy(t);
  bt_backend_destroy(be);
  bt__resmlp_destroy(m);
  bt_schedule_destroy(s);
  remove(path);
}

/* A stage that fails on one rank: the step ends everywhere, named. */
TEST(failure_reaches_every_rank)
{
  static struct toy t;
  struct cfg c = {"1f1b", 1, 4, 4, 0, 0, 0};
  bt_pipeline_t *pl = NULL;
  bt_error_t err = {0};
  int32_t W = bt_comm_size(comm), me = bt_comm_rank(comm);
  int32_t failing = W - 1; /* owns the last stage */
  bt_status rc;

  if (W < 2)
    return;
  toy_init(&t, 1, 4, 4, 0);
  t.fail_stage = 3;
  t.fail_step = 2;
  ASSERT_TRUE(make(&t, &c, comm, &pl, &err) == BT_OK);
  EXPECT_INT_EQ(bt_pipeline_step(pl, &err), BT_OK);
  rc = bt_pipeline_step(pl, &err);
  if (me == failing) {
    EXPECT_INT_EQ(rc, BT_EIO);
    EXPECT_TRUE(strstr(err.message, "3F") != NULL &&
                strstr(err.message, "injected failure") != NULL);
  } else {
    EXPECT_INT_EQ(rc, BT_EPEER);
    if (strstr(err.message, "failed: ") == NULL ||
        strstr(err.message, "injected failure") == NULL)
      test_fail(__FILE__, __LINE__, "rank %d: %s", (int)me, err.message);
  }
  EXPECT_INT_EQ(bt_pipeline_step(pl, &err), BT_EPEER);
  EXPECT_TRUE(strstr(err.message, "the job must stop") != NULL);
  bt_pipeline_destroy(pl);
}

int
main(int argc, char **argv)
{
  bt_error_t err = {0};
  int rc;

  if (bt_comm_init(&argc, &argv, &comm, &err) != BT_OK) {
    fprintf(stderr, "test_mpi_pipeline: %s\n", err.message);
    return 1;
  }
  bt_comm_set_timeout(comm, 30.0);
  rc = test_main(argc, argv);
  bt_comm_finalize(comm);
  return rc;
}
