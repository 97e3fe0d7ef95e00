/* See failalloc.h. */
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>

#include "failalloc.h"
#include "test.h"

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t k);
void *__real_realloc(void *p, size_t n);
void *__real_aligned_alloc(size_t align, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t k);
void *__wrap_realloc(void *p, size_t n);
void *__wrap_aligned_alloc(size_t align, size_t n);

/* Relaxed: runtime threads may allocate too; the test reads the count
 * after joining their work. */
static _Atomic long allocs;
static _Atomic long fail_target = -1;

static int
should_fail(void)
{
  long c = atomic_fetch_add_explicit(&allocs, 1, memory_order_relaxed);

  return c == atomic_load_explicit(&fail_target, memory_order_relaxed);
}

void *
__wrap_malloc(size_t n)
{
  return should_fail() ? NULL : __real_malloc(n);
}

void *
__wrap_calloc(size_t n, size_t k)
{
  return should_fail() ? NULL : __real_calloc(n, k);
}

void *
__wrap_realloc(void *p, size_t n)
{
  return should_fail() ? NULL : __real_realloc(p, n);
}

void *
__wrap_aligned_alloc(size_t align, size_t n)
{
  return should_fail() ? NULL : __real_aligned_alloc(align, n);
}

long
failalloc_count(void)
{
  return atomic_load_explicit(&allocs, memory_order_relaxed);
}

void
failalloc_fail_at(long n)
{
  atomic_store_explicit(&fail_target, n < 0 ? -1 : failalloc_count() + n,
                        memory_order_relaxed);
}

int
failalloc_sweep(const char *name, bt_status (*op)(void))
{
  for (long n = 0; n < 100000; n++) {
    bt_status rc;
    failalloc_fail_at(n);
    rc = op();
    failalloc_fail_at(-1);
    if (rc == BT_OK) {
      printf("  %s: %ld allocation failures, each BT_ENOMEM\n", name, n);
      return (int)n;
    }
    if (rc != BT_ENOMEM) {
      test_fail(__FILE__, __LINE__, "%s: allocation %ld failed, got %s", name,
                n, bt_status_name(rc));
      return -1;
    }
  }
  test_fail(__FILE__, __LINE__, "%s never succeeded", name);
  return -1;
}
