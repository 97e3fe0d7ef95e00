/* Private: what the timeline writers (timeline_chrome.c, timeline_svg.c)
 * share, so that both accept and reject exactly the same timelines. */
#ifndef BATON_SCHEDULER_TIMELINE_INTERNAL_H
#define BATON_SCHEDULER_TIMELINE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "baton/timeline.h"

/* Checks a writer's arguments: f and timelines not NULL (timelines may be
 * NULL when count is 0), f not already in error (BT_EIO), and each
 * timeline's size, devices, stages, unit and slices (kind, stage,
 * microbatch, device, finite non-negative times with end >= start).
 * BT_EINVAL with the first problem, naming the timeline and the slice. */
bt_status bt__timeline_check(FILE *f, const bt_timeline_t *timelines,
                             size_t count, bt_error_t *err);

/* The timeline's device_names, or NULL when the caller's struct is too old
 * to have the field or leaves it NULL.  Only after bt__timeline_check. */
const char *const *bt__timeline_names(const bt_timeline_t *tl);

/* A device's display name: device_names[d] when given, else "device d"
 * written into buf (n >= 24 is always enough). */
const char *bt__timeline_device_name(const bt_timeline_t *tl, int32_t d,
                                     char *buf, size_t n);

/* The timeline's title, or "timeline i" written into buf when it has none
 * (n >= 32 is always enough). */
const char *bt__timeline_title(const bt_timeline_t *tl, size_t i, char *buf,
                               size_t n);

/* Number of virtual stages each device holds (1 when stages <= devices),
 * and the one a stage is: stage s runs on device s % devices. */
int32_t bt__timeline_chunks(const bt_timeline_t *tl);
int32_t bt__timeline_chunk(const bt_timeline_t *tl, int32_t stage);

/* Flushes f and reports its error flag as BT_EIO, naming `what`. */
bt_status bt__timeline_finish(FILE *f, const char *what, bt_error_t *err);

#endif /* BATON_SCHEDULER_TIMELINE_INTERNAL_H */
