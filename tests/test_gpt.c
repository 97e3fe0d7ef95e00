/* The GPT reference model (model/gpt.c): the pinned parameter table (tied
 * and untied), every gradient against central finite differences of a
 * double-precision reimplementation written here from gpt.h's definition
 * (without and with dropout, whose masks the double model takes from the
 * kernel), the loss against it, microbatching (the dropout masks keyed by
 * global row), the tied gradient's two parts, determinism, files,
 * SGD / AdamW on a tiny repeated sequence, and inference: the last
 * position's logits against the reference step's loss, and sampling
 * (determinism, temperature 0 as argmax over the sliding window). */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "baton/safetensors.h"
#include "gpt.h"
#include "kernels.h"
#include "test.h"
#include "test_util.h"

/* ---- helpers ------------------------------------------------------------ */

static test_rng_t rng;

/* The tiny shape: V=7, C=6, nh=2, L=2, Tmax=5. */
static struct bt__gpt_config
tiny(bool tied, float dropout)
{
  struct bt__gpt_config c = BT__GPT_CONFIG_INIT(7, 6, 2, 2, 5);
  c.tied = tied;
  c.dropout = dropout;
  return c;
}

/* Moves the biases, betas and gammas away from 0 and 1, so the gradient
 * check sees a generic point. */
static void
perturb(struct bt__gpt *m, uint64_t seed)
{
  test_rng_seed(&rng, seed);
  for (size_t t = 0; t < m->ntensors; t++) {
    const struct bt__params_tensor *tt = &m->tensors[t];
    float *p = m->params + tt->offset;
    if (tt->ndim == 2)
      continue;
    for (size_t j = 0; j < tt->count; j++)
      p[j] = (float)((test_ends_with(tt->name, ".g") ? 1.0 : 0.0) +
                     test_rng_uniform(&rng, -0.3, 0.3));
  }
}

static struct bt__gpt *
make_model(struct bt__gpt_config c, uint64_t seed, bool perturbed)
{
  struct bt__gpt *m = NULL;
  bt_error_t err;

  if (bt__gpt_create(&c, seed, &m, &err) != BT_OK) {
    fprintf(stderr, "test_gpt: create: %s\n", err.message);
    exit(1);
  }
  if (perturbed)
    perturb(m, seed + 1000);
  return m;
}

/* x, y [B,T] in [0, V). */
static void
make_batch(size_t B, size_t T, size_t V, uint64_t seed, int32_t **x,
           int32_t **y)
{
  test_rng_seed(&rng, seed);
  *x = test_xcalloc(B * T, sizeof(int32_t));
  *y = test_xcalloc(B * T, sizeof(int32_t));
  for (size_t r = 0; r < B * T; r++) {
    (*x)[r] = (int32_t)(test_rng_next(&rng) % V);
    (*y)[r] = (int32_t)(test_rng_next(&rng) % V);
  }
}

/* ---- a double-precision model, from the definition --------------------- */

#define MAXW 32 /* widest row in the FD tests: 4C = 24 */
#define MAXT 8

static const double *
dparam(const struct bt__gpt *m, const double *p, const char *name)
{
  const struct bt__params_tensor *t = bt__gpt_find(m, name);
  if (t == NULL) {
    fprintf(stderr, "test_gpt: no tensor %s\n", name);
    exit(1);
  }
  return p + t->offset;
}

static const double *
dblk(const struct bt__gpt *m, const double *p, size_t i, const char *what)
{
  char name[64];
  snprintf(name, sizeof(name), "blk%zu.%s", i, what);
  return dparam(m, p, name);
}

/* y [OUT] = W [OUT,IN] x [IN] (+ b) */
static void
dlinear(double *y, const double *x, const double *w, const double *b, size_t IN,
        size_t OUT)
{
  for (size_t o = 0; o < OUT; o++) {
    double acc = b != NULL ? b[o] : 0.0;
    for (size_t i = 0; i < IN; i++)
      acc += w[o * IN + i] * x[i];
    y[o] = acc;
  }
}

static void
dlayernorm(double *y, const double *x, const double *g, const double *b,
           size_t n)
{
  double mean = 0.0, var = 0.0;
  for (size_t i = 0; i < n; i++)
    mean += x[i];
  mean /= (double)n;
  for (size_t i = 0; i < n; i++)
    var += (x[i] - mean) * (x[i] - mean);
  var /= (double)n;
  double rstd = 1.0 / sqrt(var + 1e-5);
  for (size_t i = 0; i < n; i++)
    y[i] = (x[i] - mean) * rstd * g[i] + b[i];
}

static double
dgelu(double x)
{
  const double s = sqrt(2.0 / 3.14159265358979323846);
  return 0.5 * x * (1.0 + tanh(s * (x + 0.044715 * x * x * x)));
}

/* Dropout masks for the double model: mask[(id * B*T + row) * C + c], the
 * kernel's kept-and-scaled factor (0 or 1/(1-p)) for dropout id, global
 * row and column, drawn by running the kernel on ones. */
static double *
make_masks(const struct bt__gpt *m, size_t B, size_t T, uint64_t seed,
           uint32_t step)
{
  size_t N = B * T, C = m->cfg.C, nid = 1 + 2 * m->cfg.L;
  double *mask = test_xcalloc(nid * N * C, sizeof(double));
  float *ones = test_xcalloc(N * C, sizeof(float));
  float *out = test_xcalloc(N * C, sizeof(float));

  for (size_t i = 0; i < N * C; i++)
    ones[i] = 1.0f;
  for (size_t id = 0; id < nid; id++) {
    if (bt__dropout_fwd(out, ones, N, C, m->cfg.dropout, seed, step,
                        (uint32_t)id, 0) != BT_OK) {
      fprintf(stderr, "test_gpt: dropout kernel failed\n");
      exit(1);
    }
    for (size_t i = 0; i < N * C; i++)
      mask[id * N * C + i] = (double)out[i];
  }
  free(ones);
  free(out);
  return mask;
}

/* Multiplies row v [C] of global row `row` by dropout id's mask. */
static void
ddrop(double *v, const double *mask, size_t id, size_t row, size_t N, size_t C)
{
  if (mask == NULL)
    return;
  for (size_t c = 0; c < C; c++)
    v[c] *= mask[(id * N + row) * C + c];
}

