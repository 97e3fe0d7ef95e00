/* The embedding API: user stage callbacks driven by a plan on the runtime.
 *
 * At create: plan the schedule, check the stages have the callbacks the plan
 * needs, build the graph with the skip edges, allocate one block holding
 * every (stage, microbatch) buffer, and instantiate the step on the
 * runtime.  A step is one bt_exec_run; each task is mapped to the stage's
 * callback with its buffers.  On the CPU backend a "transfer" is the
 * consumer reading the producer's buffer: they share the address space. */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "baton/graph.h"
#include "baton/pipeline.h"
#include "error.h"
#include "pipeline_internal.h"

#define ALIGN BT__PL_ALIGN

static size_t
round_up(size_t n)
{
  return (n + ALIGN - 1) / ALIGN * ALIGN;
}

static size_t
slot(const struct bt_pipeline *pl, int32_t r, int32_t s, int32_t k)
{
  return bt__pl_slot(pl, r, s, k);
}

/* An epilogue task: the caller's callback, or the clip reduction. */
static int
epilogue_task(struct bt_pipeline *pl, const bt_task_call_t *tc,
              const struct pl_task *pt, char *errbuf, size_t errlen)
{
  bt_stage_call_t c;

  if (pt->what == TASK_CLIP) {
    double sum = 0.0;
    for (int32_t s = 0; s < pl->S; s++)
      sum += pl->sqnorm[s];
    pl->gs[0] = sqrt(sum);
    if (!isfinite(pl->gs[0])) {
      snprintf(errbuf, errlen,
               "the global gradient norm is %g; no parameter was updated "
               "(lower the learning rate, or look for a NaN in the stages' "
               "gradients)",
               pl->gs[0]);
      return BT_ERANGE;
    }
    pl->gs[1] = pl->max_grad_norm / (pl->gs[0] + 1e-6);
    if (pl->gs[1] > 1.0)
      pl->gs[1] = 1.0;
    return 0;
  }
  if (pt->what == TASK_SEND)
    return bt__pl_send_task(pl, pt, tc->device_ctx, errbuf, errlen);
  if (pt->what == TASK_RECV)
    return bt__pl_recv_task(pl, pt, tc->device_ctx, errbuf, errlen);
  if (pt->what == TASK_TIE && pl->tie_tensor != NULL) {
    if (bt__pl_builtin_tie(pl, pt) != 0) {
      snprintf(errbuf, errlen, "tie '%s': the two tensors differ in size",
               pl->ties[pt->tie].name);
      return BT_EINVAL;
    }
    return 0;
  }
  if (pt->what == TASK_REDUCE && pl->grad_tensor != NULL) {
    if (bt__pl_builtin_reduce(pl, pt) != 0) {
      snprintf(errbuf, errlen, "grad_tensor gave no gradient for stage %d",
               (int)pt->stage);
      return BT_EINVAL;
    }
    return 0;
  }
  memset(&c, 0, sizeof c);
  c.size = sizeof c;
  c.stage = pt->stage;
  c.replica = pt->replica;
  c.tie = pt->tie;
  c.microbatch = -1;
  c.device = tc->device;
  c.device_ctx = tc->device_ctx;
  c.step = tc->step;
  c.user = pl->user;
  c.grad_norm = pl->max_grad_norm > 0 ? pl->gs[0] : NAN;
  c.grad_scale = pl->max_grad_norm > 0 ? pl->gs[1] : 1.0;
  switch (pt->what) {
  case TASK_TIE:
    c.kind = BT_STAGE_TIE;
    return pl->tie_grads(&c, errbuf, errlen);
  case TASK_REDUCE:
    c.kind = BT_STAGE_REDUCE;
    return pl->reduce_grads(&c, errbuf, errlen);
  case TASK_NORM:
    c.kind = BT_STAGE_NORM;
    c.sqnorm = &pl->sqnorm[pt->stage];
    return pl->grad_sqnorm(&c, errbuf, errlen);
  default:
    c.kind = BT_STAGE_UPDATE;
    return pl->update(&c, errbuf, errlen);
  }
}

