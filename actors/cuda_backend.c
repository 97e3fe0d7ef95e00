/* The CUDA backend (<baton/cuda.h>: bt_cuda_backend_create): the trainers'
 * kernel table over kernels/cuda/, device memory, and the CUDA devices of
 * cuda_device.c for the runtime.  Plain C on the CUDA runtime and cuBLAS.
 *
 * Memory: a trainer allocates everything at create (parameters, gradients,
 * activation slots, the pipeline's buffers) and nothing during a step, so
 * there is no pool here: cudaMalloc once, cudaFree at destroy.  Buffers
 * between stages on different GPUs sit in the first GPU's memory with peer
 * access enabled (kernels read and write them over NVLink or PCIe), or in
 * mapped pinned host memory where the GPUs cannot reach each other. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cublas_v2.h>
#include <cuda_runtime.h>
#ifdef BATON_HAVE_NCCL
#include <nccl.h>
#endif

#include "../model/backend.h"
#include "comm.h"
#include "baton/cuda.h"
#include "cuda_kernels.h"
#include "error.h"

enum { SHARED_DEVICE, SHARED_PEER, SHARED_HOST };

#define WORKSPACE_BYTES ((size_t)32 << 20)

#ifdef BATON_HAVE_NCCL
/* A pair of devices on two ranks (cuda_connect). */
struct xpair {
  int32_t from, to, local; /* job devices; this rank's backend device */
  ncclComm_t comm;         /* two ranks: the sender is 0 */
  cudaStream_t stream;
  cudaEvent_t ready; /* a send's: its producer's work */
};
#endif

struct shared_block {
  void *p;
  struct shared_block *next;
};

struct cuda_backend {
  struct bt_backend be;
  bt_cuda_devices_t *devs;
  int32_t *gpu;                /* [devices] */
  void **workspace;            /* [devices]: each cuBLAS handle's own */
  int shared_kind;             /* SHARED_*: how alloc_shared places */
  struct shared_block *shared; /* blocks from alloc_shared */
  char note[160];
#ifdef BATON_HAVE_NCCL
  /* Across processes (cuda_connect): the pairs, and each received
   * transfer's event (by tag). */
  bt_comm_t *job;
  struct xpair *pairs;
  size_t npairs;
  cudaEvent_t *xdone;
  int32_t ntags;
  /* Data parallelism: one communicator per (group, replica), made by
   * ncclCommInitRank per group (cuda_reduce_init); events that put a device's
   * reduce on its send stream and the device's later work after it. */
  ncclComm_t *comms; /* [groups * replicas] */
  int32_t groups, replicas;
  cudaEvent_t *ready, *done; /* [devices] */
#endif
};

/* ---- kernels ------------------------------------------------------------ */

/* The device's stream.  Its GPU is current: inside a task the actor made
 * it so, outside one cuda_host_ctx did. */
static cudaStream_t
stream_of(void *ctx)
{
  return (cudaStream_t)((bt_cuda_ctx_t *)ctx)->stream;
}

static cublasHandle_t
blas_of(void *ctx)
{
  return (cublasHandle_t)((bt_cuda_ctx_t *)ctx)->cublas;
}

static bt_status
k_linear_fwd(void *ctx, float *y, const float *x, const float *w,
             const float *b, size_t N, size_t IN, size_t OUT)
{
  return bt__cu_linear_fwd(y, x, w, b, N, IN, OUT, blas_of(ctx),
                           stream_of(ctx));
}

static bt_status
k_linear_bwd_input(void *ctx, float *dx, const float *dy, const float *w,
                   size_t N, size_t IN, size_t OUT)
{
  return bt__cu_linear_bwd_input(dx, dy, w, N, IN, OUT, blas_of(ctx),
                                 stream_of(ctx));
}

static bt_status
k_linear_bwd_weight(void *ctx, float *dw, float *db, const float *dy,
                    const float *x, size_t N, size_t IN, size_t OUT)
{
  return bt__cu_linear_bwd_weight(dw, db, dy, x, N, IN, OUT, blas_of(ctx),
                                  stream_of(ctx));
}

static bt_status
k_gelu_fwd(void *ctx, float *y, const float *x, size_t n)
{
  return bt__cu_gelu_fwd(y, x, n, stream_of(ctx));
}

static bt_status
k_gelu_bwd(void *ctx, float *dx, const float *dy, const float *x, size_t n)
{
  return bt__cu_gelu_bwd(dx, dy, x, n, stream_of(ctx));
}

static bt_status
k_layernorm_fwd(void *ctx, float *y, float *mean, float *rstd, const float *x,
                const float *gamma, const float *beta, size_t N, size_t D)
{
  return bt__cu_layernorm_fwd(y, mean, rstd, x, gamma, beta, N, D,
                              stream_of(ctx));
}

static bt_status
k_layernorm_bwd(void *ctx, float *dx, float *dgamma, float *dbeta,
                const float *dy, const float *x, const float *gamma,
                const float *mean, const float *rstd, size_t N, size_t D)
{
  return bt__cu_layernorm_bwd(dx, dgamma, dbeta, dy, x, gamma, mean, rstd, N, D,
                              stream_of(ctx));
}

static bt_status
k_residual_fwd(void *ctx, float *y, const float *a, const float *b, size_t n)
{
  return bt__cu_residual_fwd(y, a, b, n, stream_of(ctx));
}

