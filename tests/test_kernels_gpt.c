/* The GPT kernels (kernels/cpu/embedding.c, attention.c, dropout.c): each
 * against its plain-C reference, each backward against central finite
 * differences of a double-precision forward, the attention's causality,
 * Philox4x32-10 against the Random123 known answers, dropout masks that do
 * not depend on the microbatch split, and argument errors. */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "test.h"
#include "test_util.h"

/* ---- helpers (shared ones in test_util.h) ------------------------------ */

/* The tests' shared stream (as before: seeded per test). */
static test_rng_t rng = {0x243f6a8885a308d3ull};

static int32_t *
random_tokens(size_t n, size_t V)
{
  int32_t *x = test_xcalloc(n * sizeof(int32_t), 1);
  for (size_t i = 0; i < n; i++)
    x[i] = (int32_t)(test_rng_next(&rng) % V);
  return x;
}

/* Bitwise equality. */
static void
expect_same(const char *what, const float *got, const float *want, size_t n)
{
  if (memcmp(got, want, n * sizeof(float)) == 0)
    return;
  for (size_t i = 0; i < n; i++)
    if (memcmp(&got[i], &want[i], sizeof(float)) != 0) {
      test_fail(__FILE__, __LINE__, "%s[%zu]: %.9g, want exactly %.9g", what,
                i, (double)got[i], (double)want[i]);
      return;
    }
}

#define FD_TOL 1e-3

static double
dot_d(const double *a, const float *b, size_t n)
{
  double s = 0.0;
  for (size_t i = 0; i < n; i++)
    s += a[i] * (double)b[i];
  return s;
}

/* ---- embedding ---------------------------------------------------------- */

TEST(embedding_matches_reference)
{
  /* B, T, C, V, Tmax, t0; small V so tokens repeat. */
  static const size_t shapes[][6] = {
      {3, 7, 13, 5, 9, 2}, {1, 1, 1, 1, 1, 0}, {4, 64, 96, 50, 128, 64}};

  test_rng_seed(&rng, 11);
  for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
    size_t B = shapes[s][0], T = shapes[s][1], C = shapes[s][2];
    size_t V = shapes[s][3], Tmax = shapes[s][4], t0 = shapes[s][5];
    int32_t *x = random_tokens(B * T, V);
    float *wte = test_random_f(&rng, V * C, -1, 1),
          *wpe = test_random_f(&rng, Tmax * C, -1, 1);
    float *out = test_alloc_f(B * T * C), *out_ref = test_alloc_f(B * T * C);
    float *dout = test_random_f(&rng, B * T * C, -1, 1);
    float *dwte = test_random_f(&rng, V * C, -1, 1),
          *dwte_ref = test_copy_f(dwte, V * C);
    float *dwpe = test_random_f(&rng, Tmax * C, -1, 1);
    float *dwpe_ref = test_copy_f(dwpe, Tmax * C);
    float *dwte2 = test_copy_f(dwte, V * C),
          *dwpe2 = test_copy_f(dwpe, Tmax * C);

    EXPECT_STATUS(bt__embedding_fwd(out, x, wte, wpe, B, T, C, V, Tmax, t0),
                  BT_OK, NULL);
    bt__ref_embedding_fwd(out_ref, x, wte, wpe, B, T, C, t0);
    expect_same("embedding out", out, out_ref, B * T * C);

    /* Accumulates onto what was there, in the reference's order: exact. */
    EXPECT_STATUS(
        bt__embedding_bwd(dwte, dwpe, dout, x, B, T, C, V, Tmax, t0), BT_OK,
        NULL);
    bt__ref_embedding_bwd(dwte_ref, dwpe_ref, dout, x, B, T, C, t0);
    expect_same("embedding dwte", dwte, dwte_ref, V * C);
    expect_same("embedding dwpe", dwpe, dwpe_ref, Tmax * C);

    /* Bitwise reproducible. */
    EXPECT_STATUS(
        bt__embedding_bwd(dwte2, dwpe2, dout, x, B, T, C, V, Tmax, t0), BT_OK,
        NULL);
    expect_same("embedding dwte rerun", dwte2, dwte, V * C);
    expect_same("embedding dwpe rerun", dwpe2, dwpe, Tmax * C);

    free(x), free(wte), free(wpe), free(out), free(out_ref), free(dout);
    free(dwte), free(dwte_ref), free(dwpe), free(dwpe_ref), free(dwte2);
    free(dwpe2);
  }
}

