/* Pipelined training of resmlp: stage callbacks over the model's layer
 * functions, driven by bt_pipeline.  See train.h for the contract. */
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "baton/pipeline.h"
#include "error.h"
#include "kernels.h"
#include "train.h"

#define ALIGN 64

struct train_stage {
  struct bt__train *t;
  int32_t s, r;             /* stage, data-parallel replica */
  int32_t rank;             /* the rank that runs it (0 in one process) */
  struct bt__resmlp *model; /* the replica's model (on the CPU) */
  size_t first, last;       /* layers [first, last] */
  bool stash_h0;            /* long skip leaves this stage (it has layer 0) */
  bool pop_h0;              /* long skip enters this stage (it has the head) */
  bool inner_h0;            /* layer 0 and the head are both here */
  unsigned char *block;     /* all of the stage's scratch and buffers */
  void **scratch;           /* [m * nl]: (microbatch k, layer first + i) */
  /* Per-stage buffers [R,H] each: callbacks of one stage never overlap
   * (a stage lives on one device, which runs one callback at a time). */
  float *tmp[2], *h0, *z, *dz;
  bool *dropped;  /* [m]: the microbatch's scratch is stale (host) */
  int32_t device; /* the device the stage runs on */
  /* With a backend: the stage's layers' slice of params and grads on its
   * device, the view the layer functions take (params and grads based so
   * that the stage's tensors land in the slice), and AdamW's moments. */
  struct bt__resmlp view;
  float *dparams, *dgrads, *dadam_m, *dadam_v;
  size_t off, n;   /* the slice: elements [off, off + n) of the flat blocks */
  float **peers;   /* replica 0's entry, replicas > 1: every replica's
                      dgrads of this stage, for the backend's reduce */
  size_t mb_bytes; /* scratch bytes of one microbatch */
  struct bt__slots pool; /* which slot of scratch each microbatch holds */
};

struct bt__train {
  struct bt__resmlp *model;
  size_t N, R;
  int32_t m, S, p, checkpoint;
  uint64_t perturb;
  bt_comm_t *comm;
  int32_t nrep;            /* data-parallel replicas */
  struct bt__resmlp **rep; /* [nrep]: rep[0] = model, others copies */
  double *shares;          /* [nrep * m]: the loss shares of the last step,
                              in (replica, microbatch) order */
  struct train_stage *st;  /* [nrep * S]: replica r's stage s at r S + s */
  int32_t *layer_stage;    /* [nlayers] */
  bt_pipeline_t *pl;
  struct bt__held held; /* per device (stages.h) */
  /* The step's inputs: written by bt__train_step before bt_pipeline_step,
   * which publishes them to the callbacks' threads (the runtime's step
   * start is a release / acquire pair), read-only during the step. */
  const float *x;
  const int32_t *y;
  /* A backend (backend.h), or NULL for the CPU.  With one, the trainer
   * owns its runtime, and the step's x and y are uploaded into dx, dy. */
  struct bt_backend *be;
  const struct bt__kern *K;
  bt_runtime_t *rt;
  float *dx;
  int32_t *dy;
  /* Whole-step graphs: 0 off; else the steps run so far (1: eager, to
   * create every event; 2: captured, then replayed; more: replayed). */
  int32_t graph;
  int claims; /* this trainer holds be->claimed */
  /* Across processes on a backend: the job's devices this rank runs are
   * dev0 .. dev0 + be->devices - 1 (the backend's 0 ..); the runtime's
   * device table (the others idle); the transport of the plan's edges. */
  int32_t dev0;
  bt_device_desc_t *rt_desc;
  bt_pipeline_transport_t transport;
  char note[320]; /* what the user should know about how it runs */
};

static size_t
round_up(size_t n)
{
  return (n + ALIGN - 1) / ALIGN * ALIGN;
}

static bool
checkpointed(const struct bt__train *t, int32_t k)
{
  return bt__stages_checkpointed(t->checkpoint, k, t->m);
}

static void
maybe_perturb(const struct bt__train *t, const bt_stage_call_t *c)
{
  bt__stages_perturb(t->perturb, c);
}

/* The backend's index of a job device this rank runs. */
static int32_t
bdev(const struct bt__train *t, int32_t device)
{
  return device - t->dev0;
}

/* Whether this rank runs the stage (always, in one process). */
static bool
here(const struct bt__train *t, const struct train_stage *st)
{
  return t->be == NULL ||
         (st->device >= t->dev0 && st->device < t->dev0 + t->be->devices);
}

/* The model as the stage's layer functions see it: on a backend, the view
 * over the stage's device slice. */
static struct bt__resmlp *
model_of(struct train_stage *st)
{
  return st->t->be != NULL ? &st->view : st->model;
}

/* The (replica, stage) a call is for: the stage's user pointer is replica
 * 0's entry, replica r's is r S entries on. */
static struct train_stage *
stage_of(const bt_stage_call_t *c)
{
  struct train_stage *st = c->user;

  return st + (size_t)c->replica * (size_t)st->t->S;
}

/* Microbatch k's scratch of layer (k holds a slot). */
static void *
scratch_of(const struct train_stage *st, int32_t k, size_t layer)
{
  size_t nl = st->last - st->first + 1;
  return st->scratch[(size_t)st->pool.of[k] * nl + (layer - st->first)];
}

/* A per-stage [R,H] buffer that is neither a nor b. */
static float *
other_tmp(const struct train_stage *st, const float *a, const float *b)
{
  return st->tmp[0] != a && st->tmp[0] != b ? st->tmp[0] : st->tmp[1];
}

/* The stage's forward of microbatch k.  When rebuilding (recompute) it
 * writes neither the pipeline's output nor the skip: their consumers have
 * already read them, and the values would be bitwise the same. */
