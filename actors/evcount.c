/* Event count on Linux futexes (see evcount.h). */
#define _DEFAULT_SOURCE /* syscall() */
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "evcount.h"

static void
futex(_Atomic uint32_t *word, int op, uint32_t val)
{
  /* The kernel reads the word itself; the atomic's representation is a
   * plain uint32_t on every platform Linux supports. */
  syscall(SYS_futex, (uint32_t *)(uintptr_t)word, op | FUTEX_PRIVATE_FLAG, val, NULL,
          NULL, 0);
}

void
bt__ec_wait(struct bt__ec *ec, uint32_t key)
{
  /* FUTEX_WAIT returns at once when seq no longer equals key: a notify
   * between prepare and here is never lost. */
  if (atomic_load_explicit(&ec->seq, memory_order_seq_cst) == key)
    futex(&ec->seq, FUTEX_WAIT, key);
  atomic_fetch_sub_explicit(&ec->waiters, 1, memory_order_relaxed);
}

void
bt__ec_notify(struct bt__ec *ec, int all)
{
  /* Seq_cst fence: the caller's publication is ordered before the load of
   * waiters, against the waiter's seq_cst increment and re-check. */
  atomic_thread_fence(memory_order_seq_cst);
  if (atomic_load_explicit(&ec->waiters, memory_order_relaxed) == 0)
    return;
  atomic_fetch_add_explicit(&ec->seq, 1, memory_order_seq_cst);
  futex(&ec->seq, FUTEX_WAKE, all ? INT_MAX : 1);
}
