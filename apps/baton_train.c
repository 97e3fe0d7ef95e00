/* baton-train: train a model pipelined over CPU devices.
 *
 * The reference client of <baton/model.h>, with two models:
 *
 * resmlp (the default): it loads a classification data set (the 8x8
 * digits, a generated one, or any safetensors file with x and y), splits
 * it into a training and a held-out part, trains with the chosen schedule,
 * and reports the held-out accuracy, the step time and each device's peak
 * activation memory next to the simulator's prediction.
 *
 * gpt (baton_train_gpt.c): a byte-level language model on a text corpus,
 * pipelined and data parallel; reports the validation perplexity and can
 * sample text.
 *
 * This file holds the command line and the resmlp path; baton_train.h the
 * parts both paths share.  It uses only the public headers. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "baton_train.h"

#define DIGITS_PATH "data/digits.safetensors"

struct dataset {
  char source[1024]; /* shown in messages: the file, or "synthetic" */
  size_t n, d;
  int32_t classes;
  float *x;  /* [n, d] */
  int32_t *y; /* [n] */
};

/* ---- small helpers -------------------------------------------------- */

/* Uniform in [0, 1) with 24 bits, exact as a float. */
static float
rng_float(uint64_t *state)
{
  return (float)(rng_next(state) >> 40) * (1.0f / 16777216.0f);
}

static size_t
rng_below(uint64_t *state, size_t n)
{
  return (size_t)(rng_next(state) % (uint64_t)n);
}

static void
shuffle(size_t *a, size_t n, uint64_t *state)
{
  for (size_t i = n; i > 1; i--) {
    size_t j = rng_below(state, i), t = a[i - 1];
    a[i - 1] = a[j];
    a[j] = t;
  }
}

static void
usage(FILE *f)
{
  fputs(
      "usage: baton-train [--model resmlp|gpt] [options]\n"
      "  --model resmlp|gpt  the model (default resmlp, a classifier; gpt,\n"
      "                      a byte-level language model)\n"
      "  --data PATH         resmlp: digits|synthetic|PATH (default digits,\n"
      "                      from " DIGITS_PATH "; scripts/setup.sh makes\n"
      "                      it); PATH: a safetensors file with x [N,D] F32\n"
      "                      and y [N] I32.  gpt: a text file or a directory\n"
      "                      of them (default " GPT_DEFAULT_DATA ",\n"
      "                      scripts/deps.sh --demo installs it)\n"
      "  --layers L          residual or transformer blocks (default 4)\n"
      "  --batch N           rows (resmlp, default 64) or sequences (gpt,\n"
      "                      default 16) per step\n"
      "  --microbatches M    microbatches per step (per replica), dividing N\n"
      "                      (default 4)\n"
      "  --devices LIST      comma-separated cpu:K, one per pipeline device;\n"
      "                      with --dp R, R blocks of p (default cpu:0,cpu:1);\n"
      "                      or cuda:K (resmlp), a logical device on GPU K,\n"
      "                      repeatable (cuda:0,cuda:0: two stages' devices\n"
      "                      on one GPU)\n"
      "  --dp R              data-parallel replicas; replica r runs on the\n"
      "                      r-th block of devices/R devices (default 1)\n"
      "  --cuda-graph on|off with cuda devices: capture the second step as\n"
      "                      one CUDA graph and replay it (default off)\n"
      "  --virtual V         stages per device (default: the schedule's)\n"
      "  --balance LIST|auto layers per stage, e.g. 2,3,1 (L+2 in all);\n"
      "                      auto balances by measured time (default)\n"
      "  --schedule S        NAME | PATH.so | PATH.csv (default 1f1b)\n"
      "  --checkpoint always|except_last|never  (default except_last)\n"
      "  --optimizer sgd|adamw  (default adamw)\n"
      "  --lr X              learning rate (default 3e-3)\n"
      "  --weight-decay X    AdamW weight decay (default 0)\n"
      "  --steps K           training steps (default 300; gpt 2000, and 0\n"
      "                      means no training, e.g. to sample a --load)\n"
      "  --seed S            parameters, data split and order (default 1)\n"
      "  --threads T         runtime threads (default: online CPUs)\n"
      "  --comm-timeout S    under mpirun/srun: seconds a rank waits for\n"
      "                      another before failing (default 60)\n"
      "  --perturb SEED      test hook: every stage callback first sleeps a\n"
      "                      random 0..200 us; results must not change\n"
      "  --load CKPT         start from a checkpoint (safetensors)\n"
      "  --save CKPT         write the trained parameters\n"
      "  --dump F.safetensors  after the first step: x, y, loss, and every\n"
      "                      parameter p.NAME (as used in that step) and its\n"
      "                      gradient g.NAME; training then continues\n"
      "  --trace F.json      the last step's timeline as a Chrome trace\n"
      "  --svg F.svg         the last step's timeline as a picture\n"
      "  --json              one JSON object with the results on stdout\n"
      "resmlp only:\n"
      "  --hidden H          width (default 64)\n"
      "  --classes C         classes (default: the data's max label + 1)\n"
      "  --long-skip         add the input layer's output before the head\n"
      "gpt only:\n"
      "  --embd C            width, a multiple of --heads (default 128)\n"
      "  --heads NH          attention heads (default 4)\n"
      "  --seq T             tokens (bytes) per sequence (default 64)\n"
      "  --dropout P         dropout probability in [0, 1) (default 0)\n"
      "  --untied            a separate head.w instead of the tied wte\n"
      "  --clip X            clip the global gradient norm to X, 0 = off\n"
      "                      (default 0.5)\n"
      "  --generate N        after training, print N sampled bytes, 0 = none\n"
      "                      (default 200)\n"
      "  --prompt TEXT       the text sampling continues (default: a newline)\n"
      "  --temperature X     sampling temperature, 0 = greedy (default 0.8)\n",
      f);
}

