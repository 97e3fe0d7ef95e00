/* baton: pipelined, data-parallel training of the gpt model through the
 * embedding API (internal).
 *
 * The model's L + 2 layers (0 = embed, 1 + i = blk{i}, L + 1 = head; see
 * gpt.h) are cut into S = devices * virtual_stages stages, each a
 * contiguous range of layers, driven by bt_pipeline with R replicas: replica
 * r runs the pipeline on devices r*p .. r*p + p - 1 over its own copy of the
 * model (replica 0's is the caller's) and its own sequences of the batch.
 *
 * Data, per step: x and y [B,T] token ids.  Replica r takes sequences
 * [r B/R, (r+1) B/R); its microbatch k the Bm = B/(R m) sequences from
 * r B/R + k Bm, global rows from (r B/R + k Bm) T, which key the dropout
 * masks, so every split draws the masks of the unsplit batch.  Every
 * microbatch's loss share is divided by the whole batch's B*T, so the sum
 * of all replicas' gradients is the whole batch's gradient.
 *
 * The step's graph (pipeline.h's epilogue), after the backwards:
 *   tie       tied and embed and head on different stages: the head's stage
 *             holds its own copy of wte (model->head_wte, head_gwte); the
 *             tie task of each replica sums the two gradient contributions
 *             (embed's + head's, in that order) into both, so both copies
 *             step identically and stay bitwise equal.
 *   reduce    R > 1: per stage, call r sums slice r of the stage's
 *             gradients over the replicas in replica order and writes it
 *             to every replica: the all-reduce (a sum, see above).
 *   norm/clip max_grad_norm > 0: each stage's squared norm (replica 0, the
 *             head's wte copy not counted twice), summed in stage order;
 *             scale = min(1, max / (norm + 1e-6)).
 *   update    with `update` on the step: the gradients are multiplied by
 *             the scale and the optimizer steps the stage's parameters (and
 *             the head's wte copy) on every replica.
 * After a step without update, the gradients (summed over ties and
 * replicas, not yet scaled) are in every replica's model, as
 * bt__gpt_reference_step leaves them for the whole batch with R m
 * microbatches: equal up to float summation order (the loss is summed in
 * replica then microbatch order, which is the reference's order).
 *
 * Checkpointing and held-bytes accounting as train.h describes them for
 * resmlp (a checkpointed microbatch's scratch is poisoned and rebuilt by
 * the recompute callback; dropout masks are redrawn, so bitwise the
 * same).  Devices in the accounting are the runtime's R * p devices.
 *
 * Across processes (comm): a rank holds replica 0's model (the caller's)
 * and those of the replicas it runs any stage of (bt__gpt_train_replica is
 * NULL for the others), computes, reduces and updates only its stages, and
 * allocates activation scratch only for them; x and y may be
 * NULL on ranks that do not need them (bt__gpt_train_needs); the loss is
 * the job's.  The replicas are copied from replica 0 at create only (a
 * checkpoint must be loaded before).
 *
 * Threads: bt__gpt_train_step drives the pipeline's threads; one step at a
 * time per trainer; nobody else may touch the model during it.  Between
 * steps the caller may change replica 0's parameters (load a checkpoint):
 * each step starts by copying them to the other replicas and the head's
 * wte copy. */
#ifndef BATON_MODEL_GPT_TRAIN_H
#define BATON_MODEL_GPT_TRAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "baton/schedule.h"
#include "baton/status.h"
#include "baton/timeline.h"
#include "gpt.h"
#include "stages.h"

enum { BT__OPT_SGD, BT__OPT_ADAMW };

struct bt__gpt_train_config {
  size_t size;                   /* sizeof(struct bt__gpt_train_config) */
  struct bt__gpt *model;         /* borrowed; replica 0 */
  size_t batch, seq;             /* B sequences of T tokens per step */
  int32_t microbatches;          /* m per replica; R m must divide B */
  int32_t devices;               /* p per replica */
  int32_t virtual_stages;        /* v; 0 = the schedule's preference */
  int32_t replicas;              /* R >= 1 */
  const int32_t *balance;        /* [nbalance] layers per stage, or NULL */
  int32_t nbalance;
  const bt_schedule_t *schedule; /* required; create only */
  int32_t checkpoint;            /* BT__CKPT_* */
  int32_t threads;               /* 0 = online CPUs */
  uint64_t perturb;              /* test hook (stages.h); 0 = off */
  int32_t trace;
  const int32_t *stage_device;   /* [S] or NULL */
  double max_grad_norm;          /* 0 = no clipping */
  int32_t optimizer;             /* BT__OPT_* */
  float lr, beta1, beta2, eps, weight_decay;
  uint64_t dropout_seed;
  bt_comm_t *comm; /* NULL = one process; else the job (this rank runs its
                      share of the R * p devices) */
};

