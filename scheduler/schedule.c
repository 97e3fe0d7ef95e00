/* Schedule host: built-ins, plugins (dlopen), fixed plans, and planning
 * with validation. */
#include <dlfcn.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "baton/graph.h"
#include "baton/schedule.h"
#include "error.h"
#include "schedule_internal.h"

enum origin { ORIGIN_BUILTIN, ORIGIN_PLUGIN, ORIGIN_DESC, ORIGIN_PLAN };

struct bt_schedule {
  enum origin origin;
  const bt_schedule_desc_t *desc; /* NULL for ORIGIN_PLAN */
  void *dl;                       /* ORIGIN_PLUGIN */
  bt_plan_t *fixed;               /* ORIGIN_PLAN */
  char *name, *summary, *path;
  int32_t default_virtual;
};

/* The last field of the version-1 descriptor and params: what a caller's
 * struct_size / size must at least cover. */
#define DESC_V1_SIZE                                                          \
  (offsetof(bt_schedule_desc_t, user_data) + sizeof(void *))
#define PARAMS_V1_SIZE                                                        \
  (offsetof(bt_schedule_params_t, mem_limit) + sizeof(double))

static char *
dup_str(const char *s)
{
  size_t n = strlen(s) + 1;
  char *d = malloc(n);

  if (d != NULL)
    memcpy(d, s, n);
  return d;
}

static const char *
base_name(const char *path)
{
  const char *slash = strrchr(path, '/');

  return slash ? slash + 1 : path;
}

static bt_status
schedule_new(enum origin origin, const char *name, const char *summary,
             const char *path, bt_schedule_t **out, bt_error_t *err)
{
  bt_schedule_t *s = calloc(1, sizeof *s);

  if (s == NULL)
    return bt__errorf(err, BT_ENOMEM, "out of memory creating a schedule");
  s->origin = origin;
  s->name = dup_str(name);
  s->summary = dup_str(summary ? summary : "");
  s->path = path ? dup_str(path) : NULL;
  s->default_virtual = 1;
  if (s->name == NULL || s->summary == NULL || (path && s->path == NULL)) {
    bt_schedule_destroy(s);
    return bt__errorf(err, BT_ENOMEM, "out of memory creating a schedule");
  }
  *out = s;
  return BT_OK;
}

size_t
bt_schedule_builtin_count(void)
{
  return bt__builtin_schedule_count;
}

const char *
bt_schedule_builtin_name(size_t index)
{
  if (index >= bt__builtin_schedule_count)
    return NULL;
  return bt__builtin_schedules[index]->name;
}

static bt_status
wrap_desc(const bt_schedule_desc_t *d, enum origin origin, const char *path,
          bt_schedule_t **out, bt_error_t *err)
{
  bt_schedule_t *s;
  bt_status rc;

  rc = schedule_new(origin, d->name, d->summary, path, &s, err);
  if (rc != BT_OK)
    return rc;
  s->desc = d;
  s->default_virtual = d->default_virtual > 1 ? d->default_virtual : 1;
  *out = s;
  return BT_OK;
}

bt_status
bt_schedule_builtin(const char *name, bt_schedule_t **out, bt_error_t *err)
{
  if (name == NULL || out == NULL)
    return bt__errorf(err, BT_EINVAL, "bt_schedule_builtin: NULL argument");
  for (size_t i = 0; i < bt__builtin_schedule_count; i++)
    if (strcmp(bt__builtin_schedules[i]->name, name) == 0)
      return wrap_desc(bt__builtin_schedules[i], ORIGIN_BUILTIN, NULL, out,
                       err);
  bt__errorf(err, BT_ENOENT, "unknown schedule '%s'; built-in schedules "
             "are:", name);
  for (size_t i = 0; err != NULL && i < bt__builtin_schedule_count; i++) {
    size_t used = strlen(err->message);
    snprintf(err->message + used, sizeof err->message - used, " %s%s",
             bt__builtin_schedules[i]->name,
             i + 1 < bt__builtin_schedule_count ? "," : "");
  }
  if (err != NULL)
    bt__error_append(err, "or give a plugin (PATH.so) or a plan (PATH.csv)");
  return BT_ENOENT;
}

