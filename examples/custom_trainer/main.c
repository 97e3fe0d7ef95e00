/* custom_trainer: a trainer with its own model, kernels and optimizer that
 * uses baton only to schedule its stages (the embedding API,
 * <baton/pipeline.h>).  Built out of tree against an installed baton.
 *
 * The model: an MLP of S = devices x virtual stages linear layers,
 * tanh between them, softmax cross-entropy on top, trained with SGD on a
 * synthetic classification task (labels from a fixed random teacher).
 * Each step runs the pipeline, then the same step with a plain loop over
 * the same kernels (the unpipelined reference) on a second copy of the
 * parameters; the two loss curves must agree within 1e-5.
 *
 * Gradients are kept per microbatch and summed in microbatch order when a
 * stage's gradients are complete (grads_ready), so the result does not
 * depend on the schedule's order: every schedule gives the same bits.
 *
 *   custom_trainer [--schedule NAME|PATH.so|PATH.csv] [--devices P]
 *                  [--virtual V] [--microbatches M] [--steps N]
 *                  [--threads T] [--fail-at STEP:STAGE:MICROBATCH] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <baton/baton.h>

#define N_ROWS 64   /* batch */
#define D_IN 16
#define HIDDEN 32
#define CLASSES 4
#define LR 0.5f

struct layer {
  int in, out;
  float *w, *b;      /* [out * in], [out] */
  float *gw, *gb;    /* per microbatch: [m * out * in], [m * out] */
};

struct model {
  int S, m, rows;    /* rows per microbatch */
  struct layer *l;
};

struct trainer {
  struct model pipe, ref;
  float *x;          /* [N_ROWS * D_IN] */
  int *y;            /* [N_ROWS] */
  int fail_step, fail_stage, fail_mb;
};

/* ---- the trainer's own kernels (not baton's) ----------------------------- */

/* out[r][o] = b[o] + sum_i in[r][i] * w[o][i] */
static void
linear_fwd(const float *in, const struct layer *l, int rows, float *out)
{
  for (int r = 0; r < rows; r++)
    for (int o = 0; o < l->out; o++) {
      float acc = l->b[o];
      for (int i = 0; i < l->in; i++)
        acc += in[r * l->in + i] * l->w[o * l->in + i];
      out[r * l->out + o] = acc;
    }
}

/* din[r][i] = sum_o dz[r][o] * w[o][i] */
static void
linear_bwd_input(const float *dz, const struct layer *l, int rows, float *din)
{
  for (int r = 0; r < rows; r++)
    for (int i = 0; i < l->in; i++) {
      float acc = 0.0f;
      for (int o = 0; o < l->out; o++)
        acc += dz[r * l->out + o] * l->w[o * l->in + i];
      din[r * l->in + i] = acc;
    }
}

/* gw[o][i] = sum_r dz[r][o] * in[r][i]; gb[o] = sum_r dz[r][o] */
static void
linear_bwd_weight(const float *dz, const float *in, int rows, int nin,
                  int nout, float *gw, float *gb)
{
  for (int o = 0; o < nout; o++) {
    float accb = 0.0f;
    for (int r = 0; r < rows; r++)
      accb += dz[r * nout + o];
    gb[o] = accb;
    for (int i = 0; i < nin; i++) {
      float acc = 0.0f;
      for (int r = 0; r < rows; r++)
        acc += dz[r * nout + o] * in[r * nin + i];
      gw[o * nin + i] = acc;
    }
  }
}

/* Softmax cross-entropy over rows: probs, and the summed loss. */
static float
xent_fwd(const float *logits, const int *y, int rows, float *probs)
{
  float loss = 0.0f;

  for (int r = 0; r < rows; r++) {
    const float *z = logits + r * CLASSES;
    float mx = z[0], sum = 0.0f;
    for (int c = 1; c < CLASSES; c++)
      mx = z[c] > mx ? z[c] : mx;
    for (int c = 0; c < CLASSES; c++)
      sum += (probs[r * CLASSES + c] = expf(z[c] - mx));
    for (int c = 0; c < CLASSES; c++)
      probs[r * CLASSES + c] /= sum;
    loss -= logf(probs[r * CLASSES + y[r]]);
  }
  return loss;
}

