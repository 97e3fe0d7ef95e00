/* Byte-level text data (model/text.c): which files of a directory are
 * read and in which order (data files without a '.', sorted; *.dat, *.u8,
 * symlinks and subdirectories skipped), a single file, the train /
 * validation split, batches (deterministic, y = x shifted by one, inside
 * the data), errors that say what to do, allocation failures, and the
 * default corpus when it is installed. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "failalloc.h"
#include "test.h"
#include "text.h"

/* ---- a scratch directory ------------------------------------------------ */

static char root[256];

static void
remove_tree(const char *dir)
{
  char cmd[600];

  /* The tree is this process's own mkdtemp directory. */
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
  if (system(cmd) != 0)
    fprintf(stderr, "test_text: could not remove %s\n", dir);
}

static void
remove_root(void)
{
  if (root[0] != '\0')
    remove_tree(root);
}

/* root/name (root created on first use, removed at exit). */
static const char *
path_of(const char *name)
{
  static char buf[4][512];
  static int next;
  char *p = buf[next++ % 4];

  if (root[0] == '\0') {
    const char *t = getenv("TMPDIR");

    snprintf(root, sizeof(root), "%s/bt_text_XXXXXX", t && *t ? t : "/tmp");
    if (mkdtemp(root) == NULL) {
      perror("mkdtemp");
      exit(1);
    }
    atexit(remove_root);
  }
  snprintf(p, 512, "%s/%s", root, name);
  return p;
}

static bool
write_text(const char *path, const char *s)
{
  FILE *f = fopen(path, "wb");
  bool ok;

  if (f == NULL)
    return false;
  ok = fwrite(s, 1, strlen(s), f) == strlen(s);
  return fclose(f) == 0 && ok;
}

/* A fortunes-like directory: data files b, a, c-d (written out of order),
 * their .dat indexes and .u8 symlinks, a symlink without a '.', a
 * subdirectory, and a README.txt. */
static const char *
make_corpus(void)
{
  const char *d = path_of("corpus");
  char p[600];

  if (mkdir(d, 0700) != 0)
    return NULL;
#define W(name, text)                                                          \
  do {                                                                         \
    snprintf(p, sizeof(p), "%s/%s", d, name);                                  \
    if (!write_text(p, text))                                                  \
      return NULL;                                                             \
  } while (0)
#define L(target, name)                                                        \
  do {                                                                         \
    snprintf(p, sizeof(p), "%s/%s", d, name);                                  \
    if (symlink(target, p) != 0)                                               \
      return NULL;                                                             \
  } while (0)
  W("b", "bee\n%\n");
  W("a", "ay\n%\n");
  W("c-d", "see dee\n");
  W("a.dat", "INDEX-A");
  W("b.dat", "INDEX-B");
  W("README.txt", "readme");
  L("a", "a.u8");
  L("b", "b.u8");
  L("c-d", "alias");
  snprintf(p, sizeof(p), "%s/sub", d);
  if (mkdir(p, 0700) != 0)
    return NULL;
  W("sub/zzz", "nested");
#undef W
#undef L
  return d;
}

/* ---- loading ------------------------------------------------------------ */

TEST(text_load_dir)
{
  struct bt__text t;
  bt_error_t err;
  const char *d = make_corpus();
  const char *want = "ay\n%\nbee\n%\nsee dee\n";

  ASSERT_TRUE(d != NULL);
  EXPECT_STATUS(bt__text_load(d, &t, &err), BT_OK, &err);
  ASSERT_TRUE(t.data != NULL);
  EXPECT_INT_EQ(t.nfiles, 3);
  EXPECT_INT_EQ(t.n, strlen(want));
  EXPECT_TRUE(t.n == strlen(want) && memcmp(t.data, want, t.n) == 0);
  bt__text_free(&t);
  EXPECT_TRUE(t.data == NULL && t.n == 0);
  bt__text_free(&t);
  bt__text_free(NULL);
}

