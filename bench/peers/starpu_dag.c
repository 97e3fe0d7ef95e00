/* StarPU peer of `baton-bench overhead`.  One CPU-only task per DAG node
 * (codelet with no buffers, the task id passed as the cl_arg pointer), the
 * edges declared with starpu_task_declare_deps_array.  Tasks are created
 * with destroy = 0 and the same task graph is resubmitted for every run
 * (StarPU re-arms declared task dependencies when a task is resubmitted).
 *
 *   build: starpu_task_create + fields + starpu_task_declare_deps_array for
 *          every task (median over R fresh graphs; each is submitted and
 *          waited for once, untimed, then destroyed);
 *   run:   starpu_task_submit of every task in a topological order +
 *          starpu_task_wait_for_all (median over R runs of one graph, after
 *          2 warm-up runs).
 *
 * Workers: conf.ncpus = T CPU workers, no CUDA/OpenCL/MIC/MPI workers, the
 * conf taking precedence over STARPU_NCPU & co.  Scheduler: "lws" unless
 * the environment variable BATON_PEER_STARPU_SCHED names another one. */
#include <starpu.h>

#include "common.h"

static void
empty_cpu(void *buffers[], void *cl_arg)
{
  (void)buffers;
  pr_task_body((int32_t)(intptr_t)cl_arg);
}

static struct starpu_codelet empty_cl;

struct sp_dag {
  struct starpu_task **task;   /* [tasks] */
  struct starpu_task **deps;   /* [edges] scratch for declare_deps */
};

static int
sp_build(struct sp_dag *d)
{
  const int32_t n = pr_shape.tasks;
  const int32_t *pf = pr_shape.pred_first, *pred = pr_shape.pred;
  for (int32_t t = 0; t < n; t++) {
    struct starpu_task *tk = starpu_task_create();
    if (tk == NULL)
      return -1;
    tk->cl = &empty_cl;
    tk->cl_arg = (void *)(intptr_t)t;
    tk->cl_arg_size = 0;
    tk->cl_arg_free = 0;
    tk->destroy = 0;
    d->task[t] = tk;
  }
  for (int32_t t = 0; t < n; t++) {
    int32_t np = pf[t + 1] - pf[t];
    if (np == 0)
      continue;
    for (int32_t i = 0; i < np; i++)
      d->deps[i] = d->task[pred[pf[t] + i]];
    starpu_task_declare_deps_array(d->task[t], (unsigned)np, d->deps);
  }
  return 0;
}

static int
sp_run(struct sp_dag *d, const int32_t *order)
{
  for (int32_t i = 0; i < pr_shape.tasks; i++) {
    int ret = starpu_task_submit(d->task[order[i]]);
    if (ret != 0) {
      fprintf(stderr, "starpu_task_submit: %d\n", ret);
      return -1;
    }
  }
  return starpu_task_wait_for_all();
}

static void
sp_destroy(struct sp_dag *d)
{
  for (int32_t t = 0; t < pr_shape.tasks; t++)
    if (d->task[t] != NULL) {
      starpu_task_destroy(d->task[t]);
      d->task[t] = NULL;
    }
}

int
main(int argc, char **argv)
{
  struct pr_args a;
  struct starpu_conf conf;
  struct sp_dag d;
  int32_t *order;
  int64_t *build, *run;
  const char *sched = getenv("BATON_PEER_STARPU_SCHED");
  int rc;

  pr_init(argc, argv, &a);
  order = malloc(((size_t)pr_shape.tasks + 1) * sizeof *order);
  d.task = calloc((size_t)pr_shape.tasks + 1, sizeof *d.task);
  d.deps = malloc(((size_t)pr_shape.edges + 1) * sizeof *d.deps);
  build = malloc((size_t)a.repeat * sizeof *build);
  run = malloc((size_t)a.repeat * sizeof *run);
  if (order == NULL || d.task == NULL || d.deps == NULL || build == NULL ||
      run == NULL) {
    fprintf(stderr, "%s: out of memory\n", argv[0]);
    return 2;
  }
  if (pr_topo_order(&pr_shape, order) != 0) {
    fprintf(stderr, "%s: shape is not a DAG\n", argv[0]);
    return 2;
  }

  starpu_codelet_init(&empty_cl);
  empty_cl.where = STARPU_CPU;
  empty_cl.cpu_funcs[0] = empty_cpu;
  empty_cl.nbuffers = 0;
  empty_cl.name = "baton_peer_empty";

  starpu_conf_init(&conf);
  conf.precedence_over_environment_variables = 1;
  conf.sched_policy_name = sched != NULL && sched[0] ? sched : "lws";
  conf.ncpus = a.threads;
  conf.reserve_ncpus = 0;
  conf.ncuda = 0;
  conf.nopencl = 0;
  conf.nmic = 0;
  conf.nmpi_ms = 0;
  conf.calibrate = 0;
  conf.bus_calibrate = 0;
  rc = starpu_init(&conf);
  if (rc != 0) {
    fprintf(stderr, "%s: starpu_init: %d\n", argv[0], rc);
    return 2;
  }
  if ((int)starpu_cpu_worker_get_count() != a.threads)
    fprintf(stderr, "%s: warning: %u CPU workers, asked for %d\n", argv[0],
            starpu_cpu_worker_get_count(), a.threads);

  /* Build times: fresh graphs. */
  for (int r = 0; r < a.repeat; r++) {
    int64_t t0 = pr_now_ns();
    if (sp_build(&d) != 0) {
      fprintf(stderr, "%s: starpu_task_create failed\n", argv[0]);
      return 2;
    }
    build[r] = pr_now_ns() - t0;
    pr_reset_done();
    if (sp_run(&d, order) != 0)
      return 2;
    pr_check_all_done();
    sp_destroy(&d);
  }

  /* Run times: one graph, resubmitted. */
  if (sp_build(&d) != 0)
    return 2;
  for (int r = -2; r < a.repeat; r++) {
    int64_t t0, dt;
    pr_reset_done();
    t0 = pr_now_ns();
    if (sp_run(&d, order) != 0)
      return 2;
    dt = pr_now_ns() - t0;
    if (r >= 0)
      run[r] = dt;
    pr_check_all_done();
  }
  sp_destroy(&d);
  starpu_shutdown();

  rc = pr_report(&a, "starpu", pr_median(build, a.repeat),
                 pr_median(run, a.repeat), NULL);
  free(run);
  free(build);
  free(d.deps);
  free(d.task);
  free(order);
  pr_fini();
  return rc;
}
