/* Task-graph shapes for runtime overhead benchmarks, shared by baton-bench
 * and the peer programs in bench/peers/ (oneTBB, OpenMP, StarPU) so that
 * every runtime runs exactly the same DAG.  Plain C that also compiles as
 * C++.  P devices, M microbatches:
 *
 *   chain        N = P*M tasks, task i after task i-1; task i on device i % P.
 *   independent  N = P*M tasks, no edges; task i on device i % P.
 *   gpipe        F(s,k), B(s,k) for s < P, k < M, on device s.
 *                F(s,k) after F(s-1,k) and F(s,k-1); B(P-1,M-1) after
 *                F(P-1,M-1) (so every backward runs after the last forward
 *                of the last stage); B(s,k) after B(s+1,k) and B(s,k+1).
 *   1f1b         F edges as gpipe; B(P-1,k) after F(P-1,k); B(s,k) after
 *                B(s+1,k) and B(s,k-1); plus each device's 1F1B order
 *                (P-s-1 warm-up forwards, then F/B alternating) as edges
 *                between consecutive actions.
 *
 * Task ids: gpipe/1f1b number F(s,k) as s*M + k and B(s,k) as P*M + s*M + k.
 * Edges are deduplicated; predecessor lists are CSR arrays so a task can
 * check that every predecessor finished before it. */
#ifndef BATON_BENCH_SHAPES_H
#define BATON_BENCH_SHAPES_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct bt_shape {
  int32_t tasks, devices;
  int32_t *device;           /* [tasks] */
  int32_t edges;
  int32_t *src, *dst;        /* [edges], sorted by (src, dst) */
  int32_t *pred_first;       /* [tasks + 1] */
  int32_t *pred;             /* [edges] */
};

static inline void
bt_shape_free(struct bt_shape *s)
{
  free(s->device);
  free(s->src);
  free(s->dst);
  free(s->pred_first);
  free(s->pred);
  memset(s, 0, sizeof *s);
}

static inline int
bt_shape__edge(struct bt_shape *s, int32_t cap, int32_t a, int32_t b)
{
  if (s->edges == cap)
    return -1;
  s->src[s->edges] = a;
  s->dst[s->edges] = b;
  s->edges++;
  return 0;
}

static inline int
bt_shape__cmp(const void *x, const void *y)
{
  const int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;
  return (a > b) - (a < b);
}

/* Sorts and deduplicates edges, then builds the predecessor CSR. */
static inline int
bt_shape__finish(struct bt_shape *s)
{
  int64_t *key = (int64_t *)malloc(((size_t)s->edges + 1) * sizeof *key);
  int32_t n = 0;

  s->pred_first = (int32_t *)calloc((size_t)s->tasks + 1, sizeof(int32_t));
  s->pred = (int32_t *)malloc(((size_t)s->edges + 1) * sizeof(int32_t));
  if (key == NULL || s->pred_first == NULL || s->pred == NULL) {
    free(key);
    return -1;
  }
  for (int32_t i = 0; i < s->edges; i++)
    key[i] = (int64_t)s->src[i] << 32 | (uint32_t)s->dst[i];
  qsort(key, (size_t)s->edges, sizeof *key, bt_shape__cmp);
  for (int32_t i = 0; i < s->edges; i++)
    if (n == 0 || key[n - 1] != key[i])
      key[n++] = key[i];
  s->edges = n;
  for (int32_t i = 0; i < n; i++) {
    s->src[i] = (int32_t)(key[i] >> 32);
    s->dst[i] = (int32_t)(uint32_t)key[i];
    s->pred_first[s->dst[i] + 1]++;
  }
  for (int32_t t = 0; t < s->tasks; t++)
    s->pred_first[t + 1] += s->pred_first[t];
  {
    int32_t *fill = (int32_t *)calloc((size_t)s->tasks, sizeof(int32_t));
    if (fill == NULL) {
      free(key);
      return -1;
    }
    for (int32_t i = 0; i < n; i++)
      s->pred[s->pred_first[s->dst[i]] + fill[s->dst[i]]++] = s->src[i];
    free(fill);
  }
  free(key);
  return 0;
}

