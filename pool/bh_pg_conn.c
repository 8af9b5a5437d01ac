/* Postgres connections on one worker's loop: connect, idle watch, statements, cancel, reset, close.
 *
 * Invariants:
 * - A connection's state is the bh_pool list it is on (bh_pool_conn_t.state), changed only by
 *   bh_pool, and says who owns it and what its poll watches:
 *     CONNECTING  the pool's connecting list: the host name being resolved (c->resolving, no
 *                 PGconn yet), or PQconnectPoll steps driven by the poll; c->timer is the
 *                 connect timeout, which covers the name resolution too.
 *     IDLE        the idle list (LIFO): the poll watches for readability, and any event means
 *                 the server closed the session or is closing it.
 *     BUSY        the busy list: its user's. c->op says what is in flight: OP_NONE (nothing, or
 *                 a pipeline being built: c->items), OP_PIPE (a pipeline sent, whose callbacks
 *                 are on c; c->items[c->head] is the item whose results are being read).
 *     CLOSING     the closing list: handles closing, PQfinish already done (c->pq NULL).
 * - c->refs counts what must finish before c is freed: its timer, its poll handles (the one in
 *   use and any being closed after PQsocket changed), a name resolution and a cancel on the
 *   thread pool. The last one frees c, after telling the pool (bh_pool_conn_closed).
 * - While connecting, the poll is stopped (epoll DEL) before every PQconnectPoll call: libpq may
 *   close its socket and open a new one under the same fd number, which an epoll registration
 *   would not follow. A different number gets a new uv_poll_t; the old one closes.
 * - The libpq connection is in pipeline mode from connect to close. c->items mirrors libpq's
 *   command queue one to one (statements, Parse of a cached statement, reset statements,
 *   DEALLOCATE, syncs), so each result is routed to the item at the head; a statement's results
 *   end with NULL, a sync's with its PGRES_PIPELINE_SYNC.
 * - The done callback is copied and detached before it runs; after every upcall the loop
 *   re-reads c->op, since the user may release c, which never frees it synchronously (handles
 *   close asynchronously).
 * - A broken, cancelled or dirty connection is never reused. A reused session that may have been
 *   changed (c->needs_reset) is reset in front of its next owner's statements, in their
 *   transaction, so that a failed reset stops them; needs_reset is cleared only once a reset
 *   committed. After a BH_PG_RESET_NOW statement the reset runs at release instead, still
 *   BUSY (c->resetting; c->timer is its timeout), before the connection goes idle.
 * - c->cache names prepared statements bh_ps_<id> this session holds: never one it does not
 *   (ids are not reused), possibly fewer (a failed reset or DEALLOCATE leaves some behind until
 *   the next reset's DEALLOCATE ALL). */
#include "bh_pg_int.h"

#include <assert.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include "bh_alloc.h"
#include "bh_log.h"

#define PREWARM_BACKOFF_MS 250
#define DNS_TTL_MS 30000 /* resolved addresses of a server name are reused this long */

struct pg_poll {
    uv_poll_t h;
    bh_pg_conn_t *c;
    int fd;
};

enum pg_op { OP_NONE, OP_PIPE };

/* What a queued item is, as libpq's command queue has it. */
enum item_kind {
    IT_STMT,    /* an owner's statement (Bind + Execute of a cached one, or Parse + Bind + ...) */
    IT_SYNC,    /* a sync: results PGRES_PIPELINE_SYNC, no NULL after it */
    IT_RESET,   /* one statement of the session reset */
    IT_PREPARE, /* the Parse of a cached statement, in front of its IT_STMT */
    IT_DEALLOC, /* DEALLOCATE of an evicted or stale statement, in its own transaction */
    IT_SESSION, /* a setting of bh_pg's own (the client's application_name), after the reset:
                   its failure counts as the reset's */
};

struct pg_item {
    uint8_t kind;
    bool internal;     /* a sync of bh_pg's own: not stepped */
    bool aborted;      /* PGRES_PIPELINE_ABORTED: the server skipped it */
    bool errored;      /* an error result of it went to the owner (its Parse's counts) */
    bool delivered;    /* some result of it went to the owner */
    bool stale;        /* cached plan stale: runs again unprepared */
    bool stale_exists; /* ... and the server still holds the prepared statement */
    unsigned flags;
    uint32_t tag;
    uint32_t ps_id;  /* IT_PREPARE, or a cached IT_STMT: bh_ps_<ps_id>; else 0 */
    const char *sql; /* IT_STMT: the owner's, for a stale rerun */
    int nparams;
    const char *const *values;
};

#define NO_RERUN SIZE_MAX
#define MAX_KEPT_ITEMS 64 /* queue entries a connection keeps between pipelines */

struct bh_pg_conn {
    bh_pool_conn_t pc;
    bh_pg_pool_t *pool;
    PGconn *pq; /* NULL once closing */
    struct pg_poll *poll;
    int events;       /* what poll watches; 0 = stopped */
    uv_timer_t timer; /* connect timeout, then the reset timeout */
    unsigned refs;
    enum pg_op op;
    uv_getaddrinfo_t gai;
    bool resolving;
    bool start_failed; /* PQconnectStartParams failed: reported from the timer */
    bool broken;       /* connection lost or unusable */
    bool cancelled;    /* a cancel was sent: never reused */
    bool dirty;        /* state the reset cannot vouch for (COPY) */
    bool needs_reset;  /* reset before the next owner's statements */
    bool reset_open;   /* a reset ran inside a transaction not yet committed */
    bool touched;      /* this owner queued a BH_PG_LEAVES_STATE statement */
    bool reset_now;    /* ... a BH_PG_RESET_NOW one: reset at release, before going idle */
    bool resetting;    /* that reset is in flight (c->timer is its timeout) */
    bool reset_failed; /* the last pipeline failed in the reset in front of it */
    uint64_t params0;  /* params_hash of the freshly reset session */
    /* the pipeline */
    bh_pg_pipe_cbs_t cbs;
    void *data;
    struct pg_item *items;
    size_t n_items, cap_items, head, rerun;
    bool head_started;           /* single-row mode was set for items[head] */
    uint32_t group_items;        /* items queued since the last sync */
    uint32_t group_user;         /* ... of them statements of the owner's */
    bool rd_reset, rd_reset_err; /* reading: the current transaction has reset items; one failed */
    bool rd_err, rd_commit;      /* ... an error / a COMMIT of the owner's */
    bh__pg_cache_t cache;
    char err[64]; /* bh_pg's own error text, when not libpq's */
    /* cancel, on the thread pool */
    uv_work_t work;
    PGcancel *cancel;
    bool cancel_busy;
    int cancel_rc;
    bh_pg_cancel_cb cancel_cb;
    void *cancel_data;
    char cancel_err[256];
};

