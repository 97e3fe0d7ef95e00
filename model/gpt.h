/* baton: the GPT test model (a GPT-2-style decoder) and its single-device
 * reference (internal).
 *
 * The model, as pinned by the issue (a pipelined GPT's loss and gradients
 * are checked against this file's reference step).  x [B,T] token ids in
 * [0, V), y [B,T] target ids in [0, V); row r = b*T + t of the batch is
 * token t of sequence b (the "global row"):
 *
 *   h = drop(wte[x] + wpe[0..T), 0)                      T <= Tmax
 *   for each block i = 0 .. L-1 (pre-LN):
 *     a   = ln1(h)
 *     qkv = a W_qkv^T + b_qkv                            [R,3C], q | k | v
 *     y   = causal softmax(q_h k_h^T / sqrt(C/nh)) v_h   per head h, heads
 *                                                        split C into nh
 *                                                        contiguous slices
 *     h  += drop(y W_ap^T + b_ap, 1 + 2i)                attn.proj
 *     h  += drop(gelu(ln2(h) W_fc^T + b_fc) W_mp^T + b_mp, 2 + 2i)
 *   logits = lnf(h) wte^T  (tied, the default)  or  lnf(h) head.w^T
 *   loss   = mean over all B*T rows of -log softmax(logits)[y]
 *
 * LayerNorm with biased variance, eps 1e-5, gamma and beta; GELU with the
 * tanh approximation; natural log; no bias on the logits.  Linear weights
 * are stored [out, in].
 *
 * Dropout: drop(v, id) is the Philox dropout kernel (kernels.h,
 * bt__dropout_fwd) with probability cfg.dropout, keyed by (seed, step,
 * layer = id, global row, column): id 0 is the embedding sum, id 1 + 2i
 * block i's attention projection output, id 2 + 2i block i's MLP
 * projection output (GPT-2's three places).  Because the row is the
 * batch's global row b*T + t, the masks do not depend on how the batch is
 * split into microbatches.  With dropout 0 nothing is drawn (identity).
 *
 * Parameters, in this order (also their order in the flat blocks):
 *   wte [V,C], wpe [Tmax,C],
 *   for each block i: blk{i}.ln1.g [C], blk{i}.ln1.b [C],
 *     blk{i}.attn.qkv.w [3C,C], blk{i}.attn.qkv.b [3C],
 *     blk{i}.attn.proj.w [C,C], blk{i}.attn.proj.b [C],
 *     blk{i}.ln2.g [C], blk{i}.ln2.b [C],
 *     blk{i}.mlp.fc.w [4C,C], blk{i}.mlp.fc.b [4C],
 *     blk{i}.mlp.proj.w [C,4C], blk{i}.mlp.proj.b [C],
 *   lnf.g [C], lnf.b [C], and head.w [V,C] only when untied.
 *
 * Layers, for partitioning into stages: layer 0 is `embed` (wte, wpe),
 * layer 1 + i is `blk{i}`, layer L + 1 is `head` (lnf, and head.w when
 * untied; it computes the loss); L + 2 layers.  Each layer's tensors are
 * consecutive in the table and in the flat blocks.
 *
 * Tying: with cfg.tied the head's logits weight IS wte, which the embed
 * layer owns.  Here, on one device, the head reads wte's parameters and
 * its weight-grad half accumulates into wte's gradient, so after a step
 * g.wte = (the embedding's scatter-add) + (the head's dlogits^T lnf(h)),
 * the sum of both uses.  The embed and head layers then share that slice,
 * so with tying their calls must not run at once.  (The pipelined version
 * keeps a copy of wte on the head's stage and sums the two gradients.)
 *
 * Initialization (bt__gpt_create), counter-based as params.h gives the
 * formula: element k of the flat parameter block of a matrix with fan-in
 * F is (2u - 1) / sqrtf(F), u from splitmix64 output k of seed.  Fan-ins:
 * wte, wpe and head.w C (their rows are C-vectors), attn.qkv.w C,
 * attn.proj.w C, mlp.fc.w C, mlp.proj.w 4C.  Biases and betas 0, gammas
 * 1.
 *
 * Threads: as resmlp's, calls on different layers touch disjoint slices
 * (except embed and head when tied, above); calls on one layer must be
 * serialized by the caller. */
#ifndef BATON_MODEL_GPT_H
#define BATON_MODEL_GPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "baton/status.h"
#include "params.h"

