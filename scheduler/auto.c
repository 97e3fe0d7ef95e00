/* The `auto` schedule: the fastest list-scheduled plan whose simulated peak
 * activation memory fits the memory limit.  It searches families of
 * in-flight caps (a(p-s)-b per stage, and uniform caps) with every list
 * scheduler option (I or F first; in flight until I or until W), simulates each candidate with the caller's cost model and
 * keeps the best. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "baton/graph.h"
#include "baton/sim.h"
#include "schedule_internal.h"

struct candidate {
  bt_plan_t *plan;
  double makespan, peak;
};

/* Plans one cap vector and measures it; a candidate that cannot be planned
 * or simulated is dropped (makespan stays INFINITY). */
static int
try_caps(const bt_schedule_params_t *p, const int32_t *cap, int flags,
         struct candidate *c)
{
  bt_sim_config_t sc = BT_SIM_CONFIG_INIT;
  bt_graph_config_t gc = BT_GRAPH_CONFIG_INIT;
  struct bt__plan_sink_ctx ctx;
  bt_plan_sink_t sink;
  bt_graph_t *g = NULL;
  bt_sim_t *sim = NULL;
  int rc;

  c->plan = NULL;
  c->makespan = c->peak = INFINITY;
  if (bt_plan_create(p->devices, p->stages, p->microbatches, &c->plan) !=
      BT_OK)
    return BT_ENOMEM;
  bt__plan_sink_init(&ctx, c->plan, &sink);
  rc = bt__list_schedule(p, cap, flags, &sink);
  if (rc == 0) {
    gc.plan = c->plan;
    gc.stage_device = p->stage_device;
    rc = bt_graph_create(&gc, &g, NULL);
  }
  if (rc == 0) {
    sc.cost_f = p->cost_f;
    sc.cost_b = p->cost_b;
    sc.cost_w = p->cost_w;
    sc.mem_b = p->mem_b;
    sc.mem_w = p->mem_w;
    sc.comm_latency = p->comm_latency;
    rc = bt_sim_run(g, &sc, &sim, NULL);
  }
  if (rc == 0) {
    c->makespan = bt_sim_makespan(sim);
    c->peak = 0.0;
    for (int32_t d = 0; d < p->devices; d++)
      if (bt_sim_peak_mem(sim, d) > c->peak)
        c->peak = bt_sim_peak_mem(sim, d);
  }
  bt_sim_destroy(sim);
  bt_graph_destroy(g);
  return rc == BT_ENOMEM ? BT_ENOMEM : 0;
}

/* Keeps the faster of best and c under the limit (ties: less memory). */
static void
keep_better(struct candidate *best, struct candidate *c, double limit,
            double *leanest)
{
  int fits = limit <= 0.0 || c->peak <= limit * (1.0 + 1e-12);

  if (c->peak < *leanest)
    *leanest = c->peak;
  if (fits && (c->makespan < best->makespan ||
               (c->makespan == best->makespan && c->peak < best->peak))) {
    bt_plan_destroy(best->plan);
    *best = *c;
    c->plan = NULL;
  }
  bt_plan_destroy(c->plan);
  c->plan = NULL;
}

static int
emit_plan(const bt_plan_t *plan, const bt_plan_sink_t *sink)
{
  int rc = 0;

  for (int32_t d = 0; d < bt_plan_devices(plan) && rc == 0; d++)
    for (size_t i = 0; i < bt_plan_length(plan, d) && rc == 0; i++)
      rc = sink->emit(sink->ctx, d, bt_plan_action(plan, d, i));
  return rc;
}

static int
plan_auto(const bt_schedule_params_t *p, const bt_plan_sink_t *sink,
          char *errbuf, size_t errlen, void *user)
{
  struct candidate best = {NULL, INFINITY, INFINITY}, c;
  int32_t S = p->stages, m = p->microbatches;
  int32_t *cap = malloc((size_t)S * sizeof *cap);
  double leanest = INFINITY;
  int rc = 0;

  (void)user;
  if (cap == NULL)
    return BT_ENOMEM;
  if (S != p->devices) {
    snprintf(errbuf, errlen, "auto plans one stage per device (v=1; got "
             "v=%d)", (int)p->virtual_stages);
    free(cap);
    return BT_EUNSUPPORTED;
  }
  for (int32_t a = 1; a <= 3 && rc == 0; a++)
    for (int32_t b = 0; b <= 2 && rc == 0; b++)
      for (int flags = 0; flags < 4 && rc == 0; flags++) {
        for (int32_t s = 0; s < S; s++) {
          int32_t x = a * (S - s) - b;
          cap[s] = x < 1 ? 1 : (x > m ? m : x);
        }
        rc = try_caps(p, cap, flags, &c);
        keep_better(&best, &c, p->mem_limit, &leanest);
      }
  for (int32_t u = 1; u <= m && u <= 2 * S && rc == 0; u++)
    for (int flags = 0; flags < 4 && rc == 0; flags++) {
      for (int32_t s = 0; s < S; s++)
        cap[s] = u;
      rc = try_caps(p, cap, flags, &c);
      keep_better(&best, &c, p->mem_limit, &leanest);
    }
  free(cap);
  if (rc != 0) {
    bt_plan_destroy(best.plan);
    return rc;
  }
  if (best.plan == NULL) {
    snprintf(errbuf, errlen,
             "no plan keeps activation memory within the limit %g per "
             "device; the leanest one found needs %g: raise the limit or "
             "lower the per-microbatch memory",
             p->mem_limit, leanest);
    return BT_EUNSUPPORTED;
  }
  rc = emit_plan(best.plan, sink);
  bt_plan_destroy(best.plan);
  return rc;
}

const bt_schedule_desc_t bt__auto_desc = {
    BT_SCHEDULE_ABI_VERSION, sizeof(bt_schedule_desc_t), "auto",
    "fastest simulated split-backward plan within the memory limit",
    plan_auto, 1, NULL};
