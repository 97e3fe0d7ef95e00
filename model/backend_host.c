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
  *out = be;
  return BT_OK;
}
