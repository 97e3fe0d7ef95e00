/* CUDA devices for the runtime: streams, completion events and
 * cross-device waits as <baton/cuda.h> describes.  Plain C on the CUDA
 * runtime API (no kernels here). */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "baton/cuda.h"
#include "error.h"

/* Completion events by exec task id, in chunks allocated on first use (the
 * runtime numbers tasks 0 .. n-1 and runs at most one exec at a time; a
 * task's event is created and recorded only by its device's thread and
 * read by its successors' threads after the runtime's hand-off). */
#define CHUNK 4096
#define MAX_CHUNKS 4096 /* 16M tasks */

struct chunk {
  cudaEvent_t ev[CHUNK];
  unsigned char made[CHUNK];
};

struct bt_cuda_devices {
  int32_t n;
  bt_cuda_ctx_t *ctx;     /* [n] */
  char (*name)[32];       /* [n] */
  _Atomic(struct chunk *) chunks[MAX_CHUNKS];
};

/* The ops read the devices object through the ctx's place in the array. */
static bt_cuda_devices_t *
devices_of(const bt_cuda_ctx_t *ctx)
{
  return *(bt_cuda_devices_t *const *)(const void *)(ctx - ctx->index - 1);
}

static int
cuda_error(char *errbuf, size_t errlen, const char *what, cudaError_t e)
{
  snprintf(errbuf, errlen, "%s: %s (%s)", what, cudaGetErrorString(e),
           cudaGetErrorName(e));
  return e == cudaErrorMemoryAllocation ? BT_ENOMEM : BT_EIO;
}

/* Task t's event, created on first use; NULL when out of memory. */
static cudaEvent_t *
event_of(bt_cuda_devices_t *d, int32_t t, int create, cudaError_t *e)
{
  struct chunk *c;
  size_t at = (size_t)t / CHUNK, i = (size_t)t % CHUNK;

  *e = cudaSuccess;
  if (t < 0 || at >= MAX_CHUNKS)
    return NULL;
  c = atomic_load_explicit(&d->chunks[at], memory_order_acquire);
  if (c == NULL) {
    struct chunk *fresh, *none = NULL;
    if (!create)
      return NULL;
    fresh = calloc(1, sizeof *fresh);
    if (fresh == NULL)
      return NULL;
    if (atomic_compare_exchange_strong_explicit(&d->chunks[at], &none, fresh,
                                                memory_order_acq_rel,
                                                memory_order_acquire))
      c = fresh;
    else {
      free(fresh);
      c = none;
    }
  }
  if (!c->made[i]) {
    if (!create)
      return NULL;
    *e = cudaEventCreateWithFlags(&c->ev[i], cudaEventDisableTiming);
    if (*e != cudaSuccess)
      return NULL;
    c->made[i] = 1;
  }
  return &c->ev[i];
}

static int
cuda_execute(const bt_task_call_t *call, bt_task_fn fn, char *errbuf,
             size_t errlen)
{
  const bt_cuda_ctx_t *ctx = call->device_ctx;
  cudaError_t e = cudaSetDevice(ctx->gpu);
  int rc;

  if (e != cudaSuccess)
    return cuda_error(errbuf, errlen, "cudaSetDevice", e);
  rc = fn(call, errbuf, errlen);
  if (rc != 0) {
    /* The task's own failure is the error; the thread's last CUDA error
     * must not fail the next task too. */
    (void)cudaGetLastError();
    return rc;
  }
  /* A launch that failed (bad configuration, out of resources) is reported
   * here, against this task. */
  e = cudaGetLastError();
  return e == cudaSuccess ? 0 : cuda_error(errbuf, errlen, "a kernel launch",
                                           e);
}

static int
cuda_record(const bt_task_call_t *call, char *errbuf, size_t errlen)
{
  const bt_cuda_ctx_t *ctx = call->device_ctx;
  cudaError_t e;
  cudaEvent_t *ev = event_of(devices_of(ctx), call->task, 1, &e);

  if (ev == NULL)
    return e != cudaSuccess
               ? cuda_error(errbuf, errlen, "creating a completion event", e)
               : (snprintf(errbuf, errlen, "out of memory for events"),
                  BT_ENOMEM);
  e = cudaEventRecord(*ev, (cudaStream_t)ctx->stream);
  return e == cudaSuccess ? 0 : cuda_error(errbuf, errlen, "cudaEventRecord",
                                           e);
}

static int
cuda_wait(const bt_task_call_t *call, int32_t producer, int32_t producer_dev,
          char *errbuf, size_t errlen)
{
  const bt_cuda_ctx_t *ctx = call->device_ctx;
  cudaError_t e;
  cudaEvent_t *ev = event_of(devices_of(ctx), producer, 0, &e);

  (void)producer_dev;
  if (ev == NULL) /* a CPU producer, or one that recorded nothing */
    return 0;
  e = cudaStreamWaitEvent((cudaStream_t)ctx->stream, *ev, 0);
  return e == cudaSuccess ? 0
                          : cuda_error(errbuf, errlen, "cudaStreamWaitEvent",
                                       e);
}