/* The mean cross-entropy over B*T rows.  whead, when not NULL, replaces
 * the logits' weight (so a tied wte's two uses can be told apart); mask
 * NULL is no dropout. */
static double
dmodel_loss(const struct bt__gpt *m, const double *p, const int32_t *x,
            const int32_t *y, size_t B, size_t T, const double *mask,
            const double *whead)
{
  size_t C = m->cfg.C, V = m->cfg.V, nh = m->cfg.nh, hs = C / nh;
  size_t N = B * T;
  const double *wte = dparam(m, p, "wte"), *wpe = dparam(m, p, "wpe");
  const double *wh = whead != NULL ? whead
                     : m->cfg.tied ? wte
                                   : dparam(m, p, "head.w");
  double total = 0.0;

  for (size_t b = 0; b < B; b++) {
    double h[MAXT][MAXW], a[MAXT][MAXW], qkv[MAXT][3 * MAXW];
    double yv[MAXT][MAXW], t1[MAXW], t2[4 * MAXW];

    for (size_t t = 0; t < T; t++) {
      for (size_t c = 0; c < C; c++)
        h[t][c] = wte[(size_t)x[b * T + t] * C + c] + wpe[t * C + c];
      ddrop(h[t], mask, 0, b * T + t, N, C);
    }
    for (size_t i = 0; i < m->cfg.L; i++) {
      for (size_t t = 0; t < T; t++) {
        dlayernorm(a[t], h[t], dblk(m, p, i, "ln1.g"), dblk(m, p, i, "ln1.b"),
                   C);
        dlinear(qkv[t], a[t], dblk(m, p, i, "attn.qkv.w"),
                dblk(m, p, i, "attn.qkv.b"), C, 3 * C);
      }
      for (size_t hd = 0; hd < nh; hd++)
        for (size_t t = 0; t < T; t++) {
          double s[MAXT], mx = -INFINITY, se = 0.0;
          for (size_t j = 0; j <= t; j++) {
            double d = 0.0;
            for (size_t k = 0; k < hs; k++)
              d += qkv[t][hd * hs + k] * qkv[j][C + hd * hs + k];
            s[j] = d / sqrt((double)hs);
            mx = fmax(mx, s[j]);
          }
          for (size_t j = 0; j <= t; j++)
            se += (s[j] = exp(s[j] - mx));
          for (size_t k = 0; k < hs; k++) {
            double acc = 0.0;
            for (size_t j = 0; j <= t; j++)
              acc += s[j] / se * qkv[j][2 * C + hd * hs + k];
            yv[t][hd * hs + k] = acc;
          }
        }
      for (size_t t = 0; t < T; t++) {
        dlinear(t1, yv[t], dblk(m, p, i, "attn.proj.w"),
                dblk(m, p, i, "attn.proj.b"), C, C);
        ddrop(t1, mask, 1 + 2 * i, b * T + t, N, C);
        for (size_t c = 0; c < C; c++)
          h[t][c] += t1[c];
        dlayernorm(a[t], h[t], dblk(m, p, i, "ln2.g"), dblk(m, p, i, "ln2.b"),
                   C);
        dlinear(t2, a[t], dblk(m, p, i, "mlp.fc.w"), dblk(m, p, i, "mlp.fc.b"),
                C, 4 * C);
        for (size_t c = 0; c < 4 * C; c++)
          t2[c] = dgelu(t2[c]);
        dlinear(t1, t2, dblk(m, p, i, "mlp.proj.w"),
                dblk(m, p, i, "mlp.proj.b"), 4 * C, C);
        ddrop(t1, mask, 2 + 2 * i, b * T + t, N, C);
        for (size_t c = 0; c < C; c++)
          h[t][c] += t1[c];
      }
    }
    for (size_t t = 0; t < T; t++) {
      double logits[MAXW] = {0};
      dlayernorm(a[t], h[t], dparam(m, p, "lnf.g"), dparam(m, p, "lnf.b"), C);
      dlinear(logits, a[t], wh, NULL, C, V);
      double mx = logits[0], se = 0.0;
      for (size_t v = 1; v < V; v++)
        mx = fmax(mx, logits[v]);
      for (size_t v = 0; v < V; v++)
        se += exp(logits[v] - mx);
      total += mx + log(se) - logits[y[b * T + t]];
    }
  }
  return total / (double)N;
}

/* ---- the parameter table ------------------------------------------------ */

