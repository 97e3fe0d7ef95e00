/* baton: the transport between processes (internal), under <baton/comm.h>.
 *
 * What the pipeline's send and receive tasks use: non-blocking
 * point-to-point requests that a task starts or tests without ever
 * waiting, the control channel on which a failing rank tells the others,
 * and the "waiting for" note.  Every MPI call goes through the comm's
 * mutex (MPI_THREAD_SERIALIZED).  Built without MPI, the functions exist
 * and fail with BT_EUNSUPPORTED (a job of one never calls them). */
#ifndef BATON_ACTORS_COMM_H
#define BATON_ACTORS_COMM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "baton/comm.h"

/* Tags: the control channel, then the pipeline's transfers (index + base),
 * then bt_comm_send's user tags (tag + base). */
#define BT__COMM_TAG_CTRL 1
#define BT__COMM_TAG_XFER 16
#define BT__COMM_TAG_USER (1 << 28)
#define BT__COMM_XFER_MAX ((1 << 28) - 32)

/* One outstanding request (an MPI_Request and whether it is active). */
struct bt__comm_req {
  uint64_t handle; /* the MPI_Request, stored as an integer (OpenMPI's is a
                      pointer, MPICH's an int) */
  int active;
};

/* Starts sending / receiving bytes (which may exceed INT_MAX: sent as
 * several messages is not supported; BT_ERANGE above 2^31 - 1).  BT_ECOMM
 * with MPI's message. */
bt_status bt__comm_isend(bt_comm_t *c, const void *buf, size_t bytes,
                         int32_t to, int32_t tag, struct bt__comm_req *req,
                         char *errbuf, size_t errlen);
bt_status bt__comm_irecv(bt_comm_t *c, void *buf, size_t bytes, int32_t from,
                         int32_t tag, struct bt__comm_req *req, char *errbuf,
                         size_t errlen);

/* 1 when the request is complete (then inactive), 0 when not yet, or a
 * negative bt_status (BT_ECOMM, message in errbuf).  An inactive request
 * is complete. */
int bt__comm_test(bt_comm_t *c, struct bt__comm_req *req, char *errbuf,
                  size_t errlen);

/* Cancels and frees an active request (after a failed step). */
void bt__comm_cancel(bt_comm_t *c, struct bt__comm_req *req);

/* A peer's failure report, if one arrived: its rank (message in msg), or
 * -1.  Once seen, it stays (every later call returns it). */
int32_t bt__comm_peer_failure(bt_comm_t *c, char *msg, size_t n);

/* Waits for a request, sleeping between tests, until it completes, the
 * timeout passes (BT_ETIMEDOUT) or a peer fails (BT_EPEER); `what` names
 * the wait in the message ("... waiting for WHAT"). */
bt_status bt__comm_wait(bt_comm_t *c, struct bt__comm_req *req,
                        const char *what, bt_error_t *err);

/* Starts (on) or ends (off) a stretch in which transfers must progress on
 * their own: a thread enters MPI every ~20 us while any stretch is on. */
void bt__comm_progress(bt_comm_t *c, int on);

/* Sets / clears the "waiting for" note (NULL clears). */
void bt__comm_note_wait(bt_comm_t *c, const char *what);

/* Monotonic seconds. */
double bt__comm_now(void);

#endif /* BATON_ACTORS_COMM_H */
