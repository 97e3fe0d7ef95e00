/* baton: models and pipelined training on the CPU backend.
 *
 * A model is an ordered list of layers with named parameters.  A trainer
 * cuts it into stages (a balance list, or automatically by measured time:
 * contiguous blocks minimising the slowest stage, as torchgpipe's
 * balance_by_time), places stages on devices, and runs each step as the
 * chosen schedule orders it: forward and backward of every microbatch, then
 * the optimizer.  Pipelining changes nothing but speed: a step's loss and
 * gradients equal the plain mini-batch step's (bt_model_reference_step)
 * within floating-point summation order, and the same config gives the
 * same bits run after run.
 *
 * The `resmlp` model (pinned so others can check it):
 *   h0 = in(x); h(i+1) = h(i) + fc2(gelu(fc1(ln(h(i))))), i < L, E = 4H;
 *   z = h(L) + h0 with long_skip (h0 stashed after `in`, popped before the
 *   head; it travels straight between those stages), else z = h(L);
 *   logits = head(ln_head(z)); loss = mean cross-entropy over the batch.
 * Parameters: in.w [H,D], in.b, blk{i}.ln.g, blk{i}.ln.b, blk{i}.fc1.w
 * [E,H], blk{i}.fc1.b, blk{i}.fc2.w [H,E], blk{i}.fc2.b, head.ln.g,
 * head.ln.b, head.w [C,H], head.b.  Layers: in, blk0 .. blk{L-1}, head.
 *
 * The `gpt` model (pinned in docs/gpt.md and model/gpt.h): a GPT-2-style
 * pre-LN decoder over token ids, h = wte[x] + wpe[0..T); per block
 * h += attn(ln1(h)), h += mlp(ln2(h)); logits = lnf(h) wte^T (tied, the
 * default) or head.w; loss = mean cross-entropy over all B*T positions;
 * dropout keyed by (seed, step, layer, global row, column), so every
 * schedule, microbatch count and data-parallel split draws the same masks.
 * Parameters: wte [V,C], wpe [Tmax,C], blk{i}.ln1.g|b, blk{i}.attn.qkv.w
 * [3C,C] |b, blk{i}.attn.proj.w [C,C] |b, blk{i}.ln2.g|b, blk{i}.mlp.fc.w
 * [4C,C] |b, blk{i}.mlp.proj.w [C,4C] |b, lnf.g|b, head.w [V,C] (untied
 * only).  Layers: embed, blk0 .. blk{L-1}, head.  Its trainer runs data
 * parallel replicas (config.replicas), sums a tied wte's two gradients
 * when embed and head sit on different stages, clips the global gradient
 * norm (config.max_grad_norm) and steps the optimizer per stage, all as
 * tasks of the step's graph; the *_tokens calls below drive it.
 *
 * Threads: a model and its trainer are used from one thread at a time; the
 * trainer's own threads run the stages during bt_trainer_step only. */
#ifndef BATON_MODEL_H
#define BATON_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "baton/comm.h"
#include "baton/export.h"
#include "baton/schedule.h"
#include "baton/status.h"
#include "baton/timeline.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct bt_model bt_model_t;
typedef struct bt_trainer bt_trainer_t;
/* Where a trainer's stages run and its tensors live, when not the CPU
 * (made by bt_cuda_backend_create, <baton/cuda.h>). */
typedef struct bt_backend bt_backend_t;

typedef struct bt_resmlp_config {
  size_t size;        /* sizeof(bt_resmlp_config_t) */
  int32_t inputs;     /* D */
  int32_t hidden;     /* H */
  int32_t classes;    /* C */
  int32_t blocks;     /* L (0 allowed) */
  int32_t long_skip;  /* add h0 to z before the head */
  uint64_t seed;      /* parameter initialization (counter-based, portable) */
} bt_resmlp_config_t;

#define BT_RESMLP_CONFIG_INIT                                                 \
  { sizeof(bt_resmlp_config_t), 64, 64, 10, 4, 0, 1 }

/* BT_EINVAL (a size < 1, classes < 2), BT_ENOMEM. */
BT_API bt_status bt_model_create_resmlp(const bt_resmlp_config_t *config,
                                        bt_model_t **out, bt_error_t *err);

typedef struct bt_gpt_config {
  size_t size;       /* sizeof(bt_gpt_config_t) */
  int32_t vocab;     /* V (256 for bytes) */
  int32_t embd;      /* C, a multiple of heads */
  int32_t heads;     /* nh */
  int32_t layers;    /* L blocks (0 allowed) */
  int32_t seq_max;   /* Tmax positions */
  int32_t untied;    /* a separate head.w instead of wte */
  float dropout;     /* in [0, 1) */
  uint64_t seed;     /* parameter initialization (counter-based) */
} bt_gpt_config_t;

