/* Plan IR and its CSV form: action text, plan editing, the CSV reader's
 * bad-input table, and every built-in schedule through CSV and back. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sched_util.h"
#include "test.h"

static bt_action_t
act(int32_t stage, int32_t kind, int32_t mb)
{
  bt_action_t a = {stage, kind, mb};
  return a;
}

static int
same_action(bt_action_t a, bt_action_t b)
{
  return a.stage == b.stage && a.kind == b.kind && a.microbatch == b.microbatch;
}

/* Parses a NUL-terminated CSV text; returns the status. */
static bt_status
parse(const char *text, const bt_plan_shape_t *expect, bt_plan_t **out,
      bt_error_t *err)
{
  *out = NULL;
  bt_error_clear(err);
  return bt_plan_parse_csv(text, strlen(text), expect, out, err);
}

/* The plan's CSV text (malloc'd) through open_memstream. */
static char *
to_csv(const bt_plan_t *plan, size_t *len)
{
  char *buf = NULL;
  size_t n = 0;
  FILE *f = open_memstream(&buf, &n);

  if (f == NULL)
    return NULL;
  if (bt_plan_write_csv(plan, f) != BT_OK) {
    fclose(f);
    free(buf);
    return NULL;
  }
  fclose(f);
  *len = n;
  return buf;
}

/* ---- actions ----------------------------------------------------------- */

TEST(action_parse_format_round_trip)
{
  static const struct {
    const char *text;
    bt_action_t want;
  } cases[] = {
      {"2F0", {2, BT_ACT_F, 0}},
      {"12I103", {12, BT_ACT_I, 103}},
      {"0W7", {0, BT_ACT_W, 7}},
      {"3B2", {3, BT_ACT_B, 2}},
      {"2147483647F2147483647", {2147483647, BT_ACT_F, 2147483647}},
  };

  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    bt_action_t a = {99, 99, 99};
    char buf[BT_ACTION_TEXT_MAX];
    size_t len = strlen(cases[i].text);
    EXPECT_STATUS(bt_action_parse(cases[i].text, len, &a), BT_OK, NULL);
    EXPECT_TRUE(same_action(a, cases[i].want));
    EXPECT_INT_EQ(bt_action_format(a, buf, sizeof buf), len);
    EXPECT_TRUE(strcmp(buf, cases[i].text) == 0);
  }
}

TEST(action_parse_reads_exactly_len_bytes)
{
  bt_action_t a;

  EXPECT_STATUS(bt_action_parse("2F0,9B9", 3, &a), BT_OK, NULL);
  EXPECT_TRUE(same_action(a, act(2, BT_ACT_F, 0)));
  EXPECT_STATUS(bt_action_parse("12I103", 4, &a), BT_OK, NULL);
  EXPECT_TRUE(same_action(a, act(12, BT_ACT_I, 1)));
}

TEST(action_parse_empty_is_idle)
{
  bt_action_t a = {5, BT_ACT_F, 5};
  char buf[8] = "junk";

  EXPECT_STATUS(bt_action_parse("", 0, &a), BT_OK, NULL);
  EXPECT_INT_EQ(a.kind, BT_ACT_IDLE);
  EXPECT_INT_EQ(a.stage, -1);
  EXPECT_INT_EQ(a.microbatch, -1);
  EXPECT_INT_EQ(bt_action_format(a, buf, sizeof buf), 0);
  EXPECT_INT_EQ(buf[0], '\0');
}

TEST(action_parse_rejects)
{
  static const char *bad[] = {"F0",     "2X0",  "2F",   "2F0x", "-1F0",
                              "99999999999F0",  "2f0",  " 2F0", "2F 0",
                              "2F-1",   "2F99999999999", "B",  "22"};

  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    bt_action_t a = {7, BT_ACT_W, 7};
    bt_status rc = bt_action_parse(bad[i], strlen(bad[i]), &a);
    if (rc != BT_EPARSE)
      test_fail(__FILE__, __LINE__, "'%s' parsed as %s, wanted EPARSE",
                bad[i], bt_status_name(rc));
    /* A failed parse leaves the output alone. */
    EXPECT_TRUE(same_action(a, act(7, BT_ACT_W, 7)));
  }
  EXPECT_STATUS(bt_action_parse(NULL, 0, &(bt_action_t){0, 0, 0}), BT_EINVAL,
                NULL);
}

