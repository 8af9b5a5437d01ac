/* Postgres connections on libuv: non-blocking libpq driven by one worker's loop, pooled by
 * bh_pool, one pool per key (server, session settings, database, user, password digest), every
 * key of a configured database entry under the entry's one connection cap.
 *
 * A connection (bh_pg_conn_t) is CONNECTING, IDLE, BUSY or CLOSING as its pool says. While BUSY
 * it belongs to one user, who runs pipelines of statements on it (bh_pg_push, bh_pg_send) and
 * gives it back with bh_pg_release(). The loop never blocks on Postgres: connects are driven by
 * PQconnectPoll, statements by PQflush/PQconsumeInput/PQisBusy, cancels run on libuv's thread
 * pool. Every callback below runs on the loop's thread, never from inside the call that started
 * the operation.
 *
 * Layers, outermost first:
 *   bh_pg_shared_t  process-wide: one permit counter (bh_sem_t) per database entry, so
 *                   max_connections bounds the entry's connections over every key and worker,
 *                   with one FIFO of waiters across them (a waiter whose key has no idle
 *                   connection gets room by closing the coldest idle connection of another key);
 *                   and, when max_per_user is below it, a cap per key; a mutex is taken only
 *                   when a worker creates or frees a pool.
 *   bh_pg_pools_t   per worker: its keyed pools, created on demand, and their timers.
 *   bh_pg_pool_t    one key on one worker: a bh_pool_t plus what opening a connection needs. */
#ifndef BH_PG_H
#define BH_PG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <libpq-fe.h>
#include <uv.h>
#include "bh_conf.h"
#include "bh_error.h"
#include "bh_pool.h"
#include "bh_sem.h"

/* Postgres-specific causes are rows of the one error table (bh_error.h):
 *   BH_EPG_REJECTED   the server refused the session at connect (28P01, 28000, 3D000, ...): the
 *                     request's own fault, not retriable
 *   BH_EPG_CONN_LOST  the connection broke (EOF, reset, libpq failure) */

/* Connect failures that never reached Postgres, or that Postgres refused only because it was
 * overloaded or not ready, return existing codes:
 *   BH_ECONNECT_REFUSED  TCP refused
 *   BH_ECONNECT_TIMEOUT  connect_timeout_ms elapsed before the session was ready
 *   BH_ECONNECT_FAILED   anything else without a server answer (DNS, unreachable), and the
 *                        server's 53300 (too many connections) and 57P03 (starting up, shutting
 *                        down), whose sqlstate is then set in bh_pg_error_t. */

/* True for failures that provably never ran anything on the server: safe to retry. */
bool bh_pg_error_retriable(int err);

/* Why a connect failed, as far as libpq tells. */
typedef struct bh_pg_error {
    int code;            /* as above */
    char sqlstate[6];    /* "28P01"; "" when the server never answered */
    char severity[8];    /* "FATAL", "ERROR", ...; "" when the server never answered */
    const char *message; /* libpq's whole message (verbose: "... failed: FATAL:  28P01: ..."),
                            valid only during the callback; never contains the password */
    const char *detail;  /* the server's text after "SQLSTATE: " up to the end of that line
                            (a pointer into message; length detail_len); NULL when none */
    size_t detail_len;
} bh_pg_error_t;

/* Extracts severity, SQLSTATE and message from a verbose libpq connect error (spec 12) and
 * classifies it (code). Exposed for the error body and for tests. */
void bh_pg_error_parse(bh_pg_error_t *e, const char *libpq_message);

/* ---- configuration ----------------------------------------------------------------------- */

typedef struct bh_pg_setting {
    const char *name;  /* a GUC name: letters, digits, '_' and '.' only */
    const char *value; /* any text; spaces and backslashes are escaped */
} bh_pg_setting_t;

/* One configured database server, owned by the caller. Pools copy what they need at creation,
 * so this may be freed (config reload) while pools created from it live on. Two servers with the
 * same conninfo, session and pool settings share pools. */
