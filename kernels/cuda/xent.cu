/* softmax cross-entropy, fp32, on CUDA: the loss and the gradient of the
 * logits, as a microbatch's share of the mean over the whole batch.
 *
 * One warp per row.  The loss is reduced without scratch and without
 * atomics, so it is the same on every run: the forward runs as a single
 * block whose warps take rows warp, warp + 32, ... and keep their row
 * losses' running sum in double (as the CPU does), then one thread adds
 * the 32 partial sums in order.  One block is one SM's bandwidth; the loss
 * is read for reporting, while the backward, the gradient the step needs,
 * spreads over the whole device.
 *
 * Labels are device memory, so the launchers cannot check them without a
 * synchronizing copy back; cuda_kernels.h says what happens to a bad one. */
#include <math.h>

#include "cuda_common.cuh"
#include "cuda_kernels.h"

/* ---- kernels ------------------------------------------------------------ */

static __device__ __forceinline__ bool
label_ok(int32_t y, size_t C)
{
  return y >= 0 && (uint64_t)y < (uint64_t)C;
}

/* The row's maximum (every lane gets it).  Subtracting it keeps every
 * exponent <= 0, so nothing overflows and the sum is >= 1.  fmaxf skips a
 * NaN as the CPU's comparison does (unless the NaN is z[0] there); either
 * way the NaN reaches the sum. */
static __device__ __forceinline__ float
row_max(const float *z, size_t C, int lane)
{
  float mx = -INFINITY;
  for (size_t i = lane; i < C; i += 32)
    mx = fmaxf(mx, z[i]);
  return warp_max(mx);
}

#define FWD_THREADS 1024 /* 32 warps: the single block */

static __global__ void __launch_bounds__(FWD_THREADS)
xent_fwd_kernel(float *loss, const float *__restrict__ logits,
                const int32_t *__restrict__ labels, size_t N, size_t C,
                size_t total_rows)
{
  __shared__ double part[FWD_THREADS / 32];
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  double acc = 0.0;

  for (size_t r = (size_t)warp; r < N; r += FWD_THREADS / 32) {
    const float *z = logits + r * C;
    int32_t y = labels[r];
    float mx = row_max(z, C, lane), sum = 0.0f;
    for (size_t i = lane; i < C; i += 32)
      sum += expf(z[i] - mx);
    sum = warp_sum(sum);
    /* -log softmax(z)[y] = log(sum exp(z - max)) + max - z[y]; a bad label
     * makes the loss NaN. */
    acc += label_ok(y, C) ? (double)(logf(sum) + (mx - z[y])) : (double)NAN;
  }
  if (lane == 0)
    part[warp] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = part[0];
    for (int w = 1; w < FWD_THREADS / 32; w++)
      total += part[w];
    *loss = (float)(total / (double)total_rows);
  }
}

/* dlogits = (softmax - onehot) / total_rows.  dlogits may be logits: the
 * row's maximum is reduced over the warp (all lanes' reads done) before
 * any lane writes, and then each lane reads an element just before it
 * writes the same element; no __restrict__ on those two. */
static __global__ void
xent_bwd_kernel(float *dlogits, const float *logits,
                const int32_t *__restrict__ labels, size_t N, size_t C,
                float scale)
{
  int lane = threadIdx.x % 32;
  size_t warp = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32,
         nwarps = (size_t)gridDim.x * blockDim.x / 32;

  for (size_t r = warp; r < N; r += nwarps) {
    const float *z = logits + r * C;
    float *d = dlogits + r * C;
    int32_t y = labels[r];

    if (!label_ok(y, C)) { /* the row shows the mistake */
      for (size_t i = lane; i < C; i += 32)
        d[i] = NAN;
      continue;
    }
    /* One expf per element: the exponentials go into d as they are
     * summed, then are scaled, as on the CPU. */
    float mx = row_max(z, C, lane), sum = 0.0f;
    for (size_t i = lane; i < C; i += 32) {
      float e = expf(z[i] - mx);
      d[i] = e;
      sum += e;
    }
    float k = scale / warp_sum(sum);
    for (size_t i = lane; i < C; i += 32) {
      float v = d[i] * k;
      d[i] = i == (size_t)y ? v - scale : v;
    }
  }
}

/* ---- launchers ---------------------------------------------------------- */

/* The CPU kernel's rules, without the label check. */
static bt_status
check_args(const float *logits, const int32_t *labels, size_t N, size_t C,
           size_t total_rows)
{
  size_t t;

  if (logits == NULL || labels == NULL || N == 0 || C == 0 || total_rows < N)
    return BT_EINVAL;
  if (!bt__cu_mul_fits(N, C, &t) || !bt__cu_mul_fits(t, sizeof(float), &t))
    return BT_ERANGE;
  return BT_OK;
}

extern "C" bt_status
bt__cu_xent_fwd(float *loss, const float *logits, const int32_t *labels,
                size_t N, size_t C, size_t total_rows, cudaStream_t stream)
{
  bt_status st;

  if (loss == NULL)
    return BT_EINVAL;
  if ((st = check_args(logits, labels, N, C, total_rows)) != BT_OK)
    return st;
  xent_fwd_kernel<<<1, FWD_THREADS, 0, stream>>>(loss, logits, labels, N, C,
                                                 total_rows);
  return bt__cu_launch_status();
}

#define BWD_THREADS 256 /* 8 warps, one row each */

extern "C" bt_status
bt__cu_xent_bwd(float *dlogits, const float *logits, const int32_t *labels,
                size_t N, size_t C, size_t total_rows, cudaStream_t stream)
{
  bt_status st;

  if (dlogits == NULL)
    return BT_EINVAL;
  if ((st = check_args(logits, labels, N, C, total_rows)) != BT_OK)
    return st;
  xent_bwd_kernel<<<bt__cu_blocks(N, BWD_THREADS / 32), BWD_THREADS, 0,
                    stream>>>(dlogits, logits, labels, N, C,
                              1.0f / (float)total_rows);
  return bt__cu_launch_status();
}
