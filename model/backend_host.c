/* The host test backend (backend.h): "device" memory that is plain
 * malloc'd memory apart from the model's, the CPU kernels, CPU devices.
 *
 * Whole-step graphs, emulated: between capture_begin and capture_end every
 * kernel call is recorded (its arguments copied) instead of run, in the
 * order the devices' threads make them, which respects every dependency
 * of the step (a task's kernels are recorded when it runs, after its
 * predecessors'); replay runs the record in that order.  What a trainer
 * leaves out of its capture is then missing from every replay, as on a
 * GPU. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../actors/comm.h"
#include "backend.h"
#include "error.h"

/* One recorded kernel call: the op and its arguments. */
enum {
  OP_LINEAR_FWD,
  OP_LINEAR_BWD_INPUT,
  OP_LINEAR_BWD_WEIGHT,
  OP_GELU_FWD,
  OP_GELU_BWD,
  OP_LAYERNORM_FWD,
  OP_LAYERNORM_BWD,
  OP_RESIDUAL_FWD,
  OP_RESIDUAL_BWD,
  OP_XENT_FWD,
  OP_XENT_BWD,
  OP_SGD,
  OP_ADAMW,
  OP_COPY,
  OP_FILL,
  OP_REDUCE
};

struct call {
  int op, c;
  void *a[9];  /* pointers, in the launcher's order */
  size_t z[4]; /* sizes */
  float f[5];  /* scalars */
  int64_t t;
};

struct host_backend {
  struct bt_backend be;
  struct bt__kern kern; /* the recording table */
  pthread_mutex_t lock; /* guards the record (devices' threads append) */
  int recording;        /* set and cleared between steps */
  struct call *rec;
  size_t nrec, caprec;
  int captured;
  bt_comm_t *comm;          /* across processes: the job (connect) */
  struct bt__comm_req *req; /* [ntags]: each transfer's request */
  int32_t ntags;
  /* Data parallelism across processes (reduce_init): the job's layout. */
  int32_t dev0, p, replicas, groups, *group_device;
};

static struct host_backend *
hb_of(void *ctx)
{
  return ctx;
}

/* Records c when capturing (1, or a negative bt_status); else 0: run it
 * now. */
static int
record(void *ctx, const struct call *c)
{
  struct host_backend *hb = hb_of(ctx);
  bt_status rc = BT_OK;

  /* Read without the lock: set only between steps, published to the
   * devices' threads by the runtime's step start. */
  if (!hb->recording)
    return 0;
  pthread_mutex_lock(&hb->lock);
  if (hb->nrec == hb->caprec) {
    size_t cap = hb->caprec ? 2 * hb->caprec : 256;
    struct call *grown = realloc(hb->rec, cap * sizeof *grown);
    if (grown == NULL)
      rc = BT_ENOMEM;
    else {
      hb->rec = grown;
      hb->caprec = cap;
    }
  }
  if (rc == BT_OK)
    hb->rec[hb->nrec++] = *c;
  pthread_mutex_unlock(&hb->lock);
  return rc == BT_OK ? 1 : (int)rc;
}

static void reduce_slice(float *const *grads, int32_t replica, int32_t replicas,
                         size_t n);

