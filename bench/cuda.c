/* baton-bench --backend cuda: the runtime on CUDA devices, measured.
 *
 * Two parts, both on logical devices of GPUs (--devices cuda:0,cuda:0 or a
 * count N: N logical devices on cuda:0):
 *
 * Pipeline (always): every task of the plan launches one kernel that
 * spins on the GPU for the task's cost (--cost, --unit-us), on its
 * device's stream; dependencies on other devices become stream waits.
 *   step_ms        wall time of a step, enqueue to sync (median of
 *                  --repeat), next to sim_step_ms, the simulator's makespan
 *                  for the same costs;
 *   host_us        per task, the time the device's actor spends enqueuing
 *                  it (its waits, the launch, its completion event): mean,
 *                  median and max over a step's tasks;
 *   graph_*        the same step captured once as a CUDA graph and
 *                  replayed: step_ms and the host time of one replay
 *                  divided by the tasks;
 *   gap_us         trace mode (timing events around every task): per
 *                  device, the idle time between a task's earliest
 *                  possible start (its device predecessor's end, and the
 *                  ends of its predecessors on other devices) and its
 *                  start: mean, median, max over the step's tasks.
 *
 * Training (--model resmlp): the resmlp trainer on the CUDA backend
 * (--layers, --hidden, --batch, --microbatches), eager and with CUDA
 * graphs: step_ms, and kernel_share, the fraction of the step's wall time
 * during which some task's kernels (cuBLAS and baton's) run on the GPU;
 * the rest is the pipeline's own cost (overhead_ms).
 *
 * One JSON object with --json, else a table.  Exits 77 without a GPU. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "baton/baton.h"
#include "baton/cuda.h"
#include "bench.h"
#include "cuda_spin.h"

#define MAX_GPUS 64

struct cuda_opts {
  struct bench_pipe p;
  const char *model;
  int32_t gpus[MAX_GPUS];
  int layers, hidden, batch;
};

struct spin {
  const struct cuda_opts *o;
};

struct stats {
  double mean, p50, max;
};

static int
parse_devices(const char *v, struct cuda_opts *o)
{
  char *end;
  long n = strtol(v, &end, 10);

  o->p.devices = 0;
  if (*end == '\0') {
    if (n < 1 || n > MAX_GPUS)
      return bench_fail("--devices %s: give 1..%d", v, MAX_GPUS);
    o->p.devices = (int)n;
    return 0;
  }
  while (*v != '\0') {
    long k;
    if (strncmp(v, "cuda:", 5) != 0 || o->p.devices == MAX_GPUS)
      return bench_fail("--devices: write cuda:K,... or a count");
    k = strtol(v + 5, &end, 10);
    if (end == v + 5 || k < 0 || (*end != ',' && *end != '\0'))
      return bench_fail("--devices: '%s' needs a GPU number after cuda:", v);
    o->gpus[o->p.devices++] = (int32_t)k;
    v = *end == ',' ? end + 1 : end;
  }
  return 0;
}

static int
cuda_option(void *user, const char *a, const char *v)
{
  struct cuda_opts *o = user;

  if (v == NULL)
    return 0; /* no flags of its own */
  if (strcmp(a, "--devices") == 0)
    return parse_devices(v, o) != 0 ? -1 : 1;
  if (strcmp(a, "--model") == 0) {
    if (strcmp(v, "resmlp") != 0) {
      bench_fail("--model %s: the cuda backend trains resmlp", v);
      return -1;
    }
    o->model = v;
  } else if (strcmp(a, "--layers") == 0) {
    o->layers = atoi(v);
  } else if (strcmp(a, "--hidden") == 0) {
    o->hidden = atoi(v);
  } else if (strcmp(a, "--batch") == 0) {
    o->batch = atoi(v);
  } else {
    return 0;
  }
  return 1;
}

static int
parse(int argc, char **argv, struct cuda_opts *o)
{
  if (bench_parse(argc, argv, &o->p, "cuda",
                  "--model resmlp --layers --hidden --batch", cuda_option,
                  o) != 0)
    return 1;
  if (o->p.devices < 1 || o->p.microbatches < 1 || o->p.repeat < 1 ||
      !(o->p.unit_us > 0) || o->layers < 0 || o->hidden < 1 || o->batch < 1)
    return bench_fail("--backend cuda needs --devices, --microbatches, "
                      "--repeat, --hidden, --batch >= 1 and --unit-us > 0");
  return 0;
}

