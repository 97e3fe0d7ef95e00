/* Task graph: building, validation, cycle reporting. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "baton/graph.h"
#include "error.h"
#include "graph_internal.h"

/* Problems listed in one error before the rest are only counted. */
#define MAX_LISTED 24

struct edge {
  int32_t src, dst;
  int32_t kind;
};

struct edges {
  struct edge *v;
  size_t len, cap;
};

static int
edges_push(struct edges *e, int32_t src, int32_t dst, int32_t kind)
{
  if (src < 0 || dst < 0)
    return 0;
  if (e->len == e->cap) {
    size_t cap = e->cap ? e->cap * 2 : 256;
    struct edge *p = realloc(e->v, cap * sizeof *p);
    if (p == NULL)
      return -1;
    e->v = p;
    e->cap = cap;
  }
  e->v[e->len].src = src;
  e->v[e->len].dst = dst;
  e->v[e->len].kind = kind;
  e->len++;
  return 0;
}

static int
edge_cmp(const void *pa, const void *pb)
{
  const struct edge *a = pa, *b = pb;

  if (a->src != b->src)
    return (a->src > b->src) - (a->src < b->src);
  if (a->dst != b->dst)
    return (a->dst > b->dst) - (a->dst < b->dst);
  return (a->kind > b->kind) - (a->kind < b->kind);
}

static const char *
fmt_action(bt_action_t a, char buf[BT_ACTION_TEXT_MAX])
{
  bt_action_format(a, buf, BT_ACTION_TEXT_MAX);
  return buf;
}

static bt_action_t
act(int32_t stage, int32_t kind, int32_t mb)
{
  bt_action_t a;

  a.stage = stage;
  a.kind = kind;
  a.microbatch = mb;
  return a;
}

/* Counts a problem; lists it while fewer than MAX_LISTED are listed. */
#define PROBLEM(err, n, ...)                                                  \
  do {                                                                        \
    if ((n)++ < MAX_LISTED)                                                   \
      bt__error_append((err), __VA_ARGS__);                                   \
  } while (0)

/* Collects the plan's tasks, grouped by device; flags duplicates and tasks
 * on a device that does not own their stage. */
static int
collect_tasks(struct bt_graph *g, const bt_plan_t *plan, bt_error_t *err)
{
  int problems = 0;
  int32_t t = 0;

  for (int32_t d = 0; d < g->devices; d++) {
    size_t len = bt_plan_length(plan, d);
    g->device_first[d] = t;
    for (size_t i = 0; i < len; i++) {
      bt_action_t a = bt_plan_action(plan, d, i);
      size_t key;
      char x[BT_ACTION_TEXT_MAX];
      if (a.kind == BT_ACT_IDLE)
        continue;
      key = ((size_t)a.stage * (size_t)g->microbatches +
             (size_t)a.microbatch) * 4 + (size_t)a.kind;
      if (g->slot[key] >= 0) {
        const bt_task_t *first = &g->tasks[g->slot[key]];
        PROBLEM(err, problems,
                "%s is listed twice (device %d position %d, and device %d "
                "position %d); list every action once",
                fmt_action(a, x), (int)first->device, (int)first->position,
                (int)d, (int)(t - g->device_first[d]));
        continue;
      }
      if (g->stage_device[a.stage] != d)
        PROBLEM(err, problems,
                "%s is on device %d, but stage %d is placed on device %d; "
                "move it to device %d's list",
                fmt_action(a, x), (int)d, (int)a.stage,
                (int)g->stage_device[a.stage],
                (int)g->stage_device[a.stage]);
      g->slot[key] = t;
      g->tasks[t].action = a;
      g->tasks[t].device = d;
      g->tasks[t].position = t - g->device_first[d];
      t++;
    }
  }
  g->device_first[g->devices] = t;
  g->ntasks = t;
  return problems;
}

