/* baton: fp32 CUDA kernels (internal).
 *
 * The CUDA counterparts of kernels/cpu/kernels.h's GPT kernels, one .cu per
 * operation (embedding.cu, attention.cu, dropout.cu), each a kernels
 * section then its launchers.  Not part of the public API (bt__cu_ prefix);
 * built into the optional baton_cuda static library.
 *
 * The header is plain C and needs no CUDA include: streams are taken as
 * struct CUstream_st * (what cudaStream_t is) and cuBLAS handles as
 * struct cublasContext * (what cublasHandle_t is); NULL is the legacy
 * default stream.
 *
 * Common contract of every launcher, otherwise the CPU kernel's (same
 * arguments in the same order with the same meaning, same shapes, same
 * "writes" / "accumulates"):
 * - Every tensor argument is device memory the caller owns; sizes are host
 *   values.
 * - Arguments are checked before anything is enqueued: BT_EINVAL for a NULL
 *   pointer, a zero dimension or a bad hyperparameter, BT_ERANGE for a
 *   size that overflows (the CPU kernel's rules).  On such an error nothing
 *   has been enqueued and nothing written.
 * - Asynchronous: the work is enqueued on `stream` and the call returns;
 *   results are ready once the stream reaches that point.  The launchers
 *   allocate nothing (cuBLAS uses its handle's workspace) and never
 *   synchronize (the token check below copies nothing back either).
 * - Errors from CUDA or cuBLAS when enqueuing: BT_ENOMEM for out of memory
 *   (cudaErrorMemoryAllocation, CUBLAS_STATUS_ALLOC_FAILED), BT_EIO for
 *   anything else (a launch failure, an earlier kernel's sticky fault).  A
 *   fault during execution surfaces at the caller's next synchronization.
 * - Thread safe on disjoint outputs and distinct streams; a cuBLAS handle
 *   is used by one thread at a time (cuBLAS's rule).
 * - Deterministic: the same inputs give bitwise the same outputs on the
 *   same device and library versions (no atomics on floats). */
#ifndef BATON_KERNELS_CUDA_CUDA_KERNELS_H
#define BATON_KERNELS_CUDA_CUDA_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "baton/status.h"

