/* baton-train --model gpt: a byte-level GPT language model trained
 * pipelined over CPU devices, optionally data parallel (--dp R: replica r
 * runs on the r-th block of p = devices / R devices).
 *
 * Data: a text file, or a directory whose regular files without a '.' in
 * the name (no symlinks) are read in strcmp order and concatenated, the
 * rule of the library's text loader (model/text.c), reimplemented here as
 * the app uses only public headers.  Tokens are bytes (V = 256).  The last
 * tenth of the bytes (at least T + 1) is validation.  Step k's batch is B
 * windows of T + 1 bytes starting at splitmix64 draws keyed by (seed, k):
 * the same seed gives the same batches whatever the schedule or replicas.
 *
 * Reported: the training loss, the validation perplexity (exp of the mean
 * loss over a fixed set of validation batches, the same for every seed so
 * runs compare), tokens per second, and optionally sampled text. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "baton_train.h"

/* The validation set: VAL_BATCHES batches of B windows, keyed by VAL_SEED
 * (not --seed, so that every run is measured on the same text). */
#define VAL_BATCHES 8
#define VAL_SEED 0x76616c6964617465ull
#define TRAIN_KEY 0x747261696e696e67ull

/* ---- data ------------------------------------------------------------ */

struct text {
  uint8_t *data;
  size_t n, nfiles;
};

/* Appends the whole of the regular file path to *t. */
static int
append_file(const char *path, struct text *t)
{
  FILE *f = fopen(path, "rb");
  size_t cap = t->n;
  int rc = 0;

  if (f == NULL)
    return fail(EXIT_RUNTIME, "--data: cannot open %s: %s", path,
                strerror(errno));
  for (;;) {
    size_t got;
    if (cap - t->n < 65536) {
      uint8_t *p;
      cap = t->n + (t->n > 65536 ? t->n : 65536);
      if ((p = realloc(t->data, cap)) == NULL) {
        rc = fail(EXIT_RUNTIME, "out of memory reading %s", path);
        break;
      }
      t->data = p;
    }
    got = fread(t->data + t->n, 1, cap - t->n, f);
    t->n += got;
    if (got == 0)
      break;
  }
  if (rc == 0 && ferror(f))
    rc = fail(EXIT_RUNTIME, "--data: error reading %s", path);
  fclose(f);
  return rc;
}

