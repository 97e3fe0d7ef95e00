/* Plain-C references of the CPU kernels: the textbook loops, one output
 * element at a time, for tests and benchmarks to compare against.  Built
 * into those programs only, not into the library. */
#include <math.h>

#include "kernels.h"

void
bt__ref_linear_fwd(float *y, const float *x, const float *w, const float *b,
                   size_t N, size_t IN, size_t OUT)
{
  for (size_t r = 0; r < N; r++)
    for (size_t o = 0; o < OUT; o++) {
      float acc = b != NULL ? b[o] : 0.0f;
      for (size_t i = 0; i < IN; i++)
        acc += x[r * IN + i] * w[o * IN + i];
      y[r * OUT + o] = acc;
    }
}

/* dx written; dw and db (if not NULL) accumulated. */
void
bt__ref_linear_bwd(float *dx, float *dw, float *db, const float *dy,
                   const float *x, const float *w, size_t N, size_t IN,
                   size_t OUT)
{
  if (dx != NULL)
    for (size_t r = 0; r < N; r++)
      for (size_t i = 0; i < IN; i++) {
        float acc = 0.0f;
        for (size_t o = 0; o < OUT; o++)
          acc += dy[r * OUT + o] * w[o * IN + i];
        dx[r * IN + i] = acc;
      }
  if (dw != NULL)
    for (size_t o = 0; o < OUT; o++)
      for (size_t i = 0; i < IN; i++) {
        float acc = 0.0f;
        for (size_t r = 0; r < N; r++)
          acc += dy[r * OUT + o] * x[r * IN + i];
        dw[o * IN + i] += acc;
      }
  if (db != NULL)
    for (size_t o = 0; o < OUT; o++) {
      float acc = 0.0f;
      for (size_t r = 0; r < N; r++)
        acc += dy[r * OUT + o];
      db[o] += acc;
    }
}

void
bt__ref_gelu_fwd(float *y, const float *x, size_t n)
{
  const float s = 0.7978845608028654f /* sqrt(2/pi) */;

  for (size_t i = 0; i < n; i++)
    y[i] = 0.5f * x[i] *
           (1.0f + tanhf(s * (x[i] + 0.044715f * x[i] * x[i] * x[i])));
}

void
bt__ref_gelu_bwd(float *dx, const float *dy, const float *x, size_t n)
{
  const float s = 0.7978845608028654f /* sqrt(2/pi) */;

  for (size_t i = 0; i < n; i++) {
    float u = s * (x[i] + 0.044715f * x[i] * x[i] * x[i]);
    float sech = 1.0f / coshf(u);
    float du = s * (1.0f + 3.0f * 0.044715f * x[i] * x[i]);
    dx[i] = dy[i] * (0.5f * (1.0f + tanhf(u)) + 0.5f * x[i] * sech * sech * du);
  }
}

void
bt__ref_layernorm_fwd(float *y, float *mean, float *rstd, const float *x,
                      const float *gamma, const float *beta, size_t N,
                      size_t D)
{
  for (size_t r = 0; r < N; r++) {
    float m = 0.0f, var = 0.0f;
    for (size_t i = 0; i < D; i++)
      m += x[r * D + i];
    m /= (float)D;
    for (size_t i = 0; i < D; i++)
      var += (x[r * D + i] - m) * (x[r * D + i] - m);
    var /= (float)D;
    float s = 1.0f / sqrtf(var + 1e-5f);
    for (size_t i = 0; i < D; i++)
      y[r * D + i] = gamma[i] * ((x[r * D + i] - m) * s) + beta[i];
    mean[r] = m;
    rstd[r] = s;
  }
}

void
bt__ref_layernorm_bwd(float *dx, float *dgamma, float *dbeta,
                      const float *dy, const float *x, const float *gamma,
                      const float *mean, const float *rstd, size_t N,
                      size_t D)
{
  for (size_t r = 0; r < N; r++) {
    float a = 0.0f, b = 0.0f;
    for (size_t i = 0; i < D; i++) {
      float xhat = (x[r * D + i] - mean[r]) * rstd[r];
      a += dy[r * D + i] * gamma[i];
      b += dy[r * D + i] * gamma[i] * xhat;
    }
    a /= (float)D;
    b /= (float)D;
    for (size_t i = 0; i < D; i++) {
      float xhat = (x[r * D + i] - mean[r]) * rstd[r];
      dgamma[i] += dy[r * D + i] * xhat;
      dbeta[i] += dy[r * D + i];
      dx[r * D + i] = rstd[r] * (dy[r * D + i] * gamma[i] - a - xhat * b);
    }
  }
}