TEST(text_load_file)
{
  struct bt__text t;
  bt_error_t err;
  const char *p = path_of("one.txt");
  /* Raw bytes, high ones and NUL included. */
  const unsigned char bytes[] = {'h', 'i', 0, 0xff, 0x80, '\n'};
  FILE *f = fopen(p, "wb");

  ASSERT_TRUE(f != NULL);
  ASSERT_TRUE(fwrite(bytes, 1, sizeof(bytes), f) == sizeof(bytes));
  ASSERT_TRUE(fclose(f) == 0);
  EXPECT_STATUS(bt__text_load(p, &t, &err), BT_OK, &err);
  EXPECT_INT_EQ(t.nfiles, 1);
  ASSERT_INT_EQ(t.n, sizeof(bytes));
  EXPECT_TRUE(memcmp(t.data, bytes, sizeof(bytes)) == 0);
  bt__text_free(&t);
}

/* A file larger than the reader's first chunks, to cross its growth. */
TEST(text_load_large)
{
  struct bt__text t;
  bt_error_t err;
  const char *p = path_of("large");
  size_t n = 300000;
  uint8_t *b = malloc(n);
  FILE *f = fopen(p, "wb");

  ASSERT_TRUE(b != NULL && f != NULL);
  for (size_t i = 0; i < n; i++)
    b[i] = (uint8_t)(i * 7 + (i >> 9));
  ASSERT_TRUE(fwrite(b, 1, n, f) == n);
  ASSERT_TRUE(fclose(f) == 0);
  EXPECT_STATUS(bt__text_load(p, &t, &err), BT_OK, &err);
  EXPECT_INT_EQ(t.n, n);
  EXPECT_TRUE(t.n == n && memcmp(t.data, b, n) == 0);
  bt__text_free(&t);
  free(b);
}

TEST(text_load_errors)
{
  struct bt__text t;
  bt_error_t err;
  const char *missing = path_of("no-such-corpus");
  const char *empty = path_of("empty-dir");
  const char *dats = path_of("only-dats");
  const char *ef = path_of("empty-file");
  char p[600];

  memset(&t, 0x5a, sizeof(t));
  EXPECT_STATUS(bt__text_load(missing, &t, &err), BT_ENOENT, &err);
  EXPECT_STR_CONTAINS(err.message, "no-such-corpus");
  EXPECT_STR_CONTAINS(err.message, "not found");
  EXPECT_STR_CONTAINS(err.message, "fortunes");
  EXPECT_STR_CONTAINS(err.message, "scripts/deps.sh --demo");
  EXPECT_STR_CONTAINS(err.message, "--data FILE");
  EXPECT_TRUE(t.data == NULL && t.n == 0);

  ASSERT_TRUE(mkdir(empty, 0700) == 0);
  EXPECT_STATUS(bt__text_load(empty, &t, &err), BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "empty-dir");
  EXPECT_STR_CONTAINS(err.message, "no text");
  EXPECT_STR_CONTAINS(err.message, "--data FILE");
  EXPECT_TRUE(t.data == NULL);

  /* Only skipped names: as empty. */
  ASSERT_TRUE(mkdir(dats, 0700) == 0);
  snprintf(p, sizeof(p), "%s/x.dat", dats);
  ASSERT_TRUE(write_text(p, "index"));
  EXPECT_STATUS(bt__text_load(dats, &t, &err), BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "no text");

  ASSERT_TRUE(write_text(ef, ""));
  EXPECT_STATUS(bt__text_load(ef, &t, &err), BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "empty-file");

  EXPECT_STATUS(bt__text_load(NULL, &t, &err), BT_EINVAL, &err);
  EXPECT_STATUS(bt__text_load(ef, NULL, &err), BT_EINVAL, &err);
  EXPECT_STATUS(bt__text_load(missing, &t, NULL), BT_ENOENT, NULL);

  /* An unreadable data file (not as root, who reads anything). */
  if (geteuid() != 0) {
    const char *locked = path_of("locked");
    ASSERT_TRUE(mkdir(locked, 0700) == 0);
    snprintf(p, sizeof(p), "%s/secret", locked);
    ASSERT_TRUE(write_text(p, "x") && chmod(p, 0) == 0);
    EXPECT_STATUS(bt__text_load(locked, &t, &err), BT_EIO, &err);
    EXPECT_STR_CONTAINS(err.message, "secret");
  }
}