static int
cmp_names(const void *a, const void *b)
{
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The directory's data files (regular, not symlinks, no '.' in the name)
 * in strcmp order, concatenated. */
static int
append_dir(const char *dir, struct text *t)
{
  DIR *d = opendir(dir);
  struct dirent *e;
  char **names = NULL;
  size_t n = 0, cap = 0;
  int rc = 0;

  if (d == NULL)
    return fail(EXIT_RUNTIME, "--data: cannot open directory %s: %s", dir,
                strerror(errno));
  while (rc == 0 && (e = readdir(d)) != NULL) {
    struct stat sb;
    if (strchr(e->d_name, '.') != NULL)
      continue;
    if (fstatat(dirfd(d), e->d_name, &sb, AT_SYMLINK_NOFOLLOW) != 0 ||
        !S_ISREG(sb.st_mode))
      continue;
    if (n == cap) {
      char **p = realloc(names, (cap = cap ? 2 * cap : 16) * sizeof *names);
      if (p == NULL) {
        rc = fail(EXIT_RUNTIME, "out of memory listing %s", dir);
        break;
      }
      names = p;
    }
    if ((names[n] = strdup(e->d_name)) == NULL)
      rc = fail(EXIT_RUNTIME, "out of memory listing %s", dir);
    else
      n++;
  }
  closedir(d);
  if (n > 1)
    qsort(names, n, sizeof *names, cmp_names);
  for (size_t i = 0; i < n && rc == 0; i++) {
    char path[8192];
    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    rc = append_file(path, t);
  }
  for (size_t i = 0; i < n; i++)
    free(names[i]);
  free(names);
  t->nfiles = n;
  return rc;
}

static int
load_text(const char *path, struct text *t)
{
  struct stat sb;
  int rc;

  memset(t, 0, sizeof *t);
  if (stat(path, &sb) != 0) {
    if (errno == ENOENT || errno == ENOTDIR)
      return fail(EXIT_RUNTIME, "--data %s: not found; install the Debian "
                  "package fortunes (scripts/deps.sh --demo) or pass --data "
                  "FILE", path);
    return fail(EXIT_RUNTIME, "--data %s: %s", path, strerror(errno));
  }
  if (S_ISDIR(sb.st_mode)) {
    rc = append_dir(path, t);
  } else if (S_ISREG(sb.st_mode)) {
    t->nfiles = 1;
    rc = append_file(path, t);
  } else {
    return fail(EXIT_RUNTIME, "--data %s is neither a file nor a directory; "
                "pass --data FILE with a text file", path);
  }
  if (rc == 0 && t->n == 0)
    rc = fail(EXIT_RUNTIME, "--data %s holds no text (%zu data files; a "
              "directory is read for its regular files without a '.' in "
              "the name); pass --data FILE with a non-empty text file",
              path, t->nfiles);
  if (rc != 0) {
    free(t->data);
    memset(t, 0, sizeof *t);
  }
  return rc;
}

/* Batch `index` of B windows of T + 1 bytes of data [n]: window b starts
 * at splitmix64 output number index * B + b of state seed, mod (n - T);
 * x [B,T] its first T bytes, y [B,T] the next byte of each. */
static void
text_batch(const uint8_t *data, size_t n, size_t B, size_t T, uint64_t seed,
           uint64_t index, int32_t *x, int32_t *y)
{
  for (size_t b = 0; b < B; b++) {
    uint64_t st = seed + (index * (uint64_t)B + b) * 0x9e3779b97f4a7c15ull;
    const uint8_t *w = data + rng_next(&st) % (uint64_t)(n - T);
    for (size_t t = 0; t < T; t++) {
      x[b * T + t] = (int32_t)w[t];
      y[b * T + t] = (int32_t)w[t + 1];
    }
  }
}

/* The mean loss over the validation batches. */
static int
validate(const bt_model_t *model, const uint8_t *val, size_t nval, size_t B,
         size_t T, int32_t *x, int32_t *y, double *loss)
{
  double sum = 0.0;
  bt_error_t err;

  for (uint64_t k = 0; k < VAL_BATCHES; k++) {
    float l;
    text_batch(val, nval, B, T, VAL_SEED, k, x, y);
    if (bt_model_eval_tokens(model, x, y, B, T, &l, &err) != BT_OK)
      return fail(EXIT_RUNTIME, "validation failed: %s", err.message);
    sum += l;
  }
  *loss = sum / VAL_BATCHES;
  return 0;
}

/* ---- output ---------------------------------------------------------- */

/* Bytes as a JSON string, one character per byte: control characters and
 * bytes >= 0x7f as \u00XX (so invalid UTF-8 stays valid JSON). */
static void
json_bytes(FILE *f, const uint8_t *s, size_t n)
{
  fputc('"', f);
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '"' || s[i] == '\\')
      fprintf(f, "\\%c", s[i]);
    else if (s[i] < 0x20 || s[i] >= 0x7f)
      fprintf(f, "\\u%04x", s[i]);
    else
      fputc(s[i], f);
  }
  fputc('"', f);
}

static int
write_trace(const struct options *o, const bt_trainer_t *tr,
            const bt_schedule_t *sched, int32_t S)
{
  bt_timeline_t tl = BT_TIMELINE_INIT;
  bt_slice_t *slices = NULL;
  size_t count = 0;
  char subtitle[200];
  int rc;

  if ((rc = job_slices(o, tr, &slices, &count)) != 0 || job_rank != 0)
    return rc;
  snprintf(subtitle, sizeof subtitle, "baton-train gpt, last of %d steps, "
           "B=%d T=%d m=%d dp=%d", o->steps, o->batch, o->seq,
           o->microbatches, o->dp);
  tl.title = bt_schedule_name(sched);
  tl.subtitle = subtitle;
  tl.devices = o->ndevices;
  tl.stages = S;
  tl.slices = slices;
  tl.count = count;
  tl.unit_us = 1.0;
  tl.device_names = (const char *const *)o->device_names;
  if (o->trace)
    rc = write_timeline(o->trace, 0, &tl);
  if (rc == 0 && o->svg)
    rc = write_timeline(o->svg, 1, &tl);
  free(slices);
  return rc;
}

