/* Chase-Lev work-stealing deque (see deque.h for the contract). */
#include <stdlib.h>

#include "deque.h"

static struct bt__deque_buf *
buf_new(int64_t cap)
{
  struct bt__deque_buf *b =
      malloc(sizeof *b + (size_t)cap * sizeof(_Atomic int64_t));

  if (b == NULL)
    return NULL;
  b->mask = cap - 1;
  b->older = NULL;
  for (int64_t i = 0; i < cap; i++)
    atomic_init(&b->slots[i], 0);
  return b;
}

bt_status
bt__deque_init(struct bt__deque *d, int log2_cap)
{
  struct bt__deque_buf *b = buf_new((int64_t)1 << log2_cap);

  if (b == NULL)
    return BT_ENOMEM;
  atomic_init(&d->top, 0);
  atomic_init(&d->bottom, 0);
  atomic_init(&d->buf, b);
  return BT_OK;
}

void
bt__deque_destroy(struct bt__deque *d)
{
  struct bt__deque_buf *b =
      atomic_load_explicit(&d->buf, memory_order_relaxed);

  while (b != NULL) {
    struct bt__deque_buf *older = b->older;
    free(b);
    b = older;
  }
}

/* Owner only: copies the live range [t, b) into a buffer twice as big and
 * publishes it.  The old buffer stays readable for thieves. */
static struct bt__deque_buf *
grow(struct bt__deque *d, struct bt__deque_buf *old, int64_t t, int64_t b)
{
  struct bt__deque_buf *nb = buf_new(2 * (old->mask + 1));

  if (nb == NULL)
    return NULL;
  for (int64_t i = t; i < b; i++)
    atomic_store_explicit(
        &nb->slots[i & nb->mask],
        atomic_load_explicit(&old->slots[i & old->mask], memory_order_relaxed),
        memory_order_relaxed);
  nb->older = old;
  /* Release: a thief that acquires the new pointer sees the copied slots. */
  atomic_store_explicit(&d->buf, nb, memory_order_release);
  return nb;
}

bt_status
bt__deque_push_owner(struct bt__deque *d, int64_t item)
{
  int64_t b = atomic_load_explicit(&d->bottom, memory_order_relaxed);
  /* Acquire: pairs with the thieves' CAS on top, so a slot a thief has
   * finished reading is not overwritten early. */
  int64_t t = atomic_load_explicit(&d->top, memory_order_acquire);
  struct bt__deque_buf *a =
      atomic_load_explicit(&d->buf, memory_order_relaxed);

  if (b - t > a->mask) {
    a = grow(d, a, t, b);
    if (a == NULL)
      return BT_ENOMEM;
  }
  atomic_store_explicit(&a->slots[b & a->mask], item, memory_order_relaxed);
  /* Release (the paper's release fence before the store of bottom): a thief
   * that acquires bottom sees the item and everything written before it. */
  atomic_store_explicit(&d->bottom, b + 1, memory_order_release);
  return BT_OK;
}

int64_t
bt__deque_take_owner(struct bt__deque *d)
{
  int64_t b = atomic_load_explicit(&d->bottom, memory_order_relaxed) - 1;
  struct bt__deque_buf *a =
      atomic_load_explicit(&d->buf, memory_order_relaxed);
  int64_t t, x;

  atomic_store_explicit(&d->bottom, b, memory_order_relaxed);
  /* Seq_cst fence: orders the store of bottom before the load of top
   * against a thief's load of top then bottom (store-load ordering). */
  atomic_thread_fence(memory_order_seq_cst);
  t = atomic_load_explicit(&d->top, memory_order_relaxed);
  if (t > b) {
    /* Empty: restore bottom. */
    atomic_store_explicit(&d->bottom, b + 1, memory_order_relaxed);
    return BT__DEQUE_EMPTY;
  }
  x = atomic_load_explicit(&a->slots[b & a->mask], memory_order_relaxed);
  if (t == b) {
    /* Last item: race the thieves for it on top. */
    if (!atomic_compare_exchange_strong_explicit(&d->top, &t, t + 1,
                                                 memory_order_seq_cst,
                                                 memory_order_relaxed))
      x = BT__DEQUE_EMPTY;
    atomic_store_explicit(&d->bottom, b + 1, memory_order_relaxed);
  }
  return x;
}

int64_t
bt__deque_steal(struct bt__deque *d)
{
  /* Acquire on top, then a seq_cst fence before reading bottom: the
   * mirror of take's store-bottom / fence / load-top. */
  int64_t t = atomic_load_explicit(&d->top, memory_order_acquire);
  int64_t b, x;
  struct bt__deque_buf *a;

  atomic_thread_fence(memory_order_seq_cst);
  /* Acquire: pairs with push's release store, making the item visible. */
  b = atomic_load_explicit(&d->bottom, memory_order_acquire);
  if (t >= b)
    return BT__DEQUE_EMPTY;
  /* Acquire (the paper's consume): the buffer's contents as published by
   * grow, after the bottom that made the item visible. */
  a = atomic_load_explicit(&d->buf, memory_order_acquire);
  x = atomic_load_explicit(&a->slots[t & a->mask], memory_order_relaxed);
  if (!atomic_compare_exchange_strong_explicit(&d->top, &t, t + 1,
                                               memory_order_seq_cst,
                                               memory_order_relaxed))
    return BT__DEQUE_ABORT;
  return x;
}
