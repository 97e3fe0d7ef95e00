/* baton: compute backends for the trainers (internal).
 *
 * A backend is where a trainer's tensors live and what runs its kernels:
 * the default CPU (host memory, kernels/cpu/, no backend object) or a
 * bt_backend_t (<baton/model.h>'s opaque handle), made by
 * bt_cuda_backend_create (<baton/cuda.h>, library baton_cuda) or, for
 * tests, bt__backend_host_create below.  libbaton itself never links CUDA:
 * it reaches a CUDA backend only through this table.
 *
 * Kernels (struct bt__kern): the CPU launchers' contracts
 * (kernels/cpu/kernels.h) with one more first argument, the device's ctx
 * (call->device_ctx inside a task; be->host_ctx outside one).  On an
 * asynchronous backend they are enqueued on that device's stream and
 * return once enqueued; pointers are the backend's device memory.
 *
 * Memory functions are synchronous (they wait for the device's work first
 * where they must), and run on the caller's thread between steps. */
#ifndef BATON_MODEL_BACKEND_H
#define BATON_MODEL_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "baton/comm.h"
#include "baton/runtime.h"
#include "baton/status.h"

struct bt__kern {
  int host; /* the memory the kernels take is host memory */
  bt_status (*linear_fwd)(void *ctx, float *y, const float *x, const float *w,
                          const float *b, size_t N, size_t IN, size_t OUT);
  bt_status (*linear_bwd_input)(void *ctx, float *dx, const float *dy,
                                const float *w, size_t N, size_t IN,
                                size_t OUT);
  bt_status (*linear_bwd_weight)(void *ctx, float *dw, float *db,
                                 const float *dy, const float *x, size_t N,
                                 size_t IN, size_t OUT);
  bt_status (*gelu_fwd)(void *ctx, float *y, const float *x, size_t n);
  bt_status (*gelu_bwd)(void *ctx, float *dx, const float *dy, const float *x,
                        size_t n);
  bt_status (*layernorm_fwd)(void *ctx, float *y, float *mean, float *rstd,
                             const float *x, const float *gamma,
                             const float *beta, size_t N, size_t D);
  bt_status (*layernorm_bwd)(void *ctx, float *dx, float *dgamma, float *dbeta,
                             const float *dy, const float *x,
                             const float *gamma, const float *mean,
                             const float *rstd, size_t N, size_t D);
  bt_status (*residual_fwd)(void *ctx, float *y, const float *a, const float *b,
                            size_t n);
  bt_status (*residual_bwd)(void *ctx, float *da, float *db, const float *dy,
                            size_t n);
  bt_status (*xent_fwd)(void *ctx, float *loss, const float *logits,
                        const int32_t *labels, size_t N, size_t C,
                        size_t total_rows);
  bt_status (*xent_bwd)(void *ctx, float *dlogits, const float *logits,
                        const int32_t *labels, size_t N, size_t C,
                        size_t total_rows);
  bt_status (*sgd)(void *ctx, float *w, const float *g, size_t n, float lr,
                   float wd);
  bt_status (*adamw)(void *ctx, float *w, float *m, float *v, const float *g,
                     size_t n, float lr, float b1, float b2, float eps,
                     float wd, int64_t t);
  /* dst = src (bytes, same device, or between devices the backend can
   * address from this one); dst = the byte c repeated. */
  bt_status (*copy)(void *ctx, void *dst, const void *src, size_t bytes);
  bt_status (*fill)(void *ctx, void *dst, int c, size_t bytes);
};

/* The CPU launchers behind the table (ctx ignored). */
extern const struct bt__kern bt__cpu_kern;

