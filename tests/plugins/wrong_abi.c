/* Fault plugin "wrong_abi": built for a newer schedule ABI. */
#include "fault.h"

static const bt_schedule_desc_t desc = {
    BT_SCHEDULE_ABI_VERSION + 1,
    sizeof(bt_schedule_desc_t),
    "fault-wrong-abi",
    "test plugin: abi_version from the future",
    fault_plan_never,
    1,
    NULL,
};

BT_SCHEDULE_EXPORT(desc)
