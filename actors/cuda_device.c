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
  /* Trace mode: timing events around the task's work, and its device. */
  cudaEvent_t t0[CHUNK], t1[CHUNK];
  unsigned char timed[CHUNK];
  int32_t dev[CHUNK];
};

struct bt_cuda_devices {
  int32_t n;
  bt_cuda_ctx_t *ctx; /* [n] */
  char (*name)[32];   /* [n] */
  _Atomic(struct chunk *) chunks[MAX_CHUNKS];
  /* Set between steps, read by the actors after the runtime's hand-off. */
  int trace;
  cudaEvent_t *origin;   /* [n] trace: the step's start per device */
  int32_t *first_on_gpu; /* [n]: the first device on the same GPU */
  /* A captured step (bt_cuda_devices_capture_*). */
  cudaEvent_t fork, *join; /* [n] */
  cudaGraph_t graph;
  cudaGraphExec_t graph_exec;
  int capturing;
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

/* Task t's chunk, allocated on first use when create; NULL otherwise. */
static struct chunk *
chunk_of(bt_cuda_devices_t *d, int32_t t, int create)
{
  struct chunk *c;
  size_t at = (size_t)t / CHUNK;

  if (t < 0 || at >= MAX_CHUNKS)
    return NULL;
  /* Acquire: pairs with the release of the CAS that published it. */
  c = atomic_load_explicit(&d->chunks[at], memory_order_acquire);
  if (c == NULL && create) {
    struct chunk *fresh = calloc(1, sizeof *fresh), *none = NULL;
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
  return c;
}

/* Task t's event, created on first use; NULL when out of memory. */
static cudaEvent_t *
event_of(bt_cuda_devices_t *d, int32_t t, int create, cudaError_t *e)
{
  struct chunk *c = chunk_of(d, t, create);
  size_t i = (size_t)t % CHUNK;

  *e = cudaSuccess;
  if (c == NULL)
    return NULL;
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

/* Trace mode: records task t's start (which 0) or end (1) timing event on
 * the device's stream, created on first use. */
static cudaError_t
record_timing(bt_cuda_devices_t *d, const bt_cuda_ctx_t *ctx, int32_t t,
              int which)
{
  struct chunk *c = chunk_of(d, t, 1);
  size_t i = (size_t)t % CHUNK;
  cudaError_t e = cudaSuccess;

  if (c == NULL)
    return cudaErrorMemoryAllocation;
  if (!c->timed[i]) {
    e = cudaEventCreate(&c->t0[i]);
    if (e == cudaSuccess && (e = cudaEventCreate(&c->t1[i])) != cudaSuccess)
      cudaEventDestroy(c->t0[i]);
    if (e != cudaSuccess)
      return e;
    c->timed[i] = 1;
  }
  c->dev[i] = ctx->index;
  return cudaEventRecord(which ? c->t1[i] : c->t0[i],
                         (cudaStream_t)ctx->stream);
}

static int
cuda_execute(const bt_task_call_t *call, bt_task_fn fn, char *errbuf,
             size_t errlen)
{
  const bt_cuda_ctx_t *ctx = call->device_ctx;
  bt_cuda_devices_t *d = devices_of(ctx);
  cudaError_t e = cudaSetDevice(ctx->gpu);
  int rc;

  if (e == cudaSuccess && d->trace)
    e = record_timing(d, ctx, call->task, 0);
  if (e != cudaSuccess)
    return cuda_error(errbuf, errlen, "starting the task", e);
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
  return e == cudaSuccess ? 0
                          : cuda_error(errbuf, errlen,
                                       "a kernel launch (or an earlier "
                                       "asynchronous fault)",
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
  if (e == cudaSuccess && devices_of(ctx)->trace)
    e = record_timing(devices_of(ctx), ctx, call->task, 1);
  return e == cudaSuccess ? 0
                          : cuda_error(errbuf, errlen, "cudaEventRecord", e);
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
  return e == cudaSuccess
             ? 0
             : cuda_error(errbuf, errlen, "cudaStreamWaitEvent", e);
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
  d->origin = calloc((size_t)n, sizeof *d->origin);
  d->join = calloc((size_t)n, sizeof *d->join);
  d->first_on_gpu = calloc((size_t)n, sizeof *d->first_on_gpu);
  if (d->origin == NULL || d->join == NULL || d->first_on_gpu == NULL) {
    bt_cuda_devices_destroy(d);
    return bt__errorf(err, BT_ENOMEM, "out of memory for CUDA devices");
  }
  for (int32_t i = 0; i < n; i++) {
    d->first_on_gpu[i] = i;
    for (int32_t j = 0; j < i; j++)
      if (gpus[j] == gpus[i]) {
        d->first_on_gpu[i] = j;
        break;
      }
  }
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
      return bt__errorf(
          err, e == cudaErrorMemoryAllocation ? BT_ENOMEM : BT_EIO,
          "creating cuda:%d's streams: %s", (int)c->gpu, cudaGetErrorString(e));
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
      return bt__errorf(err,
                        e == cudaErrorMemoryAllocation ? BT_ENOMEM : BT_EIO,
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
    struct chunk *c =
        atomic_load_explicit(&d->chunks[at], memory_order_relaxed);
    for (size_t i = 0; c != NULL && i < CHUNK; i++) {
      if (c->made[i])
        cudaEventDestroy(c->ev[i]);
      if (c->timed[i]) {
        cudaEventDestroy(c->t0[i]);
        cudaEventDestroy(c->t1[i]);
      }
    }
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
  for (int32_t i = 0; i < d->n; i++) {
    if (d->origin != NULL && d->origin[i] != NULL)
      cudaEventDestroy(d->origin[i]);
    if (d->join != NULL && d->join[i] != NULL)
      cudaEventDestroy(d->join[i]);
  }
  if (d->fork != NULL)
    cudaEventDestroy(d->fork);
  if (d->graph_exec != NULL)
    cudaGraphExecDestroy(d->graph_exec);
  if (d->graph != NULL)
    cudaGraphDestroy(d->graph);
  free(d->origin);
  free(d->join);
  free(d->first_on_gpu);
  free(d->ctx != NULL ? d->ctx - 1 : NULL);
  free(d->name);
  free(d);
}

/* ---- trace ---------------------------------------------------------------
 * Timing events are recorded only in trace mode: the task's start (after
 * its stream waits) and end on its stream, and each device's origin at
 * bt_cuda_devices_step_begin; times are read after a sync, against the
 * origin of the first device on the same GPU (events of one GPU compare
 * across its streams). */

bt_status
bt_cuda_devices_trace(bt_cuda_devices_t *d, int on, bt_error_t *err)
{
  if (d == NULL)
    return bt__errorf(err, BT_EINVAL, "bt_cuda_devices_trace: NULL devices");
  for (int32_t i = 0; on && i < d->n; i++)
    if (d->origin[i] == NULL) {
      cudaError_t e = cudaSetDevice(d->ctx[i].gpu);
      if (e == cudaSuccess)
        e = cudaEventCreate(&d->origin[i]);
      if (e != cudaSuccess)
        return bt__errorf(err, BT_EIO, "%s: creating a timing event: %s",
                          d->name[i], cudaGetErrorString(e));
    }
  d->trace = on != 0;
  return BT_OK;
}

bt_status
bt_cuda_devices_step_begin(bt_cuda_devices_t *d, bt_error_t *err)
{
  if (d == NULL)
    return bt__errorf(err, BT_EINVAL, "bt_cuda_devices_step_begin: NULL");
  for (int32_t i = 0; d->trace && i < d->n; i++) {
    cudaError_t e = cudaSetDevice(d->ctx[i].gpu);
    if (e == cudaSuccess)
      e = cudaEventRecord(d->origin[i], (cudaStream_t)d->ctx[i].stream);
    if (e != cudaSuccess)
      return bt__errorf(err, BT_EIO, "%s: recording the step's origin: %s",
                        d->name[i], cudaGetErrorString(e));
  }
  return BT_OK;
}

bt_status
bt_cuda_devices_task_times(bt_cuda_devices_t *d, int32_t task, int32_t *device,
                           double *start_us, double *end_us)
{
  struct chunk *c;
  size_t i = (size_t)task % CHUNK;
  float a = 0.0f, b = 0.0f;
  int32_t dev;
  cudaEvent_t o;

  if (d == NULL || !d->trace || (c = chunk_of(d, task, 0)) == NULL ||
      !c->timed[i])
    return BT_EINVAL;
  dev = c->dev[i];
  o = d->origin[d->first_on_gpu[dev]];
  if (cudaEventElapsedTime(&a, o, c->t0[i]) != cudaSuccess ||
      cudaEventElapsedTime(&b, o, c->t1[i]) != cudaSuccess) {
    (void)cudaGetLastError();
    return BT_EIO;
  }
  *device = dev;
  *start_us = 1e3 * (double)a;
  *end_us = 1e3 * (double)b;
  return BT_OK;
}

/* ---- captured steps --------------------------------------------------------
 * Capture starts on device 0's compute stream; every other device's stream
 * joins it by waiting on a fork event recorded there, and at the end the
 * origin waits on each stream's join event, so the graph holds every
 * device's work and the cross-device waits between them.  ThreadLocal
 * mode: the capturing thread may not synchronize (the runtime's actors,
 * other threads, enqueue as always). */

static bt_status
capture_fail(bt_cuda_devices_t *d, bt_error_t *err, const char *what,
             cudaError_t e)
{
  cudaGraph_t g = NULL;

  if (d->capturing) {
    /* Ends the broken capture; its partial graph is dropped. */
    cudaSetDevice(d->ctx[0].gpu);
    if (cudaStreamEndCapture((cudaStream_t)d->ctx[0].stream, &g) ==
            cudaSuccess &&
        g != NULL)
      cudaGraphDestroy(g);
    d->capturing = 0;
  }
  (void)cudaGetLastError();
  return bt__errorf(err, e == cudaErrorMemoryAllocation ? BT_ENOMEM : BT_EIO,
                    "capturing the step: %s: %s (%s); run without CUDA "
                    "graphs",
                    what, cudaGetErrorString(e), cudaGetErrorName(e));
}

bt_status
bt_cuda_devices_capture_begin(bt_cuda_devices_t *d, bt_error_t *err)
{
  cudaError_t e;

  if (d == NULL || d->capturing)
    return bt__errorf(err, BT_EINVAL, "bt_cuda_devices_capture_begin: %s",
                      d == NULL ? "NULL devices" : "already capturing");
  for (int32_t i = 1; i < d->n; i++)
    if (d->join[i] == NULL) {
      e = cudaSetDevice(d->ctx[i].gpu);
      if (e == cudaSuccess)
        e = cudaEventCreateWithFlags(&d->join[i], cudaEventDisableTiming);
      if (e != cudaSuccess)
        return capture_fail(d, err, "creating its events", e);
    }
  e = cudaSetDevice(d->ctx[0].gpu);
  if (e == cudaSuccess && d->fork == NULL)
    e = cudaEventCreateWithFlags(&d->fork, cudaEventDisableTiming);
  if (e == cudaSuccess)
    e = cudaStreamBeginCapture((cudaStream_t)d->ctx[0].stream,
                               cudaStreamCaptureModeThreadLocal);
  if (e != cudaSuccess)
    return capture_fail(d, err, "beginning", e);
  d->capturing = 1;
  e = cudaEventRecord(d->fork, (cudaStream_t)d->ctx[0].stream);
  for (int32_t i = 1; i < d->n && e == cudaSuccess; i++) {
    e = cudaSetDevice(d->ctx[i].gpu);
    if (e == cudaSuccess)
      e = cudaStreamWaitEvent((cudaStream_t)d->ctx[i].stream, d->fork, 0);
  }
  return e == cudaSuccess ? BT_OK : capture_fail(d, err, "forking", e);
}

bt_status
bt_cuda_devices_capture_end(bt_cuda_devices_t *d, bt_error_t *err)
{
  cudaGraph_t g = NULL;
  cudaGraphExec_t x = NULL;
  cudaError_t e = cudaSuccess;

  if (d == NULL || !d->capturing)
    return bt__errorf(err, BT_EINVAL,
                      "bt_cuda_devices_capture_end: not capturing");
  for (int32_t i = 1; i < d->n && e == cudaSuccess; i++) {
    e = cudaSetDevice(d->ctx[i].gpu);
    if (e == cudaSuccess)
      e = cudaEventRecord(d->join[i], (cudaStream_t)d->ctx[i].stream);
    if (e == cudaSuccess)
      e = cudaStreamWaitEvent((cudaStream_t)d->ctx[0].stream, d->join[i], 0);
  }
  if (e != cudaSuccess)
    return capture_fail(d, err, "joining", e);
  e = cudaSetDevice(d->ctx[0].gpu);
  if (e == cudaSuccess)
    e = cudaStreamEndCapture((cudaStream_t)d->ctx[0].stream, &g);
  d->capturing = 0;
  if (e != cudaSuccess)
    return capture_fail(d, err, "ending", e);
  e = cudaGraphInstantiate(&x, g, 0);
  if (e != cudaSuccess) {
    cudaGraphDestroy(g);
    return capture_fail(d, err, "instantiating", e);
  }
  if (d->graph_exec != NULL)
    cudaGraphExecDestroy(d->graph_exec);
  if (d->graph != NULL)
    cudaGraphDestroy(d->graph);
  d->graph = g;
  d->graph_exec = x;
  return BT_OK;
}

bt_status
bt_cuda_devices_replay(bt_cuda_devices_t *d, bt_error_t *err)
{
  cudaError_t e;

  if (d == NULL || d->graph_exec == NULL)
    return bt__errorf(err, BT_EINVAL,
                      "bt_cuda_devices_replay: no captured step");
  e = cudaSetDevice(d->ctx[0].gpu);
  if (e == cudaSuccess)
    e = cudaGraphLaunch(d->graph_exec, (cudaStream_t)d->ctx[0].stream);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return bt__errorf(err, e == cudaErrorMemoryAllocation ? BT_ENOMEM : BT_EIO,
                      "launching the captured step: %s", cudaGetErrorString(e));
  }
  return BT_OK;
}
