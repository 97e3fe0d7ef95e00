/* baton: the plan IR.
 *
 * A plan is, for each device, the ordered list of actions it computes in one
 * training step.  An action names a (stage, microbatch) and a kind:
 *   F  forward
 *   B  full backward (input grad and weight grad together)
 *   I  input-grad half of a split backward
 *   W  weight-grad half of a split backward
 * Its text form is <stage><kind><microbatch>, e.g. "2F0", "1I3", the same as
 * torch.distributed.pipelining's.  An IDLE action is an explicit empty step
 * (an empty CSV cell); it orders nothing and costs nothing, and is kept only
 * so that plans round-trip through CSV unchanged.
 *
 * Plans are plain data: no threads, no devices.  A plan handle is not
 * thread-safe for writes; concurrent reads are fine. */
#ifndef BATON_PLAN_H
#define BATON_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "baton/export.h"
#include "baton/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum bt_action_kind {
  BT_ACT_F = 0,
  BT_ACT_B = 1,
  BT_ACT_I = 2,
  BT_ACT_W = 3,
  BT_ACT_IDLE = 4
} bt_action_kind;

typedef struct bt_action {
  int32_t stage;      /* -1 for IDLE */
  int32_t kind;       /* a bt_action_kind */
  int32_t microbatch; /* -1 for IDLE */
} bt_action_t;

/* Longest text form of an action, with its terminating NUL. */
#define BT_ACTION_TEXT_MAX 24

/* The letter of a kind: 'F', 'B', 'I', 'W', or '-' for IDLE. */
BT_API char bt_action_kind_letter(int32_t kind);

/* Parses exactly `len` bytes (no surrounding blanks) as "<stage><kind><mb>".
 * Returns BT_EPARSE when they are not one action; an empty text is IDLE. */
BT_API bt_status bt_action_parse(const char *text, size_t len,
                                 bt_action_t *out);

/* Writes the text form ("2F0", "" for IDLE) into buf, always NUL-terminated
 * when n > 0.  Returns the length of the text form, as snprintf does. */
BT_API int bt_action_format(bt_action_t action, char *buf, size_t n);

typedef struct bt_plan bt_plan_t;

/* Creates an empty plan for `devices` devices, `stages` stages and
 * `microbatches` microbatches (all >= 1).  BT_EINVAL, BT_ENOMEM. */
BT_API bt_status bt_plan_create(int32_t devices, int32_t stages,
                                int32_t microbatches, bt_plan_t **out);

/* Frees the plan; NULL is accepted. */
BT_API void bt_plan_destroy(bt_plan_t *plan);

/* Appends an action to a device's list.  Checks ranges only (device, stage,
 * microbatch, kind); completeness, ownership and deadlock freedom are checked
 * when a graph is built from the plan.  BT_EINVAL, BT_ENOMEM (the plan is
 * unchanged on failure). */
BT_API bt_status bt_plan_append(bt_plan_t *plan, int32_t device,
                                bt_action_t action);

BT_API int32_t bt_plan_devices(const bt_plan_t *plan);
BT_API int32_t bt_plan_stages(const bt_plan_t *plan);
BT_API int32_t bt_plan_microbatches(const bt_plan_t *plan);

/* Number of actions (IDLE included) in a device's list. */
BT_API size_t bt_plan_length(const bt_plan_t *plan, int32_t device);

/* The index-th action of a device's list; IDLE when out of range. */
BT_API bt_action_t bt_plan_action(const bt_plan_t *plan, int32_t device,
                                  size_t index);

/* True when both plans have the same shape and the same lists. */
BT_API bool bt_plan_equal(const bt_plan_t *a, const bt_plan_t *b);

/* Copy of a plan.  BT_ENOMEM. */
BT_API bt_status bt_plan_clone(const bt_plan_t *plan, bt_plan_t **out);

/* Shape a CSV plan must have; a field of 0 means "infer from the file". */
typedef struct bt_plan_shape {
  int32_t devices;
  int32_t stages;
  int32_t microbatches;
} bt_plan_shape_t;

/* CSV form: one line per device, its actions in order, comma separated; an
 * empty cell is an IDLE step.  Blanks around cells are ignored.  Lines that
 * start with '#' are comments, except that a first line
 *   # baton plan v1: devices=P stages=S microbatches=M
 * (written by the exporter) declares the shape.  Without it, devices is the
 * line count, stages the highest stage + 1, microbatches the highest
 * microbatch + 1.  Errors (BT_EPARSE) name the line and cell: a bad token, a
 * stage or microbatch out of range, an action listed twice, a device count
 * that differs from `expect`.  `expect` may be NULL. */
BT_API bt_status bt_plan_parse_csv(const char *text, size_t len,
                                   const bt_plan_shape_t *expect,
                                   bt_plan_t **out, bt_error_t *err);

/* bt_plan_parse_csv on a file's contents.  BT_ENOENT/BT_EIO when it cannot
 * be read; the message names the path. */
BT_API bt_status bt_plan_load_csv(const char *path,
                                  const bt_plan_shape_t *expect,
                                  bt_plan_t **out, bt_error_t *err);

/* Writes the CSV form, shape comment first.  BT_EIO on a write error. */
BT_API bt_status bt_plan_write_csv(const bt_plan_t *plan, FILE *f);

/* bt_plan_write_csv into a new file at path.  BT_EIO with the path named. */
BT_API bt_status bt_plan_save_csv(const bt_plan_t *plan, const char *path,
                                  bt_error_t *err);

#ifdef __cplusplus
}
#endif

#endif /* BATON_PLAN_H */
