/* The fp32 CPU kernels (kernels/cpu/): each against its plain-C reference
 * on odd and larger shapes, each backward against central finite
 * differences of a double-precision forward, accumulation semantics,
 * the cross-entropy's batch divisor, the optimizers against hand-computed
 * steps, and argument errors. */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "test.h"
#include "test_util.h"

/* ---- helpers ------------------------------------------------------------ */

/* The tests' shared stream (as before: seeded per test). */
static test_rng_t rng = {0x243f6a8885a308d3ull};

#define FD_TOL 1e-3

/* Shapes: odd ones that match no vector width, and a larger one. */
struct shape {
  size_t N, IN, OUT;
};
static const struct shape shapes[] = {{7, 13, 5}, {64, 256, 128}, {1, 1, 1}};
#define NSHAPES (sizeof(shapes) / sizeof(shapes[0]))

/* ---- double-precision forwards for the finite differences -------------- */

static void
linear_d(double *y, const double *x, const double *w, const double *b,
         size_t N, size_t IN, size_t OUT)
{
  for (size_t r = 0; r < N; r++)
    for (size_t o = 0; o < OUT; o++) {
      double acc = b[o];
      for (size_t i = 0; i < IN; i++)
        acc += x[r * IN + i] * w[o * IN + i];
      y[r * OUT + o] = acc;
    }
}

static double
gelu_d(double x)
{
  const double s = sqrt(2.0 / 3.14159265358979323846);
  return 0.5 * x * (1.0 + tanh(s * (x + 0.044715 * x * x * x)));
}

static void
layernorm_d(double *y, const double *x, const double *gamma,
            const double *beta, size_t N, size_t D)
{
  for (size_t r = 0; r < N; r++) {
    double m = 0.0, var = 0.0;
    for (size_t i = 0; i < D; i++)
      m += x[r * D + i];
    m /= (double)D;
    for (size_t i = 0; i < D; i++)
      var += (x[r * D + i] - m) * (x[r * D + i] - m);
    var /= (double)D;
    double s = 1.0 / sqrt(var + 1e-5);
    for (size_t i = 0; i < D; i++)
      y[r * D + i] = (x[r * D + i] - m) * s * gamma[i] + beta[i];
  }
}

static double
xent_d(const double *z, const int32_t *labels, size_t N, size_t C,
       size_t total_rows)
{
  double loss = 0.0;

  for (size_t r = 0; r < N; r++) {
    double mx = z[r * C];
    for (size_t i = 1; i < C; i++)
      mx = fmax(mx, z[r * C + i]);
    double sum = 0.0;
    for (size_t i = 0; i < C; i++)
      sum += exp(z[r * C + i] - mx);
    loss += log(sum) + mx - z[r * C + (size_t)labels[r]];
  }
  return loss / (double)total_rows;
}

static double
dot_d(const double *a, const float *b, size_t n)
{
  double s = 0.0;
  for (size_t i = 0; i < n; i++)
    s += a[i] * (double)b[i];
  return s;
}

/* ---- linear ------------------------------------------------------------- */

TEST(linear_matches_reference)
{
  test_rng_seed(&rng, 1);
  for (size_t s = 0; s < NSHAPES; s++) {
    size_t N = shapes[s].N, IN = shapes[s].IN, OUT = shapes[s].OUT;
    float *x = test_random_f(&rng, N * IN, -1, 1),
          *w = test_random_f(&rng, OUT * IN, -1, 1);
    float *b = test_random_f(&rng, OUT, -1, 1),
          *dy = test_random_f(&rng, N * OUT, -1, 1);
    float *y = test_alloc_f(N * OUT), *y_ref = test_alloc_f(N * OUT);
    float *dx = test_alloc_f(N * IN), *dx_ref = test_alloc_f(N * IN);
    /* Non-zero starting gradients: the accumulation is part of the
     * contract. */
    float *dw = test_random_f(&rng, OUT * IN, -1, 1),
          *dw_ref = test_copy_f(dw, OUT * IN);
    float *db = test_random_f(&rng, OUT, -1, 1), *db_ref = test_copy_f(db, OUT);

    for (int bias = 0; bias < 2; bias++) {
      const float *bp = bias ? b : NULL;
      EXPECT_STATUS(bt__linear_fwd(y, x, w, bp, N, IN, OUT), BT_OK, NULL);
      bt__ref_linear_fwd(y_ref, x, w, bp, N, IN, OUT);
      test_expect_close("linear y", y, y_ref, N * OUT, 1e-5);
    }
    EXPECT_STATUS(bt__linear_bwd_input(dx, dy, w, N, IN, OUT), BT_OK, NULL);
    EXPECT_STATUS(bt__linear_bwd_weight(dw, db, dy, x, N, IN, OUT), BT_OK,
                  NULL);
    bt__ref_linear_bwd(dx_ref, dw_ref, db_ref, dy, x, w, N, IN, OUT);
    test_expect_close("linear dx", dx, dx_ref, N * IN, 1e-5);
    test_expect_close("linear dw", dw, dw_ref, OUT * IN, 1e-5);
    test_expect_close("linear db", db, db_ref, OUT, 1e-5);

    /* The fused backward is the two halves. */
    float *dx2 = test_alloc_f(N * IN), *dw2 = test_alloc_f(OUT * IN);
    float *db2 = test_alloc_f(OUT);
    float *dw2_ref = test_alloc_f(OUT * IN), *db2_ref = test_alloc_f(OUT);
    EXPECT_STATUS(bt__linear_bwd(dx2, dw2, db2, dy, x, w, N, IN, OUT), BT_OK,
                  NULL);
    bt__ref_linear_bwd(dx_ref, dw2_ref, db2_ref, dy, x, w, N, IN, OUT);
    test_expect_close("linear_bwd dx", dx2, dx_ref, N * IN, 1e-5);
    test_expect_close("linear_bwd dw", dw2, dw2_ref, OUT * IN, 1e-5);
    test_expect_close("linear_bwd db", db2, db2_ref, OUT, 1e-5);

    free(dx2), free(dw2), free(db2), free(dw2_ref), free(db2_ref);
    free(x), free(w), free(b), free(dy), free(y), free(y_ref), free(dx);
    free(dx_ref), free(dw), free(dw_ref), free(db), free(db_ref);
  }
}