/* Builds a shape by name ("chain", "independent", "gpipe", "1f1b").
 * Returns 0, or -1 for an unknown name, P or M < 1, or out of memory. */
static inline int
bt_shape_build(const char *name, int32_t P, int32_t M, struct bt_shape *s)
{
  int pipeline = strcmp(name, "gpipe") == 0 || strcmp(name, "1f1b") == 0;
  int32_t cap, N;

  memset(s, 0, sizeof *s);
  if (P < 1 || M < 1)
    return -1;
  if (!pipeline && strcmp(name, "chain") != 0 &&
      strcmp(name, "independent") != 0)
    return -1;
  N = pipeline ? 2 * P * M : P * M;
  cap = 4 * N + 4;
  s->tasks = N;
  s->devices = P;
  s->device = (int32_t *)malloc((size_t)N * sizeof(int32_t));
  s->src = (int32_t *)malloc((size_t)cap * sizeof(int32_t));
  s->dst = (int32_t *)malloc((size_t)cap * sizeof(int32_t));
  if (s->device == NULL || s->src == NULL || s->dst == NULL)
    goto fail;
  if (!pipeline) {
    for (int32_t i = 0; i < N; i++) {
      s->device[i] = i % P;
      if (name[0] == 'c' && i > 0 && bt_shape__edge(s, cap, i - 1, i) != 0)
        goto fail;
    }
  } else {
#define BT_SHAPE_F(st, k) ((st) * M + (k))
#define BT_SHAPE_B(st, k) (P * M + (st) * M + (k))
    int gpipe = name[0] == 'g';
    int rc = 0;
    for (int32_t st = 0; st < P; st++)
      for (int32_t k = 0; k < M; k++) {
        s->device[BT_SHAPE_F(st, k)] = st;
        s->device[BT_SHAPE_B(st, k)] = st;
        if (st > 0)
          rc |= bt_shape__edge(s, cap, BT_SHAPE_F(st - 1, k), BT_SHAPE_F(st, k));
        if (k > 0)
          rc |= bt_shape__edge(s, cap, BT_SHAPE_F(st, k - 1), BT_SHAPE_F(st, k));
        if (st + 1 < P)
          rc |= bt_shape__edge(s, cap, BT_SHAPE_B(st + 1, k), BT_SHAPE_B(st, k));
        if (gpipe && k + 1 < M)
          rc |= bt_shape__edge(s, cap, BT_SHAPE_B(st, k + 1), BT_SHAPE_B(st, k));
        if (!gpipe && k > 0)
          rc |= bt_shape__edge(s, cap, BT_SHAPE_B(st, k - 1), BT_SHAPE_B(st, k));
        if (!gpipe && st == P - 1)
          rc |= bt_shape__edge(s, cap, BT_SHAPE_F(st, k), BT_SHAPE_B(st, k));
      }
    if (gpipe)
      rc |= bt_shape__edge(s, cap, BT_SHAPE_F(P - 1, M - 1),
                           BT_SHAPE_B(P - 1, M - 1));
    for (int32_t st = 0; !gpipe && st < P; st++) {
      /* The device's 1F1B order as a chain of edges. */
      int32_t warm = P - st - 1 < M ? P - st - 1 : M, f = 0, b = 0, prev = -1;
      while (f < M || b < M) {
        int32_t t;
        if (f < warm || (f < M && f <= b + warm))
          t = BT_SHAPE_F(st, f++);
        else
          t = BT_SHAPE_B(st, b++);
        if (prev >= 0)
          rc |= bt_shape__edge(s, cap, prev, t);
        prev = t;
      }
    }
#undef BT_SHAPE_F
#undef BT_SHAPE_B
    if (rc != 0)
      goto fail;
  }
  if (bt_shape__finish(s) != 0)
    goto fail;
  return 0;
fail:
  bt_shape_free(s);
  return -1;
}

#endif /* BATON_BENCH_SHAPES_H */
