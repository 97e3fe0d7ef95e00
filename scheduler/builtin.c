/* Built-in schedule policies, each behind the plugin interface. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "baton/graph.h"
#include "baton/sim.h"
#include "schedule_internal.h"

/* The stage a device runs when each device runs exactly one stage, or -1
 * (with a message) when the placement is not one stage per device. */
static int
one_stage_per_device(const bt_schedule_params_t *p, const char *name,
                     int32_t *stage_of, char *errbuf, size_t errlen)
{
  if (p->stages != p->devices) {
    snprintf(errbuf, errlen,
             "%s runs one stage per device (v=1; got v=%d); use "
             "'interleaved' for virtual stages",
             name, (int)p->virtual_stages);
    return -1;
  }
  for (int32_t d = 0; d < p->devices; d++)
    stage_of[d] = -1;
  for (int32_t s = 0; s < p->stages; s++) {
    int32_t d = p->stage_device[s];
    if (stage_of[d] >= 0) {
      snprintf(errbuf, errlen,
               "%s runs one stage per device, but stages %d and %d are both "
               "on device %d",
               name, (int)stage_of[d], (int)s, (int)d);
      return -1;
    }
    stage_of[d] = s;
  }
  return 0;
}

/* Allocates and fills *stage_of (device -> its stage), or returns a status
 * with the reason in errbuf. */
static int
stages_of_devices(const bt_schedule_params_t *p, const char *name,
                  int32_t **stage_of, char *errbuf, size_t errlen)
{
  *stage_of = malloc((size_t)p->devices * sizeof **stage_of);
  if (*stage_of == NULL) {
    snprintf(errbuf, errlen, "out of memory");
    return BT_ENOMEM;
  }
  if (one_stage_per_device(p, name, *stage_of, errbuf, errlen) != 0) {
    free(*stage_of);
    *stage_of = NULL;
    return BT_EUNSUPPORTED;
  }
  return 0;
}

static int
plan_gpipe(const bt_schedule_params_t *p, const bt_plan_sink_t *sink,
           char *errbuf, size_t errlen, void *user)
{
  int32_t *stage_of;
  int rc = stages_of_devices(p, "gpipe", &stage_of, errbuf, errlen);

  (void)user;
  /* All forwards, then all backwards in the same microbatch order: the
   * GPipe paper's figure, and torch's ScheduleGPipe. */
  for (int32_t d = 0; d < p->devices && rc == 0; d++) {
    for (int32_t k = 0; k < p->microbatches && rc == 0; k++)
      rc = bt__emit(sink, d, stage_of[d], BT_ACT_F, k);
    for (int32_t k = 0; k < p->microbatches && rc == 0; k++)
      rc = bt__emit(sink, d, stage_of[d], BT_ACT_B, k);
  }
  free(stage_of);
  return rc;
}

static int
plan_1f1b(const bt_schedule_params_t *p, const bt_plan_sink_t *sink,
          char *errbuf, size_t errlen, void *user)
{
  int32_t *stage_of;
  int rc = stages_of_devices(p, "1f1b", &stage_of, errbuf, errlen);

  (void)user;
  for (int32_t d = 0; d < p->devices && rc == 0; d++) {
    int32_t s = stage_of[d], m = p->microbatches;
    int32_t warmup = p->stages - s - 1 < m ? p->stages - s - 1 : m;
    int32_t f = 0, b = 0;
    /* Warm-up forwards fill the pipeline below this stage; then one
     * forward, one backward; the cool-down drains the backwards.  At most
     * stages - s microbatches are alive here, p on the first device. */
    while (f < warmup && rc == 0)
      rc = bt__emit(sink, d, s, BT_ACT_F, f++);
    while (f < m && rc == 0) {
      rc = bt__emit(sink, d, s, BT_ACT_F, f++);
      if (rc == 0)
        rc = bt__emit(sink, d, s, BT_ACT_B, b++);
    }
    while (b < m && rc == 0)
      rc = bt__emit(sink, d, s, BT_ACT_B, b++);
  }
  free(stage_of);
  return rc;
}

/* Megatron-LM's interleaved 1F1B (depth-first): each device walks
 * "virtual microbatches" in groups of p, chunk by chunk. */
static int32_t
vmb_chunk(int32_t i, int32_t p, int32_t v, int forward)
{
  int32_t c = (i / p) % v;

  return forward ? c : v - 1 - c;
}

static int32_t
vmb_microbatch(int32_t i, int32_t p, int32_t v)
{
  return (i / (p * v)) * p + i % p;
}