struct linear_ctx {
  double *x, *w, *b, *y;
  const float *r;
  size_t N, IN, OUT;
};

static double
linear_objective(void *p)
{
  struct linear_ctx *c = p;
  linear_d(c->y, c->x, c->w, c->b, c->N, c->IN, c->OUT);
  return dot_d(c->y, c->r, c->N * c->OUT);
}

TEST(linear_backward_finite_differences)
{
  static const struct shape fd_shapes[] = {{3, 5, 4}, {7, 13, 5}};

  test_rng_seed(&rng, 2);
  for (size_t s = 0; s < 2; s++) {
    size_t N = fd_shapes[s].N, IN = fd_shapes[s].IN, OUT = fd_shapes[s].OUT;
    float *x = test_random_f(&rng, N * IN, -1, 1),
          *w = test_random_f(&rng, OUT * IN, -1, 1);
    float *b = test_random_f(&rng, OUT, -1, 1),
          *r = test_random_f(&rng, N * OUT, -1, 1);
    float *dx = test_alloc_f(N * IN), *dw = test_alloc_f(OUT * IN),
          *db = test_alloc_f(OUT);
    struct linear_ctx c = {test_to_double(x, N * IN),
                           test_to_double(w, OUT * IN),
                           test_to_double(b, OUT),
                           test_alloc_d(N * OUT),
                           r,
                           N,
                           IN,
                           OUT};
    double *g = test_alloc_d(N * IN > OUT * IN ? N * IN : OUT * IN);

    /* L = sum(y * r), so dL/dy = r. */
    ASSERT_INT_EQ(bt__linear_bwd_input(dx, r, w, N, IN, OUT), BT_OK);
    ASSERT_INT_EQ(bt__linear_bwd_weight(dw, db, r, x, N, IN, OUT), BT_OK);
    test_fd_grad(linear_objective, &c, c.x, N * IN, g);
    test_expect_fd("linear dx", dx, g, N * IN, FD_TOL);
    test_fd_grad(linear_objective, &c, c.w, OUT * IN, g);
    test_expect_fd("linear dW", dw, g, OUT * IN, FD_TOL);
    test_fd_grad(linear_objective, &c, c.b, OUT, g);
    test_expect_fd("linear db", db, g, OUT, FD_TOL);

    free(c.x), free(c.w), free(c.b), free(c.y), free(g);
    free(x), free(w), free(b), free(r), free(dx), free(dw), free(db);
  }
}

TEST(linear_accumulates_weight_gradient)
{
  size_t N = 7, IN = 13, OUT = 5;

  test_rng_seed(&rng, 3);
  float *x = test_random_f(&rng, N * IN, -1, 1),
        *w = test_random_f(&rng, OUT * IN, -1, 1);
  float *dy = test_random_f(&rng, N * OUT, -1, 1);
  float *dw1 = test_alloc_f(OUT * IN), *db1 = test_alloc_f(OUT);
  float *dw2 = test_alloc_f(OUT * IN), *db2 = test_alloc_f(OUT);
  float *dx = test_alloc_f(N * IN), *dx2 = test_alloc_f(N * IN);

  ASSERT_INT_EQ(bt__linear_bwd_weight(dw1, db1, dy, x, N, IN, OUT), BT_OK);
  ASSERT_INT_EQ(bt__linear_bwd_weight(dw2, db2, dy, x, N, IN, OUT), BT_OK);
  ASSERT_INT_EQ(bt__linear_bwd_weight(dw2, db2, dy, x, N, IN, OUT), BT_OK);
  for (size_t i = 0; i < OUT * IN; i++)
    dw1[i] *= 2.0f;
  for (size_t i = 0; i < OUT; i++)
    db1[i] *= 2.0f;
  test_expect_close("2 x dw", dw2, dw1, OUT * IN, 1e-6);
  test_expect_close("2 x db", db2, db1, OUT, 1e-6);

  /* The fused backward accumulates too; dx is written, whatever it held. */
  ASSERT_INT_EQ(bt__linear_bwd(dx, dw2, db2, dy, x, w, N, IN, OUT), BT_OK);
  for (size_t i = 0; i < N * IN; i++)
    dx2[i] = 1e6f;
  ASSERT_INT_EQ(bt__linear_bwd(dx2, dw2, db2, dy, x, w, N, IN, OUT), BT_OK);
  test_expect_close("dx written", dx2, dx, N * IN, 0);
  for (size_t i = 0; i < OUT * IN; i++)
    dw1[i] *= 2.0f;
  for (size_t i = 0; i < OUT; i++)
    db1[i] *= 2.0f;
  test_expect_close("4 x dw", dw2, dw1, OUT * IN, 1e-6);
  test_expect_close("4 x db", db2, db1, OUT, 1e-6);

  /* No bias: db NULL is allowed. */
  EXPECT_STATUS(bt__linear_bwd_weight(dw2, NULL, dy, x, N, IN, OUT), BT_OK,
                NULL);
  free(x), free(w), free(dy), free(dw1), free(db1), free(dw2), free(db2);
  free(dx), free(dx2);
}