static const bt_device_ops_t cuda_ops = {sizeof(bt_device_ops_t), cuda_execute,
                                         cuda_record, cuda_wait};

int
bt_cuda_available(void)
{
  int n = 0;

  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

bt_status
bt_cuda_devices_create(const int32_t *gpus, int32_t n, bt_device_desc_t *desc,
                       bt_cuda_devices_t **out, bt_error_t *err)
{
  bt_cuda_devices_t *d;
  bt_cuda_ctx_t *slab;
  int count = 0;
  cudaError_t e;

  if (out == NULL || gpus == NULL || desc == NULL || n < 1)
    return bt__errorf(err, BT_EINVAL,
                      "bt_cuda_devices_create: needs n >= 1 GPU ordinals, "
                      "the descriptors to fill and out");
  *out = NULL;
  e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0)
    return bt__errorf(err, BT_EUNSUPPORTED,
                      "no CUDA device here (%s); use the CPU devices",
                      e != cudaSuccess ? cudaGetErrorString(e) : "none");
  for (int32_t i = 0; i < n; i++)
    if (gpus[i] < 0 || gpus[i] >= count)
      return bt__errorf(err, BT_EINVAL,
                        "device %d asks for cuda:%d, but this machine has "
                        "cuda:0 .. cuda:%d",
                        (int)i, (int)gpus[i], count - 1);
  d = calloc(1, sizeof *d);
  /* The contexts sit after a pointer back to d (devices_of). */
  slab = calloc((size_t)n + 1, sizeof *slab);
  if (d == NULL || slab == NULL ||
      (d->name = calloc((size_t)n, sizeof *d->name)) == NULL) {
    free(d);
    free(slab);
    return bt__errorf(err, BT_ENOMEM, "out of memory for CUDA devices");
  }
  _Static_assert(sizeof(bt_cuda_ctx_t) >= sizeof(void *),
                 "the back pointer fits in a context slot");
  memcpy(slab, &d, sizeof d);
  d->ctx = slab + 1;
  d->n = n;
  for (int32_t i = 0; i < n; i++) {
    bt_cuda_ctx_t *c = &d->ctx[i];
    cudaStream_t s[3] = {NULL, NULL, NULL};
    c->gpu = gpus[i];
    c->index = i;
    e = cudaSetDevice(c->gpu);
    for (int k = 0; k < 3 && e == cudaSuccess; k++)
      e = cudaStreamCreateWithFlags(&s[k], cudaStreamNonBlocking);
    c->stream = s[0];
    c->send_stream = s[1];
    c->recv_stream = s[2];
    if (e != cudaSuccess) {
      bt_cuda_devices_destroy(d);
      return bt__errorf(err, e == cudaErrorMemoryAllocation ? BT_ENOMEM
                                                            : BT_EIO,
                        "creating cuda:%d's streams: %s", (int)c->gpu,
                        cudaGetErrorString(e));
    }
    snprintf(d->name[i], sizeof d->name[i], "cuda:%d", (int)c->gpu);
    desc[i].name = d->name[i];
    desc[i].ops = &cuda_ops;
    desc[i].ctx = c;
  }
  *out = d;
  return BT_OK;
}

bt_status
bt_cuda_devices_sync(bt_cuda_devices_t *d, bt_error_t *err)
{
  if (d == NULL)
    return bt__errorf(err, BT_EINVAL, "bt_cuda_devices_sync: NULL devices");
  for (int32_t i = 0; i < d->n; i++) {
    const bt_cuda_ctx_t *c = &d->ctx[i];
    cudaError_t e = cudaSetDevice(c->gpu);
    void *streams[3] = {c->stream, c->send_stream, c->recv_stream};
    for (int k = 0; k < 3 && e == cudaSuccess; k++)
      e = cudaStreamSynchronize((cudaStream_t)streams[k]);
    if (e != cudaSuccess)
      return bt__errorf(err, e == cudaErrorMemoryAllocation ? BT_ENOMEM
                                                            : BT_EIO,
                        "%s: %s (%s)", d->name[i], cudaGetErrorString(e),
                        cudaGetErrorName(e));
  }
  return BT_OK;
}

void
bt_cuda_devices_destroy(bt_cuda_devices_t *d)
{
  if (d == NULL)
    return;
  for (size_t at = 0; at < MAX_CHUNKS; at++) {
    struct chunk *c = atomic_load_explicit(&d->chunks[at],
                                           memory_order_relaxed);
    for (size_t i = 0; c != NULL && i < CHUNK; i++)
      if (c->made[i])
        cudaEventDestroy(c->ev[i]);
    free(c);
  }
  for (int32_t i = 0; d->ctx != NULL && i < d->n; i++) {
    bt_cuda_ctx_t *c = &d->ctx[i];
    void *streams[3] = {c->stream, c->send_stream, c->recv_stream};
    cudaSetDevice(c->gpu);
    for (int k = 0; k < 3; k++)
      if (streams[k] != NULL)
        cudaStreamDestroy((cudaStream_t)streams[k]);
  }
  free(d->ctx != NULL ? d->ctx - 1 : NULL);
  free(d->name);
  free(d);
}
