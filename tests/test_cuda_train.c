/* The resmlp trainer on the CUDA backend (<baton/cuda.h>:
 * bt_cuda_backend_create) against the same trainer on the CPU: exits 77
 * without a GPU.  On a GPU, with 1, 2 and 4 logical devices on cuda:0
 * (each its own streams), for gpipe, 1f1b, interleaved and zb-h1, with
 * and without the long skip and checkpointing:
 *   - the loss within 1e-4 relative and every gradient tensor within 1e-4
 *     of its largest entry, after bt__train_pull;
 *   - three steps with SGD, then AdamW, on the devices: the parameters
 *     within 1e-4 of the CPU's;
 *   - a CUDA error inside a task (a copy the runtime refuses) ends the step
 *     with the task and device named, and the next step on the same
 *     trainer is right again;
 *   - with whole-step CUDA graphs (captured at step 2, replayed after), the
 *     same;
 *   - data parallelism: two replicas all-reduce through NCCL on two GPUs;
 *     on one GPU the trainer runs one replica and says so in its note;
 *   - a trainer too big for the GPU fails at create with BT_ENOMEM, and the
 *     backend still trains afterwards. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "backend.h"
#include "baton/cuda.h"
#include "baton/schedule.h"
#include "resmlp.h"
#include "test.h"
#include "test_util.h"
#include "train.h"

#define TOL 1e-4

struct shape {
  size_t D, H, C, L, N;
};

static const struct shape small = {12, 32, 5, 6, 64};
static const struct shape wide = {64, 256, 10, 6, 256};

static float *xs;
static int32_t *ys;

static void
make_batch(const struct shape *sh)
{
  test_rng_t rng;

  test_rng_seed(&rng, 42);
  free(xs);
  free(ys);
  xs = malloc(sh->N * sh->D * sizeof *xs);
  ys = malloc(sh->N * sizeof *ys);
  if (xs == NULL || ys == NULL)
    exit(1);
  for (size_t i = 0; i < sh->N * sh->D; i++)
    xs[i] = test_rng_uniform_f32(&rng, -2.0f, 2.0f);
  for (size_t r = 0; r < sh->N; r++)
    ys[r] = (int32_t)(test_rng_next(&rng) % sh->C);
}

static struct bt__resmlp *
model(const struct shape *sh, bool long_skip)
{
  struct bt__resmlp_config c = {sh->D, sh->H, sh->C, sh->L, long_skip};
  struct bt__resmlp *m = NULL;
  bt_error_t err;

  if (bt__resmlp_create(&c, 7, &m, &err) != BT_OK) {
    fprintf(stderr, "test_cuda_train: %s\n", err.message);
    exit(1);
  }
  return m;
}

static struct bt__train *
trainer_r(struct bt__resmlp *m, const struct shape *sh, const char *sched,
          int32_t p, int32_t ckpt, struct bt_backend *be, int graph,
          int32_t replicas, bt_status *rc, bt_error_t *err)
{
  struct bt__train_config cfg = BT__TRAIN_CONFIG_INIT;
  struct bt__train *t = NULL;
  bt_schedule_t *s = NULL;

  *rc = bt_schedule_builtin(sched, &s, err);
  if (*rc != BT_OK)
    return NULL;
  cfg.model = m;
  cfg.batch = sh->N;
  cfg.microbatches = 4;
  cfg.devices = p;
  cfg.virtual_stages = strcmp(sched, "interleaved") == 0 ? 2 : 1;
  cfg.schedule = s;
  cfg.checkpoint = ckpt;
  cfg.threads = p * replicas;
  cfg.backend = be;
  cfg.graph = graph;
  cfg.replicas = replicas;
  *rc = bt__train_create(&cfg, &t, err);
  bt_schedule_destroy(s);
  return t;
}

static struct bt__train *
trainer(struct bt__resmlp *m, const struct shape *sh, const char *sched,
        int32_t p, int32_t ckpt, struct bt_backend *be, int graph,
        bt_status *rc, bt_error_t *err)
{
  return trainer_r(m, sh, sched, p, ckpt, be, graph, 1, rc, err);
}

/* Every tensor of got within TOL of ref's largest entry (values or
 * gradients). */
