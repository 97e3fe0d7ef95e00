/* baton: the residual-MLP test model and its single-device reference
 * (internal).
 *
 * The model, as pinned by the issue (every pipelined schedule's loss and
 * gradients are checked against this file's reference step):
 *
 *   h0 = in(x)                                   linear D -> H
 *   h(i+1) = h(i) + fc2(gelu(fc1(ln(h(i)))))     i = 0 .. L-1, E = 4H
 *   z = h(L) + h0   (long_skip)   or   z = h(L)
 *   logits = head(ln_head(z))                    linear H -> C
 *   loss = mean over the batch's N rows of -log softmax(logits)[y]
 *
 * LayerNorm with biased variance, eps 1e-5, gamma and beta; GELU with the
 * tanh approximation; natural log.  Linear weights are stored [out, in].
 *
 * Parameters, in this order (also their order in the flat blocks):
 *   in.w [H,D], in.b [H],
 *   for each block i: blk{i}.ln.g [H], blk{i}.ln.b [H], blk{i}.fc1.w [E,H],
 *                     blk{i}.fc1.b [E], blk{i}.fc2.w [H,E], blk{i}.fc2.b [H],
 *   head.ln.g [H], head.ln.b [H], head.w [C,H], head.b [C].
 *
 * Layers, for partitioning into stages: layer 0 is `in`, layer 1 + i is
 * `blk{i}`, layer L + 1 is `head` (L + 2 layers).  Each layer's tensors
 * are consecutive in the table and in the flat blocks, so a range of
 * layers owns one contiguous slice of params and grads.
 *
 * Initialization (bt__resmlp_create): counter-based, element k of the
 * flat parameter block of a linear weight with fan-in F is
 * (2u - 1) / sqrtf(F), u from splitmix64 output k of seed, exactly as
 * params.h gives the formula (reproducible on every IEEE-754 platform
 * that evaluates float in float).  Biases and LayerNorm betas are 0,
 * LayerNorm gammas 1.  Fan-ins: in.w D, fc1.w H, fc2.w E, head.w H.
 *
 * Threads: a model's parameters are read by the layer functions and
 * written by the optimizer functions; gradients are accumulated by the
 * backward functions.  Calls on different layers touch disjoint slices and
 * may run on different threads at once (as pipeline stages do); calls on
 * the same layer must be serialized by the caller. */
#ifndef BATON_MODEL_RESMLP_H
#define BATON_MODEL_RESMLP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "baton/status.h"
#include "params.h"

/* Model shape.  D inputs, H hidden width (blocks widen to E = 4H), C
 * classes, L blocks (0 allowed), long_skip adds h0 to z before the head. */
struct bt__resmlp_config {
  size_t D, H, C, L;
  bool long_skip;
};

#define BT__RESMLP_NAME_MAX BT__PARAMS_NAME_MAX

/* The table and the blocks are params.h's members, read directly
 * (m->params, m->tensors, ...) or as m->table by params.h's functions:
 *   nlayers L + 2, ntensors 2 + 6L + 4, nparams, params and grads
 *   [nparams], tensors [ntensors] in the order above, layer_tensor
 *   [nlayers + 1]. */
struct bt__resmlp {
  struct bt__resmlp_config cfg;
  size_t E; /* 4H */
  union {
    struct bt__params table;
    struct {
      BT__PARAMS_MEMBERS
    };
  };
};

/* Creates a model with parameters initialized from seed (see above) and
 * gradients zero.  BT_EINVAL (with detail in err) for a NULL argument or a
 * zero D, H or C; BT_ERANGE when the sizes overflow; BT_ENOMEM.  On
 * failure *out is NULL. */
bt_status bt__resmlp_create(const struct bt__resmlp_config *cfg,
                            uint64_t seed, struct bt__resmlp **out,
                            bt_error_t *err);

/* Frees the model; NULL is accepted. */
void bt__resmlp_destroy(struct bt__resmlp *m);

/* The tensor named name, or NULL. */
const struct bt__params_tensor *
bt__resmlp_find(const struct bt__resmlp *m, const char *name);

/* Sets every gradient to 0. */
void bt__resmlp_zero_grad(struct bt__resmlp *m);

