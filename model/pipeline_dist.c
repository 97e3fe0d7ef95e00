/* The embedding API's step as a DAG, on one process or spread over the
 * ranks of a job: every replica's copy of the plan graph, the epilogue
 * (tie, reduce, norm, clip, update), and, where an edge joins devices of
 * different ranks, a send task on the producer's rank and a receive task
 * on the consumer's (pipeline.h, comm.h).
 *
 * Every rank builds the whole job's DAG the same way (the same config gives
 * the same graph), numbering the transfers as it goes; the number is the
 * MPI tag, so both ends agree without talking.  Then each rank keeps its
 * own tasks.  A receive is posted when the step starts (into the
 * pipeline's buffer, or a staging buffer when the destination is memory a
 * send of this step reads: the tied and reduced gradients); its task tests
 * it and asks to be retried until it completes, so no actor ever waits. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "pipeline_internal.h"

/* ---- the DAG being built ----------------------------------------------- */

struct dag_build {
  int32_t n, cap;
  int32_t *device;
  bt_action_t *action;
  char **name;
  struct pl_task *role;
  size_t ne, ecap;
  int32_t *src, *dst;
  size_t nx, xcap; /* transfers, into pl->xf */
  struct pl_xfer *xf;
  /* The task a new receive task waits for before it starts polling (-1:
   * none): the task before its consumer on that device, so a device polls
   * only the message it needs next, not every message of the step. */
  int32_t gate;
  int32_t *dev_last; /* [devices]: the last plan task of each device */
  /* A transport's pair whose producer and consumer order its transfers
   * differently (order_transport), or -1. */
  int32_t bad_from, bad_to;
};

static bool
grow(void **p, size_t n, size_t size)
{
  void *q = realloc(*p, n * size);

  if (q == NULL)
    return false;
  *p = q;
  return true;
}

/* Appends a task; -1 when out of memory. */
static int32_t
dag_task(struct dag_build *b, int32_t device, bt_action_t action,
         const char *name, struct pl_task role)
{
  if (b->n == b->cap) {
    int32_t cap = b->cap ? 2 * b->cap : 64;
    if (!grow((void **)&b->device, (size_t)cap, sizeof *b->device) ||
        !grow((void **)&b->action, (size_t)cap, sizeof *b->action) ||
        !grow((void **)&b->name, (size_t)cap, sizeof *b->name) ||
        !grow((void **)&b->role, (size_t)cap, sizeof *b->role))
      return -1;
    b->cap = cap;
  }
  b->device[b->n] = device;
  b->action[b->n] = action;
  b->name[b->n] = NULL;
  if (name != NULL && (b->name[b->n] = strdup(name)) == NULL)
    return -1;
  b->role[b->n] = role;
  return b->n++;
}

static bool
dag_edge(struct dag_build *b, int32_t from, int32_t to)
{
  if (from < 0 || to < 0)
    return false;
  if (b->ne == b->ecap) {
    size_t cap = b->ecap ? 2 * b->ecap : 256;
    if (!grow((void **)&b->src, cap, sizeof *b->src) ||
        !grow((void **)&b->dst, cap, sizeof *b->dst))
      return false;
    b->ecap = cap;
  }
  b->src[b->ne] = from;
  b->dst[b->ne] = to;
  b->ne++;
  return true;
}

static void
dag_free(struct dag_build *b)
{
  for (int32_t t = 0; t < b->n; t++)
    free(b->name[t]);
  free(b->device);
  free(b->action);
  free(b->name);
  free(b->role);
  free(b->src);
  free(b->dst);
  free(b->xf);
  free(b->dev_last);
}

static const bt_action_t none = {
    .stage = -1, .kind = BT_ACT_IDLE, .microbatch = -1};

static const char *
xfer_what(int kind)
{
  static const char *names[] = {"activation",     "input gradient",
                                "skip",           "skip gradient",
                                "tied gradient",  "tied gradient sum",
                                "gradient slice", "reduced gradient slice",
                                "gradient norm",  "clip scale"};
  return names[kind];
}

/* A transfer from device `from_dev` to `to_dev` (different ranks): a send
 * task after every task in pred[0..npred), a receive task before nothing
 * yet (the caller adds its out-edges).  Returns the receive task, -1 when
 * out of memory. */
static int32_t
xfer_add(struct bt_pipeline *pl, struct dag_build *b, struct pl_xfer x,
         int32_t from_dev, int32_t to_dev, const int32_t *pred, int npred,
         int32_t *index)
{
  char name[BT__PL_NAME_MAX];
  struct pl_task role = {TASK_SEND, x.r, x.s, -1, (int32_t)b->nx};
  int32_t send, recv;

  if (b->nx == b->xcap) {
    size_t cap = b->xcap ? 2 * b->xcap : 64;
    if (!grow((void **)&b->xf, cap, sizeof *b->xf))
      return -1;
    b->xcap = cap;
  }
  if (b->nx >= (size_t)BT__COMM_XFER_MAX)
    return -1;
  x.from = bt__pl_rank_of(pl, from_dev);
  x.to = bt__pl_rank_of(pl, to_dev);
  x.from_dev = from_dev;
  x.to_dev = to_dev;
  x.producer = npred > 0 ? pred[npred - 1] : -1;
  x.consumer = -1;
  b->xf[b->nx] = x;
  snprintf(name, sizeof name, "send %s %d.%d.%d to rank %d", xfer_what(x.kind),
           (int)x.r, (int)x.s, (int)x.k, (int)x.to);
  send = dag_task(b, from_dev, none, name, role);
  role.what = TASK_RECV;
  snprintf(name, sizeof name, "recv %s %d.%d.%d from rank %d",
           xfer_what(x.kind), (int)x.r, (int)x.s, (int)x.k, (int)x.from);
  recv = dag_task(b, to_dev, none, name, role);
  if (send < 0 || recv < 0)
    return -1;
  for (int j = 0; j < npred; j++)
    if (!dag_edge(b, pred[j], send))
      return -1;
  if (b->gate >= 0 && !dag_edge(b, b->gate, recv))
    return -1;
  b->xf[b->nx].send_task = send;
  b->xf[b->nx].recv_task = recv;
  if (index != NULL)
    *index = (int32_t)b->nx;
  b->nx++;
  return recv;
}