static bh_pg_conn_t *conn_of(bh_pool_conn_t *pc)
{
    return bh_container_of(pc, bh_pg_conn_t, pc);
}

/* ---- connections: closing ---------------------------------------------------------------- */

static void conn_unref(bh_pg_conn_t *c)
{
    if (--c->refs > 0)
        return;
    bh_pg_pool_t *p = c->pool;
    if (c->pq != NULL)
        PQfinish(c->pq); /* a connection the pool never saw */
    bh__pg_cache_free(&c->cache);
    bh_free(c->items);
    bool pooled = c->pc.state == BH_PCONN_CLOSING;
    if (pooled)
        bh_pool_conn_closed(&c->pc);
    bh_free(c);
    if (pooled)
        bh__pg_pool_maybe_done(p);
}

static void on_conn_handle_closed(uv_handle_t *h)
{
    conn_unref(h->data);
}

static void on_poll_closed(uv_handle_t *h)
{
    struct pg_poll *pp = h->data;
    bh_pg_conn_t *c = pp->c;
    bh_free(pp);
    conn_unref(c);
}

/* uv_close stops watching at once (epoll DEL), so the fd may be closed right after. */
static void poll_drop(bh_pg_conn_t *c)
{
    if (c->poll == NULL)
        return;
    uv_close((uv_handle_t *)&c->poll->h, on_poll_closed);
    c->poll = NULL;
    c->events = 0;
}

static void poll_stop(bh_pg_conn_t *c)
{
    if (c->poll != NULL && c->events != 0) {
        uv_poll_stop(&c->poll->h);
        c->events = 0;
    }
}

static void on_poll(uv_poll_t *h, int status, int events);

/* Watches PQsocket for events, moving to a new uv_poll_t when the socket changed. */
static int poll_watch(bh_pg_conn_t *c, int events)
{
    int fd = PQsocket(c->pq);
    if (fd < 0)
        return BH_EPG_CONN_LOST;
    if (c->poll != NULL && c->poll->fd != fd)
        poll_drop(c);
    if (c->poll == NULL) {
        struct pg_poll *pp = bh_malloc(sizeof(*pp));
        if (pp == NULL)
            return BH_ENOMEM;
        if (uv_poll_init(c->pool->pools->loop, &pp->h, fd) < 0) {
            bh_free(pp);
            return BH_EPG_CONN_LOST;
        }
        pp->h.data = pp;
        pp->c = c;
        pp->fd = fd;
        c->poll = pp;
        c->events = 0;
        c->refs++;
    }
    if (events != c->events) {
        if (uv_poll_start(&c->poll->h, events, on_poll) < 0)
            return BH_EPG_CONN_LOST;
        c->events = events;
    }
    return 0;
}

void bh__pg_conn_close(bh_pool_conn_t *pc)
{
    bh_pg_conn_t *c = conn_of(pc);
    c->op = OP_NONE;
    c->n_items = 0;
    c->cancel_cb = NULL;
    poll_drop(c);
    if (c->resolving)
        uv_cancel((uv_req_t *)&c->gai); /* its callback still runs, and drops its reference */
    uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
    PQfinish(c->pq); /* a PGcancel in flight is independent of it */
    c->pq = NULL;
}

/* ---- connections: connecting ------------------------------------------------------------- */

static void on_notice(void *arg, const char *message)
{
    (void)arg;
    bh_log_debug("postgres notice: %s", message);
}

static void connect_fail(bh_pg_conn_t *c, bool timed_out, const char *text)
{
    bh_pg_pool_t *p = c->pool;
    char msg[1024];
    bh_pg_error_t e;
    if (text != NULL) {
        snprintf(msg, sizeof(msg), "%s", text);
        bh_pg_error_parse(&e, msg);
    } else if (timed_out) {
        snprintf(msg, sizeof(msg), "timeout expired: no session within %llu ms",
                 (unsigned long long)p->connect_timeout_ms);
        bh_pg_error_parse(&e, msg);
        e.code = BH_ECONNECT_TIMEOUT;
    } else {
        snprintf(msg, sizeof(msg), "%s", c->pq != NULL ? PQerrorMessage(c->pq) : "");
        bh_pg_error_parse(&e, msg);
    }
    bh_log_debug("postgres connect for %s failed: %s", p->label, msg);
    uint64_t now = bh__pg_now(p);
    if (e.code != BH_EPG_REJECTED)
        p->dns_until = 0; /* the address may have moved: resolve again */
    if (p->base.n_waiters == 0)
        p->retry_at = now + PREWARM_BACKOFF_MS; /* a failed pre-warm does not spin */
    p->failing = &e;
    bh_pool_connect_failed(&c->pc, e.code, now); /* closes c: msg was copied */
    p->failing = NULL;
    bh__pg_pool_timer_set(p);
}

static void conn_lost(bh_pg_conn_t *c);

