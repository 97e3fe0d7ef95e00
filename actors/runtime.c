/* The runtime: device actors, the work-stealing pool, executing task graphs.
 *
 * A task becomes ready when the last of its predecessors finishes (an
 * atomic decrement of its pending count reaches zero); it is then posted to
 * its device actor's mailbox.  An actor whose mailbox gets work while idle
 * is scheduled: in POOL mode its id is pushed on the posting thread's
 * work-stealing deque and any pool thread runs it; in DEDICATED mode its
 * own thread is woken.  One activation of an actor at a time drains its
 * mailbox in order.
 *
 * Counters need no reset pass: a task that becomes ready puts its pending
 * count back to its predecessor count, and every task becomes ready exactly
 * once per step (even after an error, when the rest of the graph is drained
 * without running callbacks).
 *
 * A step ends when every sink (task without successors) has finished;
 * bt_exec_run then waits until every activation scheduled during the step
 * has ended (per-thread pushed/finished counters, so no shared counter is
 * touched per task), after which no thread touches the exec. */
#define _GNU_SOURCE /* pthread_setname_np, PR_SET_TIMERSLACK */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#ifdef BATON_HAVE_JEMALLOC
#include <jemalloc/jemalloc.h>
#endif

#include "baton/runtime.h"
#include "deque.h"
#include "evcount.h"
#include "mailbox.h"
#include "error.h"
#include "graph_internal.h"

#define TASK_ERR_MAX 512

struct bt_actor {
  /* 1 while an activation is scheduled or running.  Exchanged by posters,
   * cleared by the activation that drains the mailbox. */
  _Alignas(64) _Atomic int scheduled;
  struct bt_runtime *rt;
  int32_t index;
  char name[48];
  const bt_device_ops_t *ops;
  void *ctx;
  unsigned arena;
  int has_arena;
  /* DEDICATED mode: the actor's own thread sleeps here. */
  struct bt__ec ec;
  struct worker *self;
};

/* A thread that runs activations: the caller of bt_exec_run (slot 0), pool
 * threads, or dedicated actor threads. */
struct worker {
  _Alignas(64) struct bt__deque deque; /* POOL mode */
  /* Activations this thread scheduled / finished during the current step;
   * written only by this thread, read by the caller at the step's end. */
  _Alignas(64) _Atomic uint64_t pushed;
  _Atomic uint64_t finished;
  struct bt_runtime *rt;
  struct bt_actor *actor; /* DEDICATED: the actor this thread runs */
  pthread_t thread;
  int started;
  uint32_t rng;
  int32_t index;
  /* POOL: an actor this thread scheduled while running another one, kept
   * out of the deque to run right after the current activation if that one
   * ends first (task bypass: a chain of hand-offs stays on one thread, its
   * data in this core's cache).  -1 when empty; owner only. */
  int32_t bypass;
  /* POOL: the last activation ended in a retry; look for work at the old
   * end of the deque first, so the retrying actor goes behind the others
   * (the owner's end would hand it straight back).  Owner only. */
  int retried;
};

struct bt_runtime {
  int32_t ndev;
  struct bt_actor *actors;
  int mode;
  int32_t nworkers; /* POOL: threads (slot 0 = caller); DEDICATED: 1 + ndev */
  struct worker *workers;
  int64_t spin_ns;
  struct bt__ec pool_ec; /* idle pool threads, and the waiting caller */
  _Atomic(struct bt_exec *) current;
  _Atomic int stop;
  _Atomic int running;
  _Atomic int32_t execs;
};

struct bt_exec {
  bt_runtime_t *rt;
  int32_t ntasks;
  int32_t *device, *npred, *succ_first, *succ, *pred_first, *pred;
  _Atomic int32_t *pending;
  bt_action_t *actions; /* NULL for a DAG without actions */
  char **names;         /* NULL, or [ntasks] (entries may be NULL) */
  int32_t *roots, nroots, nsinks;
  struct bt__mailbox *mail; /* [ndev] */
  bt_task_fn fn;
  void *user;
  int trace;
  uint64_t *t_start, *t_end; /* ns, CLOCK_MONOTONIC */
  uint64_t t0, t1;
  uint64_t step;
  _Alignas(64) _Atomic int32_t sinks_left;
  _Atomic int done;
  _Atomic int abort;
  _Atomic int32_t err_task;
  int err_status;
  char err_msg[BT_ERROR_MESSAGE_MAX];
  _Atomic int running;
};

static _Thread_local struct worker *tls_worker;