static bt_status
run(const struct call *c)
{
  const struct bt__kern *K = &bt__cpu_kern;
  void *const *a = c->a;

  switch (c->op) {
  case OP_LINEAR_FWD:
    return K->linear_fwd(NULL, a[0], a[1], a[2], a[3], c->z[0], c->z[1],
                         c->z[2]);
  case OP_LINEAR_BWD_INPUT:
    return K->linear_bwd_input(NULL, a[0], a[1], a[2], c->z[0], c->z[1],
                               c->z[2]);
  case OP_LINEAR_BWD_WEIGHT:
    return K->linear_bwd_weight(NULL, a[0], a[1], a[2], a[3], c->z[0], c->z[1],
                                c->z[2]);
  case OP_GELU_FWD:
    return K->gelu_fwd(NULL, a[0], a[1], c->z[0]);
  case OP_GELU_BWD:
    return K->gelu_bwd(NULL, a[0], a[1], a[2], c->z[0]);
  case OP_LAYERNORM_FWD:
    return K->layernorm_fwd(NULL, a[0], a[1], a[2], a[3], a[4], a[5], c->z[0],
                            c->z[1]);
  case OP_LAYERNORM_BWD:
    return K->layernorm_bwd(NULL, a[0], a[1], a[2], a[3], a[4], a[5], a[6],
                            a[7], c->z[0], c->z[1]);
  case OP_RESIDUAL_FWD:
    return K->residual_fwd(NULL, a[0], a[1], a[2], c->z[0]);
  case OP_RESIDUAL_BWD:
    return K->residual_bwd(NULL, a[0], a[1], a[2], c->z[0]);
  case OP_XENT_FWD:
    return K->xent_fwd(NULL, a[0], a[1], a[2], c->z[0], c->z[1], c->z[2]);
  case OP_XENT_BWD:
    return K->xent_bwd(NULL, a[0], a[1], a[2], c->z[0], c->z[1], c->z[2]);
  case OP_SGD:
    return K->sgd(NULL, a[0], a[1], c->z[0], c->f[0], c->f[1]);
  case OP_ADAMW:
    return K->adamw(NULL, a[0], a[1], a[2], a[3], c->z[0], c->f[0], c->f[1],
                    c->f[2], c->f[3], c->f[4], c->t);
  case OP_COPY:
    return K->copy(NULL, a[0], a[1], c->z[0]);
  case OP_FILL:
    return K->fill(NULL, a[0], c->c, c->z[0]);
  case OP_REDUCE:
    reduce_slice(a[0], (int32_t)c->z[1], (int32_t)c->z[2], c->z[0]);
    return BT_OK;
  default:
    return BT_EINVAL;
  }
}

/* Records the call, or runs it now. */
static bt_status
issue(void *ctx, const struct call *c)
{
  int rc = record(ctx, c);

  return rc == 0 ? run(c) : rc == 1 ? BT_OK : (bt_status)rc;
}

/* The recording table: each entry packs its arguments (const dropped: a
 * record only passes them back to the same launcher). */
#define P(x) ((void *)(uintptr_t)(x))

static bt_status
r_linear_fwd(void *ctx, float *y, const float *x, const float *w,
             const float *b, size_t N, size_t IN, size_t OUT)
{
  struct call c = {
      .op = OP_LINEAR_FWD, .a = {y, P(x), P(w), P(b)}, .z = {N, IN, OUT}};
  return issue(ctx, &c);
}

static bt_status
r_linear_bwd_input(void *ctx, float *dx, const float *dy, const float *w,
                   size_t N, size_t IN, size_t OUT)
{
  struct call c = {
      .op = OP_LINEAR_BWD_INPUT, .a = {dx, P(dy), P(w)}, .z = {N, IN, OUT}};
  return issue(ctx, &c);
}

static bt_status
r_linear_bwd_weight(void *ctx, float *dw, float *db, const float *dy,
                    const float *x, size_t N, size_t IN, size_t OUT)
{
  struct call c = {.op = OP_LINEAR_BWD_WEIGHT,
                   .a = {dw, db, P(dy), P(x)},
                   .z = {N, IN, OUT}};
  return issue(ctx, &c);
}

static bt_status
r_gelu_fwd(void *ctx, float *y, const float *x, size_t n)
{
  struct call c = {.op = OP_GELU_FWD, .a = {y, P(x)}, .z = {n}};
  return issue(ctx, &c);
}

static bt_status
r_gelu_bwd(void *ctx, float *dx, const float *dy, const float *x, size_t n)
{
  struct call c = {.op = OP_GELU_BWD, .a = {dx, P(dy), P(x)}, .z = {n}};
  return issue(ctx, &c);
}

static bt_status
r_layernorm_fwd(void *ctx, float *y, float *mean, float *rstd, const float *x,
                const float *gamma, const float *beta, size_t N, size_t D)
{
  struct call c = {.op = OP_LAYERNORM_FWD,
                   .a = {y, mean, rstd, P(x), P(gamma), P(beta)},
                   .z = {N, D}};
  return issue(ctx, &c);
}