TEST(action_format_truncates_like_snprintf)
{
  char buf[4];

  EXPECT_INT_EQ(bt_action_format(act(12, BT_ACT_I, 103), buf, sizeof buf), 6);
  EXPECT_TRUE(strcmp(buf, "12I") == 0);
  EXPECT_INT_EQ(bt_action_kind_letter(BT_ACT_F), 'F');
  EXPECT_INT_EQ(bt_action_kind_letter(BT_ACT_B), 'B');
  EXPECT_INT_EQ(bt_action_kind_letter(BT_ACT_I), 'I');
  EXPECT_INT_EQ(bt_action_kind_letter(BT_ACT_W), 'W');
  EXPECT_INT_EQ(bt_action_kind_letter(BT_ACT_IDLE), '-');
  EXPECT_INT_EQ(bt_action_kind_letter(9), '?');
}

/* ---- plan editing --------------------------------------------------------- */

TEST(plan_create_bad_args)
{
  bt_plan_t *p = NULL;

  EXPECT_STATUS(bt_plan_create(0, 1, 1, &p), BT_EINVAL, NULL);
  EXPECT_STATUS(bt_plan_create(1, 0, 1, &p), BT_EINVAL, NULL);
  EXPECT_STATUS(bt_plan_create(1, 1, 0, &p), BT_EINVAL, NULL);
  EXPECT_STATUS(bt_plan_create(-3, 1, 1, &p), BT_EINVAL, NULL);
  EXPECT_STATUS(bt_plan_create(1, 1, 1, NULL), BT_EINVAL, NULL);
  EXPECT_TRUE(p == NULL);
  ASSERT_INT_EQ(bt_plan_create(2, 3, 4, &p), BT_OK);
  EXPECT_INT_EQ(bt_plan_devices(p), 2);
  EXPECT_INT_EQ(bt_plan_stages(p), 3);
  EXPECT_INT_EQ(bt_plan_microbatches(p), 4);
  EXPECT_INT_EQ(bt_plan_length(p, 0), 0);
  EXPECT_INT_EQ(bt_plan_length(p, 1), 0);
  EXPECT_INT_EQ(bt_plan_length(p, 2), 0);
  EXPECT_INT_EQ(bt_plan_action(p, 0, 0).kind, BT_ACT_IDLE);
  bt_plan_destroy(p);
  bt_plan_destroy(NULL);
}

TEST(plan_append_range_errors_leave_plan_unchanged)
{
  bt_plan_t *p, *before;
  static const struct {
    int32_t device;
    bt_action_t a;
  } bad[] = {
      {-1, {0, BT_ACT_F, 0}}, {2, {0, BT_ACT_F, 0}}, {0, {3, BT_ACT_F, 0}},
      {0, {-1, BT_ACT_F, 0}}, {0, {0, BT_ACT_F, 4}}, {0, {0, BT_ACT_B, -1}},
      {0, {0, 5, 0}},         {0, {0, -1, 0}},
  };

  ASSERT_INT_EQ(bt_plan_create(2, 3, 4, &p), BT_OK);
  EXPECT_STATUS(bt_plan_append(p, 0, act(0, BT_ACT_F, 0)), BT_OK, NULL);
  EXPECT_STATUS(bt_plan_append(p, 1, act(2, BT_ACT_W, 3)), BT_OK, NULL);
  ASSERT_INT_EQ(bt_plan_clone(p, &before), BT_OK);
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    bt_status rc = bt_plan_append(p, bad[i].device, bad[i].a);
    if (rc != BT_EINVAL)
      test_fail(__FILE__, __LINE__, "case %zu: %s, wanted EINVAL", i,
                bt_status_name(rc));
    EXPECT_TRUE(bt_plan_equal(p, before));
  }
  EXPECT_STATUS(bt_plan_append(NULL, 0, act(0, BT_ACT_F, 0)), BT_EINVAL,
                NULL);
  EXPECT_INT_EQ(bt_plan_length(p, 0), 1);
  EXPECT_INT_EQ(bt_plan_length(p, 1), 1);
  /* IDLE carries no stage or microbatch, whatever the caller wrote. */
  EXPECT_STATUS(bt_plan_append(p, 0, act(77, BT_ACT_IDLE, 88)), BT_OK, NULL);
  EXPECT_TRUE(same_action(bt_plan_action(p, 0, 1), act(-1, BT_ACT_IDLE, -1)));
  EXPECT_TRUE(!bt_plan_equal(p, before));
  bt_plan_destroy(before);
  bt_plan_destroy(p);
}