#define BT_GPT_CONFIG_INIT                                                    \
  { sizeof(bt_gpt_config_t), 256, 64, 4, 4, 64, 0, 0.0f, 1 }

/* BT_EINVAL (a size < 1, embd not a multiple of heads, dropout outside
 * [0, 1)), BT_ERANGE, BT_ENOMEM. */
BT_API bt_status bt_model_create_gpt(const bt_gpt_config_t *config,
                                     bt_model_t **out, bt_error_t *err);

/* "resmlp" or "gpt". */
BT_API const char *bt_model_kind(const bt_model_t *model);
BT_API void bt_model_destroy(bt_model_t *model);

/* Layers in order ("in", "blk0", ..., "head"). */
BT_API int32_t bt_model_layer_count(const bt_model_t *model);
BT_API const char *bt_model_layer_name(const bt_model_t *model,
                                       int32_t layer);

/* A parameter tensor: its name, shape, value and gradient (both float32,
 * row-major, owned by the model). */
typedef struct bt_param {
  const char *name;
  int32_t ndim;
  int64_t shape[2];
  float *value;
  float *grad;
  size_t count;
  int32_t layer;
} bt_param_t;

BT_API size_t bt_model_param_count(const bt_model_t *model);
/* BT_ERANGE for an index out of range. */
BT_API bt_status bt_model_param(const bt_model_t *model, size_t index,
                                bt_param_t *out);

/* Parameters to / from a safetensors file (names as above).  Loading checks
 * every name, dtype and shape and changes nothing on failure; it also
 * reads the index of a checkpoint written by bt_trainer_save across ranks
 * (the shards must sit next to it). */
BT_API bt_status bt_model_save(const bt_model_t *model, const char *path,
                               bt_error_t *err);
BT_API bt_status bt_model_load(bt_model_t *model, const char *path,
                               bt_error_t *err);

/* The plain mini-batch step on one thread, no optimizer: zeroes the
 * gradients, runs `microbatches` microbatches (n divisible by it) and
 * leaves the gradients in the model.  The reference pipelined steps are
 * checked against. */
BT_API bt_status bt_model_reference_step(bt_model_t *model, const float *x,
                                         const int32_t *y, size_t n,
                                         int32_t microbatches, float *loss,
                                         bt_error_t *err);

/* gpt: the plain step on one thread for x, y [B,T] token ids, no
 * optimizer; B divisible by microbatches; dropout keyed by (dropout_seed,
 * step).  The reference the pipelined, data-parallel steps are checked
 * against (with R m microbatches for R replicas of m). */
BT_API bt_status bt_model_reference_step_tokens(bt_model_t *model,
                                                const int32_t *x,
                                                const int32_t *y, size_t B,
                                                size_t T, int32_t microbatches,
                                                uint64_t dropout_seed,
                                                uint32_t step, float *loss,
                                                bt_error_t *err);

/* gpt: the mean cross-entropy of y given x [B,T], forward only, dropout
 * off (validation: perplexity = exp(loss)). */
BT_API bt_status bt_model_eval_tokens(const bt_model_t *model,
                                      const int32_t *x, const int32_t *y,
                                      size_t B, size_t T, float *loss,
                                      bt_error_t *err);

/* gpt: n tokens sampled after prompt [nprompt] (empty: starts from byte
 * '\n'), over a sliding window of the last seq_max tokens, from
 * softmax(logits / temperature) (0 = the most likely token) with a
 * counter-based generator keyed by seed: the same call gives the same
 * text. */
BT_API bt_status bt_model_generate(const bt_model_t *model,
                                   const int32_t *prompt, size_t nprompt,
                                   size_t n, float temperature, uint64_t seed,
                                   int32_t *out, bt_error_t *err);

/* Class predictions for n rows (one thread, forward only). */
BT_API bt_status bt_model_predict(const bt_model_t *model, const float *x,
                                  size_t n, int32_t *classes,
                                  bt_error_t *err);

typedef enum bt_checkpoint_mode {
  BT_CHECKPOINT_NEVER = 0,       /* keep every microbatch's activations */
  BT_CHECKPOINT_EXCEPT_LAST = 1, /* recompute microbatches 0 .. m-2 */
  BT_CHECKPOINT_ALWAYS = 2       /* recompute every microbatch */
} bt_checkpoint_mode;

