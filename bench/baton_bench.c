/* baton-bench: compare pipeline schedules.
 *
 * The sim backend plans each schedule, validates it and runs the
 * discrete-event simulator on a cost model; it prints a table (or one JSON
 * object per schedule), and can write the plans as CSV, a Chrome trace and
 * an SVG timeline.  Runtime backends arrive with the runtime. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "baton/baton.h"
#include "bench.h"

#define MAX_SCHEDULES 32

struct options {
  const char *schedules;
  int devices, virtual_stages, microbatches; /* 0 = not given */
  double cost[3];                            /* F, B, W per device chunk */
  double mem[2];                             /* B, W per device chunk */
  const char *stage_costs;
  const char *placement;
  double comm, mem_limit;
  const char *backend;
  int json;
  const char *dump_plan, *trace, *svg;
  struct synth_opts synth; /* --backend synthetic */
  int checkpoint;          /* 0 never, 1 except_last, 2 always */
};

struct result {
  char name[128];
  int p, v, S, m;
  bt_plan_t *plan;
  bt_graph_t *graph;
  bt_sim_t *sim;
  double *arrays; /* cost f, b, w, mem b, w: 5 * S */
  int32_t *placement;
  bt_slice_t *slices;
  char subtitle[256];
  double seconds[3]; /* wall time to plan, build the graph, simulate */
  int measured;       /* a runtime backend ran: synth holds its step */
  struct synth_out synth;
  char title[2][160], subtitle2[256];
};