static struct pl_xfer
xf_make(int kind, int32_t r, int32_t s, int32_t k, int32_t i, int32_t q)
{
  struct pl_xfer x;

  memset(&x, 0, sizeof x);
  x.kind = kind;
  x.r = r;
  x.s = s;
  x.k = k;
  x.i = i;
  x.q = q;
  x.guard = -1;
  return x;
}

/* Transfer x of plan task src's output into plan task dst. */
static bool
xfer_into(struct bt_pipeline *pl, struct dag_build *b, struct pl_xfer x,
          int32_t src, int32_t dst)
{
  int32_t ix = -1, T0 = bt_graph_task_count(pl->graph);
  int32_t rv = xfer_add(pl, b, x, b->device[src], b->device[dst], &src, 1, &ix);
  if (rv < 0)
    return false;
  b->xf[ix].consumer = dst;
  /* With a transport the send only starts the move, in the device's
   * order: it comes before the producer's next task on the device, so no
   * later work (a wait for the peer, say) can stand before the send the
   * peer waits for.  Plan tasks of a device are consecutive. */
  if (pl->transport.send != NULL && src % T0 + 1 < T0 &&
      b->device[src + 1] == b->device[src] &&
      !dag_edge(b, b->xf[ix].send_task, src + 1))
    return false;
  return dag_edge(b, rv, dst);
}

/* A transfer's place in its pair's order. */
struct xf_key {
  int32_t from, to, consumer;
  size_t ix;
};

static int
by_pair_then_consumer(const void *pa, const void *pb)
{
  const struct xf_key *a = pa, *c = pb;

  if (a->from != c->from)
    return a->from < c->from ? -1 : 1;
  if (a->to != c->to)
    return a->to < c->to ? -1 : 1;
  if (a->consumer != c->consumer)
    return a->consumer < c->consumer ? -1 : 1;
  return a->ix < c->ix ? -1 : a->ix > c->ix;
}

/* With a transport: the transfers of one (from, to) pair of devices are
 * moved in one order on both ends, the consumer's plan order (plan tasks
 * of a device are consecutive in plan order, so task ids compare), by
 * chaining their send tasks and their receive tasks.  A producer that
 * orders them otherwise would deadlock the chains: refused. */
static bool
order_transport(struct dag_build *b, size_t nplan)
{
  struct xf_key *k = malloc((nplan + 1) * sizeof *k);
  bool ok = true;

  if (k == NULL)
    return false;
  for (size_t j = 0; j < nplan; j++)
    k[j] = (struct xf_key){b->xf[j].from_dev, b->xf[j].to_dev,
                           b->xf[j].consumer, j};
  qsort(k, nplan, sizeof *k, by_pair_then_consumer);
  for (size_t j = 1; ok && j < nplan; j++) {
    const struct pl_xfer *p = &b->xf[k[j - 1].ix], *x = &b->xf[k[j].ix];
    if (p->from_dev != x->from_dev || p->to_dev != x->to_dev)
      continue;
    if (x->producer < p->producer) {
      b->bad_from = x->from_dev;
      b->bad_to = x->to_dev;
      ok = false;
      break;
    }
    ok = dag_edge(b, p->send_task, x->send_task) &&
         dag_edge(b, p->recv_task, x->recv_task);
  }
  free(k);
  return ok;
}

/* A plan edge t -> u of replica r between ranks: what it carries. */
static bool
plan_xfers(struct bt_pipeline *pl, struct dag_build *b, int32_t r, int32_t src,
           int32_t dst)
{
  bt_action_t a = b->action[src], c = b->action[dst];
  size_t nsk = bt_skip_layout_count(pl->skips);
  int32_t k = a.microbatch, T0 = bt_graph_task_count(pl->graph);

  /* Plan tasks of one device are consecutive, in plan order. */
  b->gate = dst % T0 > 0 && b->device[dst - 1] == b->device[dst] ? dst - 1 : -1;

  /* A forward edge carries stage a's output (to the next stage) and the
   * skips stashed at a and popped at c; a backward edge a's input gradient
   * (to the previous stage) and the gradients of skips stashed at c and
   * popped at a. */
  bool fwd = a.kind == BT_ACT_F && c.kind == BT_ACT_F;
  int32_t from = fwd ? a.stage : c.stage, to = fwd ? c.stage : a.stage;

  if (c.stage == a.stage + (fwd ? 1 : -1) &&
      !xfer_into(pl, b, xf_make(fwd ? XF_ACT : XF_GRAD, r, a.stage, k, 0, 0),
                 src, dst))
    return false;
  for (size_t i = 0; i < nsk; i++) {
    bt_skip_t sk = bt_skip_layout_get(pl->skips, i);
    if (sk.stash_stage == from && sk.pop_stage == to &&
        !xfer_into(
            pl, b,
            xf_make(fwd ? XF_SKIPV : XF_SKIPG, r, a.stage, k, (int32_t)i, 0),
            src, dst))
      return false;
  }
  return true;
}