/* The runtime's task function: one plan action = one stage callback. */
int
bt__pl_task(const bt_task_call_t *tc, char *errbuf, size_t errlen)
{
  struct bt_pipeline *pl = tc->user;
  const struct pl_task *pt = &pl->tasks[tc->task];
  int32_t s = tc->action.stage, k = tc->action.microbatch, kind;
  int32_t r = pt->replica;
  const bt_stage_desc_t *d;
  size_t at;
  bt_stage_call_t c;
  int rc = 0;

  if (pt->what != TASK_PLAN)
    return epilogue_task(pl, tc, pt, errbuf, errlen);
  /* What came from other ranks through a transport: after its receive. */
  for (int32_t i = pl->consumes_at != NULL ? pl->consumes_at[tc->task] : 0;
       pl->transport.wait != NULL && i < pl->consumes_at[tc->task + 1]; i++)
    if ((rc = pl->transport.wait(tc->device_ctx, pl->consumes[i],
                                 pl->transport.user, errbuf, errlen)) != 0)
      return rc;
  d = &pl->stage[s];
  at = slot(pl, r, s, k);
  memset(&c, 0, sizeof c);
  c.size = sizeof c;
  c.stage = s;
  c.microbatch = k;
  c.kind = kind = tc->action.kind;
  c.device = tc->device;
  c.device_ctx = tc->device_ctx;
  c.step = tc->step;
  c.user = d->user;
  c.replica = r;
  c.tie = -1;
  c.grad_norm = NAN;
  c.grad_scale = 1.0;
  if (s > 0) {
    c.input = pl->act[slot(pl, r, s - 1, k)];
    c.input_bytes = pl->stage[s - 1].output_bytes;
  }
  c.output = pl->act[at];
  c.output_bytes = d->output_bytes;
  if (s + 1 < pl->S) {
    c.grad_output = pl->grad[slot(pl, r, s + 1, k)];
    c.grad_output_bytes = pl->stage[s + 1].grad_input_bytes;
  }
  c.grad_input = pl->grad[at];
  c.grad_input_bytes = d->grad_input_bytes;
  c.nskip_out = pl->nout[s];
  c.skip_out = pl->skip_pool + pl->out_at[at];
  c.skip_grad_in = c.skip_out + c.nskip_out;
  c.nskip_in = pl->nin[s];
  c.skip_in = pl->skip_pool + pl->in_at[at];
  c.skip_grad_out = c.skip_in + c.nskip_in;
  if ((kind == BT_ACT_B || kind == BT_ACT_I) && d->recompute != NULL) {
    c.kind = BT_STAGE_RECOMPUTE;
    rc = d->recompute(&c, errbuf, errlen);
    c.kind = kind;
  }
  if (rc == 0) {
    switch (kind) {
    case BT_ACT_F:
      rc = d->forward(&c, errbuf, errlen);
      break;
    case BT_ACT_B:
      rc = d->backward(&c, errbuf, errlen);
      break;
    case BT_ACT_I:
      rc = d->input_grad(&c, errbuf, errlen);
      break;
    default:
      rc = d->weight_grad(&c, errbuf, errlen);
      break;
    }
  }
  if (rc == 0 &&
      tc->task - r * bt_graph_task_count(pl->graph) == pl->last_bw[s] &&
      pl->grads_ready != NULL)
    pl->grads_ready(s, pl->user);
  return rc;
}

/* Copies the caller's stage descriptors, zero-extending older (smaller)
 * ones, and checks the required fields.  The caller's array has its own
 * element size (an older program's is smaller than ours, a newer one's
 * larger): step through it by stage 0's size, which every element must
 * share, never by our sizeof. */
static bt_status
copy_stages(struct bt_pipeline *pl, const bt_pipeline_config_t *cfg,
            bt_error_t *err)
{
  const unsigned char *base = (const unsigned char *)cfg->stage;
  size_t stride = cfg->stage[0].size;

  pl->stage = calloc((size_t)pl->S, sizeof *pl->stage);
  if (pl->stage == NULL)
    return bt__errorf(err, BT_ENOMEM, "out of memory creating the pipeline");
  if (stride < offsetof(bt_stage_desc_t, forward) + sizeof(bt_stage_fn))
    return bt__errorf(err, BT_EINVAL,
                      "stage 0: size is %zu; start its descriptor from "
                      "BT_STAGE_DESC_INIT",
                      stride);
  for (int32_t s = 0; s < pl->S; s++) {
    const bt_stage_desc_t *in;
    size_t size, n;
    in = (const bt_stage_desc_t *)(const void *)(base + (size_t)s * stride);
    memcpy(&size, in, sizeof size);
    if (size != stride)
      return bt__errorf(err, BT_EINVAL,
                        "stage %d: size is %zu, but stage 0's is %zu; start "
                        "every descriptor from BT_STAGE_DESC_INIT",
                        (int)s, size, stride);
    n = size < sizeof *in ? size : sizeof *in;
    memcpy(&pl->stage[s], in, n);
    pl->stage[s].size = sizeof *in;
    if (pl->stage[s].forward == NULL)
      return bt__errorf(err, BT_EINVAL, "stage %d has no forward callback",
                        (int)s);
  }
  return BT_OK;
}

