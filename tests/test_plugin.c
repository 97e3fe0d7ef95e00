/* Schedule plugins: every fault plugin in tests/plugins gets its own status
 * and a message that names the file and says what to do; the shipped
 * example plugin plans and simulates; in-process descriptors get the same
 * ABI checks; built-in lookup. */
#define _GNU_SOURCE /* RTLD_NOLOAD, to check that failed loads unload */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sched_util.h"
#include "test.h"

#ifndef PLUGIN_DIR
#error "PLUGIN_DIR must name the directory of the fault plugins"
#endif
#ifndef LOOPED_BFS_PATH
#error "LOOPED_BFS_PATH must name the looped_bfs example plugin"
#endif

static const struct run_costs unit = {1, 1, 1, 1, 0, 0, 0};

static const char *
plugin(const char *name)
{
  static char buf[4][1024];
  static int next;
  char *b = buf[next++ % 4];

  snprintf(b, sizeof buf[0], "%s/%s.so", PLUGIN_DIR, name);
  return b;
}

/* True when the shared object at path is mapped in this process. */
static int
is_loaded(const char *path)
{
  void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);

  if (h == NULL)
    return 0;
  dlclose(h);
  return 1;
}

/* Loads `name` expecting `want`; checks the message names the path. */
static void
expect_load_fails(const char *name, bt_status want, bt_error_t *err,
                  const char *file, int line)
{
  const char *path = plugin(name);
  bt_schedule_t *s = NULL;
  bt_status rc;

  bt_error_clear(err);
  rc = bt_schedule_load(path, &s, err);
  if (rc != want)
    test_fail(file, line, "%s: got %s, wanted %s: %s", name,
              bt_status_name(rc), bt_status_name(want), err->message);
  if (s != NULL) {
    test_fail(file, line, "%s: a failed load returned a handle", name);
    bt_schedule_destroy(s);
  }
  if (err->status != want)
    test_fail(file, line, "%s: err->status is %s", name,
              bt_status_name(err->status));
  if (strstr(err->message, path) == NULL)
    test_fail(file, line, "%s: message does not name the path: %s", name,
              err->message);
  if (is_loaded(path))
    test_fail(file, line, "%s stayed loaded after a failed load", name);
  /* bt_schedule_open routes a .so spec to the same loader. */
  s = NULL;
  rc = bt_schedule_open(path, &s, NULL);
  if (rc != want)
    test_fail(file, line, "%s via open: got %s, wanted %s", name,
              bt_status_name(rc), bt_status_name(want));
  bt_schedule_destroy(s);
}

#define EXPECT_LOAD_FAILS(name, want, err)                                    \
  expect_load_fails((name), (want), (err), __FILE__, __LINE__)

/* Loads `name` (which must load) and plans p, v, m with unit costs. */
static bt_status
plan_with(const char *name, int p, int v, int m, bt_plan_t **out,
          bt_error_t *err)
{
  bt_schedule_params_t params = BT_SCHEDULE_PARAMS_INIT;
  bt_schedule_t *s = NULL;
  bt_status rc;

  *out = NULL;
  bt_error_clear(err);
  rc = bt_schedule_load(plugin(name), &s, err);
  if (rc != BT_OK)
    return rc;
  params.devices = p;
  params.virtual_stages = v;
  params.stages = p * v;
  params.microbatches = m;
  rc = bt_schedule_make_plan(s, &params, out, err);
  bt_schedule_destroy(s);
  return rc;
}

/* ---- the fault plugins ---------------------------------------------------- */

TEST(plugin_good_loads_plans_and_simulates)
{
  bt_schedule_t *s = NULL;
  bt_error_t err;
  struct run r;

  ASSERT_INT_EQ(bt_schedule_load(plugin("good"), &s, &err), BT_OK);
  EXPECT_TRUE(strcmp(bt_schedule_name(s), "fault-good") == 0);
  EXPECT_STR_CONTAINS(bt_schedule_summary(s), "all forwards");
  EXPECT_INT_EQ(bt_schedule_default_virtual(s), 1); /* 0 means 1 */
  EXPECT_TRUE(bt_schedule_fixed_plan(s) == NULL);
  EXPECT_TRUE(is_loaded(plugin("good")));
  bt_schedule_destroy(s);
  EXPECT_TRUE(!is_loaded(plugin("good")));

  EXPECT_STATUS(run_schedule(plugin("good"), 4, 1, 8, &unit, &r), BT_OK,
                &r.err);
  if (r.sim != NULL) {
    EXPECT_INT_EQ(bt_graph_task_count(r.graph), 4 * 8 * 2);
    EXPECT_NEAR(bt_sim_makespan(r.sim), (8 + 4 - 1) * 3, 1e-12);
  }
  run_free(&r);
}

