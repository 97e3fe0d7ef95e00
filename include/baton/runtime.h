/* baton: the runtime that executes task graphs.
 *
 * A runtime owns one actor per logical device and the threads that run
 * them.  An exec is a task graph instantiated once on a runtime (flat
 * arrays of tasks, successors and dependency counters); each call to
 * bt_exec_run runs one step of it: every task once, each after all its
 * predecessors, the tasks of one device one at a time on that device's
 * actor.
 *
 * Two ways to run actors:
 *   BT_RUNTIME_POOL       M:N.  `threads` threads (the caller of
 *                         bt_exec_run is one of them) run the actors from
 *                         work-stealing deques, one activation of an actor
 *                         at a time.  Best when devices share host cores
 *                         (the CPU backend).
 *   BT_RUNTIME_DEDICATED  one thread per device, bound to it (what a device
 *                         with a context, e.g. a CUDA GPU, needs); the
 *                         caller of bt_exec_run waits.
 *
 * Errors: a task returning non-zero ends the step cleanly.  No task starts
 * after that (the rest of the graph is drained without running), tasks in
 * flight finish, every thread quiesces, and bt_exec_run returns the task's
 * status with "2F5 on cpu:1: <its message>" in err.  The next step runs
 * normally.
 *
 * After the first step the runtime allocates nothing per step or per task. */
#ifndef BATON_RUNTIME_H
#define BATON_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#include "baton/export.h"
#include "baton/graph.h"
#include "baton/plan.h"
#include "baton/status.h"
#include "baton/timeline.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum bt_runtime_mode {
  BT_RUNTIME_POOL = 0,
  BT_RUNTIME_DEDICATED = 1
} bt_runtime_mode;

typedef struct bt_runtime bt_runtime_t;
typedef struct bt_exec bt_exec_t;

/* What a task callback and a device's hooks are given.  Valid only during
 * the call. */
typedef struct bt_task_call {
  int32_t task;         /* id in the exec (graph task id for graph execs) */
  bt_action_t action;   /* IDLE for tasks of a bt_dag_t */
  int32_t device;
  uint64_t step;        /* 1 for the first bt_exec_run, then 2, ... */
  void *device_ctx;     /* the device's ctx from bt_device_desc_t */
  void *user;           /* the exec's user pointer */
  struct bt_actor *actor; /* opaque: for bt_task_alloc */
} bt_task_call_t;

/* A task's work.  Returns 0, or a non-zero status (a bt_status, or any
 * negative code of the caller's) with a sentence in errbuf, or
 * BT_TASK_RETRY: the task waits on something outside the graph (a message
 * from another process) that has not happened yet; it is called again
 * later, after its device's other ready tasks had their turn, and its
 * successors wait.  A retrying task must not block, and should sleep a
 * little when it has waited long (so waiting processes leave the cores to
 * those that work); it ends the wait itself, with an error, when it gives
 * up.  Called from a runtime thread: never from two threads at once for
 * one device. */
#define BT_TASK_RETRY 0x52455452 /* "RETR", positive: never a bt_status */

typedef int (*bt_task_fn)(const bt_task_call_t *call, char *errbuf,
                          size_t errlen);

/* A device backend.  For each task the actor calls, in order:
 * wait_dependency for each predecessor on another device (if not NULL),
 * execute, record_completion (if not NULL); successors become ready after
 * record_completion returns.  The CPU backend (ops NULL) executes by calling
 * the task function.  A CUDA backend launches the kernels on a stream in
 * execute, records an event in record_completion and turns each cross-device
 * dependency into cudaStreamWaitEvent in wait_dependency, so actors never
 * block on the device.  Every hook returns 0 or a status, as bt_task_fn. */
typedef struct bt_device_ops {
  size_t size; /* sizeof(bt_device_ops_t) */
  int (*execute)(const bt_task_call_t *call, bt_task_fn fn, char *errbuf,
                 size_t errlen);
  int (*record_completion)(const bt_task_call_t *call, char *errbuf,
                           size_t errlen);
  int (*wait_dependency)(const bt_task_call_t *call, int32_t producer_task,
                         int32_t producer_device, char *errbuf,
                         size_t errlen);
} bt_device_ops_t;

typedef struct bt_device_desc {
  const char *name;           /* e.g. "cpu:0"; NULL = "cpu:<index>" */
  const bt_device_ops_t *ops; /* NULL = the CPU backend */
  void *ctx;                  /* passed as call->device_ctx */
} bt_device_desc_t;