#define BT__GPT_TRAIN_CONFIG_INIT                                              \
  {                                                                            \
    sizeof(struct bt__gpt_train_config), NULL, 0, 0, 1, 1, 1, 1, NULL, 0,      \
        NULL, BT__CKPT_NEVER, 0, 0, 0, NULL, 0.0, BT__OPT_SGD, 0.1f, 0.9f,     \
        0.999f, 1e-8f, 0.0f, 0, NULL                                           \
  }

struct bt__gpt_train;

/* Plans, allocates every buffer, the replicas' models and the head's wte
 * copies.  BT_EINVAL with a message that says what to fix (counts < 1, B
 * not divisible by R m, T == 0 or > Tmax, too many stages, a bad balance,
 * checkpoint mode or optimizer, max_grad_norm < 0); the pipeline's errors
 * pass through; BT_ERANGE, BT_ENOMEM.  On failure *out is NULL. */
bt_status bt__gpt_train_create(const struct bt__gpt_train_config *cfg,
                               struct bt__gpt_train **out, bt_error_t *err);

/* One step on x, y [B,T]: zeroes every gradient, runs the graph and leaves
 * the batch's mean loss in *loss.  `step` keys the dropout masks;
 * `update` runs the optimizer (AdamW's step count advances only then).
 * BT_EINVAL for NULL arguments or a token outside [0, V); a stage's or
 * epilogue task's failure as the pipeline reports it (then gradients and,
 * for a failure in an update, parameters are unusable). */
bt_status bt__gpt_train_step(struct bt__gpt_train *t, const int32_t *x,
                             const int32_t *y, uint32_t step, bool update,
                             float *loss, bt_error_t *err);

/* Whether this rank reads x (it runs an embed stage) and y (a head). */
void bt__gpt_train_needs(const struct bt__gpt_train *t, int *x, int *y);

/* The rank that runs stage s of replica 0. */
int32_t bt__gpt_train_stage_rank(const struct bt__gpt_train *t, int32_t s);

/* Replica 0's head copy of wte from wte (after a gather brought the
 * owner's wte to a rank that does not run the head). */
void bt__gpt_train_refresh_tie(struct bt__gpt_train *t);

/* After a step without update: the optimizer on every replica, with the
 * last step's clip scale, on the calling thread (what the graph's update
 * tasks would have done). */
bt_status bt__gpt_train_update(struct bt__gpt_train *t, bt_error_t *err);

/* The last step's global gradient norm (clipping on), else NaN. */
double bt__gpt_train_grad_norm(const struct bt__gpt_train *t);

/* Replica r's model (0 is the caller's), NULL out of range. */
struct bt__gpt *bt__gpt_train_replica(const struct bt__gpt_train *t,
                                      int32_t r);

int32_t bt__gpt_train_stages(const struct bt__gpt_train *t);
int32_t bt__gpt_train_stage_of_layer(const struct bt__gpt_train *t,
                                     size_t layer);
/* Whether embed and head hold separate copies of wte (tied, different
 * stages). */
bool bt__gpt_train_split_tie(const struct bt__gpt_train *t);
/* The held bytes of one microbatch of stage s (its layers' scratch). */
size_t bt__gpt_train_stage_bytes(const struct bt__gpt_train *t, int32_t s);
size_t bt__gpt_train_peak_held_bytes(const struct bt__gpt_train *t,
                                     int32_t device);
const bt_plan_t *bt__gpt_train_plan(const struct bt__gpt_train *t);
bt_status bt__gpt_train_slices(const struct bt__gpt_train *t,
                               bt_slice_t *slices, size_t *count);

/* Frees the trainer (not replica 0's model, whose head copy pointers it
 * resets); NULL is accepted.  Not during a step. */
void bt__gpt_train_destroy(struct bt__gpt_train *t);

#endif /* BATON_MODEL_GPT_TRAIN_H */