static int
stage_forward(struct train_stage *st, const bt_stage_call_t *c, bool rebuilding,
              char *errbuf, size_t errlen)
{
  struct bt__train *t = st->t;
  struct bt__resmlp *m = model_of(st);
  const struct bt__kern *K = t->K;
  void *ctx = c->device_ctx;
  size_t R = t->R, L = m->cfg.L;
  int32_t k = c->microbatch;
  /* Replica r's microbatch k is the batch's microbatch r m + k. */
  size_t mb = (size_t)st->r * (size_t)t->m + (size_t)k;
  const float *cur;
  bt_status rc;

  cur = st->first == 0 ? t->x + mb * R * m->cfg.D : (const float *)c->input;
  for (size_t l = st->first; l <= st->last; l++) {
    void *scr = scratch_of(st, k, l);
    if (l == L + 1) {
      const float *zin = cur;
      if (m->cfg.long_skip) {
        const float *h0 =
            st->inner_h0 ? st->h0 : (const float *)c->skip_in[0].data;
        rc = bt__resmlp_long_skip_fwd_on(K, ctx, m, st->z, cur, h0, R);
        if (rc != BT_OK)
          return bt__stages_layer_error(errbuf, errlen, "resmlp", "long skip",
                                        l, rc);
        zin = st->z;
      }
      /* The share goes to the pipeline's output; a rebuild's (bitwise the
       * same) into dz, which only the backward after it writes. */
      rc = bt__resmlp_head_fwd_on(K, ctx, m, zin, t->y + mb * R, t->N, scr, R,
                                  rebuilding ? st->dz : (float *)c->output);
      if (rc != BT_OK)
        return bt__stages_layer_error(errbuf, errlen, "resmlp", "forward", l,
                                      rc);
    } else {
      float *out;
      if (l == 0 && st->inner_h0)
        out = st->h0; /* kept for the head, on this stage */
      else if (l == st->last && !rebuilding)
        out = c->output;
      else
        out = other_tmp(st, cur, st->h0);
      rc = bt__resmlp_layer_fwd_on(K, ctx, m, l, cur, out, scr, R);
      if (rc != BT_OK)
        return bt__stages_layer_error(errbuf, errlen, "resmlp", "forward", l,
                                      rc);
      if (l == 0 && st->stash_h0 && !rebuilding &&
          (rc = K->copy(ctx, c->skip_out[0].data, out,
                        R * m->cfg.H * sizeof(float))) != BT_OK)
        return bt__stages_layer_error(errbuf, errlen, "resmlp", "stash", l, rc);
      cur = out;
    }
  }
  return 0;
}

static int
cb_forward(const bt_stage_call_t *c, char *errbuf, size_t errlen)
{
  struct train_stage *st = stage_of(c);
  int32_t k = c->microbatch;
  int rc;

  maybe_perturb(st->t, c);
  rc = bt__slots_claim(&st->pool, k, st->s, errbuf, errlen);
  if (rc == 0)
    rc = stage_forward(st, c, false, errbuf, errlen);
  if (rc == 0 && checkpointed(st->t, k)) {
    /* Dropped: the recompute before the backward rebuilds it, in a slot
     * taken then.  Poisoned with NaNs first, so that a missed recompute
     * shows in every gradient. */
    for (size_t l = st->first; rc == 0 && l <= st->last; l++)
      rc = st->t->K->fill(
          c->device_ctx, scratch_of(st, k, l), 0xff,
          bt__resmlp_layer_scratch_bytes(st->t->model, l, st->t->R));
    if (rc != 0)
      return bt__stages_layer_error(errbuf, errlen, "resmlp", "poison",
                                    st->first, rc);
    bt__slots_give(&st->pool, k);
    st->dropped[k] = true;
  } else if (rc == 0) {
    bt__held_add(&st->t->held, c->device, st->mb_bytes);
  }
  return rc;
}

static int
cb_recompute(const bt_stage_call_t *c, char *errbuf, size_t errlen)
{
  struct train_stage *st = stage_of(c);
  int rc;

  if (!st->dropped[c->microbatch])
    return 0;
  maybe_perturb(st->t, c);
  rc = bt__slots_claim(&st->pool, c->microbatch, st->s, errbuf, errlen);
  if (rc == 0)
    rc = stage_forward(st, c, true, errbuf, errlen);
  if (rc == 0) {
    st->dropped[c->microbatch] = false;
    bt__held_add(&st->t->held, c->device, st->mb_bytes);
  }
  return rc;
}

static int
stage_input_grad(struct train_stage *st, const bt_stage_call_t *c, char *errbuf,
                 size_t errlen)
{
  struct bt__train *t = st->t;
  struct bt__resmlp *m = model_of(st);
  const struct bt__kern *K = t->K;
  void *ctx = c->device_ctx;
  size_t R = t->R, L = m->cfg.L, RH = t->R * m->cfg.H;
  int32_t k = c->microbatch;
  const float *dcur = c->grad_output, *dz = NULL;
  bt_status rc;

  if (st->dropped[k]) {
    snprintf(errbuf, errlen,
             "microbatch %d's activations were dropped and "
             "not recomputed",
             (int)k);
    return BT_EINVAL;
  }
  for (size_t l = st->last + 1; l-- > st->first;) {
    void *scr = scratch_of(st, k, l);
    if (l == L + 1) {
      float *din = l == st->first ? c->grad_input : st->dz;
      rc = bt__resmlp_layer_bwd_input_on(K, ctx, m, l, NULL, din, scr, R, t->N);
      if (rc == BT_OK && st->pop_h0)
        rc = K->copy(ctx, c->skip_grad_out[0].data, din, RH * sizeof(float));
      if (rc != BT_OK)
        return bt__stages_layer_error(errbuf, errlen, "resmlp", "input grad", l,
                                      rc);
      dz = din;
      dcur = din;
    } else if (l > 0) {
      float *din = l == st->first ? c->grad_input : other_tmp(st, dcur, st->dz);
      rc = bt__resmlp_layer_bwd_input_on(K, ctx, m, l, dcur, din, scr, R, t->N);
      if (rc != BT_OK)
        return bt__stages_layer_error(errbuf, errlen, "resmlp", "input grad", l,
                                      rc);
      dcur = din;
    } else {
      if (m->cfg.long_skip) {
        /* dh0 = dL/dh0 through the blocks (or, with L = 0, dz itself)
         * plus dz through the skip, in a buffer of ours: dcur may be the
         * pipeline's (const) gradient or dz. */
        const float *dskip =
            st->inner_h0 ? dz : (const float *)c->skip_grad_in[0].data;
        float *dh0 = other_tmp(st, dcur, st->dz);
        rc = K->copy(ctx, dh0, dcur, RH * sizeof(float));
        if (rc == BT_OK)
          rc = bt__resmlp_long_skip_bwd_on(K, ctx, m, dh0, dskip, R);
        if (rc != BT_OK)
          return bt__stages_layer_error(errbuf, errlen, "resmlp", "long skip",
                                        l, rc);
        dcur = dh0;
      }
      rc =
          bt__resmlp_layer_bwd_input_on(K, ctx, m, 0, dcur, NULL, scr, R, t->N);
      if (rc != BT_OK)
        return bt__stages_layer_error(errbuf, errlen, "resmlp", "input grad", l,
                                      rc);
    }
  }
  return 0;
}

static int
stage_weight_grad(struct train_stage *st, const bt_stage_call_t *c,
                  char *errbuf, size_t errlen)
{
  struct bt__train *t = st->t;
  bt_status rc;

  for (size_t l = st->last + 1; l-- > st->first;) {
    rc = bt__resmlp_layer_bwd_weight_on(t->K, c->device_ctx, model_of(st), l,
                                        scratch_of(st, c->microbatch, l), t->R);
    if (rc != BT_OK)
      return bt__stages_layer_error(errbuf, errlen, "resmlp", "weight grad", l,
                                    rc);
  }
  return 0;
}

