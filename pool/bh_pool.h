/* The generic bounded connection pool: policy only, no I/O, time passed in.
 *
 * One pool serves one destination on one thread (an upstream endpoint, or a Postgres key, on one
 * worker). The concrete layer (HTTP upstream connections, libpq connections) embeds a
 * bh_pool_conn_t in its connection object, performs the I/O and reports events to the pool; the
 * pool decides which connection serves which waiter, when to open and when to close.
 *
 * Invariants:
 * - Every connection holds one permit of the pool's semaphore from the moment it is opened until
 *   ops->close has closed it; connecting + idle + busy <= max_connections, across every pool
 *   sharing the semaphore (the endpoints of an upstream on every worker).
 * - A connection's state equals the list it is on (connecting, idle, busy, closing), changed only
 *   by one transition function that asserts the move is legal.
 * - Idle connections are reused LIFO (the most recently used first: warm, and lets the oldest
 *   reach idle_timeout) and checked with ops->alive() before reuse.
 * - Waiters are served FIFO, across the pools sharing the semaphore too: a connection given back
 *   while a waiter that queued earlier on another pool (another worker) has no connection on the
 *   way is closed and its permit handed to that waiter's pool (bh_sem.h), which opens one. A
 *   waiter is queued only while fewer than max_pending are queued, and leaves after
 *   acquire_timeout with BH_EPOOL_TIMEOUT, or when its owner cancels it.
 * - A waiter's callback is invoked exactly once (unless cancelled first), never from inside
 *   bh_pool_acquire(), always with the pool in a consistent state; it may call back into the
 *   pool (release, acquire, cancel) and may free the waiter. */
#ifndef BH_POOL_H
#define BH_POOL_H

#include <stdbool.h>
#include <stdint.h>
#include "bh_error.h"
#include "bh_list.h"
#include "bh_sem.h"
#include "bh_stat.h"

#define BH_TIME_NEVER UINT64_MAX

typedef struct bh_pool bh_pool_t;
typedef struct bh_pool_conn bh_pool_conn_t;
typedef struct bh_pool_waiter bh_pool_waiter_t;

enum bh_pool_conn_state {
    BH_PCONN_NONE = 0,    /* initialised, not yet in the pool */
    BH_PCONN_CONNECTING,  /* opening; holds a permit */
    BH_PCONN_IDLE,        /* open, unused, on the idle list (LIFO) */
    BH_PCONN_BUSY,        /* handed to a user */
    BH_PCONN_CLOSING,     /* socket closed, permit moved on; the concrete close finishing */
};

struct bh_pool_conn {
    bh_list_t link;          /* on the list of its state */
    bh_pool_t *pool;
    enum bh_pool_conn_state state;
    uint64_t created_ms;     /* when opening started */
    uint64_t idle_since_ms;  /* when it last became idle */
    uint64_t expires_ms;     /* not reused at or after this time (max_lifetime, or a limit the
                                concrete layer learned, e.g. Keep-Alive: timeout=N); NEVER = none */
    uint64_t uses;           /* times handed to a user */
};

/* status 0: conn is BUSY and now belongs to the waiter's owner. status < 0: conn is NULL and the
 * status says why (BH_EPOOL_TIMEOUT, BH_EPOOL_CLOSED, or the connect error). */
typedef void (*bh_pool_acquire_cb)(bh_pool_waiter_t *w, bh_pool_conn_t *conn, int status);

struct bh_pool_waiter {
    bh_list_t link;          /* on the pool's waiter queue while queued */
    bh_pool_acquire_cb cb;
    uint64_t queued_ms;      /* set by the pool when queued */
    uint64_t ticket;         /* its place in the queue of every pool sharing the semaphore */
    uint64_t deadline_ms;    /* min(queued + acquire_timeout, deadline given to acquire) */
    void *data;              /* for the owner */
    bh_pool_t *pool;         /* set by the pool while queued, NULL otherwise (for bh_pool_cancel) */
};