typedef enum bt_optimizer {
  BT_OPTIMIZER_SGD = 0,
  BT_OPTIMIZER_ADAMW = 1
} bt_optimizer;

typedef struct bt_trainer_config {
  size_t size;              /* sizeof(bt_trainer_config_t) */
  int32_t batch;            /* N rows per step */
  int32_t microbatches;     /* m; must divide N */
  int32_t devices;          /* p CPU devices */
  int32_t virtual_stages;   /* v; 0 = the schedule's preference */
  const int32_t *balance;   /* [nbalance] layers per stage, summing to the
                               layer count; NULL = balance by measured time */
  int32_t nbalance;
  const bt_schedule_t *schedule; /* required; used during create only */
  int32_t checkpoint;       /* a bt_checkpoint_mode (default EXCEPT_LAST) */
  int32_t optimizer;        /* a bt_optimizer */
  float lr, weight_decay, beta1, beta2, eps;
  int32_t threads;          /* runtime threads; 0 = online CPUs */
  int32_t trace;            /* record task times (bt_trainer_slices) */
  const int32_t *stage_device; /* [stages] stage -> device; NULL = stage s
                                  on device s % devices.  Create only. */
  uint32_t perturb_seed;    /* test hook: non-zero makes every stage
                               callback first sleep a pseudo-random 0..200
                               us, to show results do not depend on thread
                               timing; 0 = off */
  /* Appended in version 2 (seq, max_grad_norm and dropout_seed for gpt
   * only; resmlp takes replicas too, in one process): */
  int32_t seq;              /* T tokens per sequence; batch counts
                               sequences */
  int32_t replicas;         /* R data-parallel replicas (0 = 1); replica r
                               runs on devices r*p .. r*p + p - 1 and takes
                               batch / R sequences; R m must divide batch */
  float max_grad_norm;      /* > 0: clip the global gradient norm */
  uint64_t dropout_seed;    /* keys the dropout masks */
  /* Appended in version 3: */
  bt_comm_t *comm;          /* NULL = one process; else the job
                               (<baton/comm.h>): devices lists the whole
                               job's devices, this rank runs its share, and
                               every rank must pass the same config */
  /* Appended in version 4: */
  bt_backend_t *backend;    /* NULL = CPU devices; else where the stages
                               run (bt_cuda_backend_create, <baton/cuda.h>):
                               devices must equal its device count; resmlp
                               only, one process.  See bt_trainer_sync. */
  int32_t cuda_graph;       /* with a CUDA backend: the second step is
                               captured as one CUDA graph and later steps
                               replay it (the host enqueues nothing);
                               0 = off (the default) */
} bt_trainer_config_t;

#define BT_TRAINER_CONFIG_INIT                                                \
  { sizeof(bt_trainer_config_t), 32, 4, 2, 0, NULL, 0, NULL,                  \
    BT_CHECKPOINT_EXCEPT_LAST, BT_OPTIMIZER_SGD, 0.1f, 0.0f, 0.9f, 0.999f,    \
    1e-8f, 0, 0, NULL, 0, 0, 1, 0.0f, 0, NULL, NULL, 0 }

/* Partitions the model (measuring layer times when balance is NULL),
 * plans the schedule and instantiates the step.  The model must outlive
 * the trainer.  Errors say what to fix: a balance that does not cover the
 * layers, N not divisible by m, more stages than layers, a schedule that
 * refuses (BT_EUNSUPPORTED), BT_ENOMEM. */
BT_API bt_status bt_trainer_create(bt_model_t *model,
                                   const bt_trainer_config_t *config,
                                   bt_trainer_t **out, bt_error_t *err);
BT_API void bt_trainer_destroy(bt_trainer_t *trainer);

/* Forward and backward of one batch (x [N, D], y [N] class indices),
 * pipelined; leaves the gradients in the model and the loss in *loss; no
 * optimizer step (so the parameters used and their gradients can be
 * inspected, e.g. for a dump). */
BT_API bt_status bt_trainer_backward(bt_trainer_t *trainer, const float *x,
                                     const int32_t *y, float *loss,
                                     bt_error_t *err);

/* The optimizer step on every parameter from the current gradients. */
BT_API bt_status bt_trainer_update(bt_trainer_t *trainer, bt_error_t *err);

/* With a backend (config.backend), the trainer keeps the parameters,
 * gradients and optimizer state on its devices: create copies the model's
 * parameters there, and backward and update change only the devices'
 * copies.  bt_trainer_sync copies parameters and gradients back into the
 * model, where bt_model_param, bt_model_save and the evaluation functions
 * read them (bt_trainer_save and bt_trainer_gather sync first).  Changes
 * made to the model after create are not seen by the trainer: create a
 * new one.  Without a backend, a no-op. */