struct embedding_ctx {
  double *wte, *wpe;
  const int32_t *x;
  const float *r;
  size_t B, T, C, t0;
};

/* L = sum(out * r) with out from the double-precision forward. */
static double
embedding_objective(void *p)
{
  struct embedding_ctx *c = p;
  double L = 0.0;

  for (size_t b = 0; b < c->B; b++)
    for (size_t t = 0; t < c->T; t++)
      for (size_t k = 0; k < c->C; k++) {
        double o = c->wte[(size_t)c->x[b * c->T + t] * c->C + k] +
                   c->wpe[(c->t0 + t) * c->C + k];
        L += o * (double)c->r[(b * c->T + t) * c->C + k];
      }
  return L;
}

TEST(embedding_backward_finite_differences)
{
  size_t B = 2, T = 5, C = 6, V = 4, Tmax = 7, t0 = 1;

  test_rng_seed(&rng, 12);
  int32_t *x = random_tokens(B * T, V);
  x[0] = x[3] = x[7] = 2; /* a token used several times */
  float *wte = test_random_f(&rng, V * C, -1, 1),
        *wpe = test_random_f(&rng, Tmax * C, -1, 1);
  float *r = test_random_f(&rng, B * T * C, -1, 1);
  float *dwte = test_alloc_f(V * C), *dwpe = test_alloc_f(Tmax * C);
  struct embedding_ctx c = {test_to_double(wte, V * C),
                            test_to_double(wpe, Tmax * C),
                            x,
                            r,
                            B,
                            T,
                            C,
                            t0};
  double *g = test_alloc_d(Tmax * C);

  ASSERT_INT_EQ(bt__embedding_bwd(dwte, dwpe, r, x, B, T, C, V, Tmax, t0),
                BT_OK);
  test_fd_grad(embedding_objective, &c, c.wte, V * C, g);
  test_expect_fd("embedding dwte", dwte, g, V * C, FD_TOL);
  test_fd_grad(embedding_objective, &c, c.wpe, Tmax * C, g);
  test_expect_fd("embedding dwpe", dwpe, g, Tmax * C, FD_TOL);
  /* Rows of wpe outside t0 .. t0+T-1 get nothing. */
  for (size_t k = 0; k < C; k++) {
    EXPECT_TRUE(dwpe[k] == 0.0f);
    EXPECT_TRUE(dwpe[(Tmax - 1) * C + k] == 0.0f);
  }
  free(c.wte), free(c.wpe), free(g), free(x), free(wte), free(wpe), free(r);
  free(dwte), free(dwpe);
}