typedef struct bh_pg_server {
    const char *conninfo;           /* libpq conninfo without credentials: "host=10.0.0.5
                                       port=5432 sslmode=prefer"; its user/password/dbname/
                                       options/application_name, if any, are overridden */
    const bh_pg_setting_t *session; /* extra session settings after the defaults (client_encoding
                                       UTF8, DateStyle ISO,MDY, IntervalStyle postgres,
                                       bytea_output hex, TimeZone UTC); may override them */
    size_t n_session;
    const char *name;            /* the database entry's name: with conninfo and
                                    max_connections, the identity of its connection cap */
    bh_conf_pool_t pool;         /* max_connections: the entry's, over every key and worker;
                                    max_per_user (0: none): one key's, over every worker */
    uint64_t connect_timeout_ms; /* connect start -> session ready; 0 = 2000 */
    uint64_t reset_timeout_ms;   /* a reset at release (BH_PG_RESET_NOW); 0 =
                                    connect_timeout_ms */
    uint32_t statement_cache;    /* prepared statements cached per connection (LRU); 0 = off */
    bool reset_auto;             /* reset only after a request that may have changed the
                                    session (reset: auto); false: before every reuse */
    bh_pool_gauges_t *gauges;    /* where a pool created from it reports (single writer: set it
                                    in a per-worker copy); NULL: nowhere */
    uint64_t tag;                /* identifies the configuration it came from, for
                                    bh_pg_pools_retire (0: never retired) */
} bh_pg_server_t;

/* ---- process-wide permits ---------------------------------------------------------------- */

typedef struct bh_pg_shared bh_pg_shared_t;

/* n_workers: the threads that will create pools from it (each with its own inbox, whose lane
 * index is below n_workers). NULL on allocation failure. */
bh_pg_shared_t *bh_pg_shared_new(uint32_t n_workers);
/* Only once every bh_pg_pools_t using it is closed. */
void bh_pg_shared_free(bh_pg_shared_t *s);
/* Number of permit counters (database entries and keys, for tests). */
size_t bh_pg_shared_count(bh_pg_shared_t *s);

/* Every pool key with a pool on some worker: its database entry's name, its user and database
 * name, its connections over every worker and its cap. Any thread; cb runs under the registry's
 * mutex (it must not call into bh_pg). */
typedef void (*bh_pg_key_cb)(void *data, const char *database, const char *user, const char *dbname,
                             uint32_t connections, uint32_t max);
void bh_pg_shared_keys(bh_pg_shared_t *s, bh_pg_key_cb cb, void *data);

/* ---- per-worker pools -------------------------------------------------------------------- */

typedef struct bh_pg_pools bh_pg_pools_t;
typedef struct bh_pg_pool bh_pg_pool_t;
typedef struct bh_pg_conn bh_pg_conn_t;

/* A reload replaced configurations: every pool created from a server whose tag is not in
 * live[0..n) is retired (bh_pool_retire: idle connections close now, busy ones when released)
 * and no longer found by bh_pg_pool_get. */
void bh_pg_pools_retire(bh_pg_pools_t *pools, const uint64_t *live, size_t n);

/* NULL on allocation failure. Starts a sweep timer on loop (closed by bh_pg_pools_close).
 * inbox: the loop thread's (see bh_pool_init); the caller drains it with bh_pool_inbox_run. */
bh_pg_pools_t *bh_pg_pools_new(uv_loop_t *loop, bh_pg_shared_t *shared, bh_sem_inbox_t *inbox);

/* The pool for a key, created on demand (and pre-warmed to min_idle). password may be NULL (no
 * password sent); it is kept in memory to open connections, compared only through a SHA-256
 * digest of the key, never logged, and wiped when the pool is freed.
 * *out stays valid while the pool has a connection or a waiter, and otherwise at least until the
 * loop has run one sweep interval: call bh_pg_acquire() right after this.
 * Returns 0, BH_EINVAL (bad setting name, unparsable conninfo), BH_ENOMEM, BH_EPOOL_CLOSED. */