static bt_status
k_residual_bwd(void *ctx, float *da, float *db, const float *dy, size_t n)
{
  return bt__cu_residual_bwd(da, db, dy, n, stream_of(ctx));
}

static bt_status
k_xent_fwd(void *ctx, float *loss, const float *logits, const int32_t *labels,
           size_t N, size_t C, size_t total_rows)
{
  return bt__cu_xent_fwd(loss, logits, labels, N, C, total_rows,
                         stream_of(ctx));
}

static bt_status
k_xent_bwd(void *ctx, float *dlogits, const float *logits,
           const int32_t *labels, size_t N, size_t C, size_t total_rows)
{
  return bt__cu_xent_bwd(dlogits, logits, labels, N, C, total_rows,
                         stream_of(ctx));
}

static bt_status
k_sgd(void *ctx, float *w, const float *g, size_t n, float lr, float wd)
{
  return bt__cu_sgd_update(w, g, n, lr, wd, stream_of(ctx));
}

static bt_status
k_adamw(void *ctx, float *w, float *m, float *v, const float *g, size_t n,
        float lr, float b1, float b2, float eps, float wd, int64_t t)
{
  return bt__cu_adamw_update(w, m, v, g, n, lr, b1, b2, eps, wd, t,
                             stream_of(ctx));
}

static bt_status
cuda_status(cudaError_t e)
{
  if (e == cudaSuccess)
    return BT_OK;
  return e == cudaErrorMemoryAllocation ? BT_ENOMEM : BT_EIO;
}

static bt_status
k_copy(void *ctx, void *dst, const void *src, size_t bytes)
{
  if (dst == NULL || src == NULL)
    return BT_EINVAL;
  if (dst == src || bytes == 0)
    return BT_OK;
  /* Default: the pointers' own spaces (UVA), peer or mapped host alike. */
  return cuda_status(
      cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream_of(ctx)));
}

static bt_status
k_fill(void *ctx, void *dst, int c, size_t bytes)
{
  if (dst == NULL)
    return BT_EINVAL;
  return cuda_status(cudaMemsetAsync(dst, c, bytes, stream_of(ctx)));
}

static const struct bt__kern cuda_kern = {0,
                                          k_linear_fwd,
                                          k_linear_bwd_input,
                                          k_linear_bwd_weight,
                                          k_gelu_fwd,
                                          k_gelu_bwd,
                                          k_layernorm_fwd,
                                          k_layernorm_bwd,
                                          k_residual_fwd,
                                          k_residual_bwd,
                                          k_xent_fwd,
                                          k_xent_bwd,
                                          k_sgd,
                                          k_adamw,
                                          k_copy,
                                          k_fill};

/* ---- memory ------------------------------------------------------------- */

static struct cuda_backend *
cb_of(struct bt_backend *be)
{
  return (struct cuda_backend *)(void *)be;
}

static bt_status
cuda_fail(bt_error_t *err, const char *what, int32_t gpu, cudaError_t e)
{
  return bt__errorf(err, cuda_status(e), "%s on cuda:%d: %s (%s)%s", what,
                    (int)gpu, cudaGetErrorString(e), cudaGetErrorName(e),
                    e == cudaErrorMemoryAllocation
                        ? "; use more microbatches, fewer rows, or more "
                          "GPUs"
                        : "");
}

static void *
cuda_alloc(struct bt_backend *be, int32_t d, size_t bytes, bt_error_t *err)
{
  int32_t gpu = cb_of(be)->gpu[d];
  void *p = NULL;
  cudaError_t e = cudaSetDevice(gpu);

  if (e == cudaSuccess)
    e = cudaMalloc(&p, bytes ? bytes : 1);
  /* cudaMemset may still run when it returns, on the legacy stream that
   * the devices' non-blocking streams do not wait for: wait here (create
   * time, not a step). */
  if (e == cudaSuccess)
    e = cudaMemset(p, 0, bytes);
  if (e == cudaSuccess)
    e = cudaDeviceSynchronize();
  if (e != cudaSuccess) {
    if (p != NULL)
      cudaFree(p);
    cudaGetLastError(); /* an allocation failure is not sticky */
    cuda_fail(err, "allocating device memory", gpu, e);
    return NULL;
  }
  return p;
}

static void *
cuda_alloc_shared(struct bt_backend *be, size_t bytes, bt_error_t *err)
{
  struct cuda_backend *cb = cb_of(be);
  struct shared_block *b = calloc(1, sizeof *b);
  cudaError_t e = cudaSuccess;

  if (b == NULL) {
    bt__errorf(err, BT_ENOMEM, "out of memory");
    return NULL;
  }
  if (cb->shared_kind == SHARED_HOST) {
    e = cudaHostAlloc(&b->p, bytes ? bytes : 1,
                      cudaHostAllocMapped | cudaHostAllocPortable);
    if (e == cudaSuccess)
      memset(b->p, 0, bytes);
  } else {
    b->p = cuda_alloc(be, 0, bytes, err);
  }
  if (b->p == NULL || e != cudaSuccess) {
    if (e != cudaSuccess)
      cuda_fail(err, "allocating pinned host memory", cb->gpu[0], e);
    free(b);
    return NULL;
  }
  b->next = cb->shared;
  cb->shared = b;
  return b->p;
}

