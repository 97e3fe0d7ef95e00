/* Task graphs built from hand-written plans: tasks, edges, skips, every
 * rejection with its message, and the simulator against hand-computed
 * timings. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "baton/baton.h"
#include "test.h"

static bt_action_t
act(int32_t stage, int32_t kind, int32_t mb)
{
  bt_action_t a = {stage, kind, mb};
  return a;
}

static bt_action_t
A(const char *text)
{
  bt_action_t a = {-1, BT_ACT_IDLE, -1};

  if (bt_action_parse(text, strlen(text), &a) != BT_OK)
    fprintf(stderr, "bad action text in test: %s\n", text);
  return a;
}

static bt_plan_t *
plan_from(const char *csv)
{
  bt_plan_t *p = NULL;
  bt_error_t err;

  if (bt_plan_parse_csv(csv, strlen(csv), NULL, &p, &err) != BT_OK) {
    fprintf(stderr, "bad plan in test: %s\n", err.message);
    return NULL;
  }
  return p;
}

/* Builds a graph; returns the status. */
static bt_status
build(const bt_plan_t *plan, const int32_t *placement,
      const bt_skip_layout_t *skips, bt_graph_t **g, bt_error_t *err)
{
  bt_graph_config_t gc = BT_GRAPH_CONFIG_INIT;

  gc.plan = plan;
  gc.stage_device = placement;
  gc.skips = skips;
  *g = NULL;
  bt_error_clear(err);
  return bt_graph_create(&gc, g, err);
}

/* The kind of the edge from -> to, or -1 when there is none; checks that
 * the predecessor list agrees. */
static int
edge_kind(const bt_graph_t *g, const char *from, const char *to)
{
  int32_t a = bt_graph_find(g, A(from)), b = bt_graph_find(g, A(to));
  int kind = -1, pkind = -1;

  if (a < 0 || b < 0)
    return -2;
  for (int32_t i = 0; i < bt_graph_successor_count(g, a); i++) {
    bt_edge_kind k;
    if (bt_graph_successor(g, a, i, &k) == b)
      kind = (int)k;
  }
  for (int32_t i = 0; i < bt_graph_predecessor_count(g, b); i++) {
    bt_edge_kind k;
    if (bt_graph_predecessor(g, b, i, &k) == a)
      pkind = (int)k;
  }
  return kind == pkind ? kind : -3;
}

static int
newlines(const char *s)
{
  int n = 0;

  for (; *s; s++)
    n += *s == '\n';
  return n;
}

/* 1F1B for 2 devices, 3 microbatches. */
static const char f1b1_2x3[] = "0F0,0F1,0B0,0F2,0B1,0B2\n"
                               "1F0,1B0,1F1,1B1,1F2,1B2\n";

TEST(graph_1f1b_tasks_and_order)
{
  bt_plan_t *p = plan_from(f1b1_2x3);
  bt_graph_t *g;
  bt_error_t err;

  ASSERT_TRUE(p != NULL);
  ASSERT_INT_EQ(build(p, NULL, NULL, &g, &err), BT_OK);
  EXPECT_INT_EQ(bt_graph_devices(g), 2);
  EXPECT_INT_EQ(bt_graph_stages(g), 2);
  EXPECT_INT_EQ(bt_graph_microbatches(g), 3);
  EXPECT_INT_EQ(bt_graph_task_count(g), 12);
  EXPECT_INT_EQ(bt_graph_stage_device(g, 0), 0);
  EXPECT_INT_EQ(bt_graph_stage_device(g, 1), 1);
  EXPECT_INT_EQ(bt_graph_stage_device(g, 2), -1);
  for (int32_t d = 0; d < 2; d++) {
    ASSERT_INT_EQ(bt_graph_device_task_count(g, d), 6);
    for (int32_t i = 0; i < 6; i++) {
      int32_t t = bt_graph_device_task(g, d, i);
      bt_task_t task = bt_graph_task(g, t);
      bt_action_t want = bt_plan_action(p, d, (size_t)i);
      EXPECT_INT_EQ(t, d * 6 + i); /* grouped by device, in plan order */
      EXPECT_INT_EQ(task.device, d);
      EXPECT_INT_EQ(task.position, i);
      EXPECT_TRUE(task.action.stage == want.stage &&
                  task.action.kind == want.kind &&
                  task.action.microbatch == want.microbatch);
      EXPECT_INT_EQ(bt_graph_find(g, want), t);
    }
  }
  EXPECT_INT_EQ(bt_graph_device_task(g, 0, 6), -1);
  EXPECT_INT_EQ(bt_graph_device_task_count(g, 2), 0);
  EXPECT_INT_EQ(bt_graph_find(g, A("0I0")), -1); /* no such task */
  EXPECT_INT_EQ(bt_graph_find(g, A("2F0")), -1); /* out of range */
  EXPECT_INT_EQ(bt_graph_find(g, A("0F3")), -1);
  EXPECT_INT_EQ(bt_graph_find(g, act(-1, BT_ACT_IDLE, -1)), -1);
  EXPECT_INT_EQ(bt_graph_task(g, 12).device, -1);
  bt_graph_destroy(g);
  bt_plan_destroy(p);
}