TEST(embedding_errors)
{
  int32_t x[4] = {0, 1, 2, 3};
  float w[32] = {0}, out[32], d[32] = {0};

  for (int i = 0; i < 32; i++)
    out[i] = 7.0f;
  /* V = 4, Tmax = 4, C = 2, B = 2, T = 2. */
  EXPECT_STATUS(bt__embedding_fwd(out, x, w, w, 2, 2, 2, 4, 4, 0), BT_OK,
                NULL);
  for (int i = 0; i < 32; i++)
    out[i] = 7.0f;
  EXPECT_STATUS(bt__embedding_fwd(out, x, w, w, 2, 2, 2, 3, 4, 0), BT_EINVAL,
                NULL); /* token 3 >= V */
  x[1] = -1;
  EXPECT_STATUS(bt__embedding_fwd(out, x, w, w, 2, 2, 2, 4, 4, 0), BT_EINVAL,
                NULL);
  EXPECT_STATUS(bt__embedding_bwd(d, d, w, x, 2, 2, 2, 4, 4, 0), BT_EINVAL,
                NULL);
  x[1] = 1;
  EXPECT_STATUS(bt__embedding_fwd(out, x, w, w, 2, 2, 2, 4, 4, 3), BT_EINVAL,
                NULL); /* t0 + T > Tmax */
  EXPECT_STATUS(bt__embedding_fwd(out, x, w, w, 2, 2, 2, 4, 4, SIZE_MAX),
                BT_EINVAL, NULL);
  EXPECT_STATUS(bt__embedding_bwd(d, d, w, x, 2, 2, 2, 4, 4, 3), BT_EINVAL,
                NULL);
  for (int i = 0; i < 32; i++)
    EXPECT_TRUE(out[i] == 7.0f && d[i] == 0.0f); /* nothing written */
  EXPECT_STATUS(bt__embedding_fwd(out, x, w, w, 2, 2, 2, 4, 4, 2), BT_OK,
                NULL); /* t0 + T == Tmax is fine */
  EXPECT_STATUS(bt__embedding_fwd(NULL, x, w, w, 2, 2, 2, 4, 4, 0), BT_EINVAL,
                NULL);
  EXPECT_STATUS(bt__embedding_fwd(out, NULL, w, w, 2, 2, 2, 4, 4, 0),
                BT_EINVAL, NULL);
  EXPECT_STATUS(bt__embedding_fwd(out, x, NULL, w, 2, 2, 2, 4, 4, 0),
                BT_EINVAL, NULL);
  EXPECT_STATUS(bt__embedding_fwd(out, x, w, NULL, 2, 2, 2, 4, 4, 0),
                BT_EINVAL, NULL);
  EXPECT_STATUS(bt__embedding_bwd(NULL, d, w, x, 2, 2, 2, 4, 4, 0),
                BT_EINVAL, NULL);
  EXPECT_STATUS(bt__embedding_bwd(d, NULL, w, x, 2, 2, 2, 4, 4, 0),
                BT_EINVAL, NULL);
  EXPECT_STATUS(bt__embedding_bwd(d, d, NULL, x, 2, 2, 2, 4, 4, 0),
                BT_EINVAL, NULL);
  EXPECT_STATUS(bt__embedding_fwd(out, x, w, w, 0, 2, 2, 4, 4, 0), BT_EINVAL,
                NULL);
  EXPECT_STATUS(bt__embedding_fwd(out, x, w, w, 2, 0, 2, 4, 4, 0), BT_EINVAL,
                NULL);
  EXPECT_STATUS(bt__embedding_fwd(out, x, w, w, 2, 2, 0, 4, 4, 0), BT_EINVAL,
                NULL);
  EXPECT_STATUS(bt__embedding_fwd(out, x, w, w, 2, 2, 2, 0, 4, 0), BT_EINVAL,
                NULL);
  EXPECT_STATUS(bt__embedding_fwd(out, x, w, w, 1, 1, SIZE_MAX, 4, 4, 0),
                BT_ERANGE, NULL);
}

/* ---- attention ---------------------------------------------------------- */

static float *
alloc_scratch(size_t B, size_t T, size_t nh)
{
  size_t bytes = bt__attention_scratch_bytes(B, T, nh);
  if (bytes == 0) {
    fprintf(stderr, "test_kernels_gpt: no scratch size\n");
    exit(1);
  }
  return test_xcalloc(bytes, 1);
}