static void
cuda_free(struct bt_backend *be, int32_t d, void *p)
{
  struct cuda_backend *cb = cb_of(be);

  if (p == NULL)
    return;
  if (d < 0) {
    for (struct shared_block **at = &cb->shared; *at != NULL; at = &(*at)->next)
      if ((*at)->p == p) {
        struct shared_block *b = *at;
        *at = b->next;
        free(b);
        break;
      }
    if (cb->shared_kind == SHARED_HOST) {
      cudaFreeHost(p);
      return;
    }
    d = 0;
  }
  cudaSetDevice(cb->gpu[d]);
  cudaFree(p);
}

/* Host <-> device d, on the device's compute stream (after its queued
 * work) and waited for: a plain cudaMemcpy would neither wait for the
 * non-blocking streams nor, from pageable memory, for its own DMA.  Any
 * memory the pointers name (device, peer, mapped host): cudaMemcpyDefault. */
static bt_status
cuda_move(struct bt_backend *be, int32_t d, void *dst, const void *src,
          size_t bytes, int up, bt_error_t *err)
{
  struct cuda_backend *cb = cb_of(be);
  const bt_cuda_ctx_t *ctx;
  cudaError_t e;

  if (d < 0 || d >= be->devices || dst == NULL || src == NULL)
    return bt__errorf(err, BT_EINVAL, "a copy %s device %d: bad arguments",
                      up ? "to" : "from", (int)d);
  ctx = be->desc[d].ctx;
  e = cudaSetDevice(cb->gpu[d]);
  if (e == cudaSuccess)
    e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault,
                        (cudaStream_t)ctx->stream);
  if (e == cudaSuccess)
    e = cudaStreamSynchronize((cudaStream_t)ctx->stream);
  return e == cudaSuccess ? BT_OK
                          : cuda_fail(err,
                                      up ? "copying to the device"
                                         : "copying from the device",
                                      cb->gpu[d], e);
}

static bt_status
cuda_upload(struct bt_backend *be, int32_t d, void *dst, const void *src,
            size_t bytes, bt_error_t *err)
{
  return cuda_move(be, d, dst, src, bytes, 1, err);
}

static bt_status
cuda_download(struct bt_backend *be, int32_t d, void *dst, const void *src,
              size_t bytes, bt_error_t *err)
{
  return cuda_move(be, d, dst, src, bytes, 0, err);
}

/* A kernel launched on a stream of another device than the current one
 * fails: the trainer's own thread makes the device current first. */
static void *
cuda_host_ctx(struct bt_backend *be, int32_t d)
{
  cudaSetDevice(cb_of(be)->gpu[d]);
  return be->desc[d].ctx;
}

static bt_status
cuda_sync(struct bt_backend *be, bt_error_t *err)
{
  struct cuda_backend *cb = cb_of(be);
  bt_status rc = bt_cuda_devices_sync(cb->devs, err);

#ifdef BATON_HAVE_NCCL
  /* The transfers between ranks run on the pairs' own streams. */
  for (size_t i = 0; rc == BT_OK && i < cb->npairs; i++) {
    cudaError_t e = cudaSetDevice(cb->gpu[cb->pairs[i].local]);
    if (e == cudaSuccess)
      e = cudaStreamSynchronize(cb->pairs[i].stream);
    if (e != cudaSuccess)
      rc = cuda_fail(err, "a transfer between ranks",
                     cb->gpu[cb->pairs[i].local], e);
  }
#endif
  return rc;
}

static bt_status
cuda_capture_begin(struct bt_backend *be, bt_error_t *err)
{
  return bt_cuda_devices_capture_begin(cb_of(be)->devs, err);
}

static bt_status
cuda_capture_end(struct bt_backend *be, bt_error_t *err)
{
  return bt_cuda_devices_capture_end(cb_of(be)->devs, err);
}

static bt_status
cuda_replay(struct bt_backend *be, bt_error_t *err)
{
  return bt_cuda_devices_replay(cb_of(be)->devs, err);
}

/* ---- data parallelism (NCCL) -------------------------------------------- */

#ifdef BATON_HAVE_NCCL
static void
free_comms(struct cuda_backend *cb)
{
  for (int32_t i = 0; cb->comms != NULL && i < cb->groups * cb->replicas; i++)
    if (cb->comms[i] != NULL)
      ncclCommDestroy(cb->comms[i]);
  for (int32_t i = 0; i < cb->be.devices; i++) {
    if (cb->ready != NULL && cb->ready[i] != NULL)
      cudaEventDestroy(cb->ready[i]);
    if (cb->done != NULL && cb->done[i] != NULL)
      cudaEventDestroy(cb->done[i]);
  }
  free(cb->comms);
  free(cb->ready);
  free(cb->done);
  cb->comms = NULL;
  cb->ready = cb->done = NULL;
  cb->groups = cb->replicas = 0;
}
#endif

