/* Private: an actor's mailbox, a bounded MPSC ring of task ids.
 *
 * Many threads post (whoever finishes a task's last predecessor); one
 * activation of the actor at a time takes, in post order.  Slots carry
 * sequence numbers (Vyukov's bounded queue): a poster claims a position
 * with one fetch_add and publishes the slot with a release store; the taker
 * acquires it.  The capacity is the number of tasks the device has in the
 * graph, rounded up to a power of two, so a post never finds the ring full.
 *
 * Why not ck_ring: ck's loads, stores and fences are volatile accesses and
 * inline assembly that ThreadSanitizer cannot see, so every hand-off through
 * it would be reported as a race; the runtime must be TSan-clean. */
#ifndef BATON_ACTORS_MAILBOX_H
#define BATON_ACTORS_MAILBOX_H

#include <stdatomic.h>
#include <stdint.h>

struct bt__mail_slot {
  _Atomic uint64_t seq;
  int32_t task;
};

struct bt__mailbox {
  _Alignas(64) _Atomic uint64_t tail; /* next position to claim (posters) */
  /* Next position to take.  Written by the activation owning the actor
   * only (successive activations are ordered by the actor's scheduled
   * flag); atomic because an activation that just gave the actor up still
   * peeks at it (bt__mailbox_ready_sc). */
  _Alignas(64) _Atomic uint64_t head;
  uint64_t mask;
  struct bt__mail_slot *slots;
};

/* Posts a task.  Never fails: the ring holds every task of its device. */
static inline void
bt__mailbox_post_mpsc(struct bt__mailbox *mb, int32_t task)
{
  /* Relaxed: the claim only needs atomicity; the slot's seq publishes. */
  uint64_t pos = atomic_fetch_add_explicit(&mb->tail, 1, memory_order_relaxed);
  struct bt__mail_slot *s = &mb->slots[pos & mb->mask];

  /* The slot was freed a lap ago (acquire: the taker's read of task is
   * done); with capacity >= tasks per step this never waits. */
  while (atomic_load_explicit(&s->seq, memory_order_acquire) != pos)
    ;
  s->task = task;
  /* Seq_cst (a release for the taker, who then sees task and everything
   * the poster wrote before it): it must also be ordered before the
   * poster's seq_cst exchange of the actor's scheduled flag, against an
   * ending activation's seq_cst store of that flag and its seq_cst peek
   * here (Dekker's pattern), so a post is never stranded. */
  atomic_store_explicit(&s->seq, pos + 1, memory_order_seq_cst);
}

/* Takes the oldest task, or -1 when none is published yet. */
static inline int32_t
bt__mailbox_take_sc(struct bt__mailbox *mb)
{
  uint64_t pos = atomic_load_explicit(&mb->head, memory_order_relaxed);
  struct bt__mail_slot *s = &mb->slots[pos & mb->mask];
  int32_t task;

  /* Acquire: pairs with the poster's release store of seq. */
  if (atomic_load_explicit(&s->seq, memory_order_acquire) != pos + 1)
    return -1;
  task = s->task;
  atomic_store_explicit(&mb->head, pos + 1, memory_order_relaxed);
  /* Release: frees the slot for the poster one lap later. */
  atomic_store_explicit(&s->seq, pos + mb->mask + 1, memory_order_release);
  return task;
}

/* True when a task is published at the head.  Seq_cst: see the post. */
static inline int
bt__mailbox_ready_sc(struct bt__mailbox *mb)
{
  uint64_t pos = atomic_load_explicit(&mb->head, memory_order_relaxed);
  struct bt__mail_slot *s = &mb->slots[pos & mb->mask];

  return atomic_load_explicit(&s->seq, memory_order_seq_cst) == pos + 1;
}

#endif /* BATON_ACTORS_MAILBOX_H */