TEST(plan_append_grows_and_keeps_order)
{
  bt_plan_t *p;

  ASSERT_INT_EQ(bt_plan_create(1, 1, 100, &p), BT_OK);
  for (int k = 0; k < 100; k++)
    ASSERT_INT_EQ(bt_plan_append(p, 0, act(0, BT_ACT_F, k)), BT_OK);
  ASSERT_INT_EQ(bt_plan_length(p, 0), 100);
  for (int k = 0; k < 100; k++)
    EXPECT_TRUE(same_action(bt_plan_action(p, 0, (size_t)k),
                            act(0, BT_ACT_F, k)));
  EXPECT_INT_EQ(bt_plan_action(p, 0, 100).kind, BT_ACT_IDLE);
  EXPECT_INT_EQ(bt_plan_action(p, 1, 0).kind, BT_ACT_IDLE);
  EXPECT_INT_EQ(bt_plan_action(p, -1, 0).kind, BT_ACT_IDLE);
  EXPECT_INT_EQ(bt_plan_length(p, 5), 0);
  bt_plan_destroy(p);
}

TEST(plan_equal_and_clone)
{
  bt_plan_t *a, *b, *c, *d;

  ASSERT_INT_EQ(bt_plan_create(2, 2, 2, &a), BT_OK);
  bt_plan_append(a, 0, act(0, BT_ACT_F, 0));
  bt_plan_append(a, 0, act(-1, BT_ACT_IDLE, -1));
  bt_plan_append(a, 1, act(1, BT_ACT_F, 0));
  ASSERT_INT_EQ(bt_plan_clone(a, &b), BT_OK);
  EXPECT_TRUE(bt_plan_equal(a, b));
  EXPECT_TRUE(bt_plan_equal(b, a));
  EXPECT_INT_EQ(bt_plan_length(b, 0), 2);
  EXPECT_INT_EQ(bt_plan_action(b, 0, 1).kind, BT_ACT_IDLE);
  /* The clone is independent of the original. */
  bt_plan_append(b, 1, act(1, BT_ACT_B, 0));
  EXPECT_TRUE(!bt_plan_equal(a, b));
  EXPECT_INT_EQ(bt_plan_length(a, 1), 1);
  /* Same lists, different kind in one place. */
  ASSERT_INT_EQ(bt_plan_create(2, 2, 2, &c), BT_OK);
  bt_plan_append(c, 0, act(0, BT_ACT_B, 0));
  bt_plan_append(c, 0, act(-1, BT_ACT_IDLE, -1));
  bt_plan_append(c, 1, act(1, BT_ACT_F, 0));
  EXPECT_TRUE(!bt_plan_equal(a, c));
  /* Same lists, different shape. */
  ASSERT_INT_EQ(bt_plan_create(2, 2, 3, &d), BT_OK);
  bt_plan_append(d, 0, act(0, BT_ACT_F, 0));
  bt_plan_append(d, 0, act(-1, BT_ACT_IDLE, -1));
  bt_plan_append(d, 1, act(1, BT_ACT_F, 0));
  EXPECT_TRUE(!bt_plan_equal(a, d));
  bt_plan_destroy(a);
  bt_plan_destroy(b);
  bt_plan_destroy(c);
  bt_plan_destroy(d);
}

/* ---- CSV reading ------------------------------------------------------------ */

TEST(csv_valid_with_blanks_comments_crlf_idle_and_trailing_lines)
{
  static const char text[] =
      "# a 1F1B plan for two devices\r\n"
      "  0F0 ,\t0F1,0B0 , 0B1  \r\n"
      "# comments between device lines are not devices\n"
      "1F0,1B0,,1F1,1B1\r\n"
      "\n"
      "   \r\n"
      "\n";
  bt_error_t err;
  bt_plan_t *p;

  ASSERT_INT_EQ(parse(text, NULL, &p, &err), BT_OK);
  EXPECT_INT_EQ(bt_plan_devices(p), 2);
  EXPECT_INT_EQ(bt_plan_stages(p), 2);
  EXPECT_INT_EQ(bt_plan_microbatches(p), 2);
  ASSERT_INT_EQ(bt_plan_length(p, 0), 4);
  ASSERT_INT_EQ(bt_plan_length(p, 1), 5);
  EXPECT_TRUE(same_action(bt_plan_action(p, 0, 0), act(0, BT_ACT_F, 0)));
  EXPECT_TRUE(same_action(bt_plan_action(p, 0, 1), act(0, BT_ACT_F, 1)));
  EXPECT_TRUE(same_action(bt_plan_action(p, 0, 2), act(0, BT_ACT_B, 0)));
  EXPECT_TRUE(same_action(bt_plan_action(p, 0, 3), act(0, BT_ACT_B, 1)));
  EXPECT_TRUE(same_action(bt_plan_action(p, 1, 0), act(1, BT_ACT_F, 0)));
  EXPECT_TRUE(same_action(bt_plan_action(p, 1, 1), act(1, BT_ACT_B, 0)));
  EXPECT_TRUE(same_action(bt_plan_action(p, 1, 2), act(-1, BT_ACT_IDLE, -1)));
  EXPECT_TRUE(same_action(bt_plan_action(p, 1, 3), act(1, BT_ACT_F, 1)));
  EXPECT_TRUE(same_action(bt_plan_action(p, 1, 4), act(1, BT_ACT_B, 1)));
  bt_plan_destroy(p);
}

