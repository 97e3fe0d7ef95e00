/* A counting allocator that can fail the Nth allocation (Lua's and libuv's
 * trick), for test binaries linked with
 *   -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=aligned_alloc
 * (bt_wrap_alloc() in tests/CMakeLists.txt).  Only calls made from the
 * test binary and the static libbaton are wrapped, not libc's or other
 * libraries' own. */
#ifndef BATON_TESTS_FAILALLOC_H
#define BATON_TESTS_FAILALLOC_H

#include "baton/status.h"

/* Allocations made so far (thread-safe). */
long failalloc_count(void);

/* Makes the n-th allocation from now (0-based) fail; n < 0 disarms. */
void failalloc_fail_at(long n);

/* Runs op with allocation 0, 1, 2, ... failing until it succeeds; every
 * failure must be BT_ENOMEM.  Returns the number of injected failures, or
 * -1 (after recording a test failure) on a wrong status or no success. */
int failalloc_sweep(const char *name, bt_status (*op)(void));

#endif /* BATON_TESTS_FAILALLOC_H */