static uint64_t
now_ns(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline void
cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

/* ---- scheduling ---------------------------------------------------------- */

/* The calling thread's count of activations it scheduled: single writer,
 * so plain load + store; relaxed because the hand-off that follows (the
 * scheduled exchange, a deque push) publishes it. */
static inline void
count_pushed(struct worker *w, int delta)
{
  atomic_store_explicit(
      &w->pushed,
      atomic_load_explicit(&w->pushed, memory_order_relaxed) + (uint64_t)delta,
      memory_order_relaxed);
}

/* Publishes a scheduled actor on the thread's deque for any pool thread. */
static void
push_actor(bt_runtime_t *rt, struct worker *w, int32_t actor)
{
  /* An actor sits in at most one deque (or bypass slot) at a time and the
   * deques start with room for every actor, so this never grows (never
   * fails). */
  (void)bt__deque_push_owner(&w->deque, actor);
  bt__ec_notify(&rt->pool_ec, 0);
}

static void
make_ready(struct bt_exec *e, int32_t task)
{
  struct bt_actor *a = &e->rt->actors[e->device[task]];
  struct worker *w = tls_worker;

  bt__mailbox_post_mpsc(&e->mail[a->index], task);
  /* Counted before the exchange that may start an activation, so whoever
   * sees the activation also sees the count (bt_exec_run's quiescence
   * check relies on it); taken back if no activation was started. */
  count_pushed(w, 1);
  /* Seq_cst: after the post's seq_cst publication, against the ending
   * activation's seq_cst clear and peek (see run_activation). */
  if (atomic_exchange_explicit(&a->scheduled, 1, memory_order_seq_cst) != 0) {
    count_pushed(w, -1);
    return;
  }
  if (e->rt->mode != BT_RUNTIME_POOL) {
    bt__ec_notify(&a->ec, 1);
    return;
  }
  if (w->bypass < 0) {
    w->bypass = a->index;
    return;
  }
  push_actor(e->rt, w, a->index);
}

static void
task_name(const struct bt_exec *e, int32_t t, char *buf, size_t n)
{
  if (e->names != NULL && e->names[t] != NULL)
    snprintf(buf, n, "%s", e->names[t]);
  else if (e->actions != NULL && e->actions[t].kind != BT_ACT_IDLE)
    bt_action_format(e->actions[t], buf, n);
  else
    snprintf(buf, n, "task %d", (int)t);
}

static void
record_error(struct bt_exec *e, struct bt_actor *a, int32_t t, int status,
             const char *msg)
{
  int32_t none = -1;
  char name[64];

  /* The first failure wins; later ones (tasks already in flight) are
   * dropped.  Acq_rel: the winner alone writes err_status/err_msg, read by
   * the caller after the step's end. */
  if (!atomic_compare_exchange_strong_explicit(&e->err_task, &none, t,
                                               memory_order_acq_rel,
                                               memory_order_relaxed))
    return;
  task_name(e, t, name, sizeof name);
  e->err_status = status;
  snprintf(e->err_msg, sizeof e->err_msg, "%s on %s: %s", name, a->name,
           msg[0] ? msg : "(the task gave no message)");
  /* Relaxed: abort only stops further callbacks; correctness of the drain
   * does not depend on when other threads see it. */
  atomic_store_explicit(&e->abort, 1, memory_order_relaxed);
}

static int
cpu_execute(const bt_task_call_t *call, bt_task_fn fn, char *errbuf,
            size_t errlen)
{
  return fn(call, errbuf, errlen);
}

static int
call_device(struct bt_exec *e, struct bt_actor *a, int32_t t, char *errbuf)
{
  bt_task_call_t call;
  int rc = 0;

  call.task = t;
  if (e->actions != NULL) {
    call.action = e->actions[t];
  } else {
    call.action.stage = call.action.microbatch = -1;
    call.action.kind = BT_ACT_IDLE;
  }
  call.device = a->index;
  call.step = e->step;
  call.device_ctx = a->ctx;
  call.user = e->user;
  call.actor = a;
  if (a->ops == NULL)
    return cpu_execute(&call, e->fn, errbuf, TASK_ERR_MAX);
  for (int32_t j = e->pred_first[t];
       a->ops->wait_dependency != NULL && j < e->pred_first[t + 1] && rc == 0;
       j++) {
    int32_t p = e->pred[j];
    if (e->device[p] != a->index)
      rc = a->ops->wait_dependency(&call, p, e->device[p], errbuf,
                                   TASK_ERR_MAX);
  }
  if (rc == 0)
    rc = a->ops->execute(&call, e->fn, errbuf, TASK_ERR_MAX);
  if (rc == 0 && a->ops->record_completion != NULL)
    rc = a->ops->record_completion(&call, errbuf, TASK_ERR_MAX);
  return rc;
}

/* Runs task t (or, after an error, skips it) and releases its successors.
 * Returns 1 when the task asked to be retried (BT_TASK_RETRY): it is back
 * in the actor's mailbox and nothing was released. */
static int
run_task(struct bt_exec *e, struct bt_actor *a, int32_t t)
{
  if (!atomic_load_explicit(&e->abort, memory_order_relaxed)) {
    char errbuf[TASK_ERR_MAX];
    int rc;
    errbuf[0] = '\0';
    if (e->trace)
      e->t_start[t] = now_ns();
    rc = call_device(e, a, t, errbuf);
    if (e->trace)
      e->t_end[t] = now_ns();
    if (rc == BT_TASK_RETRY) {
      /* The mailbox has room: t was taken from it. */
      bt__mailbox_post_mpsc(&e->mail[a->index], t);
      return 1;
    }
    if (rc != 0) {
      errbuf[TASK_ERR_MAX - 1] = '\0';
      record_error(e, a, t, rc, errbuf);
    }
  } else if (e->trace) {
    e->t_start[t] = e->t_end[t] = 0;
  }
  for (int32_t j = e->succ_first[t]; j < e->succ_first[t + 1]; j++) {
    int32_t u = e->succ[j];
    /* Acq_rel: the last decrement acquires every predecessor's writes
     * (released by their own decrements) before u runs. */
    if (atomic_fetch_sub_explicit(&e->pending[u], 1, memory_order_acq_rel) ==
        1) {
      /* Nobody else touches u's count until the next step. */
      atomic_store_explicit(&e->pending[u], e->npred[u], memory_order_relaxed);
      make_ready(e, u);
    }
  }
  if (e->succ_first[t] == e->succ_first[t + 1] &&
      atomic_fetch_sub_explicit(&e->sinks_left, 1, memory_order_acq_rel) == 1) {
    /* Release: the caller that acquires done sees the whole step. */
    atomic_store_explicit(&e->done, 1, memory_order_release);
    bt__ec_notify(&e->rt->pool_ec, 1);
  }
  return 0;
}

/* Drains an actor's mailbox.  The caller owns the activation (scheduled
 * is 1 and no other thread runs this actor). */
static void
run_activation(struct bt_exec *e, struct bt_actor *a, struct worker *w)
{
  struct bt__mailbox *mb = &e->mail[a->index];

  for (;;) {
    int32_t t = bt__mailbox_take_sc(mb);
    if (t >= 0) {
      /* More work here: the bypassed actor must not wait behind it. */
      if (w->bypass >= 0) {
        push_actor(e->rt, w, w->bypass);
        w->bypass = -1;
      }
      if (run_task(e, a, t)) {
        /* A retry: give the thread to other actors.  The actor stays
         * scheduled (its mailbox holds the task): in the pool it goes
         * back on a deque as a new activation; a dedicated thread comes
         * straight back. */
        count_pushed(w, 1);
        if (e->rt->mode == BT_RUNTIME_POOL) {
          push_actor(e->rt, w, a->index);
          w->retried = 1;
        }
        break;
      }
      continue;
    }
    /* Seq_cst clear, then a seq_cst peek: a poster either sees 0 and
     * schedules a new activation, or its post is seen here. */
    atomic_store_explicit(&a->scheduled, 0, memory_order_seq_cst);
    if (!bt__mailbox_ready_sc(mb) ||
        atomic_exchange_explicit(&a->scheduled, 1, memory_order_seq_cst) != 0)
      break;
  }
  /* Release: the caller's quiescence check acquires this after the step;
   * this is the activation's last access to the exec. */
  atomic_store_explicit(
      &w->finished,
      atomic_load_explicit(&w->finished, memory_order_relaxed) + 1,
      memory_order_release);
}

/* ---- pool threads -------------------------------------------------------- */

static int64_t
find_work(bt_runtime_t *rt, struct worker *w)
{
  int64_t x;

  if (w->retried) {
    w->retried = 0;
    x = bt__deque_steal(&w->deque);
    if (x >= 0)
      return x;
  }
  x = bt__deque_take_owner(&w->deque);

  if (x >= 0)
    return x;
  for (int round = 0; round < 2; round++) {
    uint32_t start;
    w->rng = w->rng * 1664525u + 1013904223u;
    start = w->rng % (uint32_t)rt->nworkers;
    for (int32_t i = 0; i < rt->nworkers; i++) {
      struct worker *v = &rt->workers[(start + (uint32_t)i) % rt->nworkers];
      if (v == w)
        continue;
      x = bt__deque_steal(&v->deque);
      if (x >= 0)
        return x;
    }
  }
  return BT__DEQUE_EMPTY;
}

static int
any_work(bt_runtime_t *rt)
{
  for (int32_t i = 0; i < rt->nworkers; i++)
    if (bt__deque_nonempty_hint(&rt->workers[i].deque))
      return 1;
  return 0;
}

static void
run_popped(bt_runtime_t *rt, struct worker *w, int64_t actor)
{
  /* Acquire: the exec was published before any of its actors was pushed. */
  struct bt_exec *e = atomic_load_explicit(&rt->current, memory_order_acquire);

  run_activation(e, &rt->actors[actor], w);
  while (w->bypass >= 0) {
    int32_t next = w->bypass;
    w->bypass = -1;
    run_activation(e, &rt->actors[next], w);
  }
}

/* Runs actors until `until` (if not NULL) becomes non-zero, or the runtime
 * stops.  Idle: spin for spin_ns, then sleep on the pool's event count. */
static void
pool_loop(bt_runtime_t *rt, struct worker *w, _Atomic int *until)
{
  for (;;) {
    int64_t x = w->bypass >= 0 ? w->bypass : find_work(rt, w);
    uint64_t idle_since;
    w->bypass = -1;
    if (x >= 0) {
      run_popped(rt, w, x);
      continue;
    }
    idle_since = rt->spin_ns > 0 ? now_ns() : 0;
    for (;;) {
      if (atomic_load_explicit(&rt->stop, memory_order_acquire) ||
          (until && atomic_load_explicit(until, memory_order_acquire)))
        return;
      if (any_work(rt))
        break;
      if (rt->spin_ns > 0 && now_ns() - idle_since < (uint64_t)rt->spin_ns) {
        for (int i = 0; i < 64; i++)
          cpu_relax();
        continue;
      }
      {
        uint32_t key = bt__ec_prepare(&rt->pool_ec);
        if (atomic_load_explicit(&rt->stop, memory_order_acquire) ||
            (until && atomic_load_explicit(until, memory_order_acquire)) ||
            any_work(rt)) {
          bt__ec_cancel(&rt->pool_ec);
          break;
        }
        bt__ec_wait(&rt->pool_ec, key);
      }
      idle_since = rt->spin_ns > 0 ? now_ns() : 0;
    }
  }
}

static void *
pool_thread(void *arg)
{
  struct worker *w = arg;

  tls_worker = w;
  /* As for actor threads: tasks that sleep to deadlines are not stretched
   * by the default 50 us timer slack. */
  prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
  pool_loop(w->rt, w, NULL);
  return NULL;
}

/* DEDICATED mode: the actor's own thread. */
static void *
actor_thread(void *arg)
{
  struct worker *w = arg;
  struct bt_actor *a = w->actor;
  bt_runtime_t *rt = w->rt;

  tls_worker = w;
  /* Sleeps to absolute deadlines (synthetic tasks) should not be stretched
   * by the default 50 us timer slack. */
  prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
  for (;;) {
    uint64_t idle_since = rt->spin_ns > 0 ? now_ns() : 0;
    while (!atomic_load_explicit(&a->scheduled, memory_order_acquire)) {
      if (atomic_load_explicit(&rt->stop, memory_order_acquire))
        return NULL;
      if (rt->spin_ns > 0 && now_ns() - idle_since < (uint64_t)rt->spin_ns) {
        cpu_relax();
        continue;
      }
      {
        uint32_t key = bt__ec_prepare(&a->ec);
        if (atomic_load_explicit(&a->scheduled, memory_order_seq_cst) ||
            atomic_load_explicit(&rt->stop, memory_order_acquire))
          bt__ec_cancel(&a->ec);
        else
          bt__ec_wait(&a->ec, key);
      }
    }
    {
      struct bt_exec *e =
          atomic_load_explicit(&rt->current, memory_order_acquire);
      run_activation(e, a, w);
    }
  }
}

/* ---- runtime ------------------------------------------------------------- */

static void
stop_threads(bt_runtime_t *rt)
{
  atomic_store_explicit(&rt->stop, 1, memory_order_release);
  bt__ec_notify(&rt->pool_ec, 1);
  for (int32_t i = 0; i < rt->ndev; i++)
    bt__ec_notify(&rt->actors[i].ec, 1);
  for (int32_t i = 0; i < rt->nworkers; i++)
    if (rt->workers[i].started)
      pthread_join(rt->workers[i].thread, NULL);
}

static void
runtime_free(bt_runtime_t *rt)
{
  if (rt == NULL)
    return;
  for (int32_t i = 0; rt->workers != NULL && i < rt->nworkers; i++)
    bt__deque_destroy(&rt->workers[i].deque);
  free(rt->workers);
  free(rt->actors);
  free(rt);
}

static void
setup_arena(struct bt_actor *a)
{
#ifdef BATON_HAVE_JEMALLOC
  size_t sz = sizeof a->arena;
  /* One arena per actor keeps its buffers off the other actors' lists. */
  a->has_arena = mallctl("arenas.create", &a->arena, &sz, NULL, 0) == 0;
#else
  a->has_arena = 0;
#endif
}

static bt_status
start_threads(bt_runtime_t *rt, bt_error_t *err)
{
  for (int32_t i = 1; i < rt->nworkers; i++) {
    struct worker *w = &rt->workers[i];
    int rc = pthread_create(&w->thread, NULL,
                            rt->mode == BT_RUNTIME_POOL ? pool_thread
                                                        : actor_thread,
                            w);
    if (rc != 0)
      return bt__errorf(err, BT_EIO,
                        "cannot start runtime thread %d: %s; lower threads "
                        "or devices",
                        (int)i, strerror(rc));
    w->started = 1;
    {
      char name[16]; /* the kernel's limit, NUL included */
      snprintf(name, sizeof name, "bt-%s%d",
               rt->mode == BT_RUNTIME_POOL ? "pool" : "dev",
               (int)(i % 100000));
      pthread_setname_np(w->thread, name);
    }
  }
  return BT_OK;
}

bt_status
bt_runtime_create(const bt_runtime_config_t *cfg, bt_runtime_t **out,
                  bt_error_t *err)
{
  bt_runtime_t *rt;
  int32_t threads;
  int log2 = 4;
  bt_status rc;

  if (out == NULL || cfg == NULL || cfg->size < sizeof(bt_runtime_config_t))
    return bt__errorf(err, BT_EINVAL, "bt_runtime_create needs a config "
                      "(BT_RUNTIME_CONFIG_INIT) and an out pointer");
  if (cfg->devices < 1 || cfg->threads < 0 ||
      (cfg->mode != BT_RUNTIME_POOL && cfg->mode != BT_RUNTIME_DEDICATED))
    return bt__errorf(err, BT_EINVAL,
                      "runtime needs devices >= 1, threads >= 0 and a mode "
                      "(got devices=%d, threads=%d, mode=%d)",
                      (int)cfg->devices, (int)cfg->threads, (int)cfg->mode);
  for (int32_t i = 0; cfg->device != NULL && i < cfg->devices; i++) {
    const bt_device_ops_t *ops = cfg->device[i].ops;
    if (ops != NULL && (ops->size < sizeof(bt_device_ops_t) ||
                        ops->execute == NULL))
      return bt__errorf(err, BT_EINVAL,
                        "device %d: ops need size = sizeof(bt_device_ops_t) "
                        "and an execute hook",
                        (int)i);
  }
  threads = cfg->threads;
  if (threads == 0) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    threads = n > 0 ? (int32_t)n : 1;
  }
  rt = calloc(1, sizeof *rt);
  if (rt == NULL)
    return bt__errorf(err, BT_ENOMEM, "out of memory creating the runtime");
  rt->ndev = cfg->devices;
  rt->mode = cfg->mode;
  rt->nworkers = cfg->mode == BT_RUNTIME_POOL ? threads : 1 + cfg->devices;
  rt->spin_ns = cfg->spin_us < 0 ? 0
                                 : 1000 * (int64_t)(cfg->spin_us ? cfg->spin_us
                                                                 : 50);
  bt__ec_init(&rt->pool_ec);
  rt->actors = aligned_alloc(64, (size_t)rt->ndev * sizeof *rt->actors);
  rt->workers = aligned_alloc(64, (size_t)rt->nworkers * sizeof *rt->workers);
  if (rt->actors == NULL || rt->workers == NULL) {
    free(rt->actors);
    free(rt->workers);
    free(rt);
    return bt__errorf(err, BT_ENOMEM, "out of memory creating the runtime");
  }
  memset(rt->actors, 0, (size_t)rt->ndev * sizeof *rt->actors);
  memset(rt->workers, 0, (size_t)rt->nworkers * sizeof *rt->workers);
  while ((1 << log2) < rt->ndev)
    log2++;
  for (int32_t i = 0; i < rt->nworkers; i++) {
    struct worker *w = &rt->workers[i];
    w->rt = rt;
    w->index = i;
    w->bypass = -1;
    w->rng = 2654435761u * (uint32_t)(i + 1);
    if (bt__deque_init(&w->deque, log2) != BT_OK) {
      for (int32_t j = 0; j < i; j++)
        bt__deque_destroy(&rt->workers[j].deque);
      rt->nworkers = 0;
      runtime_free(rt);
      return bt__errorf(err, BT_ENOMEM, "out of memory creating the runtime");
    }
  }
  for (int32_t i = 0; i < rt->ndev; i++) {
    struct bt_actor *a = &rt->actors[i];
    const bt_device_desc_t *d = cfg->device ? &cfg->device[i] : NULL;
    a->rt = rt;
    a->index = i;
    a->ops = d ? d->ops : NULL;
    a->ctx = d ? d->ctx : NULL;
    if (d && d->name)
      snprintf(a->name, sizeof a->name, "%s", d->name);
    else
      snprintf(a->name, sizeof a->name, "cpu:%d", (int)i);
    bt__ec_init(&a->ec);
    setup_arena(a);
    if (rt->mode == BT_RUNTIME_DEDICATED) {
      a->self = &rt->workers[1 + i];
      rt->workers[1 + i].actor = a;
    }
  }
  rc = start_threads(rt, err);
  if (rc != BT_OK) {
    stop_threads(rt);
    runtime_free(rt);
    return rc;
  }
  *out = rt;
  return BT_OK;
}

