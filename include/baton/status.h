/* baton: status codes and error detail.
 *
 * Every call that can fail returns a bt_status: 0 on success, a negative
 * code otherwise.  Calls that can say more take an optional bt_error_t out
 * parameter owned by the caller; the library writes the detail there and
 * never into process-global state, so concurrent callers do not race. */
#ifndef BATON_STATUS_H
#define BATON_STATUS_H

#include <stddef.h>

#include "baton/export.h"

#ifdef __cplusplus
extern "C" {
#endif

/* XX(NAME, value, message).  One list generates the enum, bt_strerror() and
 * bt_status_name(), as libuv's UV_ERRNO_MAP does. */
#define BT_STATUS_MAP(XX)                                                     \
  XX(OK, 0, "success")                                                        \
  XX(EINVAL, -1, "invalid argument")                                          \
  XX(ENOMEM, -2, "out of memory")                                             \
  XX(ENOENT, -3, "no such file or name")                                      \
  XX(EIO, -4, "input/output error")                                           \
  XX(EPARSE, -5, "malformed input")                                           \
  XX(EPLAN, -6, "invalid plan")                                               \
  XX(EDEADLOCK, -7, "plan would deadlock")                                    \
  XX(ESKIP, -8, "invalid skip-connection layout")                             \
  XX(EUNSUPPORTED, -9, "schedule cannot serve these parameters")             \
  XX(EPLUGIN_LOAD, -10, "plugin could not be loaded")                         \
  XX(EPLUGIN_SYMBOL, -11, "plugin lacks the schedule entry symbol")           \
  XX(EPLUGIN_ABI, -12, "plugin ABI version or struct size mismatch")          \
  XX(EPLUGIN_CALLBACK, -13, "plugin descriptor has no plan callback")         \
  XX(EPLUGIN_PLAN, -14, "plugin returned an invalid plan")                    \
  XX(EBUSY, -15, "resource busy")                                             \
  XX(ERANGE, -16, "value out of range")                                       \
  XX(ETIMEDOUT, -17, "timed out waiting for another process")                 \
  XX(ECOMM, -18, "communication with another process failed")                 \
  XX(EPEER, -19, "another process of the job failed")

typedef enum bt_status {
#define BT__STATUS_ENUM(name, value, msg) BT_##name = value,
  BT_STATUS_MAP(BT__STATUS_ENUM)
#undef BT__STATUS_ENUM
} bt_status;

/* Human-readable sentence for a status; never NULL, also for unknown codes. */
BT_API const char *bt_strerror(bt_status status);

/* The code's symbolic name without the prefix ("EPLAN"); never NULL. */
BT_API const char *bt_status_name(bt_status status);

#define BT_ERROR_MESSAGE_MAX 4096

/* Error detail written by calls that take a `bt_error_t *err`.  Caller-owned;
 * pass NULL when the detail is not wanted.  On failure `status` repeats the
 * returned code and `message` says what went wrong and what to do next (one
 * problem per line when there are several).  On success it is left as is. */
typedef struct bt_error {
  bt_status status;
  char message[BT_ERROR_MESSAGE_MAX];
} bt_error_t;

/* Sets *err to { BT_OK, "" }.  NULL is accepted. */
BT_API void bt_error_clear(bt_error_t *err);

/* Version of the library this program runs against, "MAJOR.MINOR.PATCH"
 * (semantic versioning: the ABI is stable within a MAJOR). */
BT_API const char *bt_version_string(void);

/* The same as MAJOR * 10000 + MINOR * 100 + PATCH, to compare with
 * BT_VERSION from <baton/version.h> (the version a program was built
 * against). */
BT_API unsigned bt_version(void);

/* Alias of bt_version() under the name embedding code tends to look for;
 * inline, so the library itself exports only bt_ symbols. */
static inline unsigned
baton_version(void)
{
  return bt_version();
}

#ifdef __cplusplus
}
#endif

#endif /* BATON_STATUS_H */
