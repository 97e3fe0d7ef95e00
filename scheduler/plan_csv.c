/* Plan IR: CSV import and export. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "baton/plan.h"
#include "error.h"
#include "plan_internal.h"

#define HEADER_PREFIX "# baton plan v1:"

/* One parsed cell, kept until the shape is known. */
struct cell {
  int32_t device;
  int32_t line, column;
  bt_action_t action;
};

struct cells {
  struct cell *v;
  size_t len, cap;
};

static bt_status
cells_push(struct cells *c, struct cell x)
{
  if (c->len == c->cap) {
    size_t cap = c->cap ? c->cap * 2 : 64;
    struct cell *p = realloc(c->v, cap * sizeof *p);
    if (p == NULL)
      return BT_ENOMEM;
    c->v = p;
    c->cap = cap;
  }
  c->v[c->len++] = x;
  return BT_OK;
}

static int
is_blank(char c)
{
  return c == ' ' || c == '\t' || c == '\r';
}

static void
trim(const char **s, size_t *len)
{
  while (*len > 0 && is_blank(**s)) {
    (*s)++;
    (*len)--;
  }
  while (*len > 0 && is_blank((*s)[*len - 1]))
    (*len)--;
}

/* Reads "key=value" pairs of the shape comment into shape. */
static bt_status
parse_header(const char *s, size_t len, int32_t line, bt_plan_shape_t *shape,
             bt_error_t *err)
{
  static const char *keys[] = {"devices=", "stages=", "microbatches="};
  int32_t *fields[] = {&shape->devices, &shape->stages, &shape->microbatches};
  char buf[256];

  if (len >= sizeof buf)
    len = sizeof buf - 1;
  memcpy(buf, s, len);
  buf[len] = '\0';
  for (int k = 0; k < 3; k++) {
    const char *p = strstr(buf, keys[k]);
    long v;
    char *end;
    if (p == NULL)
      continue;
    errno = 0;
    v = strtol(p + strlen(keys[k]), &end, 10);
    if (errno != 0 || v < 1 || v > INT32_MAX ||
        (*end != '\0' && *end != ' ' && *end != '\t'))
      return bt__errorf(err, BT_EPARSE,
                        "line %d: bad value for '%s' in the plan header; "
                        "write e.g. '" HEADER_PREFIX
                        " devices=4 stages=8 microbatches=8'",
                        (int)line, keys[k]);
    *fields[k] = (int32_t)v;
  }
  return BT_OK;
}

/* Merges the header's shape into the caller's expectation; a field set in
 * both must agree. */
static bt_status
merge_shape(bt_plan_shape_t *want, const bt_plan_shape_t *header,
            bt_error_t *err)
{
  static const char *names[] = {"devices", "stages", "microbatches"};
  int32_t *w[] = {&want->devices, &want->stages, &want->microbatches};
  const int32_t h[] = {header->devices, header->stages,
                       header->microbatches};

  for (int k = 0; k < 3; k++) {
    if (h[k] == 0)
      continue;
    if (*w[k] != 0 && *w[k] != h[k])
      return bt__errorf(err, BT_EPARSE,
                        "the plan file declares %s=%d but %d were asked for; "
                        "use a plan made for %d %s or change the request",
                        names[k], (int)h[k], (int)*w[k], (int)*w[k],
                        names[k]);
    *w[k] = h[k];
  }
  return BT_OK;
}

static bt_status
tokenize_line(const char *s, size_t len, int32_t device, int32_t line,
              struct cells *cells, bt_error_t *err)
{
  int32_t column = 0;
  size_t start = 0;
  const char *t;
  size_t tlen;

  trim(&s, &len);
  if (len == 0)
    return BT_OK; /* a device with nothing to do */
  for (size_t i = 0; i <= len; i++) {
    struct cell c;
    if (i < len && s[i] != ',')
      continue;
    t = s + start;
    tlen = i - start;
    trim(&t, &tlen);
    column++;
    c.device = device;
    c.line = line;
    c.column = column;
    if (bt_action_parse(t, tlen, &c.action) != BT_OK)
      return bt__errorf(err, BT_EPARSE,
                        "line %d, cell %d: '%.*s' is not an action; write "
                        "<stage><F|B|I|W><microbatch> such as 2F0, or leave "
                        "the cell empty for an idle step",
                        (int)line, (int)column, (int)(tlen > 40 ? 40 : tlen),
                        t);
    if (cells_push(cells, c) != BT_OK)
      return bt__errorf(err, BT_ENOMEM, "out of memory reading the plan");
    start = i + 1;
  }
  return BT_OK;
}

/* Splits the text into lines, device lines into cells.  Sets *devices to the
 * number of device lines (trailing blank lines do not count). */