static bt_status
cuda_reduce_init(struct bt_backend *be, bt_comm_t *comm, int32_t dev0,
                 int32_t replicas, int32_t groups, const int32_t *group_device,
                 bt_error_t *err)
{
#ifdef BATON_HAVE_NCCL
  struct cuda_backend *cb = cb_of(be);
  int32_t W = bt_comm_size(comm), me = bt_comm_rank(comm);
  int32_t p = replicas > 0 ? be->devices * W / replicas : 0;
  ncclResult_t nr = ncclSuccess;
  cudaError_t e = cudaSuccess;
  bt_status rc = BT_OK;
  void **warm = NULL; /* a few bytes per device for the first collective */

#define LOCAL(dev_) ((dev_) >= dev0 && (dev_) < dev0 + be->devices)
  if (replicas < 2 || (be->devices * W) % replicas != 0 || groups < 1)
    return bt__errorf(err, BT_EINVAL,
                      "%d replicas do not split the job's %d devices",
                      (int)replicas, (int)(be->devices * W));
  /* NCCL refuses two ranks of one communicator on one GPU (here checked
   * within this process; across processes NCCL's init says so). */
  for (int32_t g = 0; g < groups; g++)
    for (int32_t r = 0; r < replicas; r++)
      for (int32_t q = 0; q < r; q++) {
        int32_t dr = r * p + group_device[g], dq = q * p + group_device[g];
        if (LOCAL(dr) && LOCAL(dq) && cb->gpu[dr - dev0] == cb->gpu[dq - dev0])
          return bt__errorf(err, BT_EUNSUPPORTED,
                            "NCCL needs one GPU per replica, but replicas "
                            "%d and %d both run device %d on cuda:%d",
                            (int)q, (int)r, (int)group_device[g],
                            (int)cb->gpu[dr - dev0]);
      }
  free_comms(cb);
  cb->comms = calloc((size_t)groups * (size_t)replicas, sizeof *cb->comms);
  cb->ready = calloc((size_t)be->devices, sizeof *cb->ready);
  cb->done = calloc((size_t)be->devices, sizeof *cb->done);
  if (cb->comms == NULL || cb->ready == NULL || cb->done == NULL) {
    free_comms(cb);
    return bt__errorf(err, BT_ENOMEM, "out of memory for NCCL");
  }
  cb->groups = groups;
  cb->replicas = replicas;
  warm = calloc((size_t)be->devices, sizeof *warm);
  if (warm == NULL) {
    free_comms(cb);
    return bt__errorf(err, BT_ENOMEM, "out of memory for NCCL");
  }
  for (int32_t i = 0; i < be->devices && e == cudaSuccess; i++) {
    e = cudaSetDevice(cb->gpu[i]);
    if (e == cudaSuccess)
      e = cudaEventCreateWithFlags(&cb->ready[i], cudaEventDisableTiming);
    if (e == cudaSuccess)
      e = cudaEventCreateWithFlags(&cb->done[i], cudaEventDisableTiming);
  }
  /* One communicator per group over its replicas: the rank of replica 0's
   * device makes the id and sends it to the group's other ranks; each rank
   * then joins with its replicas, in group order on every rank. */
  for (int32_t g = 0;
       g < groups && e == cudaSuccess && nr == ncclSuccess && rc == BT_OK;
       g++) {
    int32_t lead = group_device[g] / be->devices, member = 0;
    ncclUniqueId id;
    for (int32_t r = 0; r < replicas; r++)
      member |= LOCAL(r * p + group_device[g]);
    if (!member)
      continue;
    if (me == lead)
      nr = ncclGetUniqueId(&id);
    for (int32_t r = 0; r < replicas && nr == ncclSuccess && rc == BT_OK; r++) {
      int32_t rank = (r * p + group_device[g]) / be->devices, seen = 0;
      for (int32_t q = 0; q < r; q++)
        seen |= (q * p + group_device[g]) / be->devices == rank;
      if (seen || rank == lead)
        continue;
      if (me == lead)
        rc = bt_comm_send(comm, &id, sizeof id, rank, g, err);
      else if (me == rank)
        rc = bt_comm_recv(comm, &id, sizeof id, lead, g, err);
    }
    if (nr != ncclSuccess || rc != BT_OK)
      break;
    nr = ncclGroupStart();
    for (int32_t r = 0; r < replicas && nr == ncclSuccess; r++) {
      int32_t d = r * p + group_device[g];
      if (!LOCAL(d))
        continue;
      cudaSetDevice(cb->gpu[d - dev0]);
      nr = ncclCommInitRank(&cb->comms[(size_t)g * (size_t)replicas + r],
                            replicas, id, r);
    }
    if (nr == ncclSuccess)
      nr = ncclGroupEnd();
    else
      ncclGroupEnd();
    /* NCCL connects a communicator at its first collective, blocking the
     * callers until every rank has made it: do that here, in group order,
     * not on the devices' threads during a step. */
    if (nr == ncclSuccess)
      nr = ncclGroupStart();
    for (int32_t r = 0; r < replicas && nr == ncclSuccess; r++) {
      int32_t d = r * p + group_device[g];
      const bt_cuda_ctx_t *c;
      if (!LOCAL(d))
        continue;
      c = be->desc[d - dev0].ctx;
      cudaSetDevice(c->gpu);
      if (warm[d - dev0] == NULL &&
          cudaMalloc(&warm[d - dev0], 4) != cudaSuccess) {
        nr = ncclUnhandledCudaError;
        break;
      }
      nr = ncclAllReduce(warm[d - dev0], warm[d - dev0], 1, ncclUint8, ncclSum,
                         cb->comms[(size_t)g * (size_t)replicas + r],
                         (cudaStream_t)c->send_stream);
    }
    if (nr == ncclSuccess)
      nr = ncclGroupEnd();
    for (int32_t d = 0; d < be->devices && nr == ncclSuccess; d++) {
      const bt_cuda_ctx_t *c = be->desc[d].ctx;
      cudaSetDevice(c->gpu);
      if (cudaStreamSynchronize((cudaStream_t)c->send_stream) != cudaSuccess)
        nr = ncclUnhandledCudaError;
    }
  }
  for (int32_t d = 0; d < be->devices; d++)
    if (warm[d] != NULL) {
      cudaSetDevice(cb->gpu[d]);
      cudaFree(warm[d]);
    }
  free(warm);
#undef LOCAL
  if (e != cudaSuccess || nr != ncclSuccess || rc != BT_OK) {
    free_comms(cb);
    if (rc != BT_OK)
      return rc;
    if (e != cudaSuccess)
      return cuda_fail(err, "creating NCCL's events", cb->gpu[0], e);
    return bt__errorf(err, BT_EIO, "NCCL could not start: %s",
                      ncclGetErrorString(nr));
  }
  return BT_OK;
#else
  (void)be;
  (void)comm;
  (void)dev0;
  (void)replicas;
  (void)groups;
  (void)group_device;
  return bt__errorf(err, BT_EUNSUPPORTED, "this baton was built without NCCL");
#endif
}

