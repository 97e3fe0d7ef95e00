/* Private: the plan's representation, shared by plan.c and plan_csv.c. */
#ifndef BATON_SCHEDULER_PLAN_INTERNAL_H
#define BATON_SCHEDULER_PLAN_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "baton/plan.h"

struct bt_plan_list {
  bt_action_t *actions;
  size_t len, cap;
};

struct bt_plan {
  int32_t devices, stages, microbatches;
  struct bt_plan_list *lists; /* [devices] */
};

/* True when the action's kind, stage and microbatch fit the plan. */
bool bt__action_in_range(const bt_plan_t *plan, bt_action_t a);

#endif /* BATON_SCHEDULER_PLAN_INTERNAL_H */