TEST(graph_1f1b_edges)
{
  bt_plan_t *p = plan_from(f1b1_2x3);
  bt_graph_t *g;
  bt_error_t err;

  ASSERT_TRUE(p != NULL);
  ASSERT_INT_EQ(build(p, NULL, NULL, &g, &err), BT_OK);
  for (int k = 0; k < 3; k++) {
    char f0[8], f1[8], b0[8], b1[8];
    snprintf(f0, sizeof f0, "0F%d", k);
    snprintf(f1, sizeof f1, "1F%d", k);
    snprintf(b0, sizeof b0, "0B%d", k);
    snprintf(b1, sizeof b1, "1B%d", k);
    EXPECT_INT_EQ(edge_kind(g, f0, f1), BT_EDGE_DATA);
    EXPECT_INT_EQ(edge_kind(g, b1, b0), BT_EDGE_DATA);
    EXPECT_INT_EQ(edge_kind(g, f0, b0), BT_EDGE_DATA);
    /* Data and order at once: listed once, as data. */
    EXPECT_INT_EQ(edge_kind(g, f1, b1), BT_EDGE_DATA);
    EXPECT_INT_EQ(edge_kind(g, f1, f0), -1);
    EXPECT_INT_EQ(edge_kind(g, b0, b1), -1);
  }
  /* Order edges on device 0: consecutive actions only. */
  EXPECT_INT_EQ(edge_kind(g, "0F0", "0F1"), BT_EDGE_ORDER);
  EXPECT_INT_EQ(edge_kind(g, "0F1", "0B0"), BT_EDGE_ORDER);
  EXPECT_INT_EQ(edge_kind(g, "0B0", "0F2"), BT_EDGE_ORDER);
  EXPECT_INT_EQ(edge_kind(g, "0F2", "0B1"), BT_EDGE_ORDER);
  EXPECT_INT_EQ(edge_kind(g, "0B1", "0B2"), BT_EDGE_ORDER);
  EXPECT_INT_EQ(edge_kind(g, "0F0", "0F2"), -1);
  EXPECT_INT_EQ(edge_kind(g, "1B0", "1F1"), BT_EDGE_ORDER);
  /* 0F0's successors: 0F1 (order), 0B0 (data), 1F0 (data), nothing else. */
  EXPECT_INT_EQ(bt_graph_successor_count(g, bt_graph_find(g, A("0F0"))), 3);
  EXPECT_INT_EQ(bt_graph_predecessor_count(g, bt_graph_find(g, A("0F0"))),
                0);
  /* 0B0 waits for 0F0 (data), 0F1 (order), 1B0 (data). */
  EXPECT_INT_EQ(bt_graph_predecessor_count(g, bt_graph_find(g, A("0B0"))),
                3);
  EXPECT_INT_EQ(bt_graph_successor_count(g, bt_graph_find(g, A("0B2"))), 0);
  /* 4 data edges per microbatch, 5 order edges per device, and the three
   * 1F(k)->1B(k) pairs counted once. */
  EXPECT_INT_EQ(bt_graph_edge_count(g), 3 * 4 + 2 * 5 - 3);
  EXPECT_INT_EQ(bt_graph_successor(g, 0, 99, NULL), -1);
  EXPECT_INT_EQ(bt_graph_successor(g, -1, 0, NULL), -1);
  EXPECT_INT_EQ(bt_graph_successor_count(g, 99), 0);
  bt_graph_destroy(g);
  bt_plan_destroy(p);
}

TEST(graph_split_backward_edges)
{
  bt_plan_t *p = plan_from("0F0,0I0,0W0\n1F0,1I0,1W0\n");
  bt_graph_t *g;
  bt_error_t err;

  ASSERT_TRUE(p != NULL);
  ASSERT_INT_EQ(build(p, NULL, NULL, &g, &err), BT_OK);
  EXPECT_INT_EQ(bt_graph_task_count(g), 6);
  EXPECT_INT_EQ(edge_kind(g, "0F0", "1F0"), BT_EDGE_DATA);
  EXPECT_INT_EQ(edge_kind(g, "0F0", "0I0"), BT_EDGE_DATA);
  EXPECT_INT_EQ(edge_kind(g, "1I0", "0I0"), BT_EDGE_DATA);
  EXPECT_INT_EQ(edge_kind(g, "0I0", "0W0"), BT_EDGE_DATA);
  EXPECT_INT_EQ(edge_kind(g, "1I0", "1W0"), BT_EDGE_DATA);
  /* W feeds nobody: the previous stage waits for I only. */
  EXPECT_INT_EQ(edge_kind(g, "1W0", "0I0"), -1);
  EXPECT_INT_EQ(bt_graph_successor_count(g, bt_graph_find(g, A("1W0"))), 0);
  EXPECT_INT_EQ(bt_graph_edge_count(g), 6);
  bt_graph_destroy(g);
  bt_plan_destroy(p);
}