/* Task lists by (replica, stage): the producers after which the stage's
 * gradients are final (`fin`: last backward, then its ties) and reduced
 * (`rdy`: with replicas, every reducer's slice), all on the rank of
 * (replica, stage). */
struct lists {
  int32_t *v; /* [R * S][cap] */
  int *n;     /* [R * S] */
  int cap;
};

static bool
lists_init(struct lists *l, size_t n, int cap)
{
  l->cap = cap;
  l->v = malloc(n * (size_t)cap * sizeof *l->v);
  l->n = calloc(n, sizeof *l->n);
  return l->v != NULL && l->n != NULL;
}

static void
lists_free(struct lists *l)
{
  free(l->v);
  free(l->n);
}

static void
lists_add(struct lists *l, size_t at, int32_t task)
{
  l->v[at * (size_t)l->cap + (size_t)l->n[at]++] = task;
}

static bool
edges_from(struct dag_build *b, const struct lists *l, size_t at, int32_t to)
{
  for (int j = 0; j < l->n[at]; j++)
    if (!dag_edge(b, l->v[at * (size_t)l->cap + (size_t)j], to))
      return false;
  return true;
}

/* Builds the whole job's DAG. */
static bool
build_dag(struct bt_pipeline *pl, struct dag_build *b)
{
  int32_t T0 = bt_graph_task_count(pl->graph), S = pl->S, R = pl->R;
  int32_t *dev = NULL, clip = -1, clip_dev = -1, *scale_rv = NULL;
  int32_t *norm_id = NULL, *red_id = NULL, *red_last = NULL;
  struct lists fin = {0}, rdy = {0};
  char name[BT__PL_NAME_MAX];
  bool ok = false, builtin_red = pl->grad_tensor != NULL;
  bool collective = !builtin_red && pl->transport.send != NULL;
  int cap = 2 + 2 * (int)pl->nties + 2 * R * (pl->nparts > 0 ? pl->nparts : 1);

  dev = malloc((size_t)R * (size_t)S * sizeof *dev);
  scale_rv = malloc((size_t)pl->W * sizeof *scale_rv);
  if (dev == NULL || scale_rv == NULL ||
      !lists_init(&fin, (size_t)R * S, cap) ||
      !lists_init(&rdy, (size_t)R * S, cap))
    goto out;
  for (int32_t w = 0; w < pl->W; w++)
    scale_rv[w] = -1;
  /* Plan tasks, ids r * T0 + t, and their edges. */
  for (int32_t r = 0; r < R; r++)
    for (int32_t t = 0; t < T0; t++) {
      bt_task_t task = bt_graph_task(pl->graph, t);
      struct pl_task role = {TASK_PLAN, r, task.action.stage, -1, -1};
      if (dag_task(b, r * pl->p + task.device, task.action, NULL, role) < 0)
        goto out;
    }
  for (int32_t r = 0; r < R; r++)
    for (int32_t t = 0; t < T0; t++)
      for (int32_t j = 0; j < bt_graph_successor_count(pl->graph, t); j++) {
        int32_t src = r * T0 + t;
        int32_t dst = r * T0 + bt_graph_successor(pl->graph, t, j, NULL);
        bool cross = bt__pl_rank_of(pl, b->device[src]) !=
                     bt__pl_rank_of(pl, b->device[dst]);
        if (!(cross ? plan_xfers(pl, b, r, src, dst) : dag_edge(b, src, dst)))
          goto out;
      }
  if (pl->transport.send != NULL && !order_transport(b, b->nx))
    goto out;
  for (int32_t r = 0; r < R; r++)
    for (int32_t s = 0; s < S; s++) {
      dev[(size_t)r * S + s] = b->device[r * T0 + pl->last_bw[s]];
      lists_add(&fin, (size_t)r * S + s, r * T0 + pl->last_bw[s]);
    }
  b->dev_last = malloc((size_t)R * (size_t)pl->p * sizeof *b->dev_last);
  if (b->dev_last == NULL)
    goto out;
  for (int32_t t = 0; t < R * T0; t++)
    b->dev_last[b->device[t]] = t;
#define GATE(d) (b->gate = b->dev_last[(d)])
#define DEV(r, s) dev[(size_t)(r)*S + (s)]
#define RANK(d) bt__pl_rank_of(pl, (d))
  /* Ties: on stage_b's device; stage_a's gradient comes over if it lives
   * on another rank, and the sum goes back. */
  for (int32_t r = 0; r < R; r++)
    for (size_t i = 0; i < pl->nties; i++) {
      const bt_pipeline_tie_t *t = &pl->ties[i];
      int32_t da = DEV(r, t->stage_a), db = DEV(r, t->stage_b), id, up = -1;
      struct pl_task role = {TASK_TIE, r, t->stage_b, (int32_t)i, -1};
      snprintf(name, sizeof name, "tie %s", t->name);
      id = dag_task(b, db, none, name, role);
      if (id < 0 || !dag_edge(b, r * T0 + pl->last_bw[t->stage_b], id))
        goto out;
      if (RANK(da) == RANK(db)) {
        if (!dag_edge(b, r * T0 + pl->last_bw[t->stage_a], id))
          goto out;
        lists_add(&fin, (size_t)r * S + t->stage_a, id);
      } else {
        int32_t pred = r * T0 + pl->last_bw[t->stage_a], rv, down;
        struct pl_xfer x = xf_make(XF_TIE_UP, r, t->stage_a, 0, (int32_t)i, 0);
        GATE(db);
        rv = xfer_add(pl, b, x, da, db, &pred, 1, &up);
        if (rv < 0 || !dag_edge(b, rv, id))
          goto out;
        b->role[id].xfer = up;
        x = xf_make(XF_TIE_DOWN, r, t->stage_a, 0, (int32_t)i, 0);
        x.guard = up;
        GATE(da);
        rv = xfer_add(pl, b, x, db, da, &id, 1, &down);
        if (rv < 0)
          goto out;
        lists_add(&fin, (size_t)r * S + t->stage_a, rv);
        /* The send (task rv - 1) snapshots b's copy: stage_b's gradient
         * changes (reduction, clipping) only after it. */
        lists_add(&fin, (size_t)r * S + t->stage_b, rv - 1);
      }
      lists_add(&fin, (size_t)r * S + t->stage_b, id);
    }
  /* Reduction: reducer (r, s) sums slice r over the replicas. */
  if (R > 1) {
    int32_t P = builtin_red ? pl->nparts : 1;
    red_id = malloc((size_t)R * (size_t)S * sizeof *red_id);
    red_last = malloc((size_t)R * (size_t)pl->p * sizeof *red_last);
    if (red_id == NULL || red_last == NULL)
      goto out;
#define PARTS(s_) (builtin_red ? pl->nparts_s[(s_)] : 1)
    for (int32_t r = 0; r < R; r++)
      for (int32_t s = 0; s < S; s++) {
        struct pl_task role = {TASK_REDUCE, r, s, -1, -1};
        int32_t id;
        snprintf(name, sizeof name, "reduce %d", (int)s);
        id = dag_task(b, DEV(r, s), none, name, role);
        if (id < 0)
          goto out;
        red_id[(size_t)r * S + s] = id;
        for (int32_t q = 0; q < R; q++) {
          size_t fq = (size_t)q * S + s;
          if (RANK(DEV(q, s)) == RANK(DEV(r, s))) {
            if (!edges_from(b, &fin, fq, id))
              goto out;
            continue;
          }
          /* With a transport, reduce_grads is a collective: each rank's
           * call meets the others' itself. */
          if (collective)
            continue;
          for (int32_t part = 0; part < PARTS(s); part++) {
            int32_t rv, ix;
            struct pl_xfer x = xf_make(XF_RED_UP, r, s, 0, part, q);
            GATE(DEV(r, s));
            rv = xfer_add(pl, b, x, DEV(q, s), DEV(r, s),
                          &fin.v[fq * (size_t)fin.cap], fin.n[fq], &ix);
            if (rv < 0 || !dag_edge(b, rv, id))
              goto out;
            pl->red_up[(((size_t)q * R + r) * S + s) * (size_t)P + part] = ix;
          }
        }
        /* Replica q's slice r is final after this reducer, or after its
         * result arrived. */
        for (int32_t q = 0; q < R; q++) {
          if (RANK(DEV(q, s)) == RANK(DEV(r, s))) {
            lists_add(&rdy, (size_t)q * S + s, id);
            continue;
          }
          if (collective)
            continue;
          for (int32_t part = 0; part < PARTS(s); part++) {
            struct pl_xfer x = xf_make(XF_RED_DOWN, r, s, 0, part, q);
            int32_t rv;
            x.guard =
                pl->red_up[(((size_t)q * R + r) * S + s) * (size_t)P + part];
            GATE(DEV(q, s));
            rv = xfer_add(pl, b, x, DEV(r, s), DEV(q, s), &id, 1, NULL);
            if (rv < 0)
              goto out;
            lists_add(&rdy, (size_t)q * S + s, rv);
            /* The send (rv - 1) snapshots r's reduced slice: r's gradient
             * is final for its norm and update only after it. */
            lists_add(&rdy, (size_t)r * S + s, rv - 1);
          }
        }
      }
#undef PARTS
    /* A user's reduce_grads (NCCL, say: its collectives must be issued in
     * one order on every rank) sees a device's reductions in one order on
     * every replica: decreasing stage, the order backwards finish. */
    for (int32_t d = 0; !builtin_red && d < R * pl->p; d++)
      red_last[d] = -1;
    for (int32_t r = 0; r < R && !builtin_red; r++)
      for (int32_t s = S - 1; s >= 0; s--) {
        int32_t d = DEV(r, s);
        if (red_last[d] >= 0 &&
            !dag_edge(b, red_last[d], red_id[(size_t)r * S + s]))
          goto out;
        red_last[d] = red_id[(size_t)r * S + s];
      }
  } else {
    for (int32_t s = 0; s < S; s++)
      for (int j = 0; j < fin.n[s]; j++)
        lists_add(&rdy, (size_t)s, fin.v[(size_t)s * (size_t)fin.cap + j]);
  }
  /* Clipping: norms on replica 0, one clip on stage 0's device. */
  if (pl->max_grad_norm > 0) {
    struct pl_task role = {TASK_CLIP, 0, 0, -1, -1};
    norm_id = malloc((size_t)S * sizeof *norm_id);
    if (norm_id == NULL)
      goto out;
    clip_dev = DEV(0, 0);
    clip = dag_task(b, clip_dev, none, "clip", role);
    if (clip < 0)
      goto out;
    for (int32_t s = 0; s < S; s++) {
      struct pl_task nrole = {TASK_NORM, 0, s, -1, -1};
      snprintf(name, sizeof name, "norm %d", (int)s);
      norm_id[s] = dag_task(b, DEV(0, s), none, name, nrole);
      if (norm_id[s] < 0 || !edges_from(b, &rdy, (size_t)s, norm_id[s]))
        goto out;
      if (RANK(DEV(0, s)) == RANK(clip_dev)) {
        if (!dag_edge(b, norm_id[s], clip))
          goto out;
      } else {
        int32_t rv;
        GATE(clip_dev);
        rv = xfer_add(pl, b, xf_make(XF_NORM, 0, s, 0, 0, 0), DEV(0, s),
                      clip_dev, &norm_id[s], 1, NULL);
        if (rv < 0 || !dag_edge(b, rv, clip))
          goto out;
      }
    }
  }
  for (int32_t r = 0; pl->update != NULL && r < R; r++)
    for (int32_t s = 0; s < S; s++) {
      struct pl_task role = {TASK_UPDATE, r, s, -1, -1};
      int32_t id, w = RANK(DEV(r, s));
      snprintf(name, sizeof name, "update %d", (int)s);
      id = dag_task(b, DEV(r, s), none, name, role);
      if (id < 0 || !edges_from(b, &rdy, (size_t)r * S + s, id))
        goto out;
      if (clip < 0)
        continue;
      if (w == RANK(clip_dev)) {
        if (!dag_edge(b, clip, id))
          goto out;
        continue;
      }
      if (scale_rv[w] < 0) {
        struct pl_xfer x = xf_make(XF_SCALE, 0, 0, 0, 0, 0);
        GATE(DEV(r, s));
        scale_rv[w] = xfer_add(pl, b, x, clip_dev, DEV(r, s), &clip, 1, NULL);
        if (scale_rv[w] < 0)
          goto out;
      }
      if (!dag_edge(b, scale_rv[w], id))
        goto out;
    }
#undef DEV
#undef RANK
#undef GATE
  ok = true;
out:
  lists_free(&fin);
  lists_free(&rdy);
  free(dev);
  free(scale_rv);
  free(norm_id);
  free(red_id);
  free(red_last);
  return ok;
}