static double
now(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void
usage(FILE *f)
{
  fputs(
      "usage: baton-bench [options]\n"
      "  --schedule LIST     comma-separated NAME | PATH.so | PATH.csv\n"
      "                      (default 1f1b; --list shows the names)\n"
      "  --devices P         pipeline devices (default 4, or the CSV's)\n"
      "  --virtual V         stages per device (default: the schedule's)\n"
      "  --microbatches M    microbatches per step (default 8, or the CSV's)\n"
      "  --cost F=1,B=1,W=1  cost of one device's share of the model per\n"
      "                      microbatch: forward, input grad, weight grad\n"
      "                      (a full backward costs B+W); with V stages per\n"
      "                      device each stage costs a V-th of it\n"
      "  --stage-costs FILE  per-stage costs, CSV lines 'stage,F,B,W'\n"
      "  --mem B=1,W=0       activation memory per microbatch of one\n"
      "                      device's share: held from F to B (or I), and\n"
      "                      from I to W\n"
      "  --comm LATENCY      latency of every cross-device edge (default 0)\n"
      "  --checkpoint never|except_last|always  activation memory with\n"
      "                      recomputation, as torch Pipe's modes (never)\n"
      "  --mem-limit X       per-device activation memory cap (for 'auto')\n"
      "  --placement loop|LIST  stage -> device ('loop': s %% P)\n"
      "  --backend sim|synthetic|cpu|cuda\n"
      "                      cpu: the pipeline across processes (run under\n"
      "                      mpirun -np W; its flags are in bench/cpu.c)\n"
      "                      cuda: the runtime on GPUs, host overhead and\n"
      "                      idle gaps per task, CUDA graphs, --model resmlp\n"
      "                      (built with CUDA; flags in bench/cuda.c)\n"
      "                      sim: the discrete-event simulator (exact);\n"
      "                      synthetic: the real runtime, each task taking\n"
      "                      its cost in wall time, next to the simulation\n"
      "  --unit-us U         synthetic: microseconds per cost unit (1000)\n"
      "  --task-mode sleep|spin  synthetic: sleep to the deadline or spin\n"
      "  --runtime-mode dedicated|pool  synthetic: a thread per device\n"
      "                      (default) or actors on a pool of --threads\n"
      "  --threads T         pool threads (default: online CPUs)\n"
      "  --repeat R          synthetic: measured steps, median (5)\n"
      "  --sleep-margin-us M synthetic sleep: wake M us early and spin to\n"
      "                      the deadline, as timers fire late (120)\n"
      "  --spin-us S         synthetic: runtime threads spin S us before\n"
      "                      sleeping when idle (5; 0 = never)\n"
      "  --json              one JSON object per schedule on stdout\n"
      "  --dump-plan F.csv   write the plan (F.NAME.csv for several)\n"
      "  --trace F.json      Chrome trace (open in Perfetto)\n"
      "  --svg F.svg         timeline picture, one panel per schedule\n"
      "  --list              list the built-in schedules\n",
      f);
}

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Prints "baton-bench: <message>" on stderr; returns -1 for `return fail()`. */
static int
fail(const char *fmt, ...)
{
  va_list ap;

  fputs("baton-bench: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  return -1;
}

static int
parse_int(const char *opt, const char *s, int *out)
{
  char *end;
  long v;

  errno = 0;
  v = strtol(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || v < 1 || v > 1000000)
    return fail("%s needs a whole number >= 1 (got '%s')", opt, s);
  *out = (int)v;
  return 0;
}

static int
parse_double(const char *opt, const char *s, double *out)
{
  char *end;
  double v;

  errno = 0;
  v = strtod(s, &end);
  if (errno != 0 || end == s || *end != '\0' || !isfinite(v) || v < 0.0)
    return fail("%s needs a number >= 0 (got '%s')", opt, s);
  *out = v;
  return 0;
}

/* "F=1,B=2,W=0.5" into vals by letter; letters not given keep their value. */
static int
parse_kv(const char *opt, const char *s, const char *letters, double *vals)
{
  char buf[256], *save = NULL, *tok;

  if (strlen(s) >= sizeof buf)
    return fail("%s: value too long ('%s')", opt, s);
  strcpy(buf, s);
  for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    const char *at = strchr(letters, tok[0]);
    if (at == NULL || tok[0] == '\0' || tok[1] != '=')
      return fail("%s: '%s' is not KEY=VALUE with a known key", opt, tok);
    if (parse_double(opt, tok + 2, &vals[at - letters]) != 0)
      return -1;
  }
  return 0;
}

static const char value_options[] =
    " --schedule --devices --virtual --microbatches --cost --mem "
    "--stage-costs --placement --comm --mem-limit --backend --dump-plan "
    "--trace --svg --unit-us --task-mode --runtime-mode --threads --repeat "
    "--sleep-margin-us --spin-us --checkpoint ";

static int
takes_value(const char *opt)
{
  char key[64];

  snprintf(key, sizeof key, " %s ", opt);
  return strstr(value_options, key) != NULL;
}

static int
parse_args(int argc, char **argv, struct options *o)
{
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int rc = 0, takes = 1;
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout);
      exit(0);
    } else if (strcmp(a, "--list") == 0) {
      for (size_t k = 0; k < bt_schedule_builtin_count(); k++) {
        bt_schedule_t *s;
        if (bt_schedule_builtin(bt_schedule_builtin_name(k), &s, NULL) != 0)
          continue;
        printf("%-12s %s\n", bt_schedule_name(s), bt_schedule_summary(s));
        bt_schedule_destroy(s);
      }
      exit(0);
    } else if (strcmp(a, "--json") == 0) {
      o->json = 1;
      takes = 0;
    } else if (v == NULL && takes_value(a)) {
      return fail("%s needs a value (see --help)", a);
    } else if (v == NULL) {
      return fail("unknown option '%s'; see --help", a);
    } else if (strcmp(a, "--schedule") == 0) {
      o->schedules = v;
    } else if (strcmp(a, "--devices") == 0) {
      rc = parse_int(a, v, &o->devices);
    } else if (strcmp(a, "--virtual") == 0) {
      rc = parse_int(a, v, &o->virtual_stages);
    } else if (strcmp(a, "--microbatches") == 0) {
      rc = parse_int(a, v, &o->microbatches);
    } else if (strcmp(a, "--cost") == 0) {
      rc = parse_kv(a, v, "FBW", o->cost);
    } else if (strcmp(a, "--mem") == 0) {
      rc = parse_kv(a, v, "BW", o->mem);
    } else if (strcmp(a, "--stage-costs") == 0) {
      o->stage_costs = v;
    } else if (strcmp(a, "--placement") == 0) {
      o->placement = v;
    } else if (strcmp(a, "--comm") == 0) {
      rc = parse_double(a, v, &o->comm);
    } else if (strcmp(a, "--mem-limit") == 0) {
      rc = parse_double(a, v, &o->mem_limit);
    } else if (strcmp(a, "--backend") == 0) {
      o->backend = v;
    } else if (strcmp(a, "--checkpoint") == 0) {
      if (strcmp(v, "never") == 0)
        o->checkpoint = 0;
      else if (strcmp(v, "except_last") == 0)
        o->checkpoint = 1;
      else if (strcmp(v, "always") == 0)
        o->checkpoint = 2;
      else
        rc = fail("--checkpoint is never, except_last or always (got '%s')",
                  v);
    } else if (strcmp(a, "--unit-us") == 0) {
      rc = parse_double(a, v, &o->synth.unit_us);
      if (rc == 0 && o->synth.unit_us <= 0.0)
        rc = fail("--unit-us needs a number > 0");
    } else if (strcmp(a, "--task-mode") == 0) {
      if (strcmp(v, "sleep") != 0 && strcmp(v, "spin") != 0)
        rc = fail("--task-mode is sleep or spin (got '%s')", v);
      o->synth.spin = strcmp(v, "spin") == 0;
    } else if (strcmp(a, "--runtime-mode") == 0) {
      if (strcmp(v, "dedicated") != 0 && strcmp(v, "pool") != 0)
        rc = fail("--runtime-mode is dedicated or pool (got '%s')", v);
      o->synth.dedicated = strcmp(v, "dedicated") == 0;
    } else if (strcmp(a, "--threads") == 0) {
      rc = parse_int(a, v, &o->synth.threads);
    } else if (strcmp(a, "--repeat") == 0) {
      rc = parse_int(a, v, &o->synth.repeat);
    } else if (strcmp(a, "--sleep-margin-us") == 0) {
      rc = parse_double(a, v, &o->synth.margin_us);
    } else if (strcmp(a, "--spin-us") == 0) {
      double x = 0;
      rc = parse_double(a, v, &x);
      o->synth.spin_us = x > 0 ? (int)x : -1;
    } else if (strcmp(a, "--dump-plan") == 0) {
      o->dump_plan = v;
    } else if (strcmp(a, "--trace") == 0) {
      o->trace = v;
    } else if (strcmp(a, "--svg") == 0) {
      o->svg = v;
    } else {
      return fail("unknown option '%s'; see --help", a);
    }
    if (rc != 0)
      return -1;
    i += takes;
  }
  if (strcmp(o->backend, "sim") != 0 && strcmp(o->backend, "synthetic") != 0)
    return fail("backend '%s' is not available%s; use --backend sim, "
                "synthetic or cpu",
                o->backend,
                strcmp(o->backend, "cuda") == 0
                    ? " (this baton-bench was built without CUDA)"
                    : "");
  return 0;
}

