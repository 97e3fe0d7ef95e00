/* Skip connections: torchgpipe's five rules, each alone and all at once,
 * the stage mapping, and the partition helper. */
#include <string.h>

#include "baton/skip.h"
#include "test.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

static int
newlines(const char *s)
{
  int n = 0;

  for (; *s; s++)
    n += *s == '\n';
  return n;
}

/* Creates a layout expected to fail with BT_ESKIP; err holds the message. */
static void
expect_eskip(const bt_skip_decl_t *d, size_t n, int32_t layers,
             bt_error_t *err, int problems, const char *file, int line)
{
  bt_skip_layout_t *l = NULL;
  bt_status rc;
  char head[64];

  bt_error_clear(err);
  rc = bt_skip_layout_create(d, n, layers, NULL, &l, err);
  if (rc != BT_ESKIP)
    test_fail(file, line, "got %s, wanted ESKIP: %s", bt_status_name(rc),
              err->message);
  if (l != NULL) {
    test_fail(file, line, "a failed create returned a layout");
    bt_skip_layout_destroy(l);
  }
  if (err->status != BT_ESKIP)
    test_fail(file, line, "err->status is %s", bt_status_name(err->status));
  snprintf(head, sizeof head, "skip layout has %d problem%s:\n", problems,
           problems == 1 ? "" : "s");
  if (strncmp(err->message, head, strlen(head)) != 0)
    test_fail(file, line, "message does not start with '%s': %s", head,
              err->message);
  /* One line per problem under the heading. */
  if (newlines(err->message) != problems)
    test_fail(file, line, "%d problem lines wanted: %s", problems,
              err->message);
}

#define EXPECT_ESKIP(d, n, layers, err, problems)                             \
  expect_eskip((d), (n), (layers), (err), (problems), __FILE__, __LINE__)

TEST(skip_rule_layer_stashes_and_pops_same_name)
{
  static const bt_skip_decl_t d[] = {
      {0, BT_SKIP_STASH, NULL, "x"},
      {1, BT_SKIP_POP, NULL, "x"},
      {1, BT_SKIP_STASH, NULL, "x"},
      {2, BT_SKIP_POP, NULL, "x"},
  };
  static const bt_skip_decl_t alone[] = {
      {3, BT_SKIP_STASH, "blk", "y"},
      {3, BT_SKIP_POP, "blk", "y"},
  };
  bt_error_t err;

  /* Layer 1 pops x from layer 0 and stashes x again for layer 2: the pop
   * and the stash of one layer collide. */
  EXPECT_ESKIP(d, N(d), 4, &err, 1);
  EXPECT_STR_CONTAINS(err.message, "layer 1 both stashes and pops 'x'");
  EXPECT_STR_CONTAINS(err.message, "use the tensor directly");
  EXPECT_ESKIP(alone, N(alone), 4, &err, 1);
  EXPECT_STR_CONTAINS(err.message, "layer 3 both stashes and pops 'y' in "
                                   "namespace 'blk'");
}

TEST(skip_rule_stashed_twice_in_one_namespace)
{
  static const bt_skip_decl_t d[] = {
      {0, BT_SKIP_STASH, NULL, "x"},
      {2, BT_SKIP_STASH, NULL, "x"},
      {3, BT_SKIP_POP, NULL, "x"},
  };
  bt_error_t err;

  EXPECT_ESKIP(d, N(d), 4, &err, 1);
  EXPECT_STR_CONTAINS(err.message, "'x' is stashed twice (layers 0 and 2)");
  EXPECT_STR_CONTAINS(err.message, "rename one or put it in its own "
                                   "namespace");
}