/* GPipe, 4 devices, 4 stages, 2 microbatches. */
static const char gpipe_4x2[] = "0F0,0F1,0B0,0B1\n"
                                "1F0,1F1,1B0,1B1\n"
                                "2F0,2F1,2B0,2B1\n"
                                "3F0,3F1,3B0,3B1\n";

static bt_skip_layout_t *
one_skip(int32_t layers, const int32_t *layer_stage, int32_t stash,
         int32_t pop)
{
  bt_skip_decl_t d[2] = {{stash, BT_SKIP_STASH, NULL, "h"},
                         {pop, BT_SKIP_POP, NULL, "h"}};
  bt_skip_layout_t *l = NULL;
  bt_error_t err;

  if (bt_skip_layout_create(d, 2, layers, layer_stage, &l, &err) != BT_OK)
    fprintf(stderr, "bad skip layout in test: %s\n", err.message);
  return l;
}

TEST(graph_skip_edges_go_straight_to_the_pop_stage)
{
  bt_plan_t *p = plan_from(gpipe_4x2);
  bt_skip_layout_t *l = one_skip(4, NULL, 0, 3);
  bt_graph_t *g, *plain;
  bt_error_t err;

  ASSERT_TRUE(p != NULL && l != NULL);
  ASSERT_INT_EQ(build(p, NULL, NULL, &plain, &err), BT_OK);
  ASSERT_INT_EQ(build(p, NULL, l, &g, &err), BT_OK);
  for (int k = 0; k < 2; k++) {
    char f0[8], f3[8], b0[8], b3[8];
    snprintf(f0, sizeof f0, "0F%d", k);
    snprintf(f3, sizeof f3, "3F%d", k);
    snprintf(b0, sizeof b0, "0B%d", k);
    snprintf(b3, sizeof b3, "3B%d", k);
    EXPECT_INT_EQ(edge_kind(g, f0, f3), BT_EDGE_SKIP);
    EXPECT_INT_EQ(edge_kind(g, b3, b0), BT_EDGE_SKIP);
    EXPECT_INT_EQ(edge_kind(plain, f0, f3), -1);
    EXPECT_INT_EQ(edge_kind(plain, b3, b0), -1);
  }
  /* Not through the stages in between: 0F0 -> 2F0 is no edge. */
  EXPECT_INT_EQ(edge_kind(g, "0F0", "2F0"), -1);
  EXPECT_INT_EQ(edge_kind(g, "1F0", "3F0"), -1);
  EXPECT_INT_EQ(bt_graph_edge_count(g), bt_graph_edge_count(plain) + 2 * 2);
  bt_graph_destroy(plain);
  bt_graph_destroy(g);
  bt_skip_layout_destroy(l);
  bt_plan_destroy(p);
}

TEST(graph_skip_between_adjacent_or_equal_stages_adds_no_edge)
{
  static const int32_t two_per_stage[] = {0, 1, 1, 2};
  bt_plan_t *p = plan_from(gpipe_4x2);
  bt_skip_layout_t *adj = one_skip(4, NULL, 1, 2);
  bt_skip_layout_t *same = one_skip(4, two_per_stage, 1, 2);
  bt_graph_t *g, *plain;
  bt_error_t err;

  ASSERT_TRUE(p != NULL && adj != NULL && same != NULL);
  EXPECT_INT_EQ(bt_skip_layout_get(same, 0).stash_stage, 1);
  EXPECT_INT_EQ(bt_skip_layout_get(same, 0).pop_stage, 1);
  ASSERT_INT_EQ(build(p, NULL, NULL, &plain, &err), BT_OK);
  ASSERT_INT_EQ(build(p, NULL, adj, &g, &err), BT_OK);
  /* Adjacent: the data edge already carries it; deduplicated, kind data. */
  EXPECT_INT_EQ(edge_kind(g, "1F0", "2F0"), BT_EDGE_DATA);
  EXPECT_INT_EQ(edge_kind(g, "2B1", "1B1"), BT_EDGE_DATA);
  EXPECT_INT_EQ(bt_graph_edge_count(g), bt_graph_edge_count(plain));
  bt_graph_destroy(g);
  ASSERT_INT_EQ(build(p, NULL, same, &g, &err), BT_OK);
  EXPECT_INT_EQ(bt_graph_edge_count(g), bt_graph_edge_count(plain));
  EXPECT_INT_EQ(edge_kind(g, "1F0", "1B0"), BT_EDGE_DATA);
  bt_graph_destroy(g);
  bt_graph_destroy(plain);
  bt_skip_layout_destroy(adj);
  bt_skip_layout_destroy(same);
  bt_plan_destroy(p);
}

/* ---- rejections ------------------------------------------------------------ */