TEST(plugin_wrong_abi_version)
{
  bt_error_t err;

  EXPECT_LOAD_FAILS("wrong_abi", BT_EPLUGIN_ABI, &err);
  EXPECT_STR_CONTAINS(err.message, "ABI version 2");
  EXPECT_STR_CONTAINS(err.message, "speaks version 1");
  EXPECT_STR_CONTAINS(err.message, "rebuild it against");
}

TEST(plugin_struct_too_small)
{
  bt_error_t err;

  EXPECT_LOAD_FAILS("small_struct", BT_EPLUGIN_ABI, &err);
  EXPECT_STR_CONTAINS(err.message, "smaller than");
  EXPECT_STR_CONTAINS(err.message, "set struct_size = "
                                   "sizeof(bt_schedule_desc_t)");
}

TEST(plugin_without_entry_symbol)
{
  bt_error_t err;

  EXPECT_LOAD_FAILS("no_symbol", BT_EPLUGIN_SYMBOL, &err);
  EXPECT_STR_CONTAINS(err.message, "does not export 'baton_schedule_entry'");
  EXPECT_STR_CONTAINS(err.message, "default visibility");
}

TEST(plugin_entry_returns_null)
{
  bt_error_t err;

  EXPECT_LOAD_FAILS("null_entry", BT_EPLUGIN_SYMBOL, &err);
  EXPECT_STR_CONTAINS(err.message, "returned NULL");
  EXPECT_STR_CONTAINS(err.message, "return the address of a static");
}

TEST(plugin_without_plan_callback)
{
  bt_error_t err;

  EXPECT_LOAD_FAILS("null_callback", BT_EPLUGIN_CALLBACK, &err);
  EXPECT_STR_CONTAINS(err.message, "'fault-null-callback'");
  EXPECT_STR_CONTAINS(err.message, "set .plan");
}

TEST(plugin_plan_missing_a_task)
{
  bt_plan_t *plan;
  bt_error_t err;

  EXPECT_STATUS(plan_with("bad_plan", 4, 1, 8, &plan, &err), BT_EPLUGIN_PLAN,
                &err);
  EXPECT_TRUE(plan == NULL);
  EXPECT_INT_EQ(err.status, BT_EPLUGIN_PLAN);
  EXPECT_STR_CONTAINS(err.message, "'fault-bad-plan'");
  EXPECT_STR_CONTAINS(err.message, plugin("bad_plan"));
  EXPECT_STR_CONTAINS(err.message, "returned an invalid plan");
  EXPECT_STR_CONTAINS(err.message, "add 0B7");
}

TEST(plugin_plan_that_deadlocks)
{
  bt_plan_t *plan;
  bt_error_t err;

  EXPECT_STATUS(plan_with("cyclic_plan", 2, 1, 3, &plan, &err),
                BT_EPLUGIN_PLAN, &err);
  EXPECT_TRUE(plan == NULL);
  EXPECT_STR_CONTAINS(err.message, plugin("cyclic_plan"));
  EXPECT_STR_CONTAINS(err.message, "plan would deadlock");
  EXPECT_STR_CONTAINS(err.message, "0B0 (device 0)");
  EXPECT_STR_CONTAINS(err.message, "(device 1");
  EXPECT_STR_CONTAINS(err.message, "Reorder");
  /* With one microbatch the same policy is valid. */
  EXPECT_STATUS(plan_with("cyclic_plan", 2, 1, 1, &plan, &err), BT_OK, &err);
  bt_plan_destroy(plan);
}