bt_status
bt_runtime_destroy(bt_runtime_t *rt)
{
  if (rt == NULL)
    return BT_OK;
  if (atomic_load_explicit(&rt->running, memory_order_acquire) ||
      atomic_load_explicit(&rt->execs, memory_order_acquire) > 0)
    return BT_EBUSY;
  stop_threads(rt);
  runtime_free(rt);
  return BT_OK;
}

int32_t
bt_runtime_devices(const bt_runtime_t *rt)
{
  return rt->ndev;
}

const char *
bt_runtime_device_name(const bt_runtime_t *rt, int32_t device)
{
  if (device < 0 || device >= rt->ndev)
    return NULL;
  return rt->actors[device].name;
}

/* ---- execs --------------------------------------------------------------- */

static void
exec_free(struct bt_exec *e)
{
  if (e == NULL)
    return;
  for (int32_t d = 0; e->mail != NULL && d < e->rt->ndev; d++)
    free(e->mail[d].slots);
  free(e->mail);
  free(e->device);
  free(e->npred);
  free(e->succ_first);
  free(e->succ);
  free(e->pred_first);
  free(e->pred);
  free((void *)(uintptr_t)e->pending);
  free(e->actions);
  for (int32_t t = 0; e->names != NULL && t < e->ntasks; t++)
    free(e->names[t]);
  free(e->names);
  free(e->roots);
  free(e->t_start);
  free(e->t_end);
  free(e);
}