/* With a transport: which received transfers each local task consumes
 * (local[]: build id -> local id), for the transport's wait. */
static bool
index_consumers(struct bt_pipeline *pl, const struct dag_build *b,
                const int32_t *local, int32_t n)
{
  int32_t *at = calloc((size_t)n + 1, sizeof *at);
  int32_t *fill = calloc((size_t)n + 1, sizeof *fill);
  bool ok = at != NULL && fill != NULL;

  pl->consumes = malloc((b->nx + 1) * sizeof *pl->consumes);
  ok = ok && pl->consumes != NULL;
  for (size_t j = 0; ok && j < b->nx; j++)
    if (b->xf[j].to == pl->me && b->xf[j].consumer >= 0 &&
        local[b->xf[j].consumer] >= 0)
      at[local[b->xf[j].consumer] + 1]++;
  for (int32_t t = 0; ok && t < n; t++)
    at[t + 1] += at[t];
  for (size_t j = 0; ok && j < b->nx; j++)
    if (b->xf[j].to == pl->me && b->xf[j].consumer >= 0 &&
        local[b->xf[j].consumer] >= 0) {
      int32_t t = local[b->xf[j].consumer];
      pl->consumes[at[t] + fill[t]++] = (int32_t)j;
    }
  free(fill);
  if (!ok) {
    free(at);
    return false;
  }
  pl->consumes_at = at;
  return true;
}

