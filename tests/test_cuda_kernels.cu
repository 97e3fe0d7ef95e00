// The CUDA layer kernels (kernels/cuda/linear.cu, gelu.cu, layernorm.cu,
// residual.cu, xent.cu, optim.cu) against the CPU kernels (kernels/cpu/):
// every forward and backward within 1e-4 relative (max abs difference over
// max abs value, per tensor) on odd shapes and N = 1, the residual add
// bitwise, accumulation onto nonzero gradients, in-place aliasing where the
// contract allows it, two runs bitwise equal, a bad label's NaN, and
// argument errors returned before anything is launched.
//
// The argument checks need no device and run first; then, with no CUDA
// device, the test prints "no CUDA device: skipped" and exits 77 (CTest's
// SKIP_RETURN_CODE).
#include <climits>
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

// got within REL_TOL of want (rel_err); fmt names the tensor and shape.
#define CHECK_REL(got, want, fmt, ...)                                         \
  do {                                                                         \
    double e_ = rel_err((got), (want));                                        \
    CHECK(e_ <= REL_TOL, fmt ": rel %g", __VA_ARGS__, e_);                     \
  } while (0)

// |got - want| / |want|, absolute when want is 0.
static double
rel_scalar(float got, float want)
{
  double d = std::fabs((double)got - (double)want);
  if (std::isnan(d))
    return INFINITY;
  double mag = std::fabs((double)want);
  return mag > 0.0 ? d / mag : d;
}

// ---- argument checks (no device needed) ------------------------------------