/* Each stage has the backward callbacks its actions in the plan call. */
static bt_status
check_callbacks(const struct bt_pipeline *pl, const char *sched,
                bt_error_t *err)
{
  for (int32_t d = 0; d < bt_plan_devices(pl->plan); d++)
    for (size_t i = 0; i < bt_plan_length(pl->plan, d); i++) {
      bt_action_t a = bt_plan_action(pl->plan, d, i);
      const bt_stage_desc_t *st;
      if (a.kind == BT_ACT_IDLE)
        continue;
      st = &pl->stage[a.stage];
      if (a.kind == BT_ACT_B && st->backward == NULL)
        return bt__errorf(err, BT_EINVAL,
                          "schedule '%s' runs full backwards, but stage %d "
                          "has no backward callback; give it one",
                          sched, (int)a.stage);
      if ((a.kind == BT_ACT_I || a.kind == BT_ACT_W) &&
          (st->input_grad == NULL || st->weight_grad == NULL))
        return bt__errorf(err, BT_EINVAL,
                          "schedule '%s' splits backwards into input and "
                          "weight gradients, but stage %d lacks input_grad "
                          "or weight_grad; give it both, or choose a "
                          "schedule with full backwards (gpipe, 1f1b, "
                          "interleaved)",
                          sched, (int)a.stage);
    }
  return BT_OK;
}

static bt_status
make_plan(struct bt_pipeline *pl, const bt_pipeline_config_t *cfg, int32_t v,
          bt_error_t *err)
{
  bt_schedule_params_t params = BT_SCHEDULE_PARAMS_INIT;
  double *cost = malloc(3 * (size_t)pl->S * sizeof *cost);
  bt_status rc;

  if (cost == NULL)
    return bt__errorf(err, BT_ENOMEM, "out of memory planning");
  for (int32_t s = 0; s < pl->S; s++) {
    const bt_stage_desc_t *d = &pl->stage[s];
    cost[s] = d->cost_f > 0 ? d->cost_f : 1.0;
    cost[pl->S + s] = d->cost_b > 0 ? d->cost_b : 1.0;
    cost[2 * pl->S + s] = d->cost_w > 0 ? d->cost_w : 1.0;
  }
  params.devices = pl->p;
  params.virtual_stages = v;
  params.stages = pl->S;
  params.microbatches = pl->m;
  params.stage_device = cfg->stage_device;
  params.cost_f = cost;
  params.cost_b = cost + pl->S;
  params.cost_w = cost + 2 * pl->S;
  rc = bt_schedule_make_plan(cfg->schedule, &params, &pl->plan, err);
  free(cost);
  return rc;
}

static bt_status
make_skips(struct bt_pipeline *pl, const bt_pipeline_config_t *cfg,
           bt_error_t *err)
{
  bt_skip_decl_t *decls;
  bt_status rc;

  decls = calloc(2 * cfg->nskips + 1, sizeof *decls);
  if (decls == NULL)
    return bt__errorf(err, BT_ENOMEM, "out of memory checking skips");
  for (size_t i = 0; i < cfg->nskips; i++) {
    const bt_pipeline_skip_t *k = &cfg->skips[i];
    if (k->name == NULL || k->bytes == 0) {
      free(decls);
      return bt__errorf(err, BT_EINVAL, "skip %zu needs a name and bytes > 0",
                        i);
    }
    decls[2 * i].layer = k->stash_stage;
    decls[2 * i].op = BT_SKIP_STASH;
    decls[2 * i].name = k->name;
    decls[2 * i + 1].layer = k->pop_stage;
    decls[2 * i + 1].op = BT_SKIP_POP;
    decls[2 * i + 1].name = k->name;
  }
  /* One "layer" per stage: the stage-level skip layout is verified with
   * the same rules as a layer-level one. */
  rc = bt_skip_layout_create(decls, 2 * cfg->nskips, pl->S, NULL, &pl->skips,
                             err);
  free(decls);
  if (rc != BT_OK && err != NULL) {
    char detail[BT_ERROR_MESSAGE_MAX];
    memcpy(detail, err->message, sizeof detail);
    bt__errorf(err, rc,
               "pipeline skips (each \"layer\" below is a stage): "
               "%s",
               detail);
  }
  return rc;
}

