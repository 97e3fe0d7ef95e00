/* Fault plugin "null_entry": the entry point returns NULL. */
#include <baton/schedule.h>

__attribute__((visibility("default"))) const bt_schedule_desc_t *
baton_schedule_entry(void);

__attribute__((visibility("default"))) const bt_schedule_desc_t *
baton_schedule_entry(void)
{
  return NULL;
}