static void on_connect_timer(uv_timer_t *t)
{
    bh_pg_conn_t *c = t->data;
    if (c->pc.state == BH_PCONN_CONNECTING)
        connect_fail(c, !c->start_failed, NULL);
    else if (c->pc.state == BH_PCONN_BUSY && c->resetting && c->op == OP_PIPE)
        conn_lost(c); /* the reset at release hangs: give up on the connection */
}

static uint64_t params_hash(const PGconn *pq);
static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res);
static void conn_start(bh_pg_conn_t *c);

static void connect_step(bh_pg_conn_t *c)
{
    poll_stop(c); /* libpq may close the socket and reuse its number for a new one */
    switch (PQconnectPoll(c->pq)) {
    case PGRES_POLLING_OK:
        uv_timer_stop(&c->timer);
        if (PQsetnonblocking(c->pq, 1) != 0 || !PQenterPipelineMode(c->pq) ||
            poll_watch(c, UV_READABLE) < 0) {
            connect_fail(c, false, NULL);
            return;
        }
        c->params0 = params_hash(c->pq);
        c->rerun = NO_RERUN;
        bh_pool_connected(&c->pc, bh__pg_now(c->pool));
        return;
    case PGRES_POLLING_READING:
        if (poll_watch(c, UV_READABLE) < 0)
            connect_fail(c, false, NULL);
        return;
    case PGRES_POLLING_WRITING:
        if (poll_watch(c, UV_WRITABLE) < 0)
            connect_fail(c, false, NULL);
        return;
    default:
        connect_fail(c, false, NULL);
        return;
    }
}

/* PQconnectStartParams and the first poll. Failures are reported from the timer, so that the
 * waiter learns libpq's message and never hears back from inside bh_pool_acquire. */
static void conn_start(bh_pg_conn_t *c)
{
    bh_pg_pool_t *p = c->pool;
    c->pq = PQconnectStartParams((const char *const *)p->params.kw,
                                 (const char *const *)p->params.vals, 0);
    if (c->pq != NULL) {
        PQsetErrorVerbosity(c->pq, PQERRORS_VERBOSE);
        PQsetNoticeProcessor(c->pq, on_notice, c);
    }
    if (c->pq == NULL || PQstatus(c->pq) == CONNECTION_BAD || poll_watch(c, UV_WRITABLE) < 0) {
        c->start_failed = true;
        uv_timer_start(&c->timer, on_connect_timer, 0, 0);
    }
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    bh_pg_conn_t *c = req->data;
    bh_pg_pool_t *p = c->pool;
    c->resolving = false;
    if (c->pc.state == BH_PCONN_CONNECTING && c->pq == NULL && !c->start_failed) {
        int rc = status < 0 ? BH_ECONNECT_FAILED : bh__pg_params_set_addresses(&p->params, res);
        if (rc < 0) {
            char msg[512];
            snprintf(msg, sizeof(msg), "could not translate host name \"%s\" to address: %s\n",
                     p->params.dns_name, status < 0 ? uv_strerror(status) : bh_strerror(rc));
            connect_fail(c, false, msg);
        } else {
            p->dns_until = bh__pg_now(p) + DNS_TTL_MS;
            conn_start(c);
        }
    }
    uv_freeaddrinfo(res);
    conn_unref(c);
}

bh_pool_conn_t *bh__pg_conn_open(bh_pool_t *bp, int *err)
{
    bh_pg_pool_t *p = bp->data;
    uint64_t now = bh__pg_now(p);
    if (bp->n_waiters == 0 && now < p->retry_at) {
        *err = BH_ECONNECT_FAILED; /* pre-warming backs off; the pool timer retries */
        return NULL;
    }
    bh_pg_conn_t *c = bh_calloc(1, sizeof(*c));
    if (c == NULL) {
        *err = BH_ENOMEM;
        return NULL;
    }
    bh_pool_conn_init(&c->pc, bp, now);
    c->pool = p;
    uv_timer_init(p->pools->loop, &c->timer);
    c->timer.data = c;
    c->refs = 1;
    /* The connect timeout covers name resolution too. */
    uv_timer_start(&c->timer, on_connect_timer, p->connect_timeout_ms, 0);
    if (p->params.dns_name != NULL && now >= p->dns_until) {
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
        c->gai.data = c;
        if (uv_getaddrinfo(p->pools->loop, &c->gai, on_resolved, p->params.dns_name, NULL,
                           &hints) == 0) {
            c->resolving = true;
            c->refs++;
            return &c->pc;
        }
    }
    conn_start(c);
    return &c->pc;
}

/* ---- connections: idle ------------------------------------------------------------------- */

bool bh__pg_conn_alive(bh_pool_conn_t *pc)
{
    bh_pg_conn_t *c = conn_of(pc);
    if (c->broken || PQstatus(c->pq) != CONNECTION_OK || c->poll == NULL)
        return false;
    /* The readability watch may not have run yet in this loop iteration: any pending byte
     * (the server's FATAL on shutdown) or EOF means the session is over. */
    char ch;
    ssize_t n = recv(PQsocket(c->pq), &ch, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

/* ---- connections: pipelines ------------------------------------------------------------- */

/* The reset of spec 7.5, one statement each: pipeline mode has no simple protocol (several
 * statements in one string). Only sessions outside a transaction are reset (no ROLLBACK), and
 * DISCARD ALL is not among them: it cannot run inside a transaction block. */
static const char *const RESET_STMTS[] = {
    "CLOSE ALL",  "SET SESSION AUTHORIZATION DEFAULT", "RESET ALL",    "DEALLOCATE ALL",
    "UNLISTEN *", "SELECT pg_advisory_unlock_all()",   "DISCARD TEMP", "DISCARD SEQUENCES",
};

/* Settings the server reports (GUC_REPORT, PostgreSQL 15) that a request could change: a
 * different value after the request means the session needs a reset (search_path is not
 * reported before PostgreSQL 18; SET is caught by the statement scan instead). Not
 * application_name: bh_pg sets it itself to the client's (bh_pg_push_app_name). */
static const char *const WATCHED[] = {
    "TimeZone",
    "DateStyle",
    "IntervalStyle",
    "client_encoding",
    "is_superuser",
    "session_authorization",
    "standard_conforming_strings",
    "default_transaction_read_only",
};

static uint64_t params_hash(const PGconn *pq)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < sizeof(WATCHED) / sizeof(WATCHED[0]); i++) {
        const char *v = PQparameterStatus(pq, WATCHED[i]);
        for (const char *p = v != NULL ? v : ""; *p != '\0'; p++)
            h = (h ^ (unsigned char)*p) * 1099511628211ull;
        h = (h ^ 0xffu) * 1099511628211ull; /* separator: "a","bc" differs from "ab","c" */
    }
    return h;
}