TEST(attention_matches_reference)
{
  /* B, T, C, nh */
  static const size_t shapes[][4] = {{2, 5, 6, 2},  {2, 5, 6, 3},
                                     {3, 17, 24, 4}, {1, 1, 4, 1},
                                     {2, 64, 64, 4}, {1, 33, 30, 5}};

  test_rng_seed(&rng, 21);
  for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
    size_t B = shapes[s][0], T = shapes[s][1], C = shapes[s][2];
    size_t nh = shapes[s][3];
    size_t nq = B * T * 3 * C, no = B * T * C, na = B * nh * T * T;
    float *qkv = test_random_f(&rng, nq, -2, 2),
          *dout = test_random_f(&rng, no, -1, 1);
    float *scratch = alloc_scratch(B, T, nh);
    float *out = test_alloc_f(no), *out_ref = test_alloc_f(no),
          *att_ref = test_alloc_f(na);
    float *dqkv = test_alloc_f(nq), *dqkv_ref = test_alloc_f(nq);

    EXPECT_INT_EQ(bt__attention_scratch_bytes(B, T, nh),
                  (na + T * T) * sizeof(float));
    EXPECT_STATUS(bt__attention_fwd(out, scratch, qkv, B, T, C, nh), BT_OK,
                  NULL);
    bt__ref_attention_fwd(out_ref, att_ref, qkv, B, T, C, nh);
    double e1 = test_expect_close("attention out", out, out_ref, no, 1e-5);
    double e2 = test_expect_close("attention att", scratch, att_ref, na, 1e-5);

    /* dqkv is written, whatever it held. */
    for (size_t i = 0; i < nq; i++)
      dqkv[i] = 1e6f;
    EXPECT_STATUS(
        bt__attention_bwd(dqkv, scratch, dout, qkv, B, T, C, nh), BT_OK,
        NULL);
    bt__ref_attention_bwd(dqkv_ref, dout, qkv, att_ref, B, T, C, nh);
    double e3 = test_expect_close("attention dqkv", dqkv, dqkv_ref, nq, 1e-5);
    /* The backward leaves att as it was. */
    test_expect_close("att after bwd", scratch, att_ref, na, 1e-5);
    printf("  B=%zu T=%zu C=%zu nh=%zu: out %.1e att %.1e dqkv %.1e\n", B, T,
           C, nh, e1, e2, e3);

    free(qkv), free(dout), free(scratch), free(out), free(out_ref);
    free(att_ref), free(dqkv), free(dqkv_ref);
  }
}

/* Double-precision forward: out [B, T, C] from qkv [B, T, 3C]. */
static void
attention_d(double *out, const double *qkv, size_t B, size_t T, size_t C,
            size_t nh)
{
  size_t hs = C / nh, C3 = 3 * C;
  double scale = 1.0 / sqrt((double)hs);
  double p[64];

  for (size_t b = 0; b < B; b++)
    for (size_t h = 0; h < nh; h++) {
      const double *base = qkv + b * T * C3 + h * hs;
      for (size_t i = 0; i < T; i++) {
        double mx = -INFINITY, sum = 0.0;
        for (size_t j = 0; j <= i; j++) {
          double s = 0.0;
          for (size_t e = 0; e < hs; e++)
            s += base[i * C3 + e] * base[j * C3 + C + e];
          p[j] = s * scale;
          mx = fmax(mx, p[j]);
        }
        for (size_t j = 0; j <= i; j++)
          sum += (p[j] = exp(p[j] - mx));
        for (size_t e = 0; e < hs; e++) {
          double o = 0.0;
          for (size_t j = 0; j <= i; j++)
            o += p[j] / sum * base[j * C3 + 2 * C + e];
          out[(b * T + i) * C + h * hs + e] = o;
        }
      }
    }
}

struct attention_ctx {
  double *qkv, *out;
  const float *r;
  size_t B, T, C, nh;
};

static double
attention_objective(void *p)
{
  struct attention_ctx *c = p;
  attention_d(c->out, c->qkv, c->B, c->T, c->C, c->nh);
  return dot_d(c->out, c->r, c->B * c->T * c->C);
}

TEST(attention_backward_finite_differences)
{
  size_t B = 2, T = 5, C = 6;

  test_rng_seed(&rng, 22);
  for (size_t nh = 2; nh <= 3; nh++) {
    size_t nq = B * T * 3 * C, no = B * T * C;
    float *qkv = test_random_f(&rng, nq, -2, 2),
          *r = test_random_f(&rng, no, -1, 1);
    float *out = test_alloc_f(no), *dqkv = test_alloc_f(nq);
    float *scratch = alloc_scratch(B, T, nh);
    struct attention_ctx c = {
        test_to_double(qkv, nq), test_alloc_d(no), r, B, T, C, nh};
    double *g = test_alloc_d(nq);
    char what[32];

    /* L = sum(out * r), so dL/dout = r. */
    ASSERT_INT_EQ(bt__attention_fwd(out, scratch, qkv, B, T, C, nh), BT_OK);
    ASSERT_INT_EQ(bt__attention_bwd(dqkv, scratch, r, qkv, B, T, C, nh),
                  BT_OK);
    test_fd_grad(attention_objective, &c, c.qkv, nq, g);
    snprintf(what, sizeof(what), "attention dqkv nh=%zu", nh);
    test_expect_fd(what, dqkv, g, nq, FD_TOL);
    /* The forward against the double one too. */
    attention_d(c.out, c.qkv, B, T, C, nh);
    float *outd = test_alloc_f(no);
    for (size_t i = 0; i < no; i++)
      outd[i] = (float)c.out[i];
    test_expect_close("attention out vs double", out, outd, no, 1e-5);

    free(outd), free(qkv), free(r), free(out), free(dqkv), free(scratch);
    free(c.qkv), free(c.out), free(g);
  }
}

