/* baton: the task graph of one training step.
 *
 * Built once from (stage count, placement, microbatches, plan, skips) and
 * reused every step.  Tasks are the plan's non-idle actions.  Edges:
 *   data   F(s-1,k)->F(s,k), F(s,k)->B|I(s,k), B|I(s+1,k)->B|I(s,k),
 *          I(s,k)->W(s,k)
 *   skip   F(i,k)->F(j,k) and B|I(j,k)->B|I(i,k) for a skip stashed on
 *          stage i and popped on stage j (only when i and j are not
 *          adjacent: adjacent stages already have the data edge)
 *   order  consecutive actions of one device, in plan order.
 * Validation rejects, with a message that says what to fix: a task missing
 * or listed twice (BT_EPLAN), a task on a device that does not own its stage
 * (BT_EPLAN), B mixed with I/W for one (stage, microbatch) (BT_EPLAN), and a
 * cycle (BT_EDEADLOCK, the cycle spelled out as a chain of actions and
 * devices).
 *
 * A graph is immutable after creation; concurrent reads are safe. */
#ifndef BATON_GRAPH_H
#define BATON_GRAPH_H

#include <stddef.h>
#include <stdint.h>

#include "baton/export.h"
#include "baton/plan.h"
#include "baton/skip.h"
#include "baton/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum bt_edge_kind {
  BT_EDGE_DATA = 0,
  BT_EDGE_SKIP = 1,
  BT_EDGE_ORDER = 2
} bt_edge_kind;

typedef struct bt_graph_config {
  size_t size;                 /* sizeof(bt_graph_config_t) */
  const bt_plan_t *plan;       /* required; not retained */
  const int32_t *stage_device; /* [stages]; NULL = stage s on s % devices */
  const bt_skip_layout_t *skips; /* NULL = none; not retained */
} bt_graph_config_t;

#define BT_GRAPH_CONFIG_INIT { sizeof(bt_graph_config_t), NULL, NULL, NULL }

typedef struct bt_task {
  bt_action_t action;
  int32_t device;
  int32_t position; /* index among the device's tasks (idles not counted) */
} bt_task_t;

typedef struct bt_graph bt_graph_t;

/* Builds and validates.  BT_EINVAL (NULL plan, a placement entry outside
 * [0, devices)), BT_EPLAN, BT_EDEADLOCK, BT_ENOMEM. */
BT_API bt_status bt_graph_create(const bt_graph_config_t *config,
                                 bt_graph_t **out, bt_error_t *err);

BT_API void bt_graph_destroy(bt_graph_t *graph);

BT_API int32_t bt_graph_devices(const bt_graph_t *graph);
BT_API int32_t bt_graph_stages(const bt_graph_t *graph);
BT_API int32_t bt_graph_microbatches(const bt_graph_t *graph);
BT_API int32_t bt_graph_task_count(const bt_graph_t *graph);
BT_API size_t bt_graph_edge_count(const bt_graph_t *graph);
BT_API int32_t bt_graph_stage_device(const bt_graph_t *graph, int32_t stage);

/* Task ids run 0..task_count-1, grouped by device in plan order. */
BT_API bt_task_t bt_graph_task(const bt_graph_t *graph, int32_t task);

/* Id of the task for an action, or -1 when the plan has no such task. */
BT_API int32_t bt_graph_find(const bt_graph_t *graph, bt_action_t action);

/* Tasks of one device, in execution order. */
BT_API int32_t bt_graph_device_task_count(const bt_graph_t *graph,
                                          int32_t device);
BT_API int32_t bt_graph_device_task(const bt_graph_t *graph, int32_t device,
                                    int32_t index);

/* Successor and predecessor lists (deduplicated: an edge that is both data
 * and skip, or data and order, appears once with the first kind in the
 * order data, skip, order). */
BT_API int32_t bt_graph_successor_count(const bt_graph_t *graph,
                                        int32_t task);
BT_API int32_t bt_graph_successor(const bt_graph_t *graph, int32_t task,
                                  int32_t index, bt_edge_kind *kind);
BT_API int32_t bt_graph_predecessor_count(const bt_graph_t *graph,
                                          int32_t task);
BT_API int32_t bt_graph_predecessor(const bt_graph_t *graph, int32_t task,
                                    int32_t index, bt_edge_kind *kind);

#ifdef __cplusplus
}
#endif

#endif /* BATON_GRAPH_H */
