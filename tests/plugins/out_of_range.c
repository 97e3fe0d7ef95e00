/* Fault plugin "out_of_range": emits a forward of stage S (one past the
 * last); the sink refuses it and the policy returns the sink's status, as
 * the ABI asks. */
#include <baton/schedule.h>

static int
plan_oor(const bt_schedule_params_t *p, const bt_plan_sink_t *sink,
         char *errbuf, size_t errlen, void *user_data)
{
  bt_action_t ok = {0, BT_ACT_F, 0}, bad = {p->stages, BT_ACT_F, 0};
  int rc;

  (void)errbuf;
  (void)errlen;
  (void)user_data;
  rc = sink->emit(sink->ctx, p->stage_device[0], ok);
  if (rc == 0)
    rc = sink->emit(sink->ctx, 0, bad);
  return rc;
}

static const bt_schedule_desc_t desc = {
    BT_SCHEDULE_ABI_VERSION,
    sizeof(bt_schedule_desc_t),
    "fault-out-of-range",
    "test plugin: emits stage >= stages",
    plan_oor,
    1,
    NULL,
};

BT_SCHEDULE_EXPORT(desc)