static int
cb_input_grad(const bt_stage_call_t *c, char *errbuf, size_t errlen)
{
  struct train_stage *st = stage_of(c);

  maybe_perturb(st->t, c);
  return stage_input_grad(st, c, errbuf, errlen);
}

static int
cb_weight_grad(const bt_stage_call_t *c, char *errbuf, size_t errlen)
{
  struct train_stage *st = stage_of(c);

  int rc;

  maybe_perturb(st->t, c);
  rc = stage_weight_grad(st, c, errbuf, errlen);
  if (rc == 0) {
    bt__held_sub(&st->t->held, c->device, st->mb_bytes);
    bt__slots_give(&st->pool, c->microbatch);
  }
  return rc;
}

/* A full backward: bt__resmlp_layer_bwd is bwd_input then bwd_weight per
 * layer, and the layers' gradients are disjoint, so all input halves then
 * all weight halves give bitwise the same result. */
static int
cb_backward(const bt_stage_call_t *c, char *errbuf, size_t errlen)
{
  struct train_stage *st = stage_of(c);
  int rc;

  maybe_perturb(st->t, c);
  rc = stage_input_grad(st, c, errbuf, errlen);
  if (rc == 0)
    rc = stage_weight_grad(st, c, errbuf, errlen);
  if (rc == 0) {
    bt__held_sub(&st->t->held, c->device, st->mb_bytes);
    bt__slots_give(&st->pool, c->microbatch);
  }
  return rc;
}

/* Layers per stage into t->st[s].first/last; checks the balance. */
static bt_status
partition(struct bt__train *t, const int32_t *balance, int32_t nbalance,
          int32_t devices, int32_t v, bt_error_t *err)
{
  size_t *first = malloc(((size_t)t->S + 1) * sizeof *first);
  bt_status rc;

  if (first == NULL)
    return bt__errorf(err, BT_ENOMEM, "out of memory creating the trainer");
  rc = bt__stages_partition(t->model->nlayers, t->S, devices, v, balance,
                            nbalance, "in", first, err);
  for (int32_t s = 0; rc == BT_OK && s < t->S; s++) {
    t->st[s].first = first[s];
    t->st[s].last = first[s + 1] - 1;
    for (size_t l = first[s]; l < first[s + 1]; l++)
      t->layer_stage[l] = s;
  }
  free(first);
  return rc;
}

/* One block per stage, on its device: `slots` scratch regions
 * (bt__stages_slots) and five [R,H] buffers; the dropped flags apart, on
 * the host. */
static bt_status
alloc_stage(struct bt__train *t, struct train_stage *st, int32_t slots,
            bt_error_t *err)
{
  struct bt__resmlp *m = t->model;
  size_t nl = st->last - st->first + 1, per_mb = 0, total, rh, off = 0;

  for (size_t l = st->first; l <= st->last; l++) {
    size_t b = bt__resmlp_layer_scratch_bytes(m, l, t->R);
    if (b == 0 || __builtin_add_overflow(per_mb, round_up(b), &per_mb))
      goto range;
  }
  if (!bt__mul_fits(t->R, m->cfg.H, &rh) ||
      !bt__mul_fits(rh, sizeof(float), &rh) || rh > SIZE_MAX / 8 ||
      !bt__mul_fits(per_mb, (size_t)slots, &total) ||
      __builtin_add_overflow(total, 5 * round_up(rh), &total))
    goto range;
  st->mb_bytes = per_mb;
  if (!here(t, st))
    return BT_OK; /* another rank's: its callbacks never run here */
  st->scratch = calloc((size_t)slots * nl, sizeof *st->scratch);
  st->dropped = calloc((size_t)t->m, sizeof *st->dropped);
  if (t->be != NULL)
    st->block = t->be->alloc(t->be, bdev(t, st->device), total, err);
  else if ((st->block = aligned_alloc(ALIGN, total)) != NULL)
    memset(st->block, 0, total);
  if (st->scratch == NULL || st->dropped == NULL || st->block == NULL ||
      bt__slots_init(&st->pool, slots, t->m) != BT_OK)
    return bt__errorf(err, BT_ENOMEM,
                      "out of memory for stage %d's %zu bytes of "
                      "activations on %s (use more microbatches or "
                      "devices)",
                      (int)st->s, total,
                      t->be != NULL ? t->be->name : "the host");
  for (int32_t k = 0; k < slots; k++)
    for (size_t l = st->first; l <= st->last; l++) {
      st->scratch[(size_t)k * nl + (l - st->first)] = st->block + off;
      off += round_up(bt__resmlp_layer_scratch_bytes(m, l, t->R));
    }
  st->tmp[0] = (float *)(void *)(st->block + off);
  st->tmp[1] = (float *)(void *)(st->block + off + round_up(rh));
  st->h0 = (float *)(void *)(st->block + off + 2 * round_up(rh));
  st->z = (float *)(void *)(st->block + off + 3 * round_up(rh));
  st->dz = (float *)(void *)(st->block + off + 4 * round_up(rh));
  return BT_OK;
range:
  return bt__errorf(err, BT_ERANGE,
                    "stage %d's activations for %zu rows overflow size_t "
                    "(use more microbatches)",
                    (int)st->s, t->R);
}

static void *
buffers_alloc(size_t bytes, void *user)
{
  struct bt_backend *be = user;

  return be->alloc_shared(be, bytes, NULL);
}

static void
buffers_free(void *block, void *user)
{
  struct bt_backend *be = user;

  be->free(be, -1, block);
}

/* The elements [off, off + n) of the flat blocks that the stage's layers
 * own (resmlp.h: a range of layers owns one contiguous slice). */
static void
stage_slice(const struct bt__resmlp *m, const struct train_stage *st,
            size_t *off, size_t *n)
{
  size_t end = st->last + 1 < m->nlayers
                   ? m->tensors[m->layer_tensor[st->last + 1]].offset
                   : m->nparams;

  *off = m->tensors[m->layer_tensor[st->first]].offset;
  *n = end - *off;
}

/* On a backend: the trainer's runtime on the backend's devices, each
 * stage's parameters and gradients on its device (the parameters
 * uploaded), and the step's x and y buffers. */