/* ---- layers ----------------------------------------------------------------
 * One microbatch of R rows through one layer.  Scratch is the caller's:
 * bt__resmlp_layer_scratch_bytes(m, layer, R) bytes, aligned at least as
 * malloc aligns, one region per (layer, microbatch) in flight.  The forward
 * fills it; the backward reads it, and the input-grad half writes into it
 * what the weight-grad half needs.  Inputs are copied into scratch, so the
 * caller may reuse its `in` and `dout` buffers as soon as a call returns.
 * The same R must be given to all calls on one scratch, and each forward
 * is followed by at most one bwd_input (the head's overwrites its logits
 * with their gradient) and one bwd_weight after it.
 *
 * What each layer keeps in its scratch (floats unless said; each region
 * starts on a 64-byte boundary):
 *   in   (layer 0):  fwd: x [R,D].  bwd_input: dout [R,H].
 *   blk  (1..L):     fwd: h [R,H] (the input), ln mean [R], ln rstd [R],
 *                         u = ln(h) [R,H], p = fc1(u) [R,E], a = gelu(p)
 *                         [R,E].
 *                    bwd_input: dout [R,H], dp = dL/dp [R,E].
 *   head (L+1):      fwd: z [R,H] (the input), ln mean [R], ln rstd [R],
 *                         u = ln_head(z) [R,H], logits [R,C], labels [R]
 *                         int32.
 *                    bwd_input: dlogits [R,C] (over the logits).
 * The weight-grad half reads: in: x, dout; blk: u, a, dout, dp; head: u,
 * dlogits.
 *
 * Gradients: bwd_weight accumulates the linear layers' weight and bias
 * gradients (dW += dy^T x, db += sum of dy).  The LayerNorms' gamma and
 * beta gradients are accumulated by bwd_input (the kernel computes them
 * with dx, and they cost O(R H)), so a zero-bubble W pass has only GEMMs.
 * bwd = bwd_input then bwd_weight, with bitwise the same results.
 *
 * Errors (all of these): BT_EINVAL for NULL arguments, R == 0, a layer out
 * of range or of the wrong kind for the call, labels outside [0, C) or
 * total_rows < R; kernel errors pass through.  Synchronous, allocation
 * free; thread safety as said at the top. */

/* Scratch bytes for one microbatch of R rows at layer; 0 for a layer out
 * of range, R == 0, or a size that overflows size_t. */
size_t bt__resmlp_layer_scratch_bytes(const struct bt__resmlp *m,
                                      size_t layer, size_t R);

/* Forward of layer 0 .. L (in and the blocks): out [R,H] from in ([R,D]
 * for layer 0, [R,H] for a block).  out must not alias in.  The head is
 * bt__resmlp_head_fwd. */
bt_status bt__resmlp_layer_fwd(const struct bt__resmlp *m, size_t layer,
                               const float *in, float *out, void *scratch,
                               size_t R);

/* Forward of the head (layer L + 1): z [R,H] and labels [R] give
 * *loss = this microbatch's share of the mean cross-entropy, its rows'
 * losses summed and divided by total_rows (the whole batch's rows), so the
 * shares of all microbatches add up to the batch's loss. */
bt_status bt__resmlp_head_fwd(const struct bt__resmlp *m, const float *z,
                              const int32_t *labels, size_t total_rows,
                              void *scratch, size_t R, float *loss);

/* Input-gradient half of any layer's backward.
 *   in / blk: dout [R,H] is dL/d(out); writes din = dL/d(in) ([R,D] for
 *             layer 0, where din may be NULL to skip it, as nothing
 *             needs the gradient of x; [R,H] for a block).
 *   head:     starts from the loss: dout must be NULL; writes din = dL/dz
 *             [R,H], with the divisor total_rows (the forward's).
 * din must not alias dout.  Accumulates the LayerNorm gradients of a block
 * or the head. */
bt_status bt__resmlp_layer_bwd_input(struct bt__resmlp *m, size_t layer,
                                     const float *dout, float *din,
                                     void *scratch, size_t R,
                                     size_t total_rows);

/* Weight-gradient half: accumulates the layer's linear weight and bias
 * gradients from its scratch, after bwd_input on the same scratch. */
bt_status bt__resmlp_layer_bwd_weight(struct bt__resmlp *m, size_t layer,
                                      void *scratch, size_t R);

/* bwd_input then bwd_weight. */
bt_status bt__resmlp_layer_bwd(struct bt__resmlp *m, size_t layer,
                               const float *dout, float *din, void *scratch,
                               size_t R, size_t total_rows);

/* ---- the long skip ---------------------------------------------------------
 * With long_skip, the caller keeps (stashes) layer 0's output h0 [R,H] and
 * pops it before the head: z = h(L) + h0.  In the backward the head's din
 * (dz) is both dL/dh(L), handed to block L - 1 (or, with L = 0, is the
 * gradient of h(L) = h0 itself), and a second contribution to dL/dh0:
 *   fwd: bt__resmlp_long_skip_fwd(m, z, hL, h0, R)    z = hL + h0
 *   bwd: bt__resmlp_long_skip_bwd(m, dh0, dz, R)      dh0 += dz
 * where dh0 is dL/dh0 from block 0's bwd_input (with L = 0: a copy of dz),
 * before it goes to layer 0's backward.  z may alias hL or h0; dh0 must
 * not alias dz.  BT_EINVAL for NULL pointers, R == 0, or a model without
 * long_skip. */
bt_status bt__resmlp_long_skip_fwd(const struct bt__resmlp *m, float *z,
                                   const float *hL, const float *h0,
                                   size_t R);
bt_status bt__resmlp_long_skip_bwd(const struct bt__resmlp *m, float *dh0,
                                   const float *dz, size_t R);