/* A JSON number, or null for a figure not measured (NaN). */
static const char *
jnum(char *buf, size_t len, double v)
{
  if (isfinite(v))
    snprintf(buf, len, "%.6g", v);
  else
    snprintf(buf, len, "null");
  return buf;
}

static struct stats
stats_of(double *v, int n)
{
  struct stats s = {0, 0, 0};

  for (int i = 0; i < n; i++) {
    s.mean += v[i];
    if (v[i] > s.max)
      s.max = v[i];
  }
  if (n > 0) {
    s.mean /= n;
    s.p50 = bench_median(v, n);
  }
  return s;
}

static int
spin_task(const bt_task_call_t *call, char *errbuf, size_t errlen)
{
  const struct cuda_opts *o = ((const struct spin *)call->user)->o;
  const bt_cuda_ctx_t *ctx = call->device_ctx;
  double cost = call->action.kind == BT_ACT_F   ? o->p.f
                : call->action.kind == BT_ACT_B ? o->p.b + o->p.w
                : call->action.kind == BT_ACT_I ? o->p.b
                                                : o->p.w;

  if (bench_cuda_spin(ctx->stream, cost * o->p.unit_us) != 0) {
    snprintf(errbuf, errlen, "the spin kernel did not launch");
    return BT_EIO;
  }
  return 0;
}

/* Whether every device is on one GPU: task times from timing events
 * compare only within a GPU (each has its own origin). */
static int
one_gpu(const struct cuda_opts *o)
{
  for (int i = 1; i < o->p.devices; i++)
    if (o->gpus[i] != o->gpus[0])
      return 0;
  return 1;
}

/* Device idle gaps of the traced step: for each task, its start minus the
 * latest end among its predecessors (the device's previous task
 * included); first tasks of a device count from the step's start. */
static int
gaps(bt_cuda_devices_t *devs, const bt_graph_t *g, double *gap, int *ngap)
{
  int32_t n = bt_graph_task_count(g);
  double *s = calloc((size_t)n + 1, sizeof *s),
         *e = calloc((size_t)n + 1, sizeof *e);

  *ngap = 0;
  if (s == NULL || e == NULL) {
    free(s);
    free(e);
    return 1;
  }
  for (int32_t t = 0; t < n; t++) {
    int32_t dev;
    if (bt_cuda_devices_task_times(devs, t, &dev, &s[t], &e[t]) != BT_OK) {
      free(s);
      free(e);
      return 1;
    }
  }
  for (int32_t t = 0; t < n; t++) {
    double ready = 0.0;
    int32_t np = bt_graph_predecessor_count(g, t);
    for (int32_t i = 0; i < np; i++) {
      int32_t q = bt_graph_predecessor(g, t, i, NULL);
      if (e[q] > ready)
        ready = e[q];
    }
    if (np == 0)
      continue; /* a device's first task waits for the launch itself */
    gap[(*ngap)++] = s[t] > ready ? s[t] - ready : 0.0;
  }
  free(s);
  free(e);
  return 0;
}