/* Fills everything derived from device/succ/pred arrays: counts, roots,
 * sinks, mailboxes.  BT_ENOMEM. */
static bt_status
exec_finish(struct bt_exec *e)
{
  int32_t ndev = e->rt->ndev, *per_dev = calloc((size_t)ndev, sizeof *per_dev);
  size_t n = (size_t)e->ntasks;

  e->npred = malloc((n + 1) * sizeof *e->npred);
  e->pending = malloc((n + 1) * sizeof *e->pending);
  e->roots = malloc((n + 1) * sizeof *e->roots);
  e->mail = calloc((size_t)ndev, sizeof *e->mail);
  if (per_dev == NULL || !e->npred || !e->pending || !e->roots || !e->mail) {
    free(per_dev);
    return BT_ENOMEM;
  }
  for (int32_t t = 0; t < e->ntasks; t++) {
    e->npred[t] = e->pred_first[t + 1] - e->pred_first[t];
    atomic_init(&e->pending[t], e->npred[t]);
    if (e->npred[t] == 0)
      e->roots[e->nroots++] = t;
    if (e->succ_first[t] == e->succ_first[t + 1])
      e->nsinks++;
    per_dev[e->device[t]]++;
  }
  for (int32_t d = 0; d < ndev; d++) {
    uint64_t cap = 2;
    while (cap < (uint64_t)per_dev[d])
      cap *= 2;
    e->mail[d].mask = cap - 1;
    atomic_init(&e->mail[d].tail, 0);
    atomic_init(&e->mail[d].head, 0);
    e->mail[d].slots = malloc(cap * sizeof *e->mail[d].slots);
    if (e->mail[d].slots == NULL) {
      free(per_dev);
      return BT_ENOMEM;
    }
    for (uint64_t i = 0; i < cap; i++)
      atomic_init(&e->mail[d].slots[i].seq, i);
  }
  free(per_dev);
  if (e->trace) {
    e->t_start = calloc(n + 1, sizeof *e->t_start);
    e->t_end = calloc(n + 1, sizeof *e->t_end);
    if (e->t_start == NULL || e->t_end == NULL)
      return BT_ENOMEM;
  }
  atomic_init(&e->sinks_left, 0);
  atomic_init(&e->done, 0);
  atomic_init(&e->abort, 0);
  atomic_init(&e->err_task, -1);
  atomic_init(&e->running, 0);
  return BT_OK;
}

