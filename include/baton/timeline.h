/* baton: timelines and their writers (Chrome trace, SVG).
 *
 * A timeline is what happened (or would happen) in one step: a slice per
 * task with its device and start/end time.  The simulator and the runtime
 * produce the same structure, so a real run and its simulation are drawn by
 * the same writers and can be laid side by side.
 *
 * Writers are reentrant and never keep the caller's data. */
#ifndef BATON_TIMELINE_H
#define BATON_TIMELINE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "baton/export.h"
#include "baton/plan.h"
#include "baton/sim.h"
#include "baton/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct bt_slice {
  bt_action_t action;
  int32_t device;
  double start, end; /* in the timeline's unit */
} bt_slice_t;

typedef struct bt_timeline {
  size_t size;             /* sizeof(bt_timeline_t) */
  const char *title;       /* e.g. the schedule's name */
  const char *subtitle;    /* e.g. "makespan 33, bubble 27%"; may be NULL */
  int32_t devices;
  int32_t stages;          /* to shade virtual stages of one device apart */
  const bt_slice_t *slices;
  size_t count;
  double unit_us;          /* microseconds per time unit (sim: 1000) */
  const char *const *device_names; /* [devices]; NULL = "device 0", ... */
} bt_timeline_t;

#define BT_TIMELINE_INIT                                                      \
  { sizeof(bt_timeline_t), NULL, NULL, 0, 0, NULL, 0, 1000.0, NULL }

/* Fills slices[0..task_count) from a simulation, in task id order. */
BT_API void bt_sim_slices(const bt_sim_t *sim, bt_slice_t *slices);

/* Chrome trace event format (JSON object with "traceEvents"), loadable in
 * Perfetto and chrome://tracing: one process per timeline (named by its
 * title), one thread (track) per device, one complete event per slice named
 * like "2F0", with category F/B/I/W and args stage, microbatch.  BT_EIO on a
 * write error; BT_EINVAL on a malformed timeline. */
BT_API bt_status bt_timeline_write_chrome(FILE *f,
                                          const bt_timeline_t *timelines,
                                          size_t count, bt_error_t *err);

/* SVG picture in the style of the GPipe paper's figures: one panel per
 * timeline, devices on the vertical axis, time horizontal on a scale shared
 * by all panels, F/B/I/W in distinct colours (virtual stages of a device in
 * lighter and darker shades), the microbatch number in each box when it
 * fits, idle time visible as empty track, a time axis and a legend.  Same
 * errors as the Chrome writer. */
BT_API bt_status bt_timeline_write_svg(FILE *f,
                                       const bt_timeline_t *timelines,
                                       size_t count, bt_error_t *err);

#ifdef __cplusplus
}
#endif

#endif /* BATON_TIMELINE_H */