TEST(linear_errors)
{
  float a[4] = {1, 2, 3, 4}, y[4] = {0};
  size_t big = (size_t)INT_MAX + 1;

  EXPECT_STATUS(bt__linear_fwd(NULL, a, a, NULL, 1, 1, 1), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__linear_fwd(y, NULL, a, NULL, 1, 1, 1), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__linear_fwd(y, a, NULL, NULL, 1, 1, 1), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__linear_fwd(y, a, a, NULL, 0, 1, 1), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__linear_fwd(y, a, a, NULL, 1, 0, 1), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__linear_fwd(y, a, a, NULL, 1, 1, 0), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__linear_fwd(y, a, a, NULL, big, 1, 1), BT_ERANGE, NULL);
  EXPECT_STATUS(bt__linear_bwd_input(y, a, a, 1, big, 1), BT_ERANGE, NULL);
  EXPECT_STATUS(bt__linear_bwd_weight(y, NULL, a, a, 1, 1, big), BT_ERANGE,
                NULL);
  EXPECT_STATUS(bt__linear_bwd_input(NULL, a, a, 1, 1, 1), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__linear_bwd_input(y, NULL, a, 1, 1, 1), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__linear_bwd_input(y, a, NULL, 1, 1, 1), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__linear_bwd_weight(NULL, y, a, a, 1, 1, 1), BT_EINVAL,
                NULL);
  EXPECT_STATUS(bt__linear_bwd_weight(y, y, NULL, a, 1, 1, 1), BT_EINVAL,
                NULL);
  EXPECT_STATUS(bt__linear_bwd_weight(y, y, a, NULL, 1, 1, 1), BT_EINVAL,
                NULL);
  EXPECT_STATUS(bt__linear_bwd(NULL, y, y, a, a, a, 1, 1, 1), BT_EINVAL,
                NULL);
  EXPECT_STATUS(bt__linear_bwd(y, NULL, y, a, a, a, 1, 1, 1), BT_EINVAL,
                NULL);
  EXPECT_STATUS(bt__linear_bwd(y, y, y, a, a, a, 1, 0, 1), BT_EINVAL, NULL);
  for (int i = 0; i < 4; i++)
    EXPECT_TRUE(y[i] == 0.0f); /* nothing written on an error */
}

/* ---- GELU --------------------------------------------------------------- */

TEST(gelu_matches_reference)
{
  static const size_t ns[] = {7 * 13, 64 * 256, 1};

  test_rng_seed(&rng, 4);
  for (size_t s = 0; s < 3; s++) {
    size_t n = ns[s];
    float *x = test_random_f(&rng, n, -6, 6),
          *dy = test_random_f(&rng, n, -1, 1);
    float *y = test_alloc_f(n), *y_ref = test_alloc_f(n);
    float *dx = test_alloc_f(n), *dx_ref = test_alloc_f(n);

    EXPECT_STATUS(bt__gelu_fwd(y, x, n), BT_OK, NULL);
    bt__ref_gelu_fwd(y_ref, x, n);
    test_expect_close("gelu y", y, y_ref, n, 1e-6);
    EXPECT_STATUS(bt__gelu_bwd(dx, dy, x, n), BT_OK, NULL);
    bt__ref_gelu_bwd(dx_ref, dy, x, n);
    test_expect_close("gelu dx", dx, dx_ref, n, 1e-6);

    /* In place, both ways. */
    float *t = test_copy_f(x, n);
    EXPECT_STATUS(bt__gelu_fwd(t, t, n), BT_OK, NULL);
    test_expect_close("gelu y in place", t, y, n, 0);
    memcpy(t, dy, n * sizeof(float));
    EXPECT_STATUS(bt__gelu_bwd(t, t, x, n), BT_OK, NULL);
    test_expect_close("gelu dx in place", t, dx, n, 0);
    free(t), free(x), free(dy), free(y), free(y_ref), free(dx), free(dx_ref);
  }
  /* Known values: gelu(0) = 0, gelu'(0) = 1/2, and far out it is the
   * identity (x > 0) or zero (x < 0). */
  float x[4] = {0.0f, 10.0f, -10.0f, 1.0f}, y[4], dx[4];
  float one[4] = {1, 1, 1, 1};
  ASSERT_INT_EQ(bt__gelu_fwd(y, x, 4), BT_OK);
  ASSERT_INT_EQ(bt__gelu_bwd(dx, one, x, 4), BT_OK);
  EXPECT_NEAR(y[0], 0.0, 1e-7);
  EXPECT_NEAR(dx[0], 0.5, 1e-7);
  EXPECT_NEAR(y[1], 10.0, 1e-7);
  EXPECT_NEAR(dx[1], 1.0, 1e-7);
  EXPECT_NEAR(y[2], 0.0, 1e-7);
  EXPECT_NEAR(dx[2], 0.0, 1e-7);
  EXPECT_NEAR(y[3], 0.8411919906, 1e-6); /* tanh form at 1 */
}

struct gelu_ctx {
  double *x;
  const float *r;
  size_t n;
};

static double
gelu_objective(void *p)
{
  struct gelu_ctx *c = p;
  double s = 0.0;
  for (size_t i = 0; i < c->n; i++)
    s += gelu_d(c->x[i]) * (double)c->r[i];
  return s;
}

TEST(gelu_backward_finite_differences)
{
  size_t n = 64;

  test_rng_seed(&rng, 5);
  float *x = test_random_f(&rng, n, -4, 4), *r = test_random_f(&rng, n, -1, 1),
        *dx = test_alloc_f(n);
  struct gelu_ctx c = {test_to_double(x, n), r, n};
  double *g = test_alloc_d(n);

  ASSERT_INT_EQ(bt__gelu_bwd(dx, r, x, n), BT_OK);
  test_fd_grad(gelu_objective, &c, c.x, n, g);
  test_expect_fd("gelu dx", dx, g, n, FD_TOL);
  free(c.x), free(g), free(x), free(r), free(dx);
}

TEST(gelu_errors)
{
  float a[2] = {0};

  EXPECT_STATUS(bt__gelu_fwd(NULL, a, 2), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__gelu_fwd(a, NULL, 2), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__gelu_fwd(a, a, 0), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__gelu_bwd(NULL, a, a, 2), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__gelu_bwd(a, NULL, a, 2), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__gelu_bwd(a, a, NULL, 2), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__gelu_bwd(a, a, a, 0), BT_EINVAL, NULL);
}

/* ---- LayerNorm ---------------------------------------------------------- */