/* Index of skip `name` in the config, for its size. */
static size_t
skip_bytes(const bt_pipeline_config_t *cfg, const char *name)
{
  for (size_t i = 0; i < cfg->nskips; i++)
    if (strcmp(cfg->skips[i].name, name) == 0)
      return cfg->skips[i].bytes;
  return 0;
}

/* Lays out every buffer in one block: activations, gradients, and each
 * skip's value and gradient, per (replica, stage, microbatch). */
static bt_status
make_buffers(struct bt_pipeline *pl, const bt_pipeline_config_t *cfg,
             bt_error_t *err)
{
  size_t nsk = bt_skip_layout_count(pl->skips);
  size_t SM = (size_t)pl->R * (size_t)pl->S * (size_t)pl->m;
  size_t total = 0, pool = 0, off, next = 0;
  size_t *sk_bytes = calloc(nsk + 1, sizeof *sk_bytes);
  int32_t *seen_out = calloc((size_t)pl->S, sizeof *seen_out);
  int32_t *seen_in = calloc((size_t)pl->S, sizeof *seen_in);

  pl->act = calloc(SM, sizeof *pl->act);
  pl->grad = calloc(SM, sizeof *pl->grad);
  pl->skip_pos = calloc(nsk + 1, sizeof *pl->skip_pos);
  pl->nout = calloc((size_t)pl->S, sizeof *pl->nout);
  pl->nin = calloc((size_t)pl->S, sizeof *pl->nin);
  pl->out_at = calloc(SM, sizeof *pl->out_at);
  pl->in_at = calloc(SM, sizeof *pl->in_at);
  if (!sk_bytes || !seen_out || !seen_in || !pl->act || !pl->grad ||
      !pl->skip_pos || !pl->nout || !pl->nin || !pl->out_at || !pl->in_at)
    goto nomem;
  for (int32_t s = 0; s < pl->S; s++)
    total += (size_t)pl->m * (round_up(pl->stage[s].output_bytes) +
                              round_up(pl->stage[s].grad_input_bytes));
  for (size_t i = 0; i < nsk; i++) {
    bt_skip_t k = bt_skip_layout_get(pl->skips, i);
    sk_bytes[i] = skip_bytes(cfg, k.name);
    total += 2 * (size_t)pl->m * round_up(sk_bytes[i]);
    pl->nout[k.stash_stage]++;
    pl->nin[k.pop_stage]++;
  }
  total *= (size_t)pl->R;
  for (int32_t s = 0; s < pl->S; s++)
    pool += 2 * (size_t)(pl->nout[s] + pl->nin[s]) * (size_t)pl->m;
  pool *= (size_t)pl->R;
  pl->skip_pool = calloc(pool + 1, sizeof *pl->skip_pool);
  if (pl->skip_pool == NULL)
    goto nomem;
  /* Zeroed so that a stage reading a buffer it never wrote (e.g. a first
   * stage's unused gradient) sees zeros, deterministically. */
  if (cfg->buffers_alloc != NULL) {
    pl->block = cfg->buffers_alloc(total ? total : ALIGN, cfg->buffers_user);
    if (pl->block == NULL)
      goto nomem;
    pl->buffers_free = cfg->buffers_free;
    pl->buffers_user = cfg->buffers_user;
  } else {
    pl->block = aligned_alloc(ALIGN, total ? total : ALIGN);
    if (pl->block == NULL)
      goto nomem;
    memset(pl->block, 0, total);
  }
  off = 0;
  for (int32_t r = 0; r < pl->R; r++)
    for (int32_t s = 0; s < pl->S; s++)
      for (int32_t k = 0; k < pl->m; k++) {
        size_t at = slot(pl, r, s, k);
        if (pl->stage[s].output_bytes > 0)
          pl->act[at] = pl->block + off;
        off += round_up(pl->stage[s].output_bytes);
        if (pl->stage[s].grad_input_bytes > 0)
          pl->grad[at] = pl->block + off;
        off += round_up(pl->stage[s].grad_input_bytes);
        /* Skip arrays: [outs, grad_ins] then [ins, grad_outs], in the
         * layout's order. */
        pl->out_at[at] = next;
        next += 2 * (size_t)pl->nout[s];
        pl->in_at[at] = next;
        next += 2 * (size_t)pl->nin[s];
      }
  for (int32_t r = 0; r < pl->R; r++) {
    memset(seen_out, 0, (size_t)pl->S * sizeof *seen_out);
    memset(seen_in, 0, (size_t)pl->S * sizeof *seen_in);
    for (size_t i = 0; i < nsk; i++) {
      bt_skip_t sk = bt_skip_layout_get(pl->skips, i);
      int32_t so = sk.stash_stage, po = sk.pop_stage;
      for (int32_t k = 0; k < pl->m; k++) {
        unsigned char *val = pl->block + off, *grd;
        bt_skip_buf_t *o, *in;
        off += round_up(sk_bytes[i]);
        grd = pl->block + off;
        off += round_up(sk_bytes[i]);
        o = pl->skip_pool + pl->out_at[slot(pl, r, so, k)];
        in = pl->skip_pool + pl->in_at[slot(pl, r, po, k)];
        pl->skip_pos[i] = seen_out[so];
        o[seen_out[so]] = (bt_skip_buf_t){sk.name, val, sk_bytes[i]};
        o[pl->nout[so] + seen_out[so]] =
            (bt_skip_buf_t){sk.name, grd, sk_bytes[i]};
        in[seen_in[po]] = (bt_skip_buf_t){sk.name, val, sk_bytes[i]};
        in[pl->nin[po] + seen_in[po]] =
            (bt_skip_buf_t){sk.name, grd, sk_bytes[i]};
      }
      seen_out[so]++;
      seen_in[po]++;
    }
  }
  free(sk_bytes);
  free(seen_out);
  free(seen_in);
  return BT_OK;
nomem:
  free(sk_bytes);
  free(seen_out);
  free(seen_in);
  return bt__errorf(err, BT_ENOMEM,
                    "out of memory allocating the "
                    "pipeline's buffers");
}