static int
parse_devices(const char *s, struct options *o)
{
  const char *p = s;

  for (int i = 0; i < o->ndevices; i++)
    free(o->device_names[i]);
  o->ndevices = 0;
  o->cuda = 0;
  for (;;) {
    const char *comma = strchr(p, ','), *end = comma ? comma : p + strlen(p);
    size_t len = (size_t)(end - p);
    size_t at = len > 5 && strncmp(p, "cuda:", 5) == 0 ? 5 : 4;
    char *num_end;
    long k;

    if (len <= at || (strncmp(p, "cpu:", 4) != 0 && at == 4))
      return fail(EXIT_USAGE, "--devices: '%.*s' is not a device; write "
                  "cpu:K or cuda:K, comma separated (e.g. cpu:0,cpu:1)",
                  (int)len, p);
    if (o->ndevices > 0 && o->cuda != (at == 5))
      return fail(EXIT_USAGE, "--devices mixes cpu and cuda devices; list "
                  "one kind");
    o->cuda = at == 5;
    errno = 0;
    k = strtol(p + at, &num_end, 10);
    if (errno != 0 || num_end != end || k < 0 || k >= MAX_DEVICES ||
        p[at] == '-' || p[at] == '+')
      return fail(EXIT_USAGE, "--devices: '%.*s' needs a device number "
                  "0..%d after the colon (e.g. cpu:0,cpu:1)", (int)len, p,
                  MAX_DEVICES - 1);
    if (o->ndevices == MAX_DEVICES)
      return fail(EXIT_USAGE, "--devices: at most %d devices", MAX_DEVICES);
    o->device_ids[o->ndevices] = (int)k;
    o->device_names[o->ndevices] = malloc(len + 1);
    if (o->device_names[o->ndevices] == NULL)
      return fail(EXIT_RUNTIME, "out of memory");
    memcpy(o->device_names[o->ndevices], p, len);
    o->device_names[o->ndevices][len] = '\0';
    o->ndevices++;
    if (comma == NULL)
      return 0;
    p = comma + 1;
  }
}

static int
parse_balance(const char *s, struct options *o)
{
  const char *p = s;

  o->nbalance = 0;
  if (strcmp(s, "auto") == 0)
    return 0;
  for (;;) {
    char *end;
    long v;

    errno = 0;
    v = strtol(p, &end, 10);
    if (errno != 0 || end == p || (*end != ',' && *end != '\0') || v < 1 ||
        v > 1000000 || p[0] == '+' || p[0] == ' ')
      return fail(EXIT_USAGE, "--balance needs layers per stage, whole "
                  "numbers >= 1, comma separated (e.g. 2,3,1), or auto "
                  "(got '%s')", s);
    if (o->nbalance == MAX_BALANCE)
      return fail(EXIT_USAGE, "--balance: at most %d stages", MAX_BALANCE);
    o->balance[o->nbalance++] = (int32_t)v;
    if (*end == '\0')
      return 0;
    p = end + 1;
  }
}

static const char value_options[] =
    " --model --layers --hidden --classes --batch --microbatches --devices "
    "--virtual --balance --schedule --checkpoint --optimizer --lr "
    "--weight-decay --steps --seed --data --save --load --dump --trace --svg "
    "--threads --perturb --embd --heads --seq --dropout --dp --generate "
    "--prompt --temperature --clip --comm-timeout --cuda-graph ";

/* Options that only one model takes (flags and those with a value). */
static const char gpt_options[] =
    " --embd --heads --seq --dropout --untied --generate --prompt "
    "--temperature --clip ";
static const char resmlp_options[] = " --hidden --classes --long-skip ";

static int
listed(const char *list, const char *opt)
{
  char key[64];

  snprintf(key, sizeof key, " %s ", opt);
  return strlen(opt) < 60 && strstr(list, key) != NULL;
}

/* After the options: the model's defaults, then the checks that need the
 * model or several options together. */
static int
finish_args(struct options *o, const char *gpt_opt, const char *resmlp_opt)
{
  int gpt = strcmp(o->model, "gpt") == 0;

  /* Under W ranks --devices lists the job's devices, rank r owning the
   * r-th share, names local to the rank: a name may repeat across shares,
   * not within one. */
  if (o->ndevices % job_ranks != 0)
    return fail(EXIT_USAGE, "--devices lists %d devices, which do not split "
                "evenly over the job's %d ranks; list a multiple of %d",
                o->ndevices, job_ranks, job_ranks);
  for (int i = 0; i < o->ndevices && !o->cuda; i++)
    for (int j = i + 1; j < o->ndevices; j++)
      if (o->device_ids[i] == o->device_ids[j] &&
          i / (o->ndevices / job_ranks) == j / (o->ndevices / job_ranks))
        return fail(EXIT_USAGE, "--devices lists cpu:%d twice%s; name each "
                    "device once", o->device_ids[i],
                    job_ranks > 1 ? " in one rank's share" : "");

  if (!gpt && gpt_opt != NULL)
    return fail(EXIT_USAGE, "%s is a gpt option; add --model gpt, or drop "
                "it for resmlp", gpt_opt);
  if (gpt && resmlp_opt != NULL)
    return fail(EXIT_USAGE, "%s is for --model resmlp; %s", resmlp_opt,
                strcmp(resmlp_opt, "--hidden") == 0
                    ? "gpt's width is --embd"
                : strcmp(resmlp_opt, "--classes") == 0
                    ? "gpt predicts the 256 byte values"
                    : "gpt has no long skip; drop it");
  if (o->batch < 0)
    o->batch = gpt ? GPT_DEFAULT_BATCH : 64;
  if (o->steps < 0)
    o->steps = gpt ? GPT_DEFAULT_STEPS : 300;
  if (o->data == NULL)
    o->data = gpt ? GPT_DEFAULT_DATA : "digits";
  if (o->clip < 0.0)
    o->clip = 0.5;
  if (o->generate < 0)
    o->generate = GPT_DEFAULT_GENERATE;
  if (o->ndevices % o->dp != 0)
    return fail(EXIT_USAGE, "--devices lists %d devices, not a multiple of "
                "--dp %d: replica r runs on the r-th block of devices/R; "
                "list R*p devices (e.g. --dp 2 --devices "
                "cpu:0,cpu:1,cpu:2,cpu:3)", o->ndevices, o->dp);
  if (o->dp == 1 && o->batch % o->microbatches != 0)
    return fail(EXIT_USAGE, "--microbatches %d does not divide --batch "
                "%d; pick m dividing N (e.g. --batch %d)", o->microbatches,
                o->batch,
                o->batch + o->microbatches - o->batch % o->microbatches);
  if (o->batch % (o->dp * o->microbatches) != 0) {
    int k = o->dp * o->microbatches;
    return fail(EXIT_USAGE, "--batch %d is not divisible by --dp %d x "
                "--microbatches %d = %d: each replica takes batch/R %s "
                "in m microbatches (e.g. --batch %d)", o->batch, o->dp,
                o->microbatches, k, gpt ? "sequences" : "rows",
                o->batch + k - o->batch % k);
  }
  if (!gpt) {
    if (o->steps == 0)
      return fail(EXIT_USAGE, "--steps needs a whole number >= 1 (got '0') "
                  "for resmlp; see --help");
    return 0;
  }
  if (strcmp(o->data, "digits") == 0 || strcmp(o->data, "synthetic") == 0)
    return fail(EXIT_USAGE, "--data %s is a resmlp data set; gpt reads text: "
                "pass --data FILE (a text file or a directory of them)",
                o->data);
  if (o->seq > GPT_MAX_SEQ)
    return fail(EXIT_USAGE, "--seq %d is larger than baton-train allows "
                "(%d); use a shorter sequence", o->seq, GPT_MAX_SEQ);
  if (o->embd % o->heads != 0)
    return fail(EXIT_USAGE, "--embd %d is not a multiple of --heads %d; "
                "pick C = nh x head size (e.g. --embd %d)", o->embd,
                o->heads, o->embd + o->heads - o->embd % o->heads);
  if (o->dropout >= 1.0)
    return fail(EXIT_USAGE, "--dropout is a probability in [0, 1) (got %g)",
                o->dropout);
  if (o->steps == 0 && (o->dump || o->trace || o->svg))
    return fail(EXIT_USAGE, "%s needs a training step; give --steps >= 1",
                o->dump ? "--dump" : o->trace ? "--trace" : "--svg");
  if (o->generate == 0 && o->prompt != NULL)
    return fail(EXIT_USAGE, "--prompt needs --generate N >= 1, the bytes to "
                "sample after it");
  return 0;
}

