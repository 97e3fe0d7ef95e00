/* baton-bench overhead: the runtime's cost per task, on empty tasks.
 *
 * Same DAG shapes (bench/shapes.h) and the same empty task as the peers in
 * bench/peers/ (oneTBB flow graph, OpenMP tasks, StarPU): each task checks
 * that its predecessors finished and records itself, so a violated
 * dependency is counted.  Reports the median build and run time per task
 * over --repeat repetitions, in one JSON line with --json. */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "baton/baton.h"
#include "baton/runtime.h"
#include "bench.h"
#include "shapes.h"

struct ctx {
  const struct bt_shape *shape;
  _Atomic unsigned char *done;
  _Atomic long violations;
};

static int
empty_task(const bt_task_call_t *call, char *errbuf, size_t errlen)
{
  struct ctx *c = call->user;
  int32_t t = call->task;

  (void)errbuf;
  (void)errlen;
  for (int32_t j = c->shape->pred_first[t]; j < c->shape->pred_first[t + 1];
       j++)
    if (!atomic_load_explicit(&c->done[c->shape->pred[j]],
                              memory_order_relaxed))
      atomic_fetch_add_explicit(&c->violations, 1, memory_order_relaxed);
  atomic_store_explicit(&c->done[t], 1, memory_order_relaxed);
  return 0;
}




static int
int_arg(const char *opt, const char *v, int *out)
{
  char *end;
  long x;

  errno = 0;
  x = v ? strtol(v, &end, 10) : 0;
  if (v == NULL || errno != 0 || *end != '\0' || x < 1 || x > 10000000) {
    fprintf(stderr, "baton-bench overhead: %s needs a whole number >= 1\n",
            opt);
    return -1;
  }
  *out = (int)x;
  return 0;
}

struct args {
  const char *shape, *mode;
  int devices, microbatches, threads, repeat, json;
};

static int
parse(int argc, char **argv, struct args *a)
{
  for (int i = 2; i < argc; i++) {
    const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int rc = 0;
    if (strcmp(o, "--json") == 0) {
      a->json = 1;
      continue;
    }
    if (strcmp(o, "--shape") == 0 && v)
      a->shape = v;
    else if (strcmp(o, "--mode") == 0 && v)
      a->mode = v;
    else if (strcmp(o, "--devices") == 0)
      rc = int_arg(o, v, &a->devices);
    else if (strcmp(o, "--microbatches") == 0)
      rc = int_arg(o, v, &a->microbatches);
    else if (strcmp(o, "--threads") == 0)
      rc = int_arg(o, v, &a->threads);
    else if (strcmp(o, "--repeat") == 0)
      rc = int_arg(o, v, &a->repeat);
    else {
      fprintf(stderr,
              "baton-bench overhead: unknown option '%s'\nusage: baton-bench "
              "overhead --shape chain|independent|gpipe|1f1b --devices P "
              "--microbatches M --threads T --repeat R [--mode pool|dedicated] "
              "[--json]\n",
              o);
      return -1;
    }
    if (rc != 0)
      return -1;
    i++;
  }
  if (strcmp(a->mode, "pool") != 0 && strcmp(a->mode, "dedicated") != 0) {
    fprintf(stderr, "baton-bench overhead: --mode is pool or dedicated\n");
    return -1;
  }
  return 0;
}

int
bench_overhead(int argc, char **argv)
{
  struct args a = {"gpipe", "pool", 8, 64, 2, 200, 0};
  bt_runtime_config_t rc = BT_RUNTIME_CONFIG_INIT;
  bt_exec_config_t ec = BT_EXEC_CONFIG_INIT;
  bt_dag_t dag = BT_DAG_INIT;
  struct bt_shape shape;
  struct ctx c;
  bt_runtime_t *rt = NULL;
  bt_exec_t *ex = NULL;
  double *build, *run;
  bt_error_t err;
  int status = 1;

  if (parse(argc, argv, &a) != 0)
    return 2;
  if (bt_shape_build(a.shape, a.devices, a.microbatches, &shape) != 0) {
    fprintf(stderr, "baton-bench overhead: unknown shape '%s' (chain, "
            "independent, gpipe, 1f1b)\n", a.shape);
    return 2;
  }
  c.shape = &shape;
  c.done = calloc((size_t)shape.tasks, sizeof *c.done);
  atomic_init(&c.violations, 0);
  build = malloc((size_t)a.repeat * sizeof *build);
  run = malloc((size_t)a.repeat * sizeof *run);
  if (c.done == NULL || build == NULL || run == NULL) {
    fprintf(stderr, "baton-bench overhead: out of memory\n");
    goto out;
  }
  rc.devices = a.devices;
  rc.threads = a.threads;
  rc.mode = strcmp(a.mode, "pool") == 0 ? BT_RUNTIME_POOL
                                        : BT_RUNTIME_DEDICATED;
  if (bt_runtime_create(&rc, &rt, &err) != BT_OK) {
    fprintf(stderr, "baton-bench overhead: %s\n", err.message);
    goto out;
  }
  dag.tasks = shape.tasks;
  dag.task_device = shape.device;
  dag.edges = (size_t)shape.edges;
  dag.src = shape.src;
  dag.dst = shape.dst;
  ec.fn = empty_task;
  ec.user = &c;
  for (int r = 0; r < a.repeat; r++) {
    double t0 = bench_now_s();
    if (bt_exec_create_dag(rt, &dag, &ec, &ex, &err) != BT_OK) {
      fprintf(stderr, "baton-bench overhead: %s\n", err.message);
      goto out;
    }
    build[r] = (bench_now_s() - t0) * 1e9 / shape.tasks;
    if (r + 1 < a.repeat) {
      bt_exec_destroy(ex);
      ex = NULL;
    }
  }
  for (int r = -2; r < a.repeat; r++) { /* two warm-up steps */
    double t0;
    for (int32_t t = 0; t < shape.tasks; t++)
      atomic_store_explicit(&c.done[t], 0, memory_order_relaxed);
    t0 = bench_now_s();
    if (bt_exec_run(ex, &err) != BT_OK) {
      fprintf(stderr, "baton-bench overhead: %s\n", err.message);
      goto out;
    }
    if (r >= 0)
      run[r] = (bench_now_s() - t0) * 1e9 / shape.tasks;
  }
  {
    double b = bench_median(build, a.repeat), x = bench_median(run, a.repeat);
    long v = atomic_load(&c.violations);
    if (a.json)
      printf("{\"runtime\":\"baton\",\"mode\":\"%s\",\"shape\":\"%s\","
             "\"devices\":%d,\"microbatches\":%d,\"threads\":%d,\"tasks\":%d,"
             "\"edges\":%d,\"repeat\":%d,\"build_ns_per_task\":%.1f,"
             "\"run_ns_per_task\":%.1f,\"violations\":%ld}\n",
             a.mode, a.shape, a.devices, a.microbatches, a.threads,
             shape.tasks, shape.edges, a.repeat, b, x, v);
    else
      printf("baton (%s) %s p=%d m=%d threads=%d: %d tasks, build %.1f "
             "ns/task, run %.1f ns/task, %ld violations\n",
             a.mode, a.shape, a.devices, a.microbatches, a.threads,
             shape.tasks, b, x, v);
    status = v == 0 ? 0 : 1;
  }
out:
  bt_exec_destroy(ex);
  bt_runtime_destroy(rt);
  bt_shape_free(&shape);
  free((void *)(uintptr_t)c.done);
  free(build);
  free(run);
  return status;
}
