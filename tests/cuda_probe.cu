// GPU smoke test: proves the CUDA toolchain builds and links here; on a
// machine with a GPU it runs a kernel and checks the result.  Exits 77
// (skipped) when no GPU is present.
#include <cstdio>

#include <cuda_runtime.h>

__global__ void
axpy(int n, float a, const float *x, float *y)
{
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n)
    y[i] += a * x[i];
}

int
main()
{
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;
  }
  const int n = 1 << 16;
  float *x, *y;
  if (cudaMallocManaged(&x, n * sizeof(float)) != cudaSuccess ||
      cudaMallocManaged(&y, n * sizeof(float)) != cudaSuccess)
    return 1;
  for (int i = 0; i < n; i++) {
    x[i] = (float)i;
    y[i] = 1.0f;
  }
  axpy<<<(n + 255) / 256, 256>>>(n, 2.0f, x, y);
  if (cudaDeviceSynchronize() != cudaSuccess)
    return 1;
  int bad = 0;
  for (int i = 0; i < n; i++)
    bad += y[i] != 1.0f + 2.0f * (float)i;
  cudaFree(x);
  cudaFree(y);
  std::printf("%d devices, axpy %s\n", count, bad ? "WRONG" : "ok");
  return bad ? 1 : 0;
}