void
bt__ref_residual_fwd(float *y, const float *a, const float *b, size_t n)
{
  for (size_t i = 0; i < n; i++)
    y[i] = a[i] + b[i];
}

void
bt__ref_residual_bwd(float *da, float *db, const float *dy, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    if (da != NULL)
      da[i] += dy[i];
    if (db != NULL)
      db[i] += dy[i];
  }
}

/* The softmax itself, then -log of the label's probability. */
float
bt__ref_xent_fwd(const float *logits, const int32_t *labels, size_t N,
                 size_t C, size_t total_rows)
{
  double loss = 0.0;

  for (size_t r = 0; r < N; r++) {
    const float *z = logits + r * C;
    float mx = z[0], sum = 0.0f;
    for (size_t i = 0; i < C; i++)
      if (z[i] > mx)
        mx = z[i];
    for (size_t i = 0; i < C; i++)
      sum += expf(z[i] - mx);
    float p = expf(z[labels[r]] - mx) / sum;
    loss += -logf(p);
  }
  return (float)(loss / (double)total_rows);
}

void
bt__ref_xent_bwd(float *dlogits, const float *logits, const int32_t *labels,
                 size_t N, size_t C, size_t total_rows)
{
  for (size_t r = 0; r < N; r++) {
    const float *z = logits + r * C;
    float mx = z[0], sum = 0.0f;
    for (size_t i = 0; i < C; i++)
      if (z[i] > mx)
        mx = z[i];
    for (size_t i = 0; i < C; i++)
      sum += expf(z[i] - mx);
    for (size_t i = 0; i < C; i++) {
      float p = expf(z[i] - mx) / sum;
      float onehot = (int32_t)i == labels[r] ? 1.0f : 0.0f;
      dlogits[r * C + i] = (p - onehot) / (float)total_rows;
    }
  }
}

void
bt__ref_sgd_update(float *w, const float *g, size_t n, float lr, float wd)
{
  for (size_t i = 0; i < n; i++)
    w[i] = w[i] - lr * (g[i] + wd * w[i]);
}

void
bt__ref_adamw_update(float *w, float *m, float *v, const float *g, size_t n,
                     float lr, float b1, float b2, float eps, float wd,
                     int64_t t)
{
  for (size_t i = 0; i < n; i++) {
    m[i] = b1 * m[i] + (1.0f - b1) * g[i];
    v[i] = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
    float mhat = m[i] / (1.0f - powf(b1, (float)t));
    float vhat = v[i] / (1.0f - powf(b2, (float)t));
    w[i] = w[i] - lr * (mhat / (sqrtf(vhat) + eps) + wd * w[i]);
  }
}

void
bt__ref_embedding_fwd(float *out, const int32_t *x, const float *wte,
                      const float *wpe, size_t B, size_t T, size_t C,
                      size_t t0)
{
  for (size_t b = 0; b < B; b++)
    for (size_t t = 0; t < T; t++)
      for (size_t c = 0; c < C; c++)
        out[(b * T + t) * C + c] =
            wte[(size_t)x[b * T + t] * C + c] + wpe[(t0 + t) * C + c];
}

/* Accumulates, rows in order b then t, as the kernel. */
void
bt__ref_embedding_bwd(float *dwte, float *dwpe, const float *dout,
                      const int32_t *x, size_t B, size_t T, size_t C,
                      size_t t0)
{
  for (size_t b = 0; b < B; b++)
    for (size_t t = 0; t < T; t++)
      for (size_t c = 0; c < C; c++) {
        float d = dout[(b * T + t) * C + c];
        dwte[(size_t)x[b * T + t] * C + c] += d;
        dwpe[(t0 + t) * C + c] += d;
      }
}