TEST(skip_same_name_in_two_namespaces_is_fine)
{
  static const bt_skip_decl_t d[] = {
      {0, BT_SKIP_STASH, "block0", "x"},
      {2, BT_SKIP_STASH, "block1", "x"},
      {1, BT_SKIP_POP, "block0", "x"},
      {3, BT_SKIP_POP, "block1", "x"},
  };
  bt_skip_layout_t *l = NULL;
  bt_error_t err;

  EXPECT_STATUS(bt_skip_layout_create(d, N(d), 4, NULL, &l, &err), BT_OK,
                &err);
  ASSERT_TRUE(l != NULL);
  ASSERT_INT_EQ(bt_skip_layout_count(l), 2);
  EXPECT_TRUE(strcmp(bt_skip_layout_get(l, 0).ns, "block0") == 0);
  EXPECT_INT_EQ(bt_skip_layout_get(l, 0).stash_layer, 0);
  EXPECT_INT_EQ(bt_skip_layout_get(l, 0).pop_layer, 1);
  EXPECT_TRUE(strcmp(bt_skip_layout_get(l, 1).ns, "block1") == 0);
  EXPECT_INT_EQ(bt_skip_layout_get(l, 1).stash_layer, 2);
  EXPECT_INT_EQ(bt_skip_layout_get(l, 1).pop_layer, 3);
  bt_skip_layout_destroy(l);
}

TEST(skip_rule_popped_twice)
{
  static const bt_skip_decl_t d[] = {
      {0, BT_SKIP_STASH, NULL, "x"},
      {1, BT_SKIP_POP, NULL, "x"},
      {3, BT_SKIP_POP, NULL, "x"},
  };
  bt_error_t err;

  EXPECT_ESKIP(d, N(d), 4, &err, 1);
  EXPECT_STR_CONTAINS(err.message, "'x' is popped twice (layers 1 and 3)");
  EXPECT_STR_CONTAINS(err.message, "popped by exactly one layer");
}

TEST(skip_rule_popped_but_never_stashed_earlier)
{
  static const bt_skip_decl_t no_stash[] = {{2, BT_SKIP_POP, NULL, "x"}};
  static const bt_skip_decl_t late_stash[] = {
      {1, BT_SKIP_POP, NULL, "x"},
      {3, BT_SKIP_STASH, NULL, "x"},
  };
  bt_error_t err;

  EXPECT_ESKIP(no_stash, N(no_stash), 4, &err, 1);
  EXPECT_STR_CONTAINS(err.message, "layer 2 pops 'x', but no earlier layer "
                                   "stashes it");
  EXPECT_STR_CONTAINS(err.message, "stash it in a layer before 2");
  /* Pop before stash breaks two rules: the pop has no earlier stash and
   * the stash no later pop. */
  EXPECT_ESKIP(late_stash, N(late_stash), 4, &err, 2);
  EXPECT_STR_CONTAINS(err.message, "layer 1 pops 'x', but no earlier layer "
                                   "stashes it");
  EXPECT_STR_CONTAINS(err.message, "layer 3 stashes 'x', but no later layer "
                                   "pops it");
}

TEST(skip_rule_stashed_but_never_popped)
{
  static const bt_skip_decl_t d[] = {{1, BT_SKIP_STASH, "enc", "x"}};
  bt_error_t err;

  EXPECT_ESKIP(d, N(d), 4, &err, 1);
  EXPECT_STR_CONTAINS(err.message, "layer 1 stashes 'x' in namespace 'enc', "
                                   "but no later layer pops it");
  EXPECT_STR_CONTAINS(err.message, "pop it after layer 1 or remove the "
                                   "stash");
}

TEST(skip_every_violation_reported_at_once)
{
  static const bt_skip_decl_t d[] = {
      {2, BT_SKIP_STASH, NULL, "a"}, {2, BT_SKIP_POP, NULL, "a"},
      {0, BT_SKIP_STASH, NULL, "b"}, {1, BT_SKIP_STASH, NULL, "b"},
      {5, BT_SKIP_POP, NULL, "b"},   {0, BT_SKIP_STASH, NULL, "c"},
      {3, BT_SKIP_POP, NULL, "c"},   {4, BT_SKIP_POP, NULL, "c"},
      {4, BT_SKIP_POP, NULL, "d"},   {1, BT_SKIP_STASH, NULL, "e"},
      /* a valid one among them */
      {0, BT_SKIP_STASH, NULL, "ok"}, {5, BT_SKIP_POP, NULL, "ok"},
  };
  bt_error_t err;

  EXPECT_ESKIP(d, N(d), 6, &err, 5);
  EXPECT_STR_CONTAINS(err.message, "layer 2 both stashes and pops 'a'");
  EXPECT_STR_CONTAINS(err.message, "'b' is stashed twice (layers 0 and 1)");
  EXPECT_STR_CONTAINS(err.message, "'c' is popped twice (layers 3 and 4)");
  EXPECT_STR_CONTAINS(err.message, "layer 4 pops 'd'");
  EXPECT_STR_CONTAINS(err.message, "layer 1 stashes 'e'");
  EXPECT_TRUE(strstr(err.message, "'ok'") == NULL);
}