static bt_status
r_layernorm_bwd(void *ctx, float *dx, float *dgamma, float *dbeta,
                const float *dy, const float *x, const float *gamma,
                const float *mean, const float *rstd, size_t N, size_t D)
{
  struct call c = {
      .op = OP_LAYERNORM_BWD,
      .a = {dx, dgamma, dbeta, P(dy), P(x), P(gamma), P(mean), P(rstd)},
      .z = {N, D}};
  return issue(ctx, &c);
}

static bt_status
r_residual_fwd(void *ctx, float *y, const float *a, const float *b, size_t n)
{
  struct call c = {.op = OP_RESIDUAL_FWD, .a = {y, P(a), P(b)}, .z = {n}};
  return issue(ctx, &c);
}

static bt_status
r_residual_bwd(void *ctx, float *da, float *db, const float *dy, size_t n)
{
  struct call c = {.op = OP_RESIDUAL_BWD, .a = {da, db, P(dy)}, .z = {n}};
  return issue(ctx, &c);
}

static bt_status
r_xent_fwd(void *ctx, float *loss, const float *logits, const int32_t *labels,
           size_t N, size_t C, size_t total_rows)
{
  struct call c = {.op = OP_XENT_FWD,
                   .a = {loss, P(logits), P(labels)},
                   .z = {N, C, total_rows}};
  return issue(ctx, &c);
}

static bt_status
r_xent_bwd(void *ctx, float *dlogits, const float *logits,
           const int32_t *labels, size_t N, size_t C, size_t total_rows)
{
  struct call c = {.op = OP_XENT_BWD,
                   .a = {dlogits, P(logits), P(labels)},
                   .z = {N, C, total_rows}};
  return issue(ctx, &c);
}

static bt_status
r_sgd(void *ctx, float *w, const float *g, size_t n, float lr, float wd)
{
  struct call c = {.op = OP_SGD, .a = {w, P(g)}, .z = {n}, .f = {lr, wd}};
  return issue(ctx, &c);
}

static bt_status
r_adamw(void *ctx, float *w, float *m, float *v, const float *g, size_t n,
        float lr, float b1, float b2, float eps, float wd, int64_t t)
{
  struct call c = {.op = OP_ADAMW,
                   .a = {w, m, v, P(g)},
                   .z = {n},
                   .f = {lr, b1, b2, eps, wd},
                   .t = t};
  return issue(ctx, &c);
}

static bt_status
r_copy(void *ctx, void *dst, const void *src, size_t bytes)
{
  struct call c = {.op = OP_COPY, .a = {dst, P(src)}, .z = {bytes}};
  return issue(ctx, &c);
}

static bt_status
r_fill(void *ctx, void *dst, int v, size_t bytes)
{
  struct call c = {.op = OP_FILL, .c = v, .a = {dst}, .z = {bytes}};
  return issue(ctx, &c);
}

#undef P

static const struct bt__kern recording_kern = {1,
                                               r_linear_fwd,
                                               r_linear_bwd_input,
                                               r_linear_bwd_weight,
                                               r_gelu_fwd,
                                               r_gelu_bwd,
                                               r_layernorm_fwd,
                                               r_layernorm_bwd,
                                               r_residual_fwd,
                                               r_residual_bwd,
                                               r_xent_fwd,
                                               r_xent_bwd,
                                               r_sgd,
                                               r_adamw,
                                               r_copy,
                                               r_fill};

static bt_status
host_capture_begin(struct bt_backend *be, bt_error_t *err)
{
  struct host_backend *hb = (struct host_backend *)(void *)be;

  if (hb->recording)
    return bt__errorf(err, BT_EINVAL, "host backend: already capturing");
  hb->nrec = 0;
  hb->captured = 0;
  hb->recording = 1;
  return BT_OK;
}

static bt_status
host_capture_end(struct bt_backend *be, bt_error_t *err)
{
  struct host_backend *hb = (struct host_backend *)(void *)be;

  if (!hb->recording)
    return bt__errorf(err, BT_EINVAL, "host backend: not capturing");
  hb->recording = 0;
  hb->captured = 1;
  return BT_OK;
}

