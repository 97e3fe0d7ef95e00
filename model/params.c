/* A model's parameter table and flat blocks, and the machinery the test
 * models share over them; params.h pins the initialization and the
 * messages. */
#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "kernels.h"
#include "params.h"

/* ---- the table ---------------------------------------------------------- */

bt_status
bt__params_alloc(struct bt__params *p, size_t nlayers, size_t ntensors,
                 size_t nparams, const char *who, bt_error_t *err)
{
  p->nlayers = nlayers;
  p->ntensors = ntensors;
  p->nparams = nparams;
  p->params = malloc(nparams * sizeof(float));
  p->grads = calloc(nparams, sizeof(float));
  p->tensors = calloc(ntensors, sizeof(*p->tensors));
  p->layer_tensor = calloc(nlayers + 1, sizeof(*p->layer_tensor));
  if (p->params == NULL || p->grads == NULL || p->tensors == NULL ||
      p->layer_tensor == NULL) {
    bt__params_free(p);
    return bt__errorf(err, BT_ENOMEM, "%s: out of memory for %zu parameters",
                      who, nparams);
  }
  return BT_OK;
}

void
bt__params_free(struct bt__params *p)
{
  if (p == NULL)
    return;
  free(p->params);
  free(p->grads);
  free(p->tensors);
  free(p->layer_tensor);
  memset(p, 0, sizeof(*p));
}

void
bt__params_layer(struct bt__params_builder *b, size_t layer)
{
  b->p->layer_tensor[layer] = b->next;
}