TEST(csv_without_final_newline_and_with_blank_cells_around_idle)
{
  bt_error_t err;
  bt_plan_t *p;

  ASSERT_INT_EQ(parse("0F0, ,0B0\n1F0,1B0", NULL, &p, &err), BT_OK);
  EXPECT_INT_EQ(bt_plan_devices(p), 2);
  ASSERT_INT_EQ(bt_plan_length(p, 0), 3);
  EXPECT_INT_EQ(bt_plan_action(p, 0, 1).kind, BT_ACT_IDLE);
  EXPECT_INT_EQ(bt_plan_length(p, 1), 2);
  bt_plan_destroy(p);
}

TEST(csv_shape_inferred_from_highest_indices)
{
  bt_error_t err;
  bt_plan_t *p;

  ASSERT_INT_EQ(parse("0F0\n\n2F4\n", NULL, &p, &err), BT_OK);
  /* A blank line between device lines is a device with nothing to do. */
  EXPECT_INT_EQ(bt_plan_devices(p), 3);
  EXPECT_INT_EQ(bt_plan_length(p, 1), 0);
  EXPECT_INT_EQ(bt_plan_stages(p), 3);
  EXPECT_INT_EQ(bt_plan_microbatches(p), 5);
  bt_plan_destroy(p);
}

TEST(csv_header_declares_shape)
{
  static const char text[] =
      "# baton plan v1: devices=3 stages=4 microbatches=2\n"
      "0F0,0F1,0B0,0B1\n"
      "1F0,1F1,1B0,1B1\n"
      "2F0,2F1,2B0,2B1\n";
  bt_plan_shape_t same = {3, 4, 2}, partial = {0, 4, 0};
  bt_error_t err;
  bt_plan_t *p;

  ASSERT_INT_EQ(parse(text, NULL, &p, &err), BT_OK);
  EXPECT_INT_EQ(bt_plan_devices(p), 3);
  EXPECT_INT_EQ(bt_plan_stages(p), 4); /* not 3: the header wins */
  EXPECT_INT_EQ(bt_plan_microbatches(p), 2);
  bt_plan_destroy(p);
  EXPECT_STATUS(parse(text, &same, &p, &err), BT_OK, &err);
  bt_plan_destroy(p);
  EXPECT_STATUS(parse(text, &partial, &p, &err), BT_OK, &err);
  bt_plan_destroy(p);
}

TEST(csv_header_keeps_trailing_empty_device_lines)
{
  /* What the writer emits for a device with nothing to do: an empty last
   * line, which only the header says is a device. */
  static const char text[] =
      "# baton plan v1: devices=3 stages=2 microbatches=1\n"
      "0F0,0B0\n"
      "1F0,1B0\n"
      "\n";
  bt_error_t err;
  bt_plan_t *p;

  ASSERT_INT_EQ(parse(text, NULL, &p, &err), BT_OK);
  EXPECT_INT_EQ(bt_plan_devices(p), 3);
  EXPECT_INT_EQ(bt_plan_length(p, 2), 0);
  bt_plan_destroy(p);
}

TEST(csv_header_conflicting_with_expect)
{
  static const char text[] =
      "# baton plan v1: devices=2 stages=4 microbatches=2\n"
      "0F0,0B0\n"
      "1F0,1B0\n";
  bt_plan_shape_t want_s = {0, 3, 0}, want_m = {2, 4, 3}, want_d = {3, 0, 0};
  bt_error_t err;
  bt_plan_t *p;

  EXPECT_STATUS(parse(text, &want_s, &p, &err), BT_EPARSE, &err);
  EXPECT_TRUE(p == NULL);
  EXPECT_INT_EQ(err.status, BT_EPARSE);
  EXPECT_STR_CONTAINS(err.message, "stages=4");
  EXPECT_STR_CONTAINS(err.message, "3");
  EXPECT_STATUS(parse(text, &want_m, &p, &err), BT_EPARSE, &err);
  EXPECT_STR_CONTAINS(err.message, "microbatches=2");
  EXPECT_STATUS(parse(text, &want_d, &p, &err), BT_EPARSE, &err);
  EXPECT_STR_CONTAINS(err.message, "devices=2");
}

TEST(csv_bad_header_value)
{
  bt_error_t err;
  bt_plan_t *p;

  EXPECT_STATUS(parse("# baton plan v1: devices=2 stages=zero "
                      "microbatches=1\n0F0,0B0\n1F0,1B0\n",
                      NULL, &p, &err),
                BT_EPARSE, &err);
  EXPECT_STR_CONTAINS(err.message, "line 1");
  EXPECT_STR_CONTAINS(err.message, "stages=");
}

