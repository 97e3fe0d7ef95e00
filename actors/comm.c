/* The transport between processes: <baton/comm.h> and actors/comm.h, on
 * MPI when baton is built with it (BATON_HAVE_MPI). */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm.h"
#include "error.h"

#ifdef BATON_HAVE_MPI
#include <mpi.h>
#include <pthread.h>
#endif

#define CTRL_MAX 400
#define NOTE_MAX 240

struct bt_comm {
  int32_t rank, size;
  double timeout_s;
  int own_init; /* bt_comm_init started MPI */
  /* The "waiting for" note: two buffers, the index of the current one
   * flips after the other is written, so a signal handler reading it sees
   * a whole string. */
  char note[2][NOTE_MAX];
  _Atomic int note_at;
  atomic_flag note_busy; /* one writer at a time; others skip their note */
  /* A peer's failure, once seen: rank and message (written once, under mu,
   * before failed_rank is released). */
  _Atomic int32_t failed_rank;
  char failed_msg[CTRL_MAX];
#ifdef BATON_HAVE_MPI
  pthread_mutex_t mu;
  MPI_Comm world;
  MPI_Request ctrl_req; /* the posted receive of a failure report */
  char ctrl_buf[CTRL_MAX];
  char ctrl_out[CTRL_MAX]; /* this rank's own report, kept while sent */
  int announced;
  /* The progress thread: while a step runs it enters MPI every few tens
   * of microseconds, so transfers advance (OpenMPI moves a large message
   * only inside MPI calls) even when every actor is computing. */
  pthread_t progress;
  pthread_cond_t progress_cv; /* with mu */
  int progress_started, progress_active, progress_stop;
#endif
};

double
bt__comm_now(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void
nap_us(long us)
{
  struct timespec ts = {0, us * 1000L};

  nanosleep(&ts, NULL);
}

void
bt__comm_note_wait(bt_comm_t *c, const char *what)
{
  int next;

  /* A diagnostic only: when another thread is writing its note, skip. */
  if (c == NULL ||
      atomic_flag_test_and_set_explicit(&c->note_busy, memory_order_acquire))
    return;
  next = 1 - atomic_load_explicit(&c->note_at, memory_order_relaxed);
  snprintf(c->note[next], NOTE_MAX, "%s", what != NULL ? what : "");
  atomic_store_explicit(&c->note_at, next, memory_order_release);
  atomic_flag_clear_explicit(&c->note_busy, memory_order_release);
}

const char *
bt_comm_waiting_for(const bt_comm_t *c)
{
  if (c == NULL)
    return "";
  return c->note[atomic_load_explicit(&c->note_at, memory_order_acquire)];
}

int32_t
bt_comm_rank(const bt_comm_t *c)
{
  return c != NULL ? c->rank : 0;
}

int32_t
bt_comm_size(const bt_comm_t *c)
{
  return c != NULL ? c->size : 1;
}

void
bt_comm_set_timeout(bt_comm_t *c, double seconds)
{
  if (c != NULL && seconds > 0)
    c->timeout_s = seconds;
}

double
bt_comm_timeout(const bt_comm_t *c)
{
  return c != NULL ? c->timeout_s : 60.0;
}

/* Whether a launcher started this process as one rank of several. */
static int
launched_ranks(void)
{
  static const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE",
                               "PMIX_SIZE", "SLURM_NTASKS"};
  const char *pmix_rank = getenv("PMIX_RANK");

  for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) {
    const char *v = getenv(vars[i]);
    if (v != NULL && atoi(v) > 1)
      return atoi(v);
  }
  return pmix_rank != NULL ? 2 : 1;
}

static bt_comm_t *
comm_new(void)
{
  bt_comm_t *c = calloc(1, sizeof *c);

  if (c == NULL)
    return NULL;
  c->size = 1;
  c->timeout_s = 60.0;
  atomic_init(&c->failed_rank, -1);
  atomic_init(&c->note_at, 0);
  atomic_flag_clear(&c->note_busy);
  return c;
}

