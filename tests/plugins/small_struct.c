/* Fault plugin "small_struct": declares a descriptor smaller than the
 * version-1 layout, as a plugin built against a truncated header would. */
#include <stddef.h>

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
    BT_SCHEDULE_ABI_VERSION,
    (uint32_t)offsetof(bt_schedule_desc_t, plan),
    "fault-small-struct",
    "test plugin: struct_size too small",
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
