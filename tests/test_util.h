/* Helpers shared by the numeric tests (kernels, models, trainers), header
 * only: a deterministic RNG (splitmix64), allocation and fill helpers for
 * float / double arrays, and the comparisons the tests make against
 * references and finite differences.  Every function is static inline, so
 * a test includes what it uses and nothing else changes.
 *
 * The RNG streams are part of the tests: the values generated from a seed
 * must stay the same, or pinned expectations and tolerances drift. */
#ifndef BATON_TESTS_TEST_UTIL_H
#define BATON_TESTS_TEST_UTIL_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"

/* ---- splitmix64 --------------------------------------------------------- */

/* RNG state: one 64-bit counter.  Set state directly for a raw start, or
 * use test_rng_seed. */
typedef struct {
  uint64_t state;
} test_rng_t;

/* Starts r's stream from seed (state = seed * golden + 1, so that seeds 0
 * and 1 give unrelated streams). */
static inline void
test_rng_seed(test_rng_t *r, uint64_t seed)
{
  r->state = seed * 0x9e3779b97f4a7c15ull + 1;
}

/* The next 64 random bits (splitmix64: deterministic across platforms). */
static inline uint64_t
test_rng_next(test_rng_t *r)
{
  uint64_t z = (r->state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* Uniform in [0, 1), 53 random bits. */
static inline double
test_rng_unit(test_rng_t *r)
{
  return (double)(test_rng_next(r) >> 11) * 0x1.0p-53;
}

/* Uniform in [lo, hi), computed in double. */
static inline double
test_rng_uniform(test_rng_t *r, double lo, double hi)
{
  return lo + (hi - lo) * test_rng_unit(r);
}

/* Uniform in [lo, hi), the unit draw rounded to float and the rest
 * computed in float: a different stream of floats from
 * (float)test_rng_uniform, kept for the tests pinned to it. */
static inline float
test_rng_uniform_f32(test_rng_t *r, float lo, float hi)
{
  return lo + (hi - lo) * (float)test_rng_unit(r);
}

/* ---- allocation --------------------------------------------------------- */

/* calloc(n, size) that never returns NULL (a zero count allocates one
 * byte's worth); exits on out of memory. */
static inline void *
test_xcalloc(size_t n, size_t size)
{
  void *p = calloc(n == 0 ? 1 : n, size == 0 ? 1 : size);
  if (p == NULL) {
    fprintf(stderr, "test: out of memory\n");
    exit(1);
  }
  return p;
}

/* n zeroed floats. */
static inline float *
test_alloc_f(size_t n)
{
  return test_xcalloc(n, sizeof(float));
}

/* n zeroed doubles. */
static inline double *
test_alloc_d(size_t n)
{
  return test_xcalloc(n, sizeof(double));
}

/* Fills p[0..n) uniform in [lo, hi), each (float)test_rng_uniform. */
static inline void
test_fill_uniform(float *p, size_t n, float lo, float hi, test_rng_t *r)
{
  for (size_t i = 0; i < n; i++)
    p[i] = (float)test_rng_uniform(r, lo, hi);
}

/* A new array of n floats filled as test_fill_uniform. */
static inline float *
test_random_f(test_rng_t *r, size_t n, float lo, float hi)
{
  float *p = test_alloc_f(n);
  test_fill_uniform(p, n, lo, hi, r);
  return p;
}

/* A new copy of a[0..n). */
static inline float *
test_copy_f(const float *a, size_t n)
{
  float *p = test_alloc_f(n);
  memcpy(p, a, n * sizeof(float));
  return p;
}

/* A new double copy of a[0..n). */
static inline double *
test_to_double(const float *a, size_t n)
{
  double *p = test_alloc_d(n);
  for (size_t i = 0; i < n; i++)
    p[i] = (double)a[i];
  return p;
}

/* Whether s ends with suffix. */
static inline bool
test_ends_with(const char *s, const char *suffix)
{
  size_t a = strlen(s), b = strlen(suffix);
  return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* ---- comparisons -------------------------------------------------------- */

/* Every element within tol * (1 + |want|): relative for large values,
 * absolute for small ones.  Fails the test on the first few misses (NaN
 * included); returns the largest |got - want| / (1 + |want|). */
static inline double
test_expect_close(const char *what, const float *got, const float *want,
                  size_t n, double tol)
{
  double worst = 0.0;
  int reported = 0;

  for (size_t i = 0; i < n; i++) {
    double e =
        fabs((double)got[i] - (double)want[i]) / (1.0 + fabs((double)want[i]));
    if (!(e <= tol) && reported++ < 5)
      test_fail(__FILE__, __LINE__, "%s[%zu]: %.9g vs reference %.9g", what, i,
                (double)got[i], (double)want[i]);
    if (e > worst || e != e)
      worst = e;
  }
  return worst;
}

/* The objective of a finite-difference check: a double-precision loss of
 * the parameters the check varies (reached through ctx). */
typedef double (*test_objective_fn)(void *ctx);

/* Central differences of f with respect to each of param[0..n), in
 * double, into grad.  The step is relative to the value, and the quotient
 * divides by the step actually taken (x + h - (x - h) is not exactly 2h).
 * param is restored. */
static inline void
test_fd_grad(test_objective_fn f, void *ctx, double *param, size_t n,
             double *grad)
{
  for (size_t i = 0; i < n; i++) {
    double x0 = param[i];
    double h = 1e-6 * fmax(1.0, fabs(x0));
    double xp = x0 + h, xm = x0 - h;

    param[i] = xp;
    double lp = f(ctx);
    param[i] = xm;
    double lm = f(ctx);
    param[i] = x0;
    grad[i] = (lp - lm) / (xp - xm);
  }
}

/* The fp32 analytic gradient against the double finite differences: the
 * error of each element relative to its own size, but never to less than
 * 1% of the tensor's largest gradient (elements near zero are the
 * difference of larger terms, and fp32 rounds those terms, not the
 * result).  Fails the test on the first few misses, prints the worst
 * error and returns it. */
static inline double
test_expect_fd(const char *what, const float *analytic, const double *fd,
               size_t n, double tol)
{
  double maxabs = 0.0, worst = 0.0;
  int reported = 0;

  for (size_t i = 0; i < n; i++)
    maxabs = fmax(maxabs, fabs(fd[i]));
  double floor_ = fmax(1e-2 * maxabs, 1e-12);
  for (size_t i = 0; i < n; i++) {
    double e = fabs((double)analytic[i] - fd[i]) / fmax(fabs(fd[i]), floor_);
    if (!(e <= tol) && reported++ < 5)
      test_fail(__FILE__, __LINE__, "%s[%zu]: analytic %.9g vs FD %.9g", what,
                i, (double)analytic[i], fd[i]);
    if (e > worst || e != e)
      worst = e;
  }
  printf("  fd %-22s n=%-4zu max rel err %.2e\n", what, n, worst);
  return worst;
}

/* max |got - ref| over [0, n), INFINITY when got holds a NaN; stores
 * max |ref| in *max_ref.  The pieces of a "max-abs relative" check:
 * diff <= tol * max_ref. */
static inline double
test_max_abs_diff(const float *got, const float *ref, size_t n, double *max_ref)
{
  double mr = 0.0, md = 0.0;
  for (size_t j = 0; j < n; j++) {
    double g = got[j], r = ref[j];
    mr = fmax(mr, fabs(r));
    md = fmax(md, fabs(g - r));
    if (g != g)
      md = INFINITY;
  }
  *max_ref = mr;
  return md;
}

#endif