#ifdef BATON_HAVE_MPI

static void
mpi_message(int code, char *buf, size_t n)
{
  char s[MPI_MAX_ERROR_STRING];
  int len = 0;

  if (MPI_Error_string(code, s, &len) != MPI_SUCCESS)
    snprintf(s, sizeof s, "MPI error %d", code);
  snprintf(buf, n, "%s", s);
}

int
bt_comm_has_mpi(void)
{
  return 1;
}

bt_status
bt_comm_init(int *argc, char ***argv, bt_comm_t **out, bt_error_t *err)
{
  bt_comm_t *c;
  int inited = 0, provided = 0, rc, flag = 0;
  void *ub = NULL;
  char msg[MPI_MAX_ERROR_STRING];

  if (out == NULL)
    return bt__errorf(err, BT_EINVAL, "bt_comm_init: NULL out");
  *out = NULL;
  c = comm_new();
  if (c == NULL)
    return bt__errorf(err, BT_ENOMEM, "out of memory joining the job");
  if (launched_ranks() <= 1) {
    *out = c; /* a job of one: no MPI */
    return BT_OK;
  }
  MPI_Initialized(&inited);
  if (!inited) {
    rc = MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided);
    if (rc != MPI_SUCCESS) {
      free(c);
      mpi_message(rc, msg, sizeof msg);
      return bt__errorf(err, BT_ECOMM, "MPI_Init_thread failed: %s", msg);
    }
    c->own_init = 1;
  } else {
    MPI_Query_thread(&provided);
  }
  if (provided < MPI_THREAD_SERIALIZED) {
    if (c->own_init)
      MPI_Finalize();
    free(c);
    return bt__errorf(err, BT_ECOMM,
                      "this MPI gives thread level %d, but baton calls MPI "
                      "from its runtime's threads (one at a time) and needs "
                      "MPI_THREAD_SERIALIZED; use an MPI built with thread "
                      "support",
                      provided);
  }
  pthread_mutex_init(&c->mu, NULL);
  pthread_cond_init(&c->progress_cv, NULL);
  MPI_Comm_dup(MPI_COMM_WORLD, &c->world);
  MPI_Comm_set_errhandler(c->world, MPI_ERRORS_RETURN);
  MPI_Comm_rank(c->world, &rc);
  c->rank = rc;
  MPI_Comm_size(c->world, &rc);
  c->size = rc;
  MPI_Comm_get_attr(c->world, MPI_TAG_UB, &ub, &flag);
  if (!flag || ub == NULL || *(int *)ub < BT__COMM_TAG_USER + (1 << 20)) {
    int have = flag && ub != NULL ? *(int *)ub : 0;
    bt_comm_finalize(c);
    return bt__errorf(err, BT_ECOMM,
                      "this MPI's largest tag is %d; baton needs %d", have,
                      BT__COMM_TAG_USER + (1 << 20));
  }
  MPI_Irecv(c->ctrl_buf, CTRL_MAX, MPI_CHAR, MPI_ANY_SOURCE,
            BT__COMM_TAG_CTRL, c->world, &c->ctrl_req);
  *out = c;
  return BT_OK;
}

static void *
progress_main(void *arg)
{
  bt_comm_t *c = arg;

  pthread_mutex_lock(&c->mu);
  while (!c->progress_stop) {
    int done = 0;
    struct timespec ts = {0, 20000};
    if (c->progress_active == 0) {
      pthread_cond_wait(&c->progress_cv, &c->mu);
      continue;
    }
    /* Any MPI call drives the progress engine; testing the control
     * receive also notices a peer's failure report early. */
    MPI_Status st;
    if (atomic_load_explicit(&c->failed_rank, memory_order_relaxed) < 0 &&
        c->ctrl_req != MPI_REQUEST_NULL)
      MPI_Test(&c->ctrl_req, &done, &st);
    if (done) {
      c->ctrl_buf[CTRL_MAX - 1] = '\0';
      snprintf(c->failed_msg, sizeof c->failed_msg, "%s", c->ctrl_buf);
      atomic_store_explicit(&c->failed_rank, st.MPI_SOURCE,
                            memory_order_release);
    }
    pthread_mutex_unlock(&c->mu);
    nanosleep(&ts, NULL);
    pthread_mutex_lock(&c->mu);
  }
  pthread_mutex_unlock(&c->mu);
  return NULL;
}