/* The checks a descriptor must pass, from a plugin or the caller. */
static bt_status
check_desc(const bt_schedule_desc_t *d, const char *what, bt_error_t *err)
{
  if (d->abi_version != BT_SCHEDULE_ABI_VERSION)
    return bt__errorf(err, BT_EPLUGIN_ABI,
                      "%s was built for schedule ABI version %u, but this "
                      "baton speaks version %u; rebuild it against this "
                      "baton's <baton/schedule.h>",
                      what, (unsigned)d->abi_version,
                      (unsigned)BT_SCHEDULE_ABI_VERSION);
  if (d->struct_size < DESC_V1_SIZE)
    return bt__errorf(err, BT_EPLUGIN_ABI,
                      "%s declares a descriptor of %u bytes, smaller than "
                      "the %zu of ABI version %u; set struct_size = "
                      "sizeof(bt_schedule_desc_t) and rebuild",
                      what, (unsigned)d->struct_size, DESC_V1_SIZE,
                      (unsigned)BT_SCHEDULE_ABI_VERSION);
  if (d->name == NULL || d->name[0] == '\0')
    return bt__errorf(err, BT_EPLUGIN_ABI,
                      "%s has no name in its descriptor; set .name", what);
  if (d->plan == NULL)
    return bt__errorf(err, BT_EPLUGIN_CALLBACK,
                      "%s ('%s') has no plan callback; set .plan to the "
                      "function that emits the plan",
                      what, d->name);
  return BT_OK;
}

bt_status
bt_schedule_from_desc(const bt_schedule_desc_t *desc, bt_schedule_t **out,
                      bt_error_t *err)
{
  bt_status rc;

  if (desc == NULL || out == NULL)
    return bt__errorf(err, BT_EINVAL, "bt_schedule_from_desc: NULL argument");
  rc = check_desc(desc, "schedule descriptor", err);
  if (rc != BT_OK)
    return rc;
  return wrap_desc(desc, ORIGIN_DESC, NULL, out, err);
}

bt_status
bt_schedule_load(const char *path, bt_schedule_t **out, bt_error_t *err)
{
  char what[512], *local = NULL;
  const bt_schedule_desc_t *desc;
  bt_schedule_entry_fn entry;
  void *dl, *sym;
  bt_status rc;

  if (path == NULL || out == NULL)
    return bt__errorf(err, BT_EINVAL, "bt_schedule_load: NULL argument");
  /* dlopen searches the library path for a bare name; a plugin given on a
   * command line means a file here. */
  if (strchr(path, '/') == NULL) {
    local = malloc(strlen(path) + 3);
    if (local == NULL)
      return bt__errorf(err, BT_ENOMEM, "out of memory loading a plugin");
    memcpy(local, "./", 2);
    memcpy(local + 2, path, strlen(path) + 1);
  }
  dl = dlopen(local ? local : path, RTLD_NOW | RTLD_LOCAL);
  free(local);
  if (dl == NULL) {
    const char *why = dlerror();
    return bt__errorf(err, BT_EPLUGIN_LOAD,
                      "cannot load schedule plugin '%s': %s; check the path "
                      "and that it is a shared object built for this "
                      "machine",
                      path, why ? why : "unknown error");
  }
  snprintf(what, sizeof what, "schedule plugin '%s'", path);
  sym = dlsym(dl, BT_SCHEDULE_ENTRY_SYMBOL);
  if (sym == NULL) {
    rc = bt__errorf(err, BT_EPLUGIN_SYMBOL,
                    "%s does not export '%s'; define `const "
                    "bt_schedule_desc_t *%s(void)` with default visibility",
                    what, BT_SCHEDULE_ENTRY_SYMBOL, BT_SCHEDULE_ENTRY_SYMBOL);
    goto out_close;
  }
  /* POSIX guarantees a data pointer from dlsym converts to a function. */
  memcpy(&entry, &sym, sizeof entry);
  desc = entry();
  if (desc == NULL) {
    rc = bt__errorf(err, BT_EPLUGIN_SYMBOL,
                    "%s: %s() returned NULL instead of its descriptor; "
                    "return the address of a static bt_schedule_desc_t",
                    what, BT_SCHEDULE_ENTRY_SYMBOL);
    goto out_close;
  }
  rc = check_desc(desc, what, err);
  if (rc != BT_OK)
    goto out_close;
  rc = wrap_desc(desc, ORIGIN_PLUGIN, path, out, err);
  if (rc != BT_OK)
    goto out_close;
  (*out)->dl = dl;
  return BT_OK;
out_close:
  dlclose(dl);
  return rc;
}