TEST(skip_layout_maps_layers_to_stages_by_balance)
{
  static const int32_t balance[] = {2, 1, 3};
  static const int32_t want_stage[] = {0, 0, 1, 2, 2, 2};
  int32_t layer_stage[6];
  char name[8] = "h";
  bt_skip_decl_t d[] = {
      {4, BT_SKIP_POP, NULL, name},
      {1, BT_SKIP_STASH, NULL, name},
      {0, BT_SKIP_STASH, "ns", "g"},
      {1, BT_SKIP_POP, "ns", "g"},
  };
  bt_skip_layout_t *l = NULL;
  bt_error_t err;
  bt_skip_t s;

  ASSERT_INT_EQ(bt_partition_from_balance(balance, 3, 6, layer_stage, &err),
                BT_OK);
  for (int i = 0; i < 6; i++)
    EXPECT_INT_EQ(layer_stage[i], want_stage[i]);
  ASSERT_INT_EQ(bt_skip_layout_create(d, N(d), 6, layer_stage, &l, &err),
                BT_OK);
  /* The layout copied the strings. */
  strcpy(name, "zz");
  ASSERT_INT_EQ(bt_skip_layout_count(l), 2);
  s = bt_skip_layout_get(l, 0); /* stash-layer order: g (0) then h (1) */
  EXPECT_TRUE(strcmp(s.name, "g") == 0 && strcmp(s.ns, "ns") == 0);
  EXPECT_INT_EQ(s.stash_layer, 0);
  EXPECT_INT_EQ(s.pop_layer, 1);
  EXPECT_INT_EQ(s.stash_stage, 0);
  EXPECT_INT_EQ(s.pop_stage, 0);
  s = bt_skip_layout_get(l, 1);
  EXPECT_TRUE(strcmp(s.name, "h") == 0 && strcmp(s.ns, "") == 0);
  EXPECT_INT_EQ(s.stash_layer, 1);
  EXPECT_INT_EQ(s.pop_layer, 4);
  EXPECT_INT_EQ(s.stash_stage, 0);
  EXPECT_INT_EQ(s.pop_stage, 2);
  EXPECT_INT_EQ(bt_skip_layout_max_stage(l), 2);
  EXPECT_INT_EQ(bt_skip_layout_get(l, 2).stash_layer, -1);
  bt_skip_layout_destroy(l);
  /* Identity mapping when layer_stage is NULL. */
  ASSERT_INT_EQ(bt_skip_layout_create(d, 2, 6, NULL, &l, &err), BT_OK);
  EXPECT_INT_EQ(bt_skip_layout_get(l, 0).stash_stage, 1);
  EXPECT_INT_EQ(bt_skip_layout_get(l, 0).pop_stage, 4);
  EXPECT_INT_EQ(bt_skip_layout_max_stage(l), 4);
  bt_skip_layout_destroy(l);
  /* No declarations: an empty layout. */
  ASSERT_INT_EQ(bt_skip_layout_create(NULL, 0, 6, NULL, &l, &err), BT_OK);
  EXPECT_INT_EQ(bt_skip_layout_count(l), 0);
  EXPECT_INT_EQ(bt_skip_layout_max_stage(l), -1);
  bt_skip_layout_destroy(l);
  EXPECT_INT_EQ(bt_skip_layout_count(NULL), 0);
  EXPECT_INT_EQ(bt_skip_layout_max_stage(NULL), -1);
}