typedef struct bh_pool_ops {
    /* Start opening a new connection: allocate the concrete object, bh_pool_conn_init() its
     * embedded conn and start connecting. The pool has already taken a permit for it and puts
     * the returned conn on the connecting list. The concrete layer later reports exactly one of
     * bh_pool_connected() or bh_pool_connect_failed(). Returns NULL with *err set when it fails
     * at once (the pool then returns the permit). */
    bh_pool_conn_t *(*open)(bh_pool_t *pool, int *err);
    /* Cheap check that an idle connection is still usable (peer has not closed it). */
    bool (*alive)(bh_pool_conn_t *conn);
    /* Close a connection the pool has moved to CLOSING. Its socket must be closed before this
     * returns: the permit moves on right after (another worker may open in its place). The
     * concrete layer calls bh_pool_conn_closed() from its close callback, then frees it. */
    void (*close)(bh_pool_conn_t *conn);
    /* The earliest time bh_pool_expire() must run changed (BH_TIME_NEVER: no timer needed). */
    void (*arm)(bh_pool_t *pool, uint64_t at_ms);
} bh_pool_ops_t;

/* What the pool reports for /metrics (optional): connections per state and queued waiters,
 * changed by +-1 on every move. Several pools of one thread may share one (an endpoint's pool
 * before and after a reload). */
typedef struct bh_pool_gauges {
    bh_gauge_t conns[BH_PCONN_CLOSING + 1]; /* indexed by enum bh_pool_conn_state */
    bh_gauge_t waiters;
} bh_pool_gauges_t;

/* A second cap shared by the pools of one key on several threads (a Postgres pool key inside its
 * database's semaphore): a connection holds one unit of it from just before ops->open until
 * ops->close has closed it, exactly like its permit, so `used` is also the key's connections.
 * It binds only when max is below the semaphore's. While it is full, the pool's waiters are not
 * needy (a permit would not help them): they wait for a connection of the key. A pool whose
 * connection would go idle while the key's waiters wait elsewhere closes it instead, a waiter
 * queued at the cap asks the other threads to close the key's idle connections, and a unit coming
 * back at the cap wakes them to look again. */
typedef struct bh_pool_cap {
    _Atomic int64_t used;
    int64_t max;
    _Atomic uint32_t waiting; /* waiters queued on the key's pools, every thread */
} bh_pool_cap_t;

typedef struct bh_pool_limits {
    uint32_t max_pending;         /* waiters queued; beyond: BH_EPOOL_FULL */
    uint32_t max_idle;            /* idle connections kept; beyond: the released one is closed */
    uint32_t min_idle;            /* connections kept open even when unused (pre-warming) */
    uint64_t acquire_timeout_ms;  /* longest wait in the queue */
    uint64_t idle_timeout_ms;     /* idle connections older than this are closed; 0 = never */
    uint64_t max_lifetime_ms;     /* connections older than this are not reused; 0 = unlimited */
} bh_pool_limits_t;

struct bh_pool {
    const bh_pool_ops_t *ops;
    bh_sem_t *sem;                /* permits; may be shared by the pools of several workers */
    bh_sem_lane_t *lane;          /* this thread's lane of sem */
    bh_list_t lane_link;          /* on lane->pools */
    bh_pool_limits_t limits;
    bh_list_t connecting, idle, busy, closing, waiters;
    uint32_t n_connecting, n_idle, n_busy, n_closing, n_waiters;
    uint64_t armed_ms;            /* what ops->arm was last told */
    bool dispatching;             /* re-entrancy guard for the dispatch loop */
    bool shut;                    /* bh_pool_shutdown() was called */
    void *data;                   /* for the concrete layer */
    bh_pool_gauges_t *gauges;     /* NULL: not reported */
    bh_pool_cap_t *cap;           /* NULL: the semaphore alone caps it; set after bh_pool_init */
    /* counters, monotonically increasing */
    uint64_t opened, reused, timeouts, overflows, closed;
};

/* sem: the permit counter (its max is max_connections); the pool holds a reference until
 * bh_pool_detach(). inbox: the calling thread's, whose lane index selects the pool's lane of sem
 * (every pool of one thread on one semaphore uses the same inbox); the thread must drain it with
 * bh_pool_inbox_run() whenever inbox->wake() is called. */
void bh_pool_init(bh_pool_t *p, const bh_pool_ops_t *ops, bh_sem_t *sem, bh_sem_inbox_t *inbox,
                  const bh_pool_limits_t *limits, void *data);

