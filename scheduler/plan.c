/* Plan IR: actions and per-device action lists. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "baton/plan.h"
#include "plan_internal.h"

char
bt_action_kind_letter(int32_t kind)
{
  static const char letters[] = "FBIW-";

  if (kind < 0 || kind > BT_ACT_IDLE)
    return '?';
  return letters[kind];
}

static int
kind_from_letter(char c)
{
  switch (c) {
  case 'F':
    return BT_ACT_F;
  case 'B':
    return BT_ACT_B;
  case 'I':
    return BT_ACT_I;
  case 'W':
    return BT_ACT_W;
  default:
    return -1;
  }
}

/* Parses a run of decimal digits into a non-negative int32; returns the
 * number of bytes consumed, 0 when there is no digit or it overflows. */
static size_t
parse_index(const char *s, size_t len, int32_t *out)
{
  size_t i = 0;
  long long v = 0;

  while (i < len && s[i] >= '0' && s[i] <= '9') {
    v = v * 10 + (s[i] - '0');
    if (v > INT32_MAX)
      return 0;
    i++;
  }
  *out = (int32_t)v;
  return i;
}

bt_status
bt_action_parse(const char *text, size_t len, bt_action_t *out)
{
  bt_action_t a = {-1, BT_ACT_IDLE, -1};
  size_t n;
  int kind;

  if (text == NULL || out == NULL)
    return BT_EINVAL;
  if (len == 0) {
    *out = a;
    return BT_OK;
  }
  n = parse_index(text, len, &a.stage);
  if (n == 0 || n == len)
    return BT_EPARSE;
  kind = kind_from_letter(text[n]);
  if (kind < 0)
    return BT_EPARSE;
  a.kind = kind;
  text += n + 1;
  len -= n + 1;
  n = parse_index(text, len, &a.microbatch);
  if (n == 0 || n != len)
    return BT_EPARSE;
  *out = a;
  return BT_OK;
}

int
bt_action_format(bt_action_t action, char *buf, size_t n)
{
  if (action.kind == BT_ACT_IDLE) {
    if (n > 0)
      buf[0] = '\0';
    return 0;
  }
  return snprintf(buf, n, "%d%c%d", (int)action.stage,
                  bt_action_kind_letter(action.kind), (int)action.microbatch);
}

bt_status
bt_plan_create(int32_t devices, int32_t stages, int32_t microbatches,
               bt_plan_t **out)
{
  bt_plan_t *plan;

  if (out == NULL || devices < 1 || stages < 1 || microbatches < 1)
    return BT_EINVAL;
  plan = calloc(1, sizeof *plan);
  if (plan == NULL)
    return BT_ENOMEM;
  plan->lists = calloc((size_t)devices, sizeof *plan->lists);
  if (plan->lists == NULL) {
    free(plan);
    return BT_ENOMEM;
  }
  plan->devices = devices;
  plan->stages = stages;
  plan->microbatches = microbatches;
  *out = plan;
  return BT_OK;
}

void
bt_plan_destroy(bt_plan_t *plan)
{
  if (plan == NULL)
    return;
  for (int32_t d = 0; d < plan->devices; d++)
    free(plan->lists[d].actions);
  free(plan->lists);
  free(plan);
}

bool
bt__action_in_range(const bt_plan_t *plan, bt_action_t a)
{
  if (a.kind == BT_ACT_IDLE)
    return true;
  return a.kind >= BT_ACT_F && a.kind <= BT_ACT_W && a.stage >= 0 &&
         a.stage < plan->stages && a.microbatch >= 0 &&
         a.microbatch < plan->microbatches;
}

bt_status
bt_plan_append(bt_plan_t *plan, int32_t device, bt_action_t action)
{
  struct bt_plan_list *l;

  if (plan == NULL || device < 0 || device >= plan->devices)
    return BT_EINVAL;
  if (action.kind == BT_ACT_IDLE)
    action.stage = action.microbatch = -1;
  if (!bt__action_in_range(plan, action))
    return BT_EINVAL;
  l = &plan->lists[device];
  if (l->len == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 16;
    bt_action_t *p = realloc(l->actions, cap * sizeof *p);
    if (p == NULL)
      return BT_ENOMEM;
    l->actions = p;
    l->cap = cap;
  }
  l->actions[l->len++] = action;
  return BT_OK;
}

int32_t
bt_plan_devices(const bt_plan_t *plan)
{
  return plan->devices;
}

int32_t
bt_plan_stages(const bt_plan_t *plan)
{
  return plan->stages;
}

int32_t
bt_plan_microbatches(const bt_plan_t *plan)
{
  return plan->microbatches;
}

size_t
bt_plan_length(const bt_plan_t *plan, int32_t device)
{
  if (device < 0 || device >= plan->devices)
    return 0;
  return plan->lists[device].len;
}

bt_action_t
bt_plan_action(const bt_plan_t *plan, int32_t device, size_t index)
{
  bt_action_t idle = {-1, BT_ACT_IDLE, -1};

  if (device < 0 || device >= plan->devices ||
      index >= plan->lists[device].len)
    return idle;
  return plan->lists[device].actions[index];
}

bool
bt_plan_equal(const bt_plan_t *a, const bt_plan_t *b)
{
  if (a->devices != b->devices || a->stages != b->stages ||
      a->microbatches != b->microbatches)
    return false;
  for (int32_t d = 0; d < a->devices; d++) {
    const struct bt_plan_list *x = &a->lists[d], *y = &b->lists[d];
    if (x->len != y->len)
      return false;
    for (size_t i = 0; i < x->len; i++)
      if (x->actions[i].stage != y->actions[i].stage ||
          x->actions[i].kind != y->actions[i].kind ||
          x->actions[i].microbatch != y->actions[i].microbatch)
        return false;
  }
  return true;
}

bt_status
bt_plan_clone(const bt_plan_t *plan, bt_plan_t **out)
{
  bt_plan_t *copy;
  bt_status rc;

  rc = bt_plan_create(plan->devices, plan->stages, plan->microbatches, &copy);
  if (rc != BT_OK)
    return rc;
  for (int32_t d = 0; d < plan->devices; d++) {
    const struct bt_plan_list *src = &plan->lists[d];
    struct bt_plan_list *dst = &copy->lists[d];
    if (src->len == 0)
      continue;
    dst->actions = malloc(src->len * sizeof *dst->actions);
    if (dst->actions == NULL) {
      bt_plan_destroy(copy);
      return BT_ENOMEM;
    }
    memcpy(dst->actions, src->actions, src->len * sizeof *dst->actions);
    dst->len = dst->cap = src->len;
  }
  *out = copy;
  return BT_OK;
}
