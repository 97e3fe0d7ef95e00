/* baton-bench --backend cpu: the pipeline across processes, measured and
 * predicted.  Run it alone or under `mpirun -np W`.
 *
 * Every stage's task takes its cost in wall time (sleep to the deadline,
 * then spin the last stretch, as the synthetic backend) and moves --bytes
 * of activation (and of input gradient) to the next stage, on the real
 * embedding API: between ranks as MPI messages, within a process through
 * shared buffers.  Rank 0 reports:
 *   edge_us       one transfer of --bytes between ranks 0 and 1 (half a
 *                 ping-pong, median), and the alpha-beta fit (latency
 *                 from 8-byte messages, the rest per byte);
 *   step_ms_one   the same pipeline on all p devices in rank 0 alone (no
 *                 transfers): the compute-and-bubble baseline;
 *   step_ms       the step across the W ranks;
 *   comm_share    1 - step_ms_one / step_ms: what the transfers cost;
 *   sim_*         the simulator on the same plan with cross-rank edges
 *                 costing alpha + bytes * beta (bt_sim_config_t's
 *                 devices_per_rank), the prediction to compare;
 *   predict       (with --predict) the model at 8, 64 and 512 devices,
 *                 one device per node, with --net-latency-us and
 *                 --net-gbps for the network between nodes.
 * One JSON object on stdout with --json, else a table. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "baton/baton.h"
#include "baton/comm.h"
#include "bench.h"

struct cpu_opts {
  struct bench_pipe p;
  int predict;
  double net_latency_us, net_gbps;
  size_t bytes;
};

struct cpu_stage {
  const struct cpu_opts *o;
};

static void
busy_until(double deadline)
{
  double left;

  while ((left = deadline - bench_now_s()) > 150e-6) {
    struct timespec ts = {0, (long)((left - 120e-6) * 1e9)};
    nanosleep(&ts, NULL);
  }
  while (bench_now_s() < deadline)
    ;
}

static int
cpu_task(const bt_stage_call_t *c, char *errbuf, size_t errlen)
{
  const struct cpu_opts *o = ((const struct cpu_stage *)c->user)->o;
  double cost = c->kind == BT_ACT_F   ? o->p.f
                : c->kind == BT_ACT_B ? o->p.b + o->p.w
                : c->kind == BT_ACT_I ? o->p.b
                : c->kind == BT_ACT_W ? o->p.w
                                      : 0.0;

  (void)errbuf;
  (void)errlen;
  busy_until(bench_now_s() + cost * o->p.unit_us * 1e-6);
  return 0;
}

static int
cpu_option(void *user, const char *a, const char *v)
{
  struct cpu_opts *o = user;

  if (v == NULL) {
    o->predict |= strcmp(a, "--predict") == 0;
    return strcmp(a, "--predict") == 0;
  }
  if (strcmp(a, "--devices") == 0)
    o->p.devices = atoi(v);
  else if (strcmp(a, "--bytes") == 0)
    o->bytes = (size_t)strtoull(v, NULL, 10);
  else if (strcmp(a, "--net-latency-us") == 0)
    o->net_latency_us = atof(v);
  else if (strcmp(a, "--net-gbps") == 0)
    o->net_gbps = atof(v);
  else
    return 0;
  return 1;
}

static int
parse(int argc, char **argv, struct cpu_opts *o)
{
  if (bench_parse(argc, argv, &o->p, "cpu",
                  "--bytes --predict --net-latency-us --net-gbps", cpu_option,
                  o) != 0)
    return 1;
  if (o->p.devices < 1 || o->p.microbatches < 1 || o->p.repeat < 1 ||
      !(o->p.unit_us > 0) || o->bytes < 8 || !(o->net_gbps > 0))
    return bench_fail("--backend cpu needs --devices, --microbatches, "
                      "--repeat >= 1, --unit-us > 0, --bytes >= 8 and "
                      "--net-gbps > 0");
  return 0;
}

/* Half a ping-pong of `bytes` between ranks 0 and 1, median of n, in
 * seconds; 0 on other ranks or alone. */