TEST(layernorm_matches_reference)
{
  static const size_t nd[][2] = {{7, 13}, {64, 768}, {1, 1}, {5, 3}};

  test_rng_seed(&rng, 6);
  for (size_t s = 0; s < 4; s++) {
    size_t N = nd[s][0], D = nd[s][1];
    /* An offset mean, as real activations have. */
    float *x = test_random_f(&rng, N * D, 2, 5),
          *dy = test_random_f(&rng, N * D, -1, 1);
    float *gamma = test_random_f(&rng, D, 0.5f, 1.5f),
          *beta = test_random_f(&rng, D, -1, 1);
    float *y = test_alloc_f(N * D), *y_ref = test_alloc_f(N * D);
    float *mean = test_alloc_f(N), *rstd = test_alloc_f(N);
    float *mean_ref = test_alloc_f(N), *rstd_ref = test_alloc_f(N);
    float *dx = test_alloc_f(N * D), *dx_ref = test_alloc_f(N * D);
    float *dg = test_random_f(&rng, D, -1, 1), *dg_ref = test_copy_f(dg, D);
    float *dbt = test_random_f(&rng, D, -1, 1), *dbt_ref = test_copy_f(dbt, D);

    EXPECT_STATUS(bt__layernorm_fwd(y, mean, rstd, x, gamma, beta, N, D),
                  BT_OK, NULL);
    bt__ref_layernorm_fwd(y_ref, mean_ref, rstd_ref, x, gamma, beta, N, D);
    test_expect_close("layernorm y", y, y_ref, N * D, 1e-6);
    test_expect_close("layernorm mean", mean, mean_ref, N, 1e-6);
    test_expect_close("layernorm rstd", rstd, rstd_ref, N, 1e-6);
    EXPECT_STATUS(bt__layernorm_bwd(dx, dg, dbt, dy, x, gamma, mean, rstd, N,
                                    D),
                  BT_OK, NULL);
    bt__ref_layernorm_bwd(dx_ref, dg_ref, dbt_ref, dy, x, gamma, mean_ref,
                          rstd_ref, N, D);
    test_expect_close("layernorm dx", dx, dx_ref, N * D, 1e-6);
    test_expect_close("layernorm dgamma", dg, dg_ref, D, 1e-6);
    test_expect_close("layernorm dbeta", dbt, dbt_ref, D, 1e-6);

    /* dx may be dy. */
    float *t = test_copy_f(dy, N * D);
    float *dg2 = test_alloc_f(D), *db2 = test_alloc_f(D);
    EXPECT_STATUS(bt__layernorm_bwd(t, dg2, db2, t, x, gamma, mean, rstd, N,
                                    D),
                  BT_OK, NULL);
    test_expect_close("layernorm dx in place", t, dx, N * D, 0);

    /* With gamma = 1 and beta = 0 each row comes out standardized: mean
     * 0, variance var / (var + eps). */
    for (size_t i = 0; i < D; i++)
      gamma[i] = 1.0f, beta[i] = 0.0f;
    ASSERT_INT_EQ(bt__layernorm_fwd(y, mean, rstd, x, gamma, beta, N, D),
                  BT_OK);
    for (size_t r = 0; r < N; r++) {
      double mx = 0.0, vx = 0.0, my = 0.0, vy = 0.0;
      for (size_t i = 0; i < D; i++)
        mx += x[r * D + i], my += y[r * D + i];
      mx /= (double)D, my /= (double)D;
      for (size_t i = 0; i < D; i++) {
        vx += (x[r * D + i] - mx) * (x[r * D + i] - mx);
        vy += (y[r * D + i] - my) * (y[r * D + i] - my);
      }
      vx /= (double)D, vy /= (double)D;
      EXPECT_NEAR(my, 0.0, 1e-5);
      EXPECT_NEAR(vy, vx / (vx + 1e-5), 1e-4);
    }
    free(t), free(dg2), free(db2);
    free(x), free(dy), free(gamma), free(beta), free(y), free(y_ref);
    free(mean), free(rstd), free(mean_ref), free(rstd_ref), free(dx);
    free(dx_ref), free(dg), free(dg_ref), free(dbt), free(dbt_ref);
  }
}

struct layernorm_ctx {
  double *x, *gamma, *beta, *y;
  const float *r;
  size_t N, D;
};

static double
layernorm_objective(void *p)
{
  struct layernorm_ctx *c = p;
  layernorm_d(c->y, c->x, c->gamma, c->beta, c->N, c->D);
  return dot_d(c->y, c->r, c->N * c->D);
}

TEST(layernorm_backward_finite_differences)
{
  /* Not D = 2: there the normalized row is +-1 whatever x is, so dL/dx is
   * O(eps) and all of it is fp32 cancellation noise. */
  static const size_t nd[][2] = {{5, 7}, {3, 16}, {2, 3}};

  test_rng_seed(&rng, 7);
  for (size_t s = 0; s < 3; s++) {
    size_t N = nd[s][0], D = nd[s][1];
    float *x = test_random_f(&rng, N * D, -2, 3),
          *r = test_random_f(&rng, N * D, -1, 1);
    float *gamma = test_random_f(&rng, D, 0.5f, 1.5f),
          *beta = test_random_f(&rng, D, -1, 1);
    float *y = test_alloc_f(N * D), *mean = test_alloc_f(N),
          *rstd = test_alloc_f(N);
    float *dx = test_alloc_f(N * D), *dg = test_alloc_f(D),
          *db = test_alloc_f(D);
    struct layernorm_ctx c = {test_to_double(x, N * D),
                              test_to_double(gamma, D),
                              test_to_double(beta, D),
                              test_alloc_d(N * D),
                              r,
                              N,
                              D};
    double *g = test_alloc_d(N * D);

    ASSERT_INT_EQ(bt__layernorm_fwd(y, mean, rstd, x, gamma, beta, N, D),
                  BT_OK);
    ASSERT_INT_EQ(bt__layernorm_bwd(dx, dg, db, r, x, gamma, mean, rstd, N,
                                    D),
                  BT_OK);
    test_fd_grad(layernorm_objective, &c, c.x, N * D, g);
    test_expect_fd("layernorm dx", dx, g, N * D, FD_TOL);
    test_fd_grad(layernorm_objective, &c, c.gamma, D, g);
    test_expect_fd("layernorm dgamma", dg, g, D, FD_TOL);
    test_fd_grad(layernorm_objective, &c, c.beta, D, g);
    test_expect_fd("layernorm dbeta", db, g, D, FD_TOL);

    free(c.x), free(c.gamma), free(c.beta), free(c.y), free(g);
    free(x), free(r), free(gamma), free(beta), free(y), free(mean);
    free(rstd), free(dx), free(dg), free(db);
  }
}