TEST(plugin_emits_out_of_range)
{
  bt_plan_t *plan;
  bt_error_t err;

  EXPECT_STATUS(plan_with("out_of_range", 4, 1, 2, &plan, &err),
                BT_EPLUGIN_PLAN, &err);
  EXPECT_TRUE(plan == NULL);
  EXPECT_STR_CONTAINS(err.message, "'fault-out-of-range'");
  EXPECT_STR_CONTAINS(err.message, plugin("out_of_range"));
  EXPECT_STR_CONTAINS(err.message, "emitted 4F0 for device 0");
  EXPECT_STR_CONTAINS(err.message, "S=4 stages");
  EXPECT_STR_CONTAINS(err.message, "emit only");
}

TEST(plugin_refuses_with_reason)
{
  bt_plan_t *plan;
  bt_error_t err;

  EXPECT_STATUS(plan_with("refuses", 4, 1, 3, &plan, &err), BT_EUNSUPPORTED,
                &err);
  EXPECT_TRUE(plan == NULL);
  EXPECT_STR_CONTAINS(err.message, "'fault-refuses' cannot plan p=4, v=1, "
                                   "m=3");
  EXPECT_STR_CONTAINS(err.message, "serves no request (got p=4, m=3); use a "
                                   "built-in schedule such as 'gpipe'");
}

TEST(plugin_nonexistent_path)
{
  static const char path[] = "/nonexistent-baton-dir/sched.so";
  bt_schedule_t *s = NULL;
  bt_error_t err;

  EXPECT_STATUS(bt_schedule_load(path, &s, &err), BT_EPLUGIN_LOAD, &err);
  EXPECT_TRUE(s == NULL);
  EXPECT_STR_CONTAINS(err.message, path);
  EXPECT_STR_CONTAINS(err.message, "check the path");
  EXPECT_STATUS(bt_schedule_open(path, &s, &err), BT_EPLUGIN_LOAD, &err);
  /* A bare name means a file in the current directory, not a library
   * search. */
  EXPECT_STATUS(bt_schedule_open("no-such-baton-plugin.so", &s, &err),
                BT_EPLUGIN_LOAD, &err);
  EXPECT_STR_CONTAINS(err.message, "'no-such-baton-plugin.so'");
  EXPECT_STATUS(bt_schedule_load(NULL, &s, &err), BT_EINVAL, &err);
}

TEST(plugin_not_an_elf_file)
{
  char dir[64], path[128];
  bt_schedule_t *s = NULL;
  bt_error_t err;
  FILE *f;

  snprintf(dir, sizeof dir, "/tmp/bt_test_plugin_XXXXXX");
  ASSERT_TRUE(mkdtemp(dir) != NULL);
  snprintf(path, sizeof path, "%s/x.so", dir);
  f = fopen(path, "wb");
  ASSERT_TRUE(f != NULL);
  fputs("this is not a shared object\n\x7f\x01garbage", f);
  fclose(f);
  EXPECT_STATUS(bt_schedule_load(path, &s, &err), BT_EPLUGIN_LOAD, &err);
  EXPECT_TRUE(s == NULL);
  EXPECT_STR_CONTAINS(err.message, path);
  EXPECT_STR_CONTAINS(err.message, "shared object built for this machine");
  EXPECT_STATUS(bt_schedule_open(path, &s, &err), BT_EPLUGIN_LOAD, &err);
  unlink(path);
  rmdir(dir);
}

/* ---- the shipped example ---------------------------------------------------- */

