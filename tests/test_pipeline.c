/* The embedding API (include/baton/pipeline.h) end to end, on CPU devices.
 *
 * A toy model whose values say where they came from: stage s's forward
 * writes output[i] = input[i] + (s+1)*1000 + k for microbatch k (stage 0's
 * own input is x[i] = step*1e5 + k*10 + i), and the backward writes
 * grad_input[i] = grad_output[i]*2 + s (the last stage starts from
 * 1 + i + 10*k + 1000*step).  The step and the microbatch are folded in so
 * that a wrong buffer, a stale one from the previous step, or a read before
 * its producer ran all show up as a wrong value.  Stage s's output holds
 * NE + s doubles, so every declared size differs.
 *
 * Every callback checks its call (kind, stage, microbatch, step, device,
 * sizes, buffer contents), that no other callback of its device is running
 * (a per-device busy flag that an exchange must find clear), and stamps a
 * global ticket at its start and end; after each step the tickets must
 * follow the dependencies, and each device's calls must come in its plan
 * order.  Callbacks run on runtime threads, where the registry's
 * test_fail is not safe: they record failures here (cb_fail) and the test
 * reports them after the step. */
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "baton/baton.h"
#include "test.h"

#define MAXS 4
#define MAXM 4
#define MAXD 4
#define NE 4    /* doubles in stage 0's output; stage s's has NE + s */
#define KINDS 6 /* BT_ACT_F, B, I, W, IDLE, BT_STAGE_RECOMPUTE */
#define MAXSK 2

struct skip_spec {
  const char *name;
  int32_t stash, pop;
  int32_t n; /* doubles */
};

/* Everything the callbacks see.  The test thread writes the plain fields
 * before a step; bt_pipeline_step's start orders those writes before every
 * callback, and its end orders the callbacks' writes before the checks. */
struct run {
  int32_t S, m, p, split, recompute, abi_old;
  int32_t dev_of[MAXS];
  void *ctx_of[MAXD]; /* expected call->device_ctx per device */
  int32_t nskips;
  struct skip_spec skip[MAXSK];
  uint64_t step;
  int user_tag[MAXS];
  /* Failure injection: the callback (fail_stage, fail_kind, fail_mb) of
   * step fail_step returns -7 with "bad". */
  uint64_t fail_step;
  int32_t fail_stage, fail_mb, fail_kind;
  atomic_int failed; /* set by the failing callback before it returns */
  /* Nested calls (EBUSY) from the forward of (0, 0). */
  bt_pipeline_t *pl;
  int nested;
  atomic_int nested_done;
  /* Per step. */
  atomic_uint_fast64_t tick;
  atomic_int count[MAXS][MAXM][KINDS];
  atomic_uint_fast64_t t_start[MAXS][MAXM][KINDS], t_end[MAXS][MAXM][KINDS];
  atomic_int dev_pos[MAXS][MAXM][KINDS]; /* index in its device's calls */
  atomic_int devseq[MAXD];
  atomic_int busy[MAXD];
  atomic_int ready_count[MAXS];
  atomic_uint_fast64_t ready_tick[MAXS];
  /* The last call on each device.  Calls of one device are ordered by the
   * runtime (and the busy flag's acquire/release), so plain fields. */
  int32_t last_kind[MAXD], last_stage[MAXD], last_mb[MAXD];
  /* What input_grad(s, k) saw, for weight_grad(s, k) to compare. */
  const void *seen_in[MAXS][MAXM], *seen_go[MAXS][MAXM];
  void *seen_gi[MAXS][MAXM];
  /* Callback failures. */
  atomic_int errors;
  pthread_mutex_t mu;
  char msg[512];
};