struct bt_backend {
  size_t size;      /* sizeof(struct bt_backend) as its maker knows it */
  const char *name; /* "cuda", "host" */
  const struct bt__kern *kern;
  int32_t devices;        /* logical devices */
  bt_device_desc_t *desc; /* [devices], for a DEDICATED runtime */
  /* Memory of logical device d (zeroed), NULL when out of memory (with a
   * message in err).  free accepts NULL. */
  void *(*alloc)(struct bt_backend *be, int32_t d, size_t bytes,
                 bt_error_t *err);
  void (*free)(struct bt_backend *be, int32_t d, void *p);
  /* One block every device can read and write (the pipeline's buffers
   * between stages), zeroed; free with free(be, -1, p). */
  void *(*alloc_shared)(struct bt_backend *be, size_t bytes, bt_error_t *err);
  /* Host <-> device d, synchronous (after the device's queued work). */
  bt_status (*upload)(struct bt_backend *be, int32_t d, void *dst,
                      const void *src, size_t bytes, bt_error_t *err);
  bt_status (*download)(struct bt_backend *be, int32_t d, void *dst,
                        const void *src, size_t bytes, bt_error_t *err);
  /* Device d's ctx for kernels the trainer calls outside a task (zeroing,
   * the optimizer), on the calling thread: makes the device current
   * there (inside a task the device's actor already has). */
  void *(*host_ctx)(struct bt_backend *be, int32_t d);
  /* Waits for every device's work: the end of a step.  The first
   * asynchronous error, named. */
  bt_status (*sync)(struct bt_backend *be, bt_error_t *err);
  /* Frees the backend (after every runtime and trainer using it). */
  void (*destroy)(struct bt_backend *be);
  /* A note for the user about how the backend runs (NULL: none). */
  const char *note;
  /* Set by the trainer that uses the backend's one captured graph or its
   * NCCL communicators (a second such trainer is refused); between steps
   * only. */
  int claimed;
  /* Whether reduce may run inside a captured graph (the host backend
   * records it; NCCL inside one process's multi-GPU graph has not been
   * tried, so the CUDA backend says no until it has). */
  int reduce_in_graph;
  /* Data parallelism (NULL where the backend has none).  reduce_init,
   * once before the first step: `replicas` replicas of p devices each
   * (the job's; this rank runs dev0 .. dev0 + devices - 1, comm the job or
   * NULL), and `groups` reductions per step, group g among the replicas'
   * devices number group_device[g] (within a replica); what it cannot run
   * is BT_EUNSUPPORTED, with the reason.  Across ranks, the replicas of a
   * group each call reduce on their own rank: a collective.  reduce is the task of
   * (replica, group) on that replica's device ctx: together the replicas'
   * calls of one group sum grads[0 .. replicas) (n floats each, replica
   * r's on its device) into every one of them.  Each group reduces once
   * per step, so the replicas' calls pair up whatever order a device runs
   * its groups in. */
  bt_status (*reduce_init)(struct bt_backend *be, bt_comm_t *comm,
                           int32_t dev0, int32_t replicas, int32_t groups,
                           const int32_t *group_device, bt_error_t *err);
  bt_status (*reduce)(struct bt_backend *be, void *ctx, int32_t group,
                      int32_t replica, int32_t replicas, float *const *grads,
                      size_t n, bt_error_t *err);
  /* Across processes (NULL where the backend has none): this process
   * runs the job's devices dev0 .. dev0 + devices - 1.  connect, once at
   * create: the pairs of job devices (pairs[5 i ..]: from, to, from rank,
   * to rank, the pair's number in the job) this rank sends to or receives
   * from, in the job's pair order.  send and recv move one transfer of a pair, called on the
   * sending and the receiving device's thread (ctx its ctx) in one order
   * per pair; tag is the transfer's number in the job (0 .. ntags - 1). */
  bt_status (*connect)(struct bt_backend *be, bt_comm_t *comm, int32_t dev0,
                       const int32_t *pairs, size_t npairs, int32_t ntags,
                       bt_error_t *err);
  bt_status (*send)(struct bt_backend *be, void *ctx, const void *buf,
                    size_t bytes, int32_t from, int32_t to, int32_t peer,
                    int32_t tag, bt_error_t *err);
  bt_status (*recv)(struct bt_backend *be, void *ctx, void *buf, size_t bytes,
                    int32_t from, int32_t to, int32_t peer, int32_t tag,
                    bt_error_t *err);
  /* send and recv only start a transfer (pipeline.h's transport): wait
   * orders device ctx's next work after receive `tag`; finish, after each
   * step, completes (or, failed, drops) what is in flight. */
  bt_status (*wait)(struct bt_backend *be, void *ctx, int32_t tag,
                    bt_error_t *err);
  bt_status (*finish)(struct bt_backend *be, int failed, bt_error_t *err);
  /* Whole-step graphs (NULL where the backend has none): between
   * capture_begin and capture_end the step's device work is recorded, not
   * run; replay runs the recorded step (then sync). */
  bt_status (*capture_begin)(struct bt_backend *be, bt_error_t *err);
  bt_status (*capture_end)(struct bt_backend *be, bt_error_t *err);
  bt_status (*replay)(struct bt_backend *be, bt_error_t *err);
};


/* A test backend on the host: its own malloc'd "device" memory for every
 * tensor, the CPU kernels, CPU devices in the runtime.  It runs every
 * path of a device backend (mirrored parameters, uploads, downloads,
 * device-side optimizers) where each step can be checked against the plain
 * CPU trainer bitwise.  BT_EINVAL (devices < 1), BT_ENOMEM. */
bt_status bt__backend_host_create(int32_t devices, struct bt_backend **out,
                                  bt_error_t *err);

#endif /* BATON_MODEL_BACKEND_H */
