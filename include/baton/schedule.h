/* baton: schedule policies and the schedule plugin ABI.
 *
 * A schedule policy turns (devices, stages, microbatches, cost and memory
 * hints, placement) into a plan.  Built-in policies (gpipe, 1f1b,
 * interleaved, zb-h1, zb-h2, auto) and plugins share one interface: a
 * descriptor with a plan callback that emits actions through a sink.
 *
 * Writing a plugin: build a shared object that exports
 *
 *   const bt_schedule_desc_t *baton_schedule_entry(void);
 *
 * returning a pointer to a static descriptor with abi_version =
 * BT_SCHEDULE_ABI_VERSION and struct_size = sizeof(bt_schedule_desc_t)
 * (BT_SCHEDULE_EXPORT(desc) defines that function).  A
 * plugin needs only this header; it does not link against libbaton (the
 * sink is a function table).  docs/schedules.md has a complete example. */
#ifndef BATON_SCHEDULE_H
#define BATON_SCHEDULE_H

#include <stddef.h>
#include <stdint.h>

#include "baton/export.h"
#include "baton/plan.h"
#include "baton/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define BT_SCHEDULE_ABI_VERSION 1u
#define BT_SCHEDULE_ENTRY_SYMBOL "baton_schedule_entry"

/* What a policy is asked to plan.  Arrays are indexed by stage and hold
 * `stages` entries.  A caller may leave any array NULL for its default (loop
 * placement: stage s on device s % p; costs F = B = W = 1; memory B = 1,
 * W = 0); the library fills them in, so they are never NULL when it calls a
 * policy.
 * New fields are only ever appended; `size` is sizeof as the caller knew it,
 * so a policy reads a field only if offsetof(field) < size. */
typedef struct bt_schedule_params {
  size_t size;
  int32_t devices;        /* p */
  int32_t virtual_stages; /* v: stages per device */
  int32_t stages;         /* S = p * v */
  int32_t microbatches;   /* m */
  const int32_t *stage_device; /* owner device of each stage */
  const double *cost_f;   /* forward cost of each stage */
  const double *cost_b;   /* input-grad cost; a full backward costs B + W */
  const double *cost_w;   /* weight-grad cost */
  const double *mem_b;    /* activation memory held from F until B (or I) */
  const double *mem_w;    /* memory held from I until W */
  double comm_latency;    /* per cross-device edge */
  double mem_limit;       /* per-device activation memory cap; 0 = none */
} bt_schedule_params_t;

/* Where a policy sends its plan: emit(ctx, device, action) appends an action
 * to a device's list and returns 0, or a negative bt_status (out of range,
 * out of memory); a policy must stop and return that status. */
typedef struct bt_plan_sink {
  void *ctx;
  int (*emit)(void *ctx, int32_t device, bt_action_t action);
} bt_plan_sink_t;

/* The plan callback.  Returns 0 after emitting the whole plan, or non-zero
 * when it cannot serve the parameters, with a sentence in errbuf that says
 * what to change ("interleaved needs microbatches to be a multiple of
 * devices (got m=6, p=4)").  Called from the caller's thread; may be called
 * concurrently for different params, so keep no mutable globals. */
typedef int (*bt_schedule_plan_fn)(const bt_schedule_params_t *params,
                                   const bt_plan_sink_t *sink, char *errbuf,
                                   size_t errlen, void *user_data);

typedef struct bt_schedule_desc {
  uint32_t abi_version;    /* BT_SCHEDULE_ABI_VERSION */
  uint32_t struct_size;    /* sizeof(bt_schedule_desc_t) */
  const char *name;        /* short, e.g. "looped-bfs" */
  const char *summary;     /* one line for listings */
  bt_schedule_plan_fn plan;
  int32_t default_virtual; /* v when the caller does not choose; 0 means 1 */
  void *user_data;         /* passed to plan */
} bt_schedule_desc_t;

/* The plugin entry point's type. */
typedef const bt_schedule_desc_t *(*bt_schedule_entry_fn)(void);

/* Defines the entry point of a plugin, exported with default visibility
 * (and C linkage from C++), returning &desc:
 *   static const bt_schedule_desc_t desc = { ... };
 *   BT_SCHEDULE_EXPORT(desc) */
