/* baton: a model's named parameter tensors, their flat parameter and
 * gradient blocks, and what every test model does with them alike
 * (internal): counter-based initialization, zero_grad, find-by-name, SGD
 * and AdamW over every parameter, and safetensors save, load and dump.
 * resmlp.h and gpt.h pin each model's tensors; this file pins the rest.
 *
 * Table: tensors are appended in order, each at the next offset of both
 * the params and the grads blocks, so the blocks hold the tensors
 * back to back in table order.  Layer l owns tensors
 * [layer_tensor[l], layer_tensor[l+1]), consecutive in the table and in
 * the blocks, so a range of layers owns one contiguous slice.
 *
 * Initialization (bt__params_add), reproducible on every IEEE-754
 * platform that evaluates float in float (FLT_EVAL_METHOD 0: x86-64,
 * aarch64): element k of the flat parameter block (k counts from 0 over
 * all tensors in table order) of a matrix with fan-in F is
 *   bits = splitmix64 output number k (0-based) from state `seed`, that is
 *          mix(seed + (k + 1) * 0x9e3779b97f4a7c15), with splitmix64's mix
 *          z ^= z >> 30; z *= 0xbf58476d1ce4e5b9; z ^= z >> 27;
 *          z *= 0x94d049bb133111eb; z ^= z >> 31  (uint64 arithmetic);
 *   u    = (float)(bits >> 40) * 2^-24                    (exact, [0, 1))
 *   w    = (2u - 1) * (1.0f / sqrtf((float)F))  (float, one rounding each)
 * so w ~ U[-1/sqrt(F), 1/sqrt(F)) and every element depends only on seed
 * and k (counter-based).  A tensor added with fan-in 0 is a constant
 * instead (0 for biases and LayerNorm betas, 1 for gammas).
 *
 * Messages: every error names the model (`who`, "resmlp" or "gpt"), and
 * load's name the file and the tensor. */
#ifndef BATON_MODEL_PARAMS_H
#define BATON_MODEL_PARAMS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "baton/safetensors.h"
#include "baton/status.h"

#define BT__PARAMS_NAME_MAX 32

/* splitmix64's output number k (0-based) from state seed, computed directly
 * from the counter (the formula above): the models' initialization, the
 * text batches' windows and the samplers' uniforms. */
uint64_t bt__splitmix64_at(uint64_t seed, uint64_t k);

/* One named parameter tensor: shape[0..ndim), its count elements at
 * offset in both the params and the grads blocks. */
struct bt__params_tensor {
  char name[BT__PARAMS_NAME_MAX];
  int ndim; /* 1 or 2 */
  size_t shape[2];
  size_t offset, count;
};

/* The members of struct bt__params.  A model struct embeds them as
 *   union { struct bt__params table; struct { BT__PARAMS_MEMBERS }; };
 * so its users read m->params, m->tensors, ... directly and the functions
 * below take &m->table (the two share all their members). */
#define BT__PARAMS_MEMBERS                                                     \
  size_t nlayers;                   /* layers of the model */                 \
  size_t ntensors;                  /* tensors in the table */                \
  size_t nparams;                   /* elements in params (and grads) */      \
  float *params;                    /* [nparams] */                           \
  float *grads;                     /* [nparams] */                           \
  struct bt__params_tensor *tensors; /* [ntensors], in order */               \
  size_t *layer_tensor;             /* [nlayers + 1]: layer l owns tensors    \
                                       [layer_tensor[l], layer_tensor[l+1]) */

struct bt__params {
  BT__PARAMS_MEMBERS
};

/* Allocates the table for ntensors tensors in nlayers layers and the
 * blocks of nparams elements (grads zero); the caller has checked that
 * nparams * sizeof(float) fits.  BT_ENOMEM ("WHO: out of memory for N
 * parameters"), with p freed.  p must be zeroed or freed before. */
bt_status bt__params_alloc(struct bt__params *p, size_t nlayers,
                           size_t ntensors, size_t nparams, const char *who,
                           bt_error_t *err);

/* Frees what alloc allocated and zeroes p; NULL and a zeroed p are
 * accepted. */
void bt__params_free(struct bt__params *p);

/* Fills an allocated table in order. */
struct bt__params_builder {
  struct bt__params *p;
  uint64_t seed;
  size_t next, offset;
};

/* Starts layer `layer` at the next tensor; layer nlayers ends the table. */
void bt__params_layer(struct bt__params_builder *b, size_t layer);

/* Appends tensor PREFIX SUFFIX (the prefix at most 15 characters, the
 * suffix 16) of shape [d0] (ndim 1) or [d0, d1] (ndim 2) and initializes
 * its parameters: uniform with fan-in fan_in as above, or every element
 * fill when fan_in is 0.  Sizes were checked by the caller. */
void bt__params_add(struct bt__params_builder *b, const char *prefix,
                    const char *suffix, int ndim, size_t d0, size_t d1,
                    size_t fan_in, float fill);

/* The tensor named name, or NULL (also for a NULL p or name). */
const struct bt__params_tensor *bt__params_find(const struct bt__params *p,
                                                const char *name);

