/* safetensors: round trips, byte layout, a known-good file, every kind of
 * malformed file, the atomic writer, and allocation failures (the binary
 * is linked with --wrap for malloc, calloc, realloc and aligned_alloc, as
 * test_oom is; jansson's own allocations are not wrapped). */
#include <dirent.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "baton/safetensors.h"
#include "failalloc.h"
#include "test.h"

/* ---- allocation failures ------------------------------------------------ */


/* ---- fixtures ----------------------------------------------------------- */

static char dir[256];

static void
remove_dir(void)
{
  DIR *d = opendir(dir);
  struct dirent *e;
  char p[512];

  if (d == NULL)
    return;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    if (rmdir(p) != 0) {
      chmod(p, 0700);
      unlink(p);
    }
  }
  closedir(d);
  rmdir(dir);
}

/* A path in this process's scratch directory (created on first use and
 * removed at exit). */
static const char *
path_of(const char *name)
{
  static char buf[4][512];
  static int next;
  char *p = buf[next++ % 4];

  if (dir[0] == '\0') {
    const char *t = getenv("TMPDIR");

    snprintf(dir, sizeof dir, "%s/bt_st_XXXXXX", t && *t ? t : "/tmp");
    if (mkdtemp(dir) == NULL) {
      perror("mkdtemp");
      exit(1);
    }
    atexit(remove_dir);
  }
  snprintf(p, 512, "%s/%s", dir, name);
  return p;
}

static bool
write_bytes(const char *path, const void *buf, size_t len)
{
  FILE *f = fopen(path, "wb");
  bool ok;

  if (f == NULL)
    return false;
  ok = fwrite(buf, 1, len, f) == len;
  return fclose(f) == 0 && ok;
}

/* The whole file, malloc'd (with a NUL after it); NULL when unreadable. */
static unsigned char *
read_bytes(const char *path, size_t *len)
{
  FILE *f = fopen(path, "rb");
  unsigned char *buf = NULL;
  long n;

  if (f == NULL)
    return NULL;
  if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 &&
      fseek(f, 0, SEEK_SET) == 0) {
    buf = malloc((size_t)n + 1);
    if (buf != NULL && fread(buf, 1, (size_t)n, f) != (size_t)n) {
      free(buf);
      buf = NULL;
    }
    if (buf != NULL) {
      buf[n] = 0;
      *len = (size_t)n;
    }
  }
  fclose(f);
  return buf;
}

/* Entries of the scratch directory with ".tmp." in their name. */
static int
count_tmp(void)
{
  DIR *d;
  struct dirent *e;
  int n = 0;

  path_of("x");
  d = opendir(dir);
  if (d == NULL)
    return -1;
  while ((e = readdir(d)) != NULL)
    if (strstr(e->d_name, ".tmp.") != NULL)
      n++;
  closedir(d);
  return n;
}

/* A file of: the length of header, header (as given: pad it yourself),
 * then data_len bytes 0, 1, 2, ... */
static const char *
make_file(const char *name, const char *header, size_t data_len)
{
  const char *path = path_of(name);
  size_t hl = strlen(header), total = 8 + hl + data_len;
  unsigned char *buf = malloc(total);

  if (buf == NULL)
    return path;
  for (int b = 0; b < 8; b++)
    buf[b] = (unsigned char)((uint64_t)hl >> (8 * b));
  memcpy(buf + 8, header, hl);
  for (size_t i = 0; i < data_len; i++)
    buf[8 + hl + i] = (unsigned char)i;
  if (!write_bytes(path, buf, total))
    test_fail(__FILE__, __LINE__, "cannot write %s", path);
  free(buf);
  return path;
}

static bt_st_tensor_t
tensor(const char *name, int32_t dtype, int32_t ndim, const int64_t *shape,
       const void *data, size_t bytes)
{
  bt_st_tensor_t t;

  memset(&t, 0, sizeof t);
  t.name = name;
  t.dtype = dtype;
  t.ndim = ndim;
  for (int32_t d = 0; d < ndim && d < BT_ST_MAX_DIMS; d++)
    t.shape[d] = shape[d];
  t.data = data;
  t.bytes = bytes;
  return t;
}

/* A set of tensors of every common dtype, including a scalar, an odd-sized
 * U8 that leaves the next tensor unaligned in the file, and two empty
 * ones. */