TEST(partition_from_balance_errors)
{
  static const int32_t zero[] = {2, 0, 4};
  static const int32_t neg[] = {3, -1, 4};
  static const int32_t short_[] = {2, 2};
  int32_t layer_stage[8];
  bt_error_t err;

  bt_error_clear(&err);
  EXPECT_STATUS(bt_partition_from_balance(zero, 3, 6, layer_stage, &err),
                BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "balance[1] = 0");
  EXPECT_STR_CONTAINS(err.message, "at least one layer");
  EXPECT_STATUS(bt_partition_from_balance(neg, 3, 6, layer_stage, &err),
                BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "balance[1] = -1");
  EXPECT_STATUS(bt_partition_from_balance(short_, 2, 5, layer_stage, &err),
                BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "sums to 4 layers but the model has 5");
  EXPECT_STATUS(bt_partition_from_balance(short_, 2, 3, layer_stage, &err),
                BT_EINVAL, &err);
  EXPECT_STATUS(bt_partition_from_balance(short_, 0, 0, layer_stage, &err),
                BT_EINVAL, &err);
  EXPECT_STATUS(bt_partition_from_balance(NULL, 2, 4, layer_stage, &err),
                BT_EINVAL, &err);
  EXPECT_STATUS(bt_partition_from_balance(short_, 2, 4, layer_stage, &err),
                BT_OK, &err);
}

TEST(skip_layer_out_of_range)
{
  static const bt_skip_decl_t high[] = {
      {0, BT_SKIP_STASH, NULL, "x"},
      {6, BT_SKIP_POP, NULL, "x"},
  };
  static const bt_skip_decl_t low[] = {
      {-1, BT_SKIP_STASH, NULL, "x"},
      {2, BT_SKIP_POP, NULL, "x"},
  };
  static const bt_skip_decl_t bad_op[] = {
      {0, 7, NULL, "x"},
      {2, BT_SKIP_POP, NULL, "x"},
  };
  static const bt_skip_decl_t no_name[] = {
      {0, BT_SKIP_STASH, NULL, NULL},
  };
  bt_skip_layout_t *l = NULL;
  bt_error_t err;

  EXPECT_STATUS(bt_skip_layout_create(high, 2, 6, NULL, &l, &err), BT_EINVAL,
                &err);
  EXPECT_TRUE(l == NULL);
  EXPECT_STR_CONTAINS(err.message, "'x' is declared at layer 6");
  EXPECT_STR_CONTAINS(err.message, "layers 0..5");
  EXPECT_STATUS(bt_skip_layout_create(low, 2, 6, NULL, &l, &err), BT_EINVAL,
                &err);
  EXPECT_STR_CONTAINS(err.message, "layer -1");
  EXPECT_STATUS(bt_skip_layout_create(bad_op, 2, 6, NULL, &l, &err),
                BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "BT_SKIP_STASH or BT_SKIP_POP");
  EXPECT_STATUS(bt_skip_layout_create(no_name, 1, 6, NULL, &l, &err),
                BT_EINVAL, &err);
  EXPECT_STATUS(bt_skip_layout_create(high, 2, 0, NULL, &l, &err), BT_EINVAL,
                &err);
  EXPECT_STATUS(bt_skip_layout_create(NULL, 2, 6, NULL, &l, &err), BT_EINVAL,
                &err);
  EXPECT_TRUE(l == NULL);
}

TEST(skip_decreasing_layer_stage)
{
  static const int32_t down[] = {0, 1, 0, 2};
  static const int32_t negative[] = {-1, 0, 0, 1};
  static const bt_skip_decl_t d[] = {
      {0, BT_SKIP_STASH, NULL, "x"},
      {3, BT_SKIP_POP, NULL, "x"},
  };
  bt_skip_layout_t *l = NULL;
  bt_error_t err;

  EXPECT_STATUS(bt_skip_layout_create(d, 2, 4, down, &l, &err), BT_EINVAL,
                &err);
  EXPECT_TRUE(l == NULL);
  EXPECT_STR_CONTAINS(err.message, "layer 2 is on stage 0");
  EXPECT_STR_CONTAINS(err.message, "never decrease");
  EXPECT_STATUS(bt_skip_layout_create(d, 2, 4, negative, &l, &err),
                BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "layer 0 is on stage -1");
}
