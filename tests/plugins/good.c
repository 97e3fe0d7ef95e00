/* Fault plugin "good": a valid GPipe-like schedule for any placement.
 * Forwards of every stage in stage order, then backwards in reverse stage
 * order, each stage's work on the device that owns it. */
#include <baton/schedule.h>

static int
plan_good(const bt_schedule_params_t *p, const bt_plan_sink_t *sink,
          char *errbuf, size_t errlen, void *user_data)
{
  int rc = 0;

  (void)errbuf;
  (void)errlen;
  (void)user_data;
  for (int32_t s = 0; s < p->stages && rc == 0; s++)
    for (int32_t k = 0; k < p->microbatches && rc == 0; k++) {
      bt_action_t a = {s, BT_ACT_F, k};
      rc = sink->emit(sink->ctx, p->stage_device[s], a);
    }
  for (int32_t s = p->stages - 1; s >= 0 && rc == 0; s--)
    for (int32_t k = 0; k < p->microbatches && rc == 0; k++) {
      bt_action_t a = {s, BT_ACT_B, k};
      rc = sink->emit(sink->ctx, p->stage_device[s], a);
    }
  return rc;
}

static const bt_schedule_desc_t desc = {
    BT_SCHEDULE_ABI_VERSION,
    sizeof(bt_schedule_desc_t),
    "fault-good",
    "test plugin: all forwards, then all backwards",
    plan_good,
    0, /* no preference: means 1 */
    NULL,
};

BT_SCHEDULE_EXPORT(desc)