/* Replica r's share of group g's all-reduce: NCCL's sum, in place, on the
 * device's send stream after the compute stream's work so far; the
 * compute stream's later work (and the task's completion event) waits for
 * it. */
static bt_status
cuda_reduce(struct bt_backend *be, void *ctx, int32_t group, int32_t replica,
            int32_t replicas, float *const *grads, size_t n, bt_error_t *err)
{
#ifdef BATON_HAVE_NCCL
  struct cuda_backend *cb = cb_of(be);
  const bt_cuda_ctx_t *c = ctx;
  cudaStream_t compute = (cudaStream_t)c->stream;
  cudaStream_t side = (cudaStream_t)c->send_stream;
  cudaError_t e;
  ncclResult_t nr;

  if (cb->comms == NULL || group < 0 || group >= cb->groups ||
      replicas != cb->replicas || replica < 0 || replica >= replicas)
    return bt__errorf(err, BT_EINVAL,
                      "reduce of group %d, replica %d: NCCL was not set up "
                      "for it",
                      (int)group, (int)replica);
  e = cudaEventRecord(cb->ready[c->index], compute);
  if (e == cudaSuccess)
    e = cudaStreamWaitEvent(side, cb->ready[c->index], 0);
  if (e != cudaSuccess)
    return cuda_fail(err, "ordering the all-reduce", c->gpu, e);
  nr = ncclAllReduce(
      grads[replica], grads[replica], n, ncclFloat, ncclSum,
      cb->comms[(size_t)group * (size_t)replicas + (size_t)replica], side);
  if (nr != ncclSuccess)
    return bt__errorf(err, BT_EIO, "ncclAllReduce on cuda:%d: %s", (int)c->gpu,
                      ncclGetErrorString(nr));
  e = cudaEventRecord(cb->done[c->index], side);
  if (e == cudaSuccess)
    e = cudaStreamWaitEvent(compute, cb->done[c->index], 0);
  return e == cudaSuccess
             ? BT_OK
             : cuda_fail(err, "ordering the all-reduce", c->gpu, e);
#else
  (void)be;
  (void)ctx;
  (void)group;
  (void)replica;
  (void)replicas;
  (void)grads;
  (void)n;
  return bt__errorf(err, BT_EUNSUPPORTED, "this baton was built without NCCL");
#endif
}

#ifdef BATON_HAVE_NCCL
/* ---- across processes (NCCL) --------------------------------------------
 * One two-rank communicator per pair of devices this rank sends to or
 * receives from (the sender is its rank 0), bootstrapped by sending the
 * sender's ncclUniqueId over the job's MPI, in the pipeline's pair order
 * (the same on every rank, so the blocking inits meet); each pair moves on
 * its own stream, so pairs never queue behind one another.  A send waits
 * for its producer's work (an event of the compute stream); a receive
 * records an event per transfer that its consumer's stream waits for. */

static struct xpair *
pair_of(struct cuda_backend *cb, int32_t from, int32_t to)
{
  for (size_t i = 0; i < cb->npairs; i++)
    if (cb->pairs[i].from == from && cb->pairs[i].to == to)
      return &cb->pairs[i];
  return NULL;
}

static void
free_pairs(struct cuda_backend *cb, int abort)
{
  for (size_t i = 0; cb->pairs != NULL && i < cb->npairs; i++) {
    struct xpair *p = &cb->pairs[i];
    cudaSetDevice(cb->gpu[p->local]);
    if (p->comm != NULL)
      abort ? ncclCommAbort(p->comm) : ncclCommDestroy(p->comm);
    if (p->stream != NULL)
      cudaStreamDestroy(p->stream);
    if (p->ready != NULL)
      cudaEventDestroy(p->ready);
  }
  for (int32_t t = 0; cb->xdone != NULL && t < cb->ntags; t++)
    if (cb->xdone[t] != NULL)
      cudaEventDestroy(cb->xdone[t]);
  free(cb->pairs);
  free(cb->xdone);
  cb->pairs = NULL;
  cb->xdone = NULL;
  cb->npairs = 0;
  cb->ntags = 0;
}