static double
pingpong(bt_comm_t *comm, size_t bytes, int n, bt_error_t *err, int *rc)
{
  double *t = calloc((size_t)n, sizeof *t), med = 0.0;
  void *buf = calloc(1, bytes);
  int32_t me = bt_comm_rank(comm);

  *rc = t == NULL || buf == NULL;
  for (int i = -2; *rc == 0 && i < n && me < 2; i++) {
    double t0 = bench_now_s();
    if (me == 0)
      *rc = bt_comm_send(comm, buf, bytes, 1, 7, err) != BT_OK ||
            bt_comm_recv(comm, buf, bytes, 1, 8, err) != BT_OK;
    else
      *rc = bt_comm_recv(comm, buf, bytes, 0, 7, err) != BT_OK ||
            bt_comm_send(comm, buf, bytes, 0, 8, err) != BT_OK;
    if (i >= 0)
      t[i] = (bench_now_s() - t0) / 2.0;
  }
  if (*rc == 0 && me == 0)
    med = bench_median(t, n);
  free(t);
  free(buf);
  return med;
}

/* Median step time of the pipeline (comm NULL: this process alone). */
static int
time_pipeline(const struct cpu_opts *o, const bt_schedule_t *sched,
              bt_comm_t *comm, int32_t local_devices, double *step_s,
              bt_plan_t **plan_out, bt_error_t *err)
{
  bt_pipeline_config_t pc = BT_PIPELINE_CONFIG_INIT;
  bt_stage_desc_t *desc = calloc((size_t)o->p.devices, sizeof *desc);
  struct cpu_stage st = {o};
  bt_pipeline_t *pl = NULL;
  double *t = calloc((size_t)o->p.repeat, sizeof *t);
  int rc = 1;

  if (desc == NULL || t == NULL)
    goto out;
  for (int s = 0; s < o->p.devices; s++) {
    desc[s] = (bt_stage_desc_t)BT_STAGE_DESC_INIT;
    desc[s].forward = desc[s].backward = cpu_task;
    desc[s].input_grad = desc[s].weight_grad = cpu_task;
    desc[s].output_bytes = s == o->p.devices - 1 ? 8 : o->bytes;
    desc[s].grad_input_bytes = s == 0 ? 0 : o->bytes;
    desc[s].cost_f = o->p.f;
    desc[s].cost_b = o->p.b;
    desc[s].cost_w = o->p.w;
    desc[s].user = &st;
  }
  pc.stages = o->p.devices;
  pc.stage = desc;
  pc.devices = o->p.devices;
  pc.virtual_stages = 1;
  pc.microbatches = o->p.microbatches;
  pc.schedule = sched;
  pc.threads = local_devices; /* sleeping tasks must not share threads */
  pc.comm = comm;
  if (bt_pipeline_create(&pc, &pl, err) != BT_OK)
    goto out;
  for (int r = -1; r < o->p.repeat; r++) {
    double t0 = bench_now_s();
    if (bt_pipeline_step(pl, err) != BT_OK)
      goto out;
    if (r >= 0)
      t[r] = bench_now_s() - t0;
  }
  *step_s = bench_median(t, o->p.repeat);
  rc = plan_out != NULL ? bench_pipe_plan(&o->p, sched, plan_out, err) : 0;
out:
  bt_pipeline_destroy(pl);
  free(desc);
  free(t);
  return rc;
}

/* The simulator on plan: cross-rank edges cost latency + bytes * per_byte
 * (cost units), devices_per_rank k (0: none cross). */
