/* baton: byte-level text data for the GPT model (internal).
 *
 * Tokens are bytes: V = 256, token id = the byte's value 0..255, with no
 * decoding (UTF-8 text becomes its bytes).  The default corpus is the
 * English fortune cookies of Debian's `fortunes` package (installed by
 * scripts/deps.sh --demo; no download at run time), a directory of plain
 * text files such as `fortunes`, `literature`, `computers`, each beside an
 * index `NAME.dat` and a symlink `NAME.u8`.
 *
 * Loading a directory reads every regular file in it whose name has no
 * '.', in strcmp order of the names, concatenated (no separator; fortune
 * files end with a newline).  Symlinks, subdirectories and names with a
 * '.' (*.dat, *.u8, README.txt, ...) are skipped, so the same directory
 * always gives the same bytes.
 *
 * Split (bt__text_split): the last tenth of the bytes, at least T + 1 of
 * them, is validation; the rest is training data.
 *
 * Batches (bt__text_batch): counter-based, so batch `index` of a seed is
 * the same whatever was drawn before it, on every platform. */
#ifndef BATON_MODEL_TEXT_H
#define BATON_MODEL_TEXT_H

#include <stddef.h>
#include <stdint.h>

#include "baton/status.h"

/* The vocabulary of byte-level tokens. */
#define BT__TEXT_VOCAB 256

/* A loaded corpus: data [n] raw bytes (malloc'd, owned, n >= 1 after a
 * successful load) and how many files made it. */
struct bt__text {
  uint8_t *data;
  size_t n;
  size_t nfiles;
};

/* The default corpus: "/usr/share/games/fortunes". */
const char *bt__text_default_path(void);

/* Reads path, a regular file or a directory (see above), into *out.
 * Errors, with the detail in err, leaving *out zeroed:
 *   BT_EINVAL  a NULL argument;
 *   BT_ENOENT  path does not exist (the message says to install the Debian
 *              package fortunes or to pass --data FILE);
 *   BT_EINVAL  path is neither a file nor a directory, or the corpus is
 *              empty (an empty file, or a directory without data files);
 *   BT_EIO     a file or the directory could not be read;
 *   BT_ERANGE  the total size overflows size_t;
 *   BT_ENOMEM. */
bt_status bt__text_load(const char *path, struct bt__text *out,
                        bt_error_t *err);

/* Frees t's bytes and zeroes it; NULL and a zeroed struct are accepted. */
void bt__text_free(struct bt__text *t);

/* The train / validation split of data [n] for windows of T + 1 bytes:
 * validation is the last max(n / 10, T + 1) bytes, train the n - nval
 * before them; the out pointers point into data.  BT_EINVAL (detail in
 * err) for NULL arguments, T == 0, or n too small for both parts to hold
 * a window (n < 2 (T + 1)). */
bt_status bt__text_split(const uint8_t *data, size_t n, size_t T,
                         const uint8_t **train, size_t *ntrain,
                         const uint8_t **val, size_t *nval, bt_error_t *err);

/* Batch `index` of B windows of T + 1 consecutive bytes of data [n]:
 * window b starts at splitmix64(seed, index * B + b) mod (n - T), so every
 * start in [0, n - T) can be drawn; x [B,T] = window[0 .. T), y [B,T] =
 * window[1 .. T] (y is x shifted by one: the next byte).  Deterministic in
 * (seed, index, b).  BT_EINVAL for NULL pointers, B or T == 0, n < T + 1,
 * or B * T overflowing.  Allocation free, thread safe. */
bt_status bt__text_batch(const uint8_t *data, size_t n, size_t B, size_t T,
                         uint64_t seed, uint64_t index, int32_t *x, int32_t *y);

#endif /* BATON_MODEL_TEXT_H */
