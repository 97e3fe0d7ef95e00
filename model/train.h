/* baton: pipelined training of the resmlp model through the embedding API
 * (internal).
 *
 * The model's L + 2 layers (0 = in, 1 + i = blk{i}, L + 1 = head; see
 * resmlp.h) are cut into S = devices * virtual_stages stages, each a
 * contiguous range of layers, and driven by bt_pipeline (<baton/pipeline.h>)
 * with one forward, backward, input_grad, weight_grad and recompute
 * callback per stage, so every schedule (full or split backwards) runs it.
 * One step computes the same loss and gradients as
 * bt__resmlp_reference_step with the same microbatch count: the loss
 * bitwise (the shares are summed in microbatch order, as the reference
 * does), the gradients up to the order in which a stage accumulates its
 * microbatches (the plan's order).
 *
 * Data flow, per microbatch k of R = N / microbatches rows:
 *   stage output  the activation after the stage's last layer [R,H] floats;
 *                 the last stage's output is its loss share (1 float).
 *   grad_input    dL/d(stage input) [R,H] floats (none on stage 0).
 *   stage 0       reads rows [kR, (k+1)R) of the step's x itself.
 *   last stage    computes the head with the labels of its rows.
 *   long skip     (model->cfg.long_skip) h0, layer 0's output: kept inside
 *                 the stage when layer 0 and the head share one (only with
 *                 S = 1), else a pipeline skip "h0" from stage 0 to stage
 *                 S - 1: stage 0 stashes h0, the last stage adds it before
 *                 the head and sends dz back, which stage 0 adds to the
 *                 gradient entering layer 0.
 *
 * State: each (stage, microbatch) has its layers' scratch
 * (bt__resmlp_layer_scratch_bytes), allocated at create; the buffers
 * between a stage's layers are per stage (the layer functions copy their
 * inputs into scratch), so a step allocates nothing.
 *
 * Checkpointing, with torch Pipe's meaning: microbatch k is recomputed
 * before its backward iff k < m (BT__CKPT_ALWAYS), k < m - 1
 * (BT__CKPT_EXCEPT_LAST), never (BT__CKPT_NEVER).  A checkpointed
 * microbatch's scratch is marked dropped after its forward (and poisoned
 * with NaNs, so a missing recompute cannot go unnoticed) and rebuilt by the
 * recompute callback from the stage's input, which stays valid in the
 * pipeline's buffer.  The forward is deterministic, so the results are
 * bitwise those without checkpointing.  Scratch is pooled: each stage
 * allocates as many microbatches' scratch as its plan order ever keeps
 * alive (bt__stages_slots: about p for 1F1B, m for GPipe, 1 with
 * checkpointing always), and a microbatch takes a slot at its forward or
 * recompute and gives it back at its last backward (checkpointed: right
 * after its forward).
 *
 * Held activation bytes, counted per device as the memory model would
 * have them once buffers are pooled (not what is allocated now): a
 * non-checkpointed microbatch's forward holds its stage's scratch (the
 * sum of the stage's layers' bt__resmlp_layer_scratch_bytes) until its
 * last backward (B, or W when split); a checkpointed one holds nothing of
 * the trainer's after its forward (its stage input stays in the
 * pipeline's buffer, not counted here), and its recompute holds the
 * scratch again until that last backward.
 *
 * Threads: bt__train_step drives the pipeline's threads and returns when
 * the step is over; one step at a time per trainer, and the model must not
 * be touched by anyone else during it.  Different trainers on different
 * models are independent. */
#ifndef BATON_MODEL_TRAIN_H
#define BATON_MODEL_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "baton/schedule.h"
#include "baton/status.h"
#include "baton/timeline.h"
#include "resmlp.h"
#include "stages.h"

struct bt_backend;

struct bt__train_config {
  size_t size;              /* sizeof(struct bt__train_config) */
  struct bt__resmlp *model; /* borrowed; must outlive the trainer */
  size_t batch;             /* N rows per step */
  int32_t microbatches;     /* m, must divide N */
  int32_t devices;          /* p */
  int32_t virtual_stages;   /* v; 0 = the schedule's preference */
  const int32_t *balance;   /* [nbalance] layers per stage, each >= 1,
                               summing to L + 2, nbalance == S; NULL = as
                               even as possible, earlier stages get the
                               extra layers.  Read during create only. */
  int32_t nbalance;
  const bt_schedule_t *schedule; /* required; only used during create */
  int32_t checkpoint;            /* BT__CKPT_* */
  int32_t threads;               /* pipeline threads; 0 = online CPUs */
  uint64_t perturb;              /* test hook: non-zero makes every stage
                                    callback first sleep a pseudo-random
                                    0..200 us derived from this seed and the
                                    call; 0 = off */
  int32_t trace;                 /* record task times (bt__train_slices) */
  const int32_t *stage_device;   /* [S] placement; NULL = stage s on
                                    device s % devices.  Create only. */
  bt_comm_t *comm;               /* NULL = one process; else the job: this
                                    rank runs its share of the devices */
  struct bt_backend *backend;    /* NULL = the CPU; else (backend.h) the
                                    trainer runs on its devices (as many as
                                    `devices`), one process only */
  int32_t replicas;              /* data-parallel replicas (0 = 1); replica
                                    r runs on devices r p .. r p + p - 1
                                    (a backend has R p devices) and takes
                                    rows [r N/R, (r+1) N/R); one process */
  int32_t graph;                 /* with a backend that captures: the
                                    second step is captured as one graph
                                    and every later step replays it */
};

