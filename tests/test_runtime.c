/* The runtime (include/baton/runtime.h) end to end.
 *
 * Usage: test_runtime [steps [dag_tasks]] [test names...]
 *   steps      steps of every built-in schedule's graph per mode
 *              (default 150; the full size is 10000)
 *   dag_tasks  tasks of the big random DAG (default 100000)
 *
 * Every task checks, when it runs, that each predecessor and the task
 * before it on its device already finished in this step (they stamped the
 * step number), that it did not run before in this step, and that no other
 * task of its device is running (a per-device busy flag that an exchange
 * must find clear).  After each step every task must have stamped it. */
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>

#include "baton/baton.h"
#include "sched_util.h"
#include "test.h"


#define N(a) (int)(sizeof(a) / sizeof((a)[0]))

struct mode {
  int32_t mode, threads;
  const char *name;
};

static const struct mode modes[] = {
    {BT_RUNTIME_POOL, 2, "pool/2"},
    {BT_RUNTIME_POOL, 3, "pool/3"},
    {BT_RUNTIME_DEDICATED, 0, "dedicated"},
};

/* The two modes most tests run in. */
static const struct mode modes2[] = {
    {BT_RUNTIME_POOL, 2, "pool/2"},
    {BT_RUNTIME_DEDICATED, 0, "dedicated"},
};

/* ---- topology: what the checks need, from a graph or a DAG --------------- */

struct topo {
  int32_t ntasks, ndev;
  int32_t *device;
  int32_t *pred_first, *pred; /* deduplicated */
  int32_t *succ_first, *succ;
  int32_t *prev_on_dev; /* graph: the task before on the device, -1 */
  bt_action_t *action;  /* graph only */
  /* DAG form (edges with duplicates, shuffled), for bt_exec_create_dag. */
  size_t nedges;
  int32_t *src, *dst;
};

static void
topo_free(struct topo *tp)
{
  free(tp->device);
  free(tp->pred_first);
  free(tp->pred);
  free(tp->succ_first);
  free(tp->succ);
  free(tp->prev_on_dev);
  free(tp->action);
  free(tp->src);
  free(tp->dst);
  memset(tp, 0, sizeof *tp);
}

static void *
xcalloc(size_t n, size_t k)
{
  void *p = calloc(n ? n : 1, k);

  if (p == NULL) {
    fprintf(stderr, "out of memory\n");
    abort();
  }
  return p;
}

static void
topo_from_graph(const bt_graph_t *g, struct topo *tp)
{
  int32_t n = bt_graph_task_count(g);
  size_t np = 0, ns = 0;

  memset(tp, 0, sizeof *tp);
  tp->ntasks = n;
  tp->ndev = bt_graph_devices(g);
  tp->device = xcalloc((size_t)n, sizeof *tp->device);
  tp->action = xcalloc((size_t)n, sizeof *tp->action);
  tp->prev_on_dev = xcalloc((size_t)n, sizeof *tp->prev_on_dev);
  tp->pred_first = xcalloc((size_t)n + 1, sizeof *tp->pred_first);
  tp->succ_first = xcalloc((size_t)n + 1, sizeof *tp->succ_first);
  tp->pred = xcalloc(bt_graph_edge_count(g), sizeof *tp->pred);
  tp->succ = xcalloc(bt_graph_edge_count(g), sizeof *tp->succ);
  for (int32_t t = 0; t < n; t++) {
    bt_task_t task = bt_graph_task(g, t);
    tp->device[t] = task.device;
    tp->action[t] = task.action;
    tp->prev_on_dev[t] =
        task.position > 0
            ? bt_graph_device_task(g, task.device, task.position - 1)
            : -1;
    tp->pred_first[t] = (int32_t)np;
    for (int32_t i = 0; i < bt_graph_predecessor_count(g, t); i++)
      tp->pred[np++] = bt_graph_predecessor(g, t, i, NULL);
    tp->succ_first[t] = (int32_t)ns;
    for (int32_t i = 0; i < bt_graph_successor_count(g, t); i++)
      tp->succ[ns++] = bt_graph_successor(g, t, i, NULL);
  }
  tp->pred_first[n] = (int32_t)np;
  tp->succ_first[n] = (int32_t)ns;
}

static uint64_t
rng_next(uint64_t *x)
{
  /* xorshift64* */
  *x ^= *x >> 12;
  *x ^= *x << 25;
  *x ^= *x >> 27;
  return *x * 2685821657736338717ull;
}

static int
cmp_i64(const void *a, const void *b)
{
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

  return (x > y) - (x < y);
}

/* A random DAG: task t on a random device, with 0..4 predecessors among
 * earlier tasks (half near t, half anywhere), some edges listed twice, the
 * edge list shuffled. */
static void
topo_random_dag(int32_t n, int32_t ndev, uint64_t seed, struct topo *tp)
{
  uint64_t rng = seed * 0x9e3779b97f4a7c15ull + 1;
  size_t cap = 5 * (size_t)n + 1, m = 0, u = 0;
  int64_t *keys; /* dst << 32 | src */

  memset(tp, 0, sizeof *tp);
  tp->ntasks = n;
  tp->ndev = ndev;
  tp->device = xcalloc((size_t)n, sizeof *tp->device);
  tp->src = xcalloc(cap, sizeof *tp->src);
  tp->dst = xcalloc(cap, sizeof *tp->dst);
  for (int32_t t = 0; t < n; t++) {
    int k = t > 0 ? (int)(rng_next(&rng) % 5) : 0;
    tp->device[t] = (int32_t)(rng_next(&rng) % (uint64_t)ndev);
    for (int i = 0; i < k; i++) {
      int32_t p;
      if (rng_next(&rng) % 2) {
        int32_t w = t < 32 ? t : 32;
        p = t - 1 - (int32_t)(rng_next(&rng) % (uint64_t)w);
      } else {
        p = (int32_t)(rng_next(&rng) % (uint64_t)t);
      }
      tp->src[m] = p;
      tp->dst[m++] = t;
    }
    if (m > 0 && rng_next(&rng) % 8 == 0 && m < cap) { /* a duplicate */
      tp->src[m] = tp->src[m - 1];
      tp->dst[m] = tp->dst[m - 1];
      m++;
    }
  }
  tp->nedges = m;
  for (size_t i = m; i > 1; i--) {
    size_t j = (size_t)(rng_next(&rng) % i);
    int32_t s = tp->src[i - 1], d = tp->dst[i - 1];
    tp->src[i - 1] = tp->src[j];
    tp->dst[i - 1] = tp->dst[j];
    tp->src[j] = s;
    tp->dst[j] = d;
  }
  /* Deduplicated CSR both ways. */
  keys = xcalloc(m, sizeof *keys);
  for (size_t i = 0; i < m; i++)
    keys[i] = (int64_t)tp->dst[i] << 32 | tp->src[i];
  qsort(keys, m, sizeof *keys, cmp_i64);
  for (size_t i = 0; i < m; i++)
    if (u == 0 || keys[u - 1] != keys[i])
      keys[u++] = keys[i];
  tp->pred_first = xcalloc((size_t)n + 1, sizeof *tp->pred_first);
  tp->succ_first = xcalloc((size_t)n + 2, sizeof *tp->succ_first);
  tp->pred = xcalloc(u, sizeof *tp->pred);
  tp->succ = xcalloc(u, sizeof *tp->succ);
  for (size_t i = 0; i < u; i++) {
    int32_t d = (int32_t)(keys[i] >> 32), s = (int32_t)(keys[i] & 0xffffffff);
    tp->pred[i] = s;
    tp->pred_first[d + 1]++;
    tp->succ_first[s + 2]++;
  }
  for (int32_t t = 0; t < n; t++) {
    tp->pred_first[t + 1] += tp->pred_first[t];
    tp->succ_first[t + 2] += tp->succ_first[t + 1];
  }
  for (size_t i = 0; i < u; i++) {
    int32_t d = (int32_t)(keys[i] >> 32), s = (int32_t)(keys[i] & 0xffffffff);
    tp->succ[tp->succ_first[s + 1]++] = d;
  }
  free(keys);
}