BT_API bt_status bt_trainer_sync(bt_trainer_t *trainer, bt_error_t *err);

/* What the caller should know about how the trainer runs, or NULL: e.g.
 * that a backend runs fewer data-parallel replicas than asked (NCCL
 * refuses two ranks on one GPU, so replicas of one GPU run as one). */
BT_API const char *bt_trainer_note(const bt_trainer_t *trainer);

/* Frees a backend: after every trainer using it.  NULL is accepted. */
BT_API void bt_backend_destroy(bt_backend_t *backend);

/* bt_trainer_backward then bt_trainer_update. */
BT_API bt_status bt_trainer_step(bt_trainer_t *trainer, const float *x,
                                 const int32_t *y, float *loss,
                                 bt_error_t *err);

/* gpt: forward and backward of x, y [B,T] token ids (B = config.batch,
 * T = config.seq), pipelined over the replicas; leaves the gradients
 * (summed over a tie and the replicas, not yet clipped) in the model and
 * the batch's mean loss in *loss; no optimizer step.  The dropout masks of
 * the k-th call (counting both calls below) are keyed by step k. */
BT_API bt_status bt_trainer_backward_tokens(bt_trainer_t *trainer,
                                            const int32_t *x, const int32_t *y,
                                            float *loss, bt_error_t *err);

/* gpt: one whole training step, the clipping and the optimizer running
 * per stage inside the step's graph as soon as that stage's gradients are
 * final.  (bt_trainer_update after bt_trainer_backward_tokens does the
 * same, after the step.) */
BT_API bt_status bt_trainer_step_tokens(bt_trainer_t *trainer,
                                        const int32_t *x, const int32_t *y,
                                        float *loss, bt_error_t *err);

/* Across processes: whether this rank reads the batch's inputs (it runs a
 * first stage) and its labels or targets (a last stage); elsewhere they
 * may be NULL.  One process: both. */
BT_API void bt_trainer_needs_data(const bt_trainer_t *trainer, int *inputs,
                                  int *labels);

/* The rank that owns parameter `index` (bt_model_param order): it runs the
 * parameter's stage in replica 0, and only its copy is current after an
 * update (a tied wte: its embedding's rank). */
BT_API int32_t bt_trainer_param_rank(const bt_trainer_t *trainer,
                                     size_t index);

/* Collective (every rank calls it): rank 0 receives the value (and, with
 * grads, the gradient) of every parameter it does not own, so its model
 * is whole (for a dump, evaluation, sampling or a single-file save).
 * Other ranks' models are unchanged.  One process: nothing to do.
 * Errors as bt_comm_recv's. */
BT_API bt_status bt_trainer_gather(bt_trainer_t *trainer, int grads,
                                   bt_error_t *err);

/* Collective: a checkpoint of the trained model.  One process: one
 * safetensors file, as bt_model_save.  W ranks: each writes the
 * parameters it owns to PATH.rank<r>.safetensors and rank 0 writes PATH,
 * an index ({"weight_map": {name: file}}), which bt_model_load reads with
 * any number of ranks. */
BT_API bt_status bt_trainer_save(bt_trainer_t *trainer, const char *path,
                                 bt_error_t *err);

/* gpt with clipping: the last step's global gradient norm; else NaN. */
BT_API double bt_trainer_grad_norm(const bt_trainer_t *trainer);

/* The partition used: layers per stage, stages entries. */
BT_API int32_t bt_trainer_stages(const bt_trainer_t *trainer);
BT_API int32_t bt_trainer_stage_layers(const bt_trainer_t *trainer,
                                       int32_t stage);
BT_API const bt_plan_t *bt_trainer_plan(const bt_trainer_t *trainer);

/* Peak bytes of activations a device held in the last step (the measured
 * counterpart of the simulator's peak_mem), and the bytes one microbatch's
 * activations of a stage take (the simulator's M_B). */
BT_API double bt_trainer_peak_activation_bytes(const bt_trainer_t *trainer,
                                               int32_t device);
BT_API double bt_trainer_stage_activation_bytes(const bt_trainer_t *trainer,
                                                int32_t stage);

/* With trace on: the last step's task times (as bt_exec_slices); call with
 * slices NULL to get the count. */
BT_API bt_status bt_trainer_slices(const bt_trainer_t *trainer,
                                   bt_slice_t *slices, size_t *count);

#ifdef __cplusplus
}
#endif

#endif /* BATON_MODEL_H */
