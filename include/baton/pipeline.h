/* baton: the embedding API.  Bring your own stage callbacks.
 *
 * You own the model: parameters, kernels, loss, optimizer.  baton owns the
 * schedule (which stage computes which microbatch when, on which device)
 * and the buffers that flow between stages: each stage's output activation
 * and input gradient per microbatch, and skip tensors.  You describe each
 * stage with a bt_stage_desc_t (callbacks and buffer sizes), pick a
 * schedule (built-in name, plugin .so or CSV plan), and call
 * bt_pipeline_step once per batch.
 *
 * Per (stage s, microbatch k), baton calls:
 *   forward(s,k)      reads `input` (stage s-1's output for k; NULL on the
 *                     first stage: read your batch yourself), writes `output`
 *                     (NULL when output_bytes is 0, e.g. on the last stage).
 *   backward(s,k)     a full backward: reads `grad_output` (NULL on the last
 *                     stage: start from your loss), writes `grad_input`
 *                     (NULL on the first stage unless you asked for it) and
 *                     accumulates the stage's weight gradients;
 *   or, when the schedule splits backwards (zb-h1, zb-h2, auto):
 *   input_grad(s,k)   writes `grad_input` only, and
 *   weight_grad(s,k)  the weight gradients, after input_grad(s,k).
 *   recompute(s,k)    (optional) called right before backward/input_grad of
 *                     (s,k): rebuild activations you chose not to keep
 *                     (activation checkpointing).
 * The buffers of (s,k) stay valid from forward(s,k) until the end of the
 * step, so backward and weight_grad may read `input` and `grad_output`.
 * After the last backward (or weight_grad) of a stage in a step, baton calls
 * grads_ready(stage): that stage's gradients are complete and you may step
 * its optimizer at once, while other stages are still working.
 *
 * Threads: callbacks run on the runtime's threads, never two at once for
 * one device (a device runs its stages' work in plan order), and stages on
 * different devices concurrently.  A callback may use its own stage's
 * parameters and its call's buffers; it must not call bt_pipeline_step or
 * bt_pipeline_destroy (they return BT_EBUSY).  grads_ready(s) runs on the
 * thread that ran stage s's last backward, as part of its device's work
 * (in the M:N pool that is whichever pool thread runs the device then), so
 * it never overlaps another callback of that device.
 *
 * Step epilogue (optional; config fields after `trace`): tasks in the
 * same graph, after the backwards, each as soon as its inputs are ready:
 *   tie_grads(r,i)    per replica r and declared tie i (a parameter that
 *                     two stages each hold a copy of, e.g. a language
 *                     model's token embedding on the first and last stage):
 *                     after the last backward of both stages in replica r,
 *                     on the device of the tie's stage_b.  Sum the two
 *                     gradient contributions into both copies (reading the
 *                     other stage's is the transfer), so that both copies
 *                     step identically.
 *   reduce_grads(r,s) data parallelism, replicas R > 1: replica r runs
 *                     stage s on device r * devices + (s's device); after
 *                     every replica's last backward of stage s (and the
 *                     ties that touch s), one call per (r, s) on r's
 *                     device.  Together the R calls of stage s all-reduce
 *                     its gradients (each may write every replica's: e.g.
 *                     call r sums slice r of the gradient over replicas in
 *                     replica order and writes it everywhere).  A
 *                     device's reduce_grads calls come in decreasing stage
 *                     order on every replica, so collectives (NCCL) pair
 *                     up.
 *   grad_sqnorm(s)    with max_grad_norm > 0: per stage, on replica 0 after
 *                     its gradients are final; write the stage's squared
 *                     gradient norm into *call->sqnorm (count a tied
 *                     parameter on one stage only).  Then one reduction
 *                     task sums them in stage order (double), norm =
 *                     sqrt(sum), grad_scale = min(1, max_grad_norm / (norm
 *                     + 1e-6)) (torch's clip_grad_norm_); a non-finite norm
 *                     fails the step ("clip") before any update runs.
 *   update(r,s)       per (replica, stage), after its gradients are final
 *                     (and after the clip reduction): the optimizer step,
 *                     scaling the gradients by call->grad_scale (1 without
 *                     clipping).
 * In these calls microbatch is -1, kind is BT_STAGE_TIE / _REDUCE / _NORM /
 * _UPDATE, and only stage, replica, tie, device, step, user (the config's
 * `user`, not a stage's), sqnorm, grad_norm and grad_scale are set.
 * grads_ready(s) runs once per replica.  A failing epilogue task is named
 * "tie <name>", "reduce <s>", "norm <s>", "clip" or "update <s>" in the
 * step's error.
 *
 * Errors: a callback returns 0, or non-zero (a bt_status or any negative
 * code of yours) with a sentence in errbuf.  Then no further callback
 * starts, callbacks in flight finish, and bt_pipeline_step returns that
 * status with "<stage><F|B|I|W><microbatch> on <device>: <sentence>" (e.g.
 * "2F5 on cpu:1: NaN in logits": stage 2, forward, microbatch 5).
 * grads_ready has then run only for stages whose backward was complete
 * before the failure; treat the step's gradients as unusable.  The next
 * step runs normally.
 *
 * ABI: bt_stage_desc_t, bt_pipeline_config_t and bt_stage_call_t start with
 * their size; fields are only ever appended, and baton reads a caller's
 * struct only up to its size, so programs built against an older header
 * keep working. */