bt_status
bt_schedule_from_plan(const bt_plan_t *plan, const char *name,
                      bt_schedule_t **out, bt_error_t *err)
{
  bt_schedule_t *s;
  bt_status rc;

  if (plan == NULL || out == NULL)
    return bt__errorf(err, BT_EINVAL, "bt_schedule_from_plan: NULL argument");
  rc = schedule_new(ORIGIN_PLAN, name ? name : "plan", "a fixed plan", NULL,
                    &s, err);
  if (rc != BT_OK)
    return rc;
  rc = bt_plan_clone(plan, &s->fixed);
  if (rc != BT_OK) {
    bt_schedule_destroy(s);
    return bt__errorf(err, rc, "out of memory copying the plan");
  }
  s->default_virtual = bt_plan_stages(plan) / bt_plan_devices(plan);
  if (s->default_virtual < 1)
    s->default_virtual = 1;
  *out = s;
  return BT_OK;
}

static int
ends_with(const char *s, const char *suffix)
{
  size_t n = strlen(s), k = strlen(suffix);

  return n >= k && strcmp(s + n - k, suffix) == 0;
}

bt_status
bt_schedule_open(const char *spec, bt_schedule_t **out, bt_error_t *err)
{
  bt_plan_t *plan;
  bt_status rc;

  if (spec == NULL || out == NULL)
    return bt__errorf(err, BT_EINVAL, "bt_schedule_open: NULL argument");
  if (ends_with(spec, ".so") || strstr(spec, ".so.") != NULL)
    return bt_schedule_load(spec, out, err);
  if (!ends_with(spec, ".csv"))
    return bt_schedule_builtin(spec, out, err);
  rc = bt_plan_load_csv(spec, NULL, &plan, err);
  if (rc != BT_OK)
    return rc;
  rc = bt_schedule_from_plan(plan, base_name(spec), out, err);
  bt_plan_destroy(plan);
  return rc;
}

void
bt_schedule_destroy(bt_schedule_t *s)
{
  if (s == NULL)
    return;
  if (s->dl != NULL)
    dlclose(s->dl);
  bt_plan_destroy(s->fixed);
  free(s->name);
  free(s->summary);
  free(s->path);
  free(s);
}

const char *
bt_schedule_name(const bt_schedule_t *s)
{
  return s->name;
}

const char *
bt_schedule_summary(const bt_schedule_t *s)
{
  return s->summary;
}

int32_t
bt_schedule_default_virtual(const bt_schedule_t *s)
{
  return s->default_virtual;
}

const bt_plan_t *
bt_schedule_fixed_plan(const bt_schedule_t *s)
{
  return s->fixed;
}

/* ---- planning ------------------------------------------------------------ */

static int
sink_emit(void *vctx, int32_t device, bt_action_t action)
{
  struct bt__plan_sink_ctx *ctx = vctx;
  bt_status rc = bt_plan_append(ctx->plan, device, action);

  if (rc != BT_OK && ctx->status == BT_OK) {
    ctx->status = rc;
    ctx->bad_device = device;
    ctx->bad_action = action;
  }
  return rc;
}

void
bt__plan_sink_init(struct bt__plan_sink_ctx *ctx, bt_plan_t *plan,
                   bt_plan_sink_t *sink)
{
  ctx->plan = plan;
  ctx->status = BT_OK;
  ctx->bad_device = -1;
  ctx->bad_action.stage = ctx->bad_action.microbatch = -1;
  ctx->bad_action.kind = BT_ACT_IDLE;
  sink->ctx = ctx;
  sink->emit = sink_emit;
}

/* Params with every array filled in: the caller's, or defaults. */
struct full_params {
  bt_schedule_params_t p;
  int32_t *placement;
  double *arrays;
};