static void pipe_finish(bh_pg_conn_t *c, int status)
{
    void (*cb)(bh_pg_conn_t *, int, void *) = c->cbs.done;
    void *data = c->data;
    c->op = OP_NONE;
    c->n_items = c->head = 0;
    if (c->cap_items > MAX_KEPT_ITEMS) { /* a big batch's queue is not kept while idle */
        bh_free(c->items);
        c->items = NULL;
        c->cap_items = 0;
    }
    c->head_started = false;
    c->group_items = c->group_user = 0;
    c->rd_reset = c->rd_reset_err = c->rd_err = c->rd_commit = false;
    c->rerun = NO_RERUN;
    if (status < 0)
        c->broken = true;
    cb(c, status, data);
}

static void conn_lost(bh_pg_conn_t *c)
{
    c->broken = true;
    poll_stop(c); /* EOF would keep the level-triggered watch firing */
    if (c->op != OP_NONE)
        pipe_finish(c, BH_EPG_CONN_LOST);
}

/* 0: all sent; 1: more to send (watching writability); < 0: lost. */
static int flush_out(bh_pg_conn_t *c)
{
    int r = PQflush(c->pq);
    if (r < 0)
        return BH_EPG_CONN_LOST;
    if (poll_watch(c, r ? UV_READABLE | UV_WRITABLE : UV_READABLE) < 0)
        return BH_EPG_CONN_LOST;
    return r;
}

/* A COPY_OUT's data is read and dropped. 1: done; 0: wait for input; < 0: lost. */
static int drain_copy_out(bh_pg_conn_t *c)
{
    for (;;) {
        char *buf = NULL;
        int n = PQgetCopyData(c->pq, &buf, 1);
        if (n > 0) {
            PQfreemem(buf);
            continue;
        }
        return n == 0 ? 0 : n == -1 ? 1 : BH_EPG_CONN_LOST;
    }
}

/* ---- pipelines: building ------------------------------------------------------------------ */

static int push_failed(bh_pg_conn_t *c, int err)
{
    c->broken = true; /* part of the pipeline may be in libpq's buffer: never reuse */
    return err;
}

static struct pg_item *item_add(bh_pg_conn_t *c, enum item_kind kind, uint32_t tag)
{
    if (c->n_items == c->cap_items) {
        size_t cap = c->cap_items ? c->cap_items * 2 : 8;
        struct pg_item *n = bh_realloc(c->items, cap * sizeof(*n));
        if (n == NULL)
            return NULL;
        c->items = n;
        c->cap_items = cap;
    }
    struct pg_item *it = &c->items[c->n_items++];
    memset(it, 0, sizeof(*it));
    it->kind = (uint8_t)kind;
    it->tag = tag;
    c->group_items++;
    return it;
}

static void ps_name(char out[24], uint32_t id)
{
    snprintf(out, 24, "bh_ps_%u", id);
}

static int push_sync(bh_pg_conn_t *c, uint32_t tag, bool internal)
{
    struct pg_item *it = item_add(c, IT_SYNC, tag);
    if (it == NULL)
        return push_failed(c, BH_ENOMEM);
    it->internal = internal;
    c->group_items = c->group_user = 0;
    /* PQpipelineSync also flushes what is queued: the server may start on it already. */
    return PQpipelineSync(c->pq) ? 0 : push_failed(c, BH_EPG_CONN_LOST);
}

/* DEALLOCATE in a transaction of its own, so that its failure (the statement is gone already)
 * makes the server skip nothing else. libpq 15 has no Close message call. */
static int push_dealloc(bh_pg_conn_t *c, uint32_t id)
{
    char sql[48];
    snprintf(sql, sizeof(sql), "DEALLOCATE bh_ps_%u", id);
    if (item_add(c, IT_DEALLOC, 0) == NULL)
        return push_failed(c, BH_ENOMEM);
    if (!PQsendQueryParams(c->pq, sql, 0, NULL, NULL, NULL, NULL, 0))
        return push_failed(c, BH_EPG_CONN_LOST);
    return push_sync(c, 0, true);
}

/* A cached statement's prepared id for sql: a hit, or a miss with its Parse queued (after the
 * evictions that make room, each in a transaction of its own in front, which is possible only
 * at the start of one: after a reset the cache is empty anyway). 0: run it unprepared. */
static int cache_use(bh_pg_conn_t *c, uint32_t tag, const char *sql, int nparams, uint32_t *id)
{
    size_t len = strlen(sql);
    if (len > BH__PG_CACHE_MAX_TEXT)
        return 0;
    *id = bh__pg_cache_find(&c->cache, sql, len, nparams);
    if (*id != 0)
        return BH_PG_CACHE_HIT;
    while (bh__pg_cache_full(&c->cache, c->pool->statement_cache, len)) {
        if (c->group_items != 0)
            return 0;
        int rc = push_dealloc(c, bh__pg_cache_evict(&c->cache));
        if (rc < 0)
            return rc;
    }
    *id = bh__pg_cache_add(&c->cache, sql, len, nparams);
    if (*id == 0)
        return 0; /* no memory for the copy: unprepared */
    struct pg_item *it = item_add(c, IT_PREPARE, tag);
    if (it == NULL)
        return push_failed(c, BH_ENOMEM);
    it->ps_id = *id;
    char name[24];
    ps_name(name, *id);
    if (!PQsendPrepare(c->pq, name, sql, nparams, NULL))
        return push_failed(c, BH_EPG_CONN_LOST);
    return BH_PG_CACHE_MISS;
}