/* The last backward (B or W) of each stage in its device's plan order:
 * after it, the stage's gradients are complete. */
static bt_status
find_last_backwards(struct bt_pipeline *pl, bt_error_t *err)
{
  pl->last_bw = malloc((size_t)pl->S * sizeof *pl->last_bw);
  if (pl->last_bw == NULL)
    return bt__errorf(err, BT_ENOMEM, "out of memory");
  for (int32_t s = 0; s < pl->S; s++)
    pl->last_bw[s] = -1;
  for (int32_t t = 0; t < bt_graph_task_count(pl->graph); t++) {
    bt_task_t task = bt_graph_task(pl->graph, t);
    /* Task ids follow each device's plan order, so the last one wins. */
    if (task.action.kind == BT_ACT_B || task.action.kind == BT_ACT_W)
      pl->last_bw[task.action.stage] = t;
  }
  return BT_OK;
}

/* The first version's config ends with `trace`; a caller built against a
 * later header passes a bigger size, one built against this one this size
 * (or more, with padding). */
#define CONFIG_V1_SIZE (offsetof(bt_pipeline_config_t, trace) + sizeof(int32_t))

/* Copies the caller's config, zero-extending it to this header's layout,
 * and checks it. */
static bt_status
read_config(const bt_pipeline_config_t *in, bt_pipeline_config_t *cfg,
            bt_error_t *err)
{
  if (in == NULL || in->size < CONFIG_V1_SIZE)
    return bt__errorf(err, BT_EINVAL,
                      "bt_pipeline_create needs a config "
                      "started from BT_PIPELINE_CONFIG_INIT");
  memset(cfg, 0, sizeof *cfg);
  memcpy(cfg, in, in->size < sizeof *cfg ? in->size : sizeof *cfg);
  if (cfg->stages < 1 || cfg->stage == NULL || cfg->devices < 1 ||
      cfg->microbatches < 1 || cfg->schedule == NULL ||
      cfg->virtual_stages < 0 || (cfg->nskips > 0 && cfg->skips == NULL) ||
      cfg->replicas < 0 || cfg->devices > INT32_MAX / (cfg->replicas + 1))
    return bt__errorf(err, BT_EINVAL,
                      "a pipeline needs stages >= 1 with descriptors, "
                      "devices >= 1, microbatches >= 1 and a schedule (got "
                      "stages=%d, devices=%d, microbatches=%d)",
                      (int)cfg->stages, (int)cfg->devices,
                      (int)cfg->microbatches);
  return BT_OK;
}

