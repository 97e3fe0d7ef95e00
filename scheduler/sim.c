/* Discrete-event simulator of a task graph under a per-stage cost model. */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "baton/sim.h"
#include "baton/timeline.h"
#include "error.h"
#include "graph_internal.h"

struct bt_sim {
  const struct bt_graph *graph;
  double makespan, lower_bound;
  double *start, *end; /* [ntasks] */
  double *busy, *peak; /* [devices] */
};

/* Event kinds; at equal times ends (frees) come before starts (allocs). */
enum { EV_END = 0, EV_START = 1 };

struct event {
  double time;
  int32_t type, task;
  int64_t seq;
};

struct heap {
  struct event *v;
  size_t len;
  int64_t seq;
};

static int
ev_less(const struct event *a, const struct event *b)
{
  if (a->time != b->time)
    return a->time < b->time;
  if (a->type != b->type)
    return a->type < b->type;
  return a->seq < b->seq;
}

/* The heap never holds more than one event per task, so it is allocated
 * once with ntasks slots and push cannot fail. */
static void
heap_push(struct heap *h, double time, int32_t type, int32_t task)
{
  size_t i = h->len++;

  h->v[i].time = time;
  h->v[i].type = type;
  h->v[i].task = task;
  h->v[i].seq = h->seq++;
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    struct event tmp;
    if (!ev_less(&h->v[i], &h->v[parent]))
      break;
    tmp = h->v[i];
    h->v[i] = h->v[parent];
    h->v[parent] = tmp;
    i = parent;
  }
}

static struct event
heap_pop(struct heap *h)
{
  struct event top = h->v[0];
  size_t i = 0;

  h->v[0] = h->v[--h->len];
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    struct event tmp;
    if (l < h->len && ev_less(&h->v[l], &h->v[m]))
      m = l;
    if (r < h->len && ev_less(&h->v[r], &h->v[m]))
      m = r;
    if (m == i)
      break;
    tmp = h->v[i];
    h->v[i] = h->v[m];
    h->v[m] = tmp;
    i = m;
  }
  return top;
}

/* Resolved per-stage parameters: the caller's arrays or defaults. */
struct costs {
  const double *f, *b, *w, *mb, *mw;
  double latency;
  const double *bytes; /* [stages] or NULL */
  double per_byte;
  int32_t per_rank;    /* devices per rank, 0 = every device apart */
  int32_t recompute; /* microbatches below this are recomputed */
  double *owned;
};

static bt_status
resolve_costs(const struct bt_graph *g, const bt_sim_config_t *cfg,
              struct costs *c, bt_error_t *err)
{
  const double *in[5] = {cfg->cost_f, cfg->cost_b, cfg->cost_w, cfg->mem_b,
                         cfg->mem_w};
  static const char *names[5] = {"cost_f", "cost_b", "cost_w", "mem_b",
                                 "mem_w"};
  const double *res[5];
  size_t S = (size_t)g->stages;