/* dz of one stage for one microbatch: from the loss on the last stage
 * (mean over the whole batch), else through tanh from the output grad. */
static void
stage_dz(const struct model *md, int s, const float *out, const float *gout,
         const int *y, float *dz)
{
  const struct layer *l = &md->l[s];

  for (int r = 0; r < md->rows; r++)
    for (int o = 0; o < l->out; o++) {
      int at = r * l->out + o;
      if (s == md->S - 1)
        dz[at] = (out[at] - (o == y[r] ? 1.0f : 0.0f)) / (float)N_ROWS;
      else
        dz[at] = gout[at] * (1.0f - out[at] * out[at]);
    }
}

/* Forward of stage s for one microbatch; the last stage's output holds the
 * probabilities and, after them, the microbatch's summed loss. */
static void
stage_forward(const struct model *md, int s, const float *in, const int *y,
              float *out)
{
  const struct layer *l = &md->l[s];

  linear_fwd(in, l, md->rows, out);
  if (s == md->S - 1) {
    float logits[N_ROWS * CLASSES];
    memcpy(logits, out, sizeof(float) * (size_t)(md->rows * CLASSES));
    out[md->rows * CLASSES] = xent_fwd(logits, y, md->rows, out);
    return;
  }
  for (int i = 0; i < md->rows * l->out; i++)
    out[i] = tanhf(out[i]);
}

/* SGD on stage s from its per-microbatch gradients, summed in order. */
static void
sgd_stage(struct model *md, int s)
{
  struct layer *l = &md->l[s];
  int nw = l->out * l->in;

  for (int j = 0; j < nw; j++) {
    float g = 0.0f;
    for (int k = 0; k < md->m; k++)
      g += l->gw[k * nw + j];
    l->w[j] -= LR * g;
  }
  for (int j = 0; j < l->out; j++) {
    float g = 0.0f;
    for (int k = 0; k < md->m; k++)
      g += l->gb[k * l->out + j];
    l->b[j] -= LR * g;
  }
}

/* ---- the stage callbacks --------------------------------------------------- */

struct stage_ctx {
  struct trainer *t;
  int s;
};

static const float *
stage_input(const struct stage_ctx *c, const bt_stage_call_t *call)
{
  if (c->s == 0)
    return c->t->x + (size_t)call->microbatch * c->t->pipe.rows * D_IN;
  return call->input;
}

static int
cb_forward(const bt_stage_call_t *call, char *errbuf, size_t errlen)
{
  struct stage_ctx *c = call->user;
  struct trainer *t = c->t;
  const int *y = t->y + (size_t)call->microbatch * t->pipe.rows;

  if ((int)call->step == t->fail_step && c->s == t->fail_stage &&
      call->microbatch == t->fail_mb) {
    snprintf(errbuf, errlen, "injected failure (--fail-at)");
    return -1;
  }
  stage_forward(&t->pipe, c->s, stage_input(c, call), y, call->output);
  return 0;
}

static void
dz_of(const struct stage_ctx *c, const bt_stage_call_t *call, float *dz)
{
  const struct trainer *t = c->t;

  stage_dz(&t->pipe, c->s, call->output, call->grad_output,
           t->y + (size_t)call->microbatch * t->pipe.rows, dz);
}

static int
cb_input_grad(const bt_stage_call_t *call, char *errbuf, size_t errlen)
{
  struct stage_ctx *c = call->user;
  float dz[N_ROWS * HIDDEN];

  (void)errbuf;
  (void)errlen;
  if (c->s == 0)
    return 0; /* nobody needs the input's gradient */
  dz_of(c, call, dz);
  linear_bwd_input(dz, &c->t->pipe.l[c->s], c->t->pipe.rows,
                   call->grad_input);
  return 0;
}