static void
test_bad_arguments()
{
  // Never dereferenced: every call below fails its checks first.
  float *f = reinterpret_cast<float *>(uintptr_t(0x1000));
  float *f2 = reinterpret_cast<float *>(uintptr_t(0x1800));
  int32_t *l = reinterpret_cast<int32_t *>(uintptr_t(0x2000));
  cudaStream_t s = nullptr;
  cublasHandle_t h = reinterpret_cast<cublasHandle_t>(uintptr_t(0x3000));
  const size_t big = (size_t)INT_MAX + 1;

  // linear: NULLs (handle too), zero dims, dims past cuBLAS's int.
  CHECK_STATUS(bt__cu_linear_fwd(nullptr, f, f, f, 2, 3, 4, h, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_linear_fwd(f, nullptr, f, f, 2, 3, 4, h, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_linear_fwd(f, f, nullptr, f, 2, 3, 4, h, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_linear_fwd(f, f, f, f, 2, 3, 4, nullptr, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_linear_fwd(f, f, f, f, 0, 3, 4, h, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_linear_fwd(f, f, f, f, 2, 0, 4, h, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_linear_fwd(f, f, f, nullptr, 2, 3, 0, h, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_linear_fwd(f, f, f, f, big, 3, 4, h, s), BT_ERANGE);
  CHECK_STATUS(bt__cu_linear_fwd(f, f, f, f, 2, big, 4, h, s), BT_ERANGE);
  CHECK_STATUS(bt__cu_linear_fwd(f, f, f, f, 2, 3, big, h, s), BT_ERANGE);
  CHECK_STATUS(bt__cu_linear_bwd_input(nullptr, f, f, 2, 3, 4, h, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_linear_bwd_input(f, f, f, 2, 3, 4, nullptr, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_linear_bwd_input(f, f, f, 2, 0, 4, h, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_linear_bwd_input(f, f, f, big, 3, 4, h, s), BT_ERANGE);
  CHECK_STATUS(bt__cu_linear_bwd_weight(nullptr, f, f, f, 2, 3, 4, h, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_linear_bwd_weight(f, f, f, nullptr, 2, 3, 4, h, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_linear_bwd_weight(f, nullptr, f, f, 0, 3, 4, h, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_linear_bwd_weight(f, f, f, f, 2, 3, big, h, s),
               BT_ERANGE);
  CHECK_STATUS(bt__cu_linear_bwd(nullptr, f, f, f, f, f, 2, 3, 4, h, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_linear_bwd(f, nullptr, f, f, f, f, 2, 3, 4, h, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_linear_bwd(f, f, f, f, f, nullptr, 2, 3, 4, h, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_linear_bwd(f, f, f, f, f, f, 2, 3, 4, nullptr, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_linear_bwd(f, f, nullptr, f, f, f, 2, 3, 0, h, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_linear_bwd(f, f, f, f, f, f, 2, big, 4, h, s), BT_ERANGE);

  // GELU: NULLs, n = 0, a count no float array has.
  CHECK_STATUS(bt__cu_gelu_fwd(nullptr, f, 4, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_gelu_fwd(f, nullptr, 4, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_gelu_fwd(f, f, 0, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_gelu_fwd(f, f, SIZE_MAX, s), BT_ERANGE);
  CHECK_STATUS(bt__cu_gelu_bwd(nullptr, f, f, 4, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_gelu_bwd(f, f, nullptr, 4, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_gelu_bwd(f, f, f, 0, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_gelu_bwd(f, f, f, SIZE_MAX / 2, s), BT_ERANGE);

  // LayerNorm: NULLs, zero dims, N * D overflowing.
  CHECK_STATUS(bt__cu_layernorm_fwd(nullptr, f, f, f, f, f, 2, 3, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_layernorm_fwd(f, nullptr, f, f, f, f, 2, 3, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_layernorm_fwd(f, f, f, f, f, nullptr, 2, 3, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_layernorm_fwd(f, f, f, f, f, f, 0, 3, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_layernorm_fwd(f, f, f, f, f, f, 2, 0, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_layernorm_fwd(f, f, f, f, f, f, SIZE_MAX / 2, 3, s),
               BT_ERANGE);
  CHECK_STATUS(bt__cu_layernorm_bwd(f, nullptr, f, f, f, f, f, f, 2, 3, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_layernorm_bwd(f, f, f, f, f, f, f, nullptr, 2, 3, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_layernorm_bwd(f, f, f, f, f, f, f, f, 2, 0, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_layernorm_bwd(f, f, f, f, f, f, f, f, 3, SIZE_MAX / 2, s),
               BT_ERANGE);

  // residual: NULLs, both gradients NULL, a gradient that is dy.
  CHECK_STATUS(bt__cu_residual_fwd(nullptr, f, f, 4, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_residual_fwd(f, f, nullptr, 4, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_residual_fwd(f, f, f, 0, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_residual_fwd(f, f, f, SIZE_MAX, s), BT_ERANGE);
  CHECK_STATUS(bt__cu_residual_bwd(nullptr, nullptr, f, 4, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_residual_bwd(f, f2, nullptr, 4, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_residual_bwd(f, f2, f2, 4, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_residual_bwd(f, nullptr, f, 4, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_residual_bwd(f, f2, f, 0, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_residual_bwd(f, f, f2, SIZE_MAX, s), BT_ERANGE);

  // cross-entropy: NULLs, zero dims, total_rows < N, overflow.
  CHECK_STATUS(bt__cu_xent_fwd(nullptr, f, l, 2, 3, 2, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_xent_fwd(f, nullptr, l, 2, 3, 2, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_xent_fwd(f, f, nullptr, 2, 3, 2, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_xent_fwd(f, f, l, 0, 3, 2, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_xent_fwd(f, f, l, 2, 0, 2, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_xent_fwd(f, f, l, 2, 3, 1, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_xent_fwd(f, f, l, 2, SIZE_MAX / 2, 2, s), BT_ERANGE);
  CHECK_STATUS(bt__cu_xent_bwd(nullptr, f, l, 2, 3, 2, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_xent_bwd(f, f, nullptr, 2, 3, 2, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_xent_bwd(f, f, l, 3, 3, 2, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_xent_bwd(f, f, l, SIZE_MAX / 2, 3, SIZE_MAX, s),
               BT_ERANGE);

  // SGD: NULLs, n = 0, non-finite hyperparameters.
  CHECK_STATUS(bt__cu_sgd_update(nullptr, f, 4, 0.1f, 0.0f, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_sgd_update(f, nullptr, 4, 0.1f, 0.0f, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_sgd_update(f, f2, 0, 0.1f, 0.0f, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_sgd_update(f, f2, 4, NAN, 0.0f, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_sgd_update(f, f2, 4, INFINITY, 0.0f, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_sgd_update(f, f2, 4, 0.1f, NAN, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_sgd_update(f, f2, SIZE_MAX, 0.1f, 0.0f, s), BT_ERANGE);

  // AdamW: NULLs, t < 1, b1 and b2 outside [0, 1), eps < 0 or not finite.
  float *m = f2, *v = f2 + 16, *g = f2 + 32;
  CHECK_STATUS(bt__cu_adamw_update(nullptr, m, v, g, 4, 1e-3f, 0.9f, 0.999f,
                                   1e-8f, 0.0f, 1, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_adamw_update(f, nullptr, v, g, 4, 1e-3f, 0.9f, 0.999f,
                                   1e-8f, 0.0f, 1, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_adamw_update(f, m, v, nullptr, 4, 1e-3f, 0.9f, 0.999f,
                                   1e-8f, 0.0f, 1, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_adamw_update(f, m, v, g, 0, 1e-3f, 0.9f, 0.999f, 1e-8f,
                                   0.0f, 1, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_adamw_update(f, m, v, g, 4, 1e-3f, 0.9f, 0.999f, 1e-8f,
                                   0.0f, 0, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_adamw_update(f, m, v, g, 4, 1e-3f, 1.0f, 0.999f, 1e-8f,
                                   0.0f, 1, s),
               BT_EINVAL);
  CHECK_STATUS(
      bt__cu_adamw_update(f, m, v, g, 4, 1e-3f, 0.9f, -0.1f, 1e-8f, 0.0f, 1, s),
      BT_EINVAL);
  CHECK_STATUS(
      bt__cu_adamw_update(f, m, v, g, 4, 1e-3f, NAN, 0.999f, 1e-8f, 0.0f, 1, s),
      BT_EINVAL);
  CHECK_STATUS(bt__cu_adamw_update(f, m, v, g, 4, 1e-3f, 0.9f, 0.999f, -1e-8f,
                                   0.0f, 1, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_adamw_update(f, m, v, g, 4, 1e-3f, 0.9f, 0.999f, INFINITY,
                                   0.0f, 1, s),
               BT_EINVAL);
  CHECK_STATUS(
      bt__cu_adamw_update(f, m, v, g, 4, NAN, 0.9f, 0.999f, 1e-8f, 0.0f, 1, s),
      BT_EINVAL);
  CHECK_STATUS(bt__cu_adamw_update(f, m, v, g, 4, 1e-3f, 0.9f, 0.999f, 1e-8f,
                                   INFINITY, 1, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_adamw_update(f, m, v, g, SIZE_MAX, 1e-3f, 0.9f, 0.999f,
                                   1e-8f, 0.0f, 1, s),
               BT_ERANGE);
}

// ---- linear -----------------------------------------------------------------

struct lin_shape {
  size_t N, IN, OUT;
};

static void
test_linear(cudaStream_t s, cublasHandle_t h)
{
  const lin_shape shapes[] = {
      {1, 1, 1},     {1, 7, 3},      {5, 13, 17},   {3, 1, 9},
      {9, 4, 1},     {64, 128, 96},  {33, 65, 129}, {200, 300, 77},
      {1, 768, 513}, {128, 64, 768},
  };
  for (const lin_shape &sh : shapes) {
    size_t N = sh.N, IN = sh.IN, OUT = sh.OUT;
    std::vector<float> x = random_floats(N * IN, -1, 1);
    std::vector<float> w = random_floats(OUT * IN, -1, 1);
    std::vector<float> b = random_floats(OUT, -1, 1);
    std::vector<float> dy = random_floats(N * OUT, -1, 1);
    // Nonzero starting gradients: the weight gradients accumulate.
    std::vector<float> dw0 = random_floats(OUT * IN, -1, 1);
    std::vector<float> db0 = random_floats(OUT, -1, 1);

    std::vector<float> y(N * OUT), y_nb(N * OUT), dx(N * IN),
        dw = dw0, db = db0, dw2 = dw0, dx2(N * IN);
    BT_OK_OR_DIE(
        bt__linear_fwd(y.data(), x.data(), w.data(), b.data(), N, IN, OUT));
    BT_OK_OR_DIE(
        bt__linear_fwd(y_nb.data(), x.data(), w.data(), nullptr, N, IN, OUT));
    BT_OK_OR_DIE(
        bt__linear_bwd_input(dx.data(), dy.data(), w.data(), N, IN, OUT));
    BT_OK_OR_DIE(bt__linear_bwd_weight(dw.data(), db.data(), dy.data(),
                                       x.data(), N, IN, OUT));
    BT_OK_OR_DIE(bt__linear_bwd(dx2.data(), dw2.data(), nullptr, dy.data(),
                                x.data(), w.data(), N, IN, OUT));

    // dx starts as garbage: the input gradient is written, not added.
    dbuf<float> x_d(x), w_d(w), b_d(b), dy_d(dy), y_d(N * OUT),
        dx_d(random_floats(N * IN, -3, 3)), dw_d(dw0), db_d(db0),
        dw2_d(dw0), dx2_d(random_floats(N * IN, -3, 3));
    BT_OK_OR_DIE(
        bt__cu_linear_fwd(y_d.p, x_d.p, w_d.p, b_d.p, N, IN, OUT, h, s));
    std::vector<float> g_y = y_d.get();
    CHECK_REL(g_y, y, "linear fwd N=%zu IN=%zu OUT=%zu", N, IN, OUT);
    BT_OK_OR_DIE(
        bt__cu_linear_fwd(y_d.p, x_d.p, w_d.p, nullptr, N, IN, OUT, h, s));
    CHECK_REL(y_d.get(), y_nb, "linear fwd no bias N=%zu IN=%zu OUT=%zu", N, IN,
              OUT);
    BT_OK_OR_DIE(
        bt__cu_linear_bwd_input(dx_d.p, dy_d.p, w_d.p, N, IN, OUT, h, s));
    CHECK_REL(dx_d.get(), dx, "linear dx N=%zu IN=%zu OUT=%zu", N, IN, OUT);
    BT_OK_OR_DIE(bt__cu_linear_bwd_weight(dw_d.p, db_d.p, dy_d.p, x_d.p, N, IN,
                                          OUT, h, s));
    std::vector<float> g_dw = dw_d.get(), g_db = db_d.get();
    CHECK_REL(g_dw, dw, "linear dw N=%zu IN=%zu OUT=%zu", N, IN, OUT);
    CHECK_REL(g_db, db, "linear db N=%zu IN=%zu OUT=%zu", N, IN, OUT);
    BT_OK_OR_DIE(bt__cu_linear_bwd(dx2_d.p, dw2_d.p, nullptr, dy_d.p, x_d.p,
                                   w_d.p, N, IN, OUT, h, s));
    CHECK_REL(dx2_d.get(), dx2, "linear bwd dx N=%zu IN=%zu OUT=%zu", N, IN,
              OUT);
    CHECK_REL(dw2_d.get(), dw2, "linear bwd dw N=%zu IN=%zu OUT=%zu", N, IN,
              OUT);

    // Two runs from the same start: bitwise the same.
    BT_OK_OR_DIE(
        bt__cu_linear_fwd(y_d.p, x_d.p, w_d.p, b_d.p, N, IN, OUT, h, s));
    CHECK(bitwise_equal(y_d.get(), g_y), "linear fwd determinism N=%zu", N);
    dw_d.put(dw0);
    db_d.put(db0);
    BT_OK_OR_DIE(bt__cu_linear_bwd_weight(dw_d.p, db_d.p, dy_d.p, x_d.p, N, IN,
                                          OUT, h, s));
    CHECK(bitwise_equal(dw_d.get(), g_dw) && bitwise_equal(db_d.get(), g_db),
          "linear bwd_weight determinism N=%zu IN=%zu OUT=%zu", N, IN, OUT);
    // The combined backward with db: the split one's results.
    dw2_d.put(dw0);
    dbuf<float> db2_d(db0);
    BT_OK_OR_DIE(bt__cu_linear_bwd(dx2_d.p, dw2_d.p, db2_d.p, dy_d.p, x_d.p,
                                   w_d.p, N, IN, OUT, h, s));
    CHECK(bitwise_equal(dw2_d.get(), g_dw) && bitwise_equal(db2_d.get(), g_db),
          "linear bwd vs bwd_weight N=%zu", N);
    CHECK_REL(dx2_d.get(), dx2, "linear bwd dx again N=%zu IN=%zu OUT=%zu", N,
              IN, OUT);
  }
}

// ---- GELU
// --------------------------------------------------------------------

static void
test_gelu(cudaStream_t s)
{
  const size_t ns[] = {1, 7, 1000, 65537};
  for (size_t n : ns) {
    std::vector<float> x = random_floats(n, -6, 6);
    std::vector<float> dy = random_floats(n, -1, 1);
    // Past the clamp and at zero.
    const float special[] = {0.0f, -0.0f, 50.0f, -50.0f, 1e-30f, -9.5f};
    for (size_t i = 0; i < n && i < 6; i++)
      x[i] = special[i];
    std::vector<float> y(n), dx(n);
    BT_OK_OR_DIE(bt__gelu_fwd(y.data(), x.data(), n));
    BT_OK_OR_DIE(bt__gelu_bwd(dx.data(), dy.data(), x.data(), n));

    dbuf<float> x_d(x), dy_d(dy), y_d(n), dx_d(n);
    BT_OK_OR_DIE(bt__cu_gelu_fwd(y_d.p, x_d.p, n, s));
    BT_OK_OR_DIE(bt__cu_gelu_bwd(dx_d.p, dy_d.p, x_d.p, n, s));
    std::vector<float> g_y = y_d.get(), g_dx = dx_d.get();
    CHECK_REL(g_y, y, "gelu fwd n=%zu", n);
    CHECK_REL(g_dx, dx, "gelu bwd n=%zu", n);

    BT_OK_OR_DIE(bt__cu_gelu_fwd(y_d.p, x_d.p, n, s));
    CHECK(bitwise_equal(y_d.get(), g_y), "gelu fwd determinism n=%zu", n);
    // In place: dx into dy, then y into x; the same bits.
    BT_OK_OR_DIE(bt__cu_gelu_bwd(dy_d.p, dy_d.p, x_d.p, n, s));
    CHECK(bitwise_equal(dy_d.get(), g_dx), "gelu bwd in place n=%zu", n);
    BT_OK_OR_DIE(bt__cu_gelu_fwd(x_d.p, x_d.p, n, s));
    CHECK(bitwise_equal(x_d.get(), g_y), "gelu fwd in place n=%zu", n);
  }
}

// ---- LayerNorm
// ---------------------------------------------------------------

static void
test_layernorm(cudaStream_t s)
{
  struct {
    size_t N, D;
  } shapes[] = {{1, 1},    {1, 7},     {5, 33},   {3, 1},
                {64, 768}, {17, 1000}, {3, 4097}, {300, 48}};
  for (auto sh : shapes) {
    size_t N = sh.N, D = sh.D;
    // Off-centre rows: the two-pass variance matters.
    std::vector<float> x = random_floats(N * D, -2, 2);
    for (auto &v : x)
      v += 3.0f;
    std::vector<float> gamma = random_floats(D, 0.5f, 1.5f);
    std::vector<float> beta = random_floats(D, -0.5f, 0.5f);
    std::vector<float> dy = random_floats(N * D, -1, 1);
    std::vector<float> dg0 = random_floats(D, -1, 1);
    std::vector<float> db0 = random_floats(D, -1, 1);

    std::vector<float> y(N * D), mean(N), rstd(N), dx(N * D), dg = dg0,
                                                              dbt = db0;
    BT_OK_OR_DIE(bt__layernorm_fwd(y.data(), mean.data(), rstd.data(), x.data(),
                                   gamma.data(), beta.data(), N, D));
    BT_OK_OR_DIE(bt__layernorm_bwd(dx.data(), dg.data(), dbt.data(), dy.data(),
                                   x.data(), gamma.data(), mean.data(),
                                   rstd.data(), N, D));

    dbuf<float> x_d(x), g_d(gamma), b_d(beta), dy_d(dy), y_d(N * D), m_d(N),
        r_d(N), dx_d(N * D), dg_d(dg0), db_d(db0);
    BT_OK_OR_DIE(bt__cu_layernorm_fwd(y_d.p, m_d.p, r_d.p, x_d.p, g_d.p, b_d.p,
                                      N, D, s));
    std::vector<float> g_y = y_d.get();
    CHECK_REL(g_y, y, "layernorm y N=%zu D=%zu", N, D);
    CHECK_REL(m_d.get(), mean, "layernorm mean N=%zu D=%zu", N, D);
    CHECK_REL(r_d.get(), rstd, "layernorm rstd N=%zu D=%zu", N, D);
    // The backward reads the GPU forward's mean and rstd, as in training.
    BT_OK_OR_DIE(bt__cu_layernorm_bwd(dx_d.p, dg_d.p, db_d.p, dy_d.p, x_d.p,
                                      g_d.p, m_d.p, r_d.p, N, D, s));
    std::vector<float> g_dx = dx_d.get(), g_dg = dg_d.get(), g_db = db_d.get();
    CHECK_REL(g_dx, dx, "layernorm dx N=%zu D=%zu", N, D);
    CHECK_REL(g_dg, dg, "layernorm dgamma N=%zu D=%zu", N, D);
    CHECK_REL(g_db, dbt, "layernorm dbeta N=%zu D=%zu", N, D);

    // Determinism, and dx in place over dy: the same bits.
    BT_OK_OR_DIE(bt__cu_layernorm_fwd(y_d.p, m_d.p, r_d.p, x_d.p, g_d.p, b_d.p,
                                      N, D, s));
    CHECK(bitwise_equal(y_d.get(), g_y), "layernorm fwd determinism");
    dg_d.put(dg0);
    db_d.put(db0);
    BT_OK_OR_DIE(bt__cu_layernorm_bwd(dy_d.p, dg_d.p, db_d.p, dy_d.p, x_d.p,
                                      g_d.p, m_d.p, r_d.p, N, D, s));
    CHECK(bitwise_equal(dy_d.get(), g_dx), "layernorm dx in place N=%zu D=%zu",
          N, D);
    CHECK(bitwise_equal(dg_d.get(), g_dg) && bitwise_equal(db_d.get(), g_db),
          "layernorm bwd determinism N=%zu D=%zu", N, D);
  }
}

// ---- residual
// ----------------------------------------------------------------

static void
test_residual(cudaStream_t s)
{
  const size_t ns[] = {1, 5, 1000, 100003};
  for (size_t n : ns) {
    std::vector<float> a = random_floats(n, -1, 1), b = random_floats(n, -1, 1);
    std::vector<float> dy = random_floats(n, -1, 1);
    std::vector<float> da0 = random_floats(n, -1, 1);
    std::vector<float> db0 = random_floats(n, -1, 1);

    std::vector<float> y(n);
    BT_OK_OR_DIE(bt__residual_fwd(y.data(), a.data(), b.data(), n));
    dbuf<float> a_d(a), b_d(b), dy_d(dy), y_d(n), da_d(da0), db_d(db0);
    BT_OK_OR_DIE(bt__cu_residual_fwd(y_d.p, a_d.p, b_d.p, n, s));
    std::vector<float> g_y = y_d.get();
    CHECK(bitwise_equal(g_y, y), "residual fwd n=%zu: [%zu]", n,
          first_difference(g_y, y));
    BT_OK_OR_DIE(bt__cu_residual_fwd(a_d.p, a_d.p, b_d.p, n, s));
    CHECK(bitwise_equal(a_d.get(), y), "residual fwd in place n=%zu", n);

    // Both, one, the other, and da == db: bitwise the CPU's accumulation.
    for (int mode = 0; mode < 4; mode++) {
      std::vector<float> da = da0, db = db0;
      float *cda = mode == 2 ? nullptr : da.data();
      float *cdb = mode == 1 ? nullptr : mode == 3 ? da.data() : db.data();
      BT_OK_OR_DIE(bt__residual_bwd(cda, cdb, dy.data(), n));
      da_d.put(da0);
      db_d.put(db0);
      float *gda = mode == 2 ? nullptr : da_d.p;
      float *gdb = mode == 1 ? nullptr : mode == 3 ? da_d.p : db_d.p;
      BT_OK_OR_DIE(bt__cu_residual_bwd(gda, gdb, dy_d.p, n, s));
      CHECK(bitwise_equal(da_d.get(), da) && bitwise_equal(db_d.get(), db),
            "residual bwd n=%zu mode %d", n, mode);
    }
  }
}

// ---- cross-entropy
// -----------------------------------------------------------

struct xent_shape {
  size_t N, C, total;
};

static void
test_xent(cudaStream_t s)
{
  const xent_shape shapes[] = {
      {1, 1, 1},       {1, 5, 3},        {7, 10, 7},       {5, 3, 5},
      {33, 1000, 100}, {64, 50257, 256}, {2000, 17, 4000}, {40, 33, 40},
  };
  for (const xent_shape &sh : shapes) {
    size_t N = sh.N, C = sh.C, R = sh.total;
    std::vector<float> logits = random_floats(N * C, -5, 5);
    // A row far from zero: the maximum's subtraction keeps expf in range.
    for (size_t i = 0; i < C; i++)
      logits[i] += 80.0f;
    std::vector<int32_t> labels(N);
    for (auto &y : labels)
      y = (int32_t)(rng_next() % C);

    float loss = 0.0f;
    std::vector<float> dl(N * C);
    BT_OK_OR_DIE(bt__xent_fwd(&loss, logits.data(), labels.data(), N, C, R));
    BT_OK_OR_DIE(
        bt__xent_bwd(dl.data(), logits.data(), labels.data(), N, C, R));

    dbuf<float> lg_d(logits), dl_d(N * C), loss_d(1);
    dbuf<int32_t> lab_d(labels);
    BT_OK_OR_DIE(bt__cu_xent_fwd(loss_d.p, lg_d.p, lab_d.p, N, C, R, s));
    float g_loss = loss_d.get()[0];
    double e = rel_scalar(g_loss, loss);
    CHECK(e <= REL_TOL, "xent loss N=%zu C=%zu: %.9g vs %.9g (rel %g)", N, C,
          (double)g_loss, (double)loss, e);
    BT_OK_OR_DIE(bt__cu_xent_bwd(dl_d.p, lg_d.p, lab_d.p, N, C, R, s));
    std::vector<float> g_dl = dl_d.get();
    CHECK_REL(g_dl, dl, "xent dlogits N=%zu C=%zu", N, C);

    // Two runs: the same bits; then dlogits in place over the logits.
    BT_OK_OR_DIE(bt__cu_xent_fwd(loss_d.p, lg_d.p, lab_d.p, N, C, R, s));
    float again = loss_d.get()[0];
    CHECK(std::memcmp(&again, &g_loss, sizeof(float)) == 0,
          "xent loss determinism N=%zu C=%zu", N, C);
    BT_OK_OR_DIE(bt__cu_xent_bwd(lg_d.p, lg_d.p, lab_d.p, N, C, R, s));
    CHECK(bitwise_equal(lg_d.get(), g_dl), "xent bwd in place N=%zu C=%zu", N,
          C);

    // A bad label: flagged by the token check, the loss NaN, its row NaN
    // and the other rows unchanged.
    lg_d.put(logits);
    std::vector<int32_t> bad_labels = labels;
    size_t at = rng_next() % N;
    bad_labels[at] = (rng_next() & 1) ? (int32_t)C : -1;
    lab_d.put(bad_labels);
    dbuf<int32_t> bad(1);
    BT_OK_OR_DIE(bt__cu_embedding_check_tokens(bad.p, lab_d.p, N, C, s));
    CHECK(bad.get()[0] == 1, "bad label %d not flagged", bad_labels[at]);
    CHECK_STATUS(bt__xent_fwd(&loss, logits.data(), bad_labels.data(), N, C, R),
                 BT_EINVAL);
    BT_OK_OR_DIE(bt__cu_xent_fwd(loss_d.p, lg_d.p, lab_d.p, N, C, R, s));
    CHECK(std::isnan(loss_d.get()[0]), "bad label: loss not NaN");
    BT_OK_OR_DIE(bt__cu_xent_bwd(dl_d.p, lg_d.p, lab_d.p, N, C, R, s));
    std::vector<float> gb = dl_d.get();
    bool rows_ok = true;
    for (size_t r = 0; r < N; r++)
      for (size_t c = 0; c < C; c++) {
        float v = gb[r * C + c];
        rows_ok &=
            r == at ? std::isnan(v) : std::memcmp(&v, &g_dl[r * C + c], 4) == 0;
      }
    CHECK(rows_ok, "bad-label backward rows N=%zu C=%zu", N, C);
  }
}

// ---- optimizers
// --------------------------------------------------------------

static void
test_optim(cudaStream_t s)
{
  const size_t ns[] = {1, 7, 1000, 65537};
  for (size_t n : ns) {
    for (float wd : {0.0f, 0.01f}) {
      std::vector<float> w = random_floats(n, -1, 1), w0 = w;
      dbuf<float> w_d(w), g_d(n);
      std::vector<std::vector<float>> grads;
      for (int step = 0; step < 3; step++) {
        std::vector<float> g = random_floats(n, -1, 1);
        grads.push_back(g);
        g_d.put(g);
        BT_OK_OR_DIE(bt__sgd_update(w.data(), g.data(), n, 0.1f, wd));
        BT_OK_OR_DIE(bt__cu_sgd_update(w_d.p, g_d.p, n, 0.1f, wd, s));
      }
      std::vector<float> g_w = w_d.get();
      CHECK_REL(g_w, w, "sgd n=%zu wd=%g", n, (double)wd);
      // Again from the start: the same bits.
      w_d.put(w0);
      for (int step = 0; step < 3; step++) {
        g_d.put(grads[(size_t)step]);
        BT_OK_OR_DIE(bt__cu_sgd_update(w_d.p, g_d.p, n, 0.1f, wd, s));
      }
      CHECK(bitwise_equal(w_d.get(), g_w), "sgd determinism n=%zu", n);
    }

    for (float wd : {0.0f, 0.1f}) {
      std::vector<float> w = random_floats(n, -1, 1), w0 = w;
      std::vector<float> m(n, 0.0f), v(n, 0.0f);
      dbuf<float> w_d(w), m_d(m), v_d(v), g_d(n);
      std::vector<std::vector<float>> grads;
      for (int64_t t = 1; t <= 4; t++) {
        std::vector<float> g = random_floats(n, -1, 1);
        if (t == 3) // a zero gradient: eps keeps the division finite
          for (size_t i = 0; i < n; i += 2)
            g[i] = 0.0f;
        grads.push_back(g);
        g_d.put(g);
        BT_OK_OR_DIE(bt__adamw_update(w.data(), m.data(), v.data(), g.data(), n,
                                      1e-2f, 0.9f, 0.999f, 1e-8f, wd, t));
        BT_OK_OR_DIE(bt__cu_adamw_update(w_d.p, m_d.p, v_d.p, g_d.p, n, 1e-2f,
                                         0.9f, 0.999f, 1e-8f, wd, t, s));
      }
      std::vector<float> g_w = w_d.get(), g_m = m_d.get(), g_v = v_d.get();
      CHECK_REL(g_w, w, "adamw w n=%zu wd=%g", n, (double)wd);
      CHECK_REL(g_m, m, "adamw m n=%zu wd=%g", n, (double)wd);
      CHECK_REL(g_v, v, "adamw v n=%zu wd=%g", n, (double)wd);
      // Again from the start: the same bits.
      w_d.put(w0);
      m_d.put(std::vector<float>(n, 0.0f));
      v_d.put(std::vector<float>(n, 0.0f));
      for (int64_t t = 1; t <= 4; t++) {
        g_d.put(grads[(size_t)t - 1]);
        BT_OK_OR_DIE(bt__cu_adamw_update(w_d.p, m_d.p, v_d.p, g_d.p, n, 1e-2f,
                                         0.9f, 0.999f, 1e-8f, wd, t, s));
      }
      CHECK(bitwise_equal(w_d.get(), g_w) && bitwise_equal(m_d.get(), g_m) &&
                bitwise_equal(v_d.get(), g_v),
            "adamw determinism n=%zu", n);
    }
  }
}

// Arguments that fail leave outputs untouched and launch nothing.
static void
test_bad_arguments_on_device(cudaStream_t s, cublasHandle_t h)
{
  std::vector<float> sentinel(64, 7.0f);
  std::vector<int32_t> labels(8, 1);
  dbuf<float> a(sentinel), b(sentinel), c(sentinel);
  dbuf<int32_t> l(labels);
  CHECK_STATUS(bt__cu_linear_fwd(a.p, b.p, c.p, nullptr, 0, 2, 2, h, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_linear_bwd_weight(a.p, b.p, c.p, c.p, 2, 2, 0, h, s),
               BT_EINVAL);
  CHECK_STATUS(
      bt__cu_layernorm_bwd(a.p, b.p, b.p, c.p, c.p, c.p, c.p, c.p, 0, 4, s),
      BT_EINVAL);
  CHECK_STATUS(bt__cu_xent_fwd(a.p, c.p, l.p, 8, 4, 7, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_residual_bwd(a.p, b.p, b.p, 8, s), BT_EINVAL);
  CHECK_STATUS(bt__cu_adamw_update(a.p, b.p, b.p, c.p, 8, 1e-3f, 0.9f, 0.999f,
                                   1e-8f, 0.0f, 0, s),
               BT_EINVAL);
  CHECK_STATUS(bt__cu_sgd_update(a.p, c.p, 8, NAN, 0.0f, s), BT_EINVAL);
  CHECK(bitwise_equal(a.get(), sentinel) && bitwise_equal(b.get(), sentinel),
        "a failed call wrote");
  CHECK(cudaGetLastError() == cudaSuccess, "a failed call launched");
}

static void
on_device(cudaStream_t s, cublasHandle_t h)
{
  test_bad_arguments_on_device(s, h);
  test_linear(s, h);
  test_gelu(s);
  test_layernorm(s);
  test_residual(s);
  test_xent(s);
  test_optim(s);
}

int
main()
{
  return cuda_test_main(test_bad_arguments, on_device,
                        "all CUDA layer kernels match the CPU");
}