/* ---- the bad-input table ------------------------------------------------ */

TEST(csv_bad_token)
{
  bt_error_t err;
  bt_plan_t *p;

  EXPECT_STATUS(parse("0F0,0Q1\n", NULL, &p, &err), BT_EPARSE, &err);
  EXPECT_TRUE(p == NULL);
  EXPECT_INT_EQ(err.status, BT_EPARSE);
  EXPECT_STR_CONTAINS(err.message, "line 1, cell 2");
  EXPECT_STR_CONTAINS(err.message, "'0Q1'");
  EXPECT_STR_CONTAINS(err.message, "write <stage><F|B|I|W><microbatch>");
  /* Comment lines count as lines; cells are counted from 1. */
  EXPECT_STATUS(parse("# plan\n0F0,0B0\n 1F0 , 1 B0\n", NULL, &p, &err),
                BT_EPARSE, &err);
  EXPECT_STR_CONTAINS(err.message, "line 3, cell 2");
  EXPECT_STR_CONTAINS(err.message, "'1 B0'");
}

TEST(csv_unknown_stage_against_expect)
{
  bt_plan_shape_t want = {0, 2, 0};
  bt_error_t err;
  bt_plan_t *p;

  EXPECT_STATUS(parse("0F0,0B0\n1F0,2F0\n", &want, &p, &err), BT_EPARSE,
                &err);
  EXPECT_TRUE(p == NULL);
  EXPECT_STR_CONTAINS(err.message, "line 2, cell 2");
  EXPECT_STR_CONTAINS(err.message, "stage 2");
  EXPECT_STR_CONTAINS(err.message, "2 stages");
  /* What to do: use a stage in range or declare more. */
  EXPECT_STR_CONTAINS(err.message, "use a stage in 0..1");
}

TEST(csv_unknown_stage_against_header)
{
  static const char text[] =
      "# baton plan v1: devices=2 stages=2 microbatches=1\n"
      "0F0,0B0\n"
      "1F0,1B0,3B0\n";
  bt_error_t err;
  bt_plan_t *p;

  EXPECT_STATUS(parse(text, NULL, &p, &err), BT_EPARSE, &err);
  EXPECT_STR_CONTAINS(err.message, "line 3, cell 3");
  EXPECT_STR_CONTAINS(err.message, "3B0");
  EXPECT_STR_CONTAINS(err.message, "stage 3");
  EXPECT_STR_CONTAINS(err.message, "use a stage in 0..1");
}

TEST(csv_microbatch_out_of_range)
{
  bt_plan_shape_t want = {0, 0, 2};
  bt_error_t err;
  bt_plan_t *p;

  EXPECT_STATUS(parse("0F0,0F1,0F2\n", &want, &p, &err), BT_EPARSE, &err);
  EXPECT_TRUE(p == NULL);
  EXPECT_STR_CONTAINS(err.message, "line 1, cell 3");
  EXPECT_STR_CONTAINS(err.message, "microbatch 2");
  EXPECT_STR_CONTAINS(err.message, "2 microbatches");
  EXPECT_STR_CONTAINS(err.message, "use a microbatch in 0..1");
}

TEST(csv_duplicate_action_names_both_places)
{
  bt_error_t err;
  bt_plan_t *p;

  EXPECT_STATUS(parse("# two devices\n0F0,0B0,1F0\n1F0,1B0\n", NULL, &p,
                      &err),
                BT_EPARSE, &err);
  EXPECT_TRUE(p == NULL);
  EXPECT_STR_CONTAINS(err.message, "line 3, cell 1");
  EXPECT_STR_CONTAINS(err.message, "1F0 is listed twice");
  EXPECT_STR_CONTAINS(err.message, "first at line 2, cell 3");
  EXPECT_STR_CONTAINS(err.message, "every action appears once");
  /* The same (stage, microbatch) with another kind is not a duplicate. */
  EXPECT_STATUS(parse("0F0,0I0,0W0,0B0\n", NULL, &p, &err), BT_OK, &err);
  bt_plan_destroy(p);
}

TEST(csv_device_line_count_differs_from_expect)
{
  bt_plan_shape_t want = {3, 0, 0};
  bt_error_t err;
  bt_plan_t *p;

  EXPECT_STATUS(parse("0F0,0B0\n1F0,1B0\n", &want, &p, &err), BT_EPARSE,
                &err);
  EXPECT_TRUE(p == NULL);
  EXPECT_STR_CONTAINS(err.message, "2 device lines");
  EXPECT_STR_CONTAINS(err.message, "3 devices");
  EXPECT_STR_CONTAINS(err.message, "one line per device");
  want.devices = 1;
  EXPECT_STATUS(parse("0F0,0B0\n1F0,1B0\n", &want, &p, &err), BT_EPARSE,
                &err);
  EXPECT_STR_CONTAINS(err.message, "2 device lines but 1 devices");
}