TEST(layernorm_accumulates_parameter_gradients)
{
  size_t N = 4, D = 9;

  test_rng_seed(&rng, 8);
  float *x = test_random_f(&rng, N * D, -1, 1),
        *dy = test_random_f(&rng, N * D, -1, 1);
  float *gamma = test_random_f(&rng, D, 0.5f, 1.5f),
        *beta = test_random_f(&rng, D, -1, 1);
  float *y = test_alloc_f(N * D), *mean = test_alloc_f(N),
        *rstd = test_alloc_f(N);
  float *dx = test_alloc_f(N * D);
  float *dg1 = test_alloc_f(D), *db1 = test_alloc_f(D);
  float *dg2 = test_alloc_f(D), *db2 = test_alloc_f(D);

  ASSERT_INT_EQ(bt__layernorm_fwd(y, mean, rstd, x, gamma, beta, N, D),
                BT_OK);
  ASSERT_INT_EQ(bt__layernorm_bwd(dx, dg1, db1, dy, x, gamma, mean, rstd, N,
                                  D),
                BT_OK);
  for (int k = 0; k < 2; k++)
    ASSERT_INT_EQ(bt__layernorm_bwd(dx, dg2, db2, dy, x, gamma, mean, rstd,
                                    N, D),
                  BT_OK);
  for (size_t i = 0; i < D; i++)
    dg1[i] *= 2.0f, db1[i] *= 2.0f;
  test_expect_close("2 x dgamma", dg2, dg1, D, 1e-6);
  test_expect_close("2 x dbeta", db2, db1, D, 1e-6);
  free(x), free(dy), free(gamma), free(beta), free(y), free(mean);
  free(rstd), free(dx), free(dg1), free(db1), free(dg2), free(db2);
}

TEST(layernorm_errors)
{
  float a[4] = {0};

  EXPECT_STATUS(bt__layernorm_fwd(NULL, a, a, a, a, a, 1, 4), BT_EINVAL,
                NULL);
  EXPECT_STATUS(bt__layernorm_fwd(a, NULL, a, a, a, a, 1, 4), BT_EINVAL,
                NULL);
  EXPECT_STATUS(bt__layernorm_fwd(a, a, NULL, a, a, a, 1, 4), BT_EINVAL,
                NULL);
  EXPECT_STATUS(bt__layernorm_fwd(a, a, a, a, NULL, a, 1, 4), BT_EINVAL,
                NULL);
  EXPECT_STATUS(bt__layernorm_fwd(a, a, a, a, a, a, 0, 4), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__layernorm_fwd(a, a, a, a, a, a, 1, 0), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__layernorm_fwd(a, a, a, a, a, a, SIZE_MAX / 2, 4),
                BT_ERANGE, NULL);
  EXPECT_STATUS(bt__layernorm_bwd(a, a, NULL, a, a, a, a, a, 1, 4),
                BT_EINVAL, NULL);
  EXPECT_STATUS(bt__layernorm_bwd(a, a, a, a, a, a, NULL, a, 1, 4),
                BT_EINVAL, NULL);
  EXPECT_STATUS(bt__layernorm_bwd(a, a, a, a, a, a, a, a, 1, 0), BT_EINVAL,
                NULL);
}

/* ---- residual ----------------------------------------------------------- */

TEST(residual_matches_reference_and_accumulates)
{
  size_t n = 7 * 13;

  test_rng_seed(&rng, 9);
  float *a = test_random_f(&rng, n, -1, 1), *b = test_random_f(&rng, n, -1, 1);
  float *dy = test_random_f(&rng, n, -1, 1), *y = test_alloc_f(n),
        *y_ref = test_alloc_f(n);
  float *da = test_random_f(&rng, n, -1, 1),
        *db = test_random_f(&rng, n, -1, 1);
  float *da_ref = test_copy_f(da, n), *db_ref = test_copy_f(db, n);

  EXPECT_STATUS(bt__residual_fwd(y, a, b, n), BT_OK, NULL);
  bt__ref_residual_fwd(y_ref, a, b, n);
  test_expect_close("residual y", y, y_ref, n, 0);
  EXPECT_STATUS(bt__residual_bwd(da, db, dy, n), BT_OK, NULL);
  bt__ref_residual_bwd(da_ref, db_ref, dy, n);
  test_expect_close("residual da", da, da_ref, n, 0);
  test_expect_close("residual db", db, db_ref, n, 0);

  /* One side only; and da == db adds twice (y = a + a). */
  EXPECT_STATUS(bt__residual_bwd(da, NULL, dy, n), BT_OK, NULL);
  bt__ref_residual_bwd(da_ref, NULL, dy, n);
  test_expect_close("residual da only", da, da_ref, n, 0);
  EXPECT_STATUS(bt__residual_bwd(db, db, dy, n), BT_OK, NULL);
  bt__ref_residual_bwd(db_ref, db_ref, dy, n);
  test_expect_close("residual da == db", db, db_ref, n, 0);

  /* y may be a or b. */
  float *t = test_copy_f(a, n);
  EXPECT_STATUS(bt__residual_fwd(t, t, b, n), BT_OK, NULL);
  test_expect_close("residual in place", t, y_ref, n, 0);

  EXPECT_STATUS(bt__residual_fwd(NULL, a, b, n), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__residual_fwd(y, a, NULL, n), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__residual_fwd(y, a, b, 0), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__residual_bwd(NULL, NULL, dy, n), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__residual_bwd(da, db, NULL, n), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__residual_bwd(dy, db, dy, n), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__residual_bwd(da, db, dy, 0), BT_EINVAL, NULL);
  free(t), free(a), free(b), free(dy), free(y), free(y_ref), free(da);
  free(db), free(da_ref), free(db_ref);
}