static float f32[6] = {1.5f, -2.0f, 3.25f, 0.0f, 1e-3f, 7.0f};
static double f64 = 3.141592653589793;
static int32_t i32[4] = {-1, 2, INT32_MAX, INT32_MIN};
static int64_t i64[2] = {INT64_MIN, 1234567890123LL};
static uint8_t u8[5] = {1, 2, 3, 254, 255};
static uint16_t f16[3] = {0x3c00, 0xc000, 0x7bff}; /* 1, -2, 65504 */
static uint16_t bf16[1];

#define NSET 8
static const char *const set_meta[] = {"step", "42", "format", "pt", NULL};

static void
make_set(bt_st_tensor_t *t)
{
  static const int64_t s23[] = {2, 3}, s4[] = {4}, s12[] = {1, 2}, s5[] = {5},
                       s3[] = {3}, s20[] = {2, 0}, s0[] = {0};

  t[0] = tensor("layer.0.weight", BT_ST_F32, 2, s23, f32, sizeof f32);
  t[1] = tensor("u8", BT_ST_U8, 1, s5, u8, sizeof u8);
  t[2] = tensor("scale", BT_ST_F64, 0, NULL, &f64, sizeof f64);
  t[3] = tensor("i32", BT_ST_I32, 1, s4, i32, sizeof i32);
  t[4] = tensor("empty2x0", BT_ST_BF16, 2, s20, bf16, 0);
  t[5] = tensor("i64", BT_ST_I64, 2, s12, i64, sizeof i64);
  t[6] = tensor("h\xc3\xa9llo.f16", BT_ST_F16, 1, s3, f16, sizeof f16);
  t[7] = tensor("nothing", BT_ST_I8, 1, s0, NULL, 0);
}

static bool
same_tensor(const bt_st_tensor_t *a, const bt_st_tensor_t *b)
{
  if (a->name == NULL || b->name == NULL || strcmp(a->name, b->name) != 0 ||
      a->dtype != b->dtype || a->ndim != b->ndim || a->bytes != b->bytes)
    return false;
  for (int32_t d = 0; d < a->ndim; d++)
    if (a->shape[d] != b->shape[d])
      return false;
  return a->bytes == 0 || memcmp(a->data, b->data, a->bytes) == 0;
}

/* Loads path expecting want, with every needle in the message. */
static void
expect_load_fails(const char *path, bt_status want, const char *needle1,
                  const char *needle2)
{
  bt_st_file_t *f = (bt_st_file_t *)&f; /* must be reset to NULL */
  bt_error_t err;

  bt_error_clear(&err);
  EXPECT_STATUS(bt_st_load(path, &f, &err), want, &err);
  EXPECT_TRUE(f == NULL);
  EXPECT_INT_EQ(err.status, want);
  EXPECT_STR_CONTAINS(err.message, path);
  if (needle1 != NULL)
    EXPECT_STR_CONTAINS(err.message, needle1);
  if (needle2 != NULL)
    EXPECT_STR_CONTAINS(err.message, needle2);
  if (f != NULL && f != (bt_st_file_t *)&f)
    bt_st_close(f);
}

/* ---- dtypes, round trips, layout ---------------------------------------- */

TEST(st_dtypes)
{
  EXPECT_INT_EQ(bt_st_dtype_size(BT_ST_F32), 4);
  EXPECT_INT_EQ(bt_st_dtype_size(BT_ST_F64), 8);
  EXPECT_INT_EQ(bt_st_dtype_size(BT_ST_F16), 2);
  EXPECT_INT_EQ(bt_st_dtype_size(BT_ST_BF16), 2);
  EXPECT_INT_EQ(bt_st_dtype_size(BT_ST_I32), 4);
  EXPECT_INT_EQ(bt_st_dtype_size(BT_ST_I64), 8);
  EXPECT_INT_EQ(bt_st_dtype_size(BT_ST_U8), 1);
  EXPECT_INT_EQ(bt_st_dtype_size(BT_ST_BOOL), 1);
  EXPECT_INT_EQ(bt_st_dtype_size(0), 0);
  EXPECT_INT_EQ(bt_st_dtype_size(99), 0);
  EXPECT_TRUE(strcmp(bt_st_dtype_name(BT_ST_BF16), "BF16") == 0);
  EXPECT_TRUE(strcmp(bt_st_dtype_name(BT_ST_F8_E4M3), "F8_E4M3") == 0);
  EXPECT_TRUE(bt_st_dtype_name(0) == NULL);
}