/* Checks and copies the epilogue's config. */
static bt_status
read_epilogue(struct bt_pipeline *pl, const bt_pipeline_config_t *cfg,
              bt_error_t *err)
{
  pl->tie_grads = cfg->tie_grads;
  pl->reduce_grads = cfg->reduce_grads;
  pl->grad_sqnorm = cfg->grad_sqnorm;
  pl->update = cfg->update;
  pl->grad_tensor = cfg->grad_tensor;
  pl->tie_tensor = cfg->tie_tensor;
  pl->max_grad_norm = cfg->max_grad_norm;
  pl->gs[0] = NAN;
  pl->gs[1] = 1.0;
  if (!(cfg->max_grad_norm >= 0.0) || isinf(cfg->max_grad_norm))
    return bt__errorf(err, BT_EINVAL,
                      "max_grad_norm is %g; give a finite value > 0 to clip, "
                      "or 0 not to",
                      cfg->max_grad_norm);
  if (cfg->max_grad_norm > 0 && cfg->grad_sqnorm == NULL)
    return bt__errorf(err, BT_EINVAL,
                      "clipping at %g needs a grad_sqnorm callback that "
                      "gives each stage's squared gradient norm",
                      cfg->max_grad_norm);
  if (pl->R > 1 && cfg->reduce_grads == NULL && cfg->grad_tensor == NULL)
    return bt__errorf(err, BT_EINVAL,
                      "%d data-parallel replicas need a reduce_grads "
                      "callback that all-reduces each stage's gradients, or "
                      "a grad_tensor callback (baton reduces them)",
                      (int)pl->R);
  if (cfg->nties > 0 && (cfg->ties == NULL ||
                         (cfg->tie_grads == NULL && cfg->tie_tensor == NULL)))
    return bt__errorf(err, BT_EINVAL,
                      "%zu ties need the ties array and a tie_grads "
                      "callback that sums each tie's two gradients, or a "
                      "tie_tensor callback (baton sums them)",
                      cfg->nties);
  if (pl->W > 1 &&
      ((pl->R > 1 && cfg->grad_tensor == NULL && cfg->transport == NULL) ||
       (cfg->nties > 0 && cfg->tie_tensor == NULL)))
    return bt__errorf(err, BT_EINVAL,
                      "across %d processes baton moves the gradients it "
                      "reduces and ties itself: give grad_tensor (replicas) "
                      "and tie_tensor (ties) instead of reduce_grads and "
                      "tie_grads",
                      (int)pl->W);
  if (cfg->buffers_alloc != NULL &&
      (cfg->grad_tensor != NULL || cfg->tie_tensor != NULL ||
       cfg->buffers_free == NULL))
    return bt__errorf(err, BT_EUNSUPPORTED,
                      "buffers outside host memory (buffers_alloc) need "
                      "buffers_free, and do not work with grad_tensor or "
                      "tie_tensor, whose bytes baton moves on the host: give "
                      "reduce_grads and tie_grads");
  if (cfg->transport != NULL) {
    const bt_pipeline_transport_t *tr = cfg->transport;
    if (tr->size < sizeof *tr || tr->send == NULL || tr->recv == NULL)
      return bt__errorf(err, BT_EINVAL,
                        "a transport needs its size, send and recv");
    pl->transport = *tr;
  }
  if (pl->W > 1 &&
      ((cfg->buffers_alloc != NULL && pl->transport.send == NULL) ||
       (pl->transport.send != NULL &&
        (cfg->nties > 0 || cfg->max_grad_norm > 0 || cfg->grad_tensor != NULL ||
         cfg->tie_tensor != NULL))))
    return bt__errorf(err, BT_EUNSUPPORTED,
                      "device buffers (buffers_alloc) across processes need "
                      "a transport, and a transport carries only the plan's "
                      "edges and the replicas' reduce_grads (a collective): "
                      "no ties, no clipping, no grad_tensor or tie_tensor");
  if (cfg->grad_tensor != NULL) {
    pl->nparts_s = calloc((size_t)pl->S, sizeof *pl->nparts_s);
    if (pl->nparts_s == NULL)
      return bt__errorf(err, BT_ENOMEM, "out of memory creating the pipeline");
    for (int32_t s = 0; s < pl->S; s++) {
      size_t n = 0;
      while (pl->nparts_s[s] < 64 &&
             cfg->grad_tensor(0, s, pl->nparts_s[s], &n, cfg->user) != NULL)
        pl->nparts_s[s]++;
      if (pl->nparts_s[s] == 0)
        return bt__errorf(err, BT_EINVAL,
                          "grad_tensor gave no gradient for stage %d; return "
                          "part 0 of every stage",
                          (int)s);
      if (pl->nparts_s[s] > pl->nparts)
        pl->nparts = pl->nparts_s[s];
    }
  }
  pl->sqnorm = calloc((size_t)pl->S, sizeof *pl->sqnorm);
  pl->ties = calloc(cfg->nties + 1, sizeof *pl->ties);
  if (pl->sqnorm == NULL || pl->ties == NULL)
    return bt__errorf(err, BT_ENOMEM, "out of memory creating the pipeline");
  for (size_t i = 0; i < cfg->nties; i++) {
    const bt_pipeline_tie_t *t = &cfg->ties[i];
    if (t->name == NULL || t->stage_a < 0 || t->stage_b >= pl->S ||
        t->stage_a >= t->stage_b)
      return bt__errorf(err, BT_EINVAL,
                        "tie %zu ('%s', stages %d and %d) needs a name and "
                        "two stages 0 <= stage_a < stage_b < %d",
                        i, t->name ? t->name : "(null)", (int)t->stage_a,
                        (int)t->stage_b, (int)pl->S);
    pl->ties[i] = *t;
    if ((pl->ties[i].name = strdup(t->name)) == NULL)
      return bt__errorf(err, BT_ENOMEM, "out of memory creating the pipeline");
    pl->nties = i + 1;
  }
  return BT_OK;
}