static bt_status
complete_params(const bt_schedule_params_t *in, struct full_params *fp,
                bt_error_t *err)
{
  static const double dflt[5] = {1.0, 1.0, 1.0, 1.0, 0.0};
  static const char *names[5] = {"cost_f", "cost_b", "cost_w", "mem_b",
                                 "mem_w"};
  const double **field[5];
  size_t S;

  if (in == NULL || in->size < PARAMS_V1_SIZE)
    return bt__errorf(err, BT_EINVAL, "schedule params are missing or too "
                      "small; start from BT_SCHEDULE_PARAMS_INIT");
  fp->p = *in;
  fp->p.size = sizeof fp->p;
  if (in->devices < 1 || in->virtual_stages < 1 || in->microbatches < 1)
    return bt__errorf(err, BT_EINVAL,
                      "devices, virtual stages and microbatches must be >= 1 "
                      "(got p=%d, v=%d, m=%d)",
                      (int)in->devices, (int)in->virtual_stages,
                      (int)in->microbatches);
  if (in->stages != in->devices * in->virtual_stages)
    return bt__errorf(err, BT_EINVAL,
                      "stages must be devices x virtual stages (got S=%d, "
                      "p=%d, v=%d)",
                      (int)in->stages, (int)in->devices,
                      (int)in->virtual_stages);
  S = (size_t)in->stages;
  fp->placement = malloc(S * sizeof *fp->placement);
  fp->arrays = malloc(5 * S * sizeof *fp->arrays);
  if (fp->placement == NULL || fp->arrays == NULL)
    return bt__errorf(err, BT_ENOMEM, "out of memory planning");
  for (size_t s = 0; s < S; s++) {
    fp->placement[s] = in->stage_device ? in->stage_device[s]
                                        : (int32_t)(s % (size_t)in->devices);
    if (fp->placement[s] < 0 || fp->placement[s] >= in->devices)
      return bt__errorf(err, BT_EINVAL,
                        "stage %zu is placed on device %d, outside 0..%d",
                        s, (int)fp->placement[s], (int)in->devices - 1);
  }
  fp->p.stage_device = fp->placement;
  field[0] = &fp->p.cost_f;
  field[1] = &fp->p.cost_b;
  field[2] = &fp->p.cost_w;
  field[3] = &fp->p.mem_b;
  field[4] = &fp->p.mem_w;
  for (int k = 0; k < 5; k++) {
    double *a = fp->arrays + (size_t)k * S;
    for (size_t s = 0; s < S; s++) {
      a[s] = *field[k] ? (*field[k])[s] : dflt[k];
      if (!isfinite(a[s]) || a[s] < 0.0)
        return bt__errorf(err, BT_EINVAL,
                          "%s[%zu] = %g: costs and memory must be finite and "
                          ">= 0",
                          names[k], s, a[s]);
    }
    *field[k] = a;
  }
  if (!isfinite(in->comm_latency) || in->comm_latency < 0.0 ||
      !isfinite(in->mem_limit) || in->mem_limit < 0.0)
    return bt__errorf(err, BT_EINVAL,
                      "comm_latency and mem_limit must be finite and >= 0");
  return BT_OK;
}

static bt_status
fixed_plan(const bt_schedule_t *s, const bt_schedule_params_t *p,
           bt_plan_t **plan, bt_error_t *err)
{
  const bt_plan_t *f = s->fixed;

  if (bt_plan_devices(f) != p->devices || bt_plan_stages(f) != p->stages ||
      bt_plan_microbatches(f) != p->microbatches)
    return bt__errorf(err, BT_EUNSUPPORTED,
                      "plan '%s' is for p=%d devices, S=%d stages, m=%d "
                      "microbatches, but p=%d, S=%d, m=%d were asked for",
                      s->name, (int)bt_plan_devices(f),
                      (int)bt_plan_stages(f), (int)bt_plan_microbatches(f),
                      (int)p->devices, (int)p->stages, (int)p->microbatches);
  if (bt_plan_clone(f, plan) != BT_OK)
    return bt__errorf(err, BT_ENOMEM, "out of memory copying the plan");
  return BT_OK;
}

