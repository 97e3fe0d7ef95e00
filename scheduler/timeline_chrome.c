/* Timelines: the checks both writers share, and the Chrome trace writer. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "baton/timeline.h"
#include "error.h"
#include "timeline_internal.h"

/* Callers built against an older header pass a smaller size; every field up
 * to unit_us is needed, device_names is optional. */
#define TIMELINE_MIN_SIZE (offsetof(bt_timeline_t, unit_us) + sizeof(double))
#define TIMELINE_NAMES_SIZE                                                   \
  (offsetof(bt_timeline_t, device_names) + sizeof(const char *const *))

/* ---- shared by both writers ------------------------------------------- */

const char *const *
bt__timeline_names(const bt_timeline_t *tl)
{
  if (tl->size < TIMELINE_NAMES_SIZE)
    return NULL;
  return tl->device_names;
}

const char *
bt__timeline_device_name(const bt_timeline_t *tl, int32_t d, char *buf,
                         size_t n)
{
  const char *const *names = bt__timeline_names(tl);

  if (names != NULL && names[d] != NULL)
    return names[d];
  snprintf(buf, n, "device %d", (int)d);
  return buf;
}

const char *
bt__timeline_title(const bt_timeline_t *tl, size_t i, char *buf, size_t n)
{
  if (tl->title != NULL)
    return tl->title;
  snprintf(buf, n, "timeline %zu", i);
  return buf;
}

int32_t
bt__timeline_chunks(const bt_timeline_t *tl)
{
  if (tl->stages <= tl->devices)
    return 1;
  return (int32_t)(((int64_t)tl->stages + tl->devices - 1) / tl->devices);
}

int32_t
bt__timeline_chunk(const bt_timeline_t *tl, int32_t stage)
{
  int32_t c = stage / tl->devices;
  int32_t n = bt__timeline_chunks(tl);

  return c < n ? c : n - 1;
}

/* Prefixes the message with the timeline and slice it is about, so that a
 * caller with many timelines finds the culprit. */
__attribute__((format(printf, 5, 6))) static bt_status
bad_slice(bt_error_t *err, const bt_timeline_t *tl, size_t i, size_t s,
          const char *fmt, ...)
{
  char what[512], name[BT_ACTION_TEXT_MAX], title[32];
  bt_action_t a = tl->slices[s].action;
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  if (a.kind == BT_ACT_IDLE)
    snprintf(name, sizeof name, "idle");
  else
    bt_action_format(a, name, sizeof name);
  return bt__errorf(err, BT_EINVAL, "timeline %zu ('%s'), slice %zu (%s): %s",
                    i, bt__timeline_title(tl, i, title, sizeof title), s, name,
                    what);
}

static bt_status
check_action(const bt_timeline_t *tl, size_t i, size_t s, bt_error_t *err)
{
  bt_action_t a = tl->slices[s].action;

  if (a.kind < BT_ACT_F || a.kind > BT_ACT_IDLE)
    return bad_slice(err, tl, i, s, "kind %d is not F, B, I, W or IDLE",
                     (int)a.kind);
  if (a.kind == BT_ACT_IDLE)
    return BT_OK;
  if (a.stage < 0 || (tl->stages > 0 && a.stage >= tl->stages))
    return bad_slice(err, tl, i, s,
                     "stage %d outside [0, %d); set the timeline's stages to "
                     "the stage count",
                     (int)a.stage, (int)tl->stages);
  if (a.microbatch < 0)
    return bad_slice(err, tl, i, s, "microbatch %d is negative",
                     (int)a.microbatch);
  return BT_OK;
}

static bt_status
check_slice(const bt_timeline_t *tl, size_t i, size_t s, bt_error_t *err)
{
  const bt_slice_t *sl = &tl->slices[s];
  bt_status rc;

  rc = check_action(tl, i, s, err);
  if (rc != BT_OK)
    return rc;
  if (sl->device < 0 || sl->device >= tl->devices)
    return bad_slice(err, tl, i, s, "device %d outside [0, %d)",
                     (int)sl->device, (int)tl->devices);
  if (!isfinite(sl->start) || !isfinite(sl->end))
    return bad_slice(err, tl, i, s, "times must be finite (start %g, end %g)",
                     sl->start, sl->end);
  if (sl->start < 0)
    return bad_slice(err, tl, i, s,
                     "start %g is negative; times count from the step's "
                     "start at 0",
                     sl->start);
  if (sl->end < sl->start)
    return bad_slice(err, tl, i, s, "end %g is before start %g", sl->end,
                     sl->start);
  /* Both writers print times in microseconds; they must stay finite. */
  if (!isfinite(sl->end * tl->unit_us))
    return bad_slice(err, tl, i, s,
                     "end %g times unit_us %g overflows a double; the "
                     "times in microseconds must stay finite",
                     sl->end, tl->unit_us);
  return BT_OK;
}