static void
tensors_close(const struct bt__resmlp *ref, const struct bt__resmlp *got,
              int grads, const char *what)
{
  for (size_t i = 0; i < ref->ntensors; i++) {
    const struct bt__params_tensor *t = &ref->tensors[i];
    const float *a = (grads ? ref->grads : ref->params) + t->offset;
    const float *b = (grads ? got->grads : got->params) + t->offset;
    double mr, md = test_max_abs_diff(b, a, t->count, &mr);
    if (!(md <= TOL * (mr > 0 ? mr : 1.0))) {
      test_fail(__FILE__, __LINE__, "%s: %s %s: max|d| %.3g, max|ref| %.3g",
                what, grads ? "gradient" : "parameter", t->name, md, mr);
      return;
    }
  }
}

static struct bt_backend *
backend(int32_t p)
{
  int32_t gpus[4] = {0, 0, 0, 0};
  struct bt_backend *be = NULL;
  bt_error_t err;

  if (bt_cuda_backend_create(gpus, p, &be, &err) != BT_OK) {
    test_fail(__FILE__, __LINE__, "bt_cuda_backend_create: %s", err.message);
    return NULL;
  }
  return be;
}

static void
compare(const struct shape *sh, const char *sched, int32_t p, int ls,
        int32_t ckpt, int graph, int *ran)
{
  struct bt__resmlp *a = model(sh, ls), *b = model(sh, ls);
  struct bt_backend *be = backend(p);
  struct bt__train *ta = NULL, *tb = NULL;
  struct bt__params_adamw_state st = {0};
  bt_error_t err;
  bt_status rc;
  char what[128];
  float la, lb;

  snprintf(what, sizeof what, "%s p=%d H=%zu long_skip=%d ckpt=%d graph=%d",
           sched, (int)p, sh->H, ls, (int)ckpt, graph);
  if (be == NULL)
    goto out;
  ta = trainer(a, sh, sched, p, ckpt, NULL, 0, &rc, &err);
  tb = trainer(b, sh, sched, p, ckpt, be, graph, &rc, &err);
  if (ta == NULL || tb == NULL) {
    if (rc != BT_EUNSUPPORTED)
      test_fail(__FILE__, __LINE__, "%s: %s", what, err.message);
    goto out;
  }
  (*ran)++;
  for (int step = 1; step <= 6; step++) {
    int adamw = step > 3;
    /* AdamW's first steps move a weight by about lr g / (|g| + eps):
     * eps 1e-6 keeps gradients near the summation noise (cuBLAS and the
     * CPU add in other orders) from being amplified past TOL. */
    struct bt__train_optim o = {
        adamw, adamw ? 0.01f : 0.05f, 0.0f, 0.9f, 0.999f, 1e-6f, step - 3};
    EXPECT_STATUS(bt__train_step(ta, xs, ys, &la, &err), BT_OK, &err);
    EXPECT_STATUS(bt__train_step(tb, xs, ys, &lb, &err), BT_OK, &err);
    if (!(fabs((double)la - (double)lb) <= TOL * fabs((double)la)))
      test_fail(__FILE__, __LINE__,
                "%s step %d: loss %.7g on cuda, %.7g on "
                "the CPU",
                what, step, (double)lb, (double)la);
    EXPECT_STATUS(bt__train_pull(tb, &err), BT_OK, &err);
    tensors_close(a, b, 1, what);
    tensors_close(a, b, 0, what);
    if (!adamw) {
      EXPECT_STATUS(bt__resmlp_sgd(a, o.lr), BT_OK, NULL);
    } else {
      if (st.m == NULL)
        EXPECT_STATUS(bt__resmlp_adamw_init(a, &st), BT_OK, NULL);
      EXPECT_STATUS(
          bt__resmlp_adamw(a, o.lr, o.b1, o.b2, o.eps, o.wd, o.t, &st), BT_OK,
          NULL);
    }
    EXPECT_STATUS(bt__train_update(tb, &o, &err), BT_OK, &err);
  }
out:
  bt__train_destroy(ta);
  bt__train_destroy(tb);
  bt_backend_destroy(be);
  bt__resmlp_adamw_deinit(&st);
  bt__resmlp_destroy(a);
  bt__resmlp_destroy(b);
}