/* Sets every gradient to 0. */
void bt__params_zero_grad(struct bt__params *p);

/* ---- optimizers ------------------------------------------------------------
 * Over every parameter with the step's gradients (the kernels'
 * bt__sgd_update and bt__adamw_update on the whole flat block); BT_EINVAL
 * for a NULL p. */

/* w -= lr * g (no weight decay). */
bt_status bt__params_sgd(struct bt__params *p, float lr);

/* AdamW's moments, [nparams] each, zero before step 1. */
struct bt__params_adamw_state {
  float *m, *v;
};

/* Allocates zeroed moments for p (BT_EINVAL for NULL arguments,
 * BT_ENOMEM); deinit frees them (NULL, a zeroed or a deinited state is
 * accepted). */
bt_status bt__params_adamw_init(const struct bt__params *p,
                                struct bt__params_adamw_state *state);
void bt__params_adamw_deinit(struct bt__params_adamw_state *state);

/* One AdamW step t (1-based) with decoupled weight decay wd on every
 * parameter; BT_EINVAL for a NULL or unallocated state, hyperparameter
 * errors as bt__adamw_update's. */
bt_status bt__params_adamw(struct bt__params *p, float lr, float b1,
                           float b2, float eps, float wd, int64_t t,
                           struct bt__params_adamw_state *state);

/* ---- files -----------------------------------------------------------------
 * safetensors (see <baton/safetensors.h>), written atomically; errors as
 * bt_st_save's and bt_st_load's, and the ones said. */

/* Writes the nlead tensors lead (the caller's x, y, loss, ...), then for
 * each parameter in order p.NAME (its value) and g.NAME (its gradient),
 * F32 with the parameter's shape.  BT_ENOMEM: "WHO dump: out of memory". */
bt_status bt__params_dump(const struct bt__params *p, const char *path,
                          const bt_st_tensor_t *lead, size_t nlead,
                          const char *who, bt_error_t *err);

/* A checkpoint: every parameter under its own name, F32, in order.
 * BT_EINVAL "WHO save: model and path must not be NULL", BT_ENOMEM. */
bt_status bt__params_save(const struct bt__params *p, const char *path,
                          const char *who, bt_error_t *err);

/* How load describes the model in its messages (the config, formatted by
 * the model):
 *   "PATH: tensor 'T' is missing (a checkpoint of a model with MISSING?)"
 *   "PATH: tensor 'T' has shape [..]; the model (SHAPE) needs [..]"
 *   "PATH: tensor 'T' is not a parameter of this model (EXTRA): a
 *    checkpoint of another config?" */
struct bt__params_load_desc {
  const char *missing, *shape, *extra;
};

/* Loads a checkpoint into p's parameters (gradients untouched): a
 * safetensors file, or an index ({"weight_map": {name: shard file}}, the
 * shards next to it, as bt__params_save_some and an index writer leave
 * them).  The file(s)
 * must hold exactly p's tensors, each F32 with p's shape; BT_EINVAL
 * naming the file and the tensor otherwise (missing, wrong dtype or
 * shape, or not a parameter), and "WHO load: model and path must not be
 * NULL".  Everything is checked before anything is copied, so on any
 * error p is unchanged. */
bt_status bt__params_load(struct bt__params *p, const char *path,
                          const char *who,
                          const struct bt__params_load_desc *desc,
                          bt_error_t *err);

/* Writes the tensors i with keep[i] (a shard of a checkpoint), as
 * bt__params_save does. */
bt_status bt__params_save_some(const struct bt__params *p, const char *path,
                               const bool *keep, const char *who,
                               bt_error_t *err);

/* ---- scratch layouts ------------------------------------------------------
 * A layer's scratch is one caller buffer cut into regions, each on a 64-byte
 * boundary; a model lists its regions per layer kind and adds them in order.
 * Sizes are checked for overflow: an add that would overflow returns false. */

#define BT__SCRATCH_ALIGN 64
#define BT__SCRATCH_REGIONS_MAX 20

struct bt__scratch_layout {
  size_t off[BT__SCRATCH_REGIONS_MAX];
  size_t bytes; /* total so far */
};

/* Region i: rows * cols elements of elem bytes, after the previous ones. */
static inline bool
bt__layout_add(struct bt__scratch_layout *l, int i, size_t rows, size_t cols,
               size_t elem)
{
  size_t n, b, start;

  if (i < 0 || i >= BT__SCRATCH_REGIONS_MAX ||
      __builtin_mul_overflow(rows, cols, &n) ||
      __builtin_mul_overflow(n, elem, &b))
    return false;
  start = l->bytes;
  if (__builtin_add_overflow(start, (size_t)BT__SCRATCH_ALIGN - 1, &start))
    return false;
  start &= ~(size_t)(BT__SCRATCH_ALIGN - 1);
  l->off[i] = start;
  return !__builtin_add_overflow(start, b, &l->bytes);
}

/* Region i of a scratch buffer laid out by l. */
static inline float *
bt__layout_region(void *scratch, const struct bt__scratch_layout *l, int i)
{
  return (float *)(void *)((char *)scratch + l->off[i]);
}

#endif /* BATON_MODEL_PARAMS_H */
