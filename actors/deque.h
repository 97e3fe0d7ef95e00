/* Private: Chase-Lev work-stealing deque of non-negative int64 items.
 *
 * One owner thread pushes and takes at the bottom; any thread steals at the
 * top.  C11 atomics with the orders of Le, Pop, Cohen and Zappa Nardelli,
 * "Correct and Efficient Work-Stealing for Weak Memory Models" (PPoPP 2013),
 * with 64-bit indices (no wrap-around in practice).  Growing replaces the
 * buffer; old buffers are kept until destroy, so a thief that loaded the old
 * pointer still reads valid memory (keep-until-destroy reclamation). */
#ifndef BATON_ACTORS_DEQUE_H
#define BATON_ACTORS_DEQUE_H

#include <stdatomic.h>
#include <stdint.h>

#include "baton/status.h"

#define BT__DEQUE_EMPTY (-1)
#define BT__DEQUE_ABORT (-2) /* lost a race with another thief: retry */

struct bt__deque_buf {
  int64_t mask; /* capacity - 1, capacity a power of two */
  struct bt__deque_buf *older;
  _Atomic int64_t slots[];
};

struct bt__deque {
  /* top and bottom on their own cache lines: thieves hammer top, the owner
   * bottom. */
  _Alignas(64) _Atomic int64_t top;
  _Alignas(64) _Atomic int64_t bottom;
  _Alignas(64) _Atomic(struct bt__deque_buf *) buf;
};

/* Capacity 2^log2_cap items to start with.  BT_ENOMEM. */
bt_status bt__deque_init(struct bt__deque *d, int log2_cap);

/* Frees every buffer.  No thread may use the deque any more. */
void bt__deque_destroy(struct bt__deque *d);

/* Owner only.  Grows when full: BT_ENOMEM if that fails (item not pushed). */
bt_status bt__deque_push_owner(struct bt__deque *d, int64_t item);

/* Owner only: the most recently pushed item, or BT__DEQUE_EMPTY. */
int64_t bt__deque_take_owner(struct bt__deque *d);

/* Any thread: the oldest item, BT__DEQUE_EMPTY or BT__DEQUE_ABORT. */
int64_t bt__deque_steal(struct bt__deque *d);

/* Any thread, a hint only: true when the deque looked non-empty. */
static inline int
bt__deque_nonempty_hint(struct bt__deque *d)
{
  /* Relaxed: a stale answer only costs a wasted steal attempt or a
   * re-check before sleeping, which the event count makes safe. */
  return atomic_load_explicit(&d->bottom, memory_order_relaxed) >
         atomic_load_explicit(&d->top, memory_order_relaxed);
}

#endif /* BATON_ACTORS_DEQUE_H */
