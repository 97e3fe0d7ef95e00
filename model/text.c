/* Byte-level text data: loading a file or a directory of fortune files,
 * the train / validation split and counter-based batches.  text.h pins
 * which files are read, in which order, and the split. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "error.h"
#include "params.h"
#include "text.h"

const char *
bt__text_default_path(void)
{
  return "/usr/share/games/fortunes";
}

/* ---- loading ------------------------------------------------------------ */

/* A growing byte buffer. */
struct buf {
  uint8_t *data;
  size_t n, cap;
};

/* Makes room for `more` bytes after b->n. */
static bt_status
buf_reserve(struct buf *b, size_t more, const char *path, bt_error_t *err)
{
  size_t need, cap;
  uint8_t *p;

  if (__builtin_add_overflow(b->n, more, &need))
    return bt__errorf(err, BT_ERANGE,
                      "text: '%s' makes the corpus larger than size_t "
                      "(pass a smaller --data FILE)",
                      path);
  if (need <= b->cap)
    return BT_OK;
  cap = b->cap > 0 ? b->cap : 4096;
  while (cap < need)
    cap = cap > SIZE_MAX / 2 ? need : cap * 2;
  p = realloc(b->data, cap);
  if (p == NULL)
    return bt__errorf(err, BT_ENOMEM,
                      "text: out of memory for %zu bytes of '%s'", cap, path);
  b->data = p;
  b->cap = cap;
  return BT_OK;
}

/* Appends the whole of the regular file path to b. */
static bt_status
read_file(const char *path, struct buf *b, bt_error_t *err)
{
  FILE *f = fopen(path, "rb");
  bt_status st = BT_OK;

  if (f == NULL)
    return bt__errorf(err, errno == ENOENT ? BT_ENOENT : BT_EIO,
                      "text: cannot open '%s': %s", path, strerror(errno));
  for (;;) {
    size_t got;

    st = buf_reserve(b, 65536, path, err);
    if (st != BT_OK)
      goto out_close;
    got = fread(b->data + b->n, 1, b->cap - b->n, f);
    b->n += got;
    if (got == 0 || feof(f))
      break;
  }
  if (ferror(f))
    st = bt__errorf(err, BT_EIO, "text: error reading '%s'", path);
out_close:
  fclose(f);
  return st;
}