TEST(gpt_table)
{
  for (int tied = 1; tied >= 0; tied--) {
    const size_t V = 7, C = 6, Tm = 5;
    struct bt__gpt *m = make_model(tiny(tied != 0, 0.0f), 1, false);
    static const struct {
      const char *name;
      size_t s0, s1; /* in units of C (V, Tmax as 100, 101); s1 0: 1-D */
    } want[] = {
        {"wte", 100, 1},
        {"wpe", 101, 1},
        {"blk0.ln1.g", 1, 0},
        {"blk0.ln1.b", 1, 0},
        {"blk0.attn.qkv.w", 3, 1},
        {"blk0.attn.qkv.b", 3, 0},
        {"blk0.attn.proj.w", 1, 1},
        {"blk0.attn.proj.b", 1, 0},
        {"blk0.ln2.g", 1, 0},
        {"blk0.ln2.b", 1, 0},
        {"blk0.mlp.fc.w", 4, 1},
        {"blk0.mlp.fc.b", 4, 0},
        {"blk0.mlp.proj.w", 1, 4},
        {"blk0.mlp.proj.b", 1, 0},
        {"blk1.ln1.g", 1, 0},
        {"blk1.ln1.b", 1, 0},
        {"blk1.attn.qkv.w", 3, 1},
        {"blk1.attn.qkv.b", 3, 0},
        {"blk1.attn.proj.w", 1, 1},
        {"blk1.attn.proj.b", 1, 0},
        {"blk1.ln2.g", 1, 0},
        {"blk1.ln2.b", 1, 0},
        {"blk1.mlp.fc.w", 4, 1},
        {"blk1.mlp.fc.b", 4, 0},
        {"blk1.mlp.proj.w", 1, 4},
        {"blk1.mlp.proj.b", 1, 0},
        {"lnf.g", 1, 0},
        {"lnf.b", 1, 0},
        {"head.w", 100, 1},
    };
    size_t n = sizeof(want) / sizeof(want[0]) - (tied ? 1 : 0), offset = 0;

    ASSERT_INT_EQ(m->ntensors, n);
    EXPECT_INT_EQ(m->nlayers, 4);
    for (size_t t = 0; t < n; t++) {
      const struct bt__params_tensor *tt = &m->tensors[t];
      size_t s0 = want[t].s0 == 100   ? V
                  : want[t].s0 == 101 ? Tm
                                      : want[t].s0 * C;
      size_t s1 = want[t].s1 * C;
      if (strcmp(tt->name, want[t].name) != 0)
        test_fail(__FILE__, __LINE__, "tensor %zu is %s, wanted %s", t,
                  tt->name, want[t].name);
      EXPECT_INT_EQ(tt->ndim, s1 != 0 ? 2 : 1);
      EXPECT_INT_EQ(tt->shape[0], s0);
      if (s1 != 0)
        EXPECT_INT_EQ(tt->shape[1], s1);
      EXPECT_INT_EQ(tt->count, s1 != 0 ? s0 * s1 : s0);
      EXPECT_INT_EQ(tt->offset, offset);
      offset += tt->count;
      EXPECT_TRUE(bt__gpt_find(m, want[t].name) == tt);
    }
    EXPECT_INT_EQ(m->nparams, offset);
    EXPECT_INT_EQ(m->layer_tensor[0], 0);
    EXPECT_INT_EQ(m->layer_tensor[1], 2);
    EXPECT_INT_EQ(m->layer_tensor[2], 14);
    EXPECT_INT_EQ(m->layer_tensor[3], 26);
    EXPECT_INT_EQ(m->layer_tensor[4], n);
    if (tied)
      EXPECT_TRUE(bt__gpt_find(m, "head.w") == NULL);
    EXPECT_TRUE(bt__gpt_find(m, "blk2.ln1.g") == NULL);
    for (size_t l = 0; l < 4; l++)
      EXPECT_TRUE(bt__gpt_layer_scratch_bytes(m, l, 2, 4) > 0);
    EXPECT_INT_EQ(bt__gpt_layer_scratch_bytes(m, 4, 2, 4), 0);
    EXPECT_INT_EQ(bt__gpt_layer_scratch_bytes(m, 1, 0, 4), 0);
    EXPECT_INT_EQ(bt__gpt_layer_scratch_bytes(m, 1, 2, 0), 0);
    EXPECT_INT_EQ(bt__gpt_layer_scratch_bytes(m, 1, SIZE_MAX / 2, 4), 0);
    /* Pinned init: gammas 1, biases 0, weights within 1/sqrt(fan-in). */
    EXPECT_TRUE(m->params[bt__gpt_find(m, "lnf.g")->offset] == 1.0f);
    EXPECT_TRUE(m->params[bt__gpt_find(m, "blk1.mlp.fc.b")->offset] == 0.0f);
    const struct bt__params_tensor *mp = bt__gpt_find(m, "blk0.mlp.proj.w");
    for (size_t j = 0; j < mp->count; j++)
      EXPECT_TRUE(fabsf(m->params[mp->offset + j]) <=
                  1.0f / sqrtf(4.0f * (float)C));
    bt__gpt_destroy(m);
  }

  bt_error_t err;
  struct bt__gpt *none = (struct bt__gpt *)&err;
  struct bt__gpt_config bad = tiny(true, 0.0f);
  bad.nh = 4; /* 6 % 4 */
  EXPECT_STATUS(bt__gpt_create(&bad, 1, &none, &err), BT_EINVAL, &err);
  EXPECT_TRUE(none == NULL);
  EXPECT_STR_CONTAINS(err.message, "nh=4");
  bad = tiny(true, 1.0f);
  EXPECT_STATUS(bt__gpt_create(&bad, 1, &none, &err), BT_EINVAL, &err);
  bad = tiny(true, 0.0f);
  bad.V = 0;
  EXPECT_STATUS(bt__gpt_create(&bad, 1, &none, &err), BT_EINVAL, &err);
  bad = tiny(true, 0.0f);
  bad.C = SIZE_MAX / 8;
  bad.nh = 1;
  EXPECT_STATUS(bt__gpt_create(&bad, 1, &none, &err), BT_ERANGE, &err);
}

/* ---- gradients and loss against the double model ------------------------ */

static double fd_worst; /* over every check, for the report */

/* Max |g - fd| / max |fd| of tensor tt's gradient g (a float array at the
 * tensor's offset) against central differences of the double model in
 * the parameter copy pk (the tensor's elements, varied in place). */
static double
fd_check(const struct bt__gpt *m, double *p, double *pk, const float *g,
         size_t count, const int32_t *x, const int32_t *y, size_t B, size_t T,
         const double *mask, const double *whead, double *maxabs_out)
{
  double maxabs = 0.0, maxerr = 0.0;
  for (size_t j = 0; j < count; j++) {
    double x0 = pk[j], h = 1e-6 * fmax(1.0, fabs(x0));
    double xp = x0 + h, xm = x0 - h;
    pk[j] = xp;
    double lp = dmodel_loss(m, p, x, y, B, T, mask, whead);
    pk[j] = xm;
    double lm = dmodel_loss(m, p, x, y, B, T, mask, whead);
    pk[j] = x0;
    double fd = (lp - lm) / (xp - xm);
    maxabs = fmax(maxabs, fabs(fd));
    maxerr = fmax(maxerr, fabs((double)g[j] - fd));
    if (g[j] != g[j])
      maxerr = INFINITY;
  }
  *maxabs_out = maxabs;
  return maxerr / fmax(maxabs, 1e-12);
}

