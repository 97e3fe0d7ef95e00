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