/* ---- on a backend -----------------------------------------------------------
 * The layer functions above, with the kernels of a backend (backend.h) on
 * device ctx: m is then a view of the model whose params and grads point
 * into the backend's memory (only the layers called need to be there), as
 * do every tensor and scratch argument, loss included.  Labels are checked
 * only on a host backend (K->host); on a device the caller checks them
 * before they are uploaded.  Asynchronous on an asynchronous backend:
 * arguments are checked, the kernels enqueued.  The functions above are
 * these on bt__cpu_kern. */
struct bt__kern;
bt_status bt__resmlp_layer_fwd_on(const struct bt__kern *K, void *ctx,
                                  const struct bt__resmlp *m, size_t layer,
                                  const float *in, float *out, void *scratch,
                                  size_t R);
bt_status bt__resmlp_head_fwd_on(const struct bt__kern *K, void *ctx,
                                 const struct bt__resmlp *m, const float *z,
                                 const int32_t *labels, size_t total_rows,
                                 void *scratch, size_t R, float *loss);
bt_status bt__resmlp_layer_bwd_input_on(const struct bt__kern *K, void *ctx,
                                        struct bt__resmlp *m, size_t layer,
                                        const float *dout, float *din,
                                        void *scratch, size_t R,
                                        size_t total_rows);
bt_status bt__resmlp_layer_bwd_weight_on(const struct bt__kern *K, void *ctx,
                                         struct bt__resmlp *m, size_t layer,
                                         void *scratch, size_t R);
bt_status bt__resmlp_long_skip_fwd_on(const struct bt__kern *K, void *ctx,
                                      const struct bt__resmlp *m, float *z,
                                      const float *hL, const float *h0,
                                      size_t R);
bt_status bt__resmlp_long_skip_bwd_on(const struct bt__kern *K, void *ctx,
                                      const struct bt__resmlp *m, float *dh0,
                                      const float *dz, size_t R);

/* ---- the reference step ----------------------------------------------------
 * Zeroes the gradients, then for each of the microbatches in order (rows
 * [k N/m, (k+1) N/m) of x [N,D] and y [N]) runs the forward of every layer
 * and then the backward of every layer (fused bwd, from the head down),
 * accumulating gradients, with the cross-entropy's divisor N; *loss is the
 * sum of the microbatches' shares, added in microbatch order in float.  No
 * optimizer.  BT_EINVAL (detail in err) for NULL arguments, N == 0,
 * microbatches == 0 or not dividing N, or a label outside [0, C);
 * BT_ENOMEM.  Allocates its buffers per call. */
bt_status bt__resmlp_reference_step(struct bt__resmlp *m, const float *x,
                                    const int32_t *y, size_t N,
                                    size_t microbatches, float *loss,
                                    bt_error_t *err);

/* ---- optimizers ------------------------------------------------------------
 * Over every parameter with the step's gradients (the kernels'
 * bt__sgd_update and bt__adamw_update on the whole flat block; params.h's
 * bt__params_sgd and bt__params_adamw). */

/* w -= lr * g (no weight decay). */
bt_status bt__resmlp_sgd(struct bt__resmlp *m, float lr);

/* AdamW's moments: struct bt__params_adamw_state (params.h). */
/* Allocates zeroed moments for m (BT_ENOMEM); deinit frees them (a
 * zeroed or deinited state is accepted). */
bt_status bt__resmlp_adamw_init(const struct bt__resmlp *m,
                                struct bt__params_adamw_state *state);
void bt__resmlp_adamw_deinit(struct bt__params_adamw_state *state);

/* One AdamW step t (1-based) with decoupled weight decay wd on every
 * parameter; hyperparameter errors as bt__adamw_update's. */
bt_status bt__resmlp_adamw(struct bt__resmlp *m, float lr, float b1,
                           float b2, float eps, float wd, int64_t t,
                           struct bt__params_adamw_state *state);

/* ---- files -----------------------------------------------------------------
 * safetensors (see <baton/safetensors.h>), written atomically. */

/* A dump for checking one step against another implementation: x [N,D]
 * F32, y [N] I32, loss [1] F32, then for each parameter in order
 * p.NAME (its value) and g.NAME (its gradient), F32 with the parameter's
 * shape.  Errors as bt_st_save's. */
bt_status bt__resmlp_dump(const struct bt__resmlp *m, const char *path,
                          const float *x, const int32_t *y, size_t N,
                          float loss, bt_error_t *err);

/* A checkpoint: every parameter under its own name, F32, in order.
 * Errors as bt_st_save's. */
bt_status bt__resmlp_save(const struct bt__resmlp *m, const char *path,
                          bt_error_t *err);

/* Loads a checkpoint into m's parameters (gradients untouched).  The file
 * must hold exactly m's tensors, each F32 with m's shape.  Errors as
 * bt_st_load's, and BT_EINVAL naming the file and the tensor for a missing
 * tensor, a wrong dtype or shape, or a tensor m does not have (a
 * checkpoint of another config); on any error m is unchanged. */
bt_status bt__resmlp_load(struct bt__resmlp *m, const char *path,
                          bt_error_t *err);

#endif /* BATON_MODEL_RESMLP_H */
