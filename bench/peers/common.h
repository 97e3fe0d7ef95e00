/* Shared by the peer overhead benchmarks (oneTBB flow graph, OpenMP tasks,
 * StarPU): argument parsing, timing, medians, JSON output and the empty task
 * body, so that every runtime runs the same DAG (../shapes.h) with the same
 * task and is measured the same way as `baton-bench overhead`.
 *
 * Plain C11 that also compiles as C++ (the oneTBB peer).  Each program is a
 * single translation unit, so the state below is file-static.
 *
 * Usage of every peer:
 *   PEER [--shape chain|independent|gpipe|1f1b] [--devices P]
 *        [--microbatches M] [--threads T] [--repeat R] [--json]
 *
 * Output (one line with --json):
 *   {"runtime":"tbb","shape":"gpipe","devices":8,"microbatches":64,
 *    "threads":2,"tasks":1024,"edges":1905,"repeat":200,
 *    "build_ns_per_task":X,"run_ns_per_task":Y,"violations":0}
 * plus "build_note":"..." where the runtime has no persistent graph. */
#ifndef BATON_PEERS_COMMON_H
#define BATON_PEERS_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../shapes.h"

#ifdef __cplusplus
#include <atomic>
typedef std::atomic<unsigned char> pr_flag;
typedef std::atomic<long> pr_counter;
#define PR_LOAD(p) ((p)->load(std::memory_order_relaxed))
#define PR_STORE(p, v) ((p)->store((v), std::memory_order_relaxed))
#define PR_ADD(p, v) ((p)->fetch_add((v), std::memory_order_relaxed))
#else
#include <stdatomic.h>
typedef _Atomic unsigned char pr_flag;
typedef _Atomic long pr_counter;
#define PR_LOAD(p) atomic_load_explicit((p), memory_order_relaxed)
#define PR_STORE(p, v) atomic_store_explicit((p), (v), memory_order_relaxed)
#define PR_ADD(p, v) atomic_fetch_add_explicit((p), (v), memory_order_relaxed)
#endif

struct pr_args {
  const char *shape;
  int devices, microbatches, threads, repeat, json;
};

/* The DAG and the state the empty tasks touch. */
static struct bt_shape pr_shape;
static pr_flag *pr_done;        /* [tasks] */
static pr_counter pr_violations;

/* ---- the empty task --------------------------------------------------- */

/* Every predecessor must have finished; then mark t finished. */
static inline void
pr_task_body(int32_t t)
{
  const int32_t *pf = pr_shape.pred_first, *pred = pr_shape.pred;
  for (int32_t i = pf[t]; i < pf[t + 1]; i++)
    if (!PR_LOAD(&pr_done[pred[i]]))
      PR_ADD(&pr_violations, 1);
  PR_STORE(&pr_done[t], (unsigned char)1);
}

/* Untimed, before each run. */
static inline void
pr_reset_done(void)
{
  for (int32_t t = 0; t < pr_shape.tasks; t++)
    PR_STORE(&pr_done[t], (unsigned char)0);
}

/* Untimed, after each run: a task that never ran counts as a violation. */
static inline void
pr_check_all_done(void)
{
  for (int32_t t = 0; t < pr_shape.tasks; t++)
    if (!PR_LOAD(&pr_done[t]))
      PR_ADD(&pr_violations, 1);
}

/* ---- timing ----------------------------------------------------------- */

static inline int64_t
pr_now_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline int
pr__cmp_i64(const void *x, const void *y)
{
  const int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;
  return (a > b) - (a < b);
}

/* Median of n samples (sorts them in place). */
static inline double
pr_median(int64_t *v, int n)
{
  if (n <= 0)
    return 0.0;
  qsort(v, (size_t)n, sizeof *v, pr__cmp_i64);
  if (n % 2)
    return (double)v[n / 2];
  return 0.5 * ((double)v[n / 2 - 1] + (double)v[n / 2]);
}

/* ---- topological order ------------------------------------------------ */

/* Kahn's algorithm over the edges (sorted by src); order[] gets tasks
 * entries.  Returns 0, or -1 on a cycle or out of memory. */
static inline int
pr_topo_order(const struct bt_shape *s, int32_t *order)
{
  int32_t n = s->tasks, head = 0, tail = 0;
  int32_t *indeg = (int32_t *)malloc(((size_t)n + 1) * sizeof(int32_t));
  int32_t *succ_first = (int32_t *)calloc((size_t)n + 1, sizeof(int32_t));
  if (indeg == NULL || succ_first == NULL) {
    free(indeg);
    free(succ_first);
    return -1;
  }
  for (int32_t t = 0; t < n; t++)
    indeg[t] = s->pred_first[t + 1] - s->pred_first[t];
  for (int32_t i = 0; i < s->edges; i++)
    succ_first[s->src[i] + 1]++;
  for (int32_t t = 0; t < n; t++)
    succ_first[t + 1] += succ_first[t];
  for (int32_t t = 0; t < n; t++)
    if (indeg[t] == 0)
      order[tail++] = t;
  while (head < tail) {
    int32_t t = order[head++];
    /* edges are sorted by src, so t's successors are dst[succ_first[t]..] */
    for (int32_t i = succ_first[t]; i < succ_first[t + 1]; i++)
      if (--indeg[s->dst[i]] == 0)
        order[tail++] = s->dst[i];
  }
  free(indeg);
  free(succ_first);
  return tail == n ? 0 : -1;
}

