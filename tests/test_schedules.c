/* Built-in schedules against the known results, over a grid of p, m, v and
 * costs; every plan through CSV and back simulates the same. */
#include "sched_util.h"
#include "test.h"

static const int ps[] = {1, 2, 3, 4, 6, 8};
static const int ms[] = {1, 2, 3, 4, 5, 7, 8, 12, 16, 24};
static const struct run_costs costs[] = {
    {1, 1, 1, 1, 0, 0, 0},   {1, 2, 1, 1, 0, 0, 0}, {2, 1, 1, 1, 0, 0, 0},
    {1, 1, 0.5, 1, 0, 0, 0}, {3, 2, 1, 1, 0, 0, 0}, {1, 3, 2, 1, 0, 0, 0},
};
#define N(a) (int)(sizeof(a) / sizeof((a)[0]))

#define RUN_OR_FAIL(name, p, v, m, c, r)                                      \
  do {                                                                        \
    bt_status rc_ = run_schedule((name), (p), (v), (m), (c), (r));            \
    if (rc_ != BT_OK)                                                         \
      test_fail(__FILE__, __LINE__, "%s p=%d v=%d m=%d: %s", (name), (p),    \
                (v), (m), (r)->err.message);                                  \
  } while (0)

TEST(gpipe_makespan_and_memory)
{
  for (int i = 0; i < N(ps); i++)
    for (int j = 0; j < N(ms); j++)
      for (int k = 0; k < N(costs); k++) {
        const struct run_costs *c = &costs[k];
        int p = ps[i], m = ms[j];
        struct run r;
        RUN_OR_FAIL("gpipe", p, 1, m, c, &r);
        if (r.sim != NULL) {
          EXPECT_NEAR(bt_sim_makespan(r.sim), (m + p - 1) * (c->f + c->b + c->w),
                      1e-12);
          EXPECT_NEAR(r.peak_max, m * c->mem_b, 1e-12);
          EXPECT_NEAR(bt_sim_peak_mem(r.sim, 0), m * c->mem_b, 1e-12);
          EXPECT_TRUE(bt_sim_lower_bound(r.sim) <= bt_sim_makespan(r.sim) + 1e-9);
        }
        run_free(&r);
      }
}

TEST(f1b1_makespan_and_memory)
{
  for (int i = 0; i < N(ps); i++)
    for (int j = 0; j < N(ms); j++)
      for (int k = 0; k < N(costs); k++) {
        const struct run_costs *c = &costs[k];
        int p = ps[i], m = ms[j];
        struct run r;
        RUN_OR_FAIL("1f1b", p, 1, m, c, &r);
        if (r.sim != NULL) {
          double want = (m + p - 1) * (c->f + c->b + c->w);
          EXPECT_NEAR(bt_sim_makespan(r.sim), want, 1e-12);
          EXPECT_NEAR(bt_sim_peak_mem(r.sim, 0), (m < p ? m : p) * c->mem_b,
                      1e-12);
          EXPECT_NEAR(r.peak_max, (m < p ? m : p) * c->mem_b, 1e-12);
          /* Full backwards chain back through every stage: the bound is
           * tight for 1F1B. */
          EXPECT_NEAR(bt_sim_lower_bound(r.sim), want, 1e-12);
        }
        run_free(&r);
      }
}

TEST(interleaved_makespan)
{
  static const int vs[] = {2, 3, 4};
  for (int i = 0; i < N(ps); i++)
    for (int vi = 0; vi < N(vs); vi++)
      for (int mult = 1; mult <= 4; mult++)
        for (int k = 0; k < N(costs); k++) {
          const struct run_costs *c = &costs[k];
          int p = ps[i], v = vs[vi], m = p * mult;
          double f = c->f, b = c->b + c->w;
          struct run r;
          RUN_OR_FAIL("interleaved", p, v, m, c, &r);
          if (r.sim != NULL) {
            EXPECT_NEAR(bt_sim_makespan(r.sim),
                        m * v * (f + b) + (p - 1) * (f + b), 1e-12);
            EXPECT_TRUE(bt_sim_lower_bound(r.sim) <=
                        bt_sim_makespan(r.sim) + 1e-9);
          }
          run_free(&r);
        }
}