void
bt__comm_progress(bt_comm_t *c, int on)
{
  if (c == NULL || c->size <= 1)
    return;
  pthread_mutex_lock(&c->mu);
  if (on && !c->progress_started &&
      pthread_create(&c->progress, NULL, progress_main, c) == 0)
    c->progress_started = 1;
  c->progress_active += on ? 1 : -1;
  pthread_cond_signal(&c->progress_cv);
  pthread_mutex_unlock(&c->mu);
}

void
bt_comm_finalize(bt_comm_t *c)
{
  if (c == NULL)
    return;
  if (c->size > 1 && c->progress_started) {
    pthread_mutex_lock(&c->mu);
    c->progress_stop = 1;
    pthread_cond_signal(&c->progress_cv);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->progress, NULL);
  }
  if (c->size > 1) {
    int done = 0;
    pthread_mutex_lock(&c->mu);
    if (c->ctrl_req != MPI_REQUEST_NULL) {
      MPI_Test(&c->ctrl_req, &done, MPI_STATUS_IGNORE);
      if (!done) {
        MPI_Cancel(&c->ctrl_req);
        MPI_Wait(&c->ctrl_req, MPI_STATUS_IGNORE);
      }
    }
    MPI_Comm_free(&c->world);
    pthread_mutex_unlock(&c->mu);
    pthread_cond_destroy(&c->progress_cv);
    pthread_mutex_destroy(&c->mu);
    if (c->own_init) {
      int fin = 0;
      MPI_Finalized(&fin);
      if (!fin)
        MPI_Finalize();
    }
  }
  free(c);
}

bt_status
bt__comm_isend(bt_comm_t *c, const void *buf, size_t bytes, int32_t to,
               int32_t tag, struct bt__comm_req *req, char *errbuf,
               size_t errlen)
{
  MPI_Request r;
  int rc;

  if (bytes > (size_t)INT32_MAX) {
    snprintf(errbuf, errlen, "a %zu-byte message to rank %d is over MPI's "
             "2^31 - 1 per message; use more microbatches", bytes, (int)to);
    return BT_ERANGE;
  }
  pthread_mutex_lock(&c->mu);
  rc = MPI_Isend(buf, (int)bytes, MPI_BYTE, to, tag, c->world, &r);
  pthread_mutex_unlock(&c->mu);
  if (rc != MPI_SUCCESS) {
    char m[MPI_MAX_ERROR_STRING];
    mpi_message(rc, m, sizeof m);
    snprintf(errbuf, errlen, "MPI_Isend to rank %d failed: %s", (int)to, m);
    return BT_ECOMM;
  }
  memset(&req->handle, 0, sizeof req->handle);
  memcpy(&req->handle, &r, sizeof r);
  req->active = 1;
  return BT_OK;
}

bt_status
bt__comm_irecv(bt_comm_t *c, void *buf, size_t bytes, int32_t from,
               int32_t tag, struct bt__comm_req *req, char *errbuf,
               size_t errlen)
{
  MPI_Request r;
  int rc;

  if (bytes > (size_t)INT32_MAX) {
    snprintf(errbuf, errlen, "a %zu-byte message from rank %d is over MPI's "
             "2^31 - 1 per message; use more microbatches", bytes,
             (int)from);
    return BT_ERANGE;
  }
  pthread_mutex_lock(&c->mu);
  rc = MPI_Irecv(buf, (int)bytes, MPI_BYTE, from, tag, c->world, &r);
  pthread_mutex_unlock(&c->mu);
  if (rc != MPI_SUCCESS) {
    char m[MPI_MAX_ERROR_STRING];
    mpi_message(rc, m, sizeof m);
    snprintf(errbuf, errlen, "MPI_Irecv from rank %d failed: %s", (int)from,
             m);
    return BT_ECOMM;
  }
  memset(&req->handle, 0, sizeof req->handle);
  memcpy(&req->handle, &r, sizeof r);
  req->active = 1;
  return BT_OK;
}