TEST(csv_empty_file_or_no_actions)
{
  static const char *empty[] = {"", "\n\n", "# only a comment\n",
                                "# baton plan v1: devices=1 stages=1 "
                                "microbatches=1\n"};
  bt_error_t err;
  bt_plan_t *p;

  for (size_t i = 0; i < sizeof empty / sizeof empty[0]; i++) {
    EXPECT_STATUS(parse(empty[i], NULL, &p, &err), BT_EPARSE, &err);
    EXPECT_TRUE(p == NULL);
    EXPECT_STR_CONTAINS(err.message, "no device lines");
    EXPECT_STR_CONTAINS(err.message, "write one line per device");
  }
  EXPECT_STATUS(parse(",,\n,\n", NULL, &p, &err), BT_EPARSE, &err);
  EXPECT_TRUE(p == NULL);
  EXPECT_STR_CONTAINS(err.message, "no actions");
  EXPECT_STR_CONTAINS(err.message, "write e.g.");
  EXPECT_STATUS(bt_plan_parse_csv(NULL, 0, NULL, &p, &err), BT_EINVAL, &err);
}

/* ---- files ------------------------------------------------------------------ */

/* A fresh temporary directory; the caller removes it. */
static int
make_tmpdir(char *buf, size_t n)
{
  snprintf(buf, n, "/tmp/bt_test_plan_XXXXXX");
  return mkdtemp(buf) != NULL;
}

TEST(load_csv_missing_file)
{
  static const char path[] = "/nonexistent-baton-dir/plan.csv";
  bt_error_t err;
  bt_plan_t *p = NULL;

  bt_error_clear(&err);
  EXPECT_STATUS(bt_plan_load_csv(path, NULL, &p, &err), BT_ENOENT, &err);
  EXPECT_TRUE(p == NULL);
  EXPECT_INT_EQ(err.status, BT_ENOENT);
  EXPECT_STR_CONTAINS(err.message, path);
  EXPECT_STR_CONTAINS(err.message, "check the path");
}

TEST(save_then_load_gives_equal_plan)
{
  char dir[64], path[128];
  bt_plan_t *p, *q = NULL;
  bt_error_t err;
  FILE *f;

  ASSERT_TRUE(make_tmpdir(dir, sizeof dir));
  snprintf(path, sizeof path, "%s/plan.csv", dir);
  ASSERT_INT_EQ(bt_plan_create(3, 3, 2, &p), BT_OK);
  bt_plan_append(p, 0, act(0, BT_ACT_F, 0));
  bt_plan_append(p, 0, act(-1, BT_ACT_IDLE, -1));
  bt_plan_append(p, 0, act(0, BT_ACT_I, 1));
  bt_plan_append(p, 1, act(1, BT_ACT_W, 1));
  /* device 2 has nothing to do; stage 2 and microbatch 1 of F are unused:
   * only the header keeps the shape. */
  EXPECT_STATUS(bt_plan_save_csv(p, path, &err), BT_OK, &err);
  EXPECT_STATUS(bt_plan_load_csv(path, NULL, &q, &err), BT_OK, &err);
  if (q != NULL)
    EXPECT_TRUE(bt_plan_equal(p, q));
  bt_plan_destroy(q);

  /* A parse error from a file names the file, then the line and cell. */
  f = fopen(path, "w");
  ASSERT_TRUE(f != NULL);
  fputs("0F0,0B0\n1F0,xx\n", f);
  fclose(f);
  q = NULL;
  EXPECT_STATUS(bt_plan_load_csv(path, NULL, &q, &err), BT_EPARSE, &err);
  EXPECT_TRUE(q == NULL);
  EXPECT_STR_CONTAINS(err.message, path);
  EXPECT_STR_CONTAINS(err.message, "line 2, cell 2");

  /* Writing into a directory that does not exist names the path. */
  snprintf(path, sizeof path, "%s/no/such/dir.csv", dir);
  EXPECT_STATUS(bt_plan_save_csv(p, path, &err), BT_EIO, &err);
  EXPECT_STR_CONTAINS(err.message, path);

  snprintf(path, sizeof path, "%s/plan.csv", dir);
  unlink(path);
  rmdir(dir);
  bt_plan_destroy(p);
}