BH_MUST_CHECK int bh_pg_pool_get(bh_pg_pools_t *pools, const bh_pg_server_t *server,
                                 const char *dbname, const char *user, const char *password,
                                 bh_pg_pool_t **out);

/* The generic pool under a key (limits, counters, list sizes): read-only for callers. */
const bh_pool_t *bh_pg_pool_base(const bh_pg_pool_t *p);

/* Pools on this worker (including those still closing). */
size_t bh_pg_pools_count(const bh_pg_pools_t *pools);

/* Frees pools that have been empty (no connection, no waiter, min_idle 0) since the previous
 * sweep. Runs by itself every BH_PG_SWEEP_MS; exposed for tests. */
#define BH_PG_SWEEP_MS 10000
void bh_pg_pools_sweep(bh_pg_pools_t *pools);

/* Shuts every pool down: waiters get BH_EPOOL_CLOSED, idle connections close, BUSY connections
 * close when released (they must still be released). cb(data) runs once everything is closed
 * (connections, lookups and cancels in flight, timers); pools is already freed then. */
void bh_pg_pools_close(bh_pg_pools_t *pools, void (*cb)(void *data), void *data);

/* ---- acquiring --------------------------------------------------------------------------- */

typedef struct bh_pg_waiter bh_pg_waiter_t;

/* status 0: c is BUSY and now the owner's. status < 0: c is NULL; status is BH_EPOOL_TIMEOUT,
 * BH_EPOOL_CLOSED or a connect failure; for a connect failure err says why (else err is NULL). */
typedef void (*bh_pg_acquire_cb)(bh_pg_waiter_t *w, bh_pg_conn_t *c, int status,
                                 const bh_pg_error_t *err);

/* Owned by the caller (embed it in the request); zero it before first use. */
struct bh_pg_waiter {
    bh_pool_waiter_t base;
    bh_pg_acquire_cb cb;
    void *data;         /* for the owner */
    bh_pg_pool_t *pool; /* set by bh_pg_acquire */
};

/* Like bh_pool_acquire: 0 with *out BUSY (an idle connection found alive: an idle connection the
 * server closed is never handed out, a fresh one is opened instead); BH_POOL_QUEUED: w->cb runs
 * later exactly once unless bh_pg_acquire_cancel(w) comes first; < 0: BH_EPOOL_FULL,
 * BH_EPOOL_CLOSED, BH_ENOMEM. deadline_ms (loop time, uv_now; BH_TIME_NEVER for none) caps the
 * wait below acquire_timeout. Sets w->pool; w->cb and w->data must be set by the caller. */
BH_MUST_CHECK int bh_pg_acquire(bh_pg_pool_t *p, bh_pg_waiter_t *w, uint64_t deadline_ms,
                                bh_pg_conn_t **out);

/* The owner went away while queued: no callback follows. No-op when not queued. */
void bh_pg_acquire_cancel(bh_pg_waiter_t *w);

/* ---- statements on a BUSY connection: pipelines ---------------------------------------- */

/* Every connection runs in libpq's pipeline mode. Its owner builds a pipeline (bh_pg_push,
 * bh_pg_push_reset, bh_pg_push_sync), sends it with bh_pg_send (one round trip, however many
 * statements), and hears back per result, per item and once at the end. Statements between two
 * syncs form one implicit transaction on the server (unless they open an explicit one), and an
 * error makes the server skip the rest of them up to the next sync. A pipeline ends with a sync.
 *
 * tag: the owner's number for a statement or sync, handed back in the callbacks. */