int
bt__comm_test(bt_comm_t *c, struct bt__comm_req *req, char *errbuf,
              size_t errlen)
{
  MPI_Request r;
  MPI_Status st;
  int done = 0, rc;

  if (!req->active)
    return 1;
  memcpy(&r, &req->handle, sizeof r);
  pthread_mutex_lock(&c->mu);
  rc = MPI_Test(&r, &done, &st);
  pthread_mutex_unlock(&c->mu);
  memcpy(&req->handle, &r, sizeof r);
  if (rc != MPI_SUCCESS) {
    char m[MPI_MAX_ERROR_STRING];
    mpi_message(rc, m, sizeof m);
    snprintf(errbuf, errlen, "MPI_Test failed: %s", m);
    return BT_ECOMM;
  }
  if (done)
    req->active = 0;
  return done;
}

void
bt__comm_cancel(bt_comm_t *c, struct bt__comm_req *req)
{
  MPI_Request r;
  int done = 0;

  if (!req->active)
    return;
  memcpy(&r, &req->handle, sizeof r);
  pthread_mutex_lock(&c->mu);
  MPI_Test(&r, &done, MPI_STATUS_IGNORE);
  if (!done) {
    MPI_Cancel(&r);
    MPI_Request_free(&r);
  }
  pthread_mutex_unlock(&c->mu);
  req->active = 0;
}

int32_t
bt__comm_peer_failure(bt_comm_t *c, char *msg, size_t n)
{
  int32_t seen = atomic_load_explicit(&c->failed_rank, memory_order_acquire);
  MPI_Status st;
  int done = 0;

  if (seen < 0 && c->size > 1) {
    pthread_mutex_lock(&c->mu);
    seen = atomic_load_explicit(&c->failed_rank, memory_order_relaxed);
    if (seen < 0 && c->ctrl_req != MPI_REQUEST_NULL &&
        MPI_Test(&c->ctrl_req, &done, &st) == MPI_SUCCESS && done) {
      c->ctrl_buf[CTRL_MAX - 1] = '\0';
      snprintf(c->failed_msg, sizeof c->failed_msg, "%s", c->ctrl_buf);
      seen = st.MPI_SOURCE;
      atomic_store_explicit(&c->failed_rank, seen, memory_order_release);
    }
    pthread_mutex_unlock(&c->mu);
  }
  if (seen >= 0 && msg != NULL)
    snprintf(msg, n, "%s", c->failed_msg);
  return seen;
}

void
bt_comm_announce_failure(bt_comm_t *c, const char *msg)
{
  if (c == NULL || c->size <= 1)
    return;
  pthread_mutex_lock(&c->mu);
  if (!c->announced) {
    c->announced = 1;
    snprintf(c->ctrl_out, sizeof c->ctrl_out, "%s", msg ? msg : "");
    for (int32_t r = 0; r < c->size; r++) {
      MPI_Request req;
      if (r == c->rank)
        continue;
      /* Buffered by MPI's eager protocol (short); the request is freed and
       * completes on its own. */
      if (MPI_Isend(c->ctrl_out, (int)strlen(c->ctrl_out) + 1, MPI_CHAR, r,
                    BT__COMM_TAG_CTRL, c->world, &req) == MPI_SUCCESS)
        MPI_Request_free(&req);
    }
  }
  pthread_mutex_unlock(&c->mu);
}

#else /* no MPI */

int
bt_comm_has_mpi(void)
{
  return 0;
}

