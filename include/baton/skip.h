/* baton: skip connections (stash/pop), torchgpipe style.
 *
 * A layer may stash a tensor under a name and a later layer pop it.  Names
 * live in namespaces so that a repeated block can reuse its names.  The
 * layout is verified with torchgpipe's rules, every problem reported at once
 * (one line each):
 *   - a layer that stashes and pops the same name;
 *   - a name stashed twice in one namespace;
 *   - a name popped twice;
 *   - a name popped but never stashed by an earlier layer;
 *   - a name stashed but never popped.
 * Mapped to stages by a partition, each skip whose stash and pop stages
 * differ becomes a pair of graph edges straight from the stash stage to the
 * pop stage (forward) and back (backward), never through the stages between. */
#ifndef BATON_SKIP_H
#define BATON_SKIP_H

#include <stddef.h>
#include <stdint.h>

#include "baton/export.h"
#include "baton/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum bt_skip_op { BT_SKIP_STASH = 0, BT_SKIP_POP = 1 } bt_skip_op;

/* One declaration: layer `layer` stashes or pops (ns, name).  ns NULL is the
 * default namespace "".  Strings are copied by bt_skip_layout_create. */
typedef struct bt_skip_decl {
  int32_t layer;
  int32_t op; /* a bt_skip_op */
  const char *ns;
  const char *name;
} bt_skip_decl_t;

/* One verified skip. */
typedef struct bt_skip {
  const char *ns;
  const char *name;
  int32_t stash_layer, pop_layer;
  int32_t stash_stage, pop_stage;
} bt_skip_t;

typedef struct bt_skip_layout bt_skip_layout_t;

/* Verifies the declarations of a model of `layers` layers and maps them to
 * stages: layer i belongs to stage layer_stage[i] (non-decreasing; NULL
 * means layer i is stage i).  BT_ESKIP with every rule violation, one per
 * line; BT_EINVAL for a layer index out of range or a NULL name;
 * BT_ENOMEM. */
BT_API bt_status bt_skip_layout_create(const bt_skip_decl_t *decls,
                                       size_t count, int32_t layers,
                                       const int32_t *layer_stage,
                                       bt_skip_layout_t **out,
                                       bt_error_t *err);

BT_API void bt_skip_layout_destroy(bt_skip_layout_t *layout);

/* Number of skips, and the index-th in stash-layer order.  The strings stay
 * valid as long as the layout. */
BT_API size_t bt_skip_layout_count(const bt_skip_layout_t *layout);
BT_API bt_skip_t bt_skip_layout_get(const bt_skip_layout_t *layout,
                                    size_t index);

/* Highest stage any skip touches, or -1 when there are none. */
BT_API int32_t bt_skip_layout_max_stage(const bt_skip_layout_t *layout);

/* Partition by a balance list (torch Pipe's `balance`): stage s holds
 * balance[s] consecutive layers.  Writes layer_stage[0..layers).  BT_EINVAL
 * when an entry is < 1 or the entries do not sum to `layers`. */
BT_API bt_status bt_partition_from_balance(const int32_t *balance,
                                           int32_t stages, int32_t layers,
                                           int32_t *layer_stage,
                                           bt_error_t *err);

#ifdef __cplusplus
}
#endif

#endif /* BATON_SKIP_H */