static struct run R = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void cb_fail(int line, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
cb_fail(int line, const char *fmt, ...)
{
  va_list ap;

  /* Relaxed: read by the test thread after the step, which orders it. */
  atomic_fetch_add_explicit(&R.errors, 1, memory_order_relaxed);
  pthread_mutex_lock(&R.mu);
  if (R.msg[0] == '\0') {
    int n = snprintf(R.msg, sizeof R.msg, "line %d: ", line);
    va_start(ap, fmt);
    vsnprintf(R.msg + n, sizeof R.msg - (size_t)n, fmt, ap);
    va_end(ap);
  }
  pthread_mutex_unlock(&R.mu);
}

#define CB_CHECK(c, ...)                                                       \
  do {                                                                         \
    if (!(c))                                                                  \
      cb_fail(__LINE__, __VA_ARGS__);                                          \
  } while (0)

/* Reports the callbacks' failures of the last step as one test failure. */
#define REPORT_CB()                                                            \
  do {                                                                         \
    int e_ = atomic_load(&R.errors);                                           \
    if (e_ > 0)                                                                \
      test_fail(__FILE__, __LINE__,                                            \
                "step %llu: %d callback check(s) "                             \
                "failed; first: %s",                                           \
                (unsigned long long)R.step, e_, R.msg);                        \
    atomic_store(&R.errors, 0);                                                \
    R.msg[0] = '\0';                                                           \
  } while (0)

/* ---- the toy model's values ---------------------------------------------- */

static int32_t
out_n(int32_t s)
{
  return NE + s;
}

static double
x_val(uint64_t step, int32_t k, int32_t i)
{
  return (double)step * 1e5 + k * 10 + i;
}

/* Element i of stage s's output in this step. */
static double
fwd_val(uint64_t step, int32_t s, int32_t k, int32_t i)
{
  double v = x_val(step, k, i);

  for (int32_t j = 0; j <= s; j++)
    v += (j + 1) * 1000 + k;
  return v;
}

static double
seed_val(uint64_t step, int32_t k, int32_t i)
{
  return 1.0 + i + 10.0 * k + 1000.0 * (double)step;
}

/* Element i of stage s's grad_input (s >= 1) in this step. */
static double
grad_val(uint64_t step, int32_t s, int32_t k, int32_t i)
{
  double g = seed_val(step, k, i);

  for (int32_t j = R.S - 1; j >= s; j--)
    g = g * 2 + j;
  return g;
}

static double
skip_val(int32_t which, uint64_t step, int32_t k, int32_t i)
{
  return 7e5 + which * 1e4 + (double)step * 100 + k * 10 + i;
}

static double
skip_grad_val(int32_t which, uint64_t step, int32_t k, int32_t i)
{
  return -skip_val(which, step, k, i) - 0.5;
}

static int32_t
skip_index(const char *name)
{
  for (int32_t j = 0; j < R.nskips; j++)
    if (name != NULL && strcmp(name, R.skip[j].name) == 0)
      return j;
  return -1;
}

static int32_t
nskip_role(int32_t s, int pop)
{
  int32_t n = 0;

  for (int32_t j = 0; j < R.nskips; j++)
    n += (pop ? R.skip[j].pop : R.skip[j].stash) == s;
  return n;
}

/* ---- callbacks ----------------------------------------------------------- */

static const char *
kind_name(int32_t kind)
{
  static const char *const names[KINDS] = {"F", "B", "I", "W", "idle", "R"};
  return kind >= 0 && kind < KINDS ? names[kind] : "?";
}

/* Common checks at a callback's start; returns 0 when the call is too
 * broken to index the records with. */
static int
enter(const bt_stage_call_t *c, int32_t kind, char *errbuf, size_t errlen)
{
  int32_t s = c->stage, k = c->microbatch, d;
  uint64_t t;

  CB_CHECK(errbuf != NULL && errlen >= 64, "errbuf %p errlen %zu",
           (void *)errbuf, errlen);
  CB_CHECK(c->size == sizeof(bt_stage_call_t), "call size %zu", c->size);
  if (s < 0 || s >= R.S || k < 0 || k >= R.m) {
    cb_fail(__LINE__, "call for stage %d microbatch %d", (int)s, (int)k);
    return 0;
  }
  d = R.dev_of[s];
  CB_CHECK(c->kind == kind, "%d%s%d: kind %d", (int)s, kind_name(kind), (int)k,
           (int)c->kind);
  CB_CHECK(c->step == R.step, "%d%s%d: step %llu, wanted %llu", (int)s,
           kind_name(kind), (int)k, (unsigned long long)c->step,
           (unsigned long long)R.step);
  CB_CHECK(c->device == d, "%d%s%d: device %d, wanted %d", (int)s,
           kind_name(kind), (int)k, (int)c->device, (int)d);
  CB_CHECK(c->device_ctx == R.ctx_of[d], "%d%s%d: device_ctx %p", (int)s,
           kind_name(kind), (int)k, c->device_ctx);
  CB_CHECK(c->user == (R.abi_old ? NULL : (void *)&R.user_tag[s]),
           "%d%s%d: user %p", (int)s, kind_name(kind), (int)k, c->user);
  /* Acq_rel: finding the flag clear acquires the previous call of this
   * device (its release below), so the plain last_* fields are ordered. */
  if (atomic_exchange_explicit(&R.busy[d], 1, memory_order_acq_rel) != 0)
    cb_fail(__LINE__, "%d%s%d overlaps another callback of device %d", (int)s,
            kind_name(kind), (int)k, (int)d);
  /* Seq_cst: after the failing callback set it, its device starts nothing
   * more in this step. */
  CB_CHECK(!(atomic_load(&R.failed) && d == R.dev_of[R.fail_stage]),
           "%d%s%d ran on device %d after its failure", (int)s, kind_name(kind),
           (int)k, (int)d);
  /* Recompute comes right before backward/input_grad of its (s, k), and
   * nothing else follows a recompute. */
  if ((kind == BT_ACT_B || kind == BT_ACT_I) && R.recompute)
    CB_CHECK(R.last_kind[d] == BT_STAGE_RECOMPUTE && R.last_stage[d] == s &&
                 R.last_mb[d] == k,
             "%d%s%d: the call before it on device %d was %d%s%d, not the "
             "recompute",
             (int)s, kind_name(kind), (int)k, (int)d, (int)R.last_stage[d],
             kind_name(R.last_kind[d]), (int)R.last_mb[d]);
  else
    CB_CHECK(R.last_kind[d] != BT_STAGE_RECOMPUTE,
             "%d%s%d follows recompute %dR%d", (int)s, kind_name(kind), (int)k,
             (int)R.last_stage[d], (int)R.last_mb[d]);
  /* Seq_cst tickets: a callback that happens after another (a dependency
   * through the runtime) draws a larger ticket than that one's end. */
  t = atomic_fetch_add(&R.tick, 1) + 1;
  atomic_store(&R.t_start[s][k][kind], t);
  atomic_fetch_add(&R.count[s][k][kind], 1);
  if (kind != BT_STAGE_RECOMPUTE)
    atomic_store(&R.dev_pos[s][k][kind], atomic_fetch_add(&R.devseq[d], 1));
  return 1;
}

static void
leave(const bt_stage_call_t *c, int32_t kind)
{
  int32_t s = c->stage, k = c->microbatch, d = R.dev_of[s];

  atomic_store(&R.t_end[s][k][kind], atomic_fetch_add(&R.tick, 1) + 1);
  R.last_kind[d] = kind;
  R.last_stage[d] = s;
  R.last_mb[d] = k;
  /* Release: pairs with the next call's exchange in enter(). */
  atomic_store_explicit(&R.busy[d], 0, memory_order_release);
}

static int
maybe_fail(const bt_stage_call_t *c, int32_t kind, char *errbuf, size_t errlen)
{
  if (c->step != R.fail_step || c->stage != R.fail_stage ||
      c->microbatch != R.fail_mb || kind != R.fail_kind)
    return 0;
  atomic_store(&R.failed, 1);
  snprintf(errbuf, errlen, "bad");
  return -7;
}

/* input == stage s-1's output of this step; output (when `out_written`)
 * holds this stage's. */
static void
check_input(const bt_stage_call_t *c, int32_t kind, int out_written)
{
  int32_t s = c->stage, k = c->microbatch;
  const double *in = c->input, *out = c->output;

  if (s == 0) {
    CB_CHECK(in == NULL && c->input_bytes == 0, "0%s%d: input %p, %zu bytes",
             kind_name(kind), (int)k, c->input, c->input_bytes);
  } else {
    CB_CHECK(in != NULL &&
                 c->input_bytes == (size_t)out_n(s - 1) * sizeof(double),
             "%d%s%d: input %p, %zu bytes", (int)s, kind_name(kind), (int)k,
             c->input, c->input_bytes);
    for (int32_t i = 0; in != NULL && i < out_n(s - 1); i++)
      CB_CHECK(in[i] == fwd_val(R.step, s - 1, k, i),
               "%d%s%d: input[%d] = %.1f, wanted %.1f", (int)s, kind_name(kind),
               (int)k, (int)i, in[i], fwd_val(R.step, s - 1, k, i));
  }
  CB_CHECK(out != NULL && c->output_bytes == (size_t)out_n(s) * sizeof(double),
           "%d%s%d: output %p, %zu bytes", (int)s, kind_name(kind), (int)k,
           c->output, c->output_bytes);
  for (int32_t i = 0; out_written && out != NULL && i < out_n(s); i++)
    CB_CHECK(out[i] == fwd_val(R.step, s, k, i),
             "%d%s%d: output[%d] = %.1f, wanted %.1f", (int)s, kind_name(kind),
             (int)k, (int)i, out[i], fwd_val(R.step, s, k, i));
}

/* grad_output == stage s+1's grad_input of this step (its values only
 * after the backward of s+1: `values`); sizes of grad_input. */
static void
check_grads(const bt_stage_call_t *c, int32_t kind, int values)
{
  int32_t s = c->stage, k = c->microbatch;
  const double *go = c->grad_output;

  if (s == R.S - 1) {
    CB_CHECK(go == NULL && c->grad_output_bytes == 0,
             "%d%s%d: grad_output %p, %zu bytes", (int)s, kind_name(kind),
             (int)k, c->grad_output, c->grad_output_bytes);
  } else {
    CB_CHECK(go != NULL &&
                 c->grad_output_bytes == (size_t)out_n(s) * sizeof(double),
             "%d%s%d: grad_output %p, %zu bytes", (int)s, kind_name(kind),
             (int)k, c->grad_output, c->grad_output_bytes);
    for (int32_t i = 0; values && go != NULL && i < out_n(s); i++)
      CB_CHECK(go[i] == grad_val(R.step, s + 1, k, i),
               "%d%s%d: grad_output[%d] = %.1f, wanted %.1f", (int)s,
               kind_name(kind), (int)k, (int)i, go[i],
               grad_val(R.step, s + 1, k, i));
  }
  if (s == 0)
    CB_CHECK(c->grad_input == NULL && c->grad_input_bytes == 0,
             "0%s%d: grad_input %p, %zu bytes", kind_name(kind), (int)k,
             c->grad_input, c->grad_input_bytes);
  else
    CB_CHECK(c->grad_input != NULL &&
                 c->grad_input_bytes == (size_t)out_n(s - 1) * sizeof(double),
             "%d%s%d: grad_input %p, %zu bytes", (int)s, kind_name(kind),
             (int)k, c->grad_input, c->grad_input_bytes);
}

/* The skip arrays of the call: counts, names and sizes. */
static void
check_skip_arrays(const bt_stage_call_t *c, int32_t kind)
{
  int32_t s = c->stage, k = c->microbatch;

  CB_CHECK(c->nskip_out == nskip_role(s, 0) && c->nskip_in == nskip_role(s, 1),
           "%d%s%d: %d skips out, %d in", (int)s, kind_name(kind), (int)k,
           (int)c->nskip_out, (int)c->nskip_in);
  for (int32_t j = 0; j < c->nskip_out && j < MAXSK; j++) {
    int32_t w = skip_index(c->skip_out[j].name);
    CB_CHECK(w >= 0 && R.skip[w].stash == s && c->skip_out[j].data != NULL &&
                 c->skip_out[j].bytes == (size_t)R.skip[w].n * sizeof(double),
             "%d%s%d: skip_out[%d] '%s', %zu bytes", (int)s, kind_name(kind),
             (int)k, (int)j, c->skip_out[j].name, c->skip_out[j].bytes);
    CB_CHECK(w >= 0 && c->skip_grad_in[j].name != NULL &&
                 strcmp(c->skip_grad_in[j].name, R.skip[w].name) == 0 &&
                 c->skip_grad_in[j].data != NULL &&
                 c->skip_grad_in[j].data != c->skip_out[j].data &&
                 c->skip_grad_in[j].bytes == c->skip_out[j].bytes,
             "%d%s%d: skip_grad_in[%d] '%s'", (int)s, kind_name(kind), (int)k,
             (int)j, c->skip_grad_in[j].name);
  }
  for (int32_t j = 0; j < c->nskip_in && j < MAXSK; j++) {
    int32_t w = skip_index(c->skip_in[j].name);
    CB_CHECK(w >= 0 && R.skip[w].pop == s && c->skip_in[j].data != NULL &&
                 c->skip_in[j].bytes == (size_t)R.skip[w].n * sizeof(double),
             "%d%s%d: skip_in[%d] '%s', %zu bytes", (int)s, kind_name(kind),
             (int)k, (int)j, c->skip_in[j].name, c->skip_in[j].bytes);
    CB_CHECK(w >= 0 && c->skip_grad_out[j].name != NULL &&
                 strcmp(c->skip_grad_out[j].name, R.skip[w].name) == 0 &&
                 c->skip_grad_out[j].data != NULL &&
                 c->skip_grad_out[j].bytes == c->skip_in[j].bytes,
             "%d%s%d: skip_grad_out[%d] '%s'", (int)s, kind_name(kind), (int)k,
             (int)j, c->skip_grad_out[j].name);
  }
}

/* Skip values: forward at the stash writes them, at the pop reads them;
 * the backward at the pop writes their gradients, at the stash reads
 * them (weight_grad too, later).  `phase`: 0 forward, 1 backward, 2 W. */
static void
do_skips(const bt_stage_call_t *c, int32_t kind, int phase)
{
  int32_t k = c->microbatch;

  check_skip_arrays(c, kind);
  for (int32_t j = 0; j < c->nskip_out && j < MAXSK; j++) {
    int32_t w = skip_index(c->skip_out[j].name);
    double *v = c->skip_out[j].data;
    const double *g = c->skip_grad_in[j].data;
    if (w < 0 || v == NULL || g == NULL)
      continue;
    for (int32_t i = 0; i < R.skip[w].n; i++) {
      if (phase == 0)
        v[i] = skip_val(w, R.step, k, i);
      else
        CB_CHECK(g[i] == skip_grad_val(w, R.step, k, i),
                 "%d%s%d: skip_grad_in '%s'[%d] = %.1f, wanted %.1f",
                 (int)c->stage, kind_name(kind), (int)k, R.skip[w].name, (int)i,
                 g[i], skip_grad_val(w, R.step, k, i));
    }
  }
  for (int32_t j = 0; j < c->nskip_in && j < MAXSK; j++) {
    int32_t w = skip_index(c->skip_in[j].name);
    const double *v = c->skip_in[j].data;
    double *g = c->skip_grad_out[j].data;
    if (w < 0 || v == NULL || g == NULL)
      continue;
    for (int32_t i = 0; i < R.skip[w].n; i++) {
      CB_CHECK(v[i] == skip_val(w, R.step, k, i),
               "%d%s%d: skip_in '%s'[%d] = %.1f, wanted %.1f", (int)c->stage,
               kind_name(kind), (int)k, R.skip[w].name, (int)i, v[i],
               skip_val(w, R.step, k, i));
      if (phase == 1)
        g[i] = skip_grad_val(w, R.step, k, i);
    }
  }
}

static void
nested_calls(void)
{
  bt_error_t e2;

  bt_error_clear(&e2);
  CB_CHECK(bt_pipeline_step(R.pl, &e2) == BT_EBUSY,
           "bt_pipeline_step inside a callback did not return BT_EBUSY");
  CB_CHECK(e2.status == BT_EBUSY && e2.message[0] != '\0',
           "nested step left err %d '%s'", (int)e2.status, e2.message);
  CB_CHECK(bt_pipeline_destroy(R.pl) == BT_EBUSY,
           "bt_pipeline_destroy inside a callback did not return BT_EBUSY");
  atomic_fetch_add(&R.nested_done, 1);
}

static int
cb_forward(const bt_stage_call_t *c, char *errbuf, size_t errlen)
{
  int32_t s = c->stage, k = c->microbatch;
  double *out = c->output;
  const double *in = c->input;
  int rc;

  if (!enter(c, BT_ACT_F, errbuf, errlen))
    return 0;
  check_input(c, BT_ACT_F, 0);
  check_grads(c, BT_ACT_F, 0);
  for (int32_t i = 0; out != NULL && i < out_n(s); i++) {
    double x = s == 0                           ? x_val(R.step, k, i)
               : in != NULL && i < out_n(s - 1) ? in[i]
                                                : fwd_val(R.step, s - 1, k, i);
    out[i] = x + (s + 1) * 1000 + k;
  }
  do_skips(c, BT_ACT_F, 0);
  if (R.nested && s == 0 && k == 0)
    nested_calls();
  rc = maybe_fail(c, BT_ACT_F, errbuf, errlen);
  leave(c, BT_ACT_F);
  return rc;
}

/* Full backward (B) or input_grad (I). */
static int
cb_backward(const bt_stage_call_t *c, char *errbuf, size_t errlen)
{
  int32_t kind = R.split ? BT_ACT_I : BT_ACT_B;
  int32_t s = c->stage, k = c->microbatch;
  const double *go = c->grad_output;
  double *gi = c->grad_input;
  int rc;

  if (!enter(c, kind, errbuf, errlen))
    return 0;
  check_input(c, kind, 1);
  check_grads(c, kind, 1);
  for (int32_t i = 0; gi != NULL && i < out_n(s - 1); i++) {
    double g = go != NULL ? go[i] : seed_val(R.step, k, i);
    gi[i] = g * 2 + s;
  }
  do_skips(c, kind, 1);
  R.seen_in[s][k] = c->input;
  R.seen_go[s][k] = c->grad_output;
  R.seen_gi[s][k] = c->grad_input;
  rc = maybe_fail(c, kind, errbuf, errlen);
  leave(c, kind);
  return rc;
}

static int
cb_weight(const bt_stage_call_t *c, char *errbuf, size_t errlen)
{
  int32_t s = c->stage, k = c->microbatch;
  const double *gi = c->grad_input;
  int rc;

  if (!enter(c, BT_ACT_W, errbuf, errlen))
    return 0;
  CB_CHECK(atomic_load(&R.count[s][k][BT_ACT_I]) == 1,
           "%dW%d before its input_grad", (int)s, (int)k);
  CB_CHECK(c->input == R.seen_in[s][k] && c->grad_output == R.seen_go[s][k] &&
               c->grad_input == R.seen_gi[s][k],
           "%dW%d: buffers differ from its input_grad's", (int)s, (int)k);
  check_input(c, BT_ACT_W, 1);
  check_grads(c, BT_ACT_W, 1);
  for (int32_t i = 0; s > 0 && gi != NULL && i < out_n(s - 1); i++)
    CB_CHECK(gi[i] == grad_val(R.step, s, k, i), "%dW%d: grad_input[%d] = %.1f",
             (int)s, (int)k, (int)i, gi[i]);
  do_skips(c, BT_ACT_W, 2);
  rc = maybe_fail(c, BT_ACT_W, errbuf, errlen);
  leave(c, BT_ACT_W);
  return rc;
}

static int
cb_recompute(const bt_stage_call_t *c, char *errbuf, size_t errlen)
{
  if (!enter(c, BT_STAGE_RECOMPUTE, errbuf, errlen))
    return 0;
  CB_CHECK(atomic_load(&R.count[c->stage][c->microbatch][BT_ACT_W]) == 0,
           "%dR%d after its weight_grad", (int)c->stage, (int)c->microbatch);
  check_input(c, BT_STAGE_RECOMPUTE, 1);
  check_grads(c, BT_STAGE_RECOMPUTE, 1);
  leave(c, BT_STAGE_RECOMPUTE);
  return 0;
}

static void
cb_grads_ready(int32_t s, void *user)
{
  int32_t d;
  int32_t bw = R.split ? BT_ACT_W : BT_ACT_B;

  CB_CHECK(user == &R, "grads_ready user %p", user);
  if (s < 0 || s >= R.S) {
    cb_fail(__LINE__, "grads_ready(%d)", (int)s);
    return;
  }
  d = R.dev_of[s];
  /* On its device's actor: no callback of that device runs meanwhile. */
  if (atomic_exchange_explicit(&R.busy[d], 1, memory_order_acq_rel) != 0)
    cb_fail(__LINE__, "grads_ready(%d) overlaps a callback of device %d",
            (int)s, (int)d);
  for (int32_t k = 0; k < R.m; k++) {
    CB_CHECK(atomic_load(&R.count[s][k][bw]) == 1,
             "grads_ready(%d) before %d%s%d", (int)s, (int)s, kind_name(bw),
             (int)k);
    if (R.split)
      CB_CHECK(atomic_load(&R.count[s][k][BT_ACT_I]) == 1,
               "grads_ready(%d) before %dI%d", (int)s, (int)s, (int)k);
  }
  atomic_store(&R.ready_tick[s], atomic_fetch_add(&R.tick, 1) + 1);
  atomic_fetch_add(&R.ready_count[s], 1);
  atomic_store_explicit(&R.busy[d], 0, memory_order_release);
}

/* ---- setup and checks ---------------------------------------------------- */

static void
begin_step(void)
{
  R.step++;
  atomic_store(&R.tick, 0);
  atomic_store(&R.failed, 0);
  for (int32_t s = 0; s < MAXS; s++) {
    atomic_store(&R.ready_count[s], 0);
    atomic_store(&R.ready_tick[s], 0);
    for (int32_t k = 0; k < MAXM; k++)
      for (int32_t x = 0; x < KINDS; x++) {
        atomic_store(&R.count[s][k][x], 0);
        atomic_store(&R.t_start[s][k][x], 0);
        atomic_store(&R.t_end[s][k][x], 0);
        atomic_store(&R.dev_pos[s][k][x], -1);
      }
  }
  for (int32_t d = 0; d < MAXD; d++) {
    atomic_store(&R.devseq[d], 0);
    atomic_store(&R.busy[d], 0);
    R.last_kind[d] = R.last_stage[d] = R.last_mb[d] = -1;
  }
}

/* A fresh run description: S stages on p devices (s % p). */
static void
setup(int32_t S, int32_t p, int32_t m, int split, int recompute)
{
  R.S = S;
  R.p = p;
  R.m = m;
  R.split = split;
  R.recompute = recompute;
  R.abi_old = 0;
  R.nskips = 0;
  R.step = 0;
  R.fail_step = 0;
  R.fail_stage = 0;
  R.pl = NULL;
  R.nested = 0;
  atomic_store(&R.nested_done, 0);
  for (int32_t s = 0; s < MAXS; s++)
    R.dev_of[s] = s % p;
  for (int32_t d = 0; d < MAXD; d++)
    R.ctx_of[d] = NULL;
  atomic_store(&R.errors, 0);
  R.msg[0] = '\0';
}

static void
fill_desc(bt_stage_desc_t *d, int32_t s)
{
  bt_stage_desc_t init = BT_STAGE_DESC_INIT;

  *d = init;
  d->forward = cb_forward;
  if (R.split) {
    d->input_grad = cb_backward;
    d->weight_grad = cb_weight;
  } else {
    d->backward = cb_backward;
  }
  if (R.recompute)
    d->recompute = cb_recompute;
  d->output_bytes = (size_t)out_n(s) * sizeof(double);
  d->grad_input_bytes = s > 0 ? (size_t)out_n(s - 1) * sizeof(double) : 0;
  d->user = &R.user_tag[s];
}

static void
fill_config(bt_pipeline_config_t *cfg, bt_stage_desc_t *desc,
            bt_pipeline_skip_t *skips)
{
  bt_pipeline_config_t init = BT_PIPELINE_CONFIG_INIT;

  *cfg = init;
  for (int32_t s = 0; s < R.S; s++)
    fill_desc(&desc[s], s);
  cfg->stages = R.S;
  cfg->stage = desc;
  cfg->devices = R.p;
  cfg->virtual_stages = R.S / R.p;
  cfg->microbatches = R.m;
  cfg->grads_ready = cb_grads_ready;
  cfg->user = &R;
  for (int32_t j = 0; j < R.nskips; j++) {
    skips[j].name = R.skip[j].name;
    skips[j].stash_stage = R.skip[j].stash;
    skips[j].pop_stage = R.skip[j].pop;
    skips[j].bytes = (size_t)R.skip[j].n * sizeof(double);
  }
  cfg->skips = R.nskips ? skips : NULL;
  cfg->nskips = (size_t)R.nskips;
}

/* Creates a pipeline with the built-in schedule `name`; the schedule is
 * destroyed right away (it is only used during create). */
static bt_status
create_with(bt_pipeline_config_t *cfg, const char *name, bt_pipeline_t **pl,
            bt_error_t *err)
{
  bt_schedule_t *sched = NULL;
  bt_status rc = bt_schedule_builtin(name, &sched, err);

  if (rc != BT_OK)
    return rc;
  cfg->schedule = sched;
  rc = bt_pipeline_create(cfg, pl, err);
  bt_schedule_destroy(sched);
  cfg->schedule = NULL;
  return rc;
}

static bt_status
make_pipeline(const char *name, bt_pipeline_t **pl, bt_error_t *err)
{
  bt_stage_desc_t desc[MAXS];
  bt_pipeline_skip_t skips[MAXSK];
  bt_pipeline_config_t cfg;

  fill_config(&cfg, desc, skips);
  return create_with(&cfg, name, pl, err);
}

static int32_t
bw_kind(void)
{
  return R.split ? BT_ACT_I : BT_ACT_B;
}

static uint64_t
ld(atomic_uint_fast64_t *a)
{
  return atomic_load(a);
}

/* (s, k, kind) started after (ps, pk, pkind) ended, which did run. */
static int
after(int32_t s, int32_t k, int32_t kind, int32_t ps, int32_t pk, int32_t pkind)
{
  uint64_t end = ld(&R.t_end[ps][pk][pkind]);

  return end != 0 && ld(&R.t_start[s][k][kind]) > end;
}

/* Whether (s, k, kind) is the failing action or one it blocked. */
static int
poisoned(int blocked[MAXS][MAXM][KINDS], int32_t s, int32_t k, int32_t kind)
{
  if (s < 0 || s >= R.S)
    return 0;
  return blocked[s][k][kind] ||
         (s == R.fail_stage && k == R.fail_mb && kind == R.fail_kind);
}

/* Which plan actions the failure at (fail_stage, fail_kind, fail_mb) must
 * have kept from running: those after a poisoned one on its device, and
 * those depending on a poisoned one by data or a skip.  A fixed point over
 * the plan. */
static void
blocked_set(const bt_plan_t *plan, int blocked[MAXS][MAXM][KINDS])
{
  int32_t bx = R.split ? BT_ACT_I : BT_ACT_B;
  int changed = 1;

  memset(blocked, 0, sizeof(int) * MAXS * MAXM * KINDS);
  while (changed) {
    changed = 0;
    for (int32_t d = 0; d < bt_plan_devices(plan); d++) {
      bt_action_t prev = {0};
      int have_prev = 0;
      for (size_t i = 0; i < bt_plan_length(plan, d); i++) {
        bt_action_t a = bt_plan_action(plan, d, i);
        int32_t s = a.stage, k = a.microbatch;
        int b;
        if (a.kind == BT_ACT_IDLE)
          continue;
        b = have_prev &&
            poisoned(blocked, prev.stage, prev.microbatch, prev.kind);
        if (a.kind == BT_ACT_F)
          b |= poisoned(blocked, s - 1, k, BT_ACT_F);
        if (a.kind == bx)
          b |= poisoned(blocked, s, k, BT_ACT_F) ||
               poisoned(blocked, s + 1, k, bx);
        if (a.kind == BT_ACT_W)
          b |= poisoned(blocked, s, k, BT_ACT_I);
        for (int32_t j = 0; j < R.nskips; j++) {
          if (a.kind == BT_ACT_F && s == R.skip[j].pop)
            b |= poisoned(blocked, R.skip[j].stash, k, BT_ACT_F);
          if (a.kind == bx && s == R.skip[j].stash)
            b |= poisoned(blocked, R.skip[j].pop, k, bx);
        }
        if (b && !blocked[s][k][a.kind]) {
          blocked[s][k][a.kind] = 1;
          changed = 1;
        }
        prev = a;
        have_prev = 1;
      }
    }
  }
}

/* After a step: counts, dependency order by tickets, plan order per
 * device, grads_ready, and the outputs.  `ok`: the step succeeded; else
 * the blocked actions must not have run. */
static void
check_step(bt_pipeline_t *pl, int ok)
{
  const bt_plan_t *plan = bt_pipeline_plan(pl);
  int32_t bx = bw_kind();
  static int blocked[MAXS][MAXM][KINDS];

  REPORT_CB();
  ASSERT_TRUE(plan != NULL);
  if (!ok)
    blocked_set(plan, blocked);
  else
    memset(blocked, 0, sizeof blocked);
  for (int32_t s = 0; s < R.S; s++) {
    int bw_complete = 1;
    for (int32_t k = 0; k < R.m; k++) {
      int cf = atomic_load(&R.count[s][k][BT_ACT_F]);
      int cb = atomic_load(&R.count[s][k][BT_ACT_B]);
      int ci = atomic_load(&R.count[s][k][BT_ACT_I]);
      int cw = atomic_load(&R.count[s][k][BT_ACT_W]);
      int cr = atomic_load(&R.count[s][k][BT_STAGE_RECOMPUTE]);
      if (ok) {
        EXPECT_INT_EQ(cf, 1);
        EXPECT_INT_EQ(cb, R.split ? 0 : 1);
        EXPECT_INT_EQ(ci, R.split ? 1 : 0);
        EXPECT_INT_EQ(cw, R.split ? 1 : 0);
        EXPECT_INT_EQ(cr, R.recompute ? 1 : 0);
      } else {
        EXPECT_TRUE(cf <= 1 && cb <= 1 && ci <= 1 && cw <= 1 && cr <= 1);
        for (int32_t x = 0; x < 4; x++)
          if (blocked[s][k][x] && atomic_load(&R.count[s][k][x]) != 0)
            test_fail(__FILE__, __LINE__,
                      "%d%s%d ran after the failure it depends on", (int)s,
                      kind_name(x), (int)k);
      }
      if (atomic_load(&R.count[s][k][R.split ? BT_ACT_W : BT_ACT_B]) != 1)
        bw_complete = 0;
      /* Dependencies: each consumer started after its producer ended. */
      if (cf && s > 0)
        EXPECT_TRUE(after(s, k, BT_ACT_F, s - 1, k, BT_ACT_F));
      if (atomic_load(&R.count[s][k][bx])) {
        EXPECT_TRUE(after(s, k, bx, s, k, BT_ACT_F));
        if (s + 1 < R.S)
          EXPECT_TRUE(after(s, k, bx, s + 1, k, bx));
        if (R.recompute)
          EXPECT_TRUE(after(s, k, bx, s, k, BT_STAGE_RECOMPUTE));
      }
      if (cw)
        EXPECT_TRUE(after(s, k, BT_ACT_W, s, k, BT_ACT_I));
      for (int32_t j = 0; j < R.nskips; j++) {
        if (s == R.skip[j].pop && cf)
          EXPECT_TRUE(after(s, k, BT_ACT_F, R.skip[j].stash, k, BT_ACT_F));
        if (s == R.skip[j].stash && atomic_load(&R.count[s][k][bx]))
          EXPECT_TRUE(after(s, k, bx, R.skip[j].pop, k, bx));
      }
    }
    /* grads_ready: once, after every backward of the stage; never when
     * one did not run. */
    if (ok)
      EXPECT_INT_EQ(atomic_load(&R.ready_count[s]), 1);
    else if (!bw_complete || s == R.fail_stage)
      EXPECT_INT_EQ(atomic_load(&R.ready_count[s]), 0);
    else
      EXPECT_INT_EQ(atomic_load(&R.ready_count[s]), 1);
    if (atomic_load(&R.ready_count[s]) == 1)
      for (int32_t k = 0; k < R.m; k++)
        EXPECT_TRUE(ld(&R.ready_tick[s]) >
                    ld(&R.t_end[s][k][R.split ? BT_ACT_W : BT_ACT_B]));
  }
  /* Each device ran its calls in plan order (those that ran: a prefix). */
  for (int32_t d = 0; d < bt_plan_devices(plan); d++) {
    int32_t want = 0;
    for (size_t i = 0; i < bt_plan_length(plan, d); i++) {
      bt_action_t a = bt_plan_action(plan, d, i);
      int32_t pos;
      if (a.kind == BT_ACT_IDLE)
        continue;
      pos = atomic_load(&R.dev_pos[a.stage][a.microbatch][a.kind]);
      if (pos < 0 && !ok)
        break;
      if (pos != want)
        test_fail(__FILE__, __LINE__,
                  "device %d: %d%s%d ran as call %d, plan position %d", (int)d,
                  (int)a.stage, kind_name(a.kind), (int)a.microbatch, (int)pos,
                  (int)want);
      want++;
    }
    EXPECT_INT_EQ(atomic_load(&R.devseq[d]), want);
  }
  for (int32_t d = 0; d < MAXD; d++)
    EXPECT_TRUE(R.last_kind[d] != BT_STAGE_RECOMPUTE);
  if (!ok)
    return;
  /* The outputs of every stage, the last one's above all. */
  for (int32_t s = 0; s < R.S; s++)
    for (int32_t k = 0; k < R.m; k++) {
      size_t n = 0;
      const double *out = bt_pipeline_output(pl, s, k, &n);
      ASSERT_TRUE(out != NULL);
      EXPECT_INT_EQ(n, (size_t)out_n(s) * sizeof(double));
      for (int32_t i = 0; i < out_n(s); i++)
        if (out[i] != fwd_val(R.step, s, k, i))
          test_fail(__FILE__, __LINE__,
                    "output(%d, %d)[%d] = %.1f, wanted "
                    "%.1f",
                    (int)s, (int)k, (int)i, out[i], fwd_val(R.step, s, k, i));
    }
  EXPECT_TRUE(bt_pipeline_output(pl, R.S, 0, NULL) == NULL);
  EXPECT_TRUE(bt_pipeline_output(pl, 0, R.m, NULL) == NULL);
  EXPECT_TRUE(bt_pipeline_output(pl, -1, 0, NULL) == NULL);
}

static void
run_ok_steps(bt_pipeline_t *pl, int steps)
{
  for (int i = 0; i < steps; i++) {
    bt_error_t err;
    bt_error_clear(&err);
    begin_step();
    EXPECT_STATUS(bt_pipeline_step(pl, &err), BT_OK, &err);
    check_step(pl, 1);
  }
}

static void
flow(const char *sched, int32_t S, int32_t p, int split, int recompute)
{
  bt_pipeline_t *pl = NULL;
  bt_error_t err;

  setup(S, p, 4, split, recompute);
  EXPECT_STATUS(make_pipeline(sched, &pl, &err), BT_OK, &err);
  ASSERT_TRUE(pl != NULL);
  run_ok_steps(pl, 3);
  EXPECT_STATUS(bt_pipeline_destroy(pl), BT_OK, NULL);
}

/* ---- 1-4: data flow, order, threads, grads_ready, recompute -------------- */

TEST(flow_gpipe)
{
  flow("gpipe", 3, 3, 0, 0);
}

TEST(flow_1f1b)
{
  flow("1f1b", 3, 3, 0, 0);
}

TEST(flow_zb_h1)
{
  flow("zb-h1", 3, 3, 1, 0);
}

TEST(flow_interleaved)
{
  flow("interleaved", 4, 2, 0, 0);
}

TEST(recompute_1f1b)
{
  flow("1f1b", 3, 3, 0, 1);
}

TEST(recompute_zb_h1)
{
  flow("zb-h1", 3, 3, 1, 1);
}

TEST(recompute_interleaved)
{
  flow("interleaved", 4, 2, 0, 1);
}

/* ---- 5: skips ------------------------------------------------------------ */

static void
run_skips(const char *sched, int split)
{
  bt_pipeline_t *pl = NULL;
  bt_error_t err;

  setup(3, 3, 4, split, 0);
  R.nskips = 2;
  R.skip[0] = (struct skip_spec){"res", 0, 2, 3};
  R.skip[1] = (struct skip_spec){"mid", 1, 2, 5};
  EXPECT_STATUS(make_pipeline(sched, &pl, &err), BT_OK, &err);
  ASSERT_TRUE(pl != NULL);
  run_ok_steps(pl, 3);
  EXPECT_STATUS(bt_pipeline_destroy(pl), BT_OK, NULL);
}

TEST(skips_1f1b)
{
  run_skips("1f1b", 0);
}

TEST(skips_zb_h1)
{
  run_skips("zb-h1", 1);
}

/* ---- 6: errors ----------------------------------------------------------- */

static void
failing(const char *sched, int split, int32_t stage, int32_t kind, int32_t mb,
        const char *want)
{
  bt_pipeline_t *pl = NULL;
  bt_error_t err;

  setup(3, 3, 4, split, 0);
  EXPECT_STATUS(make_pipeline(sched, &pl, &err), BT_OK, &err);
  ASSERT_TRUE(pl != NULL);
  run_ok_steps(pl, 1);
  R.fail_step = 2;
  R.fail_stage = stage;
  R.fail_kind = kind;
  R.fail_mb = mb;
  begin_step();
  bt_error_clear(&err);
  EXPECT_INT_EQ(bt_pipeline_step(pl, &err), -7);
  EXPECT_INT_EQ(err.status, -7);
  if (strcmp(err.message, want) != 0)
    test_fail(__FILE__, __LINE__, "message \"%s\", wanted \"%s\"", err.message,
              want);
  EXPECT_INT_EQ(atomic_load(&R.failed), 1);
  check_step(pl, 0);
  /* The failing stage's gradients are never complete. */
  EXPECT_INT_EQ(atomic_load(&R.ready_count[stage]), 0);
  run_ok_steps(pl, 2);
  EXPECT_STATUS(bt_pipeline_destroy(pl), BT_OK, NULL);
}

TEST(error_forward)
{
  failing("1f1b", 0, 1, BT_ACT_F, 2, "1F2 on cpu:1: bad");
}

TEST(error_forward_gpipe)
{
  failing("gpipe", 0, 1, BT_ACT_F, 2, "1F2 on cpu:1: bad");
}

TEST(error_backward_last_stage)
{
  failing("1f1b", 0, 2, BT_ACT_B, 0, "2B0 on cpu:2: bad");
}

TEST(error_weight_grad)
{
  failing("zb-h1", 1, 1, BT_ACT_W, 2, "1W2 on cpu:1: bad");
}

/* The stage's last backward (or weight_grad) in its device's plan order
 * fails: every one of its callbacks ran, but its gradients are not
 * complete, so no grads_ready for it. */
static void
failing_last(const char *sched, int split, int32_t stage)
{
  bt_pipeline_t *pl = NULL;
  const bt_plan_t *plan;
  bt_action_t last = {0};
  char want[64];
  bt_error_t err;

  setup(3, 3, 4, split, 0);
  EXPECT_STATUS(make_pipeline(sched, &pl, &err), BT_OK, &err);
  ASSERT_TRUE(pl != NULL);
  plan = bt_pipeline_plan(pl);
  for (size_t i = 0; i < bt_plan_length(plan, R.dev_of[stage]); i++) {
    bt_action_t a = bt_plan_action(plan, R.dev_of[stage], i);
    if (a.stage == stage && a.kind == (split ? BT_ACT_W : BT_ACT_B))
      last = a;
  }
  EXPECT_STATUS(bt_pipeline_destroy(pl), BT_OK, NULL);
  snprintf(want, sizeof want, "%dW%d on cpu:%d: bad", (int)stage,
           (int)last.microbatch, (int)R.dev_of[stage]);
  if (!split)
    want[1] = 'B';
  failing(sched, split, stage, last.kind, last.microbatch, want);
}

TEST(error_last_backward)
{
  failing_last("1f1b", 0, 2);
  failing_last("1f1b", 0, 1);
}

TEST(error_last_weight_grad)
{
  failing_last("zb-h1", 1, 0);
  failing_last("zb-h1", 1, 2);
}

/* The forward failure, with the step's grads_ready checked directly. */
TEST(error_no_grads_ready)
{
  bt_pipeline_t *pl = NULL;
  bt_error_t err;

  setup(3, 3, 4, 0, 0);
  EXPECT_STATUS(make_pipeline("1f1b", &pl, &err), BT_OK, &err);
  ASSERT_TRUE(pl != NULL);
  R.fail_step = 1;
  R.fail_stage = 1;
  R.fail_kind = BT_ACT_F;
  R.fail_mb = 2;
  begin_step();
  EXPECT_INT_EQ(bt_pipeline_step(pl, &err), -7);
  for (int32_t s = 0; s < 3; s++)
    EXPECT_INT_EQ(atomic_load(&R.ready_count[s]), 0);
  EXPECT_INT_EQ(atomic_load(&R.count[2][2][BT_ACT_F]), 0);
  for (int32_t s = 0; s < 3; s++)
    EXPECT_INT_EQ(atomic_load(&R.count[s][2][BT_ACT_B]), 0);
  check_step(pl, 0);
  run_ok_steps(pl, 1);
  EXPECT_STATUS(bt_pipeline_destroy(pl), BT_OK, NULL);
}

/* ---- 7: bad configurations ----------------------------------------------- */

static void
expect_create_fails(bt_pipeline_config_t *cfg, const char *sched,
                    bt_status want, const char *needle, int line)
{
  bt_pipeline_t *pl = (bt_pipeline_t *)&R; /* must stay untouched */
  bt_error_t err;
  bt_status rc;

  bt_error_clear(&err);
  if (sched != NULL) {
    rc = create_with(cfg, sched, &pl, &err);
  } else {
    cfg->schedule = NULL;
    rc = bt_pipeline_create(cfg, &pl, &err);
  }
  if (rc != want)
    test_fail(__FILE__, line, "create returned %s, wanted %s: %s",
              bt_status_name(rc), bt_status_name(want), err.message);
  if (strstr(err.message, needle) == NULL)
    test_fail(__FILE__, line, "\"%s\" does not contain \"%s\"", err.message,
              needle);
  if (pl != (bt_pipeline_t *)&R) {
    test_fail(__FILE__, line, "*out changed on failure");
    if (rc == BT_OK)
      bt_pipeline_destroy(pl);
  }
}

TEST(bad_config)
{
  bt_stage_desc_t desc[MAXS];
  bt_pipeline_skip_t sk[MAXSK];
  bt_pipeline_config_t cfg;

  setup(3, 3, 4, 0, 0);
  fill_config(&cfg, desc, sk);
  desc[1].forward = NULL;
  expect_create_fails(&cfg, "1f1b", BT_EINVAL,
                      "stage 1 has no forward callback", __LINE__);

  fill_config(&cfg, desc, sk);
  desc[2].backward = NULL;
  expect_create_fails(&cfg, "gpipe", BT_EINVAL,
                      "schedule 'gpipe' runs full backwards, but stage 2 "
                      "has no backward callback",
                      __LINE__);

  /* Full backwards only, under a split schedule. */
  fill_config(&cfg, desc, sk);
  expect_create_fails(&cfg, "zb-h1", BT_EINVAL, "schedule 'zb-h1'", __LINE__);
  expect_create_fails(&cfg, "zb-h1", BT_EINVAL, "gpipe, 1f1b", __LINE__);
  expect_create_fails(&cfg, "zb-h1", BT_EINVAL, "input_grad", __LINE__);
  /* Only weight_grad missing on one stage. */
  R.split = 1;
  fill_config(&cfg, desc, sk);
  desc[1].weight_grad = NULL;
  expect_create_fails(&cfg, "zb-h1", BT_EINVAL, "stage 1 lacks", __LINE__);
  R.split = 0;

  fill_config(&cfg, desc, sk);
  cfg.devices = 2;
  expect_create_fails(&cfg, "1f1b", BT_EINVAL, "3 stages do not fill 2 devices",
                      __LINE__);
  fill_config(&cfg, desc, sk);
  cfg.virtual_stages = 2;
  expect_create_fails(&cfg, "gpipe", BT_EINVAL, "use 6 stages", __LINE__);

  /* A skip popped before it is stashed. */
  fill_config(&cfg, desc, sk);
  sk[0] = (bt_pipeline_skip_t){"back", 2, 0, 8};
  cfg.skips = sk;
  cfg.nskips = 1;
  expect_create_fails(&cfg, "1f1b", BT_ESKIP, "'back'", __LINE__);
  sk[0] = (bt_pipeline_skip_t){"zero", 0, 2, 0};
  expect_create_fails(&cfg, "1f1b", BT_EINVAL, "bytes > 0", __LINE__);
  sk[0] = (bt_pipeline_skip_t){NULL, 0, 2, 8};
  expect_create_fails(&cfg, "1f1b", BT_EINVAL, "needs a name", __LINE__);
  sk[0] = (bt_pipeline_skip_t){"far", 0, 3, 8};
  expect_create_fails(&cfg, "1f1b", BT_EINVAL, "", __LINE__);
  cfg.skips = NULL;
  expect_create_fails(&cfg, "1f1b", BT_EINVAL, "a pipeline needs", __LINE__);

  fill_config(&cfg, desc, sk);
  expect_create_fails(&cfg, NULL, BT_EINVAL, "and a schedule", __LINE__);

  fill_config(&cfg, desc, sk);
  desc[0].size = offsetof(bt_stage_desc_t, forward);
  expect_create_fails(&cfg, "1f1b", BT_EINVAL, "BT_STAGE_DESC_INIT", __LINE__);
  fill_config(&cfg, desc, sk);
  desc[2].size = 0;
  expect_create_fails(&cfg, "1f1b", BT_EINVAL, "stage 2", __LINE__);

  fill_config(&cfg, desc, sk);
  cfg.microbatches = 0;
  expect_create_fails(&cfg, "1f1b", BT_EINVAL, "microbatches=0", __LINE__);
  fill_config(&cfg, desc, sk);
  cfg.virtual_stages = 1; /* interleaved needs v >= 2 */
  expect_create_fails(&cfg, "interleaved", BT_EUNSUPPORTED, "v >= 2", __LINE__);
  fill_config(&cfg, desc, sk);
  /* Too small to hold the first version's last field. */
  cfg.size = offsetof(bt_pipeline_config_t, trace);
  expect_create_fails(&cfg, "1f1b", BT_EINVAL, "BT_PIPELINE_CONFIG_INIT",
                      __LINE__);

  {
    bt_error_t err;
    fill_config(&cfg, desc, sk);
    EXPECT_STATUS(create_with(&cfg, "1f1b", NULL, &err), BT_EINVAL, &err);
    EXPECT_STATUS(bt_pipeline_step(NULL, &err), BT_EINVAL, &err);
    EXPECT_STATUS(bt_pipeline_destroy(NULL), BT_OK, NULL);
    EXPECT_TRUE(bt_pipeline_output(NULL, 0, 0, NULL) == NULL);
  }
}

/* ---- 8: ABI -------------------------------------------------------------- */

/* bt_stage_desc_t as an older header had it: everything before cost_f.  An
 * older program's array has this stride. */
struct old_stage_desc {
  size_t size;
  bt_stage_fn forward, backward, input_grad, weight_grad, recompute;
  size_t output_bytes, grad_input_bytes;
};

_Static_assert(sizeof(struct old_stage_desc) ==
                   offsetof(bt_stage_desc_t, cost_f),
               "the old descriptor ends where cost_f starts");

static void
abi_old(const char *sched, int split)
{
  bt_stage_desc_t full[MAXS];
  bt_pipeline_skip_t sk[MAXSK];
  bt_pipeline_config_t cfg;
  struct old_stage_desc *old;
  bt_pipeline_t *pl = NULL, *ref = NULL;
  bt_error_t err;

  setup(3, 3, 4, split, 0);
  fill_config(&cfg, full, sk);
  /* On the heap and exactly sized, so that reading past it is caught by
   * AddressSanitizer. */
  old = calloc(3, sizeof *old);
  ASSERT_TRUE(old != NULL);
  for (int32_t s = 0; s < 3; s++) {
    old[s].size = offsetof(bt_stage_desc_t, cost_f);
    old[s].forward = full[s].forward;
    old[s].backward = full[s].backward;
    old[s].input_grad = full[s].input_grad;
    old[s].weight_grad = full[s].weight_grad;
    old[s].output_bytes = full[s].output_bytes;
    old[s].grad_input_bytes = full[s].grad_input_bytes;
  }
  /* Full-size descriptors with the defaults, for the plan to compare. */
  EXPECT_STATUS(create_with(&cfg, sched, &ref, &err), BT_OK, &err);
  cfg.stage = (const bt_stage_desc_t *)(const void *)old;
  R.abi_old = 1; /* call->user lies beyond the old size: NULL */
  EXPECT_STATUS(create_with(&cfg, sched, &pl, &err), BT_OK, &err);
  free(old); /* "copied" */
  if (pl != NULL && ref != NULL) {
    const bt_plan_t *a = bt_pipeline_plan(pl), *b = bt_pipeline_plan(ref);
    /* Costs default to 1, as for zero costs. */
    EXPECT_INT_EQ(bt_plan_devices(a), bt_plan_devices(b));
    for (int32_t d = 0; d < bt_plan_devices(a) && d < bt_plan_devices(b); d++) {
      EXPECT_INT_EQ(bt_plan_length(a, d), bt_plan_length(b, d));
      for (size_t i = 0; i < bt_plan_length(a, d) && i < bt_plan_length(b, d);
           i++) {
        bt_action_t x = bt_plan_action(a, d, i), y = bt_plan_action(b, d, i);
        EXPECT_TRUE(x.stage == y.stage && x.kind == y.kind &&
                    x.microbatch == y.microbatch);
      }
    }
    run_ok_steps(pl, 2);
  }
  EXPECT_STATUS(bt_pipeline_destroy(pl), BT_OK, NULL);
  EXPECT_STATUS(bt_pipeline_destroy(ref), BT_OK, NULL);
}

TEST(abi_old_stage_desc_1f1b)
{
  abi_old("1f1b", 0);
}

TEST(abi_old_stage_desc_zb_h1)
{
  abi_old("zb-h1", 1);
}

/* ---- 9: nested calls ----------------------------------------------------- */

TEST(nested_step_and_destroy_busy)
{
  bt_pipeline_t *pl = NULL;
  bt_error_t err;

  setup(3, 3, 4, 0, 0);
  EXPECT_STATUS(make_pipeline("1f1b", &pl, &err), BT_OK, &err);
  ASSERT_TRUE(pl != NULL);
  R.pl = pl;
  R.nested = 1;
  run_ok_steps(pl, 2);
  EXPECT_INT_EQ(atomic_load(&R.nested_done), 2);
  R.nested = 0;
  R.pl = NULL;
  EXPECT_STATUS(bt_pipeline_destroy(pl), BT_OK, NULL);
}

/* ---- 10: a caller's runtime ---------------------------------------------- */

TEST(caller_runtime)
{
  static const char *const names[4] = {"acc:0", "acc:1", "acc:2", "acc:3"};
  static int ctx[4];
  bt_device_desc_t dev[4];
  bt_runtime_config_t rc = BT_RUNTIME_CONFIG_INIT;
  bt_stage_desc_t desc[MAXS];
  bt_pipeline_skip_t sk[MAXSK];
  bt_pipeline_config_t cfg;
  bt_runtime_t *rt = NULL;
  bt_pipeline_t *pl = NULL;
  bt_error_t err;

  for (int i = 0; i < 4; i++) {
    dev[i].name = names[i];
    dev[i].ops = NULL;
    dev[i].ctx = &ctx[i];
  }
  rc.devices = 4; /* more than the pipeline uses */
  rc.device = dev;
  rc.mode = BT_RUNTIME_DEDICATED;
  EXPECT_STATUS(bt_runtime_create(&rc, &rt, &err), BT_OK, &err);
  ASSERT_TRUE(rt != NULL);

  setup(3, 3, 4, 0, 0);
  for (int i = 0; i < 4; i++)
    R.ctx_of[i] = &ctx[i];
  fill_config(&cfg, desc, sk);
  cfg.runtime = rt;
  EXPECT_STATUS(create_with(&cfg, "1f1b", &pl, &err), BT_OK, &err);
  ASSERT_TRUE(pl != NULL);
  run_ok_steps(pl, 2);
  /* A failure names the caller's device. */
  R.fail_step = R.step + 1;
  R.fail_stage = 2;
  R.fail_kind = BT_ACT_B;
  R.fail_mb = 1;
  begin_step();
  EXPECT_INT_EQ(bt_pipeline_step(pl, &err), -7);
  EXPECT_STR_CONTAINS(err.message, "2B1 on acc:2: bad");
  check_step(pl, 0);
  R.fail_step = 0;
  run_ok_steps(pl, 1);
  /* The runtime is the caller's: busy while the pipeline exists, alive
   * after it. */
  EXPECT_STATUS(bt_runtime_destroy(rt), BT_EBUSY, NULL);
  EXPECT_STATUS(bt_pipeline_destroy(pl), BT_OK, NULL);
  pl = NULL;

  setup(3, 3, 4, 1, 0);
  for (int i = 0; i < 4; i++)
    R.ctx_of[i] = &ctx[i];
  fill_config(&cfg, desc, sk);
  cfg.runtime = rt;
  EXPECT_STATUS(create_with(&cfg, "zb-h1", &pl, &err), BT_OK, &err);
  if (pl != NULL) {
    run_ok_steps(pl, 1);
    EXPECT_STATUS(bt_pipeline_destroy(pl), BT_OK, NULL);
  }
  EXPECT_STATUS(bt_runtime_destroy(rt), BT_OK, NULL);
}

/* ---- 11: trace ----------------------------------------------------------- */

static const bt_slice_t *
slice_of(const bt_slice_t *sl, size_t n, int32_t s, int32_t kind, int32_t k)
{
  for (size_t i = 0; i < n; i++)
    if (sl[i].action.stage == s && sl[i].action.kind == kind &&
        sl[i].action.microbatch == k)
      return &sl[i];
  return NULL;
}

static void
trace(const char *sched, int32_t S, int32_t p, int split)
{
  bt_stage_desc_t desc[MAXS];
  bt_pipeline_skip_t sk[MAXSK];
  bt_pipeline_config_t cfg;
  bt_pipeline_t *pl = NULL;
  bt_slice_t *sl;
  const bt_plan_t *plan;
  size_t n = 0, want;
  bt_error_t err;

  setup(S, p, 4, split, 0);
  fill_config(&cfg, desc, sk);
  cfg.trace = 1;
  EXPECT_STATUS(create_with(&cfg, sched, &pl, &err), BT_OK, &err);
  ASSERT_TRUE(pl != NULL);
  want = (size_t)S * 4 * (split ? 3 : 2);
  EXPECT_STATUS(bt_pipeline_slices(pl, NULL, &n), BT_OK, NULL);
  EXPECT_INT_EQ(n, want);
  sl = calloc(want, sizeof *sl);
  ASSERT_TRUE(sl != NULL);
  EXPECT_STATUS(bt_pipeline_slices(pl, sl, &n), BT_EINVAL, NULL); /* no step */
  run_ok_steps(pl, 2);
  n = 0;
  EXPECT_STATUS(bt_pipeline_slices(pl, NULL, &n), BT_OK, NULL);
  EXPECT_INT_EQ(n, want);
  EXPECT_STATUS(bt_pipeline_slices(pl, sl, &n), BT_OK, NULL);
  EXPECT_STATUS(bt_pipeline_slices(pl, sl, NULL), BT_EINVAL, NULL);
  plan = bt_pipeline_plan(pl);
  for (size_t i = 0; i < want; i++) {
    EXPECT_TRUE(sl[i].start >= 0 && sl[i].end >= sl[i].start);
    EXPECT_INT_EQ(sl[i].device, R.dev_of[sl[i].action.stage]);
  }
  /* Each device: its slices in plan order, none overlapping. */
  for (int32_t d = 0; d < bt_plan_devices(plan); d++) {
    const bt_slice_t *prev = NULL;
    for (size_t i = 0; i < bt_plan_length(plan, d); i++) {
      bt_action_t a = bt_plan_action(plan, d, i);
      const bt_slice_t *x;
      if (a.kind == BT_ACT_IDLE)
        continue;
      x = slice_of(sl, want, a.stage, a.kind, a.microbatch);
      ASSERT_TRUE(x != NULL);
      if (prev != NULL && x->start < prev->end)
        test_fail(__FILE__, __LINE__,
                  "device %d: %d%s%d starts at %.3f "
                  "before the previous slice ends at %.3f",
                  (int)d, (int)a.stage, kind_name(a.kind), (int)a.microbatch,
                  x->start, prev->end);
      prev = x;
    }
  }
  /* And the data dependencies. */
  for (int32_t s = 1; s < S; s++)
    for (int32_t k = 0; k < 4; k++) {
      const bt_slice_t *f = slice_of(sl, want, s, BT_ACT_F, k);
      const bt_slice_t *f0 = slice_of(sl, want, s - 1, BT_ACT_F, k);
      const bt_slice_t *b = slice_of(sl, want, s - 1, bw_kind(), k);
      const bt_slice_t *b1 = slice_of(sl, want, s, bw_kind(), k);
      ASSERT_TRUE(f && f0 && b && b1);
      EXPECT_TRUE(f->start >= f0->end);
      EXPECT_TRUE(b->start >= b1->end);
    }
  free(sl);
  EXPECT_STATUS(bt_pipeline_destroy(pl), BT_OK, NULL);
}

TEST(trace_1f1b)
{
  trace("1f1b", 3, 3, 0);
}

TEST(trace_zb_h1)
{
  trace("zb-h1", 3, 3, 1);
}

TEST(no_trace_no_slices)
{
  bt_pipeline_t *pl = NULL;
  bt_slice_t sl[24];
  size_t n = 0;
  bt_error_t err;

  setup(3, 3, 4, 0, 0);
  EXPECT_STATUS(make_pipeline("gpipe", &pl, &err), BT_OK, &err);
  ASSERT_TRUE(pl != NULL);
  run_ok_steps(pl, 1);
  EXPECT_STATUS(bt_pipeline_slices(pl, NULL, &n), BT_OK, NULL);
  EXPECT_INT_EQ(n, 24);
  EXPECT_STATUS(bt_pipeline_slices(pl, sl, &n), BT_EINVAL, NULL);
  EXPECT_STATUS(bt_pipeline_destroy(pl), BT_OK, NULL);
}