static bt_status
cuda_connect(struct bt_backend *be, bt_comm_t *comm, int32_t dev0,
             const int32_t *pairs, size_t npairs, int32_t ntags,
             bt_error_t *err)
{
  struct cuda_backend *cb = cb_of(be);
  int32_t me = bt_comm_rank(comm);
  void *one = NULL; /* a byte for each pair's first transfer */

  free_pairs(cb, 0);
  cb->job = comm;
  cb->pairs = calloc(npairs + 1, sizeof *cb->pairs);
  cb->xdone = calloc((size_t)ntags + 1, sizeof *cb->xdone);
  if (cb->pairs == NULL || cb->xdone == NULL) {
    free_pairs(cb, 0);
    return bt__errorf(err, BT_ENOMEM, "out of memory for NCCL's pairs");
  }
  cb->ntags = ntags;
  for (size_t i = 0; i < npairs; i++) {
    struct xpair *p = &cb->pairs[i];
    int sender = pairs[5 * i + 2] == me;
    int32_t peer = sender ? pairs[5 * i + 3] : pairs[5 * i + 2];
    int32_t local = (sender ? pairs[5 * i] : pairs[5 * i + 1]) - dev0;
    ncclUniqueId id;
    ncclResult_t nr = ncclSuccess;
    cudaError_t e;
    bt_status rc;

    if (local < 0 || local >= be->devices) {
      free_pairs(cb, 1);
      return bt__errorf(err, BT_EINVAL, "device %d is not one of this rank's",
                        (int)(local + dev0));
    }
    cb->npairs = i + 1;
    p->from = pairs[5 * i];
    p->to = pairs[5 * i + 1];
    p->local = local;
    if (sender && (nr = ncclGetUniqueId(&id)) != ncclSuccess) {
      free_pairs(cb, 1);
      return bt__errorf(err, BT_EIO, "ncclGetUniqueId: %s",
                        ncclGetErrorString(nr));
    }
    /* The pair's number in the job is the same on both ranks: the tag. */
    rc = sender
             ? bt_comm_send(comm, &id, sizeof id, peer, pairs[5 * i + 4], err)
             : bt_comm_recv(comm, &id, sizeof id, peer, pairs[5 * i + 4], err);
    if (rc != BT_OK) {
      free_pairs(cb, 1);
      return rc;
    }
    e = cudaSetDevice(cb->gpu[p->local]);
    if (e == cudaSuccess)
      e = cudaStreamCreateWithFlags(&p->stream, cudaStreamNonBlocking);
    if (e == cudaSuccess)
      e = cudaEventCreateWithFlags(&p->ready, cudaEventDisableTiming);
    if (e == cudaSuccess && one == NULL)
      e = cudaMalloc(&one, 1);
    if (e != cudaSuccess) {
      free_pairs(cb, 1);
      if (one != NULL)
        cudaFree(one);
      return cuda_fail(err, "creating a transfer stream", cb->gpu[p->local], e);
    }
    nr = ncclCommInitRank(&p->comm, 2, id, sender ? 0 : 1);
    /* NCCL connects a pair at its first transfer, blocking the caller
     * until the peer makes its own: do that here, in the job's pair
     * order, not on a device's thread in the middle of a step. */
    if (nr == ncclSuccess)
      nr = sender ? ncclSend(one, 1, ncclUint8, 1, p->comm, p->stream)
                  : ncclRecv(one, 1, ncclUint8, 0, p->comm, p->stream);
    if (nr == ncclSuccess && cudaStreamSynchronize(p->stream) != cudaSuccess)
      nr = ncclUnhandledCudaError;
    if (nr != ncclSuccess) {
      free_pairs(cb, 1);
      if (one != NULL)
        cudaFree(one);
      return bt__errorf(err, BT_EIO,
                        "NCCL could not connect device %d to device %d "
                        "(rank %d): %s",
                        (int)pairs[5 * i], (int)pairs[5 * i + 1], (int)peer,
                        ncclGetErrorString(nr));
    }
  }
  if (one != NULL)
    cudaFree(one);
  return BT_OK;
}

static bt_status
cuda_send(struct bt_backend *be, void *ctx, const void *buf, size_t bytes,
          int32_t from, int32_t to, int32_t peer, int32_t tag, bt_error_t *err)
{
  struct cuda_backend *cb = cb_of(be);
  struct xpair *p = pair_of(cb, from, to);
  cudaStream_t compute = stream_of(ctx);
  cudaError_t e;
  ncclResult_t nr;

  (void)peer;
  (void)tag;
  if (p == NULL || p->comm == NULL)
    return bt__errorf(err, BT_EINVAL, "no NCCL pair from device %d to %d",
                      (int)from, (int)to);
  e = cudaEventRecord(p->ready, compute);
  if (e == cudaSuccess)
    e = cudaStreamWaitEvent(p->stream, p->ready, 0);
  if (e != cudaSuccess)
    return cuda_fail(err, "ordering a send", cb->gpu[p->local], e);
  nr = ncclSend(buf, bytes, ncclUint8, 1, p->comm, p->stream);
  return nr == ncclSuccess
             ? BT_OK
             : bt__errorf(err, BT_EIO, "ncclSend to device %d: %s", (int)to,
                          ncclGetErrorString(nr));
}

