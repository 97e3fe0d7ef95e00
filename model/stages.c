/* Shared pieces of the pipelined trainers; see stages.h. */
#include <inttypes.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "stages.h"

bt_status
bt__stages_partition(size_t nl, int32_t S, int32_t devices, int32_t v,
                     const int32_t *balance, int32_t nbalance,
                     const char *first0, size_t *first, bt_error_t *err)
{
  size_t at = 0;

  if ((size_t)S > nl)
    return bt__errorf(err, BT_EINVAL,
                      "%d stages (%d devices x %d virtual) but the model "
                      "has only %zu layers (L + 2); use fewer devices or "
                      "virtual stages, or more blocks",
                      (int)S, (int)devices, (int)v, nl);
  if (balance != NULL) {
    int64_t sum = 0;
    if (nbalance != S)
      return bt__errorf(err, BT_EINVAL,
                        "the balance has %d entries but there are %d stages "
                        "(%d devices x %d virtual); give one entry per "
                        "stage",
                        (int)nbalance, (int)S, (int)devices, (int)v);
    for (int32_t s = 0; s < S; s++) {
      if (balance[s] < 1)
        return bt__errorf(err, BT_EINVAL,
                          "balance[%d] = %d: every stage needs at least one "
                          "layer",
                          (int)s, (int)balance[s]);
      sum += balance[s];
    }
    if (sum != (int64_t)nl)
      return bt__errorf(err, BT_EINVAL,
                        "the balance's %d entries sum to %" PRId64
                        " layers, but the model has %zu (L + 2 = %s, %zu "
                        "blocks, head); give one entry per stage summing "
                        "to %zu",
                        (int)S, sum, nl, first0, nl - 2, nl);
  }
  for (int32_t s = 0; s < S; s++) {
    size_t n;
    if (balance != NULL)
      n = (size_t)balance[s];
    else
      n = nl / (size_t)S + ((size_t)s < nl % (size_t)S ? 1 : 0);
    first[s] = at;
    at += n;
  }
  first[S] = at;
  return BT_OK;
}

bool
bt__stages_checkpointed(int32_t mode, int32_t k, int32_t m)
{
  switch (mode) {
  case BT__CKPT_ALWAYS:
    return true;
  case BT__CKPT_EXCEPT_LAST:
    return k < m - 1;
  default:
    return false;
  }
}

bt_status
bt__stages_check_mode(int32_t mode, bt_error_t *err)
{
  if (mode < BT__CKPT_NEVER || mode > BT__CKPT_ALWAYS)
    return bt__errorf(err, BT_EINVAL,
                      "checkpoint mode %d is not one of never (%d), "
                      "except_last (%d), always (%d)",
                      (int)mode, BT__CKPT_NEVER, BT__CKPT_EXCEPT_LAST,
                      BT__CKPT_ALWAYS);
  return BT_OK;
}

void
bt__stages_perturb(uint64_t seed, const bt_stage_call_t *c)
{
  uint64_t z;
  struct timespec ts;

  if (seed == 0)
    return;
  z = seed + 0x9e3779b97f4a7c15ull *
                 ((uint64_t)c->step * 1000003u + (uint64_t)c->stage * 7919u +
                  (uint64_t)c->microbatch * 131u + (uint64_t)c->kind + 1 +
                  (uint64_t)c->replica * 104729u);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  ts.tv_sec = 0;
  ts.tv_nsec = (long)(z % 201u) * 1000L;
  nanosleep(&ts, NULL);
}

bt_status
bt__held_init(struct bt__held *h, int32_t devices)
{
  h->devices = devices;
  h->now = calloc((size_t)devices, sizeof *h->now);
  h->peak = calloc((size_t)devices, sizeof *h->peak);
  return h->now != NULL && h->peak != NULL ? BT_OK : BT_ENOMEM;
}

void
bt__held_free(struct bt__held *h)
{
  free(h->now);
  free(h->peak);
  h->now = h->peak = NULL;
}

void
bt__held_reset(struct bt__held *h)
{
  memset(h->now, 0, (size_t)h->devices * sizeof *h->now);
  memset(h->peak, 0, (size_t)h->devices * sizeof *h->peak);
}

void
bt__held_add(struct bt__held *h, int32_t device, size_t bytes)
{
  h->now[device] += bytes;
  if (h->now[device] > h->peak[device])
    h->peak[device] = h->now[device];
}

void
bt__held_sub(struct bt__held *h, int32_t device, size_t bytes)
{
  h->now[device] -= bytes;
}