static int
plan_interleaved(const bt_schedule_params_t *p, const bt_plan_sink_t *sink,
                 char *errbuf, size_t errlen, void *user)
{
  int32_t P = p->devices, v = p->virtual_stages, m = p->microbatches;
  int32_t total = m * v;
  int rc = 0;

  (void)user;
  if (v < 2) {
    snprintf(errbuf, errlen,
             "interleaved needs virtual stages v >= 2 (got v=%d); use "
             "'1f1b' for one stage per device",
             (int)v);
    return BT_EUNSUPPORTED;
  }
  if (m % P != 0) {
    snprintf(errbuf, errlen,
             "interleaved needs microbatches to be a multiple of devices "
             "(got m=%d, p=%d); try m=%d",
             (int)m, (int)P, (int)((m + P - 1) / P * P));
    return BT_EUNSUPPORTED;
  }
  for (int32_t s = 0; s < p->stages; s++)
    if (p->stage_device[s] != s % P) {
      snprintf(errbuf, errlen,
               "interleaved needs loop placement (stage s on device s %% p), "
               "but stage %d is on device %d",
               (int)s, (int)p->stage_device[s]);
      return BT_EUNSUPPORTED;
    }
  for (int32_t d = 0; d < P && rc == 0; d++) {
    int32_t warmup = (P - d - 1) * 2 + (v - 1) * P;
    int32_t f = 0, b = 0;
    if (warmup > total)
      warmup = total;
    while (f < warmup && rc == 0) {
      rc = bt__emit(sink, d, vmb_chunk(f, P, v, 1) * P + d, BT_ACT_F,
                    vmb_microbatch(f, P, v));
      f++;
    }
    while (f < total && rc == 0) {
      rc = bt__emit(sink, d, vmb_chunk(f, P, v, 1) * P + d, BT_ACT_F,
                    vmb_microbatch(f, P, v));
      f++;
      if (rc == 0)
        rc = bt__emit(sink, d, vmb_chunk(b, P, v, 0) * P + d, BT_ACT_B,
                      vmb_microbatch(b, P, v));
      b++;
    }
    while (b < total && rc == 0) {
      rc = bt__emit(sink, d, vmb_chunk(b, P, v, 0) * P + d, BT_ACT_B,
                    vmb_microbatch(b, P, v));
      b++;
    }
  }
  return rc;
}

/* Zero-bubble schedules (Qi et al., ICLR 2024) through the list scheduler:
 * ZB-H1 keeps 1F1B's memory (cap p - s in flight on stage s), ZB-H2 allows
 * 2(p - s) - 1 to fill the warm-up bubble too. */
static int
plan_zb(const bt_schedule_params_t *p, const bt_plan_sink_t *sink,
        char *errbuf, size_t errlen, const char *name, int h2)
{
  int32_t *stage_of, *cap;
  int rc = stages_of_devices(p, name, &stage_of, errbuf, errlen);
  int flags = 0;

  if (rc != 0)
    return rc;
  free(stage_of);
  cap = malloc((size_t)p->stages * sizeof *cap);
  if (cap == NULL)
    return BT_ENOMEM;
  for (int32_t s = 0; s < p->stages; s++) {
    cap[s] = h2 ? 2 * (p->stages - s) - 1 : p->stages - s;
    /* H1 promises 1F1B's memory: with weight-grad memory a microbatch
     * counts until its W, so the promise holds for M_W <= M_B too.  H2
     * trades memory for speed and keeps counting until I. */
    if (!h2 && p->mem_w[s] > 0.0)
      flags = BT__LS_CAP_UNTIL_W;
  }
  rc = bt__list_schedule(p, cap, flags, sink);
  free(cap);
  return rc;
}

static int
plan_zb_h1(const bt_schedule_params_t *p, const bt_plan_sink_t *sink,
           char *errbuf, size_t errlen, void *user)
{
  (void)user;
  return plan_zb(p, sink, errbuf, errlen, "zb-h1", 0);
}

static int
plan_zb_h2(const bt_schedule_params_t *p, const bt_plan_sink_t *sink,
           char *errbuf, size_t errlen, void *user)
{
  (void)user;
  return plan_zb(p, sink, errbuf, errlen, "zb-h2", 1);
}

static const bt_schedule_desc_t gpipe_desc = {
    BT_SCHEDULE_ABI_VERSION, sizeof(bt_schedule_desc_t), "gpipe",
    "all forwards, then all backwards (Huang et al., 2019)", plan_gpipe, 1,
    NULL};
static const bt_schedule_desc_t f1b1_desc = {
    BT_SCHEDULE_ABI_VERSION, sizeof(bt_schedule_desc_t), "1f1b",
    "one forward, one backward; memory capped at p microbatches "
    "(PipeDream-Flush)",
    plan_1f1b, 1, NULL};
static const bt_schedule_desc_t interleaved_desc = {
    BT_SCHEDULE_ABI_VERSION, sizeof(bt_schedule_desc_t), "interleaved",
    "Megatron-LM's interleaved 1F1B over v virtual stages per device",
    plan_interleaved, 2, NULL};
static const bt_schedule_desc_t zb_h1_desc = {
    BT_SCHEDULE_ABI_VERSION, sizeof(bt_schedule_desc_t), "zb-h1",
    "zero bubble H1: split backward, 1F1B's memory (Qi et al., 2024)",
    plan_zb_h1, 1, NULL};
static const bt_schedule_desc_t zb_h2_desc = {
    BT_SCHEDULE_ABI_VERSION, sizeof(bt_schedule_desc_t), "zb-h2",
    "zero bubble H2: split backward, up to 2p-1 microbatches in flight",
    plan_zb_h2, 1, NULL};

const bt_schedule_desc_t *const bt__builtin_schedules[] = {
    &gpipe_desc, &f1b1_desc, &interleaved_desc, &zb_h1_desc, &zb_h2_desc,
    &bt__auto_desc};
const size_t bt__builtin_schedule_count =
    sizeof bt__builtin_schedules / sizeof bt__builtin_schedules[0];