static bt_status
backend_setup(struct bt__train *t, bt_error_t *err)
{
  struct bt_backend *be = t->be;
  struct bt__resmlp *m = t->model;
  bt_runtime_config_t rc = BT_RUNTIME_CONFIG_INIT;
  size_t bytes;
  bt_status st_rc;

  /* The job's devices: this rank's are the backend's, the others idle
   * here (their tasks run on their ranks). */
  t->rt_desc = calloc((size_t)(t->p * t->nrep), sizeof *t->rt_desc);
  if (t->rt_desc == NULL)
    return bt__errorf(err, BT_ENOMEM, "out of memory");
  for (int32_t d = 0; d < t->p * t->nrep; d++) {
    if (d >= t->dev0 && d < t->dev0 + be->devices)
      t->rt_desc[d] = be->desc[bdev(t, d)];
    else
      t->rt_desc[d].name = "elsewhere";
  }
  rc.devices = t->p * t->nrep;
  rc.device = t->rt_desc;
  rc.mode = BT_RUNTIME_DEDICATED;
  st_rc = bt_runtime_create(&rc, &t->rt, err);
  if (st_rc != BT_OK)
    return st_rc;
  for (int32_t i = 0; i < t->nrep * t->S; i++) {
    struct train_stage *st = &t->st[i];
    if (!here(t, st))
      continue;
    bytes = st->n * sizeof(float);
    st->dparams = be->alloc(be, bdev(t, st->device), bytes, err);
    if (st->dparams == NULL)
      return BT_ENOMEM;
    st->dgrads = be->alloc(be, bdev(t, st->device), bytes, err);
    if (st->dgrads == NULL)
      return BT_ENOMEM;
    /* The view's blocks are based so that element off lands at the
     * slice's start; only the stage's own tensors are ever addressed. */
    st->view = *m;
    st->view.params =
        (float *)(uintptr_t)((uintptr_t)st->dparams - st->off * sizeof(float));
    st->view.grads =
        (float *)(uintptr_t)((uintptr_t)st->dgrads - st->off * sizeof(float));
  }
  /* Each replica's first and last stage read their rows of x and y: in
   * memory every device reaches. */
  if (!bt__mul_fits(t->N, m->cfg.D * sizeof(float), &bytes))
    return bt__errorf(err, BT_ERANGE, "the batch's inputs overflow size_t");
  t->dx = be->alloc_shared(be, bytes, err);
  t->dy = be->alloc_shared(be, t->N * sizeof(int32_t), err);
  if (t->dx == NULL || t->dy == NULL)
    return BT_ENOMEM;
  for (int32_t s = 0; t->nrep > 1 && s < t->S; s++) {
    struct train_stage *st0 = &t->st[s];
    st0->peers = calloc((size_t)t->nrep, sizeof *st0->peers);
    if (st0->peers == NULL)
      return bt__errorf(err, BT_ENOMEM, "out of memory");
    for (int32_t r = 0; r < t->nrep; r++)
      st0->peers[r] = t->st[r * t->S + s].dgrads;
  }
  return bt__train_push(t, err);
}

bt_status
bt__train_push(struct bt__train *t, bt_error_t *err)
{
  bt_status rc = BT_OK;

  if (t == NULL || t->be == NULL)
    return BT_OK;
  for (int32_t i = 0; rc == BT_OK && i < t->nrep * t->S; i++) {
    struct train_stage *st = &t->st[i];
    if (here(t, st))
      rc =
          t->be->upload(t->be, bdev(t, st->device), st->dparams,
                        t->model->params + st->off, st->n * sizeof(float), err);
  }
  return rc;
}

bt_status
bt__train_pull(struct bt__train *t, bt_error_t *err)
{
  bt_status rc = BT_OK;

  if (t == NULL || t->be == NULL)
    return BT_OK;
  for (int32_t s = 0; rc == BT_OK && s < t->S; s++) {
    struct train_stage *st = &t->st[s];
    size_t bytes = st->n * sizeof(float);
    if (!here(t, st))
      continue;
    rc = t->be->download(t->be, bdev(t, st->device), t->model->params + st->off,
                         st->dparams, bytes, err);
    if (rc == BT_OK)
      rc = t->be->download(t->be, bdev(t, st->device),
                           t->model->grads + st->off, st->dgrads, bytes, err);
  }
  return rc;
}

bt_status
bt__train_update(struct bt__train *t, const struct bt__train_optim *o,
                 bt_error_t *err)
{
  bt_status rc = BT_OK;

  if (t == NULL || o == NULL || t->be == NULL)
    return bt__errorf(err, BT_EINVAL,
                      "bt__train_update: the trainer has no backend: run "
                      "the optimizer on the model");
  for (int32_t i = 0; rc == BT_OK && i < t->nrep * t->S; i++) {
    struct train_stage *st = &t->st[i];
    void *ctx;
    size_t bytes = st->n * sizeof(float);
    if (!here(t, st))
      continue;
    ctx = t->be->host_ctx(t->be, bdev(t, st->device));
    if (!o->adamw) {
      rc = t->K->sgd(ctx, st->dparams, st->dgrads, st->n, o->lr, o->wd);
      continue;
    }
    if (st->dadam_m == NULL) {
      st->dadam_m = t->be->alloc(t->be, bdev(t, st->device), bytes, err);
      st->dadam_v = t->be->alloc(t->be, bdev(t, st->device), bytes, err);
      if (st->dadam_m == NULL || st->dadam_v == NULL)
        return bt__errorf(err, BT_ENOMEM,
                          "out of memory for AdamW's moments of stage %d "
                          "(%zu parameters) on %s",
                          (int)st->s, st->n, t->be->name);
    }
    rc = t->K->adamw(ctx, st->dparams, st->dadam_m, st->dadam_v, st->dgrads,
                     st->n, o->lr, o->b1, o->b2, o->eps, o->wd, o->t);
  }
  if (rc != BT_OK)
    return bt__errorf(err, rc, "the optimizer step failed on %s: %s",
                      t->be->name, bt_strerror(rc));
  return t->be->sync(t->be, err);
}

/* Data parallelism: how many replicas run.  On a backend that cannot run
 * them (NCCL refuses two ranks on one GPU) one replica runs, and the
 * trainer says so in its note. */