/* Reads "stage,F,B,W" lines into f/b/w (S entries each). */
static int
load_stage_costs(const char *path, int S, double *f, double *b, double *w)
{
  char line[512];
  int lineno = 0, *seen = calloc((size_t)S, sizeof *seen), rc = 0;
  FILE *fp = fopen(path, "r");

  if (fp == NULL || seen == NULL) {
    free(seen);
    if (fp)
      fclose(fp);
    return fail("cannot read stage costs '%s': %s", path, strerror(errno));
  }
  while (rc == 0 && fgets(line, sizeof line, fp) != NULL) {
    int s;
    double x, y, z;
    char extra;
    lineno++;
    if (line[strspn(line, " \t\r\n")] == '\0' || line[0] == '#')
      continue;
    if (sscanf(line, " %d , %lf , %lf , %lf %c", &s, &x, &y, &z, &extra) != 4 &&
        !(sscanf(line, " %d , %lf , %lf , %lf %c", &s, &x, &y, &z, &extra) == 5 &&
          (extra == '\r' || extra == '\n'))) {
      fprintf(stderr, "baton-bench: %s line %d: write 'stage,F,B,W', e.g. "
              "'0,1.5,1.5,1'\n", path, lineno);
      rc = -1;
    } else if (s < 0 || s >= S || x < 0 || y < 0 || z < 0 || seen[s]) {
      fprintf(stderr, "baton-bench: %s line %d: stage %d is %s (the pipeline "
              "has stages 0..%d; costs must be >= 0)\n", path, lineno, s,
              s >= 0 && s < S && seen[s] ? "listed twice" : "invalid", S - 1);
      rc = -1;
    } else {
      seen[s] = 1;
      f[s] = x;
      b[s] = y;
      w[s] = z;
    }
  }
  for (int s = 0; rc == 0 && s < S; s++)
    if (!seen[s]) {
      fprintf(stderr, "baton-bench: %s has no line for stage %d; list all %d "
              "stages\n", path, s, S);
      rc = -1;
    }
  fclose(fp);
  free(seen);
  return rc;
}