static int
cb_weight_grad(const bt_stage_call_t *call, char *errbuf, size_t errlen)
{
  struct stage_ctx *c = call->user;
  struct layer *l = &c->t->pipe.l[c->s];
  float dz[N_ROWS * HIDDEN];
  int k = call->microbatch;

  (void)errbuf;
  (void)errlen;
  dz_of(c, call, dz);
  linear_bwd_weight(dz, stage_input(c, call), c->t->pipe.rows, l->in, l->out,
                    l->gw + (size_t)k * l->out * l->in,
                    l->gb + (size_t)k * l->out);
  return 0;
}

static int
cb_backward(const bt_stage_call_t *call, char *errbuf, size_t errlen)
{
  /* A full backward is the input gradient, then the weight gradient. */
  int rc = cb_input_grad(call, errbuf, errlen);

  return rc ? rc : cb_weight_grad(call, errbuf, errlen);
}

static void
on_grads_ready(int32_t stage, void *user)
{
  struct trainer *t = user;

  sgd_stage(&t->pipe, stage);
}

/* ---- the unpipelined reference ------------------------------------------ */

/* One step of plain training on md: every microbatch forward then backward
 * through all stages, then SGD.  Returns the mean loss. */
static float
reference_step(struct trainer *t, struct model *md)
{
  static float act[16][N_ROWS * (HIDDEN + 1)], grad[16][N_ROWS * HIDDEN];
  float loss = 0.0f, dz[N_ROWS * HIDDEN];

  for (int k = 0; k < md->m; k++) {
    const float *x = t->x + (size_t)k * md->rows * D_IN;
    const int *y = t->y + (size_t)k * md->rows;
    for (int s = 0; s < md->S; s++)
      stage_forward(md, s, s ? act[s - 1] : x, y, act[s]);
    loss += act[md->S - 1][md->rows * CLASSES];
    for (int s = md->S - 1; s >= 0; s--) {
      struct layer *l = &md->l[s];
      stage_dz(md, s, act[s], s + 1 < md->S ? grad[s + 1] : NULL, y, dz);
      if (s > 0)
        linear_bwd_input(dz, l, md->rows, grad[s]);
      linear_bwd_weight(dz, s ? act[s - 1] : x, md->rows, l->in, l->out,
                        l->gw + (size_t)k * l->out * l->in,
                        l->gb + (size_t)k * l->out);
    }
  }
  for (int s = 0; s < md->S; s++)
    sgd_stage(md, s);
  return loss / (float)N_ROWS;
}

/* ---- setup ----------------------------------------------------------------- */

static uint32_t rng = 12345u;

static float
frand(void)
{
  rng = rng * 1664525u + 1013904223u;
  return (float)(rng >> 8) / 16777216.0f * 2.0f - 1.0f;
}

static int
model_init(struct model *md, int S, int m)
{
  md->S = S;
  md->m = m;
  md->rows = N_ROWS / m;
  md->l = calloc((size_t)S, sizeof *md->l);
  if (md->l == NULL)
    return -1;
  for (int s = 0; s < S; s++) {
    struct layer *l = &md->l[s];
    l->in = s == 0 ? D_IN : HIDDEN;
    l->out = s == S - 1 ? CLASSES : HIDDEN;
    l->w = malloc(sizeof(float) * (size_t)(l->out * l->in));
    l->b = calloc((size_t)l->out, sizeof(float));
    l->gw = calloc((size_t)(m * l->out * l->in), sizeof(float));
    l->gb = calloc((size_t)(m * l->out), sizeof(float));
    if (!l->w || !l->b || !l->gw || !l->gb)
      return -1;
    for (int j = 0; j < l->out * l->in; j++)
      l->w[j] = frand() / sqrtf((float)l->in);
  }
  return 0;
}