/* 0, -1 for --help (exit 0), or an exit code. */
static int
parse_args(int argc, char **argv, struct options *o)
{
  const char *gpt_opt = NULL, *resmlp_opt = NULL;

  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int rc = 0, takes = 1;

    if (gpt_opt == NULL && listed(gpt_options, a))
      gpt_opt = a;
    if (resmlp_opt == NULL && listed(resmlp_options, a))
      resmlp_opt = a;
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout);
      return -1;
    } else if (strcmp(a, "--json") == 0) {
      o->json = 1;
      takes = 0;
    } else if (strcmp(a, "--long-skip") == 0) {
      o->long_skip = 1;
      takes = 0;
    } else if (strcmp(a, "--untied") == 0) {
      o->untied = 1;
      takes = 0;
    } else if (!listed(value_options, a)) {
      return fail(EXIT_USAGE, "unknown option '%s'; see --help", a);
    } else if (v == NULL) {
      return fail(EXIT_USAGE, "%s needs a value; see --help", a);
    } else if (strcmp(a, "--model") == 0) {
      if (strcmp(v, "resmlp") != 0 && strcmp(v, "gpt") != 0)
        rc = fail(EXIT_USAGE, "--model '%s' is not known; the models are "
                  "resmlp and gpt", v);
      o->model = v;
    } else if (strcmp(a, "--layers") == 0) {
      rc = parse_int(a, v, 0, &o->layers);
    } else if (strcmp(a, "--hidden") == 0) {
      rc = parse_int(a, v, 1, &o->hidden);
    } else if (strcmp(a, "--classes") == 0) {
      rc = parse_int(a, v, 2, &o->classes);
    } else if (strcmp(a, "--batch") == 0) {
      rc = parse_int(a, v, 1, &o->batch);
    } else if (strcmp(a, "--microbatches") == 0) {
      rc = parse_int(a, v, 1, &o->microbatches);
    } else if (strcmp(a, "--devices") == 0) {
      rc = parse_devices(v, o);
    } else if (strcmp(a, "--virtual") == 0) {
      rc = parse_int(a, v, 1, &o->virtual_stages);
    } else if (strcmp(a, "--balance") == 0) {
      rc = parse_balance(v, o);
    } else if (strcmp(a, "--schedule") == 0) {
      o->schedule = v;
    } else if (strcmp(a, "--checkpoint") == 0) {
      if (strcmp(v, "always") == 0)
        o->checkpoint = BT_CHECKPOINT_ALWAYS;
      else if (strcmp(v, "except_last") == 0)
        o->checkpoint = BT_CHECKPOINT_EXCEPT_LAST;
      else if (strcmp(v, "never") == 0)
        o->checkpoint = BT_CHECKPOINT_NEVER;
      else
        rc = fail(EXIT_USAGE, "--checkpoint is always, except_last or never "
                  "(got '%s')", v);
    } else if (strcmp(a, "--optimizer") == 0) {
      if (strcmp(v, "sgd") == 0)
        o->optimizer = BT_OPTIMIZER_SGD;
      else if (strcmp(v, "adamw") == 0)
        o->optimizer = BT_OPTIMIZER_ADAMW;
      else
        rc = fail(EXIT_USAGE, "--optimizer is sgd or adamw (got '%s')", v);
    } else if (strcmp(a, "--lr") == 0) {
      rc = parse_double(a, v, &o->lr);
      if (rc == 0 && o->lr <= 0.0)
        rc = fail(EXIT_USAGE, "--lr needs a number > 0 (got '%s')", v);
    } else if (strcmp(a, "--weight-decay") == 0) {
      rc = parse_double(a, v, &o->weight_decay);
    } else if (strcmp(a, "--steps") == 0) {
      /* 0 (no training) is for gpt only; finish_args checks. */
      rc = parse_int(a, v, 0, &o->steps);
    } else if (strcmp(a, "--seed") == 0) {
      char *end;
      errno = 0;
      o->seed = strtoull(v, &end, 10);
      if (errno != 0 || end == v || *end != '\0' || v[0] == '-')
        rc = fail(EXIT_USAGE, "--seed needs a whole number >= 0 (got '%s')",
                  v);
    } else if (strcmp(a, "--threads") == 0) {
      rc = parse_int(a, v, 1, &o->threads);
    } else if (strcmp(a, "--cuda-graph") == 0) {
      if (strcmp(v, "on") != 0 && strcmp(v, "off") != 0)
        rc = fail(EXIT_USAGE, "--cuda-graph takes on or off (got '%s')", v);
      o->cuda_graph = strcmp(v, "on") == 0;
    } else if (strcmp(a, "--perturb") == 0) {
      rc = parse_int(a, v, 1, &o->perturb);
    } else if (strcmp(a, "--comm-timeout") == 0) {
      rc = parse_double(a, v, &o->comm_timeout);
      if (rc == 0 && o->comm_timeout <= 0.0)
        rc = fail(EXIT_USAGE, "--comm-timeout needs seconds > 0 (got '%s')",
                  v);
    } else if (strcmp(a, "--data") == 0) {
      o->data = v;
    } else if (strcmp(a, "--save") == 0) {
      o->save = v;
    } else if (strcmp(a, "--load") == 0) {
      o->load = v;
    } else if (strcmp(a, "--dump") == 0) {
      o->dump = v;
    } else if (strcmp(a, "--trace") == 0) {
      o->trace = v;
    } else if (strcmp(a, "--svg") == 0) {
      o->svg = v;
    } else if (strcmp(a, "--embd") == 0) {
      rc = parse_int(a, v, 1, &o->embd);
    } else if (strcmp(a, "--heads") == 0) {
      rc = parse_int(a, v, 1, &o->heads);
    } else if (strcmp(a, "--seq") == 0) {
      rc = parse_int(a, v, 1, &o->seq);
    } else if (strcmp(a, "--dropout") == 0) {
      rc = parse_double(a, v, &o->dropout);
    } else if (strcmp(a, "--dp") == 0) {
      rc = parse_int(a, v, 1, &o->dp);
    } else if (strcmp(a, "--generate") == 0) {
      rc = parse_int(a, v, 0, &o->generate);
    } else if (strcmp(a, "--prompt") == 0) {
      o->prompt = v;
    } else if (strcmp(a, "--temperature") == 0) {
      rc = parse_double(a, v, &o->temperature);
    } else if (strcmp(a, "--clip") == 0) {
      rc = parse_double(a, v, &o->clip);
    }
    if (rc != 0)
      return rc;
    i += takes;
  }
  return finish_args(o, gpt_opt, resmlp_opt);
}

