/* Shared by the fault plugins: a plan callback that is never meant to run
 * (the plugin fails its ABI checks before any call). */
#ifndef BATON_TESTS_PLUGINS_FAULT_H
#define BATON_TESTS_PLUGINS_FAULT_H

#include <baton/schedule.h>

static inline int
fault_plan_never(const bt_schedule_params_t *p, const bt_plan_sink_t *sink,
                 char *errbuf, size_t errlen, void *user_data)
{
  (void)p;
  (void)sink;
  (void)errbuf;
  (void)errlen;
  (void)user_data;
  return -1;
}

#endif /* BATON_TESTS_PLUGINS_FAULT_H */