static bt_status
choose_replicas(struct bt__train *t, const int32_t *stage_device,
                bt_error_t *err)
{
  int32_t asked = t->nrep;
  bt_error_t why;
  bt_status rc;
  int32_t W = bt_comm_size(t->comm);

  if (t->be != NULL && t->be->devices * W != t->p * asked)
    return bt__errorf(err, BT_EINVAL,
                      "the %s backend has %d devices but the trainer asks "
                      "for %d (%d replicas x %d%s); give as many devices as "
                      "the backend has",
                      t->be->name, (int)t->be->devices, (int)(t->p * asked / W),
                      (int)asked, (int)t->p,
                      W > 1 ? ", over the job's ranks" : "");
  if (t->be != NULL)
    t->dev0 = bt_comm_rank(t->comm) * t->be->devices;
  if (asked > 1 && W > 1 && t->be != NULL && t->be->send == NULL)
    return bt__errorf(err, BT_EUNSUPPORTED,
                      "the %s backend's replicas run in one process here: "
                      "across processes it needs a transport",
                      t->be->name);
  if (asked == 1 || t->be == NULL)
    return BT_OK;
  if (t->be->reduce == NULL)
    return bt__errorf(err, BT_EUNSUPPORTED,
                      "the %s backend cannot reduce gradients between "
                      "replicas; use one replica",
                      t->be->name);
  memset(&why, 0, sizeof why);
  rc = BT_OK;
  if (t->be->reduce_init != NULL) {
    /* One reduction per stage, among the replicas' devices of the stage. */
    int32_t *dev = malloc((size_t)t->S * sizeof *dev);
    if (dev == NULL)
      return bt__errorf(err, BT_ENOMEM, "out of memory");
    for (int32_t s = 0; s < t->S; s++)
      dev[s] = stage_device != NULL ? stage_device[s] : s % t->p;
    rc = t->be->reduce_init(t->be, t->comm, t->dev0, asked, t->S, dev, &why);
    free(dev);
  }
  if (rc == BT_EUNSUPPORTED && W > 1)
    /* Across processes every rank would have to agree to fall back. */
    return bt__errorf(err, rc, "%s", why.message);
  if (rc == BT_EUNSUPPORTED) {
    t->nrep = 1;
    snprintf(t->note, sizeof t->note,
             "data parallel: %.200s; running 1 replica instead of %d, on the "
             "first %d devices",
             why.message, (int)asked, (int)t->p);
    return BT_OK;
  }
  if (rc != BT_OK)
    return bt__errorf(err, rc, "%s", why.message);
  if (t->graph && !t->be->reduce_in_graph)
    return bt__errorf(err, BT_EUNSUPPORTED,
                      "the %s backend does not capture its all-reduce in a "
                      "graph yet: use graphs with one replica, or replicas "
                      "without graphs",
                      t->be->name);
  return BT_OK;
}

/* The replicas' models: on the CPU, copies of the model for replicas > 0
 * (their parameters are refreshed from it at every step); on a backend
 * every replica's parameters live on its devices (the model's view). */
static bt_status
make_replicas(struct bt__train *t, bt_error_t *err)
{
  t->rep = calloc((size_t)t->nrep, sizeof *t->rep);
  if (t->rep == NULL)
    return bt__errorf(err, BT_ENOMEM, "out of memory creating the trainer");
  t->rep[0] = t->model;
  for (int32_t r = 1; r < t->nrep && t->be == NULL; r++) {
    bt_status rc = bt__resmlp_create(&t->model->cfg, 0, &t->rep[r], err);
    if (rc != BT_OK)
      return rc;
  }
  return BT_OK;
}

/* Replica r's stage s gradients, one part: baton all-reduces them. */
static float *
grad_tensor(int32_t replica, int32_t stage, int32_t part, size_t *count,
            void *user)
{
  struct bt__train *t = user;
  struct train_stage *st = &t->st[replica * t->S + stage];

  if (part > 0)
    return NULL;
  *count = st->n;
  return st->model->grads + st->off;
}

/* A backend call's status as a callback returns it: the message into
 * errbuf. */
static int
said(bt_status rc, const bt_error_t *e, char *errbuf, size_t errlen)
{
  if (rc != BT_OK)
    snprintf(errbuf, errlen, "%s", e->message);
  return rc;
}

/* On a backend: the (replica, stage) share of the stage's all-reduce. */
static int
reduce_grads(const bt_stage_call_t *c, char *errbuf, size_t errlen)
{
  struct bt__train *t = c->user;
  struct train_stage *st0 = &t->st[c->stage];
  bt_error_t e = {0};

  return said(t->be->reduce(t->be, c->device_ctx, c->stage, c->replica, t->nrep,
                            st0->peers, st0->n, &e),
              &e, errbuf, errlen);
}

const char *
bt__train_note(const struct bt__train *t)
{
  return t != NULL && t->note[0] != '\0' ? t->note : NULL;
}

/* The pipeline's transport, over the backend's (across processes). */
static int
tr_connect(const int32_t *pairs, size_t n, int32_t ntags, void *user,
           char *errbuf, size_t errlen)
{
  struct bt__train *t = user;
  bt_error_t e = {0};

  return said(t->be->connect(t->be, t->comm, t->dev0, pairs, n, ntags, &e), &e,
              errbuf, errlen);
}

static int
tr_send(void *ctx, const void *buf, size_t bytes, int32_t from, int32_t to,
        int32_t peer, int32_t tag, void *user, char *errbuf, size_t errlen)
{
  struct bt__train *t = user;
  bt_error_t e = {0};

  return said(t->be->send(t->be, ctx, buf, bytes, from, to, peer, tag, &e), &e,
              errbuf, errlen);
}

static int
tr_recv(void *ctx, void *buf, size_t bytes, int32_t from, int32_t to,
        int32_t peer, int32_t tag, void *user, char *errbuf, size_t errlen)
{
  struct bt__train *t = user;
  bt_error_t e = {0};

  return said(t->be->recv(t->be, ctx, buf, bytes, from, to, peer, tag, &e), &e,
              errbuf, errlen);
}

static int
tr_wait(void *ctx, int32_t tag, void *user, char *errbuf, size_t errlen)
{
  struct bt__train *t = user;
  bt_error_t e = {0};

  return said(t->be->wait(t->be, ctx, tag, &e), &e, errbuf, errlen);
}

static int
tr_finish(int failed, void *user, char *errbuf, size_t errlen)
{
  struct bt__train *t = user;
  bt_error_t e = {0};

  return said(t->be->finish(t->be, failed, &e), &e, errbuf, errlen);
}

static bt_status
check_config(const struct bt__train_config *cfg, bt_error_t *err)
{
  if (cfg == NULL || cfg->size < sizeof *cfg || cfg->model == NULL ||
      cfg->schedule == NULL)
    return bt__errorf(err, BT_EINVAL,
                      "bt__train_create needs a config started from "
                      "BT__TRAIN_CONFIG_INIT with a model and a schedule");
  if (cfg->microbatches < 1 || cfg->devices < 1 || cfg->virtual_stages < 0)
    return bt__errorf(err, BT_EINVAL,
                      "training needs microbatches >= 1, devices >= 1 and "
                      "virtual_stages >= 0 (got m=%d, p=%d, v=%d)",
                      (int)cfg->microbatches, (int)cfg->devices,
                      (int)cfg->virtual_stages);
  if (cfg->replicas < 0 || cfg->replicas > 4096)
    return bt__errorf(err, BT_EINVAL,
                      "replicas must be 0 (one) .. 4096 (got %d)",
                      (int)cfg->replicas);
  if (cfg->batch == 0 ||
      cfg->batch % ((size_t)cfg->microbatches *
                    (size_t)(cfg->replicas > 1 ? cfg->replicas : 1)) !=
          0)
    return bt__errorf(err, BT_EINVAL,
                      "the batch's %zu rows do not split evenly into %d "
                      "microbatches of %d replicas; choose counts whose "
                      "product divides N",
                      cfg->batch, (int)cfg->microbatches,
                      (int)(cfg->replicas > 1 ? cfg->replicas : 1));
  return bt__stages_check_mode(cfg->checkpoint, err);
}