static bt_status
check_timeline(const bt_timeline_t *tl, size_t i, bt_error_t *err)
{
  char title[32];
  bt_status rc;

  if (tl->size < TIMELINE_MIN_SIZE)
    return bt__errorf(err, BT_EINVAL,
                      "timeline %zu: size %zu is smaller than %zu; initialize "
                      "it with BT_TIMELINE_INIT",
                      i, tl->size, (size_t)TIMELINE_MIN_SIZE);
  bt__timeline_title(tl, i, title, sizeof title);
  if (tl->devices < 1 || tl->stages < 0)
    return bt__errorf(err, BT_EINVAL,
                      "timeline %zu ('%s'): needs devices >= 1 and stages >= 0 "
                      "(got devices=%d, stages=%d)",
                      i, title, (int)tl->devices, (int)tl->stages);
  if (!isfinite(tl->unit_us) || tl->unit_us <= 0)
    return bt__errorf(err, BT_EINVAL,
                      "timeline %zu ('%s'): unit_us must be finite and > 0 "
                      "(got %g)",
                      i, title, tl->unit_us);
  if (tl->slices == NULL && tl->count > 0)
    return bt__errorf(err, BT_EINVAL,
                      "timeline %zu ('%s'): slices is NULL but count is %zu",
                      i, title, tl->count);
  for (size_t s = 0; s < tl->count; s++) {
    rc = check_slice(tl, i, s, err);
    if (rc != BT_OK)
      return rc;
  }
  return BT_OK;
}

bt_status
bt__timeline_check(FILE *f, const bt_timeline_t *timelines, size_t count,
                   bt_error_t *err)
{
  bt_status rc;

  if (f == NULL)
    return bt__errorf(err, BT_EINVAL, "the output FILE is NULL");
  if (timelines == NULL && count > 0)
    return bt__errorf(err, BT_EINVAL, "timelines is NULL but count is %zu",
                      count);
  for (size_t i = 0; i < count; i++) {
    rc = check_timeline(&timelines[i], i, err);
    if (rc != BT_OK)
      return rc;
  }
  /* A stream already in error would make us blame our own writes. */
  if (ferror(f))
    return bt__errorf(err, BT_EIO,
                      "the output stream already has its error flag set; "
                      "clearerr() it or pass a fresh stream");
  return BT_OK;
}

bt_status
bt__timeline_finish(FILE *f, const char *what, bt_error_t *err)
{
  /* Buffered bytes may fail only when flushed; a caller who checks our
   * status should not have to fflush to learn that.  The flag is tested
   * first so that a stream opened for reading is never flushed. */
  if (ferror(f) || fflush(f) != 0)
    return bt__errorf(err, BT_EIO, "writing the %s failed: %s", what,
                      errno ? strerror(errno) : "stream error");
  return BT_OK;
}

/* ---- Chrome trace writer ---------------------------------------------- */

/* Write errors are collected by the stream's error flag and reported once
 * by bt__timeline_finish, so single writes are not checked here. */

static void
json_string_body(FILE *f, const char *s)
{
  for (; *s != '\0'; s++) {
    unsigned char c = (unsigned char)*s;
    switch (c) {
    case '"':
      fputs("\\\"", f);
      break;
    case '\\':
      fputs("\\\\", f);
      break;
    case '\n':
      fputs("\\n", f);
      break;
    case '\r':
      fputs("\\r", f);
      break;
    case '\t':
      fputs("\\t", f);
      break;
    default:
      if (c < 0x20)
        fprintf(f, "\\u%04x", (unsigned)c);
      else
        fputc(c, f);
    }
  }
}

