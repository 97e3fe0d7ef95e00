/* baton: the processes of a job (MPI on CPUs).
 *
 * Launch with `mpirun -np W prog ...` (or `srun`, which sets the same
 * environment through PMIx).  bt_comm_init joins the job; one process alone
 * (no launcher) is a job of one and needs no MPI at all.  A pipeline given
 * the comm (bt_pipeline_config_t.comm) runs only its own ranks' devices:
 * the job's devices are split into W equal consecutive shares, rank r owning
 * the r-th, and every graph edge between devices of different ranks becomes
 * a send task on the producer's rank and a receive task on the consumer's,
 * matched by a tag both derive from the same graph (so no pairing can
 * deadlock).  Receives never block an actor: a receive task that finds its
 * message missing is retried (BT_TASK_RETRY) while the device's other work
 * runs.
 *
 * Faults: a rank whose step fails tells every other rank; their waiting
 * tasks then fail with "rank 1 failed: 2F5 on cpu:3: ...".  A rank that
 * waits longer than the timeout (default 60 s) fails with what it waited
 * for and from which rank.  After a failed step the job must stop
 * (BT_EPEER from then on).
 *
 * Threads: the comm serializes its MPI calls (MPI_THREAD_SERIALIZED); any
 * thread may call these functions, one comm per process. */
#ifndef BATON_COMM_H
#define BATON_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "baton/export.h"
#include "baton/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct bt_comm bt_comm_t;

/* Joins the job: with a launcher's environment (OMPI_COMM_WORLD_SIZE,
 * PMI_SIZE or PMIX_RANK) it initializes MPI (argc and argv may be NULL);
 * otherwise it is a job of one.  BT_EUNSUPPORTED when launched as several
 * ranks but built without MPI (the message says how to build with it);
 * BT_ECOMM when MPI fails to start; BT_ENOMEM. */
BT_API bt_status bt_comm_init(int *argc, char ***argv, bt_comm_t **out,
                              bt_error_t *err);

/* Finalizes MPI if bt_comm_init started it, and frees the comm; NULL is
 * accepted.  Call it once every rank is done. */
BT_API void bt_comm_finalize(bt_comm_t *comm);

BT_API int32_t bt_comm_rank(const bt_comm_t *comm);
BT_API int32_t bt_comm_size(const bt_comm_t *comm);
/* Whether this build can run more than one rank. */
BT_API int bt_comm_has_mpi(void);

/* Seconds a rank waits for another before failing (default 60). */
BT_API void bt_comm_set_timeout(bt_comm_t *comm, double seconds);
BT_API double bt_comm_timeout(const bt_comm_t *comm);

/* Blocking point-to-point outside a step (gathering a dump or a
 * checkpoint): bytes from this rank to `to` under `tag` (0 .. 2^20), and
 * the matching receive, which needs the exact size.  They give up after
 * the timeout (BT_ETIMEDOUT) or when another rank reports a failure
 * (BT_EPEER), naming the peer. */
BT_API bt_status bt_comm_send(bt_comm_t *comm, const void *buf, size_t bytes,
                              int32_t to, int32_t tag, bt_error_t *err);
BT_API bt_status bt_comm_recv(bt_comm_t *comm, void *buf, size_t bytes,
                              int32_t from, int32_t tag, bt_error_t *err);

/* Every rank's v[0..n) summed elementwise into every rank's v, in double.
 * Exact when each element is non-zero on at most one rank (how the
 * trainers collect the loss shares).  Errors as bt_comm_recv's. */
BT_API bt_status bt_comm_allreduce_sum(bt_comm_t *comm, double *v, size_t n,
                                       bt_error_t *err);

/* All ranks meet; errors as bt_comm_recv's. */
BT_API bt_status bt_comm_barrier(bt_comm_t *comm, bt_error_t *err);

/* Tells every other rank that this one failed (their waits then end with
 * "rank R failed: msg").  Best effort; never blocks. */
BT_API void bt_comm_announce_failure(bt_comm_t *comm, const char *msg);

/* What this rank waits for right now ("" when nothing), for a message when
 * the process is told to stop (e.g. a SIGTERM handler: the string is
 * always terminated and stays valid). */
BT_API const char *bt_comm_waiting_for(const bt_comm_t *comm);

#ifdef __cplusplus
}
#endif

#endif /* BATON_COMM_H */
