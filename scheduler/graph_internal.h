/* Private: the task graph's flat arrays, read by the simulator and (later)
 * the runtime.  Tasks are grouped by device in plan order; successor and
 * predecessor lists are CSR arrays. */
#ifndef BATON_SCHEDULER_GRAPH_INTERNAL_H
#define BATON_SCHEDULER_GRAPH_INTERNAL_H

#include "baton/graph.h"

struct bt_graph {
  int32_t devices, stages, microbatches;
  int32_t ntasks;
  size_t nedges;
  bt_task_t *tasks;       /* [ntasks] */
  int32_t *stage_device;  /* [stages] */
  int32_t *device_first;  /* [devices + 1]: device d owns tasks
                             device_first[d] .. device_first[d+1]-1 */
  int32_t *slot;          /* [(stage * m + mb) * 4 + kind]: task id or -1 */
  int32_t *succ_first;    /* [ntasks + 1] */
  int32_t *succ;          /* [nedges] */
  uint8_t *succ_kind;     /* [nedges] */
  int32_t *pred_first;    /* [ntasks + 1] */
  int32_t *pred;          /* [nedges] */
  uint8_t *pred_kind;     /* [nedges] */
  int32_t *topo;          /* [ntasks]: a topological order */
};

/* Task id of (stage, kind, mb), or -1. */
static inline int32_t
bt__graph_slot(const struct bt_graph *g, int32_t stage, int32_t kind,
               int32_t mb)
{
  return g->slot[((size_t)stage * (size_t)g->microbatches + (size_t)mb) * 4 +
                 (size_t)kind];
}

#endif /* BATON_SCHEDULER_GRAPH_INTERNAL_H */