typedef struct bt_runtime_config {
  size_t size;                    /* sizeof(bt_runtime_config_t) */
  int32_t devices;                /* logical devices (actors), >= 1 */
  const bt_device_desc_t *device; /* [devices]; NULL = CPU devices */
  int32_t mode;                   /* a bt_runtime_mode */
  int32_t threads;   /* POOL: threads running actors, the caller included;
                        0 = online CPUs */
  int32_t spin_us;   /* idle threads spin this long before sleeping
                        (default 50 when 0; -1 = never spin) */
} bt_runtime_config_t;

#define BT_RUNTIME_CONFIG_INIT                                                \
  { sizeof(bt_runtime_config_t), 1, NULL, BT_RUNTIME_POOL, 0, 0 }

/* Starts the runtime's threads.  BT_EINVAL, BT_ENOMEM, BT_EIO (a thread
 * could not be started; nothing is left running). */
BT_API bt_status bt_runtime_create(const bt_runtime_config_t *config,
                                   bt_runtime_t **out, bt_error_t *err);

/* Stops and joins the threads.  BT_EBUSY (and nothing happens) while a step
 * runs or an exec still exists on the runtime. */
BT_API bt_status bt_runtime_destroy(bt_runtime_t *rt);

BT_API int32_t bt_runtime_devices(const bt_runtime_t *rt);
BT_API const char *bt_runtime_device_name(const bt_runtime_t *rt,
                                          int32_t device);

/* A task graph not made from a plan: `tasks` tasks, task t on device
 * task_device[t], edges src[i] -> dst[i] (duplicates allowed).
 * Optionally each task carries a plan action (given to the task function
 * as call->action, recorded in slices, and naming the task in errors as
 * "2F5") and a name (naming it in errors instead, e.g. "tie wte"); both
 * are copied at create.  A task without either is "task <id>". */
typedef struct bt_dag {
  size_t size; /* sizeof(bt_dag_t) */
  int32_t tasks;
  const int32_t *task_device;
  size_t edges;
  const int32_t *src, *dst;
  const bt_action_t *actions; /* [tasks] or NULL (all BT_ACT_IDLE) */
  const char *const *names;   /* [tasks] or NULL; NULL entries allowed */
} bt_dag_t;

#define BT_DAG_INIT { sizeof(bt_dag_t), 0, NULL, 0, NULL, NULL, NULL, NULL }

typedef struct bt_exec_config {
  size_t size;   /* sizeof(bt_exec_config_t) */
  bt_task_fn fn; /* required */
  void *user;
  int32_t trace; /* record each task's start and end (CLOCK_MONOTONIC) */
} bt_exec_config_t;

#define BT_EXEC_CONFIG_INIT { sizeof(bt_exec_config_t), NULL, NULL, 0 }

/* Instantiates a validated graph (its devices must not exceed the
 * runtime's).  BT_EINVAL, BT_ENOMEM. */
BT_API bt_status bt_exec_create(bt_runtime_t *rt, const bt_graph_t *graph,
                                const bt_exec_config_t *config,
                                bt_exec_t **out, bt_error_t *err);

/* Instantiates a DAG; a cycle is BT_EDEADLOCK, a device or task out of
 * range BT_EINVAL. */
BT_API bt_status bt_exec_create_dag(bt_runtime_t *rt, const bt_dag_t *dag,
                                    const bt_exec_config_t *config,
                                    bt_exec_t **out, bt_error_t *err);

/* Runs one step and returns when every thread has left it.  The first
 * failing task's status, with "<task> on <device>: <message>" in err.
 * BT_EBUSY if a step of any exec is already running on the runtime. */
BT_API bt_status bt_exec_run(bt_exec_t *exec, bt_error_t *err);

/* With trace on: the last step's slices (task id order, times in
 * microseconds from the step's start) into slices[0..tasks).  BT_EINVAL
 * without trace or before a step. */
BT_API bt_status bt_exec_slices(const bt_exec_t *exec, bt_slice_t *slices);

/* Wall time of the last step in seconds. */
BT_API double bt_exec_last_seconds(const bt_exec_t *exec);

BT_API int32_t bt_exec_task_count(const bt_exec_t *exec);

/* BT_EBUSY while its step runs. */
BT_API bt_status bt_exec_destroy(bt_exec_t *exec);

/* Memory for a task's working buffers from its device actor's own jemalloc
 * arena (plain malloc when baton is built without jemalloc).  NULL when out
 * of memory.  Free with bt_task_free on any thread. */
BT_API void *bt_task_alloc(const bt_task_call_t *call, size_t bytes);
BT_API void bt_task_free(const bt_task_call_t *call, void *p);

#ifdef __cplusplus
}
#endif

#endif /* BATON_RUNTIME_H */
