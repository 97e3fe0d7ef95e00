// What the CUDA kernel tests share (tests/test_cuda_gpt.cu,
// tests/test_cuda_kernels.cu): failure counting and checks, CUDA and
// bt_status guards, a splitmix64 generator, device buffers that copy to
// and from host vectors, and comparisons (bitwise, max-abs relative).
// Header-only: one test program includes it once.
#ifndef BATON_TESTS_CUDA_TEST_UTIL_CUH
#define BATON_TESTS_CUDA_TEST_UTIL_CUH

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "baton/status.h"

static int failures;

#define CHECK(cond, ...)                                                       \
  do {                                                                         \
    if (!(cond)) {                                                             \
      std::printf("%s:%d: FAIL %s: ", __FILE__, __LINE__, #cond);              \
      std::printf(__VA_ARGS__);                                                \
      std::printf("\n");                                                       \
      failures++;                                                              \
    }                                                                          \
  } while (0)

#define CHECK_STATUS(call, want)                                               \
  do {                                                                         \
    bt_status got_ = (call);                                                   \
    CHECK(got_ == (want), "%s returned %s, wanted %s", #call,                  \
          bt_status_name(got_), bt_status_name(want));                         \
  } while (0)

// A device failure ends the test: later results would be meaningless.
#define CUDA_OK(call)                                                          \
  do {                                                                         \
    cudaError_t e_ = (call);                                                   \
    if (e_ != cudaSuccess) {                                                   \
      std::printf("%s:%d: %s: %s\n", __FILE__, __LINE__, #call,                \
                  cudaGetErrorString(e_));                                     \
      std::exit(1);                                                            \
    }                                                                          \
  } while (0)

#define BT_OK_OR_DIE(call)                                                     \
  do {                                                                         \
    bt_status s_ = (call);                                                     \
    if (s_ != BT_OK) {                                                         \
      std::printf("%s:%d: %s: %s\n", __FILE__, __LINE__, #call,                \
                  bt_status_name(s_));                                         \
      std::exit(1);                                                            \
    }                                                                          \
  } while (0)

// ---- helpers ---------------------------------------------------------------

static uint64_t rng_state = 0x243f6a8885a308d3ull;

static uint64_t
rng_next()
{
  // splitmix64
  uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static float
rng_uniform(float lo, float hi)
{
  return lo + (hi - lo) * (float)(rng_next() >> 40) * 0x1.0p-24f;
}

static std::vector<float>
random_floats(size_t n, float lo, float hi)
{
  std::vector<float> v(n);
  for (auto &f : v)
    f = rng_uniform(lo, hi);
  return v;
}

template <typename T> struct dbuf {
  T *p = nullptr;
  size_t n = 0;
  explicit dbuf(size_t count) : n(count)
  {
    CUDA_OK(cudaMalloc(&p, (count ? count : 1) * sizeof(T)));
  }
  dbuf(const std::vector<T> &h) : dbuf(h.size())
  {
    put(h);
  }
  ~dbuf()
  {
    cudaFree(p);
  }
  dbuf(const dbuf &) = delete;
  dbuf &operator=(const dbuf &) = delete;
  // Synchronous on both sides: the stream's earlier work has finished, and
  // the copy has landed before any later work starts.
  void put(const std::vector<T> &h)
  {
    CUDA_OK(cudaDeviceSynchronize());
    CUDA_OK(cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice));
    CUDA_OK(cudaDeviceSynchronize());
  }
  std::vector<T> get() const
  {
    std::vector<T> h(n);
    CUDA_OK(cudaDeviceSynchronize());
    CUDA_OK(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
};

static bool
bitwise_equal(const std::vector<float> &a, const std::vector<float> &b)
{
  return a.size() == b.size() &&
         std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

static size_t
first_difference(const std::vector<float> &a, const std::vector<float> &b)
{
  for (size_t i = 0; i < a.size() && i < b.size(); i++)
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0)
      return i;
  return a.size();
}

// max |got - want| / max |want| (absolute when want is all zeros).
static double
rel_err(const std::vector<float> &got, const std::vector<float> &want)
{
  double diff = 0.0, mag = 0.0;
  for (size_t i = 0; i < want.size(); i++) {
    double d = std::fabs((double)got[i] - (double)want[i]);
    if (std::isnan(d))
      return INFINITY;
    diff = std::fmax(diff, d);
    mag = std::fmax(mag, std::fabs((double)want[i]));
  }
  return mag > 0.0 ? diff / mag : diff;
}

#define REL_TOL 1e-4

// A test program's main: the argument checks (no device needed) first,
// then, when a device is present, the device tests on a blocking stream
// (ordered after dbuf's copies) and a cuBLAS handle in pedantic fp32 math.
// Exits 77 without a device.
static int
cuda_test_main(void (*no_device)(void),
               void (*on_device)(cudaStream_t, cublasHandle_t),
               const char *done)
{
  int count = 0;
  cudaStream_t s;
  cublasHandle_t h;

  no_device();
  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;
  }
  CUDA_OK(cudaStreamCreate(&s));
  if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS ||
      cublasSetMathMode(h, CUBLAS_PEDANTIC_MATH) != CUBLAS_STATUS_SUCCESS) {
    std::printf("cublasCreate failed\n");
    return 1;
  }
  on_device(s, h);
  cublasDestroy(h);
  CUDA_OK(cudaStreamDestroy(s));
  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  std::printf("%s\n", done);
  return 0;
}

#endif // BATON_TESTS_CUDA_TEST_UTIL_CUH