static bt_dag_t
topo_dag(const struct topo *tp)
{
  bt_dag_t dag = BT_DAG_INIT;

  dag.tasks = tp->ntasks;
  dag.task_device = tp->device;
  dag.edges = tp->nedges;
  dag.src = tp->src;
  dag.dst = tp->dst;
  return dag;
}

/* Tasks reachable from k (k excluded): reach[t] = 1. */
static unsigned char *
reachable(const struct topo *tp, int32_t k)
{
  unsigned char *reach = xcalloc((size_t)tp->ntasks, 1);
  int32_t *queue = xcalloc((size_t)tp->ntasks, sizeof *queue);
  int32_t head = 0, tail = 0;

  queue[tail++] = k;
  while (head < tail) {
    int32_t t = queue[head++];
    for (int32_t j = tp->succ_first[t]; j < tp->succ_first[t + 1]; j++)
      if (!reach[tp->succ[j]]) {
        reach[tp->succ[j]] = 1;
        queue[tail++] = tp->succ[j];
      }
  }
  free(queue);
  return reach;
}

/* ---- the checking task -----------------------------------------------------
 */

struct check;
typedef int (*extra_fn)(struct check *c, const bt_task_call_t *call,
                        char *errbuf, size_t errlen);

struct check {
  const struct topo *tp;
  _Atomic uint64_t *stamp; /* [ntasks]: the last step the task finished */
  _Atomic int *busy;       /* [ndev] */
  _Atomic int64_t violations;
  _Atomic int64_t calls; /* callbacks since the last reset */
  /* Task fail_task returns fail_status with "boom" on step fail_step. */
  int32_t fail_task;
  uint64_t fail_step;
  int fail_status;
  extra_fn extra; /* runs inside the task after the checks; may fail it */
  void *extra_arg;
};