uint64_t
bt__splitmix64_at(uint64_t seed, uint64_t k)
{
  uint64_t z = seed + (k + 1) * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

void
bt__params_add(struct bt__params_builder *b, const char *prefix,
               const char *suffix, int ndim, size_t d0, size_t d1,
               size_t fan_in, float fill)
{
  struct bt__params_tensor *t = &b->p->tensors[b->next];
  float *w;

  /* Bounded so the compiler can see the name fits. */
  snprintf(t->name, sizeof(t->name), "%.15s%.16s", prefix, suffix);
  t->ndim = ndim;
  t->shape[0] = d0;
  t->shape[1] = ndim == 2 ? d1 : 0;
  t->count = ndim == 2 ? d0 * d1 : d0;
  t->offset = b->offset;
  b->offset += t->count;
  b->next++;

  w = b->p->params + t->offset;
  if (fan_in > 0) {
    float bound = 1.0f / sqrtf((float)fan_in);
    for (size_t j = 0; j < t->count; j++) {
      uint64_t bits = bt__splitmix64_at(b->seed, (uint64_t)(t->offset + j));
      float u = (float)(bits >> 40) * 0x1.0p-24f;
      w[j] = (2.0f * u - 1.0f) * bound;
    }
  } else {
    for (size_t j = 0; j < t->count; j++)
      w[j] = fill;
  }
}

const struct bt__params_tensor *
bt__params_find(const struct bt__params *p, const char *name)
{
  if (p == NULL || name == NULL)
    return NULL;
  for (size_t t = 0; t < p->ntensors; t++)
    if (strcmp(p->tensors[t].name, name) == 0)
      return &p->tensors[t];
  return NULL;
}

void
bt__params_zero_grad(struct bt__params *p)
{
  memset(p->grads, 0, p->nparams * sizeof(float));
}

/* ---- optimizers --------------------------------------------------------- */

bt_status
bt__params_sgd(struct bt__params *p, float lr)
{
  if (p == NULL)
    return BT_EINVAL;
  return bt__sgd_update(p->params, p->grads, p->nparams, lr, 0.0f);
}

bt_status
bt__params_adamw_init(const struct bt__params *p,
                      struct bt__params_adamw_state *state)
{
  if (p == NULL || state == NULL)
    return BT_EINVAL;
  state->m = calloc(p->nparams, sizeof(float));
  state->v = calloc(p->nparams, sizeof(float));
  if (state->m == NULL || state->v == NULL) {
    bt__params_adamw_deinit(state);
    return BT_ENOMEM;
  }
  return BT_OK;
}

void
bt__params_adamw_deinit(struct bt__params_adamw_state *state)
{
  if (state == NULL)
    return;
  free(state->m);
  free(state->v);
  state->m = NULL;
  state->v = NULL;
}

bt_status
bt__params_adamw(struct bt__params *p, float lr, float b1, float b2,
                 float eps, float wd, int64_t t,
                 struct bt__params_adamw_state *state)
{
  if (p == NULL || state == NULL || state->m == NULL || state->v == NULL)
    return BT_EINVAL;
  return bt__adamw_update(p->params, state->m, state->v, p->grads,
                          p->nparams, lr, b1, b2, eps, wd, t);
}

/* ---- files -------------------------------------------------------------- */

static void
describe(bt_st_tensor_t *st, const char *name,
         const struct bt__params_tensor *t, const float *data)
{
  memset(st, 0, sizeof(*st));
  st->name = name;
  st->dtype = BT_ST_F32;
  st->ndim = t->ndim;
  for (int d = 0; d < t->ndim; d++)
    st->shape[d] = (int64_t)t->shape[d];
  st->data = data;
  st->bytes = t->count * sizeof(float);
}

/* "p." or "g." and a tensor name. */
#define PREFIXED_MAX (BT__PARAMS_NAME_MAX + 2)

bt_status
bt__params_dump(const struct bt__params *p, const char *path,
                const bt_st_tensor_t *lead, size_t nlead, const char *who,
                bt_error_t *err)
{
  size_t count = nlead + 2 * p->ntensors;
  bt_st_tensor_t *ts;
  char(*names)[PREFIXED_MAX];
  bt_status st;

  ts = calloc(count, sizeof(*ts));
  names = calloc(2 * p->ntensors, sizeof(*names));
  if (ts == NULL || names == NULL) {
    st = bt__errorf(err, BT_ENOMEM, "%s dump: out of memory", who);
    goto out_free;
  }
  for (size_t i = 0; i < nlead; i++)
    ts[i] = lead[i];
  for (size_t t = 0; t < p->ntensors; t++) {
    const struct bt__params_tensor *tt = &p->tensors[t];
    snprintf(names[2 * t], PREFIXED_MAX, "p.%s", tt->name);
    snprintf(names[2 * t + 1], PREFIXED_MAX, "g.%s", tt->name);
    describe(&ts[nlead + 2 * t], names[2 * t], tt, p->params + tt->offset);
    describe(&ts[nlead + 2 * t + 1], names[2 * t + 1], tt,
             p->grads + tt->offset);
  }
  st = bt_st_save(path, ts, count, NULL, err);

out_free:
  free(names);
  free(ts);
  return st;
}

bt_status
bt__params_save(const struct bt__params *p, const char *path, const char *who,
                bt_error_t *err)
{
  bt_st_tensor_t *ts;
  bt_status st;

  if (p == NULL || path == NULL)
    return bt__errorf(err, BT_EINVAL,
                      "%s save: model and path must not be NULL", who);
  ts = calloc(p->ntensors, sizeof(*ts));
  if (ts == NULL)
    return bt__errorf(err, BT_ENOMEM, "%s save: out of memory", who);
  for (size_t t = 0; t < p->ntensors; t++)
    describe(&ts[t], p->tensors[t].name, &p->tensors[t],
             p->params + p->tensors[t].offset);
  st = bt_st_save(path, ts, p->ntensors, NULL, err);
  free(ts);
  return st;
}

static void
format_shape(char *buf, size_t n, int ndim, const int64_t *shape)
{
  size_t used = 0;

  used += (size_t)snprintf(buf, n, "[");
  for (int d = 0; d < ndim && used < n; d++)
    used += (size_t)snprintf(buf + used, n - used, "%s%" PRId64,
                             d > 0 ? ", " : "", shape[d]);
  if (used < n)
    snprintf(buf + used, n - used, "]");
}

/* The files a checkpoint spans: one safetensors file, or an index
 * ({"weight_map": {name: shard}}, shards relative to the index's
 * directory) and its shards.  file_of[t] is the file holding tensor t of
 * p (-1: missing). */
struct ckpt {
  bt_st_file_t **f;
  size_t nf;
  char **names; /* [nf]: the files' paths, for messages */
};

static void
ckpt_close(struct ckpt *c)
{
  for (size_t i = 0; i < c->nf; i++) {
    bt_st_close(c->f[i]);
    free(c->names[i]);
  }
  free(c->f);
  free(c->names);
}

static bool
is_index(const char *path)
{
  FILE *f = fopen(path, "rb");
  int ch;

  if (f == NULL)
    return false;
  do
    ch = fgetc(f);
  while (ch == ' ' || ch == '\n' || ch == '\t' || ch == '\r');
  fclose(f);
  return ch == '{';
}

/* Opens path (a file or an index and its shards) into c. */
static bt_status
ckpt_open(const char *path, struct ckpt *c, bt_error_t *err)
{
  json_error_t je;
  json_t *root, *map;
  const char *key, *slash = strrchr(path, '/');
  json_t *val;
  size_t dirlen = slash != NULL ? (size_t)(slash - path) + 1 : 0;
  bt_status st = BT_OK;

  memset(c, 0, sizeof *c);
  if (!is_index(path)) {
    c->f = calloc(1, sizeof *c->f);
    c->names = calloc(1, sizeof *c->names);
    if (c->f == NULL || c->names == NULL ||
        (c->names[0] = strdup(path)) == NULL) {
      ckpt_close(c);
      return bt__errorf(err, BT_ENOMEM, "out of memory loading %s", path);
    }
    c->nf = 1;
    st = bt_st_load(path, &c->f[0], err);
    if (st != BT_OK)
      ckpt_close(c);
    return st;
  }
  root = json_load_file(path, 0, &je);
  map = root != NULL ? json_object_get(root, "weight_map") : NULL;
  if (!json_is_object(map)) {
    json_decref(root);
    return bt__errorf(err, BT_EPARSE,
                      "%s: not a safetensors file nor a checkpoint index "
                      "with a \"weight_map\" object (%s)",
                      path, root == NULL ? je.text : "no weight_map");
  }
  c->f = calloc(json_object_size(map) + 1, sizeof *c->f);
  c->names = calloc(json_object_size(map) + 1, sizeof *c->names);
  if (c->f == NULL || c->names == NULL)
    st = bt__errorf(err, BT_ENOMEM, "out of memory loading %s", path);
  json_object_foreach(map, key, val) {
    const char *shard = json_string_value(val);
    char *full;
    bool seen = false;
    if (st != BT_OK)
      break;
    if (shard == NULL || strchr(shard, '/') != NULL) {
      st = bt__errorf(err, BT_EPARSE,
                      "%s: tensor '%s' maps to %s; give a shard file name "
                      "next to the index",
                      path, key, shard ? shard : "a non-string");
      break;
    }
    full = malloc(dirlen + strlen(shard) + 1);
    if (full == NULL) {
      st = bt__errorf(err, BT_ENOMEM, "out of memory loading %s", path);
      break;
    }
    memcpy(full, path, dirlen);
    strcpy(full + dirlen, shard);
    for (size_t i = 0; i < c->nf && !seen; i++)
      seen = strcmp(c->names[i], full) == 0;
    if (seen) {
      free(full);
      continue;
    }
    c->names[c->nf] = full;
    st = bt_st_load(full, &c->f[c->nf], err);
    c->nf++;
  }
  json_decref(root);
  if (st != BT_OK)
    ckpt_close(c);
  return st;
}

/* Tensor name in whichever file holds it: its file index, or -1. */
static int
ckpt_find(const struct ckpt *c, const char *name, bt_st_tensor_t *out)
{
  for (size_t i = 0; i < c->nf; i++)
    if (bt_st_find(c->f[i], name, out) == BT_OK)
      return (int)i;
  return -1;
}

bt_status
bt__params_load(struct bt__params *p, const char *path, const char *who,
                const struct bt__params_load_desc *desc, bt_error_t *err)
{
  struct ckpt c;
  bt_status st;

  if (p == NULL || path == NULL)
    return bt__errorf(err, BT_EINVAL,
                      "%s load: model and path must not be NULL", who);
  if ((st = ckpt_open(path, &c, err)) != BT_OK)
    return st;

  /* Everything is checked before anything is copied, so a bad file
   * leaves the model as it was. */
  for (size_t t = 0; t < p->ntensors; t++) {
    const struct bt__params_tensor *tt = &p->tensors[t];
    int64_t want[2] = {(int64_t)tt->shape[0], (int64_t)tt->shape[1]};
    bt_st_tensor_t ft;
    char got_s[96], want_s[64];
    int fi = ckpt_find(&c, tt->name, &ft);

    if (fi < 0) {
      st = bt__errorf(err, BT_EINVAL,
                      "%s: tensor '%s' is missing (a checkpoint of a "
                      "model with %s?)",
                      path, tt->name, desc->missing);
      goto out_close;
    }
    if (ft.dtype != BT_ST_F32) {
      const char *dn = bt_st_dtype_name(ft.dtype);
      st = bt__errorf(err, BT_EINVAL,
                      "%s: tensor '%s' has dtype %s; the model needs F32",
                      c.names[fi], tt->name, dn != NULL ? dn : "?");
      goto out_close;
    }
    bool same = ft.ndim == tt->ndim;
    for (int d = 0; same && d < tt->ndim; d++)
      same = ft.shape[d] == want[d];
    if (!same) {
      format_shape(got_s, sizeof(got_s), ft.ndim, ft.shape);
      format_shape(want_s, sizeof(want_s), tt->ndim, want);
      st = bt__errorf(err, BT_EINVAL,
                      "%s: tensor '%s' has shape %s; the model (%s) needs %s",
                      c.names[fi], tt->name, got_s, desc->shape, want_s);
      goto out_close;
    }
  }
  for (size_t i = 0; i < c.nf; i++)
    for (size_t j = 0; j < bt_st_count(c.f[i]); j++) {
      bt_st_tensor_t ft = bt_st_get(c.f[i], j);
      if (bt__params_find(p, ft.name) == NULL) {
        st = bt__errorf(err, BT_EINVAL,
                        "%s: tensor '%s' is not a parameter of this model "
                        "(%s): a checkpoint of another config?",
                        c.names[i], ft.name, desc->extra);
        goto out_close;
      }
    }
  for (size_t t = 0; t < p->ntensors; t++) {
    const struct bt__params_tensor *tt = &p->tensors[t];
    bt_st_tensor_t ft;
    ckpt_find(&c, tt->name, &ft);
    memcpy(p->params + tt->offset, ft.data, tt->count * sizeof(float));
  }
  st = BT_OK;

out_close:
  ckpt_close(&c);
  return st;
}

bt_status
bt__params_save_some(const struct bt__params *p, const char *path,
                     const bool *keep, const char *who, bt_error_t *err)
{
  bt_st_tensor_t *t;
  size_t n = 0;
  bt_status st;

  if (p == NULL || path == NULL || keep == NULL)
    return bt__errorf(err, BT_EINVAL,
                      "%s save: model, path and mask must not be NULL", who);
  t = calloc(p->ntensors + 1, sizeof *t);
  if (t == NULL)
    return bt__errorf(err, BT_ENOMEM, "%s save: out of memory", who);
  for (size_t i = 0; i < p->ntensors; i++) {
    const struct bt__params_tensor *tt = &p->tensors[i];
    if (!keep[i])
      continue;
    t[n].name = tt->name;
    t[n].dtype = BT_ST_F32;
    t[n].ndim = tt->ndim;
    t[n].shape[0] = (int64_t)tt->shape[0];
    t[n].shape[1] = (int64_t)tt->shape[1];
    t[n].data = p->params + tt->offset;
    t[n].bytes = tt->count * sizeof(float);
    n++;
  }
  st = bt_st_save(path, t, n, NULL, err);
  free(t);
  return st;
}