static bt_status
cuda_recv(struct bt_backend *be, void *ctx, void *buf, size_t bytes,
          int32_t from, int32_t to, int32_t peer, int32_t tag, bt_error_t *err)
{
  struct cuda_backend *cb = cb_of(be);
  struct xpair *p = pair_of(cb, from, to);
  cudaError_t e = cudaSuccess;
  ncclResult_t nr;

  (void)peer;
  (void)ctx; /* the pair's stream, on the device the actor made current */
  if (p == NULL || p->comm == NULL || tag < 0 || tag >= cb->ntags)
    return bt__errorf(err, BT_EINVAL, "no NCCL pair from device %d to %d",
                      (int)from, (int)to);
  nr = ncclRecv(buf, bytes, ncclUint8, 0, p->comm, p->stream);
  if (nr != ncclSuccess)
    return bt__errorf(err, BT_EIO, "ncclRecv from device %d: %s", (int)from,
                      ncclGetErrorString(nr));
  /* Each transfer's event is made and recorded by its receiving device's
   * thread only. */
  if (cb->xdone[tag] == NULL)
    e = cudaEventCreateWithFlags(&cb->xdone[tag], cudaEventDisableTiming);
  if (e == cudaSuccess)
    e = cudaEventRecord(cb->xdone[tag], p->stream);
  return e == cudaSuccess
             ? BT_OK
             : cuda_fail(err, "recording a receive", cb->gpu[p->local], e);
}

static bt_status
cuda_wait(struct bt_backend *be, void *ctx, int32_t tag, bt_error_t *err)
{
  struct cuda_backend *cb = cb_of(be);
  const bt_cuda_ctx_t *c = ctx;
  cudaError_t e;

  if (tag < 0 || tag >= cb->ntags || cb->xdone[tag] == NULL)
    return bt__errorf(err, BT_EINVAL, "transfer %d was not received", (int)tag);
  e = cudaStreamWaitEvent(stream_of(ctx), cb->xdone[tag], 0);
  return e == cudaSuccess ? BT_OK
                          : cuda_fail(err, "waiting for a receive", c->gpu, e);
}

/* After a step: its transfers and all-reduces (on the pairs' and the
 * devices' send streams) must end, but a peer that failed or stopped
 * would leave them waiting forever inside NCCL.  So poll them, watching
 * the job for a failed peer and the comm's timeout; on a failure abort
 * every communicator (NCCL's way out of a hung operation), after which
 * the pipeline refuses further steps. */
static bt_status
cuda_finish(struct bt_backend *be, int failed, bt_error_t *err)
{
  struct cuda_backend *cb = cb_of(be);
  double start = bt__comm_now();
  char msg[BT_ERROR_MESSAGE_MAX];

  for (int busy = !failed; busy;) {
    int32_t peer;
    busy = 0;
    for (size_t i = 0; i < cb->npairs && !busy; i++) {
      cudaSetDevice(cb->gpu[cb->pairs[i].local]);
      busy = cudaStreamQuery(cb->pairs[i].stream) == cudaErrorNotReady;
    }
    for (int32_t d = 0; d < be->devices && !busy; d++) {
      const bt_cuda_ctx_t *c = be->desc[d].ctx;
      cudaSetDevice(c->gpu);
      busy = cudaStreamQuery((cudaStream_t)c->send_stream) == cudaErrorNotReady;
    }
    if (!busy)
      break;
    if ((peer = bt__comm_peer_failure(cb->job, msg, sizeof msg)) >= 0) {
      bt__errorf(err, BT_EPEER, "rank %d failed: %s", (int)peer, msg);
      failed = 1;
      break;
    }
    if (bt__comm_now() - start > bt_comm_timeout(cb->job)) {
      bt__errorf(err, BT_ETIMEDOUT,
                 "timed out after %g s waiting for the step's transfers "
                 "between ranks",
                 bt_comm_timeout(cb->job));
      failed = 1;
      break;
    }
    {
      struct timespec ts = {0, 50000};
      nanosleep(&ts, NULL);
    }
  }
  (void)cudaGetLastError();
  if (!failed)
    return BT_OK;
  free_pairs(cb, 1);
  for (int32_t i = 0; cb->comms != NULL && i < cb->groups * cb->replicas; i++)
    if (cb->comms[i] != NULL) {
      ncclCommAbort(cb->comms[i]);
      cb->comms[i] = NULL;
    }
  return err != NULL && err->status != BT_OK ? err->status : BT_EPEER;
}

#endif /* BATON_HAVE_NCCL */

static void
cuda_destroy(struct bt_backend *be)
{
  struct cuda_backend *cb = cb_of(be);

  if (cb == NULL)
    return;
#ifdef BATON_HAVE_NCCL
  free_comms(cb);
  free_pairs(cb, 0);
#endif
  while (cb->shared != NULL)
    cuda_free(be, -1, cb->shared->p);
  for (int32_t i = 0; be->desc != NULL && i < be->devices; i++) {
    bt_cuda_ctx_t *ctx = be->desc[i].ctx;
    if (ctx != NULL && ctx->cublas != NULL) {
      cudaSetDevice(ctx->gpu);
      cublasDestroy((cublasHandle_t)ctx->cublas);
      ctx->cublas = NULL;
    }
    if (cb->workspace != NULL && cb->workspace[i] != NULL) {
      cudaSetDevice(cb->gpu[i]);
      cudaFree(cb->workspace[i]);
    }
  }
  free(cb->workspace);
  bt_cuda_devices_destroy(cb->devs);
  free(be->desc);
  free(cb->gpu);
  free(cb);
}

/* How buffers between stages are shared: one GPU's memory; the first
 * GPU's with peer access from every other; or mapped pinned host memory. */