static int
simulate(const struct cpu_opts *o, const bt_plan_t *plan, int32_t k,
         double latency, double per_byte, double *makespan, double *bubble,
         bt_error_t *err)
{
  bt_graph_config_t gc = BT_GRAPH_CONFIG_INIT;
  bt_sim_config_t sc = BT_SIM_CONFIG_INIT;
  int32_t S = bt_plan_stages(plan);
  double *c = malloc(4 * (size_t)S * sizeof *c);
  bt_graph_t *g = NULL;
  bt_sim_t *sim = NULL;
  int rc = 1;

  if (c == NULL)
    return 1;
  for (int32_t s = 0; s < S; s++) {
    c[s] = o->p.f;
    c[S + s] = o->p.b;
    c[2 * S + s] = o->p.w;
    c[3 * S + s] = (double)o->bytes;
  }
  gc.plan = plan;
  if (bt_graph_create(&gc, &g, err) != BT_OK)
    goto out;
  sc.cost_f = c;
  sc.cost_b = c + S;
  sc.cost_w = c + 2 * S;
  sc.edge_bytes = c + 3 * S;
  sc.comm_latency = latency;
  sc.comm_per_byte = per_byte;
  sc.devices_per_rank = k > 0 ? k : bt_plan_devices(plan);
  if (bt_sim_run(g, &sc, &sim, err) != BT_OK)
    goto out;
  *makespan = bt_sim_makespan(sim);
  *bubble = bt_sim_bubble(sim);
  rc = 0;
out:
  bt_sim_destroy(sim);
  bt_graph_destroy(g);
  free(c);
  return rc;
}

