/* Runner for the tiny test registry (see test.h). */
#include <stdarg.h>

#include "test.h"

#define TEST_MAX 512

#define TEST_ARGS_MAX 8

static struct test_case tests[TEST_MAX];
static int ntests;
static int failures_in_current;
static long nums[TEST_ARGS_MAX];
static int nnums;

long
test_arg(int index, long dflt)
{
  return index >= 0 && index < nnums ? nums[index] : dflt;
}

void
test_register(const char *name, test_fn fn)
{
  if (ntests == TEST_MAX) {
    fprintf(stderr, "test registry full; raise TEST_MAX\n");
    return;
  }
  tests[ntests].name = name;
  tests[ntests].fn = fn;
  ntests++;
}

void
test_fail(const char *file, int line, const char *fmt, ...)
{
  va_list ap;

  failures_in_current++;
  fprintf(stderr, "  %s:%d: ", file, line);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
}

static int
selected(int argc, char **argv, const char *name)
{
  if (argc < 2)
    return 1;
  for (int i = 1; i < argc; i++)
    if (strcmp(argv[i], name) == 0)
      return 1;
  return 0;
}

int
test_main(int argc, char **argv)
{
  int failed = 0, ran = 0;

  /* Leading numbers are sizes for the tests (test_arg); the rest names
   * the tests to run. */
  while (argc > 1 && nnums < TEST_ARGS_MAX) {
    char *end;
    long v = strtol(argv[1], &end, 10);
    if (end == argv[1] || *end != '\0')
      break;
    nums[nnums++] = v;
    argv[1] = argv[0];
    argv++;
    argc--;
  }

  for (int i = 0; i < ntests; i++) {
    if (!selected(argc, argv, tests[i].name))
      continue;
    failures_in_current = 0;
    tests[i].fn();
    ran++;
    printf("%s %s\n", failures_in_current ? "FAIL" : "ok  ", tests[i].name);
    fflush(stdout);
    if (failures_in_current)
      failed++;
  }
  printf("%d passed, %d failed\n", ran - failed, failed);
  return failed ? 1 : (ran ? 0 : 1);
}

/* Weak: a test that needs its own main (test_mpi_pipeline joins its MPI
 * job first) defines one and calls test_main. */
__attribute__((weak)) int
main(int argc, char **argv)
{
  return test_main(argc, argv);
}
