/* embedding: out = wte[token] + wpe[position], fp32, on CUDA.
 *
 * The forward is a gather, one thread per output element.  The backward
 * must add repeated tokens' rows in the CPU's order to be bitwise the
 * CPU's and reproducible, so it uses no atomics: the block of a token's
 * first row owns that token's gradient row and walks the later rows in
 * order, adding the matching ones; the position gradient has one thread
 * per (t, c) adding over b in order.  Tokens are not validated here
 * (cuda_kernels.h says why); a bad one yields NaN or is skipped, never an
 * out-of-bounds access. */
#include "cuda_common.cuh"
#include "cuda_kernels.h"

/* ---- kernels ------------------------------------------------------------ */

static __device__ __forceinline__ bool
token_ok(int32_t tok, size_t V)
{
  return tok >= 0 && (uint64_t)tok < (uint64_t)V;
}

static __global__ void
embedding_fwd_kernel(float *__restrict__ out, const int32_t *__restrict__ x,
                     const float *__restrict__ wte,
                     const float *__restrict__ wpe, size_t N, size_t T,
                     size_t C, size_t V, size_t t0)
{
  size_t total = N * C;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (size_t)gridDim.x * blockDim.x) {
    size_t n = i / C, c = i - n * C, t = n % T;
    int32_t tok = x[n];
    out[i] = token_ok(tok, V) ? wte[(size_t)tok * C + c] + wpe[(t0 + t) * C + c]
                              : __int_as_float(0x7fc00000); /* quiet NaN */
  }
}

/* One block per row n (grid-stride over rows).  The row's block owns the
 * token's gradient row when no earlier row has the same token; it then
 * adds every matching row from n on, in increasing order, each thread
 * keeping its channels' running sums in registers (fp32, the same
 * roundings as the CPU's += into memory). */
static __global__ void
embedding_bwd_wte_kernel(float *__restrict__ dwte,
                         const float *__restrict__ dout,
                         const int32_t *__restrict__ x, size_t N, size_t C,
                         size_t V)
{
  for (size_t n = blockIdx.x; n < N; n += gridDim.x) {
    int32_t tok = x[n];
    int seen = 0;
    for (size_t m = threadIdx.x; m < n; m += blockDim.x)
      seen |= x[m] == tok;
    /* Also a barrier: no thread of the block starts the next row's scan
     * while another still reads this one's (harmless, but keeps the
     * block's iterations in step). */
    if (__syncthreads_or(seen) || !token_ok(tok, V))
      continue;
    float *g = dwte + (size_t)tok * C;
    for (size_t c = threadIdx.x; c < C; c += blockDim.x) {
      float acc = g[c];
      for (size_t m = n; m < N; m++)
        if (x[m] == tok)
          acc += dout[m * C + c];
      g[c] = acc;
    }
  }
}

static __global__ void
embedding_bwd_wpe_kernel(float *__restrict__ dwpe,
                         const float *__restrict__ dout, size_t B, size_t T,
                         size_t C, size_t t0)
{
  size_t total = T * C;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (size_t)gridDim.x * blockDim.x) {
    size_t t = i / C, c = i - t * C;
    float *g = dwpe + (t0 + t) * C + c;
    float acc = *g;
    for (size_t b = 0; b < B; b++)
      acc += dout[(b * T + t) * C + c];
    *g = acc;
  }
}

/* Every thread that finds a bad token stores the same 1; the launcher's
 * memset before it is ordered by the stream. */
static __global__ void
check_tokens_kernel(int32_t *bad, const int32_t *__restrict__ x, size_t n,
                    size_t V)
{
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    if (!token_ok(x[i], V))
      *bad = 1;
}

/* ---- launchers ---------------------------------------------------------- */

/* The CPU kernel's shape rules, without the token check. */
static bt_status
check_args(size_t B, size_t T, size_t C, size_t V, size_t Tmax, size_t t0)
{
  size_t n, t;

  if (B == 0 || T == 0 || C == 0 || V == 0 || Tmax == 0)
    return BT_EINVAL;
  if (t0 > Tmax || T > Tmax - t0)
    return BT_EINVAL;
  if (!bt__cu_mul_fits(B, T, &n) || !bt__cu_mul_fits(n, C, &t) ||
      !bt__cu_mul_fits(V, C, &t) || !bt__cu_mul_fits(Tmax, C, &t) ||
      !bt__cu_mul_fits(t, sizeof(float), &t))
    return BT_ERANGE;
  return BT_OK;
}

extern "C" bt_status
bt__cu_embedding_fwd(float *out, const int32_t *x, const float *wte,
                     const float *wpe, size_t B, size_t T, size_t C, size_t V,
                     size_t Tmax, size_t t0, cudaStream_t stream)
{
  bt_status st;

  if (out == NULL || x == NULL || wte == NULL || wpe == NULL)
    return BT_EINVAL;
  if ((st = check_args(B, T, C, V, Tmax, t0)) != BT_OK)
    return st;
  embedding_fwd_kernel<<<bt__cu_blocks(B * T * C, 256), 256, 0, stream>>>(
      out, x, wte, wpe, B * T, T, C, V, t0);
  return bt__cu_launch_status();
}

extern "C" bt_status
bt__cu_embedding_bwd(float *dwte, float *dwpe, const float *dout,
                     const int32_t *x, size_t B, size_t T, size_t C, size_t V,
                     size_t Tmax, size_t t0, cudaStream_t stream)
{
  bt_status st;

  if (dwte == NULL || dwpe == NULL || dout == NULL || x == NULL)
    return BT_EINVAL;
  if ((st = check_args(B, T, C, V, Tmax, t0)) != BT_OK)
    return st;
  /* 128 threads: a block's channel loop is the long one, and rows that
   * repeat a token leave their block idle after the scan. */
  embedding_bwd_wte_kernel<<<bt__cu_blocks(B * T, 1), 128, 0, stream>>>(
      dwte, dout, x, B * T, C, V);
  if ((st = bt__cu_launch_status()) != BT_OK)
    return st;
  embedding_bwd_wpe_kernel<<<bt__cu_blocks(T * C, 256), 256, 0, stream>>>(
      dwpe, dout, B, T, C, t0);
  return bt__cu_launch_status();
}

extern "C" bt_status
bt__cu_embedding_check_tokens(int32_t *bad, const int32_t *x, size_t n,
                              size_t V, cudaStream_t stream)
{
  bt_status st;

  if (bad == NULL || x == NULL || n == 0 || V == 0)
    return BT_EINVAL;
  if ((st = bt__cu_status(cudaMemsetAsync(bad, 0, sizeof(*bad), stream))) !=
      BT_OK)
    return st;
  check_tokens_kernel<<<bt__cu_blocks(n, 256), 256, 0, stream>>>(bad, x, n, V);
  return bt__cu_launch_status();
}