#ifdef __cplusplus
extern "C" {
#endif

struct CUstream_st;   /* cudaStream_t */
struct cublasContext; /* cublasHandle_t */

/* ---- token + position embedding (kernels/cuda/embedding.cu) ---------------
 * x [B, T] token ids, wte [V, C], wpe [Tmax, C], out [B, T, C]:
 *   out[b,t,:] = wte[x[b,t],:] + wpe[t0 + t,:]   (bitwise the CPU's).
 * Token ids are device memory, so the launchers cannot check them without
 * a synchronizing copy back; they do not.  The caller validates tokens
 * (the pipeline checks every batch on the host at step start, where the
 * CPU kernel would), or runs bt__cu_embedding_check_tokens on the stream
 * first.  An out-of-range token is never a memory error: the forward
 * writes NaN to its row of out (so the mistake shows in the loss) and the
 * backward adds its row to nothing.  t0 + T > Tmax is BT_EINVAL, as on the
 * CPU. */

/* Writes out. */
bt_status bt__cu_embedding_fwd(float *out, const int32_t *x, const float *wte,
                               const float *wpe, size_t B, size_t T, size_t C,
                               size_t V, size_t Tmax, size_t t0,
                               struct CUstream_st *stream);

/* Accumulates dwte[x[b,t],:] += dout[b,t,:] and dwpe[t0+t,:] +=
 * dout[b,t,:], in the CPU kernel's order for every element (rows in
 * increasing b*T + t), so the result is bitwise the CPU's and the same on
 * every run: one block per distinct token (its first row) walks the rows
 * in order and adds the matching ones, one thread per (t, c) adds over b
 * in order.  Cost O((B*T)^2) token compares; fine for a microbatch. */
bt_status bt__cu_embedding_bwd(float *dwte, float *dwpe, const float *dout,
                               const int32_t *x, size_t B, size_t T, size_t C,
                               size_t V, size_t Tmax, size_t t0,
                               struct CUstream_st *stream);

/* Writes *bad (one device int) = 1 when any of the n tokens of x is
 * outside [0, V), else 0; the caller copies it back when it likes.
 * BT_EINVAL for a NULL pointer, n == 0 or V == 0. */
bt_status bt__cu_embedding_check_tokens(int32_t *bad, const int32_t *x,
                                        size_t n, size_t V,
                                        struct CUstream_st *stream);

/* ---- causal multi-head self-attention (kernels/cuda/attention.cu) ---------
 * qkv [B, T, 3C] (q | k | v per row, head h the slice [h*hs, (h+1)*hs) of
 * each, hs = C / nh), out [B, T, C], as the CPU kernel.  The GEMMs are fp32
 * cublasSgemmStridedBatched over the B*nh heads; a warp-per-row kernel
 * does the causal softmax (scale 1/sqrt(hs), exact zeros above the
 * diagonal) and its backward; small kernels permute between [B, T, 3, nh,
 * hs] and [B, nh, T, hs].
 *
 * The launchers set the handle's stream (cublasSetStream) and leave its
 * other settings alone: keep its math mode CUBLAS_DEFAULT_MATH or
 * CUBLAS_PEDANTIC_MATH for fp32 results (within 1e-4 relative of the CPU);
 * a TF32 mode trades that accuracy for speed.  The handle is the caller's.
 *
 * scratch is device memory of bt__cu_attention_scratch_bytes(B, T, C, nh)
 * bytes, in floats:
 *   att   [B, nh, T, T]   probabilities: the forward writes them, the
 *                         backward reads them (keep scratch from the
 *                         forward to the backward of the same microbatch),
 *   then workspace both overwrite:
 *   q, k, v [B, nh, T, hs] each, permuted;
 *   y     [B, nh, T, hs]  the heads' outputs (forward), dout permuted
 *                         (backward);
 *   datt  [B, nh, T, T]   (backward);
 *   dq, dk, dv [B, nh, T, hs] each (backward).
 * B*nh, T and hs must fit cuBLAS's int (BT_ERANGE otherwise). */

/* Bytes of scratch; 0 when a dimension is 0, C % nh != 0 or the size
 * does not fit in size_t. */
size_t bt__cu_attention_scratch_bytes(size_t B, size_t T, size_t C, size_t nh);

/* Writes out and scratch.  out must not alias qkv or scratch. */
bt_status bt__cu_attention_fwd(float *out, float *scratch, const float *qkv,
                               size_t B, size_t T, size_t C, size_t nh,
                               struct cublasContext *cublas,
                               struct CUstream_st *stream);

/* Writes dqkv [B, T, 3C] from dout [B, T, C], the forward's qkv and the
 * forward's scratch (att read, the workspace overwritten).  dqkv must not
 * alias dout, qkv or scratch. */
bt_status bt__cu_attention_bwd(float *dqkv, float *scratch, const float *dout,
                               const float *qkv, size_t B, size_t T, size_t C,
                               size_t nh, struct cublasContext *cublas,
                               struct CUstream_st *stream);

/* ---- dropout (kernels/cuda/dropout.cu) -------------------------------------
 * x, y [N, D], rows row_offset .. row_offset + N - 1 of the step's batch;
 * the mask is the CPU kernel's bit for bit (Philox4x32-10, key {seed lo,
 * seed hi}, counter {col / 4, row, step, layer}, word col % 4, u = (w >> 8)
 * * 2^-24, kept iff u >= p, scaled by 1.0f / (1.0f - p)), so the same
 * arguments give the same y on either device.  Same errors as the CPU's
 * (p outside [0, 1) BT_EINVAL; rows beyond 2^32 BT_ERANGE); p = 0 is a
 * copy.  y may alias x, dx may alias dy (exactly, not partially). */

/* Writes y = x * mask / (1 - p). */
bt_status bt__cu_dropout_fwd(float *y, const float *x, size_t N, size_t D,
                             float p, uint64_t seed, uint32_t step,
                             uint32_t layer, size_t row_offset,
                             struct CUstream_st *stream);

/* Writes dx = dy * mask / (1 - p), the forward's mask. */
bt_status bt__cu_dropout_bwd(float *dx, const float *dy, size_t N, size_t D,
                             float p, uint64_t seed, uint32_t step,
                             uint32_t layer, size_t row_offset,
                             struct CUstream_st *stream);

/* Philox4x32-10 on the device, for tests: out[i] (device, 4 * n words) =
 * the block for counter ctr[i] (device, 4 * n words) under key (host). */
bt_status bt__cu_philox4x32_10(uint32_t *out, const uint32_t *ctr,
                               const uint32_t key[2], size_t n,
                               struct CUstream_st *stream);

/* ---- linear: y = x W^T + b (kernels/cuda/linear.cu) ------------------------
 * x [N, IN], W [OUT, IN], b [OUT], y [N, OUT], as the CPU kernel.  The GEMMs
 * are fp32 cublasSgemm; the launchers set the handle's stream
 * (cublasSetStream) and leave its other settings alone: keep its math mode
 * CUBLAS_DEFAULT_MATH or CUBLAS_PEDANTIC_MATH for fp32 results (within 1e-4
 * relative of the CPU); a TF32 mode trades that accuracy for speed.  The
 * handle is the caller's; NULL is BT_EINVAL.  N, IN and OUT must fit
 * cuBLAS's int (BT_ERANGE otherwise). */

/* Writes y (the bias is broadcast into y, then the GEMM adds x W^T).  b may
 * be NULL (no bias).  y must not alias x or w. */
bt_status bt__cu_linear_fwd(float *y, const float *x, const float *w,
                            const float *b, size_t N, size_t IN, size_t OUT,
                            struct cublasContext *cublas,
                            struct CUstream_st *stream);

/* Writes dx = dy W, dx [N, IN], dy [N, OUT]. */
bt_status bt__cu_linear_bwd_input(float *dx, const float *dy, const float *w,
                                  size_t N, size_t IN, size_t OUT,
                                  struct cublasContext *cublas,
                                  struct CUstream_st *stream);

/* Accumulates dW += dy^T x (GEMM with beta = 1) and, when db is not NULL,
 * db += the sum of dy's rows (a column-sum kernel with a fixed reduction
 * order: bitwise the same on every run). */
bt_status bt__cu_linear_bwd_weight(float *dw, float *db, const float *dy,
                                   const float *x, size_t N, size_t IN,
                                   size_t OUT, struct cublasContext *cublas,
                                   struct CUstream_st *stream);

/* Both of the above; db may be NULL. */
bt_status bt__cu_linear_bwd(float *dx, float *dw, float *db, const float *dy,
                            const float *x, const float *w, size_t N, size_t IN,
                            size_t OUT, struct cublasContext *cublas,
                            struct CUstream_st *stream);

/* ---- GELU, tanh approximation (kernels/cuda/gelu.cu) -----------------------
 * y = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) over n elements, in
 * the CPU kernel's form (sigmoid of 2u, u clamped to +-40).  In place is
 * fine: y may be x, dx may be dy.  n * sizeof(float) overflowing size_t is
 * BT_ERANGE (the CPU kernel does not check it). */

bt_status bt__cu_gelu_fwd(float *y, const float *x, size_t n,
                          struct CUstream_st *stream);

/* Writes dx = dy * gelu'(x). */
bt_status bt__cu_gelu_bwd(float *dx, const float *dy, const float *x, size_t n,
                          struct CUstream_st *stream);

/* ---- LayerNorm over the last dimension (kernels/cuda/layernorm.cu) ---------
 * x, y [N, D]; gamma, beta [D]; biased variance, eps = 1e-5, as the CPU. */

#define BT__CU_LAYERNORM_EPS 1e-5f

/* Writes y, and mean and rstd ([N] each, device: the row's mean and
 * 1/sqrt(var + eps)), which the backward reads.  y must not alias x. */
bt_status bt__cu_layernorm_fwd(float *y, float *mean, float *rstd,
                               const float *x, const float *gamma,
                               const float *beta, size_t N, size_t D,
                               struct CUstream_st *stream);

/* Writes dx; accumulates dgamma and dbeta (a column-sum kernel with a
 * fixed reduction order, run before dx is written).  mean and rstd are
 * the forward's for the same x.  dx may alias dy, not x. */
bt_status bt__cu_layernorm_bwd(float *dx, float *dgamma, float *dbeta,
                               const float *dy, const float *x,
                               const float *gamma, const float *mean,
                               const float *rstd, size_t N, size_t D,
                               struct CUstream_st *stream);

/* ---- residual add (kernels/cuda/residual.cu) -------------------------------
 * y = a + b over n elements; y may alias a or b.  Bitwise the CPU's. */

bt_status bt__cu_residual_fwd(float *y, const float *a, const float *b,
                              size_t n, struct CUstream_st *stream);

/* Accumulates da += dy and db += dy; either (not both) may be NULL; da == db
 * adds dy twice; da or db equal to dy is BT_EINVAL (the CPU's rules). */
bt_status bt__cu_residual_bwd(float *da, float *db, const float *dy, size_t n,
                              struct CUstream_st *stream);

/* ---- softmax cross-entropy (kernels/cuda/xent.cu) --------------------------
 * logits [N, C], labels [N] (device int32) in [0, C), the loss the mean
 * over total_rows rows of -log softmax(logits)[label], as the CPU kernel;
 * total_rows < N is BT_EINVAL.  Differences from the CPU kernel:
 * - Labels are device memory and are not checked (that would need a
 *   synchronizing copy back).  The caller validates them on the host, or
 *   runs bt__cu_embedding_check_tokens(bad, labels, N, C, stream), which
 *   flags any value outside [0, C).  A bad label is never a memory error:
 *   the forward's loss becomes NaN and the backward writes NaN over the
 *   label's row of dlogits.
 * - The loss is written to device memory (one float), not the host: the
 *   launcher does not synchronize; the caller copies it back when the
 *   stream has reached it. */

/* Writes *loss (device) = (sum of the row losses, in double) / total_rows.
 * Runs as a single thread block (deterministic without scratch or float
 * atomics): one SM's bandwidth. */
bt_status bt__cu_xent_fwd(float *loss, const float *logits,
                          const int32_t *labels, size_t N, size_t C,
                          size_t total_rows, struct CUstream_st *stream);

/* Writes dlogits = (softmax(logits) - onehot(label)) / total_rows.
 * dlogits may alias logits. */
bt_status bt__cu_xent_bwd(float *dlogits, const float *logits,
                          const int32_t *labels, size_t N, size_t C,
                          size_t total_rows, struct CUstream_st *stream);

/* ---- optimizers (kernels/cuda/optim.cu) -------------------------------------
 * In place on w [n]; g [n] the step's gradient; the CPU kernels' formulas
 * and hyperparameter checks (lr and wd finite; AdamW: t >= 1, b1 and b2 in
 * [0, 1), eps >= 0 finite), with the CPU's roundings (cuda/optim.cu says
 * how). */

/* w -= lr * (g + wd * w). */
bt_status bt__cu_sgd_update(float *w, const float *g, size_t n, float lr,
                            float wd, struct CUstream_st *stream);

/* AdamW, m and v [n] the moments (zero before step 1), t the 1-based step;
 * the bias corrections 1/(1-b^t) are computed on the host in double. */
bt_status bt__cu_adamw_update(float *w, float *m, float *v, const float *g,
                              size_t n, float lr, float b1, float b2, float eps,
                              float wd, int64_t t, struct CUstream_st *stream);

#ifdef __cplusplus
}
#endif

#endif /* BATON_KERNELS_CUDA_CUDA_KERNELS_H */
