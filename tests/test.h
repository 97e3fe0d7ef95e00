/* A tiny test registry.  TEST(name) defines a test; EXPECT_* records a
 * failure and continues; ASSERT_* records it and leaves the test.  Each test
 * binary runs all its tests (or those named on the command line) and exits
 * non-zero when any failed.  One process per binary under CTest. */
#ifndef BATON_TESTS_TEST_H
#define BATON_TESTS_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "baton/status.h"

typedef void (*test_fn)(void);

struct test_case {
  const char *name;
  test_fn fn;
};

void test_register(const char *name, test_fn fn);
void test_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int test_main(int argc, char **argv);

/* Sizes given on the command line: leading numeric arguments (before any
 * test name), by position; dflt when absent. */
long test_arg(int index, long dflt);

#define TEST(name)                                                            \
  static void test_##name(void);                                              \
  __attribute__((constructor)) static void test_register_##name(void)         \
  {                                                                           \
    test_register(#name, test_##name);                                        \
  }                                                                           \
  static void test_##name(void)

#define EXPECT_TRUE(c)                                                        \
  do {                                                                        \
    if (!(c))                                                                 \
      test_fail(__FILE__, __LINE__, "expected %s", #c);                       \
  } while (0)

#define ASSERT_TRUE(c)                                                        \
  do {                                                                        \
    if (!(c)) {                                                               \
      test_fail(__FILE__, __LINE__, "assertion %s", #c);                      \
      return;                                                                 \
    }                                                                         \
  } while (0)

#define EXPECT_INT_EQ(a, b)                                                   \
  do {                                                                        \
    long long a_ = (long long)(a), b_ = (long long)(b);                       \
    if (a_ != b_)                                                             \
      test_fail(__FILE__, __LINE__, "%s == %s: %lld != %lld", #a, #b, a_,     \
                b_);                                                          \
  } while (0)

#define ASSERT_INT_EQ(a, b)                                                   \
  do {                                                                        \
    long long a_ = (long long)(a), b_ = (long long)(b);                       \
    if (a_ != b_) {                                                           \
      test_fail(__FILE__, __LINE__, "%s == %s: %lld != %lld", #a, #b, a_,     \
                b_);                                                          \
      return;                                                                 \
    }                                                                         \
  } while (0)

/* Relative-or-absolute closeness, for sums of costs. */
#define EXPECT_NEAR(a, b, tol)                                                \
  do {                                                                        \
    double a_ = (double)(a), b_ = (double)(b);                                \
    if (!(fabs(a_ - b_) <= (tol) * (1.0 + fabs(b_))))                         \
      test_fail(__FILE__, __LINE__, "%s ~= %s: %.17g vs %.17g", #a, #b, a_,   \
                b_);                                                          \
  } while (0)

#define EXPECT_STR_CONTAINS(hay, needle)                                      \
  do {                                                                        \
    const char *h_ = (hay), *n_ = (needle);                                   \
    if (h_ == NULL || strstr(h_, n_) == NULL)                                 \
      test_fail(__FILE__, __LINE__, "\"%s\" does not contain \"%s\"",         \
                h_ ? h_ : "(null)", n_);                                      \
  } while (0)

static inline const char *
test_err_detail(const bt_error_t *err)
{
  return err != NULL ? err->message : "";
}

/* Checks status, printing the error detail when it differs. */
#define EXPECT_STATUS(call, want, errp)                                       \
  do {                                                                        \
    int got_ = (int)(call);                                                   \
    if (got_ != (int)(want))                                                  \
      test_fail(__FILE__, __LINE__, "%s returned %s, wanted %s: %s", #call,   \
                bt_status_name((bt_status)got_),                              \
                bt_status_name((bt_status)(want)),                            \
                test_err_detail(errp));                                       \
  } while (0)

#endif /* BATON_TESTS_TEST_H */