/* ---- data ----------------------------------------------------------- */

static void
dataset_free(struct dataset *ds)
{
  free(ds->x);
  free(ds->y);
  memset(ds, 0, sizeof *ds);
}

/* A fixed random linear teacher labels uniform inputs: linearly separable,
 * so a small model learns it in a few hundred steps.  Independent of
 * --seed, so every run sees the same set. */
static int
make_synthetic(struct dataset *ds)
{
  const size_t n = 1024, d = 16;
  const int32_t c = 4;
  float w[4 * 16], b[4];
  uint64_t st = 0x5eed0fba70a5ull;

  snprintf(ds->source, sizeof ds->source, "synthetic");
  ds->n = n;
  ds->d = d;
  ds->classes = c;
  ds->x = malloc(n * d * sizeof *ds->x);
  ds->y = malloc(n * sizeof *ds->y);
  if (ds->x == NULL || ds->y == NULL)
    return fail(EXIT_RUNTIME, "out of memory for the synthetic data");
  for (size_t i = 0; i < (size_t)c * d; i++)
    w[i] = 2.0f * rng_float(&st) - 1.0f;
  for (int32_t k = 0; k < c; k++)
    b[k] = 0.0f;
  /* Centre each class's bias so that the classes are about balanced on
   * inputs uniform in [0,1): subtract the logit at the mean input. */
  for (int32_t k = 0; k < c; k++)
    for (size_t j = 0; j < d; j++)
      b[k] -= 0.5f * w[(size_t)k * d + j];
  for (size_t r = 0; r < n; r++) {
    float *xr = ds->x + r * d, best = -INFINITY;
    int32_t arg = 0;
    for (size_t j = 0; j < d; j++)
      xr[j] = rng_float(&st);
    for (int32_t k = 0; k < c; k++) {
      float z = b[k];
      for (size_t j = 0; j < d; j++)
        z += w[(size_t)k * d + j] * xr[j];
      if (z > best) {
        best = z;
        arg = k;
      }
    }
    ds->y[r] = arg;
  }
  return 0;
}

