/* baton-train-bench: is pipelining worth it on the CPU backend?
 *
 * resmlp (default L=8, H=512, D=64, C=10), N=1024 rows, m=16, 1F1B:
 *   plain   the same kernels in a sequential loop, no runtime
 *           (bt_model_reference_step): the floor the runtime is measured
 *           against;
 *   p=1     the trainer on one device (the runtime's overhead over plain);
 *   p=2     the trainer on two devices (the speed-up from pipelining).
 * Each is timed over --steps steps after a warm-up (median), forward and
 * backward only (the optimizer step is the same in all three).  Prints one
 * JSON object with the step times, the speed-up p=1 -> p=2, the overhead
 * of p=1 over plain, and each device's idle time in the p=2 step (from the
 * trace: step time minus busy time). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "baton/baton.h"
#include "bench.h"

struct opts {
  int layers, hidden, inputs, classes, batch, microbatches, steps;
  const char *schedule;
};




static uint64_t rng = 88172645463325252ull;

static float
frand(void)
{
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (float)(rng >> 40) / 16777216.0f;
}

static int
parse(int argc, char **argv, struct opts *o)
{
  for (int i = 1; i < argc; i += 2) {
    const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int *dst = NULL;
    if (v == NULL)
      goto usage;
    if (strcmp(k, "--schedule") == 0) {
      o->schedule = v;
      continue;
    }
    if (strcmp(k, "--layers") == 0)
      dst = &o->layers;
    else if (strcmp(k, "--hidden") == 0)
      dst = &o->hidden;
    else if (strcmp(k, "--batch") == 0)
      dst = &o->batch;
    else if (strcmp(k, "--microbatches") == 0)
      dst = &o->microbatches;
    else if (strcmp(k, "--steps") == 0)
      dst = &o->steps;
    else
      goto usage;
    *dst = atoi(v);
    if (*dst < 1)
      goto usage;
  }
  return 0;
usage:
  fprintf(stderr, "usage: baton-train-bench [--layers L] [--hidden H] "
          "[--batch N] [--microbatches m] [--steps S] [--schedule NAME]\n");
  return -1;
}

/* Median step time (forward + backward) of a trainer on p devices; idle
 * time per device of the last step into idle[] when not NULL. */
static int
time_trainer(bt_model_t *model, const bt_schedule_t *sched,
             const struct opts *o, int p, const float *x, const int32_t *y,
             double *step_s, double *idle)
{
  bt_trainer_config_t tc = BT_TRAINER_CONFIG_INIT;
  bt_trainer_t *tr = NULL;
  double *t = calloc((size_t)o->steps, sizeof *t);
  bt_slice_t *sl = NULL;
  bt_error_t err;
  size_t n;
  float loss;
  int rc = -1;

  tc.batch = o->batch;
  tc.microbatches = o->microbatches;
  tc.devices = p;
  tc.schedule = sched;
  tc.checkpoint = BT_CHECKPOINT_NEVER;
  tc.threads = p;
  tc.trace = idle != NULL;
  if (t == NULL || bt_trainer_create(model, &tc, &tr, &err) != BT_OK) {
    fprintf(stderr, "baton-train-bench: %s\n", t ? err.message : "no memory");
    goto out;
  }
  for (int s = -1; s < o->steps; s++) {
    double t0 = bench_now_s();
    if (bt_trainer_backward(tr, x, y, &loss, &err) != BT_OK) {
      fprintf(stderr, "baton-train-bench: %s\n", err.message);
      goto out;
    }
    if (s >= 0)
      t[s] = bench_now_s() - t0;
  }
  *step_s = bench_median(t, o->steps);
  if (idle != NULL && bt_trainer_slices(tr, NULL, &n) == BT_OK &&
      (sl = calloc(n + 1, sizeof *sl)) != NULL &&
      bt_trainer_slices(tr, sl, &n) == BT_OK) {
    double span = 0.0;
    for (size_t i = 0; i < n; i++)
      span = sl[i].end > span ? sl[i].end : span;
    for (int d = 0; d < p; d++)
      idle[d] = span;
    for (size_t i = 0; i < n; i++)
      idle[sl[i].device] -= sl[i].end - sl[i].start;
  }
  rc = 0;
out:
  free(sl);
  free(t);
  bt_trainer_destroy(tr);
  return rc;
}

int
main(int argc, char **argv)
{
  struct opts o = {8, 512, 64, 10, 1024, 16, 5, "1f1b"};
  bt_resmlp_config_t mc = BT_RESMLP_CONFIG_INIT;
  bt_model_t *model = NULL;
  bt_schedule_t *sched = NULL;
  float *x = NULL, loss;
  int32_t *y = NULL;
  double plain[64], p1 = 0, p2 = 0, idle[2] = {0, 0};
  bt_error_t err;
  int status = 1;

  if (parse(argc, argv, &o) != 0)
    return 2;
  if (o.steps > 64)
    o.steps = 64;
  mc.inputs = o.inputs;
  mc.hidden = o.hidden;
  mc.classes = o.classes;
  mc.blocks = o.layers;
  x = malloc(sizeof(float) * (size_t)o.batch * (size_t)o.inputs);
  y = malloc(sizeof(int32_t) * (size_t)o.batch);
  if (x == NULL || y == NULL)
    goto out;
  for (size_t i = 0; i < (size_t)o.batch * (size_t)o.inputs; i++)
    x[i] = frand();
  for (int i = 0; i < o.batch; i++)
    y[i] = (int32_t)(frand() * (float)o.classes) % o.classes;
  if (bt_model_create_resmlp(&mc, &model, &err) != BT_OK ||
      bt_schedule_open(o.schedule, &sched, &err) != BT_OK) {
    fprintf(stderr, "baton-train-bench: %s\n", err.message);
    goto out;
  }
  for (int s = -1; s < o.steps; s++) {
    double t0 = bench_now_s();
    if (bt_model_reference_step(model, x, y, (size_t)o.batch, o.microbatches,
                                &loss, &err) != BT_OK) {
      fprintf(stderr, "baton-train-bench: %s\n", err.message);
      goto out;
    }
    if (s >= 0)
      plain[s] = bench_now_s() - t0;
  }
  if (time_trainer(model, sched, &o, 1, x, y, &p1, NULL) != 0 ||
      time_trainer(model, sched, &o, 2, x, y, &p2, idle) != 0)
    goto out;
  {
    double pl = bench_median(plain, o.steps);
    printf("{\"model\":\"resmlp\",\"layers\":%d,\"hidden\":%d,\"batch\":%d,"
           "\"microbatches\":%d,\"schedule\":\"%s\",\"steps\":%d,"
           "\"plain_ms\":%.3f,\"p1_ms\":%.3f,\"p2_ms\":%.3f,"
           "\"speedup_p2_over_p1\":%.3f,\"overhead_p1_over_plain\":%.4f,"
           "\"idle_ms\":[%.3f,%.3f]}\n",
           o.layers, o.hidden, o.batch, o.microbatches, o.schedule, o.steps,
           pl * 1e3, p1 * 1e3, p2 * 1e3, p1 / p2, p1 / pl - 1.0,
           idle[0] / 1e3, idle[1] / 1e3);
  }
  status = 0;
out:
  bt_schedule_destroy(sched);
  bt_model_destroy(model);
  free(x);
  free(y);
  return status;
}
