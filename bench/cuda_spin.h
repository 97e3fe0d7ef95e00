/* baton-bench --backend cuda: a timed GPU task (bench/cuda_spin.cu). */
#ifndef BATON_BENCH_CUDA_SPIN_H
#define BATON_BENCH_CUDA_SPIN_H

#ifdef __cplusplus
extern "C" {
#endif

/* Enqueues on stream (a cudaStream_t) one kernel that spins for us
 * microseconds on the GPU's clock; 0, or -1 when the launch fails. */
int bench_cuda_spin(void *stream, double us);

#ifdef __cplusplus
}
#endif

#endif /* BATON_BENCH_CUDA_SPIN_H */