static int
load_file(const char *path, int classes, struct dataset *ds)
{
  bt_st_file_t *f = NULL;
  bt_st_tensor_t tx, ty;
  bt_error_t err;
  bt_status st;
  int rc = EXIT_RUNTIME;
  int32_t maxy = -1;

  snprintf(ds->source, sizeof ds->source, "%s", path);
  st = bt_st_load(path, &f, &err);
  if (st != BT_OK)
    return fail(EXIT_RUNTIME, "cannot load data: %s ; check the file, or "
                "use --data synthetic", err.message);
  if (bt_st_find(f, "x", &tx) != BT_OK || bt_st_find(f, "y", &ty) != BT_OK) {
    fail(EXIT_RUNTIME, "%s has no tensor '%s' ; a data file needs x [N,D] "
         "F32 and y [N] I32", path,
         bt_st_find(f, "x", NULL) != BT_OK ? "x" : "y");
    goto out_close;
  }
  if (tx.dtype != BT_ST_F32 || tx.ndim != 2) {
    fail(EXIT_RUNTIME, "%s: x is %s with %d dimensions ; it must be F32 "
         "[N,D]", path, bt_st_dtype_name(tx.dtype), (int)tx.ndim);
    goto out_close;
  }
  if (ty.dtype != BT_ST_I32 || ty.ndim != 1) {
    fail(EXIT_RUNTIME, "%s: y is %s with %d dimensions ; it must be I32 [N] "
         "(class indices)", path, bt_st_dtype_name(ty.dtype), (int)ty.ndim);
    goto out_close;
  }
  if (tx.shape[0] != ty.shape[0]) {
    fail(EXIT_RUNTIME, "%s: x has %lld rows but y has %lld labels ; they "
         "must match", path, (long long)tx.shape[0], (long long)ty.shape[0]);
    goto out_close;
  }
  if (tx.shape[0] < 2 || tx.shape[1] < 1) {
    fail(EXIT_RUNTIME, "%s: x is [%lld,%lld] ; need at least 2 rows and 1 "
         "column", path, (long long)tx.shape[0], (long long)tx.shape[1]);
    goto out_close;
  }
  ds->n = (size_t)tx.shape[0];
  ds->d = (size_t)tx.shape[1];
  for (size_t i = 0; i < ds->n; i++) {
    int32_t v = ((const int32_t *)ty.data)[i];
    if (v < 0 || (classes > 0 && v >= classes)) {
      fail(EXIT_RUNTIME, "%s: label y[%zu] = %d is outside [0, %d) ; fix "
           "the labels%s", path, i, (int)v, classes > 0 ? classes : INT32_MAX,
           classes > 0 ? " or raise --classes" : "");
      goto out_close;
    }
    if (v > maxy)
      maxy = v;
  }
  for (size_t i = 0; i < ds->n * ds->d; i++)
    if (!isfinite(((const float *)tx.data)[i])) {
      fail(EXIT_RUNTIME, "%s: x[%zu][%zu] is not finite ; clean the data",
           path, i / ds->d, i % ds->d);
      goto out_close;
    }
  ds->classes = classes > 0 ? classes : maxy + 1;
  if (ds->classes < 2) {
    fail(EXIT_RUNTIME, "%s: every label is %d ; need at least 2 classes "
         "(or give --classes)", path, (int)maxy);
    goto out_close;
  }
  ds->x = malloc(tx.bytes);
  ds->y = malloc(ty.bytes);
  if (ds->x == NULL || ds->y == NULL) {
    fail(EXIT_RUNTIME, "out of memory for %s", path);
    goto out_close;
  }
  memcpy(ds->x, tx.data, tx.bytes);
  memcpy(ds->y, ty.data, ty.bytes);
  rc = 0;
out_close:
  bt_st_close(f);
  return rc;
}

static int
load_data(const struct options *o, struct dataset *ds)
{
  if (strcmp(o->data, "synthetic") == 0) {
    int rc = make_synthetic(ds);
    if (rc == 0 && o->classes > 0) {
      if (o->classes < ds->classes)
        return fail(EXIT_USAGE, "--classes %d: the synthetic data has %d "
                    "classes ; give at least %d", o->classes,
                    (int)ds->classes, (int)ds->classes);
      ds->classes = o->classes;
    }
    return rc;
  }
  if (strcmp(o->data, "digits") == 0) {
    const char *path = DIGITS_PATH;
#ifdef BATON_SOURCE_DIR
    if (access(path, R_OK) != 0 &&
        access(BATON_SOURCE_DIR "/" DIGITS_PATH, R_OK) == 0)
      path = BATON_SOURCE_DIR "/" DIGITS_PATH;
#endif
    if (access(path, R_OK) != 0)
      return fail(EXIT_RUNTIME, "no digits data (%s) ; run scripts/setup.sh "
                  "(or python3 scripts/digits.py) to make it, or use --data "
                  "synthetic", DIGITS_PATH);
    return load_file(path, o->classes, ds);
  }
  return load_file(o->data, o->classes, ds);
}

/* ---- output ---------------------------------------------------------- */

/* The simulator's peak activation bytes per device for the trainer's plan:
 * each stage's mem_b is one microbatch's activation bytes, held from its
 * F to its last backward (a split backward holds it until W); checkpointed
 * microbatches hold them from their recomputation (the backward's start)
 * instead. */
static int
simulate_peaks(const bt_trainer_t *tr, int p, int checkpoint, int m,
               double *peaks)
{
  const bt_plan_t *plan = bt_trainer_plan(tr);
  bt_graph_config_t gc = BT_GRAPH_CONFIG_INIT;
  bt_sim_config_t sc = BT_SIM_CONFIG_INIT;
  bt_graph_t *g = NULL;
  bt_sim_t *sim = NULL;
  int32_t S = bt_trainer_stages(tr), *placement = NULL;
  double *mem = NULL;
  bt_error_t err;
  int rc = EXIT_RUNTIME;

  if (plan == NULL)
    return fail(EXIT_RUNTIME, "the trainer has no plan to simulate");
  placement = malloc((size_t)S * sizeof *placement);
  mem = malloc((size_t)S * sizeof *mem);
  if (placement == NULL || mem == NULL) {
    fail(EXIT_RUNTIME, "out of memory");
    goto out_free;
  }
  /* The placement is the plan's: the device that lists a stage owns it. */
  for (int32_t s = 0; s < S; s++) {
    placement[s] = s % p;
    mem[s] = bt_trainer_stage_activation_bytes(tr, s);
  }
  for (int32_t dev = 0; dev < bt_plan_devices(plan); dev++)
    for (size_t i = 0; i < bt_plan_length(plan, dev); i++) {
      bt_action_t a = bt_plan_action(plan, dev, i);
      if (a.kind != BT_ACT_IDLE && a.stage >= 0 && a.stage < S)
        placement[a.stage] = dev;
    }
  gc.plan = plan;
  gc.stage_device = placement;
  if (bt_graph_create(&gc, &g, &err) != BT_OK) {
    fail(EXIT_RUNTIME, "cannot build the plan's graph: %s", err.message);
    goto out_free;
  }
  sc.mem_b = mem;
  sc.mem_w = mem;
  sc.recompute_microbatches = checkpoint == BT_CHECKPOINT_ALWAYS ? m
                              : checkpoint == BT_CHECKPOINT_EXCEPT_LAST
                                  ? m - 1
                                  : 0;
  if (bt_sim_run(g, &sc, &sim, &err) != BT_OK) {
    fail(EXIT_RUNTIME, "cannot simulate the plan: %s", err.message);
    goto out_graph;
  }
  for (int d = 0; d < p; d++)
    peaks[d] = bt_sim_peak_mem(sim, d);
  rc = 0;
  bt_sim_destroy(sim);
out_graph:
  bt_graph_destroy(g);
out_free:
  free(placement);
  free(mem);
  return rc;
}


