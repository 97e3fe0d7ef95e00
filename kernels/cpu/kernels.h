/* baton: fp32 CPU kernels (internal).
 *
 * One operation per file (linear.c, gelu.c, layernorm.c, residual.c,
 * xent.c, sgd.c, adamw.c, embedding.c, attention.c, dropout.c), each a
 * kernels section then its launchers.  The
 * launchers are what the rest of baton calls; they are not part of the
 * public API (bt__ prefix, hidden in the shared library).
 *
 * Common contract of every launcher:
 * - Tensors are dense, row-major fp32 arrays owned by the caller.  Shapes
 *   use N for rows (the microbatch's B*T tokens), IN/OUT for a linear's
 *   features, D for the normalized dimension, C for classes, n for a flat
 *   element count.
 * - Returns BT_OK, BT_EINVAL for a NULL pointer that is not documented as
 *   optional, a zero dimension (always a wiring mistake: a microbatch has
 *   rows, a layer has features) or a bad hyperparameter, and BT_ERANGE when
 *   a shape's element count does not fit in size_t or, for the GEMMs, a
 *   dimension exceeds BLAS's int.  On an error nothing has been written.
 * - Synchronous; nothing is allocated.  Scratch the backward needs (the
 *   layernorm's mean and rstd) is the caller's, written by the forward.
 * - Thread safe on disjoint outputs: the pipeline runs different stages on
 *   different threads at once.
 * - "Writes" overwrites an output; "accumulates" adds into it (+=), so the
 *   caller zeroes it once per step and every microbatch adds its share.
 *   Parameter gradients always accumulate; input gradients are written,
 *   except the residual's, which accumulates (see there).
 * - Outputs may alias inputs only where stated. */
#ifndef BATON_KERNELS_CPU_KERNELS_H
#define BATON_KERNELS_CPU_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "baton/status.h"

/* Makes OpenBLAS single-threaded once per process, before the first GEMM
 * (linear.c says why); every launcher that calls BLAS calls it first. */
void bt__blas_init(void);

/* ---- linear: y = x W^T + b (kernels/cpu/linear.c) -------------------------
 * x [N, IN], W [OUT, IN] (PyTorch's layout), b [OUT], y [N, OUT].  The GEMMs
 * run on OpenBLAS, single-threaded per call (linear.c says why; the first
 * call sets OpenBLAS's process-wide thread count to 1). */

/* Writes y.  b may be NULL (no bias).  y must not alias x or w. */
bt_status bt__linear_fwd(float *y, const float *x, const float *w,
                         const float *b, size_t N, size_t IN, size_t OUT);

/* Input gradient: writes dx = dy W, dx [N, IN], dy [N, OUT]. */
bt_status bt__linear_bwd_input(float *dx, const float *dy, const float *w,
                               size_t N, size_t IN, size_t OUT);

/* Weight gradient: accumulates dW += dy^T x and, when db is not NULL,
 * db += the sum of dy's rows.  Separate from the input gradient because
 * the zero-bubble schedules run it later. */
bt_status bt__linear_bwd_weight(float *dw, float *db, const float *dy,
                                const float *x, size_t N, size_t IN,
                                size_t OUT);

/* Both of the above, for schedules that do not split the backward.  db
 * may be NULL. */
bt_status bt__linear_bwd(float *dx, float *dw, float *db, const float *dy,
                         const float *x, const float *w, size_t N, size_t IN,
                         size_t OUT);

/* ---- GELU, tanh approximation (kernels/cpu/gelu.c) -------------------------
 * y = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), elementwise over n.
 * In place is fine: y may be x, dx may be dy. */

bt_status bt__gelu_fwd(float *y, const float *x, size_t n);

/* Writes dx = dy * gelu'(x). */
bt_status bt__gelu_bwd(float *dx, const float *dy, const float *x, size_t n);

/* ---- LayerNorm over the last dimension (kernels/cpu/layernorm.c) -----------
 * x, y [N, D]; gamma, beta [D]; biased variance, eps = 1e-5. */