TEST(graph_rejects_missing_task)
{
  bt_plan_t *p = plan_from("0F0,0B0\n1F0\n");
  bt_plan_t *q = plan_from("0F0,0I0,0W0\n1I0,1W0\n");
  bt_graph_t *g;
  bt_error_t err;

  ASSERT_TRUE(p != NULL && q != NULL);
  EXPECT_STATUS(build(p, NULL, NULL, &g, &err), BT_EPLAN, &err);
  EXPECT_TRUE(g == NULL);
  EXPECT_INT_EQ(err.status, BT_EPLAN);
  EXPECT_STR_CONTAINS(err.message, "1 problem");
  EXPECT_STR_CONTAINS(err.message, "missing the backward of stage 1, "
                                   "microbatch 0");
  EXPECT_STR_CONTAINS(err.message, "add 1B0, or 1I0 with its W");
  EXPECT_STATUS(build(q, NULL, NULL, &g, &err), BT_EPLAN, &err);
  EXPECT_STR_CONTAINS(err.message, "missing 1F0");
  bt_plan_destroy(p);
  bt_plan_destroy(q);
}

TEST(graph_rejects_task_listed_twice)
{
  bt_plan_t *p = plan_from("0F0,0B0\n1F0,1B0\n");
  bt_graph_t *g;
  bt_error_t err;

  ASSERT_TRUE(p != NULL);
  /* The CSV reader refuses duplicates; bt_plan_append does not. */
  ASSERT_INT_EQ(bt_plan_append(p, 1, A("1F0")), BT_OK);
  EXPECT_STATUS(build(p, NULL, NULL, &g, &err), BT_EPLAN, &err);
  EXPECT_TRUE(g == NULL);
  EXPECT_STR_CONTAINS(err.message, "1F0 is listed twice");
  EXPECT_STR_CONTAINS(err.message, "device 1 position 0");
  EXPECT_STR_CONTAINS(err.message, "device 1 position 2");
  EXPECT_STR_CONTAINS(err.message, "list every action once");
  bt_plan_destroy(p);
}

TEST(graph_rejects_task_on_wrong_device_explicit_placement)
{
  static const int32_t swapped[] = {1, 0};
  bt_plan_t *p = plan_from("0F0,0B0\n1F0,1B0\n");
  bt_graph_t *g;
  bt_error_t err;

  ASSERT_TRUE(p != NULL);
  EXPECT_STATUS(build(p, swapped, NULL, &g, &err), BT_EPLAN, &err);
  EXPECT_TRUE(g == NULL);
  EXPECT_STR_CONTAINS(err.message, "4 problems");
  EXPECT_STR_CONTAINS(err.message, "0F0 is on device 0, but stage 0 is "
                                   "placed on device 1");
  EXPECT_STR_CONTAINS(err.message, "move it to device 1's list");
  EXPECT_STR_CONTAINS(err.message, "1B0 is on device 1, but stage 1 is "
                                   "placed on device 0");
  bt_plan_destroy(p);
}

TEST(graph_rejects_task_on_wrong_device_loop_placement)
{
  /* 4 stages on 2 devices: stage s on device s % 2, so stage 2 is device
   * 0's; device 1 lists 2F0. */
  bt_plan_t *p = plan_from("0F0,0B0,2B0\n1F0,2F0,3F0,3B0,1B0\n");
  static const int32_t blocked[] = {0, 0, 1, 1};
  bt_graph_t *g;
  bt_error_t err;

  ASSERT_TRUE(p != NULL);
  EXPECT_STATUS(build(p, NULL, NULL, &g, &err), BT_EPLAN, &err);
  EXPECT_TRUE(g == NULL);
  EXPECT_STR_CONTAINS(err.message, "2F0 is on device 1, but stage 2 is "
                                   "placed on device 0");
  EXPECT_TRUE(strstr(err.message, "3F0") == NULL); /* 3 % 2 == 1: fine */
  EXPECT_STR_CONTAINS(err.message, "move it to device 0's list");
  /* Under a blocked placement (0,0,1,1) other tasks are misplaced. */
  EXPECT_STATUS(build(p, blocked, NULL, &g, &err), BT_EPLAN, &err);
  EXPECT_STR_CONTAINS(err.message, "2B0 is on device 0, but stage 2 is "
                                   "placed on device 1");
  EXPECT_STR_CONTAINS(err.message, "1F0 is on device 1, but stage 1 is "
                                   "placed on device 0");
  bt_plan_destroy(p);
}

TEST(graph_rejects_b_mixed_with_i_or_w)
{
  bt_plan_t *p = plan_from("0F0,0I0,0B0,0W0\n1F0,1B0\n");
  bt_plan_t *q = plan_from("0F0,0B0,0W0\n1F0,1B0\n");
  bt_graph_t *g;
  bt_error_t err;

  ASSERT_TRUE(p != NULL && q != NULL);
  EXPECT_STATUS(build(p, NULL, NULL, &g, &err), BT_EPLAN, &err);
  EXPECT_TRUE(g == NULL);
  EXPECT_STR_CONTAINS(err.message, "0B0 is mixed with 0I0");
  EXPECT_STR_CONTAINS(err.message, "use either a full backward B or the "
                                   "split I + W");
  EXPECT_STATUS(build(q, NULL, NULL, &g, &err), BT_EPLAN, &err);
  EXPECT_STR_CONTAINS(err.message, "0B0 is mixed with 0W0");
  bt_plan_destroy(p);
  bt_plan_destroy(q);
}