static struct bt_exec *
exec_new(bt_runtime_t *rt, const bt_exec_config_t *cfg, int32_t ntasks)
{
  struct bt_exec *e = aligned_alloc(64, (sizeof(struct bt_exec) + 63) / 64 * 64);

  if (e == NULL)
    return NULL;
  memset(e, 0, sizeof *e);
  e->rt = rt;
  e->ntasks = ntasks;
  e->fn = cfg->fn;
  e->user = cfg->user;
  e->trace = cfg->trace;
  return e;
}

static bt_status
check_exec_args(bt_runtime_t *rt, const bt_exec_config_t *cfg,
                bt_exec_t **out, bt_error_t *err)
{
  if (rt == NULL || out == NULL || cfg == NULL ||
      cfg->size < sizeof(bt_exec_config_t) || cfg->fn == NULL)
    return bt__errorf(err, BT_EINVAL, "an exec needs a runtime, an out "
                      "pointer and a config (BT_EXEC_CONFIG_INIT) with a "
                      "task function");
  return BT_OK;
}

static bt_status
exec_publish(bt_runtime_t *rt, struct bt_exec *e, bt_exec_t **out,
             bt_error_t *err)
{
  if (exec_finish(e) != BT_OK) {
    exec_free(e);
    return bt__errorf(err, BT_ENOMEM, "out of memory instantiating the "
                      "graph");
  }
  atomic_fetch_add_explicit(&rt->execs, 1, memory_order_relaxed);
  *out = e;
  return BT_OK;
}