#define BT__LAYERNORM_EPS 1e-5f

/* Writes y, and mean and rstd ([N] each: the row's mean and
 * 1/sqrt(var + eps)), which the backward reads.  y must not alias x. */
bt_status bt__layernorm_fwd(float *y, float *mean, float *rstd,
                            const float *x, const float *gamma,
                            const float *beta, size_t N, size_t D);

/* Writes dx; accumulates dgamma and dbeta.  mean and rstd are the
 * forward's for the same x.  dx may alias dy (each row of dy is read
 * before that row of dx is written), not x. */
bt_status bt__layernorm_bwd(float *dx, float *dgamma, float *dbeta,
                            const float *dy, const float *x,
                            const float *gamma, const float *mean,
                            const float *rstd, size_t N, size_t D);

/* ---- residual add (kernels/cpu/residual.c) ---------------------------------
 * y = a + b over n elements; y may alias a or b. */

bt_status bt__residual_fwd(float *y, const float *a, const float *b,
                           size_t n);

/* Accumulates da += dy and db += dy; either (not both) may be NULL.
 * Accumulating is what a skip needs: the skip's input x also feeds the
 * branch, so its gradient is the sum of both paths.  As the residual's
 * backward is the identity, a caller can hand dy straight to the branch's
 * backward, let that write dx, then call this with da = dx, db = NULL to
 * add the skip path, with no copy.  da and db must not alias dy
 * (BT_EINVAL when one is dy); da == db adds dy twice, as y = a + a needs. */
bt_status bt__residual_bwd(float *da, float *db, const float *dy, size_t n);

/* ---- softmax cross-entropy (kernels/cpu/xent.c) ----------------------------
 * logits [N, C], labels [N] in [0, C).  The loss is the mean over the
 * whole batch's total_rows rows of -log softmax(logits)[label] (natural
 * log); a microbatch sees only its N rows, so these compute its share and
 * the shares of all microbatches add up to the batch's loss and gradient.
 * total_rows < N is BT_EINVAL; so is a label outside [0, C), checked before
 * anything is written. */

/* Writes *loss = (sum of this microbatch's row losses) / total_rows. */
bt_status bt__xent_fwd(float *loss, const float *logits,
                       const int32_t *labels, size_t N, size_t C,
                       size_t total_rows);

/* Writes dlogits = (softmax(logits) - onehot(label)) / total_rows,
 * recomputing the softmax from the logits (no scratch).  dlogits may alias
 * logits. */
bt_status bt__xent_bwd(float *dlogits, const float *logits,
                       const int32_t *labels, size_t N, size_t C,
                       size_t total_rows);

/* ---- optimizers (kernels/cpu/sgd.c, kernels/cpu/adamw.c) -------------------
 * In place on w [n]; g [n] is the step's gradient.  lr and wd must be
 * finite. */

/* w -= lr * (g + wd * w): weight decay as an L2 term in the gradient
 * (wd = 0 for none). */
bt_status bt__sgd_update(float *w, const float *g, size_t n, float lr,
                         float wd);

/* AdamW (Loshchilov & Hutter), decoupled weight decay:
 *   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
 *   mhat = m / (1-b1^t);  vhat = v / (1-b2^t);
 *   w -= lr * (mhat / (sqrt(vhat) + eps) + wd * w).
 * m and v [n] are the moments (zero before step 1), updated in place; t is
 * the 1-based step.  BT_EINVAL unless t >= 1, b1 and b2 in [0, 1),
 * eps >= 0. */
bt_status bt__adamw_update(float *w, float *m, float *v, const float *g,
                           size_t n, float lr, float b1, float b2, float eps,
                           float wd, int64_t t);

/* ---- token + position embedding (kernels/cpu/embedding.c) -----------------
 * x [B, T] token ids, wte [V, C] token table, wpe [Tmax, C] position table,
 * out [B, T, C]:  out[b,t,:] = wte[x[b,t],:] + wpe[t0 + t,:].  t0 is the
 * position of the microbatch's first column (0 unless a sequence is split
 * along T).  BT_EINVAL when a token is outside [0, V) or t0 + T > Tmax,
 * checked before anything is written. */

