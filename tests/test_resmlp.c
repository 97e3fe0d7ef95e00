/* The residual-MLP reference model (model/resmlp.c): the pinned parameter
 * table, every gradient against central finite differences of a
 * double-precision reimplementation written here from the model's
 * definition, the loss against that reimplementation, microbatching, the
 * split (input-grad / weight-grad) backward, determinism and the pinned
 * initialization, dump / checkpoint files, and the optimizers. */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "baton/safetensors.h"
#include "resmlp.h"
#include "test.h"
#include "test_util.h"

/* ---- helpers ------------------------------------------------------------ */

static test_rng_t rng;

static struct bt__resmlp_config
config(size_t D, size_t H, size_t C, size_t L, bool long_skip)
{
  struct bt__resmlp_config c = {D, H, C, L, long_skip};
  return c;
}

/* Moves the biases, betas and gammas away from 0 and 1 (deterministically
 * from seed), so the gradient check sees a generic point. */
static void
perturb(struct bt__resmlp *m, uint64_t seed)
{
  test_rng_seed(&rng, seed);
  for (size_t t = 0; t < m->ntensors; t++) {
    const struct bt__params_tensor *tt = &m->tensors[t];
    float *p = m->params + tt->offset;
    if (test_ends_with(tt->name, ".w"))
      continue;
    for (size_t j = 0; j < tt->count; j++)
      p[j] = (float)((test_ends_with(tt->name, "ln.g") ? 1.0 : 0.0) +
                     test_rng_uniform(&rng, -0.3, 0.3));
  }
}

static struct bt__resmlp *
make_model(struct bt__resmlp_config c, uint64_t seed, bool perturbed)
{
  struct bt__resmlp *m = NULL;
  bt_error_t err;

  if (bt__resmlp_create(&c, seed, &m, &err) != BT_OK) {
    fprintf(stderr, "test_resmlp: create: %s\n", err.message);
    exit(1);
  }
  if (perturbed)
    perturb(m, seed + 1000);
  return m;
}

/* x [N,D] uniform in [-1, 1), y [N] in [0, C). */
static void
make_batch(size_t N, size_t D, size_t C, uint64_t seed, float **x,
           int32_t **y)
{
  test_rng_seed(&rng, seed);
  *x = test_xcalloc(N * D, sizeof(float));
  *y = test_xcalloc(N, sizeof(int32_t));
  for (size_t i = 0; i < N * D; i++)
    (*x)[i] = (float)test_rng_uniform(&rng, -1.0, 1.0);
  for (size_t r = 0; r < N; r++)
    (*y)[r] = (int32_t)(test_rng_next(&rng) % C);
}

/* ---- a double-precision model, from the definition --------------------- */

#define MAXW 64 /* widest row in the tests: E = 4H */

static const double *
dparam(const struct bt__resmlp *m, const double *p, const char *name)
{
  const struct bt__params_tensor *t = bt__resmlp_find(m, name);
  if (t == NULL) {
    fprintf(stderr, "test_resmlp: no tensor %s\n", name);
    exit(1);
  }
  return p + t->offset;
}

static const double *
dblk(const struct bt__resmlp *m, const double *p, size_t i, const char *what)
{
  char name[64];
  snprintf(name, sizeof(name), "blk%zu.%s", i, what);
  return dparam(m, p, name);
}

