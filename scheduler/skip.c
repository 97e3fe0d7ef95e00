/* Skip connections: torchgpipe's verification rules and stage mapping. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "baton/skip.h"
#include "error.h"

struct bt_skip_layout {
  bt_skip_t *skips;
  size_t count;
  char *strings; /* one block holding every ns and name */
};

struct decl_ref {
  const char *ns, *name;
  int32_t layer, op;
};

static int
decl_cmp(const void *pa, const void *pb)
{
  const struct decl_ref *a = pa, *b = pb;
  int c = strcmp(a->ns, b->ns);

  if (c == 0)
    c = strcmp(a->name, b->name);
  if (c == 0)
    c = (a->layer > b->layer) - (a->layer < b->layer);
  if (c == 0)
    c = (a->op > b->op) - (a->op < b->op);
  return c;
}

static const char *
ns_suffix(const char *ns, char *buf, size_t n)
{
  if (ns[0] == '\0')
    return "";
  snprintf(buf, n, " in namespace '%s'", ns);
  return buf;
}

static int
layer_has(const struct decl_ref *g, size_t n, int32_t layer, int32_t op)
{
  for (size_t i = 0; i < n; i++)
    if (g[i].layer == layer && g[i].op == op)
      return 1;
  return 0;
}

/* Applies the five rules to one (ns, name) group, sorted by layer; appends a
 * line per problem and returns how many it found. */
static int
check_group(const struct decl_ref *g, size_t n, bt_error_t *err)
{
  char nsb[160];
  const char *nss = ns_suffix(g[0].ns, nsb, sizeof nsb);
  const char *name = g[0].name;
  int problems = 0, stashes = 0, pops = 0;
  int32_t first_stash = -1, first_pop = -1;

  for (size_t i = 0; i < n; i++) {
    int both = layer_has(g, n, g[i].layer, 1 - g[i].op);
    if (both && g[i].op == BT_SKIP_STASH) {
      bt__error_append(err,
                       "layer %d both stashes and pops '%s'%s; a layer "
                       "cannot pop its own stash, use the tensor directly",
                       (int)g[i].layer, name, nss);
      problems++;
    }
    if (both)
      continue;
    if (g[i].op == BT_SKIP_STASH) {
      if (stashes++ == 0)
        first_stash = g[i].layer;
      else {
        bt__error_append(err,
                         "'%s'%s is stashed twice (layers %d and %d); rename "
                         "one or put it in its own namespace",
                         name, nss, (int)first_stash, (int)g[i].layer);
        problems++;
      }
    } else {
      if (pops++ == 0)
        first_pop = g[i].layer;
      else {
        bt__error_append(err,
                         "'%s'%s is popped twice (layers %d and %d); a stash "
                         "is popped by exactly one layer",
                         name, nss, (int)first_pop, (int)g[i].layer);
        problems++;
      }
    }
  }
  if (pops > 0 && (stashes == 0 || first_stash > first_pop)) {
    bt__error_append(err,
                     "layer %d pops '%s'%s, but no earlier layer stashes it; "
                     "stash it in a layer before %d",
                     (int)first_pop, name, nss, (int)first_pop);
    problems++;
  }
  if (stashes > 0 && (pops == 0 || first_pop < first_stash)) {
    bt__error_append(err,
                     "layer %d stashes '%s'%s, but no later layer pops it; "
                     "pop it after layer %d or remove the stash",
                     (int)first_stash, name, nss, (int)first_stash);
    problems++;
  }
  return problems;
}

static bt_status
check_args(const bt_skip_decl_t *decls, size_t count, int32_t layers,
           const int32_t *layer_stage, bt_error_t *err)
{
  if (layers < 1 || (count > 0 && decls == NULL))
    return bt__errorf(err, BT_EINVAL,
                      "skip declarations need layers >= 1 and a decl array");
  for (size_t i = 0; i < count; i++) {
    if (decls[i].name == NULL)
      return bt__errorf(err, BT_EINVAL, "skip declaration %zu has no name",
                        i);
    if (decls[i].layer < 0 || decls[i].layer >= layers)
      return bt__errorf(err, BT_EINVAL,
                        "skip '%s' is declared at layer %d, but the model "
                        "has layers 0..%d",
                        decls[i].name, (int)decls[i].layer, (int)layers - 1);
    if (decls[i].op != BT_SKIP_STASH && decls[i].op != BT_SKIP_POP)
      return bt__errorf(err, BT_EINVAL,
                        "skip '%s' at layer %d: op must be BT_SKIP_STASH or "
                        "BT_SKIP_POP",
                        decls[i].name, (int)decls[i].layer);
  }
  if (layer_stage == NULL)
    return BT_OK;
  for (int32_t l = 0; l < layers; l++)
    if (layer_stage[l] < 0 || (l > 0 && layer_stage[l] < layer_stage[l - 1]))
      return bt__errorf(err, BT_EINVAL,
                        "layer %d is on stage %d: stages must be >= 0 and "
                        "never decrease from one layer to the next",
                        (int)l, (int)layer_stage[l]);
  return BT_OK;
}

/* Builds the layout from verified, sorted declarations: each group is one
 * stash followed by one pop. */