bt_status
bt__train_create(const struct bt__train_config *cfg, struct bt__train **out,
                 bt_error_t *err)
{
  bt_pipeline_config_t pc = BT_PIPELINE_CONFIG_INIT;
  bt_stage_desc_t *desc = NULL;
  bt_pipeline_skip_t skip;
  struct bt__train *t;
  int32_t v;
  size_t rh_bytes;
  bt_status rc;

  if (out == NULL)
    return bt__errorf(err, BT_EINVAL, "bt__train_create: NULL out");
  *out = NULL;
  rc = check_config(cfg, err);
  if (rc != BT_OK)
    return rc;
  v = cfg->virtual_stages ? cfg->virtual_stages
                          : bt_schedule_default_virtual(cfg->schedule);
  if (cfg->devices > INT32_MAX / v)
    return bt__errorf(err, BT_EINVAL,
                      "%d devices x %d virtual stages is "
                      "too many stages",
                      (int)cfg->devices, (int)v);
  t = calloc(1, sizeof *t);
  if (t == NULL)
    return bt__errorf(err, BT_ENOMEM, "out of memory creating the trainer");
  t->model = cfg->model;
  t->N = cfg->batch;
  t->m = cfg->microbatches;
  t->nrep = cfg->replicas > 1 ? cfg->replicas : 1;
  t->S = cfg->devices * v;
  t->p = cfg->devices;
  t->checkpoint = cfg->checkpoint;
  t->perturb = cfg->perturb;
  t->comm = cfg->comm;
  t->be = cfg->backend;
  t->K = t->be != NULL ? t->be->kern : &bt__cpu_kern;
  if (cfg->graph && (t->be == NULL || t->be->capture_begin == NULL)) {
    rc = bt__errorf(err, BT_EUNSUPPORTED,
                    "whole-step graphs need a backend that captures them "
                    "(cuda); turn them off");
    goto out_free;
  }
  t->graph = cfg->graph ? 1 : 0;
  if (t->be != NULL && (cfg->graph || cfg->replicas > 1)) {
    /* One captured graph and one set of communicators per backend. */
    if (t->be->claimed) {
      rc = bt__errorf(err, BT_EBUSY,
                      "another trainer uses this %s backend's CUDA graph or "
                      "NCCL communicators; give each trainer its own backend",
                      t->be->name);
      goto out_free;
    }
    t->be->claimed = 1;
    t->claims = 1;
  }
  rc = choose_replicas(t, cfg->stage_device, err);
  if (rc != BT_OK)
    goto out_free;
  /* What the backend says of itself reaches the user the same way. */
  if (t->be != NULL && t->be->note != NULL && t->note[0] == '\0')
    snprintf(t->note, sizeof t->note, "%s", t->be->note);
  t->R = t->N / ((size_t)t->m * (size_t)t->nrep);
  if (t->be != NULL && bt_comm_size(t->comm) > 1 &&
      (t->be->send == NULL || t->graph)) {
    rc = bt__errorf(err, BT_EUNSUPPORTED,
                    "the %s backend %s across processes; train on the CPU "
                    "devices there",
                    t->be->name,
                    t->be->send == NULL ? "has no transport"
                                        : "does not capture graphs");
    goto out_free;
  }
  if ((size_t)t->S > t->model->nlayers) {
    /* Checked before sizing arrays by S. */
    rc = bt__stages_partition(t->model->nlayers, t->S, cfg->devices, v, NULL, 0,
                              "in", NULL, err);
    goto out_free;
  }
  t->st = calloc((size_t)(t->nrep * t->S), sizeof *t->st);
  t->layer_stage = calloc(t->model->nlayers, sizeof *t->layer_stage);
  desc = calloc((size_t)t->S, sizeof *desc);
  if (t->st == NULL || t->layer_stage == NULL || desc == NULL ||
      bt__held_init(&t->held, t->p * t->nrep) != BT_OK) {
    rc = bt__errorf(err, BT_ENOMEM, "out of memory creating the trainer");
    goto out_free;
  }
  rc = partition(t, cfg->balance, cfg->nbalance, cfg->devices, v, err);
  if (rc == BT_OK)
    rc = make_replicas(t, err);
  if (rc != BT_OK)
    goto out_free;
  if (!bt__mul_fits(t->R, t->model->cfg.H, &rh_bytes) ||
      !bt__mul_fits(rh_bytes, sizeof(float), &rh_bytes)) {
    rc = bt__errorf(err, BT_ERANGE, "%zu rows of width %zu overflow size_t",
                    t->R, t->model->cfg.H);
    goto out_free;
  }
  for (int32_t i = 0; i < t->nrep * t->S; i++) {
    struct train_stage *st = &t->st[i];
    int32_t s = i % t->S;
    bool ls = t->model->cfg.long_skip;
    st->t = t;
    st->s = s;
    st->r = i / t->S;
    st->model = t->rep[st->r];
    st->first = t->st[s].first;
    st->last = t->st[s].last;
    stage_slice(t->model, st, &st->off, &st->n);
    st->device =
        st->r * t->p +
        (cfg->stage_device != NULL ? cfg->stage_device[s] : s % cfg->devices);
    st->rank =
        bt__stages_rank(t->comm, cfg->stage_device, s, st->r, t->p, t->nrep);
    st->inner_h0 = ls && t->S == 1;
    st->stash_h0 = ls && t->S > 1 && s == 0;
    st->pop_h0 = ls && t->S > 1 && s == t->S - 1;
  }
  for (int32_t s = 0; s < t->S; s++) {
    struct train_stage *st = &t->st[s];
    desc[s] = (bt_stage_desc_t)BT_STAGE_DESC_INIT;
    desc[s].forward = cb_forward;
    desc[s].backward = cb_backward;
    desc[s].input_grad = cb_input_grad;
    desc[s].weight_grad = cb_weight_grad;
    desc[s].recompute = cb_recompute;
    desc[s].output_bytes = s == t->S - 1 ? sizeof(float) : rh_bytes;
    desc[s].grad_input_bytes = s == 0 ? 0 : rh_bytes;
    /* Relative costs for the cost-driven schedules: layers per stage. */
    desc[s].cost_f = desc[s].cost_b = desc[s].cost_w =
        (double)(st->last - st->first + 1);
    desc[s].user = st;
  }
  pc.stages = t->S;
  pc.stage = desc;
  pc.devices = cfg->devices;
  pc.virtual_stages = v;
  pc.microbatches = t->m;
  pc.schedule = cfg->schedule;
  pc.stage_device = cfg->stage_device;
  pc.comm = cfg->comm;
  pc.threads = cfg->threads;
  pc.trace = cfg->trace;
  pc.replicas = t->nrep;
  pc.user = t;
  if (t->nrep > 1 && t->be == NULL)
    pc.grad_tensor = grad_tensor;
  else if (t->nrep > 1)
    pc.reduce_grads = reduce_grads;
  if (t->be != NULL) {
    rc = backend_setup(t, err);
    if (rc != BT_OK)
      goto out_free;
    pc.runtime = t->rt;
    pc.buffers_alloc = buffers_alloc;
    pc.buffers_free = buffers_free;
    pc.buffers_user = t->be;
    if (bt_comm_size(t->comm) > 1) {
      t->transport.size = sizeof t->transport;
      t->transport.connect = tr_connect;
      t->transport.send = tr_send;
      t->transport.recv = tr_recv;
      t->transport.wait = t->be->wait != NULL ? tr_wait : NULL;
      t->transport.finish = t->be->finish != NULL ? tr_finish : NULL;
      t->transport.user = t;
      pc.transport = &t->transport;
    }
  }
  if (t->model->cfg.long_skip && t->S > 1) {
    skip.name = "h0";
    skip.stash_stage = 0;
    skip.pop_stage = t->S - 1;
    skip.bytes = rh_bytes;
    pc.skips = &skip;
    pc.nskips = 1;
  }
  rc = bt_pipeline_create(&pc, &t->pl, err);
  if (rc != BT_OK)
    goto out_free;
  /* Activation scratch: as many slots per stage as the plan ever holds. */
  {
    int32_t *slots = calloc((size_t)t->S, sizeof *slots);
    if (slots == NULL) {
      rc = bt__errorf(err, BT_ENOMEM, "out of memory creating the trainer");
      goto out_free;
    }
    bt__stages_slots(bt_pipeline_plan(t->pl), t->m, t->checkpoint, slots);
    for (int32_t i = 0; i < t->nrep * t->S && rc == BT_OK; i++)
      rc = alloc_stage(t, &t->st[i], slots[i % t->S], err);
    free(slots);
    if (rc != BT_OK)
      goto out_free;
  }
  t->shares = calloc((size_t)(t->nrep * t->m), sizeof *t->shares);
  if (t->shares == NULL) {
    rc = bt__errorf(err, BT_ENOMEM, "out of memory creating the trainer");
    goto out_free;
  }
  free(desc);
  *out = t;
  return BT_OK;

out_free:
  free(desc);
  bt__train_destroy(t);
  return rc;
}