bt_status
bt__pl_build_exec(struct bt_pipeline *pl, int trace, bt_error_t *err)
{
  bt_exec_config_t ec = BT_EXEC_CONFIG_INIT;
  bt_dag_t dag = BT_DAG_INIT;
  struct dag_build b;
  int32_t *local = NULL, n = 0;
  size_t ne = 0;
  bt_status st = BT_ENOMEM;
  size_t nred =
      (size_t)pl->R * pl->R * pl->S * (size_t)(pl->nparts > 0 ? pl->nparts : 1);

  memset(&b, 0, sizeof b);
  b.gate = -1;
  b.bad_from = b.bad_to = -1;
  pl->red_up = malloc((nred + 1) * sizeof *pl->red_up);
  if (pl->red_up == NULL)
    goto out;
  for (size_t i = 0; i < nred; i++)
    pl->red_up[i] = -1;
  if (!build_dag(pl, &b)) {
    if (b.bad_from >= 0)
      st = bt__errorf(err, BT_EPLAN,
                      "this plan produces the transfers from device %d to "
                      "device %d in another order than it consumes them; "
                      "the transport needs one order on both ends (use "
                      "another schedule, or devices in one process)",
                      (int)b.bad_from, (int)b.bad_to);
    goto out;
  }
  /* This rank's tasks, renumbered; every edge between ranks went through a
   * transfer, so the rest join local tasks only. */
  local = malloc(((size_t)b.n + 1) * sizeof *local);
  if (local == NULL)
    goto out;
  for (int32_t t = 0; t < b.n; t++) {
    if (bt__pl_rank_of(pl, b.device[t]) != pl->me) {
      local[t] = -1;
      continue;
    }
    local[t] = n;
    b.device[n] = b.device[t];
    b.action[n] = b.action[t];
    if (n != t) {
      free(b.name[n]);
      b.name[n] = b.name[t];
      b.name[t] = NULL;
    }
    b.role[n] = b.role[t];
    n++;
  }
  for (int32_t t = n; t < b.n; t++) {
    free(b.name[t]);
    b.name[t] = NULL;
  }
  b.n = n;
  for (size_t e = 0; e < b.ne; e++) {
    int32_t s = local[b.src[e]], d = local[b.dst[e]];
    if (s < 0 || d < 0)
      continue;
    b.src[ne] = s;
    b.dst[ne] = d;
    ne++;
  }
  b.ne = ne;
  if (pl->transport.send != NULL && !index_consumers(pl, &b, local, n))
    goto out;
  pl->xf = b.xf;
  pl->nxf = b.nx;
  b.xf = NULL;
  dag.tasks = b.n;
  dag.task_device = b.device;
  dag.edges = b.ne;
  dag.src = b.src;
  dag.dst = b.dst;
  dag.actions = b.action;
  dag.names = (const char *const *)b.name;
  ec.fn = bt__pl_task;
  ec.user = pl;
  ec.trace = trace;
  st = bt_exec_create_dag(pl->rt, &dag, &ec, &pl->exec, err);
  if (st == BT_OK) {
    pl->tasks = b.role;
    b.role = NULL;
  }
out:
  if (st == BT_ENOMEM && (err == NULL || err->message[0] == '\0'))
    bt__errorf(err, BT_ENOMEM, "out of memory building the step");
  free(local);
  dag_free(&b);
  return st;
}

