/* safetensors files: an atomic writer and a validating reader.
 *
 * The header JSON is built and parsed with jansson; everything the format
 * leaves to the reader (offsets within the data, sizes matching shapes, the
 * data covered exactly once) is checked here, so a loaded file can be
 * trusted.  Tensor data is read into one buffer with every tensor on a
 * 64-byte boundary, whatever its offset in the file. */
#define _DEFAULT_SOURCE /* fsync() */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "baton/safetensors.h"
#include "error.h"

#define ST_ALIGN 64
#define ST_HEADER_MAX 100000000u /* as the reference implementation */
#define ST_META_KEY "__metadata__"
#define ST_TMP_SUFFIX ".tmp.XXXXXX"

struct st_entry {
  bt_st_tensor_t t;
  uint64_t begin, end; /* data_offsets */
  size_t order;        /* position in the header */
};

struct st_meta {
  const char *key, *value;
};

struct bt_st_file {
  size_t count;
  struct st_entry *entries;  /* [count], by data offset */
  struct st_entry **by_name; /* [count], by name, for bt_st_find */
  size_t nmeta;
  struct st_meta *meta;      /* [nmeta], in file order */
  char *strings;             /* names, metadata keys and values */
  unsigned char *data;       /* ST_ALIGN-aligned, each tensor on ST_ALIGN */
};

static const struct {
  const char *name;
  int32_t value;
  size_t bytes;
} dtypes[] = {
#define ST_DTYPE_ROW(name, value, bytes) {#name, value, bytes},
    BT_ST_DTYPE_MAP(ST_DTYPE_ROW)
#undef ST_DTYPE_ROW
};

#define ST_DTYPE_WORD(name, value, bytes) " " #name
static const char dtype_list[] = BT_ST_DTYPE_MAP(ST_DTYPE_WORD);
#undef ST_DTYPE_WORD

size_t
bt_st_dtype_size(int32_t dtype)
{
  for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
    if (dtypes[i].value == dtype)
      return dtypes[i].bytes;
  return 0;
}

const char *
bt_st_dtype_name(int32_t dtype)
{
  for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
    if (dtypes[i].value == dtype)
      return dtypes[i].name;
  return NULL;
}

static int32_t
dtype_parse(const char *s)
{
  for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
    if (strcmp(dtypes[i].name, s) == 0)
      return dtypes[i].value;
  return 0;
}

static size_t
round_up(size_t n, size_t a)
{
  return (n + a - 1) / a * a;
}

/* product(shape) * elem; false when it does not fit in 64 bits.  A 0
 * dimension makes it 0 whatever the others are. */
static bool
shape_bytes(const int64_t *shape, int32_t ndim, size_t elem, uint64_t *out)
{
  uint64_t total = elem;
  bool overflow = false;

  for (int32_t d = 0; d < ndim; d++) {
    if (shape[d] == 0) {
      *out = 0;
      return true;
    }
    if (__builtin_mul_overflow(total, (uint64_t)shape[d], &total))
      overflow = true;
  }
  *out = total;
  return !overflow;
}

/* "[2, 3]" into buf, truncated to fit. */
static const char *
shape_str(const int64_t *shape, int32_t ndim, char *buf, size_t len)
{
  size_t at = 0;
  int n = snprintf(buf, len, "[");

  for (int32_t d = 0; d < ndim && n >= 0 && (size_t)n < len - at; d++) {
    at += (size_t)n;
    n = snprintf(buf + at, len - at, "%s%lld", d ? ", " : "",
                 (long long)shape[d]);
  }
  if (n >= 0 && (size_t)n < len - at) {
    at += (size_t)n;
    snprintf(buf + at, len - at, "]");
  }
  return buf;
}

/* The format's strings are UTF-8; jansson refuses anything else, and
 * saying so here beats reporting its NULL as out of memory. */