static int
sharing(const int32_t *gpu, int32_t n)
{
  int kind = SHARED_DEVICE;

  for (int32_t i = 1; i < n; i++) {
    int can = 0;
    cudaError_t e;
    if (gpu[i] == gpu[0])
      continue;
    if (cudaDeviceCanAccessPeer(&can, gpu[i], gpu[0]) != cudaSuccess || !can)
      return SHARED_HOST;
    kind = SHARED_PEER;
    e = cudaSetDevice(gpu[i]);
    if (e == cudaSuccess)
      e = cudaDeviceEnablePeerAccess(gpu[0], 0);
    if (e == cudaErrorPeerAccessAlreadyEnabled)
      cudaGetLastError();
    else if (e != cudaSuccess) {
      cudaGetLastError();
      return SHARED_HOST;
    }
  }
  return kind;
}

bt_status
bt_cuda_backend_create(const int32_t *gpus, int32_t n, bt_backend_t **out,
                       bt_error_t *err)
{
  struct cuda_backend *cb;
  struct bt_backend *be;
  bt_status rc;

  if (out == NULL || gpus == NULL || n < 1)
    return bt__errorf(err, BT_EINVAL,
                      "bt_cuda_backend_create: needs n >= 1 GPU ordinals "
                      "and out");
  *out = NULL;
  cb = calloc(1, sizeof *cb);
  if (cb == NULL)
    return bt__errorf(err, BT_ENOMEM, "out of memory for the CUDA backend");
  be = &cb->be;
  be->size = sizeof *be;
  be->name = "cuda";
  be->kern = &cuda_kern;
  be->devices = n;
  be->alloc = cuda_alloc;
  be->free = cuda_free;
  be->alloc_shared = cuda_alloc_shared;
  be->upload = cuda_upload;
  be->download = cuda_download;
  be->sync = cuda_sync;
  be->host_ctx = cuda_host_ctx;
  be->destroy = cuda_destroy;
#ifdef BATON_HAVE_NCCL
  /* Across processes: without NCCL the trainer refuses (no transport). */
  be->connect = cuda_connect;
  be->send = cuda_send;
  be->recv = cuda_recv;
  be->wait = cuda_wait;
  be->finish = cuda_finish;
#endif
  be->reduce_init = cuda_reduce_init;
  be->reduce = cuda_reduce;
  be->capture_begin = cuda_capture_begin;
  be->capture_end = cuda_capture_end;
  be->replay = cuda_replay;
  be->desc = calloc((size_t)n, sizeof *be->desc);
  cb->gpu = malloc((size_t)n * sizeof *cb->gpu);
  if (be->desc == NULL || cb->gpu == NULL) {
    cuda_destroy(be);
    return bt__errorf(err, BT_ENOMEM, "out of memory for the CUDA backend");
  }
  memcpy(cb->gpu, gpus, (size_t)n * sizeof *gpus);
  cb->workspace = calloc((size_t)n, sizeof *cb->workspace);
  if (cb->workspace == NULL) {
    cuda_destroy(be);
    return bt__errorf(err, BT_ENOMEM, "out of memory for the CUDA backend");
  }
  rc = bt_cuda_devices_create(gpus, n, be->desc, &cb->devs, err);
  if (rc != BT_OK) {
    cuda_destroy(be);
    return rc;
  }
  for (int32_t i = 0; i < n; i++) {
    bt_cuda_ctx_t *ctx = be->desc[i].ctx;
    cublasHandle_t h = NULL;
    cublasStatus_t s;
    cudaSetDevice(ctx->gpu);
    s = cublasCreate(&h);
    if (s == CUBLAS_STATUS_SUCCESS)
      s = cublasSetStream(h, (cudaStream_t)ctx->stream);
    /* A workspace of the handle's own, allocated here: cuBLAS then never
     * allocates while a step is captured as a CUDA graph (32 MiB, what
     * NVIDIA suggests for Hopper). */
    if (s == CUBLAS_STATUS_SUCCESS &&
        cudaMalloc(&cb->workspace[i], WORKSPACE_BYTES) != cudaSuccess) {
      cudaGetLastError();
      s = CUBLAS_STATUS_ALLOC_FAILED;
    }
    if (s == CUBLAS_STATUS_SUCCESS)
      s = cublasSetWorkspace(h, cb->workspace[i], WORKSPACE_BYTES);
    /* The default math mode keeps fp32 GEMMs in fp32 (TF32 only when
     * asked for), so results match the CPU's within fp32 rounding. */
    ctx->cublas = h;
    if (s != CUBLAS_STATUS_SUCCESS) {
      cuda_destroy(be);
      return bt__errorf(err,
                        s == CUBLAS_STATUS_ALLOC_FAILED ? BT_ENOMEM : BT_EIO,
                        "cuBLAS could not start on cuda:%d (status %d)",
                        (int)gpus[i], (int)s);
    }
  }
  cb->shared_kind = sharing(gpus, n);
  if (cb->shared_kind == SHARED_HOST)
    snprintf(cb->note, sizeof cb->note,
             "these GPUs cannot reach each other's memory: activations "
             "between stages go through pinned host memory");
  be->note = cb->note[0] != '\0' ? cb->note : NULL;
  *out = be;
  return BT_OK;
}

bt_cuda_devices_t *
bt_cuda_backend_devices(bt_backend_t *be)
{
  return be != NULL && be->destroy == cuda_destroy ? cb_of(be)->devs : NULL;
}