bt_status
bt_exec_create(bt_runtime_t *rt, const bt_graph_t *g,
               const bt_exec_config_t *cfg, bt_exec_t **out, bt_error_t *err)
{
  struct bt_exec *e;
  size_t n, m;
  bt_status rc = check_exec_args(rt, cfg, out, err);

  if (rc != BT_OK)
    return rc;
  if (g == NULL)
    return bt__errorf(err, BT_EINVAL, "bt_exec_create: NULL graph");
  if (g->devices > rt->ndev)
    return bt__errorf(err, BT_EINVAL,
                      "the graph uses %d devices but the runtime has %d; "
                      "create the runtime with devices >= %d",
                      (int)g->devices, (int)rt->ndev, (int)g->devices);
  e = exec_new(rt, cfg, g->ntasks);
  if (e == NULL)
    return bt__errorf(err, BT_ENOMEM, "out of memory instantiating");
  n = (size_t)g->ntasks;
  m = g->nedges;
  e->device = malloc((n + 1) * sizeof *e->device);
  e->actions = malloc((n + 1) * sizeof *e->actions);
  e->succ_first = malloc((n + 1) * sizeof *e->succ_first);
  e->pred_first = malloc((n + 1) * sizeof *e->pred_first);
  e->succ = malloc((m + 1) * sizeof *e->succ);
  e->pred = malloc((m + 1) * sizeof *e->pred);
  if (!e->device || !e->actions || !e->succ_first || !e->pred_first ||
      !e->succ || !e->pred) {
    exec_free(e);
    return bt__errorf(err, BT_ENOMEM, "out of memory instantiating");
  }
  for (size_t t = 0; t < n; t++) {
    e->device[t] = g->tasks[t].device;
    e->actions[t] = g->tasks[t].action;
  }
  memcpy(e->succ_first, g->succ_first, (n + 1) * sizeof *e->succ_first);
  memcpy(e->pred_first, g->pred_first, (n + 1) * sizeof *e->pred_first);
  memcpy(e->succ, g->succ, m * sizeof *e->succ);
  memcpy(e->pred, g->pred, m * sizeof *e->pred);
  return exec_publish(rt, e, out, err);
}

static int
int_cmp(const void *a, const void *b)
{
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

  return (x > y) - (x < y);
}

/* Sorted, deduplicated edges as (src << 32 | dst) keys. */
static int64_t *
dag_keys(const bt_dag_t *dag, size_t *count)
{
  int64_t *k = malloc((dag->edges + 1) * sizeof *k);
  size_t n = 0;

  if (k == NULL)
    return NULL;
  for (size_t i = 0; i < dag->edges; i++)
    k[i] = (int64_t)dag->src[i] << 32 | (uint32_t)dag->dst[i];
  qsort(k, dag->edges, sizeof *k, int_cmp);
  for (size_t i = 0; i < dag->edges; i++)
    if (n == 0 || k[n - 1] != k[i])
      k[n++] = k[i];
  *count = n;
  return k;
}

/* The first bt_dag_t ends at dst; later fields are read only when the
 * caller's size covers them. */
#define DAG_V1_SIZE (offsetof(bt_dag_t, dst) + sizeof(const int32_t *))

/* Copies the DAG's optional actions and names.  BT_ENOMEM. */
static bt_status
copy_labels(struct bt_exec *e, const bt_dag_t *dag)
{
  size_t n = (size_t)dag->tasks;
  const bt_action_t *actions = NULL;
  const char *const *names = NULL;

  if (dag->size >= offsetof(bt_dag_t, actions) + sizeof dag->actions)
    actions = dag->actions;
  if (dag->size >= offsetof(bt_dag_t, names) + sizeof dag->names)
    names = dag->names;
  if (actions != NULL) {
    e->actions = malloc((n + 1) * sizeof *e->actions);
    if (e->actions == NULL)
      return BT_ENOMEM;
    if (n > 0)
      memcpy(e->actions, actions, n * sizeof *e->actions);
  }
  if (names != NULL) {
    e->names = calloc(n + 1, sizeof *e->names);
    if (e->names == NULL)
      return BT_ENOMEM;
    for (size_t t = 0; t < n; t++)
      if (names[t] != NULL && (e->names[t] = strdup(names[t])) == NULL)
        return BT_ENOMEM;
  }
  return BT_OK;
}

