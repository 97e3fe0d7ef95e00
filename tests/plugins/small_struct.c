/* Fault plugin "small_struct": declares a descriptor smaller than the
 * version-1 layout, as a plugin built against a truncated header would. */
#include <stddef.h>

#include "fault.h"

static const bt_schedule_desc_t desc = {
    BT_SCHEDULE_ABI_VERSION,
    (uint32_t)offsetof(bt_schedule_desc_t, plan),
    "fault-small-struct",
    "test plugin: struct_size too small",
    fault_plan_never,
    1,
    NULL,
};

BT_SCHEDULE_EXPORT(desc)