static bt_status
build_layout(const struct decl_ref *refs, size_t count,
             const int32_t *layer_stage, bt_skip_layout_t *layout)
{
  size_t bytes = 0, k = 0;
  char *p;

  for (size_t i = 0; i < count; i += 2)
    bytes += strlen(refs[i].ns) + strlen(refs[i].name) + 2;
  layout->count = count / 2;
  layout->skips = calloc(layout->count ? layout->count : 1,
                         sizeof *layout->skips);
  layout->strings = malloc(bytes ? bytes : 1);
  if (layout->skips == NULL || layout->strings == NULL)
    return BT_ENOMEM;
  p = layout->strings;
  for (size_t i = 0; i < count; i += 2, k++) {
    bt_skip_t *s = &layout->skips[k];
    size_t nl = strlen(refs[i].ns) + 1, ml = strlen(refs[i].name) + 1;
    memcpy(p, refs[i].ns, nl);
    s->ns = p;
    p += nl;
    memcpy(p, refs[i].name, ml);
    s->name = p;
    p += ml;
    s->stash_layer = refs[i].layer;
    s->pop_layer = refs[i + 1].layer;
    s->stash_stage = layer_stage ? layer_stage[s->stash_layer]
                                 : s->stash_layer;
    s->pop_stage = layer_stage ? layer_stage[s->pop_layer] : s->pop_layer;
  }
  return BT_OK;
}

static int
skip_cmp(const void *pa, const void *pb)
{
  const bt_skip_t *a = pa, *b = pb;

  if (a->stash_layer != b->stash_layer)
    return (a->stash_layer > b->stash_layer) - (a->stash_layer < b->stash_layer);
  return strcmp(a->name, b->name);
}

bt_status
bt_skip_layout_create(const bt_skip_decl_t *decls, size_t count,
                      int32_t layers, const int32_t *layer_stage,
                      bt_skip_layout_t **out, bt_error_t *err)
{
  struct decl_ref *refs = NULL;
  bt_skip_layout_t *layout = NULL;
  bt_status rc;
  int problems = 0;

  if (out == NULL)
    return bt__errorf(err, BT_EINVAL, "bt_skip_layout_create: NULL out");
  rc = check_args(decls, count, layers, layer_stage, err);
  if (rc != BT_OK)
    return rc;
  refs = malloc((count ? count : 1) * sizeof *refs);
  layout = calloc(1, sizeof *layout);
  if (refs == NULL || layout == NULL) {
    rc = bt__errorf(err, BT_ENOMEM, "out of memory checking skips");
    goto out_free;
  }
  for (size_t i = 0; i < count; i++) {
    refs[i].ns = decls[i].ns ? decls[i].ns : "";
    refs[i].name = decls[i].name;
    refs[i].layer = decls[i].layer;
    refs[i].op = decls[i].op;
  }
  qsort(refs, count, sizeof *refs, decl_cmp);
  if (err != NULL)
    err->message[0] = '\0';
  for (size_t i = 0, j; i < count; i = j) {
    for (j = i + 1; j < count && strcmp(refs[j].ns, refs[i].ns) == 0 &&
                    strcmp(refs[j].name, refs[i].name) == 0;
         j++)
      ;
    problems += check_group(refs + i, j - i, err);
  }
  if (problems > 0) {
    if (err != NULL) {
      char lines[BT_ERROR_MESSAGE_MAX];
      memcpy(lines, err->message, sizeof lines);
      bt__errorf(err, BT_ESKIP, "skip layout has %d problem%s:\n%s",
                 problems, problems == 1 ? "" : "s", lines);
    }
    rc = BT_ESKIP;
    goto out_free;
  }
  rc = build_layout(refs, count, layer_stage, layout);
  if (rc != BT_OK) {
    bt__errorf(err, rc, "out of memory building the skip layout");
    goto out_free;
  }
  qsort(layout->skips, layout->count, sizeof *layout->skips, skip_cmp);
  free(refs);
  *out = layout;
  return BT_OK;
out_free:
  free(refs);
  bt_skip_layout_destroy(layout);
  return rc;
}

void
bt_skip_layout_destroy(bt_skip_layout_t *layout)
{
  if (layout == NULL)
    return;
  free(layout->skips);
  free(layout->strings);
  free(layout);
}

size_t
bt_skip_layout_count(const bt_skip_layout_t *layout)
{
  return layout ? layout->count : 0;
}

bt_skip_t
bt_skip_layout_get(const bt_skip_layout_t *layout, size_t index)
{
  bt_skip_t none = {"", "", -1, -1, -1, -1};

  if (layout == NULL || index >= layout->count)
    return none;
  return layout->skips[index];
}

int32_t
bt_skip_layout_max_stage(const bt_skip_layout_t *layout)
{
  int32_t m = -1;

  for (size_t i = 0; layout != NULL && i < layout->count; i++)
    if (layout->skips[i].pop_stage > m)
      m = layout->skips[i].pop_stage;
  return m;
}

bt_status
bt_partition_from_balance(const int32_t *balance, int32_t stages,
                          int32_t layers, int32_t *layer_stage,
                          bt_error_t *err)
{
  int64_t sum = 0;
  int32_t l = 0;

  if (balance == NULL || layer_stage == NULL || stages < 1)
    return bt__errorf(err, BT_EINVAL, "balance needs stages >= 1 and arrays");
  for (int32_t s = 0; s < stages; s++) {
    if (balance[s] < 1)
      return bt__errorf(err, BT_EINVAL,
                        "balance[%d] = %d: every stage needs at least one "
                        "layer",
                        (int)s, (int)balance[s]);
    sum += balance[s];
  }
  if (sum != layers)
    return bt__errorf(err, BT_EINVAL,
                      "balance sums to %lld layers but the model has %d; "
                      "make the entries add up to the layer count",
                      (long long)sum, (int)layers);
  for (int32_t s = 0; s < stages; s++)
    for (int32_t i = 0; i < balance[s]; i++)
      layer_stage[l++] = s;
  return BT_OK;
}