static bt_status
start_runtime(struct bt_pipeline *pl, const bt_pipeline_config_t *cfg,
              bt_error_t *err)
{
  bt_runtime_config_t rc = BT_RUNTIME_CONFIG_INIT;
  bt_status st;

  if (cfg->runtime != NULL) {
    pl->rt = cfg->runtime;
    if (bt_runtime_devices(pl->rt) < pl->R * pl->p)
      return bt__errorf(err, BT_EINVAL,
                        "the runtime has %d devices, but %d replicas x %d "
                        "devices need %d; create it with more",
                        (int)bt_runtime_devices(pl->rt), (int)pl->R, (int)pl->p,
                        (int)(pl->R * pl->p));
  } else {
    rc.devices = pl->R * pl->p;
    rc.threads = cfg->threads;
    st = bt_runtime_create(&rc, &pl->rt, err);
    if (st != BT_OK)
      return st;
    pl->own_rt = 1;
  }
  return bt__pl_build_exec(pl, cfg->trace, err);
}

static void
pipeline_free(struct bt_pipeline *pl)
{
  if (pl == NULL)
    return;
  bt_exec_destroy(pl->exec);
  if (pl->own_rt)
    bt_runtime_destroy(pl->rt);
  bt_graph_destroy(pl->graph);
  bt_skip_layout_destroy(pl->skips);
  bt_plan_destroy(pl->plan);
  free(pl->stage);
  free(pl->last_bw);
  free(pl->tasks);
  free(pl->consumes_at);
  free(pl->consumes);
  bt__pl_free_xfers(pl);
  free(pl->nparts_s);
  free(pl->skip_pos);
  free(pl->sqnorm);
  for (size_t i = 0; pl->ties != NULL && i < pl->nties; i++)
    free((void *)(uintptr_t)pl->ties[i].name);
  free(pl->ties);
  if (pl->buffers_free != NULL)
    pl->buffers_free(pl->block, pl->buffers_user);
  else
    free(pl->block);
  free(pl->act);
  free(pl->grad);
  free(pl->skip_pool);
  free(pl->nout);
  free(pl->nin);
  free(pl->out_at);
  free(pl->in_at);
  free(pl);
}