/* Model shape: V vocabulary, C channels (C % nh == 0), nh heads, L blocks
 * (0 allowed), Tmax positions, tied head, dropout probability in [0, 1). */
struct bt__gpt_config {
  size_t V, C, nh, L, Tmax;
  bool tied;
  float dropout;
};

/* Tied, no dropout. */
#define BT__GPT_CONFIG_INIT(V_, C_, nh_, L_, Tmax_)                            \
  ((struct bt__gpt_config){(V_), (C_), (nh_), (L_), (Tmax_), true, 0.0f})

#define BT__GPT_NAME_MAX BT__PARAMS_NAME_MAX

/* The table and the blocks are params.h's members, read directly
 * (m->params, m->tensors, ...) or as m->table by params.h's functions:
 *   nlayers L + 2, ntensors 2 + 12L + 2 (+ 1 untied), nparams, params and
 *   grads [nparams], tensors [ntensors] in the order above, layer_tensor
 *   [nlayers + 1]. */
struct bt__gpt {
  struct bt__gpt_config cfg;
  union {
    struct bt__params table;
    struct {
      BT__PARAMS_MEMBERS
    };
  };
  /* Tied only: the head's own copy of wte and of its gradient, [V,C]
   * each, owned by whoever sets them (the pipelined trainer, when embed and
   * head are on different stages, so the two never share memory); NULL =
   * the head uses wte's slice of the blocks, as documented above. */
  float *head_wte, *head_gwte;
};

/* Creates a model with parameters initialized from seed and gradients
 * zero.  BT_EINVAL (detail in err) for a NULL argument, a zero V, C, nh or
 * Tmax, C not a multiple of nh, or dropout outside [0, 1); BT_ERANGE when
 * the sizes overflow; BT_ENOMEM.  On failure *out is NULL. */
bt_status bt__gpt_create(const struct bt__gpt_config *cfg, uint64_t seed,
                         struct bt__gpt **out, bt_error_t *err);

/* Frees the model; NULL is accepted. */
void bt__gpt_destroy(struct bt__gpt *m);

/* The tensor named name, or NULL. */
const struct bt__params_tensor *bt__gpt_find(const struct bt__gpt *m,
                                          const char *name);

/* Sets every gradient to 0. */
void bt__gpt_zero_grad(struct bt__gpt *m);

/* ---- layers ----------------------------------------------------------------
 * One microbatch through one layer: mb->B whole sequences of mb->T tokens,
 * R = B*T rows, [R,C] activations.  mb->row0 is the global row of its
 * first token (b0*T for a microbatch starting at sequence b0), and seed
 * and step key the dropout masks; the same *mb must be given to every call
 * on one scratch (the backward redraws the forward's masks).
 *
 * Scratch is the caller's: bt__gpt_layer_scratch_bytes(m, layer, B, T)
 * bytes, aligned at least as malloc aligns, one region per (layer,
 * microbatch) in flight.  Each forward is followed by at most one
 * bwd_input and one bwd_weight after it.  Inputs are copied into scratch,
 * so the caller may reuse `in` and `dout` as soon as a call returns.
 *
 * What each layer keeps (floats unless said; 64-byte aligned regions):
 *   embed (0):    fwd: x [R] int32.  bwd_input: ds [R,C], dL/d(wte[x] +
 *                 wpe), the dropout undone.
 *   blk (1..L):   fwd: h [R,C] (the input), ln1 mean, rstd [R], a1 =
 *                 ln1(h) [R,C], qkv [R,3C], the attention kernel's scratch
 *                 (att [B,nh,T,T] and its workspace), y [R,C] (heads'
 *                 output), h2 = h + drop(proj(y)) [R,C], ln2 mean, rstd
 *                 [R], a2 = ln2(h2) [R,C], p = fc(a2) [R,4C], g = gelu(p)
 *                 [R,4C].
 *                 bwd_input: dmo [R,C] (dL/d mlp.proj's output), dp
 *                 [R,4C] (dL/dp), dao [R,C] (dL/d attn.proj's output),
 *                 dqkv [R,3C], and a [R,C] workspace.
 *   head (L+1):   fwd: h [R,C], lnf mean, rstd [R], u = lnf(h) [R,C],
 *                 logits [R,V], labels [R] int32.
 *                 bwd_input: dlogits [R,V] over the logits.
 * The weight-grad half reads: embed: x, ds; blk: a1, dqkv, y, dao, a2, dp,
 * g, dmo; head: u, dlogits.
 *
 * Gradients: bwd_weight accumulates the linear weights' and biases'
 * gradients, and the embed layer's wte and wpe (scatter-add); the
 * LayerNorms' gamma and beta gradients are accumulated by bwd_input.
 * With tying the head's bwd_weight accumulates into wte's gradient.
 *
 * Errors: BT_EINVAL for NULL arguments, B or T == 0, T > Tmax, a layer out
 * of range or of the wrong kind for the call, tokens or labels outside
 * [0, V), total_rows < R; kernel errors pass through.  Synchronous,
 * allocation free. */