int32_t
bt__stages_rank(const bt_comm_t *comm, const int32_t *stage_device, int32_t s,
                int32_t r, int32_t p, int32_t R)
{
  int32_t W = bt_comm_size(comm), dev;

  if (W <= 1)
    return 0;
  dev = r * p + (stage_device != NULL ? stage_device[s] : s % p);
  return dev / (R * p / W);
}

bt_status
bt__stages_loss(bt_comm_t *comm, double *shares, size_t n, float *loss,
                bt_error_t *err)
{
  float sum = 0.0f;
  bt_status rc = BT_OK;

  if (bt_comm_size(comm) > 1)
    rc = bt_comm_allreduce_sum(comm, shares, n, err);
  if (rc != BT_OK)
    return rc;
  for (size_t i = 0; i < n; i++)
    sum += (float)shares[i];
  *loss = sum;
  return BT_OK;
}

void
bt__stages_slots(const bt_plan_t *plan, int32_t m, int32_t ckpt, int32_t *slots)
{
  int32_t S = bt_plan_stages(plan);
  int32_t *live = calloc((size_t)S + 1, sizeof *live);

  for (int32_t s = 0; s < S; s++)
    slots[s] = 1;
  if (live == NULL) {
    /* No memory to walk the plan: every microbatch gets a slot. */
    for (int32_t s = 0; s < S; s++)
      slots[s] = m;
    return;
  }
  for (int32_t d = 0; d < bt_plan_devices(plan); d++)
    for (size_t i = 0; i < bt_plan_length(plan, d); i++) {
      bt_action_t a = bt_plan_action(plan, d, i);
      bool ck;
      if (a.kind == BT_ACT_IDLE)
        continue;
      ck = bt__stages_checkpointed(ckpt, a.microbatch, m);
      switch (a.kind) {
      case BT_ACT_F:
        live[a.stage]++; /* a checkpointed one gives it back at once */
        if (live[a.stage] > slots[a.stage])
          slots[a.stage] = live[a.stage];
        if (ck)
          live[a.stage]--;
        break;
      case BT_ACT_B:
      case BT_ACT_I:
        if (ck) { /* the recompute takes one */
          live[a.stage]++;
          if (live[a.stage] > slots[a.stage])
            slots[a.stage] = live[a.stage];
        }
        if (a.kind == BT_ACT_B)
          live[a.stage]--;
        break;
      default: /* W */
        live[a.stage]--;
        break;
      }
    }
  free(live);
}

bt_status
bt__slots_init(struct bt__slots *p, int32_t n, int32_t m)
{
  p->n = n;
  p->m = m;
  p->of = malloc((size_t)m * sizeof *p->of);
  p->free = malloc((size_t)n * sizeof *p->free);
  if (p->of == NULL || p->free == NULL)
    return BT_ENOMEM;
  bt__slots_reset(p);
  return BT_OK;
}

void
bt__slots_free(struct bt__slots *p)
{
  free(p->of);
  free(p->free);
  p->of = p->free = NULL;
}

void
bt__slots_reset(struct bt__slots *p)
{
  for (int32_t k = 0; k < p->m; k++)
    p->of[k] = -1;
  /* Slot 0 on top: the first microbatch gets the first slot. */
  for (int32_t i = 0; i < p->n; i++)
    p->free[i] = p->n - 1 - i;
  p->nfree = p->n;
}

int32_t
bt__slots_take(struct bt__slots *p, int32_t k)
{
  if (p->of[k] < 0 && p->nfree > 0)
    p->of[k] = p->free[--p->nfree];
  return p->of[k];
}

void
bt__slots_give(struct bt__slots *p, int32_t k)
{
  if (p->of[k] >= 0) {
    p->free[p->nfree++] = p->of[k];
    p->of[k] = -1;
  }
}

int
bt__slots_claim(struct bt__slots *p, int32_t k, int32_t s, char *errbuf,
                size_t errlen)
{
  if (bt__slots_take(p, k) >= 0)
    return 0;
  snprintf(errbuf, errlen,
           "no free activation slot for microbatch %d (stage %d has %d); "
           "the plan holds more microbatches than counted: report this",
           (int)k, (int)s, (int)p->n);
  return BT_EINVAL;
}

int
bt__stages_layer_error(char *errbuf, size_t errlen, const char *model,
                       const char *what, size_t layer, bt_status rc)
{
  snprintf(errbuf, errlen, "%s layer %zu %s failed: %s", model, layer, what,
           bt_strerror(rc));
  return (int)rc;
}