static int
parse_placement(const char *spec, int S, int P, int32_t *out)
{
  char buf[4096], *save = NULL, *tok;
  int s = 0;

  if (spec == NULL || strcmp(spec, "loop") == 0) {
    for (int i = 0; i < S; i++)
      out[i] = i % P;
    return 0;
  }
  if (strlen(spec) >= sizeof buf)
    return fail("--placement list too long");
  strcpy(buf, spec);
  for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    char *end;
    long d = strtol(tok, &end, 10);
    if (s >= S || end == tok || *end != '\0' || d < 0 || d >= P) {
      fprintf(stderr, "baton-bench: --placement needs %d device numbers "
              "(0..%d), one per stage\n", S, P - 1);
      return -1;
    }
    out[s++] = (int32_t)d;
  }
  if (s != S) {
    fprintf(stderr, "baton-bench: --placement lists %d stages, the "
            "pipeline has %d\n", s, S);
    return -1;
  }
  return 0;
}

static void
result_free(struct result *r)
{
  bt_sim_destroy(r->sim);
  bt_graph_destroy(r->graph);
  bt_plan_destroy(r->plan);
  free(r->arrays);
  free(r->placement);
  free(r->slices);
  synth_out_free(&r->synth);
}

/* Fills the shape of a run from options, the schedule's preference and, for
 * a fixed plan, the plan itself. */
static void
run_shape(const struct options *o, const bt_schedule_t *s, struct result *r)
{
  const bt_plan_t *fixed = bt_schedule_fixed_plan(s);

  r->p = o->devices ? o->devices : (fixed ? bt_plan_devices(fixed) : 4);
  r->m = o->microbatches ? o->microbatches
                         : (fixed ? bt_plan_microbatches(fixed) : 8);
  if (fixed && !o->virtual_stages)
    r->v = bt_plan_stages(fixed) / r->p > 0 ? bt_plan_stages(fixed) / r->p : 1;
  else
    r->v = o->virtual_stages ? o->virtual_stages
                             : bt_schedule_default_virtual(s);
  r->S = r->p * r->v;
}

static int
plan_and_simulate(const struct options *o, const bt_schedule_t *s,
                  struct result *r)
{
  bt_schedule_params_t params = BT_SCHEDULE_PARAMS_INIT;
  bt_graph_config_t gc = BT_GRAPH_CONFIG_INIT;
  bt_sim_config_t sc = BT_SIM_CONFIG_INIT;
  double *a, t0, t1, t2;
  bt_error_t err;
  int S;