#ifndef BATON_PIPELINE_H
#define BATON_PIPELINE_H

#include <stddef.h>
#include <stdint.h>

#include "baton/comm.h"
#include "baton/export.h"
#include "baton/runtime.h"
#include "baton/schedule.h"
#include "baton/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A skip tensor's buffer as a callback sees it. */
typedef struct bt_skip_buf {
  const char *name;
  void *data;
  size_t bytes;
} bt_skip_buf_t;

typedef struct bt_stage_call {
  size_t size;          /* sizeof(bt_stage_call_t) as baton knows it */
  int32_t stage;
  int32_t microbatch;
  int32_t kind;         /* BT_ACT_F, BT_ACT_B, BT_ACT_I, BT_ACT_W, or
                           BT_STAGE_RECOMPUTE */
  int32_t device;       /* index of the device running the call */
  void *device_ctx;     /* that device's ctx (a CUDA stream for a CUDA
                           device; NULL for the default CPU devices) */
  uint64_t step;        /* 1 for the first bt_pipeline_step */
  void *user;           /* the stage's user pointer */
  const void *input;    /* stage-1's output for this microbatch */
  size_t input_bytes;
  void *output;         /* this stage's output (forward writes it) */
  size_t output_bytes;
  const void *grad_output; /* gradient of output (from stage+1) */
  size_t grad_output_bytes;
  void *grad_input;     /* gradient of input (backward/input_grad write) */
  size_t grad_input_bytes;
  /* Skips this stage stashes: forward writes `skip_out[i].data`; the
   * backward reads the gradient that came back in `skip_grad_in[i]`. */
  const bt_skip_buf_t *skip_out;
  const bt_skip_buf_t *skip_grad_in;
  int32_t nskip_out;
  /* Skips this stage pops: forward reads `skip_in[j].data`; the backward
   * writes their gradients into `skip_grad_out[j]`. */
  int32_t nskip_in;
  const bt_skip_buf_t *skip_in;
  const bt_skip_buf_t *skip_grad_out;
  /* Appended in version 2. */
  int32_t replica;      /* data-parallel replica, 0 .. replicas-1 */
  int32_t tie;          /* BT_STAGE_TIE: the tie's index, else -1 */
  double *sqnorm;       /* BT_STAGE_NORM: write the squared norm here */
  double grad_norm;     /* BT_STAGE_UPDATE: the global gradient norm (NaN
                           without clipping) */
  double grad_scale;    /* BT_STAGE_UPDATE: multiply gradients by this */
} bt_stage_call_t;

#define BT_STAGE_RECOMPUTE 5
#define BT_STAGE_TIE 6
#define BT_STAGE_REDUCE 7
#define BT_STAGE_NORM 8
#define BT_STAGE_UPDATE 9

typedef int (*bt_stage_fn)(const bt_stage_call_t *call, char *errbuf,
                           size_t errlen);

typedef struct bt_stage_desc {
  size_t size;               /* sizeof(bt_stage_desc_t) */
  bt_stage_fn forward;       /* required */
  bt_stage_fn backward;      /* full backward (for gpipe, 1f1b, ...) */
  bt_stage_fn input_grad;    /* split backward (for zb-h1, zb-h2, auto) */
  bt_stage_fn weight_grad;
  bt_stage_fn recompute;     /* optional */
  size_t output_bytes;       /* this stage's activation per microbatch */
  size_t grad_input_bytes;   /* gradient of its input per microbatch (0 on
                                the first stage unless you want it) */
  double cost_f, cost_b, cost_w; /* relative costs for cost-driven
                                    schedules (zb, auto); 0 = 1 */
  void *user;                /* passed as call->user */
} bt_stage_desc_t;

#define BT_STAGE_DESC_INIT                                                    \
  { sizeof(bt_stage_desc_t), NULL, NULL, NULL, NULL, NULL, 0, 0, 0, 0, 0,    \
    NULL }

