/* Fault plugin "cyclic_plan": every task once, on the right device, in an
 * order that deadlocks.  Stage 0 runs F,B per microbatch in order
 * 0, 1, ...; every later stage runs them in reverse microbatch order, so
 * 0B0 waits for 1B0, which waits behind 1F(m-1), which waits for 0F(m-1),
 * queued behind 0B0 (needs m >= 2 and one stage per device). */
#include <baton/schedule.h>

static int
plan_cyclic(const bt_schedule_params_t *p, const bt_plan_sink_t *sink,
            char *errbuf, size_t errlen, void *user_data)
{
  int32_t m = p->microbatches;
  int rc = 0;

  (void)errbuf;
  (void)errlen;
  (void)user_data;
  for (int32_t s = 0; s < p->stages && rc == 0; s++)
    for (int32_t i = 0; i < m && rc == 0; i++) {
      int32_t k = s == 0 ? i : m - 1 - i;
      bt_action_t f = {s, BT_ACT_F, k}, b = {s, BT_ACT_B, k};
      rc = sink->emit(sink->ctx, p->stage_device[s], f);
      if (rc == 0)
        rc = sink->emit(sink->ctx, p->stage_device[s], b);
    }
  return rc;
}

static const bt_schedule_desc_t desc = {
    BT_SCHEDULE_ABI_VERSION,
    sizeof(bt_schedule_desc_t),
    "fault-cyclic-plan",
    "test plugin: a deadlocking order",
    plan_cyclic,
    1,
    NULL,
};

BT_SCHEDULE_EXPORT(desc)
