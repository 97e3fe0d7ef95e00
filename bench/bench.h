/* baton-bench's parts: subcommands and backends in their own files. */
#ifndef BATON_BENCH_BENCH_H
#define BATON_BENCH_BENCH_H

#include "baton/baton.h"

/* `baton-bench overhead ...`: per-task overhead of the runtime on empty
 * tasks (bench/overhead.c).  Returns the process exit status. */
int bench_overhead(int argc, char **argv);

/* `baton-bench --backend cpu ...`: the pipeline across processes, measured
 * against one process and against the simulator (bench/cpu.c). */
int bench_cpu(int argc, char **argv);

/* `baton-bench --backend cuda ...`: the runtime on CUDA devices (host
 * overhead per task, device idle gaps, CUDA graphs) and the resmlp trainer
 * on them (bench/cuda.c; built with CUDA). */
int bench_cuda(int argc, char **argv);

/* What the runtime backends share (bench/common.c): a plan of `devices`
 * stages, one per device, each costing F, B and W units of unit_us. */
struct bench_pipe {
  const char *schedule;
  int devices, microbatches, repeat, json;
  double unit_us, f, b, w;
};

/* "baton-bench: <message>" on stderr; returns 1. */
int bench_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* One option of struct bench_pipe (--schedule --microbatches --repeat
 * --unit-us --cost; --devices is each backend's): 1 taken, 0 not one of
 * them, -1 a bad value (said). */
int bench_pipe_option(struct bench_pipe *o, const char *opt, const char *v);

/* A backend's own option (v NULL: a flag without value): 1 taken, 0 not
 * one of its own, -1 a bad value (said). */
typedef int (*bench_option_fn)(void *o, const char *opt, const char *v);

/* Parses a runtime backend's command line: --json, --backend (must be
 * name), struct bench_pipe's options, then own's; an unknown option is
 * refused listing the common flags and `flags`.  0, or 1 (said). */
int bench_parse(int argc, char **argv, struct bench_pipe *p, const char *name,
                const char *flags, bench_option_fn own, void *o);

/* The schedule's plan for o; 0, or 1 (err set, or out of memory). */
int bench_pipe_plan(const struct bench_pipe *o, const bt_schedule_t *sched,
                    bt_plan_t **out, bt_error_t *err);

#include <stddef.h>
#include <stdlib.h>
#include <time.h>

#include "baton/baton.h"

/* CLOCK_MONOTONIC in seconds. */
static inline double
bench_now_s(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static inline int
bench_dbl_cmp(const void *a, const void *b)
{
  double x = *(const double *)a, y = *(const double *)b;

  return (x > y) - (x < y);
}

/* Median of v[0..n) (sorts v); n >= 1. */
static inline double
bench_median(double *v, int n)
{
  qsort(v, (size_t)n, sizeof *v, bench_dbl_cmp);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* The synthetic backend (bench/synthetic.c): the real runtime running a
 * graph whose tasks take their simulated cost in wall time. */
struct synth_opts {
  double unit_us;  /* microseconds per cost unit */
  int spin;        /* burn CPU instead of sleeping to the deadline */
  int dedicated;   /* one thread per device (else the M:N pool) */
  int threads;     /* pool threads (pool mode) */
  int repeat;      /* measured steps, after one warm-up */
  double margin_us; /* sleep mode: spin the last margin_us of a task */
  int spin_us;     /* runtime threads' idle spin (bt_runtime_config_t) */
};

struct synth_out {
  double makespan_us; /* median over the measured steps */
  double *busy_us;    /* [devices], from the last step */
  bt_slice_t *slices; /* [tasks], from the last step, in microseconds */
};

/* Runs `graph` with per-stage costs f, b, w (cost units).  Returns 0, or -1
 * with the reason in errbuf.  out's arrays are allocated here; free them
 * with synth_out_free. */
int bench_synthetic(const bt_graph_t *graph, const double *f,
                    const double *b, const double *w,
                    const struct synth_opts *opts, struct synth_out *out,
                    char *errbuf, size_t errlen);
void synth_out_free(struct synth_out *out);

#endif /* BATON_BENCH_BENCH_H */
