/* Property tests with a fixed-seed generator:
 * - random text never crashes the CSV parser, and whatever it accepts
 *   round-trips;
 * - for random shuffles of complete plans, bt_graph_create accepts exactly
 *   the plans that an independent naive executor can run to the end, and
 *   the simulator's timeline of an accepted plan respects every
 *   dependency and device order. */
#include <stdint.h>

#include "baton/baton.h"
#include "test.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint32_t
next(void)
{
  /* xorshift64*: fast, deterministic across platforms. */
  rng ^= rng >> 12;
  rng ^= rng << 25;
  rng ^= rng >> 27;
  return (uint32_t)((rng * 0x2545f4914f6cdd1dull) >> 32);
}

static int
below(int n)
{
  return (int)(next() % (uint32_t)n);
}

/* Appends one random cell: mostly small actions, some empty, some junk. */
static int
random_cell(char *out, size_t n)
{
  static const char kinds[] = "FBIW";
  static const char *junk[] = {" ", "x", "F0", "1Q2", "3F", "#", "1F1 2"};
  int r = below(10);

  if (r < 7)
    return snprintf(out, n, "%d%c%d", below(4), kinds[below(4)], below(4));
  if (r < 8)
    return snprintf(out, n, "%s", "");
  return snprintf(out, n, "%s", junk[below((int)(sizeof junk / sizeof *junk))]);
}

/* Trailing idle steps order nothing and the exporter drops them. */
static int
equal_but_trailing_idles(const bt_plan_t *a, const bt_plan_t *b)
{
  if (bt_plan_devices(a) != bt_plan_devices(b) ||
      bt_plan_stages(a) != bt_plan_stages(b) ||
      bt_plan_microbatches(a) != bt_plan_microbatches(b))
    return 0;
  for (int32_t d = 0; d < bt_plan_devices(a); d++) {
    size_t na = bt_plan_length(a, d), nb = bt_plan_length(b, d);
    while (na > 0 && bt_plan_action(a, d, na - 1).kind == BT_ACT_IDLE)
      na--;
    while (nb > 0 && bt_plan_action(b, d, nb - 1).kind == BT_ACT_IDLE)
      nb--;
    if (na != nb)
      return 0;
    for (size_t i = 0; i < na; i++) {
      bt_action_t x = bt_plan_action(a, d, i), y = bt_plan_action(b, d, i);
      if (x.stage != y.stage || x.kind != y.kind ||
          x.microbatch != y.microbatch)
        return 0;
    }
  }
  return 1;
}

TEST(csv_parser_survives_random_text)
{
  char text[1024];
  int accepted = 0;

  for (int iter = 0; iter < 20000; iter++) {
    int len = 0, lines = below(5);
    bt_plan_t *plan = NULL, *again = NULL;
    bt_error_t err;
    bt_status rc;
    for (int l = 0; l < lines; l++) {
      int cells = below(4);
      for (int c = 0; c < cells; c++) {
        if (c > 0)
          text[len++] = ',';
        len += random_cell(text + len, sizeof text - (size_t)len);
      }
      text[len++] = below(8) ? '\n' : '\r';
    }
    rc = bt_plan_parse_csv(text, (size_t)len, NULL, &plan, &err);
    if (rc != BT_OK) {
      if (rc != BT_EPARSE)
        test_fail(__FILE__, __LINE__, "status %s for random text",
                  bt_status_name(rc));
      continue;
    }
    accepted++;
    {
      char *buf = NULL;
      size_t n = 0;
      FILE *f = open_memstream(&buf, &n);
      ASSERT_TRUE(f != NULL);
      EXPECT_INT_EQ(bt_plan_write_csv(plan, f), BT_OK);
      fclose(f);
      EXPECT_INT_EQ(bt_plan_parse_csv(buf, n, NULL, &again, &err), BT_OK);
      if (again != NULL && !equal_but_trailing_idles(plan, again))
        test_fail(__FILE__, __LINE__, "round trip differs for:\n%.*s\n--\n%s",
                  len, text, buf);
      free(buf);
    }
    bt_plan_destroy(again);
    bt_plan_destroy(plan);
  }
  /* The generator is rich enough that many texts are plans. */
  EXPECT_TRUE(accepted > 1000);
}

#define MAXA 256

struct device_list {
  bt_action_t a[MAXA];
  int n;
};

static int ready(const char *done, int S, int m, bt_action_t a);

/* Builds a complete plan for p devices (stage s on device s % p, S = p*v)
 * and m microbatches, each (stage, mb) with B or I+W at random, in the
 * order of a random run (so it is runnable), then perturbs it with a few
 * random swaps inside device lists (which may make it deadlock). */