static void
check_against_double(bool tied, float dropout)
{
  const size_t B = 2, T = 4;
  const uint64_t dseed = 1234;
  const uint32_t step = 5;
  struct bt__gpt *m = make_model(tiny(tied, dropout), 42, true);
  int32_t *x, *y;
  float loss = 0.0f;
  bt_error_t err;

  printf("  %s, dropout %.1f (V=7 C=6 nh=2 L=2 B=2 T=4)\n",
         tied ? "tied" : "untied", (double)dropout);
  make_batch(B, T, m->cfg.V, 7, &x, &y);
  EXPECT_STATUS(
      bt__gpt_reference_step(m, x, y, B, T, 1, dseed, step, &loss, &err), BT_OK,
      &err);

  double *mask = dropout > 0.0f ? make_masks(m, B, T, dseed, step) : NULL;
  double *p = test_xcalloc(m->nparams, sizeof(double));
  for (size_t k = 0; k < m->nparams; k++)
    p[k] = (double)m->params[k];

  double dl = dmodel_loss(m, p, x, y, B, T, mask, NULL);
  double lerr = fabs((double)loss - dl) / fabs(dl);
  printf("    loss fp32 %.9g double %.12g rel err %.2e\n", (double)loss, dl,
         lerr);
  if (!(lerr <= 1e-5))
    test_fail(__FILE__, __LINE__, "loss %.9g vs double %.12g", (double)loss,
              dl);

  double worst = 0.0;
  for (size_t t = 0; t < m->ntensors; t++) {
    const struct bt__params_tensor *tt = &m->tensors[t];
    double maxabs;
    double rel = fd_check(m, p, p + tt->offset, m->grads + tt->offset,
                          tt->count, x, y, B, T, mask, NULL, &maxabs);
    worst = fmax(worst, rel);
    printf("    fd %-18s max|g| %.3e max rel err %.2e\n", tt->name, maxabs,
           rel);
    if (!(rel <= 1e-3))
      test_fail(__FILE__, __LINE__, "gradient of %s off by %.2e", tt->name,
                rel);
    /* wpe's unused rows (t >= T) have no gradient; every tensor has some. */
    if (!(maxabs > 0.0))
      test_fail(__FILE__, __LINE__, "gradient of %s is all zero", tt->name);
  }
  printf("    worst %.2e\n", worst);
  fd_worst = fmax(fd_worst, worst);
  free(p);
  free(mask);
  free(x);
  free(y);
  bt__gpt_destroy(m);
}

TEST(gpt_fd)
{
  check_against_double(true, 0.0f);
  check_against_double(false, 0.0f);
  check_against_double(true, 0.3f);
  check_against_double(false, 0.3f);
  printf("  worst over all: %.2e\n", fd_worst);
}

/* ---- the tied gradient: embedding part + head part ---------------------- */

TEST(gpt_tied_parts)
{
  const size_t B = 2, T = 4, L = 2;
  struct bt__gpt *m = make_model(tiny(true, 0.0f), 8, true);
  struct bt__gpt *ref = make_model(tiny(true, 0.0f), 8, true);
  int32_t *x, *y;
  float loss = 0.0f, lref = 0.0f;
  bt_error_t err;
  const struct bt__params_tensor *wte = bt__gpt_find(m, "wte");
  size_t RC = B * T * m->cfg.C;

  make_batch(B, T, m->cfg.V, 9, &x, &y);
  EXPECT_STATUS(bt__gpt_reference_step(ref, x, y, B, T, 1, 0, 0, &lref, &err),
                BT_OK, &err);

  /* The layers by hand; g.wte after the head is the head's part alone. */
  struct bt__gpt_mb mb = {B, T, 0, 0, 0};
  void *scr[4];
  for (size_t l = 0; l < L + 2; l++)
    scr[l] = test_xcalloc(bt__gpt_layer_scratch_bytes(m, l, B, T), 1);
  float *a0 = test_xcalloc(RC, sizeof(float)),
        *a1 = test_xcalloc(RC, sizeof(float));
  float *d0 = test_xcalloc(RC, sizeof(float)),
        *d1 = test_xcalloc(RC, sizeof(float));
  float *head_part = test_xcalloc(wte->count, sizeof(float));

  bt__gpt_zero_grad(m);
  EXPECT_STATUS(bt__gpt_embed_fwd(m, x, a0, scr[0], &mb), BT_OK, NULL);
  EXPECT_STATUS(bt__gpt_layer_fwd(m, 0, a0, a1, scr[0], &mb), BT_EINVAL,
                NULL); /* the embed layer takes tokens */
  EXPECT_STATUS(bt__gpt_layer_fwd(m, 1, a0, a0, scr[1], &mb), BT_EINVAL,
                NULL); /* in == out */
  EXPECT_STATUS(bt__gpt_layer_fwd(m, 1, a0, a1, scr[1], &mb), BT_OK, NULL);
  EXPECT_STATUS(bt__gpt_layer_fwd(m, 2, a1, a0, scr[2], &mb), BT_OK, NULL);
  EXPECT_STATUS(bt__gpt_head_fwd(m, a0, y, B * T, scr[3], &mb, &loss), BT_OK,
                NULL);
  EXPECT_STATUS(bt__gpt_layer_bwd_input(m, 3, a0, d0, scr[3], &mb, B * T),
                BT_EINVAL, NULL); /* the head starts from the loss */
  EXPECT_STATUS(bt__gpt_layer_bwd(m, 3, NULL, d0, scr[3], &mb, B * T), BT_OK,
                NULL);
  memcpy(head_part, m->grads + wte->offset, wte->count * sizeof(float));
  EXPECT_STATUS(bt__gpt_layer_bwd(m, 2, d0, d1, scr[2], &mb, B * T), BT_OK,
                NULL);
  EXPECT_STATUS(bt__gpt_layer_bwd(m, 1, d1, d0, scr[1], &mb, B * T), BT_OK,
                NULL);
  EXPECT_STATUS(bt__gpt_layer_bwd_input(m, 0, d0, d1, scr[0], &mb, B * T),
                BT_EINVAL, NULL); /* tokens have no gradient */
  EXPECT_STATUS(bt__gpt_layer_bwd(m, 0, d0, NULL, scr[0], &mb, B * T), BT_OK,
                NULL);
  /* The same order of accumulation as the reference step: the same bits. */
  EXPECT_TRUE(memcmp(&loss, &lref, sizeof(float)) == 0);
  EXPECT_TRUE(memcmp(m->grads, ref->grads, m->nparams * sizeof(float)) == 0);

  /* Each part against finite differences of the double model with the
   * logits' weight a separate copy of wte: varying wte alone gives the
   * embedding's part, varying the copy the head's. */
  double *p = test_xcalloc(m->nparams, sizeof(double));
  double *wh = test_xcalloc(wte->count, sizeof(double));
  float *emb_part = test_xcalloc(wte->count, sizeof(float));
  for (size_t k = 0; k < m->nparams; k++)
    p[k] = (double)m->params[k];
  memcpy(wh, p + wte->offset, wte->count * sizeof(double));
  for (size_t j = 0; j < wte->count; j++)
    emb_part[j] = m->grads[wte->offset + j] - head_part[j];
  double ma_h, ma_e;
  double rel_h =
      fd_check(m, p, wh, head_part, wte->count, x, y, B, T, NULL, wh, &ma_h);
  double rel_e = fd_check(m, p, p + wte->offset, emb_part, wte->count, x, y, B,
                          T, NULL, wh, &ma_e);
  printf("  wte head part: max|g| %.3e rel err %.2e; embedding part: max|g| "
         "%.3e rel err %.2e\n",
         ma_h, rel_h, ma_e, rel_e);
  EXPECT_TRUE(rel_h <= 1e-3 && ma_h > 0.0);
  EXPECT_TRUE(rel_e <= 1e-3 && ma_e > 0.0);

  free(emb_part);
  free(wh);
  free(p);
  free(head_part);
  free(a0);
  free(a1);
  free(d0);
  free(d1);
  for (size_t l = 0; l < L + 2; l++)
    free(scr[l]);
  free(x);
  free(y);
  bt__gpt_destroy(m);
  bt__gpt_destroy(ref);
}