static void
model_copy(struct model *dst, const struct model *src)
{
  for (int s = 0; s < src->S; s++) {
    const struct layer *a = &src->l[s];
    memcpy(dst->l[s].w, a->w, sizeof(float) * (size_t)(a->out * a->in));
    memcpy(dst->l[s].b, a->b, sizeof(float) * (size_t)a->out);
  }
}

static void
model_free(struct model *md)
{
  for (int s = 0; md->l != NULL && s < md->S; s++) {
    free(md->l[s].w);
    free(md->l[s].b);
    free(md->l[s].gw);
    free(md->l[s].gb);
  }
  free(md->l);
}

/* Labels from a fixed random linear teacher: learnable, not trivial. */
static void
make_data(struct trainer *t)
{
  float teacher[CLASSES * D_IN];

  for (int j = 0; j < CLASSES * D_IN; j++)
    teacher[j] = frand();
  for (int r = 0; r < N_ROWS; r++) {
    float best = -1e30f;
    for (int i = 0; i < D_IN; i++)
      t->x[r * D_IN + i] = frand();
    for (int c = 0; c < CLASSES; c++) {
      float z = 0.0f;
      for (int i = 0; i < D_IN; i++)
        z += teacher[c * D_IN + i] * t->x[r * D_IN + i];
      if (z > best) {
        best = z;
        t->y[r] = c;
      }
    }
  }
}

struct args {
  const char *schedule;
  int devices, virtual_stages, microbatches, steps, threads;
  int fail_step, fail_stage, fail_mb;
};

static int
parse(int argc, char **argv, struct args *a)
{
  for (int i = 1; i < argc; i++) {
    const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (v == NULL)
      goto usage;
    if (strcmp(o, "--schedule") == 0)
      a->schedule = v;
    else if (strcmp(o, "--devices") == 0)
      a->devices = atoi(v);
    else if (strcmp(o, "--virtual") == 0)
      a->virtual_stages = atoi(v);
    else if (strcmp(o, "--microbatches") == 0)
      a->microbatches = atoi(v);
    else if (strcmp(o, "--steps") == 0)
      a->steps = atoi(v);
    else if (strcmp(o, "--threads") == 0)
      a->threads = atoi(v);
    else if (strcmp(o, "--fail-at") == 0) {
      if (sscanf(v, "%d:%d:%d", &a->fail_step, &a->fail_stage,
                 &a->fail_mb) != 3)
        goto usage;
    } else
      goto usage;
    i++;
  }
  if (a->devices < 1 || a->microbatches < 1 || a->steps < 1 ||
      N_ROWS % a->microbatches != 0) {
    fprintf(stderr, "custom_trainer: devices, steps >= 1 and microbatches "
            "dividing %d are needed\n", N_ROWS);
    return -1;
  }
  return 0;
usage:
  fprintf(stderr, "usage: custom_trainer [--schedule NAME|PATH.so|PATH.csv] "
          "[--devices P] [--virtual V] [--microbatches M] [--steps N] "
          "[--threads T] [--fail-at STEP:STAGE:MICROBATCH]\n");
  return -1;
}

