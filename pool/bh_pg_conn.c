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
 *     BUSY        the busy list: its user's. c->op says what is in flight: OP_NONE (nothing),
 *                 OP_QUERY (a statement of the user's, whose callbacks are on c), OP_RESET (the
 *                 session reset of bh_pg_release; c->timer is the reset timeout).
 *     CLOSING     the closing list: handles closing, PQfinish already done (c->pq NULL).
 * - c->refs counts what must finish before c is freed: its timer, its poll handles (the one in
 *   use and any being closed after PQsocket changed), a name resolution and a cancel on the
 *   thread pool. The last one frees c, after telling the pool (bh_pool_conn_closed).
 * - While connecting, the poll is stopped (epoll DEL) before every PQconnectPoll call: libpq may
 *   close its socket and open a new one under the same fd number, which an epoll registration
 *   would not follow. A different number gets a new uv_poll_t; the old one closes.
 * - Callbacks of a statement (result, done) are copied and detached before they run; after each
 *   upcall the loop re-reads c->op, since the user may release c, which never frees it
 *   synchronously (handles close asynchronously).
 * - A broken, cancelled or dirty connection is never reused; a reusable one goes back to the
 *   pool only after its session reset succeeded. */
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

/* Spec 7.5 without its leading ROLLBACK: only sessions outside a transaction are reset. */
static const char RESET_SQL[] =
    "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; DEALLOCATE ALL; UNLISTEN *; "
    "SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES";

struct pg_poll {
    uv_poll_t h;
    bh_pg_conn_t *c;
    int fd;
};

enum pg_op { OP_NONE, OP_QUERY, OP_RESET };

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
    bool reset_failed;
    bh_pg_result_cb on_result;
    bh_pg_done_cb on_done;
    void *data;
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
    c->on_result = NULL;
    c->on_done = NULL;
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

static void finish_op(bh_pg_conn_t *c, int status);

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

static void on_connect_timer(uv_timer_t *t)
{
    bh_pg_conn_t *c = t->data;
    if (c->pc.state == BH_PCONN_CONNECTING)
        connect_fail(c, !c->start_failed, NULL);
    else if (c->pc.state == BH_PCONN_BUSY && c->op == OP_RESET)
        finish_op(c, BH_EPG_CONN_LOST); /* the reset hangs: give up on the connection */
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res);
static void conn_start(bh_pg_conn_t *c);