void
bt__train_needs(const struct bt__train *t, int *x, int *y)
{
  int32_t me = bt_comm_rank(t->comm);

  /* Any replica's first and last stage. */
  *x = *y = 0;
  for (int32_t r = 0; r < t->nrep; r++) {
    *x |= t->st[r * t->S].rank == me;
    *y |= t->st[r * t->S + t->S - 1].rank == me;
  }
}

int32_t
bt__train_stage_rank(const struct bt__train *t, int32_t s)
{
  /* Replica 0's owns the parameters. */
  return t != NULL && s >= 0 && s < t->S ? t->st[s].rank : -1;
}

/* On a backend: x and y into the device buffers (the step reads those). */
static bt_status
upload_inputs(struct bt__train *t, const float *x, const int32_t *y,
              bt_error_t *err)
{
  struct bt_backend *be = t->be;
  bt_status rc;

  /* Given where some replica's first (last) stage runs here (the caller
   * passes them per bt__train_needs); the buffers are this rank's, shared
   * by its devices. */
  rc = BT_OK;
  if (x != NULL)
    rc = be->upload(be, 0, t->dx, x, t->N * t->model->cfg.D * sizeof(float),
                    err);
  if (rc == BT_OK && y != NULL)
    rc = be->upload(be, 0, t->dy, y, t->N * sizeof(int32_t), err);
  t->x = t->dx;
  t->y = t->dy;
  return rc;
}

/* On a backend: the gradients zeroed on every stage's device, the first
 * work of the step on each stream. */
static bt_status
zero_grads(struct bt__train *t, bt_error_t *err)
{
  struct bt_backend *be = t->be;
  bt_status rc = BT_OK;

  for (int32_t i = 0; rc == BT_OK && i < t->nrep * t->S; i++) {
    struct train_stage *st = &t->st[i];
    if (!here(t, st))
      continue;
    rc = t->K->fill(be->host_ctx(be, bdev(t, st->device)), st->dgrads, 0,
                    st->n * sizeof(float));
    if (rc != BT_OK)
      rc = bt__errorf(err, rc, "zeroing stage %d's gradients on %s failed",
                      (int)st->s, be->name);
  }
  return rc;
}

/* The device part of a step on a backend.  Eager, or (graphs) the first
 * step eager, the second captured and replayed, later ones replayed. */
static bt_status
device_step(struct bt__train *t, const float *x, const int32_t *y,
            bt_error_t *err)
{
  struct bt_backend *be = t->be;
  bt_status rc = upload_inputs(t, x, y, err), done;
  int capture = t->graph == 2;

  if (rc != BT_OK)
    return rc;
  if (t->graph > 2) {
    rc = be->replay(be, err);
  } else {
    if (capture)
      rc = be->capture_begin(be, err);
    if (rc == BT_OK)
      rc = zero_grads(t, err);
    if (rc == BT_OK)
      rc = bt_pipeline_step(t->pl, err);
    if (capture) {
      /* Ends the capture whatever happened inside it. */
      done = be->capture_end(be, rc == BT_OK ? err : NULL);
      if (rc == BT_OK)
        rc = done;
      if (rc == BT_OK)
        rc = be->replay(be, err);
      if (rc != BT_OK) {
        /* This step is lost; the next ones run eagerly. */
        t->graph = 0;
        snprintf(t->note, sizeof t->note,
                 "capturing the step as a graph failed, so steps run "
                 "without graphs from now on");
      }
    }
  }
  /* The step is enqueued; its asynchronous errors show here. */
  done = be->sync(be, rc == BT_OK ? err : NULL);
  if (rc == BT_OK)
    rc = done;
  if (rc == BT_OK && t->graph > 0)
    t->graph++;
  return rc;
}

/* On the CPU across processes, a stage whose replica 0 runs elsewhere: the
 * model takes the reduced gradients of a replica that runs here (every
 * replica's are the same sum), so the optimizer on the model steps this
 * rank's replicas right. */
