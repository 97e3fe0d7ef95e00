/* Private: an event count for sleeping without lost wake-ups (futex).
 *
 * A waiter announces itself, reads a key, re-checks its condition and only
 * then sleeps on the key; a notifier publishes its work, then wakes only if
 * someone announced itself.  Seq_cst on both sides (Dekker's pattern)
 * guarantees that either the waiter sees the work or the notifier sees the
 * waiter:
 *
 *   waiter:    key = ec_prepare(ec); if (work) ec_cancel(ec); else ec_wait(ec, key);
 *   notifier:  publish work; ec_notify(ec, all);
 */
#ifndef BATON_ACTORS_EVCOUNT_H
#define BATON_ACTORS_EVCOUNT_H

#include <stdatomic.h>
#include <stdint.h>

struct bt__ec {
  _Atomic uint32_t seq;     /* futex word: bumped by every wake */
  _Atomic uint32_t waiters; /* threads between prepare and wait's end */
};

static inline void
bt__ec_init(struct bt__ec *ec)
{
  atomic_init(&ec->seq, 0);
  atomic_init(&ec->waiters, 0);
}

/* Announces a waiter and returns the key to sleep on. */
static inline uint32_t
bt__ec_prepare(struct bt__ec *ec)
{
  /* Seq_cst RMW: ordered before the caller's re-check of its condition and
   * against the notifier's fence + load of waiters. */
  atomic_fetch_add_explicit(&ec->waiters, 1, memory_order_seq_cst);
  return atomic_load_explicit(&ec->seq, memory_order_seq_cst);
}

/* The condition turned out true: withdraw the announcement. */
static inline void
bt__ec_cancel(struct bt__ec *ec)
{
  atomic_fetch_sub_explicit(&ec->waiters, 1, memory_order_relaxed);
}

/* Sleeps until a notify after prepare (returns at once if one happened);
 * spurious returns are possible: callers loop on their condition. */
void bt__ec_wait(struct bt__ec *ec, uint32_t key);

/* Wakes one or all waiters, if any announced themselves.  Cheap when nobody
 * waits: a fence and a load. */
void bt__ec_notify(struct bt__ec *ec, int all);

#endif /* BATON_ACTORS_EVCOUNT_H */