/* y [OUT] = W [OUT,IN] x [IN] + b */
static void
dlinear(double *y, const double *x, const double *w, const double *b,
        size_t IN, size_t OUT)
{
  for (size_t o = 0; o < OUT; o++) {
    double acc = b[o];
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
  var /= (double)n; /* biased */
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

/* The mean cross-entropy over N rows; rows are independent. */
static double
dmodel_loss(const struct bt__resmlp *m, const double *p, const float *x,
            const int32_t *y, size_t N)
{
  size_t D = m->cfg.D, H = m->cfg.H, C = m->cfg.C, E = 4 * H;
  double total = 0.0;

  for (size_t r = 0; r < N; r++) {
    double xr[MAXW], h0[MAXW], h[MAXW], u[MAXW], a[MAXW], t[MAXW];
    double logits[MAXW] = {0};

    for (size_t i = 0; i < D; i++)
      xr[i] = (double)x[r * D + i];
    dlinear(h0, xr, dparam(m, p, "in.w"), dparam(m, p, "in.b"), D, H);
    memcpy(h, h0, H * sizeof(double));
    for (size_t b = 0; b < m->cfg.L; b++) {
      dlayernorm(u, h, dblk(m, p, b, "ln.g"), dblk(m, p, b, "ln.b"), H);
      dlinear(a, u, dblk(m, p, b, "fc1.w"), dblk(m, p, b, "fc1.b"), H, E);
      for (size_t i = 0; i < E; i++)
        a[i] = dgelu(a[i]);
      dlinear(t, a, dblk(m, p, b, "fc2.w"), dblk(m, p, b, "fc2.b"), E, H);
      for (size_t i = 0; i < H; i++)
        h[i] += t[i];
    }
    if (m->cfg.long_skip)
      for (size_t i = 0; i < H; i++)
        h[i] += h0[i];
    dlayernorm(u, h, dparam(m, p, "head.ln.g"), dparam(m, p, "head.ln.b"),
               H);
    dlinear(logits, u, dparam(m, p, "head.w"), dparam(m, p, "head.b"), H,
            C);
    double mx = logits[0], se = 0.0;
    for (size_t c = 1; c < C; c++)
      mx = fmax(mx, logits[c]);
    for (size_t c = 0; c < C; c++)
      se += exp(logits[c] - mx);
    total += mx + log(se) - logits[y[r]];
  }
  return total / (double)N;
}

/* ---- (a) the parameter table ------------------------------------------- */

TEST(resmlp_table)
{
  const size_t D = 5, H = 4, C = 3, E = 16;
  struct bt__resmlp *m = make_model(config(D, H, C, 2, true), 1, false);
  static const struct {
    const char *name;
    int ndim;
    size_t s0, s1;
  } want[] = {
      {"in.w", 2, H, D},        {"in.b", 1, H, 0},
      {"blk0.ln.g", 1, H, 0},   {"blk0.ln.b", 1, H, 0},
      {"blk0.fc1.w", 2, E, H},  {"blk0.fc1.b", 1, E, 0},
      {"blk0.fc2.w", 2, H, E},  {"blk0.fc2.b", 1, H, 0},
      {"blk1.ln.g", 1, H, 0},   {"blk1.ln.b", 1, H, 0},
      {"blk1.fc1.w", 2, E, H},  {"blk1.fc1.b", 1, E, 0},
      {"blk1.fc2.w", 2, H, E},  {"blk1.fc2.b", 1, H, 0},
      {"head.ln.g", 1, H, 0},   {"head.ln.b", 1, H, 0},
      {"head.w", 2, C, H},      {"head.b", 1, C, 0},
  };
  size_t n = sizeof(want) / sizeof(want[0]), offset = 0;

  ASSERT_INT_EQ(m->ntensors, n);
  EXPECT_INT_EQ(m->E, E);
  EXPECT_INT_EQ(m->nlayers, 4);
  for (size_t t = 0; t < n; t++) {
    const struct bt__params_tensor *tt = &m->tensors[t];
    if (strcmp(tt->name, want[t].name) != 0)
      test_fail(__FILE__, __LINE__, "tensor %zu is %s, wanted %s", t,
                tt->name, want[t].name);
    EXPECT_INT_EQ(tt->ndim, want[t].ndim);
    EXPECT_INT_EQ(tt->shape[0], want[t].s0);
    if (want[t].ndim == 2)
      EXPECT_INT_EQ(tt->shape[1], want[t].s1);
    EXPECT_INT_EQ(tt->count, want[t].ndim == 2 ? want[t].s0 * want[t].s1
                                                : want[t].s0);
    EXPECT_INT_EQ(tt->offset, offset); /* contiguous, in order */
    offset += tt->count;
    EXPECT_TRUE(bt__resmlp_find(m, want[t].name) == tt);
  }
  EXPECT_INT_EQ(m->nparams, offset);
  /* Layers: in, blk0, blk1, head own consecutive tensor ranges. */
  EXPECT_INT_EQ(m->layer_tensor[0], 0);
  EXPECT_INT_EQ(m->layer_tensor[1], 2);
  EXPECT_INT_EQ(m->layer_tensor[2], 8);
  EXPECT_INT_EQ(m->layer_tensor[3], 14);
  EXPECT_INT_EQ(m->layer_tensor[4], 18);
  EXPECT_TRUE(bt__resmlp_find(m, "blk2.ln.g") == NULL);

  /* Scratch: one per layer, 0 out of range or for R = 0. */
  for (size_t l = 0; l < 4; l++)
    EXPECT_TRUE(bt__resmlp_layer_scratch_bytes(m, l, 3) > 0);
  EXPECT_INT_EQ(bt__resmlp_layer_scratch_bytes(m, 4, 3), 0);
  EXPECT_INT_EQ(bt__resmlp_layer_scratch_bytes(m, 0, 0), 0);
  EXPECT_INT_EQ(bt__resmlp_layer_scratch_bytes(m, 1, SIZE_MAX / 2), 0);
  bt__resmlp_destroy(m);

  bt_error_t err;
  struct bt__resmlp_config bad = config(5, 0, 3, 2, false);
  struct bt__resmlp *none = (struct bt__resmlp *)&err;
  EXPECT_STATUS(bt__resmlp_create(&bad, 1, &none, &err), BT_EINVAL, &err);
  EXPECT_TRUE(none == NULL);
  EXPECT_STR_CONTAINS(err.message, "H=0");
  bad = config(5, SIZE_MAX / 8, 3, 2, false);
  EXPECT_STATUS(bt__resmlp_create(&bad, 1, &none, &err), BT_ERANGE, &err);
}

/* ---- (b), (c) gradients and loss against the double model -------------- */

static void
check_against_double(struct bt__resmlp_config c, const char *what)
{
  const size_t N = 6;
  struct bt__resmlp *m = make_model(c, 42, true);
  float *x, loss = 0.0f;
  int32_t *y;
  bt_error_t err;

  printf("  %s (D=%zu H=%zu C=%zu L=%zu long_skip=%d)\n", what, c.D, c.H,
         c.C, c.L, (int)c.long_skip);
  make_batch(N, c.D, c.C, 7, &x, &y);
  EXPECT_STATUS(bt__resmlp_reference_step(m, x, y, N, 1, &loss, &err),
                BT_OK, &err);

  double *p = test_xcalloc(m->nparams, sizeof(double));
  for (size_t k = 0; k < m->nparams; k++)
    p[k] = (double)m->params[k];

  /* (c) the fp32 forward's loss. */
  double dl = dmodel_loss(m, p, x, y, N);
  double lerr = fabs((double)loss - dl) / fabs(dl);
  printf("    loss fp32 %.9g double %.12g rel err %.2e\n", (double)loss, dl,
         lerr);
  if (!(lerr <= 1e-5))
    test_fail(__FILE__, __LINE__, "%s: loss %.9g vs double %.12g", what,
              (double)loss, dl);

  /* (b) every gradient, per tensor, relative to its max-abs. */
  double worst_all = 0.0;
  for (size_t t = 0; t < m->ntensors; t++) {
    const struct bt__params_tensor *tt = &m->tensors[t];
    double maxabs = 0.0, maxerr = 0.0;
    for (size_t j = 0; j < tt->count; j++) {
      size_t k = tt->offset + j;
      double x0 = p[k], h = 1e-6 * fmax(1.0, fabs(x0));
      double xp = x0 + h, xm = x0 - h;
      p[k] = xp;
      double lp = dmodel_loss(m, p, x, y, N);
      p[k] = xm;
      double lm = dmodel_loss(m, p, x, y, N);
      p[k] = x0;
      double fd = (lp - lm) / (xp - xm);
      maxabs = fmax(maxabs, fabs(fd));
      maxerr = fmax(maxerr, fabs((double)m->grads[k] - fd));
      if (m->grads[k] != m->grads[k])
        maxerr = INFINITY;
    }
    double rel = maxerr / fmax(maxabs, 1e-12);
    worst_all = fmax(worst_all, rel);
    printf("    fd %-12s max|g| %.3e max rel err %.2e\n", tt->name, maxabs,
           rel);
    if (!(rel <= 1e-3))
      test_fail(__FILE__, __LINE__, "%s: gradient of %s off by %.2e", what,
                tt->name, rel);
    if (!(maxabs > 0.0))
      test_fail(__FILE__, __LINE__, "%s: gradient of %s is all zero", what,
                tt->name);
  }
  printf("    worst %.2e\n", worst_all);
  free(p);
  free(x);
  free(y);
  bt__resmlp_destroy(m);
}

TEST(resmlp_fd)
{
  check_against_double(config(5, 4, 3, 2, true), "long skip");
  check_against_double(config(5, 4, 3, 2, false), "no long skip");
  check_against_double(config(5, 4, 3, 0, true), "no blocks, long skip");
}

/* ---- (d) microbatching --------------------------------------------------- */

/* max |a - b| / max |b| over each tensor; the worst tensor's. */
static double
grad_diff(const struct bt__resmlp *a, const struct bt__resmlp *b)
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

TEST(resmlp_microbatches)
{
  const size_t N = 6;
  for (int skip = 0; skip < 2; skip++) {
    struct bt__resmlp_config c = config(5, 4, 3, 2, skip != 0);
    struct bt__resmlp *one = make_model(c, 3, true);
    struct bt__resmlp *m = make_model(c, 3, true);
    float *x, l1 = 0.0f, lm = 0.0f;
    int32_t *y;
    bt_error_t err;

    make_batch(N, c.D, c.C, 11, &x, &y);
    EXPECT_STATUS(bt__resmlp_reference_step(one, x, y, N, 1, &l1, &err),
                  BT_OK, &err);
    for (size_t mb = 2; mb <= 3; mb++) {
      /* Stale gradients must not survive: the step zeroes them. */
      for (size_t k = 0; k < m->nparams; k++)
        m->grads[k] = 1e3f;
      EXPECT_STATUS(bt__resmlp_reference_step(m, x, y, N, mb, &lm, &err),
                    BT_OK, &err);
      double dg = grad_diff(m, one);
      printf("  long_skip=%d m=%zu: loss %.9g vs %.9g, grad rel diff %.2e\n",
             skip, mb, (double)lm, (double)l1, dg);
      EXPECT_TRUE(fabs((double)lm - (double)l1) <= 1e-5 * fabs((double)l1));
      EXPECT_TRUE(dg <= 1e-5);
    }
    /* 6 rows do not split into 4 microbatches. */
    lm = -1.0f;
    EXPECT_STATUS(bt__resmlp_reference_step(m, x, y, N, 4, &lm, &err),
                  BT_EINVAL, &err);
    EXPECT_STR_CONTAINS(err.message, "4 microbatches");
    EXPECT_TRUE(lm == -1.0f);
    EXPECT_STATUS(bt__resmlp_reference_step(m, x, y, N, 0, &lm, &err),
                  BT_EINVAL, &err);
    y[4] = 3; /* == C */
    EXPECT_STATUS(bt__resmlp_reference_step(m, x, y, N, 2, &lm, &err),
                  BT_EINVAL, &err);
    EXPECT_STR_CONTAINS(err.message, "y[4]");
    free(x);
    free(y);
    bt__resmlp_destroy(one);
    bt__resmlp_destroy(m);
  }
}

/* ---- the split backward, layer by layer --------------------------------- */

static void
poison(float *p, size_t n)
{
  for (size_t i = 0; i < n; i++)
    p[i] = NAN;
}

/* One microbatch through the layer API as a zero-bubble stage would: every
 * input gradient first (head down), then every weight gradient (in
 * ascending layer order), with the caller's buffers poisoned as soon as a
 * call has returned (scratch must hold all the backward needs).  Bitwise
 * the reference step's result for one microbatch. */
TEST(resmlp_split_backward)
{
  const size_t N = 6;
  for (int skip = 0; skip < 2; skip++) {
    struct bt__resmlp_config c = config(5, 4, 3, 3, skip != 0);
    struct bt__resmlp *ref = make_model(c, 5, true);
    struct bt__resmlp *m = make_model(c, 5, true);
    size_t L = c.L, H = c.H, RH = N * H, nl = L + 2;
    float *x, lref = 0.0f, loss = 0.0f;
    int32_t *y;
    bt_error_t err;

    make_batch(N, c.D, c.C, 13, &x, &y);
    EXPECT_STATUS(bt__resmlp_reference_step(ref, x, y, N, 1, &lref, &err),
                  BT_OK, &err);

    void **scr = test_xcalloc(nl, sizeof(void *));
    for (size_t l = 0; l < nl; l++)
      scr[l] = test_xcalloc(bt__resmlp_layer_scratch_bytes(m, l, N), 1);
    float *h0 = test_xcalloc(RH, sizeof(float)),
          *z = test_xcalloc(RH, sizeof(float));
    float *act[2] = {test_xcalloc(RH, sizeof(float)),
                     test_xcalloc(RH, sizeof(float))};
    float *dz = test_xcalloc(RH, sizeof(float));
    float *dg[2] = {test_xcalloc(RH, sizeof(float)),
                    test_xcalloc(RH, sizeof(float))};
    float *xin = test_xcalloc(N * c.D, sizeof(float));

    bt__resmlp_zero_grad(m);
    memcpy(xin, x, N * c.D * sizeof(float));
    EXPECT_STATUS(bt__resmlp_layer_fwd(m, 0, xin, h0, scr[0], N), BT_OK,
                  NULL);
    poison(xin, N * c.D);
    float *cur = h0;
    for (size_t i = 0; i < L; i++) {
      float *next = act[i % 2];
      EXPECT_STATUS(bt__resmlp_layer_fwd(m, 1 + i, cur, next, scr[1 + i], N),
                    BT_OK, NULL);
      if (cur != h0)
        poison(cur, RH);
      cur = next;
    }
    if (c.long_skip) {
      EXPECT_STATUS(bt__resmlp_long_skip_fwd(m, z, cur, h0, N), BT_OK, NULL);
      poison(cur, RH);
      cur = z;
    } else {
      EXPECT_STATUS(bt__resmlp_long_skip_fwd(m, z, cur, h0, N), BT_EINVAL,
                    NULL);
    }
    poison(h0, RH);
    /* The head is not a plain layer. */
    EXPECT_STATUS(bt__resmlp_layer_fwd(m, L + 1, cur, z == cur ? h0 : z,
                                       scr[L + 1], N),
                  BT_EINVAL, NULL);
    EXPECT_STATUS(bt__resmlp_head_fwd(m, cur, y, N, scr[L + 1], N, &loss),
                  BT_OK, NULL);
    poison(cur, RH);

    EXPECT_STATUS(bt__resmlp_layer_bwd_input(m, L + 1, dz, dg[0],
                                             scr[L + 1], N, N),
                  BT_EINVAL, NULL); /* the head starts from the loss */
    EXPECT_STATUS(bt__resmlp_layer_bwd_input(m, L + 1, NULL, dz, scr[L + 1],
                                             N, N),
                  BT_OK, NULL);
    float *dcur = dz;
    for (size_t i = L; i-- > 0;) {
      float *dnext = dg[i % 2];
      EXPECT_STATUS(bt__resmlp_layer_bwd_input(m, 1 + i, dcur, dnext,
                                               scr[1 + i], N, N),
                    BT_OK, NULL);
      if (dcur != dz)
        poison(dcur, RH);
      dcur = dnext;
    }
    if (c.long_skip)
      EXPECT_STATUS(bt__resmlp_long_skip_bwd(m, dcur, dz, N), BT_OK, NULL);
    poison(dz, RH);
    EXPECT_STATUS(bt__resmlp_layer_bwd_input(m, 0, dcur, NULL, scr[0], N, N),
                  BT_OK, NULL);
    poison(dcur, RH);
    for (size_t l = 0; l < nl; l++)
      EXPECT_STATUS(bt__resmlp_layer_bwd_weight(m, l, scr[l], N), BT_OK,
                    NULL);

    EXPECT_TRUE(memcmp(&loss, &lref, sizeof(float)) == 0);
    EXPECT_TRUE(memcmp(m->grads, ref->grads, m->nparams * sizeof(float)) ==
                0);
    printf("  long_skip=%d: split backward %s the reference step\n", skip,
           memcmp(m->grads, ref->grads, m->nparams * sizeof(float)) == 0
               ? "bitwise equals"
               : "DIFFERS from");

    for (size_t l = 0; l < nl; l++)
      free(scr[l]);
    free(scr);
    free(h0);
    free(z);
    free(act[0]);
    free(act[1]);
    free(dz);
    free(dg[0]);
    free(dg[1]);
    free(xin);
    free(x);
    free(y);
    bt__resmlp_destroy(ref);
    bt__resmlp_destroy(m);
  }
}

/* ---- (e) determinism and the pinned initialization ---------------------- */

/* The documented scheme, written out again. */
static float
pinned_init(uint64_t seed, uint64_t k, size_t fan_in)
{
  uint64_t z = seed + (k + 1) * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  float u = (float)(z >> 40) * 0x1.0p-24f;
  return (2.0f * u - 1.0f) * (1.0f / sqrtf((float)fan_in));
}

TEST(resmlp_determinism)
{
  const size_t N = 6;
  struct bt__resmlp_config c = config(5, 4, 3, 2, true);
  struct bt__resmlp *a = make_model(c, 99, false);
  struct bt__resmlp *b = make_model(c, 99, false);
  struct bt__resmlp *d = make_model(c, 100, false);
  float *x, la = 0.0f, lb = 0.0f;
  int32_t *y;
  bt_error_t err;

  EXPECT_TRUE(memcmp(a->params, b->params, a->nparams * sizeof(float)) == 0);
  EXPECT_TRUE(memcmp(a->params, d->params, a->nparams * sizeof(float)) != 0);

  /* Every element as the header pins it. */
  size_t bad = 0;
  for (size_t t = 0; t < a->ntensors; t++) {
    const struct bt__params_tensor *tt = &a->tensors[t];
    size_t fan_in = 0;
    if (test_ends_with(tt->name, ".w"))
      fan_in = tt->shape[1];
    for (size_t j = 0; j < tt->count; j++) {
      float want = fan_in > 0 ? pinned_init(99, tt->offset + j, fan_in)
                   : test_ends_with(tt->name, "ln.g") ? 1.0f
                                                      : 0.0f;
      float got = a->params[tt->offset + j];
      if (memcmp(&got, &want, sizeof(float)) != 0 && bad++ < 5)
        test_fail(__FILE__, __LINE__, "%s[%zu] = %.9g, pinned %.9g",
                  tt->name, j, (double)got, (double)want);
      if (fan_in > 0 && !(fabsf(got) <= 1.0f / sqrtf((float)fan_in)))
        test_fail(__FILE__, __LINE__, "%s[%zu] = %g out of range", tt->name,
                  j, (double)got);
    }
  }
  /* A few values, so a change of scheme shows up as a diff here. */
  printf("  seed 99: in.w[0] = %a, head.w[0] = %a\n", (double)a->params[0],
         (double)a->params[bt__resmlp_find(a, "head.w")->offset]);

  make_batch(N, c.D, c.C, 17, &x, &y);
  EXPECT_STATUS(bt__resmlp_reference_step(a, x, y, N, 2, &la, &err), BT_OK,
                &err);
  EXPECT_STATUS(bt__resmlp_reference_step(b, x, y, N, 2, &lb, &err), BT_OK,
                &err);
  EXPECT_TRUE(memcmp(&la, &lb, sizeof(float)) == 0);
  EXPECT_TRUE(memcmp(a->grads, b->grads, a->nparams * sizeof(float)) == 0);
  /* Run twice on the same model: the same bits again. */
  float *g1 = test_xcalloc(a->nparams, sizeof(float));
  memcpy(g1, a->grads, a->nparams * sizeof(float));
  EXPECT_STATUS(bt__resmlp_reference_step(a, x, y, N, 2, &la, &err), BT_OK,
                &err);
  EXPECT_TRUE(memcmp(&la, &lb, sizeof(float)) == 0);
  EXPECT_TRUE(memcmp(a->grads, g1, a->nparams * sizeof(float)) == 0);
  EXPECT_STATUS(bt__resmlp_reference_step(d, x, y, N, 2, &lb, &err), BT_OK,
                &err);
  EXPECT_TRUE(memcmp(a->grads, d->grads, a->nparams * sizeof(float)) != 0);
  free(g1);
  free(x);
  free(y);
  bt__resmlp_destroy(a);
  bt__resmlp_destroy(b);
  bt__resmlp_destroy(d);
}

/* ---- (f) files ------------------------------------------------------------ */

static char tmpdir[256];

static const char *
tmp_path(const char *name)
{
  static char buf[4][512];
  static int next;
  char *p = buf[next++ % 4];

  if (tmpdir[0] == '\0') {
    const char *t = getenv("TMPDIR");
    snprintf(tmpdir, sizeof(tmpdir), "%s/bt_rm_XXXXXX",
             t != NULL && *t ? t : "/tmp");
    if (mkdtemp(tmpdir) == NULL) {
      perror("mkdtemp");
      exit(1);
    }
  }
  snprintf(p, 512, "%s/%s", tmpdir, name);
  return p;
}

/* m's parameters as safetensors entries, with one tensor's shape changed
 * (reshape, as {rows, cols}) or left out (drop). */
static bt_status
save_altered(const struct bt__resmlp *m, const char *path,
             const char *reshape, int64_t r0, int64_t r1, const char *drop,
             bt_error_t *err)
{
  bt_st_tensor_t *ts = test_xcalloc(m->ntensors, sizeof(*ts));
  size_t n = 0;
  for (size_t t = 0; t < m->ntensors; t++) {
    const struct bt__params_tensor *tt = &m->tensors[t];
    if (drop != NULL && strcmp(tt->name, drop) == 0)
      continue;
    bt_st_tensor_t *s = &ts[n++];
    s->name = tt->name;
    s->dtype = BT_ST_F32;
    s->ndim = tt->ndim;
    s->shape[0] = (int64_t)tt->shape[0];
    s->shape[1] = (int64_t)tt->shape[1];
    if (reshape != NULL && strcmp(tt->name, reshape) == 0) {
      s->shape[0] = r0;
      s->shape[1] = r1;
    }
    s->data = m->params + tt->offset;
    s->bytes = tt->count * sizeof(float);
  }
  bt_status st = bt_st_save(path, ts, n, NULL, err);
  free(ts);
  return st;
}

TEST(resmlp_files)
{
  const size_t N = 6;
  struct bt__resmlp_config c = config(5, 4, 3, 2, true);
  struct bt__resmlp *a = make_model(c, 21, true);
  struct bt__resmlp *b = make_model(c, 22, false);
  float *x, loss = 0.0f;
  int32_t *y;
  bt_error_t err;
  bt_st_file_t *f = NULL;

  make_batch(N, c.D, c.C, 19, &x, &y);
  EXPECT_STATUS(bt__resmlp_reference_step(a, x, y, N, 3, &loss, &err), BT_OK,
                &err);

  /* The dump: x, y, loss, then p.NAME, g.NAME per parameter. */
  const char *dump = tmp_path("dump.safetensors");
  EXPECT_STATUS(bt__resmlp_dump(a, dump, x, y, N, loss, &err), BT_OK, &err);
  EXPECT_STATUS(bt_st_load(dump, &f, &err), BT_OK, &err);
  ASSERT_TRUE(f != NULL);
  ASSERT_INT_EQ(bt_st_count(f), 3 + 2 * a->ntensors);
  bt_st_tensor_t t = bt_st_get(f, 0);
  EXPECT_TRUE(strcmp(t.name, "x") == 0 && t.dtype == BT_ST_F32 &&
              t.ndim == 2 && t.shape[0] == 6 && t.shape[1] == 5 &&
              memcmp(t.data, x, N * c.D * sizeof(float)) == 0);
  t = bt_st_get(f, 1);
  EXPECT_TRUE(strcmp(t.name, "y") == 0 && t.dtype == BT_ST_I32 &&
              t.ndim == 1 && t.shape[0] == 6 &&
              memcmp(t.data, y, N * sizeof(int32_t)) == 0);
  t = bt_st_get(f, 2);
  EXPECT_TRUE(strcmp(t.name, "loss") == 0 && t.dtype == BT_ST_F32 &&
              t.ndim == 1 && t.shape[0] == 1 &&
              memcmp(t.data, &loss, sizeof(float)) == 0);
  for (size_t i = 0; i < a->ntensors; i++) {
    const struct bt__params_tensor *tt = &a->tensors[i];
    char want[64];
    for (int g = 0; g < 2; g++) {
      t = bt_st_get(f, 3 + 2 * i + (size_t)g);
      snprintf(want, sizeof(want), "%s.%s", g ? "g" : "p", tt->name);
      const float *src = (g ? a->grads : a->params) + tt->offset;
      if (strcmp(t.name, want) != 0)
        test_fail(__FILE__, __LINE__, "dump tensor %zu is %s, wanted %s",
                  3 + 2 * i + (size_t)g, t.name, want);
      EXPECT_TRUE(t.dtype == BT_ST_F32 && t.ndim == tt->ndim &&
                  t.shape[0] == (int64_t)tt->shape[0] &&
                  (tt->ndim == 1 || t.shape[1] == (int64_t)tt->shape[1]) &&
                  t.bytes == tt->count * sizeof(float) &&
                  memcmp(t.data, src, t.bytes) == 0);
    }
  }
  bt_st_close(f);

  /* Checkpoint round trip into a model of another seed. */
  const char *ckpt = tmp_path("ckpt.safetensors");
  EXPECT_STATUS(bt__resmlp_save(a, ckpt, &err), BT_OK, &err);
  EXPECT_TRUE(memcmp(a->params, b->params, a->nparams * sizeof(float)) != 0);
  EXPECT_STATUS(bt__resmlp_load(b, ckpt, &err), BT_OK, &err);
  EXPECT_TRUE(memcmp(a->params, b->params, a->nparams * sizeof(float)) == 0);

  /* Bad checkpoints: each error names the tensor; b is left as it was. */
  struct bt__resmlp *fresh = make_model(c, 23, false);
  float *before = test_xcalloc(fresh->nparams, sizeof(float));
  memcpy(before, fresh->params, fresh->nparams * sizeof(float));

  const char *bad = tmp_path("bad.safetensors");
  EXPECT_STATUS(save_altered(a, bad, "blk1.fc1.w", 4, 16, NULL, &err), BT_OK,
                &err);
  EXPECT_STATUS(bt__resmlp_load(fresh, bad, &err), BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "'blk1.fc1.w'");
  EXPECT_STR_CONTAINS(err.message, "shape [4, 16]");
  EXPECT_STR_CONTAINS(err.message, "needs [16, 4]");
  printf("  wrong shape: %s\n", err.message);

  EXPECT_STATUS(save_altered(a, bad, NULL, 0, 0, "head.b", &err), BT_OK,
                &err);
  EXPECT_STATUS(bt__resmlp_load(fresh, bad, &err), BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "'head.b'");
  EXPECT_STR_CONTAINS(err.message, "missing");
  printf("  missing: %s\n", err.message);

  /* A checkpoint of a deeper model carries tensors this one lacks. */
  struct bt__resmlp *deep = make_model(config(5, 4, 3, 3, true), 24, false);
  EXPECT_STATUS(bt__resmlp_save(deep, bad, &err), BT_OK, &err);
  EXPECT_STATUS(bt__resmlp_load(fresh, bad, &err), BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "'blk2.");
  printf("  extra: %s\n", err.message);

  /* The dump is not a checkpoint (its tensors are prefixed). */
  EXPECT_STATUS(bt__resmlp_load(fresh, dump, &err), BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "'in.w'");
  EXPECT_STATUS(bt__resmlp_load(fresh, tmp_path("none.safetensors"), &err),
                BT_ENOENT, &err);
  EXPECT_TRUE(memcmp(before, fresh->params,
                     fresh->nparams * sizeof(float)) == 0);

  unlink(dump);
  unlink(ckpt);
  unlink(bad);
  rmdir(tmpdir);
  free(before);
  free(x);
  free(y);
  bt__resmlp_destroy(a);
  bt__resmlp_destroy(b);
  bt__resmlp_destroy(fresh);
  bt__resmlp_destroy(deep);
}

/* ---- (g) optimizers --------------------------------------------------------- */

/* A learnable fixed batch: the label is the argmax of a fixed projection
 * of x. */
static void
learnable_batch(size_t N, size_t D, size_t C, float **x, int32_t **y)
{
  make_batch(N, D, C, 31, x, y);
  for (size_t r = 0; r < N; r++) {
    double best = -INFINITY;
    for (size_t k = 0; k < C; k++) {
      double s = 0.0;
      for (size_t i = 0; i < D; i++)
        s += (*x)[r * D + i] * ((double)((i + k) % 3) - 1.0);
      if (s > best) {
        best = s;
        (*y)[r] = (int32_t)k;
      }
    }
  }
}

TEST(resmlp_optimizers)
{
  const size_t N = 12, steps = 20;
  struct bt__resmlp_config c = config(5, 8, 3, 2, true);
  float *x;
  int32_t *y;
  bt_error_t err;

  learnable_batch(N, c.D, c.C, &x, &y);
  for (int opt = 0; opt < 2; opt++) {
    struct bt__resmlp *m = make_model(c, 77, false);
    struct bt__params_adamw_state st = {NULL, NULL};
    float first = 0.0f, loss = 0.0f;

    if (opt == 1)
      ASSERT_INT_EQ(bt__resmlp_adamw_init(m, &st), BT_OK);
    for (size_t s = 0; s < steps; s++) {
      EXPECT_STATUS(bt__resmlp_reference_step(m, x, y, N, 2, &loss, &err),
                    BT_OK, &err);
      if (s == 0)
        first = loss;
      if (opt == 0)
        EXPECT_STATUS(bt__resmlp_sgd(m, 0.2f), BT_OK, NULL);
      else
        EXPECT_STATUS(bt__resmlp_adamw(m, 1e-2f, 0.9f, 0.999f, 1e-8f, 0.01f,
                                       (int64_t)s + 1, &st),
                      BT_OK, NULL);
    }
    EXPECT_STATUS(bt__resmlp_reference_step(m, x, y, N, 2, &loss, &err),
                  BT_OK, &err);
    printf("  %s: loss %.6f -> %.6f after %zu steps\n",
           opt == 0 ? "sgd" : "adamw", (double)first, (double)loss, steps);
    EXPECT_TRUE(loss < 0.8f * first);
    if (opt == 1) {
      EXPECT_STATUS(bt__resmlp_adamw(m, 1e-2f, 0.9f, 0.999f, 1e-8f, 0.0f, 0,
                                     &st),
                    BT_EINVAL, NULL); /* t is 1-based */
      bt__resmlp_adamw_deinit(&st);
      bt__resmlp_adamw_deinit(&st);
    }
    bt__resmlp_destroy(m);
  }
  free(x);
  free(y);
}