TEST(cuda_matches_cpu)
{
  static const char *sched[] = {"gpipe", "1f1b", "interleaved", "zb-h1"};
  int ran = 0;

  make_batch(&small);
  for (size_t si = 0; si < sizeof sched / sizeof *sched; si++)
    for (int32_t p = 1; p <= 4; p *= 2)
      for (int ls = 0; ls < 2; ls++)
        for (int32_t ck = 0; ck < 2; ck++)
          compare(&small, sched[si], p, ls, ck, 0, &ran);
  make_batch(&wide);
  compare(&wide, "1f1b", 4, 1, 0, 0, &ran);
  compare(&wide, "zb-h1", 2, 0, 0, 0, &ran);
  printf("cuda: %d configurations match the CPU trainer\n", ran);
  EXPECT_TRUE(ran >= 40);
}

/* Whole-step CUDA graphs: step 1 eager, step 2 captured and replayed,
 * steps 3.. replayed; each equals the CPU's as the eager steps do. */
TEST(cuda_graph_matches_cpu)
{
  int ran = 0;

  make_batch(&small);
  compare(&small, "1f1b", 2, 1, 0, 1, &ran);
  compare(&small, "zb-h1", 4, 0, 0, 1, &ran);
  compare(&small, "gpipe", 1, 1, 1, 1, &ran);
  compare(&small, "interleaved", 2, 0, 1, 1, &ran);
  make_batch(&wide);
  compare(&wide, "1f1b", 4, 1, 0, 1, &ran);
  EXPECT_INT_EQ(ran, 5);
}

/* Data parallelism.  On one GPU NCCL cannot run two replicas: the
 * trainer runs one on the first devices, says so in its note, and matches
 * the CPU's single replica.  With two GPUs or more, two replicas (one
 * device each) all-reduce through NCCL and match the CPU's two replicas
 * within TOL. */
TEST(cuda_data_parallel)
{
  int32_t gpus[2] = {0, 0};
  int ngpu = 0;
  struct bt__resmlp *a = model(&small, 1), *b = model(&small, 1);
  struct bt_backend *be = NULL;
  struct bt__train *ta = NULL, *tb = NULL;
  bt_error_t err;
  bt_status rc;
  float la, lb;

  make_batch(&small);
  cudaGetDeviceCount(&ngpu);
  if (ngpu >= 2)
    gpus[1] = 1;
  ASSERT_INT_EQ(bt_cuda_backend_create(gpus, 2, &be, &err), BT_OK);
  tb = trainer_r(b, &small, "1f1b", 1, 0, be, 0, 2, &rc, &err);
  ASSERT_TRUE(tb != NULL);
  ta = trainer_r(a, &small, "1f1b", 1, 0, NULL, 0,
                 bt__train_note(tb) == NULL ? 2 : 1, &rc, &err);
  ASSERT_TRUE(ta != NULL);
  if (ngpu < 2 || bt__train_note(tb) != NULL) {
    /* One GPU, or no NCCL: one replica, said. */
    ASSERT_TRUE(bt__train_note(tb) != NULL);
    EXPECT_TRUE(strstr(bt__train_note(tb), "one GPU per replica") != NULL ||
                strstr(bt__train_note(tb), "without NCCL") != NULL);
    printf("one GPU: %s\n", bt__train_note(tb));
  } else {
    EXPECT_TRUE(bt__train_note(tb) == NULL);
  }
  for (int step = 0; step < 3; step++) {
    struct bt__train_optim o = {0, 0.05f, 0.0f, 0.9f, 0.999f, 1e-8f, 1};
    EXPECT_STATUS(bt__train_step(ta, xs, ys, &la, &err), BT_OK, &err);
    EXPECT_STATUS(bt__train_step(tb, xs, ys, &lb, &err), BT_OK, &err);
    EXPECT_NEAR(lb, la, TOL * fabs(la));
    EXPECT_STATUS(bt__train_pull(tb, &err), BT_OK, &err);
    tensors_close(a, b, 1, "data parallel");
    tensors_close(a, b, 0, "data parallel");
    EXPECT_STATUS(bt__resmlp_sgd(a, o.lr), BT_OK, NULL);
    EXPECT_STATUS(bt__train_update(tb, &o, &err), BT_OK, &err);
  }
  bt__train_destroy(ta);
  bt__train_destroy(tb);
  bt_backend_destroy(be);
  bt__resmlp_destroy(a);
  bt__resmlp_destroy(b);
}