static int
pipeline_bench(const struct cuda_opts *o)
{
  bt_graph_config_t gc = BT_GRAPH_CONFIG_INIT;
  bt_sim_config_t sc = BT_SIM_CONFIG_INIT;
  bt_runtime_config_t rc = BT_RUNTIME_CONFIG_INIT;
  bt_exec_config_t ec = BT_EXEC_CONFIG_INIT;
  struct spin sp_user = {o};
  bt_device_desc_t desc[MAX_GPUS];
  bt_cuda_devices_t *devs = NULL;
  bt_schedule_t *sched = NULL;
  bt_plan_t *plan = NULL;
  bt_graph_t *g = NULL;
  bt_sim_t *sim = NULL;
  bt_runtime_t *rt = NULL;
  bt_exec_t *ex = NULL;
  bt_slice_t *slices = NULL;
  double *ms = NULL, *host = NULL, *gap = NULL, *replay = NULL;
  double cost[3 * MAX_GPUS];
  struct stats h = {0}, gs = {0};
  double step_ms, graph_ms = NAN, graph_host_us = NAN;
  int32_t n = 0;
  int ngap = 0, status = 1;
  bt_error_t err;

  for (int s = 0; s < o->p.devices; s++) {
    cost[s] = o->p.f;
    cost[o->p.devices + s] = o->p.b;
    cost[2 * o->p.devices + s] = o->p.w;
  }
  sc.cost_f = cost;
  sc.cost_b = cost + o->p.devices;
  sc.cost_w = cost + 2 * o->p.devices;
  if (bt_schedule_open(o->p.schedule, &sched, &err) != BT_OK)
    goto out_err;
  if (bench_pipe_plan(&o->p, sched, &plan, &err) != 0)
    goto out_err;
  gc.plan = plan;
  if (bt_graph_create(&gc, &g, &err) != BT_OK ||
      bt_sim_run(g, &sc, &sim, &err) != BT_OK)
    goto out_err;
  n = bt_graph_task_count(g);
  ms = calloc((size_t)o->p.repeat, sizeof *ms);
  host = calloc((size_t)n, sizeof *host);
  replay = calloc((size_t)o->p.repeat, sizeof *replay);
  gap = calloc((size_t)n, sizeof *gap);
  slices = calloc((size_t)n, sizeof *slices);
  if (ms == NULL || host == NULL || gap == NULL || slices == NULL ||
      replay == NULL) {
    bench_fail("out of memory");
    goto out;
  }
  if (bt_cuda_devices_create(o->gpus, o->p.devices, desc, &devs, &err) != BT_OK)
    goto out_err;
  rc.devices = o->p.devices;
  rc.device = desc;
  rc.mode = BT_RUNTIME_DEDICATED;
  ec.fn = spin_task;
  ec.user = &sp_user;
  ec.trace = 1;
  if (bt_runtime_create(&rc, &rt, &err) != BT_OK ||
      bt_exec_create(rt, g, &ec, &ex, &err) != BT_OK)
    goto out_err;

  /* Eager: the first step warms up (events, module load). */
  for (int r = -1; r < o->p.repeat; r++) {
    double t0 = bench_now_s();
    if (bt_exec_run(ex, &err) != BT_OK ||
        bt_cuda_devices_sync(devs, &err) != BT_OK)
      goto out_err;
    if (r >= 0)
      ms[r] = (bench_now_s() - t0) * 1e3;
  }
  step_ms = bench_median(ms, o->p.repeat);
  bt_exec_slices(ex, slices);
  for (int32_t t = 0; t < n; t++)
    host[t] = slices[t].end - slices[t].start;
  h = stats_of(host, n);

  /* Trace mode: timing events, the device idle gaps (on one GPU only:
   * the clocks of several do not compare). */
  gs.mean = gs.p50 = gs.max = NAN;
  if (!one_gpu(o))
    goto traced;
  if (bt_cuda_devices_trace(devs, 1, &err) != BT_OK ||
      bt_cuda_devices_step_begin(devs, &err) != BT_OK ||
      bt_exec_run(ex, &err) != BT_OK ||
      bt_cuda_devices_sync(devs, &err) != BT_OK)
    goto out_err;
  if (gaps(devs, g, gap, &ngap) != 0) {
    bench_fail("the traced step has no timing events");
    goto out;
  }
  gs = stats_of(gap, ngap);
  if (bt_cuda_devices_trace(devs, 0, &err) != BT_OK)
    goto out_err;
traced:

  /* The step as one CUDA graph. */
  if (bt_cuda_devices_capture_begin(devs, &err) != BT_OK)
    goto out_err;
  if (bt_exec_run(ex, &err) != BT_OK) {
    bt_error_t ignored;
    bt_cuda_devices_capture_end(devs, &ignored);
    goto out_err;
  }
  if (bt_cuda_devices_capture_end(devs, &err) != BT_OK)
    goto out_err;
  for (int r = -1; r < o->p.repeat; r++) {
    double t0 = bench_now_s(), t1;
    if (bt_cuda_devices_replay(devs, &err) != BT_OK)
      goto out_err;
    t1 = bench_now_s();
    if (bt_cuda_devices_sync(devs, &err) != BT_OK)
      goto out_err;
    if (r >= 0) {
      ms[r] = (bench_now_s() - t0) * 1e3;
      replay[r] = (t1 - t0) * 1e6 / n;
    }
  }
  graph_ms = bench_median(ms, o->p.repeat);
  graph_host_us = bench_median(replay, o->p.repeat);

  if (o->p.json) {
    char g0[32], g1[32], g2[32];
    printf("{\"backend\":\"cuda\",\"schedule\":\"%s\",\"devices\":%d,"
           "\"microbatches\":%d,\"tasks\":%d,\"unit_us\":%g,"
           "\"step_ms\":%.6g,\"sim_step_ms\":%.6g,"
           "\"host_us\":{\"mean\":%.4g,\"p50\":%.4g,\"max\":%.4g},"
           "\"gap_us\":{\"mean\":%s,\"p50\":%s,\"max\":%s,\"n\":%d},"
           "\"graph_step_ms\":%.6g,\"graph_host_us\":%.4g}\n",
           bt_schedule_name(sched), o->p.devices, o->p.microbatches, (int)n,
           o->p.unit_us, step_ms, bt_sim_makespan(sim) * o->p.unit_us / 1e3,
           h.mean, h.p50, h.max, jnum(g0, sizeof g0, gs.mean),
           jnum(g1, sizeof g1, gs.p50), jnum(g2, sizeof g2, gs.max), ngap,
           graph_ms, graph_host_us);
  } else {
    printf("%s on %d cuda devices, m=%d, %d tasks of %g us units\n",
           bt_schedule_name(sched), o->p.devices, o->p.microbatches, (int)n,
           o->p.unit_us);
    printf("  step            %.3f ms (simulated %.3f ms)\n", step_ms,
           bt_sim_makespan(sim) * o->p.unit_us / 1e3);
    printf("  host per task   mean %.2f us, median %.2f, max %.2f\n", h.mean,
           h.p50, h.max);
    printf("  idle gaps       mean %.2f us, median %.2f, max %.2f (%d)\n",
           gs.mean, gs.p50, gs.max, ngap);
    printf("  CUDA graph      step %.3f ms, host %.3f us per task\n", graph_ms,
           graph_host_us);
  }
  status = 0;
  goto out;
out_err:
  bench_fail("%s", err.message);
out:
  bt_exec_destroy(ex);
  bt_runtime_destroy(rt);
  bt_cuda_devices_destroy(devs);
  bt_sim_destroy(sim);
  bt_graph_destroy(g);
  bt_plan_destroy(plan);
  bt_schedule_destroy(sched);
  free(ms);
  free(host);
  free(replay);
  free(gap);
  free(slices);
  return status;
}