TEST(looped_bfs_example_plugin)
{
  bt_schedule_params_t params = BT_SCHEDULE_PARAMS_INIT;
  static const int32_t blocked[] = {0, 0, 1, 1, 2, 2, 3, 3};
  bt_schedule_t *s = NULL;
  bt_plan_t *plan = NULL;
  bt_error_t err;
  struct run r;

  ASSERT_INT_EQ(bt_schedule_load(LOOPED_BFS_PATH, &s, &err), BT_OK);
  EXPECT_TRUE(strcmp(bt_schedule_name(s), "looped-bfs") == 0);
  EXPECT_INT_EQ(bt_schedule_default_virtual(s), 2);
  /* It needs loop placement, and says so. */
  params.devices = 4;
  params.virtual_stages = 2;
  params.stages = 8;
  params.microbatches = 8;
  params.stage_device = blocked;
  EXPECT_STATUS(bt_schedule_make_plan(s, &params, &plan, &err),
                BT_EUNSUPPORTED, &err);
  EXPECT_TRUE(plan == NULL);
  EXPECT_STR_CONTAINS(err.message, "needs loop placement");
  bt_schedule_destroy(s);

  EXPECT_STATUS(run_schedule(LOOPED_BFS_PATH, 4, 2, 8, &unit, &r), BT_OK,
                &r.err);
  if (r.sim != NULL) {
    EXPECT_INT_EQ(bt_graph_task_count(r.graph), 4 * 2 * 8 * 2);
    EXPECT_TRUE(bt_sim_makespan(r.sim) > 0.0);
    EXPECT_TRUE(bt_sim_makespan(r.sim) >= bt_sim_lower_bound(r.sim));
    /* Breadth-first: device 0 runs all 8 forwards of stage 0 first. */
    for (int k = 0; k < 8; k++) {
      bt_action_t a = bt_plan_action(r.plan, 0, (size_t)k);
      EXPECT_TRUE(a.stage == 0 && a.kind == BT_ACT_F && a.microbatch == k);
    }
    EXPECT_INT_EQ(bt_plan_action(r.plan, 0, 8).stage, 4);
  }
  run_free(&r);
}

/* ---- in-process descriptors ----------------------------------------------- */

static int
plan_gpipe_like(const bt_schedule_params_t *p, const bt_plan_sink_t *sink,
                char *errbuf, size_t errlen, void *user_data)
{
  int *calls = user_data;
  int rc = 0;

  (void)errbuf;
  (void)errlen;
  if (calls != NULL)
    (*calls)++;
  for (int32_t s = 0; s < p->stages && rc == 0; s++)
    for (int32_t k = 0; k < p->microbatches && rc == 0; k++) {
      bt_action_t a = {s, BT_ACT_F, k};
      rc = sink->emit(sink->ctx, p->stage_device[s], a);
    }
  for (int32_t s = p->stages - 1; s >= 0 && rc == 0; s--)
    for (int32_t k = 0; k < p->microbatches && rc == 0; k++) {
      bt_action_t a = {s, BT_ACT_B, k};
      rc = sink->emit(sink->ctx, p->stage_device[s], a);
    }
  return rc;
}

static int
plan_forwards_only(const bt_schedule_params_t *p, const bt_plan_sink_t *sink,
                   char *errbuf, size_t errlen, void *user_data)
{
  int rc = 0;

  (void)errbuf;
  (void)errlen;
  (void)user_data;
  for (int32_t s = 0; s < p->stages && rc == 0; s++) {
    bt_action_t a = {s, BT_ACT_F, 0};
    rc = sink->emit(sink->ctx, p->stage_device[s], a);
  }
  return rc;
}

TEST(descriptor_abi_checks)
{
  bt_schedule_desc_t d = {BT_SCHEDULE_ABI_VERSION,
                          sizeof(bt_schedule_desc_t),
                          "in-process",
                          "a descriptor in the test",
                          plan_gpipe_like,
                          3,
                          NULL};
  bt_schedule_t *s = NULL;
  bt_error_t err;

  d.abi_version = BT_SCHEDULE_ABI_VERSION + 1;
  EXPECT_STATUS(bt_schedule_from_desc(&d, &s, &err), BT_EPLUGIN_ABI, &err);
  EXPECT_STR_CONTAINS(err.message, "schedule descriptor was built for "
                                   "schedule ABI version 2");
  d.abi_version = 0;
  EXPECT_STATUS(bt_schedule_from_desc(&d, &s, &err), BT_EPLUGIN_ABI, &err);
  d.abi_version = BT_SCHEDULE_ABI_VERSION;
  d.struct_size = sizeof(bt_schedule_desc_t) - sizeof(void *);
  EXPECT_STATUS(bt_schedule_from_desc(&d, &s, &err), BT_EPLUGIN_ABI, &err);
  EXPECT_STR_CONTAINS(err.message, "struct_size");
  d.struct_size = sizeof(bt_schedule_desc_t);
  d.name = "";
  EXPECT_STATUS(bt_schedule_from_desc(&d, &s, &err), BT_EPLUGIN_ABI, &err);
  EXPECT_STR_CONTAINS(err.message, "set .name");
  d.name = NULL;
  EXPECT_STATUS(bt_schedule_from_desc(&d, &s, &err), BT_EPLUGIN_ABI, &err);
  d.name = "in-process";
  d.plan = NULL;
  EXPECT_STATUS(bt_schedule_from_desc(&d, &s, &err), BT_EPLUGIN_CALLBACK,
                &err);
  EXPECT_STR_CONTAINS(err.message, "set .plan");
  EXPECT_STATUS(bt_schedule_from_desc(NULL, &s, &err), BT_EINVAL, &err);
  EXPECT_TRUE(s == NULL);
  /* A larger struct (a newer header) is fine. */
  d.plan = plan_gpipe_like;
  d.struct_size = sizeof(bt_schedule_desc_t) + 16;
  EXPECT_STATUS(bt_schedule_from_desc(&d, &s, &err), BT_OK, &err);
  if (s != NULL) {
    EXPECT_TRUE(strcmp(bt_schedule_name(s), "in-process") == 0);
    EXPECT_INT_EQ(bt_schedule_default_virtual(s), 3);
  }
  bt_schedule_destroy(s);
}