  c->owned = malloc(5 * S * sizeof *c->owned);
  if (c->owned == NULL)
    return bt__errorf(err, BT_ENOMEM, "out of memory in the simulator");
  for (int k = 0; k < 5; k++) {
    double *dflt = c->owned + (size_t)k * S;
    for (size_t s = 0; s < S; s++) {
      dflt[s] = k == 4 ? 0.0 : 1.0;
      if (in[k] != NULL && !(isfinite(in[k][s]) && in[k][s] >= 0.0))
        return bt__errorf(err, BT_EINVAL,
                          "%s[%zu] = %g: costs and memory must be finite "
                          "and >= 0",
                          names[k], s, in[k][s]);
    }
    res[k] = in[k] ? in[k] : dflt;
  }
  if (!(isfinite(cfg->comm_latency) && cfg->comm_latency >= 0.0))
    return bt__errorf(err, BT_EINVAL,
                      "comm_latency = %g: must be finite and >= 0",
                      cfg->comm_latency);
  c->f = res[0];
  c->b = res[1];
  c->w = res[2];
  c->mb = res[3];
  c->mw = res[4];
  c->latency = cfg->comm_latency;
  if (!(isfinite(cfg->comm_per_byte) && cfg->comm_per_byte >= 0.0) ||
      cfg->devices_per_rank < 0)
    return bt__errorf(err, BT_EINVAL,
                      "comm_per_byte = %g and devices_per_rank = %d: must be "
                      "finite and >= 0",
                      cfg->comm_per_byte, (int)cfg->devices_per_rank);
  for (size_t s = 0; cfg->edge_bytes != NULL && s < S; s++)
    if (!(isfinite(cfg->edge_bytes[s]) && cfg->edge_bytes[s] >= 0.0))
      return bt__errorf(err, BT_EINVAL,
                        "edge_bytes[%zu] = %g: must be finite and >= 0", s,
                        cfg->edge_bytes[s]);
  c->bytes = cfg->edge_bytes;
  c->per_byte = cfg->comm_per_byte;
  c->per_rank = cfg->devices_per_rank;
  c->recompute = cfg->recompute_microbatches;
  return BT_OK;
}

static double
task_cost(const struct costs *c, bt_action_t a)
{
  switch (a.kind) {
  case BT_ACT_F:
    return c->f[a.stage];
  case BT_ACT_B:
    return c->b[a.stage] + c->w[a.stage];
  case BT_ACT_I:
    return c->b[a.stage];
  default:
    return c->w[a.stage];
  }
}

static double
edge_delay(const struct bt_graph *g, const struct costs *c, int32_t from,
           int32_t to)
{
  int32_t d = g->tasks[from].device, e = g->tasks[to].device;

  if (d == e)
    return 0.0;
  if (c->per_rank <= 0)
    return c->latency;
  if (d / c->per_rank == e / c->per_rank)
    return 0.0;
  return c->latency +
         (c->bytes != NULL ? c->bytes[g->tasks[from].action.stage] : 0.0) *
             c->per_byte;
}

/* Memory a task allocates at its start and frees at its end (net). */
static void
mem_effect(const struct costs *c, bt_action_t a, double *at_start,
           double *at_end)
{
  int recomputed = a.microbatch < c->recompute;

  *at_start = 0.0;
  *at_end = 0.0;
  switch (a.kind) {
  case BT_ACT_F:
    *at_start = recomputed ? 0.0 : c->mb[a.stage];
    break;
  case BT_ACT_B:
    *at_start = recomputed ? c->mb[a.stage] : 0.0;
    *at_end = -c->mb[a.stage];
    break;
  case BT_ACT_I:
    *at_start = recomputed ? c->mb[a.stage] : 0.0;
    *at_end = c->mw[a.stage] - c->mb[a.stage];
    break;
  default:
    *at_end = -c->mw[a.stage];
    break;
  }
}

static void
run_events(struct bt_sim *sim, const struct costs *c, struct heap *h,
           int32_t *npred, double *ready, double *cur)
{
  const struct bt_graph *g = sim->graph;

  for (int32_t t = 0; t < g->ntasks; t++)
    if (npred[t] == 0)
      heap_push(h, 0.0, EV_START, t);
  while (h->len > 0) {
    struct event ev = heap_pop(h);
    const bt_task_t *task = &g->tasks[ev.task];
    double alloc, release;
    mem_effect(c, task->action, &alloc, &release);
    if (ev.type == EV_START) {
      sim->start[ev.task] = ev.time;
      cur[task->device] += alloc;
      if (cur[task->device] > sim->peak[task->device])
        sim->peak[task->device] = cur[task->device];
      heap_push(h, ev.time + task_cost(c, task->action), EV_END, ev.task);
      continue;
    }
    sim->end[ev.task] = ev.time;
    if (ev.time > sim->makespan)
      sim->makespan = ev.time;
    cur[task->device] += release;
    if (cur[task->device] > sim->peak[task->device])
      sim->peak[task->device] = cur[task->device];
    for (int32_t j = g->succ_first[ev.task]; j < g->succ_first[ev.task + 1];
         j++) {
      int32_t u = g->succ[j];
      double arrival = ev.time + edge_delay(g, c, ev.task, u);
      if (arrival > ready[u])
        ready[u] = arrival;
      if (--npred[u] == 0)
        heap_push(h, ready[u], EV_START, u);
    }
  }
}