/* A skip connection between stages: stash_stage's forward writes it,
 * pop_stage's forward reads it (pop_stage > stash_stage); its gradient goes
 * straight back.  The name is copied. */
typedef struct bt_pipeline_skip {
  const char *name;
  int32_t stash_stage, pop_stage;
  size_t bytes; /* per microbatch */
} bt_pipeline_skip_t;

/* Gradient memory baton may read and write itself (instead of calling
 * reduce_grads / tie_grads), which is what lets it move gradients between
 * processes:
 *   grad_tensor(r, s, part, &count)  part 0, 1, .. of replica r's stage s
 *       gradient (NULL after the last part); baton all-reduces them: the
 *       reducer (r, s) sums slice r of each part over the replicas in
 *       replica order (float) and writes it to every replica.
 *   tie_tensor(r, i, side, &count)   tie i's gradient copy on stage_a
 *       (side 0) or stage_b (side 1) of replica r; baton writes a + b (float)
 *       into both.
 * Called during create (to size transfers) and during steps, possibly on
 * any rank for any replica: every rank must answer with the same counts. */
typedef float *(*bt_pipeline_tensor_fn)(int32_t replica, int32_t stage,
                                        int32_t part, size_t *count,
                                        void *user);
typedef float *(*bt_pipeline_tie_tensor_fn)(int32_t replica, int32_t tie,
                                            int32_t side, size_t *count,
                                            void *user);

/* How the bytes of an edge between ranks move when the buffers are device
 * memory (buffers_alloc with comm): instead of MPI on the host, the send
 * task calls send on the producer's device thread (ctx: its device_ctx)
 * and the receive task calls recv on the consumer's.  Both only start the
 * move (e.g. ncclSend / ncclRecv enqueued on a stream of the pair): a
 * device that waited inside a receive could not run the send its peer
 * waits for.  wait (optional) runs on the consumer's device thread right
 * before the stage callback that reads the transfer, and makes that work
 * come after the receive (a stream wait on its event); finish (optional)
 * runs after every step on the stepping thread, to complete or (failed)
 * drop what is still in flight.  baton calls both ends of one (from, to)
 * pair of devices in one order, the consumer's plan order, and refuses a
 * plan whose producer orders them otherwise; tag is the transfer's number
 * in the job, the same on both ranks.  connect runs once at create with
 * every pair of devices this rank sends to or receives from (pairs[5 i
 * ..]: from device, to device, from rank, to rank, and the pair's number
 * in the job, the same on both ranks; devices as the job numbers them),
 * in the job's pair order, and ntags (tags are 0 .. ntags - 1): set up
 * the channels there.  Callbacks return 0 or a bt_status with a sentence in errbuf. */
typedef struct bt_pipeline_transport {
  size_t size; /* sizeof(bt_pipeline_transport_t) */
  int (*connect)(const int32_t *pairs, size_t npairs, int32_t ntags,
                 void *user, char *errbuf, size_t errlen);
  int (*send)(void *device_ctx, const void *buf, size_t bytes, int32_t from,
              int32_t to, int32_t peer_rank, int32_t tag, void *user,
              char *errbuf, size_t errlen);
  int (*recv)(void *device_ctx, void *buf, size_t bytes, int32_t from,
              int32_t to, int32_t peer_rank, int32_t tag, void *user,
              char *errbuf, size_t errlen);
  int (*wait)(void *device_ctx, int32_t tag, void *user, char *errbuf,
              size_t errlen);
  int (*finish)(int failed, void *user, char *errbuf, size_t errlen);
  void *user;
} bt_pipeline_transport_t;

/* A parameter held by two stages of each replica (see tie_grads above).
 * The name is copied. */
typedef struct bt_pipeline_tie {
  const char *name;
  int32_t stage_a, stage_b; /* stage_a < stage_b */
} bt_pipeline_tie_t;

