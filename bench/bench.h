/* baton-bench's parts: subcommands and backends in their own files. */
#ifndef BATON_BENCH_BENCH_H
#define BATON_BENCH_BENCH_H

/* `baton-bench overhead ...`: per-task overhead of the runtime on empty
 * tasks (bench/overhead.c).  Returns the process exit status. */
int bench_overhead(int argc, char **argv);

#endif /* BATON_BENCH_BENCH_H */
