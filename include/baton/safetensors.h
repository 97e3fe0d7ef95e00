/* baton: safetensors files (the Hugging Face format), for checkpoints and
 * dumps.
 *
 * Layout: an 8-byte little-endian u64 N, then N bytes of UTF-8 JSON: an
 * object mapping each tensor name to {"dtype": "F32", "shape": [2, 3],
 * "data_offsets": [begin, end]}, offsets relative to the byte buffer that
 * follows the header, plus an optional "__metadata__" object of string to
 * string; then the raw little-endian tensor data.  Tensor data is taken and
 * returned in the host's byte order, which must be little-endian (x86-64,
 * aarch64), as the format is.
 *
 * Files are written atomically (a temporary file, fsync, rename) and read
 * with every field checked: a file either loads whole and consistent or the
 * load fails with a message naming the file and the tensor. */
#ifndef BATON_SAFETENSORS_H
#define BATON_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "baton/export.h"
#include "baton/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* XX(NAME, value, element bytes): the format's dtype strings, each with a
 * stable value (0 is no dtype). */
#define BT_ST_DTYPE_MAP(XX)                                                   \
  XX(F32, 1, 4)                                                               \
  XX(F64, 2, 8)                                                               \
  XX(F16, 3, 2)                                                               \
  XX(BF16, 4, 2)                                                              \
  XX(I8, 5, 1)                                                                \
  XX(I16, 6, 2)                                                               \
  XX(I32, 7, 4)                                                               \
  XX(I64, 8, 8)                                                               \
  XX(U8, 9, 1)                                                                \
  XX(U16, 10, 2)                                                              \
  XX(U32, 11, 4)                                                              \
  XX(U64, 12, 8)                                                              \
  XX(BOOL, 13, 1)                                                             \
  XX(F8_E4M3, 14, 1)                                                          \
  XX(F8_E5M2, 15, 1)

typedef enum bt_st_dtype {
#define BT__ST_DTYPE_ENUM(name, value, bytes) BT_ST_##name = value,
  BT_ST_DTYPE_MAP(BT__ST_DTYPE_ENUM)
#undef BT__ST_DTYPE_ENUM
} bt_st_dtype;

/* Most dimensions a tensor may have here (the format has no limit). */
#define BT_ST_MAX_DIMS 8

/* Bytes per element of a dtype; 0 for a value that is not a bt_st_dtype. */
BT_API size_t bt_st_dtype_size(int32_t dtype);

/* The format's name of a dtype ("F32", "BF16"); NULL for an unknown value. */
BT_API const char *bt_st_dtype_name(int32_t dtype);

/* One tensor.  shape[0..ndim) are its dimensions (ndim 0 is a scalar of
 * one element; a 0 dimension makes an empty tensor); bytes must be
 * product(shape) * bt_st_dtype_size(dtype). */
typedef struct bt_st_tensor {
  const char *name;
  int32_t dtype; /* a bt_st_dtype */
  int32_t ndim;  /* 0 .. BT_ST_MAX_DIMS */
  int64_t shape[BT_ST_MAX_DIMS];
  const void *data; /* bytes of row-major data; may be NULL if bytes == 0 */
  size_t bytes;
} bt_st_tensor_t;

