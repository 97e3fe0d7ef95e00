/* baton: discrete-event simulator of a task graph under a cost model.
 *
 * Each device runs its tasks in plan order; a task starts when the device is
 * free and every predecessor has finished (plus comm_latency for an edge
 * between two devices).  Costs are per stage: F for a forward, B for an
 * input-grad (I), W for a weight-grad; a full backward (B task) costs B + W.
 * Activation memory: F allocates mem_b of its stage at its start; a full
 * backward frees it at its end; an I frees it and allocates mem_w at its
 * end, freed when the W ends.  With activation checkpointing, microbatches
 * 0 .. recompute_microbatches-1 keep nothing from their forward and
 * allocate mem_b when their backward (B or I) starts, the recomputation.
 * Frees at an instant happen before allocations at that instant.
 *
 * Results are exact for the given costs (no sampling, no randomness). */
#ifndef BATON_SIM_H
#define BATON_SIM_H

#include <stddef.h>
#include <stdint.h>

#include "baton/export.h"
#include "baton/graph.h"
#include "baton/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct bt_sim_config {
  size_t size;          /* sizeof(bt_sim_config_t) */
  const double *cost_f; /* [stages]; NULL = 1 each */
  const double *cost_b; /* [stages]; NULL = 1 each */
  const double *cost_w; /* [stages]; NULL = 1 each */
  const double *mem_b;  /* [stages]; NULL = 1 each */
  const double *mem_w;  /* [stages]; NULL = 0 each */
  double comm_latency;  /* per cross-device data or skip edge, >= 0 */
  /* Checkpointing: the first k microbatches are recomputed in their
   * backward (torch Pipe: k = m for `always`, m - 1 for `except_last`, 0
   * for `never`).  Appended in 0.1; older callers get 0. */
  int32_t recompute_microbatches;
  /* Transfers between processes (appended in 0.2; older callers get the
   * latency on every cross-device edge, as before).  With
   * devices_per_rank k > 0, devices d and e share a rank when d / k ==
   * e / k; an edge between ranks costs comm_latency + bytes *
   * comm_per_byte, bytes = edge_bytes[s] of the producing task's stage
   * (its output for a forward, its input gradient for a backward), and an
   * edge within a rank costs nothing. */
  const double *edge_bytes; /* [stages]; NULL = 0 each */
  double comm_per_byte;     /* cost units per byte, >= 0 */
  int32_t devices_per_rank; /* 0 = comm_latency on every cross-device edge */
} bt_sim_config_t;

#define BT_SIM_CONFIG_INIT                                                    \
  { sizeof(bt_sim_config_t), NULL, NULL, NULL, NULL, NULL, 0.0, 0, NULL, 0.0, \
    0 }

typedef struct bt_sim bt_sim_t;

/* Simulates one step.  The graph must outlive the result.  BT_EINVAL for a
 * negative or non-finite cost, memory or latency; BT_ENOMEM. */
BT_API bt_status bt_sim_run(const bt_graph_t *graph,
                            const bt_sim_config_t *config, bt_sim_t **out,
                            bt_error_t *err);

BT_API void bt_sim_destroy(bt_sim_t *sim);

BT_API const bt_graph_t *bt_sim_graph(const bt_sim_t *sim);

/* End of the last task. */
BT_API double bt_sim_makespan(const bt_sim_t *sim);

/* A bound no plan of the same tasks and costs can beat: the larger of the
 * longest dependency chain and, over devices, (earliest possible start) +
 * (its total work) + (shortest chain that must follow its last task).  For
 * uniform costs and split backward it is m(F+B+W) + (p-1)F. */
BT_API double bt_sim_lower_bound(const bt_sim_t *sim);

/* Sum of task costs on a device. */
BT_API double bt_sim_busy(const bt_sim_t *sim, int32_t device);

/* 1 - sum(busy) / (devices * makespan). */
BT_API double bt_sim_bubble(const bt_sim_t *sim);

/* Peak activation memory on a device over the step. */
BT_API double bt_sim_peak_mem(const bt_sim_t *sim, int32_t device);

BT_API double bt_sim_task_start(const bt_sim_t *sim, int32_t task);
BT_API double bt_sim_task_end(const bt_sim_t *sim, int32_t task);

#ifdef __cplusplus
}
#endif

#endif /* BATON_SIM_H */
