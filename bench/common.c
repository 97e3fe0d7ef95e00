/* What baton-bench's runtime backends (cpu.c, cuda.c) share: messages, the
 * options of a pipeline of uniform stages, and its plan. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

int
bench_fail(const char *fmt, ...)
{
  va_list ap;

  fprintf(stderr, "baton-bench: ");
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  return 1;
}

int
bench_parse(int argc, char **argv, struct bench_pipe *p, const char *name,
            const char *flags, bench_option_fn own, void *o)
{
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int taken;
    if (strcmp(a, "--json") == 0) {
      p->json = 1;
      continue;
    }
    if ((taken = own(o, a, NULL)) != 0) { /* one of the backend's flags */
      if (taken < 0)
        return 1;
      continue;
    }
    if (v == NULL)
      return bench_fail("%s needs a value", a);
    i++;
    if (strcmp(a, "--backend") == 0) {
      if (strcmp(v, name) != 0)
        return bench_fail("--backend %s: this entry runs %s only", v, name);
      continue;
    }
    taken = bench_pipe_option(p, a, v);
    if (taken == 0)
      taken = own(o, a, v);
    if (taken < 0)
      return 1;
    if (taken == 0)
      return bench_fail("--backend %s: unknown option '%s'; flags: "
                        "--schedule --devices --microbatches --cost "
                        "--unit-us --repeat --json %s",
                        name, a, flags);
  }
  return 0;
}

int
bench_pipe_option(struct bench_pipe *o, const char *a, const char *v)
{
  if (strcmp(a, "--schedule") == 0)
    o->schedule = v;
  else if (strcmp(a, "--microbatches") == 0)
    o->microbatches = atoi(v);
  else if (strcmp(a, "--repeat") == 0)
    o->repeat = atoi(v);
  else if (strcmp(a, "--unit-us") == 0)
    o->unit_us = atof(v);
  else if (strcmp(a, "--cost") == 0) {
    if (sscanf(v, "F=%lf,B=%lf,W=%lf", &o->f, &o->b, &o->w) != 3) {
      bench_fail("--cost %s: write F=1,B=1,W=1", v);
      return -1;
    }
  } else
    return 0;
  return 1;
}

int
bench_pipe_plan(const struct bench_pipe *o, const bt_schedule_t *sched,
                bt_plan_t **out, bt_error_t *err)
{
  bt_schedule_params_t sp = BT_SCHEDULE_PARAMS_INIT;
  double *c = malloc(3 * (size_t)o->devices * sizeof *c);
  bt_status st;

  if (c == NULL)
    return 1;
  for (int s = 0; s < o->devices; s++) {
    c[s] = o->f;
    c[o->devices + s] = o->b;
    c[2 * o->devices + s] = o->w;
  }
  sp.devices = sp.stages = o->devices;
  sp.virtual_stages = 1;
  sp.microbatches = o->microbatches;
  sp.cost_f = c;
  sp.cost_b = c + o->devices;
  sp.cost_w = c + 2 * o->devices;
  st = bt_schedule_make_plan(sched, &sp, out, err);
  free(c);
  return st != BT_OK;
}