TEST(st_round_trip)
{
  const char *path = path_of("round.safetensors");
  bt_st_tensor_t t[NSET], got;
  bt_st_file_t *f = NULL;
  const char *k, *v;
  bt_error_t err;

  make_set(t);
  EXPECT_STATUS(bt_st_save(path, t, NSET, set_meta, &err), BT_OK, &err);
  ASSERT_INT_EQ(bt_st_load(path, &f, &err), BT_OK);
  ASSERT_INT_EQ(bt_st_count(f), NSET);
  for (size_t i = 0; i < NSET; i++) {
    got = bt_st_get(f, i);
    if (!same_tensor(&got, &t[i]))
      test_fail(__FILE__, __LINE__, "tensor %zu ('%s') differs", i, t[i].name);
    EXPECT_TRUE(got.data != NULL);
    EXPECT_INT_EQ((uintptr_t)got.data % 64, 0);
    EXPECT_STATUS(bt_st_find(f, t[i].name, &got), BT_OK, NULL);
    EXPECT_TRUE(same_tensor(&got, &t[i]));
  }
  got = bt_st_get(f, 2);
  EXPECT_INT_EQ(got.ndim, 0);
  EXPECT_TRUE(*(const double *)got.data == f64);
  EXPECT_STATUS(bt_st_find(f, "missing", &got), BT_ENOENT, NULL);
  EXPECT_STATUS(bt_st_find(f, "layer.0.weight", NULL), BT_OK, NULL);
  EXPECT_STATUS(bt_st_find(NULL, "u8", NULL), BT_EINVAL, NULL);
  got = bt_st_get(f, NSET);
  EXPECT_TRUE(got.name == NULL && got.dtype == 0);

  EXPECT_TRUE(strcmp(bt_st_metadata(f, "step"), "42") == 0);
  EXPECT_TRUE(strcmp(bt_st_metadata(f, "format"), "pt") == 0);
  EXPECT_TRUE(bt_st_metadata(f, "nope") == NULL);
  ASSERT_INT_EQ(bt_st_metadata_count(f), 2);
  EXPECT_STATUS(bt_st_metadata_at(f, 1, &k, &v), BT_OK, NULL);
  EXPECT_TRUE(strcmp(k, "format") == 0 && strcmp(v, "pt") == 0);
  EXPECT_STATUS(bt_st_metadata_at(f, 2, &k, &v), BT_ERANGE, NULL);
  bt_st_close(f);
  bt_st_close(NULL);
  EXPECT_INT_EQ(bt_st_count(NULL), 0);
  EXPECT_INT_EQ(count_tmp(), 0);
}

TEST(st_no_tensors)
{
  const char *path = path_of("none.safetensors");
  unsigned char *bytes;
  bt_st_file_t *f = NULL;
  bt_error_t err;
  size_t len = 0;

  EXPECT_STATUS(bt_st_save(path, NULL, 0, NULL, &err), BT_OK, &err);
  bytes = read_bytes(path, &len);
  ASSERT_TRUE(bytes != NULL);
  EXPECT_INT_EQ(len, 16);
  EXPECT_TRUE(memcmp(bytes + 8, "{}      ", 8) == 0);
  free(bytes);
  ASSERT_INT_EQ(bt_st_load(path, &f, &err), BT_OK);
  EXPECT_INT_EQ(bt_st_count(f), 0);
  EXPECT_INT_EQ(bt_st_metadata_count(f), 0);
  bt_st_close(f);
}

TEST(st_deterministic)
{
  const char *a = path_of("det_a.safetensors");
  const char *b = path_of("det_b.safetensors");
  unsigned char *x, *y, *z;
  size_t nx = 0, ny = 0, nz = 0;
  bt_st_tensor_t t[NSET];
  bt_error_t err;

  make_set(t);
  EXPECT_STATUS(bt_st_save(a, t, NSET, set_meta, &err), BT_OK, &err);
  EXPECT_STATUS(bt_st_save(b, t, NSET, set_meta, &err), BT_OK, &err);
  x = read_bytes(a, &nx);
  y = read_bytes(b, &ny);
  EXPECT_STATUS(bt_st_save(a, t, NSET, set_meta, &err), BT_OK, &err);
  z = read_bytes(a, &nz);
  ASSERT_TRUE(x != NULL && y != NULL && z != NULL);
  EXPECT_INT_EQ(nx, ny);
  EXPECT_INT_EQ(nx, nz);
  EXPECT_TRUE(nx == ny && memcmp(x, y, nx) == 0);
  EXPECT_TRUE(nx == nz && memcmp(x, z, nx) == 0);
  free(x);
  free(y);
  free(z);
}