/* Writes tensors[0..count) and metadata to path, atomically: the bytes go
 * to a temporary file beside it (path + ".tmp.XXXXXX"), which is fsynced
 * and then renamed over path, so path holds either its old content or the
 * complete new file, never a partial one; on any failure the temporary file
 * is removed.  A new file gets mode 0644, a replaced one keeps its mode.
 *
 * metadata is NULL or a NULL-terminated list of key, value strings
 * ({"step", "100", "model", "gpt2", NULL}), stored as "__metadata__".
 * Tensors are stored in the order given, contiguously, and the header is
 * padded with spaces to a multiple of 8 bytes; the same input always gives
 * the same bytes.  (Tensor data in a loaded file is always aligned, see
 * bt_st_load, so the order only matters to other readers that map the
 * file: giving tensors by decreasing element size keeps them aligned.)
 *
 * Errors: BT_EINVAL, naming the tensor, for a NULL or empty name, the name
 * "__metadata__", a name or metadata string that is not UTF-8, a name
 * given twice, an unknown dtype, ndim outside 0..BT_ST_MAX_DIMS, a negative
 * dimension, bytes != product(shape) * element size, NULL data with bytes
 * > 0, or a metadata key without a value or given twice (nothing is written
 * then); BT_ENOENT when the directory does not exist; BT_EIO when the file
 * cannot be created, written, synced or renamed (e.g. path is a
 * directory); BT_ENOMEM.  Reentrant; reads the caller's data only during
 * the call. */
BT_API bt_status bt_st_save(const char *path, const bt_st_tensor_t *tensors,
                            size_t count, const char *const *metadata,
                            bt_error_t *err);

/* A loaded file: immutable, so any number of threads may read it at once. */
typedef struct bt_st_file bt_st_file_t;

/* Reads the whole file at path into memory and checks it: the length
 * prefix (present, at most 100 MB, within the file), the header (valid
 * UTF-8 JSON, an object, no name twice, "__metadata__" an object of
 * strings), every tensor (a known dtype, a shape of at most BT_ST_MAX_DIMS
 * non-negative integers, data_offsets [begin, end] with begin <= end <= the
 * data size and end - begin = product(shape) * element size), and that the
 * tensors cover the data buffer exactly, without overlap or holes.  Keys
 * other than dtype, shape and data_offsets in a tensor's entry are ignored.
 *
 * Every tensor's data is copied into one buffer owned by the file, each
 * tensor starting on a 64-byte boundary whatever its offset in the file,
 * so data may be read in place as its type.  Pointers (names, data,
 * metadata) stay valid until bt_st_close.
 *
 * On success *out is the file; on failure *out is NULL and err names the
 * file and, where one is at fault, the tensor: BT_ENOENT for a missing
 * file, BT_EIO for one that cannot be read (or is not a regular file),
 * BT_EPARSE for a malformed one, BT_ENOMEM, BT_EINVAL for NULL
 * arguments. */
BT_API bt_status bt_st_load(const char *path, bt_st_file_t **out,
                            bt_error_t *err);

/* Number of tensors; 0 for NULL. */
BT_API size_t bt_st_count(const bt_st_file_t *f);

/* Tensor i, 0 <= i < bt_st_count(f), in the order of their data in the
 * file (by data_offsets, ties in header order), which for a file written
 * by bt_st_save is the order it was given.  An out-of-range i gives a
 * tensor with name NULL and dtype 0. */
BT_API bt_st_tensor_t bt_st_get(const bt_st_file_t *f, size_t i);

/* Looks a tensor up by name (O(log n)).  BT_OK and *out filled (out may be
 * NULL to test presence), BT_ENOENT when there is none, BT_EINVAL for a
 * NULL f or name. */
BT_API bt_status bt_st_find(const bt_st_file_t *f, const char *name,
                            bt_st_tensor_t *out);

/* The metadata value stored under key, or NULL when there is none. */
BT_API const char *bt_st_metadata(const bt_st_file_t *f, const char *key);

/* Number of metadata entries; 0 for NULL. */
BT_API size_t bt_st_metadata_count(const bt_st_file_t *f);

/* Metadata entry i in the file's order: BT_OK with *key and *value set
 * (either pointer may be NULL), BT_ERANGE for an i out of range, BT_EINVAL
 * for a NULL f. */
BT_API bt_status bt_st_metadata_at(const bt_st_file_t *f, size_t i,
                                   const char **key, const char **value);

/* Frees the file and everything it returned.  NULL is accepted. */
BT_API void bt_st_close(bt_st_file_t *f);

#ifdef __cplusplus
}
#endif

#endif /* BATON_SAFETENSORS_H */