static bool pushable(const bh_pg_conn_t *c)
{
    assert(c->pc.state == BH_PCONN_BUSY);
    return !c->broken && c->pq != NULL && PQstatus(c->pq) == CONNECTION_OK;
}

/* Queues the statement itself (after its Parse when cached: id != 0). */
static int push_stmt(bh_pg_conn_t *c, uint32_t tag, const char *sql, int nparams,
                     const char *const *values, unsigned flags, uint32_t id)
{
    struct pg_item *it = item_add(c, IT_STMT, tag);
    if (it == NULL)
        return push_failed(c, BH_ENOMEM);
    it->flags = flags;
    it->ps_id = id;
    it->sql = sql;
    it->nparams = nparams;
    it->values = values;
    c->group_user++;
    int ok;
    if (id != 0) {
        char name[24];
        ps_name(name, id);
        ok = PQsendQueryPrepared(c->pq, name, nparams, values, NULL, NULL, 0);
    } else {
        ok = PQsendQueryParams(c->pq, sql, nparams, NULL, values, NULL, NULL, 0);
    }
    return ok ? 0 : push_failed(c, BH_EPG_CONN_LOST);
}

int bh_pg_push(bh_pg_conn_t *c, uint32_t tag, const char *sql, int nparams,
               const char *const *values, unsigned flags)
{
    assert(c->op == OP_NONE);
    if (!pushable(c))
        return push_failed(c, BH_EPG_CONN_LOST);
    uint32_t id = 0;
    int cached = 0;
    /* Only first in its transaction (or right after the reset): a stale plan can then be
     * retried without undoing anything else, and never inside a user's explicit transaction. */
    if ((flags & BH_PG_CACHE) && c->group_user == 0 && c->pool->statement_cache > 0)
        cached = cache_use(c, tag, sql, nparams, &id);
    if (cached < 0)
        return cached;
    if (flags & (BH_PG_LEAVES_STATE | BH_PG_RESET_NOW))
        c->touched = true;
    if (flags & BH_PG_RESET_NOW)
        c->reset_now = true;
    int rc = push_stmt(c, tag, sql, nparams, values, flags, id);
    return rc < 0 ? rc : cached;
}

int bh_pg_push_sync(bh_pg_conn_t *c, uint32_t tag)
{
    assert(c->op == OP_NONE);
    if (!pushable(c))
        return push_failed(c, BH_EPG_CONN_LOST);
    return push_sync(c, tag, false);
}

bool bh_pg_needs_reset(const bh_pg_conn_t *c)
{
    return c->needs_reset;
}

static int push_reset_items(bh_pg_conn_t *c)
{
    for (size_t i = 0; i < sizeof(RESET_STMTS) / sizeof(RESET_STMTS[0]); i++) {
        if (item_add(c, IT_RESET, 0) == NULL)
            return push_failed(c, BH_ENOMEM);
        if (!PQsendQueryParams(c->pq, RESET_STMTS[i], 0, NULL, NULL, NULL, NULL, 0))
            return push_failed(c, BH_EPG_CONN_LOST);
    }
    /* DEALLOCATE ALL runs before anything queued after it: the cache starts empty. Should the
     * reset fail, statements the server still holds are only leaked until the next reset (ids
     * are never reused). */
    bh__pg_cache_clear(&c->cache);
    return 0;
}

/* Whether a reset is queued in the pipeline being built. */
static bool reset_queued(const bh_pg_conn_t *c)
{
    for (size_t i = 0; i < c->n_items; i++)
        if (c->items[i].kind == IT_RESET)
            return true;
    return false;
}

static const char *app_name_wanted(const bh_pg_conn_t *c, const char *name)
{
    const bh__pg_params_t *pp = &c->pool->params;
    return name != NULL ? name : pp->vals[pp->app_at];
}

bool bh_pg_app_name_differs(const bh_pg_conn_t *c, const char *name)
{
    const bh__pg_params_t *pp = &c->pool->params;
    /* What the server reports now; RESET ALL in front brings back the startup one. */
    const char *now = reset_queued(c) || c->needs_reset
                          ? pp->vals[pp->app_at]
                          : PQparameterStatus(c->pq, "application_name");
    return now == NULL || strcmp(now, app_name_wanted(c, name)) != 0;
}

int bh_pg_push_app_name(bh_pg_conn_t *c, const char *name)
{
    assert(c->op == OP_NONE);
    if (!bh_pg_app_name_differs(c, name))
        return 0;
    const char *want = app_name_wanted(c, name);
    if (!pushable(c))
        return push_failed(c, BH_EPG_CONN_LOST);
    if (item_add(c, IT_SESSION, 0) == NULL)
        return push_failed(c, BH_ENOMEM);
    const char *values[1] = {want};
    if (!PQsendQueryParams(c->pq, "SELECT pg_catalog.set_config('application_name', $1, false)", 1,
                           NULL, values, NULL, NULL, 0))
        return push_failed(c, BH_EPG_CONN_LOST);
    return 1;
}

int bh_pg_push_reset(bh_pg_conn_t *c)
{
    assert(c->op == OP_NONE);
    if (!c->needs_reset)
        return 0;
    if (!pushable(c))
        return push_failed(c, BH_EPG_CONN_LOST);
    int rc = push_reset_items(c);
    return rc < 0 ? rc : 1;
}