TEST(st_layout)
{
  const char *path = path_of("layout.safetensors");
  bt_st_tensor_t t[NSET];
  unsigned char *bytes, *at;
  size_t len = 0, total = 0;
  uint64_t n = 0;
  bt_error_t err;

  make_set(t);
  EXPECT_STATUS(bt_st_save(path, t, NSET, set_meta, &err), BT_OK, &err);
  bytes = read_bytes(path, &len);
  ASSERT_TRUE(bytes != NULL && len >= 8);
  for (int b = 7; b >= 0; b--)
    n = n << 8 | bytes[b];
  for (size_t i = 0; i < NSET; i++)
    total += t[i].bytes;
  EXPECT_INT_EQ(n % 8, 0);
  EXPECT_INT_EQ(len, 8 + n + total);
  EXPECT_INT_EQ(bytes[8], '{');
  /* Compact JSON, then spaces up to the data. */
  at = bytes + 8 + n;
  while (at > bytes + 8 && at[-1] == ' ')
    at--;
  EXPECT_INT_EQ(at[-1], '}');
  EXPECT_TRUE(bytes + 8 + n - at < 8);
  EXPECT_STR_CONTAINS((const char *)bytes + 8,
                      "{\"__metadata__\":{\"step\":\"42\",\"format\":\"pt\"},"
                      "\"layer.0.weight\":{\"dtype\":\"F32\",\"shape\":[2,3],"
                      "\"data_offsets\":[0,24]},");
  EXPECT_STR_CONTAINS((const char *)bytes + 8,
                      "\"scale\":{\"dtype\":\"F64\",\"shape\":[],"
                      "\"data_offsets\":[29,37]}");
  /* The data: the tensors in the order given, back to back. */
  at = bytes + 8 + n;
  for (size_t i = 0; i < NSET; i++) {
    if (t[i].bytes > 0 && memcmp(at, t[i].data, t[i].bytes) != 0)
      test_fail(__FILE__, __LINE__, "data of '%s' is not at %zu", t[i].name,
                (size_t)(at - bytes));
    at += t[i].bytes;
  }
  free(bytes);
}

/* Modes: a new file is 0644 (not mkstemp's 0600), a replaced one keeps
 * its own. */
TEST(st_mode)
{
  const char *path = path_of("mode.safetensors");
  bt_st_tensor_t t[NSET];
  struct stat st;
  bt_error_t err;

  make_set(t);
  EXPECT_STATUS(bt_st_save(path, t, 1, NULL, &err), BT_OK, &err);
  ASSERT_INT_EQ(stat(path, &st), 0);
  EXPECT_INT_EQ(st.st_mode & 0777, 0644);
  ASSERT_INT_EQ(chmod(path, 0600), 0);
  EXPECT_STATUS(bt_st_save(path, t, 2, NULL, &err), BT_OK, &err);
  ASSERT_INT_EQ(stat(path, &st), 0);
  EXPECT_INT_EQ(st.st_mode & 0777, 0600);
}

/* ---- interoperability --------------------------------------------------- */

TEST(st_known_good)
{
  static const unsigned char file[] = {
      54, 0, 0, 0, 0, 0, 0, 0,
      '{', '"', 'a', '"', ':', '{', '"', 'd', 't', 'y', 'p', 'e', '"', ':',
      '"', 'F', '3', '2', '"', ',', '"', 's', 'h', 'a', 'p', 'e', '"', ':',
      '[', '2', ']', ',', '"', 'd', 'a', 't', 'a', '_', 'o', 'f', 'f', 's',
      'e', 't', 's', '"', ':', '[', '0', ',', '8', ']', '}', '}',
      0x00, 0x00, 0xc0, 0x3f, /* 1.5f */
      0x00, 0x00, 0x00, 0xc0, /* -2.0f */
  };
  const char *path = path_of("known.safetensors");
  bt_st_file_t *f = NULL;
  bt_st_tensor_t t;
  bt_error_t err;
  float v[2];

  ASSERT_INT_EQ(sizeof file, 8 + 54 + 8);
  ASSERT_TRUE(write_bytes(path, file, sizeof file));
  EXPECT_STATUS(bt_st_load(path, &f, &err), BT_OK, &err);
  ASSERT_TRUE(f != NULL);
  ASSERT_INT_EQ(bt_st_count(f), 1);
  EXPECT_STATUS(bt_st_find(f, "a", &t), BT_OK, NULL);
  EXPECT_INT_EQ(t.dtype, BT_ST_F32);
  EXPECT_INT_EQ(t.ndim, 1);
  EXPECT_INT_EQ(t.shape[0], 2);
  EXPECT_INT_EQ(t.bytes, 8);
  memcpy(v, t.data, sizeof v);
  EXPECT_TRUE(v[0] == 1.5f && v[1] == -2.0f);
  EXPECT_INT_EQ(bt_st_metadata_count(f), 0);
  bt_st_close(f);
}