TEST(write_csv_format)
{
  bt_plan_t *p;
  size_t len = 0;
  char *text;

  ASSERT_INT_EQ(bt_plan_create(2, 2, 1, &p), BT_OK);
  bt_plan_append(p, 0, act(0, BT_ACT_F, 0));
  bt_plan_append(p, 0, act(-1, BT_ACT_IDLE, -1));
  bt_plan_append(p, 0, act(0, BT_ACT_B, 0));
  bt_plan_append(p, 1, act(1, BT_ACT_F, 0));
  bt_plan_append(p, 1, act(1, BT_ACT_B, 0));
  /* Trailing idles order nothing and are not written. */
  bt_plan_append(p, 1, act(-1, BT_ACT_IDLE, -1));
  bt_plan_append(p, 1, act(-1, BT_ACT_IDLE, -1));
  text = to_csv(p, &len);
  ASSERT_TRUE(text != NULL);
  EXPECT_TRUE(strcmp(text, "# baton plan v1: devices=2 stages=2 "
                           "microbatches=1\n0F0,,0B0\n1F0,1B0\n") == 0);
  EXPECT_INT_EQ(len, strlen(text));
  free(text);
  EXPECT_STATUS(bt_plan_write_csv(NULL, stdout), BT_EINVAL, NULL);
  bt_plan_destroy(p);
}

/* ---- every built-in schedule through CSV ------------------------------------ */

/* Plans `name`, writes it as CSV, parses it back: the plans are equal and
 * simulate identically, task by task. */
static void
check_csv_round_trip(const char *name, int p, int v, int m,
                     const struct run_costs *c)
{
  struct run built, back;
  bt_plan_t *parsed = NULL, *copy = NULL;
  bt_error_t err;
  size_t len = 0;
  char *text;
  bt_status rc;

  rc = run_schedule(name, p, v, m, c, &built);
  if (rc != BT_OK) {
    test_fail(__FILE__, __LINE__, "%s p=%d v=%d m=%d: %s", name, p, v, m,
              built.err.message);
    run_free(&built);
    return;
  }
  text = to_csv(built.plan, &len);
  if (text == NULL) {
    test_fail(__FILE__, __LINE__, "%s: cannot write CSV", name);
    run_free(&built);
    return;
  }
  rc = bt_plan_parse_csv(text, len, NULL, &parsed, &err);
  free(text);
  if (rc != BT_OK) {
    test_fail(__FILE__, __LINE__, "%s: CSV does not parse back: %s", name,
              err.message);
    run_free(&built);
    return;
  }
  if (!bt_plan_equal(parsed, built.plan))
    test_fail(__FILE__, __LINE__, "%s p=%d v=%d m=%d: CSV round trip changed "
              "the plan", name, p, v, m);
  if (bt_plan_clone(parsed, &copy) != BT_OK) {
    test_fail(__FILE__, __LINE__, "clone failed");
    bt_plan_destroy(parsed);
    run_free(&built);
    return;
  }
  bt_plan_destroy(parsed);
  rc = run_plan(copy, c, &back); /* back owns copy */
  if (rc != BT_OK) {
    test_fail(__FILE__, __LINE__, "%s: parsed plan does not simulate: %s",
              name, back.err.message);
  } else {
    int32_t n = bt_graph_task_count(built.graph);
    EXPECT_INT_EQ(bt_graph_task_count(back.graph), n);
    EXPECT_TRUE(bt_sim_makespan(back.sim) == bt_sim_makespan(built.sim));
    EXPECT_TRUE(bt_sim_makespan(built.sim) > 0.0);
    for (int32_t t = 0; t < n && t < bt_graph_task_count(back.graph); t++) {
      bt_task_t a = bt_graph_task(built.graph, t);
      bt_task_t b = bt_graph_task(back.graph, t);
      if (!same_action(a.action, b.action) || a.device != b.device ||
          bt_sim_task_start(built.sim, t) != bt_sim_task_start(back.sim, t) ||
          bt_sim_task_end(built.sim, t) != bt_sim_task_end(back.sim, t)) {
        test_fail(__FILE__, __LINE__, "%s p=%d v=%d m=%d: task %d differs "
                  "after CSV (start %.17g vs %.17g)", name, p, v, m, (int)t,
                  bt_sim_task_start(built.sim, t),
                  bt_sim_task_start(back.sim, t));
        break;
      }
    }
    for (int32_t d = 0; d < p; d++)
      EXPECT_TRUE(bt_sim_peak_mem(built.sim, d) ==
                  bt_sim_peak_mem(back.sim, d));
  }
  run_free(&back);
  run_free(&built);
}

