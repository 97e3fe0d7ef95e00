/* Fault plugin "bad_plan": GPipe-like, but the backward of the last
 * microbatch on stage 0 is never emitted. */
#include <baton/schedule.h>

static int
plan_bad(const bt_schedule_params_t *p, const bt_plan_sink_t *sink,
         char *errbuf, size_t errlen, void *user_data)
{
  int32_t m = p->microbatches;
  int rc = 0;

  (void)errbuf;
  (void)errlen;
  (void)user_data;
  for (int32_t s = 0; s < p->stages && rc == 0; s++)
    for (int32_t k = 0; k < m && rc == 0; k++) {
      bt_action_t a = {s, BT_ACT_F, k};
      rc = sink->emit(sink->ctx, p->stage_device[s], a);
    }
  for (int32_t s = p->stages - 1; s >= 0 && rc == 0; s--)
    for (int32_t k = 0; k < (s == 0 ? m - 1 : m) && rc == 0; k++) {
      bt_action_t a = {s, BT_ACT_B, k};
      rc = sink->emit(sink->ctx, p->stage_device[s], a);
    }
  return rc;
}

static const bt_schedule_desc_t desc = {
    BT_SCHEDULE_ABI_VERSION,
    sizeof(bt_schedule_desc_t),
    "fault-bad-plan",
    "test plugin: omits one backward",
    plan_bad,
    1,
    NULL,
};

BT_SCHEDULE_EXPORT(desc)