/* ---- split and batches -------------------------------------------------- */

TEST(text_split)
{
  uint8_t data[1000];
  const uint8_t *tr, *va;
  size_t ntr, nva;
  bt_error_t err;

  for (size_t i = 0; i < sizeof(data); i++)
    data[i] = (uint8_t)i;
  /* A tenth when that exceeds T + 1. */
  EXPECT_STATUS(bt__text_split(data, 1000, 8, &tr, &ntr, &va, &nva, &err),
                BT_OK, &err);
  EXPECT_TRUE(tr == data && va == data + 900);
  EXPECT_INT_EQ(ntr, 900);
  EXPECT_INT_EQ(nva, 100);
  /* T + 1 when the tenth is shorter. */
  EXPECT_STATUS(bt__text_split(data, 1000, 199, &tr, &ntr, &va, &nva, &err),
                BT_OK, &err);
  EXPECT_INT_EQ(nva, 200);
  EXPECT_INT_EQ(ntr, 800);
  EXPECT_TRUE(va == data + 800);
  /* The smallest corpus: one window each. */
  EXPECT_STATUS(bt__text_split(data, 10, 4, &tr, &ntr, &va, &nva, &err), BT_OK,
                &err);
  EXPECT_INT_EQ(ntr, 5);
  EXPECT_INT_EQ(nva, 5);
  EXPECT_STATUS(bt__text_split(data, 9, 4, &tr, &ntr, &va, &nva, &err),
                BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "too few");
  EXPECT_STATUS(bt__text_split(data, 10, 0, &tr, &ntr, &va, &nva, &err),
                BT_EINVAL, &err);
  EXPECT_STATUS(bt__text_split(NULL, 10, 4, &tr, &ntr, &va, &nva, &err),
                BT_EINVAL, &err);
}

TEST(text_batch)
{
  enum { N = 500, B = 6, T = 9 };
  uint8_t data[N];
  int32_t x[B * T], y[B * T], x2[B * T], y2[B * T];
  size_t differ = 0;

  for (size_t i = 0; i < N; i++)
    data[i] = (uint8_t)((i * 37 + 11) % 251 + (i % 3));
  ASSERT_INT_EQ(bt__text_batch(data, N, B, T, 42, 3, x, y), BT_OK);
  /* Each row is a window of the data, y the next bytes. */
  for (size_t b = 0; b < B; b++) {
    bool found = false;
    for (size_t s = 0; s + T < N && !found; s++) {
      bool match = true;
      for (size_t t = 0; t < T && match; t++)
        match = x[b * T + t] == data[s + t] && y[b * T + t] == data[s + t + 1];
      found = match;
    }
    EXPECT_TRUE(found);
    for (size_t t = 0; t + 1 < T; t++)
      EXPECT_INT_EQ(y[b * T + t], x[b * T + t + 1]);
  }
  /* Deterministic in (seed, index), whatever came before. */
  ASSERT_INT_EQ(bt__text_batch(data, N, B, T, 42, 4, x2, y2), BT_OK);
  ASSERT_INT_EQ(bt__text_batch(data, N, B, T, 42, 3, x2, y2), BT_OK);
  EXPECT_TRUE(memcmp(x, x2, sizeof(x)) == 0 && memcmp(y, y2, sizeof(y)) == 0);
  /* Another index or seed gives other windows. */
  ASSERT_INT_EQ(bt__text_batch(data, N, B, T, 42, 4, x2, y2), BT_OK);
  differ += memcmp(x, x2, sizeof(x)) != 0;
  ASSERT_INT_EQ(bt__text_batch(data, N, B, T, 43, 3, x2, y2), BT_OK);
  differ += memcmp(x, x2, sizeof(x)) != 0;
  EXPECT_INT_EQ(differ, 2);

  /* n == T + 1: the only window, every time. */
  ASSERT_INT_EQ(bt__text_batch(data, T + 1, B, T, 7, 0, x, y), BT_OK);
  for (size_t b = 0; b < B; b++)
    for (size_t t = 0; t < T; t++) {
      EXPECT_INT_EQ(x[b * T + t], data[t]);
      EXPECT_INT_EQ(y[b * T + t], data[t + 1]);
    }
  /* Every start is reachable: over many draws on a short text, the first
   * and last windows both appear. */
  {
    bool first = false, last = false;
    for (uint64_t i = 0; i < 200; i++) {
      ASSERT_INT_EQ(bt__text_batch(data, T + 4, B, T, 5, i, x, y), BT_OK);
      for (size_t b = 0; b < B; b++) {
        first |= x[b * T] == data[0];
        last |= y[b * T + T - 1] == data[T + 3];
      }
    }
    EXPECT_TRUE(first && last);
  }

  EXPECT_INT_EQ(bt__text_batch(data, T, B, T, 1, 0, x, y), BT_EINVAL);
  EXPECT_INT_EQ(bt__text_batch(data, N, 0, T, 1, 0, x, y), BT_EINVAL);
  EXPECT_INT_EQ(bt__text_batch(data, N, B, 0, 1, 0, x, y), BT_EINVAL);
  EXPECT_INT_EQ(bt__text_batch(NULL, N, B, T, 1, 0, x, y), BT_EINVAL);
  EXPECT_INT_EQ(bt__text_batch(data, N, B, T, 1, 0, NULL, y), BT_EINVAL);
}