TEST(zb_h1_bounds)
{
  for (int i = 0; i < N(ps); i++)
    for (int j = 0; j < N(ms); j++)
      for (int k = 0; k < N(costs); k++) {
        const struct run_costs *c = &costs[k];
        int p = ps[i], m = ms[j];
        struct run r, base;
        RUN_OR_FAIL("zb-h1", p, 1, m, c, &r);
        RUN_OR_FAIL("1f1b", p, 1, m, c, &base);
        if (r.sim != NULL && base.sim != NULL &&
            bt_sim_makespan(r.sim) > bt_sim_makespan(base.sim) + 1e-9)
          test_fail(__FILE__, __LINE__, "zb-h1 slower than 1f1b: p=%d m=%d",
                    p, m);
        run_free(&base);
        if (r.sim != NULL) {
          double bound = m * (c->f + c->b + c->w) + (p - 1) * (c->f + c->b - c->w);
          EXPECT_TRUE(r.peak_max <= p * c->mem_b + 1e-12);
          /* The paper's bound assumes m >= p: below that one microbatch's
           * own chain, p(F+B)+W, is already longer. */
          if (m >= p && c->w <= c->f && c->w <= c->b &&
              !(bt_sim_makespan(r.sim) <= bound + 1e-9)) {
            test_fail(__FILE__, __LINE__, "zb-h1 p=%d m=%d F=%g B=%g W=%g: makespan %g > %g",
                      p, m, c->f, c->b, c->w, bt_sim_makespan(r.sim), bound);
          }
          EXPECT_TRUE(bt_sim_lower_bound(r.sim) <= bt_sim_makespan(r.sim) + 1e-9);
        }
        run_free(&r);
      }
}

TEST(zb_h2_bounds)
{
  for (int i = 0; i < N(ps); i++)
    for (int j = 0; j < N(ms); j++)
      for (int k = 0; k < N(costs); k++) {
        const struct run_costs *c = &costs[k];
        int p = ps[i], m = ms[j];
        struct run r, h1;
        RUN_OR_FAIL("zb-h2", p, 1, m, c, &r);
        RUN_OR_FAIL("zb-h1", p, 1, m, c, &h1);
        if (r.sim != NULL && h1.sim != NULL) {
          EXPECT_TRUE(r.peak_max <= (2 * p - 1) * c->mem_b + 1e-12);
          if (c->f == c->b && c->b == c->w && m >= 2 * p) {
            double lb = m * (c->f + c->b + c->w) + (p - 1) * c->f;
            if (fabs(bt_sim_makespan(r.sim) - lb) > 1e-9)
              test_fail(__FILE__, __LINE__, "zb-h2 p=%d m=%d: makespan %g != %g", p, m,
                        bt_sim_makespan(r.sim), lb);
            EXPECT_NEAR(bt_sim_lower_bound(r.sim), lb, 1e-12);
          }
          if (bt_sim_makespan(r.sim) > bt_sim_makespan(h1.sim) + 1e-9)
            test_fail(__FILE__, __LINE__, "zb-h2 slower than zb-h1: p=%d m=%d F=%g B=%g W=%g: %g > %g",
                      p, m, c->f, c->b, c->w, bt_sim_makespan(r.sim), bt_sim_makespan(h1.sim));
        }
        run_free(&r);
        run_free(&h1);
      }
}


TEST(zb_h1_keeps_1f1b_memory_with_weight_grad_memory)
{
  static const double mem_ws[] = {0.5, 1.0};
  for (int i = 0; i < N(ps); i++)
    for (int j = 0; j < N(ms); j++)
      for (int k = 0; k < N(costs); k++)
        for (int w = 0; w < N(mem_ws); w++) {
          struct run_costs c = costs[k];
          int p = ps[i], m = ms[j];
          struct run r, base;
          c.mem_w = mem_ws[w];
          RUN_OR_FAIL("zb-h1", p, 1, m, &c, &r);
          RUN_OR_FAIL("1f1b", p, 1, m, &c, &base);
          if (r.sim != NULL && base.sim != NULL) {
            if (r.peak_max > base.peak_max + 1e-12)
              test_fail(__FILE__, __LINE__,
                        "zb-h1 p=%d m=%d M_W=%g: peak %g > 1f1b's %g", p, m,
                        c.mem_w, r.peak_max, base.peak_max);
            if (bt_sim_makespan(r.sim) > bt_sim_makespan(base.sim) + 1e-9)
              test_fail(__FILE__, __LINE__,
                        "zb-h1 p=%d m=%d M_W=%g: slower than 1f1b", p, m,
                        c.mem_w);
          }
          run_free(&r);
          run_free(&base);
        }
}