static void
adopt_replica_grads(struct bt__train *t)
{
  int32_t me = bt_comm_rank(t->comm);

  for (int32_t s = 0; s < t->S; s++) {
    if (t->st[s].rank == me)
      continue;
    for (int32_t r = 1; r < t->nrep; r++) {
      struct train_stage *st = &t->st[r * t->S + s];
      if (st->rank != me)
        continue;
      memcpy(t->model->grads + st->off, st->model->grads + st->off,
             st->n * sizeof(float));
      break;
    }
  }
}

/* Replica r's microbatch k's loss share, from its last stage's output. */
static bt_status
read_share(struct bt__train *t, int32_t r, int32_t k, bt_error_t *err)
{
  const float *out = bt_pipeline_replica_output(t->pl, r, t->S - 1, k, NULL);
  size_t at = (size_t)r * (size_t)t->m + (size_t)k;
  float share;
  bt_status rc;

  if (t->be == NULL) {
    t->shares[at] = *out;
    return BT_OK;
  }
  rc = t->be->download(t->be, bdev(t, t->st[r * t->S + t->S - 1].device),
                       &share, out, sizeof share, err);
  t->shares[at] = share;
  return rc;
}

bt_status
bt__train_step(struct bt__train *t, const float *x, const int32_t *y,
               float *loss, bt_error_t *err)
{
  int need_x, need_y;
  bt_status rc;

  if (t == NULL || loss == NULL)
    return bt__errorf(err, BT_EINVAL,
                      "bt__train_step: trainer and loss must not be NULL");
  bt__train_needs(t, &need_x, &need_y);
  if ((need_x && x == NULL) || (need_y && y == NULL))
    return bt__errorf(err, BT_EINVAL,
                      "bt__train_step: this rank runs the %s stage and needs "
                      "%s",
                      need_x && x == NULL ? "first" : "last",
                      need_x && x == NULL ? "x" : "y");
  for (size_t r = 0; need_y && r < t->N; r++)
    if (y[r] < 0 || (size_t)y[r] >= t->model->cfg.C)
      return bt__errorf(err, BT_EINVAL,
                        "label y[%zu] = %" PRId32 " is outside [0, C=%zu)", r,
                        y[r], t->model->cfg.C);
  memset(t->shares, 0, (size_t)(t->nrep * t->m) * sizeof *t->shares);
  if (t->be == NULL) {
    t->x = x;
    t->y = y;
    /* Every replica starts from the model's parameters (the optimizer
     * steps the model only). */
    for (int32_t r = 0; r < t->nrep; r++) {
      if (r > 0)
        memcpy(t->rep[r]->params, t->model->params,
               t->model->nparams * sizeof(float));
      bt__resmlp_zero_grad(t->rep[r]);
    }
  }
  /* A replayed step runs no callbacks: the counts stay the captured
   * step's. */
  if (t->graph <= 2) {
    bt__held_reset(&t->held);
    for (int32_t i = 0; i < t->nrep * t->S; i++) {
      bt__slots_reset(&t->st[i].pool);
      if (t->st[i].dropped != NULL)
        memset(t->st[i].dropped, 0, (size_t)t->m * sizeof *t->st[i].dropped);
    }
  }
  rc = t->be != NULL ? device_step(t, x, y, err) : bt_pipeline_step(t->pl, err);
  t->x = NULL;
  t->y = NULL;
  if (rc == BT_OK) {
    /* The shares of this rank's replicas; the others' add up to the
     * job's loss across ranks. */
    for (int32_t i = 0; need_y && i < t->nrep * t->m && rc == BT_OK; i++)
      if (t->st[(i / t->m) * t->S + t->S - 1].rank == bt_comm_rank(t->comm))
        rc = read_share(t, i / t->m, i % t->m, err);
  }
  if (rc == BT_OK && t->be == NULL && t->nrep > 1)
    adopt_replica_grads(t);
  if (rc == BT_OK) {
    /* In microbatch order, in float, as the reference adds them. */
    rc = bt__stages_loss(t->comm, t->shares, (size_t)(t->nrep * t->m), loss,
                         err);
  }
  return rc;
}

int32_t
bt__train_stage_of_layer(const struct bt__train *t, size_t layer)
{
  if (t == NULL || layer >= t->model->nlayers)
    return -1;
  return t->layer_stage[layer];
}

size_t
bt__train_held_bytes(const struct bt__train *t, int32_t device)
{
  if (t == NULL || device < 0 || device >= t->p * t->nrep)
    return 0;
  return t->held.now[device];
}

size_t
bt__train_peak_held_bytes(const struct bt__train *t, int32_t device)
{
  if (t == NULL || device < 0 || device >= t->p * t->nrep)
    return 0;
  return t->held.peak[device];
}

int32_t
bt__train_stages(const struct bt__train *t)
{
  return t != NULL ? t->S : 0;
}

size_t
bt__train_stage_bytes(const struct bt__train *t, int32_t s)
{
  if (t == NULL || s < 0 || s >= t->S)
    return 0;
  return t->st[s].mb_bytes;
}

int32_t
bt__train_stage_slots(const struct bt__train *t, int32_t s)
{
  if (t == NULL || s < 0 || s >= t->S)
    return 0;
  return t->st[s].pool.n;
}

const bt_plan_t *
bt__train_plan(const struct bt__train *t)
{
  return t != NULL ? bt_pipeline_plan(t->pl) : NULL;
}

bt_status
bt__train_slices(const struct bt__train *t, bt_slice_t *slices, size_t *count)
{
  if (t == NULL)
    return BT_EINVAL;
  return bt_pipeline_slices(t->pl, slices, count);
}

void
bt__train_destroy(struct bt__train *t)
{
  if (t == NULL)
    return;
  bt_pipeline_destroy(t->pl);
  bt_runtime_destroy(t->rt);
  free(t->rt_desc);
  if (t->claims)
    t->be->claimed = 0;
  for (int32_t r = 1; t->rep != NULL && r < t->nrep; r++)
    bt__resmlp_destroy(t->rep[r]);
  free(t->rep);
  if (t->st != NULL)
    for (int32_t i = 0; i < t->nrep * t->S; i++) {
      struct train_stage *st = &t->st[i];
      free(st->peers);
      free(st->scratch);
      free(st->dropped);
      bt__slots_free(&st->pool);
      if (t->be == NULL) {
        free(st->block);
        continue;
      }
      if (!here(t, st))
        continue;
      t->be->free(t->be, bdev(t, st->device), st->block);
      t->be->free(t->be, bdev(t, st->device), st->dparams);
      t->be->free(t->be, bdev(t, st->device), st->dgrads);
      t->be->free(t->be, bdev(t, st->device), st->dadam_m);
      t->be->free(t->be, bdev(t, st->device), st->dadam_v);
    }
  if (t->be != NULL) {
    t->be->free(t->be, -1, t->dx);
    t->be->free(t->be, -1, t->dy);
  }
  free(t->st);
  free(t->layer_stage);
  free(t->shares);
  bt__held_free(&t->held);
  free(t);
}