int
main(int argc, char **argv)
{
  struct args a = {"1f1b", 2, 0, 4, 20, 2, -1, -1, -1};
  bt_pipeline_config_t cfg = BT_PIPELINE_CONFIG_INIT;
  static struct trainer t;
  bt_stage_desc_t *stages = NULL;
  struct stage_ctx *ctx = NULL;
  bt_schedule_t *sched = NULL;
  bt_pipeline_t *pl = NULL;
  bt_error_t err;
  int S, v, status = 1;
  double worst = 0.0;

  if (parse(argc, argv, &a) != 0)
    return 2;
  printf("baton %s (built against %s)\n", bt_version_string(),
         BT_VERSION_STRING);
  if (baton_version() / 10000 != BT_VERSION_MAJOR) {
    fprintf(stderr, "custom_trainer: built against baton %s, but the "
            "library is %s (another major version)\n", BT_VERSION_STRING,
            bt_version_string());
    return 1;
  }
  if (bt_schedule_open(a.schedule, &sched, &err) != BT_OK) {
    fprintf(stderr, "custom_trainer: %s\n", err.message);
    return 1;
  }
  v = a.virtual_stages ? a.virtual_stages : bt_schedule_default_virtual(sched);
  S = a.devices * v;
  if (S > 16) {
    fprintf(stderr, "custom_trainer: at most 16 stages\n");
    goto out;
  }
  t.x = malloc(sizeof(float) * N_ROWS * D_IN);
  t.y = malloc(sizeof(int) * N_ROWS);
  stages = calloc((size_t)S, sizeof *stages);
  ctx = calloc((size_t)S, sizeof *ctx);
  if (!t.x || !t.y || !stages || !ctx || model_init(&t.pipe, S, a.microbatches) ||
      model_init(&t.ref, S, a.microbatches)) {
    fprintf(stderr, "custom_trainer: out of memory\n");
    goto out;
  }
  model_copy(&t.ref, &t.pipe);
  make_data(&t);
  t.fail_step = a.fail_step;
  t.fail_stage = a.fail_stage;
  t.fail_mb = a.fail_mb;
  for (int s = 0; s < S; s++) {
    bt_stage_desc_t d = BT_STAGE_DESC_INIT;
    struct layer *l = &t.pipe.l[s];
    ctx[s].t = &t;
    ctx[s].s = s;
    d.forward = cb_forward;
    d.backward = cb_backward;
    d.input_grad = cb_input_grad;
    d.weight_grad = cb_weight_grad;
    /* The last stage outputs its probabilities and its loss. */
    d.output_bytes = sizeof(float) * (size_t)(t.pipe.rows * l->out +
                                              (s == S - 1));
    d.grad_input_bytes = s ? sizeof(float) * (size_t)(t.pipe.rows * l->in) : 0;
    d.user = &ctx[s];
    stages[s] = d;
  }
  cfg.stages = S;
  cfg.stage = stages;
  cfg.devices = a.devices;
  cfg.virtual_stages = v;
  cfg.microbatches = a.microbatches;
  cfg.schedule = sched;
  cfg.threads = a.threads;
  cfg.grads_ready = on_grads_ready;
  cfg.user = &t;
  if (bt_pipeline_create(&cfg, &pl, &err) != BT_OK) {
    fprintf(stderr, "custom_trainer: %s\n", err.message);
    goto out;
  }
  printf("schedule %s: %d devices, %d stages, %d microbatches of %d rows\n",
         bt_schedule_name(sched), a.devices, S, a.microbatches, t.pipe.rows);
  status = 0;
  for (int step = 1; step <= a.steps; step++) {
    float loss = 0.0f, ref;
    double rel;
    if (bt_pipeline_step(pl, &err) != BT_OK) {
      /* The step ended cleanly; its gradients are unusable.  Undo the
       * stages that already stepped by restoring from the reference,
       * which has not run this step, and go on. */
      printf("step %d failed: %s (status %d); skipped\n", step, err.message,
             (int)err.status);
      model_copy(&t.pipe, &t.ref);
      continue;
    }
    for (int k = 0; k < a.microbatches; k++) {
      size_t n;
      const float *out = bt_pipeline_output(pl, S - 1, k, &n);
      loss += out[n / sizeof(float) - 1];
    }
    loss /= (float)N_ROWS;
    ref = reference_step(&t, &t.ref);
    rel = fabs((double)loss - ref) / fabs((double)ref);
    worst = rel > worst ? rel : worst;
    printf("step %2d  loss %.7f  reference %.7f\n", step, loss, ref);
    if (rel > 1e-5)
      status = 1;
  }
  printf("max relative difference from the reference: %.3g (%s)\n", worst,
         status ? "FAIL" : "ok");
out:
  bt_pipeline_destroy(pl);
  bt_schedule_destroy(sched);
  model_free(&t.pipe);
  model_free(&t.ref);
  free(t.x);
  free(t.y);
  free(stages);
  free(ctx);
  return status;
}