static bt_status
host_replay(struct bt_backend *be, bt_error_t *err)
{
  struct host_backend *hb = (struct host_backend *)(void *)be;

  if (!hb->captured)
    return bt__errorf(err, BT_EINVAL, "host backend: nothing captured");
  for (size_t i = 0; i < hb->nrec; i++) {
    bt_status rc = run(&hb->rec[i]);
    if (rc != BT_OK)
      return bt__errorf(err, rc,
                        "host backend: recorded call %zu of %zu "
                        "failed: %s",
                        i, hb->nrec, bt_strerror(rc));
  }
  return BT_OK;
}

static void *
host_alloc(struct bt_backend *be, int32_t d, size_t bytes, bt_error_t *err)
{
  void *p;

  (void)be;
  (void)d;
  p = calloc(1, bytes ? bytes : 1);
  if (p == NULL)
    bt__errorf(err, BT_ENOMEM, "host backend: out of memory for %zu bytes",
               bytes);
  return p;
}

static void *
host_alloc_shared(struct bt_backend *be, size_t bytes, bt_error_t *err)
{
  return host_alloc(be, -1, bytes, err);
}

static void
host_free(struct bt_backend *be, int32_t d, void *p)
{
  (void)be;
  (void)d;
  free(p);
}

static bt_status
host_move(struct bt_backend *be, int32_t d, void *dst, const void *src,
          size_t bytes, bt_error_t *err)
{
  if (be == NULL || d < 0 || d >= be->devices || dst == NULL || src == NULL)
    return bt__errorf(err, BT_EINVAL,
                      "host backend: a bad copy to or from "
                      "device %d",
                      (int)d);
  memcpy(dst, src, bytes);
  return BT_OK;
}

static void *
host_ctx(struct bt_backend *be, int32_t d)
{
  return be->desc[d].ctx;
}

static bt_status
host_sync(struct bt_backend *be, bt_error_t *err)
{
  (void)be;
  (void)err;
  return BT_OK;
}

/* Replica r's share: slice r of the n elements, summed over the replicas
 * in replica order (float) and written to every replica, as baton's own
 * all-reduce does (pipeline.h, grad_tensor). */
static void
reduce_slice(float *const *grads, int32_t replica, int32_t replicas, size_t n)
{
  size_t lo = n * (size_t)replica / (size_t)replicas;
  size_t hi = n * (size_t)(replica + 1) / (size_t)replicas;

  for (size_t i = lo; i < hi; i++) {
    float sum = grads[0][i];
    for (int32_t r = 1; r < replicas; r++)
      sum += grads[r][i];
    for (int32_t r = 0; r < replicas; r++)
      grads[r][i] = sum;
  }
}

static bt_status
host_reduce_init(struct bt_backend *be, bt_comm_t *comm, int32_t dev0,
                 int32_t replicas, int32_t groups, const int32_t *group_device,
                 bt_error_t *err)
{
  struct host_backend *hb = (struct host_backend *)(void *)be;
  int32_t W = bt_comm_size(comm);

  free(hb->group_device);
  hb->group_device = malloc((size_t)groups * sizeof *hb->group_device);
  if (hb->group_device == NULL)
    return bt__errorf(err, BT_ENOMEM, "out of memory");
  memcpy(hb->group_device, group_device, (size_t)groups * sizeof *group_device);
  hb->comm = W > 1 ? comm : NULL;
  hb->dev0 = dev0;
  hb->p = be->devices * W / replicas;
  hb->replicas = replicas;
  hb->groups = groups;
  return BT_OK;
}

/* Across processes: replica r's call sends its gradients to every other
 * replica (over MPI, to itself too when on this rank: another replica's
 * call may be overwriting its own already), receives theirs, and writes
 * the sum in replica order (float) into its own: every replica gets the
 * bits of the one-process reduce. */