struct residual_ctx {
  double *a, *b;
  const float *r;
  size_t n;
};

static double
residual_objective(void *p)
{
  struct residual_ctx *c = p;
  double s = 0.0;
  for (size_t i = 0; i < c->n; i++)
    s += (c->a[i] + c->b[i]) * (double)c->r[i];
  return s;
}

TEST(residual_backward_finite_differences)
{
  size_t n = 23;

  test_rng_seed(&rng, 10);
  float *a = test_random_f(&rng, n, -1, 1), *b = test_random_f(&rng, n, -1, 1);
  float *r = test_random_f(&rng, n, -1, 1), *da = test_alloc_f(n),
        *db = test_alloc_f(n);
  struct residual_ctx c = {test_to_double(a, n), test_to_double(b, n), r, n};
  double *g = test_alloc_d(n);

  ASSERT_INT_EQ(bt__residual_bwd(da, db, r, n), BT_OK);
  test_fd_grad(residual_objective, &c, c.a, n, g);
  test_expect_fd("residual da", da, g, n, FD_TOL);
  test_fd_grad(residual_objective, &c, c.b, n, g);
  test_expect_fd("residual db", db, g, n, FD_TOL);
  free(c.a), free(c.b), free(g), free(a), free(b), free(r), free(da);
  free(db);
}

/* ---- softmax cross-entropy ---------------------------------------------- */

static int32_t *
random_labels(size_t N, size_t C)
{
  int32_t *l = malloc(N * sizeof(int32_t));
  if (l == NULL)
    exit(1);
  for (size_t r = 0; r < N; r++)
    l[r] = (int32_t)(test_rng_next(&rng) % C);
  return l;
}

TEST(xent_matches_reference)
{
  static const size_t nc[][2] = {{7, 13}, {64, 1000}, {1, 1}, {5, 2}};

  test_rng_seed(&rng, 11);
  for (size_t s = 0; s < 4; s++) {
    size_t N = nc[s][0], C = nc[s][1], total = 3 * N + 1;
    float *z = test_random_f(&rng, N * C, -4, 4);
    int32_t *lab = random_labels(N, C);
    float *d = test_alloc_f(N * C), *d_ref = test_alloc_f(N * C);
    float loss = -1.0f;

    EXPECT_STATUS(bt__xent_fwd(&loss, z, lab, N, C, total), BT_OK, NULL);
    EXPECT_NEAR(loss, bt__ref_xent_fwd(z, lab, N, C, total), 1e-6);
    EXPECT_STATUS(bt__xent_bwd(d, z, lab, N, C, total), BT_OK, NULL);
    bt__ref_xent_bwd(d_ref, z, lab, N, C, total);
    test_expect_close("xent dlogits", d, d_ref, N * C, 1e-6);

    /* Each row's gradient sums to zero (softmax sums to one). */
    for (size_t r = 0; r < N; r++) {
      double sum = 0.0;
      for (size_t i = 0; i < C; i++)
        sum += d[r * C + i];
      EXPECT_NEAR(sum, 0.0, 1e-6);
    }
    /* In place: dlogits may be the logits. */
    float *t = test_copy_f(z, N * C);
    EXPECT_STATUS(bt__xent_bwd(t, t, lab, N, C, total), BT_OK, NULL);
    test_expect_close("xent in place", t, d, N * C, 0);
    free(t), free(z), free(lab), free(d), free(d_ref);
  }
}

struct xent_ctx {
  double *z;
  const int32_t *labels;
  size_t N, C, total;
};

static double
xent_objective(void *p)
{
  struct xent_ctx *c = p;
  return xent_d(c->z, c->labels, c->N, c->C, c->total);
}

TEST(xent_backward_finite_differences)
{
  static const size_t nc[][2] = {{5, 7}, {3, 31}};

  test_rng_seed(&rng, 12);
  for (size_t s = 0; s < 2; s++) {
    size_t N = nc[s][0], C = nc[s][1];
    float *z = test_random_f(&rng, N * C, -3, 3), *d = test_alloc_f(N * C);
    int32_t *lab = random_labels(N, C);
    /* A divisor larger than N, as a microbatch of a bigger batch has. */
    struct xent_ctx c = {test_to_double(z, N * C), lab, N, C, N + 3};
    double *g = test_alloc_d(N * C);
    float loss;

    ASSERT_INT_EQ(bt__xent_fwd(&loss, z, lab, N, C, c.total), BT_OK);
    EXPECT_NEAR(loss, xent_objective(&c), 1e-6);
    ASSERT_INT_EQ(bt__xent_bwd(d, z, lab, N, C, c.total), BT_OK);
    test_fd_grad(xent_objective, &c, c.z, N * C, g);
    test_expect_fd("xent dlogits", d, g, N * C, FD_TOL);
    free(c.z), free(g), free(z), free(d), free(lab);
  }
}