/* See bt_sim_lower_bound's contract.  est: earliest start over data and
 * skip edges alone; tail: longest data/skip chain after a task ends. */
static double
lower_bound(const struct bt_graph *g, const struct costs *c, double *est,
            double *tail)
{
  double bound = 0.0;

  for (int32_t i = 0; i < g->ntasks; i++)
    est[i] = tail[i] = 0.0;
  for (int32_t i = 0; i < g->ntasks; i++) {
    int32_t t = g->topo[i];
    double fin = est[t] + task_cost(c, g->tasks[t].action);
    for (int32_t j = g->succ_first[t]; j < g->succ_first[t + 1]; j++) {
      int32_t u = g->succ[j];
      double at = fin + edge_delay(g, c, t, u);
      if (g->succ_kind[j] != BT_EDGE_ORDER && at > est[u])
        est[u] = at;
    }
  }
  for (int32_t i = g->ntasks - 1; i >= 0; i--) {
    int32_t t = g->topo[i];
    for (int32_t j = g->succ_first[t]; j < g->succ_first[t + 1]; j++) {
      int32_t u = g->succ[j];
      double after = edge_delay(g, c, t, u) +
                     task_cost(c, g->tasks[u].action) + tail[u];
      if (g->succ_kind[j] != BT_EDGE_ORDER && after > tail[t])
        tail[t] = after;
    }
    if (est[t] + task_cost(c, g->tasks[t].action) + tail[t] > bound)
      bound = est[t] + task_cost(c, g->tasks[t].action) + tail[t];
  }
  for (int32_t d = 0; d < g->devices; d++) {
    double head = INFINITY, work = 0.0, last = INFINITY;
    for (int32_t t = g->device_first[d]; t < g->device_first[d + 1]; t++) {
      work += task_cost(c, g->tasks[t].action);
      if (est[t] < head)
        head = est[t];
      if (tail[t] < last)
        last = tail[t];
    }
    if (g->device_first[d] < g->device_first[d + 1] &&
        head + work + last > bound)
      bound = head + work + last;
  }
  return bound;
}