  run_shape(o, s, r);
  S = r->S;
  r->arrays = malloc(5 * (size_t)S * sizeof *r->arrays);
  r->placement = malloc((size_t)S * sizeof *r->placement);
  if (r->arrays == NULL || r->placement == NULL)
    return fail("out of memory");
  a = r->arrays;
  for (int i = 0; i < S; i++) {
    a[i] = o->cost[0] / r->v;
    a[S + i] = o->cost[1] / r->v;
    a[2 * S + i] = o->cost[2] / r->v;
    a[3 * S + i] = o->mem[0] / r->v;
    a[4 * S + i] = o->mem[1] / r->v;
  }
  if (o->stage_costs &&
      load_stage_costs(o->stage_costs, S, a, a + S, a + 2 * S) != 0)
    return -1;
  if (parse_placement(o->placement, S, r->p, r->placement) != 0)
    return -1;
  params.devices = r->p;
  params.virtual_stages = r->v;
  params.stages = S;
  params.microbatches = r->m;
  params.stage_device = r->placement;
  params.cost_f = sc.cost_f = a;
  params.cost_b = sc.cost_b = a + S;
  params.cost_w = sc.cost_w = a + 2 * S;
  params.mem_b = sc.mem_b = a + 3 * S;
  params.mem_w = sc.mem_w = a + 4 * S;
  params.comm_latency = sc.comm_latency = o->comm;
  /* torch Pipe: `always` recomputes every microbatch, `except_last` all
   * but the last. */
  sc.recompute_microbatches = o->checkpoint == 2   ? r->m
                              : o->checkpoint == 1 ? r->m - 1
                                                   : 0;
  params.mem_limit = o->mem_limit;
  t0 = now();
  if (bt_schedule_make_plan(s, &params, &r->plan, &err) != BT_OK)
    return fail("%s", err.message);
  gc.plan = r->plan;
  gc.stage_device = r->placement;
  t1 = now();
  if (bt_graph_create(&gc, &r->graph, &err) != BT_OK)
    return fail("%s", err.message);
  t2 = now();
  if (bt_sim_run(r->graph, &sc, &r->sim, &err) != BT_OK)
    return fail("%s", err.message);
  r->seconds[0] = t1 - t0;
  r->seconds[1] = t2 - t1;
  r->seconds[2] = now() - t2;
  if (strcmp(o->backend, "synthetic") == 0) {
    char why[1024];
    if (bench_synthetic(r->graph, a, a + S, a + 2 * S, &o->synth, &r->synth,
                        why, sizeof why) != 0)
      return fail("%s: synthetic run failed: %s", r->name, why);
    r->measured = 1;
  }
  return 0;
}

static double
peak_max(const struct result *r)
{
  double x = 0.0;

  for (int d = 0; d < r->p; d++)
    if (bt_sim_peak_mem(r->sim, d) > x)
      x = bt_sim_peak_mem(r->sim, d);
  return x;
}

/* Makespan, busy time and bubble in cost units: measured when a runtime
 * backend ran, else simulated. */
static double
res_makespan(const struct options *o, const struct result *r)
{
  return r->measured ? r->synth.makespan_us / o->synth.unit_us
                     : bt_sim_makespan(r->sim);
}

static double
res_busy(const struct options *o, const struct result *r, int d)
{
  return r->measured ? r->synth.busy_us[d] / o->synth.unit_us
                     : bt_sim_busy(r->sim, d);
}

static double
res_bubble(const struct options *o, const struct result *r)
{
  double total = 0.0, span = res_makespan(o, r);

  if (!r->measured)
    return bt_sim_bubble(r->sim);
  for (int d = 0; d < r->p; d++)
    total += res_busy(o, r, d);
  return span > 0.0 ? 1.0 - total / (r->p * span) : 0.0;
}

static void
print_json(const struct options *o, const struct result *r)
{
  printf("{\"schedule\":\"%s\",\"backend\":\"%s\",\"devices\":%d,"
         "\"virtual\":%d,\"stages\":%d,\"microbatches\":%d,\"tasks\":%d,"
         "\"makespan\":%.17g,\"lower_bound\":%.17g,\"bubble\":%.17g,",
         r->name, o->backend, r->p, r->v, r->S, r->m,
         (int)bt_graph_task_count(r->graph), res_makespan(o, r),
         bt_sim_lower_bound(r->sim), res_bubble(o, r));
  if (r->measured)
    printf("\"sim_makespan\":%.17g,\"sim_bubble\":%.17g,"
           "\"makespan_us\":%.17g,\"unit_us\":%.17g,\"task_mode\":\"%s\","
           "\"runtime_mode\":\"%s\",\"repeat\":%d,",
           bt_sim_makespan(r->sim), bt_sim_bubble(r->sim),
           r->synth.makespan_us, o->synth.unit_us,
           o->synth.spin ? "spin" : "sleep",
           o->synth.dedicated ? "dedicated" : "pool", o->synth.repeat);
  printf("\"busy\":[");
  for (int d = 0; d < r->p; d++)
    printf("%s%.17g", d ? "," : "", res_busy(o, r, d));
  printf("],\"peak_mem\":[");
  for (int d = 0; d < r->p; d++)
    printf("%s%.17g", d ? "," : "", bt_sim_peak_mem(r->sim, d));
  printf("],\"cost\":{\"F\":%.17g,\"B\":%.17g,\"W\":%.17g},"
         "\"mem\":{\"B\":%.17g,\"W\":%.17g},\"checkpoint\":\"%s\","
         "\"comm\":%.17g,"
         "\"mem_limit\":%.17g,\"plan_seconds\":%.6g,"
         "\"graph_seconds\":%.6g,\"sim_seconds\":%.6g}\n",
         o->cost[0], o->cost[1], o->cost[2], o->mem[0], o->mem[1],
         o->checkpoint == 2   ? "always"
         : o->checkpoint == 1 ? "except_last"
                              : "never",
         o->comm,
         o->mem_limit, r->seconds[0], r->seconds[1], r->seconds[2]);
}