/* ---- main ------------------------------------------------------------ */

static int
train(struct options *o)
{
  bt_resmlp_config_t mc = BT_RESMLP_CONFIG_INIT;
  bt_trainer_config_t tc = BT_TRAINER_CONFIG_INIT;
  struct dataset ds = {0};
  bt_schedule_t *sched = NULL;
  bt_model_t *model = NULL;
  bt_trainer_t *tr = NULL;
  bt_error_t err;
  bt_status st;
  size_t ntrain, ntest, cursor, *order = NULL, *train_idx = NULL;
  float *xb = NULL, *xtest = NULL;
  int32_t *yb = NULL, *ytest = NULL, *pred = NULL, S;
  double *peaks = NULL, *sim_peaks = NULL;
  struct step_log lg;
  /* p devices per pipeline; --dp R replicas of it on nd = R p devices. */
  int rc = EXIT_RUNTIME, correct = 0, p = o->ndevices / o->dp, boundary;
  int nd = o->ndevices;
  int need_x = 1, need_y = 1;
  uint64_t rng;

  if ((rc = check_output("--save", o->save)) != 0 ||
      (rc = check_output("--dump", o->dump)) != 0 ||
      (rc = check_output("--trace", o->trace)) != 0 ||
      (rc = check_output("--svg", o->svg)) != 0)
    return rc;
  rc = EXIT_RUNTIME;
  if ((st = bt_schedule_open(o->schedule, &sched, &err)) != BT_OK) {
    fail(st == BT_ENOENT ? EXIT_USAGE : EXIT_RUNTIME, "--schedule %s: %s",
         o->schedule, err.message);
    return st == BT_ENOENT ? EXIT_USAGE : EXIT_RUNTIME;
  }
  /* Under several ranks rank 0 reads the data (it evaluates) and tells
   * the others its shape; they read it only if they run a first or last
   * stage (below). */
  if (job_rank == 0 && (rc = load_data(o, &ds)) != 0)
    goto out;
  rc = EXIT_RUNTIME;
  if (job_ranks > 1) {
    double shape[3] = {(double)ds.n, (double)ds.d, (double)ds.classes};
    if ((st = bt_comm_allreduce_sum(o->comm, shape, 3, &err)) != BT_OK) {
      fail(EXIT_RUNTIME, "cannot share the data's shape: %s", err.message);
      goto out;
    }
    ds.n = (size_t)shape[0];
    ds.d = (size_t)shape[1];
    ds.classes = (int32_t)shape[2];
  }

  mc.inputs = (int32_t)ds.d;
  mc.hidden = o->hidden;
  mc.classes = ds.classes;
  mc.blocks = o->layers;
  mc.long_skip = o->long_skip;
  mc.seed = o->seed;
  if ((st = bt_model_create_resmlp(&mc, &model, &err)) != BT_OK) {
    rc = fail(st == BT_EINVAL ? EXIT_USAGE : EXIT_RUNTIME,
              "cannot create the model: %s", err.message);
    goto out;
  }
  if (o->nbalance > 0) {
    int32_t sum = 0, layers = bt_model_layer_count(model);
    for (int i = 0; i < o->nbalance; i++)
      sum += o->balance[i];
    if (sum != layers) {
      rc = fail(EXIT_USAGE, "--balance covers %d layers but the model has %d "
                "(in, %d blocks, head: --layers + 2) ; give per-stage "
                "counts summing to %d, or --balance auto", (int)sum,
                (int)layers, o->layers, (int)layers);
      goto out;
    }
  }
  if (o->load && (st = bt_model_load(model, o->load, &err)) != BT_OK) {
    fail(EXIT_RUNTIME, "--load: %s ; check that it is a checkpoint of this "
         "model (same --layers, --hidden, classes and data width)",
         err.message);
    goto out;
  }

  if ((rc = create_trainer(o, model, sched, p, &tc, &tr)) != 0)
    goto out;
  rc = EXIT_RUNTIME;
  S = bt_trainer_stages(tr);
  bt_trainer_needs_data(tr, &need_x, &need_y);
  if (job_rank != 0 && (need_x || need_y)) {
    struct dataset shape = ds;
    if ((rc = load_data(o, &ds)) != 0)
      goto out;
    rc = EXIT_RUNTIME;
    if (ds.n != shape.n || ds.d != shape.d) {
      fail(EXIT_RUNTIME, "this rank reads %zu rows of %zu from %s, rank 0 "
           "read %zu of %zu: give every rank the same data", ds.n, ds.d,
           ds.source, shape.n, shape.d);
      goto out;
    }
  }

  /* A seeded shuffle; the first 80% train, the rest is held out. */
  rng = o->seed ^ 0xd1b54a32d192ed03ull;
  order = malloc(ds.n * sizeof *order);
  if (order == NULL)
    goto out_oom;
  for (size_t i = 0; i < ds.n; i++)
    order[i] = i;
  shuffle(order, ds.n, &rng);
  ntrain = ds.n * 4 / 5;
  if (ntrain < 1)
    ntrain = 1;
  if (ntrain >= ds.n)
    ntrain = ds.n - 1;
  ntest = ds.n - ntrain;
  train_idx = order;

  xb = malloc((size_t)o->batch * ds.d * sizeof *xb);
  yb = malloc((size_t)o->batch * sizeof *yb);
  xtest = malloc(ntest * ds.d * sizeof *xtest);
  ytest = malloc(ntest * sizeof *ytest);
  pred = malloc(ntest * sizeof *pred);
  peaks = calloc((size_t)nd, sizeof *peaks);
  sim_peaks = calloc((size_t)p, sizeof *sim_peaks);
  if (!xb || !yb || !xtest || !ytest || !pred || !peaks || !sim_peaks)
    goto out_oom;
  for (size_t i = 0; ds.x != NULL && i < ntest; i++) {
    memcpy(xtest + i * ds.d, ds.x + order[ntrain + i] * ds.d,
           ds.d * sizeof *xtest);
    ytest[i] = ds.y[order[ntrain + i]];
  }

  if (!o->json) {
    printf("baton-train: resmlp L=%d H=%d D=%zu C=%d%s, %zu rows from %s "
           "(%zu train, %zu held out)\n", o->layers, o->hidden, ds.d,
           (int)ds.classes, o->long_skip ? " long-skip" : "", ds.n,
           ds.source, ntrain, ntest);
    printf("pipeline: %s on ", bt_schedule_name(sched));
    for (int d = 0; d < nd; d++)
      printf("%s%s", d ? "," : "", o->device_names[d]);
    if (o->dp > 1)
      printf(" (dp %d x %d devices)", o->dp, p);
    printf(", %d stages, balance ", (int)S);
    for (int32_t s = 0; s < S; s++)
      printf("%s%d", s ? "," : "", (int)bt_trainer_stage_layers(tr, s));
    printf("%s; N=%d m=%d, checkpoint %s, %s lr %g, %d steps\n",
           o->nbalance ? "" : " (auto)", o->batch, o->microbatches,
           checkpoint_name(o->checkpoint),
           o->optimizer == BT_OPTIMIZER_SGD ? "sgd" : "adamw", o->lr,
           o->steps);
    fflush(stdout);
  }

  /* Training rows are drawn in a seeded order, reshuffled every epoch. */
  cursor = 0;
  step_log_init(&lg, o->steps, isatty(STDERR_FILENO));
  for (int step = 0; step < o->steps; step++) {
    double t0, dt;
    float loss;

    for (int r = 0; r < o->batch; r++) {
      size_t row;
      if (cursor == ntrain) {
        shuffle(train_idx, ntrain, &rng);
        cursor = 0;
      }
      row = train_idx[cursor++];
      if (ds.x == NULL)
        continue;
      memcpy(xb + (size_t)r * ds.d, ds.x + row * ds.d, ds.d * sizeof *xb);
      yb[r] = ds.y[row];
    }
    t0 = now();
    if (step == 0 && o->dump) {
      st = bt_trainer_backward(tr, need_x ? xb : NULL, need_y ? yb : NULL,
                               &loss, &err);
      /* Rank 0 writes the whole model's values and gradients. */
      if (st == BT_OK)
        st = bt_trainer_gather(tr, 1, &err);
      if (st == BT_OK && job_rank != 0) {
        st = bt_trainer_update(tr, &err);
      } else if (st == BT_OK) {
        dt = now() - t0;
        bt_st_tensor_t lead[3] = {
            {"x", BT_ST_F32, 2, {(int64_t)o->batch, (int64_t)ds.d}, xb,
             (size_t)o->batch * ds.d * sizeof *xb},
            {"y", BT_ST_I32, 1, {(int64_t)o->batch}, yb,
             (size_t)o->batch * sizeof *yb},
            {"loss", BT_ST_F32, 1, {1}, &loss, sizeof loss}};
        if ((rc = write_dump(o, model, lead, 3)) != 0)
          goto out;
        rc = EXIT_RUNTIME;
        t0 = now() - dt;
        st = bt_trainer_update(tr, &err);
      }
    } else {
      st = bt_trainer_step(tr, need_x ? xb : NULL, need_y ? yb : NULL, &loss,
                           &err);
    }
    dt = now() - t0;
    if ((rc = step_log_add(&lg, step, st, err.message, loss, dt, &boundary)) !=
        0)
      goto out;
    rc = EXIT_RUNTIME;
    /* The bar's line ends with the last step. */
    step_log_report(&lg, step, boundary, 0.0, NAN, step + 1 == o->steps);
  }
  lg.loss_tail /= lg.tail_n;

  /* Rank 0 evaluates the whole model. */
  if ((st = bt_trainer_gather(tr, 0, &err)) != BT_OK) {
    fail(EXIT_RUNTIME, "cannot gather the model: %s", err.message);
    goto out;
  }
  if (job_rank == 0 &&
      (st = bt_model_predict(model, xtest, ntest, pred, &err)) != BT_OK) {
    fail(EXIT_RUNTIME, "prediction failed: %s", err.message);
    goto out;
  }
  for (size_t i = 0; job_rank == 0 && i < ntest; i++)
    correct += pred[i] == ytest[i];
  for (int d = 0; d < nd; d++)
    peaks[d] = bt_trainer_peak_activation_bytes(tr, d);
  /* Each rank measures its own devices (0 elsewhere): summed, the job's. */
  if (job_ranks > 1 &&
      (st = bt_comm_allreduce_sum(o->comm, peaks, (size_t)nd, &err)) != BT_OK) {
    fail(EXIT_RUNTIME, "cannot gather the peaks: %s", err.message);
    goto out;
  }
  if ((rc = simulate_peaks(tr, p, o->checkpoint, o->microbatches, sim_peaks)) != 0)
    goto out;
  rc = EXIT_RUNTIME;

  if (o->trace || o->svg) {
    bt_timeline_t tl = BT_TIMELINE_INIT;
    bt_slice_t *slices = NULL;
    size_t count = 0;
    char subtitle[160];

    /* Collective: rank 0 gets the whole job's timeline. */
    if ((rc = job_slices(o, tr, &slices, &count)) != 0)
      goto out;
    rc = EXIT_RUNTIME;
    if (job_rank != 0)
      goto timeline_done;
    snprintf(subtitle, sizeof subtitle, "baton-train, last of %d steps, "
             "N=%d m=%d", o->steps, o->batch, o->microbatches);
    tl.title = bt_schedule_name(sched);
    tl.subtitle = subtitle;
    tl.devices = nd;
    tl.stages = S;
    tl.slices = slices;
    tl.count = count;
    tl.unit_us = 1.0;
    tl.device_names = (const char *const *)o->device_names;
    if ((o->trace && (rc = write_timeline(o->trace, 0, &tl)) != 0) ||
        (o->svg && (rc = write_timeline(o->svg, 1, &tl)) != 0)) {
      free(slices);
      goto out;
    }
  timeline_done:
    free(slices);
    rc = EXIT_RUNTIME;
  }
  if (o->save && (st = bt_trainer_save(tr, o->save, &err)) != BT_OK) {
    fail(EXIT_RUNTIME, "--save: %s", err.message);
    goto out;
  }

  if (o->json) {
    printf("{\"schedule\":");
    print_json_str(stdout, bt_schedule_name(sched));
    printf(",\"devices\":[");
    for (int d = 0; d < nd; d++) {
      if (d)
        putchar(',');
      print_json_str(stdout, o->device_names[d]);
    }
    printf("],\"stages\":%d,\"virtual\":%d,\"microbatches\":%d,\"batch\":%d,"
           "\"steps\":%d,\"layers\":%d,\"hidden\":%d,\"inputs\":%zu,"
           "\"classes\":%d,\"checkpoint\":\"%s\",\"optimizer\":\"%s\","
           "\"lr\":%.9g,\"seed\":%llu,\"data\":",
           (int)S, (int)(S / p), o->microbatches, o->batch, o->steps,
           o->layers, o->hidden, ds.d, (int)ds.classes,
           checkpoint_name(o->checkpoint),
           o->optimizer == BT_OPTIMIZER_SGD ? "sgd" : "adamw", o->lr,
           (unsigned long long)o->seed);
    print_json_str(stdout, ds.source);
    printf(",\"train_rows\":%zu,\"heldout_rows\":%zu,\"balance\":[", ntrain,
           ntest);
    for (int32_t s = 0; s < S; s++)
      printf("%s%d", s ? "," : "", (int)bt_trainer_stage_layers(tr, s));
    printf("],\"loss\":%.9g,\"first_loss\":%.9g,\"last_loss\":%.9g,"
           "\"accuracy\":%.9g,\"step_ms\":%.6g,\"peak_activation_bytes\":[",
           lg.loss_tail, lg.first_loss, lg.last_loss,
           (double)correct / (double)ntest, 1e3 * lg.total_s / o->steps);
    for (int d = 0; d < nd; d++)
      printf("%s%.17g", d ? "," : "", peaks[d]);
    printf("],\"sim_peak_activation_bytes\":[");
    for (int d = 0; d < nd; d++)
      printf("%s%.17g", d ? "," : "", sim_peaks[d % p]);
    printf("],\"dp\":%d}\n", o->dp);
  } else {
    printf("done: loss %.4f (first step %.4f), held-out accuracy %.1f%% "
           "(%d/%zu), %.2f ms/step\n", lg.loss_tail, lg.first_loss,
           100.0 * correct / (double)ntest, correct, ntest,
           1e3 * lg.total_s / o->steps);
    printf("peak activation bytes per device: measured (simulated for this "
           "plan and checkpoint mode)\n");
    for (int d = 0; d < nd; d++)
      printf("  %-8s %12.0f (%.0f)\n", o->device_names[d], peaks[d],
             sim_peaks[d % p]);
    if (o->save)
      printf("saved %s\n", o->save);
    if (o->dump)
      printf("dumped step 1 to %s\n", o->dump);
    if (o->trace)
      printf("trace of the last step in %s\n", o->trace);
    if (o->svg)
      printf("timeline of the last step in %s\n", o->svg);
  }
  if (fflush(stdout) != 0) {
    fail(EXIT_RUNTIME, "cannot write the results: %s", strerror(errno));
    goto out;
  }
  rc = 0;
  goto out;
out_oom:
  fail(EXIT_RUNTIME, "out of memory");
out:
  free(order);
  free(xb);
  free(yb);
  free(xtest);
  free(ytest);
  free(pred);
  free(peaks);
  free(sim_peaks);
  bt_trainer_destroy(tr);
  bt_model_destroy(model);
  bt_schedule_destroy(sched);
  dataset_free(&ds);
  return rc;
}