#if defined(__GNUC__)
#define BT__SCHEDULE_VISIBLE __attribute__((visibility("default")))
#else
#define BT__SCHEDULE_VISIBLE
#endif
#ifdef __cplusplus
#define BT__SCHEDULE_LINKAGE extern "C"
#else
#define BT__SCHEDULE_LINKAGE
#endif
#define BT_SCHEDULE_EXPORT(desc)                                              \
  BT__SCHEDULE_LINKAGE BT__SCHEDULE_VISIBLE const bt_schedule_desc_t         \
      *baton_schedule_entry(void);                                            \
  BT__SCHEDULE_LINKAGE BT__SCHEDULE_VISIBLE const bt_schedule_desc_t         \
      *baton_schedule_entry(void)                                             \
  {                                                                           \
    return &(desc);                                                           \
  }

/* ---- host side -------------------------------------------------------- */

typedef struct bt_schedule bt_schedule_t;

/* Number of built-in policies and the name of the index-th. */
BT_API size_t bt_schedule_builtin_count(void);
BT_API const char *bt_schedule_builtin_name(size_t index);

/* A built-in policy by name.  BT_ENOENT lists the known names. */
BT_API bt_status bt_schedule_builtin(const char *name, bt_schedule_t **out,
                                     bt_error_t *err);

/* Loads a plugin with dlopen(RTLD_NOW | RTLD_LOCAL).  Distinct errors:
 * BT_EPLUGIN_LOAD (dlopen failed; dlerror's text is in the message),
 * BT_EPLUGIN_SYMBOL (no baton_schedule_entry, or it returned NULL),
 * BT_EPLUGIN_ABI (abi_version differs, or struct_size too small),
 * BT_EPLUGIN_CALLBACK (plan is NULL).  On failure nothing stays loaded. */
BT_API bt_status bt_schedule_load(const char *path, bt_schedule_t **out,
                                  bt_error_t *err);

/* Wraps a descriptor that lives in the caller's program, with the same
 * checks as bt_schedule_load.  The descriptor must outlive the handle. */
BT_API bt_status bt_schedule_from_desc(const bt_schedule_desc_t *desc,
                                       bt_schedule_t **out, bt_error_t *err);

/* A policy that always returns (a copy of) this fixed plan, e.g. one read
 * from CSV.  It refuses params whose devices, stages or microbatches differ
 * from the plan's.  The plan is copied. */
BT_API bt_status bt_schedule_from_plan(const bt_plan_t *plan,
                                       const char *name, bt_schedule_t **out,
                                       bt_error_t *err);

/* One spec, as baton-bench's --schedule takes it: a path ending in ".so"
 * loads a plugin, one ending in ".csv" loads a fixed plan, anything else is
 * a built-in name. */
BT_API bt_status bt_schedule_open(const char *spec, bt_schedule_t **out,
                                  bt_error_t *err);

/* Unloads a plugin (dlclose) or frees the fixed plan.  NULL is accepted.
 * Plans made by the schedule stay valid. */
BT_API void bt_schedule_destroy(bt_schedule_t *sched);

BT_API const char *bt_schedule_name(const bt_schedule_t *sched);
BT_API const char *bt_schedule_summary(const bt_schedule_t *sched);
/* v the policy prefers when the caller has no opinion (>= 1). */
BT_API int32_t bt_schedule_default_virtual(const bt_schedule_t *sched);
/* The fixed plan of a bt_schedule_from_plan schedule, else NULL. */
BT_API const bt_plan_t *bt_schedule_fixed_plan(const bt_schedule_t *sched);

/* Initializer: one stage per device, one microbatch, every array NULL. */
#define BT_SCHEDULE_PARAMS_INIT                                               \
  { sizeof(bt_schedule_params_t), 1, 1, 1, 1, NULL, NULL, NULL, NULL,         \
    NULL, NULL, 0.0, 0.0 }

/* Asks the policy for a plan and validates it (every task once, on the
 * device that owns its stage, no B mixed with I/W, no cycle).  Errors: the
 * policy's refusal as BT_EUNSUPPORTED with its sentence; for a plugin, an
 * invalid plan is BT_EPLUGIN_PLAN with the validation detail; for a
 * built-in or fixed plan the validation code itself (BT_EPLAN,
 * BT_EDEADLOCK).  Bad params (counts < 1, stages != devices * virtual,
 * a stage placed on no device, negative costs): BT_EINVAL. */
BT_API bt_status bt_schedule_make_plan(const bt_schedule_t *sched,
                                       const bt_schedule_params_t *params,
                                       bt_plan_t **out, bt_error_t *err);

#ifdef __cplusplus
}
#endif

#endif /* BATON_SCHEDULE_H */
