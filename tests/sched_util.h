/* Helpers for schedule tests: plan, build the graph, simulate. */
#ifndef BATON_TESTS_SCHED_UTIL_H
#define BATON_TESTS_SCHED_UTIL_H

#include "baton/baton.h"

/* Uniform per-stage costs and memory for a run. */
struct run_costs {
  double f, b, w, mem_b, mem_w, latency;
  double mem_limit; /* for `auto`; 0 = none */
};

/* Everything a test looks at after one simulated run. */
struct run {
  bt_plan_t *plan;
  bt_graph_t *graph;
  bt_sim_t *sim;
  double peak_max;
  bt_error_t err;
};

/* Plans `name` (built-in, .so or .csv) for p, v, m with uniform costs and
 * simulates it.  Returns the first failing status; the run's err says why.
 * Always call run_free afterwards. */
bt_status run_schedule(const char *name, int p, int v, int m,
                       const struct run_costs *c, struct run *r);

/* Simulates an existing plan with uniform costs (loop placement). */
bt_status run_plan(bt_plan_t *plan, const struct run_costs *c, struct run *r);

void run_free(struct run *r);

#endif /* BATON_TESTS_SCHED_UTIL_H */
