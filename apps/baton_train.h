/* baton-train's shared parts: the options, the small helpers both model
 * paths use (messages, clocks, parsing, output files) and each path's
 * entry.  Internal to the app; it uses only the public headers. */
#ifndef BATON_APPS_BATON_TRAIN_H
#define BATON_APPS_BATON_TRAIN_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "baton/baton.h"
#include "baton/model.h"
#include "baton/safetensors.h"

#define MAX_DEVICES 256
#define MAX_BALANCE 1024

enum { EXIT_USAGE = 2, EXIT_RUNTIME = 1 };

struct options {
  const char *model; /* "resmlp" or "gpt" */
  int layers, hidden, classes, batch, microbatches, virtual_stages;
  int steps, threads, long_skip, json;
  int ndevices;
  int cuda;       /* --devices lists cuda:K (else cpu:K) */
  int cuda_graph; /* --cuda-graph on */
  int device_ids[MAX_DEVICES];
  char *device_names[MAX_DEVICES];
  int32_t balance[MAX_BALANCE];
  int nbalance; /* 0 = auto */
  const char *schedule;
  int checkpoint, optimizer;
  double lr, weight_decay;
  uint64_t seed;
  const char *data, *save, *load, *dump, *trace, *svg;
  int perturb; /* test hook: random sleeps in stage callbacks */
  /* gpt only */
  int embd, heads, seq, untied, dp, generate;
  double dropout, temperature, clip;
  const char *prompt;
  /* the job (several processes under mpirun / srun) */
  double comm_timeout; /* --comm-timeout, seconds */
  bt_comm_t *comm;
};

/* This process's rank and the job's size (fail() names the rank when
 * there are several). */
extern int job_rank, job_ranks;

/* On SIGTERM, prints what this rank was waiting for and exits 1. */
void install_stop_handler(const bt_comm_t *comm);

/* Prints "baton-train: <message>" on stderr; returns code for
 * `return fail(...)`. */
int fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Seconds on the monotonic clock. */
double now(void);

/* splitmix64 stepping *state: the data shuffles, the synthetic set and the
 * text windows, the same bits on every platform. */
uint64_t rng_next(uint64_t *state);

/* Parse a command-line value; 0 or EXIT_USAGE after a message naming opt. */
int parse_int(const char *opt, const char *s, int min, int *out);
int parse_double(const char *opt, const char *s, double *out);

/* A JSON string literal of s (control characters escaped). */
void print_json_str(FILE *f, const char *s);

/* 0 when path's directory exists and is writable (or path is NULL), else
 * EXIT_USAGE after a message: checked before training so a typo does not
 * waste the run. */
int check_output(const char *opt, const char *path);

/* A Chrome trace (svg = 0) or an SVG picture of tl, written through a
 * temporary renamed when complete. */
int write_timeline(const char *path, int svg, const bt_timeline_t *tl);

/* Writes a --dump file: lead[nlead] (the step's inputs and loss), then
 * p.NAME and g.NAME of every parameter of model in bt_model_param order,
 * with metadata naming the producer, schedule, seed and steps. */
int write_dump(const struct options *o, bt_model_t *model,
               const bt_st_tensor_t *lead, size_t nlead);

/* The training progress on stderr: a bar redrawn in place on a TTY, a line
 * otherwise.  tok_s > 0 and a finite val_ppl are shown when given; final
 * ends a TTY bar with a newline. */
void progress(int tty, int step, int steps, double loss, double ms,
              double tok_s, double val_ppl, int final);

/* Collective: the last step's task times of the whole job on rank 0 (the
 * others' sent to it; *out NULL elsewhere), this rank's alone with one
 * process.  0, or an exit code after a message. */
int job_slices(const struct options *o, const bt_trainer_t *tr,
               bt_slice_t **out, size_t *count);

/* Creates the trainer from the shared flags (batch, microbatches, p devices,
 * virtual stages, balance, schedule, checkpoint, optimizer, threads,
 * perturb, trace, the job) on top of what tc already holds (the model's
 * own fields).  0, or an exit code after a message. */
/* Frees the CUDA backend create_trainer made (--devices cuda:K). */
void release_backend(void);

int create_trainer(const struct options *o, bt_model_t *model,
                   const bt_schedule_t *sched, int p, bt_trainer_config_t *tc,
                   bt_trainer_t **tr);

/* The training loop's bookkeeping, shared by both models: the first, last
 * and tail (last 10% of the steps) losses, the time, and the window since
 * the last 10% mark that the progress line shows. */
struct step_log {
  int steps, tty, tail_n, next_report, win_n;
  double first_loss, last_loss, loss_tail, total_s, win_loss, win_s;
};

void step_log_init(struct step_log *lg, int steps, int tty);
/* Records step (0-based) of dt seconds: a failed step (st, why) or a
 * non-finite loss is an exit code after a message; else 0, and *boundary
 * says whether the step ends a 10% mark. */
int step_log_add(struct step_log *lg, int step, bt_status st, const char *why,
                 float loss, double dt, int *boundary);
/* The progress (a TTY bar every step, a log line per 10% mark: the
 * window's mean loss, ms/step, tok/s when tokens_per_step > 0, val_ppl
 * unless NaN; keep_line ends the bar's line) and, at a mark, a new
 * window. */
void step_log_report(struct step_log *lg, int step, int boundary,
                     double tokens_per_step, double val_ppl, int keep_line);

/* "always", "except_last" or "never". */
const char *checkpoint_name(int mode);

/* The gpt path (baton_train_gpt.c): its defaults' values, and the run. */
#define GPT_DEFAULT_DATA "/usr/share/games/fortunes"
#define GPT_DEFAULT_STEPS 2000
#define GPT_DEFAULT_BATCH 16
#define GPT_DEFAULT_GENERATE 200
#define GPT_MAX_SEQ 4096
int train_gpt(struct options *o);

#endif /* BATON_APPS_BATON_TRAIN_H */
