#include <stdlib.h>
#include <string.h>

#include "sched_util.h"

static double *
fill(int n, double x)
{
  double *a = malloc((size_t)n * sizeof *a);

  for (int i = 0; a != NULL && i < n; i++)
    a[i] = x;
  return a;
}

/* a[0..4] = per-stage F, B, W, M_B, M_W arrays of S entries. */
static void
fill_costs(int S, const struct run_costs *c, double *a[5])
{
  a[0] = fill(S, c->f);
  a[1] = fill(S, c->b);
  a[2] = fill(S, c->w);
  a[3] = fill(S, c->mem_b);
  a[4] = fill(S, c->mem_w);
}

static bt_status
simulate(const struct run_costs *c, struct run *r)
{
  bt_graph_config_t gc = BT_GRAPH_CONFIG_INIT;
  bt_sim_config_t sc = BT_SIM_CONFIG_INIT;
  int S = bt_plan_stages(r->plan);
  double *a[5];
  bt_status rc;

  gc.plan = r->plan;
  rc = bt_graph_create(&gc, &r->graph, &r->err);
  if (rc != BT_OK)
    return rc;
  fill_costs(S, c, a);
  sc.cost_f = a[0];
  sc.cost_b = a[1];
  sc.cost_w = a[2];
  sc.mem_b = a[3];
  sc.mem_w = a[4];
  sc.comm_latency = c->latency;
  rc = bt_sim_run(r->graph, &sc, &r->sim, &r->err);
  for (int k = 0; k < 5; k++)
    free(a[k]);
  if (rc != BT_OK)
    return rc;
  r->peak_max = 0.0;
  for (int d = 0; d < bt_plan_devices(r->plan); d++)
    if (bt_sim_peak_mem(r->sim, d) > r->peak_max)
      r->peak_max = bt_sim_peak_mem(r->sim, d);
  return BT_OK;
}

bt_status
run_schedule(const char *name, int p, int v, int m, const struct run_costs *c,
             struct run *r)
{
  bt_schedule_params_t params = BT_SCHEDULE_PARAMS_INIT;
  bt_schedule_t *s = NULL;
  int S = p * v;
  double *a[5];
  bt_status rc;

  memset(r, 0, sizeof *r);
  rc = bt_schedule_open(name, &s, &r->err);
  if (rc != BT_OK)
    return rc;
  params.devices = p;
  params.virtual_stages = v;
  params.stages = S;
  params.microbatches = m;
  fill_costs(S, c, a);
  params.cost_f = a[0];
  params.cost_b = a[1];
  params.cost_w = a[2];
  params.mem_b = a[3];
  params.mem_w = a[4];
  params.comm_latency = c->latency;
  params.mem_limit = c->mem_limit;
  rc = bt_schedule_make_plan(s, &params, &r->plan, &r->err);
  for (int k = 0; k < 5; k++)
    free(a[k]);
  bt_schedule_destroy(s);
  if (rc != BT_OK)
    return rc;
  return simulate(c, r);
}

bt_status
run_plan(bt_plan_t *plan, const struct run_costs *c, struct run *r)
{
  memset(r, 0, sizeof *r);
  r->plan = plan;
  return simulate(c, r);
}

void
run_free(struct run *r)
{
  bt_sim_destroy(r->sim);
  bt_graph_destroy(r->graph);
  bt_plan_destroy(r->plan);
  memset(r, 0, sizeof *r);
}