int
main(int argc, char **argv)
{
  struct options o;
  int rc;

  /* Debian's OpenBLAS is the pthread build and starts its thread pool when
   * it loads, before main; baton runs BLAS on one thread per stage (the
   * pipeline owns the cores), so re-run with the pool kept from starting.
   * OPENBLAS_NUM_THREADS set by the caller is left alone. */
  if (getenv("OPENBLAS_NUM_THREADS") == NULL &&
      setenv("OPENBLAS_NUM_THREADS", "1", 1) == 0)
    execv("/proc/self/exe", argv); /* on failure, go on as we are */

  memset(&o, 0, sizeof o);
  o.model = "resmlp";
  o.layers = 4;
  o.hidden = 64;
  o.microbatches = 4;
  o.schedule = "1f1b";
  o.checkpoint = BT_CHECKPOINT_EXCEPT_LAST;
  o.optimizer = BT_OPTIMIZER_ADAMW;
  o.lr = 3e-3;
  o.steps = -1; /* -1: the model's default, set by finish_args */
  o.batch = -1;
  o.seed = 1;
  o.data = NULL;
  o.embd = 128;
  o.heads = 4;
  o.seq = 64;
  o.dp = 1;
  o.temperature = 0.8;
  o.clip = -1.0;
  o.generate = -1;
  o.comm_timeout = 60.0;
  {
    bt_error_t err = {0};
    bt_status st = bt_comm_init(&argc, &argv, &o.comm, &err);
    if (st != BT_OK)
      return fail(st == BT_EUNSUPPORTED ? EXIT_USAGE : EXIT_RUNTIME,
                  "cannot join the job: %s", err.message);
  }
  job_rank = bt_comm_rank(o.comm);
  job_ranks = bt_comm_size(o.comm);
  if (job_ranks > 1) {
    install_stop_handler(o.comm);
    /* Rank 0 reports; the others speak only to fail. */
    if (job_rank != 0 && freopen("/dev/null", "w", stdout) == NULL)
      return fail(EXIT_RUNTIME, "cannot silence stdout: %s", strerror(errno));
  }
  rc = parse_devices("cpu:0,cpu:1", &o);
  if (rc == 0)
    rc = parse_args(argc, argv, &o);
  bt_comm_set_timeout(o.comm, o.comm_timeout);
  if (rc == 0)
    rc = strcmp(o.model, "gpt") == 0 ? train_gpt(&o) : train(&o);
  for (int i = 0; i < o.ndevices; i++)
    free(o.device_names[i]);
  release_backend();
  /* A failed rank leaves without finalizing: the launcher then ends the
   * job (finalizing would wait for ranks that may never arrive). */
  if (rc <= 0 || job_ranks <= 1)
    bt_comm_finalize(o.comm);
  return rc < 0 ? 0 : rc;
}
