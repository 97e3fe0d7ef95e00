/* Private: pieces shared by the schedule host (schedule.c), the built-in
 * policies (builtin.c) and the list scheduler (listsched.c). */
#ifndef BATON_SCHEDULER_SCHEDULE_INTERNAL_H
#define BATON_SCHEDULER_SCHEDULE_INTERNAL_H

#include "baton/schedule.h"

/* A sink that appends to a plan and remembers the first failed emit. */
struct bt__plan_sink_ctx {
  bt_plan_t *plan;
  bt_status status;   /* first failure, BT_OK if none */
  int32_t bad_device; /* the failed emit's arguments */
  bt_action_t bad_action;
};

void bt__plan_sink_init(struct bt__plan_sink_ctx *ctx, bt_plan_t *plan,
                        bt_plan_sink_t *sink);

/* Emits through a sink; returns the sink's status (0 = ok). */
static inline int
bt__emit(const bt_plan_sink_t *sink, int32_t device, int32_t stage,
         int32_t kind, int32_t mb)
{
  bt_action_t a;

  a.stage = stage;
  a.kind = kind;
  a.microbatch = mb;
  return sink->emit(sink->ctx, device, a);
}

/* List scheduler options. */
enum {
  /* Prefer a ready forward over a ready I (default: I first, it is on the
   * critical path). */
  BT__LS_FORWARD_FIRST = 1,
  /* A microbatch stays "in flight" until its W, not its I: W memory then
   * counts against the cap, so W runs early instead of piling up. */
  BT__LS_CAP_UNTIL_W = 2
};

/* Greedy list scheduler for one stage per device with split backward.  At
 * each instant a free device runs, by priority, the next ready I, else the
 * next forward if fewer than cap[stage] microbatches are in flight on it
 * (F done, I not yet; or W not yet with BT__LS_CAP_UNTIL_W), else a pending
 * W.  Driven by the params' costs and latency.  Returns 0 or the sink's
 * status (BT_ENOMEM when its own memory runs out). */
int bt__list_schedule(const bt_schedule_params_t *params, const int32_t *cap,
                      int flags, const bt_plan_sink_t *sink);

/* The `auto` policy (auto.c). */
extern const bt_schedule_desc_t bt__auto_desc;

/* The built-in descriptors, and how many there are. */
extern const bt_schedule_desc_t *const bt__builtin_schedules[];
extern const size_t bt__builtin_schedule_count;

#endif /* BATON_SCHEDULER_SCHEDULE_INTERNAL_H */