typedef struct bt_pipeline_config {
  size_t size;                  /* sizeof(bt_pipeline_config_t) */
  int32_t stages;               /* S = devices * virtual_stages */
  const bt_stage_desc_t *stage; /* [stages]; copied */
  int32_t devices;
  int32_t virtual_stages;       /* 0 = the schedule's preference */
  int32_t microbatches;
  const bt_schedule_t *schedule; /* required; only used during create */
  const int32_t *stage_device;  /* [stages]; NULL = stage s on s % devices */
  const bt_pipeline_skip_t *skips;
  size_t nskips;
  bt_runtime_t *runtime; /* NULL: the pipeline makes its own CPU runtime */
  int32_t threads;       /* own runtime: threads (0 = online CPUs) */
  void (*grads_ready)(int32_t stage, void *user);
  void *user;            /* passed to grads_ready */
  int32_t trace;         /* record task times (bt_pipeline_slices) */
  /* Appended in version 2: the step epilogue (above). */
  int32_t replicas;      /* R data-parallel replicas; 0 = 1.  The runtime
                            needs R * devices devices. */
  const bt_pipeline_tie_t *ties;
  size_t nties;
  bt_stage_fn tie_grads;    /* required with ties */
  bt_stage_fn reduce_grads; /* required with replicas > 1 */
  bt_stage_fn grad_sqnorm;  /* required with max_grad_norm > 0 */
  double max_grad_norm;     /* > 0: clip the global gradient norm */
  bt_stage_fn update;       /* optional optimizer step */
  /* Appended in version 3. */
  bt_pipeline_tensor_fn grad_tensor;    /* baton reduces (see above) */
  bt_pipeline_tie_tensor_fn tie_tensor; /* baton sums ties (see above) */
  bt_comm_t *comm;  /* NULL = one process; else the job (<baton/comm.h>):
                       this process runs only its rank's share of the
                       R * devices devices, and every rank must create the
                       pipeline with the same config */
  /* Appended in version 4: where the buffers between stages live (the
   * activations, their gradients and the skips).  NULL = host memory.
   * Otherwise buffers_alloc returns one zeroed block of `bytes` that every
   * device's tasks may read and write (e.g. GPU memory, peer-accessible),
   * or NULL; baton never reads or writes it from the host, and frees it
   * with buffers_free at destroy.  Not with grad_tensor or tie_tensor
   * (baton moves those bytes on the host); with comm only given a
   * transport. */
  void *(*buffers_alloc)(size_t bytes, void *buffers_user);
  void (*buffers_free)(void *block, void *buffers_user);
  void *buffers_user;
  /* Appended in version 5: moves edges between ranks on the devices (see
   * bt_pipeline_transport_t), with comm: the plan's edges, and the
   * replicas' reduce_grads becomes a collective (each replica's call
   * meets the others' itself); no ties, no clipping, no grad_tensor or
   * tie_tensor. */
  const bt_pipeline_transport_t *transport;
} bt_pipeline_config_t;

#define BT_PIPELINE_CONFIG_INIT                                               \
  { sizeof(bt_pipeline_config_t), 0, NULL, 1, 0, 1, NULL, NULL, NULL, 0,      \
    NULL, 0, NULL, NULL, 0, 1, NULL, 0, NULL, NULL, NULL, 0.0, NULL, NULL,    \
    NULL, NULL, NULL, NULL, NULL, NULL }

typedef struct bt_pipeline bt_pipeline_t;

/* Plans the schedule, validates plan and skips, allocates every buffer and
 * instantiates the step.  Errors, each with a message that says what to
 * fix: BT_EINVAL (a stage without forward, without the backward callbacks
 * the schedule needs, bad sizes or counts), BT_ESKIP, BT_EUNSUPPORTED /
 * BT_EPLAN / BT_EPLUGIN_PLAN (from the schedule), BT_ENOMEM.  Nothing is
 * left allocated on failure. */
BT_API bt_status bt_pipeline_create(const bt_pipeline_config_t *config,
                                    bt_pipeline_t **out, bt_error_t *err);

/* Runs one training step: every microbatch through every stage, forward
 * and backward, as the plan orders them.  Blocks until the step is over.
 * Not thread-safe against itself (BT_EBUSY). */
BT_API bt_status bt_pipeline_step(bt_pipeline_t *pl, bt_error_t *err);

/* BT_EBUSY during a step. */
BT_API bt_status bt_pipeline_destroy(bt_pipeline_t *pl);

/* Between steps: the output activation of (stage, microbatch) from the last
 * step (e.g. the last stage's logits or loss), or NULL. */
BT_API const void *bt_pipeline_output(const bt_pipeline_t *pl, int32_t stage,
                                      int32_t microbatch, size_t *bytes);

/* As bt_pipeline_output, for data-parallel replica r. */
BT_API const void *bt_pipeline_replica_output(const bt_pipeline_t *pl,
                                              int32_t replica, int32_t stage,
                                              int32_t microbatch,
                                              size_t *bytes);

/* The last step's global gradient norm (clipping on), else NaN. */
BT_API double bt_pipeline_grad_norm(const bt_pipeline_t *pl);

/* The plan the pipeline runs (owned by the pipeline). */
BT_API const bt_plan_t *bt_pipeline_plan(const bt_pipeline_t *pl);

/* With trace on: the last step's task times, as bt_exec_slices. */
BT_API bt_status bt_pipeline_slices(const bt_pipeline_t *pl,
                                    bt_slice_t *slices, size_t *count);

#ifdef __cplusplus
}
#endif

#endif /* BATON_PIPELINE_H */