typedef struct bh_pg_pipe_cbs {
    /* Each PGresult of statement tag, in order; the callee owns res and must PQclear() it.
     * Single-row mode gives one PGRES_SINGLE_TUPLE per row, then a PGRES_TUPLES_OK without rows
     * carrying the command tag. A PGRES_FATAL_ERROR result is the statement's error
     * (PQresultErrorField works); the connection stays usable and may be released as reusable:
     * bh_pg_release discards it on its own when it was cancelled, broke or is left inside a
     * transaction. COPY results are not delivered (COPY is refused; the session is discarded). */
    void (*result)(bh_pg_conn_t *c, uint32_t tag, PGresult *res, void *data);
    /* Statement or sync tag is over: status 0 (every result of it was delivered), or
     * BH_PG_SKIPPED (the server skipped the statement after an earlier error before the same
     * sync: no result). May be NULL. */
    void (*step)(bh_pg_conn_t *c, uint32_t tag, int status, void *data);
    /* The pipeline is over: status 0 (every item stepped) or BH_EPG_CONN_LOST (the connection
     * broke, or the session reset in front failed; bh_pg_conn_error_message says how; some
     * statements may have run, except when the reset failed: then none of the user's statements
     * of the reset's transaction ran). The connection can take the next pipeline, or be
     * released. */
    void (*done)(bh_pg_conn_t *c, int status, void *data);
} bh_pg_pipe_cbs_t;

#define BH_PG_SKIPPED 1 /* step status: not run */

/* Statement flags.
 * BH_PG_SINGLE_ROW   rows one by one (PQsetSingleRowMode), for bounded memory.
 * BH_PG_CACHE        may run as a server-side prepared statement from the connection's cache;
 *                    honoured only for the first statement after a sync or after the reset, never
 *                    inside an explicit transaction (a stale plan could not be retried there).
 * BH_PG_LEAVES_STATE may leave session state behind: the session is reset before its next owner.
 * BH_PG_RESET_NOW    may leave what other sessions wait for or what a deferred reset cannot hide
 *                    (a session advisory lock, LISTEN): reset at release, in a round trip of its
 *                    own, before the connection goes idle. */
#define BH_PG_SINGLE_ROW 1u
#define BH_PG_CACHE 2u
#define BH_PG_LEAVES_STATE 4u
#define BH_PG_RESET_NOW 8u

/* bh_pg_push's positive results: the statement runs prepared from the cache. */
#define BH_PG_CACHE_HIT 1
#define BH_PG_CACHE_MISS 2 /* Parse + Bind + Execute: it is cached from now on */

/* Queues one statement, with text parameters (values[i] NULL = SQL NULL) and text results, through
 * the extended protocol even with nparams 0 (a string with several statements fails with 42601).
 * sql and values must stay valid until done: a cached statement that fails only because it is
 * prepared (a stale plan, 0A000 "cached plan must not change result type"; 26000; a Bind error
 * naming the prepared statement, 08P01) runs once more unprepared without the owner noticing.
 * Returns 0, BH_PG_CACHE_HIT, BH_PG_CACHE_MISS, or < 0 (BH_EPG_CONN_LOST, BH_ENOMEM) when it could
 * not be queued: the connection is unusable (release it as not reusable); the transactions of
 * this pipeline before its last sync may have reached the server (a sync flushes). */
BH_MUST_CHECK int bh_pg_push(bh_pg_conn_t *c, uint32_t tag, const char *sql, int nparams,
                             const char *const *values, unsigned flags);

/* Queues a sync: the end of the statements' implicit transaction. It also flushes what is
 * queued (libpq 15), so the server may start on it before bh_pg_send. 0 or < 0 as bh_pg_push. */
BH_MUST_CHECK int bh_pg_push_sync(bh_pg_conn_t *c, uint32_t tag);

/* True when the session must be reset before the next statement (a previous owner may have
 * changed it: reset_auto saw a BH_PG_LEAVES_STATE statement or a changed ParameterStatus, or
 * reset_auto is off). */
bool bh_pg_needs_reset(const bh_pg_conn_t *c);

/* The session's application_name becomes name (NULL: the configured one) when the server's is
 * another, by a set_config in front of what is queued next (after a reset queued in front,
 * which brings back the configured one). The server's report is the truth, so a transaction
 * that rolled it back, or a function that changed it, is corrected the next time. A failure
 * counts as the reset's (bh_pg_reset_failed). 1: queued; 0: not needed; < 0 as bh_pg_push. */
