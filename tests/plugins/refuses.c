/* Fault plugin "refuses": declines every request, with a reason in
 * errbuf (a test of the refusal path only). */
#include <stdio.h>

#include <baton/schedule.h>

static int
plan_refuses(const bt_schedule_params_t *p, const bt_plan_sink_t *sink,
             char *errbuf, size_t errlen, void *user_data)
{
  (void)sink;
  (void)user_data;
  snprintf(errbuf, errlen,
           "fault-refuses serves no request (got p=%d, m=%d); use a "
           "built-in schedule such as 'gpipe'",
           (int)p->devices, (int)p->microbatches);
  return 1;
}

static const bt_schedule_desc_t desc = {
    BT_SCHEDULE_ABI_VERSION,
    sizeof(bt_schedule_desc_t),
    "fault-refuses",
    "test plugin: always refuses, with a reason",
    plan_refuses,
    1,
    NULL,
};

BT_SCHEDULE_EXPORT(desc)