int bh_pg_send(bh_pg_conn_t *c, const bh_pg_pipe_cbs_t *cbs, void *data)
{
    assert(c->pc.state == BH_PCONN_BUSY && c->op == OP_NONE);
    assert(cbs->result != NULL && cbs->done != NULL);
    assert(c->n_items > 0 && c->items[c->n_items - 1].kind == IT_SYNC);
    if (!pushable(c))
        return push_failed(c, BH_EPG_CONN_LOST);
    c->cbs = *cbs;
    c->data = data;
    c->op = OP_PIPE;
    c->reset_failed = false;
    c->head = 0;
    c->head_started = false;
    if (flush_out(c) < 0) {
        c->op = OP_NONE;
        c->n_items = 0;
        c->broken = true;
        poll_stop(c);
        return BH_EPG_CONN_LOST;
    }
    return 0;
}

/* ---- pipelines: reading ------------------------------------------------------------------- */

/* A cached statement failed in a way it would not have unprepared, and it did not execute: its
 * prepared form no longer fits the table (0A000 "cached plan must not change result type"), is
 * gone (26000), or Bind names it in its error (08P01 "bind message supplies 1 parameters, but
 * prepared statement "bh_ps_3" requires 2": the client must see Postgres' text for the unnamed
 * statement, as without the cache). *exists: the server still holds the statement. */
static bool stale_error(const PGresult *res, bool *exists)
{
    const char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    if (code == NULL || msg == NULL)
        return false;
    *exists = strcmp(code, "26000") != 0;
    if (strcmp(code, "0A000") == 0)
        return strstr(msg, "cached plan must not change") != NULL;
    if (strcmp(code, "08P01") == 0)
        return strstr(msg, "prepared statement \"bh_ps_") != NULL;
    return strcmp(code, "26000") == 0;
}

/* A cached statement alone before the last sync, nothing of it delivered yet, can run once
 * more unprepared without the owner noticing. */
static bool stale_retry(bh_pg_conn_t *c, struct pg_item *it, const PGresult *res)
{
    bool exists = false;
    if (it->ps_id == 0 || !stale_error(res, &exists))
        return false;
    bh__pg_cache_drop(&c->cache, it->ps_id);
    if (it->delivered || c->head + 2 != c->n_items)
        return false;
    it->stale = true;
    it->stale_exists = exists;
    c->rerun = c->head;
    return true;
}

/* At the sync after a stale statement: deallocate what is left of it, then queue the statement
 * unprepared and the owner's sync again. */
static int rerun_stale(bh_pg_conn_t *c, uint32_t sync_tag)
{
    struct pg_item st = c->items[c->rerun];
    c->rerun = NO_RERUN;
    c->head = c->n_items = 0; /* everything before was consumed */
    int rc = 0;
    if (st.stale_exists)
        rc = push_dealloc(c, st.ps_id);
    if (rc == 0 && c->needs_reset) /* a reset in front of it was undone with it */
        rc = push_reset_items(c);
    if (rc == 0)
        rc = push_stmt(c, st.tag, st.sql, st.nparams, st.values, st.flags & ~BH_PG_CACHE, 0);
    if (rc == 0)
        rc = push_sync(c, sync_tag, false);
    if (rc == 0 && flush_out(c) < 0)
        rc = BH_EPG_CONN_LOST;
    return rc;
}

/* The reset's bookkeeping at a sync. It is done once its transaction committed: at its own
 * sync when that left the session idle, or later by a COMMIT (a batch's BEGIN came first). A
 * failed reset fails the pipeline: the server skipped the owner's statements after it. */
static int sync_reset(bh_pg_conn_t *c, bool last)
{
    bool idle = last && PQtransactionStatus(c->pq) == PQTRANS_IDLE;
    if (c->rd_reset) {
        if (c->rd_reset_err)
            return BH_EPG_CONN_LOST;
        if (!c->rd_err) {
            c->reset_open = !idle;
            if (idle)
                c->needs_reset = false;
        }
    } else if (c->reset_open) {
        if (!c->rd_err && c->rd_commit)
            c->needs_reset = false;
        if (c->rd_err || c->rd_commit || idle)
            c->reset_open = false;
    }
    c->rd_reset = c->rd_reset_err = c->rd_err = c->rd_commit = false;
    return 0;
}

/* A sync's result. false: the pipeline ended (or the connection is lost). */
static bool on_sync(bh_pg_conn_t *c, PGresult *res)
{
    bool ok = res != NULL && PQresultStatus(res) == PGRES_PIPELINE_SYNC;
    PQclear(res);
    if (!ok) {
        conn_lost(c);
        return false;
    }
    struct pg_item it = c->items[c->head++];
    c->head_started = false;
    if (sync_reset(c, c->head == c->n_items) < 0) {
        snprintf(c->err, sizeof(c->err), "the session reset before the statement failed");
        c->reset_failed = true;
        pipe_finish(c, BH_EPG_CONN_LOST);
        return false;
    }
    if (c->rerun != NO_RERUN) {
        if (rerun_stale(c, it.tag) < 0) {
            conn_lost(c);
            return false;
        }
        return true;
    }
    if (!it.internal && c->cbs.step != NULL)
        c->cbs.step(c, it.tag, 0, c->data); /* may release c: the loop re-reads c->op */
    return true;
}

/* A statement's results ended (PQgetResult gave NULL). */
static void item_end(bh_pg_conn_t *c)
{
    struct pg_item *it = &c->items[c->head++];
    c->head_started = false;
    if (it->kind != IT_STMT || it->stale || c->cbs.step == NULL)
        return;
    c->cbs.step(c, it->tag, it->aborted && !it->errored ? BH_PG_SKIPPED : 0, c->data);
}

/* COPY is not part of the protocol: ended at once, and the session is never reused. false:
 * wait for input or lost. */
