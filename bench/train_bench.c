/* baton-train-bench: is pipelining worth it on the CPU backend?
 *
 * resmlp (default L=8, H=512, D=64, C=10), N=1024 rows, m=16, 1F1B; or
 * with --model gpt the small config (default L=4, C=128, nh=4,
 * T=64, B=16 sequences, m=4, V=256, dropout 0.1):
 *   plain   the same kernels in a sequential loop, no runtime
 *           (bt_model_reference_step[_tokens]): the floor the runtime is
 *           measured against;
 *   p=1     the trainer on one device (the runtime's overhead over plain);
 *   p=2     the trainer on two devices (the speed-up from pipelining);
 *   dp=2    gpt only: two data-parallel replicas of one device each (the
 *           other way to use the two cores), with the all-reduce in the
 *           step's graph.
 * Each is timed over --steps steps after a warm-up (median), forward and
 * backward only (the optimizer step is the same in all of them).  Prints
 * one JSON object with the step times (and tokens/s for gpt), the speed-up
 * p=1 -> p=2, the overhead of p=1 over plain, and each device's idle time
 * and the bubble (idle / (devices x span)) in the p=2 step, from the
 * trace: span minus busy time. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "baton/baton.h"
#include "bench.h"

struct opts {
  int layers, hidden, inputs, classes, batch, microbatches, steps;
  int embd, heads, seq, gpt;
  const char *schedule;
};

/* One model's step: x is rows of features (resmlp) or token ids (gpt). */
struct work {
  const float *x;          /* resmlp [N, D] */
  const int32_t *tx, *ty;  /* gpt [B, T] */
  const int32_t *y;        /* resmlp labels */
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
    if (strcmp(k, "--model") == 0) {
      if (strcmp(v, "gpt") != 0 && strcmp(v, "resmlp") != 0)
        goto usage;
      o->gpt = strcmp(v, "gpt") == 0;
      if (o->gpt) {
        o->layers = 4;
        o->batch = 16;
        o->microbatches = 4;
      }
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
    else if (strcmp(k, "--embd") == 0)
      dst = &o->embd;
    else if (strcmp(k, "--heads") == 0)
      dst = &o->heads;
    else if (strcmp(k, "--seq") == 0)
      dst = &o->seq;
    else
      goto usage;
    *dst = atoi(v);
    if (*dst < 1)
      goto usage;
  }
  return 0;
usage:
  fprintf(stderr, "usage: baton-train-bench [--model resmlp|gpt] "
          "[--layers L] [--hidden H] [--embd C] [--heads nh] [--seq T] "
          "[--batch N] [--microbatches m] [--steps S] [--schedule NAME]\n"
          "(put --model first: it sets the gpt defaults)\n");
  return -1;
}

/* Median step time (forward + backward) of a trainer on p devices x R
 * replicas; idle time per device of the last step into idle[] and the
 * step's span into *span_us when idle is not NULL. */
static int
time_trainer(bt_model_t *model, const bt_schedule_t *sched,
             const struct opts *o, int p, int R, const struct work *w,
             double *step_s, double *idle, double *span_us)
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
  tc.replicas = R;
  tc.seq = o->seq;
  tc.dropout_seed = 1;
  tc.schedule = sched;
  tc.checkpoint = BT_CHECKPOINT_NEVER;
  tc.threads = p * R;
  tc.trace = idle != NULL;
  if (t == NULL || bt_trainer_create(model, &tc, &tr, &err) != BT_OK) {
    fprintf(stderr, "baton-train-bench: %s\n", t ? err.message : "no memory");
    goto out;
  }
  for (int s = -1; s < o->steps; s++) {
    double t0 = bench_now_s();
    bt_status st = o->gpt ? bt_trainer_backward_tokens(tr, w->tx, w->ty,
                                                       &loss, &err)
                          : bt_trainer_backward(tr, w->x, w->y, &loss, &err);
    if (st != BT_OK) {
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
    for (int d = 0; d < p * R; d++)
      idle[d] = span;
    for (size_t i = 0; i < n; i++)
      idle[sl[i].device] -= sl[i].end - sl[i].start;
    *span_us = span;
  }
  rc = 0;
out:
  free(sl);
  free(t);
  bt_trainer_destroy(tr);
  return rc;
}

/* The plain loop's median step time. */
static int
time_plain(bt_model_t *model, const struct opts *o, const struct work *w,
           double *step_s)
{
  double t[64];
  bt_error_t err;
  float loss;

  for (int s = -1; s < o->steps; s++) {
    double t0 = bench_now_s();
    bt_status st =
        o->gpt ? bt_model_reference_step_tokens(
                     model, w->tx, w->ty, (size_t)o->batch, (size_t)o->seq,
                     o->microbatches, 1, (uint32_t)(s + 2), &loss, &err)
               : bt_model_reference_step(model, w->x, w->y, (size_t)o->batch,
                                         o->microbatches, &loss, &err);
    if (st != BT_OK) {
      fprintf(stderr, "baton-train-bench: %s\n", err.message);
      return -1;
    }
    if (s >= 0)
      t[s] = bench_now_s() - t0;
  }
  *step_s = bench_median(t, o->steps);
  return 0;
}