TEST(graph_rejects_i_without_w)
{
  bt_plan_t *p = plan_from("0F0,0I0\n1F0,1I0,1W0\n");
  bt_plan_t *q = plan_from("0F0,0I0,0W0\n1F0,1W0\n");
  bt_graph_t *g;
  bt_error_t err;

  ASSERT_TRUE(p != NULL && q != NULL);
  EXPECT_STATUS(build(p, NULL, NULL, &g, &err), BT_EPLAN, &err);
  EXPECT_TRUE(g == NULL);
  EXPECT_STR_CONTAINS(err.message, "missing 0W0");
  EXPECT_STR_CONTAINS(err.message, "needs both I and W");
  EXPECT_STATUS(build(q, NULL, NULL, &g, &err), BT_EPLAN, &err);
  EXPECT_STR_CONTAINS(err.message, "missing 1I0");
  bt_plan_destroy(p);
  bt_plan_destroy(q);
}

TEST(graph_rejects_deadlock_and_spells_the_cycle)
{
  /* Device 0 wants microbatch 0 back before sending 1; device 1 runs
   * microbatch 1 first. */
  bt_plan_t *p = plan_from("0F0,0B0,0F1,0B1\n1F1,1B1,1F0,1B0\n");
  static const char *on_cycle[] = {"0B0", "1B0", "1F0", "1B1", "1F1", "0F1"};
  bt_graph_t *g;
  bt_error_t err;

  ASSERT_TRUE(p != NULL);
  EXPECT_STATUS(build(p, NULL, NULL, &g, &err), BT_EDEADLOCK, &err);
  EXPECT_TRUE(g == NULL);
  EXPECT_INT_EQ(err.status, BT_EDEADLOCK);
  EXPECT_STR_CONTAINS(err.message, "plan would deadlock: ");
  for (size_t i = 0; i < sizeof on_cycle / sizeof on_cycle[0]; i++)
    EXPECT_STR_CONTAINS(err.message, on_cycle[i]);
  /* 0F0 and 0B1 are stuck too, but not on the cycle. */
  EXPECT_TRUE(strstr(err.message, "0F0") == NULL);
  EXPECT_TRUE(strstr(err.message, "0B1") == NULL);
  EXPECT_STR_CONTAINS(err.message, "device 0");
  EXPECT_STR_CONTAINS(err.message, "device 1");
  EXPECT_STR_CONTAINS(err.message, "waits for");
  EXPECT_STR_CONTAINS(err.message, "Reorder");
  bt_plan_destroy(p);
}

TEST(graph_deadlock_through_a_skip_edge)
{
  /* Stage 2 on device 0, stage 0 on device 1, stage 1 on device 2, and a
   * skip from stage 0 to stage 2.  Device 1 runs microbatch 1 first and
   * device 0 microbatch 0: 2F0 waits for 0F0 over the skip, which waits
   * behind 0B1 on device 1, which needs 2B1, queued after 2F0. */
  static const int32_t placement[] = {1, 2, 0};
  bt_plan_t *p = plan_from("2F0,2B0,2F1,2B1\n"
                           "0F1,0B1,0F0,0B0\n"
                           "1F0,1B0,1F1,1B1\n");
  bt_skip_layout_t *l = one_skip(3, NULL, 0, 2);
  bt_graph_t *g;
  bt_error_t err;

  ASSERT_TRUE(p != NULL && l != NULL);
  EXPECT_STATUS(build(p, placement, l, &g, &err), BT_EDEADLOCK, &err);
  EXPECT_TRUE(g == NULL);
  EXPECT_STR_CONTAINS(err.message, "2F0 (device 0) waits for 0F0 (device 1, "
                                   "skip connection)");
  EXPECT_STR_CONTAINS(err.message, "Reorder");
  /* Without the skip the plan still deadlocks (a skip edge is implied by
   * the data chain), but the cycle is spelled through stage 1. */
  EXPECT_STATUS(build(p, placement, NULL, &g, &err), BT_EDEADLOCK, &err);
  EXPECT_TRUE(strstr(err.message, "skip connection") == NULL);
  EXPECT_STR_CONTAINS(err.message, "2F0 (device 0) waits for 1F0 (device 2, "
                                   "data)");
  bt_skip_layout_destroy(l);
  bt_plan_destroy(p);
}

TEST(graph_rejects_placement_outside_devices)
{
  static const int32_t too_high[] = {0, 2};
  static const int32_t negative[] = {-1, 1};
  bt_plan_t *p = plan_from("0F0,0B0\n1F0,1B0\n");
  bt_graph_t *g;
  bt_error_t err;

  ASSERT_TRUE(p != NULL);
  EXPECT_STATUS(build(p, too_high, NULL, &g, &err), BT_EINVAL, &err);
  EXPECT_TRUE(g == NULL);
  EXPECT_STR_CONTAINS(err.message, "stage 1 is placed on device 2");
  EXPECT_STR_CONTAINS(err.message, "devices 0..1");
  EXPECT_STATUS(build(p, negative, NULL, &g, &err), BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "stage 0 is placed on device -1");
  bt_plan_destroy(p);
}