static bool
utf8_valid(const char *s)
{
  const unsigned char *p = (const unsigned char *)s;

  while (*p != 0) {
    uint32_t c = *p++, min;
    int more;

    if (c < 0x80)
      continue;
    if ((c & 0xE0) == 0xC0) {
      more = 1, min = 0x80, c &= 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      more = 2, min = 0x800, c &= 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      more = 3, min = 0x10000, c &= 0x07;
    } else {
      return false;
    }
    for (; more > 0; more--) {
      if ((*p & 0xC0) != 0x80)
        return false;
      c = (c << 6) | (*p++ & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
      return false;
  }
  return true;
}

/* ---- writing ------------------------------------------------------------ */

static bt_status
check_tensor(const bt_st_tensor_t *t, size_t i, bt_error_t *err)
{
  size_t elem = bt_st_dtype_size(t->dtype);
  char sbuf[256];
  uint64_t want;

  if (t->name == NULL || t->name[0] == '\0')
    return bt__errorf(err, BT_EINVAL,
                      "bt_st_save: tensor %zu has no name; give every tensor "
                      "a unique non-empty name",
                      i);
  if (strcmp(t->name, ST_META_KEY) == 0)
    return bt__errorf(err, BT_EINVAL,
                      "bt_st_save: tensor %zu is named '" ST_META_KEY
                      "', which the format reserves for metadata; rename it",
                      i);
  if (!utf8_valid(t->name))
    return bt__errorf(err, BT_EINVAL,
                      "bt_st_save: tensor %zu's name is not valid UTF-8; "
                      "the format stores names as UTF-8 JSON",
                      i);
  if (elem == 0)
    return bt__errorf(err, BT_EINVAL,
                      "bt_st_save: tensor '%s' has dtype %d, which is not a "
                      "bt_st_dtype; use BT_ST_F32, BT_ST_BF16, ...",
                      t->name, (int)t->dtype);
  if (t->ndim < 0 || t->ndim > BT_ST_MAX_DIMS)
    return bt__errorf(err, BT_EINVAL,
                      "bt_st_save: tensor '%s' has ndim %d; it must be 0 (a "
                      "scalar) to %d",
                      t->name, (int)t->ndim, BT_ST_MAX_DIMS);
  for (int32_t d = 0; d < t->ndim; d++)
    if (t->shape[d] < 0)
      return bt__errorf(err, BT_EINVAL,
                        "bt_st_save: tensor '%s' has shape %s with a negative "
                        "dimension %d",
                        t->name, shape_str(t->shape, t->ndim, sbuf, sizeof sbuf),
                        (int)d);
  if (!shape_bytes(t->shape, t->ndim, elem, &want) || want != t->bytes)
    return bt__errorf(err, BT_EINVAL,
                      "bt_st_save: tensor '%s' has bytes = %zu, but shape %s "
                      "of %s needs %llu; set bytes to product(shape) * %zu",
                      t->name, t->bytes,
                      shape_str(t->shape, t->ndim, sbuf, sizeof sbuf),
                      bt_st_dtype_name(t->dtype), (unsigned long long)want,
                      elem);
  if (t->data == NULL && t->bytes > 0)
    return bt__errorf(err, BT_EINVAL,
                      "bt_st_save: tensor '%s' has %zu bytes but data is NULL",
                      t->name, t->bytes);
  return BT_OK;
}

static json_t *
tensor_entry(const bt_st_tensor_t *t, uint64_t begin)
{
  json_t *e = json_object(), *shape = json_array(), *offs = json_array();

  if (e == NULL || shape == NULL || offs == NULL)
    goto out_free;
  for (int32_t d = 0; d < t->ndim; d++)
    if (json_array_append_new(shape, json_integer(t->shape[d])) != 0)
      goto out_free;
  if (json_array_append_new(offs, json_integer((json_int_t)begin)) != 0 ||
      json_array_append_new(offs,
                            json_integer((json_int_t)(begin + t->bytes))) != 0)
    goto out_free;
  /* json_object_set_new takes the value even when it fails. */
  if (json_object_set_new(e, "dtype",
                          json_string(bt_st_dtype_name(t->dtype))) != 0)
    goto out_free;
  if (json_object_set_new(e, "shape", shape) != 0) {
    shape = NULL;
    goto out_free;
  }
  shape = NULL;
  if (json_object_set_new(e, "data_offsets", offs) != 0) {
    offs = NULL;
    goto out_free;
  }
  return e;

out_free:
  json_decref(offs);
  json_decref(shape);
  json_decref(e);
  return NULL;
}

/* The header object: "__metadata__" first (when given), then the tensors
 * in the caller's order; validates everything first-come. */
static bt_status
build_header(const bt_st_tensor_t *tensors, size_t count,
             const char *const *metadata, json_t **out, bt_error_t *err)
{
  json_t *root = json_object();
  uint64_t off = 0;
  bt_status rc = BT_ENOMEM;

  if (root == NULL)
    goto out_free_root;
  if (metadata != NULL) {
    json_t *md = json_object();

    if (md == NULL)
      goto out_free_root;
    /* Set first so that root owns md on every path below. */
    if (json_object_set_new(root, ST_META_KEY, md) != 0)
      goto out_free_root;
    for (size_t i = 0; metadata[i] != NULL; i += 2) {
      const char *key = metadata[i], *value = metadata[i + 1];

      if (value == NULL) {
        rc = bt__errorf(err, BT_EINVAL,
                        "bt_st_save: metadata key '%s' has no value; metadata "
                        "is key, value pairs followed by one NULL",
                        key);
        goto out_free_root;
      }
      if (!utf8_valid(key) || !utf8_valid(value)) {
        rc = bt__errorf(err, BT_EINVAL,
                        "bt_st_save: metadata entry %zu is not valid UTF-8",
                        i / 2);
        goto out_free_root;
      }
      if (json_object_get(md, key) != NULL) {
        rc = bt__errorf(err, BT_EINVAL,
                        "bt_st_save: metadata key '%s' is given twice; give "
                        "each key once",
                        key);
        goto out_free_root;
      }
      if (json_object_set_new(md, key, json_string(value)) != 0)
        goto out_free_root;
    }
  }
  for (size_t i = 0; i < count; i++) {
    const bt_st_tensor_t *t = &tensors[i];
    json_t *e;

    rc = check_tensor(t, i, err);
    if (rc != BT_OK)
      goto out_free_root;
    if (json_object_get(root, t->name) != NULL) {
      rc = bt__errorf(err, BT_EINVAL,
                      "bt_st_save: tensor name '%s' is given twice (again at "
                      "index %zu); names must be unique",
                      t->name, i);
      goto out_free_root;
    }
    if (off + t->bytes < off || off + t->bytes > (uint64_t)INT64_MAX) {
      rc = bt__errorf(err, BT_EINVAL,
                      "bt_st_save: the tensors up to '%s' exceed 2^63 bytes",
                      t->name);
      goto out_free_root;
    }
    rc = BT_ENOMEM;
    e = tensor_entry(t, off);
    if (e == NULL || json_object_set_new(root, t->name, e) != 0)
      goto out_free_root;
    off += t->bytes;
  }
  *out = root;
  return BT_OK;

out_free_root:
  json_decref(root);
  if (rc == BT_ENOMEM)
    bt__errorf(err, rc, "bt_st_save: out of memory building the header");
  return rc;
}

static int
write_all(int fd, const void *buf, size_t len)
{
  const unsigned char *p = buf;

  while (len > 0) {
    ssize_t n = write(fd, p, len);

    if (n < 0) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

/* Makes the rename durable.  Best effort: the file is in place already and
 * complete, only a power loss could still undo the rename. */
static void
sync_dir(const char *dir)
{
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

  if (fd >= 0) {
    (void)fsync(fd);
    close(fd);
  }
}

bt_status
bt_st_save(const char *path, const bt_st_tensor_t *tensors, size_t count,
           const char *const *metadata, bt_error_t *err)
{
  json_t *root = NULL;
  char *json = NULL, *tmp = NULL, *dir;
  unsigned char *head = NULL;
  size_t len, padded, plen;
  struct stat st;
  mode_t mode = 0644;
  int fd = -1, e;
  bt_status rc;

  if (path == NULL || path[0] == '\0' || (tensors == NULL && count > 0))
    return bt__errorf(err, BT_EINVAL,
                      "bt_st_save: %s; pass a file path and %zu tensors",
                      path == NULL || path[0] == '\0' ? "no path"
                                                      : "tensors is NULL",
                      count);
  rc = build_header(tensors, count, metadata, &root, err);
  if (rc != BT_OK)
    return rc;

  rc = BT_ENOMEM;
  json = json_dumps(root, JSON_COMPACT);
  if (json == NULL) {
    bt__errorf(err, rc, "bt_st_save: out of memory writing the header");
    goto out_free_root;
  }
  len = strlen(json);
  padded = round_up(len, 8);
  head = malloc(8 + padded);
  if (head == NULL) {
    bt__errorf(err, rc, "bt_st_save: out of memory for a %zu-byte header",
               padded);
    goto out_free_json;
  }
  for (int b = 0; b < 8; b++)
    head[b] = (unsigned char)((uint64_t)padded >> (8 * b));
  memcpy(head + 8, json, len);
  memset(head + 8 + len, ' ', padded - len);

  /* One block: the temporary path, then the directory to sync. */
  plen = strlen(path);
  tmp = malloc(2 * plen + sizeof ST_TMP_SUFFIX + 2);
  if (tmp == NULL) {
    bt__errorf(err, rc, "bt_st_save: out of memory");
    goto out_free_head;
  }
  memcpy(tmp, path, plen);
  memcpy(tmp + plen, ST_TMP_SUFFIX, sizeof ST_TMP_SUFFIX);
  dir = tmp + plen + sizeof ST_TMP_SUFFIX;
  memcpy(dir, path, plen + 1);
  if (strrchr(dir, '/') == NULL)
    strcpy(dir, ".");
  else if (strrchr(dir, '/') == dir)
    dir[1] = '\0';
  else
    *strrchr(dir, '/') = '\0';

  fd = mkstemp(tmp);
  if (fd < 0) {
    e = errno;
    rc = bt__errorf(err, e == ENOENT ? BT_ENOENT : BT_EIO,
                    "bt_st_save: cannot create a temporary file in '%s' to "
                    "write '%s': %s; check that the directory exists and is "
                    "writable",
                    dir, path, strerror(e));
    goto out_free_tmp;
  }
  /* mkstemp makes the file 0600; a checkpoint should read like any other
   * file, and a replaced one keep its mode. */
  if (stat(path, &st) == 0 && S_ISREG(st.st_mode))
    mode = st.st_mode & 07777;
  rc = BT_EIO;
  if (fchmod(fd, mode) != 0) {
    e = errno;
    bt__errorf(err, rc, "bt_st_save: cannot set the mode of '%s': %s", tmp,
               strerror(e));
    goto out_remove_tmp;
  }
  if (write_all(fd, head, 8 + padded) != 0)
    goto out_write_error;
  for (size_t i = 0; i < count; i++)
    if (tensors[i].bytes > 0 &&
        write_all(fd, tensors[i].data, tensors[i].bytes) != 0)
      goto out_write_error;
  if (fsync(fd) != 0)
    goto out_write_error;
  e = close(fd);
  fd = -1;
  if (e != 0)
    goto out_write_error;
  if (rename(tmp, path) != 0) {
    e = errno;
    bt__errorf(err, rc,
               "bt_st_save: cannot move the new file into place as '%s': %s; "
               "check that '%s' is not a directory and its directory is "
               "writable",
               path, strerror(e), path);
    goto out_remove_tmp;
  }
  sync_dir(dir);
  rc = BT_OK;
  goto out_free_tmp;

out_write_error:
  e = errno;
  bt__errorf(err, rc,
             "bt_st_save: cannot write '%s' (as '%s'): %s; check free space "
             "and the file system",
             path, tmp, strerror(e));
out_remove_tmp:
  if (fd >= 0)
    close(fd);
  unlink(tmp);
out_free_tmp:
  free(tmp);
out_free_head:
  free(head);
out_free_json:
  free(json);
out_free_root:
  json_decref(root);
  return rc;
}

/* ---- reading ------------------------------------------------------------ */

static bt_status
read_at(const char *path, int fd, void *buf, size_t len, uint64_t off,
        bt_error_t *err)
{
  unsigned char *p = buf;

  while (len > 0) {
    ssize_t n = pread(fd, p, len, (off_t)off);

    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return bt__errorf(err, BT_EIO, "cannot read '%s': %s", path,
                        strerror(errno));
    if (n == 0)
      return bt__errorf(err, BT_EIO,
                        "'%s' ended early at byte %llu; was it changed while "
                        "being read?",
                        path, (unsigned long long)off);
    p += n;
    len -= (size_t)n;
    off += (uint64_t)n;
  }
  return BT_OK;
}

/* A non-negative JSON integer. */
static bool
json_natural(const json_t *v, uint64_t *out)
{
  if (!json_is_integer(v) || json_integer_value(v) < 0)
    return false;
  *out = (uint64_t)json_integer_value(v);
  return true;
}

static bt_status
parse_tensor(const char *path, const char *name, json_t *v,
             uint64_t data_len, struct st_entry *en, bt_error_t *err)
{
  json_t *dt, *shape, *offs;
  uint64_t dim, want;
  size_t elem, nd;
  char sbuf[256];

  if (!json_is_object(v))
    return bt__errorf(err, BT_EPARSE,
                      "'%s': tensor '%s': its entry is not an object with "
                      "dtype, shape and data_offsets",
                      path, name);
  dt = json_object_get(v, "dtype");
  if (!json_is_string(dt))
    return bt__errorf(err, BT_EPARSE, "'%s': tensor '%s' has no dtype string",
                      path, name);
  en->t.dtype = dtype_parse(json_string_value(dt));
  if (en->t.dtype == 0)
    return bt__errorf(err, BT_EPARSE,
                      "'%s': tensor '%s' has unknown dtype '%s'; baton reads"
                      "%s",
                      path, name, json_string_value(dt), dtype_list);
  elem = bt_st_dtype_size(en->t.dtype);

  shape = json_object_get(v, "shape");
  if (!json_is_array(shape))
    return bt__errorf(err, BT_EPARSE,
                      "'%s': tensor '%s' has no shape list", path, name);
  nd = json_array_size(shape);
  if (nd > BT_ST_MAX_DIMS)
    return bt__errorf(err, BT_EPARSE,
                      "'%s': tensor '%s' has %zu dimensions; baton reads at "
                      "most %d",
                      path, name, nd, BT_ST_MAX_DIMS);
  en->t.ndim = (int32_t)nd;
  for (size_t d = 0; d < nd; d++) {
    if (!json_natural(json_array_get(shape, d), &dim))
      return bt__errorf(err, BT_EPARSE,
                        "'%s': tensor '%s': shape[%zu] is not a non-negative "
                        "integer",
                        path, name, d);
    en->t.shape[d] = (int64_t)dim;
  }

  offs = json_object_get(v, "data_offsets");
  if (!json_is_array(offs) || json_array_size(offs) != 2 ||
      !json_natural(json_array_get(offs, 0), &en->begin) ||
      !json_natural(json_array_get(offs, 1), &en->end))
    return bt__errorf(err, BT_EPARSE,
                      "'%s': tensor '%s': data_offsets is not [begin, end] of "
                      "two non-negative integers",
                      path, name);
  if (en->begin > en->end)
    return bt__errorf(err, BT_EPARSE,
                      "'%s': tensor '%s': data_offsets [%llu, %llu] end "
                      "before they begin",
                      path, name, (unsigned long long)en->begin,
                      (unsigned long long)en->end);
  if (en->end > data_len)
    return bt__errorf(err, BT_EPARSE,
                      "'%s': tensor '%s': data_offsets [%llu, %llu] reach past "
                      "the end of the data (%llu bytes); the file is "
                      "truncated or its header is wrong",
                      path, name, (unsigned long long)en->begin,
                      (unsigned long long)en->end,
                      (unsigned long long)data_len);
  if (!shape_bytes(en->t.shape, en->t.ndim, elem, &want) ||
      want != en->end - en->begin)
    return bt__errorf(err, BT_EPARSE,
                      "'%s': tensor '%s': data_offsets [%llu, %llu] hold %llu "
                      "bytes, but shape %s of %s needs %llu",
                      path, name, (unsigned long long)en->begin,
                      (unsigned long long)en->end,
                      (unsigned long long)(en->end - en->begin),
                      shape_str(en->t.shape, en->t.ndim, sbuf, sizeof sbuf),
                      json_string_value(dt), (unsigned long long)want);
  en->t.bytes = (size_t)want;
  return BT_OK;
}

static int
cmp_offset(const void *a, const void *b)
{
  const struct st_entry *x = a, *y = b;

  if (x->begin != y->begin)
    return x->begin < y->begin ? -1 : 1;
  if (x->end != y->end)
    return x->end < y->end ? -1 : 1;
  return x->order < y->order ? -1 : x->order > y->order;
}

static int
cmp_name(const void *a, const void *b)
{
  const struct st_entry *const *x = a, *const *y = b;

  return strcmp((*x)->t.name, (*y)->t.name);
}

static int
cmp_key_name(const void *key, const void *b)
{
  const struct st_entry *const *y = b;

  return strcmp(key, (*y)->t.name);
}

static char *
stash(char **at, const char *s)
{
  size_t n = strlen(s) + 1;
  char *p = *at;

  memcpy(p, s, n);
  *at += n;
  return p;
}

/* Fills f from the parsed header: entries (sorted, checked to cover the
 * data exactly), the name index and the metadata. */
static bt_status
parse_header(const char *path, json_t *root, uint64_t data_len,
             struct bt_st_file *f, bt_error_t *err)
{
  size_t strbytes = 0, n = 0, m = 0;
  uint64_t expect = 0;
  const struct st_entry *prev = NULL;
  const char *key;
  char *at;
  json_t *v;
  bt_status rc;

  if (!json_is_object(root))
    return bt__errorf(err, BT_EPARSE,
                      "'%s': the header is JSON but not an object of tensors; "
                      "not a safetensors file?",
                      path);
  json_object_foreach(root, key, v) {
    if (strcmp(key, ST_META_KEY) == 0) {
      const char *mk;
      json_t *mv;

      if (!json_is_object(v))
        return bt__errorf(err, BT_EPARSE,
                          "'%s': " ST_META_KEY " is not an object of strings",
                          path);
      json_object_foreach(v, mk, mv) {
        if (!json_is_string(mv))
          return bt__errorf(err, BT_EPARSE,
                            "'%s': " ST_META_KEY " value for key '%s' is not "
                            "a string",
                            path, mk);
        f->nmeta++;
        strbytes += strlen(mk) + json_string_length(mv) + 2;
      }
    } else {
      f->count++;
      strbytes += strlen(key) + 1;
    }
  }

  /* At least one element each, so that NULL means out of memory. */
  f->entries = calloc(f->count + 1, sizeof *f->entries);
  f->by_name = calloc(f->count + 1, sizeof *f->by_name);
  f->meta = calloc(f->nmeta + 1, sizeof *f->meta);
  f->strings = malloc(strbytes + 1);
  if (f->entries == NULL || f->by_name == NULL || f->meta == NULL ||
      f->strings == NULL)
    return bt__errorf(err, BT_ENOMEM,
                      "'%s': out of memory for the index of %zu tensors", path,
                      f->count);

  at = f->strings;
  json_object_foreach(root, key, v) {
    if (strcmp(key, ST_META_KEY) == 0) {
      const char *mk;
      json_t *mv;

      json_object_foreach(v, mk, mv) {
        f->meta[m].key = stash(&at, mk);
        f->meta[m].value = stash(&at, json_string_value(mv));
        m++;
      }
      continue;
    }
    rc = parse_tensor(path, key, v, data_len, &f->entries[n], err);
    if (rc != BT_OK)
      return rc;
    f->entries[n].t.name = stash(&at, key);
    f->entries[n].order = n;
    n++;
  }

  qsort(f->entries, f->count, sizeof *f->entries, cmp_offset);
  for (size_t i = 0; i < f->count; i++) {
    const struct st_entry *e = &f->entries[i];

    if (e->begin < expect)
      return bt__errorf(err, BT_EPARSE,
                        "'%s': tensor '%s' at [%llu, %llu] overlaps tensor "
                        "'%s' at [%llu, %llu]; each byte of data must belong "
                        "to one tensor",
                        path, e->t.name, (unsigned long long)e->begin,
                        (unsigned long long)e->end, prev->t.name,
                        (unsigned long long)prev->begin,
                        (unsigned long long)prev->end);
    if (e->begin > expect)
      return bt__errorf(err, BT_EPARSE,
                        "'%s': data bytes [%llu, %llu) before tensor '%s' "
                        "belong to no tensor; the format allows no holes",
                        path, (unsigned long long)expect,
                        (unsigned long long)e->begin, e->t.name);
    expect = e->end;
    prev = e;
    f->by_name[i] = &f->entries[i];
  }
  if (expect != data_len)
    return bt__errorf(err, BT_EPARSE,
                      "'%s': data bytes [%llu, %llu) at the end belong to no "
                      "tensor; the format allows no trailing bytes",
                      path, (unsigned long long)expect,
                      (unsigned long long)data_len);
  qsort(f->by_name, f->count, sizeof *f->by_name, cmp_name);
  return BT_OK;
}

/* Reads every tensor into f->data, each on an ST_ALIGN boundary. */
static bt_status
read_data(const char *path, int fd, uint64_t data_at, struct bt_st_file *f,
          bt_error_t *err)
{
  size_t total = 0, at = 0;
  bt_status rc;

  for (size_t i = 0; i < f->count; i++)
    total += round_up(f->entries[i].t.bytes, ST_ALIGN);
  /* At least one block, so that even empty tensors point somewhere. */
  total = total > 0 ? total : ST_ALIGN;
  f->data = aligned_alloc(ST_ALIGN, total);
  if (f->data == NULL)
    return bt__errorf(err, BT_ENOMEM,
                      "'%s': out of memory for %zu bytes of tensor data", path,
                      total);
  for (size_t i = 0; i < f->count; i++) {
    struct st_entry *e = &f->entries[i];

    e->t.data = f->data + at;
    rc = read_at(path, fd, f->data + at, e->t.bytes, data_at + e->begin, err);
    if (rc != BT_OK)
      return rc;
    at += round_up(e->t.bytes, ST_ALIGN);
  }
  return BT_OK;
}

bt_status
bt_st_load(const char *path, bt_st_file_t **out, bt_error_t *err)
{
  struct bt_st_file *f = NULL;
  unsigned char prefix[8];
  char *header = NULL;
  json_t *root = NULL;
  json_error_t jerr;
  struct stat st;
  uint64_t n = 0, size;
  bt_status rc;
  int fd, e;

  if (out != NULL)
    *out = NULL;
  if (path == NULL || out == NULL)
    return bt__errorf(err, BT_EINVAL, "bt_st_load: path and out must not be "
                                      "NULL");
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    e = errno;
    return bt__errorf(err, e == ENOENT ? BT_ENOENT : BT_EIO,
                      "cannot open '%s': %s", path, strerror(e));
  }
  if (fstat(fd, &st) != 0) {
    e = errno;
    rc = bt__errorf(err, BT_EIO, "cannot stat '%s': %s", path, strerror(e));
    goto out_close;
  }
  if (!S_ISREG(st.st_mode)) {
    rc = bt__errorf(err, BT_EIO, "'%s' is not a regular file", path);
    goto out_close;
  }
  size = (uint64_t)st.st_size;
  if (size < 8) {
    rc = bt__errorf(err, BT_EPARSE,
                    "'%s' is %llu bytes, too short for the 8-byte header "
                    "length; the file is truncated or not safetensors",
                    path, (unsigned long long)size);
    goto out_close;
  }
  rc = read_at(path, fd, prefix, 8, 0, err);
  if (rc != BT_OK)
    goto out_close;
  for (int b = 7; b >= 0; b--)
    n = n << 8 | prefix[b];
  if (n > ST_HEADER_MAX) {
    rc = bt__errorf(err, BT_EPARSE,
                    "'%s': header length %llu is over the format's limit of "
                    "%u bytes; not a safetensors file?",
                    path, (unsigned long long)n, ST_HEADER_MAX);
    goto out_close;
  }
  if (n > size - 8) {
    rc = bt__errorf(err, BT_EPARSE,
                    "'%s': header length %llu runs past the end of the file "
                    "(%llu bytes); the file is truncated or not safetensors",
                    path, (unsigned long long)n, (unsigned long long)size);
    goto out_close;
  }
  header = malloc((size_t)n + 1);
  if (header == NULL) {
    rc = bt__errorf(err, BT_ENOMEM, "'%s': out of memory for a %llu-byte "
                                    "header",
                    path, (unsigned long long)n);
    goto out_close;
  }
  rc = read_at(path, fd, header, (size_t)n, 8, err);
  if (rc != BT_OK)
    goto out_free_header;
  /* JSON_DECODE_ANY so that a non-object header gets the message below
   * rather than jansson's. */
  root = json_loadb(header, (size_t)n, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY,
                    &jerr);
  if (root == NULL) {
    if (json_error_code(&jerr) == json_error_out_of_memory)
      rc = bt__errorf(err, BT_ENOMEM, "'%s': out of memory parsing the header",
                      path);
    else if (json_error_code(&jerr) == json_error_duplicate_key)
      rc = bt__errorf(err, BT_EPARSE,
                      "'%s': the header has a key twice (%s, line %d); every "
                      "tensor name must be unique",
                      path, jerr.text, jerr.line);
    else
      rc = bt__errorf(err, BT_EPARSE,
                      "'%s': the header is not valid UTF-8 JSON: %s (line %d, "
                      "column %d); the file is corrupt or not safetensors",
                      path, jerr.text, jerr.line, jerr.column);
    goto out_free_header;
  }
  f = calloc(1, sizeof *f);
  if (f == NULL) {
    rc = bt__errorf(err, BT_ENOMEM, "'%s': out of memory", path);
    goto out_free_root;
  }
  rc = parse_header(path, root, size - 8 - n, f, err);
  if (rc != BT_OK)
    goto out_close_file;
  rc = read_data(path, fd, 8 + n, f, err);
  if (rc != BT_OK)
    goto out_close_file;
  *out = f;
  f = NULL;

out_close_file:
  bt_st_close(f);
out_free_root:
  json_decref(root);
out_free_header:
  free(header);
out_close:
  close(fd);
  return rc;
}

size_t
bt_st_count(const bt_st_file_t *f)
{
  return f != NULL ? f->count : 0;
}

bt_st_tensor_t
bt_st_get(const bt_st_file_t *f, size_t i)
{
  bt_st_tensor_t none;

  if (f != NULL && i < f->count)
    return f->entries[i].t;
  memset(&none, 0, sizeof none);
  return none;
}

bt_status
bt_st_find(const bt_st_file_t *f, const char *name, bt_st_tensor_t *out)
{
  struct st_entry *const *hit;

  if (f == NULL || name == NULL)
    return BT_EINVAL;
  hit = bsearch(name, f->by_name, f->count, sizeof *f->by_name, cmp_key_name);
  if (hit == NULL)
    return BT_ENOENT;
  if (out != NULL)
    *out = (*hit)->t;
  return BT_OK;
}

const char *
bt_st_metadata(const bt_st_file_t *f, const char *key)
{
  if (f == NULL || key == NULL)
    return NULL;
  for (size_t i = 0; i < f->nmeta; i++)
    if (strcmp(f->meta[i].key, key) == 0)
      return f->meta[i].value;
  return NULL;
}

size_t
bt_st_metadata_count(const bt_st_file_t *f)
{
  return f != NULL ? f->nmeta : 0;
}

bt_status
bt_st_metadata_at(const bt_st_file_t *f, size_t i, const char **key,
                  const char **value)
{
  if (f == NULL)
    return BT_EINVAL;
  if (i >= f->nmeta)
    return BT_ERANGE;
  if (key != NULL)
    *key = f->meta[i].key;
  if (value != NULL)
    *value = f->meta[i].value;
  return BT_OK;
}

void
bt_st_close(bt_st_file_t *f)
{
  if (f == NULL)
    return;
  free(f->data);
  free(f->strings);
  free(f->meta);
  free(f->by_name);
  free(f->entries);
  free(f);
}
