/* Greedy list scheduler: a cost-model-driven plan builder for zero-bubble
 * style schedules.  It simulates the devices as it decides, so each choice
 * sees exactly which actions are ready at that instant. */
#include <math.h>
#include <stdlib.h>

#include "schedule_internal.h"

struct lane {
  int32_t stage;
  int32_t nf, ni, nw; /* next F, I, W microbatch */
  double free_at;
};

struct state {
  const bt_schedule_params_t *p;
  int32_t m;
  double *fdone, *idone; /* [stages * m]: end times, INFINITY if not run */
};

static double
f_ready(const struct state *st, int32_t s, int32_t k)
{
  if (s == 0)
    return 0.0;
  return st->fdone[(size_t)(s - 1) * (size_t)st->m + (size_t)k] +
         st->p->comm_latency;
}

static double
i_ready(const struct state *st, int32_t s, int32_t k)
{
  double own = st->fdone[(size_t)s * (size_t)st->m + (size_t)k];
  double down = 0.0;

  if (s + 1 < st->p->stages)
    down = st->idone[(size_t)(s + 1) * (size_t)st->m + (size_t)k] +
           st->p->comm_latency;
  return own > down ? own : down;
}

/* Earliest time each candidate of a lane can start; INFINITY when the
 * candidate does not exist (yet). */
static void
candidates(const struct state *st, const struct lane *l, int32_t cap,
           int flags, double *ti, double *tf, double *tw)
{
  int32_t m = st->m;
  int32_t done = flags & BT__LS_CAP_UNTIL_W ? l->nw : l->ni;

  *ti = *tf = *tw = INFINITY;
  if (l->ni < l->nf)
    *ti = i_ready(st, l->stage, l->ni);
  if (l->nf < m && l->nf - done < cap)
    *tf = f_ready(st, l->stage, l->nf);
  if (l->nw < l->ni)
    *tw = st->idone[(size_t)l->stage * (size_t)m + (size_t)l->nw];
}

static double
min3(double a, double b, double c)
{
  double x = a < b ? a : b;

  return x < c ? x : c;
}

int
bt__list_schedule(const bt_schedule_params_t *p, const int32_t *cap,
                  int flags, const bt_plan_sink_t *sink)
{
  int32_t S = p->stages, m = p->microbatches, remaining = S * m * 3;
  struct lane *lanes = calloc((size_t)S, sizeof *lanes);
  struct state st;
  int rc = 0;

  st.p = p;
  st.m = m;
  st.fdone = malloc((size_t)S * (size_t)m * sizeof *st.fdone);
  st.idone = malloc((size_t)S * (size_t)m * sizeof *st.idone);
  if (lanes == NULL || st.fdone == NULL || st.idone == NULL) {
    rc = BT_ENOMEM;
    goto out_free;
  }
  for (size_t i = 0; i < (size_t)S * (size_t)m; i++)
    st.fdone[i] = st.idone[i] = INFINITY;
  for (int32_t s = 0; s < S; s++)
    lanes[s].stage = s;
  while (remaining > 0 && rc == 0) {
    int32_t best = -1, kind;
    double best_t = INFINITY, ti, tf, tw, t, cost;
    struct lane *l;
    /* The lane that can act soonest; ties go to the later stage, whose
     * work unblocks the backward chain. */
    for (int32_t s = S - 1; s >= 0; s--) {
      double e;
      candidates(&st, &lanes[s], cap[s], flags, &ti, &tf, &tw);
      e = min3(ti, tf, tw);
      if (e < lanes[s].free_at)
        e = lanes[s].free_at;
      if (e < best_t) {
        best_t = e;
        best = s;
      }
    }
    if (best < 0) {
      rc = BT_EINVAL; /* a cap < 1 starves every lane */
      break;
    }
    l = &lanes[best];
    t = best_t;
    candidates(&st, l, cap[best], flags, &ti, &tf, &tw);
    if ((flags & BT__LS_FORWARD_FIRST) && tf <= t)
      kind = BT_ACT_F;
    else if (ti <= t)
      kind = BT_ACT_I;
    else if (tf <= t)
      kind = BT_ACT_F;
    else
      kind = BT_ACT_W;
    if (kind == BT_ACT_F) {
      cost = p->cost_f[best];
      st.fdone[(size_t)best * (size_t)m + (size_t)l->nf] = t + cost;
      rc = bt__emit(sink, p->stage_device[best], best, BT_ACT_F, l->nf++);
    } else if (kind == BT_ACT_I) {
      cost = p->cost_b[best];
      st.idone[(size_t)best * (size_t)m + (size_t)l->ni] = t + cost;
      rc = bt__emit(sink, p->stage_device[best], best, BT_ACT_I, l->ni++);
    } else {
      cost = p->cost_w[best];
      rc = bt__emit(sink, p->stage_device[best], best, BT_ACT_W, l->nw++);
    }
    l->free_at = t + cost;
    remaining--;
  }
out_free:
  free(lanes);
  free(st.fdone);
  free(st.idone);
  return rc;
}