TEST(graph_rejects_skip_beyond_plan)
{
  bt_plan_t *p = plan_from("0F0,0B0\n1F0,1B0\n");
  bt_skip_layout_t *l = one_skip(4, NULL, 0, 3);
  bt_graph_t *g;
  bt_error_t err;

  ASSERT_TRUE(p != NULL && l != NULL);
  EXPECT_STATUS(build(p, NULL, l, &g, &err), BT_EINVAL, &err);
  EXPECT_TRUE(g == NULL);
  EXPECT_STR_CONTAINS(err.message, "stage 3");
  EXPECT_STR_CONTAINS(err.message, "2 stages");
  bt_skip_layout_destroy(l);
  bt_plan_destroy(p);
}

TEST(graph_rejects_bad_config)
{
  bt_graph_config_t gc = BT_GRAPH_CONFIG_INIT;
  bt_graph_t *g = NULL;
  bt_error_t err;

  EXPECT_STATUS(bt_graph_create(&gc, &g, &err), BT_EINVAL, &err);
  EXPECT_STATUS(bt_graph_create(NULL, &g, &err), BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "BT_GRAPH_CONFIG_INIT");
  EXPECT_TRUE(g == NULL);
}

TEST(graph_lists_every_problem)
{
  /* Three tasks missing: one line each under the count. */
  bt_plan_t *p = plan_from("0F0,0F1,0B0,0B1\n1F0\n");
  bt_graph_t *g;
  bt_error_t err;

  ASSERT_TRUE(p != NULL);
  EXPECT_STATUS(build(p, NULL, NULL, &g, &err), BT_EPLAN, &err);
  EXPECT_STR_CONTAINS(err.message, "invalid plan (3 problems):\n");
  EXPECT_INT_EQ(newlines(err.message), 3);
  EXPECT_STR_CONTAINS(err.message, "stage 1, microbatch 0: add 1B0");
  EXPECT_STR_CONTAINS(err.message, "missing 1F1");
  EXPECT_STR_CONTAINS(err.message, "stage 1, microbatch 1: add 1B1");
  bt_plan_destroy(p);
}

TEST(graph_caps_the_listed_problems)
{
  /* 2 stages x 40 microbatches with only stage 0's forwards: 120 problems,
   * the first ones listed; the message stays within its buffer. */
  bt_plan_t *p;
  bt_graph_t *g;
  bt_error_t err;

  ASSERT_INT_EQ(bt_plan_create(2, 2, 40, &p), BT_OK);
  for (int k = 0; k < 40; k++)
    bt_plan_append(p, 0, act(0, BT_ACT_F, k));
  EXPECT_STATUS(build(p, NULL, NULL, &g, &err), BT_EPLAN, &err);
  EXPECT_STR_CONTAINS(err.message, "120 problems, first ones listed");
  EXPECT_TRUE(newlines(err.message) < 120);
  EXPECT_TRUE(strlen(err.message) < sizeof err.message);
  bt_plan_destroy(p);
}

/* ---- simulator on hand plans ----------------------------------------------- */

static bt_status
simulate(const bt_graph_t *g, const bt_sim_config_t *sc, bt_sim_t **sim,
         bt_error_t *err)
{
  *sim = NULL;
  bt_error_clear(err);
  return bt_sim_run(g, sc, sim, err);
}

#define EXPECT_SPAN(sim, g, text, s, e)                                       \
  do {                                                                        \
    int32_t t_ = bt_graph_find((g), A(text));                                 \
    EXPECT_NEAR(bt_sim_task_start((sim), t_), (s), 1e-12);                    \
    EXPECT_NEAR(bt_sim_task_end((sim), t_), (e), 1e-12);                      \
  } while (0)

