/* baton-train's helpers shared by the resmlp and gpt paths (declared in
 * baton_train.h). */
#include <errno.h>
#include <signal.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef BATON_HAVE_CUDA
#include "baton/cuda.h"
#endif
#include "baton_train.h"

int
fail(int code, const char *fmt, ...)
{
  va_list ap;

  if (job_ranks > 1)
    fprintf(stderr, "baton-train: rank %d: ", job_rank);
  else
    fputs("baton-train: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  return code;
}

int job_rank, job_ranks = 1;

static const bt_comm_t *stop_comm;
static char stop_prefix[64];

/* SIGTERM (mpirun stopping the job, e.g. because another rank died):
 * say what this rank was waiting for, with async-signal-safe calls only
 * (the note is a stable, terminated string: comm.h). */
static void
on_stop(int sig)
{
  const char *what = bt_comm_waiting_for(stop_comm);
  static const char mid[] = "stopped by the launcher (another rank failed "
                            "or died?)";
  static const char wait[] = " while waiting for ";

  (void)sig;
  if (write(STDERR_FILENO, stop_prefix, strlen(stop_prefix)) < 0 ||
      write(STDERR_FILENO, mid, sizeof mid - 1) < 0)
    _exit(1);
  if (what[0] != '\0' && (write(STDERR_FILENO, wait, sizeof wait - 1) < 0 ||
                          write(STDERR_FILENO, what, strlen(what)) < 0))
    _exit(1);
  if (write(STDERR_FILENO, "\n", 1) < 0)
    _exit(1);
  _exit(1);
}

void
install_stop_handler(const bt_comm_t *comm)
{
  struct sigaction sa;

  stop_comm = comm;
  snprintf(stop_prefix, sizeof stop_prefix, "baton-train: rank %d: ", job_rank);
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
}

double
now(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* splitmix64: the data shuffles and the synthetic set, the same bits on
 * every platform. */
uint64_t
rng_next(uint64_t *state)
{
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);

  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

int
parse_int(const char *opt, const char *s, int min, int *out)
{
  char *end;
  long v;

  errno = 0;
  v = strtol(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || v < min || v > 100000000)
    return fail(EXIT_USAGE,
                "%s needs a whole number >= %d (got '%s'); see "
                "--help",
                opt, min, s);
  *out = (int)v;
  return 0;
}

int
parse_double(const char *opt, const char *s, double *out)
{
  char *end;
  double v;

  errno = 0;
  v = strtod(s, &end);
  if (errno != 0 || end == s || *end != '\0' || !isfinite(v) || v < 0.0)
    return fail(EXIT_USAGE, "%s needs a number >= 0 (got '%s'); see --help",
                opt, s);
  *out = v;
  return 0;
}

/* An output file's directory must exist and be writable before training
 * starts, so a typo does not waste the run. */
int
check_output(const char *opt, const char *path)
{
  char dir[4096];
  const char *slash;

  if (path == NULL)
    return 0;
  if (path[0] == '\0')
    return fail(EXIT_USAGE, "%s needs a file name", opt);
  slash = strrchr(path, '/');
  if (slash == NULL) {
    strcpy(dir, ".");
  } else if (slash == path) {
    strcpy(dir, "/");
  } else {
    if ((size_t)(slash - path) >= sizeof dir)
      return fail(EXIT_USAGE, "%s: path too long", opt);
    memcpy(dir, path, (size_t)(slash - path));
    dir[slash - path] = '\0';
  }
  if (access(dir, W_OK | X_OK) != 0)
    return fail(EXIT_USAGE,
                "%s %s: cannot write in directory '%s' (%s); "
                "create it or pick another path",
                opt, path, dir, strerror(errno));
  return 0;
}

void
print_json_str(FILE *f, const char *s)
{
  fputc('"', f);
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\')
      fprintf(f, "\\%c", c);
    else if (c < 0x20)
      fprintf(f, "\\u%04x", c);
    else
      fputc(c, f);
  }
  fputc('"', f);
}

/* Writes a timeline file through a temporary beside it, renamed when
 * complete, so a failed write leaves no half file. */
int
write_timeline(const char *path, int svg, const bt_timeline_t *tl)
{
  char tmp[4200];
  bt_error_t err;
  bt_status st;
  FILE *f;

  if (strlen(path) > 4096)
    return fail(EXIT_RUNTIME, "%s: path too long", path);
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
  f = fopen(tmp, "w");
  if (f == NULL)
    return fail(EXIT_RUNTIME, "cannot create %s: %s ; check the directory", tmp,
                strerror(errno));
  st = svg ? bt_timeline_write_svg(f, tl, 1, &err)
           : bt_timeline_write_chrome(f, tl, 1, &err);
  if (fclose(f) != 0 && st == BT_OK) {
    st = BT_EIO;
    snprintf(err.message, sizeof err.message, "write failed: %s",
             strerror(errno));
  }
  if (st != BT_OK) {
    remove(tmp);
    return fail(EXIT_RUNTIME, "cannot write %s: %s", path, err.message);
  }
  if (rename(tmp, path) != 0) {
    int e = errno;
    remove(tmp);
    return fail(EXIT_RUNTIME, "cannot write %s: %s", path, strerror(e));
  }
  return 0;
}

int
write_dump(const struct options *o, bt_model_t *model,
           const bt_st_tensor_t *lead, size_t nlead)
{
  size_t np = bt_model_param_count(model), count = 0;
  bt_st_tensor_t *t = calloc(nlead + 2 * np, sizeof *t);
  char **names = calloc(2 * np + 1, sizeof *names), seed[32], steps[32];
  const char *meta[] = {"producer", "baton-train", "schedule", o->schedule,
                        "seed",     seed,          "step",     "0",
                        "steps",    steps,         NULL};
  bt_error_t err;
  int rc = EXIT_RUNTIME;

  snprintf(seed, sizeof seed, "%llu", (unsigned long long)o->seed);
  snprintf(steps, sizeof steps, "%d", o->steps);
  if (t == NULL || names == NULL) {
    fail(EXIT_RUNTIME, "out of memory for the dump");
    goto out_free;
  }
  for (size_t i = 0; i < nlead; i++)
    t[count++] = lead[i];
  for (size_t i = 0; i < np; i++) {
    bt_param_t p;
    size_t len;
    if (bt_model_param(model, i, &p) != BT_OK) {
      fail(EXIT_RUNTIME, "parameter %zu cannot be read for the dump", i);
      goto out_free;
    }
    len = strlen(p.name) + 3;
    names[2 * i] = malloc(len);
    names[2 * i + 1] = malloc(len);
    if (names[2 * i] == NULL || names[2 * i + 1] == NULL) {
      fail(EXIT_RUNTIME, "out of memory for the dump");
      goto out_free;
    }
    snprintf(names[2 * i], len, "p.%s", p.name);
    snprintf(names[2 * i + 1], len, "g.%s", p.name);
    for (int k = 0; k < 2; k++) {
      bt_st_tensor_t *e = &t[count++];
      e->name = names[2 * i + (size_t)k];
      e->dtype = BT_ST_F32;
      e->ndim = p.ndim;
      for (int j = 0; j < p.ndim && j < 2; j++)
        e->shape[j] = p.shape[j];
      e->data = k == 0 ? p.value : p.grad;
      e->bytes = p.count * sizeof(float);
    }
  }
  if (bt_st_save(o->dump, t, count, meta, &err) != BT_OK) {
    fail(EXIT_RUNTIME, "cannot write the dump: %s", err.message);
    goto out_free;
  }
  rc = 0;
out_free:
  if (names)
    for (size_t i = 0; i < 2 * np; i++)
      free(names[i]);
  free(names);
  free(t);
  return rc;
}

void
progress(int tty, int step, int steps, double loss, double ms, double tok_s,
         double val_ppl, int final)
{
  char extra[96] = "";
  int len = 0;

  if (tok_s > 0.0)
    len = snprintf(extra, sizeof extra, "  %.0f tok/s", tok_s);
  if (isfinite(val_ppl) && len >= 0 && (size_t)len < sizeof extra)
    snprintf(extra + len, sizeof extra - (size_t)len, "  val ppl %.2f",
             val_ppl);
  if (tty) {
    int width = 30, fill = (int)((double)width * step / steps);
    fprintf(stderr, "\r[");
    for (int i = 0; i < width; i++)
      fputc(i < fill ? '#' : '.', stderr);
    fprintf(stderr, "] step %d/%d  loss %.4f  %.2f ms/step%s\033[K", step,
            steps, loss, ms, extra);
    if (final)
      fputc('\n', stderr);
  } else {
    fprintf(stderr, "step %d/%d  loss %.4f  %.2f ms/step%s\n", step, steps,
            loss, ms, extra);
  }
  fflush(stderr);
}

const char *
checkpoint_name(int mode)
{
  return mode == BT_CHECKPOINT_ALWAYS  ? "always"
         : mode == BT_CHECKPOINT_NEVER ? "never"
                                       : "except_last";
}

int
job_slices(const struct options *o, const bt_trainer_t *tr, bt_slice_t **out,
           size_t *count)
{
  bt_slice_t *mine = NULL, *all = NULL;
  size_t n = 0, total;
  uint64_t theirs;
  bt_error_t err;
  bt_status st;

  *out = NULL;
  *count = 0;
  if ((st = bt_trainer_slices(tr, NULL, &n)) != BT_OK ||
      (mine = malloc((n + 1) * sizeof *mine)) == NULL ||
      (st = bt_trainer_slices(tr, mine, &n)) != BT_OK) {
    free(mine);
    return fail(EXIT_RUNTIME, "cannot read the last step's timeline (%s)",
                st == BT_OK ? "out of memory" : bt_strerror(st));
  }
  if (job_ranks <= 1) {
    *out = mine;
    *count = n;
    return 0;
  }
  /* Every rank's slices to rank 0 (device numbers are the job's; each
   * rank's times count from its own step start). */
  if (job_rank != 0) {
    theirs = n;
    st = bt_comm_send(o->comm, &theirs, sizeof theirs, 0, 11, &err);
    if (st == BT_OK)
      st = bt_comm_send(o->comm, mine, n * sizeof *mine, 0, 12, &err);
    free(mine);
    return st == BT_OK ? 0
                       : fail(EXIT_RUNTIME, "cannot send the timeline: %s",
                              err.message);
  }
  total = n;
  all = mine;
  for (int r = 1; r < job_ranks; r++) {
    bt_slice_t *grown;
    if ((st = bt_comm_recv(o->comm, &theirs, sizeof theirs, r, 11, &err)) !=
        BT_OK)
      break;
    grown = realloc(all, (total + theirs + 1) * sizeof *all);
    if (grown == NULL) {
      free(all);
      return fail(EXIT_RUNTIME, "out of memory for the timeline");
    }
    all = grown;
    if ((st = bt_comm_recv(o->comm, all + total, theirs * sizeof *all, r, 12,
                           &err)) != BT_OK)
      break;
    total += theirs;
  }
  if (st != BT_OK) {
    free(all);
    return fail(EXIT_RUNTIME, "cannot gather the timeline: %s", err.message);
  }
  *out = all;
  *count = total;
  return 0;
}

/* --devices cuda:...: one backend per process, made at the first trainer
 * and freed by release_backend. */
static bt_backend_t *backend;

void
release_backend(void)
{
  bt_backend_destroy(backend);
  backend = NULL;
}

static int
make_cuda_backend(const struct options *o, bt_backend_t **out)
{
#ifdef BATON_HAVE_CUDA
  int32_t gpus[MAX_DEVICES];
  /* This rank's share of the job's devices (names local to the rank). */
  int share = o->ndevices / job_ranks;
  bt_error_t err;
  bt_status st;

  if (!bt_cuda_available())
    return fail(EXIT_USAGE, "--devices lists cuda devices, but no GPU is "
                            "usable here; use cpu:K devices");
  for (int i = 0; i < share; i++)
    gpus[i] = o->device_ids[job_rank * share + i];
  if (backend == NULL &&
      (st = bt_cuda_backend_create(gpus, share, &backend, &err)) != BT_OK)
    return fail(st == BT_EINVAL ? EXIT_USAGE : EXIT_RUNTIME,
                "cannot start the CUDA devices: %s", err.message);
  *out = backend;
  return 0;
#else
  (void)o;
  (void)out;
  return fail(EXIT_USAGE, "this baton-train was built without CUDA; use "
                          "cpu:K devices, or build where the CUDA toolkit is");
#endif
}

int
create_trainer(const struct options *o, bt_model_t *model,
               const bt_schedule_t *sched, int p, bt_trainer_config_t *tc,
               bt_trainer_t **tr)
{
  bt_error_t err;
  bt_status st;

  tc->batch = o->batch;
  tc->microbatches = o->microbatches;
  tc->devices = p;
  tc->virtual_stages = o->virtual_stages;
  tc->balance = o->nbalance > 0 ? o->balance : NULL;
  tc->nbalance = o->nbalance;
  tc->schedule = sched;
  tc->checkpoint = o->checkpoint;
  tc->optimizer = o->optimizer;
  tc->lr = (float)o->lr;
  tc->weight_decay = (float)o->weight_decay;
  tc->threads = o->threads;
  tc->perturb_seed = (uint32_t)o->perturb;
  tc->trace = o->trace != NULL || o->svg != NULL;
  tc->comm = o->comm;
  tc->replicas = o->dp;
  tc->cuda_graph = o->cuda_graph;
  if (o->cuda_graph && !o->cuda)
    return fail(EXIT_USAGE, "--cuda-graph needs cuda devices (--devices "
                            "cuda:0,...)");
  if (o->cuda) {
    int rc = make_cuda_backend(o, &tc->backend);
    if (rc != 0)
      return rc;
  }
  if ((st = bt_trainer_create(model, tc, tr, &err)) != BT_OK)
    return fail(st == BT_EINVAL || st == BT_EUNSUPPORTED ? EXIT_USAGE
                                                         : EXIT_RUNTIME,
                "cannot set up the pipeline: %s", err.message);
  if (bt_trainer_note(*tr) != NULL && job_rank == 0)
    fprintf(stderr, "baton-train: note: %s\n", bt_trainer_note(*tr));
  return 0;
}

void
step_log_init(struct step_log *lg, int steps, int tty)
{
  memset(lg, 0, sizeof *lg);
  lg->steps = steps;
  lg->tty = tty;
  lg->tail_n = steps / 10 > 0 ? steps / 10 : 1;
  lg->next_report = 1;
  lg->first_loss = NAN;
}

int
step_log_add(struct step_log *lg, int step, bt_status st, const char *why,
             float loss, double dt, int *boundary)
{
  if (st != BT_OK || !isfinite(loss)) {
    if (lg->tty)
      fputc('\n', stderr);
    if (st != BT_OK)
      return fail(EXIT_RUNTIME, "step %d failed: %s", step + 1, why);
    return fail(EXIT_RUNTIME, "step %d: the loss is %g ; lower --lr", step + 1,
                (double)loss);
  }
  if (step == 0)
    lg->first_loss = loss;
  lg->last_loss = loss;
  if (step >= lg->steps - lg->tail_n)
    lg->loss_tail += loss;
  lg->total_s += dt;
  lg->win_loss += loss;
  lg->win_s += dt;
  lg->win_n++;
  *boundary = (long)(step + 1) * 10 >= (long)lg->next_report * lg->steps;
  return 0;
}

void
step_log_report(struct step_log *lg, int step, int boundary,
                double tokens_per_step, double val_ppl, int keep_line)
{
  if (lg->tty || boundary)
    progress(lg->tty, step + 1, lg->steps, lg->win_loss / lg->win_n,
             1e3 * lg->win_s / lg->win_n,
             tokens_per_step * lg->win_n / lg->win_s, val_ppl, keep_line);
  if (boundary) {
    while ((long)lg->next_report * lg->steps <= (long)(step + 1) * 10)
      lg->next_report++;
    lg->win_loss = lg->win_s = 0.0;
    lg->win_n = 0;
  }
}
