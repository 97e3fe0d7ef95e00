/* baton-kernels-bench: time each fp32 CPU kernel on a GPT-2-small-like
 * shape, one thread, and print one JSON line per kernel: its shape, the
 * nanoseconds per call, GFLOP/s for the GEMMs, and for the memory-bound
 * kernels the GB/s of the bytes they must move at least.
 *
 *   baton-kernels-bench [--rows N] [--dim C] [--classes V] [--min-time S]
 *
 * N = B*T rows (default 512), C channels (768; the MLP is C -> 4C -> C),
 * V classes for the cross-entropy (default 50257), S seconds per kernel
 * (default 0.2, after one warm-up call).  The GPT kernels see the N rows
 * as one sequence (B = 1, T = N): the embedding with a V-token table, the
 * attention with the largest head count <= 12 that divides C, dropout
 * with p = 0.1. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels.h"

struct opts {
  size_t N, C, V;
  double min_time;
};

static double
now(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Every kernel, as one closure the timer calls. */
struct bench {
  const char *name;
  size_t N, IN, OUT; /* OUT = 0: not a GEMM shape */
  double flops;      /* per call, 0 when not meaningful */
  double bytes;      /* per call, 0 for the GEMMs */
  bt_status (*fn)(const struct bench *b);
};

/* Buffers shared by all kernels, sized for the largest use: A, B, Y hold
 * activations and their gradients (rows x widest), the others weights,
 * their gradients and optimizer state (largest weight). */
static float *A, *B, *Y, *W, *G, *M, *V, *S1, *S2;
static int32_t *labels;
/* The GPT kernels': token table [V, C], position table [N, C], attention
 * scratch; vocabulary size and head count. */
static float *E, *P, *ATT;
static size_t vocab, heads;

static bt_status
run_linear_fwd(const struct bench *b)
{
  return bt__linear_fwd(Y, A, W, G, b->N, b->IN, b->OUT);
}

static bt_status
run_linear_bwd_input(const struct bench *b)
{
  return bt__linear_bwd_input(A, Y, W, b->N, b->IN, b->OUT);
}

static bt_status
run_linear_bwd_weight(const struct bench *b)
{
  return bt__linear_bwd_weight(M, V, Y, A, b->N, b->IN, b->OUT);
}

static bt_status
run_gelu_fwd(const struct bench *b)
{
  return bt__gelu_fwd(Y, A, b->N * b->IN);
}

static bt_status
run_gelu_bwd(const struct bench *b)
{
  return bt__gelu_bwd(B, Y, A, b->N * b->IN);
}

static bt_status
run_layernorm_fwd(const struct bench *b)
{
  return bt__layernorm_fwd(Y, S1, S2, A, G, M, b->N, b->IN);
}

static bt_status
run_layernorm_bwd(const struct bench *b)
{
  return bt__layernorm_bwd(B, W, V, Y, A, G, S1, S2, b->N, b->IN);
}

static bt_status
run_residual_fwd(const struct bench *b)
{
  return bt__residual_fwd(Y, A, B, b->N * b->IN);
}

static bt_status
run_residual_bwd(const struct bench *b)
{
  return bt__residual_bwd(A, B, Y, b->N * b->IN);
}

static bt_status
run_xent_fwd(const struct bench *b)
{
  float loss;
  return bt__xent_fwd(&loss, Y, labels, b->N, b->IN, b->N);
}

static bt_status
run_xent_bwd(const struct bench *b)
{
  return bt__xent_bwd(B, Y, labels, b->N, b->IN, b->N);
}

static bt_status
run_sgd(const struct bench *b)
{
  return bt__sgd_update(W, G, b->N, 1e-6f, 0.0f);
}

static bt_status
run_adamw(const struct bench *b)
{
  return bt__adamw_update(W, M, V, G, b->N, 1e-6f, 0.9f, 0.999f, 1e-8f,
                          0.01f, 10);
}

static bt_status
run_embedding_fwd(const struct bench *b)
{
  return bt__embedding_fwd(Y, labels, E, P, 1, b->N, b->IN, vocab, b->N, 0);
}

static bt_status
run_embedding_bwd(const struct bench *b)
{
  return bt__embedding_bwd(E, P, Y, labels, 1, b->N, b->IN, vocab, b->N, 0);
}