/* Dropout keying and shape of one microbatch. */
struct bt__gpt_mb {
  size_t B, T;   /* sequences, tokens per sequence */
  size_t row0;   /* global row of the first token */
  uint64_t seed; /* dropout key */
  uint32_t step; /* dropout counter word */
};

/* Scratch bytes for one microbatch of B sequences of T tokens at layer; 0
 * for a layer out of range, B or T == 0, or a size that overflows. */
size_t bt__gpt_layer_scratch_bytes(const struct bt__gpt *m, size_t layer,
                                   size_t B, size_t T);

/* Forward of the embed layer: out [R,C] from the token ids x [B,T]. */
bt_status bt__gpt_embed_fwd(const struct bt__gpt *m, const int32_t *x,
                            float *out, void *scratch,
                            const struct bt__gpt_mb *mb);

/* Forward of block layer (1 .. L): out [R,C] from in [R,C]; out must not
 * alias in. */
bt_status bt__gpt_layer_fwd(const struct bt__gpt *m, size_t layer,
                            const float *in, float *out, void *scratch,
                            const struct bt__gpt_mb *mb);

/* Forward of the head (layer L + 1): h [R,C] and targets y [B,T] give
 * *loss = this microbatch's share of the mean cross-entropy, its rows'
 * losses summed and divided by total_rows (the whole batch's B*T). */
bt_status bt__gpt_head_fwd(const struct bt__gpt *m, const float *h,
                           const int32_t *y, size_t total_rows, void *scratch,
                           const struct bt__gpt_mb *mb, float *loss);

/* Input-gradient half of any layer's backward.
 *   embed: dout [R,C] = dL/d(out); din must be NULL (token ids have no
 *          gradient).
 *   blk:   dout [R,C]; writes din = dL/d(in) [R,C].
 *   head:  dout must be NULL (it starts from the loss); writes din =
 *          dL/dh [R,C], with the forward's divisor total_rows.
 * din must not alias dout. */
bt_status bt__gpt_layer_bwd_input(struct bt__gpt *m, size_t layer,
                                  const float *dout, float *din, void *scratch,
                                  const struct bt__gpt_mb *mb,
                                  size_t total_rows);

/* Weight-gradient half, after bwd_input on the same scratch. */
bt_status bt__gpt_layer_bwd_weight(struct bt__gpt *m, size_t layer,
                                   void *scratch, const struct bt__gpt_mb *mb);

/* bwd_input then bwd_weight. */
bt_status bt__gpt_layer_bwd(struct bt__gpt *m, size_t layer, const float *dout,
                            float *din, void *scratch,
                            const struct bt__gpt_mb *mb, size_t total_rows);

/* ---- the reference step ----------------------------------------------------
 * Zeroes the gradients, then for each of the microbatches in order
 * (sequences [k B/m, (k+1) B/m) of x [B,T] and y [B,T], row0 = k (B/m) T)
 * runs the forward of every layer and then the fused backward of every
 * layer from the head down, accumulating gradients, with the
 * cross-entropy's divisor B*T; *loss is the sum of the shares, added in
 * microbatch order in float.  Dropout keyed by (seed, step).  No
 * optimizer.  BT_EINVAL (detail in err) for NULL arguments, B or T == 0,
 * T > Tmax, microbatches == 0 or not dividing B, or an id outside [0, V);
 * BT_ENOMEM.  Allocates its buffers per call. */
bt_status bt__gpt_reference_step(struct bt__gpt *m, const int32_t *x,
                                 const int32_t *y, size_t B, size_t T,
                                 size_t microbatches, uint64_t seed,
                                 uint32_t step, float *loss, bt_error_t *err);

/* ---- inference -------------------------------------------------------------
 * Forward only, without dropout whatever cfg.dropout is (evaluation mode),
 * on the layer forwards above; gradients untouched.  Both take a const
 * model, so calls may run concurrently with each other (not with a step
 * or an optimizer that writes the parameters).  Each allocates its buffers
 * per call. */

