/* Fault plugin "null_callback": a descriptor without a plan callback. */
#include <baton/schedule.h>

static const bt_schedule_desc_t desc = {
    BT_SCHEDULE_ABI_VERSION,
    sizeof(bt_schedule_desc_t),
    "fault-null-callback",
    "test plugin: plan is NULL",
    NULL,
    1,
    NULL,
};

BT_SCHEDULE_EXPORT(desc)