/* ---- transfers ------------------------------------------------------------
 */

static void
slice_of(size_t n, int32_t r, int32_t R, size_t *lo, size_t *hi)
{
  *lo = n * (size_t)r / (size_t)R;
  *hi = n * ((size_t)r + 1) / (size_t)R;
}

/* Part `part` of replica q's stage s gradient: its floats and count. */
static float *
part_of(const struct bt_pipeline *pl, int32_t q, int32_t s, int32_t part,
        size_t *count)
{
  *count = 0;
  return pl->grad_tensor(q, s, part, count, pl->user);
}

static void *
skip_buf(const struct bt_pipeline *pl, int32_t r, int32_t i, int32_t k,
         bool grad)
{
  bt_skip_t sk = bt_skip_layout_get(pl->skips, (size_t)i);
  size_t at = pl->out_at[bt__pl_slot(pl, r, sk.stash_stage, k)];
  size_t pos = (size_t)pl->skip_pos[i];

  if (grad)
    pos += (size_t)pl->nout[sk.stash_stage];
  return pl->skip_pool[at + pos].data;
}

static size_t
skip_size(const struct bt_pipeline *pl, int32_t r, int32_t i, int32_t k)
{
  bt_skip_t sk = bt_skip_layout_get(pl->skips, (size_t)i);
  size_t at = pl->out_at[bt__pl_slot(pl, r, sk.stash_stage, k)];

  return pl->skip_pool[at + (size_t)pl->skip_pos[i]].bytes;
}

/* The transport's pairs of devices this rank sends to or receives from,
 * each once, in transfer order; each with its number among the job's
 * pairs (first appearance over every transfer: the same on every rank). */
static bt_status
connect_transport(struct bt_pipeline *pl, bt_error_t *err)
{
  int32_t *pairs = malloc((5 * pl->nxf + 1) * sizeof *pairs);
  int32_t *all = malloc((2 * pl->nxf + 1) * sizeof *all);
  size_t n = 0, nall = 0;
  char msg[BT_ERROR_MESSAGE_MAX];
  int rc;

  if (pairs == NULL || all == NULL) {
    free(pairs);
    free(all);
    return bt__errorf(err, BT_ENOMEM, "out of memory for the transport");
  }
  for (size_t j = 0; j < pl->nxf; j++) {
    const struct pl_xfer *x = &pl->xf[j];
    size_t at = 0;
    while (at < nall &&
           !(all[2 * at] == x->from_dev && all[2 * at + 1] == x->to_dev))
      at++;
    if (at == nall) {
      all[2 * nall] = x->from_dev;
      all[2 * nall + 1] = x->to_dev;
      nall++;
    } else {
      continue; /* seen: listed already if it is this rank's */
    }
    if (x->from != pl->me && x->to != pl->me)
      continue;
    pairs[5 * n] = x->from_dev;
    pairs[5 * n + 1] = x->to_dev;
    pairs[5 * n + 2] = x->from;
    pairs[5 * n + 3] = x->to;
    pairs[5 * n + 4] = (int32_t)at;
    n++;
  }
  free(all);
  msg[0] = '\0';
  rc = pl->transport.connect != NULL
           ? pl->transport.connect(pairs, n, (int32_t)pl->nxf,
                                   pl->transport.user, msg, sizeof msg)
           : 0;
  free(pairs);
  if (rc != 0)
    return bt__errorf(err, rc < 0 ? (bt_status)rc : BT_EIO,
                      "connecting the transport: %s", msg);
  return BT_OK;
}