static void
print_table(const struct options *o, struct result *rs, int n)
{
  int any = 0;

  for (int i = 0; i < n; i++)
    any |= rs[i].sim != NULL;
  if (!any)
    return;
  printf("%-14s %3s %2s %4s %6s %10s %10s %8s %7s %9s  %s\n", "schedule", "p",
         "v", "m", "tasks", "makespan", "bound", "/bound", "bubble",
         "peak mem", rs[0].measured
                         ? "simulated  measured/sim"
                         : "peak per device");
  for (int i = 0; i < n; i++) {
    struct result *r = &rs[i];
    if (r->sim == NULL)
      continue;
    printf("%-14s %3d %2d %4d %6d %10.4g %10.4g %8.3f %6.1f%% %9.4g  ",
           r->name, r->p, r->v, r->m, (int)bt_graph_task_count(r->graph),
           res_makespan(o, r), bt_sim_lower_bound(r->sim),
           res_makespan(o, r) / bt_sim_lower_bound(r->sim),
           100.0 * res_bubble(o, r), peak_max(r));
    if (r->measured) {
      printf("%9.4g  %+.2f%%\n", bt_sim_makespan(r->sim),
             100.0 * (res_makespan(o, r) / bt_sim_makespan(r->sim) - 1.0));
      continue;
    }
    /* Long pipelines: the first devices carry the peak; --json has all. */
    for (int d = 0; d < r->p && d < 16; d++)
      printf("%s%.3g", d ? " " : "", bt_sim_peak_mem(r->sim, d));
    if (r->p > 16)
      printf(" ...");
    putchar('\n');
  }
}

/* out.csv -> out.NAME.csv when several schedules share one --dump-plan. */
static void
plan_path(const char *base, const char *name, int several, char *out,
          size_t n)
{
  const char *dot = strrchr(base, '.');

  if (!several)
    snprintf(out, n, "%s", base);
  else if (dot && !strchr(dot, '/'))
    snprintf(out, n, "%.*s.%s%s", (int)(dot - base), base, name, dot);
  else
    snprintf(out, n, "%s.%s", base, name);
}