static bt_status
tokenize(const char *text, size_t len, struct cells *cells,
         bt_plan_shape_t *header, int32_t *devices, bt_error_t *err)
{
  int32_t line = 0, device = 0, last_nonblank = 0;
  size_t pos = 0;
  bt_status rc;

  while (pos < len) {
    const char *s = text + pos;
    const char *nl = memchr(s, '\n', len - pos);
    size_t llen = nl ? (size_t)(nl - s) : len - pos;
    const char *t = s;
    size_t tlen = llen;

    pos += llen + (nl ? 1 : 0);
    line++;
    trim(&t, &tlen);
    if (tlen > 0 && t[0] == '#') {
      size_t plen = strlen(HEADER_PREFIX);
      if (device == 0 && tlen >= plen && memcmp(t, HEADER_PREFIX, plen) == 0) {
        rc = parse_header(t + plen, tlen - plen, line, header, err);
        if (rc != BT_OK)
          return rc;
      }
      continue;
    }
    rc = tokenize_line(s, llen, device, line, cells, err);
    if (rc != BT_OK)
      return rc;
    device++;
    if (tlen > 0)
      last_nonblank = device;
  }
  *devices = last_nonblank;
  if (header->devices > last_nonblank && header->devices <= device)
    *devices = header->devices;
  return BT_OK;
}

static bt_status
check_cells(const struct cells *cells, const bt_plan_shape_t *shape,
            bt_error_t *err)
{
  size_t n = (size_t)shape->stages * (size_t)shape->microbatches * 4;
  int32_t *seen = NULL; /* index into cells + 1 of the first occurrence */
  bt_status rc = BT_OK;

  seen = calloc(n, sizeof *seen);
  if (seen == NULL)
    return bt__errorf(err, BT_ENOMEM, "out of memory checking the plan");
  for (size_t i = 0; i < cells->len; i++) {
    const struct cell *c = &cells->v[i];
    char txt[BT_ACTION_TEXT_MAX];
    size_t key;

    if (c->action.kind == BT_ACT_IDLE)
      continue;
    bt_action_format(c->action, txt, sizeof txt);
    if (c->action.stage >= shape->stages) {
      rc = bt__errorf(err, BT_EPARSE,
                      "line %d, cell %d: %s names stage %d, but the plan has "
                      "%d stages; use a stage in 0..%d or declare more "
                      "stages",
                      (int)c->line, (int)c->column, txt, (int)c->action.stage,
                      (int)shape->stages, (int)shape->stages - 1);
      goto out_free_seen;
    }
    if (c->action.microbatch >= shape->microbatches) {
      rc = bt__errorf(err, BT_EPARSE,
                      "line %d, cell %d: %s names microbatch %d, but the plan "
                      "has %d microbatches; use a microbatch in 0..%d or "
                      "declare more microbatches",
                      (int)c->line, (int)c->column, txt,
                      (int)c->action.microbatch, (int)shape->microbatches,
                      (int)shape->microbatches - 1);
      goto out_free_seen;
    }
    key = ((size_t)c->action.stage * (size_t)shape->microbatches +
           (size_t)c->action.microbatch) * 4 + (size_t)c->action.kind;
    if (seen[key] != 0) {
      const struct cell *first = &cells->v[seen[key] - 1];
      rc = bt__errorf(err, BT_EPARSE,
                      "line %d, cell %d: %s is listed twice (first at line "
                      "%d, cell %d); every action appears once",
                      (int)c->line, (int)c->column, txt, (int)first->line,
                      (int)first->column);
      goto out_free_seen;
    }
    seen[key] = (int32_t)i + 1;
  }
out_free_seen:
  free(seen);
  return rc;
}

bt_status
bt_plan_parse_csv(const char *text, size_t len, const bt_plan_shape_t *expect,
                  bt_plan_t **out, bt_error_t *err)
{
  bt_plan_shape_t want = {0, 0, 0}, header = {0, 0, 0};
  struct cells cells = {NULL, 0, 0};
  bt_plan_t *plan = NULL;
  int32_t devices = 0, max_stage = -1, max_mb = -1;
  bt_status rc;

  if (text == NULL || out == NULL)
    return bt__errorf(err, BT_EINVAL, "bt_plan_parse_csv: NULL argument");
  if (expect != NULL)
    want = *expect;
  rc = tokenize(text, len, &cells, &header, &devices, err);
  if (rc != BT_OK)
    goto out_free_cells;
  rc = merge_shape(&want, &header, err);
  if (rc != BT_OK)
    goto out_free_cells;
  if (devices == 0) {
    rc = bt__errorf(err, BT_EPARSE,
                    "the plan has no device lines; write one line per "
                    "device with its actions, e.g. '0F0,0F1,0B0,0B1'");
    goto out_free_cells;
  }
  if (want.devices != 0 && want.devices != devices) {
    rc = bt__errorf(err, BT_EPARSE,
                    "the plan has %d device lines but %d devices were asked "
                    "for; write one line per device",
                    (int)devices, (int)want.devices);
    goto out_free_cells;
  }
  for (size_t i = 0; i < cells.len; i++) {
    if (cells.v[i].action.kind == BT_ACT_IDLE)
      continue;
    if (cells.v[i].action.stage > max_stage)
      max_stage = cells.v[i].action.stage;
    if (cells.v[i].action.microbatch > max_mb)
      max_mb = cells.v[i].action.microbatch;
  }
  if (max_stage < 0) {
    rc = bt__errorf(err, BT_EPARSE,
                    "the plan has no actions; write e.g. '0F0,0B0'");
    goto out_free_cells;
  }
  if (want.stages == 0)
    want.stages = max_stage + 1;
  if (want.microbatches == 0)
    want.microbatches = max_mb + 1;
  want.devices = devices;
  rc = check_cells(&cells, &want, err);
  if (rc != BT_OK)
    goto out_free_cells;
  rc = bt_plan_create(want.devices, want.stages, want.microbatches, &plan);
  if (rc != BT_OK) {
    bt__errorf(err, rc, "cannot create the plan: %s", bt_strerror(rc));
    goto out_free_cells;
  }
  for (size_t i = 0; i < cells.len; i++) {
    rc = bt_plan_append(plan, cells.v[i].device, cells.v[i].action);
    if (rc != BT_OK) {
      bt__errorf(err, rc, "cannot build the plan: %s", bt_strerror(rc));
      bt_plan_destroy(plan);
      goto out_free_cells;
    }
  }
  *out = plan;
out_free_cells:
  free(cells.v);
  return rc;
}