BH_MUST_CHECK int bh_pg_push_app_name(bh_pg_conn_t *c, const char *name);
/* Whether bh_pg_push_app_name would queue anything (a reset that is needed counts as queued). */
bool bh_pg_app_name_differs(const bh_pg_conn_t *c, const char *name);

/* Queues the session reset (spec 7.5: CLOSE ALL, SET SESSION AUTHORIZATION DEFAULT, RESET ALL,
 * DEALLOCATE ALL, UNLISTEN *, pg_advisory_unlock_all(), DISCARD TEMP, DISCARD SEQUENCES) when
 * bh_pg_needs_reset, as statements of the current transaction: put it first, or right after a
 * BEGIN, so that a failing reset makes the server skip the owner's statements up to the sync
 * (done then reports BH_EPG_CONN_LOST). A statement that cannot run inside a transaction block
 * needs the reset in a pipeline of its own (reset, sync) first. Its results are not delivered.
 * It empties the statement cache. The reset counts as done once its transaction committed.
 * Returns 1 (queued), 0 (not needed) or < 0 as bh_pg_push. */
BH_MUST_CHECK int bh_pg_push_reset(bh_pg_conn_t *c);

/* Sends what was queued (the last item must be a sync); the callbacks follow, never from inside
 * this call. Returns 0 or BH_EPG_CONN_LOST (the connection broke; what a sync flushed may have
 * reached the server; release c as not reusable). One pipeline at a time. */
BH_MUST_CHECK int bh_pg_send(bh_pg_conn_t *c, const bh_pg_pipe_cbs_t *cbs, void *data);

/* True when c's last pipeline ended with BH_EPG_CONN_LOST because the session reset in front of
 * the owner's statements failed: the server skipped them (or rolled them back with the
 * transaction), so nothing of the owner's took effect and another connection may run them. */
bool bh_pg_reset_failed(const bh_pg_conn_t *c);

/* libpq's last error text for c (PQerrorMessage), e.g. after BH_EPG_CONN_LOST. Never NULL. */
const char *bh_pg_conn_error_message(const bh_pg_conn_t *c);

/* The libpq connection, for reading only (PQtransactionStatus, PQparameterStatus,
 * PQbackendPID...). Never send on it directly. */
const PGconn *bh_pg_conn_pq(const bh_pg_conn_t *c);

/* Asks the server to cancel what c is running: PQgetCancel here, the blocking PQcancel on libuv's
 * thread pool. The connection will be discarded at release. cb (may be NULL) runs exactly once
 * with 0 when the request was delivered, or BH_EPG_CONN_LOST (or BH_ECONNECT_*), unless c is
 * released first (then it is dropped). The running statement then normally ends with a 57014
 * error result and its done callback. Returns 0, or < 0 when no cancel could be started
 * (nothing running: BH_EINVAL; one already in flight, too many in flight on this worker:
 * BH_EPOOL_FULL; BH_ENOMEM): no callback then. */
typedef void (*bh_pg_cancel_cb)(bh_pg_conn_t *c, int status, void *data);
BH_MUST_CHECK int bh_pg_cancel(bh_pg_conn_t *c, bh_pg_cancel_cb cb, void *data);

/* Cancels on the thread pool a worker runs at most this many at once (PQcancel can block for a
 * TCP connect timeout when the server is unreachable). */
#define BH_PG_MAX_CANCELS 2

/* Gives a BUSY connection back; no callback of its current pipeline or cancel follows.
 * reusable: the caller saw the exchange complete cleanly. The connection is reused only if also:
 * no pipeline queued or in flight, no cancel, no broken connection, PQtransactionStatus is IDLE.
 * Otherwise it is closed; a pipeline still in flight is cancelled on the server first (client
 * went away). A reused session is normally not reset here: it is marked for the reset, which
 * goes in front of the next owner's statements (bh_pg_push_reset); after a BH_PG_RESET_NOW
 * statement it is reset now, asynchronously, before it returns to the pool. */
void bh_pg_release(bh_pg_conn_t *c, bool reusable);

#endif