static bt_status
check_dag(bt_runtime_t *rt, const bt_dag_t *dag, bt_error_t *err)
{
  if (dag == NULL || dag->size < DAG_V1_SIZE || dag->tasks < 0 ||
      (dag->tasks > 0 && dag->task_device == NULL) ||
      (dag->edges > 0 && (dag->src == NULL || dag->dst == NULL)))
    return bt__errorf(err, BT_EINVAL, "malformed DAG: start from BT_DAG_INIT "
                      "and give task_device (and src/dst for edges)");
  for (int32_t t = 0; t < dag->tasks; t++)
    if (dag->task_device[t] < 0 || dag->task_device[t] >= rt->ndev)
      return bt__errorf(err, BT_EINVAL,
                        "task %d is on device %d, but the runtime has "
                        "devices 0..%d",
                        (int)t, (int)dag->task_device[t], (int)rt->ndev - 1);
  for (size_t i = 0; i < dag->edges; i++)
    if (dag->src[i] < 0 || dag->src[i] >= dag->tasks || dag->dst[i] < 0 ||
        dag->dst[i] >= dag->tasks || dag->src[i] == dag->dst[i])
      return bt__errorf(err, BT_EINVAL,
                        "edge %zu (%d -> %d) names a task outside 0..%d or "
                        "loops on itself",
                        i, (int)dag->src[i], (int)dag->dst[i],
                        (int)dag->tasks - 1);
  return BT_OK;
}

/* Kahn's algorithm on the exec's arrays: BT_EDEADLOCK on a cycle. */
static bt_status
check_acyclic(const struct bt_exec *e, bt_error_t *err)
{
  int32_t *deg = malloc(((size_t)e->ntasks + 1) * sizeof *deg);
  int32_t *queue = malloc(((size_t)e->ntasks + 1) * sizeof *queue);
  int32_t head = 0, tail = 0;
  bt_status rc = BT_OK;

  if (deg == NULL || queue == NULL) {
    rc = bt__errorf(err, BT_ENOMEM, "out of memory checking the DAG");
    goto out;
  }
  for (int32_t t = 0; t < e->ntasks; t++)
    if ((deg[t] = e->pred_first[t + 1] - e->pred_first[t]) == 0)
      queue[tail++] = t;
  while (head < tail) {
    int32_t t = queue[head++];
    for (int32_t j = e->succ_first[t]; j < e->succ_first[t + 1]; j++)
      if (--deg[e->succ[j]] == 0)
        queue[tail++] = e->succ[j];
  }
  if (tail < e->ntasks)
    rc = bt__errorf(err, BT_EDEADLOCK,
                    "the DAG has a cycle through %d of its %d tasks; it "
                    "would never finish",
                    (int)(e->ntasks - tail), (int)e->ntasks);
out:
  free(deg);
  free(queue);
  return rc;
}

bt_status
bt_exec_create_dag(bt_runtime_t *rt, const bt_dag_t *dag,
                   const bt_exec_config_t *cfg, bt_exec_t **out,
                   bt_error_t *err)
{
  struct bt_exec *e;
  int64_t *keys;
  size_t n, m;
  int32_t *fill;
  bt_status rc = check_exec_args(rt, cfg, out, err);

  if (rc == BT_OK)
    rc = check_dag(rt, dag, err);
  if (rc != BT_OK)
    return rc;
  n = (size_t)dag->tasks;
  e = exec_new(rt, cfg, dag->tasks);
  keys = dag_keys(dag, &m);
  fill = calloc(n + 1, sizeof *fill);
  if (e == NULL || keys == NULL || fill == NULL)
    goto out_nomem;
  e->device = malloc((n + 1) * sizeof *e->device);
  e->succ_first = calloc(n + 1, sizeof *e->succ_first);
  e->pred_first = calloc(n + 1, sizeof *e->pred_first);
  e->succ = malloc((m + 1) * sizeof *e->succ);
  e->pred = malloc((m + 1) * sizeof *e->pred);
  if (!e->device || !e->succ_first || !e->pred_first || !e->succ || !e->pred ||
      copy_labels(e, dag) != BT_OK)
    goto out_nomem;
  /* An empty DAG may have task_device NULL: memcpy from NULL is undefined
   * even for 0 bytes. */
  if (n > 0)
    memcpy(e->device, dag->task_device, n * sizeof *e->device);
  for (size_t i = 0; i < m; i++) {
    e->succ_first[(keys[i] >> 32) + 1]++;
    e->pred_first[(uint32_t)keys[i] + 1]++;
  }
  for (size_t t = 0; t < n; t++) {
    e->succ_first[t + 1] += e->succ_first[t];
    e->pred_first[t + 1] += e->pred_first[t];
  }
  for (size_t i = 0; i < m; i++) {
    int32_t s = (int32_t)(keys[i] >> 32), d = (int32_t)(uint32_t)keys[i];
    e->succ[i] = d; /* keys are sorted by source */
    e->pred[e->pred_first[d] + fill[d]++] = s;
  }
  free(keys);
  free(fill);
  rc = check_acyclic(e, err);
  if (rc != BT_OK) {
    exec_free(e);
    return rc;
  }
  return exec_publish(rt, e, out, err);
out_nomem:
  free(keys);
  free(fill);
  exec_free(e);
  return bt__errorf(err, BT_ENOMEM, "out of memory instantiating the DAG");
}

static uint64_t
sum_counter(bt_runtime_t *rt, int finished)
{
  uint64_t s = 0;

  for (int32_t i = 0; i < rt->nworkers; i++)
    s += atomic_load_explicit(finished ? &rt->workers[i].finished
                                       : &rt->workers[i].pushed,
                              memory_order_acquire);
  return s;
}