/* As other writers make them: metadata, padding, keys in any order, extra
 * keys, tensors listed out of data order, and an F32 at an odd offset. */
TEST(st_foreign_layout)
{
  const char *path = make_file(
      "foreign.safetensors",
      "{\"b\":{\"shape\":[1],\"dtype\":\"F32\",\"data_offsets\":[3,7],"
      "\"extra\":true},"
      " \"__metadata__\" : {\"format\":\"pt\"},"
      "\"a\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[0,3]}}     ",
      7);
  bt_st_file_t *f = NULL;
  bt_st_tensor_t t;
  bt_error_t err;
  unsigned char want[4] = {3, 4, 5, 6};

  EXPECT_STATUS(bt_st_load(path, &f, &err), BT_OK, &err);
  ASSERT_TRUE(f != NULL);
  ASSERT_INT_EQ(bt_st_count(f), 2);
  t = bt_st_get(f, 0);
  EXPECT_TRUE(strcmp(t.name, "a") == 0);
  t = bt_st_get(f, 1);
  EXPECT_TRUE(strcmp(t.name, "b") == 0);
  EXPECT_INT_EQ((uintptr_t)t.data % 64, 0);
  EXPECT_TRUE(memcmp(t.data, want, 4) == 0);
  EXPECT_TRUE(strcmp(bt_st_metadata(f, "format"), "pt") == 0);
  bt_st_close(f);
}

/* ---- malformed files ---------------------------------------------------- */

#define A_OK "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}"

TEST(st_bad_truncated)
{
  const char *full = path_of("full.safetensors");
  const char *cut = path_of("cut.safetensors");
  unsigned char *bytes;
  bt_st_tensor_t t[NSET];
  size_t len = 0, n;
  bt_error_t err;

  make_set(t);
  EXPECT_STATUS(bt_st_save(full, t, NSET, set_meta, &err), BT_OK, &err);
  bytes = read_bytes(full, &len);
  ASSERT_TRUE(bytes != NULL);
  n = bytes[0] | (size_t)bytes[1] << 8;
  size_t cuts[] = {0, 1, 7, 8, 9, 8 + n / 2, 8 + n - 1, 8 + n, 8 + n + 1,
                   len - 1};
  for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
    ASSERT_TRUE(write_bytes(cut, bytes, cuts[i]));
    expect_load_fails(cut, BT_EPARSE, NULL, NULL);
  }
  ASSERT_TRUE(write_bytes(cut, bytes, 5));
  expect_load_fails(cut, BT_EPARSE, "is 5 bytes, too short", NULL);
  free(bytes);
  /* A zero-length header is no JSON. */
  expect_load_fails(make_file("empty.safetensors", "", 0), BT_EPARSE,
                    "not valid UTF-8 JSON", NULL);
}

TEST(st_bad_header_length)
{
  const char *path = path_of("len.safetensors");
  unsigned char buf[24] = {100, 0, 0, 0, 0, 0, 0, 0, '{', '}'};

  ASSERT_TRUE(write_bytes(path, buf, sizeof buf));
  expect_load_fails(path, BT_EPARSE, "header length 100", "past the end");
  /* 2^40: absurd, whatever the file's size. */
  memset(buf, 0, 8);
  buf[5] = 1;
  ASSERT_TRUE(write_bytes(path, buf, sizeof buf));
  expect_load_fails(path, BT_EPARSE, "limit", NULL);
}

TEST(st_bad_not_json)
{
  expect_load_fails(make_file("json1.safetensors", "{\"a\":", 0), BT_EPARSE,
                    "not valid UTF-8 JSON", NULL);
  expect_load_fails(make_file("json2.safetensors", "{} x", 0), BT_EPARSE,
                    "not valid UTF-8 JSON", NULL);
  expect_load_fails(make_file("json3.safetensors", "{\"\xff\":1}", 0),
                    BT_EPARSE, "not valid UTF-8 JSON", NULL);
  expect_load_fails(make_file("json4.safetensors", "        ", 0), BT_EPARSE,
                    "not valid UTF-8 JSON", NULL);
}