/* ---- microbatching ------------------------------------------------------ */

static double
grad_diff(const struct bt__gpt *a, const struct bt__gpt *b)
{
  double worst = 0.0;
  for (size_t t = 0; t < b->ntensors; t++) {
    const struct bt__params_tensor *tt = &b->tensors[t];
    double maxabs;
    double maxerr = test_max_abs_diff(
        a->grads + tt->offset, b->grads + tt->offset, tt->count, &maxabs);
    worst = fmax(worst, maxerr / fmax(maxabs, 1e-30));
  }
  return worst;
}

TEST(gpt_microbatches)
{
  const size_t B = 2, T = 4;
  for (int tied = 0; tied < 2; tied++)
    for (int d = 0; d < 2; d++) {
      float p = d ? 0.3f : 0.0f;
      struct bt__gpt *one = make_model(tiny(tied != 0, p), 3, true);
      struct bt__gpt *two = make_model(tiny(tied != 0, p), 3, true);
      int32_t *x, *y;
      float l1 = 0.0f, l2 = 0.0f;
      bt_error_t err;

      make_batch(B, T, one->cfg.V, 11, &x, &y);
      EXPECT_STATUS(
          bt__gpt_reference_step(one, x, y, B, T, 1, 77, 3, &l1, &err), BT_OK,
          &err);
      for (size_t k = 0; k < two->nparams; k++)
        two->grads[k] = 1e3f; /* the step zeroes stale gradients */
      EXPECT_STATUS(
          bt__gpt_reference_step(two, x, y, B, T, 2, 77, 3, &l2, &err), BT_OK,
          &err);
      double dg = grad_diff(two, one);
      printf("  tied=%d dropout=%.1f: loss m=1 %.9g m=2 %.9g, grad rel diff "
             "%.2e\n",
             tied, (double)p, (double)l1, (double)l2, dg);
      EXPECT_TRUE(fabs((double)l2 - (double)l1) <= 1e-5 * fabs((double)l1));
      EXPECT_TRUE(dg <= 1e-5);

      if (d == 1) {
        /* Dropout does something: another step draws other masks. */
        float l3 = 0.0f;
        EXPECT_STATUS(
            bt__gpt_reference_step(two, x, y, B, T, 2, 77, 4, &l3, &err), BT_OK,
            &err);
        EXPECT_TRUE(l3 != l2);
      }
      /* 2 sequences do not split into 3 microbatches; bad ids; T > Tmax. */
      EXPECT_STATUS(bt__gpt_reference_step(two, x, y, B, T, 3, 0, 0, &l2, &err),
                    BT_EINVAL, &err);
      EXPECT_STR_CONTAINS(err.message, "3 microbatches");
      EXPECT_STATUS(bt__gpt_reference_step(two, x, y, 1, 6, 1, 0, 0, &l2, &err),
                    BT_EINVAL, &err);
      int32_t keep = y[5];
      y[5] = 7; /* == V */
      EXPECT_STATUS(bt__gpt_reference_step(two, x, y, B, T, 1, 0, 0, &l2, &err),
                    BT_EINVAL, &err);
      EXPECT_STR_CONTAINS(err.message, "y[5]");
      y[5] = keep;
      x[2] = -1;
      EXPECT_STATUS(bt__gpt_reference_step(two, x, y, B, T, 1, 0, 0, &l2, &err),
                    BT_EINVAL, &err);
      EXPECT_STR_CONTAINS(err.message, "x[2]");
      free(x);
      free(y);
      bt__gpt_destroy(one);
      bt__gpt_destroy(two);
    }
}

/* ---- determinism --------------------------------------------------------- */