/* The caller of bt_exec_run in DEDICATED mode: sleep until done. */
static void
wait_done(bt_runtime_t *rt, struct bt_exec *e)
{
  uint64_t t0 = now_ns();

  while (!atomic_load_explicit(&e->done, memory_order_acquire)) {
    uint32_t key;
    if (now_ns() - t0 < (uint64_t)rt->spin_ns) {
      cpu_relax();
      continue;
    }
    key = bt__ec_prepare(&rt->pool_ec);
    if (atomic_load_explicit(&e->done, memory_order_seq_cst))
      bt__ec_cancel(&rt->pool_ec);
    else
      bt__ec_wait(&rt->pool_ec, key);
  }
}

bt_status
bt_exec_run(bt_exec_t *e, bt_error_t *err)
{
  bt_runtime_t *rt;
  struct worker *me;
  int expected = 0;
  uint64_t pushed;

  if (e == NULL)
    return bt__errorf(err, BT_EINVAL, "bt_exec_run: NULL exec");
  rt = e->rt;
  if (!atomic_compare_exchange_strong_explicit(&rt->running, &expected, 1,
                                               memory_order_acq_rel,
                                               memory_order_relaxed))
    return bt__errorf(err, BT_EBUSY, "a step is already running on this "
                      "runtime; run steps one after another");
  atomic_store_explicit(&e->running, 1, memory_order_relaxed);
  e->step++;
  atomic_store_explicit(&e->sinks_left, e->nsinks, memory_order_relaxed);
  atomic_store_explicit(&e->done, e->nsinks == 0, memory_order_relaxed);
  atomic_store_explicit(&e->abort, 0, memory_order_relaxed);
  atomic_store_explicit(&e->err_task, -1, memory_order_relaxed);
  for (int32_t i = 0; i < rt->nworkers; i++) {
    atomic_store_explicit(&rt->workers[i].pushed, 0, memory_order_relaxed);
    atomic_store_explicit(&rt->workers[i].finished, 0, memory_order_relaxed);
  }
  me = &rt->workers[0];
  tls_worker = me;
  e->t0 = now_ns();
  /* Release: every thread that finds an actor of this step (through a
   * deque or its scheduled flag) sees the exec and the resets above. */
  atomic_store_explicit(&rt->current, e, memory_order_release);
  for (int32_t i = 0; i < e->nroots; i++)
    make_ready(e, e->roots[i]);
  if (rt->mode == BT_RUNTIME_POOL)
    pool_loop(rt, me, &e->done);
  else
    wait_done(rt, e);
  /* Every activation of the step was scheduled before done (each one had a
   * task to run, and every task finishes before the last sink), so its
   * count is visible here; wait until they have all ended, so that no
   * thread touches the exec afterwards.  Finished is read first: it never
   * exceeds the true pushed total, which pushed never undercounts. */
  for (;;) {
    uint64_t finished = sum_counter(rt, 1);
    pushed = sum_counter(rt, 0);
    if (finished == pushed)
      break;
    cpu_relax();
  }
  e->t1 = now_ns();
  atomic_store_explicit(&rt->current, NULL, memory_order_relaxed);
  tls_worker = NULL;
  atomic_store_explicit(&e->running, 0, memory_order_relaxed);
  atomic_store_explicit(&rt->running, 0, memory_order_release);
  if (atomic_load_explicit(&e->err_task, memory_order_acquire) >= 0)
    return bt__errorf(err, (bt_status)e->err_status, "%s", e->err_msg);
  return BT_OK;
}

bt_status
bt_exec_slices(const bt_exec_t *e, bt_slice_t *slices)
{
  if (e == NULL || slices == NULL || !e->trace || e->step == 0)
    return BT_EINVAL;
  for (int32_t t = 0; t < e->ntasks; t++) {
    if (e->actions != NULL) {
      slices[t].action = e->actions[t];
    } else {
      slices[t].action.stage = 0;
      slices[t].action.kind = BT_ACT_F;
      slices[t].action.microbatch = t;
    }
    slices[t].device = e->device[t];
    if (e->t_start[t] == 0) {
      /* Skipped after an error: an empty slice at the step's start. */
      slices[t].start = slices[t].end = 0.0;
      continue;
    }
    slices[t].start = (double)(e->t_start[t] - e->t0) / 1000.0;
    slices[t].end = (double)(e->t_end[t] - e->t0) / 1000.0;
  }
  return BT_OK;
}

double
bt_exec_last_seconds(const bt_exec_t *e)
{
  return e->step ? (double)(e->t1 - e->t0) * 1e-9 : 0.0;
}

int32_t
bt_exec_task_count(const bt_exec_t *e)
{
  return e->ntasks;
}

bt_status
bt_exec_destroy(bt_exec_t *e)
{
  if (e == NULL)
    return BT_OK;
  if (atomic_load_explicit(&e->running, memory_order_acquire))
    return BT_EBUSY;
  atomic_fetch_sub_explicit(&e->rt->execs, 1, memory_order_relaxed);
  exec_free(e);
  return BT_OK;
}

void *
bt_task_alloc(const bt_task_call_t *call, size_t bytes)
{
#ifdef BATON_HAVE_JEMALLOC
  if (call != NULL && call->actor != NULL && call->actor->has_arena)
    return mallocx(bytes ? bytes : 1,
                   MALLOCX_ARENA(call->actor->arena) | MALLOCX_TCACHE_NONE);
#else
  (void)call;
#endif
  return malloc(bytes ? bytes : 1);
}

void
bt_task_free(const bt_task_call_t *call, void *p)
{
  (void)call;
  if (p == NULL)
    return;
#ifdef BATON_HAVE_JEMALLOC
  dallocx(p, MALLOCX_TCACHE_NONE);
#else
  free(p);
#endif
}