/* The union of [s, e) intervals, in place (sorted by start). */
static int
by_start(const void *a, const void *b)
{
  const double *x = a, *y = b;
  return (x[0] > y[0]) - (x[0] < y[0]);
}

static double
union_length(double *iv, int n)
{
  double total = 0.0, s = 0.0, e = -INFINITY;

  qsort(iv, (size_t)n, 2 * sizeof *iv, by_start);
  for (int i = 0; i < n; i++) {
    if (iv[2 * i] > e) {
      if (e > s)
        total += e - s;
      s = iv[2 * i];
      e = iv[2 * i + 1];
    } else if (iv[2 * i + 1] > e) {
      e = iv[2 * i + 1];
    }
  }
  if (e > s)
    total += e - s;
  return total;
}

/* One trained configuration: eager or with graphs.  *ms, *share. */
static int
train_run(const struct cuda_opts *o, int graph, double *step_ms, double *share)
{
  bt_resmlp_config_t mc = BT_RESMLP_CONFIG_INIT;
  bt_trainer_config_t tc = BT_TRAINER_CONFIG_INIT;
  bt_backend_t *be = NULL;
  bt_model_t *model = NULL;
  bt_trainer_t *tr = NULL;
  bt_schedule_t *sched = NULL;
  bt_cuda_devices_t *devs;
  float *x = NULL, loss;
  int32_t *y = NULL;
  double *ms = NULL, *iv = NULL, t0, busy;
  int status = 1, ntask = 0, cap = 1 << 16;
  bt_error_t err;

  mc.blocks = o->layers;
  mc.hidden = o->hidden;
  mc.inputs = 64;
  mc.classes = 10;
  tc.batch = o->batch;
  tc.microbatches = o->p.microbatches;
  tc.devices = o->p.devices;
  tc.optimizer = BT_OPTIMIZER_SGD;
  tc.lr = 1e-3f;
  tc.cuda_graph = graph;
  x = malloc((size_t)o->batch * 64 * sizeof *x);
  y = malloc((size_t)o->batch * sizeof *y);
  ms = calloc((size_t)o->p.repeat, sizeof *ms);
  iv = malloc(2 * (size_t)cap * sizeof *iv);
  if (x == NULL || y == NULL || ms == NULL || iv == NULL) {
    bench_fail("out of memory");
    goto out;
  }
  for (int i = 0; i < o->batch * 64; i++)
    x[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;
  for (int i = 0; i < o->batch; i++)
    y[i] = i % 10;
  if (bt_model_create_resmlp(&mc, &model, &err) != BT_OK ||
      bt_schedule_open(o->p.schedule, &sched, &err) != BT_OK ||
      bt_cuda_backend_create(o->gpus, o->p.devices, &be, &err) != BT_OK)
    goto out_err;
  tc.schedule = sched;
  tc.backend = be;
  if (bt_trainer_create(model, &tc, &tr, &err) != BT_OK)
    goto out_err;
  devs = bt_cuda_backend_devices(be);
  for (int r = -3; r < o->p.repeat; r++) {
    t0 = bench_now_s();
    if (bt_trainer_backward(tr, x, y, &loss, &err) != BT_OK)
      goto out_err;
    if (r >= 0)
      ms[r] = (bench_now_s() - t0) * 1e3;
    if (bt_trainer_update(tr, &err) != BT_OK)
      goto out_err;
  }
  *step_ms = bench_median(ms, o->p.repeat);
  /* The kernels' share: one traced step, eager (a replay records no
   * timing events of its own). */
  *share = NAN;
  if (!graph && one_gpu(o)) {
    if (bt_cuda_devices_trace(devs, 1, &err) != BT_OK ||
        bt_cuda_devices_step_begin(devs, &err) != BT_OK)
      goto out_err;
    t0 = bench_now_s();
    if (bt_trainer_backward(tr, x, y, &loss, &err) != BT_OK)
      goto out_err;
    busy = (bench_now_s() - t0) * 1e6;
    for (int32_t d, t = 0; ntask < cap; t++) {
      if (bt_cuda_devices_task_times(devs, t, &d, &iv[2 * ntask],
                                     &iv[2 * ntask + 1]) != BT_OK)
        break;
      ntask++;
    }
    bt_cuda_devices_trace(devs, 0, &err);
    *share = union_length(iv, ntask) / busy;
  }
  status = 0;
  goto out;
out_err:
  bench_fail("%s", err.message);
out:
  bt_trainer_destroy(tr);
  bt_backend_destroy(be);
  bt_model_destroy(model);
  bt_schedule_destroy(sched);
  free(x);
  free(y);
  free(ms);
  free(iv);
  return status;
}

static int
train_bench(const struct cuda_opts *o)
{
  double eager_ms, share, graph_ms, unused;

  if (train_run(o, 0, &eager_ms, &share) != 0 ||
      train_run(o, 1, &graph_ms, &unused) != 0)
    return 1;
  if (o->p.json) {
    char s0[32], s1[32];
    printf("{\"backend\":\"cuda\",\"model\":\"resmlp\",\"schedule\":\"%s\","
           "\"devices\":%d,\"layers\":%d,\"hidden\":%d,\"batch\":%d,"
           "\"microbatches\":%d,\"step_ms\":%.6g,\"kernel_share\":%s,"
           "\"overhead_ms\":%s,\"graph_step_ms\":%.6g}\n",
           o->p.schedule, o->p.devices, o->layers, o->hidden, o->batch,
           o->p.microbatches, eager_ms, jnum(s0, sizeof s0, share),
           jnum(s1, sizeof s1, eager_ms * (1.0 - share)), graph_ms);
  } else
    printf("resmlp L=%d H=%d N=%d m=%d, %s on %d cuda devices\n"
           "  step %.3f ms, kernels %.1f%% of it (pipeline %.3f ms); "
           "CUDA graph %.3f ms\n",
           o->layers, o->hidden, o->batch, o->p.microbatches, o->p.schedule,
           o->p.devices, eager_ms, 100.0 * share, eager_ms * (1.0 - share),
           graph_ms);
  return 0;
}

int
bench_cuda(int argc, char **argv)
{
  struct cuda_opts o = {
      {"1f1b", 2, 8, 20, 0, 20.0, 1.0, 1.0, 1.0}, NULL, {0}, 8, 1024, 4096};

  if (parse(argc, argv, &o) != 0)
    return 2;
  if (!bt_cuda_available()) {
    printf("baton-bench --backend cuda: no usable CUDA device here\n");
    return 77;
  }
  return o.model != NULL ? train_bench(&o) : pipeline_bench(&o);
}