TEST(builtin_schedules_round_trip_through_csv)
{
  static const char *names[] = {"gpipe", "1f1b", "zb-h1", "zb-h2", "auto"};
  static const struct run_costs costs[] = {
      {1, 1, 1, 1, 0, 0, 0},
      {1.5, 2, 0.75, 2, 0.5, 0.25, 0},
  };

  for (size_t c = 0; c < sizeof costs / sizeof costs[0]; c++) {
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
      check_csv_round_trip(names[i], 4, 1, 8, &costs[c]);
    check_csv_round_trip("interleaved", 4, 2, 8, &costs[c]);
    check_csv_round_trip("interleaved", 2, 3, 4, &costs[c]);
  }
}

TEST(schedule_open_csv_file_plans_identically)
{
  static const struct run_costs c = {1, 2, 1, 1, 0, 0, 0};
  static const char *names[] = {"1f1b", "zb-h1", "interleaved"};
  char dir[64], path[128];
  bt_error_t err;

  ASSERT_TRUE(make_tmpdir(dir, sizeof dir));
  snprintf(path, sizeof path, "%s/fixed.csv", dir);
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    int v = strcmp(names[i], "interleaved") == 0 ? 2 : 1;
    struct run built, fixed;
    bt_schedule_t *s = NULL;
    bt_schedule_params_t params = BT_SCHEDULE_PARAMS_INIT;
    bt_plan_t *plan = NULL;

    if (run_schedule(names[i], 4, v, 8, &c, &built) != BT_OK) {
      test_fail(__FILE__, __LINE__, "%s: %s", names[i], built.err.message);
      run_free(&built);
      continue;
    }
    EXPECT_STATUS(bt_plan_save_csv(built.plan, path, &err), BT_OK, &err);
    EXPECT_STATUS(run_schedule(path, 4, v, 8, &c, &fixed), BT_OK, &fixed.err);
    if (fixed.plan != NULL && fixed.sim != NULL) {
      EXPECT_TRUE(bt_plan_equal(fixed.plan, built.plan));
      EXPECT_TRUE(bt_sim_makespan(fixed.sim) == bt_sim_makespan(built.sim));
    }
    run_free(&fixed);

    /* The fixed-plan schedule is named after the file and refuses other
     * shapes, saying which it has. */
    ASSERT_INT_EQ(bt_schedule_open(path, &s, &err), BT_OK);
    EXPECT_TRUE(strcmp(bt_schedule_name(s), "fixed.csv") == 0);
    EXPECT_INT_EQ(bt_schedule_default_virtual(s), v);
    ASSERT_TRUE(bt_schedule_fixed_plan(s) != NULL);
    EXPECT_TRUE(bt_plan_equal(bt_schedule_fixed_plan(s), built.plan));
    params.devices = 4;
    params.virtual_stages = v;
    params.stages = 4 * v;
    params.microbatches = 12;
    EXPECT_STATUS(bt_schedule_make_plan(s, &params, &plan, &err),
                  BT_EUNSUPPORTED, &err);
    EXPECT_TRUE(plan == NULL);
    EXPECT_STR_CONTAINS(err.message, "fixed.csv");
    EXPECT_STR_CONTAINS(err.message, "m=8");
    EXPECT_STR_CONTAINS(err.message, "m=12");
    bt_schedule_destroy(s);
    run_free(&built);
  }
  /* A .csv spec that does not exist is ENOENT with the path. */
  unlink(path);
  {
    bt_schedule_t *s = NULL;
    EXPECT_STATUS(bt_schedule_open(path, &s, &err), BT_ENOENT, &err);
    EXPECT_TRUE(s == NULL);
    EXPECT_STR_CONTAINS(err.message, path);
  }
  rmdir(dir);
}

TEST(fixed_plan_that_cannot_run_is_rejected_at_planning)
{
  /* The CSV parses (shape and ranges are fine) but 1B0 is missing. */
  bt_schedule_params_t params = BT_SCHEDULE_PARAMS_INIT;
  bt_schedule_t *s = NULL;
  bt_plan_t *p = NULL, *out = NULL;
  bt_error_t err;

  ASSERT_INT_EQ(parse("0F0,0B0\n1F0\n", NULL, &p, &err), BT_OK);
  ASSERT_INT_EQ(bt_schedule_from_plan(p, "broken", &s, &err), BT_OK);
  bt_plan_destroy(p); /* the schedule holds a copy */
  params.devices = 2;
  params.stages = 2;
  EXPECT_STATUS(bt_schedule_make_plan(s, &params, &out, &err), BT_EPLAN,
                &err);
  EXPECT_TRUE(out == NULL);
  EXPECT_STR_CONTAINS(err.message, "broken");
  EXPECT_STR_CONTAINS(err.message, "1B0");
  bt_schedule_destroy(s);
}