/* Every (stage, microbatch) needs F and either B or both I and W. */
static int
check_complete(const struct bt_graph *g, bt_error_t *err, int problems)
{
  char x[BT_ACTION_TEXT_MAX], y[BT_ACTION_TEXT_MAX];

  for (int32_t s = 0; s < g->stages; s++)
    for (int32_t k = 0; k < g->microbatches; k++) {
      int f = bt__graph_slot(g, s, BT_ACT_F, k) >= 0;
      int b = bt__graph_slot(g, s, BT_ACT_B, k) >= 0;
      int i = bt__graph_slot(g, s, BT_ACT_I, k) >= 0;
      int w = bt__graph_slot(g, s, BT_ACT_W, k) >= 0;
      if (!f)
        PROBLEM(err, problems, "missing %s: every stage runs a forward of "
                "every microbatch", fmt_action(act(s, BT_ACT_F, k), x));
      if (b && (i || w))
        PROBLEM(err, problems,
                "%s is mixed with %s for the same stage and microbatch; use "
                "either a full backward B or the split I + W",
                fmt_action(act(s, BT_ACT_B, k), x),
                fmt_action(act(s, i ? BT_ACT_I : BT_ACT_W, k), y));
      else if (!b && !i && !w)
        PROBLEM(err, problems, "missing the backward of stage %d, "
                "microbatch %d: add %s, or %s with its W",
                (int)s, (int)k, fmt_action(act(s, BT_ACT_B, k), x),
                fmt_action(act(s, BT_ACT_I, k), y));
      else if (i != w)
        PROBLEM(err, problems, "missing %s: the plan has %s, and a split "
                "backward needs both I and W",
                fmt_action(act(s, i ? BT_ACT_W : BT_ACT_I, k), x),
                fmt_action(act(s, i ? BT_ACT_I : BT_ACT_W, k), y));
    }
  return problems;
}

/* The task computing stage s's input gradient for microbatch k: B or I. */
static int32_t
backward_of(const struct bt_graph *g, int32_t s, int32_t k)
{
  int32_t t = bt__graph_slot(g, s, BT_ACT_B, k);

  return t >= 0 ? t : bt__graph_slot(g, s, BT_ACT_I, k);
}

static int
add_edges(const struct bt_graph *g, const bt_skip_layout_t *skips,
          struct edges *e)
{
  int rc = 0;

  for (int32_t k = 0; k < g->microbatches; k++)
    for (int32_t s = 0; s < g->stages; s++) {
      int32_t f = bt__graph_slot(g, s, BT_ACT_F, k), bx = backward_of(g, s, k);
      if (s > 0)
        rc |= edges_push(e, bt__graph_slot(g, s - 1, BT_ACT_F, k), f,
                         BT_EDGE_DATA);
      rc |= edges_push(e, f, bx, BT_EDGE_DATA);
      if (s + 1 < g->stages)
        rc |= edges_push(e, backward_of(g, s + 1, k), bx, BT_EDGE_DATA);
      rc |= edges_push(e, bt__graph_slot(g, s, BT_ACT_I, k),
                       bt__graph_slot(g, s, BT_ACT_W, k), BT_EDGE_DATA);
    }
  for (size_t i = 0; i < bt_skip_layout_count(skips); i++) {
    bt_skip_t sk = bt_skip_layout_get(skips, i);
    if (sk.stash_stage == sk.pop_stage)
      continue;
    for (int32_t k = 0; k < g->microbatches; k++) {
      rc |= edges_push(e, bt__graph_slot(g, sk.stash_stage, BT_ACT_F, k),
                       bt__graph_slot(g, sk.pop_stage, BT_ACT_F, k),
                       BT_EDGE_SKIP);
      rc |= edges_push(e, backward_of(g, sk.pop_stage, k),
                       backward_of(g, sk.stash_stage, k), BT_EDGE_SKIP);
    }
  }
  for (int32_t d = 0; d < g->devices; d++)
    for (int32_t t = g->device_first[d] + 1; t < g->device_first[d + 1]; t++)
      rc |= edges_push(e, t - 1, t, BT_EDGE_ORDER);
  return rc;
}

/* Sorts, drops duplicate (src, dst) pairs keeping the lowest kind, and
 * fills the CSR arrays. */