TEST(sim_hand_computed_1f1b)
{
  /* F = {1, 2}, B = {2, 1}, W = {1, 1}: a full backward costs B + W, so
   * 3 on stage 0 and 2 on stage 1.
   *   dev 0: 0F0 [0,1) 0F1 [1,2) ........ 0B0 [5,8) . 0B1 [9,12)
   *   dev 1: . 1F0 [1,3) 1B0 [3,5) 1F1 [5,7) 1B1 [7,9)
   * Memory (mem_b = 1): device 1 frees 1F0's at 5 before 1F1 allocates at
   * 5, so its peak stays 1; device 0 holds two. */
  static const double f[] = {1, 2}, b[] = {2, 1}, w[] = {1, 1};
  bt_plan_t *p = plan_from("0F0,0F1,0B0,0B1\n1F0,1B0,1F1,1B1\n");
  bt_sim_config_t sc = BT_SIM_CONFIG_INIT;
  bt_graph_t *g;
  bt_sim_t *sim;
  bt_error_t err;

  ASSERT_TRUE(p != NULL);
  ASSERT_INT_EQ(build(p, NULL, NULL, &g, &err), BT_OK);
  sc.cost_f = f;
  sc.cost_b = b;
  sc.cost_w = w;
  ASSERT_INT_EQ(simulate(g, &sc, &sim, &err), BT_OK);
  EXPECT_TRUE(bt_sim_graph(sim) == g);
  EXPECT_SPAN(sim, g, "0F0", 0, 1);
  EXPECT_SPAN(sim, g, "0F1", 1, 2);
  EXPECT_SPAN(sim, g, "1F0", 1, 3);
  EXPECT_SPAN(sim, g, "1B0", 3, 5);
  EXPECT_SPAN(sim, g, "1F1", 5, 7);
  EXPECT_SPAN(sim, g, "1B1", 7, 9);
  EXPECT_SPAN(sim, g, "0B0", 5, 8);
  EXPECT_SPAN(sim, g, "0B1", 9, 12);
  EXPECT_NEAR(bt_sim_makespan(sim), 12, 1e-12);
  EXPECT_NEAR(bt_sim_busy(sim, 0), 8, 1e-12);
  EXPECT_NEAR(bt_sim_busy(sim, 1), 8, 1e-12);
  EXPECT_NEAR(bt_sim_bubble(sim), 1.0 - 16.0 / 24.0, 1e-12);
  EXPECT_NEAR(bt_sim_peak_mem(sim, 0), 2, 1e-12);
  EXPECT_NEAR(bt_sim_peak_mem(sim, 1), 1, 1e-12);
  EXPECT_TRUE(bt_sim_lower_bound(sim) <= bt_sim_makespan(sim));
  bt_sim_destroy(sim);
  bt_graph_destroy(g);
  bt_plan_destroy(p);
}

TEST(sim_comm_latency_on_cross_device_edges_only)
{
  /* Same plan, unit costs (a full backward costs B + W = 2), latency 0.5
   * on the cross-device edges 0F(k)->1F(k) and 1B(k)->0B(k); edges within
   * a device are free:
   *   dev 0: 0F0 [0,1) 0F1 [1,2) ......... 0B0 [5,7) . 0B1 [8,10)
   *   dev 1: . 1F0 [1.5,2.5) 1B0 [2.5,4.5) 1F1 [4.5,5.5) 1B1 [5.5,7.5) */
  bt_plan_t *p = plan_from("0F0,0F1,0B0,0B1\n1F0,1B0,1F1,1B1\n");
  bt_sim_config_t sc = BT_SIM_CONFIG_INIT;
  bt_graph_t *g;
  bt_sim_t *sim;
  bt_error_t err;

  ASSERT_TRUE(p != NULL);
  ASSERT_INT_EQ(build(p, NULL, NULL, &g, &err), BT_OK);
  sc.comm_latency = 0.5;
  ASSERT_INT_EQ(simulate(g, &sc, &sim, &err), BT_OK);
  EXPECT_SPAN(sim, g, "0F0", 0, 1);
  EXPECT_SPAN(sim, g, "0F1", 1, 2);   /* order edge: no latency */
  EXPECT_SPAN(sim, g, "1F0", 1.5, 2.5);
  EXPECT_SPAN(sim, g, "1B0", 2.5, 4.5); /* same device: no latency */
  EXPECT_SPAN(sim, g, "1F1", 4.5, 5.5);
  EXPECT_SPAN(sim, g, "1B1", 5.5, 7.5);
  EXPECT_SPAN(sim, g, "0B0", 5, 7);
  EXPECT_SPAN(sim, g, "0B1", 8, 10);
  EXPECT_NEAR(bt_sim_makespan(sim), 10, 1e-12);
  EXPECT_NEAR(bt_sim_busy(sim, 0), 6, 1e-12);
  EXPECT_NEAR(bt_sim_bubble(sim), 1.0 - 12.0 / 20.0, 1e-12);
  bt_sim_destroy(sim);
  /* Without latency: 1F0 [1,2) 1B0 [2,4) 1F1 [4,5) 1B1 [5,7), 0B0 [4,6)
   * 0B1 [7,9). */
  sc.comm_latency = 0.0;
  ASSERT_INT_EQ(simulate(g, &sc, &sim, &err), BT_OK);
  EXPECT_NEAR(bt_sim_makespan(sim), 9, 1e-12);
  EXPECT_SPAN(sim, g, "1F0", 1, 2);
  EXPECT_SPAN(sim, g, "0B0", 4, 6);
  bt_sim_destroy(sim);
  bt_graph_destroy(g);
  bt_plan_destroy(p);
}

TEST(sim_latency_does_not_touch_single_device_plans)
{
  bt_plan_t *p = plan_from("0F0,1F0,1B0,0B0\n");
  bt_sim_config_t sc = BT_SIM_CONFIG_INIT;
  bt_graph_t *g;
  bt_sim_t *sim;
  bt_error_t err;

  ASSERT_TRUE(p != NULL);
  ASSERT_INT_EQ(build(p, NULL, NULL, &g, &err), BT_OK);
  sc.comm_latency = 100.0;
  ASSERT_INT_EQ(simulate(g, &sc, &sim, &err), BT_OK);
  EXPECT_NEAR(bt_sim_makespan(sim), 1 + 1 + 2 + 2, 1e-12);
  EXPECT_NEAR(bt_sim_bubble(sim), 0.0, 1e-12);
  EXPECT_NEAR(bt_sim_peak_mem(sim, 0), 2, 1e-12);
  bt_sim_destroy(sim);
  bt_graph_destroy(g);
  bt_plan_destroy(p);
}