/* logits [B,V] = the logits lnf(h) W^T (W = wte tied, head.w untied) at
 * the LAST position T - 1 of each of the B sequences x [B,T]; by
 * causality these are the next-token logits after each whole sequence.
 * BT_EINVAL (detail in err) for NULL arguments, B or T == 0, T > Tmax or a
 * token outside [0, V); BT_ERANGE when the sizes overflow; BT_ENOMEM;
 * kernel errors pass through. */
bt_status bt__gpt_logits(const struct bt__gpt *m, const int32_t *x, size_t B,
                         size_t T, float *logits, bt_error_t *err);

/* The mean cross-entropy of y [B,T] given x [B,T] over all B*T positions,
 * forward only with dropout off (evaluation), on the calling thread;
 * allocates its activations per call.  Gradients untouched.  Errors as
 * bt__gpt_logits's (a y outside [0, V) too). */
bt_status bt__gpt_eval_loss(const struct bt__gpt *m, const int32_t *x,
                            const int32_t *y, size_t B, size_t T, float *loss,
                            bt_error_t *err);

/* Samples n tokens into out [n] after prompt [nprompt], one at a time:
 * token i comes from bt__gpt_logits over the last min(len, Tmax) tokens of
 * prompt ++ out[0 .. i) (the whole window recomputed for each token), the
 * distribution softmax(logits / temperature), and the uniform
 * u_i = (splitmix64 output i of seed >> 11) * 2^-53 in [0, 1) (the formula
 * of params.h, counter-based): the first token whose cumulative
 * probability exceeds u_i.  Temperature 0 takes the argmax instead (the
 * first maximal logit) and draws nothing.  An empty prompt (nprompt 0,
 * prompt may be NULL) starts from the single token 10, the byte '\n'.
 * Deterministic in (model, prompt, n, temperature, seed).  BT_EINVAL
 * (detail in err) for a NULL model, out NULL with n > 0, prompt NULL with
 * nprompt > 0, a prompt token outside [0, V), an empty prompt with
 * V <= 10, or a temperature negative or not finite; other errors as
 * bt__gpt_logits'.  n == 0 does nothing. */
bt_status bt__gpt_generate(const struct bt__gpt *m, const int32_t *prompt,
                           size_t nprompt, size_t n, float temperature,
                           uint64_t seed, int32_t *out, bt_error_t *err);

/* ---- optimizers ------------------------------------------------------------
 * Over every parameter (a tied wte once, with its summed gradient):
 * params.h's bt__params_sgd and bt__params_adamw. */

/* w -= lr * g (no weight decay). */
bt_status bt__gpt_sgd(struct bt__gpt *m, float lr);

/* AdamW's moments: struct bt__params_adamw_state (params.h). */
/* Allocates zeroed moments (BT_ENOMEM); deinit frees them (a zeroed or
 * deinited state is accepted). */
bt_status bt__gpt_adamw_init(const struct bt__gpt *m,
                             struct bt__params_adamw_state *state);
void bt__gpt_adamw_deinit(struct bt__params_adamw_state *state);

/* One AdamW step t (1-based) with decoupled weight decay wd on every
 * parameter; hyperparameter errors as bt__adamw_update's. */
bt_status bt__gpt_adamw(struct bt__gpt *m, float lr, float b1, float b2,
                        float eps, float wd, int64_t t,
                        struct bt__params_adamw_state *state);

/* ---- files -----------------------------------------------------------------
 * safetensors (see <baton/safetensors.h>), written atomically. */

/* A dump for checking one step against another implementation: x [B,T]
 * I32, y [B,T] I32, loss [1] F32, then for each parameter in order p.NAME
 * and g.NAME, F32 with the parameter's shape (a tied g.wte is the summed
 * gradient).  Errors as bt_st_save's. */
bt_status bt__gpt_dump(const struct bt__gpt *m, const char *path,
                       const int32_t *x, const int32_t *y, size_t B, size_t T,
                       float loss, bt_error_t *err);

/* A checkpoint: every parameter under its own name, F32, in order. */
bt_status bt__gpt_save(const struct bt__gpt *m, const char *path,
                       bt_error_t *err);

/* Loads a checkpoint into m's parameters (gradients untouched).  The file
 * must hold exactly m's tensors, each F32 with m's shape; BT_EINVAL naming
 * the file and tensor otherwise, and m is unchanged on any error. */
bt_status bt__gpt_load(struct bt__gpt *m, const char *path, bt_error_t *err);

#endif /* BATON_MODEL_GPT_H */