/* ---- arguments -------------------------------------------------------- */

static inline void
pr_usage(const char *prog, FILE *f)
{
  fprintf(f,
          "usage: %s [--shape chain|independent|gpipe|1f1b] [--devices P]\n"
          "          [--microbatches M] [--threads T] [--repeat R] [--json]\n"
          "  defaults: --shape gpipe --devices 8 --microbatches 64"
          " --threads 2 --repeat 200\n",
          prog);
}

static inline int
pr__int_arg(const char *prog, const char *flag, const char *v, int *out)
{
  char *end = NULL;
  long x;
  if (v == NULL) {
    fprintf(stderr, "%s: %s needs a value\n", prog, flag);
    return -1;
  }
  x = strtol(v, &end, 10);
  if (end == v || *end != '\0' || x < 1 || x > 1000000) {
    fprintf(stderr, "%s: bad value for %s: '%s'\n", prog, flag, v);
    return -1;
  }
  *out = (int)x;
  return 0;
}

/* Parses the common flags, builds the shape and allocates done[]; exits 2
 * on a usage error. */
static inline void
pr_init(int argc, char **argv, struct pr_args *a)
{
  const char *prog = argv[0];
  a->shape = "gpipe";
  a->devices = 8;
  a->microbatches = 64;
  a->threads = 2;
  a->repeat = 200;
  a->json = 0;
  for (int i = 1; i < argc; i++) {
    const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int rc = 0;
    if (strcmp(f, "--json") == 0) {
      a->json = 1;
      continue;
    } else if (strcmp(f, "-h") == 0 || strcmp(f, "--help") == 0) {
      pr_usage(prog, stdout);
      exit(0);
    } else if (strcmp(f, "--shape") == 0) {
      if (v == NULL) {
        fprintf(stderr, "%s: --shape needs a value\n", prog);
        exit(2);
      }
      a->shape = v;
    } else if (strcmp(f, "--devices") == 0) {
      rc = pr__int_arg(prog, f, v, &a->devices);
    } else if (strcmp(f, "--microbatches") == 0) {
      rc = pr__int_arg(prog, f, v, &a->microbatches);
    } else if (strcmp(f, "--threads") == 0) {
      rc = pr__int_arg(prog, f, v, &a->threads);
    } else if (strcmp(f, "--repeat") == 0) {
      rc = pr__int_arg(prog, f, v, &a->repeat);
    } else {
      fprintf(stderr, "%s: unknown argument '%s'\n", prog, f);
      pr_usage(prog, stderr);
      exit(2);
    }
    if (rc != 0)
      exit(2);
    i++;
  }
  if (bt_shape_build(a->shape, a->devices, a->microbatches, &pr_shape) != 0) {
    fprintf(stderr, "%s: cannot build shape '%s' (P=%d M=%d)\n", prog,
            a->shape, a->devices, a->microbatches);
    exit(2);
  }
#ifdef __cplusplus
  pr_done = new pr_flag[(size_t)pr_shape.tasks]();
#else
  pr_done = (pr_flag *)calloc((size_t)pr_shape.tasks, sizeof *pr_done);
  if (pr_done == NULL) {
    fprintf(stderr, "%s: out of memory\n", prog);
    exit(2);
  }
#endif
  PR_STORE(&pr_violations, 0L);
}

/* ---- output ----------------------------------------------------------- */

/* Prints the result line; returns the exit status (1 on violations). */
static inline int
pr_report(const struct pr_args *a, const char *runtime, double build_ns,
          double run_ns, const char *build_note)
{
  long v = PR_LOAD(&pr_violations);
  double n = pr_shape.tasks > 0 ? (double)pr_shape.tasks : 1.0;
  if (a->json) {
    printf("{\"runtime\":\"%s\",\"shape\":\"%s\",\"devices\":%d,"
           "\"microbatches\":%d,\"threads\":%d,\"tasks\":%d,\"edges\":%d,"
           "\"repeat\":%d,\"build_ns_per_task\":%.1f,"
           "\"run_ns_per_task\":%.1f,\"violations\":%ld",
           runtime, a->shape, a->devices, a->microbatches, a->threads,
           (int)pr_shape.tasks, (int)pr_shape.edges, a->repeat, build_ns / n,
           run_ns / n, v);
    if (build_note != NULL)
      printf(",\"build_note\":\"%s\"", build_note);
    printf("}\n");
  } else {
    printf("%s: shape %s P=%d M=%d T=%d: %d tasks, %d edges, repeat %d: "
           "build %.1f ns/task%s%s%s, run %.1f ns/task, violations %ld\n",
           runtime, a->shape, a->devices, a->microbatches, a->threads,
           (int)pr_shape.tasks, (int)pr_shape.edges, a->repeat, build_ns / n,
           build_note ? " (" : "", build_note ? build_note : "",
           build_note ? ")" : "", run_ns / n, v);
  }
  fflush(stdout);
  return v != 0 ? 1 : 0;
}

static inline void
pr_fini(void)
{
#ifdef __cplusplus
  delete[] pr_done;
#else
  free(pr_done);
#endif
  pr_done = NULL;
  bt_shape_free(&pr_shape);
}

#endif /* BATON_PEERS_COMMON_H */