bt_status
bt__pl_resolve_xfers(struct bt_pipeline *pl, bt_error_t *err)
{
  for (size_t j = 0; j < pl->nxf; j++) {
    struct pl_xfer *x = &pl->xf[j];
    bool sender = x->from == pl->me, receiver = x->to == pl->me;
    size_t n = 0, lo = 0, hi = 0;
    float *g;

    if (!sender && !receiver)
      continue;
    switch (x->kind) {
    case XF_ACT:
      x->buf = pl->act[bt__pl_slot(pl, x->r, x->s, x->k)];
      x->bytes = pl->stage[x->s].output_bytes;
      break;
    case XF_GRAD:
      x->buf = pl->grad[bt__pl_slot(pl, x->r, x->s, x->k)];
      x->bytes = pl->stage[x->s].grad_input_bytes;
      break;
    case XF_SKIPV:
    case XF_SKIPG:
      x->buf = skip_buf(pl, x->r, x->i, x->k, x->kind == XF_SKIPG);
      x->bytes = skip_size(pl, x->r, x->i, x->k);
      break;
    case XF_TIE_UP:
    case XF_TIE_DOWN:
      g = pl->tie_tensor(x->r, x->i, 0, &n, pl->user);
      x->bytes = n * sizeof(float);
      if (x->kind == XF_TIE_UP)
        x->buf = sender ? (void *)g : NULL;
      else
        x->buf = sender ? (void *)pl->tie_tensor(x->r, x->i, 1, &n, pl->user)
                        : (void *)g;
      if (receiver)
        x->staging = malloc(x->bytes + 1);
      break;
    case XF_RED_UP:
    case XF_RED_DOWN:
      /* Slice r of the part; UP: from replica q's gradient, read in
       * place by the reducer; DOWN: from r's, into q's. */
      g = part_of(pl, x->kind == XF_RED_UP ? x->q : x->r, x->s, x->i, &n);
      slice_of(n, x->r, pl->R, &lo, &hi);
      x->bytes = (hi - lo) * sizeof(float);
      if (sender)
        x->buf = g + lo;
      else if (x->kind == XF_RED_DOWN)
        x->buf = part_of(pl, x->q, x->s, x->i, &n) + lo;
      if (receiver)
        x->staging = malloc(x->bytes + 1);
      break;
    case XF_NORM:
      x->buf = &pl->sqnorm[x->s];
      x->bytes = sizeof(double);
      break;
    default: /* XF_SCALE */
      x->buf = pl->gs;
      x->bytes = sizeof pl->gs;
      if (receiver)
        x->staging = malloc(x->bytes);
      break;
    }
    if (sender &&
        (x->kind == XF_TIE_UP || x->kind == XF_TIE_DOWN ||
         x->kind == XF_RED_UP || x->kind == XF_RED_DOWN) &&
        (x->snap = malloc(x->bytes + 1)) == NULL)
      return bt__errorf(err, BT_ENOMEM,
                        "out of memory for the transfers' send copies");
    if (receiver && x->staging == NULL &&
        (x->kind == XF_TIE_UP || x->kind == XF_TIE_DOWN ||
         x->kind == XF_RED_UP || x->kind == XF_RED_DOWN || x->kind == XF_SCALE))
      return bt__errorf(err, BT_ENOMEM,
                        "out of memory for the transfers' staging buffers");
  }
  return pl->transport.send != NULL ? connect_transport(pl, err) : BT_OK;
}

void
bt__pl_free_xfers(struct bt_pipeline *pl)
{
  for (size_t j = 0; pl->xf != NULL && j < pl->nxf; j++) {
    if (pl->comm != NULL)
      bt__comm_cancel(pl->comm, &pl->xf[j].req);
    free(pl->xf[j].staging);
    free(pl->xf[j].snap);
  }
  free(pl->xf);
  pl->xf = NULL;
  pl->nxf = 0;
  free(pl->red_up);
  pl->red_up = NULL;
}

/* Describes transfer x for messages: "the activation 0.2.3 from rank 1". */
static void
describe(const struct pl_xfer *x, char *buf, size_t n)
{
  snprintf(buf, n, "the %s (replica %d, stage %d, microbatch %d) from rank %d",
           xfer_what(x->kind), (int)x->r, (int)x->s, (int)x->k, (int)x->from);
}

int
bt__pl_send_task(struct bt_pipeline *pl, const struct pl_task *pt,
                 void *device_ctx, char *errbuf, size_t errlen)
{
  struct pl_xfer *x = &pl->xf[pt->xfer];
  const void *src = x->buf;

  if (pl->transport.send != NULL)
    return pl->transport.send(device_ctx, x->buf, x->bytes, x->from_dev,
                              x->to_dev, x->to, pt->xfer, pl->transport.user,
                              errbuf, errlen);
  if (x->snap != NULL) {
    memcpy(x->snap, x->buf, x->bytes);
    src = x->snap;
  }
  return (int)bt__comm_isend(pl->comm, src, x->bytes, x->to,
                             BT__COMM_TAG_XFER + pt->xfer, &x->req, errbuf,
                             errlen);
}

int
bt__pl_recv_task(struct bt_pipeline *pl, const struct pl_task *pt,
                 void *device_ctx, char *errbuf, size_t errlen)
{
  struct pl_xfer *x = &pl->xf[pt->xfer];
  char what[160], msg[400];
  int done;
  int32_t peer;
  double now;

  if (pl->transport.send != NULL)
    return pl->transport.recv(device_ctx, x->buf, x->bytes, x->from_dev,
                              x->to_dev, x->from, pt->xfer, pl->transport.user,
                              errbuf, errlen);
  done = bt__comm_test(pl->comm, &x->req, errbuf, errlen);
  if (done < 0)
    return done;
  if (done && x->guard >= 0) {
    /* The destination is memory this rank sent from earlier in the step:
     * that send must be over before it is overwritten. */
    done = bt__comm_test(pl->comm, &pl->xf[x->guard].req, errbuf, errlen);
    if (done < 0)
      return done;
  }
  if (done) {
    if (x->staging != NULL && x->buf != NULL)
      memcpy(x->buf, x->staging, x->bytes);
    x->wait_since = 0.0;
    return 0;
  }
  peer = bt__comm_peer_failure(pl->comm, msg, sizeof msg);
  if (peer >= 0) {
    snprintf(errbuf, errlen, "rank %d failed: %s", (int)peer, msg);
    return BT_EPEER;
  }
  now = bt__comm_now();
  if (x->wait_since == 0.0) {
    x->wait_since = now;
    describe(x, what, sizeof what);
    bt__comm_note_wait(pl->comm, what);
  } else if (now - x->wait_since > pl->timeout_s) {
    describe(x, what, sizeof what);
    snprintf(errbuf, errlen,
             "timed out after %g s waiting for %s (raise --comm-timeout if "
             "the job is only slow)",
             pl->timeout_s, what);
    return BT_ETIMEDOUT;
  } else {
    /* Not there yet: leave the core to the tasks and ranks that work (a
     * retry comes back at once when the device has nothing else). */
    struct timespec ts = {0, 20000};
    nanosleep(&ts, NULL);
  }
  return BT_TASK_RETRY;
}