/* Writes out. */
bt_status bt__embedding_fwd(float *out, const int32_t *x, const float *wte,
                            const float *wpe, size_t B, size_t T, size_t C,
                            size_t V, size_t Tmax, size_t t0);

/* Accumulates dwte[x[b,t],:] += dout[b,t,:] and dwpe[t0+t,:] +=
 * dout[b,t,:].  The scatter-add runs in one fixed order (b, then t, one
 * thread), so repeated tokens add up in the same order every time and the
 * result is bitwise reproducible. */
bt_status bt__embedding_bwd(float *dwte, float *dwpe, const float *dout,
                            const int32_t *x, size_t B, size_t T, size_t C,
                            size_t V, size_t Tmax, size_t t0);

/* ---- causal multi-head self-attention (kernels/cpu/attention.c) -----------
 * The core between the qkv projection and the output projection.
 * qkv [B, T, 3C]: each row is q | k | v, each [C]; head h owns the
 * contiguous slice [h*hs, (h+1)*hs) of each, hs = C / nh (C % nh != 0 is
 * BT_EINVAL).  out [B, T, C] = the heads' outputs side by side:
 *   out_h = softmax(q_h k_h^T / sqrt(hs) + mask) v_h,
 * mask[i,j] = -inf for j > i (the probability there is exactly 0).  The
 * GEMMs run on OpenBLAS per (b, head), single-threaded as the linear's.
 *
 * scratch is the caller's, bt__attention_scratch_bytes(B, T, nh) bytes:
 * first att [B, nh, T, T], the probabilities, which the forward writes and
 * the backward reads (keep it from the forward to the backward of the same
 * microbatch), then T*T floats of workspace the backward overwrites. */

/* Bytes of scratch for one microbatch; 0 when a dimension is 0 or the
 * size does not fit in size_t. */
size_t bt__attention_scratch_bytes(size_t B, size_t T, size_t nh);

/* Writes out and att (scratch's head).  out must not alias qkv. */
bt_status bt__attention_fwd(float *out, float *scratch, const float *qkv,
                            size_t B, size_t T, size_t C, size_t nh);

/* Writes dqkv [B, T, 3C] from dout [B, T, C], the forward's qkv and the
 * forward's scratch (att is read, the workspace after it written).  dqkv
 * must not alias dout, qkv or scratch. */
bt_status bt__attention_bwd(float *dqkv, float *scratch, const float *dout,
                            const float *qkv, size_t B, size_t T, size_t C,
                            size_t nh);

/* ---- dropout (kernels/cpu/dropout.c) ---------------------------------------
 * x, y [N, D]; the microbatch's rows are the global rows row_offset ..
 * row_offset + N - 1 of the step's batch.  Element (row, col), row global,
 * is kept iff u >= p and then scaled by 1/(1-p) (computed in float as
 * 1.0f / (1.0f - p)), else zeroed, where u is drawn by Philox4x32-10
 * (Salmon et al., SC'11; Random123's philox4x32, 10 rounds):
 *   key     = { (uint32)seed, (uint32)(seed >> 32) }
 *   counter = { col / 4, (uint32)row, step, layer }
 *   w       = word (col % 4) of philox4x32_10(counter, key)
 *   u       = (float)(w >> 8) * 2^-24, in [0, 1), exact in float.
 * So a mask depends only on (seed, step, layer, global row, col): not on
 * how the batch is split into microbatches or data-parallel replicas, nor
 * on recomputation or the schedule.  Global rows must be < 2^32 and D
 * <= 2^34 (BT_ERANGE otherwise); masks repeat after 2^32 steps.
 * p in [0, 1), else BT_EINVAL; p = 0 is the identity.  Nothing is stored:
 * the backward redraws the same mask.  y may alias x, dx may alias dy. */