static bool refuse_copy(bh_pg_conn_t *c, ExecStatusType st)
{
    c->dirty = true;
    int r = 1;
    /* libpq 15 ends an extended-protocol COPY FROM STDIN with a Sync of its own, which the
     * server answers out of the pipeline's order: only harmless when the statement is the last
     * before the final sync. Otherwise the session is given up on at once. */
    bool last = c->head + 2 == c->n_items;
    if (st == PGRES_COPY_IN && !last)
        r = BH_EPG_CONN_LOST;
    else if (st == PGRES_COPY_IN)
        r = PQputCopyEnd(c->pq, "COPY FROM STDIN is not supported here") < 0 || flush_out(c) < 0
                ? BH_EPG_CONN_LOST
                : 1;
    else if (st == PGRES_COPY_OUT)
        r = drain_copy_out(c);
    else
        r = BH_EPG_CONN_LOST;
    if (r < 0)
        conn_lost(c);
    return r > 0;
}

/* One result of an item at the head. false: stop reading for now. */
static bool item_result(bh_pg_conn_t *c, struct pg_item *it, PGresult *res)
{
    ExecStatusType st = PQresultStatus(res);
    bool failed = st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_SINGLE_TUPLE &&
                  st != PGRES_EMPTY_QUERY && st != PGRES_NONFATAL_ERROR;
    if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
        PQclear(res);
        return refuse_copy(c, st);
    }
    if (it->kind != IT_DEALLOC)
        c->rd_err |= failed; /* a DEALLOCATE has its own transaction */
    switch (it->kind) {
    case IT_RESET:
    case IT_SESSION:
        c->rd_reset = true;
        c->rd_reset_err |= failed;
        break;
    case IT_PREPARE:
        if (failed) {
            bh__pg_cache_drop(&c->cache, it->ps_id);
            if (st == PGRES_FATAL_ERROR && c->head + 1 < c->n_items) {
                c->items[c->head + 1].errored = true; /* the Parse error is the statement's */
                c->items[c->head + 1].delivered = true;
                c->cbs.result(c, it->tag, res, c->data);
                return true;
            }
        }
        break;
    case IT_STMT:
        if (st == PGRES_PIPELINE_ABORTED) {
            it->aborted = true;
            break;
        }
        if (st == PGRES_FATAL_ERROR && stale_retry(c, it, res))
            break;
        if (c->reset_open && st == PGRES_COMMAND_OK && strcmp(PQcmdStatus(res), "COMMIT") == 0)
            c->rd_commit = true;
        it->errored |= st == PGRES_FATAL_ERROR;
        it->delivered = true;
        c->cbs.result(c, it->tag, res, c->data); /* may release c: the loop re-reads c->op */
        return true;
    default:
        break;
    }
    PQclear(res);
    return true;
}

static void pipe_deliver(bh_pg_conn_t *c)
{
    while (c->op == OP_PIPE) {
        if (c->head == c->n_items) {
            pipe_finish(c, 0);
            return;
        }
        struct pg_item *it = &c->items[c->head];
        if (!c->head_started) {
            /* Before anything of this statement is parsed (PQisBusy parses): libpq then hands
             * its rows over one by one. */
            c->head_started = true;
            if (it->kind == IT_STMT && (it->flags & BH_PG_SINGLE_ROW))
                (void)PQsetSingleRowMode(c->pq);
        }
        if (PQisBusy(c->pq))
            return;
        PGresult *res = PQgetResult(c->pq);
        if (it->kind == IT_SYNC) {
            if (!on_sync(c, res))
                return;
        } else if (res == NULL) {
            item_end(c);
        } else if (!item_result(c, it, res)) {
            return;
        }
    }
}

static void busy_io(bh_pg_conn_t *c, int status, int events)
{
    if (status < 0) {
        conn_lost(c);
        return;
    }
    if (c->events & UV_WRITABLE) {
        /* libpq: while output is pending, flush again on readability as well. */
        if (events & UV_READABLE && !PQconsumeInput(c->pq)) {
            conn_lost(c);
            return;
        }
        if (flush_out(c) < 0) {
            conn_lost(c);
            return;
        }
    }
    if (events & (UV_READABLE | UV_DISCONNECT)) {
        if (!PQconsumeInput(c->pq)) {
            conn_lost(c);
            return;
        }
        if (c->op == OP_NONE) {
            if (PQstatus(c->pq) != CONNECTION_OK)
                conn_lost(c);
            return;
        }
        pipe_deliver(c);
        /* Notifications are dropped only now: PQnotifies parses input, which must wait until
         * single-row mode is set for the statement whose rows arrive (pipe_deliver does that).
         * A release during pipe_deliver closed c->pq (NULL: nothing to drain). */
        PGnotify *nt;
        while (c->pq != NULL && (nt = PQnotifies(c->pq)) != NULL)
            PQfreemem(nt);
    }
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    bh_pg_conn_t *c = ((struct pg_poll *)h->data)->c;
    switch (c->pc.state) {
    case BH_PCONN_CONNECTING:
        connect_step(c);
        return;
    case BH_PCONN_IDLE:
        /* Nothing is expected on an idle session: this is the server going away (restart,
         * idle_session_timeout, terminated backend). */
        poll_stop(c);
        c->broken = true;
        bh_pool_idle_lost(&c->pc, bh__pg_now(c->pool));
        return;
    case BH_PCONN_BUSY:
        busy_io(c, status, events);
        return;
    default:
        poll_stop(c);
        return;
    }
}

bool bh_pg_reset_failed(const bh_pg_conn_t *c)
{
    return c->reset_failed;
}

const char *bh_pg_conn_error_message(const bh_pg_conn_t *c)
{
    if (c->err[0] != '\0')
        return c->err;
    return c->pq != NULL ? PQerrorMessage(c->pq) : "connection closed";
}

const PGconn *bh_pg_conn_pq(const bh_pg_conn_t *c)
{
    return c->pq;
}

/* ---- cancel ------------------------------------------------------------------------------ */

static void do_cancel(uv_work_t *w)
{
    bh_pg_conn_t *c = w->data;
    c->cancel_rc = PQcancel(c->cancel, c->cancel_err, sizeof(c->cancel_err)) ? 0 : BH_EPG_CONN_LOST;
}

