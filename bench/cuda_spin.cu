// baton-bench --backend cuda: a kernel that occupies its stream for a
// given time (one thread spinning on the GPU's global timer), the GPU
// analogue of the synthetic backend's timed tasks.
#include <cuda_runtime.h>

#include "cuda_spin.h"

// Kernels

__global__ void
spin_kernel(unsigned long long ns)
{
  unsigned long long t0, t;

  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  while (t - t0 < ns);
}

// Launchers

extern "C" int
bench_cuda_spin(void *stream, double us)
{
  spin_kernel<<<1, 1, 0, (cudaStream_t)stream>>>(
      (unsigned long long)(us * 1000.0 + 0.5));
  return cudaGetLastError() == cudaSuccess ? 0 : -1;
}
