/* The host test backend (backend.h): "device" memory that is plain
 * malloc'd memory apart from the model's, the CPU kernels, CPU devices. */
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "error.h"

struct host_backend {
  struct bt_backend be;
};

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
static bt_status
host_reduce(struct bt_backend *be, void *ctx, int32_t group, int32_t replica,
            int32_t replicas, float *const *grads, size_t n, bt_error_t *err)
{
  size_t lo = n * (size_t)replica / (size_t)replicas;
  size_t hi = n * (size_t)(replica + 1) / (size_t)replicas;

  (void)be;
  (void)ctx;
  (void)group;
  if (grads == NULL || replica < 0 || replica >= replicas)
    return bt__errorf(err, BT_EINVAL, "host backend: a bad reduce");
  for (size_t i = lo; i < hi; i++) {
    float sum = grads[0][i];
    for (int32_t r = 1; r < replicas; r++)
      sum += grads[r][i];
    for (int32_t r = 0; r < replicas; r++)
      grads[r][i] = sum;
  }
  return BT_OK;
}

static void
host_destroy(struct bt_backend *be)
{
  if (be == NULL)
    return;
  free(be->desc);
  free(be);
}

bt_status
bt__backend_host_create(int32_t devices, struct bt_backend **out,
                        bt_error_t *err)
{
  struct bt_backend *be;

  if (out == NULL || devices < 1)
    return bt__errorf(err, BT_EINVAL, "host backend: needs devices >= 1");
  *out = NULL;
  be = calloc(1, sizeof *be);
  if (be == NULL ||
      (be->desc = calloc((size_t)devices, sizeof *be->desc)) == NULL) {
    free(be);
    return bt__errorf(err, BT_ENOMEM, "out of memory for the host backend");
  }
  be->size = sizeof *be;
  be->name = "host";
  be->kern = &bt__cpu_kern;
  be->devices = devices;
  be->alloc = host_alloc;
  be->free = host_free;
  be->alloc_shared = host_alloc_shared;
  be->upload = host_move;
  be->download = host_move;
  be->sync = host_sync;
  be->destroy = host_destroy;
  be->reduce = host_reduce;
  *out = be;
  return BT_OK;
}