static bt_status
call_policy(const bt_schedule_t *s, const bt_schedule_params_t *p,
            bt_plan_t **out, bt_error_t *err)
{
  struct bt__plan_sink_ctx ctx;
  bt_plan_sink_t sink;
  char why[1024] = "";
  bt_plan_t *plan;
  int ret;

  if (bt_plan_create(p->devices, p->stages, p->microbatches, &plan) != BT_OK)
    return bt__errorf(err, BT_ENOMEM, "out of memory planning");
  bt__plan_sink_init(&ctx, plan, &sink);
  ret = s->desc->plan(p, &sink, why, sizeof why, s->desc->user_data);
  if (ctx.status != BT_OK) {
    char txt[BT_ACTION_TEXT_MAX];
    bt_action_format(ctx.bad_action, txt, sizeof txt);
    bt_plan_destroy(plan);
    if (ctx.status == BT_ENOMEM)
      return bt__errorf(err, BT_ENOMEM, "out of memory planning");
    return bt__errorf(err, s->origin == ORIGIN_BUILTIN ? BT_EPLAN
                                                       : BT_EPLUGIN_PLAN,
                      "schedule '%s'%s%s emitted %s for device %d, outside "
                      "the plan's p=%d devices, S=%d stages, m=%d "
                      "microbatches; emit only devices 0..p-1, stages "
                      "0..S-1 and microbatches 0..m-1",
                      s->name, s->path ? " from " : "", s->path ? s->path : "",
                      txt, (int)ctx.bad_device, (int)p->devices,
                      (int)p->stages, (int)p->microbatches);
  }
  if (ret != 0) {
    bt_plan_destroy(plan);
    why[sizeof why - 1] = '\0';
    if (ret == BT_ENOMEM)
      return bt__errorf(err, BT_ENOMEM, "schedule '%s': out of memory",
                        s->name);
    return bt__errorf(err, BT_EUNSUPPORTED, "schedule '%s' cannot plan p=%d, "
                      "v=%d, m=%d: %s",
                      s->name, (int)p->devices, (int)p->virtual_stages,
                      (int)p->microbatches,
                      why[0] ? why : "(the policy gave no reason)");
  }
  *out = plan;
  return BT_OK;
}

bt_status
bt_schedule_make_plan(const bt_schedule_t *s,
                      const bt_schedule_params_t *params, bt_plan_t **out,
                      bt_error_t *err)
{
  struct full_params fp = {BT_SCHEDULE_PARAMS_INIT, NULL, NULL};
  bt_graph_config_t gc = BT_GRAPH_CONFIG_INIT;
  bt_plan_t *plan = NULL;
  bt_graph_t *graph;
  bt_status rc;

  if (s == NULL || out == NULL)
    return bt__errorf(err, BT_EINVAL, "bt_schedule_make_plan: NULL argument");
  rc = complete_params(params, &fp, err);
  if (rc != BT_OK)
    goto out_free;
  rc = s->fixed ? fixed_plan(s, &fp.p, &plan, err)
                : call_policy(s, &fp.p, &plan, err);
  if (rc != BT_OK)
    goto out_free;
  gc.plan = plan;
  gc.stage_device = fp.placement;
  rc = bt_graph_create(&gc, &graph, err);
  if (rc != BT_OK) {
    int plugin = s->origin == ORIGIN_PLUGIN || s->origin == ORIGIN_DESC;
    if (err != NULL) {
      char detail[BT_ERROR_MESSAGE_MAX];
      memcpy(detail, err->message, sizeof detail);
      if (plugin && rc != BT_ENOMEM) {
        rc = BT_EPLUGIN_PLAN;
        bt__errorf(err, rc, "schedule '%s'%s%s returned an invalid plan: %s",
                   s->name, s->path ? " from " : "", s->path ? s->path : "",
                   detail);
      } else {
        bt__errorf(err, rc, "plan '%s' cannot run: %s", s->name, detail);
      }
    } else if (plugin && rc != BT_ENOMEM) {
      rc = BT_EPLUGIN_PLAN;
    }
    bt_plan_destroy(plan);
    goto out_free;
  }
  bt_graph_destroy(graph);
  *out = plan;
out_free:
  free(fp.placement);
  free(fp.arrays);
  return rc;
}