static int
make_model(const struct opts *o, bt_model_t **model, bt_error_t *err)
{
  if (o->gpt) {
    bt_gpt_config_t gc = BT_GPT_CONFIG_INIT;
    gc.embd = o->embd;
    gc.heads = o->heads;
    gc.layers = o->layers;
    gc.seq_max = o->seq;
    gc.dropout = 0.1f;
    return bt_model_create_gpt(&gc, model, err);
  }
  bt_resmlp_config_t mc = BT_RESMLP_CONFIG_INIT;
  mc.inputs = o->inputs;
  mc.hidden = o->hidden;
  mc.classes = o->classes;
  mc.blocks = o->layers;
  return bt_model_create_resmlp(&mc, model, err);
}

int
main(int argc, char **argv)
{
  struct opts o = {8, 512, 64, 10, 1024, 16, 5, 128, 4, 64, 0, "1f1b"};
  bt_model_t *model = NULL;
  bt_schedule_t *sched = NULL;
  struct work w = {0};
  float *x = NULL;
  int32_t *y = NULL, *tx = NULL, *ty = NULL;
  double pl = 0, p1 = 0, p2 = 0, dp2 = 0, idle[2] = {0, 0}, span = 0;
  bt_error_t err;
  int status = 1;
  size_t ntok;

  if (parse(argc, argv, &o) != 0)
    return 2;
  if (o.steps > 64)
    o.steps = 64;
  ntok = (size_t)o.batch * (size_t)o.seq;
  x = malloc(sizeof(float) * (size_t)o.batch * (size_t)o.inputs);
  y = malloc(sizeof(int32_t) * (size_t)o.batch);
  tx = malloc(sizeof(int32_t) * ntok);
  ty = malloc(sizeof(int32_t) * ntok);
  if (x == NULL || y == NULL || tx == NULL || ty == NULL)
    goto out;
  for (size_t i = 0; i < (size_t)o.batch * (size_t)o.inputs; i++)
    x[i] = frand();
  for (int i = 0; i < o.batch; i++)
    y[i] = (int32_t)(frand() * (float)o.classes) % o.classes;
  for (size_t i = 0; i < ntok; i++) {
    tx[i] = (int32_t)(frand() * 256.0f) % 256;
    ty[i] = (int32_t)(frand() * 256.0f) % 256;
  }
  w.x = x;
  w.y = y;
  w.tx = tx;
  w.ty = ty;
  if (make_model(&o, &model, &err) != BT_OK ||
      bt_schedule_open(o.schedule, &sched, &err) != BT_OK) {
    fprintf(stderr, "baton-train-bench: %s\n", err.message);
    goto out;
  }
  if (time_plain(model, &o, &w, &pl) != 0 ||
      time_trainer(model, sched, &o, 1, 1, &w, &p1, NULL, NULL) != 0 ||
      time_trainer(model, sched, &o, 2, 1, &w, &p2, idle, &span) != 0 ||
      (o.gpt && time_trainer(model, sched, &o, 1, 2, &w, &dp2, NULL, NULL) !=
                    0))
    goto out;
  if (o.gpt)
    printf("{\"model\":\"gpt\",\"layers\":%d,\"embd\":%d,\"heads\":%d,"
           "\"seq\":%d,\"batch\":%d,\"microbatches\":%d,\"schedule\":\"%s\","
           "\"steps\":%d,\"plain_ms\":%.3f,\"p1_ms\":%.3f,\"p2_ms\":%.3f,"
           "\"dp2_ms\":%.3f,\"tokens_per_s\":{\"plain\":%.0f,\"p1\":%.0f,"
           "\"p2\":%.0f,\"dp2\":%.0f},",
           o.layers, o.embd, o.heads, o.seq, o.batch, o.microbatches,
           o.schedule, o.steps, pl * 1e3, p1 * 1e3, p2 * 1e3, dp2 * 1e3,
           (double)ntok / pl, (double)ntok / p1, (double)ntok / p2,
           (double)ntok / dp2);
  else
    printf("{\"model\":\"resmlp\",\"layers\":%d,\"hidden\":%d,\"batch\":%d,"
           "\"microbatches\":%d,\"schedule\":\"%s\",\"steps\":%d,"
           "\"plain_ms\":%.3f,\"p1_ms\":%.3f,\"p2_ms\":%.3f,",
           o.layers, o.hidden, o.batch, o.microbatches, o.schedule, o.steps,
           pl * 1e3, p1 * 1e3, p2 * 1e3);
  printf("\"speedup_p2_over_p1\":%.3f,\"overhead_p1_over_plain\":%.4f,"
         "\"idle_ms\":[%.3f,%.3f],\"bubble_p2\":%.4f}\n",
         p1 / p2, p1 / pl - 1.0, idle[0] / 1e3, idle[1] / 1e3,
         span > 0 ? (idle[0] + idle[1]) / (2.0 * span) : 0.0);
  status = 0;
out:
  bt_schedule_destroy(sched);
  bt_model_destroy(model);
  free(x);
  free(y);
  free(tx);
  free(ty);
  return status;
}