TEST(gpt_determinism)
{
  const size_t B = 4, T = 5;
  struct bt__gpt_config c = tiny(true, 0.3f);
  struct bt__gpt *a = make_model(c, 99, false);
  struct bt__gpt *b = make_model(c, 99, false);
  struct bt__gpt *d = make_model(c, 100, false);
  int32_t *x, *y;
  float la = 0.0f, lb = 0.0f;
  bt_error_t err;

  EXPECT_TRUE(memcmp(a->params, b->params, a->nparams * sizeof(float)) == 0);
  EXPECT_TRUE(memcmp(a->params, d->params, a->nparams * sizeof(float)) != 0);
  printf("  seed 99: wte[0] = %a, blk1.mlp.proj.w[0] = %a\n",
         (double)a->params[0],
         (double)a->params[bt__gpt_find(a, "blk1.mlp.proj.w")->offset]);

  make_batch(B, T, c.V, 17, &x, &y);
  EXPECT_STATUS(bt__gpt_reference_step(a, x, y, B, T, 2, 5, 1, &la, &err),
                BT_OK, &err);
  EXPECT_STATUS(bt__gpt_reference_step(b, x, y, B, T, 2, 5, 1, &lb, &err),
                BT_OK, &err);
  EXPECT_TRUE(memcmp(&la, &lb, sizeof(float)) == 0);
  EXPECT_TRUE(memcmp(a->grads, b->grads, a->nparams * sizeof(float)) == 0);
  float *g1 = test_xcalloc(a->nparams, sizeof(float));
  memcpy(g1, a->grads, a->nparams * sizeof(float));
  EXPECT_STATUS(bt__gpt_reference_step(a, x, y, B, T, 2, 5, 1, &la, &err),
                BT_OK, &err);
  EXPECT_TRUE(memcmp(&la, &lb, sizeof(float)) == 0);
  EXPECT_TRUE(memcmp(a->grads, g1, a->nparams * sizeof(float)) == 0);
  /* Another dropout seed: other masks. */
  EXPECT_STATUS(bt__gpt_reference_step(a, x, y, B, T, 2, 6, 1, &la, &err),
                BT_OK, &err);
  EXPECT_TRUE(memcmp(a->grads, g1, a->nparams * sizeof(float)) != 0);
  free(g1);
  free(x);
  free(y);
  bt__gpt_destroy(a);
  bt__gpt_destroy(b);
  bt__gpt_destroy(d);
}

/* ---- files -------------------------------------------------------------- */

static char tmpdir[256];

static const char *
tmp_path(const char *name)
{
  static char buf[4][512];
  static int next;
  char *p = buf[next++ % 4];

  if (tmpdir[0] == '\0') {
    const char *t = getenv("TMPDIR");
    snprintf(tmpdir, sizeof(tmpdir), "%s/bt_gpt_XXXXXX",
             t != NULL && *t ? t : "/tmp");
    if (mkdtemp(tmpdir) == NULL) {
      perror("mkdtemp");
      exit(1);
    }
  }
  snprintf(p, 512, "%s/%s", tmpdir, name);
  return p;
}

TEST(gpt_files)
{
  const size_t B = 2, T = 4;
  struct bt__gpt *a = make_model(tiny(true, 0.0f), 21, true);
  struct bt__gpt *b = make_model(tiny(true, 0.0f), 22, false);
  struct bt__gpt *u = make_model(tiny(false, 0.0f), 23, false);
  int32_t *x, *y;
  float loss = 0.0f;
  bt_error_t err;
  bt_st_file_t *f = NULL;
  bt_st_tensor_t t;

  make_batch(B, T, a->cfg.V, 19, &x, &y);
  EXPECT_STATUS(bt__gpt_reference_step(a, x, y, B, T, 2, 0, 0, &loss, &err),
                BT_OK, &err);

  const char *dump = tmp_path("dump.safetensors");
  EXPECT_STATUS(bt__gpt_dump(a, dump, x, y, B, T, loss, &err), BT_OK, &err);
  EXPECT_STATUS(bt_st_load(dump, &f, &err), BT_OK, &err);
  ASSERT_TRUE(f != NULL);
  EXPECT_INT_EQ(bt_st_count(f), 3 + 2 * a->ntensors);
  EXPECT_INT_EQ(bt_st_find(f, "x", &t), BT_OK);
  EXPECT_INT_EQ(t.dtype, BT_ST_I32);
  EXPECT_INT_EQ(t.ndim, 2);
  EXPECT_INT_EQ(t.shape[0], B);
  EXPECT_INT_EQ(t.shape[1], T);
  EXPECT_TRUE(memcmp(t.data, x, B * T * sizeof(int32_t)) == 0);
  EXPECT_INT_EQ(bt_st_find(f, "y", &t), BT_OK);
  EXPECT_INT_EQ(t.dtype, BT_ST_I32);
  EXPECT_TRUE(memcmp(t.data, y, B * T * sizeof(int32_t)) == 0);
  EXPECT_INT_EQ(bt_st_find(f, "loss", &t), BT_OK);
  EXPECT_TRUE(memcmp(t.data, &loss, sizeof(float)) == 0);
  const struct bt__params_tensor *wte = bt__gpt_find(a, "wte");
  EXPECT_INT_EQ(bt_st_find(f, "g.wte", &t), BT_OK);
  EXPECT_TRUE(
      memcmp(t.data, a->grads + wte->offset, wte->count * sizeof(float)) == 0);
  EXPECT_INT_EQ(bt_st_find(f, "p.blk1.mlp.proj.b", &t), BT_OK);
  EXPECT_INT_EQ(bt_st_find(f, "g.head.w", &t), BT_ENOENT);
  bt_st_close(f);

  /* Checkpoint round trip. */
  const char *ck = tmp_path("ck.safetensors");
  EXPECT_STATUS(bt__gpt_save(a, ck, &err), BT_OK, &err);
  EXPECT_STATUS(bt__gpt_load(b, ck, &err), BT_OK, &err);
  EXPECT_TRUE(memcmp(a->params, b->params, a->nparams * sizeof(float)) == 0);
  float lb = 0.0f;
  EXPECT_STATUS(bt__gpt_reference_step(b, x, y, B, T, 2, 0, 0, &lb, &err),
                BT_OK, &err);
  EXPECT_TRUE(memcmp(&lb, &loss, sizeof(float)) == 0);

  /* A tied checkpoint lacks head.w; an untied one has a tensor too many. */
  float *before = test_xcalloc(u->nparams, sizeof(float));
  memcpy(before, u->params, u->nparams * sizeof(float));
  EXPECT_STATUS(bt__gpt_load(u, ck, &err), BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "head.w");
  EXPECT_TRUE(memcmp(before, u->params, u->nparams * sizeof(float)) == 0);
  const char *cku = tmp_path("cku.safetensors");
  EXPECT_STATUS(bt__gpt_save(u, cku, &err), BT_OK, &err);
  EXPECT_STATUS(bt__gpt_load(b, cku, &err), BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "not a parameter");
  EXPECT_TRUE(memcmp(a->params, b->params, a->nparams * sizeof(float)) == 0);

  free(before);
  unlink(dump);
  unlink(ck);
  unlink(cku);
  rmdir(tmpdir);
  free(x);
  free(y);
  bt__gpt_destroy(a);
  bt__gpt_destroy(b);
  bt__gpt_destroy(u);
}