TEST(xent_uniform_logits_and_batch_divisor)
{
  size_t N = 6, C = 10;
  float z[60], d_whole[60], d_halves[60], loss, l1, l2;
  int32_t lab[6] = {0, 3, 9, 4, 4, 1};

  /* Uniform logits (of any value): every row loses log(C). */
  for (size_t i = 0; i < N * C; i++)
    z[i] = 2.5f;
  ASSERT_INT_EQ(bt__xent_fwd(&loss, z, lab, N, C, N), BT_OK);
  EXPECT_NEAR(loss, log(10.0), 1e-6);
  ASSERT_INT_EQ(bt__xent_bwd(d_whole, z, lab, N, C, N), BT_OK);
  for (size_t r = 0; r < N; r++)
    for (size_t i = 0; i < C; i++)
      EXPECT_NEAR(d_whole[r * C + i],
                  ((double)1 / C - ((int32_t)i == lab[r])) / N, 1e-7);

  /* Two microbatches of half the rows, each dividing by the whole batch's
   * rows: the losses add up to the batch's, the gradients are the
   * batch's rows. */
  test_rng_seed(&rng, 13);
  for (size_t i = 0; i < N * C; i++)
    z[i] = (float)test_rng_uniform(&rng, -3, 3);
  ASSERT_INT_EQ(bt__xent_fwd(&loss, z, lab, N, C, N), BT_OK);
  ASSERT_INT_EQ(bt__xent_fwd(&l1, z, lab, N / 2, C, N), BT_OK);
  ASSERT_INT_EQ(bt__xent_fwd(&l2, z + (N / 2) * C, lab + N / 2, N / 2, C, N),
                BT_OK);
  EXPECT_NEAR(l1 + l2, loss, 1e-6);
  ASSERT_INT_EQ(bt__xent_bwd(d_whole, z, lab, N, C, N), BT_OK);
  ASSERT_INT_EQ(bt__xent_bwd(d_halves, z, lab, N / 2, C, N), BT_OK);
  ASSERT_INT_EQ(bt__xent_bwd(d_halves + (N / 2) * C, z + (N / 2) * C,
                             lab + N / 2, N / 2, C, N),
                BT_OK);
  test_expect_close("xent halves", d_halves, d_whole, N * C, 0);

  /* Numerically stable: huge logits do not overflow. */
  for (size_t i = 0; i < N * C; i++)
    z[i] = 1e4f + (float)(i % C);
  ASSERT_INT_EQ(bt__xent_fwd(&loss, z, lab, N, C, N), BT_OK);
  EXPECT_TRUE(isfinite(loss));
  double want = 0.0;
  for (size_t r = 0; r < N; r++) {
    double sum = 0.0;
    for (size_t i = 0; i < C; i++)
      sum += exp((double)i - 9.0);
    want += log(sum) + 9.0 - (double)lab[r];
  }
  EXPECT_NEAR(loss, want / (double)N, 1e-5);
  ASSERT_INT_EQ(bt__xent_bwd(d_whole, z, lab, N, C, N), BT_OK);
  for (size_t i = 0; i < N * C; i++)
    EXPECT_TRUE(isfinite(d_whole[i]));
}

TEST(xent_errors)
{
  float z[6] = {0, 1, 2, 3, 4, 5}, d[6], loss = 42.0f;
  int32_t lab[2] = {1, 2};
  int32_t bad_hi[2] = {1, 3}, bad_lo[2] = {-1, 0};

  for (int i = 0; i < 6; i++)
    d[i] = 7.0f;
  EXPECT_STATUS(bt__xent_fwd(&loss, z, bad_hi, 2, 3, 2), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__xent_fwd(&loss, z, bad_lo, 2, 3, 2), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__xent_bwd(d, z, bad_hi, 2, 3, 2), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__xent_bwd(d, z, bad_lo, 2, 3, 2), BT_EINVAL, NULL);
  EXPECT_TRUE(loss == 42.0f);
  for (int i = 0; i < 6; i++)
    EXPECT_TRUE(d[i] == 7.0f); /* nothing half written */
  EXPECT_STATUS(bt__xent_fwd(NULL, z, lab, 2, 3, 2), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__xent_fwd(&loss, NULL, lab, 2, 3, 2), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__xent_fwd(&loss, z, NULL, 2, 3, 2), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__xent_fwd(&loss, z, lab, 0, 3, 2), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__xent_fwd(&loss, z, lab, 2, 0, 2), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__xent_fwd(&loss, z, lab, 2, 3, 1), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__xent_bwd(NULL, z, lab, 2, 3, 2), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__xent_bwd(d, z, lab, 2, 3, 0), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__xent_fwd(&loss, z, lab, 2, 3, 2), BT_OK, NULL);
}

/* ---- optimizers --------------------------------------------------------- */

TEST(sgd_hand_computed)
{
  float w[3] = {1.0f, -2.0f, 0.5f}, g[3] = {0.5f, 0.25f, 0.0f};

  ASSERT_INT_EQ(bt__sgd_update(w, g, 3, 0.1f, 0.0f), BT_OK);
  EXPECT_NEAR(w[0], 0.95, 1e-7);
  EXPECT_NEAR(w[1], -2.025, 1e-7);
  EXPECT_NEAR(w[2], 0.5, 1e-7);
  /* With decay: w -= lr (g + wd w); a zero gradient still decays. */
  ASSERT_INT_EQ(bt__sgd_update(w, g, 3, 0.1f, 0.1f), BT_OK);
  EXPECT_NEAR(w[0], 0.95 - 0.1 * (0.5 + 0.1 * 0.95), 1e-7);
  EXPECT_NEAR(w[1], -2.025 - 0.1 * (0.25 - 0.1 * 2.025), 1e-7);
  EXPECT_NEAR(w[2], 0.5 - 0.1 * 0.1 * 0.5, 1e-7);

  test_rng_seed(&rng, 14);
  size_t n = 1000;
  float *w1 = test_random_f(&rng, n, -1, 1),
        *g1 = test_random_f(&rng, n, -1, 1);
  float *w2 = test_copy_f(w1, n);
  for (int step = 0; step < 3; step++) {
    ASSERT_INT_EQ(bt__sgd_update(w1, g1, n, 0.01f, 0.1f), BT_OK);
    bt__ref_sgd_update(w2, g1, n, 0.01f, 0.1f);
  }
  test_expect_close("sgd", w1, w2, n, 1e-7);
  free(w1), free(g1), free(w2);

  EXPECT_STATUS(bt__sgd_update(NULL, g, 3, 0.1f, 0), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__sgd_update(w, NULL, 3, 0.1f, 0), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__sgd_update(w, g, 0, 0.1f, 0), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__sgd_update(w, g, 3, NAN, 0), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__sgd_update(w, g, 3, 0.1f, INFINITY), BT_EINVAL, NULL);
}

