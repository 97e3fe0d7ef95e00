/* baton: what the pipelined trainers of the test models share (internal):
 * cutting a model's layers into stages, the checkpoint policy, held
 * activation accounting and the perturbation test hook.  train.c (resmlp)
 * and gpt_train.c (gpt) build their stage callbacks on these. */
#ifndef BATON_MODEL_STAGES_H
#define BATON_MODEL_STAGES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "baton/comm.h"
#include "baton/pipeline.h"
#include "baton/plan.h"
#include "baton/status.h"

enum { BT__CKPT_NEVER, BT__CKPT_EXCEPT_LAST, BT__CKPT_ALWAYS };

/* Cuts nlayers layers into S = devices * v contiguous stages: stage s owns
 * layers [first[s], first[s + 1]) (first has S + 1 entries).  balance
 * [nbalance] gives layers per stage (each >= 1, summing to nlayers,
 * nbalance == S); NULL = as even as possible, earlier stages taking the
 * extra layers.  BT_EINVAL with a message that says what to fix; `first0`
 * names layer 0 in it ("in", "embed"). */
bt_status bt__stages_partition(size_t nlayers, int32_t S, int32_t devices,
                               int32_t v, const int32_t *balance,
                               int32_t nbalance, const char *first0,
                               size_t *first, bt_error_t *err);

/* Whether microbatch k of m is recomputed before its backward under mode
 * (torch Pipe's meaning: always, all but the last, never). */
bool bt__stages_checkpointed(int32_t mode, int32_t k, int32_t m);

/* BT_EINVAL naming the mode when it is not a BT__CKPT_*. */
bt_status bt__stages_check_mode(int32_t mode, bt_error_t *err);

/* Test hook: when seed is non-zero, sleeps a pseudo-random 0..200 us, a
 * pure function of the seed and the call (step, stage, microbatch, kind,
 * replica), so it needs no shared state. */
void bt__stages_perturb(uint64_t seed, const bt_stage_call_t *c);

/* The rank that runs stage s of replica r: its device is stage_device[s]
 * (or s % p) plus r * p, and the job's R * p devices are split into equal
 * consecutive shares (comm NULL: 0). */
int32_t bt__stages_rank(const bt_comm_t *comm, const int32_t *stage_device,
                        int32_t s, int32_t r, int32_t p, int32_t R);

/* The step's loss from the last stage's shares of R replicas x m
 * microbatches (shares[r * m + k], 0 where this rank does not run that
 * last stage): every rank's shares summed across the job (exact: one rank
 * holds each), then added in replica-then-microbatch order in float, the
 * reference's order.  Errors as bt_comm_allreduce_sum's. */
bt_status bt__stages_loss(bt_comm_t *comm, double *shares, size_t n,
                          float *loss, bt_error_t *err);

/* Scratch slots: a stage's layer scratch for one microbatch is a slot,
 * taken by its forward (or its recompute) and given back by its last
 * backward (or, checkpointed, right after the forward).  A stage's calls run
 * one at a time in its device's plan order, so the most slots it ever holds
 * is found by walking that order: bt__stages_slots writes it per stage
 * ([S]) for a plan of S stages and m microbatches under checkpoint mode.
 * 1F1B then allocates about p slots per stage, not m, and `always` one. */
void bt__stages_slots(const bt_plan_t *plan, int32_t m, int32_t ckpt,
                      int32_t *slots);

/* One stage's pool: n slots, the slot of each microbatch ([m], -1: none)
 * and a stack of free ones.  Touched only by the stage's callbacks and
 * between steps. */
struct bt__slots {
  int32_t n, m, nfree;
  int32_t *of, *free;
};

bt_status bt__slots_init(struct bt__slots *p, int32_t n, int32_t m);
void bt__slots_free(struct bt__slots *p);
/* Every slot free (a new step, also after a failed one). */
void bt__slots_reset(struct bt__slots *p);
/* Microbatch k's slot, taking a free one if it has none; -1 when none is
 * free (the plan walk said otherwise: a bug, reported by the caller). */
int32_t bt__slots_take(struct bt__slots *p, int32_t k);
/* bt__slots_take for stage s's microbatch k, as a callback's result: 0,
 * or BT_EINVAL with the sentence in errbuf when no slot is free. */
int bt__slots_claim(struct bt__slots *p, int32_t k, int32_t s, char *errbuf,
                    size_t errlen);
/* Gives k's slot back (none: nothing). */
void bt__slots_give(struct bt__slots *p, int32_t k);

/* A layer function's failure as a callback's result: "<model> layer L
 * <what> failed: <status>" in errbuf, the status returned. */
int bt__stages_layer_error(char *errbuf, size_t errlen, const char *model,
                           const char *what, size_t layer, bt_status rc);

/* Held activation bytes per device: now and the step's peak.  Entry d is
 * touched only by device d's callbacks, which never overlap, and between
 * steps. */
struct bt__held {
  size_t *now, *peak; /* [devices] */
  int32_t devices;
};

bt_status bt__held_init(struct bt__held *h, int32_t devices);
void bt__held_free(struct bt__held *h);
void bt__held_reset(struct bt__held *h);
void bt__held_add(struct bt__held *h, int32_t device, size_t bytes);
void bt__held_sub(struct bt__held *h, int32_t device, size_t bytes);

#endif /* BATON_MODEL_STAGES_H */