static bt_status
reduce_mpi(struct host_backend *hb, int32_t group, int32_t replica, float *mine,
           size_t n, bt_error_t *err)
{
  int32_t R = hb->replicas;
  float *all = malloc((size_t)R * n * sizeof *all + 1);
  struct bt__comm_req *req = calloc(2 * (size_t)R, sizeof *req);
  char msg[BT_ERROR_MESSAGE_MAX];
  bt_status rc = BT_OK;

  if (all == NULL || req == NULL) {
    free(all);
    free(req);
    return bt__errorf(err, BT_ENOMEM, "out of memory for a reduce");
  }
  memcpy(all + (size_t)replica * n, mine, n * sizeof *mine);
  for (int32_t q = 0; q < R && rc == BT_OK; q++) {
    int32_t peer = (q * hb->p + hb->group_device[group]) / hb->be.devices;
    int32_t base = BT__COMM_TAG_USER + (1 << 22) + group * R * R;
    if (q == replica)
      continue;
    rc = bt__comm_isend(hb->comm, all + (size_t)replica * n, n * sizeof *mine,
                        peer, base + replica * R + q, &req[2 * q], msg,
                        sizeof msg);
    if (rc == BT_OK)
      rc = bt__comm_irecv(hb->comm, all + (size_t)q * n, n * sizeof *mine, peer,
                          base + q * R + replica, &req[2 * q + 1], msg,
                          sizeof msg);
    if (rc != BT_OK)
      bt__errorf(err, rc, "%s", msg);
  }
  for (int32_t i = 0; i < 2 * R; i++)
    if (rc == BT_OK)
      rc = bt__comm_wait(hb->comm, &req[i], "another replica's gradients", err);
    else
      bt__comm_cancel(hb->comm, &req[i]);
  for (size_t i = 0; rc == BT_OK && i < n; i++) {
    float sum = all[i];
    for (int32_t q = 1; q < R; q++)
      sum += all[(size_t)q * n + i];
    mine[i] = sum;
  }
  free(all);
  free(req);
  return rc;
}

/* The reduce task: recorded like a kernel while capturing (a GPU's
 * all-reduce is a kernel on a stream, captured with the step). */
static bt_status
host_reduce(struct bt_backend *be, void *ctx, int32_t group, int32_t replica,
            int32_t replicas, float *const *grads, size_t n, bt_error_t *err)
{
  struct host_backend *hb = (struct host_backend *)(void *)be;
  struct call c = {.op = OP_REDUCE,
                   .a = {(void *)(uintptr_t)grads},
                   .z = {n, (size_t)replica, (size_t)replicas}};

  if (grads == NULL || replica < 0 || replica >= replicas ||
      grads[replica] == NULL)
    return bt__errorf(err, BT_EINVAL, "host backend: a bad reduce");
  if (hb->comm != NULL)
    return reduce_mpi(hb, group, replica, grads[replica], n, err);
  return issue(ctx, &c);
}

/* Across processes: MPI on the host memory.  send and recv start a
 * non-blocking transfer (its request kept by tag); wait completes a
 * receive before its consumer; finish completes the step's sends (or drops
 * everything after a failed step). */
static bt_status
host_connect(struct bt_backend *be, bt_comm_t *comm, int32_t dev0,
             const int32_t *pairs, size_t npairs, int32_t ntags,
             bt_error_t *err)
{
  struct host_backend *hb = (struct host_backend *)(void *)be;

  (void)dev0;
  (void)pairs;
  (void)npairs;
  free(hb->req);
  hb->req = calloc((size_t)ntags + 1, sizeof *hb->req);
  if (hb->req == NULL)
    return bt__errorf(err, BT_ENOMEM, "out of memory for the transfers");
  hb->ntags = ntags;
  hb->comm = comm;
  return BT_OK;
}

static bt_status
host_start(struct host_backend *hb, void *buf, size_t bytes, int32_t peer,
           int32_t tag, int send, bt_error_t *err)
{
  char msg[BT_ERROR_MESSAGE_MAX];
  bt_status rc;

  if (tag < 0 || tag >= hb->ntags)
    return bt__errorf(err, BT_EINVAL, "host backend: transfer %d unknown",
                      (int)tag);
  /* Each tag is one transfer, started by one device's thread. */
  rc = send
           ? bt__comm_isend(hb->comm, buf, bytes, peer, BT__COMM_TAG_XFER + tag,
                            &hb->req[tag], msg, sizeof msg)
           : bt__comm_irecv(hb->comm, buf, bytes, peer, BT__COMM_TAG_XFER + tag,
                            &hb->req[tag], msg, sizeof msg);
  return rc == BT_OK ? BT_OK : bt__errorf(err, rc, "%s", msg);
}