static void violation(struct check *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
violation(struct check *c, const char *fmt, ...)
{
  va_list ap;

  /* Relaxed: a count, read after the step. */
  if (atomic_fetch_add_explicit(&c->violations, 1, memory_order_relaxed) >= 8)
    return;
  fprintf(stderr, "  violation: ");
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
}

static void
check_init(struct check *c, const struct topo *tp)
{
  memset(c, 0, sizeof *c);
  c->tp = tp;
  c->stamp = xcalloc((size_t)tp->ntasks, sizeof *c->stamp);
  c->busy = xcalloc((size_t)tp->ndev, sizeof *c->busy);
  c->fail_task = -1;
}

static void
check_deinit(struct check *c)
{
  free((void *)(uintptr_t)c->stamp);
  free((void *)(uintptr_t)c->busy);
}

static int
check_task(const bt_task_call_t *call, char *errbuf, size_t errlen)
{
  struct check *c = call->user;
  const struct topo *tp = c->tp;
  int32_t t = call->task, d = call->device;
  uint64_t step = call->step;
  int rc = 0;

  if (t < 0 || t >= tp->ntasks || d < 0 || d >= tp->ndev) {
    violation(c, "task %d on device %d out of range", (int)t, (int)d);
    return 0;
  }
  if (d != tp->device[t])
    violation(c, "task %d ran on device %d, not %d", (int)t, (int)d,
              (int)tp->device[t]);
  if (tp->action != NULL
          ? memcmp(&call->action, &tp->action[t], sizeof call->action) != 0
          : call->action.kind != BT_ACT_IDLE)
    violation(c, "task %d got the wrong action", (int)t);
  /* Acq_rel: pairs with the release clear below by the device's previous
   * task; finding 1 means two tasks of the device overlap. */
  if (atomic_exchange_explicit(&c->busy[d], 1, memory_order_acq_rel) != 0)
    violation(c, "task %d started while another task of device %d ran", (int)t,
              (int)d);
  /* Acquire loads of stamps: pair with the release stores below (the
   * runtime orders them anyway; the atomics keep TSan quiet about the
   * test's own bookkeeping). */
  if (atomic_load_explicit(&c->stamp[t], memory_order_acquire) >= step)
    violation(c, "task %d ran twice in step %llu", (int)t,
              (unsigned long long)step);
  for (int32_t j = tp->pred_first[t]; j < tp->pred_first[t + 1]; j++) {
    int32_t p = tp->pred[j];
    uint64_t s = atomic_load_explicit(&c->stamp[p], memory_order_acquire);
    if (s != step)
      violation(c,
                "step %llu: task %d started before its predecessor %d "
                "finished (stamp %llu)",
                (unsigned long long)step, (int)t, (int)p,
                (unsigned long long)s);
  }
  if (tp->prev_on_dev != NULL && tp->prev_on_dev[t] >= 0 &&
      atomic_load_explicit(&c->stamp[tp->prev_on_dev[t]],
                           memory_order_acquire) != step)
    violation(c,
              "step %llu: task %d started before task %d, its "
              "predecessor on device %d",
              (unsigned long long)step, (int)t, (int)tp->prev_on_dev[t],
              (int)d);
  if (c->extra != NULL)
    rc = c->extra(c, call, errbuf, errlen);
  if (rc == 0 && t == c->fail_task && step == c->fail_step) {
    snprintf(errbuf, errlen, "boom");
    rc = c->fail_status;
  }
  if (rc == 0)
    atomic_store_explicit(&c->stamp[t], step, memory_order_release);
  atomic_fetch_add_explicit(&c->calls, 1, memory_order_relaxed);
  atomic_store_explicit(&c->busy[d], 0, memory_order_release);
  return rc;
}

/* After a clean step: every task ran exactly once. */
static void
expect_full_step(struct check *c, uint64_t step, const char *what)
{
  int32_t missing = 0;

  for (int32_t t = 0; t < c->tp->ntasks; t++)
    if (atomic_load_explicit(&c->stamp[t], memory_order_relaxed) != step &&
        missing++ < 3)
      fprintf(stderr, "  %s step %llu: task %d did not run\n", what,
              (unsigned long long)step, (int)t);
  EXPECT_INT_EQ(missing, 0);
  EXPECT_INT_EQ(atomic_load(&c->calls), c->tp->ntasks);
  atomic_store(&c->calls, 0);
}

static bt_runtime_t *
make_runtime(const struct mode *md, int32_t devices)
{
  bt_runtime_config_t cfg = BT_RUNTIME_CONFIG_INIT;
  bt_runtime_t *rt = NULL;
  bt_error_t err;

  cfg.devices = devices;
  cfg.mode = md->mode;
  cfg.threads = md->threads;
  if (bt_runtime_create(&cfg, &rt, &err) != BT_OK) {
    test_fail(__FILE__, __LINE__, "bt_runtime_create (%s): %s", md->name,
              err.message);
    return NULL;
  }
  return rt;
}

/* An exec of tp (from g when not NULL, else as a DAG) running check_task. */
static bt_exec_t *
make_exec(bt_runtime_t *rt, const bt_graph_t *g, const struct topo *tp,
          struct check *c, int trace)
{
  bt_exec_config_t cfg = BT_EXEC_CONFIG_INIT;
  bt_exec_t *ex = NULL;
  bt_error_t err;
  bt_status rc;

  cfg.fn = check_task;
  cfg.user = c;
  cfg.trace = trace;
  if (g != NULL) {
    rc = bt_exec_create(rt, g, &cfg, &ex, &err);
  } else {
    bt_dag_t dag = topo_dag(tp);
    rc = bt_exec_create_dag(rt, &dag, &cfg, &ex, &err);
  }
  if (rc != BT_OK) {
    test_fail(__FILE__, __LINE__, "exec create: %s", err.message);
    return NULL;
  }
  if (bt_exec_task_count(ex) != tp->ntasks)
    test_fail(__FILE__, __LINE__, "exec has %d tasks, wanted %d",
              (int)bt_exec_task_count(ex), (int)tp->ntasks);
  return ex;
}

/* Runs one clean step and checks it. */
static void
clean_step(bt_exec_t *ex, struct check *c, uint64_t step, const char *what)
{
  bt_error_t err;

  err.message[0] = '\0';
  EXPECT_STATUS(bt_exec_run(ex, &err), BT_OK, &err);
  expect_full_step(c, step, what);
}

/* ---- built-in schedules ----------------------------------------------------
 */

struct sched_spec {
  const char *name;
  int p, v, m;
};

static const struct sched_spec scheds[] = {
    {"gpipe", 4, 1, 8}, {"1f1b", 4, 1, 8},        {"zb-h1", 4, 1, 8},
    {"zb-h2", 4, 1, 8}, {"interleaved", 4, 2, 8},
};

static const struct run_costs unit_costs = {1, 2, 1, 1, 0, 0, 0};

TEST(runtime_builtin_schedules_every_dependency)
{
  struct run r[N(scheds)];
  struct topo tp[N(scheds)];
  int ok = 1;

  for (int s = 0; s < N(scheds); s++) {
    bt_status rc = run_schedule(scheds[s].name, scheds[s].p, scheds[s].v,
                                scheds[s].m, &unit_costs, &r[s]);
    if (rc != BT_OK) {
      test_fail(__FILE__, __LINE__, "%s: %s", scheds[s].name, r[s].err.message);
      ok = 0;
      memset(&tp[s], 0, sizeof tp[s]);
      continue;
    }
    topo_from_graph(r[s].graph, &tp[s]);
  }
  /* All five execs live on one runtime per mode, their steps interleaved. */
  for (int mi = 0; ok && mi < N(modes); mi++) {
    bt_runtime_t *rt = make_runtime(&modes[mi], 4);
    struct check c[N(scheds)];
    bt_exec_t *ex[N(scheds)];
    if (rt == NULL)
      break;
    for (int s = 0; s < N(scheds); s++) {
      check_init(&c[s], &tp[s]);
      ex[s] = make_exec(rt, r[s].graph, &tp[s], &c[s], 0);
    }
    for (long step = 1; step <= test_arg(0, 150); step++)
      for (int s = 0; s < N(scheds); s++) {
        if (ex[s] == NULL)
          continue;
        clean_step(ex[s], &c[s], (uint64_t)step, scheds[s].name);
      }
    for (int s = 0; s < N(scheds); s++) {
      EXPECT_INT_EQ(atomic_load(&c[s].violations), 0);
      EXPECT_STATUS(bt_exec_destroy(ex[s]), BT_OK, NULL);
      check_deinit(&c[s]);
    }
    EXPECT_STATUS(bt_runtime_destroy(rt), BT_OK, NULL);
    printf("  %s: %ld steps of each schedule\n", modes[mi].name, test_arg(0, 150));
  }
  for (int s = 0; s < N(scheds); s++) {
    topo_free(&tp[s]);
    run_free(&r[s]);
  }
}

/* ---- random DAGs
 * ------------------------------------------------------------- */

TEST(runtime_random_dags_every_dependency)
{
  struct topo big, small[8];

  topo_random_dag((int32_t)test_arg(1, 100000), 6, 1, &big);
  for (int i = 0; i < N(small); i++)
    topo_random_dag(1 + 37 * i, 1 + i % 6, 100 + (uint64_t)i, &small[i]);
  for (int mi = 0; mi < N(modes2); mi++) {
    bt_runtime_t *rt = make_runtime(&modes2[mi], 6);
    struct check c;
    bt_exec_t *ex;
    if (rt == NULL)
      break;
    check_init(&c, &big);
    ex = make_exec(rt, NULL, &big, &c, 0);
    for (uint64_t step = 1; ex != NULL && step <= 3; step++)
      clean_step(ex, &c, step, "big DAG");
    EXPECT_INT_EQ(atomic_load(&c.violations), 0);
    EXPECT_STATUS(bt_exec_destroy(ex), BT_OK, NULL);
    check_deinit(&c);
    /* Small DAGs, some on fewer devices than the runtime has. */
    for (int i = 0; i < N(small); i++) {
      check_init(&c, &small[i]);
      ex = make_exec(rt, NULL, &small[i], &c, 0);
      for (uint64_t step = 1; ex != NULL && step <= 20; step++)
        clean_step(ex, &c, step, "small DAG");
      EXPECT_INT_EQ(atomic_load(&c.violations), 0);
      EXPECT_STATUS(bt_exec_destroy(ex), BT_OK, NULL);
      check_deinit(&c);
    }
    EXPECT_STATUS(bt_runtime_destroy(rt), BT_OK, NULL);
    printf("  %s: %d tasks, %zu edges listed\n", modes2[mi].name,
           (int)big.ntasks, big.nedges);
  }
  topo_free(&big);
  for (int i = 0; i < N(small); i++)
    topo_free(&small[i]);
}

/* ---- errors
 * ------------------------------------------------------------------ */

/* The tasks to fail: first, middle, last, a root (the last one), a sink
 * (the first one); duplicates dropped. */
static int
fail_choices(const struct topo *tp, int32_t out[5])
{
  int32_t cand[5] = {0, tp->ntasks / 2, tp->ntasks - 1, -1, -1};
  int n = 0;

  for (int32_t t = 0; t < tp->ntasks; t++) {
    if (tp->pred_first[t] == tp->pred_first[t + 1])
      cand[3] = t;
    if (cand[4] < 0 && tp->succ_first[t] == tp->succ_first[t + 1])
      cand[4] = t;
  }
  for (int i = 0; i < 5; i++) {
    int dup = cand[i] < 0;
    for (int j = 0; j < n; j++)
      dup |= out[j] == cand[i];
    if (!dup)
      out[n++] = cand[i];
  }
  return n;
}

static void
task_label(const struct topo *tp, int32_t t, char *buf, size_t n)
{
  if (tp->action != NULL)
    bt_action_format(tp->action[t], buf, n);
  else
    snprintf(buf, n, "task %d", (int)t);
}

/* Expects step `step` of ex to fail with status and "<task k> on
 * <dev_prefix><d>: <msg>", and that no task after k ran. */
static void
expect_failed_step(bt_exec_t *ex, struct check *c, int32_t k, uint64_t step,
                   int status, const char *dev_prefix, const char *msg)
{
  const struct topo *tp = c->tp;
  unsigned char *reach = reachable(tp, k);
  char want[256], label[64];
  bt_error_t err;
  int32_t ran_after = 0;

  err.message[0] = '\0';
  EXPECT_INT_EQ(bt_exec_run(ex, &err), status);
  EXPECT_INT_EQ(err.status, status);
  task_label(tp, k, label, sizeof label);
  snprintf(want, sizeof want, "%s on %s%d: %s", label, dev_prefix,
           (int)tp->device[k], msg);
  if (strcmp(err.message, want) != 0)
    test_fail(__FILE__, __LINE__, "error message \"%s\", wanted \"%s\"",
              err.message, want);
  for (int32_t t = 0; t < tp->ntasks; t++)
    if (reach[t] &&
        atomic_load_explicit(&c->stamp[t], memory_order_relaxed) == step &&
        ran_after++ < 3)
      fprintf(stderr, "  task %d ran after %d failed\n", (int)t, (int)k);
  EXPECT_INT_EQ(ran_after, 0);
  atomic_store(&c->calls, 0);
  free(reach);
}

static void
error_cases(const bt_graph_t *g, const struct topo *tp, const char *what)
{
  int32_t ks[5];
  int nk = fail_choices(tp, ks);

  for (int mi = 0; mi < N(modes2); mi++) {
    bt_runtime_t *rt = make_runtime(&modes2[mi], tp->ndev);
    if (rt == NULL)
      return;
    for (int i = 0; i < nk; i++) {
      struct check c;
      bt_exec_t *ex;
      check_init(&c, tp);
      c.fail_task = ks[i];
      c.fail_step = 2;
      c.fail_status = -42;
      ex = make_exec(rt, g, tp, &c, i % 2);
      if (ex != NULL) {
        clean_step(ex, &c, 1, what);
        expect_failed_step(ex, &c, ks[i], 2, -42, "cpu:", "boom");
        clean_step(ex, &c, 3, what);
        clean_step(ex, &c, 4, what);
      }
      EXPECT_INT_EQ(atomic_load(&c.violations), 0);
      EXPECT_STATUS(bt_exec_destroy(ex), BT_OK, NULL);
      check_deinit(&c);
    }
    EXPECT_STATUS(bt_runtime_destroy(rt), BT_OK, NULL);
  }
}

TEST(runtime_task_error_ends_step_cleanly)
{
  struct run r;
  struct topo tp;

  for (int s = 0; s < N(scheds); s += 2) { /* gpipe, zb-h1, interleaved */
    if (run_schedule(scheds[s].name, scheds[s].p, scheds[s].v, scheds[s].m,
                     &unit_costs, &r) != BT_OK) {
      test_fail(__FILE__, __LINE__, "%s: %s", scheds[s].name, r.err.message);
      run_free(&r);
      continue;
    }
    topo_from_graph(r.graph, &tp);
    error_cases(r.graph, &tp, scheds[s].name);
    topo_free(&tp);
    run_free(&r);
  }
  topo_random_dag(300, 6, 7, &tp);
  error_cases(NULL, &tp, "DAG");
  topo_free(&tp);
}

/* Two tasks fail in one step: the step reports one of them. */
static int
fail_second(struct check *c, const bt_task_call_t *call, char *errbuf,
            size_t errlen)
{
  if (call->step == 2 && call->task == *(int32_t *)c->extra_arg) {
    snprintf(errbuf, errlen, "second");
    return -43;
  }
  return 0;
}

TEST(runtime_two_errors_one_report)
{
  struct topo tp;

  topo_random_dag(400, 4, 11, &tp);
  for (int mi = 0; mi < N(modes2); mi++) {
    bt_runtime_t *rt = make_runtime(&modes2[mi], 4);
    struct check c;
    bt_exec_t *ex;
    int32_t other = 399;
    bt_error_t err;
    int rc;
    if (rt == NULL)
      break;
    check_init(&c, &tp);
    c.fail_task = 0;
    c.fail_step = 2;
    c.fail_status = -42;
    c.extra = fail_second;
    c.extra_arg = &other;
    ex = make_exec(rt, NULL, &tp, &c, 0);
    if (ex != NULL) {
      clean_step(ex, &c, 1, "DAG");
      rc = bt_exec_run(ex, &err);
      EXPECT_TRUE(rc == -42 || rc == -43);
      if (rc == -42)
        EXPECT_STR_CONTAINS(err.message, "task 0 on cpu:");
      else if (rc == -43)
        EXPECT_STR_CONTAINS(err.message, "task 399 on cpu:");
      atomic_store(&c.calls, 0);
      clean_step(ex, &c, 3, "DAG");
    }
    EXPECT_INT_EQ(atomic_load(&c.violations), 0);
    EXPECT_STATUS(bt_exec_destroy(ex), BT_OK, NULL);
    check_deinit(&c);
    EXPECT_STATUS(bt_runtime_destroy(rt), BT_OK, NULL);
  }
  topo_free(&tp);
}

/* ---- EBUSY
 * ------------------------------------------------------------------- */

struct busy {
  bt_runtime_t *rt;
  bt_exec_t *self, *other;
  _Atomic int run_self, run_other, destroy_self, destroy_rt, calls;
};

static int
busy_task(const bt_task_call_t *call, char *errbuf, size_t errlen)
{
  struct busy *b = call->user;
  bt_error_t err;

  (void)errbuf;
  (void)errlen;
  if (call->task == 1) {
    atomic_store(&b->run_self, bt_exec_run(b->self, &err));
    atomic_store(&b->run_other, bt_exec_run(b->other, &err));
    atomic_store(&b->destroy_self, bt_exec_destroy(b->self));
    atomic_store(&b->destroy_rt, bt_runtime_destroy(b->rt));
  }
  atomic_fetch_add(&b->calls, 1);
  return 0;
}

/* The other exec's tasks only count (its steps are not refused, so they
 * must not try what busy_task tries). */
static int
count_task(const bt_task_call_t *call, char *errbuf, size_t errlen)
{
  struct busy *b = call->user;

  (void)errbuf;
  (void)errlen;
  atomic_fetch_add(&b->calls, 1);
  return 0;
}

TEST(runtime_ebusy)
{
  static const int32_t dev[4] = {0, 1, 0, 1};
  static const int32_t src[3] = {0, 1, 2}, dst[3] = {1, 2, 3};
  bt_dag_t dag = BT_DAG_INIT;

  dag.tasks = 4;
  dag.task_device = dev;
  dag.edges = 3;
  dag.src = src;
  dag.dst = dst;
  for (int mi = 0; mi < N(modes2); mi++) {
    bt_runtime_t *rt = make_runtime(&modes2[mi], 2);
    bt_exec_config_t cfg = BT_EXEC_CONFIG_INIT;
    struct busy b;
    bt_error_t err;
    if (rt == NULL)
      break;
    memset(&b, 0, sizeof b);
    b.rt = rt;
    cfg.fn = busy_task;
    cfg.user = &b;
    ASSERT_INT_EQ(bt_exec_create_dag(rt, &dag, &cfg, &b.self, &err), BT_OK);
    cfg.fn = count_task;
    ASSERT_INT_EQ(bt_exec_create_dag(rt, &dag, &cfg, &b.other, &err), BT_OK);
    /* Execs exist: the runtime stays. */
    EXPECT_INT_EQ(bt_runtime_destroy(rt), BT_EBUSY);
    for (int step = 0; step < 3; step++) {
      atomic_store(&b.calls, 0);
      EXPECT_STATUS(bt_exec_run(b.self, &err), BT_OK, &err);
      EXPECT_INT_EQ(atomic_load(&b.calls), 4);
      /* From inside a task: every one of these refuses, nothing blocks. */
      EXPECT_INT_EQ(atomic_load(&b.run_self), BT_EBUSY);
      EXPECT_INT_EQ(atomic_load(&b.run_other), BT_EBUSY);
      EXPECT_INT_EQ(atomic_load(&b.destroy_self), BT_EBUSY);
      EXPECT_INT_EQ(atomic_load(&b.destroy_rt), BT_EBUSY);
    }
    /* The other exec was left untouched by the refused call. */
    atomic_store(&b.calls, 0);
    EXPECT_STATUS(bt_exec_run(b.other, &err), BT_OK, &err);
    EXPECT_INT_EQ(atomic_load(&b.calls), 4);
    /* Destroy order: execs first, then the runtime. */
    EXPECT_INT_EQ(bt_exec_destroy(b.self), BT_OK);
    EXPECT_INT_EQ(bt_runtime_destroy(rt), BT_EBUSY);
    EXPECT_INT_EQ(bt_exec_destroy(b.other), BT_OK);
    EXPECT_INT_EQ(bt_runtime_destroy(rt), BT_OK);
  }
  EXPECT_INT_EQ(bt_runtime_destroy(NULL), BT_OK);
  EXPECT_INT_EQ(bt_exec_destroy(NULL), BT_OK);
}

/* ---- bad input
 * --------------------------------------------------------------- */

static int
noop_task(const bt_task_call_t *call, char *errbuf, size_t errlen)
{
  (void)call;
  (void)errbuf;
  (void)errlen;
  return 0;
}

static bt_status
try_dag(bt_runtime_t *rt, int32_t tasks, const int32_t *dev, size_t edges,
        const int32_t *src, const int32_t *dst, bt_error_t *err)
{
  bt_dag_t dag = BT_DAG_INIT;
  bt_exec_config_t cfg = BT_EXEC_CONFIG_INIT;
  bt_exec_t *ex = NULL;
  bt_status rc;

  dag.tasks = tasks;
  dag.task_device = dev;
  dag.edges = edges;
  dag.src = src;
  dag.dst = dst;
  cfg.fn = noop_task;
  err->message[0] = '\0';
  rc = bt_exec_create_dag(rt, &dag, &cfg, &ex, err);
  if (rc != BT_OK && ex != NULL)
    test_fail(__FILE__, __LINE__, "a failed create set *out");
  if (rc == BT_OK)
    bt_exec_destroy(ex);
  return rc;
}

TEST(runtime_bad_input)
{
  bt_runtime_config_t rcfg = BT_RUNTIME_CONFIG_INIT;
  bt_exec_config_t cfg = BT_EXEC_CONFIG_INIT;
  bt_runtime_t *rt = NULL;
  bt_exec_t *ex = NULL;
  bt_error_t err;
  struct run r;
  static const int32_t dev3[3] = {0, 1, 0}, dev_hi[2] = {0, 2},
                       dev_neg[2] = {-1, 0};
  static const int32_t cyc_s[4] = {0, 1, 2, 3}, cyc_d[4] = {1, 2, 1, 0};
  static const int32_t ok_s[2] = {0, 1}, ok_d[2] = {1, 2};
  static const int32_t far_d[2] = {1, 5}, self_d[2] = {1, 1};
  bt_device_ops_t no_exec = {sizeof(bt_device_ops_t), NULL, NULL, NULL};
  bt_device_desc_t desc[2] = {{NULL, NULL, NULL}, {NULL, &no_exec, NULL}};

  /* Runtime configs. */
  rcfg.devices = 0;
  EXPECT_STATUS(bt_runtime_create(&rcfg, &rt, &err), BT_EINVAL, &err);
  rcfg.devices = 2;
  rcfg.mode = 7;
  EXPECT_STATUS(bt_runtime_create(&rcfg, &rt, &err), BT_EINVAL, &err);
  rcfg.mode = BT_RUNTIME_POOL;
  rcfg.threads = -1;
  EXPECT_STATUS(bt_runtime_create(&rcfg, &rt, &err), BT_EINVAL, &err);
  rcfg.threads = 2;
  rcfg.device = desc;
  EXPECT_STATUS(bt_runtime_create(&rcfg, &rt, &err), BT_EINVAL, &err);
  EXPECT_TRUE(rt == NULL);
  EXPECT_STATUS(bt_runtime_create(NULL, &rt, &err), BT_EINVAL, &err);
  rcfg.device = NULL;
  ASSERT_INT_EQ(bt_runtime_create(&rcfg, &rt, &err), BT_OK);
  EXPECT_INT_EQ(bt_runtime_devices(rt), 2);
  EXPECT_TRUE(strcmp(bt_runtime_device_name(rt, 1), "cpu:1") == 0);
  EXPECT_TRUE(bt_runtime_device_name(rt, 2) == NULL);

  /* DAGs. */
  EXPECT_STATUS(try_dag(rt, 3, dev3, 2, ok_s, ok_d, &err), BT_OK, &err);
  EXPECT_STATUS(
      try_dag(rt, 4, (const int32_t[]){0, 1, 0, 1}, 4, cyc_s, cyc_d, &err),
      BT_EDEADLOCK, &err);
  EXPECT_STATUS(try_dag(rt, 2, dev_hi, 0, NULL, NULL, &err), BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "task 1 is on device 2");
  EXPECT_STATUS(try_dag(rt, 2, dev_neg, 0, NULL, NULL, &err), BT_EINVAL, &err);
  EXPECT_STATUS(try_dag(rt, 3, dev3, 2, ok_s, far_d, &err), BT_EINVAL, &err);
  EXPECT_STATUS(try_dag(rt, 3, dev3, 2, ok_s, self_d, &err), BT_EINVAL, &err);
  EXPECT_STATUS(try_dag(rt, 3, NULL, 0, NULL, NULL, &err), BT_EINVAL, &err);
  EXPECT_STATUS(try_dag(rt, -1, dev3, 0, NULL, NULL, &err), BT_EINVAL, &err);
  EXPECT_STATUS(try_dag(rt, 3, dev3, 2, NULL, ok_d, &err), BT_EINVAL, &err);

  /* Exec configs. */
  {
    bt_dag_t dag = BT_DAG_INIT;
    dag.tasks = 3;
    dag.task_device = dev3;
    EXPECT_STATUS(bt_exec_create_dag(rt, &dag, &cfg, &ex, &err), BT_EINVAL,
                  &err); /* fn NULL */
    EXPECT_STATUS(bt_exec_create_dag(rt, &dag, NULL, &ex, &err), BT_EINVAL,
                  &err);
    EXPECT_STATUS(bt_exec_create_dag(rt, NULL, &cfg, &ex, &err), BT_EINVAL,
                  &err);
    cfg.fn = noop_task;
    EXPECT_STATUS(bt_exec_create_dag(NULL, &dag, &cfg, &ex, &err), BT_EINVAL,
                  &err);
    EXPECT_STATUS(bt_exec_create_dag(rt, &dag, &cfg, NULL, &err), BT_EINVAL,
                  &err);
    EXPECT_TRUE(ex == NULL);
    /* Slices: no trace, and before any step. */
    ASSERT_INT_EQ(bt_exec_create_dag(rt, &dag, &cfg, &ex, &err), BT_OK);
    {
      bt_slice_t sl[3];
      EXPECT_INT_EQ(bt_exec_slices(ex, sl), BT_EINVAL);
      EXPECT_STATUS(bt_exec_run(ex, &err), BT_OK, &err);
      EXPECT_INT_EQ(bt_exec_slices(ex, sl), BT_EINVAL);
      EXPECT_INT_EQ(bt_exec_destroy(ex), BT_OK);
      cfg.trace = 1;
      ex = NULL;
      ASSERT_INT_EQ(bt_exec_create_dag(rt, &dag, &cfg, &ex, &err), BT_OK);
      EXPECT_INT_EQ(bt_exec_slices(ex, sl), BT_EINVAL);
      EXPECT_INT_EQ(bt_exec_slices(ex, NULL), BT_EINVAL);
      EXPECT_INT_EQ(bt_exec_destroy(ex), BT_OK);
      cfg.trace = 0;
      ex = NULL;
    }
  }
  EXPECT_STATUS(bt_exec_run(NULL, &err), BT_EINVAL, &err);

  /* A graph with more devices than the runtime. */
  if (run_schedule("1f1b", 4, 1, 8, &unit_costs, &r) == BT_OK) {
    cfg.fn = noop_task;
    EXPECT_STATUS(bt_exec_create(rt, r.graph, &cfg, &ex, &err), BT_EINVAL,
                  &err);
    EXPECT_STR_CONTAINS(err.message, "4 devices");
    EXPECT_STATUS(bt_exec_create(rt, NULL, &cfg, &ex, &err), BT_EINVAL, &err);
    cfg.fn = NULL;
    EXPECT_STATUS(bt_exec_create(rt, r.graph, &cfg, &ex, &err), BT_EINVAL,
                  &err);
    EXPECT_TRUE(ex == NULL);
  } else {
    test_fail(__FILE__, __LINE__, "1f1b: %s", r.err.message);
  }
  run_free(&r);
  /* No failed create left an exec counted on the runtime. */
  EXPECT_INT_EQ(bt_runtime_destroy(rt), BT_OK);
}

/* ---- trace
 * ------------------------------------------------------------------- */

static int
cmp_by_start(const void *a, const void *b, const bt_slice_t *sl)
{
  int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;

  return (sl[x].start > sl[y].start) - (sl[x].start < sl[y].start);
}

static const bt_slice_t *sort_slices; /* for qsort's comparator */

static int
cmp_slice_index(const void *a, const void *b)
{
  return cmp_by_start(a, b, sort_slices);
}

static void
check_slices(const struct topo *tp, const bt_slice_t *sl, const char *what)
{
  int32_t *order = xcalloc((size_t)tp->ntasks, sizeof *order);
  int bad = 0;

  for (int32_t t = 0; t < tp->ntasks; t++) {
    if (sl[t].device != tp->device[t] || !(sl[t].start <= sl[t].end) ||
        sl[t].start < 0.0)
      if (bad++ < 3)
        fprintf(stderr, "  %s: task %d has slice dev %d [%g, %g]\n", what,
                (int)t, (int)sl[t].device, sl[t].start, sl[t].end);
    if (tp->action != NULL &&
        memcmp(&sl[t].action, &tp->action[t], sizeof sl[t].action) != 0)
      if (bad++ < 3)
        fprintf(stderr, "  %s: task %d has the wrong action\n", what, (int)t);
    for (int32_t j = tp->pred_first[t]; j < tp->pred_first[t + 1]; j++) {
      int32_t p = tp->pred[j];
      if (!(sl[p].end <= sl[t].start) && bad++ < 3)
        fprintf(stderr, "  %s: edge %d -> %d: end %g > start %g\n", what,
                (int)p, (int)t, sl[p].end, sl[t].start);
    }
  }
  /* Per device: sorted by start, no overlap; graphs in plan order. */
  for (int32_t d = 0; d < tp->ndev; d++) {
    int32_t n = 0;
    for (int32_t t = 0; t < tp->ntasks; t++)
      if (tp->device[t] == d)
        order[n++] = t;
    sort_slices = sl;
    qsort(order, (size_t)n, sizeof *order, cmp_slice_index);
    for (int32_t i = 1; i < n; i++) {
      const bt_slice_t *a = &sl[order[i - 1]], *b = &sl[order[i]];
      if (!(a->end <= b->start) && bad++ < 3)
        fprintf(stderr,
                "  %s: device %d: task %d [%g, %g] overlaps task %d "
                "[%g, %g]\n",
                what, (int)d, (int)order[i - 1], a->start, a->end,
                (int)order[i], b->start, b->end);
      if (tp->prev_on_dev != NULL &&
          tp->prev_on_dev[order[i]] != order[i - 1] && bad++ < 3)
        fprintf(stderr,
                "  %s: device %d ran task %d after %d, not in plan "
                "order\n",
                what, (int)d, (int)order[i], (int)order[i - 1]);
    }
  }
  EXPECT_INT_EQ(bad, 0);
  free(order);
}

TEST(runtime_trace_slices_respect_edges)
{
  struct run r;
  struct topo tg, td;

  if (run_schedule("zb-h1", 4, 1, 8, &unit_costs, &r) != BT_OK) {
    test_fail(__FILE__, __LINE__, "zb-h1: %s", r.err.message);
    run_free(&r);
    return;
  }
  topo_from_graph(r.graph, &tg);
  topo_random_dag(2000, 5, 3, &td);
  for (int mi = 0; mi < N(modes2); mi++) {
    bt_runtime_t *rt = make_runtime(&modes2[mi], 5);
    if (rt == NULL)
      break;
    for (int which = 0; which < 2; which++) {
      const struct topo *tp = which ? &td : &tg;
      struct check c;
      bt_exec_t *ex;
      bt_slice_t *sl = xcalloc((size_t)tp->ntasks, sizeof *sl);
      check_init(&c, tp);
      ex = make_exec(rt, which ? NULL : r.graph, tp, &c, 1);
      for (uint64_t step = 1; ex != NULL && step <= 5; step++) {
        clean_step(ex, &c, step, "trace");
        EXPECT_INT_EQ(bt_exec_slices(ex, sl), BT_OK);
        check_slices(tp, sl, which ? "DAG" : "zb-h1");
        EXPECT_TRUE(bt_exec_last_seconds(ex) > 0.0);
      }
      EXPECT_INT_EQ(atomic_load(&c.violations), 0);
      EXPECT_STATUS(bt_exec_destroy(ex), BT_OK, NULL);
      check_deinit(&c);
      free(sl);
    }
    EXPECT_STATUS(bt_runtime_destroy(rt), BT_OK, NULL);
  }
  topo_free(&tg);
  topo_free(&td);
  run_free(&r);
}

/* ---- bt_task_alloc
 * ------------------------------------------------------------- */

struct alloc_ctx {
  void *_Atomic *buf; /* [ntasks] */
  _Atomic int64_t bad;
};

static size_t
alloc_size(int32_t t)
{
  return t % 17 == 0 ? (size_t)1 << 20 : 24 + (size_t)t * 13 % 4000;
}

static int
verify_and_free(const bt_task_call_t *call, struct alloc_ctx *a, int32_t t)
{
  unsigned char *p = atomic_exchange(&a->buf[t], NULL);
  size_t n = alloc_size(t);

  if (p == NULL)
    return 1;
  for (size_t i = 0; i < n; i += 97)
    if (p[i] != (unsigned char)(t + i))
      return 1;
  bt_task_free(call, p);
  return 0;
}

/* Each task fills a buffer; its first successor (often on another device)
 * checks and frees it; sinks free their own. */
static int
alloc_extra(struct check *c, const bt_task_call_t *call, char *errbuf,
            size_t errlen)
{
  struct alloc_ctx *a = c->extra_arg;
  const struct topo *tp = c->tp;
  int32_t t = call->task;
  size_t n = alloc_size(t);
  unsigned char *p = bt_task_alloc(call, n);

  if (p == NULL) {
    snprintf(errbuf, errlen, "bt_task_alloc(%zu) failed", n);
    return -1;
  }
  for (size_t i = 0; i < n; i++)
    p[i] = (unsigned char)(t + i);
  atomic_store(&a->buf[t], p);
  for (int32_t j = tp->pred_first[t]; j < tp->pred_first[t + 1]; j++) {
    int32_t q = tp->pred[j];
    if (tp->succ[tp->succ_first[q]] == t && verify_and_free(call, a, q))
      atomic_fetch_add(&a->bad, 1);
  }
  if (tp->succ_first[t] == tp->succ_first[t + 1] && verify_and_free(call, a, t))
    atomic_fetch_add(&a->bad, 1);
  return 0;
}

TEST(runtime_task_alloc_from_tasks)
{
  struct topo tp;

  topo_random_dag(500, 4, 5, &tp);
  for (int mi = 0; mi < N(modes2); mi++) {
    bt_runtime_t *rt = make_runtime(&modes2[mi], 4);
    struct alloc_ctx a;
    struct check c;
    bt_exec_t *ex;
    if (rt == NULL)
      break;
    a.buf = xcalloc((size_t)tp.ntasks, sizeof *a.buf);
    atomic_init(&a.bad, 0);
    check_init(&c, &tp);
    c.extra = alloc_extra;
    c.extra_arg = &a;
    ex = make_exec(rt, NULL, &tp, &c, 0);
    for (uint64_t step = 1; ex != NULL && step <= 5; step++) {
      clean_step(ex, &c, step, "alloc");
      for (int32_t t = 0; t < tp.ntasks; t++)
        EXPECT_TRUE(atomic_load(&a.buf[t]) == NULL);
    }
    EXPECT_INT_EQ(atomic_load(&a.bad), 0);
    EXPECT_INT_EQ(atomic_load(&c.violations), 0);
    EXPECT_STATUS(bt_exec_destroy(ex), BT_OK, NULL);
    check_deinit(&c);
    free((void *)(uintptr_t)a.buf);
    EXPECT_STATUS(bt_runtime_destroy(rt), BT_OK, NULL);
  }
  topo_free(&tp);
}

/* ---- device hooks
 * ------------------------------------------------------------- */

#define EV_EXECUTE (-1)
#define EV_RECORD (-2)
#define EV_MAX 64

/* What the hooks did for one task in the current step.  Written only by
 * the task's device during its call; read by the test between steps. */
struct ev_log {
  int32_t n;
  int32_t ev[EV_MAX]; /* a producer task (wait_dependency), or EV_* */
};

struct hooks {
  struct check chk; /* first: call->user is also a struct check * */
  struct ev_log *log;
  int dev_ctx[4];
  _Atomic int64_t bad;
  int32_t fail_record_task, fail_wait_task;
  uint64_t fail_step;
};

static void
log_event(const bt_task_call_t *call, int32_t ev)
{
  struct hooks *h = call->user;
  struct ev_log *l = &h->log[call->task];

  if (call->device_ctx != &h->dev_ctx[call->device])
    atomic_fetch_add(&h->bad, 1);
  if (l->n < EV_MAX)
    l->ev[l->n++] = ev;
}

static int
hook_execute(const bt_task_call_t *call, bt_task_fn fn, char *errbuf,
             size_t errlen)
{
  log_event(call, EV_EXECUTE);
  return fn(call, errbuf, errlen);
}

static int
hook_record(const bt_task_call_t *call, char *errbuf, size_t errlen)
{
  struct hooks *h = call->user;

  log_event(call, EV_RECORD);
  if (call->task == h->fail_record_task && call->step == h->fail_step) {
    snprintf(errbuf, errlen, "record failed");
    return -7;
  }
  return 0;
}

static int
hook_wait(const bt_task_call_t *call, int32_t producer, int32_t producer_dev,
          char *errbuf, size_t errlen)
{
  struct hooks *h = call->user;
  const struct topo *tp = h->chk.tp;

  log_event(call, producer);
  if (producer < 0 || producer >= tp->ntasks ||
      producer_dev != tp->device[producer] || producer_dev == call->device ||
      atomic_load_explicit(&h->chk.stamp[producer], memory_order_acquire) !=
          call->step)
    atomic_fetch_add(&h->bad, 1);
  if (call->task == h->fail_wait_task && call->step == h->fail_step) {
    snprintf(errbuf, errlen, "wait failed");
    return -9;
  }
  return 0;
}

static const bt_device_ops_t full_ops = {sizeof(bt_device_ops_t), hook_execute,
                                         hook_record, hook_wait};
static const bt_device_ops_t exec_only_ops = {sizeof(bt_device_ops_t),
                                              hook_execute, NULL, NULL};

/* Devices 0 and 1 have every hook, 2 only execute, 3 is a CPU device. */
static bt_runtime_t *
hooks_runtime(const struct mode *md, struct hooks *h)
{
  static const char *names[4] = {"gpu:0", "gpu:1", "gpu:2", NULL};
  bt_device_desc_t desc[4];
  bt_runtime_config_t cfg = BT_RUNTIME_CONFIG_INIT;
  bt_runtime_t *rt = NULL;
  bt_error_t err;

  for (int d = 0; d < 4; d++) {
    desc[d].name = names[d];
    desc[d].ops = d < 2 ? &full_ops : d == 2 ? &exec_only_ops : NULL;
    desc[d].ctx = &h->dev_ctx[d];
  }
  cfg.devices = 4;
  cfg.device = desc;
  cfg.mode = md->mode;
  cfg.threads = md->threads;
  if (bt_runtime_create(&cfg, &rt, &err) != BT_OK) {
    test_fail(__FILE__, __LINE__, "hooks runtime: %s", err.message);
    return NULL;
  }
  if (strcmp(bt_runtime_device_name(rt, 0), "gpu:0") != 0 ||
      strcmp(bt_runtime_device_name(rt, 3), "cpu:3") != 0)
    test_fail(__FILE__, __LINE__, "device names from the descs not kept");
  return rt;
}

/* The hook calls of task t in a step where it completed (or, with
 * stop_after set, where it failed in that hook). */
static int
check_log(const struct hooks *h, int32_t t)
{
  const struct topo *tp = h->chk.tp;
  const struct ev_log *l = &h->log[t];
  int32_t d = tp->device[t], want_waits = 0, i = 0;

  if (d == 3)
    return l->n == 0;
  if (d == 2)
    return l->n == 1 && l->ev[0] == EV_EXECUTE;
  for (int32_t j = tp->pred_first[t]; j < tp->pred_first[t + 1]; j++) {
    int32_t p = tp->pred[j], seen = 0;
    if (tp->device[p] == d)
      continue;
    want_waits++;
    for (int32_t k = 0; k < l->n; k++)
      seen += l->ev[k] == p;
    if (seen != 1)
      return 0;
  }
  for (; i < l->n && l->ev[i] >= 0; i++)
    ;
  return i == want_waits && l->n == want_waits + 2 &&
         l->ev[want_waits] == EV_EXECUTE && l->ev[want_waits + 1] == EV_RECORD;
}

static void
hooks_steps(bt_exec_t *ex, struct hooks *h, int32_t k, const char *what)
{
  const struct topo *tp = h->chk.tp;
  char label[64], want[160];
  int32_t badlogs = 0;

  for (uint64_t step = 1; step <= 4; step++) {
    bt_error_t err;
    int rc;
    memset(h->log, 0, (size_t)tp->ntasks * sizeof *h->log);
    err.message[0] = '\0';
    rc = bt_exec_run(ex, &err);
    if (step != h->fail_step) {
      EXPECT_STATUS(rc, BT_OK, &err);
      expect_full_step(&h->chk, step, what);
      for (int32_t t = 0; t < tp->ntasks; t++)
        if (!check_log(h, t) && badlogs++ < 3)
          fprintf(stderr, "  %s: task %d: wrong hook calls (%d events)\n", what,
                  (int)t, (int)h->log[t].n);
      continue;
    }
    /* The failing step. */
    {
      unsigned char *reach = reachable(tp, k);
      int wait_fail = k == h->fail_wait_task;
      task_label(tp, k, label, sizeof label);
      snprintf(want, sizeof want, "%s on gpu:%d: %s", label, (int)tp->device[k],
               wait_fail ? "wait failed" : "record failed");
      EXPECT_INT_EQ(rc, wait_fail ? -9 : -7);
      if (strcmp(err.message, want) != 0)
        test_fail(__FILE__, __LINE__, "error \"%s\", wanted \"%s\"",
                  err.message, want);
      for (int32_t t = 0; t < tp->ntasks; t++)
        if (reach[t] &&
            (h->log[t].n != 0 || atomic_load(&h->chk.stamp[t]) == step) &&
            badlogs++ < 3)
          fprintf(stderr, "  %s: task %d ran after %d failed\n", what, (int)t,
                  (int)k);
      /* A failed wait stops before execute; a failed record after it. */
      if (wait_fail) {
        for (int32_t i = 0; i < h->log[k].n; i++)
          if (h->log[k].ev[i] < 0 && badlogs++ < 3)
            fprintf(stderr, "  %s: task %d executed after its wait failed\n",
                    what, (int)k);
      } else if (!check_log(h, k) && badlogs++ < 3) {
        fprintf(stderr, "  %s: failing task %d: wrong hook calls\n", what,
                (int)k);
      }
      atomic_store(&h->chk.calls, 0);
      free(reach);
    }
  }
  EXPECT_INT_EQ(badlogs, 0);
}

static void
hooks_case(const struct mode *md, const bt_graph_t *g, const struct topo *tp,
           int fail_kind, const char *what)
{
  struct hooks h;
  bt_runtime_t *rt;
  bt_exec_t *ex;
  int32_t k = -1;

  memset(&h, 0, sizeof h);
  check_init(&h.chk, tp);
  h.log = xcalloc((size_t)tp->ntasks, sizeof *h.log);
  h.fail_record_task = h.fail_wait_task = -1;
  h.fail_step = 3;
  /* fail_kind 1: a record on device 0 or 1 fails; 2: a wait does. */
  for (int32_t t = tp->ntasks / 3; fail_kind && t < tp->ntasks && k < 0; t++) {
    int cross = 0;
    for (int32_t j = tp->pred_first[t]; j < tp->pred_first[t + 1]; j++)
      cross |= tp->device[tp->pred[j]] != tp->device[t];
    if (tp->device[t] < 2 && (fail_kind == 1 || cross))
      k = t;
  }
  if (fail_kind == 1)
    h.fail_record_task = k;
  else if (fail_kind == 2)
    h.fail_wait_task = k;
  if (fail_kind && k < 0)
    test_fail(__FILE__, __LINE__, "%s: no task to fail", what);
  if (!fail_kind)
    h.fail_step = 0;
  rt = hooks_runtime(md, &h);
  ex = rt ? make_exec(rt, g, tp, &h.chk, 0) : NULL;
  /* make_exec passed the check as user: the same pointer as &h. */
  if (ex != NULL)
    hooks_steps(ex, &h, k, what);
  EXPECT_INT_EQ(atomic_load(&h.bad), 0);
  EXPECT_INT_EQ(atomic_load(&h.chk.violations), 0);
  EXPECT_STATUS(bt_exec_destroy(ex), BT_OK, NULL);
  EXPECT_STATUS(bt_runtime_destroy(rt), BT_OK, NULL);
  free(h.log);
  check_deinit(&h.chk);
}

TEST(runtime_device_hooks_order_and_errors)
{
  struct run r;
  struct topo tg, td;

  if (run_schedule("1f1b", 4, 1, 8, &unit_costs, &r) != BT_OK) {
    test_fail(__FILE__, __LINE__, "1f1b: %s", r.err.message);
    run_free(&r);
    return;
  }
  topo_from_graph(r.graph, &tg);
  topo_random_dag(300, 4, 9, &td);
  for (int mi = 0; mi < N(modes2); mi++)
    for (int fail_kind = 0; fail_kind < 3; fail_kind++) {
      hooks_case(&modes2[mi], r.graph, &tg, fail_kind, "1f1b");
      hooks_case(&modes2[mi], NULL, &td, fail_kind, "DAG");
    }
  topo_free(&tg);
  topo_free(&td);
  run_free(&r);
}

/* ---- empty DAG
 * ------------------------------------------------------------------ */

TEST(runtime_empty_dag)
{
  bt_dag_t dag = BT_DAG_INIT;

  for (int mi = 0; mi < N(modes); mi++) {
    bt_runtime_t *rt = make_runtime(&modes[mi], 3);
    bt_exec_config_t cfg = BT_EXEC_CONFIG_INIT;
    bt_exec_t *ex = NULL;
    bt_error_t err;
    bt_slice_t sl[1];
    if (rt == NULL)
      break;
    cfg.fn = noop_task;
    cfg.trace = 1;
    ASSERT_INT_EQ(bt_exec_create_dag(rt, &dag, &cfg, &ex, &err), BT_OK);
    EXPECT_INT_EQ(bt_exec_task_count(ex), 0);
    for (int step = 0; step < 5; step++)
      EXPECT_STATUS(bt_exec_run(ex, &err), BT_OK, &err);
    EXPECT_INT_EQ(bt_exec_slices(ex, sl), BT_OK);
    EXPECT_INT_EQ(bt_exec_destroy(ex), BT_OK);
    EXPECT_INT_EQ(bt_runtime_destroy(rt), BT_OK);
  }
}

/* ---- DAG labels: actions and names -----------------------------------------
 * A DAG's tasks may carry plan actions (given to the task, recorded in
 * slices, naming the task in errors) and names (naming it instead). */

static int
label_task(const bt_task_call_t *call, char *errbuf, size_t errlen)
{
  int *fail = call->user;

  if (call->task == 0 && call->action.kind != BT_ACT_IDLE &&
      (call->action.stage != 1 ||
                          call->action.kind != BT_ACT_B ||
                          call->action.microbatch != 3))
    return BT_EINVAL;
  if (call->task == *fail) {
    snprintf(errbuf, errlen, "labelled failure");
    return BT_EIO;
  }
  return 0;
}

TEST(dag_labels)
{
  int32_t device[3] = {0, 1, 0}, src[2] = {0, 1}, dst[2] = {1, 2};
  bt_action_t idle = {.stage = -1, .kind = BT_ACT_IDLE, .microbatch = -1};
  bt_action_t actions[3] = {{.stage = 1, .kind = BT_ACT_B, .microbatch = 3},
                            idle, idle};
  char name1[16];
  const char *names[3] = {NULL, name1, NULL};
  bt_runtime_config_t rc = BT_RUNTIME_CONFIG_INIT;
  bt_exec_config_t ec = BT_EXEC_CONFIG_INIT;
  bt_dag_t dag = BT_DAG_INIT;
  bt_runtime_t *rt = NULL;
  bt_exec_t *ex = NULL;
  bt_error_t err = {0};
  bt_slice_t sl[3];
  int fail = -1;

  snprintf(name1, sizeof name1, "tie wte");
  rc.devices = 2;
  rc.threads = 2;
  ASSERT_TRUE(bt_runtime_create(&rc, &rt, &err) == BT_OK);
  dag.tasks = 3;
  dag.task_device = device;
  dag.edges = 2;
  dag.src = src;
  dag.dst = dst;
  dag.actions = actions;
  dag.names = names;
  ec.fn = label_task;
  ec.user = &fail;
  ec.trace = 1;
  ASSERT_TRUE(bt_exec_create_dag(rt, &dag, &ec, &ex, &err) == BT_OK);
  memset(name1, 0, sizeof name1); /* the exec holds its own copy */
  if (bt_exec_run(ex, &err) != BT_OK)
    test_fail(__FILE__, __LINE__, "%s", err.message);
  ASSERT_TRUE(bt_exec_slices(ex, sl) == BT_OK);
  EXPECT_TRUE(sl[0].action.stage == 1 && sl[0].action.kind == BT_ACT_B &&
              sl[0].action.microbatch == 3);
  fail = 0;
  EXPECT_INT_EQ(bt_exec_run(ex, &err), BT_EIO);
  EXPECT_TRUE(strcmp(err.message, "1B3 on cpu:0: labelled failure") == 0);
  fail = 1;
  EXPECT_INT_EQ(bt_exec_run(ex, &err), BT_EIO);
  EXPECT_TRUE(strcmp(err.message, "tie wte on cpu:1: labelled failure") == 0);
  fail = 2;
  EXPECT_INT_EQ(bt_exec_run(ex, &err), BT_EIO);
  EXPECT_TRUE(strcmp(err.message, "task 2 on cpu:0: labelled failure") == 0);
  EXPECT_INT_EQ(bt_exec_destroy(ex), BT_OK);
  /* A caller built against the first bt_dag_t: labels not read. */
  dag.size = offsetof(bt_dag_t, dst) + sizeof(const int32_t *);
  ASSERT_TRUE(bt_exec_create_dag(rt, &dag, &ec, &ex, &err) == BT_OK);
  fail = 1;
  EXPECT_INT_EQ(bt_exec_run(ex, &err), BT_EIO);
  EXPECT_TRUE(strcmp(err.message, "task 1 on cpu:1: labelled failure") == 0);
  EXPECT_INT_EQ(bt_exec_destroy(ex), BT_OK);
  EXPECT_INT_EQ(bt_runtime_destroy(rt), BT_OK);
}

/* ---- BT_TASK_RETRY -----------------------------------------------------------
 * Task 0 (device 0) waits for a flag that task 1 (device 1, no
 * dependencies) sets, by retrying; task 2 depends on task 0.  With one pool
 * thread the retrying actor must hand the thread over, or task 1 never
 * runs.  A task that gives up ends the step with its error. */

struct retry_state {
  _Atomic int flag, tries, order_ok, give_up;
};

static int
retry_task(const bt_task_call_t *call, char *errbuf, size_t errlen)
{
  struct retry_state *st = call->user;

  switch (call->task) {
  case 0:
    if (atomic_load(&st->give_up) && atomic_load(&st->tries) >= 3) {
      snprintf(errbuf, errlen, "gave up waiting");
      return BT_ETIMEDOUT;
    }
    if (!atomic_load(&st->flag)) {
      atomic_fetch_add(&st->tries, 1);
      return BT_TASK_RETRY;
    }
    return 0;
  case 1:
    if (!atomic_load(&st->give_up))
      atomic_store(&st->flag, 1);
    return 0;
  default:
    atomic_store(&st->order_ok, atomic_load(&st->flag));
    return 0;
  }
}

TEST(task_retry)
{
  int32_t device[3] = {0, 1, 0}, src[1] = {0}, dst[1] = {2};

  for (int mode = 0; mode < 2; mode++)
    for (int32_t threads = 1; threads <= 2; threads++) {
      bt_runtime_config_t rc = BT_RUNTIME_CONFIG_INIT;
      bt_exec_config_t ec = BT_EXEC_CONFIG_INIT;
      bt_dag_t dag = BT_DAG_INIT;
      bt_runtime_t *rt = NULL;
      bt_exec_t *ex = NULL;
      bt_error_t err = {0};
      struct retry_state st;

      if (mode == BT_RUNTIME_DEDICATED && threads == 2)
        continue;
      rc.devices = 2;
      rc.threads = threads;
      rc.mode = mode;
      ASSERT_TRUE(bt_runtime_create(&rc, &rt, &err) == BT_OK);
      dag.tasks = 3;
      dag.task_device = device;
      dag.edges = 1;
      dag.src = src;
      dag.dst = dst;
      ec.fn = retry_task;
      ec.user = &st;
      ASSERT_TRUE(bt_exec_create_dag(rt, &dag, &ec, &ex, &err) == BT_OK);
      for (int step = 0; step < 20; step++) {
        atomic_store(&st.flag, 0);
        atomic_store(&st.tries, 0);
        atomic_store(&st.order_ok, 0);
        atomic_store(&st.give_up, step % 5 == 4);
        if (step % 5 == 4) {
          EXPECT_INT_EQ(bt_exec_run(ex, &err), BT_ETIMEDOUT);
          EXPECT_TRUE(strcmp(err.message, "task 0 on cpu:0: gave up waiting") ==
                      0);
        } else {
          EXPECT_INT_EQ(bt_exec_run(ex, &err), BT_OK);
          EXPECT_INT_EQ(atomic_load(&st.order_ok), 1);
        }
      }
      EXPECT_INT_EQ(bt_exec_destroy(ex), BT_OK);
      EXPECT_INT_EQ(bt_runtime_destroy(rt), BT_OK);
    }
}