/* A copy with a direction CUDA refuses: a real CUDA error, returned by
 * the call that enqueues it, that leaves the context usable.  Fails the
 * first `fail_left` calls only. */
static const struct bt__kern *real;
static int fail_left;

static bt_status
failing_gelu(void *ctx, float *y, const float *x, size_t n)
{
  if (fail_left > 0) {
    const bt_cuda_ctx_t *c = ctx;
    cudaError_t e;
    fail_left--;
    e = cudaMemcpyAsync(y, x, n, (enum cudaMemcpyKind)99,
                        (cudaStream_t)c->stream);
    if (e != cudaSuccess)
      return e == cudaErrorMemoryAllocation ? BT_ENOMEM : BT_EIO;
  }
  return real->gelu_fwd(ctx, y, x, n);
}

TEST(cuda_error_in_task)
{
  struct bt__resmlp *a = model(&small, 0), *b = model(&small, 0);
  struct bt_backend *be = backend(2);
  struct bt__kern bad;
  struct bt__train *ta = NULL, *tb = NULL;
  bt_error_t err;
  bt_status rc;
  float la, lb;

  ASSERT_TRUE(be != NULL);
  make_batch(&small);
  real = be->kern;
  bad = *real;
  bad.gelu_fwd = failing_gelu;
  be->kern = &bad;
  ta = trainer(a, &small, "1f1b", 2, 0, NULL, 0, &rc, &err);
  tb = trainer(b, &small, "1f1b", 2, 0, be, 0, &rc, &err);
  ASSERT_TRUE(ta != NULL && tb != NULL);
  fail_left = 1;
  memset(&err, 0, sizeof err);
  rc = bt__train_step(tb, xs, ys, &lb, &err);
  EXPECT_TRUE(rc != BT_OK);
  EXPECT_STR_CONTAINS(err.message, "on cuda:0");
  EXPECT_STR_CONTAINS(err.message, "forward");
  printf("the failed step said: %s\n", err.message);
  /* The same trainer again: right. */
  EXPECT_STATUS(bt__train_step(ta, xs, ys, &la, &err), BT_OK, &err);
  EXPECT_STATUS(bt__train_step(tb, xs, ys, &lb, &err), BT_OK, &err);
  EXPECT_NEAR(lb, la, TOL * fabs(la));
  EXPECT_STATUS(bt__train_pull(tb, &err), BT_OK, &err);
  tensors_close(a, b, 1, "after a failed step");
  bt__train_destroy(ta);
  bt__train_destroy(tb);
  be->kern = real;
  bt_backend_destroy(be);
  bt__resmlp_destroy(a);
  bt__resmlp_destroy(b);
}

TEST(cuda_out_of_memory)
{
  /* A block's scratch for 2^22 rows of width 1024: over 200 GiB. */
  static const struct shape huge = {16, 1024, 4, 1, (size_t)1 << 22};
  struct bt__resmlp *m = model(&huge, 0);
  struct bt_backend *be = backend(1);
  struct bt__train *t;
  bt_error_t err;
  bt_status rc;
  int ran = 0;

  ASSERT_TRUE(be != NULL);
  memset(&err, 0, sizeof err);
  t = trainer(m, &huge, "gpipe", 1, 0, be, 0, &rc, &err);
  EXPECT_TRUE(t == NULL);
  EXPECT_INT_EQ(rc, BT_ENOMEM);
  printf("too big: %s\n", err.message);
  bt__resmlp_destroy(m);
  bt_backend_destroy(be);
  /* The GPU still trains. */
  make_batch(&small);
  compare(&small, "1f1b", 1, 0, 0, 0, &ran);
  EXPECT_INT_EQ(ran, 1);
}

int
main(int argc, char **argv)
{
  if (!bt_cuda_available()) {
    printf("no usable CUDA device here: skipped\n");
    return 77;
  }
  return test_main(argc, argv);
}
