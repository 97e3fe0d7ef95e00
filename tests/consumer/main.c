/* Uses only the installed public API: plans 1F1B for p=4, m=8, simulates
 * it and checks the known makespan (m+p-1)(F+B+W) = 33. */
#include <stdio.h>

#include <baton/baton.h>

int
main(void)
{
  bt_schedule_params_t params = BT_SCHEDULE_PARAMS_INIT;
  bt_graph_config_t gc = BT_GRAPH_CONFIG_INIT;
  bt_schedule_t *s = NULL;
  bt_plan_t *plan = NULL;
  bt_graph_t *g = NULL;
  bt_sim_t *sim = NULL;
  bt_error_t err;
  int ok = 0;

  params.devices = 4;
  params.stages = 4;
  params.microbatches = 8;
  if (bt_schedule_builtin("1f1b", &s, &err) == BT_OK &&
      bt_schedule_make_plan(s, &params, &plan, &err) == BT_OK) {
    gc.plan = plan;
    if (bt_graph_create(&gc, &g, &err) == BT_OK &&
        bt_sim_run(g, NULL, &sim, &err) == BT_OK)
      ok = bt_sim_makespan(sim) == 33.0;
  }
  printf("baton %s: 1f1b makespan %g (%s)\n", bt_version_string(),
         sim ? bt_sim_makespan(sim) : -1.0, ok ? "ok" : err.message);
  bt_sim_destroy(sim);
  bt_graph_destroy(g);
  bt_plan_destroy(plan);
  bt_schedule_destroy(s);
  return ok ? 0 : 1;
}