static int
build_csr(struct bt_graph *g, struct edges *e)
{
  size_t n = 0;
  int32_t *fill;

  qsort(e->v, e->len, sizeof *e->v, edge_cmp);
  for (size_t i = 0; i < e->len; i++)
    if (n == 0 || e->v[n - 1].src != e->v[i].src ||
        e->v[n - 1].dst != e->v[i].dst)
      e->v[n++] = e->v[i];
  g->nedges = n;
  g->succ_first = calloc((size_t)g->ntasks + 1, sizeof *g->succ_first);
  g->pred_first = calloc((size_t)g->ntasks + 1, sizeof *g->pred_first);
  g->succ = malloc((n ? n : 1) * sizeof *g->succ);
  g->pred = malloc((n ? n : 1) * sizeof *g->pred);
  g->succ_kind = malloc(n ? n : 1);
  g->pred_kind = malloc(n ? n : 1);
  fill = calloc((size_t)g->ntasks + 1, sizeof *fill);
  if (!g->succ_first || !g->pred_first || !g->succ || !g->pred ||
      !g->succ_kind || !g->pred_kind || !fill) {
    free(fill);
    return -1;
  }
  for (size_t i = 0; i < n; i++) {
    g->succ_first[e->v[i].src + 1]++;
    g->pred_first[e->v[i].dst + 1]++;
  }
  for (int32_t t = 0; t < g->ntasks; t++) {
    g->succ_first[t + 1] += g->succ_first[t];
    g->pred_first[t + 1] += g->pred_first[t];
  }
  /* Edges are sorted by src, so successors land in order directly. */
  for (size_t i = 0; i < n; i++) {
    g->succ[i] = e->v[i].dst;
    g->succ_kind[i] = (uint8_t)e->v[i].kind;
  }
  for (size_t i = 0; i < n; i++) {
    int32_t d = e->v[i].dst, at = g->pred_first[d] + fill[d]++;
    g->pred[at] = e->v[i].src;
    g->pred_kind[at] = (uint8_t)e->v[i].kind;
  }
  free(fill);
  return 0;
}

static const char *
edge_words(int32_t kind)
{
  switch (kind) {
  case BT_EDGE_DATA:
    return "data";
  case BT_EDGE_SKIP:
    return "skip connection";
  default:
    return "earlier in its list";
  }
}

/* Called when Kahn's algorithm left tasks unprocessed: every one of them
 * has an unprocessed predecessor, so walking those predecessors must come
 * back to a task already on the walk.  That loop is the cycle. */
static bt_status
report_cycle(const struct bt_graph *g, const int32_t *indeg, bt_error_t *err)
{
  int32_t *onwalk = malloc((size_t)g->ntasks * sizeof *onwalk);
  int32_t *walk = malloc((size_t)g->ntasks * sizeof *walk);
  int32_t *kind = malloc((size_t)g->ntasks * sizeof *kind);
  int32_t t = -1, len = 0, start;
  char x[BT_ACTION_TEXT_MAX];

  if (!onwalk || !walk || !kind) {
    free(onwalk);
    free(walk);
    free(kind);
    return bt__errorf(err, BT_EDEADLOCK, "plan would deadlock (out of "
                      "memory while naming the cycle)");
  }
  for (int32_t i = 0; i < g->ntasks; i++)
    onwalk[i] = -1;
  for (int32_t i = 0; i < g->ntasks && t < 0; i++)
    if (indeg[i] > 0)
      t = i;
  while (onwalk[t] < 0) {
    int32_t next = -1, nk = 0;
    onwalk[t] = len;
    walk[len] = t;
    for (int32_t j = g->pred_first[t]; j < g->pred_first[t + 1]; j++)
      if (indeg[g->pred[j]] > 0) {
        next = g->pred[j];
        nk = g->pred_kind[j];
        break;
      }
    kind[len++] = nk;
    t = next;
  }
  start = onwalk[t];
  {
    const bt_task_t *a = &g->tasks[walk[start]];
    bt__errorf(err, BT_EDEADLOCK, "plan would deadlock: %s (device %d)",
               fmt_action(a->action, x), (int)a->device);
  }
  for (int32_t i = start; i < len && err != NULL; i++) {
    /* walk[i] waits for walk[i + 1]; the last one for walk[start]. */
    const bt_task_t *b = &g->tasks[i + 1 < len ? walk[i + 1] : walk[start]];
    size_t used = strlen(err->message);
    snprintf(err->message + used, sizeof err->message - used,
             "%s waits for %s (device %d, %s)", i == start ? "" : ", which",
             fmt_action(b->action, x), (int)b->device, edge_words(kind[i]));
  }
  if (err != NULL) {
    size_t used = strlen(err->message);
    snprintf(err->message + used, sizeof err->message - used,
             ".  Reorder the lists of the devices on this cycle so that "
             "each action comes after what it waits for");
  }
  free(onwalk);
  free(walk);
  free(kind);
  return BT_EDEADLOCK;
}