TEST(attention_is_causal)
{
  size_t B = 2, T = 9, C = 12, nh = 3, nq = B * T * 3 * C, no = B * T * C;

  test_rng_seed(&rng, 23);
  float *qkv = test_random_f(&rng, nq, -2, 2);
  float *scratch = alloc_scratch(B, T, nh), *out = test_alloc_f(no);
  float *scratch2 = alloc_scratch(B, T, nh), *out2 = test_alloc_f(no);

  ASSERT_INT_EQ(bt__attention_fwd(out, scratch, qkv, B, T, C, nh), BT_OK);
  /* Probabilities: exactly 0 above the diagonal, rows summing to 1. */
  for (size_t bh = 0; bh < B * nh; bh++)
    for (size_t i = 0; i < T; i++) {
      double sum = 0.0;
      for (size_t j = 0; j < T; j++) {
        float pij = scratch[(bh * T + i) * T + j];
        if (j > i)
          EXPECT_TRUE(pij == 0.0f);
        sum += pij;
      }
      EXPECT_NEAR(sum, 1.0, 1e-6);
    }
  /* Changing q, k and v at position j leaves every position i < j
   * bitwise as it was (and changes position j). */
  for (size_t j = 1; j < T; j++) {
    float *q2 = test_copy_f(qkv, nq);
    for (size_t b = 0; b < B; b++)
      for (size_t k = 0; k < 3 * C; k++)
        q2[(b * T + j) * 3 * C + k] +=
            1.0f + (float)test_rng_uniform(&rng, 0, 1);
    ASSERT_INT_EQ(bt__attention_fwd(out2, scratch2, q2, B, T, C, nh), BT_OK);
    for (size_t b = 0; b < B; b++) {
      expect_same("causal out", out2 + b * T * C, out + b * T * C, j * C);
      EXPECT_TRUE(memcmp(out2 + (b * T + j) * C, out + (b * T + j) * C,
                         C * sizeof(float)) != 0);
    }
    free(q2);
  }
  free(qkv), free(scratch), free(out), free(scratch2), free(out2);
}

TEST(attention_errors)
{
  float a[64] = {0}, s[64], o[64];

  EXPECT_INT_EQ(bt__attention_scratch_bytes(0, 1, 1), 0);
  EXPECT_INT_EQ(bt__attention_scratch_bytes(1, 0, 1), 0);
  EXPECT_INT_EQ(bt__attention_scratch_bytes(1, 1, 0), 0);
  EXPECT_INT_EQ(bt__attention_scratch_bytes(1, SIZE_MAX / 2, 1), 0);
  EXPECT_INT_EQ(bt__attention_scratch_bytes(2, 3, 2),
                (2 * 2 * 9 + 9) * sizeof(float));
  /* B=1, T=2, C=4, nh=2 fits the buffers. */
  EXPECT_STATUS(bt__attention_fwd(o, s, a, 1, 2, 4, 2), BT_OK, NULL);
  EXPECT_STATUS(bt__attention_fwd(o, s, a, 1, 2, 4, 3), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__attention_bwd(o, s, a, a, 1, 2, 4, 3), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__attention_fwd(NULL, s, a, 1, 2, 4, 2), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__attention_fwd(o, NULL, a, 1, 2, 4, 2), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__attention_fwd(o, s, NULL, 1, 2, 4, 2), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__attention_bwd(NULL, s, a, a, 1, 2, 4, 2), BT_EINVAL,
                NULL);
  EXPECT_STATUS(bt__attention_bwd(o, NULL, a, a, 1, 2, 4, 2), BT_EINVAL,
                NULL);
  EXPECT_STATUS(bt__attention_bwd(o, s, NULL, a, 1, 2, 4, 2), BT_EINVAL,
                NULL);
  EXPECT_STATUS(bt__attention_bwd(o, s, a, NULL, 1, 2, 4, 2), BT_EINVAL,
                NULL);
  EXPECT_STATUS(bt__attention_fwd(o, s, a, 0, 2, 4, 2), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__attention_fwd(o, s, a, 1, 0, 4, 2), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__attention_fwd(o, s, a, 1, 2, 0, 2), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__attention_fwd(o, s, a, 1, 2, 4, 0), BT_EINVAL, NULL);
  EXPECT_STATUS(bt__attention_fwd(o, s, a, 1, (size_t)INT_MAX + 1, 4, 2),
                BT_ERANGE, NULL);
  EXPECT_STATUS(bt__attention_fwd(o, s, a, 1, 2, (size_t)INT_MAX / 2 * 2, 2),
                BT_ERANGE, NULL);
}