bt_status
bt_pipeline_create(const bt_pipeline_config_t *user_cfg, bt_pipeline_t **out,
                   bt_error_t *err)
{
  bt_graph_config_t gc = BT_GRAPH_CONFIG_INIT;
  bt_pipeline_config_t local, *cfg = &local;
  struct bt_pipeline *pl;
  int32_t v;
  bt_status rc;

  if (out == NULL)
    return bt__errorf(err, BT_EINVAL, "bt_pipeline_create: NULL out");
  rc = read_config(user_cfg, cfg, err);
  if (rc != BT_OK)
    return rc;
  v = cfg->virtual_stages ? cfg->virtual_stages
                          : bt_schedule_default_virtual(cfg->schedule);
  if (cfg->stages != cfg->devices * v)
    return bt__errorf(err, BT_EINVAL,
                      "%d stages do not fill %d devices with %d stage%s "
                      "each; use %d stages, or set virtual_stages",
                      (int)cfg->stages, (int)cfg->devices, (int)v,
                      v == 1 ? "" : "s", (int)(cfg->devices * v));
  pl = calloc(1, sizeof *pl);
  if (pl == NULL)
    return bt__errorf(err, BT_ENOMEM, "out of memory creating the pipeline");
  pl->S = cfg->stages;
  pl->m = cfg->microbatches;
  pl->p = cfg->devices;
  pl->R = cfg->replicas > 0 ? cfg->replicas : 1;
  pl->grads_ready = cfg->grads_ready;
  pl->user = cfg->user;
  pl->comm = bt_comm_size(cfg->comm) > 1 ? cfg->comm : NULL;
  pl->W = bt_comm_size(pl->comm);
  pl->me = bt_comm_rank(pl->comm);
  pl->timeout_s = bt_comm_timeout(cfg->comm);
  if ((pl->R * pl->p) % pl->W != 0) {
    rc = bt__errorf(err, BT_EINVAL,
                    "%d devices (%d replicas x %d) do not split evenly over "
                    "%d ranks; list a multiple of %d devices",
                    (int)(pl->R * pl->p), (int)pl->R, (int)pl->p, (int)pl->W,
                    (int)pl->W);
    pipeline_free(pl);
    return rc;
  }
  pl->per_rank = pl->R * pl->p / pl->W;
  rc = copy_stages(pl, cfg, err);
  if (rc == BT_OK)
    rc = read_epilogue(pl, cfg, err);
  if (rc == BT_OK)
    rc = make_plan(pl, cfg, v, err);
  if (rc == BT_OK)
    rc = check_callbacks(pl, bt_schedule_name(cfg->schedule), err);
  if (rc == BT_OK)
    rc = make_skips(pl, cfg, err);
  if (rc == BT_OK) {
    gc.plan = pl->plan;
    gc.stage_device = cfg->stage_device;
    gc.skips = pl->skips;
    rc = bt_graph_create(&gc, &pl->graph, err);
  }
  if (rc == BT_OK)
    rc = find_last_backwards(pl, err);
  if (rc == BT_OK)
    rc = make_buffers(pl, cfg, err);
  if (rc == BT_OK)
    rc = start_runtime(pl, cfg, err);
  if (rc == BT_OK)
    rc = bt__pl_resolve_xfers(pl, err);
  if (rc != BT_OK) {
    pipeline_free(pl);
    return rc;
  }
  *out = pl;
  return BT_OK;
}

bt_status
bt_pipeline_step(bt_pipeline_t *pl, bt_error_t *err)
{
  bt_status rc;

  if (pl == NULL)
    return bt__errorf(err, BT_EINVAL, "bt_pipeline_step: NULL pipeline");
  if (pl->comm == NULL)
    return bt_exec_run(pl->exec, err);
  rc = bt__pl_step_begin(pl, err);
  if (rc != BT_OK)
    return rc;
  rc = bt_exec_run(pl->exec, err);
  if (pl->transport.finish != NULL) {
    char msg[BT_ERROR_MESSAGE_MAX];
    int f =
        pl->transport.finish(rc != BT_OK, pl->transport.user, msg, sizeof msg);
    if (rc == BT_OK && f != 0)
      rc = bt__errorf(err, f < 0 ? (bt_status)f : BT_EIO,
                      "finishing the step's transfers: %s", msg);
  }
  return bt__pl_step_end(pl, rc, err);
}

bt_status
bt_pipeline_destroy(bt_pipeline_t *pl)
{
  bt_status rc;

  if (pl == NULL)
    return BT_OK;
  rc = bt_exec_destroy(pl->exec);
  if (rc != BT_OK)
    return rc;
  pl->exec = NULL;
  pipeline_free(pl);
  return BT_OK;
}

const void *
bt_pipeline_replica_output(const bt_pipeline_t *pl, int32_t replica,
                           int32_t stage, int32_t mb, size_t *bytes)
{
  if (pl == NULL || replica < 0 || replica >= pl->R || stage < 0 ||
      stage >= pl->S || mb < 0 || mb >= pl->m)
    return NULL;
  if (bytes != NULL)
    *bytes = pl->stage[stage].output_bytes;
  return pl->act[slot(pl, replica, stage, mb)];
}

const void *
bt_pipeline_output(const bt_pipeline_t *pl, int32_t stage, int32_t mb,
                   size_t *bytes)
{
  return bt_pipeline_replica_output(pl, 0, stage, mb, bytes);
}

double
bt_pipeline_grad_norm(const bt_pipeline_t *pl)
{
  return pl != NULL && pl->max_grad_norm > 0 ? pl->gs[0] : NAN;
}

const bt_plan_t *
bt_pipeline_plan(const bt_pipeline_t *pl)
{
  return pl ? pl->plan : NULL;
}

bt_status
bt_pipeline_slices(const bt_pipeline_t *pl, bt_slice_t *slices, size_t *count)
{
  if (pl == NULL || count == NULL)
    return BT_EINVAL;
  *count = (size_t)bt_exec_task_count(pl->exec);
  if (slices == NULL)
    return BT_OK;
  return bt_exec_slices(pl->exec, slices);
}
