/* Private: filling a caller's bt_error_t. */
#ifndef BATON_SCHEDULER_ERROR_H
#define BATON_SCHEDULER_ERROR_H

#include <stdarg.h>

#include "baton/status.h"

/* Writes status and a formatted message into err (when not NULL) and
 * returns status, so a failing path reads `return bt__errorf(err, ...)`. */
bt_status bt__errorf(bt_error_t *err, bt_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Appends a formatted line to err->message (a newline first when the
 * message is not empty); silently truncates, ending with "..." when full. */
void bt__error_append(bt_error_t *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif /* BATON_SCHEDULER_ERROR_H */