/* ---- optimizers on a tiny repeated sequence ----------------------------- */

TEST(gpt_optimizers)
{
  const size_t B = 4, T = 8, steps = 30;
  struct bt__gpt_config c = BT__GPT_CONFIG_INIT(7, 16, 2, 2, 8);
  int32_t x[4 * 8], y[4 * 8];
  bt_error_t err;

  /* Every sequence cycles 0 1 2 3 4 5 6 from a different start; the target
   * is the next token. */
  for (size_t b = 0; b < B; b++)
    for (size_t t = 0; t < T; t++) {
      x[b * T + t] = (int32_t)((b + t) % 7);
      y[b * T + t] = (int32_t)((b + t + 1) % 7);
    }
  for (int opt = 0; opt < 2; opt++)
    for (int tied = 0; tied < 2; tied++) {
      c.tied = tied != 0;
      struct bt__gpt *m = make_model(c, 77, false);
      struct bt__params_adamw_state st = {NULL, NULL};
      float first = 0.0f, loss = 0.0f;

      if (opt == 1)
        ASSERT_INT_EQ(bt__gpt_adamw_init(m, &st), BT_OK);
      for (size_t s = 0; s < steps; s++) {
        EXPECT_STATUS(bt__gpt_reference_step(m, x, y, B, T, 2, 1, (uint32_t)s,
                                             &loss, &err),
                      BT_OK, &err);
        if (s == 0)
          first = loss;
        if (opt == 0)
          EXPECT_STATUS(bt__gpt_sgd(m, 0.5f), BT_OK, NULL);
        else
          EXPECT_STATUS(bt__gpt_adamw(m, 1e-2f, 0.9f, 0.999f, 1e-8f, 0.01f,
                                      (int64_t)s + 1, &st),
                        BT_OK, NULL);
      }
      EXPECT_STATUS(bt__gpt_reference_step(m, x, y, B, T, 2, 1, 0, &loss, &err),
                    BT_OK, &err);
      printf("  %s %s: loss %.6f -> %.6f after %zu steps\n",
             opt == 0 ? "sgd" : "adamw", tied ? "tied" : "untied",
             (double)first, (double)loss, steps);
      EXPECT_TRUE(loss < 0.5f * first);
      bt__gpt_adamw_deinit(&st);
      bt__gpt_destroy(m);
    }
}

/* ---- inference ---------------------------------------------------------- */

/* -log softmax(v [V])[y], in double. */
static double
nll(const float *v, size_t V, int32_t y)
{
  double mx = v[0], s = 0.0;

  for (size_t i = 1; i < V; i++)
    mx = v[i] > mx ? v[i] : mx;
  for (size_t i = 0; i < V; i++)
    s += exp((double)v[i] - mx);
  return log(s) + mx - (double)v[y];
}

static size_t
first_max(const float *v, size_t n)
{
  size_t best = 0;

  for (size_t i = 1; i < n; i++)
    if (v[i] > v[best])
      best = i;
  return best;
}

/* By causality the logits at position t are bt__gpt_logits of the prefix
 * x[.., 0..t]; so the mean of -log softmax over every prefix's last logits
 * is the reference step's loss (the layers' head_fwd path).  The model
 * with dropout must give the same logits as the same model without: no
 * dropout at inference. */
TEST(gpt_logits)
{
  const size_t B = 3, T = 5;

  for (int tied = 0; tied < 2; tied++) {
    struct bt__gpt_config c = tiny(tied, 0.0f), cd = tiny(tied, 0.3f);
    struct bt__gpt *m = make_model(c, 31, true);
    struct bt__gpt *md = make_model(cd, 31, true);
    size_t V = c.V;
    int32_t *x, *y, *pre = test_xcalloc(B * T, sizeof(int32_t));
    float *lg = test_xcalloc(B * V, sizeof(float));
    float *lgd = test_xcalloc(B * V, sizeof(float));
    float *g0 = test_xcalloc(m->nparams, sizeof(float));
    float ref = 0.0f;
    double sum = 0.0;
    bt_error_t err;

    make_batch(B, T, V, 71 + (uint64_t)tied, &x, &y);
    /* The gradients stay as they were. */
    for (size_t k = 0; k < m->nparams; k++)
      m->grads[k] = g0[k] = (float)k;
    for (size_t t = 1; t <= T; t++) {
      for (size_t b = 0; b < B; b++)
        memcpy(pre + b * t, x + b * T, t * sizeof(int32_t));
      EXPECT_STATUS(bt__gpt_logits(m, pre, B, t, lg, &err), BT_OK, &err);
      EXPECT_STATUS(bt__gpt_logits(md, pre, B, t, lgd, &err), BT_OK, &err);
      EXPECT_TRUE(memcmp(lg, lgd, B * V * sizeof(float)) == 0);
      for (size_t b = 0; b < B; b++)
        sum += nll(lg + b * V, V, y[b * T + t - 1]);
    }
    EXPECT_TRUE(memcmp(m->grads, g0, m->nparams * sizeof(float)) == 0);
    EXPECT_STATUS(bt__gpt_reference_step(m, x, y, B, T, 1, 0, 0, &ref, &err),
                  BT_OK, &err);
    printf("  %s: loss from logits %.9g, reference %.9g\n",
           tied ? "tied" : "untied", sum / (double)(B * T), (double)ref);
    EXPECT_NEAR(sum / (double)(B * T), ref, 1e-5);

    /* Errors. */
    EXPECT_STATUS(bt__gpt_logits(m, x, B, T + 1, lg, &err), BT_EINVAL, &err);
    EXPECT_STR_CONTAINS(err.message, "Tmax");
    EXPECT_STATUS(bt__gpt_logits(m, x, 0, T, lg, &err), BT_EINVAL, &err);
    EXPECT_STATUS(bt__gpt_logits(m, NULL, B, T, lg, &err), BT_EINVAL, &err);
    EXPECT_STATUS(bt__gpt_logits(NULL, x, B, T, lg, &err), BT_EINVAL, &err);
    x[4] = (int32_t)V;
    EXPECT_STATUS(bt__gpt_logits(m, x, B, T, lg, &err), BT_EINVAL, &err);
    EXPECT_STR_CONTAINS(err.message, "x[4]");

    free(x);
    free(y);
    free(pre);
    free(lg);
    free(lgd);
    free(g0);
    bt__gpt_destroy(m);
    bt__gpt_destroy(md);
  }
}