int
bt__pl_builtin_tie(struct bt_pipeline *pl, const struct pl_task *pt)
{
  size_t na = 0, nb = 0;
  float *b = pl->tie_tensor(pt->replica, pt->tie, 1, &nb, pl->user);
  float *a = pt->xfer >= 0
                 ? (float *)pl->xf[pt->xfer].staging
                 : pl->tie_tensor(pt->replica, pt->tie, 0, &na, pl->user);

  if (pt->xfer >= 0)
    na = pl->xf[pt->xfer].bytes / sizeof(float);
  if (a == NULL || b == NULL || na != nb)
    return BT_EINVAL;
  for (size_t j = 0; j < nb; j++) {
    float sum = a[j] + b[j];
    b[j] = sum;
    if (pt->xfer < 0)
      a[j] = sum;
  }
  return 0;
}

int
bt__pl_builtin_reduce(struct bt_pipeline *pl, const struct pl_task *pt)
{
  int32_t r = pt->replica, s = pt->stage, R = pl->R;

  for (int32_t part = 0; part < pl->nparts_s[s]; part++) {
    size_t n = 0, lo, hi;
    float *mine = part_of(pl, r, s, part, &n);
    if (mine == NULL)
      return BT_EINVAL;
    slice_of(n, r, R, &lo, &hi);
    for (size_t j = lo; j < hi; j++) {
      float sum = 0.0f;
      for (int32_t q = 0; q < R; q++) {
        int32_t ix =
            pl->red_up[(((size_t)q * R + r) * pl->S + s) * (size_t)pl->nparts +
                       part];
        size_t cnt;
        const float *src = ix >= 0 ? (const float *)pl->xf[ix].staging - lo
                                   : part_of(pl, q, s, part, &cnt);
        sum = q == 0 ? src[j] : sum + src[j];
      }
      for (int32_t q = 0; q < R; q++) {
        int32_t ix =
            pl->red_up[(((size_t)q * R + r) * pl->S + s) * (size_t)pl->nparts +
                       part];
        size_t cnt;
        if (ix < 0)
          part_of(pl, q, s, part, &cnt)[j] = sum;
      }
    }
  }
  return 0;
}

bt_status
bt__pl_step_begin(struct bt_pipeline *pl, bt_error_t *err)
{
  char msg[256];

  if (pl->broken)
    return bt__errorf(err, BT_EPEER,
                      "an earlier step of this job failed across processes; "
                      "the job must stop (start it again, e.g. from a "
                      "checkpoint)");
  bt__comm_progress(pl->comm, 1);
  for (size_t j = 0; j < pl->nxf; j++) {
    struct pl_xfer *x = &pl->xf[j];
    bt_status rc;
    /* A transport moves the plan's edges itself, in its tasks. */
    if (x->to != pl->me || pl->transport.send != NULL)
      continue;
    x->wait_since = 0.0;
    rc = bt__comm_irecv(pl->comm, x->staging ? x->staging : x->buf, x->bytes,
                        x->from, BT__COMM_TAG_XFER + (int32_t)j, &x->req, msg,
                        sizeof msg);
    if (rc != BT_OK) {
      pl->broken = 1;
      bt__comm_progress(pl->comm, 0);
      return bt__errorf(err, rc, "rank %d: %s", (int)pl->me, msg);
    }
  }
  return BT_OK;
}

static bt_status step_end(struct bt_pipeline *pl, bt_status rc,
                          bt_error_t *err);

bt_status
bt__pl_step_end(struct bt_pipeline *pl, bt_status rc, bt_error_t *err)
{
  rc = step_end(pl, rc, err);
  bt__comm_progress(pl->comm, 0);
  return rc;
}

static bt_status
step_end(struct bt_pipeline *pl, bt_status rc, bt_error_t *err)
{
  if (rc == BT_OK) {
    for (size_t j = 0; j < pl->nxf && rc == BT_OK; j++) {
      struct pl_xfer *x = &pl->xf[j];
      char what[200];
      if (x->from != pl->me || pl->transport.send != NULL)
        continue;
      snprintf(what, sizeof what,
               "rank %d to receive the %s (replica %d, "
               "stage %d, microbatch %d)",
               (int)x->to, xfer_what(x->kind), (int)x->r, (int)x->s, (int)x->k);
      rc = bt__comm_wait(pl->comm, &x->req, what, err);
    }
    if (rc == BT_OK)
      return BT_OK;
  }
  /* A failed step: tell the others (unless a peer's failure is what this
   * is), drop what is still pending, and refuse further steps. */
  if (rc != BT_EPEER)
    bt_comm_announce_failure(pl->comm, err != NULL ? err->message : "");
  for (size_t j = 0; j < pl->nxf; j++)
    bt__comm_cancel(pl->comm, &pl->xf[j].req);
  bt__comm_note_wait(pl->comm, NULL);
  pl->broken = 1;
  if (err != NULL && rc != BT_EPEER) {
    char detail[BT_ERROR_MESSAGE_MAX];
    memcpy(detail, err->message, sizeof detail);
    bt__errorf(err, rc, "rank %d: %s", (int)pl->me, detail);
  }
  return rc;
}