static bt_status
run_attention_fwd(const struct bench *b)
{
  return bt__attention_fwd(Y, ATT, A, 1, b->N, b->IN, heads);
}

/* Reads the probabilities the forward before it left in ATT. */
static bt_status
run_attention_bwd(const struct bench *b)
{
  return bt__attention_bwd(B, ATT, Y, A, 1, b->N, b->IN, heads);
}

static bt_status
run_dropout_fwd(const struct bench *b)
{
  return bt__dropout_fwd(Y, A, b->N, b->IN, 0.1f, 1234, 1, 0, 0);
}

static bt_status
run_dropout_bwd(const struct bench *b)
{
  return bt__dropout_bwd(B, Y, b->N, b->IN, 0.1f, 1234, 1, 0, 0);
}

static int
time_one(const struct bench *b, double min_time)
{
  bt_status st = b->fn(b); /* warm-up: page faults, OpenBLAS set-up */
  if (st != BT_OK) {
    fprintf(stderr, "baton-kernels-bench: %s: %s\n", b->name,
            bt_strerror(st));
    return -1;
  }
  long calls = 0;
  double t0 = now(), el;
  do {
    b->fn(b);
    calls++;
    el = now() - t0;
  } while (el < min_time);
  double ns = 1e9 * el / (double)calls;

  printf("{\"kernel\":\"%s\",\"N\":%zu,", b->name, b->N);
  if (b->OUT != 0)
    printf("\"IN\":%zu,\"OUT\":%zu,", b->IN, b->OUT);
  else if (b->IN != 0) /* the row width: classes for the cross-entropy */
    printf("\"%s\":%zu,", strncmp(b->name, "xent", 4) == 0 ? "C" : "D",
           b->IN);
  printf("\"calls\":%ld,\"ns_per_call\":%.0f", calls, ns);
  if (b->flops > 0)
    printf(",\"gflops\":%.2f", b->flops / ns);
  if (b->bytes > 0)
    printf(",\"gb_per_s\":%.2f", b->bytes / ns);
  printf("}\n");
  return 0;
}

static int
parse_size(const char *s, size_t *out)
{
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || v == 0)
    return -1;
  *out = (size_t)v;
  return 0;
}

/* Values in [-2, 2): the range of real activations, away from the
 * out-of-range paths of expf that huge inputs would time instead. */
static void
fill_random(float *p, size_t n, uint32_t seed)
{
  uint32_t x = seed;

  for (size_t i = 0; i < n; i++) {
    x = x * 1664525u + 1013904223u; /* LCG: values only need to be sane */
    p[i] = (float)(x >> 8) * (4.0f / 16777216.0f) - 2.0f;
  }
}

static float *
alloc_random(size_t n, uint32_t seed)
{
  float *p = malloc(n * sizeof(float));

  if (p == NULL) {
    fprintf(stderr, "baton-kernels-bench: out of memory (%zu floats)\n", n);
    exit(1);
  }
  fill_random(p, n, seed);
  return p;
}