TEST(gpt_generate)
{
  struct bt__gpt_config c = BT__GPT_CONFIG_INIT(16, 8, 2, 2, 5);
  struct bt__gpt *m = make_model(c, 57, true);
  const int32_t prompt[7] = {3, 1, 4, 1, 5, 9, 2};
  enum { N = 24 };
  int32_t a[N], b[N], d[N], g[N], win[5];
  float lg[16];
  size_t differ = 0;
  bt_error_t err;

  /* Deterministic for a seed, tokens in [0, V), another seed differs. */
  EXPECT_STATUS(bt__gpt_generate(m, prompt, 7, N, 1.0f, 5, a, &err), BT_OK,
                &err);
  EXPECT_STATUS(bt__gpt_generate(m, prompt, 7, N, 1.0f, 5, b, &err), BT_OK,
                &err);
  EXPECT_TRUE(memcmp(a, b, sizeof(a)) == 0);
  for (size_t i = 0; i < N; i++)
    EXPECT_TRUE(a[i] >= 0 && a[i] < 16);
  EXPECT_STATUS(bt__gpt_generate(m, prompt, 7, N, 1.0f, 6, d, &err), BT_OK,
                &err);
  for (size_t i = 0; i < N; i++)
    differ += a[i] != d[i];
  EXPECT_TRUE(differ > 0);
  /* A high temperature spreads the draws over many tokens. */
  {
    int32_t hot[200];
    bool seen[16] = {false};
    size_t distinct = 0;
    EXPECT_STATUS(bt__gpt_generate(m, prompt, 7, 200, 50.0f, 8, hot, &err),
                  BT_OK, &err);
    for (size_t i = 0; i < 200; i++)
      seen[hot[i]] = true;
    for (size_t v = 0; v < 16; v++)
      distinct += seen[v];
    EXPECT_TRUE(distinct >= 12);
  }

  /* Temperature 0: the argmax of bt__gpt_logits over the sliding window
   * of the last Tmax = 5 tokens, token by token, whatever the seed. */
  EXPECT_STATUS(bt__gpt_generate(m, prompt, 7, N, 0.0f, 1, g, &err), BT_OK,
                &err);
  EXPECT_STATUS(bt__gpt_generate(m, prompt, 7, N, 0.0f, 2, b, &err), BT_OK,
                &err);
  EXPECT_TRUE(memcmp(g, b, sizeof(g)) == 0);
  memcpy(win, prompt + 2, sizeof(win));
  for (size_t i = 0; i < N; i++) {
    ASSERT_INT_EQ(bt__gpt_logits(m, win, 1, 5, lg, &err), BT_OK);
    EXPECT_INT_EQ(g[i], first_max(lg, 16));
    memmove(win, win + 1, 4 * sizeof(int32_t));
    win[4] = g[i];
  }
  /* A short prompt grows the window before it slides. */
  EXPECT_STATUS(bt__gpt_generate(m, prompt, 2, 4, 0.0f, 0, g, &err), BT_OK,
                &err);
  {
    int32_t seq[6] = {3, 1};
    for (size_t i = 0; i < 4; i++) {
      ASSERT_INT_EQ(bt__gpt_logits(m, seq, 1, 2 + i, lg, &err), BT_OK);
      EXPECT_INT_EQ(g[i], first_max(lg, 16));
      seq[2 + i] = g[i];
    }
  }
  /* An empty prompt starts from '\n'. */
  EXPECT_STATUS(bt__gpt_generate(m, NULL, 0, 3, 0.0f, 0, g, &err), BT_OK,
                &err);
  win[0] = 10;
  ASSERT_INT_EQ(bt__gpt_logits(m, win, 1, 1, lg, &err), BT_OK);
  EXPECT_INT_EQ(g[0], first_max(lg, 16));

  /* Errors. */
  EXPECT_STATUS(bt__gpt_generate(m, prompt, 7, N, -1.0f, 0, a, &err),
                BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "temperature");
  EXPECT_STATUS(bt__gpt_generate(m, prompt, 7, N, INFINITY, 0, a, &err),
                BT_EINVAL, &err);
  EXPECT_STATUS(bt__gpt_generate(m, prompt, 7, N, NAN, 0, a, &err),
                BT_EINVAL, &err);
  EXPECT_STATUS(bt__gpt_generate(m, prompt, 7, N, 1.0f, 0, NULL, &err),
                BT_EINVAL, &err);
  EXPECT_STATUS(bt__gpt_generate(m, NULL, 3, N, 1.0f, 0, a, &err), BT_EINVAL,
                &err);
  {
    const int32_t bad[2] = {1, 16};
    EXPECT_STATUS(bt__gpt_generate(m, bad, 2, N, 1.0f, 0, a, &err),
                  BT_EINVAL, &err);
    EXPECT_STR_CONTAINS(err.message, "prompt[1]");
  }
  EXPECT_STATUS(bt__gpt_generate(m, prompt, 7, 0, 1.0f, 0, NULL, &err), BT_OK,
                &err);
  bt__gpt_destroy(m);

  /* V <= 10 has no '\n' to start from. */
  m = make_model(tiny(true, 0.0f), 3, false);
  EXPECT_STATUS(bt__gpt_generate(m, NULL, 0, 3, 1.0f, 0, a, &err), BT_EINVAL,
                &err);
  EXPECT_STR_CONTAINS(err.message, "pass a prompt");
  bt__gpt_destroy(m);
}