/* The split of model/text.c: the last max(n / 10, T + 1) bytes validate;
 * both parts must hold a window of T + 1.  0, or EXIT_USAGE after a
 * message. */
static int
split_text(const struct options *o, const struct text *t,
           const uint8_t **train, size_t *ntrain, const uint8_t **val,
           size_t *nval)
{
  size_t T = (size_t)o->seq;

  if (T >= t->n / 2)
    return fail(EXIT_USAGE, "--seq %zu is too long for %s (%zu bytes): the "
                "training and the validation part each need a window of T "
                "+ 1 bytes; use --seq below %zu or more text", T, o->data,
                t->n, t->n / 2);
  *nval = t->n / 10 > T + 1 ? t->n / 10 : T + 1;
  *ntrain = t->n - *nval;
  *train = t->data;
  *val = t->data + *ntrain;
  return 0;
}

/* ---- main ------------------------------------------------------------ */

int
train_gpt(struct options *o)
{
  bt_gpt_config_t mc = BT_GPT_CONFIG_INIT;
  bt_trainer_config_t tc = BT_TRAINER_CONFIG_INIT;
  bt_schedule_t *sched = NULL;
  bt_model_t *model = NULL;
  bt_trainer_t *tr = NULL;
  struct text text = {0};
  bt_error_t err;
  bt_status st;
  const uint8_t *train_data, *val_data;
  size_t ntrain, nval, B = (size_t)o->batch, T = (size_t)o->seq, nparams = 0;
  int32_t *x = NULL, *y = NULL, *prompt = NULL, *sample = NULL, S = 0;
  uint8_t *sample_bytes = NULL;
  size_t nprompt = o->prompt ? strlen(o->prompt) : 0;
  double val_loss = NAN, grad_norm = NAN;
  struct step_log lg;
  int rc;
  int p = o->ndevices / o->dp, need_x = 1, need_y = 1;
  uint64_t train_seed = o->seed ^ TRAIN_KEY;

  if ((rc = check_output("--save", o->save)) != 0 ||
      (rc = check_output("--dump", o->dump)) != 0 ||
      (rc = check_output("--trace", o->trace)) != 0 ||
      (rc = check_output("--svg", o->svg)) != 0)
    return rc;
  if ((st = bt_schedule_open(o->schedule, &sched, &err)) != BT_OK) {
    rc = st == BT_ENOENT ? EXIT_USAGE : EXIT_RUNTIME;
    fail(rc, "--schedule %s: %s", o->schedule, err.message);
    return rc;
  }
  /* Without training there is nothing for the other ranks to do. */
  if (o->steps == 0 && job_rank != 0) {
    bt_schedule_destroy(sched);
    return 0;
  }
  /* Rank 0 reads the text (it validates and samples); another rank only
   * if it runs an embed or a head stage (below). */
  if (job_rank == 0 && (rc = load_text(o->data, &text)) != 0)
    goto out;
  nval = ntrain = 0;
  train_data = val_data = NULL;
  if (text.data != NULL &&
      (rc = split_text(o, &text, &train_data, &ntrain, &val_data, &nval)) != 0)
    goto out;
  rc = EXIT_RUNTIME;

  mc.vocab = 256;
  mc.embd = o->embd;
  mc.heads = o->heads;
  mc.layers = o->layers;
  mc.seq_max = o->seq;
  mc.untied = o->untied;
  mc.dropout = (float)o->dropout;
  mc.seed = o->seed;
  if ((st = bt_model_create_gpt(&mc, &model, &err)) != BT_OK) {
    rc = fail(st == BT_EINVAL || st == BT_ERANGE ? EXIT_USAGE : EXIT_RUNTIME,
              "cannot create the model: %s", err.message);
    goto out;
  }
  for (size_t i = 0; i < bt_model_param_count(model); i++) {
    bt_param_t prm;
    if (bt_model_param(model, i, &prm) == BT_OK)
      nparams += prm.count;
  }
  if (o->nbalance > 0) {
    int32_t sum = 0, layers = bt_model_layer_count(model);
    for (int i = 0; i < o->nbalance; i++)
      sum += o->balance[i];
    if (sum != layers) {
      rc = fail(EXIT_USAGE, "--balance covers %d layers but the model has %d "
                "(embed, %d blocks, head: --layers + 2) ; give per-stage "
                "counts summing to %d, or --balance auto", (int)sum,
                (int)layers, o->layers, (int)layers);
      goto out;
    }
  }
  if (o->load && (st = bt_model_load(model, o->load, &err)) != BT_OK) {
    fail(EXIT_RUNTIME, "--load: %s ; check that it is a checkpoint of this "
         "model (same --layers, --embd, --seq and --untied)", err.message);
    goto out;
  }

  if (o->steps > 0) {
    tc.replicas = o->dp;
    tc.seq = o->seq;
    tc.max_grad_norm = (float)o->clip;
    tc.dropout_seed = o->seed;
    if ((rc = create_trainer(o, model, sched, p, &tc, &tr)) != 0)
      goto out;
    rc = EXIT_RUNTIME;
    S = bt_trainer_stages(tr);
    bt_trainer_needs_data(tr, &need_x, &need_y);
    if (job_rank != 0 && (need_x || need_y)) {
      if ((rc = load_text(o->data, &text)) != 0)
        goto out;
      if ((rc = split_text(o, &text, &train_data, &ntrain, &val_data,
                           &nval)) != 0)
        goto out;
      rc = EXIT_RUNTIME;
    }
  }

  x = malloc(B * T * sizeof *x);
  y = malloc(B * T * sizeof *y);
  if (x == NULL || y == NULL)
    goto out_oom;

  if (!o->json) {
    printf("baton-train: gpt L=%d C=%d nh=%d T=%d V=256 %s dropout %g, %zu "
           "params; %zu bytes of text from %s (%zu file%s: %zu train, %zu "
           "validation)\n", o->layers, o->embd, o->heads, o->seq,
           o->untied ? "untied" : "tied", o->dropout, nparams, text.n,
           o->data, text.nfiles, text.nfiles == 1 ? "" : "s", ntrain, nval);
    if (tr != NULL) {
      printf("pipeline: %s on ", bt_schedule_name(sched));
      for (int d = 0; d < o->ndevices; d++)
        printf("%s%s", d ? "," : "", o->device_names[d]);
      printf(" (dp %d x %d devices), %d stages, balance ", o->dp, p, (int)S);
      for (int32_t s = 0; s < S; s++)
        printf("%s%d", s ? "," : "", (int)bt_trainer_stage_layers(tr, s));
      printf("%s; B=%d T=%d m=%d, checkpoint %s, %s lr %g, clip %g, %d "
             "steps\n", o->nbalance ? "" : " (auto)", o->batch, o->seq,
             o->microbatches, checkpoint_name(o->checkpoint),
             o->optimizer == BT_OPTIMIZER_SGD ? "sgd" : "adamw", o->lr,
             o->clip, o->steps);
    }
    fflush(stdout);
  }

  step_log_init(&lg, o->steps, isatty(STDERR_FILENO));
  for (int step = 0; step < o->steps; step++) {
    double t0, dt, ppl = NAN;
    float loss;
    int boundary;

    if (text.data != NULL)
      text_batch(train_data, ntrain, B, T, train_seed, (uint64_t)step, x, y);
    t0 = now();
    if (step == 0 && o->dump) {
      st = bt_trainer_backward_tokens(tr, need_x ? x : NULL,
                                      need_y ? y : NULL, &loss, &err);
      /* Rank 0 writes the whole model's values and gradients. */
      if (st == BT_OK)
        st = bt_trainer_gather(tr, 1, &err);
      if (st == BT_OK && job_rank != 0) {
        st = bt_trainer_update(tr, &err);
      } else if (st == BT_OK) {
        bt_st_tensor_t lead[3] = {
            {"x", BT_ST_I32, 2, {(int64_t)B, (int64_t)T}, x,
             B * T * sizeof *x},
            {"y", BT_ST_I32, 2, {(int64_t)B, (int64_t)T}, y,
             B * T * sizeof *y},
            {"loss", BT_ST_F32, 1, {1}, &loss, sizeof loss}};
        dt = now() - t0;
        if ((rc = write_dump(o, model, lead, 3)) != 0)
          goto out;
        rc = EXIT_RUNTIME;
        t0 = now() - dt;
        st = bt_trainer_update(tr, &err);
      }
    } else {
      st = bt_trainer_step_tokens(tr, need_x ? x : NULL, need_y ? y : NULL,
                                  &loss, &err);
    }
    dt = now() - t0;
    if ((rc = step_log_add(&lg, step, st, err.message, loss, dt, &boundary)) !=
        0)
      goto out;
    rc = EXIT_RUNTIME;
    /* As the resmlp path: a TTY bar every step, a log line per 10% of the
     * steps; each 10% mark also measures the validation perplexity (its
     * time not counted as training) and keeps the bar's line. */
    if (boundary) {
      /* Rank 0 validates the whole model (every rank gathers). */
      if ((st = bt_trainer_gather(tr, 0, &err)) != BT_OK) {
        fail(EXIT_RUNTIME, "cannot gather the model: %s", err.message);
        goto out;
      }
      if (job_rank == 0 &&
          (rc = validate(model, val_data, nval, B, T, x, y, &val_loss)) != 0)
        goto out;
      rc = EXIT_RUNTIME;
      ppl = exp(val_loss);
    }
    step_log_report(&lg, step, boundary, (double)(B * T), ppl, boundary);
  }
  if (o->steps > 0) {
    lg.loss_tail /= lg.tail_n;
    grad_norm = bt_trainer_grad_norm(tr);
  } else {
    /* No training: the loaded (or initial) model's perplexity. */
    if ((rc = validate(model, val_data, nval, B, T, x, y, &val_loss)) != 0)
      goto out;
    rc = EXIT_RUNTIME;
  }

  if ((o->trace || o->svg) && (rc = write_trace(o, tr, sched, S)) != 0)
    goto out;
  rc = EXIT_RUNTIME;
  if (o->save &&
      (st = tr != NULL ? bt_trainer_save(tr, o->save, &err)
                       : bt_model_save(model, o->save, &err)) != BT_OK) {
    fail(EXIT_RUNTIME, "--save: %s", err.message);
    goto out;
  }
  if (job_rank != 0) {
    rc = 0; /* rank 0 reports */
    goto out;
  }
  if (o->generate > 0) {
    prompt = malloc((nprompt + 1) * sizeof *prompt);
    sample = malloc((size_t)o->generate * sizeof *sample);
    sample_bytes = malloc((size_t)o->generate);
    if (prompt == NULL || sample == NULL || sample_bytes == NULL)
      goto out_oom;
    for (size_t i = 0; i < nprompt; i++)
      prompt[i] = (int32_t)(unsigned char)o->prompt[i];
    if ((st = bt_model_generate(model, prompt, nprompt, (size_t)o->generate,
                                (float)o->temperature, o->seed, sample,
                                &err)) != BT_OK) {
      fail(EXIT_RUNTIME, "--generate: %s", err.message);
      goto out;
    }
    for (int i = 0; i < o->generate; i++)
      sample_bytes[i] = (uint8_t)sample[i];
  }

  if (o->json) {
    printf("{\"model\":\"gpt\",\"layers\":%d,\"embd\":%d,\"heads\":%d,"
           "\"seq\":%d,\"vocab\":256,\"untied\":%s,\"dropout\":%.9g,"
           "\"batch\":%d,\"microbatches\":%d,\"dp\":%d,\"devices\":[",
           o->layers, o->embd, o->heads, o->seq,
           o->untied ? "true" : "false", o->dropout, o->batch,
           o->microbatches, o->dp);
    for (int d = 0; d < o->ndevices; d++) {
      if (d)
        putchar(',');
      print_json_str(stdout, o->device_names[d]);
    }
    printf("],\"schedule\":");
    print_json_str(stdout, bt_schedule_name(sched));
    printf(",\"stages\":%d,\"virtual\":%d,\"balance\":[", (int)S,
           (int)(S / p));
    for (int32_t s = 0; s < S; s++)
      printf("%s%d", s ? "," : "", (int)bt_trainer_stage_layers(tr, s));
    printf("],\"checkpoint\":\"%s\",\"optimizer\":\"%s\",\"lr\":%.9g,"
           "\"clip\":%.9g,\"seed\":%llu,\"steps\":%d,\"params\":%zu,"
           "\"data\":", checkpoint_name(o->checkpoint),
           o->optimizer == BT_OPTIMIZER_SGD ? "sgd" : "adamw", o->lr, o->clip,
           (unsigned long long)o->seed, o->steps, nparams);
    print_json_str(stdout, o->data);
    printf(",\"train_bytes\":%zu,\"val_bytes\":%zu", ntrain, nval);
    if (o->steps > 0)
    {
      printf(",\"loss\":%.9g,\"first_loss\":%.9g,\"grad_norm\":",
             lg.loss_tail, lg.first_loss);
      if (isfinite(grad_norm))
        printf("%.9g", grad_norm);
      else
        printf("null"); /* no clipping, so not measured */
      printf(",\"tokens_per_s\":%.9g,\"step_ms\":%.9g",
             (double)(B * T) * o->steps / lg.total_s,
             1e3 * lg.total_s / o->steps);
    }
    else /* no training */
      printf(",\"loss\":null,\"first_loss\":null,\"grad_norm\":null,"
             "\"tokens_per_s\":null,\"step_ms\":null");
    printf(",\"val_loss\":%.9g,\"val_ppl\":%.9g", val_loss, exp(val_loss));
    if (o->generate > 0) {
      printf(",\"temperature\":%.9g,\"prompt\":", o->temperature);
      json_bytes(stdout, (const uint8_t *)(o->prompt ? o->prompt : ""),
                 nprompt);
      printf(",\"generated\":");
      json_bytes(stdout, sample_bytes, (size_t)o->generate);
    }
    printf("}\n");
  } else {
    if (o->steps > 0)
      printf("done: loss %.4f (first step %.4f), validation loss %.4f, "
             "perplexity %.2f, %.0f tok/s, %.2f ms/step\n", lg.loss_tail,
             lg.first_loss, val_loss, exp(val_loss),
             (double)(B * T) * o->steps / lg.total_s,
             1e3 * lg.total_s / o->steps);
    else
      printf("validation loss %.4f, perplexity %.2f (no training)\n",
             val_loss, exp(val_loss));
    if (o->save)
      printf("saved %s\n", o->save);
    if (o->dump)
      printf("dumped step 1 to %s\n", o->dump);
    if (o->trace)
      printf("trace of the last step in %s\n", o->trace);
    if (o->svg)
      printf("timeline of the last step in %s\n", o->svg);
    if (o->generate > 0) {
      printf("sample (temperature %g, seed %llu):\n", o->temperature,
             (unsigned long long)o->seed);
      fwrite(o->prompt ? o->prompt : "", 1, nprompt, stdout);
      fwrite(sample_bytes, 1, (size_t)o->generate, stdout);
      putchar('\n');
    }
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
  free(x);
  free(y);
  free(prompt);
  free(sample);
  free(sample_bytes);
  bt_trainer_destroy(tr);
  bt_model_destroy(model);
  bt_schedule_destroy(sched);
  free(text.data);
  return rc;
}
