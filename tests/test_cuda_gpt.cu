// The CUDA GPT kernels (kernels/cuda/embedding.cu, attention.cu, dropout.cu)
// against the CPU kernels (kernels/cpu/): embedding forward exact and
// backward bitwise (the same summation order), attention forward and
// backward within 1e-4 relative (max abs difference over max abs value, per
// tensor), dropout masks and Philox blocks bitwise, two runs bitwise equal,
// and argument errors returned before anything is launched.
//
// The argument checks need no device and run first; then, with no CUDA
// device, the test prints "no CUDA device: skipped" and exits 77 (CTest's
// SKIP_RETURN_CODE).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <cublas_v2.h>
#include <cuda_runtime.h>

extern "C" {
#include "kernels.h"
}
#include "cuda_kernels.h"

#include "cuda_test_util.cuh"

// ---- argument checks (no device needed)
// --------------------------------------

static const uint32_t *
x_u32(const int32_t *x)
{
  return reinterpret_cast<const uint32_t *>(x);
}

static void
test_bad_arguments()
{
  // Never dereferenced: every call below fails its checks first.
  float *f = reinterpret_cast<float *>(uintptr_t(0x1000));
  int32_t *x = reinterpret_cast<int32_t *>(uintptr_t(0x2000));
  cudaStream_t s = nullptr;
  cublasHandle_t h = reinterpret_cast<cublasHandle_t>(uintptr_t(0x3000));

  // embedding: NULLs, zero dims, t0 + T > Tmax, overflow.
  CHECK_STATUS(bt__cu_embedding_fwd(nullptr, x, f, f, 2, 3, 4, 5, 8, 0, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_embedding_fwd(f, nullptr, f, f, 2, 3, 4, 5, 8, 0, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_embedding_fwd(f, x, f, f, 0, 3, 4, 5, 8, 0, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_embedding_fwd(f, x, f, f, 2, 0, 4, 5, 8, 0, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_embedding_fwd(f, x, f, f, 2, 3, 0, 5, 8, 0, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_embedding_fwd(f, x, f, f, 2, 3, 4, 0, 8, 0, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_embedding_fwd(f, x, f, f, 2, 3, 4, 5, 8, 6, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_embedding_fwd(f, x, f, f, 2, 3, 4, 5, 8, 9, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_embedding_fwd(f, x, f, f, 2, 3, SIZE_MAX / 2, 5, 8, 0, s),
               BT_ERANGE);
  CHECK_STATUS(bt__cu_embedding_bwd(f, nullptr, f, x, 2, 3, 4, 5, 8, 0, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_embedding_bwd(f, f, f, x, 2, 9, 4, 5, 8, 0, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_embedding_check_tokens(nullptr, x, 4, 5, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_embedding_check_tokens(x, x, 0, 5, s), BT_EINVAL);

  // attention: NULLs (handle too), zero dims, C % nh, int overflow.
  CHECK_STATUS(bt__cu_attention_fwd(f, f, f, 2, 3, 4, 2, nullptr, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_attention_fwd(nullptr, f, f, 2, 3, 4, 2, h, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_attention_fwd(f, f, f, 2, 3, 6, 4, h, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_attention_fwd(f, f, f, 2, 0, 4, 2, h, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_attention_fwd(f, f, f, 2, 3, 0, 2, h, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_attention_fwd(f, f, f, 2, 3, 4, 0, h, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_attention_fwd(f, f, f, 2, (size_t)1 << 31, 4, 2, h, s),
               BT_ERANGE);
  CHECK_STATUS(bt__cu_attention_bwd(f, f, nullptr, f, 2, 3, 4, 2, h, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_attention_bwd(f, f, f, f, 2, 3, 5, 2, h, s), BT_EINVAL);
  CHECK(bt__cu_attention_scratch_bytes(0, 3, 4, 2) == 0, "zero B");
  CHECK(bt__cu_attention_scratch_bytes(2, 3, 5, 2) == 0, "C %% nh");
  CHECK(bt__cu_attention_scratch_bytes(SIZE_MAX / 4, 3, 4, 2) == 0, "overflow");
  // 2 att [B, nh, T, T] + 7 heads [B, T, C].
  CHECK(bt__cu_attention_scratch_bytes(2, 3, 4, 2) ==
            (2 * 2 * 2 * 3 * 3 + 7 * 2 * 3 * 4) * sizeof(float),
        "layout size");

  // dropout: NULLs, zero dims, p outside [0, 1), rows past 2^32.
  CHECK_STATUS(bt__cu_dropout_fwd(nullptr, f, 2, 3, 0.5f, 1, 0, 0, 0, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_dropout_fwd(f, f, 0, 3, 0.5f, 1, 0, 0, 0, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_dropout_fwd(f, f, 2, 0, 0.5f, 1, 0, 0, 0, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_dropout_fwd(f, f, 2, 3, 1.0f, 1, 0, 0, 0, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_dropout_fwd(f, f, 2, 3, -0.1f, 1, 0, 0, 0, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_dropout_fwd(f, f, 2, 3, NAN, 1, 0, 0, 0, s), BT_EINVAL);
  CHECK_STATUS(
      bt__cu_dropout_bwd(f, f, 2, 3, 0.5f, 1, 0, 0, (size_t)UINT32_MAX, s),
      BT_ERANGE);
  CHECK_STATUS(
      bt__cu_dropout_bwd(f, f, 3, 3, 0.5f, 1, 0, 0, (size_t)UINT32_MAX - 1, s),
      BT_ERANGE);
  CHECK_STATUS(bt__cu_philox4x32_10(nullptr, x_u32(x), nullptr, 1, s),
               BT_EINVAL);
}

// ---- embedding
// -----------------------------------------------------------------

struct emb_shape {
  size_t B, T, C, V, Tmax, t0;
};

static void
test_embedding(cudaStream_t s)
{
  const emb_shape shapes[] = {
      {1, 1, 1, 1, 1, 0},        {2, 5, 7, 3, 9, 2},
      {4, 64, 48, 50, 64, 0},    {3, 17, 33, 1000, 20, 3},
      {8, 128, 96, 257, 130, 2}, {5, 9, 300, 2, 9, 0},
  };
  for (const emb_shape &sh : shapes) {
    size_t N = sh.B * sh.T;
    std::vector<int32_t> x(N);
    for (auto &t : x)
      t = (int32_t)(rng_next() % sh.V);
    std::vector<float> wte = random_floats(sh.V * sh.C, -1, 1);
    std::vector<float> wpe = random_floats(sh.Tmax * sh.C, -1, 1);
    std::vector<float> dout = random_floats(N * sh.C, -1, 1);
    // Nonzero starting gradients: the backward accumulates.
    std::vector<float> dwte0 = random_floats(sh.V * sh.C, -1, 1);
    std::vector<float> dwpe0 = random_floats(sh.Tmax * sh.C, -1, 1);

    std::vector<float> out(N * sh.C), dwte = dwte0, dwpe = dwpe0;
    BT_OK_OR_DIE(bt__embedding_fwd(out.data(), x.data(), wte.data(), wpe.data(),
                                   sh.B, sh.T, sh.C, sh.V, sh.Tmax, sh.t0));
    BT_OK_OR_DIE(bt__embedding_bwd(dwte.data(), dwpe.data(), dout.data(),
                                   x.data(), sh.B, sh.T, sh.C, sh.V, sh.Tmax,
                                   sh.t0));

    dbuf<int32_t> dx(x);
    dbuf<float> dwte_d(wte), dwpe_d(wpe), dout_d(dout), out_d(N * sh.C),
        gwte(dwte0), gwpe(dwpe0);
    BT_OK_OR_DIE(bt__cu_embedding_fwd(out_d.p, dx.p, dwte_d.p, dwpe_d.p, sh.B,
                                      sh.T, sh.C, sh.V, sh.Tmax, sh.t0, s));
    BT_OK_OR_DIE(bt__cu_embedding_bwd(gwte.p, gwpe.p, dout_d.p, dx.p, sh.B,
                                      sh.T, sh.C, sh.V, sh.Tmax, sh.t0, s));
    std::vector<float> g_out = out_d.get(), g_wte = gwte.get(),
                       g_wpe = gwpe.get();
    CHECK(bitwise_equal(g_out, out), "embedding fwd B=%zu T=%zu C=%zu: [%zu]",
          sh.B, sh.T, sh.C, first_difference(g_out, out));
    CHECK(bitwise_equal(g_wte, dwte),
          "embedding dwte B=%zu T=%zu C=%zu V=%zu: [%zu] rel %g", sh.B, sh.T,
          sh.C, sh.V, first_difference(g_wte, dwte), rel_err(g_wte, dwte));
    CHECK(bitwise_equal(g_wpe, dwpe), "embedding dwpe B=%zu T=%zu: [%zu]", sh.B,
          sh.T, first_difference(g_wpe, dwpe));
    CHECK(rel_err(g_wte, dwte) <= REL_TOL && rel_err(g_wpe, dwpe) <= REL_TOL,
          "embedding bwd tolerance");

    // A second run from the same start: bitwise the same.
    gwte.put(dwte0);
    gwpe.put(dwpe0);
    BT_OK_OR_DIE(bt__cu_embedding_bwd(gwte.p, gwpe.p, dout_d.p, dx.p, sh.B,
                                      sh.T, sh.C, sh.V, sh.Tmax, sh.t0, s));
    CHECK(bitwise_equal(gwte.get(), g_wte) && bitwise_equal(gwpe.get(), g_wpe),
          "embedding bwd not deterministic B=%zu T=%zu", sh.B, sh.T);

    // The token check: clean, then one bad token (the CPU's EINVAL).
    dbuf<int32_t> bad(1);
    BT_OK_OR_DIE(bt__cu_embedding_check_tokens(bad.p, dx.p, N, sh.V, s));
    CHECK(bad.get()[0] == 0, "clean tokens flagged");
    std::vector<int32_t> xb = x;
    size_t at = rng_next() % N;
    xb[at] = (rng_next() & 1) ? (int32_t)sh.V : -1;
    dx.put(xb);
    BT_OK_OR_DIE(bt__cu_embedding_check_tokens(bad.p, dx.p, N, sh.V, s));
    CHECK(bad.get()[0] == 1, "bad token %d not flagged", xb[at]);
    CHECK_STATUS(bt__embedding_fwd(out.data(), xb.data(), wte.data(),
                                   wpe.data(), sh.B, sh.T, sh.C, sh.V, sh.Tmax,
                                   sh.t0),
                 BT_EINVAL);
    // A bad token's row is NaN, the others unchanged; its gradient row
    // reaches nothing.
    BT_OK_OR_DIE(bt__cu_embedding_fwd(out_d.p, dx.p, dwte_d.p, dwpe_d.p, sh.B,
                                      sh.T, sh.C, sh.V, sh.Tmax, sh.t0, s));
    std::vector<float> gb = out_d.get();
    bool rows_ok = true;
    for (size_t n = 0; n < N; n++)
      for (size_t c = 0; c < sh.C; c++) {
        float g = gb[n * sh.C + c];
        rows_ok &= n == at ? std::isnan(g)
                           : std::memcmp(&g, &out[n * sh.C + c], 4) == 0;
      }
    CHECK(rows_ok, "bad-token forward rows");
    gwte.put(dwte0);
    BT_OK_OR_DIE(bt__cu_embedding_bwd(gwte.p, gwpe.p, dout_d.p, dx.p, sh.B,
                                      sh.T, sh.C, sh.V, sh.Tmax, sh.t0, s));
    std::vector<float> gwb = gwte.get();
    bool finite = true;
    for (float g : gwb)
      finite &= std::isfinite(g);
    CHECK(finite, "bad-token backward wrote non-finite values");
  }
}

// ---- attention
// -----------------------------------------------------------------

struct att_shape {
  size_t B, T, C, nh;
};

static void
test_attention(cudaStream_t s, cublasHandle_t h)
{
  const att_shape shapes[] = {
      {1, 1, 4, 1},   {2, 1, 6, 3},    {2, 5, 6, 3},    {3, 17, 20, 4},
      {2, 64, 64, 1}, {2, 33, 48, 6},  {4, 128, 96, 4}, {1, 256, 128, 2},
      {3, 7, 9, 9},   {1, 100, 50, 5},
  };
  for (const att_shape &sh : shapes) {
    size_t N = sh.B * sh.T, natt = sh.B * sh.nh * sh.T * sh.T;
    std::vector<float> qkv = random_floats(N * 3 * sh.C, -2, 2);
    std::vector<float> dout = random_floats(N * sh.C, -1, 1);

    std::vector<float> out(N * sh.C), dqkv(N * 3 * sh.C);
    std::vector<float> scratch(bt__attention_scratch_bytes(sh.B, sh.T, sh.nh) /
                               sizeof(float));
    BT_OK_OR_DIE(bt__attention_fwd(out.data(), scratch.data(), qkv.data(), sh.B,
                                   sh.T, sh.C, sh.nh));
    std::vector<float> att(scratch.begin(), scratch.begin() + natt);
    BT_OK_OR_DIE(bt__attention_bwd(dqkv.data(), scratch.data(), dout.data(),
                                   qkv.data(), sh.B, sh.T, sh.C, sh.nh));

    size_t bytes = bt__cu_attention_scratch_bytes(sh.B, sh.T, sh.C, sh.nh);
    CHECK(bytes != 0, "scratch bytes");
    dbuf<float> qkv_d(qkv), dout_d(dout), out_d(N * sh.C), dqkv_d(N * 3 * sh.C),
        scr(bytes / sizeof(float));
    BT_OK_OR_DIE(bt__cu_attention_fwd(out_d.p, scr.p, qkv_d.p, sh.B, sh.T, sh.C,
                                      sh.nh, h, s));
    std::vector<float> g_out = out_d.get(), g_scr = scr.get();
    std::vector<float> g_att(g_scr.begin(), g_scr.begin() + natt);
    BT_OK_OR_DIE(bt__cu_attention_bwd(dqkv_d.p, scr.p, dout_d.p, qkv_d.p, sh.B,
                                      sh.T, sh.C, sh.nh, h, s));
    std::vector<float> g_dqkv = dqkv_d.get();

    double e_out = rel_err(g_out, out), e_att = rel_err(g_att, att),
           e_dqkv = rel_err(g_dqkv, dqkv);
    CHECK(e_out <= REL_TOL, "attention out B=%zu T=%zu C=%zu nh=%zu: %g", sh.B,
          sh.T, sh.C, sh.nh, e_out);
    CHECK(e_att <= REL_TOL, "attention att B=%zu T=%zu C=%zu nh=%zu: %g", sh.B,
          sh.T, sh.C, sh.nh, e_att);
    CHECK(e_dqkv <= REL_TOL, "attention dqkv B=%zu T=%zu C=%zu nh=%zu: %g",
          sh.B, sh.T, sh.C, sh.nh, e_dqkv);
    // Per part of dqkv too (dq, dk and dv differ in scale).
    for (int part = 0; part < 3; part++) {
      std::vector<float> a, b;
      for (size_t n = 0; n < N; n++)
        for (size_t c = 0; c < sh.C; c++) {
          a.push_back(g_dqkv[n * 3 * sh.C + part * sh.C + c]);
          b.push_back(dqkv[n * 3 * sh.C + part * sh.C + c]);
        }
      double e = rel_err(a, b);
      CHECK(e <= REL_TOL, "attention d%c B=%zu T=%zu C=%zu nh=%zu: %g",
            "qkv"[part], sh.B, sh.T, sh.C, sh.nh, e);
    }
    // Exact zeros above the diagonal.
    bool causal = true;
    for (size_t r = 0; r < sh.B * sh.nh * sh.T; r++)
      for (size_t j = r % sh.T + 1; j < sh.T; j++)
        causal &= g_att[r * sh.T + j] == 0.0f;
    CHECK(causal, "attention mask B=%zu T=%zu", sh.B, sh.T);

    // Two runs: bitwise the same (the workspace dirty from the first).
    BT_OK_OR_DIE(bt__cu_attention_fwd(out_d.p, scr.p, qkv_d.p, sh.B, sh.T, sh.C,
                                      sh.nh, h, s));
    CHECK(bitwise_equal(out_d.get(), g_out), "attention fwd determinism");
    BT_OK_OR_DIE(bt__cu_attention_bwd(dqkv_d.p, scr.p, dout_d.p, qkv_d.p, sh.B,
                                      sh.T, sh.C, sh.nh, h, s));
    CHECK(bitwise_equal(dqkv_d.get(), g_dqkv), "attention bwd determinism");
  }
}

// ---- dropout
// -------------------------------------------------------------------

static void
test_dropout(cudaStream_t s)
{
  struct {
    size_t N, D;
  } shapes[] = {{1, 1}, {3, 5}, {7, 13}, {64, 257}, {33, 1024}, {2, 4}};
  const float ps[] = {0.0f, 0.1f, 0.5f, 0.9f};
  const uint64_t seeds[] = {0, 1234, 0xdeadbeefcafef00dull};
  for (auto sh : shapes)
    for (float p : ps)
      for (uint64_t seed : seeds) {
        size_t n = sh.N * sh.D;
        uint32_t step = (uint32_t)(rng_next() % 1000);
        uint32_t layer = (uint32_t)(rng_next() % 48);
        size_t row_offset = (size_t)(rng_next() % 100000);
        std::vector<float> x = random_floats(n, -3, 3), y(n), dx(n);
        BT_OK_OR_DIE(bt__dropout_fwd(y.data(), x.data(), sh.N, sh.D, p, seed,
                                     step, layer, row_offset));
        BT_OK_OR_DIE(bt__dropout_bwd(dx.data(), x.data(), sh.N, sh.D, p, seed,
                                     step, layer, row_offset));
        dbuf<float> x_d(x), y_d(n), dx_d(n);
        BT_OK_OR_DIE(bt__cu_dropout_fwd(y_d.p, x_d.p, sh.N, sh.D, p, seed, step,
                                        layer, row_offset, s));
        BT_OK_OR_DIE(bt__cu_dropout_bwd(dx_d.p, x_d.p, sh.N, sh.D, p, seed,
                                        step, layer, row_offset, s));
        std::vector<float> gy = y_d.get();
        CHECK(bitwise_equal(gy, y),
              "dropout fwd N=%zu D=%zu p=%g seed=%llx: [%zu]", sh.N, sh.D,
              (double)p, (unsigned long long)seed, first_difference(gy, y));
        CHECK(bitwise_equal(dx_d.get(), dx), "dropout bwd N=%zu D=%zu p=%g",
              sh.N, sh.D, (double)p);
        // In place, and again: the same bits.
        BT_OK_OR_DIE(bt__cu_dropout_fwd(x_d.p, x_d.p, sh.N, sh.D, p, seed, step,
                                        layer, row_offset, s));
        CHECK(bitwise_equal(x_d.get(), y), "dropout in place N=%zu D=%zu", sh.N,
              sh.D);
      }

  // Split invariance: rows 0..N-1 in one call equal two calls at offsets.
  {
    size_t N = 10, D = 37, cut = 4;
    std::vector<float> x = random_floats(N * D, -1, 1);
    dbuf<float> x_d(x), y1(N * D), y2(N * D);
    BT_OK_OR_DIE(bt__cu_dropout_fwd(y1.p, x_d.p, N, D, 0.3f, 99, 5, 2, 100, s));
    BT_OK_OR_DIE(
        bt__cu_dropout_fwd(y2.p, x_d.p, cut, D, 0.3f, 99, 5, 2, 100, s));
    BT_OK_OR_DIE(bt__cu_dropout_fwd(y2.p + cut * D, x_d.p + cut * D, N - cut, D,
                                    0.3f, 99, 5, 2, 100 + cut, s));
    CHECK(bitwise_equal(y1.get(), y2.get()), "dropout split");
  }

  // Philox blocks against the CPU's.
  {
    size_t n = 4096;
    std::vector<uint32_t> ctr(4 * n), want(4 * n);
    for (auto &c : ctr)
      c = (uint32_t)rng_next();
    ctr[0] = ctr[1] = ctr[2] = ctr[3] = 0;
    const uint32_t key[2] = {(uint32_t)rng_next(), (uint32_t)rng_next()};
    for (size_t i = 0; i < n; i++)
      bt__philox4x32_10(&want[4 * i], &ctr[4 * i], key);
    dbuf<uint32_t> ctr_d(ctr), out_d(4 * n);
    BT_OK_OR_DIE(bt__cu_philox4x32_10(out_d.p, ctr_d.p, key, n, s));
    std::vector<uint32_t> got = out_d.get();
    CHECK(std::memcmp(got.data(), want.data(), 4 * n * sizeof(uint32_t)) == 0,
          "philox blocks");
  }
}

// Arguments that fail leave outputs untouched and launch nothing.
static void
test_bad_arguments_on_device(cudaStream_t s, cublasHandle_t h)
{
  std::vector<float> sentinel(64, 7.0f);
  std::vector<int32_t> toks(8, 1);
  dbuf<float> a(sentinel), b(sentinel), c(sentinel);
  dbuf<int32_t> x(toks);
  CHECK_STATUS(bt__cu_embedding_fwd(a.p, x.p, b.p, c.p, 2, 4, 2, 4, 5, 2, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_attention_fwd(a.p, b.p, c.p, 1, 4, 6, 4, h, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_dropout_fwd(a.p, c.p, 2, 4, 1.5f, 1, 0, 0, 0, s),
               BT_EINVAL);
  CHECK(bitwise_equal(a.get(), sentinel) && bitwise_equal(b.get(), sentinel),
        "a failed call wrote");
  CHECK(cudaGetLastError() == cudaSuccess, "a failed call launched");
}

static void
on_device(cudaStream_t s, cublasHandle_t h)
{
  test_bad_arguments_on_device(s, h);
  test_embedding(s);
  test_attention(s, h);
  test_dropout(s);
}

int
main()
{
  return cuda_test_main(test_bad_arguments, on_device,
                        "all CUDA GPT kernels match the CPU");
}