int
bench_cpu(int argc, char **argv)
{
  struct cpu_opts o = {
      {"1f1b", 4, 8, 5, 0, 1000.0, 1, 1, 1}, 0, 5.0, 25.0, 1 << 20};
  bt_comm_t *comm = NULL;
  bt_schedule_t *sched = NULL;
  bt_plan_t *plan = NULL;
  bt_error_t err = {0};
  double alpha = 0, t_edge = 0, beta = 0, one = 0, step = 0;
  double sim0 = 0, simw = 0, bub = 0;
  int32_t W, me;
  int rc = 1, prc = 0;

  if (bt_comm_init(&argc, &argv, &comm, &err) != BT_OK) {
    fprintf(stderr, "baton-bench: %s\n", err.message);
    return 1;
  }
  W = bt_comm_size(comm);
  me = bt_comm_rank(comm);
  if (parse(argc, argv, &o) != 0)
    goto out;
  if (o.p.devices % W != 0) {
    fprintf(stderr, "baton-bench: %d devices do not split over %d ranks\n",
            o.p.devices, (int)W);
    goto out;
  }
  if (bt_schedule_open(o.p.schedule, &sched, &err) != BT_OK)
    goto fail;
  if (W > 1) {
    alpha = pingpong(comm, 8, 50, &err, &prc);
    if (prc == 0)
      t_edge = pingpong(comm, o.bytes, 20, &err, &prc);
    if (prc != 0)
      goto fail;
    beta = (t_edge - alpha) / (double)o.bytes;
    if (beta < 0)
      beta = 0;
  }
  /* Rank 0 alone, then the job. */
  if (me == 0 &&
      time_pipeline(&o, sched, NULL, o.p.devices, &one, &plan, &err) != 0)
    goto fail;
  if (bt_comm_barrier(comm, &err) != BT_OK)
    goto fail;
  if (W > 1 &&
      time_pipeline(&o, sched, comm, o.p.devices / W, &step, NULL, &err) != 0)
    goto fail;
  if (W == 1)
    step = one;
  if (me != 0) {
    rc = 0;
    goto out;
  }
  if (simulate(&o, plan, 0, 0, 0, &sim0, &bub, &err) != 0 ||
      simulate(&o, plan, o.p.devices / W, alpha * 1e6 / o.p.unit_us,
               beta * 1e6 / o.p.unit_us, &simw, &bub, &err) != 0)
    goto fail;
  if (o.p.json) {
    printf("{\"backend\":\"cpu\",\"schedule\":\"%s\",\"ranks\":%d,"
           "\"devices\":%d,\"microbatches\":%d,\"bytes\":%zu,\"unit_us\":%g,"
           "\"alpha_us\":%.3f,\"beta_us_per_mb\":%.3f,\"edge_us\":%.3f,"
           "\"step_ms_one\":%.3f,\"step_ms\":%.3f,\"comm_share\":%.4f,"
           "\"sim_step_ms_one\":%.3f,\"sim_step_ms\":%.3f,"
           "\"sim_comm_share\":%.4f",
           bt_schedule_name(sched), (int)W, o.p.devices, o.p.microbatches,
           o.bytes, o.p.unit_us, alpha * 1e6, beta * 1e6 * 1048576.0,
           t_edge * 1e6, one * 1e3, step * 1e3, 1.0 - one / step,
           sim0 * o.p.unit_us * 1e-3, simw * o.p.unit_us * 1e-3,
           1.0 - sim0 / simw);
  } else {
    printf("cpu backend, %s, %d ranks, %d devices, m=%d, %zu bytes per "
           "edge\n",
           bt_schedule_name(sched), (int)W, o.p.devices, o.p.microbatches,
           o.bytes);
    printf("  edge transfer %.1f us (alpha %.1f us, %.1f us/MiB)\n",
           t_edge * 1e6, alpha * 1e6, beta * 1e6 * 1048576.0);
    printf("  step: one process %.2f ms, %d ranks %.2f ms, communication "
           "share %.1f%%\n",
           one * 1e3, (int)W, step * 1e3, 100.0 * (1.0 - one / step));
    printf("  simulated: %.2f ms and %.2f ms, share %.1f%%\n",
           sim0 * o.p.unit_us * 1e-3, simw * o.p.unit_us * 1e-3,
           100.0 * (1.0 - sim0 / simw));
  }
  if (o.predict) {
    static const int32_t sizes[] = {8, 64, 512};
    double lat = o.net_latency_us / o.p.unit_us;
    double per_byte = 1e6 / (o.net_gbps * 1e9) / o.p.unit_us;
    if (o.p.json)
      printf(",\"predict\":[");
    for (int i = 0; i < 3; i++) {
      bt_plan_t *pp = NULL;
      struct cpu_opts po = o;
      double ms0, msw, b0, bw;
      po.p.devices = sizes[i];
      po.p.microbatches = 4 * sizes[i] < 1024 ? 4 * sizes[i] : 1024;
      if (bench_pipe_plan(&po.p, sched, &pp, &err) != 0 ||
          simulate(&po, pp, 0, 0, 0, &ms0, &b0, &err) != 0 ||
          simulate(&po, pp, 1, lat, per_byte, &msw, &bw, &err) != 0) {
        bt_plan_destroy(pp);
        goto fail;
      }
      if (o.p.json)
        printf("%s{\"devices\":%d,\"microbatches\":%d,\"step_ms\":%.3f,"
               "\"bubble\":%.4f,\"comm_share\":%.4f}",
               i ? "," : "", po.p.devices, po.p.microbatches,
               msw * o.p.unit_us * 1e-3, bw, 1.0 - ms0 / msw);
      else
        printf("  predicted at %d devices (m=%d, one per node, %.1f us, "
               "%.0f GB/s): %.1f ms, bubble %.1f%%, communication %.1f%%\n",
               po.p.devices, po.p.microbatches, o.net_latency_us, o.net_gbps,
               msw * o.p.unit_us * 1e-3, 100.0 * bw, 100.0 * (1.0 - ms0 / msw));
      bt_plan_destroy(pp);
    }
    if (o.p.json)
      printf("]");
  }
  if (o.p.json)
    printf("}\n");
  rc = 0;
  goto out;
fail:
  fprintf(stderr, "baton-bench: rank %d: %s\n", (int)me, err.message);
out:
  bt_plan_destroy(plan);
  bt_schedule_destroy(sched);
  if (rc == 0)
    bt_comm_finalize(comm);
  return rc;
}