static void
json_string(FILE *f, const char *s)
{
  fputc('"', f);
  json_string_body(f, s);
  fputc('"', f);
}

/* The shortest of %.15g and %.17g that reads back exactly: "1000", not
 * "1000.0000000000001", yet no precision lost. */
static void
json_number(FILE *f, double v)
{
  char buf[40];

  snprintf(buf, sizeof buf, "%.15g", v);
  if (strtod(buf, NULL) != v)
    snprintf(buf, sizeof buf, "%.17g", v);
  fputs(buf, f);
}

/* Starts an event: a newline before the first, ",\n" before the others. */
static void
event_begin(FILE *f, bool *first)
{
  fputs(*first ? "\n{" : ",\n{", f);
  *first = false;
}

static void
write_process_meta(FILE *f, const bt_timeline_t *tl, size_t i, bool *first)
{
  char title[32];

  event_begin(f, first);
  fprintf(f, "\"name\":\"process_name\",\"ph\":\"M\",\"pid\":%zu,\"tid\":0,"
             "\"args\":{\"name\":\"",
          i + 1);
  json_string_body(f, bt__timeline_title(tl, i, title, sizeof title));
  if (tl->subtitle != NULL && tl->subtitle[0] != '\0') {
    fputs(" (", f);
    json_string_body(f, tl->subtitle);
    fputc(')', f);
  }
  fputs("\"}}", f);
  event_begin(f, first);
  fprintf(f, "\"name\":\"process_sort_index\",\"ph\":\"M\",\"pid\":%zu,"
             "\"tid\":0,\"args\":{\"sort_index\":%zu}}",
          i + 1, i);
}

static void
write_thread_meta(FILE *f, const bt_timeline_t *tl, size_t i, int32_t d,
                  bool *first)
{
  char buf[24];

  event_begin(f, first);
  fprintf(f, "\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":%zu,\"tid\":%d,"
             "\"args\":{\"name\":",
          i + 1, (int)d);
  json_string(f, bt__timeline_device_name(tl, d, buf, sizeof buf));
  fputs("}}", f);
  event_begin(f, first);
  fprintf(f, "\"name\":\"thread_sort_index\",\"ph\":\"M\",\"pid\":%zu,"
             "\"tid\":%d,\"args\":{\"sort_index\":%d}}",
          i + 1, (int)d, (int)d);
}

static void
write_slice(FILE *f, const bt_timeline_t *tl, size_t i, const bt_slice_t *sl,
            bool *first)
{
  char name[BT_ACTION_TEXT_MAX];

  bt_action_format(sl->action, name, sizeof name);
  event_begin(f, first);
  fprintf(f, "\"name\":\"%s\",\"cat\":\"%c\",\"ph\":\"X\",\"ts\":", name,
          bt_action_kind_letter(sl->action.kind));
  json_number(f, sl->start * tl->unit_us);
  fputs(",\"dur\":", f);
  json_number(f, (sl->end - sl->start) * tl->unit_us);
  fprintf(f, ",\"pid\":%zu,\"tid\":%d,\"args\":{\"stage\":%d,"
             "\"microbatch\":%d}}",
          i + 1, (int)sl->device, (int)sl->action.stage,
          (int)sl->action.microbatch);
}

static void
write_process(FILE *f, const bt_timeline_t *tl, size_t i, bool *first)
{
  write_process_meta(f, tl, i, first);
  for (int32_t d = 0; d < tl->devices; d++)
    write_thread_meta(f, tl, i, d, first);
  for (size_t s = 0; s < tl->count; s++)
    if (tl->slices[s].action.kind != BT_ACT_IDLE)
      write_slice(f, tl, i, &tl->slices[s], first);
}

bt_status
bt_timeline_write_chrome(FILE *f, const bt_timeline_t *timelines,
                         size_t count, bt_error_t *err)
{
  bool first = true;
  bt_status rc;

  rc = bt__timeline_check(f, timelines, count, err);
  if (rc != BT_OK)
    return rc;
  errno = 0;
  fputs("{\"displayTimeUnit\":\"ms\",\"traceEvents\":[", f);
  for (size_t i = 0; i < count; i++)
    write_process(f, &timelines[i], i, &first);
  fputs("\n]}\n", f);
  return bt__timeline_finish(f, "Chrome trace", err);
}
