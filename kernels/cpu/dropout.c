/* dropout with a counter-based generator, fp32.
 *
 * Philox4x32-10 (Salmon, Moraes, Dror, Shaw: "Parallel random numbers: as
 * easy as 1, 2, 3", SC'11) maps (counter, key) to 128 random bits with no
 * state, so the mask of element (row, col) is a pure function of the key
 * and counter kernels.h lays out, and any split of the batch, any order of
 * the work and a recomputation all draw the same mask.  The backward
 * redraws it rather than storing it. */
#include <string.h>

#include "kernels.h"

/* ---- kernels ------------------------------------------------------------ */

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u /* golden ratio */
#define PHILOX_W1 0xBB67AE85u /* sqrt(3) - 1 */

static inline void
philox_round(uint32_t c[4], const uint32_t k[2])
{
  uint64_t p0 = (uint64_t)PHILOX_M0 * c[0];
  uint64_t p1 = (uint64_t)PHILOX_M1 * c[2];
  uint32_t n0 = (uint32_t)(p1 >> 32) ^ c[1] ^ k[0];
  uint32_t n2 = (uint32_t)(p0 >> 32) ^ c[3] ^ k[1];

  c[0] = n0;
  c[1] = (uint32_t)p1;
  c[2] = n2;
  c[3] = (uint32_t)p0;
}

static inline void
philox4x32_10(uint32_t out[4], const uint32_t ctr[4], const uint32_t key[2])
{
  uint32_t c[4] = {ctr[0], ctr[1], ctr[2], ctr[3]};
  uint32_t k[2] = {key[0], key[1]};

  for (int r = 0; r < 10; r++) {
    if (r > 0) {
      k[0] += PHILOX_W0;
      k[1] += PHILOX_W1;
    }
    philox_round(c, k);
  }
  memcpy(out, c, sizeof(c));
}

/* y = x * mask * scale, one Philox block per 4 columns. */
static void
dropout(float *y, const float *x, size_t N, size_t D, float p, float scale,
        uint64_t seed, uint32_t step, uint32_t layer, size_t row_offset)
{
  const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};

  for (size_t r = 0; r < N; r++) {
    const float *xr = x + r * D;
    float *yr = y + r * D;
    uint32_t ctr[4] = {0, (uint32_t)(row_offset + r), step, layer};
    for (size_t c0 = 0; c0 < D; c0 += 4) {
      uint32_t w[4];
      ctr[0] = (uint32_t)(c0 >> 2);
      philox4x32_10(w, ctr, key);
      size_t n = D - c0 < 4 ? D - c0 : 4;
      for (size_t i = 0; i < n; i++) {
        float u = (float)(w[i] >> 8) * 0x1.0p-24f;
        yr[c0 + i] = u >= p ? xr[c0 + i] * scale : 0.0f;
      }
    }
  }
}

/* ---- launchers ---------------------------------------------------------- */

void
bt__philox4x32_10(uint32_t out[4], const uint32_t ctr[4],
                  const uint32_t key[2])
{
  philox4x32_10(out, ctr, key);
}

static bt_status
check_args(size_t N, size_t D, float p, size_t row_offset)
{
  size_t t;

  if (N == 0 || D == 0 || !(p >= 0.0f && p < 1.0f))
    return BT_EINVAL;
  if (!bt__mul_fits(N, D, &t) || !bt__mul_fits(t, sizeof(float), &t))
    return BT_ERANGE;
  /* Global rows and column blocks must fit the counter's 32-bit words. */
  if ((uint64_t)row_offset > UINT32_MAX ||
      (uint64_t)N > (uint64_t)UINT32_MAX + 1 - (uint64_t)row_offset ||
      (uint64_t)(D - 1) / 4 > UINT32_MAX)
    return BT_ERANGE;
  return BT_OK;
}

static bt_status
dropout_launch(float *y, const float *x, size_t N, size_t D, float p,
               uint64_t seed, uint32_t step, uint32_t layer,
               size_t row_offset)
{
  bt_status st;

  if (y == NULL || x == NULL)
    return BT_EINVAL;
  if ((st = check_args(N, D, p, row_offset)) != BT_OK)
    return st;
  if (p == 0.0f) { /* every u >= 0: the identity, without drawing */
    if (y != x)
      memmove(y, x, N * D * sizeof(float));
    return BT_OK;
  }
  dropout(y, x, N, D, p, 1.0f / (1.0f - p), seed, step, layer, row_offset);
  return BT_OK;
}

bt_status
bt__dropout_fwd(float *y, const float *x, size_t N, size_t D, float p,
                uint64_t seed, uint32_t step, uint32_t layer,
                size_t row_offset)
{
  return dropout_launch(y, x, N, D, p, seed, step, layer, row_offset);
}

/* The backward of y = x * m * s is dx = dy * m * s: the same operation on
 * dy, with the same mask. */
bt_status
bt__dropout_bwd(float *dx, const float *dy, size_t N, size_t D, float p,
                uint64_t seed, uint32_t step, uint32_t layer,
                size_t row_offset)
{
  return dropout_launch(dx, dy, N, D, p, seed, step, layer, row_offset);
}
