/* baton: the embedding API's private state (internal), shared by
 * pipeline.c (config, buffers, stage callbacks, step) and pipeline_dist.c
 * (the step's DAG, and the transfers between processes). */
#ifndef BATON_MODEL_PIPELINE_INTERNAL_H
#define BATON_MODEL_PIPELINE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../actors/comm.h"
#include "baton/graph.h"
#include "baton/pipeline.h"

#define BT__PL_ALIGN 64
#define BT__PL_NAME_MAX 64

/* What an exec task is: a plan action of a replica, an epilogue task, or
 * one end of a transfer between processes. */
enum {
  TASK_PLAN,
  TASK_TIE,
  TASK_REDUCE,
  TASK_NORM,
  TASK_CLIP,
  TASK_UPDATE,
  TASK_SEND,
  TASK_RECV
};

struct pl_task {
  int32_t what; /* TASK_* */
  int32_t replica, stage, tie;
  int32_t xfer; /* TASK_SEND / TASK_RECV: the transfer; TASK_TIE: its
                   TIE_UP transfer (a on another rank), else -1 */
};

/* What a transfer carries (coordinates in struct pl_xfer). */
enum {
  XF_ACT,      /* stage s's output of (r, k) */
  XF_GRAD,     /* stage s's input gradient of (r, k) */
  XF_SKIPV,    /* skip i's value of (r, k) */
  XF_SKIPG,    /* skip i's gradient of (r, k) */
  XF_TIE_UP,   /* tie i's stage_a gradient of replica r, to stage_b's rank */
  XF_TIE_DOWN, /* tie i's sum, back to stage_a's rank */
  XF_RED_UP,   /* slice r of part i of replica q's stage s gradient, to the
                  reducer (r, s) */
  XF_RED_DOWN, /* the reduced slice r of part i, from (r, s) to replica q */
  XF_NORM,     /* stage s's squared norm, to the clip's rank */
  XF_SCALE     /* the clip's {norm, scale}, to rank `to` */
};

struct pl_xfer {
  int32_t kind;
  int32_t r, s, k, i, q;
  int32_t from, to;   /* ranks */
  int32_t guard;      /* receiving end: the transfer whose send (from the
                         same memory) must be complete before the copy */
  /* Resolved on this rank, when it is one end. */
  void *buf;          /* send: the source; receive: where the data goes
                         (NULL: read in place from staging) */
  void *staging;      /* receive: MPI's target when not buf (owned) */
  void *snap;         /* send of gradient memory that later tasks of this
                         step change (ties, reductions, clipping): the
                         send task copies buf here and sends the copy */
  size_t bytes;
  struct bt__comm_req req;
  double wait_since;  /* receive: when the task first found it missing */
  /* Where it runs (job devices) and its two tasks: a transport orders the
   * transfers of one pair of devices. */
  int32_t from_dev, to_dev, send_task, recv_task, producer, consumer;
};

