/* Status codes, error detail, version. */
#include <stdio.h>
#include <string.h>

#include "baton/status.h"
#include "baton/version.h"
#include "error.h"

#define BATON_VERSION_STRING BT_VERSION_STRING

const char *
bt_strerror(bt_status status)
{
  switch (status) {
#define BT__STATUS_MSG(name, value, msg)                                      \
  case BT_##name:                                                             \
    return msg;
    BT_STATUS_MAP(BT__STATUS_MSG)
#undef BT__STATUS_MSG
  }
  return "unknown status code";
}

const char *
bt_status_name(bt_status status)
{
  switch (status) {
#define BT__STATUS_NAME(name, value, msg)                                     \
  case BT_##name:                                                             \
    return #name;
    BT_STATUS_MAP(BT__STATUS_NAME)
#undef BT__STATUS_NAME
  }
  return "UNKNOWN";
}

void
bt_error_clear(bt_error_t *err)
{
  if (err == NULL)
    return;
  err->status = BT_OK;
  err->message[0] = '\0';
}

const char *
bt_version_string(void)
{
  return BATON_VERSION_STRING;
}

unsigned
bt_version(void)
{
  return BT_VERSION;
}

bt_status
bt__errorf(bt_error_t *err, bt_status status, const char *fmt, ...)
{
  va_list ap;

  if (err == NULL)
    return status;
  err->status = status;
  va_start(ap, fmt);
  vsnprintf(err->message, sizeof err->message, fmt, ap);
  va_end(ap);
  return status;
}

void
bt__error_append(bt_error_t *err, const char *fmt, ...)
{
  static const char ellipsis[] = "\n...";
  size_t cap = sizeof err->message;
  size_t len;
  va_list ap;
  int n;

  if (err == NULL)
    return;
  len = strlen(err->message);
  /* Keep room for the ellipsis so a truncated list says it was cut. */
  if (len + sizeof ellipsis >= cap)
    return;
  if (len > 0)
    err->message[len++] = '\n';
  va_start(ap, fmt);
  n = vsnprintf(err->message + len, cap - sizeof ellipsis - len, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= cap - sizeof ellipsis - len)
    memcpy(err->message + cap - sizeof ellipsis - 1, ellipsis, sizeof ellipsis);
}