#define BT__TRAIN_CONFIG_INIT                                                  \
  {                                                                            \
    sizeof(struct bt__train_config), NULL, 0, 1, 1, 1, NULL, 0, NULL,          \
        BT__CKPT_NEVER, 0, 0, 0, NULL, NULL, NULL, 0, 0                        \
  }

struct bt__train;

/* Plans the pipeline and allocates every buffer.  BT_EINVAL, with a
 * message that says what to fix, for NULL arguments, a config not started
 * from BT__TRAIN_CONFIG_INIT, counts < 1, N not divisible by microbatches,
 * more stages than layers, a balance with the wrong number of entries, an
 * entry < 1, or entries not summing to L + 2, or a bad checkpoint mode;
 * the pipeline's errors pass through (BT_EUNSUPPORTED when the schedule
 * refuses p / v / m, ...); BT_ERANGE when sizes overflow; BT_ENOMEM.  On
 * failure *out is NULL and nothing stays allocated. */
bt_status bt__train_create(const struct bt__train_config *cfg,
                           struct bt__train **out, bt_error_t *err);

/* One step on x [N,D] and labels y [N] (in [0, C)): zeroes the model's
 * gradients, runs forward and backward of every microbatch as the schedule
 * orders them, and leaves the step's gradients in model->grads and the
 * batch's mean loss in *loss.  No optimizer: run one after (e.g.
 * bt__resmlp_sgd).  x and y are read during the call only.  With a comm,
 * x may be NULL on a rank that does not run stage 0 and y on one that does
 * not run the last stage (bt__train_needs), only this rank's stages'
 * gradients are computed here, and *loss is the job's.  BT_EINVAL for
 * NULL arguments or a label out of range; a stage's failure as the
 * pipeline reports it (then the gradients are unusable). */
bt_status bt__train_step(struct bt__train *t, const float *x, const int32_t *y,
                         float *loss, bt_error_t *err);

/* ---- on a backend ----------------------------------------------------------
 * The trainer keeps each stage's parameters and gradients on the stage's
 * device: create uploads the model's parameters, a step leaves its
 * gradients there, and the model (host) sees neither until
 * bt__train_pull copies both back.  bt__train_push uploads the model's
 * parameters again (after the host changed them).  bt__train_update runs
 * the optimizer on the devices.  All three are no-ops (push, pull) or
 * BT_EINVAL (update) without a backend; synchronous; between steps. */
struct bt__train_optim {
  int adamw; /* 0: SGD (w -= lr (g + wd w)) */
  float lr, wd, b1, b2, eps;
  int64_t t; /* AdamW's step, from 1 */
};
bt_status bt__train_push(struct bt__train *t, bt_error_t *err);
bt_status bt__train_pull(struct bt__train *t, bt_error_t *err);
bt_status bt__train_update(struct bt__train *t,
                           const struct bt__train_optim *o, bt_error_t *err);

/* What the user should know about how the trainer runs (e.g. a backend
 * that ran fewer data-parallel replicas than asked), or NULL. */
const char *bt__train_note(const struct bt__train *t);

/* Whether this rank reads x (it runs stage 0) and y (the last stage). */
void bt__train_needs(const struct bt__train *t, int *x, int *y);

/* The rank that runs stage s. */
int32_t bt__train_stage_rank(const struct bt__train *t, int32_t s);

/* The stage that owns layer, or -1 (for tests and tools). */
int32_t bt__train_stage_of_layer(const struct bt__train *t, size_t layer);

/* Between steps: device's held activation bytes now (0 after a complete
 * step) and their peak during the last step, as described above; 0 for a
 * device out of range. */
size_t bt__train_held_bytes(const struct bt__train *t, int32_t device);
size_t bt__train_peak_held_bytes(const struct bt__train *t, int32_t device);

/* The number of stages S. */
int32_t bt__train_stages(const struct bt__train *t);

/* The held bytes one microbatch's activations of stage s take (the
 * accounting's unit above: the stage's layers' scratch bytes, each rounded
 * up to 64), 0 for s out of range. */
size_t bt__train_stage_bytes(const struct bt__train *t, int32_t s);

/* Scratch slots stage s allocates: the most microbatches the plan keeps
 * alive on it at once (bt__stages_slots), 0 for s out of range. */
int32_t bt__train_stage_slots(const struct bt__train *t, int32_t s);

/* The plan the pipeline runs (owned by the trainer), NULL for NULL. */
const bt_plan_t *bt__train_plan(const struct bt__train *t);

/* With trace on: the last step's task times (bt_pipeline_slices). */
bt_status bt__train_slices(const struct bt__train *t, bt_slice_t *slices,
                           size_t *count);

/* Frees the trainer (not the model); NULL is accepted.  Not during a
 * step. */
void bt__train_destroy(struct bt__train *t);

#endif /* BATON_MODEL_TRAIN_H */