static void connect_step(bh_pg_conn_t *c)
{
    poll_stop(c); /* libpq may close the socket and reuse its number for a new one */
    switch (PQconnectPoll(c->pq)) {
    case PGRES_POLLING_OK:
        uv_timer_stop(&c->timer);
        if (PQsetnonblocking(c->pq, 1) != 0 || poll_watch(c, UV_READABLE) < 0) {
            connect_fail(c, false, NULL);
            return;
        }
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

/* ---- connections: statements ------------------------------------------------------------- */

static void finish_op(bh_pg_conn_t *c, int status)
{
    bh_pg_done_cb cb = c->on_done;
    void *data = c->data;
    c->op = OP_NONE;
    c->on_result = NULL;
    c->on_done = NULL;
    if (status < 0)
        c->broken = true;
    cb(c, status, data);
}

static void conn_lost(bh_pg_conn_t *c)
{
    c->broken = true;
    poll_stop(c); /* EOF would keep the level-triggered watch firing */
    if (c->op != OP_NONE)
        finish_op(c, BH_EPG_CONN_LOST);
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

static void deliver(bh_pg_conn_t *c)
{
    while (c->op != OP_NONE && !PQisBusy(c->pq)) {
        PGresult *res = PQgetResult(c->pq);
        if (res == NULL) {
            finish_op(c, 0);
            return;
        }
        switch (PQresultStatus(res)) {
        case PGRES_COPY_IN:
            PQclear(res);
            c->dirty = true;
            if (PQputCopyEnd(c->pq, "COPY FROM STDIN is not supported here") < 0 ||
                flush_out(c) < 0) {
                conn_lost(c);
                return;
            }
            continue;
        case PGRES_COPY_OUT: {
            PQclear(res);
            c->dirty = true;
            int r = drain_copy_out(c);
            if (r < 0)
                conn_lost(c);
            if (r <= 0)
                return;
            continue;
        }
        case PGRES_COPY_BOTH:
            PQclear(res);
            conn_lost(c);
            return;
        default:
            break;
        }
        c->on_result(c, res, c->data); /* may release c: the loop re-reads c->op */
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
        PGnotify *nt;
        while ((nt = PQnotifies(c->pq)) != NULL)
            PQfreemem(nt);
        if (c->op == OP_NONE) {
            if (PQstatus(c->pq) != CONNECTION_OK)
                conn_lost(c);
            return;
        }
        deliver(c);
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

static int start_op(bh_pg_conn_t *c, enum pg_op op, bh_pg_result_cb on_result,
                    bh_pg_done_cb on_done, void *data)
{
    c->op = op;
    c->on_result = on_result;
    c->on_done = on_done;
    c->data = data;
    if (flush_out(c) < 0) {
        /* Unflushed: no Sync reached the server, nothing can have been committed. */
        c->op = OP_NONE;
        c->on_result = NULL;
        c->on_done = NULL;
        c->broken = true;
        poll_stop(c);
        return BH_EPG_CONN_LOST;
    }
    return 0;
}

static bool sendable(bh_pg_conn_t *c, bh_pg_result_cb on_result, bh_pg_done_cb on_done)
{
    assert(c->pc.state == BH_PCONN_BUSY && c->op == OP_NONE);
    assert(on_result != NULL && on_done != NULL);
    return !c->broken && PQstatus(c->pq) == CONNECTION_OK;
}

int bh_pg_query(bh_pg_conn_t *c, const char *sql, int nparams, const char *const *values,
                unsigned flags, bh_pg_result_cb on_result, bh_pg_done_cb on_done, void *data)
{
    if (!sendable(c, on_result, on_done) ||
        !PQsendQueryParams(c->pq, sql, nparams, NULL, values, NULL, NULL, 0)) {
        c->broken = true;
        return BH_EPG_CONN_LOST;
    }
    if (flags & BH_PG_SINGLE_ROW)
        PQsetSingleRowMode(c->pq);
    return start_op(c, OP_QUERY, on_result, on_done, data);
}

int bh_pg_exec(bh_pg_conn_t *c, const char *sql, bh_pg_result_cb on_result, bh_pg_done_cb on_done,
               void *data)
{
    if (!sendable(c, on_result, on_done) || !PQsendQuery(c->pq, sql)) {
        c->broken = true;
        return BH_EPG_CONN_LOST;
    }
    return start_op(c, OP_QUERY, on_result, on_done, data);
}

const char *bh_pg_conn_error_message(const bh_pg_conn_t *c)
{
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
    if (c->op != OP_QUERY)
        return BH_EINVAL;
    int rc = start_cancel(c);
    if (rc < 0)
        return rc;
    c->cancel_cb = cb;
    c->cancel_data = data;
    return 0;
}

/* ---- release and reset ------------------------------------------------------------------- */

static void on_reset_result(bh_pg_conn_t *c, PGresult *res, void *data)
{
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        c->reset_failed = true;
    PQclear(res);
}

static void on_reset_done(bh_pg_conn_t *c, int status, void *data)
{
    uv_timer_stop(&c->timer);
    bool ok = status == 0 && !c->reset_failed && PQtransactionStatus(c->pq) == PQTRANS_IDLE;
    bh_pool_release(&c->pc, ok, bh__pg_now(c->pool));
}

void bh_pg_release(bh_pg_conn_t *c, bool reusable)
{
    assert(c->pc.state == BH_PCONN_BUSY && c->op != OP_RESET);
    bh_pg_pool_t *p = c->pool;
    uint64_t now = bh__pg_now(p);
    c->cancel_cb = NULL;
    if (c->op == OP_QUERY) {
        /* The user went away mid-statement: stop it on the server, then close. */
        c->op = OP_NONE;
        c->on_result = NULL;
        c->on_done = NULL;
        if (!c->cancel_busy && !c->broken)
            (void)start_cancel(c);
        reusable = false;
    }
    if (!reusable || c->broken || c->cancelled || c->dirty || PQstatus(c->pq) != CONNECTION_OK ||
        PQtransactionStatus(c->pq) != PQTRANS_IDLE || p->base.shut || now >= c->pc.expires_ms) {
        bh_pool_release(&c->pc, false, now);
        return;
    }
    if (!PQsendQuery(c->pq, RESET_SQL)) {
        bh_pool_release(&c->pc, false, now);
        return;
    }
    c->reset_failed = false;
    if (start_op(c, OP_RESET, on_reset_result, on_reset_done, NULL) < 0) {
        bh_pool_release(&c->pc, false, now);
        return;
    }
    uv_timer_start(&c->timer, on_connect_timer, p->reset_timeout_ms, 0);
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