int
main(int argc, char **argv)
{
  struct opts o = {512, 768, 50257, 0.2};

  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (i + 1 < argc && strcmp(a, "--rows") == 0) {
      if (parse_size(argv[++i], &o.N) != 0)
        goto usage;
    } else if (i + 1 < argc && strcmp(a, "--dim") == 0) {
      if (parse_size(argv[++i], &o.C) != 0)
        goto usage;
    } else if (i + 1 < argc && strcmp(a, "--classes") == 0) {
      if (parse_size(argv[++i], &o.V) != 0)
        goto usage;
    } else if (i + 1 < argc && strcmp(a, "--min-time") == 0) {
      o.min_time = strtod(argv[++i], NULL);
      if (!(o.min_time >= 0.0))
        goto usage;
    } else {
      goto usage;
    }
  }

  size_t N = o.N, C = o.C, H = 4 * o.C, Vc = o.V;
  size_t act = N * (H > Vc ? H : Vc); /* largest activation */
  size_t par = H * C;                  /* largest weight; also dgamma */
  A = alloc_random(act, 1), B = alloc_random(act, 2);
  Y = alloc_random(act, 3), W = alloc_random(par, 4);
  G = alloc_random(par, 5), M = alloc_random(par, 6);
  V = alloc_random(par, 7);
  S1 = alloc_random(N, 8), S2 = alloc_random(N, 9);
  labels = malloc(N * sizeof(int32_t));
  if (labels == NULL)
    return 1;
  for (size_t r = 0; r < N; r++)
    labels[r] = (int32_t)((r * 7919) % Vc);
  vocab = Vc;
  for (heads = C < 12 ? C : 12; C % heads != 0; heads--)
    ;
  size_t att_bytes = bt__attention_scratch_bytes(1, N, heads);
  if (att_bytes == 0) {
    fprintf(stderr, "baton-kernels-bench: attention scratch too large\n");
    return 1;
  }
  E = alloc_random(Vc * C, 10), P = alloc_random(N * C, 11);
  ATT = alloc_random(att_bytes / sizeof(float), 12);

  double f = sizeof(float);
  const struct bench benches[] = {
      {"linear_fwd", N, C, H, 2.0 * N * C * H, 0, run_linear_fwd},
      {"linear_bwd_input", N, C, H, 2.0 * N * C * H, 0,
       run_linear_bwd_input},
      {"linear_bwd_weight", N, C, H, 2.0 * N * C * H, 0,
       run_linear_bwd_weight},
      {"gelu_fwd", N, H, 0, 0, 2.0 * N * H * f, run_gelu_fwd},
      {"gelu_bwd", N, H, 0, 0, 3.0 * N * H * f, run_gelu_bwd},
      {"layernorm_fwd", N, C, 0, 0, 2.0 * N * C * f, run_layernorm_fwd},
      {"layernorm_bwd", N, C, 0, 0, 3.0 * N * C * f, run_layernorm_bwd},
      {"residual_fwd", N, C, 0, 0, 3.0 * N * C * f, run_residual_fwd},
      {"residual_bwd", N, C, 0, 0, 5.0 * N * C * f, run_residual_bwd},
      {"xent_fwd", N, Vc, 0, 0, 1.0 * N * Vc * f, run_xent_fwd},
      {"xent_bwd", N, Vc, 0, 0, 2.0 * N * Vc * f, run_xent_bwd},
      /* The optimizers on the MLP's largest weight, H*C elements. */
      {"sgd_update", H * C, 0, 0, 0, 3.0 * H * C * f, run_sgd},
      {"adamw_update", H * C, 0, 0, 0, 7.0 * H * C * f, run_adamw},
      /* Bytes: the rows gathered or scattered, read and written. */
      {"embedding_fwd", N, C, 0, 0, 3.0 * N * C * f, run_embedding_fwd},
      {"embedding_bwd", N, C, 0, 0, 5.0 * N * C * f, run_embedding_bwd},
      /* FLOPs of the GEMMs over the whole T x T square, masked half too:
       * two in the forward, four in the backward. */
      {"attention_fwd", N, C, 0, 4.0 * N * N * C, 0, run_attention_fwd},
      {"attention_bwd", N, C, 0, 8.0 * N * N * C, 0, run_attention_bwd},
      {"dropout_fwd", N, C, 0, 0, 2.0 * N * C * f, run_dropout_fwd},
      {"dropout_bwd", N, C, 0, 0, 2.0 * N * C * f, run_dropout_bwd},
  };
  int rc = 0;
  for (size_t i = 0; i < sizeof(benches) / sizeof(benches[0]); i++) {
    /* Fresh inputs: the kernels before wrote into the shared buffers
     * (a GEMM's output as the next one's input grows without bound). */
    fill_random(A, act, 1), fill_random(B, act, 2), fill_random(Y, act, 3);
    fill_random(W, par, 4), fill_random(G, par, 5), fill_random(M, par, 6);
    fill_random(V, par, 7);
    for (size_t k = 0; k < par; k++)
      V[k] = V[k] * V[k]; /* a second moment is non-negative */
    for (size_t r = 0; r < N; r++)
      S2[r] = 1.0f; /* an rstd */
    if (time_one(&benches[i], o.min_time) != 0)
      rc = 1;
  }
  free(A), free(B), free(Y), free(W), free(G), free(M), free(V);
  free(S1), free(S2), free(labels), free(E), free(P), free(ATT);
  return rc;

usage:
  fprintf(stderr, "usage: baton-kernels-bench [--rows N] [--dim C] "
                  "[--classes V] [--min-time S]\n");
  return 2;
}
