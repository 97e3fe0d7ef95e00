/* Fault plugin "wrong_abi": built for a newer schedule ABI. */
#include <baton/schedule.h>

static int
plan_never(const bt_schedule_params_t *p, const bt_plan_sink_t *sink,
           char *errbuf, size_t errlen, void *user_data)
{
  (void)p;
  (void)sink;
  (void)errbuf;
  (void)errlen;
  (void)user_data;
  return -1;
}

static const bt_schedule_desc_t desc = {
    BT_SCHEDULE_ABI_VERSION + 1,
    sizeof(bt_schedule_desc_t),
    "fault-wrong-abi",
    "test plugin: abi_version from the future",
    plan_never,
    1,
    NULL,
};

__attribute__((visibility("default"))) const bt_schedule_desc_t *
baton_schedule_entry(void);

__attribute__((visibility("default"))) const bt_schedule_desc_t *
baton_schedule_entry(void)
{
  return &desc;
}