static int
write_pictures(const struct options *o, struct result *rs, int n)
{
  bt_timeline_t tl[2 * MAX_SCHEDULES];
  int k = 0, rc = 0;
  bt_error_t err;

  for (int i = 0; i < n; i++) {
    bt_timeline_t t = BT_TIMELINE_INIT;
    struct result *r = &rs[i];
    if (r->sim == NULL)
      continue;
    r->slices = malloc((size_t)bt_graph_task_count(r->graph) *
                       sizeof *r->slices + 1);
    if (r->slices == NULL)
      return fail("out of memory");
    bt_sim_slices(r->sim, r->slices);
    snprintf(r->subtitle, sizeof r->subtitle,
             "p=%d v=%d m=%d: makespan %.4g (bound %.4g), bubble %.1f%%, "
             "peak mem %.3g",
             r->p, r->v, r->m, bt_sim_makespan(r->sim),
             bt_sim_lower_bound(r->sim), 100.0 * bt_sim_bubble(r->sim),
             peak_max(r));
    t.title = r->name;
    t.subtitle = r->subtitle;
    t.devices = r->p;
    t.stages = r->S;
    t.slices = r->slices;
    t.count = (size_t)bt_graph_task_count(r->graph);
    if (r->measured) {
      /* The simulation, then the measured step, on one time axis: the sim
       * in cost units of unit_us each, the run in microseconds. */
      bt_timeline_t m = t;
      t.unit_us = o->synth.unit_us;
      snprintf(r->title[0], sizeof r->title[0], "%.100s (sim)", r->name);
      snprintf(r->title[1], sizeof r->title[1], "%.100s (%.40s)", r->name,
               o->backend);
      snprintf(r->subtitle2, sizeof r->subtitle2,
               "measured makespan %.4g (%+.2f%% vs sim), bubble %.1f%%",
               res_makespan(o, r),
               100.0 * (res_makespan(o, r) / bt_sim_makespan(r->sim) - 1.0),
               100.0 * res_bubble(o, r));
      t.title = r->title[0];
      m.title = r->title[1];
      m.subtitle = r->subtitle2;
      m.slices = r->synth.slices;
      m.unit_us = 1.0;
      tl[k++] = t;
      tl[k++] = m;
      continue;
    }
    tl[k++] = t;
  }
  for (int pass = 0; pass < 2 && k > 0; pass++) {
    const char *path = pass == 0 ? o->trace : o->svg;
    FILE *f;
    bt_status st;
    if (path == NULL)
      continue;
    f = fopen(path, "w");
    if (f == NULL) {
      rc = fail("cannot write '%s': %s", path, strerror(errno));
      continue;
    }
    st = pass == 0 ? bt_timeline_write_chrome(f, tl, (size_t)k, &err)
                   : bt_timeline_write_svg(f, tl, (size_t)k, &err);
    if (fclose(f) != 0 && st == BT_OK)
      st = BT_EIO;
    if (st != BT_OK)
      rc = fail("writing '%s' failed: %s", path,
                st == BT_EIO ? strerror(errno) : err.message);
  }
  return rc;
}

int
main(int argc, char **argv)
{
  struct options o = {"1f1b", 0, 0, 0, {1, 1, 1}, {1, 0}, NULL, NULL, 0, 0,
                      "sim", 0, NULL, NULL, NULL,
                      {1000.0, 0, 1, 0, 5, 120.0, 5}, 0};
  struct result rs[MAX_SCHEDULES];
  char names[4096], *save = NULL, *tok;
  int n = 0, failed = 0;

  if (argc > 1 && strcmp(argv[1], "overhead") == 0)
    return bench_overhead(argc, argv);
  for (int i = 1; i + 1 < argc; i++)
    if (strcmp(argv[i], "--backend") == 0 && strcmp(argv[i + 1], "cpu") == 0)
      return bench_cpu(argc, argv);
#ifdef BATON_HAVE_CUDA
    else if (strcmp(argv[i], "--backend") == 0 &&
             strcmp(argv[i + 1], "cuda") == 0)
      return bench_cuda(argc, argv);
#endif
  memset(rs, 0, sizeof rs);
  if (parse_args(argc, argv, &o) != 0)
    return 2;
  if (strlen(o.schedules) >= sizeof names) {
    fail("--schedule list too long");
    return 2;
  }
  strcpy(names, o.schedules);
  for (tok = strtok_r(names, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    struct result *r = &rs[n];
    bt_schedule_t *s;
    bt_error_t err;
    if (n == MAX_SCHEDULES) {
      fprintf(stderr, "baton-bench: at most %d schedules at once\n",
              MAX_SCHEDULES);
      failed = 1;
      break;
    }
    n++;
    if (bt_schedule_open(tok, &s, &err) != BT_OK) {
      fail("%s", err.message);
      failed = 1;
      continue;
    }
    snprintf(r->name, sizeof r->name, "%s", bt_schedule_name(s));
    if (plan_and_simulate(&o, s, r) != 0) {
      failed = 1;
      bt_sim_destroy(r->sim);
      r->sim = NULL;
    } else if (o.dump_plan) {
      char path[1024];
      plan_path(o.dump_plan, r->name, strchr(o.schedules, ',') != NULL, path,
                sizeof path);
      if (bt_plan_save_csv(r->plan, path, &err) != BT_OK) {
        fail("%s", err.message);
        failed = 1;
      }
    }
    bt_schedule_destroy(s);
    if (o.json && r->sim != NULL)
      print_json(&o, r);
  }
  if (!o.json)
    print_table(&o, rs, n);
  if (write_pictures(&o, rs, n) != 0)
    failed = 1;
  for (int i = 0; i < n; i++)
    result_free(&rs[i]);
  return failed ? 1 : 0;
}
