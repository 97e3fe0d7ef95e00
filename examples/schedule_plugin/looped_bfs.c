/* Example schedule plugin: breadth-first looped schedule over virtual
 * stages (torch.distributed.pipelining's ScheduleLoopedBFS).
 *
 * Each device owns v stages (loop placement: stage s on device s % p).  It
 * runs the forwards of its first local stage for every microbatch, then of
 * its second, and so on; the backwards go the other way round, last local
 * stage first.  It needs only <baton/schedule.h>: build it with
 *
 *   cc -shared -fPIC -fvisibility=hidden -I<prefix>/include \
 *      looped_bfs.c -o looped_bfs.so
 *
 * and run it with `baton-bench --schedule ./looped_bfs.so --virtual 2`. */
#include <stdio.h>

#include <baton/schedule.h>

static int
emit(const bt_plan_sink_t *sink, int32_t device, int32_t stage, int32_t kind,
     int32_t mb)
{
  bt_action_t a;

  a.stage = stage;
  a.kind = kind;
  a.microbatch = mb;
  return sink->emit(sink->ctx, device, a);
}

static int
plan_looped_bfs(const bt_schedule_params_t *p, const bt_plan_sink_t *sink,
                char *errbuf, size_t errlen, void *user_data)
{
  int32_t P = p->devices, v = p->virtual_stages, m = p->microbatches;
  int rc = 0;

  (void)user_data;
  for (int32_t s = 0; s < p->stages; s++)
    if (p->stage_device[s] != s % P) {
      snprintf(errbuf, errlen,
               "looped-bfs needs loop placement (stage s on device s %% p), "
               "but stage %d is on device %d",
               (int)s, (int)p->stage_device[s]);
      return -1;
    }
  for (int32_t d = 0; d < P && rc == 0; d++) {
    for (int32_t c = 0; c < v && rc == 0; c++)
      for (int32_t k = 0; k < m && rc == 0; k++)
        rc = emit(sink, d, c * P + d, BT_ACT_F, k);
    for (int32_t c = v - 1; c >= 0 && rc == 0; c--)
      for (int32_t k = 0; k < m && rc == 0; k++)
        rc = emit(sink, d, c * P + d, BT_ACT_B, k);
  }
  return rc;
}

static const bt_schedule_desc_t looped_bfs = {
    BT_SCHEDULE_ABI_VERSION,
    sizeof(bt_schedule_desc_t),
    "looped-bfs",
    "breadth-first over virtual stages: all microbatches per stage",
    plan_looped_bfs,
    2,
    NULL,
};

BT_SCHEDULE_EXPORT(looped_bfs)