/* ---- Philox and dropout ------------------------------------------------- */

TEST(philox_known_answers)
{
  /* Random123's kat_vectors for philox4x32_10. */
  static const uint32_t kat[3][10] = {
      {0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
      {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff,
       0xffffffff, 0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
      {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822,
       0x299f31d0, 0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1},
  };

  for (int i = 0; i < 3; i++) {
    uint32_t out[4], out_ref[4];
    bt__philox4x32_10(out, kat[i], kat[i] + 4);
    bt__ref_philox4x32_10(out_ref, kat[i], kat[i] + 4);
    for (int w = 0; w < 4; w++) {
      if (out[w] != kat[i][6 + w])
        test_fail(__FILE__, __LINE__, "philox kat %d word %d: %08x != %08x",
                  i, w, out[w], kat[i][6 + w]);
      if (out_ref[w] != kat[i][6 + w])
        test_fail(__FILE__, __LINE__,
                  "reference philox kat %d word %d: %08x != %08x", i, w,
                  out_ref[w], kat[i][6 + w]);
    }
    printf("  philox kat %d: %08x %08x %08x %08x\n", i, out[0], out[1],
           out[2], out[3]);
  }
}

TEST(dropout_matches_reference)
{
  static const size_t shapes[][2] = {{1, 1}, {3, 3}, {5, 4}, {7, 13},
                                     {64, 768}};
  static const float ps[] = {0.1f, 0.5f, 0.9f};

  test_rng_seed(&rng, 31);
  for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
    for (size_t k = 0; k < 3; k++) {
      size_t N = shapes[s][0], D = shapes[s][1];
      float *x = test_random_f(&rng, N * D, -1, 1);
      float *y = test_alloc_f(N * D), *y_ref = test_alloc_f(N * D);
      uint64_t seed = 0x0123456789abcdefull + s;

      EXPECT_STATUS(bt__dropout_fwd(y, x, N, D, ps[k], seed, 17, 3, 1000),
                    BT_OK, NULL);
      bt__ref_dropout_fwd(y_ref, x, N, D, ps[k], seed, 17, 3, 1000);
      expect_same("dropout y", y, y_ref, N * D);
      free(x), free(y), free(y_ref);
    }
}

TEST(dropout_mask_independent_of_split)
{
  size_t N = 8, D = 37;

  test_rng_seed(&rng, 32);
  float *x = test_random_f(&rng, N * D, -1, 1);
  float *y = test_alloc_f(N * D), *y2 = test_alloc_f(N * D),
        *y3 = test_alloc_f(N * D);

  ASSERT_INT_EQ(bt__dropout_fwd(y, x, N, D, 0.3f, 42, 5, 2, 0), BT_OK);
  ASSERT_INT_EQ(bt__dropout_fwd(y2, x, 4, D, 0.3f, 42, 5, 2, 0), BT_OK);
  ASSERT_INT_EQ(
      bt__dropout_fwd(y2 + 4 * D, x + 4 * D, 4, D, 0.3f, 42, 5, 2, 4), BT_OK);
  expect_same("split 4+4", y2, y, N * D);
  /* Row by row, and in reverse order. */
  for (size_t r = N; r-- > 0;)
    ASSERT_INT_EQ(
        bt__dropout_fwd(y3 + r * D, x + r * D, 1, D, 0.3f, 42, 5, 2, r),
        BT_OK);
  expect_same("split 1 x 8", y3, y, N * D);
  /* Recomputation draws the same mask; another seed, step or layer does
   * not. */
  ASSERT_INT_EQ(bt__dropout_fwd(y3, x, N, D, 0.3f, 42, 5, 2, 0), BT_OK);
  expect_same("recompute", y3, y, N * D);
  ASSERT_INT_EQ(bt__dropout_fwd(y3, x, N, D, 0.3f, 43, 5, 2, 0), BT_OK);
  EXPECT_TRUE(memcmp(y3, y, N * D * sizeof(float)) != 0);
  ASSERT_INT_EQ(bt__dropout_fwd(y3, x, N, D, 0.3f, 42, 6, 2, 0), BT_OK);
  EXPECT_TRUE(memcmp(y3, y, N * D * sizeof(float)) != 0);
  ASSERT_INT_EQ(bt__dropout_fwd(y3, x, N, D, 0.3f, 42, 5, 3, 0), BT_OK);
  EXPECT_TRUE(memcmp(y3, y, N * D * sizeof(float)) != 0);
  ASSERT_INT_EQ(bt__dropout_fwd(y3, x, N, D, 0.3f, 42, 5, 2, 1), BT_OK);
  EXPECT_TRUE(memcmp(y3, y, N * D * sizeof(float)) != 0);
  free(x), free(y), free(y2), free(y3);
}

TEST(dropout_keep_fraction)
{
  size_t N = 512, D = 1000, n = N * D;
  static const float ps[] = {0.1f, 0.5f, 0.9f};
  float *x = test_alloc_f(n), *y = test_alloc_f(n);

  for (size_t i = 0; i < n; i++)
    x[i] = 1.0f;
  for (size_t k = 0; k < 3; k++) {
    float p = ps[k], scale = 1.0f / (1.0f - p);
    ASSERT_INT_EQ(bt__dropout_fwd(y, x, N, D, p, 7, 1, 0, 0), BT_OK);
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
      if (y[i] != 0.0f) {
        kept++;
        EXPECT_TRUE(y[i] == scale);
      }
    }
    double frac = (double)kept / (double)n, want = 1.0 - (double)p;
    double sigma = sqrt((double)p * (1.0 - (double)p) / (double)n);
    printf("  p=%.1f keep %.5f (want %.5f, %.2f sigma)\n", (double)p, frac,
           want, fabs(frac - want) / sigma);
    EXPECT_TRUE(fabs(frac - want) <= 5.0 * sigma);
    /* Each column keeps its share too (no column-block pattern). */
    for (size_t c = 0; c < 4; c++) {
      size_t kc = 0;
      for (size_t r = 0; r < N; r++)
        kc += y[r * D + c] != 0.0f;
      double fc = (double)kc / (double)N;
      EXPECT_TRUE(fabs(fc - want) <=
                  5.0 * sqrt((double)p * (1.0 - (double)p) / (double)N));
    }
  }
  free(x), free(y);
}

TEST(dropout_backward_uses_forward_mask)
{
  size_t N = 13, D = 29, n = N * D;

  test_rng_seed(&rng, 33);
  float *x = test_random_f(&rng, n, 0.5f, 1.5f),
        *dy = test_random_f(&rng, n, 0.5f, 1.5f);
  float *y = test_alloc_f(n), *dx = test_alloc_f(n), *dx_ref = test_alloc_f(n);
  float *ones = test_alloc_f(n), *mask = test_alloc_f(n);
  float p = 0.4f, scale = 1.0f / (1.0f - p);

  for (size_t i = 0; i < n; i++)
    ones[i] = 1.0f;
  ASSERT_INT_EQ(bt__dropout_fwd(y, x, N, D, p, 99, 3, 1, 40), BT_OK);
  ASSERT_INT_EQ(bt__dropout_fwd(mask, ones, N, D, p, 99, 3, 1, 40), BT_OK);
  ASSERT_INT_EQ(bt__dropout_bwd(dx, dy, N, D, p, 99, 3, 1, 40), BT_OK);
  for (size_t i = 0; i < n; i++) {
    dx_ref[i] = mask[i] != 0.0f ? dy[i] * scale : 0.0f;
    EXPECT_TRUE((y[i] != 0.0f) == (mask[i] != 0.0f));
  }
  expect_same("dropout dx", dx, dx_ref, n);
  /* In place: dx may be dy, y may be x. */
  float *dy2 = test_copy_f(dy, n), *x2 = test_copy_f(x, n);
  ASSERT_INT_EQ(bt__dropout_bwd(dy2, dy2, N, D, p, 99, 3, 1, 40), BT_OK);
  expect_same("dropout dx in place", dy2, dx, n);
  ASSERT_INT_EQ(bt__dropout_fwd(x2, x2, N, D, p, 99, 3, 1, 40), BT_OK);
  expect_same("dropout y in place", x2, y, n);
  free(x), free(dy), free(y), free(dx), free(dx_ref), free(ones), free(mask);
  free(dy2), free(x2);
}

TEST(dropout_identity_and_errors)
{
  size_t N = 3, D = 5, n = N * D;

  test_rng_seed(&rng, 34);
  float *x = test_random_f(&rng, n, -1, 1), *y = test_alloc_f(n);
  ASSERT_INT_EQ(bt__dropout_fwd(y, x, N, D, 0.0f, 1, 2, 3, 4), BT_OK);
  expect_same("p=0 fwd", y, x, n);
  ASSERT_INT_EQ(bt__dropout_bwd(y, x, N, D, 0.0f, 1, 2, 3, 4), BT_OK);
  expect_same("p=0 bwd", y, x, n);
  ASSERT_INT_EQ(bt__dropout_fwd(y, y, N, D, 0.0f, 1, 2, 3, 4), BT_OK);
  expect_same("p=0 in place", y, x, n);

  EXPECT_STATUS(bt__dropout_fwd(y, x, N, D, 1.0f, 1, 2, 3, 4), BT_EINVAL,
                NULL);
  EXPECT_STATUS(bt__dropout_fwd(y, x, N, D, -0.1f, 1, 2, 3, 4), BT_EINVAL,
                NULL);
  EXPECT_STATUS(bt__dropout_fwd(y, x, N, D, NAN, 1, 2, 3, 4), BT_EINVAL,
                NULL);
  EXPECT_STATUS(bt__dropout_bwd(y, x, N, D, 1.5f, 1, 2, 3, 4), BT_EINVAL,
                NULL);
  EXPECT_STATUS(bt__dropout_fwd(NULL, x, N, D, 0.5f, 1, 2, 3, 4), BT_EINVAL,
                NULL);
  EXPECT_STATUS(bt__dropout_fwd(y, NULL, N, D, 0.5f, 1, 2, 3, 4), BT_EINVAL,
                NULL);
  EXPECT_STATUS(bt__dropout_bwd(NULL, x, N, D, 0.5f, 1, 2, 3, 4), BT_EINVAL,
                NULL);
  EXPECT_STATUS(bt__dropout_bwd(y, NULL, N, D, 0.5f, 1, 2, 3, 4), BT_EINVAL,
                NULL);
  EXPECT_STATUS(bt__dropout_fwd(y, x, 0, D, 0.5f, 1, 2, 3, 4), BT_EINVAL,
                NULL);
  EXPECT_STATUS(bt__dropout_fwd(y, x, N, 0, 0.5f, 1, 2, 3, 4), BT_EINVAL,
                NULL);
  /* Global rows past 2^32 do not fit the counter. */
  EXPECT_STATUS(bt__dropout_fwd(y, x, N, D, 0.5f, 1, 2, 3, UINT32_MAX),
                BT_ERANGE, NULL);
  EXPECT_STATUS(bt__dropout_fwd(y, x, 1, D, 0.5f, 1, 2, 3, UINT32_MAX),
                BT_OK, NULL);
  EXPECT_STATUS(bt__dropout_fwd(y, x, 2, SIZE_MAX / 2, 0.5f, 1, 2, 3, 0),
                BT_ERANGE, NULL);
  free(x), free(y);
}