bt_status
bt_sim_run(const bt_graph_t *graph, const bt_sim_config_t *cfg,
           bt_sim_t **out, bt_error_t *err)
{
  bt_sim_config_t dflt = BT_SIM_CONFIG_INIT, local;
  struct costs c;
  struct heap h = {NULL, 0, 0};
  struct bt_sim *sim = NULL;
  int32_t *npred = NULL;
  double *ready = NULL, *scratch = NULL;
  size_t n;
  bt_status rc;

  if (graph == NULL || out == NULL)
    return bt__errorf(err, BT_EINVAL, "bt_sim_run: NULL graph or out");
  if (cfg == NULL)
    cfg = &dflt;
  /* The first version ended with comm_latency; zero-extend older configs. */
  if (cfg->size < offsetof(bt_sim_config_t, comm_latency) + sizeof(double))
    return bt__errorf(err, BT_EINVAL,
                      "bt_sim_run: config size %zu is too small; start from "
                      "BT_SIM_CONFIG_INIT",
                      cfg->size);
  memset(&c, 0, sizeof c);
  memset(&local, 0, sizeof local);
  memcpy(&local, cfg, cfg->size < sizeof local ? cfg->size : sizeof local);
  cfg = &local;
  if (cfg->recompute_microbatches < 0)
    return bt__errorf(err, BT_EINVAL,
                      "recompute_microbatches = %d: must be >= 0",
                      (int)cfg->recompute_microbatches);
  rc = resolve_costs(graph, cfg, &c, err);
  if (rc != BT_OK)
    goto out_free;
  n = (size_t)graph->ntasks + 1;
  sim = calloc(1, sizeof *sim);
  npred = malloc(n * sizeof *npred);
  ready = calloc(n, sizeof *ready);
  /* scratch: est and tail for the bound, then the devices' memory. */
  scratch = malloc((2 * n + (size_t)graph->devices) * sizeof *scratch);
  h.v = malloc(n * sizeof *h.v);
  if (sim == NULL || !npred || !ready || !scratch || !h.v) {
    rc = bt__errorf(err, BT_ENOMEM, "out of memory in the simulator");
    goto out_free;
  }
  sim->graph = graph;
  sim->start = calloc(n, sizeof *sim->start);
  sim->end = calloc(n, sizeof *sim->end);
  sim->busy = calloc((size_t)graph->devices, sizeof *sim->busy);
  sim->peak = calloc((size_t)graph->devices, sizeof *sim->peak);
  if (!sim->start || !sim->end || !sim->busy || !sim->peak) {
    rc = bt__errorf(err, BT_ENOMEM, "out of memory in the simulator");
    goto out_free;
  }
  for (int32_t t = 0; t < graph->ntasks; t++) {
    npred[t] = graph->pred_first[t + 1] - graph->pred_first[t];
    sim->busy[graph->tasks[t].device] += task_cost(&c, graph->tasks[t].action);
  }
  memset(scratch, 0, (2 * n + (size_t)graph->devices) * sizeof *scratch);
  run_events(sim, &c, &h, npred, ready, scratch + 2 * n);
  sim->lower_bound = lower_bound(graph, &c, scratch, scratch + n);
  *out = sim;
  sim = NULL;
out_free:
  bt_sim_destroy(sim);
  free(c.owned);
  free(npred);
  free(ready);
  free(scratch);
  free(h.v);
  return rc;
}

void
bt_sim_destroy(bt_sim_t *sim)
{
  if (sim == NULL)
    return;
  free(sim->start);
  free(sim->end);
  free(sim->busy);
  free(sim->peak);
  free(sim);
}

const bt_graph_t *
bt_sim_graph(const bt_sim_t *sim)
{
  return sim->graph;
}

double
bt_sim_makespan(const bt_sim_t *sim)
{
  return sim->makespan;
}

double
bt_sim_lower_bound(const bt_sim_t *sim)
{
  return sim->lower_bound;
}

double
bt_sim_busy(const bt_sim_t *sim, int32_t device)
{
  if (device < 0 || device >= sim->graph->devices)
    return 0.0;
  return sim->busy[device];
}

double
bt_sim_bubble(const bt_sim_t *sim)
{
  double total = 0.0;

  if (sim->makespan <= 0.0)
    return 0.0;
  for (int32_t d = 0; d < sim->graph->devices; d++)
    total += sim->busy[d];
  return 1.0 - total / ((double)sim->graph->devices * sim->makespan);
}

double
bt_sim_peak_mem(const bt_sim_t *sim, int32_t device)
{
  if (device < 0 || device >= sim->graph->devices)
    return 0.0;
  return sim->peak[device];
}

double
bt_sim_task_start(const bt_sim_t *sim, int32_t task)
{
  if (task < 0 || task >= sim->graph->ntasks)
    return 0.0;
  return sim->start[task];
}

double
bt_sim_task_end(const bt_sim_t *sim, int32_t task)
{
  if (task < 0 || task >= sim->graph->ntasks)
    return 0.0;
  return sim->end[task];
}

void
bt_sim_slices(const bt_sim_t *sim, bt_slice_t *slices)
{
  const struct bt_graph *g = sim->graph;

  for (int32_t t = 0; t < g->ntasks; t++) {
    slices[t].action = g->tasks[t].action;
    slices[t].device = g->tasks[t].device;
    slices[t].start = sim->start[t];
    slices[t].end = sim->end[t];
  }
}