TEST(adamw_hand_computed)
{
  const float lr = 0.1f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
  float w[2] = {1.0f, 1.0f}, m[2] = {0}, v[2] = {0};
  float g[2] = {1.0f, -0.003f};

  /* Step 1: mhat = g, vhat = g^2, so the update is lr g/(|g| + eps): lr in
   * magnitude whatever |g| is, as long as |g| >> eps. */
  ASSERT_INT_EQ(bt__adamw_update(w, m, v, g, 2, lr, b1, b2, eps, 0.0f, 1),
                BT_OK);
  EXPECT_NEAR(w[0], 0.9, 1e-6);
  EXPECT_NEAR(w[1], 1.1, 1e-6);
  EXPECT_NEAR(m[0], 0.1, 1e-7);
  EXPECT_NEAR(v[0], 0.001, 1e-7);

  /* Step 2 with g = -1 on the first weight:
   *   m = 0.9 (0.1) + 0.1 (-1) = -0.01,   mhat = -0.01 / 0.19
   *   v = 0.999 (0.001) + 0.001 (1) = 0.001999, vhat = 0.001999 / 0.001999
   *   w = 0.9 - 0.1 (-0.01/0.19) / (1 + 1e-8) */
  g[0] = -1.0f;
  ASSERT_INT_EQ(bt__adamw_update(w, m, v, g, 2, lr, b1, b2, eps, 0.0f, 2),
                BT_OK);
  EXPECT_NEAR(m[0], -0.01, 1e-6);
  EXPECT_NEAR(v[0], 0.001999, 1e-7);
  EXPECT_NEAR(w[0], 0.9 + 0.1 * (0.01 / 0.19), 1e-6);

  /* A constant gradient: mhat = g and vhat = g^2 at every step, so each
   * step moves lr. */
  float wc = 0.0f, mc = 0.0f, vc = 0.0f, gc = 0.5f;
  for (int t = 1; t <= 3; t++)
    ASSERT_INT_EQ(bt__adamw_update(&wc, &mc, &vc, &gc, 1, lr, b1, b2, eps,
                                   0.0f, t),
                  BT_OK);
  EXPECT_NEAR(wc, -0.3, 1e-5);

  /* Decoupled decay: with g = 0 the moments stay zero and w still decays
   * by lr wd w, not scaled by the adaptive denominator. */
  float wd_w = 2.0f, wd_m = 0.0f, wd_v = 0.0f, zero = 0.0f;
  ASSERT_INT_EQ(bt__adamw_update(&wd_w, &wd_m, &wd_v, &zero, 1, lr, b1, b2,
                                 eps, 0.01f, 1),
                BT_OK);
  EXPECT_NEAR(wd_w, 2.0 - 0.1 * 0.01 * 2.0, 1e-7);
  /* With a gradient the decay is added as is: step 1 moves
   * lr (sign(g) + wd w). */
  float w5 = 2.0f, m5 = 0.0f, v5 = 0.0f, g5 = 3.0f;
  ASSERT_INT_EQ(bt__adamw_update(&w5, &m5, &v5, &g5, 1, lr, b1, b2, eps,
                                 0.01f, 1),
                BT_OK);
  EXPECT_NEAR(w5, 2.0 - 0.1 * (1.0 + 0.01 * 2.0), 1e-6);

  /* Several steps against the reference. */
  test_rng_seed(&rng, 15);
  size_t n = 1000;
  float *w1 = test_random_f(&rng, n, -1, 1), *w2 = test_copy_f(w1, n);
  float *m1 = test_alloc_f(n), *m2 = test_alloc_f(n), *v1 = test_alloc_f(n),
        *v2 = test_alloc_f(n);
  for (int64_t t = 1; t <= 5; t++) {
    float *gr = test_random_f(&rng, n, -1, 1);
    ASSERT_INT_EQ(bt__adamw_update(w1, m1, v1, gr, n, 1e-3f, b1, b2, eps,
                                   0.1f, t),
                  BT_OK);
    bt__ref_adamw_update(w2, m2, v2, gr, n, 1e-3f, b1, b2, eps, 0.1f, t);
    free(gr);
  }
  test_expect_close("adamw w", w1, w2, n, 1e-6);
  test_expect_close("adamw m", m1, m2, n, 1e-6);
  test_expect_close("adamw v", v1, v2, n, 1e-6);
  free(w1), free(w2), free(m1), free(m2), free(v1), free(v2);
}

TEST(adamw_errors)
{
  float a[2] = {0};

  EXPECT_STATUS(bt__adamw_update(NULL, a, a, a, 2, 1, .9f, .99f, 0, 0, 1),
                BT_EINVAL, NULL);
  EXPECT_STATUS(bt__adamw_update(a, NULL, a, a, 2, 1, .9f, .99f, 0, 0, 1),
                BT_EINVAL, NULL);
  EXPECT_STATUS(bt__adamw_update(a, a, a, a, 0, 1, .9f, .99f, 0, 0, 1),
                BT_EINVAL, NULL);
  EXPECT_STATUS(bt__adamw_update(a, a, a, a, 2, 1, .9f, .99f, 0, 0, 0),
                BT_EINVAL, NULL);
  EXPECT_STATUS(bt__adamw_update(a, a, a, a, 2, 1, 1.0f, .99f, 0, 0, 1),
                BT_EINVAL, NULL);
  EXPECT_STATUS(bt__adamw_update(a, a, a, a, 2, 1, .9f, NAN, 0, 0, 1),
                BT_EINVAL, NULL);
  EXPECT_STATUS(bt__adamw_update(a, a, a, a, 2, 1, .9f, .99f, -1, 0, 1),
                BT_EINVAL, NULL);
  EXPECT_STATUS(bt__adamw_update(a, a, a, a, 2, NAN, .9f, .99f, 0, 0, 1),
                BT_EINVAL, NULL);
}