/* Writes y = x * mask / (1 - p). */
bt_status bt__dropout_fwd(float *y, const float *x, size_t N, size_t D,
                          float p, uint64_t seed, uint32_t step,
                          uint32_t layer, size_t row_offset);

/* Writes dx = dy * mask / (1 - p), the forward's mask for the same
 * arguments. */
bt_status bt__dropout_bwd(float *dx, const float *dy, size_t N, size_t D,
                          float p, uint64_t seed, uint32_t step,
                          uint32_t layer, size_t row_offset);

/* Philox4x32-10 itself: out = the block for counter ctr under key. */
void bt__philox4x32_10(uint32_t out[4], const uint32_t ctr[4],
                       const uint32_t key[2]);

/* ---- plain-C references (kernels/cpu/reference.c) --------------------------
 * The textbook loops, for tests and benchmarks to compare the kernels
 * against (the CUDA kernels too).  Same shapes and semantics (write or
 * accumulate) as the kernels; no argument checks; not in the library. */

void bt__ref_linear_fwd(float *y, const float *x, const float *w,
                        const float *b, size_t N, size_t IN, size_t OUT);
void bt__ref_linear_bwd(float *dx, float *dw, float *db, const float *dy,
                        const float *x, const float *w, size_t N, size_t IN,
                        size_t OUT);
void bt__ref_gelu_fwd(float *y, const float *x, size_t n);
void bt__ref_gelu_bwd(float *dx, const float *dy, const float *x, size_t n);
void bt__ref_layernorm_fwd(float *y, float *mean, float *rstd, const float *x,
                           const float *gamma, const float *beta, size_t N,
                           size_t D);
void bt__ref_layernorm_bwd(float *dx, float *dgamma, float *dbeta,
                           const float *dy, const float *x,
                           const float *gamma, const float *mean,
                           const float *rstd, size_t N, size_t D);
void bt__ref_residual_fwd(float *y, const float *a, const float *b, size_t n);
void bt__ref_residual_bwd(float *da, float *db, const float *dy, size_t n);
float bt__ref_xent_fwd(const float *logits, const int32_t *labels, size_t N,
                       size_t C, size_t total_rows);
void bt__ref_xent_bwd(float *dlogits, const float *logits,
                      const int32_t *labels, size_t N, size_t C,
                      size_t total_rows);
void bt__ref_sgd_update(float *w, const float *g, size_t n, float lr,
                        float wd);
void bt__ref_adamw_update(float *w, float *m, float *v, const float *g,
                          size_t n, float lr, float b1, float b2, float eps,
                          float wd, int64_t t);

void bt__ref_embedding_fwd(float *out, const int32_t *x, const float *wte,
                           const float *wpe, size_t B, size_t T, size_t C,
                           size_t t0);
void bt__ref_embedding_bwd(float *dwte, float *dwpe, const float *dout,
                           const int32_t *x, size_t B, size_t T, size_t C,
                           size_t t0);
/* att [B, nh, T, T] written by the forward, read by the backward. */
void bt__ref_attention_fwd(float *out, float *att, const float *qkv,
                           size_t B, size_t T, size_t C, size_t nh);
void bt__ref_attention_bwd(float *dqkv, const float *dout, const float *qkv,
                           const float *att, size_t B, size_t T, size_t C,
                           size_t nh);
/* An independent Philox4x32-10 and the per-element dropout built on it. */
void bt__ref_philox4x32_10(uint32_t out[4], const uint32_t ctr[4],
                           const uint32_t key[2]);
void bt__ref_dropout_fwd(float *y, const float *x, size_t N, size_t D,
                         float p, uint64_t seed, uint32_t step,
                         uint32_t layer, size_t row_offset);

/* ---- shared by the launchers ------------------------------------------- */

/* Whether a * b fits in size_t; when it does, *out is the product. */
static inline bool
bt__mul_fits(size_t a, size_t b, size_t *out)
{
  return !__builtin_mul_overflow(a, b, out);
}

#endif /* BATON_KERNELS_CPU_KERNELS_H */
