/* The synthetic backend: the real runtime, with tasks that take their cost
 * in microseconds, so a measured step can be laid next to its simulation.
 * A task sleeps to an absolute deadline (start + cost) by default, which
 * does not accumulate oversleep, or spins to it. */
#define _GNU_SOURCE /* PR_SET_TIMERSLACK */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>

#include "bench.h"

struct synth {
  const double *f, *b, *w;
  double unit_us, margin_us;
  int spin;
};

/* ts += ns (either sign), keeping 0 <= tv_nsec < 1e9. */
static void
add_ns(struct timespec *ts, long long ns)
{
  long long total = (long long)ts->tv_nsec + ns % 1000000000LL;

  ts->tv_sec += ns / 1000000000LL;
  if (total < 0) {
    total += 1000000000LL;
    ts->tv_sec--;
  } else if (total >= 1000000000LL) {
    total -= 1000000000LL;
    ts->tv_sec++;
  }
  ts->tv_nsec = (long)total;
}

static int
before(const struct timespec *a, const struct timespec *b)
{
  return a->tv_sec < b->tv_sec ||
         (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

static _Thread_local int slack_set;

static int
synthetic_task(const bt_task_call_t *call, char *errbuf, size_t errlen)
{
  const struct synth *s = call->user;
  int32_t st = call->action.stage;
  double cost;
  struct timespec deadline, now;

  switch (call->action.kind) {
  case BT_ACT_F:
    cost = s->f[st];
    break;
  case BT_ACT_B:
    cost = s->b[st] + s->w[st];
    break;
  case BT_ACT_I:
    cost = s->b[st];
    break;
  default:
    cost = s->w[st];
    break;
  }
  if (!slack_set) {
    /* Whatever thread runs the task (the runtime's set theirs; the caller
     * of bt_exec_run may run tasks in pool mode): wake at the deadline, not
     * up to 50 us after it. */
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    slack_set = 1;
  }
  clock_gettime(CLOCK_MONOTONIC, &deadline);
  add_ns(&deadline, (long long)(cost * s->unit_us * 1000.0 + 0.5));
  if (s->spin) {
    do
      clock_gettime(CLOCK_MONOTONIC, &now);
    while (before(&now, &deadline));
    return 0;
  }
  /* Sleep to the deadline less a margin, then spin to it: a timer fires
   * tens of microseconds late on virtual machines (40 us median measured
   * on the CI machines), which would stretch every task. */
  {
    struct timespec early = deadline;
    add_ns(&early, -(long long)(s->margin_us * 1000.0));
    for (;;) {
      int rc = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &early, NULL);
      if (rc == 0)
        break;
      if (rc != EINTR) {
        snprintf(errbuf, errlen, "clock_nanosleep: %s", strerror(rc));
        return BT_EIO;
      }
    }
  }
  do
    clock_gettime(CLOCK_MONOTONIC, &now);
  while (before(&now, &deadline));
  return 0;
}


void
synth_out_free(struct synth_out *out)
{
  free(out->busy_us);
  free(out->slices);
  memset(out, 0, sizeof *out);
}

int
bench_synthetic(const bt_graph_t *g, const double *f, const double *b,
                const double *w, const struct synth_opts *o,
                struct synth_out *out, char *errbuf, size_t errlen)
{
  bt_runtime_config_t rc = BT_RUNTIME_CONFIG_INIT;
  bt_exec_config_t ec = BT_EXEC_CONFIG_INIT;
  struct synth s = {f, b, w, o->unit_us, o->margin_us, o->spin};
  int32_t p = bt_graph_devices(g), n = bt_graph_task_count(g);
  bt_runtime_t *rt = NULL;
  bt_exec_t *ex = NULL;
  double *ms = calloc((size_t)o->repeat + 1, sizeof *ms);
  bt_error_t err;
  int status = -1;

  memset(out, 0, sizeof *out);
  out->busy_us = calloc((size_t)p, sizeof *out->busy_us);
  out->slices = calloc((size_t)n + 1, sizeof *out->slices);
  if (ms == NULL || out->busy_us == NULL || out->slices == NULL) {
    snprintf(errbuf, errlen, "out of memory");
    goto out;
  }
  rc.devices = p;
  rc.mode = o->dedicated ? BT_RUNTIME_DEDICATED : BT_RUNTIME_POOL;
  rc.threads = o->threads;
  rc.spin_us = o->spin_us;
  ec.fn = synthetic_task;
  ec.user = &s;
  ec.trace = 1;
  if (bt_runtime_create(&rc, &rt, &err) != BT_OK ||
      bt_exec_create(rt, g, &ec, &ex, &err) != BT_OK) {
    snprintf(errbuf, errlen, "%s", err.message);
    goto out;
  }
  for (int r = -1; r < o->repeat; r++) {
    if (bt_exec_run(ex, &err) != BT_OK) {
      snprintf(errbuf, errlen, "%s", err.message);
      goto out;
    }
    if (r >= 0)
      ms[r] = bt_exec_last_seconds(ex) * 1e6;
  }
  out->makespan_us = bench_median(ms, o->repeat);
  bt_exec_slices(ex, out->slices);
  for (int32_t t = 0; t < n; t++)
    out->busy_us[out->slices[t].device] +=
        out->slices[t].end - out->slices[t].start;
  status = 0;
out:
  bt_exec_destroy(ex);
  bt_runtime_destroy(rt);
  free(ms);
  if (status != 0)
    synth_out_free(out);
  return status;
}