static bt_status
topo_sort(struct bt_graph *g, bt_error_t *err)
{
  int32_t *indeg = malloc(((size_t)g->ntasks + 1) * sizeof *indeg);
  int32_t head = 0, tail = 0;
  bt_status rc = BT_OK;

  g->topo = malloc(((size_t)g->ntasks + 1) * sizeof *g->topo);
  if (indeg == NULL || g->topo == NULL) {
    free(indeg);
    return bt__errorf(err, BT_ENOMEM, "out of memory sorting the graph");
  }
  for (int32_t t = 0; t < g->ntasks; t++) {
    indeg[t] = g->pred_first[t + 1] - g->pred_first[t];
    if (indeg[t] == 0)
      g->topo[tail++] = t;
  }
  while (head < tail) {
    int32_t t = g->topo[head++];
    for (int32_t j = g->succ_first[t]; j < g->succ_first[t + 1]; j++)
      if (--indeg[g->succ[j]] == 0)
        g->topo[tail++] = g->succ[j];
  }
  if (tail < g->ntasks)
    rc = report_cycle(g, indeg, err);
  free(indeg);
  return rc;
}

static bt_status
check_config(const bt_graph_config_t *cfg, bt_error_t *err)
{
  const bt_plan_t *plan;
  int32_t devices, stages;

  if (cfg == NULL || cfg->size < sizeof(bt_graph_config_t) ||
      cfg->plan == NULL)
    return bt__errorf(err, BT_EINVAL, "bt_graph_create needs a config "
                      "(BT_GRAPH_CONFIG_INIT) with a plan");
  plan = cfg->plan;
  devices = bt_plan_devices(plan);
  stages = bt_plan_stages(plan);
  for (int32_t s = 0; cfg->stage_device != NULL && s < stages; s++)
    if (cfg->stage_device[s] < 0 || cfg->stage_device[s] >= devices)
      return bt__errorf(err, BT_EINVAL,
                        "stage %d is placed on device %d, but the plan has "
                        "devices 0..%d",
                        (int)s, (int)cfg->stage_device[s], (int)devices - 1);
  if (bt_skip_layout_max_stage(cfg->skips) >= stages)
    return bt__errorf(err, BT_EINVAL,
                      "a skip reaches stage %d, but the plan has %d stages; "
                      "map the skips with the plan's partition",
                      (int)bt_skip_layout_max_stage(cfg->skips), (int)stages);
  return BT_OK;
}

static struct bt_graph *
graph_alloc(const bt_plan_t *plan)
{
  struct bt_graph *g = calloc(1, sizeof *g);
  size_t cap = 0, nslot;

  if (g == NULL)
    return NULL;
  g->devices = bt_plan_devices(plan);
  g->stages = bt_plan_stages(plan);
  g->microbatches = bt_plan_microbatches(plan);
  for (int32_t d = 0; d < g->devices; d++)
    cap += bt_plan_length(plan, d);
  nslot = (size_t)g->stages * (size_t)g->microbatches * 4;
  g->tasks = malloc((cap ? cap : 1) * sizeof *g->tasks);
  g->stage_device = malloc((size_t)g->stages * sizeof *g->stage_device);
  g->device_first = malloc(((size_t)g->devices + 1) * sizeof *g->device_first);
  g->slot = malloc(nslot * sizeof *g->slot);
  if (!g->tasks || !g->stage_device || !g->device_first || !g->slot) {
    bt_graph_destroy(g);
    return NULL;
  }
  memset(g->slot, 0xff, nslot * sizeof *g->slot); /* all -1 */
  return g;
}

bt_status
bt_graph_create(const bt_graph_config_t *cfg, bt_graph_t **out,
                bt_error_t *err)
{
  struct edges e = {NULL, 0, 0};
  struct bt_graph *g;
  bt_status rc;
  int problems;

  if (out == NULL)
    return bt__errorf(err, BT_EINVAL, "bt_graph_create: NULL out");
  rc = check_config(cfg, err);
  if (rc != BT_OK)
    return rc;
  g = graph_alloc(cfg->plan);
  if (g == NULL)
    return bt__errorf(err, BT_ENOMEM, "out of memory building the graph");
  for (int32_t s = 0; s < g->stages; s++)
    g->stage_device[s] = cfg->stage_device ? cfg->stage_device[s]
                                           : s % g->devices;
  if (err != NULL)
    err->message[0] = '\0';
  problems = collect_tasks(g, cfg->plan, err);
  problems = check_complete(g, err, problems);
  if (problems > 0) {
    if (err != NULL) {
      char lines[BT_ERROR_MESSAGE_MAX];
      memcpy(lines, err->message, sizeof lines);
      bt__errorf(err, BT_EPLAN, "invalid plan (%d problem%s%s):\n%s",
                 problems, problems == 1 ? "" : "s",
                 problems > MAX_LISTED ? ", first ones listed" : "", lines);
    }
    rc = BT_EPLAN;
    goto out_fail;
  }
  if (add_edges(g, cfg->skips, &e) != 0 || build_csr(g, &e) != 0) {
    rc = bt__errorf(err, BT_ENOMEM, "out of memory building the graph");
    goto out_fail;
  }
  rc = topo_sort(g, err);
  if (rc != BT_OK)
    goto out_fail;
  free(e.v);
  *out = g;
  return BT_OK;
out_fail:
  free(e.v);
  bt_graph_destroy(g);
  return rc;
}