TEST(sim_split_backward_holds_mem_w_from_i_to_w)
{
  /* One device, one stage, F = 1, I = 2, W = 0.5:
   *   0F0 [0,1) 0I0 [1,3) 0F1 [3,4) 0I1 [4,6) 0W0 [6,6.5) 0W1 [6.5,7)
   * Memory, mem_b = 1, mem_w = 3: 1 after 0F0; 0I0's end frees 1 and
   * holds 3; 0F1 makes 4; 0I1's end makes 6; the Ws free 3 each.  With
   * mem_w = 0 the peak is 1. */
  static const double f[] = {1}, b[] = {2}, w[] = {0.5}, mb[] = {1},
                      mw[] = {3}, mw0[] = {0};
  bt_plan_t *p = plan_from("0F0,0I0,0F1,0I1,0W0,0W1\n");
  bt_sim_config_t sc = BT_SIM_CONFIG_INIT;
  bt_graph_t *g;
  bt_sim_t *sim;
  bt_error_t err;

  ASSERT_TRUE(p != NULL);
  ASSERT_INT_EQ(build(p, NULL, NULL, &g, &err), BT_OK);
  sc.cost_f = f;
  sc.cost_b = b;
  sc.cost_w = w;
  sc.mem_b = mb;
  sc.mem_w = mw;
  ASSERT_INT_EQ(simulate(g, &sc, &sim, &err), BT_OK);
  EXPECT_SPAN(sim, g, "0F0", 0, 1);
  EXPECT_SPAN(sim, g, "0I0", 1, 3);
  EXPECT_SPAN(sim, g, "0F1", 3, 4);
  EXPECT_SPAN(sim, g, "0I1", 4, 6);
  EXPECT_SPAN(sim, g, "0W0", 6, 6.5);
  EXPECT_SPAN(sim, g, "0W1", 6.5, 7);
  EXPECT_NEAR(bt_sim_makespan(sim), 7, 1e-12);
  EXPECT_NEAR(bt_sim_busy(sim, 0), 7, 1e-12);
  EXPECT_NEAR(bt_sim_bubble(sim), 0, 1e-12);
  EXPECT_NEAR(bt_sim_peak_mem(sim, 0), 6, 1e-12);
  bt_sim_destroy(sim);
  sc.mem_w = mw0;
  ASSERT_INT_EQ(simulate(g, &sc, &sim, &err), BT_OK);
  EXPECT_NEAR(bt_sim_peak_mem(sim, 0), 1, 1e-12);
  bt_sim_destroy(sim);
  bt_graph_destroy(g);
  bt_plan_destroy(p);
}

TEST(sim_rejects_negative_or_nan_costs)
{
  static const double neg[] = {1, -1}, ok[] = {1, 1};
  double nan_[2] = {1, NAN}, inf[2] = {INFINITY, 1};
  bt_plan_t *p = plan_from("0F0,0B0\n1F0,1B0\n");
  bt_sim_config_t sc = BT_SIM_CONFIG_INIT;
  bt_graph_t *g;
  bt_sim_t *sim;
  bt_error_t err;

  ASSERT_TRUE(p != NULL);
  ASSERT_INT_EQ(build(p, NULL, NULL, &g, &err), BT_OK);
  sc.cost_f = neg;
  EXPECT_STATUS(simulate(g, &sc, &sim, &err), BT_EINVAL, &err);
  EXPECT_TRUE(sim == NULL);
  EXPECT_STR_CONTAINS(err.message, "cost_f[1]");
  EXPECT_STR_CONTAINS(err.message, ">= 0");
  sc.cost_f = ok;
  sc.cost_w = nan_;
  EXPECT_STATUS(simulate(g, &sc, &sim, &err), BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "cost_w[1]");
  sc.cost_w = NULL;
  sc.mem_b = inf;
  EXPECT_STATUS(simulate(g, &sc, &sim, &err), BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "mem_b[0]");
  sc.mem_b = NULL;
  sc.mem_w = neg;
  EXPECT_STATUS(simulate(g, &sc, &sim, &err), BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "mem_w[1]");
  sc.mem_w = NULL;
  sc.comm_latency = -0.5;
  EXPECT_STATUS(simulate(g, &sc, &sim, &err), BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "comm_latency");
  sc.comm_latency = NAN;
  EXPECT_STATUS(simulate(g, &sc, &sim, &err), BT_EINVAL, &err);
  sc.comm_latency = 0.0;
  EXPECT_STATUS(simulate(g, &sc, &sim, &err), BT_OK, &err);
  bt_sim_destroy(sim);
  bt_graph_destroy(g);
  bt_plan_destroy(p);
}