void
bt__ref_attention_fwd(float *out, float *att, const float *qkv, size_t B,
                      size_t T, size_t C, size_t nh)
{
  size_t hs = C / nh, C3 = 3 * C;
  float scale = 1.0f / sqrtf((float)hs);

  for (size_t b = 0; b < B; b++)
    for (size_t h = 0; h < nh; h++) {
      const float *base = qkv + b * T * C3 + h * hs;
      float *p = att + (b * nh + h) * T * T;
      for (size_t i = 0; i < T; i++) {
        float mx = -INFINITY;
        for (size_t j = 0; j <= i; j++) {
          float s = 0.0f;
          for (size_t e = 0; e < hs; e++)
            s += base[i * C3 + e] * base[j * C3 + C + e];
          p[i * T + j] = s * scale;
          if (p[i * T + j] > mx)
            mx = p[i * T + j];
        }
        float sum = 0.0f;
        for (size_t j = 0; j <= i; j++) {
          p[i * T + j] = expf(p[i * T + j] - mx);
          sum += p[i * T + j];
        }
        for (size_t j = 0; j < T; j++)
          p[i * T + j] = j <= i ? p[i * T + j] / sum : 0.0f;
        for (size_t e = 0; e < hs; e++) {
          float o = 0.0f;
          for (size_t j = 0; j <= i; j++)
            o += p[i * T + j] * base[j * C3 + 2 * C + e];
          out[(b * T + i) * C + h * hs + e] = o;
        }
      }
    }
}

void
bt__ref_attention_bwd(float *dqkv, const float *dout, const float *qkv,
                      const float *att, size_t B, size_t T, size_t C,
                      size_t nh)
{
  size_t hs = C / nh, C3 = 3 * C;
  float scale = 1.0f / sqrtf((float)hs);

  for (size_t i = 0; i < B * T * C3; i++)
    dqkv[i] = 0.0f;
  for (size_t b = 0; b < B; b++)
    for (size_t h = 0; h < nh; h++) {
      const float *base = qkv + b * T * C3 + h * hs;
      float *dbase = dqkv + b * T * C3 + h * hs;
      const float *p = att + (b * nh + h) * T * T;
      const float *dO = dout + b * T * C + h * hs;
      for (size_t i = 0; i < T; i++) {
        /* dp[j] = dO[i] . v[j]; ds = p (dp - sum_j p dp). */
        float dot = 0.0f;
        for (size_t j = 0; j <= i; j++) {
          float dp = 0.0f;
          for (size_t e = 0; e < hs; e++)
            dp += dO[i * C + e] * base[j * C3 + 2 * C + e];
          dot += p[i * T + j] * dp;
        }
        for (size_t j = 0; j <= i; j++) {
          float dp = 0.0f;
          for (size_t e = 0; e < hs; e++)
            dp += dO[i * C + e] * base[j * C3 + 2 * C + e];
          float ds = p[i * T + j] * (dp - dot) * scale;
          for (size_t e = 0; e < hs; e++) {
            dbase[i * C3 + e] += ds * base[j * C3 + C + e];     /* dq */
            dbase[j * C3 + C + e] += ds * base[i * C3 + e];     /* dk */
            dbase[j * C3 + 2 * C + e] += p[i * T + j] * dO[i * C + e]; /* dv */
          }
        }
      }
    }
}

/* Philox4x32-10 as the paper writes it: ten rounds of two 32x32->64
 * multiplies, the key bumped by the Weyl constants between rounds. */
void
bt__ref_philox4x32_10(uint32_t out[4], const uint32_t ctr[4],
                      const uint32_t key[2])
{
  uint32_t x0 = ctr[0], x1 = ctr[1], x2 = ctr[2], x3 = ctr[3];
  uint32_t k0 = key[0], k1 = key[1];

  for (int r = 0; r < 10; r++) {
    uint64_t a = (uint64_t)x0 * 0xD2511F53u;
    uint64_t b = (uint64_t)x2 * 0xCD9E8D57u;
    uint32_t y0 = (uint32_t)(b >> 32) ^ x1 ^ k0;
    uint32_t y1 = (uint32_t)b;
    uint32_t y2 = (uint32_t)(a >> 32) ^ x3 ^ k1;
    uint32_t y3 = (uint32_t)a;
    x0 = y0, x1 = y1, x2 = y2, x3 = y3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  out[0] = x0, out[1] = x1, out[2] = x2, out[3] = x3;
}

/* One Philox block per element (the kernel shares one per 4 columns). */
void
bt__ref_dropout_fwd(float *y, const float *x, size_t N, size_t D, float p,
                    uint64_t seed, uint32_t step, uint32_t layer,
                    size_t row_offset)
{
  const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
  float scale = 1.0f / (1.0f - p);

  for (size_t r = 0; r < N; r++)
    for (size_t c = 0; c < D; c++) {
      uint32_t ctr[4] = {(uint32_t)(c / 4), (uint32_t)(row_offset + r), step,
                         layer};
      uint32_t w[4];
      bt__ref_philox4x32_10(w, ctr, key);
      float u = (float)(w[c % 4] >> 8) / 16777216.0f;
      y[r * D + c] = u >= p ? x[r * D + c] * scale : 0.0f;
    }
}
