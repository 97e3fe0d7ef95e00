/* Fault plugin "no_symbol": exports an entry under the wrong name, and the
 * right name only with hidden visibility. */
#include <baton/schedule.h>

static const bt_schedule_desc_t desc = {
    BT_SCHEDULE_ABI_VERSION,
    sizeof(bt_schedule_desc_t),
    "fault-no-symbol",
    "test plugin: no baton_schedule_entry",
    NULL,
    1,
    NULL,
};

__attribute__((visibility("default"))) const bt_schedule_desc_t *
baton_schedule_entry_v0(void);

__attribute__((visibility("default"))) const bt_schedule_desc_t *
baton_schedule_entry_v0(void)
{
  return &desc;
}

/* Compiled with -fvisibility=hidden: present in the object, not exported. */
const bt_schedule_desc_t *baton_schedule_entry(void);

const bt_schedule_desc_t *
baton_schedule_entry(void)
{
  return &desc;
}