void
bt_graph_destroy(bt_graph_t *g)
{
  if (g == NULL)
    return;
  free(g->tasks);
  free(g->stage_device);
  free(g->device_first);
  free(g->slot);
  free(g->succ_first);
  free(g->succ);
  free(g->succ_kind);
  free(g->pred_first);
  free(g->pred);
  free(g->pred_kind);
  free(g->topo);
  free(g);
}

int32_t
bt_graph_devices(const bt_graph_t *g)
{
  return g->devices;
}

int32_t
bt_graph_stages(const bt_graph_t *g)
{
  return g->stages;
}

int32_t
bt_graph_microbatches(const bt_graph_t *g)
{
  return g->microbatches;
}

int32_t
bt_graph_task_count(const bt_graph_t *g)
{
  return g->ntasks;
}

size_t
bt_graph_edge_count(const bt_graph_t *g)
{
  return g->nedges;
}

int32_t
bt_graph_stage_device(const bt_graph_t *g, int32_t stage)
{
  if (stage < 0 || stage >= g->stages)
    return -1;
  return g->stage_device[stage];
}

bt_task_t
bt_graph_task(const bt_graph_t *g, int32_t task)
{
  bt_task_t none = {{-1, BT_ACT_IDLE, -1}, -1, -1};

  if (task < 0 || task >= g->ntasks)
    return none;
  return g->tasks[task];
}

int32_t
bt_graph_find(const bt_graph_t *g, bt_action_t a)
{
  if (a.kind < BT_ACT_F || a.kind > BT_ACT_W || a.stage < 0 ||
      a.stage >= g->stages || a.microbatch < 0 ||
      a.microbatch >= g->microbatches)
    return -1;
  return bt__graph_slot(g, a.stage, a.kind, a.microbatch);
}

int32_t
bt_graph_device_task_count(const bt_graph_t *g, int32_t device)
{
  if (device < 0 || device >= g->devices)
    return 0;
  return g->device_first[device + 1] - g->device_first[device];
}

int32_t
bt_graph_device_task(const bt_graph_t *g, int32_t device, int32_t index)
{
  if (index < 0 || index >= bt_graph_device_task_count(g, device))
    return -1;
  return g->device_first[device] + index;
}

static int32_t
csr_get(const int32_t *first, const int32_t *v, const uint8_t *k,
        int32_t ntasks, int32_t task, int32_t index, bt_edge_kind *kind)
{
  if (task < 0 || task >= ntasks || index < 0 ||
      index >= first[task + 1] - first[task])
    return -1;
  if (kind != NULL)
    *kind = (bt_edge_kind)k[first[task] + index];
  return v[first[task] + index];
}

int32_t
bt_graph_successor_count(const bt_graph_t *g, int32_t task)
{
  if (task < 0 || task >= g->ntasks)
    return 0;
  return g->succ_first[task + 1] - g->succ_first[task];
}

int32_t
bt_graph_successor(const bt_graph_t *g, int32_t task, int32_t index,
                   bt_edge_kind *kind)
{
  return csr_get(g->succ_first, g->succ, g->succ_kind, g->ntasks, task, index,
                 kind);
}

int32_t
bt_graph_predecessor_count(const bt_graph_t *g, int32_t task)
{
  if (task < 0 || task >= g->ntasks)
    return 0;
  return g->pred_first[task + 1] - g->pred_first[task];
}

int32_t
bt_graph_predecessor(const bt_graph_t *g, int32_t task, int32_t index,
                     bt_edge_kind *kind)
{
  return csr_get(g->pred_first, g->pred, g->pred_kind, g->ntasks, task, index,
                 kind);
}