TEST(descriptor_plans_pass_user_data_and_are_validated)
{
  bt_schedule_desc_t good = {BT_SCHEDULE_ABI_VERSION,
                             sizeof(bt_schedule_desc_t),
                             "in-process",
                             "",
                             plan_gpipe_like,
                             1,
                             NULL};
  bt_schedule_desc_t bad = good;
  bt_schedule_params_t params = BT_SCHEDULE_PARAMS_INIT;
  bt_schedule_t *s = NULL;
  bt_plan_t *plan = NULL;
  bt_error_t err;
  int calls = 0;

  good.user_data = &calls;
  bad.name = "forwards-only";
  bad.plan = plan_forwards_only;
  params.devices = 2;
  params.stages = 2;
  params.microbatches = 2;
  ASSERT_INT_EQ(bt_schedule_from_desc(&good, &s, &err), BT_OK);
  EXPECT_STATUS(bt_schedule_make_plan(s, &params, &plan, &err), BT_OK, &err);
  EXPECT_INT_EQ(calls, 1);
  if (plan != NULL) {
    EXPECT_INT_EQ(bt_plan_length(plan, 0), 4);
    EXPECT_INT_EQ(bt_plan_length(plan, 1), 4);
  }
  bt_plan_destroy(plan);
  /* Bad params are the caller's fault: EINVAL before the policy runs. */
  params.stages = 3;
  EXPECT_STATUS(bt_schedule_make_plan(s, &params, &plan, &err), BT_EINVAL,
                &err);
  EXPECT_STR_CONTAINS(err.message, "stages must be devices x virtual stages");
  EXPECT_INT_EQ(calls, 1);
  params.stages = 2;
  bt_schedule_destroy(s);

  ASSERT_INT_EQ(bt_schedule_from_desc(&bad, &s, &err), BT_OK);
  plan = NULL;
  EXPECT_STATUS(bt_schedule_make_plan(s, &params, &plan, &err),
                BT_EPLUGIN_PLAN, &err);
  EXPECT_TRUE(plan == NULL);
  EXPECT_STR_CONTAINS(err.message, "'forwards-only' returned an invalid plan");
  EXPECT_STR_CONTAINS(err.message, "missing 0F1");
  /* Without an error record the status is the same. */
  EXPECT_STATUS(bt_schedule_make_plan(s, &params, &plan, NULL),
                BT_EPLUGIN_PLAN, NULL);
  bt_schedule_destroy(s);
}

/* ---- built-ins and lifetimes ------------------------------------------------ */