static void
random_plan(int p, int S, int m, struct device_list *dl)
{
  bt_action_t pool[MAXA];
  char done[4 * 8 * 8] = {0};
  int n = 0;

  for (int d = 0; d < p; d++)
    dl[d].n = 0;
  for (int s = 0; s < S; s++)
    for (int k = 0; k < m; k++) {
      bt_action_t f = {s, BT_ACT_F, k}, b = {s, BT_ACT_B, k},
                  i = {s, BT_ACT_I, k}, w = {s, BT_ACT_W, k};
      pool[n++] = f;
      if (below(2)) {
        pool[n++] = b;
      } else {
        pool[n++] = i;
        pool[n++] = w;
      }
    }
  while (n > 0) {
    int pick = below(n), j;
    /* The first ready action at or after a random point. */
    for (j = 0; j < n; j++)
      if (ready(done, S, m, pool[(pick + j) % n]))
        break;
    pick = (pick + j) % n;
    dl[pool[pick].stage % p].a[dl[pool[pick].stage % p].n++] = pool[pick];
    done[(pool[pick].stage * m + pool[pick].microbatch) * 4 +
         pool[pick].kind] = 1;
    pool[pick] = pool[--n];
  }
  for (int swaps = below(3); swaps > 0; swaps--) {
    struct device_list *l = &dl[below(p)];
    int x = below(l->n), y = below(l->n);
    bt_action_t t = l->a[x];
    l->a[x] = l->a[y];
    l->a[y] = t;
  }
}

/* done[(s*m+k)*4+kind] */
static int
is_done(const char *done, int m, int s, int kind, int k)
{
  return done[(s * m + k) * 4 + kind];
}

static int
ready(const char *done, int S, int m, bt_action_t a)
{
  int s = a.stage, k = a.microbatch;
  int down_b = s + 1 < S ? (is_done(done, m, s + 1, BT_ACT_B, k) ||
                            is_done(done, m, s + 1, BT_ACT_I, k))
                         : 1;

  switch (a.kind) {
  case BT_ACT_F:
    return s == 0 || is_done(done, m, s - 1, BT_ACT_F, k);
  case BT_ACT_B:
  case BT_ACT_I:
    return is_done(done, m, s, BT_ACT_F, k) && down_b;
  default:
    return is_done(done, m, s, BT_ACT_I, k);
  }
}

/* Runs device heads whenever their inputs are done; 1 if all finish. */
static int
naive_runs_to_end(const struct device_list *dl, int p, int S, int m)
{
  char done[4 * 8 * 8] = {0};
  int pos[8] = {0}, progress = 1, left = 0;

  for (int d = 0; d < p; d++)
    left += dl[d].n;
  while (progress) {
    progress = 0;
    for (int d = 0; d < p; d++)
      while (pos[d] < dl[d].n && ready(done, S, m, dl[d].a[pos[d]])) {
        bt_action_t a = dl[d].a[pos[d]++];
        done[(a.stage * m + a.microbatch) * 4 + a.kind] = 1;
        progress = 1;
        left--;
      }
  }
  return left == 0;
}

static void
check_timeline(const bt_graph_t *g, const bt_sim_t *sim)
{
  for (int32_t t = 0; t < bt_graph_task_count(g); t++) {
    double start = bt_sim_task_start(sim, t), end = bt_sim_task_end(sim, t);
    EXPECT_TRUE(end > start);
    for (int32_t j = 0; j < bt_graph_predecessor_count(g, t); j++) {
      int32_t u = bt_graph_predecessor(g, t, j, NULL);
      if (!(bt_sim_task_end(sim, u) <= start))
        test_fail(__FILE__, __LINE__, "task %d starts before its input ends",
                  (int)t);
    }
  }
  for (int32_t d = 0; d < bt_graph_devices(g); d++)
    for (int32_t i = 1; i < bt_graph_device_task_count(g, d); i++)
      EXPECT_TRUE(bt_sim_task_end(sim, bt_graph_device_task(g, d, i - 1)) <=
                  bt_sim_task_start(sim, bt_graph_device_task(g, d, i)));
}

TEST(validation_accepts_exactly_the_runnable_plans)
{
  struct device_list dl[8];
  int accepted = 0, rejected = 0;

  for (int iter = 0; iter < 20000; iter++) {
    int p = 1 + below(4), v = 1 + below(2), m = 1 + below(4), S = p * v;
    bt_graph_config_t gc = BT_GRAPH_CONFIG_INIT;
    bt_plan_t *plan;
    bt_graph_t *g = NULL;
    bt_sim_t *sim = NULL;
    bt_error_t err;
    bt_status rc;
    int runnable;

    random_plan(p, S, m, dl);
    ASSERT_INT_EQ(bt_plan_create(p, S, m, &plan), BT_OK);
    for (int d = 0; d < p; d++)
      for (int i = 0; i < dl[d].n; i++)
        ASSERT_INT_EQ(bt_plan_append(plan, d, dl[d].a[i]), BT_OK);
    gc.plan = plan;
    rc = bt_graph_create(&gc, &g, &err);
    runnable = naive_runs_to_end(dl, p, S, m);
    if (runnable != (rc == BT_OK))
      test_fail(__FILE__, __LINE__,
                "p=%d v=%d m=%d: naive executor %s, validation says %s: %s",
                p, v, m, runnable ? "finishes" : "gets stuck",
                bt_status_name(rc), rc == BT_OK ? "" : err.message);
    if (rc == BT_OK) {
      accepted++;
      EXPECT_INT_EQ(bt_sim_run(g, NULL, &sim, &err), BT_OK);
      if (sim != NULL)
        check_timeline(g, sim);
    } else {
      rejected++;
      EXPECT_INT_EQ(rc, BT_EDEADLOCK);
      EXPECT_STR_CONTAINS(err.message, "waits for");
    }
    bt_sim_destroy(sim);
    bt_graph_destroy(g);
    bt_plan_destroy(plan);
  }
  /* Both verdicts occur, so the comparison above means something. */
  EXPECT_TRUE(accepted > 100);
  EXPECT_TRUE(rejected > 100);
}
