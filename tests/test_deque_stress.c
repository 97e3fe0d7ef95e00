/* White-box tests of the Chase-Lev deque (actors/deque.h).
 *
 * Usage: test_deque_stress [threads [ops]] [test names...]
 *   threads  the owner plus thieves, >= 2 (default 4)
 *   ops      items pushed in all (default 10000000)
 *
 * The stress test starts every round's deque at capacity 4, so it grows
 * many times while thieves steal from it; every item must come out exactly
 * once (per-item counters), and nothing outside 0..ops-1 may come out. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>

#include "deque.h"
#include "test.h"


/* ---- single thread ------------------------------------------------------- */

TEST(deque_single_thread_order)
{
  struct bt__deque d;

  ASSERT_INT_EQ(bt__deque_init(&d, 2), BT_OK);
  EXPECT_INT_EQ(bt__deque_take_owner(&d), BT__DEQUE_EMPTY);
  EXPECT_INT_EQ(bt__deque_steal(&d), BT__DEQUE_EMPTY);
  EXPECT_TRUE(!bt__deque_nonempty_hint(&d));

  /* Owner: LIFO, through several growths (4 -> 128). */
  for (int64_t i = 0; i < 100; i++)
    ASSERT_INT_EQ(bt__deque_push_owner(&d, i), BT_OK);
  EXPECT_TRUE(bt__deque_nonempty_hint(&d));
  for (int64_t i = 99; i >= 0; i--)
    EXPECT_INT_EQ(bt__deque_take_owner(&d), i);
  EXPECT_INT_EQ(bt__deque_take_owner(&d), BT__DEQUE_EMPTY);
  EXPECT_INT_EQ(bt__deque_steal(&d), BT__DEQUE_EMPTY);

  /* Thief: FIFO, also across a growth with a wrapped range. */
  for (int64_t i = 0; i < 3; i++)
    ASSERT_INT_EQ(bt__deque_push_owner(&d, 1000 + i), BT_OK);
  for (int64_t i = 0; i < 3; i++)
    EXPECT_INT_EQ(bt__deque_steal(&d), 1000 + i);
  for (int64_t i = 0; i < 300; i++)
    ASSERT_INT_EQ(bt__deque_push_owner(&d, i), BT_OK);
  for (int64_t i = 0; i < 300; i++)
    EXPECT_INT_EQ(bt__deque_steal(&d), i);
  EXPECT_INT_EQ(bt__deque_steal(&d), BT__DEQUE_EMPTY);
  EXPECT_INT_EQ(bt__deque_take_owner(&d), BT__DEQUE_EMPTY);

  /* Both ends at once: steal takes the oldest, take the newest, and the
   * last item goes to exactly one of them. */
  for (int64_t i = 0; i < 5; i++)
    ASSERT_INT_EQ(bt__deque_push_owner(&d, i), BT_OK);
  EXPECT_INT_EQ(bt__deque_steal(&d), 0);
  EXPECT_INT_EQ(bt__deque_take_owner(&d), 4);
  EXPECT_INT_EQ(bt__deque_steal(&d), 1);
  EXPECT_INT_EQ(bt__deque_take_owner(&d), 3);
  EXPECT_INT_EQ(bt__deque_take_owner(&d), 2);
  EXPECT_INT_EQ(bt__deque_take_owner(&d), BT__DEQUE_EMPTY);
  EXPECT_INT_EQ(bt__deque_steal(&d), BT__DEQUE_EMPTY);
  /* Empty take restores bottom: the deque still works. */
  ASSERT_INT_EQ(bt__deque_push_owner(&d, 7), BT_OK);
  EXPECT_INT_EQ(bt__deque_steal(&d), 7);
  EXPECT_INT_EQ(bt__deque_take_owner(&d), BT__DEQUE_EMPTY);
  bt__deque_destroy(&d);
}

/* ---- stress -------------------------------------------------------------- */

struct stress {
  int nthieves;
  int64_t ops, rounds;
  struct bt__deque deque; /* re-initialised by the owner every round */
  pthread_barrier_t barrier;
  /* Set (release) by the owner once this round's deque is empty for good;
   * thieves leave the round when they see it (acquire). */
  _Atomic int round_done;
  _Atomic uint8_t *count; /* [ops]: times each item came out */
  _Atomic int64_t bad;    /* items outside 0..ops-1 or unknown codes */
  _Atomic int64_t stolen, aborts;
};

static void
got_item(struct stress *s, int64_t x)
{
  if (x < 0 || x >= s->ops) {
    if (atomic_fetch_add_explicit(&s->bad, 1, memory_order_relaxed) < 5)
      fprintf(stderr, "  deque gave an invented item %lld\n", (long long)x);
    return;
  }
  /* Relaxed: only the final totals matter, read after the joins. */
  atomic_fetch_add_explicit(&s->count[x], 1, memory_order_relaxed);
}

static void *
thief(void *arg)
{
  struct stress *s = arg;
  int64_t stolen = 0, aborts = 0, empty = 0;

  for (int64_t r = 0; r < s->rounds; r++) {
    pthread_barrier_wait(&s->barrier); /* the round's deque is ready */
    for (;;) {
      int64_t x = bt__deque_steal(&s->deque);
      if (x >= 0) {
        got_item(s, x);
        stolen++;
      } else if (x == BT__DEQUE_ABORT) {
        aborts++;
      } else if (x == BT__DEQUE_EMPTY) {
        if (atomic_load_explicit(&s->round_done, memory_order_acquire))
          break;
        /* More threads than cores: let the owner run now and then. */
        if (++empty % 1024 == 0)
          sched_yield();
      } else {
        got_item(s, x); /* counted as invented */
      }
    }
    pthread_barrier_wait(&s->barrier); /* everyone left the deque */
  }
  atomic_fetch_add_explicit(&s->stolen, stolen, memory_order_relaxed);
  atomic_fetch_add_explicit(&s->aborts, aborts, memory_order_relaxed);
  return NULL;
}

