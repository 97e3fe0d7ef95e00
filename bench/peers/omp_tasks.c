/* OpenMP-tasks peer of `baton-bench overhead`.  There is no persistent
 * graph: every run, inside one `parallel num_threads(T)` + `single`, the
 * single thread spawns one task per DAG node in a topological order
 * (computed once, untimed) with depend(out: sent[t]) and depend(in: sent[p])
 * for each predecessor p; the parallel region's implicit barrier waits for
 * all of them.  The shapes have at most 3 predecessors per task, so the
 * depend clauses are spelled out for 0..3; more falls back to an OpenMP 5.0
 * depend(iterator(...)) clause.  build_ns_per_task is 0 ("no persistent
 * graph"). */
#include <omp.h>

#include "common.h"

static char *sent;            /* [tasks] dependence sentinels */
static int32_t *order;        /* [tasks] topological order */

static void
run_dag(int threads)
{
  const int32_t n = pr_shape.tasks;
  const int32_t *pf = pr_shape.pred_first, *pred = pr_shape.pred;
#pragma omp parallel num_threads(threads) default(none) \
    shared(sent, order, pf, pred) firstprivate(n)
#pragma omp single
  for (int32_t i = 0; i < n; i++) {
    const int32_t t = order[i];
    const int32_t *p = pred + pf[t];
    const int32_t np = pf[t + 1] - pf[t];
    switch (np) {
    case 0:
#pragma omp task firstprivate(t) depend(out: sent[t])
      pr_task_body(t);
      break;
    case 1:
#pragma omp task firstprivate(t) depend(out: sent[t]) depend(in: sent[p[0]])
      pr_task_body(t);
      break;
    case 2:
#pragma omp task firstprivate(t) depend(out: sent[t]) \
    depend(in: sent[p[0]], sent[p[1]])
      pr_task_body(t);
      break;
    case 3:
#pragma omp task firstprivate(t) depend(out: sent[t]) \
    depend(in: sent[p[0]], sent[p[1]], sent[p[2]])
      pr_task_body(t);
      break;
    default:
#pragma omp task firstprivate(t) depend(out: sent[t]) \
    depend(iterator(j = 0 : np), in: sent[p[j]])
      pr_task_body(t);
      break;
    }
  }
}

int
main(int argc, char **argv)
{
  struct pr_args a;
  int64_t *run;
  int rc;

  pr_init(argc, argv, &a);
  sent = calloc((size_t)pr_shape.tasks + 1, 1);
  order = malloc(((size_t)pr_shape.tasks + 1) * sizeof *order);
  run = malloc((size_t)a.repeat * sizeof *run);
  if (sent == NULL || order == NULL || run == NULL) {
    fprintf(stderr, "%s: out of memory\n", argv[0]);
    return 2;
  }
  if (pr_topo_order(&pr_shape, order) != 0) {
    fprintf(stderr, "%s: shape is not a DAG\n", argv[0]);
    return 2;
  }
  omp_set_dynamic(0);

  for (int r = -2; r < a.repeat; r++) {
    int64_t t0, dt;
    pr_reset_done();
    t0 = pr_now_ns();
    run_dag(a.threads);
    dt = pr_now_ns() - t0;
    if (r >= 0)
      run[r] = dt;
    pr_check_all_done();
  }

  rc = pr_report(&a, "openmp", 0.0, pr_median(run, a.repeat),
                 "no persistent graph");
  free(run);
  free(order);
  free(sent);
  pr_fini();
  return rc;
}