struct bt_pipeline {
  int32_t S, m, p, R;
  bt_stage_desc_t *stage;     /* [S], copied (zero-extended) */
  bt_plan_t *plan;
  bt_skip_layout_t *skips;
  bt_graph_t *graph;          /* one replica's plan graph */
  bt_runtime_t *rt;
  int own_rt;
  bt_exec_t *exec;
  struct pl_task *tasks;      /* [local exec tasks] */
  void (*grads_ready)(int32_t, void *);
  void *user;
  int32_t *last_bw;           /* [S]: graph task id of the stage's last B/W */
  /* Epilogue (pipeline.h). */
  bt_pipeline_tie_t *ties;    /* [nties], names copied */
  size_t nties;
  bt_stage_fn tie_grads, reduce_grads, grad_sqnorm, update;
  bt_pipeline_tensor_fn grad_tensor;
  bt_pipeline_tie_tensor_fn tie_tensor;
  double max_grad_norm;
  double *sqnorm;             /* [S]: written by the NORM tasks */
  /* {norm, scale}: written by the CLIP task (or a SCALE transfer), read by
   * UPDATE tasks (ordered by the graph's edges) and between steps. */
  double gs[2];
  /* Buffers: one block; pointers per (replica, stage, microbatch). */
  unsigned char *block;
  void (*buffers_free)(void *, void *); /* NULL: block is aligned_alloc'd */
  void *buffers_user;
  void **act, **grad;         /* [R * S * m] */
  /* Skip buffers per (replica, stage, microbatch): arrays for the call. */
  bt_skip_buf_t *skip_pool;
  int32_t *nout, *nin;        /* [S] */
  size_t *out_at, *in_at;     /* [R * S * m]: index into skip_pool */
  int32_t *skip_pos;          /* [skips]: index among its stash's outs */
  /* Processes (pipeline.h: comm). */
  bt_comm_t *comm;            /* NULL: one process */
  int32_t W, me, per_rank;    /* ranks, this rank, devices per rank */
  double timeout_s;
  struct pl_xfer *xf;         /* [nxf]: every transfer of the job */
  size_t nxf;
  int32_t *red_up;            /* [(q R + r) S + s] * nparts: RED_UP index
                                 or -1 (same rank), per part */
  int32_t nparts;             /* most gradient parts of a stage */
  int32_t *nparts_s;          /* [S]: parts of each stage (grad_tensor) */
  int broken;                 /* a step failed across processes */
  bt_pipeline_transport_t transport; /* send NULL: MPI on the host */
  /* With a transport: the transfers each local task consumes (CSR over
   * local task ids: consumes[consumes_at[t] .. consumes_at[t + 1])). */
  int32_t *consumes_at, *consumes;
};

static inline size_t
bt__pl_slot(const struct bt_pipeline *pl, int32_t r, int32_t s, int32_t k)
{
  return ((size_t)r * (size_t)pl->S + (size_t)s) * (size_t)pl->m + (size_t)k;
}

static inline int32_t
bt__pl_rank_of(const struct bt_pipeline *pl, int32_t device)
{
  return device / pl->per_rank;
}

/* The exec's task function (pipeline.c). */
int bt__pl_task(const bt_task_call_t *tc, char *errbuf, size_t errlen);

/* Builds the step's DAG for this rank and instantiates it on pl->rt:
 * pl->tasks, pl->xf, pl->exec.  BT_ENOMEM, or the exec's errors. */
bt_status bt__pl_build_exec(struct bt_pipeline *pl, int trace,
                            bt_error_t *err);

/* Resolves this rank's transfer buffers (after the buffers exist).
 * BT_ENOMEM, BT_EINVAL (a tensor callback's count disagrees). */
bt_status bt__pl_resolve_xfers(struct bt_pipeline *pl, bt_error_t *err);

/* The task functions of transfers and of the built-in tie and reduce. */
int bt__pl_send_task(struct bt_pipeline *pl, const struct pl_task *pt,
                     void *device_ctx, char *errbuf, size_t errlen);
int bt__pl_recv_task(struct bt_pipeline *pl, const struct pl_task *pt,
                     void *device_ctx, char *errbuf, size_t errlen);
int bt__pl_builtin_tie(struct bt_pipeline *pl, const struct pl_task *pt);
int bt__pl_builtin_reduce(struct bt_pipeline *pl, const struct pl_task *pt);

/* Around bt_exec_run with processes: post this rank's receives; after it,
 * wait for the sends, and on failure tell the other ranks and stop. */
bt_status bt__pl_step_begin(struct bt_pipeline *pl, bt_error_t *err);
bt_status bt__pl_step_end(struct bt_pipeline *pl, bt_status rc,
                          bt_error_t *err);

/* Frees the transfers. */
void bt__pl_free_xfers(struct bt_pipeline *pl);

#endif /* BATON_MODEL_PIPELINE_INTERNAL_H */