/* The pool is empty (bh_pool_empty) and about to be freed: it leaves its semaphore and drops
 * its reference. */
void bh_pool_detach(bh_pool_t *p);

/* For the concrete layer's open(): prepares an embedded conn. */
void bh_pool_conn_init(bh_pool_conn_t *c, bh_pool_t *p, uint64_t now_ms);

#define BH_POOL_QUEUED 1

/* Gets a connection for w's owner.
 * Returns 0 with *out set: an idle connection, now BUSY (w is not used).
 * Returns BH_POOL_QUEUED: w is queued (a new connection may be opening for it); w->cb runs later
 *   exactly once, unless bh_pool_cancel(w) comes first.
 * Returns < 0: BH_EPOOL_FULL (max_pending waiters already queued), BH_EPOOL_CLOSED, or the error
 *   of an open() that failed at once.
 * deadline_ms caps the wait below acquire_timeout (the request's own deadline; NEVER for none). */
BH_MUST_CHECK int bh_pool_acquire(bh_pool_t *p, bh_pool_waiter_t *w, uint64_t now_ms,
                                  uint64_t deadline_ms, bh_pool_conn_t **out);

/* Removes a queued waiter (its owner went away); no callback follows. No-op when not queued
 * (after its callback, or when acquire did not queue it; a never-used w must be zeroed). */
void bh_pool_cancel(bh_pool_waiter_t *w);

/* The user is done with a BUSY connection. reusable: the last exchange completed cleanly and both
 * sides keep it alive; otherwise (or when expired) it is closed. It may go straight to a waiter. */
void bh_pool_release(bh_pool_conn_t *c, bool reusable, uint64_t now_ms);

/* A CONNECTING connection is now open: it serves the first waiter, or becomes idle. */
void bh_pool_connected(bh_pool_conn_t *c, uint64_t now_ms);

/* A CONNECTING connection failed (err < 0): the pool moves it to CLOSING and calls ops->close;
 * the first waiter receives err (the failure is reported to one request, not hidden). */
void bh_pool_connect_failed(bh_pool_conn_t *c, int err, uint64_t now_ms);

/* An IDLE connection was found dead (peer closed it, read error): it is closed and forgotten. */
void bh_pool_idle_lost(bh_pool_conn_t *c, uint64_t now_ms);

/* Called from the concrete close callback: the connection leaves the closing list. */
void bh_pool_conn_closed(bh_pool_conn_t *c);

/* Runs timeouts due at now: waiters past their deadline get BH_EPOOL_TIMEOUT, idle connections
 * past idle_timeout or expires_ms are closed. Re-arms through ops->arm. It then serves waiters and
 * opens what they and min_idle need: call it once after bh_pool_init() to pre-warm. */
void bh_pool_expire(bh_pool_t *p, uint64_t now_ms);

/* Earliest time bh_pool_expire() has something to do, or BH_TIME_NEVER. */
uint64_t bh_pool_next_deadline(const bh_pool_t *p);

/* Stops the pool: waiters get BH_EPOOL_CLOSED, idle connections are closed, busy ones are closed
 * when released, no new connection is opened. The pool may be destroyed once it is empty. */
void bh_pool_shutdown(bh_pool_t *p, uint64_t now_ms);

/* On the inbox's thread, after inbox->wake(): handles the lanes queued there, and only those. A
 * lane that was handed permits opens connections with them for its oldest waiters (a permit it
 * cannot use goes on to the next oldest waiter anywhere); a lane asked to yield closes idle
 * connections (coldest first), one per waiter elsewhere that has no connection on the way, and
 * hands each permit to the oldest of them. */
void bh_pool_inbox_run(bh_sem_inbox_t *in, uint64_t now_ms);

/* The pool's configuration was replaced (a reload): its idle connections are closed now, busy
 * ones when released (unless a waiter of this pool takes them), so it empties as its last users
 * finish. Waiters are still served. */
void bh_pool_retire(bh_pool_t *p, uint64_t now_ms);

/* True when no connection (in any state) and no waiter remains. */
bool bh_pool_empty(const bh_pool_t *p);

#endif