/* ---- allocation failures ------------------------------------------------ */

static const char *oom_dir;

static bt_status
op_load_dir(void)
{
  struct bt__text t;
  bt_error_t err;
  bt_status st = bt__text_load(oom_dir, &t, &err);

  if (st != BT_OK && (st != err.status || t.data != NULL))
    return BT_EINVAL; /* the detail repeats the status; nothing leaks */
  if (st == BT_OK && t.nfiles != 2)
    st = BT_EINVAL;
  bt__text_free(&t);
  return st;
}

TEST(text_oom)
{
  char p[600];
  char big[20000];

  oom_dir = path_of("oom");
  ASSERT_TRUE(mkdir(oom_dir, 0700) == 0);
  /* Enough bytes for the buffer to grow while reading. */
  memset(big, 'q', sizeof(big) - 1);
  big[sizeof(big) - 1] = '\0';
  snprintf(p, sizeof(p), "%s/one", oom_dir);
  ASSERT_TRUE(write_text(p, big));
  snprintf(p, sizeof(p), "%s/two", oom_dir);
  ASSERT_TRUE(write_text(p, big));
  EXPECT_TRUE(failalloc_sweep("text_load", op_load_dir) > 0);
}

/* ---- the default corpus ------------------------------------------------- */

TEST(text_default_corpus)
{
  struct bt__text t;
  bt_error_t err;
  const char *d = bt__text_default_path();
  const uint8_t *tr, *va;
  size_t ntr, nva;
  struct stat sb;

  EXPECT_TRUE(strcmp(d, "/usr/share/games/fortunes") == 0);
  if (stat(d, &sb) != 0) {
    printf("text_default_corpus: %s absent (scripts/deps.sh --demo "
           "installs it); only the message is checked\n",
           d);
    EXPECT_STATUS(bt__text_load(d, &t, &err), BT_ENOENT, &err);
    EXPECT_STR_CONTAINS(err.message, "fortunes");
    return;
  }
  EXPECT_STATUS(bt__text_load(d, &t, &err), BT_OK, &err);
  ASSERT_TRUE(t.data != NULL);
  /* Debian's fortunes: dozens of files, megabytes of English. */
  EXPECT_TRUE(t.nfiles >= 10);
  EXPECT_TRUE(t.n > 1000000);
  EXPECT_STATUS(bt__text_split(t.data, t.n, 64, &tr, &ntr, &va, &nva, &err),
                BT_OK, &err);
  EXPECT_INT_EQ(nva, t.n / 10);
  EXPECT_INT_EQ(ntr + nva, t.n);
  bt__text_free(&t);
}