static int
cmp_names(const void *a, const void *b)
{
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The names of dir's data files (regular, no '.'), sorted; *names and
 * each name malloc'd. */
static bt_status
list_dir(const char *dir, char ***names, size_t *count, bt_error_t *err)
{
  DIR *d = opendir(dir);
  struct dirent *e;
  char **v = NULL;
  size_t n = 0, cap = 0;
  bt_status st = BT_OK;

  *names = NULL;
  *count = 0;
  if (d == NULL)
    return bt__errorf(err, BT_EIO, "text: cannot open directory '%s': %s", dir,
                      strerror(errno));
  errno = 0;
  while ((e = readdir(d)) != NULL) {
    struct stat sb;
    size_t len = strlen(e->d_name);

    if (strchr(e->d_name, '.') != NULL)
      continue;
    /* lstat on the entry: a symlink (fortunes' NAME.u8 kind) is skipped
     * even when it points at a data file, so nothing is read twice. */
    if (fstatat(dirfd(d), e->d_name, &sb, AT_SYMLINK_NOFOLLOW) != 0) {
      st = bt__errorf(err, BT_EIO, "text: cannot stat '%s/%s': %s", dir,
                      e->d_name, strerror(errno));
      goto out_free;
    }
    if (!S_ISREG(sb.st_mode))
      continue;
    if (n == cap) {
      size_t ncap = cap > 0 ? 2 * cap : 16;
      char **nv = realloc(v, ncap * sizeof(*v));
      if (nv == NULL)
        goto out_nomem;
      v = nv;
      cap = ncap;
    }
    v[n] = malloc(len + 1);
    if (v[n] == NULL)
      goto out_nomem;
    memcpy(v[n++], e->d_name, len + 1);
    errno = 0;
  }
  if (errno != 0) {
    st = bt__errorf(err, BT_EIO, "text: error reading directory '%s': %s", dir,
                    strerror(errno));
    goto out_free;
  }
  closedir(d);
  if (n > 1)
    qsort(v, n, sizeof(*v), cmp_names);
  *names = v;
  *count = n;
  return BT_OK;

out_nomem:
  st = bt__errorf(err, BT_ENOMEM, "text: out of memory listing '%s'", dir);
out_free:
  for (size_t i = 0; i < n; i++)
    free(v[i]);
  free(v);
  closedir(d);
  return st;
}

/* Appends dir's data files to b, in name order; *nfiles counts them. */
static bt_status
read_dir(const char *dir, struct buf *b, size_t *nfiles, bt_error_t *err)
{
  char **names, *path = NULL;
  size_t count, dlen = strlen(dir);
  bt_status st;

  st = list_dir(dir, &names, &count, err);
  if (st != BT_OK)
    return st;
  for (size_t i = 0; i < count && st == BT_OK; i++) {
    size_t len = dlen + 1 + strlen(names[i]) + 1;

    path = malloc(len);
    if (path == NULL) {
      st = bt__errorf(err, BT_ENOMEM, "text: out of memory reading '%s'", dir);
      break;
    }
    snprintf(path, len, "%s/%s", dir, names[i]);
    st = read_file(path, b, err);
    free(path);
  }
  for (size_t i = 0; i < count; i++)
    free(names[i]);
  free(names);
  *nfiles = count;
  return st;
}

bt_status
bt__text_load(const char *path, struct bt__text *out, bt_error_t *err)
{
  struct buf b = {NULL, 0, 0};
  struct stat sb;
  size_t nfiles = 0;
  bt_status st;

  if (out != NULL)
    memset(out, 0, sizeof(*out));
  if (path == NULL || out == NULL)
    return bt__errorf(err, BT_EINVAL, "text: path and out must not be NULL");
  if (stat(path, &sb) != 0) {
    if (errno == ENOENT || errno == ENOTDIR)
      return bt__errorf(err, BT_ENOENT,
                        "text: '%s' not found; install the Debian package "
                        "fortunes (scripts/deps.sh --demo) or pass --data "
                        "FILE",
                        path);
    return bt__errorf(err, BT_EIO, "text: cannot stat '%s': %s", path,
                      strerror(errno));
  }
  if (S_ISDIR(sb.st_mode)) {
    st = read_dir(path, &b, &nfiles, err);
  } else if (S_ISREG(sb.st_mode)) {
    nfiles = 1;
    st = read_file(path, &b, err);
  } else {
    return bt__errorf(err, BT_EINVAL,
                      "text: '%s' is neither a file nor a directory (pass "
                      "--data FILE with a text file)",
                      path);
  }
  if (st != BT_OK)
    goto out_free;
  if (b.n == 0) {
    st = bt__errorf(err, BT_EINVAL,
                    "text: '%s' holds no text (%zu data files; a directory "
                    "is read for its regular files without a '.' in the "
                    "name); pass --data FILE with a non-empty text file",
                    path, nfiles);
    goto out_free;
  }
  out->data = b.data;
  out->n = b.n;
  out->nfiles = nfiles;
  return BT_OK;

out_free:
  free(b.data);
  return st;
}

void
bt__text_free(struct bt__text *t)
{
  if (t == NULL)
    return;
  free(t->data);
  memset(t, 0, sizeof(*t));
}

/* ---- split and batches -------------------------------------------------- */

bt_status
bt__text_split(const uint8_t *data, size_t n, size_t T, const uint8_t **train,
               size_t *ntrain, const uint8_t **val, size_t *nval,
               bt_error_t *err)
{
  size_t w, nv;

  if (data == NULL || train == NULL || ntrain == NULL || val == NULL ||
      nval == NULL)
    return bt__errorf(err, BT_EINVAL,
                      "text split: data and the out pointers must not be "
                      "NULL");
  /* T < n / 2 is n >= 2 (T + 1): room for a window on each side. */
  if (T == 0 || T >= n / 2)
    return bt__errorf(err, BT_EINVAL,
                      "text split: %zu bytes are too few for a train and a "
                      "validation window of T + 1 bytes each (T=%zu; use "
                      "1 <= T < %zu or a larger corpus)",
                      n, T, n / 2);
  w = T + 1;
  nv = n / 10 > w ? n / 10 : w;
  *train = data;
  *ntrain = n - nv;
  *val = data + (n - nv);
  *nval = nv;
  return BT_OK;
}

bt_status
bt__text_batch(const uint8_t *data, size_t n, size_t B, size_t T, uint64_t seed,
               uint64_t index, int32_t *x, int32_t *y)
{
  size_t R;

  if (data == NULL || x == NULL || y == NULL || B == 0 || T == 0 || T >= n ||
      __builtin_mul_overflow(B, T, &R))
    return BT_EINVAL;
  for (size_t b = 0; b < B; b++) {
    uint64_t k = index * (uint64_t)B + (uint64_t)b;
    size_t start = (size_t)(bt__splitmix64_at(seed, k) % (uint64_t)(n - T));
    const uint8_t *w = data + start;

    for (size_t t = 0; t < T; t++) {
      x[b * T + t] = (int32_t)w[t];
      y[b * T + t] = (int32_t)w[t + 1];
    }
  }
  return BT_OK;
}