static void after_cancel(uv_work_t *w, int status)
{
    bh_pg_conn_t *c = w->data;
    PQfreeCancel(c->cancel);
    c->cancel = NULL;
    c->cancel_busy = false;
    c->pool->pools->cancels--;
    if (status < 0)
        c->cancel_rc = BH_EPG_CONN_LOST;
    else if (c->cancel_rc < 0)
        bh_log_debug("postgres cancel for %s failed: %s", c->pool->label, c->cancel_err);
    bh_pg_cancel_cb cb = c->cancel_cb;
    c->cancel_cb = NULL;
    if (cb != NULL)
        cb(c, c->cancel_rc, c->cancel_data);
    conn_unref(c);
}

static int start_cancel(bh_pg_conn_t *c)
{
    bh_pg_pools_t *pools = c->pool->pools;
    c->cancelled = true; /* whatever happens next, this session is not reused */
    if (c->cancel_busy || pools->cancels >= BH_PG_MAX_CANCELS)
        return BH_EPOOL_FULL;
    c->cancel = PQgetCancel(c->pq);
    if (c->cancel == NULL)
        return BH_ENOMEM;
    c->work.data = c;
    c->cancel_err[0] = '\0';
    if (uv_queue_work(pools->loop, &c->work, do_cancel, after_cancel) < 0) {
        PQfreeCancel(c->cancel);
        c->cancel = NULL;
        return BH_ENOMEM;
    }
    c->cancel_busy = true;
    c->refs++;
    pools->cancels++;
    return 0;
}

int bh_pg_cancel(bh_pg_conn_t *c, bh_pg_cancel_cb cb, void *data)
{
    assert(c->pc.state == BH_PCONN_BUSY);
    if (c->op != OP_PIPE)
        return BH_EINVAL;
    int rc = start_cancel(c);
    if (rc < 0)
        return rc;
    c->cancel_cb = cb;
    c->cancel_data = data;
    return 0;
}

/* ---- release ----------------------------------------------------------------------------- */

static void on_reset_result(bh_pg_conn_t *c, uint32_t tag, PGresult *res, void *data)
{
    PQclear(res); /* never called: reset items deliver nothing */
}

static void on_reset_done(bh_pg_conn_t *c, int status, void *data)
{
    uv_timer_stop(&c->timer);
    c->resetting = false;
    bool ok = status == 0 && !c->needs_reset && PQtransactionStatus(c->pq) == PQTRANS_IDLE;
    bh_pool_release(&c->pc, ok, bh__pg_now(c->pool));
}

/* A session that may hold what others wait for (a session advisory lock) is reset before it
 * goes idle, in a round trip of its own, as it was before resets were deferred. */
static void reset_at_release(bh_pg_conn_t *c, uint64_t now)
{
    static const bh_pg_pipe_cbs_t reset_cbs = {.result = on_reset_result, .done = on_reset_done};
    c->reset_now = false;
    if (push_reset_items(c) < 0 || push_sync(c, 0, true) < 0 || bh_pg_send(c, &reset_cbs, c) < 0) {
        bh_pool_release(&c->pc, false, now);
        return;
    }
    c->resetting = true;
    uv_timer_start(&c->timer, on_connect_timer, c->pool->reset_timeout_ms, 0);
}

void bh_pg_release(bh_pg_conn_t *c, bool reusable)
{
    assert(c->pc.state == BH_PCONN_BUSY && !c->resetting);
    bh_pg_pool_t *p = c->pool;
    uint64_t now = bh__pg_now(p);
    c->cancel_cb = NULL;
    bool reset_now = c->reset_now;
    c->reset_now = false;
    if (c->op == OP_PIPE || c->n_items > 0) {
        /* The user went away mid-pipeline (or before sending what libpq may have flushed):
         * stop it on the server, then close. */
        c->op = OP_NONE;
        c->n_items = 0;
        if (!c->cancel_busy && !c->broken)
            (void)start_cancel(c);
        reusable = false;
    }
    if (!reusable || c->broken || c->cancelled || c->dirty || PQstatus(c->pq) != CONNECTION_OK ||
        PQtransactionStatus(c->pq) != PQTRANS_IDLE || p->base.shut || now >= c->pc.expires_ms) {
        bh_pool_release(&c->pc, false, now);
        return;
    }
    if (c->touched || p->reset_always || params_hash(c->pq) != c->params0)
        c->needs_reset = true;
    c->touched = false;
    c->err[0] = '\0';
    if (reset_now) {
        reset_at_release(c, now);
        return;
    }
    /* No round trip here: the reset, when needed, goes in front of the next owner's pipeline. */
    bh_pool_release(&c->pc, true, now);
}

/* ---- acquire ----------------------------------------------------------------------------- */

static void on_pool_acquired(bh_pool_waiter_t *bw, bh_pool_conn_t *pc, int status)
{
    bh_pg_waiter_t *w = bh_container_of(bw, bh_pg_waiter_t, base);
    bh_pg_pool_t *p = w->pool;
    const bh_pg_error_t *err = status < 0 ? p->failing : NULL;
    p->failing = NULL; /* one waiter hears a connect failure */
    w->cb(w, pc != NULL ? conn_of(pc) : NULL, status, err);
}

int bh_pg_acquire(bh_pg_pool_t *p, bh_pg_waiter_t *w, uint64_t deadline_ms, bh_pg_conn_t **out)
{
    bh_pool_conn_t *pc = NULL;
    *out = NULL;
    p->marked = false;
    w->pool = p;
    w->base.cb = on_pool_acquired;
    int rc = bh_pool_acquire(&p->base, &w->base, bh__pg_now(p), deadline_ms, &pc);
    if (rc == 0)
        *out = conn_of(pc);
    return rc;
}

void bh_pg_acquire_cancel(bh_pg_waiter_t *w)
{
    bh_pool_cancel(&w->base);
}