TEST(st_bad_not_object)
{
  expect_load_fails(make_file("arr.safetensors", "[1,2]", 0), BT_EPARSE,
                    "not an object", NULL);
  expect_load_fails(make_file("str.safetensors", "\"x\"", 0), BT_EPARSE,
                    "not an object", NULL);
  expect_load_fails(make_file("entry.safetensors", "{\"a\":[1]}", 0),
                    BT_EPARSE, "tensor 'a'", "not an object");
  expect_load_fails(
      make_file("meta.safetensors", "{\"__metadata__\":{\"k\":1}}", 0),
      BT_EPARSE, "__metadata__", "'k'");
  expect_load_fails(
      make_file("meta2.safetensors", "{\"__metadata__\":[\"k\"]}", 0),
      BT_EPARSE, "__metadata__", NULL);
}

TEST(st_bad_dtype)
{
  expect_load_fails(
      make_file("dtype.safetensors",
                "{\"w\":{\"dtype\":\"F31\",\"shape\":[2],"
                "\"data_offsets\":[0,8]}}",
                8),
      BT_EPARSE, "tensor 'w'", "unknown dtype 'F31'");
  expect_load_fails(
      make_file("nodtype.safetensors",
                "{\"w\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8),
      BT_EPARSE, "tensor 'w'", "dtype");
}

TEST(st_bad_shape)
{
  expect_load_fails(
      make_file("neg.safetensors",
                "{\"w\":{\"dtype\":\"F32\",\"shape\":[-2],"
                "\"data_offsets\":[0,8]}}",
                8),
      BT_EPARSE, "tensor 'w'", "shape[0]");
  expect_load_fails(
      make_file("real.safetensors",
                "{\"w\":{\"dtype\":\"F32\",\"shape\":[1,2.0],"
                "\"data_offsets\":[0,8]}}",
                8),
      BT_EPARSE, "tensor 'w'", "shape[1]");
  expect_load_fails(
      make_file("noshape.safetensors",
                "{\"w\":{\"dtype\":\"F32\",\"shape\":2,"
                "\"data_offsets\":[0,8]}}",
                8),
      BT_EPARSE, "tensor 'w'", "shape");
  expect_load_fails(
      make_file("dims.safetensors",
                "{\"w\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                "\"data_offsets\":[0,1]}}",
                1),
      BT_EPARSE, "tensor 'w'", "9 dimensions");
}

TEST(st_bad_offsets)
{
  expect_load_fails(
      make_file("rev.safetensors",
                "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],"
                "\"data_offsets\":[8,0]}}",
                8),
      BT_EPARSE, "tensor 'w'", "end before they begin");
  expect_load_fails(
      make_file("past.safetensors",
                "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],"
                "\"data_offsets\":[0,16]}}",
                8),
      BT_EPARSE, "tensor 'w'", "past the end of the data (8 bytes)");
  expect_load_fails(
      make_file("one.safetensors",
                "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],"
                "\"data_offsets\":[0]}}",
                8),
      BT_EPARSE, "tensor 'w'", "[begin, end]");
  expect_load_fails(
      make_file("negoff.safetensors",
                "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],"
                "\"data_offsets\":[-8,0]}}",
                8),
      BT_EPARSE, "tensor 'w'", "[begin, end]");
}

TEST(st_bad_size)
{
  expect_load_fails(
      make_file("size.safetensors",
                "{\"w\":{\"dtype\":\"F32\",\"shape\":[3],"
                "\"data_offsets\":[0,8]}}",
                8),
      BT_EPARSE, "tensor 'w'", "shape [3] of F32 needs 12");
  /* A product that overflows 64 bits is no match either. */
  expect_load_fails(
      make_file("huge.safetensors",
                "{\"w\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296],"
                "\"data_offsets\":[0,0]}}",
                0),
      BT_EPARSE, "tensor 'w'", "needs");
}

TEST(st_bad_overlap)
{
  expect_load_fails(
      make_file("overlap.safetensors",
                "{" A_OK ",\"b\":{\"dtype\":\"F32\",\"shape\":[2],"
                "\"data_offsets\":[4,12]}}",
                12),
      BT_EPARSE, "tensor 'b'", "overlaps tensor 'a'");
  /* An empty tensor inside another one overlaps it too. */
  expect_load_fails(
      make_file("overlap0.safetensors",
                "{" A_OK ",\"e\":{\"dtype\":\"F32\",\"shape\":[0],"
                "\"data_offsets\":[4,4]}}",
                8),
      BT_EPARSE, "tensor 'e'", "overlaps tensor 'a'");
}

TEST(st_bad_hole)
{
  expect_load_fails(
      make_file("hole.safetensors",
                "{" A_OK ",\"b\":{\"dtype\":\"F32\",\"shape\":[2],"
                "\"data_offsets\":[12,20]}}",
                20),
      BT_EPARSE, "[8, 12)", "tensor 'b'");
  expect_load_fails(make_file("lead.safetensors",
                              "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],"
                              "\"data_offsets\":[4,12]}}",
                              12),
                    BT_EPARSE, "[0, 4)", "tensor 'a'");
  expect_load_fails(make_file("trail.safetensors", "{" A_OK "}", 12),
                    BT_EPARSE, "[8, 12)", "at the end");
}

TEST(st_bad_duplicate)
{
  expect_load_fails(make_file("dup.safetensors", "{" A_OK "," A_OK "}", 8),
                    BT_EPARSE, "twice", "\"a\"");
}

TEST(st_bad_missing_or_not_a_file)
{
  expect_load_fails(path_of("does-not-exist.safetensors"), BT_ENOENT,
                    "cannot open", NULL);
  path_of("x");
  expect_load_fails(dir, BT_EIO, "not a regular file", NULL);
  EXPECT_STATUS(bt_st_load(NULL, NULL, NULL), BT_EINVAL, NULL);
}

/* ---- the writer's checks and atomicity ---------------------------------- */

/* A save that fails validation names the tensor, writes nothing and leaves
 * an existing file as it was. */
TEST(st_save_invalid)
{
  static const int64_t s2[] = {2}, sneg[] = {-1},
                       s9[] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
  const char *path = path_of("keep.safetensors");
  unsigned char *before, *after;
  size_t nb = 0, na = 0;
  bt_st_tensor_t good[NSET], t[2];
  const char *bad_meta[] = {"k", NULL};
  const char *dup_meta[] = {"k", "1", "k", "2", NULL};
  bt_error_t err;
  struct {
    bt_st_tensor_t t;
    const char *needle;
  } cases[] = {
      {tensor("w", BT_ST_F32, 1, s2, f32, 12), "'w' has bytes = 12"},
      {tensor("w", 77, 1, s2, f32, 8), "'w' has dtype 77"},
      {tensor("w", BT_ST_F32, 9, s9, f32, 4), "'w' has ndim 9"},
      {tensor("w", BT_ST_F32, -1, s2, f32, 4), "'w' has ndim -1"},
      {tensor("w", BT_ST_F32, 1, sneg, f32, 0), "'w' has shape [-1]"},
      {tensor("w", BT_ST_F32, 1, s2, NULL, 8), "'w' has 8 bytes but data"},
      {tensor(NULL, BT_ST_F32, 1, s2, f32, 8), "tensor 1 has no name"},
      {tensor("", BT_ST_F32, 1, s2, f32, 8), "tensor 1 has no name"},
      {tensor("__metadata__", BT_ST_F32, 1, s2, f32, 8), "reserves"},
      {tensor("\xc3(", BT_ST_F32, 1, s2, f32, 8), "UTF-8"},
      {tensor("a", BT_ST_F32, 1, s2, f32, 8), "'a' is given twice"},
  };

  make_set(good);
  ASSERT_INT_EQ(bt_st_save(path, good, NSET, set_meta, &err), BT_OK);
  before = read_bytes(path, &nb);
  ASSERT_TRUE(before != NULL);
  t[0] = tensor("a", BT_ST_F32, 1, s2, f32, 8);
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    t[1] = cases[i].t;
    bt_error_clear(&err);
    EXPECT_STATUS(bt_st_save(path, t, 2, NULL, &err), BT_EINVAL, &err);
    EXPECT_STR_CONTAINS(err.message, cases[i].needle);
  }
  EXPECT_STATUS(bt_st_save(path, t, 1, bad_meta, &err), BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "metadata key 'k' has no value");
  EXPECT_STATUS(bt_st_save(path, t, 1, dup_meta, &err), BT_EINVAL, &err);
  EXPECT_STR_CONTAINS(err.message, "'k' is given twice");
  EXPECT_STATUS(bt_st_save(path, NULL, 1, NULL, &err), BT_EINVAL, &err);
  EXPECT_STATUS(bt_st_save(NULL, t, 1, NULL, &err), BT_EINVAL, &err);

  after = read_bytes(path, &na);
  ASSERT_TRUE(after != NULL);
  EXPECT_TRUE(na == nb && memcmp(before, after, nb) == 0);
  EXPECT_INT_EQ(count_tmp(), 0);
  free(before);
  free(after);
}

