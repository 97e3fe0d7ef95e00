/* baton: CUDA devices for the runtime (built when the CUDA toolkit is found;
 * library baton_cuda).
 *
 * Each logical device is a host thread (the runtime's DEDICATED mode) with
 * its own streams on one GPU; several logical devices may share a GPU
 * (`cuda:0,cuda:0`), each with its own streams, which is how multi-device
 * logic is tested on a single-GPU machine.  For every task the device's
 * actor
 *   - turns each dependency on another device into cudaStreamWaitEvent on
 *     the producer's completion event (never a host synchronization),
 *   - calls the task function, which enqueues its kernels on
 *     ctx->stream (call->device_ctx is a bt_cuda_ctx_t *),
 *   - records the task's completion event (cudaEventDisableTiming) on that
 *     stream,
 * so the host runs ahead of the GPU and the whole step is enqueued before
 * much of it has run.  bt_cuda_devices_sync waits for every stream (the end
 * of a step, before reading results on the host).
 *
 * Errors: a task whose kernels fail to launch (or whose function returns an
 * error) ends the step like a CPU task, named "2F5 on cuda:1: ...".
 * Asynchronous faults (an illegal address) surface at the next sync and
 * leave the CUDA context unusable, as CUDA does; out-of-memory does not.
 *
 * Status: compiled and linked on machines without a GPU; its test
 * (tests/test_cuda_device.c) has not run on a GPU yet. */
#ifndef BATON_CUDA_H
#define BATON_CUDA_H

#include <stdint.h>

#include "baton/export.h"
#include "baton/model.h"
#include "baton/runtime.h"
#include "baton/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What a CUDA device's task sees as call->device_ctx. */
typedef struct bt_cuda_ctx {
  int32_t gpu;         /* the CUDA device ordinal */
  int32_t index;       /* the logical device */
  void *stream;        /* cudaStream_t: compute */
  void *send_stream;   /* cudaStream_t: outgoing transfers */
  void *recv_stream;   /* cudaStream_t: incoming transfers */
  void *cublas;        /* cublasHandle_t on stream (a backend's devices;
                          NULL from bt_cuda_devices_create) */
} bt_cuda_ctx_t;

typedef struct bt_cuda_devices bt_cuda_devices_t;

/* Whether a CUDA device is present (0 without a driver or a GPU). */
BT_API int bt_cuda_available(void);

/* n logical devices, device i on GPU gpus[i]; fills desc[0..n) for
 * bt_runtime_config_t.device (use mode BT_RUNTIME_DEDICATED).  names may be
 * NULL ("cuda:<gpu>").  BT_EINVAL (a bad ordinal, n < 1), BT_EUNSUPPORTED
 * (no GPU), BT_ENOMEM, BT_EIO (a CUDA call failed; its message is in
 * err).  The devices must outlive the runtime. */
BT_API bt_status bt_cuda_devices_create(const int32_t *gpus, int32_t n,
                                        bt_device_desc_t *desc,
                                        bt_cuda_devices_t **out,
                                        bt_error_t *err);

/* Waits for every stream of every device; the first CUDA error, named. */
BT_API bt_status bt_cuda_devices_sync(bt_cuda_devices_t *devs,
                                      bt_error_t *err);

/* Frees streams and events; NULL is accepted.  After the runtime. */
BT_API void bt_cuda_devices_destroy(bt_cuda_devices_t *devs);

/* Trace mode (between steps): each task's work is bracketed by timing
 * events on its stream.  bt_cuda_devices_step_begin marks the step's start
 * on every stream (call it before the step); after a sync,
 * bt_cuda_devices_task_times gives task's device and its start and end in
 * microseconds since the step's start on its GPU (BT_EINVAL: not traced).
 * Off by default: the events cost a little on every task. */
BT_API bt_status bt_cuda_devices_trace(bt_cuda_devices_t *devs, int on,
                                       bt_error_t *err);
BT_API bt_status bt_cuda_devices_step_begin(bt_cuda_devices_t *devs,
                                            bt_error_t *err);
BT_API bt_status bt_cuda_devices_task_times(bt_cuda_devices_t *devs,
                                            int32_t task, int32_t *device,
                                            double *start_us, double *end_us);

/* A whole step as one CUDA graph, because the plan is static: between
 * capture_begin and capture_end, run the step as usual (its tasks are
 * recorded, not run: device 0's stream captures and every other device's
 * stream joins it, cudaStreamCaptureModeThreadLocal); replay then launches
 * the recorded step (a sync waits for it), with its buffers at the same
 * addresses.  The step must have run once before (its events exist).  A
 * failed capture ends it and says so: run without graphs. */
BT_API bt_status bt_cuda_devices_capture_begin(bt_cuda_devices_t *devs,
                                               bt_error_t *err);
BT_API bt_status bt_cuda_devices_capture_end(bt_cuda_devices_t *devs,
                                             bt_error_t *err);
BT_API bt_status bt_cuda_devices_replay(bt_cuda_devices_t *devs,
                                        bt_error_t *err);

/* A backend for bt_trainer_config_t.backend (<baton/model.h>): n logical
 * devices, device i on GPU gpus[i] (repeat an ordinal to put several
 * stages' devices on one GPU), each with its streams and a cuBLAS handle;
 * the kernels of kernels/cuda/; parameters, gradients, optimizer state and
 * activations in GPU memory, allocated when a trainer is created (a step
 * allocates nothing).  Buffers between stages on different GPUs use peer
 * access, or mapped pinned host memory where the GPUs cannot reach each
 * other.  Errors as bt_cuda_devices_create's, and BT_EIO when cuBLAS does
 * not start.  Free with bt_backend_destroy, after its trainers. */
BT_API bt_status bt_cuda_backend_create(const int32_t *gpus, int32_t n,
                                        bt_backend_t **out, bt_error_t *err);

/* The backend's devices (for the trace and capture calls above). */
BT_API bt_cuda_devices_t *bt_cuda_backend_devices(bt_backend_t *backend);

#ifdef __cplusplus
}
#endif

#endif /* BATON_CUDA_H */