TEST(builtin_unknown_name_lists_the_names)
{
  static const char *want[] = {"gpipe", "1f1b", "interleaved", "zb-h1",
                               "zb-h2", "auto"};
  bt_schedule_t *s = NULL;
  bt_error_t err;

  EXPECT_STATUS(bt_schedule_builtin("nope", &s, &err), BT_ENOENT, &err);
  EXPECT_TRUE(s == NULL);
  EXPECT_STR_CONTAINS(err.message, "unknown schedule 'nope'");
  ASSERT_INT_EQ(bt_schedule_builtin_count(), 6);
  for (size_t i = 0; i < 6; i++) {
    EXPECT_TRUE(strcmp(bt_schedule_builtin_name(i), want[i]) == 0);
    EXPECT_STR_CONTAINS(err.message, want[i]);
  }
  EXPECT_TRUE(bt_schedule_builtin_name(6) == NULL);
  EXPECT_STR_CONTAINS(err.message, "PATH.so");
  EXPECT_STR_CONTAINS(err.message, "PATH.csv");
  EXPECT_STATUS(bt_schedule_open("nope", &s, &err), BT_ENOENT, &err);
  for (size_t i = 0; i < 6; i++) {
    EXPECT_STATUS(bt_schedule_builtin(want[i], &s, &err), BT_OK, &err);
    if (s != NULL)
      EXPECT_TRUE(strcmp(bt_schedule_name(s), want[i]) == 0);
    bt_schedule_destroy(s);
    s = NULL;
  }
}

/* Plans with a schedule, destroys the schedule (unloading a plugin), then
 * uses the plan. */
static void
check_plan_outlives_schedule(const char *spec, int p, int v, int m)
{
  bt_schedule_params_t params = BT_SCHEDULE_PARAMS_INIT;
  bt_schedule_t *s = NULL;
  bt_plan_t *plan = NULL;
  struct run r;
  bt_error_t err;
  char *text = NULL;
  size_t len = 0;
  FILE *f;

  if (bt_schedule_open(spec, &s, &err) != BT_OK) {
    test_fail(__FILE__, __LINE__, "%s: %s", spec, err.message);
    return;
  }
  params.devices = p;
  params.virtual_stages = v;
  params.stages = p * v;
  params.microbatches = m;
  EXPECT_STATUS(bt_schedule_make_plan(s, &params, &plan, &err), BT_OK, &err);
  bt_schedule_destroy(s);
  if (plan == NULL)
    return;
  EXPECT_TRUE(!is_loaded(spec));
  f = open_memstream(&text, &len);
  if (f != NULL) {
    EXPECT_STATUS(bt_plan_write_csv(plan, f), BT_OK, NULL);
    fclose(f);
    EXPECT_STR_CONTAINS(text, "# baton plan v1:");
    free(text);
  }
  EXPECT_STATUS(run_plan(plan, &unit, &r), BT_OK, &r.err); /* owns plan */
  if (r.sim != NULL) {
    EXPECT_INT_EQ(bt_graph_task_count(r.graph), p * v * m * 2);
    EXPECT_TRUE(bt_sim_makespan(r.sim) > 0.0);
  }
  run_free(&r);
}

TEST(plan_outlives_its_schedule)
{
  check_plan_outlives_schedule(plugin("good"), 3, 1, 5);
  check_plan_outlives_schedule(LOOPED_BFS_PATH, 4, 2, 8);
  check_plan_outlives_schedule("1f1b", 4, 1, 8);
}

TEST(plugin_loaded_twice_is_reference_counted)
{
  bt_schedule_t *a = NULL, *b = NULL;
  bt_plan_t *plan = NULL;
  bt_error_t err;

  ASSERT_INT_EQ(bt_schedule_load(plugin("good"), &a, &err), BT_OK);
  ASSERT_INT_EQ(bt_schedule_load(plugin("good"), &b, &err), BT_OK);
  bt_schedule_destroy(a);
  /* b's descriptor and callback live in the plugin: still mapped. */
  EXPECT_TRUE(is_loaded(plugin("good")));
  EXPECT_TRUE(strcmp(bt_schedule_name(b), "fault-good") == 0);
  {
    bt_schedule_params_t params = BT_SCHEDULE_PARAMS_INIT;
    params.devices = 2;
    params.stages = 2;
    params.microbatches = 2;
    EXPECT_STATUS(bt_schedule_make_plan(b, &params, &plan, &err), BT_OK,
                  &err);
  }
  bt_plan_destroy(plan);
  bt_schedule_destroy(b);
  EXPECT_TRUE(!is_loaded(plugin("good")));
}