bt_status
bt_comm_init(int *argc, char ***argv, bt_comm_t **out, bt_error_t *err)
{
  bt_comm_t *c;

  (void)argc;
  (void)argv;
  if (out == NULL)
    return bt__errorf(err, BT_EINVAL, "bt_comm_init: NULL out");
  *out = NULL;
  if (launched_ranks() > 1)
    return bt__errorf(err, BT_EUNSUPPORTED,
                      "launched as one of %d ranks, but this baton was built "
                      "without MPI; install libopenmpi-dev "
                      "(scripts/deps.sh) and rebuild",
                      launched_ranks());
  c = comm_new();
  if (c == NULL)
    return bt__errorf(err, BT_ENOMEM, "out of memory joining the job");
  *out = c;
  return BT_OK;
}

void
bt_comm_finalize(bt_comm_t *c)
{
  free(c);
}

static bt_status
no_mpi(char *errbuf, size_t errlen)
{
  snprintf(errbuf, errlen, "this baton was built without MPI");
  return BT_EUNSUPPORTED;
}

bt_status
bt__comm_isend(bt_comm_t *c, const void *buf, size_t bytes, int32_t to,
               int32_t tag, struct bt__comm_req *req, char *errbuf,
               size_t errlen)
{
  (void)c, (void)buf, (void)bytes, (void)to, (void)tag, (void)req;
  return no_mpi(errbuf, errlen);
}

bt_status
bt__comm_irecv(bt_comm_t *c, void *buf, size_t bytes, int32_t from,
               int32_t tag, struct bt__comm_req *req, char *errbuf,
               size_t errlen)
{
  (void)c, (void)buf, (void)bytes, (void)from, (void)tag, (void)req;
  return no_mpi(errbuf, errlen);
}

int
bt__comm_test(bt_comm_t *c, struct bt__comm_req *req, char *errbuf,
              size_t errlen)
{
  (void)c;
  if (!req->active)
    return 1;
  return no_mpi(errbuf, errlen);
}

void
bt__comm_cancel(bt_comm_t *c, struct bt__comm_req *req)
{
  (void)c;
  req->active = 0;
}

int32_t
bt__comm_peer_failure(bt_comm_t *c, char *msg, size_t n)
{
  (void)c;
  if (msg != NULL && n > 0)
    msg[0] = '\0';
  return -1;
}

void
bt_comm_announce_failure(bt_comm_t *c, const char *msg)
{
  (void)c;
  (void)msg;
}

void
bt__comm_progress(bt_comm_t *c, int on)
{
  (void)c;
  (void)on;
}

#endif /* BATON_HAVE_MPI */

bt_status
bt__comm_wait(bt_comm_t *c, struct bt__comm_req *req, const char *what,
              bt_error_t *err)
{
  double t0 = bt__comm_now();
  char msg[CTRL_MAX];
  long nap = 1;

  bt__comm_note_wait(c, what);
  for (;;) {
    int32_t peer;
    int done = bt__comm_test(c, req, msg, sizeof msg);
    if (done == 1) {
      bt__comm_note_wait(c, NULL);
      return BT_OK;
    }
    if (done < 0) {
      bt__comm_note_wait(c, NULL);
      return bt__errorf(err, (bt_status)done, "rank %d waiting for %s: %s",
                        (int)c->rank, what, msg);
    }
    peer = bt__comm_peer_failure(c, msg, sizeof msg);
    if (peer >= 0) {
      bt__comm_cancel(c, req);
      bt__comm_note_wait(c, NULL);
      return bt__errorf(err, BT_EPEER, "rank %d failed: %s", (int)peer, msg);
    }
    if (bt__comm_now() - t0 > c->timeout_s) {
      bt__comm_cancel(c, req);
      bt__comm_note_wait(c, NULL);
      return bt__errorf(err, BT_ETIMEDOUT,
                        "rank %d timed out after %g s waiting for %s "
                        "(raise --comm-timeout if the job is just slow)",
                        (int)c->rank, c->timeout_s, what);
    }
    nap_us(nap);
    if (nap < 500)
      nap *= 2;
  }
}