static bt_status
host_send(struct bt_backend *be, void *ctx, const void *buf, size_t bytes,
          int32_t from, int32_t to, int32_t peer, int32_t tag, bt_error_t *err)
{
  (void)ctx;
  (void)from;
  (void)to;
  return host_start((struct host_backend *)(void *)be, (void *)(uintptr_t)buf,
                    bytes, peer, tag, 1, err);
}

static bt_status
host_recv(struct bt_backend *be, void *ctx, void *buf, size_t bytes,
          int32_t from, int32_t to, int32_t peer, int32_t tag, bt_error_t *err)
{
  (void)ctx;
  (void)from;
  (void)to;
  return host_start((struct host_backend *)(void *)be, buf, bytes, peer, tag, 0,
                    err);
}

static bt_status
host_wait(struct bt_backend *be, void *ctx, int32_t tag, bt_error_t *err)
{
  struct host_backend *hb = (struct host_backend *)(void *)be;
  char what[64];

  (void)ctx;
  if (tag < 0 || tag >= hb->ntags)
    return bt__errorf(err, BT_EINVAL, "host backend: transfer %d unknown",
                      (int)tag);
  snprintf(what, sizeof what, "transfer %d", (int)tag);
  return bt__comm_wait(hb->comm, &hb->req[tag], what, err);
}

static bt_status
host_finish(struct bt_backend *be, int failed, bt_error_t *err)
{
  struct host_backend *hb = (struct host_backend *)(void *)be;
  bt_status rc = BT_OK;

  for (int32_t tag = 0; tag < hb->ntags; tag++) {
    char what[64];
    if (!hb->req[tag].active)
      continue;
    if (failed || rc != BT_OK) {
      bt__comm_cancel(hb->comm, &hb->req[tag]);
      continue;
    }
    snprintf(what, sizeof what, "transfer %d", (int)tag);
    rc = bt__comm_wait(hb->comm, &hb->req[tag], what, err);
  }
  return rc;
}

static void
host_destroy(struct bt_backend *be)
{
  struct host_backend *hb = (struct host_backend *)(void *)be;

  if (be == NULL)
    return;
  pthread_mutex_destroy(&hb->lock);
  for (int32_t tag = 0; hb->req != NULL && tag < hb->ntags; tag++)
    bt__comm_cancel(hb->comm, &hb->req[tag]);
  free(hb->req);
  free(hb->group_device);
  free(hb->rec);
  free(be->desc);
  free(hb);
}

bt_status
bt__backend_host_create(int32_t devices, struct bt_backend **out,
                        bt_error_t *err)
{
  struct host_backend *hb;
  struct bt_backend *be;

  if (out == NULL || devices < 1)
    return bt__errorf(err, BT_EINVAL, "host backend: needs devices >= 1");
  *out = NULL;
  hb = calloc(1, sizeof *hb);
  if (hb == NULL ||
      (hb->be.desc = calloc((size_t)devices, sizeof *hb->be.desc)) == NULL) {
    free(hb);
    return bt__errorf(err, BT_ENOMEM, "out of memory for the host backend");
  }
  be = &hb->be;
  pthread_mutex_init(&hb->lock, NULL);
  /* Every device's ctx is the backend: the recording table finds it. */
  for (int32_t i = 0; i < devices; i++)
    be->desc[i].ctx = hb;
  be->size = sizeof *be;
  be->name = "host";
  be->kern = &recording_kern;
  be->devices = devices;
  be->alloc = host_alloc;
  be->free = host_free;
  be->alloc_shared = host_alloc_shared;
  be->upload = host_move;
  be->download = host_move;
  be->sync = host_sync;
  be->host_ctx = host_ctx;
  be->destroy = host_destroy;
  be->reduce = host_reduce;
  be->reduce_init = host_reduce_init;
  be->reduce_in_graph = 1;
  be->connect = host_connect;
  be->send = host_send;
  be->recv = host_recv;
  be->wait = host_wait;
  be->finish = host_finish;
  be->capture_begin = host_capture_begin;
  be->capture_end = host_capture_end;
  be->replay = host_replay;
  *out = be;
  return BT_OK;
}