/* The rename fails (the target is a directory): a clear error, the
 * directory untouched, no temporary file left behind. */
TEST(st_save_target_is_directory)
{
  const char *target = path_of("a-directory");
  bt_st_tensor_t t[NSET];
  struct stat st;
  bt_error_t err;

  make_set(t);
  ASSERT_INT_EQ(mkdir(target, 0755), 0);
  bt_error_clear(&err);
  EXPECT_STATUS(bt_st_save(target, t, NSET, set_meta, &err), BT_EIO, &err);
  EXPECT_STR_CONTAINS(err.message, target);
  EXPECT_STR_CONTAINS(err.message, "is not a directory");
  EXPECT_INT_EQ(count_tmp(), 0);
  ASSERT_INT_EQ(stat(target, &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
}

TEST(st_save_missing_directory)
{
  const char *path = path_of("no-such-dir/x.safetensors");
  bt_st_tensor_t t[NSET];
  bt_error_t err;

  make_set(t);
  bt_error_clear(&err);
  EXPECT_STATUS(bt_st_save(path, t, NSET, NULL, &err), BT_ENOENT, &err);
  EXPECT_STR_CONTAINS(err.message, "no-such-dir");
  EXPECT_STR_CONTAINS(err.message, "exists and is writable");
}

/* A directory the process cannot write (meaningless as root, who can). */
TEST(st_save_unwritable_directory)
{
  const char *sub = path_of("read-only");
  char path[600];
  bt_st_tensor_t t[NSET];
  bt_error_t err;
  DIR *d;
  int entries = 0;

  if (geteuid() == 0) {
    printf("  skipped: root writes anywhere\n");
    return;
  }
  make_set(t);
  ASSERT_INT_EQ(mkdir(sub, 0555), 0);
  snprintf(path, sizeof path, "%s/x.safetensors", sub);
  bt_error_clear(&err);
  EXPECT_STATUS(bt_st_save(path, t, NSET, NULL, &err), BT_EIO, &err);
  EXPECT_STR_CONTAINS(err.message, "exists and is writable");
  d = opendir(sub);
  ASSERT_TRUE(d != NULL);
  while (readdir(d) != NULL)
    entries++;
  closedir(d);
  EXPECT_INT_EQ(entries, 2); /* . and .. */
  chmod(sub, 0755);
}

/* ---- allocation failures ------------------------------------------------ */

static bt_status
op_save_load(void)
{
  const char *path = path_of("oom.safetensors");
  bt_st_tensor_t t[NSET];
  bt_st_file_t *f = NULL;
  bt_error_t err;
  bt_status rc;

  make_set(t);
  rc = bt_st_save(path, t, NSET, set_meta, &err);
  if (rc == BT_OK)
    rc = bt_st_load(path, &f, &err);
  if (rc == BT_OK && bt_st_count(f) != NSET)
    rc = BT_EIO;
  if (rc != BT_OK && rc != err.status)
    rc = BT_EINVAL; /* the detail must repeat the status */
  bt_st_close(f);
  return rc;
}

TEST(st_oom_save_load)
{
  long n;

  for (n = 0; n < 1000; n++) {
    bt_status rc;

    failalloc_fail_at(n);
    rc = op_save_load();
    failalloc_fail_at(-1);
    if (rc == BT_OK)
      break;
    if (rc != BT_ENOMEM) {
      test_fail(__FILE__, __LINE__, "allocation %ld failed, got %s", n,
                bt_status_name(rc));
      return;
    }
    if (count_tmp() != 0) {
      test_fail(__FILE__, __LINE__, "allocation %ld left a temporary file",
                n);
      return;
    }
  }
  printf("  save+load: %ld allocation failures, each BT_ENOMEM\n", n);
  EXPECT_TRUE(n > 4 && n < 1000);
}