static uint64_t
rng_next(uint64_t *x)
{
  /* xorshift64* */
  *x ^= *x >> 12;
  *x ^= *x << 25;
  *x ^= *x >> 27;
  return *x * 2685821657736338717ull;
}

/* A burst length, log-uniform in 1..4096 so that the deque often holds
 * thousands of items (growth to 4096) and often only a few (races on the
 * last item). */
static int64_t
burst(uint64_t *rng)
{
  int k = (int)(rng_next(rng) % 13);

  return 1 + (int64_t)(rng_next(rng) % ((uint64_t)1 << k));
}

static void
take_some(struct stress *s, int64_t n)
{
  for (int64_t i = 0; i < n; i++) {
    int64_t x = bt__deque_take_owner(&s->deque);
    if (x == BT__DEQUE_EMPTY)
      return;
    got_item(s, x);
  }
}

TEST(deque_stress_owner_and_thieves)
{
  struct stress s;
  pthread_t *th;
  int64_t next = 0, per_round, missing = 0, twice = 0, grows = 0;
  uint64_t rng = 0x9e3779b97f4a7c15ull;

  ASSERT_TRUE(test_arg(0, 4) >= 2 && test_arg(1, 10000000) >= 1);
  memset(&s, 0, sizeof s);
  s.nthieves = (int)test_arg(0, 4) - 1;
  s.ops = test_arg(1, 10000000);
  /* A round per 16384 items, each starting from capacity 4 again: the
   * deque grows about ten times per round (to hold 4096-item bursts). */
  s.rounds = s.ops / 16384 < 1 ? 1 : s.ops / 16384;
  per_round = (s.ops + s.rounds - 1) / s.rounds;
  s.count = calloc((size_t)s.ops, sizeof *s.count);
  th = calloc((size_t)s.nthieves, sizeof *th);
  ASSERT_TRUE(s.count != NULL && th != NULL);
  pthread_barrier_init(&s.barrier, NULL, (unsigned)test_arg(0, 4));
  for (int i = 0; i < s.nthieves; i++)
    ASSERT_INT_EQ(pthread_create(&th[i], NULL, thief, &s), 0);

  for (int64_t r = 0; r < s.rounds; r++) {
    int64_t end = next + per_round < s.ops ? next + per_round : s.ops;
    if (bt__deque_init(&s.deque, 2) != BT_OK) {
      test_fail(__FILE__, __LINE__, "bt__deque_init failed");
      abort(); /* the thieves wait at the barrier */
    }
    atomic_store_explicit(&s.round_done, 0, memory_order_relaxed);
    pthread_barrier_wait(&s.barrier);
    while (next < end) {
      int64_t n = burst(&rng);
      for (int64_t i = 0; i < n && next < end; i++)
        if (bt__deque_push_owner(&s.deque, next++) != BT_OK) {
          test_fail(__FILE__, __LINE__, "push failed (out of memory)");
          abort();
        }
      /* Take back, on average, a bit less than was pushed. */
      if (rng_next(&rng) % 4 != 0)
        take_some(&s, burst(&rng));
    }
    /* Drain: EMPTY from the owner means every item left was claimed. */
    for (;;) {
      int64_t x = bt__deque_take_owner(&s.deque);
      if (x == BT__DEQUE_EMPTY)
        break;
      got_item(&s, x);
    }
    atomic_store_explicit(&s.round_done, 1, memory_order_release);
    pthread_barrier_wait(&s.barrier);
    /* Every growth kept the old buffer (until destroy): count them. */
    for (struct bt__deque_buf *b = atomic_load(&s.deque.buf)->older; b;
         b = b->older)
      grows++;
    bt__deque_destroy(&s.deque);
  }
  for (int i = 0; i < s.nthieves; i++)
    pthread_join(th[i], NULL);
  pthread_barrier_destroy(&s.barrier);

  for (int64_t i = 0; i < s.ops; i++) {
    unsigned c = atomic_load_explicit(&s.count[i], memory_order_relaxed);
    if (c == 0)
      missing++;
    else if (c > 1)
      twice++;
    if (c != 1 && missing + twice <= 5)
      fprintf(stderr, "  item %lld came out %u times\n", (long long)i, c);
  }
  EXPECT_INT_EQ(missing, 0);
  EXPECT_INT_EQ(twice, 0);
  EXPECT_INT_EQ(atomic_load(&s.bad), 0);
  /* Bursts reach 4096 items in most rounds: growth from 4 happened. */
  EXPECT_TRUE(s.ops < 100000 || grows >= s.rounds);
  printf("  %ld threads, %lld items in %lld rounds: %lld growths, %lld "
         "stolen, %lld aborted steals\n",
         test_arg(0, 4), (long long)s.ops, (long long)s.rounds, (long long)grows,
         (long long)atomic_load(&s.stolen), (long long)atomic_load(&s.aborts));
  free(s.count);
  free(th);
}