TEST(auto_fits_the_memory_limit_and_beats_the_fixed_schedules)
{
  static const int aps[] = {2, 3, 4, 6};
  static const int ams[] = {2, 4, 8, 12};
  for (int i = 0; i < N(aps); i++)
    for (int j = 0; j < N(ams); j++)
      for (int k = 0; k < 3; k++) {
        struct run_costs c = costs[k];
        int p = aps[i], m = ams[j];
        struct run fast, h2, lim, base;
        c.mem_w = 0.5;
        RUN_OR_FAIL("auto", p, 1, m, &c, &fast);
        RUN_OR_FAIL("zb-h2", p, 1, m, &c, &h2);
        RUN_OR_FAIL("1f1b", p, 1, m, &c, &base);
        /* Unlimited: at least as fast as every schedule it contains. */
        if (fast.sim && h2.sim)
          EXPECT_TRUE(bt_sim_makespan(fast.sim) <=
                      bt_sim_makespan(h2.sim) + 1e-9);
        /* Limited to 1F1B's memory: fits, and never slower than 1F1B. */
        c.mem_limit = base.sim ? base.peak_max : p;
        RUN_OR_FAIL("auto", p, 1, m, &c, &lim);
        if (lim.sim && base.sim) {
          EXPECT_TRUE(lim.peak_max <= c.mem_limit + 1e-12);
          EXPECT_TRUE(bt_sim_makespan(lim.sim) <=
                      bt_sim_makespan(base.sim) + 1e-9);
        }
        run_free(&fast);
        run_free(&h2);
        run_free(&lim);
        run_free(&base);
      }
}

TEST(auto_refuses_an_impossible_limit)
{
  struct run_costs c = {1, 1, 1, 1, 0, 0, 0.5};
  struct run r;
  EXPECT_INT_EQ(run_schedule("auto", 4, 1, 8, &c, &r), BT_EUNSUPPORTED);
  EXPECT_STR_CONTAINS(r.err.message, "limit 0.5");
  EXPECT_STR_CONTAINS(r.err.message, "leanest one found needs 1");
  run_free(&r);
}

TEST(sim_checkpointing_memory_model)
{
  /* GPipe, p=4, m=8, M_B=1: keeping everything holds 8 microbatches;
   * recomputing all (torch's `always`) holds one, during its backward;
   * recomputing all but the last (`except_last`) holds the kept last one
   * plus the one being recomputed. */
  struct run_costs c = {1, 1, 1, 1, 0, 0, 0};
  struct run r;
  bt_sim_config_t sc = BT_SIM_CONFIG_INIT;
  const int32_t want[3][2] = {{0, 8}, {8, 1}, {7, 2}};

  ASSERT_INT_EQ(run_schedule("gpipe", 4, 1, 8, &c, &r), BT_OK);
  for (int i = 0; i < 3; i++) {
    bt_sim_t *sim = NULL;
    sc.recompute_microbatches = want[i][0];
    ASSERT_INT_EQ(bt_sim_run(r.graph, &sc, &sim, &r.err), BT_OK);
    EXPECT_NEAR(bt_sim_peak_mem(sim, 0), want[i][1], 1e-12);
    /* Memory never changes the timing. */
    EXPECT_NEAR(bt_sim_makespan(sim), bt_sim_makespan(r.sim), 1e-12);
    bt_sim_destroy(sim);
  }
  sc.recompute_microbatches = -1;
  {
    bt_sim_t *sim = NULL;
    EXPECT_INT_EQ(bt_sim_run(r.graph, &sc, &sim, &r.err), BT_EINVAL);
  }
  run_free(&r);
}
