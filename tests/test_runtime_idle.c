/* Idle runtimes sleep.
 *
 * Usage: test_runtime_idle [seconds] [test names...]  (default 5)
 *
 * A POOL runtime (2 threads, 4 devices) and a DEDICATED one (8 devices,
 * 8 threads), both with the default spin, are left without work; together
 * they must use under 1% of one core (getrusage of the whole process over
 * the window), once after a single short step and again after many steps. */
#include <errno.h>
#include <stdint.h>
#include <sys/resource.h>
#include <time.h>

#include "baton/baton.h"
#include "test.h"


static double
cpu_seconds(void)
{
  struct rusage ru;

  getrusage(RUSAGE_SELF, &ru);
  return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         1e-6 * (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

static void
sleep_seconds(long s)
{
  struct timespec ts = {s, 0};

  while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
    ;
}

static int
noop_task(const bt_task_call_t *call, char *errbuf, size_t errlen)
{
  (void)call;
  (void)errbuf;
  (void)errlen;
  return 0;
}

/* CPU time the process uses while the main thread sleeps for the first
 * size argument (seconds, default 5). */
static void
expect_idle(const char *when)
{
  double c0 = cpu_seconds(), used;

  sleep_seconds(test_arg(0, 5));
  used = cpu_seconds() - c0;
  printf("  %s: %.4f s of CPU over %ld s idle (%.3f%% of a core)\n", when, used,
         test_arg(0, 5), 100.0 * used / (double)test_arg(0, 5));
  if (!(used < 0.01 * (double)test_arg(0, 5)))
    test_fail(__FILE__, __LINE__,
              "%s: idle runtimes used %.4f s of CPU in "
              "%ld s (limit 1%%)",
              when, used, test_arg(0, 5));
}

TEST(runtime_idle_threads_sleep)
{
  static const int32_t devs[2] = {4, 8};
  static const int32_t mode[2] = {BT_RUNTIME_POOL, BT_RUNTIME_DEDICATED};
  bt_runtime_t *rt[2] = {NULL, NULL};
  bt_exec_t *ex[2] = {NULL, NULL};
  int32_t dev[16], src[15], dst[15];
  bt_error_t err;

  /* A chain of 16 tasks hopping over the devices. */
  for (int32_t t = 0; t < 16; t++)
    dev[t] = t;
  for (int32_t t = 0; t < 15; t++) {
    src[t] = t;
    dst[t] = t + 1;
  }
  for (int i = 0; i < 2; i++) {
    bt_runtime_config_t rcfg = BT_RUNTIME_CONFIG_INIT;
    bt_exec_config_t cfg = BT_EXEC_CONFIG_INIT;
    bt_dag_t dag = BT_DAG_INIT;
    int32_t d[16];
    rcfg.devices = devs[i];
    rcfg.mode = mode[i];
    rcfg.threads = mode[i] == BT_RUNTIME_POOL ? 2 : 0;
    ASSERT_INT_EQ(bt_runtime_create(&rcfg, &rt[i], &err), BT_OK);
    for (int32_t t = 0; t < 16; t++)
      d[t] = dev[t] % devs[i];
    dag.tasks = 16;
    dag.task_device = d;
    dag.edges = 15;
    dag.src = src;
    dag.dst = dst;
    cfg.fn = noop_task;
    ASSERT_INT_EQ(bt_exec_create_dag(rt[i], &dag, &cfg, &ex[i], &err), BT_OK);
    EXPECT_STATUS(bt_exec_run(ex[i], &err), BT_OK, &err);
  }
  expect_idle("after one step");
  for (int step = 0; step < 2000; step++)
    for (int i = 0; i < 2; i++)
      EXPECT_STATUS(bt_exec_run(ex[i], &err), BT_OK, &err);
  expect_idle("after 2000 more steps");
  for (int i = 0; i < 2; i++) {
    EXPECT_INT_EQ(bt_exec_destroy(ex[i]), BT_OK);
    EXPECT_INT_EQ(bt_runtime_destroy(rt[i]), BT_OK);
  }
}
