/* After an exec's first step the runtime allocates nothing: the binary is
 * linked with --wrap for malloc, calloc, realloc and aligned_alloc, so
 * every allocation made by baton's code (and this file's) is counted;
 * steps 2..50 of every exec, in every mode, must leave the count alone,
 * also when a step fails and when tracing is on. */
#include <stdatomic.h>
#include <stdint.h>

#include "baton/baton.h"
#include "sched_util.h"
#include "failalloc.h"
#include "test.h"


#define N(a) (int)(sizeof(a) / sizeof((a)[0]))
#define STEPS 50
#define FAIL_STEP 20 /* one step in the middle fails */

struct mode {
  int32_t mode, threads;
  const char *name;
};

static const struct mode modes[] = {
    {BT_RUNTIME_POOL, 2, "pool/2"},
    {BT_RUNTIME_POOL, 3, "pool/3"},
    {BT_RUNTIME_DEDICATED, 0, "dedicated"},
};

struct counts {
  int32_t fail_task;
  _Atomic long calls;
};

static int
count_task(const bt_task_call_t *call, char *errbuf, size_t errlen)
{
  struct counts *c = call->user;

  atomic_fetch_add_explicit(&c->calls, 1, memory_order_relaxed);
  if (call->step == FAIL_STEP && call->task == c->fail_task) {
    snprintf(errbuf, errlen, "injected");
    return -42;
  }
  return 0;
}

static long
count_now(void)
{
  return failalloc_count();
}

TEST(runtime_steady_steps_allocate_nothing)
{
  struct run r;
  int32_t dev[2000], src[4000], dst[4000];
  bt_dag_t dag = BT_DAG_INIT;
  uint32_t rng = 12345;

  ASSERT_INT_EQ(run_schedule("zb-h1", 4, 1, 8,
                             &(struct run_costs){1, 2, 1, 1, 0, 0, 0}, &r),
                BT_OK);
  /* A random DAG: 2000 tasks on 4 devices, two earlier predecessors each. */
  for (int32_t t = 0; t < 2000; t++) {
    rng = rng * 1664525u + 1013904223u;
    dev[t] = (int32_t)(rng >> 16) % 4;
    for (int k = 0; k < 2; k++) {
      rng = rng * 1664525u + 1013904223u;
      src[2 * t + k] = t > 0 ? (int32_t)((rng >> 8) % (uint32_t)t) : 0;
      dst[2 * t + k] = t;
    }
  }
  dag.tasks = 2000;
  dag.task_device = dev;
  dag.edges = 2 * 1999;
  dag.src = src + 2;
  dag.dst = dst + 2;

  for (int mi = 0; mi < N(modes); mi++) {
    bt_runtime_config_t rcfg = BT_RUNTIME_CONFIG_INIT;
    bt_exec_config_t cfg = BT_EXEC_CONFIG_INIT;
    bt_runtime_t *rt = NULL;
    bt_exec_t *ex[2] = {NULL, NULL};
    struct counts c[2];
    bt_error_t err;
    long before;
    rcfg.devices = 4;
    rcfg.mode = modes[mi].mode;
    rcfg.threads = modes[mi].threads;
    ASSERT_INT_EQ(bt_runtime_create(&rcfg, &rt, &err), BT_OK);
    cfg.fn = count_task;
    for (int i = 0; i < 2; i++) {
      c[i].fail_task = i == 0 ? 17 : 1000;
      atomic_init(&c[i].calls, 0);
      cfg.user = &c[i];
      cfg.trace = i == 0;
      if (i == 0)
        EXPECT_STATUS(bt_exec_create(rt, r.graph, &cfg, &ex[i], &err), BT_OK,
                      &err);
      else
        EXPECT_STATUS(bt_exec_create_dag(rt, &dag, &cfg, &ex[i], &err), BT_OK,
                      &err);
      if (ex[i] == NULL)
        continue;
      EXPECT_STATUS(bt_exec_run(ex[i], &err), BT_OK, &err);
    }
    /* Steps 2..50 of both execs, interleaved. */
    before = count_now();
    for (int step = 2; step <= STEPS; step++)
      for (int i = 0; i < 2; i++) {
        int rc;
        if (ex[i] == NULL)
          continue;
        rc = bt_exec_run(ex[i], &err);
        if (step == FAIL_STEP)
          EXPECT_INT_EQ(rc, -42);
        else
          EXPECT_STATUS(rc, BT_OK, &err);
        if (i == 0 && step % 10 == 0) {
          bt_slice_t sl[128];
          if (bt_exec_task_count(ex[0]) <= 128)
            EXPECT_INT_EQ(bt_exec_slices(ex[0], sl), BT_OK);
        }
      }
    if (count_now() != before)
      test_fail(__FILE__, __LINE__, "%s: steps 2..%d allocated %ld times",
                modes[mi].name, STEPS, count_now() - before);
    else
      printf("  %s: steps 2..%d allocated nothing\n", modes[mi].name, STEPS);
    EXPECT_TRUE(atomic_load(&c[0].calls) > (long)(STEPS - 1) * 96);
    for (int i = 0; i < 2; i++)
      EXPECT_INT_EQ(bt_exec_destroy(ex[i]), BT_OK);
    EXPECT_INT_EQ(bt_runtime_destroy(rt), BT_OK);
  }
  run_free(&r);
}
