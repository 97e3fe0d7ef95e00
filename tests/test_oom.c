/* Out-of-memory paths: the test binary is linked with --wrap for malloc,
 * calloc and realloc, so every allocation the library makes goes through a
 * counter that can fail the Nth one.  Each operation is run with N = 0, 1,
 * 2, ... until it succeeds; every failure must be a clean BT_ENOMEM (and,
 * under ASan, leak nothing). */
#include <stdint.h>

#include "baton/baton.h"
#include "sched_util.h"
#include "failalloc.h"
#include "test.h"

static const char csv[] =
    "# baton plan v1: devices=2 stages=2 microbatches=3\n"
    "0F0,0F1,0B0,0F2,0B1,0B2\n"
    "1F0,1B0,1F1,1B1,1F2,1B2\n";

static bt_status
op_parse_csv(void)
{
  bt_plan_t *plan = NULL;
  bt_error_t err;
  bt_status rc = bt_plan_parse_csv(csv, sizeof csv - 1, NULL, &plan, &err);

  bt_plan_destroy(plan);
  return rc;
}

static bt_status
plan_graph_sim(const char *name, int p, int v, int m)
{
  bt_schedule_params_t params = BT_SCHEDULE_PARAMS_INIT;
  bt_graph_config_t gc = BT_GRAPH_CONFIG_INIT;
  bt_schedule_t *s = NULL;
  bt_plan_t *plan = NULL;
  bt_graph_t *g = NULL;
  bt_sim_t *sim = NULL;
  bt_error_t err;
  bt_status rc;

  params.devices = p;
  params.virtual_stages = v;
  params.stages = p * v;
  params.microbatches = m;
  rc = bt_schedule_builtin(name, &s, &err);
  if (rc == BT_OK)
    rc = bt_schedule_make_plan(s, &params, &plan, &err);
  if (rc == BT_OK) {
    gc.plan = plan;
    rc = bt_graph_create(&gc, &g, &err);
  }
  if (rc == BT_OK)
    rc = bt_sim_run(g, NULL, &sim, &err);
  bt_sim_destroy(sim);
  bt_graph_destroy(g);
  bt_plan_destroy(plan);
  bt_schedule_destroy(s);
  return rc;
}

static bt_status
op_1f1b(void)
{
  return plan_graph_sim("1f1b", 3, 1, 5);
}

static bt_status
op_interleaved(void)
{
  return plan_graph_sim("interleaved", 2, 2, 4);
}

static bt_status
op_zb_h2(void)
{
  return plan_graph_sim("zb-h2", 3, 1, 6);
}

static bt_status
op_auto(void)
{
  return plan_graph_sim("auto", 2, 1, 3);
}

static bt_status
op_skips_graph(void)
{
  static const bt_skip_decl_t decls[] = {{0, BT_SKIP_STASH, "ns", "a"},
                                         {3, BT_SKIP_POP, "ns", "a"},
                                         {1, BT_SKIP_STASH, NULL, "b"},
                                         {2, BT_SKIP_POP, NULL, "b"}};
  static const char plan4[] = "0F0,0B0\n1F0,1B0\n2F0,2B0\n3F0,3B0\n";
  bt_graph_config_t gc = BT_GRAPH_CONFIG_INIT;
  bt_skip_layout_t *skips = NULL;
  bt_plan_t *plan = NULL;
  bt_graph_t *g = NULL;
  bt_error_t err;
  bt_status rc;

  rc = bt_skip_layout_create(decls, 4, 4, NULL, &skips, &err);
  if (rc == BT_OK)
    rc = bt_plan_parse_csv(plan4, sizeof plan4 - 1, NULL, &plan, &err);
  if (rc == BT_OK) {
    gc.plan = plan;
    gc.skips = skips;
    rc = bt_graph_create(&gc, &g, &err);
  }
  bt_graph_destroy(g);
  bt_plan_destroy(plan);
  bt_skip_layout_destroy(skips);
  return rc;
}

static bt_status
op_timelines(void)
{
  bt_slice_t slices[2] = {{{0, BT_ACT_F, 0}, 0, 0.0, 1.0},
                          {{0, BT_ACT_B, 0}, 0, 1.0, 3.0}};
  bt_timeline_t tl = BT_TIMELINE_INIT;
  FILE *f = tmpfile();
  bt_status rc;

  if (f == NULL)
    return BT_EIO;
  tl.title = "t";
  tl.devices = 1;
  tl.stages = 1;
  tl.slices = slices;
  tl.count = 2;
  rc = bt_timeline_write_chrome(f, &tl, 1, NULL);
  if (rc == BT_OK)
    rc = bt_timeline_write_svg(f, &tl, 1, NULL);
  fclose(f);
  return rc;
}

TEST(oom_parse_csv)
{
  EXPECT_TRUE(failalloc_sweep("parse_csv", op_parse_csv) > 0);
}

TEST(oom_plan_graph_sim_1f1b)
{
  EXPECT_TRUE(failalloc_sweep("1f1b", op_1f1b) > 0);
}

TEST(oom_plan_graph_sim_interleaved)
{
  EXPECT_TRUE(failalloc_sweep("interleaved", op_interleaved) > 0);
}

TEST(oom_plan_graph_sim_zb_h2)
{
  EXPECT_TRUE(failalloc_sweep("zb-h2", op_zb_h2) > 0);
}

TEST(oom_plan_graph_sim_auto)
{
  EXPECT_TRUE(failalloc_sweep("auto", op_auto) > 0);
}

TEST(oom_skips_and_graph)
{
  EXPECT_TRUE(failalloc_sweep("skips+graph", op_skips_graph) > 0);
}

TEST(oom_timeline_writers)
{
  EXPECT_TRUE(failalloc_sweep("timelines", op_timelines) >= 0);
}
