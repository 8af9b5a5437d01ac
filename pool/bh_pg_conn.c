/* Postgres connections on one worker's loop: connect, idle watch, I/O, cancel, release, close
 * (the pipelines they run are bh_pg_pipe.c's).
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

void bh__pg_poll_stop(bh_pg_conn_t *c)
{
    if (c->poll != NULL && c->events != 0) {
        uv_poll_stop(&c->poll->h);
        c->events = 0;
    }
}

static void on_poll(uv_poll_t *h, int status, int events);

/* Watches PQsocket for events, moving to a new uv_poll_t when the socket changed. */
int bh__pg_poll_watch(bh_pg_conn_t *c, int events)
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

static void on_connect_timer(uv_timer_t *t)
{
    bh_pg_conn_t *c = t->data;
    if (c->pc.state == BH_PCONN_CONNECTING)
        connect_fail(c, !c->start_failed, NULL);
    else if (c->pc.state == BH_PCONN_BUSY && c->resetting && c->op == OP_PIPE)
        bh__pg_conn_lost(c); /* the reset at release hangs: give up on the connection */
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res);
static void conn_start(bh_pg_conn_t *c);

static void connect_step(bh_pg_conn_t *c)
{
    bh__pg_poll_stop(c); /* libpq may close the socket and reuse its number for a new one */
    switch (PQconnectPoll(c->pq)) {
    case PGRES_POLLING_OK:
        uv_timer_stop(&c->timer);
        if (PQsetnonblocking(c->pq, 1) != 0 || !PQenterPipelineMode(c->pq) ||
            bh__pg_poll_watch(c, UV_READABLE) < 0) {
            connect_fail(c, false, NULL);
            return;
        }
        c->params0 = bh__pg_params_hash(c->pq);
        c->rerun = NO_RERUN;
        bh_pool_connected(&c->pc, bh__pg_now(c->pool));
        return;
    case PGRES_POLLING_READING:
        if (bh__pg_poll_watch(c, UV_READABLE) < 0)
            connect_fail(c, false, NULL);
        return;
    case PGRES_POLLING_WRITING:
        if (bh__pg_poll_watch(c, UV_WRITABLE) < 0)
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
    if (c->pq == NULL || PQstatus(c->pq) == CONNECTION_BAD ||
        bh__pg_poll_watch(c, UV_WRITABLE) < 0) {
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

/* ---- connections: lost -------------------------------------------------------------------- */

void bh__pg_conn_lost(bh_pg_conn_t *c)
{
    c->broken = true;
    bh__pg_poll_stop(c); /* EOF would keep the level-triggered watch firing */
    if (c->op != OP_NONE)
        bh__pg_pipe_finish(c, BH_EPG_CONN_LOST);
}

static void busy_io(bh_pg_conn_t *c, int status, int events)
{
    if (status < 0) {
        bh__pg_conn_lost(c);
        return;
    }
    if (c->events & UV_WRITABLE) {
        /* libpq: while output is pending, flush again on readability as well. */
        if (events & UV_READABLE && !PQconsumeInput(c->pq)) {
            bh__pg_conn_lost(c);
            return;
        }
        if (bh__pg_flush_out(c) < 0) {
            bh__pg_conn_lost(c);
            return;
        }
    }
    if (events & (UV_READABLE | UV_DISCONNECT)) {
        if (!PQconsumeInput(c->pq)) {
            bh__pg_conn_lost(c);
            return;
        }
        if (c->op == OP_NONE) {
            if (PQstatus(c->pq) != CONNECTION_OK)
                bh__pg_conn_lost(c);
            return;
        }
        bh__pg_pipe_deliver(c);
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
        bh__pg_poll_stop(c);
        c->broken = true;
        bh_pool_idle_lost(&c->pc, bh__pg_now(c->pool));
        return;
    case BH_PCONN_BUSY:
        busy_io(c, status, events);
        return;
    default:
        bh__pg_poll_stop(c);
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
    if (bh__pg_push_reset_items(c) < 0 || bh__pg_push_sync(c, 0, true) < 0 ||
        bh_pg_send(c, &reset_cbs, c) < 0) {
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
    if (c->touched || p->reset_always || bh__pg_params_hash(c->pq) != c->params0)
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