bt_status
bt_plan_load_csv(const char *path, const bt_plan_shape_t *expect,
                 bt_plan_t **out, bt_error_t *err)
{
  char *text = NULL;
  size_t len = 0, cap = 0;
  bt_status rc;
  FILE *f;

  if (path == NULL || out == NULL)
    return bt__errorf(err, BT_EINVAL, "bt_plan_load_csv: NULL argument");
  f = fopen(path, "rb");
  if (f == NULL)
    return bt__errorf(err, errno == ENOENT ? BT_ENOENT : BT_EIO,
                      "cannot open plan file '%s': %s; check the path",
                      path, strerror(errno));
  for (;;) {
    size_t got;
    if (len == cap) {
      size_t ncap = cap ? cap * 2 : 4096;
      char *p = realloc(text, ncap);
      if (p == NULL) {
        rc = bt__errorf(err, BT_ENOMEM, "out of memory reading '%s'", path);
        goto out_close;
      }
      text = p;
      cap = ncap;
    }
    got = fread(text + len, 1, cap - len, f);
    len += got;
    if (got == 0)
      break;
  }
  if (ferror(f)) {
    rc = bt__errorf(err, BT_EIO, "cannot read plan file '%s'", path);
    goto out_close;
  }
  rc = bt_plan_parse_csv(text, len, expect, out, err);
  if (rc != BT_OK && err != NULL) {
    /* Name the file in front of the line/cell detail. */
    char detail[BT_ERROR_MESSAGE_MAX];
    memcpy(detail, err->message, sizeof detail);
    bt__errorf(err, rc, "%s: %s", path, detail);
  }
out_close:
  fclose(f);
  free(text);
  return rc;
}

bt_status
bt_plan_write_csv(const bt_plan_t *plan, FILE *f)
{
  if (plan == NULL || f == NULL)
    return BT_EINVAL;
  fprintf(f, "%s devices=%d stages=%d microbatches=%d\n", HEADER_PREFIX,
          (int)plan->devices, (int)plan->stages, (int)plan->microbatches);
  for (int32_t d = 0; d < plan->devices; d++) {
    const struct bt_plan_list *l = &plan->lists[d];
    size_t n = l->len;
    /* Trailing idle steps order nothing; dropping them keeps an all-idle
     * line from reading back as a different number of cells. */
    while (n > 0 && l->actions[n - 1].kind == BT_ACT_IDLE)
      n--;
    for (size_t i = 0; i < n; i++) {
      char txt[BT_ACTION_TEXT_MAX];
      bt_action_format(l->actions[i], txt, sizeof txt);
      fprintf(f, "%s%s", i ? "," : "", txt);
    }
    fputc('\n', f);
  }
  fflush(f);
  return ferror(f) ? BT_EIO : BT_OK;
}

bt_status
bt_plan_save_csv(const bt_plan_t *plan, const char *path, bt_error_t *err)
{
  bt_status rc;
  FILE *f;

  if (plan == NULL || path == NULL)
    return bt__errorf(err, BT_EINVAL, "bt_plan_save_csv: NULL argument");
  f = fopen(path, "w");
  if (f == NULL)
    return bt__errorf(err, BT_EIO, "cannot write plan file '%s': %s", path,
                      strerror(errno));
  rc = bt_plan_write_csv(plan, f);
  if (fclose(f) != 0)
    rc = BT_EIO;
  if (rc != BT_OK)
    return bt__errorf(err, rc, "error writing plan file '%s'", path);
  return BT_OK;
}