bt_status
bt_comm_send(bt_comm_t *c, const void *buf, size_t bytes, int32_t to,
             int32_t tag, bt_error_t *err)
{
  struct bt__comm_req req = {0, 0};
  char what[96], msg[CTRL_MAX];
  bt_status rc;

  if (c == NULL || (buf == NULL && bytes > 0) || to < 0 || to >= c->size ||
      to == c->rank || tag < 0 || tag > (1 << 20))
    return bt__errorf(err, BT_EINVAL,
                      "bt_comm_send: needs a comm, a buffer, another rank "
                      "in 0..%d and a tag in 0..2^20",
                      c != NULL ? (int)c->size - 1 : 0);
  rc = bt__comm_isend(c, buf, bytes, to, BT__COMM_TAG_USER + tag, &req, msg,
                      sizeof msg);
  if (rc != BT_OK)
    return bt__errorf(err, rc, "%s", msg);
  snprintf(what, sizeof what, "rank %d to receive message %d", (int)to,
           (int)tag);
  return bt__comm_wait(c, &req, what, err);
}

bt_status
bt_comm_recv(bt_comm_t *c, void *buf, size_t bytes, int32_t from, int32_t tag,
             bt_error_t *err)
{
  struct bt__comm_req req = {0, 0};
  char what[96], msg[CTRL_MAX];
  bt_status rc;

  if (c == NULL || (buf == NULL && bytes > 0) || from < 0 ||
      from >= c->size || from == c->rank || tag < 0 || tag > (1 << 20))
    return bt__errorf(err, BT_EINVAL,
                      "bt_comm_recv: needs a comm, a buffer, another rank "
                      "in 0..%d and a tag in 0..2^20",
                      c != NULL ? (int)c->size - 1 : 0);
  rc = bt__comm_irecv(c, buf, bytes, from, BT__COMM_TAG_USER + tag, &req, msg,
                      sizeof msg);
  if (rc != BT_OK)
    return bt__errorf(err, rc, "%s", msg);
  snprintf(what, sizeof what, "message %d from rank %d", (int)tag,
           (int)from);
  return bt__comm_wait(c, &req, what, err);
}

/* Gather to rank 0 in rank order, sum there (so the order is fixed), send
 * back: point-to-point, so the waits keep their timeout and failure checks.
 * Tags 2^20 - 2 and - 1 are reserved for it. */
bt_status
bt_comm_allreduce_sum(bt_comm_t *c, double *v, size_t n, bt_error_t *err)
{
  const int32_t up = (1 << 20) - 2, down = (1 << 20) - 1;
  double *tmp;
  bt_status rc = BT_OK;

  if (c == NULL || (v == NULL && n > 0))
    return bt__errorf(err, BT_EINVAL, "bt_comm_allreduce_sum: NULL argument");
  if (c->size <= 1)
    return BT_OK;
  if (c->rank != 0) {
    rc = bt_comm_send(c, v, n * sizeof *v, 0, up, err);
    if (rc == BT_OK)
      rc = bt_comm_recv(c, v, n * sizeof *v, 0, down, err);
    return rc;
  }
  tmp = malloc((n + 1) * sizeof *tmp);
  if (tmp == NULL)
    return bt__errorf(err, BT_ENOMEM, "out of memory in an all-reduce");
  for (int32_t r = 1; r < c->size && rc == BT_OK; r++) {
    rc = bt_comm_recv(c, tmp, n * sizeof *tmp, r, up, err);
    for (size_t i = 0; rc == BT_OK && i < n; i++)
      v[i] += tmp[i];
  }
  for (int32_t r = 1; r < c->size && rc == BT_OK; r++)
    rc = bt_comm_send(c, v, n * sizeof *v, r, down, err);
  free(tmp);
  return rc;
}

bt_status
bt_comm_barrier(bt_comm_t *c, bt_error_t *err)
{
  double x = 0.0;

  return bt_comm_allreduce_sum(c, &x, 1, err);
}
