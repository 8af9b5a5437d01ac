/* Postgres connections on libuv: non-blocking libpq, keyed bh_pool pools, session reset, cancel.
 *
 * Invariants:
 * - A connection's pool state (bh_pool_conn_t.state) says who owns it: CONNECTING (PQconnectPoll
 *   steps driven by its poll), IDLE (its poll watches for readability: any event means the
 *   server closed it or is closing it), BUSY (its user's; c->op says whether a statement, the
 *   session reset or nothing is in flight), CLOSING (handles closing; PQfinish already done).
 * - c->refs counts what must finish before c is freed: its timer, its poll handles (the one in
 *   use and any being closed after PQsocket changed) and a cancel on the thread pool. The last
 *   one frees c, after telling the pool (bh_pool_conn_closed).
 * - While connecting, the poll is stopped (epoll DEL) before every PQconnectPoll call: libpq may
 *   close its socket and open a new one under the same fd number, which an epoll registration
 *   would not follow. A different number gets a new uv_poll_t; the old one closes.
 * - Callbacks of a statement (result, done) are copied and detached before they run; after each
 *   upcall the loop re-reads c->op, since the user may release c, which never frees it
 *   synchronously (handles close asynchronously).
 * - A pool's memory lives until its timer's close callback; pools are reaped by the sweep timer
 *   after being empty for a whole sweep interval, or at bh_pg_pools_close(). */
#include "bh_pg.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <openssl/evp.h>
#include "bh_alloc.h"
#include "bh_list.h"
#include "bh_log.h"

#define KEY_LEN 32
#define PREWARM_BACKOFF_MS 250
#define DNS_TTL_MS 30000 /* resolved addresses of a server name are reused this long */
#define DNS_MAX_ADDRS 4

/* Spec 7.5 without its leading ROLLBACK: only sessions outside a transaction are reset. */
static const char RESET_SQL[] =
    "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; DEALLOCATE ALL; UNLISTEN *; "
    "SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES";

/* RESET ALL returns settings to their values at session start, which include these (sent in the
 * startup packet's options): so they survive the reset, SET statements after connect would not. */
static const bh_pg_setting_t default_session[] = {
    {"client_encoding", "UTF8"}, {"DateStyle", "ISO,MDY"}, {"IntervalStyle", "postgres"},
    {"bytea_output", "hex"},     {"TimeZone", "UTC"},
};

/* ---- errors ------------------------------------------------------------------------------ */

const char *bh_pg_strerror(int err)
{
    switch (err) {
    case BH_EPG_REJECTED:
        return "Postgres refused the session";
    case BH_EPG_CONN_LOST:
        return "connection to Postgres lost";
    default:
        return bh_strerror(err);
    }
}

bool bh_pg_error_retriable(int err)
{
    return err == BH_ECONNECT_REFUSED || err == BH_ECONNECT_TIMEOUT || err == BH_ECONNECT_FAILED;
}

static bool is_sqlstate(const char *s)
{
    for (int i = 0; i < 5; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'A' && s[i] <= 'Z')))
            return false;
    return s[5] == ':';
}

/* Connect-time refusals that only mean "not now": overload, startup, shutdown, crash. */
static bool sqlstate_retriable(const char *st)
{
    return strncmp(st, "53", 2) == 0 || strncmp(st, "08", 2) == 0 || strcmp(st, "57P01") == 0 ||
           strcmp(st, "57P02") == 0 || strcmp(st, "57P03") == 0;
}

void bh_pg_error_parse(bh_pg_error_t *e, const char *msg)
{
    static const char *const sevs[] = {"FATAL:  ", "PANIC:  ", "ERROR:  "};
    *e = (bh_pg_error_t){.code = BH_ECONNECT_FAILED, .message = msg != NULL ? msg : ""};
    msg = e->message;
    const char *best = NULL;
    size_t best_sev = 0;
    for (size_t i = 0; i < sizeof(sevs) / sizeof(sevs[0]); i++) {
        const char *at = strstr(msg, sevs[i]);
        if (at != NULL && (best == NULL || at < best)) {
            best = at;
            best_sev = i;
        }
    }
    if (best != NULL) {
        size_t sl = strlen(sevs[best_sev]) - 3; /* "FATAL" */
        memcpy(e->severity, sevs[best_sev], sl);
        e->severity[sl] = '\0';
        const char *p = best + sl + 3;
        if (is_sqlstate(p)) {
            memcpy(e->sqlstate, p, 5);
            e->sqlstate[5] = '\0';
            p += 6;
            while (*p == ' ')
                p++;
        }
        e->detail = p;
        e->detail_len = strcspn(p, "\n");
        e->code = e->sqlstate[0] != '\0' && sqlstate_retriable(e->sqlstate) ? BH_ECONNECT_FAILED
                                                                            : BH_EPG_REJECTED;
        return;
    }
    if (strstr(msg, "fe_sendauth:") != NULL) /* libpq itself: no password for the method */
        e->code = BH_EPG_REJECTED;
    else if (strstr(msg, "Connection refused") != NULL)
        e->code = BH_ECONNECT_REFUSED;
    else if (strstr(msg, "timeout expired") != NULL || strstr(msg, "timed out") != NULL)
        e->code = BH_ECONNECT_TIMEOUT;
}

/* ---- types ------------------------------------------------------------------------------- */

typedef struct sem_entry {
    bh_list_t link;
    uint8_t key[KEY_LEN];
    bh_sem_t *sem;
    unsigned refs;
} sem_entry_t;

struct bh_pg_shared {
    pthread_mutex_t mu;
    bh_list_t entries;
    size_t n;
    uint32_t n_workers;
};

struct bh_pg_pools {
    uv_loop_t *loop;
    bh_pg_shared_t *shared;
    bh_sem_inbox_t *inbox;
    bh_pg_pool_t **buckets;
    size_t n_buckets, n_pools;
    uv_timer_t sweep;
    unsigned open;    /* the sweep timer + pools not yet freed */
    unsigned cancels; /* on the thread pool */
    bool closing;
    void (*closed_cb)(void *data);
    void *closed_data;
};

struct bh_pg_pool {
    bh_pool_t base;
    bh_pg_pools_t *pools;
    bh_pg_pool_t *next; /* hash chain */
    uint8_t key[KEY_LEN];
    sem_entry_t *sem;
    uv_timer_t timer;   /* bh_pool_expire, and the pre-warm retry */
    char **kw, **vals;  /* for PQconnectStartParams, NULL-terminated */
    size_t password_at; /* index of the password in vals, or SIZE_MAX */
    char *label;        /* user@dbname, for logs */
    uint64_t connect_timeout_ms, reset_timeout_ms;
    uint64_t armed_at, retry_at; /* what bh_pool asked for; the pre-warm backoff's end */
    /* libpq resolves host names with a blocking getaddrinfo: a single server name is resolved
     * here instead (uv_getaddrinfo) and passed as hostaddr, with host kept for TLS. */
    char *dns_name;               /* NULL: IP literal, socket path, list, or hostaddr given */
    size_t host_at, hostaddr_at;  /* their slots in kw/vals */
    uint64_t dns_until;           /* vals[hostaddr_at] is fresh until then */
    const bh_pg_error_t *failing; /* set while bh_pool_connect_failed runs */
    bool marked;                  /* empty at the last sweep */
    bool timer_closing;
    bool retired;                 /* bh_pg_pools_retire: not found by bh_pg_pool_get */
    uint64_t tag;                 /* the server's */
};

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

static uint64_t pool_now(const bh_pg_pool_t *p)
{
    return uv_now(p->pools->loop);
}

static uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

static size_t key_bucket(const uint8_t key[KEY_LEN], size_t n_buckets)
{
    uint64_t h;
    memcpy(&h, key, sizeof(h));
    return (size_t)(h % n_buckets);
}

static bh_pg_conn_t *conn_of(bh_pool_conn_t *pc)
{
    return bh_container_of(pc, bh_pg_conn_t, pc);
}

/* ---- process-wide permits ---------------------------------------------------------------- */

bh_pg_shared_t *bh_pg_shared_new(uint32_t n_workers)
{
    bh_pg_shared_t *s = bh_calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    pthread_mutex_init(&s->mu, NULL);
    bh_list_init(&s->entries);
    s->n_workers = n_workers ? n_workers : 1;
    return s;
}

void bh_pg_shared_free(bh_pg_shared_t *s)
{
    if (s == NULL)
        return;
    bh_list_t *n, *t;
    bh_list_foreach_safe(n, t, &s->entries)
    {
        sem_entry_t *e = bh_container_of(n, sem_entry_t, link);
        bh_sem_unref(e->sem);
        bh_free(e);
    }
    pthread_mutex_destroy(&s->mu);
    bh_free(s);
}

size_t bh_pg_shared_count(bh_pg_shared_t *s)
{
    pthread_mutex_lock(&s->mu);
    size_t n = s->n;
    pthread_mutex_unlock(&s->mu);
    return n;
}

/* ---- connections: closing ---------------------------------------------------------------- */

static void pool_maybe_done(bh_pg_pool_t *p);

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
        pool_maybe_done(p);
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

static void pool_close(bh_pool_conn_t *pc)
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
static void timer_set(bh_pg_pool_t *p);

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
    uint64_t now = pool_now(p);
    if (e.code != BH_EPG_REJECTED)
        p->dns_until = 0; /* the address may have moved: resolve again */
    if (p->base.n_waiters == 0)
        p->retry_at = now + PREWARM_BACKOFF_MS; /* a failed pre-warm does not spin */
    p->failing = &e;
    bh_pool_connect_failed(&c->pc, e.code, now); /* closes c: msg was copied */
    p->failing = NULL;
    timer_set(p);
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
        bh_pool_connected(&c->pc, pool_now(c->pool));
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
    c->pq = PQconnectStartParams((const char *const *)p->kw, (const char *const *)p->vals, 0);
    if (c->pq != NULL) {
        PQsetErrorVerbosity(c->pq, PQERRORS_VERBOSE);
        PQsetNoticeProcessor(c->pq, on_notice, c);
    }
    if (c->pq == NULL || PQstatus(c->pq) == CONNECTION_BAD || poll_watch(c, UV_WRITABLE) < 0) {
        c->start_failed = true;
        uv_timer_start(&c->timer, on_connect_timer, 0, 0);
    }
}

/* host=name,name hostaddr=a,b for up to DNS_MAX_ADDRS addresses (libpq tries them in order). */
static int set_addresses(bh_pg_pool_t *p, const struct addrinfo *res)
{
    char addrs[DNS_MAX_ADDRS * (INET6_ADDRSTRLEN + 1)] = "";
    size_t nl = strlen(p->dns_name), n = 0;
    for (const struct addrinfo *ai = res; ai != NULL && n < DNS_MAX_ADDRS; ai = ai->ai_next) {
        char a[INET6_ADDRSTRLEN];
        const void *src =
            ai->ai_family == AF_INET
                ? (const void *)&((const struct sockaddr_in *)ai->ai_addr)->sin_addr
                : (const void *)&((const struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
        if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
            inet_ntop(ai->ai_family, src, a, sizeof(a)) == NULL || strstr(addrs, a) != NULL)
            continue;
        if (n > 0)
            strcat(addrs, ",");
        strcat(addrs, a);
        n++;
    }
    if (n == 0)
        return BH_ECONNECT_FAILED;
    char *hosts = bh_malloc(n * (nl + 1));
    char *hostaddr = bh_strdup(addrs);
    if (hosts == NULL || hostaddr == NULL) {
        bh_free(hosts);
        bh_free(hostaddr);
        return BH_ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        memcpy(hosts + i * (nl + 1), p->dns_name, nl);
        hosts[i * (nl + 1) + nl] = i + 1 < n ? ',' : '\0';
    }
    bh_free(p->vals[p->host_at]);
    bh_free(p->vals[p->hostaddr_at]);
    p->vals[p->host_at] = hosts;
    p->vals[p->hostaddr_at] = hostaddr;
    return 0;
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    bh_pg_conn_t *c = req->data;
    bh_pg_pool_t *p = c->pool;
    c->resolving = false;
    if (c->pc.state == BH_PCONN_CONNECTING && c->pq == NULL && !c->start_failed) {
        int rc = status < 0 ? BH_ECONNECT_FAILED : set_addresses(p, res);
        if (rc < 0) {
            char msg[512];
            snprintf(msg, sizeof(msg), "could not translate host name \"%s\" to address: %s\n",
                     p->dns_name, status < 0 ? uv_strerror(status) : bh_strerror(rc));
            connect_fail(c, false, msg);
        } else {
            p->dns_until = pool_now(p) + DNS_TTL_MS;
            conn_start(c);
        }
    }
    uv_freeaddrinfo(res);
    conn_unref(c);
}

static bh_pool_conn_t *pool_open(bh_pool_t *bp, int *err)
{
    bh_pg_pool_t *p = bp->data;
    uint64_t now = pool_now(p);
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
    if (p->dns_name != NULL && now >= p->dns_until) {
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
        c->gai.data = c;
        if (uv_getaddrinfo(p->pools->loop, &c->gai, on_resolved, p->dns_name, NULL, &hints) == 0) {
            c->resolving = true;
            c->refs++;
            return &c->pc;
        }
    }
    conn_start(c);
    return &c->pc;
}

/* ---- connections: idle ------------------------------------------------------------------- */

static bool pool_alive(bh_pool_conn_t *pc)
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
        bh_pool_idle_lost(&c->pc, pool_now(c->pool));
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
    bh_pool_release(&c->pc, ok, pool_now(c->pool));
}

void bh_pg_release(bh_pg_conn_t *c, bool reusable)
{
    assert(c->pc.state == BH_PCONN_BUSY && c->op != OP_RESET);
    bh_pg_pool_t *p = c->pool;
    uint64_t now = pool_now(p);
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

/* ---- pools ------------------------------------------------------------------------------- */

static void on_pool_timer(uv_timer_t *t)
{
    bh_pg_pool_t *p = t->data;
    uint64_t now = pool_now(p);
    if (p->retry_at <= now)
        p->retry_at = 0;
    /* Whatever was due is done, so bh_pool reports a new deadline through pool_arm; one that
     * is not due yet (the timer ran for the pre-warm retry) stays in armed_at. */
    bh_pool_expire(&p->base, now);
    timer_set(p);
}

static void timer_set(bh_pg_pool_t *p)
{
    if (p->timer_closing)
        return;
    uint64_t at = p->armed_at;
    if (p->retry_at != 0)
        at = min_u64(at, p->retry_at);
    if (at == BH_TIME_NEVER) {
        uv_timer_stop(&p->timer);
        return;
    }
    uint64_t now = pool_now(p);
    uv_timer_start(&p->timer, on_pool_timer, at > now ? at - now : 0, 0);
}

static void pool_arm(bh_pool_t *bp, uint64_t at_ms)
{
    bh_pg_pool_t *p = bp->data;
    p->armed_at = at_ms;
    timer_set(p);
}

static const bh_pool_ops_t pg_pool_ops = {
    .open = pool_open,
    .alive = pool_alive,
    .close = pool_close,
    .arm = pool_arm,
};

static void free_strings(char **v, size_t skip_wipe)
{
    if (v == NULL)
        return;
    for (size_t i = 0; v[i] != NULL; i++) {
        if (i == skip_wipe)
            explicit_bzero(v[i], strlen(v[i]));
        bh_free(v[i]);
    }
    bh_free(v);
}

static void pool_free(bh_pg_pool_t *p)
{
    free_strings(p->kw, SIZE_MAX);
    free_strings(p->vals, p->password_at);
    bh_free(p->label);
    bh_free(p->dns_name);
    explicit_bzero(p->key, sizeof(p->key));
    bh_free(p);
}

static void pools_one_closed(bh_pg_pools_t *pools)
{
    if (--pools->open > 0)
        return;
    void (*cb)(void *) = pools->closed_cb;
    void *data = pools->closed_data;
    bh_free(pools->buckets);
    bh_free(pools);
    if (cb != NULL)
        cb(data);
}

static void unlink_pool(bh_pg_pool_t *p)
{
    bh_pg_pools_t *pools = p->pools;
    bh_pg_pool_t **pp = &pools->buckets[key_bucket(p->key, pools->n_buckets)];
    while (*pp != p)
        pp = &(*pp)->next;
    *pp = p->next;
    pools->n_pools--;
}

static void on_pool_timer_closed(uv_handle_t *h)
{
    bh_pg_pool_t *p = h->data;
    bh_pg_pools_t *pools = p->pools;
    bh_pg_shared_t *s = pools->shared;
    unlink_pool(p);
    bh_pool_detach(&p->base); /* empty: the timer closes only then */
    sem_entry_t *gone = NULL;
    pthread_mutex_lock(&s->mu);
    if (--p->sem->refs == 0) {
        bh_list_remove(&p->sem->link);
        s->n--;
        gone = p->sem;
    }
    pthread_mutex_unlock(&s->mu);
    if (gone != NULL) {
        bh_sem_unref(gone->sem); /* messages about it still queued on a worker keep it a while */
        bh_free(gone);
    }
    pool_free(p);
    pools_one_closed(pools);
}

static void pool_close_timer(bh_pg_pool_t *p)
{
    if (p->timer_closing)
        return;
    p->timer_closing = true;
    uv_close((uv_handle_t *)&p->timer, on_pool_timer_closed);
}

static void pool_maybe_done(bh_pg_pool_t *p)
{
    if (p->pools->closing && bh_pool_empty(&p->base))
        pool_close_timer(p);
}

/* Options for the startup packet: "-c name=value ..." with spaces and backslashes escaped. */
static bool valid_name(const char *s)
{
    if (s == NULL || *s == '\0')
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || *s == '.'))
            return false;
    return true;
}

static int append(char **buf, size_t *len, size_t *cap, const char *s, bool escape)
{
    for (; *s; s++) {
        if (*len + 3 > *cap) {
            size_t ncap = *cap ? *cap * 2 : 256;
            char *n = bh_realloc(*buf, ncap);
            if (n == NULL)
                return BH_ENOMEM;
            *buf = n;
            *cap = ncap;
        }
        if (escape && (*s == ' ' || *s == '\\' || *s == '\t' || *s == '\n' || *s == '\r'))
            (*buf)[(*len)++] = '\\';
        (*buf)[(*len)++] = *s;
    }
    (*buf)[*len] = '\0';
    return 0;
}

static int build_options(const bh_pg_server_t *srv, char **out)
{
    char *buf = NULL;
    size_t len = 0, cap = 0;
    size_t nd = sizeof(default_session) / sizeof(default_session[0]);
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < nd + srv->n_session; i++) {
        const bh_pg_setting_t *s = i < nd ? &default_session[i] : &srv->session[i - nd];
        if (!valid_name(s->name) || s->value == NULL) {
            rc = BH_EINVAL;
            break;
        }
        rc = append(&buf, &len, &cap, len ? " -c " : "-c ", false);
        if (rc == 0)
            rc = append(&buf, &len, &cap, s->name, false);
        if (rc == 0)
            rc = append(&buf, &len, &cap, "=", false);
        if (rc == 0)
            rc = append(&buf, &len, &cap, s->value, true);
    }
    if (rc < 0) {
        bh_free(buf);
        return rc;
    }
    *out = buf;
    return 0;
}

/* The pool key: where and as whom it connects, and the pool's own settings (so that a reload
 * that changes a database's pool gets a new pool and permit counter, not the old ones). */
static int key_digest(uint8_t out[KEY_LEN], const bh_pg_server_t *srv, const char *options,
                      const char *dbname, const char *user, const char *password)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL)
        return BH_ENOMEM;
    const char *parts[] = {"bulkhead-pg-key-2", srv->conninfo != NULL ? srv->conninfo : "",
                           options, dbname, user};
    const bh_conf_pool_t *pc = &srv->pool;
    const uint64_t limits[] = {pc->max_connections,    pc->max_pending,     pc->max_idle,
                               pc->min_idle,           pc->acquire_timeout_ms,
                               pc->idle_timeout_ms,    pc->max_lifetime_ms, srv->connect_timeout_ms,
                               srv->reset_timeout_ms};
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
        EVP_DigestUpdate(ctx, parts[i], strlen(parts[i]) + 1); /* with the NUL: unambiguous */
    EVP_DigestUpdate(ctx, limits, sizeof(limits));
    EVP_DigestUpdate(ctx, password != NULL ? "P" : "N", 1);
    if (password != NULL)
        EVP_DigestUpdate(ctx, password, strlen(password));
    unsigned int n = KEY_LEN;
    int ok = EVP_DigestFinal_ex(ctx, out, &n);
    EVP_MD_CTX_free(ctx);
    return ok == 1 && n == KEY_LEN ? 0 : BH_ENOMEM;
}

/* Keyword/value arrays: the server's conninfo (parsed here, so that nothing taken from a request
 * is ever expanded as a conninfo), then the credentials and the session. */
static int build_params(bh_pg_pool_t *p, const bh_pg_server_t *srv, const char *options,
                        const char *dbname, const char *user, const char *password)
{
    char *errmsg = NULL;
    PQconninfoOption *opts = PQconninfoParse(srv->conninfo != NULL ? srv->conninfo : "", &errmsg);
    if (opts == NULL) {
        if (errmsg != NULL) {
            bh_log_warn("postgres server conninfo: %.*s", (int)strcspn(errmsg, "\n"), errmsg);
            PQfreemem(errmsg);
        }
        return BH_EINVAL;
    }
    static const char *const ours[] = {"user", "password", "dbname", "options", "application_name"};
    size_t n = 0;
    bool has_passfile = false;
    const char *host = NULL, *hostaddr = NULL, *port = NULL;
    for (PQconninfoOption *o = opts; o->keyword != NULL; o++) {
        n++;
        if (strcmp(o->keyword, "host") == 0)
            host = o->val;
        else if (strcmp(o->keyword, "hostaddr") == 0)
            hostaddr = o->val;
        else if (strcmp(o->keyword, "port") == 0)
            port = o->val;
    }
    unsigned char ip[sizeof(struct in6_addr)];
    bool resolve_here = host != NULL && *host != '\0' && *host != '/' && *host != '@' &&
                        strchr(host, ',') == NULL && (hostaddr == NULL || *hostaddr == '\0') &&
                        (port == NULL || strchr(port, ',') == NULL) &&
                        inet_pton(AF_INET, host, ip) != 1 && inet_pton(AF_INET6, host, ip) != 1;
    p->kw = bh_calloc(n + 8, sizeof(char *));
    p->vals = bh_calloc(n + 8, sizeof(char *));
    p->password_at = SIZE_MAX;
    int rc = p->kw != NULL && p->vals != NULL ? 0 : BH_ENOMEM;
    size_t k = 0;
#define PUT(key, val)                                                                              \
    do {                                                                                           \
        if (rc == 0) {                                                                             \
            p->kw[k] = bh_strdup(key);                                                             \
            p->vals[k] = bh_strdup(val);                                                           \
            if (p->kw[k] == NULL || p->vals[k] == NULL)                                            \
                rc = BH_ENOMEM;                                                                    \
            k++;                                                                                   \
        }                                                                                          \
    } while (0)
    for (PQconninfoOption *o = opts; rc == 0 && o->keyword != NULL; o++) {
        if (o->val == NULL)
            continue;
        bool skip = false;
        for (size_t i = 0; i < sizeof(ours) / sizeof(ours[0]); i++)
            skip |= strcmp(o->keyword, ours[i]) == 0;
        has_passfile |= strcmp(o->keyword, "passfile") == 0;
        if (resolve_here && strcmp(o->keyword, "hostaddr") == 0)
            skip = true;
        if (resolve_here && strcmp(o->keyword, "host") == 0)
            p->host_at = k;
        if (!skip)
            PUT(o->keyword, o->val);
    }
    if (resolve_here && rc == 0) {
        p->hostaddr_at = k;
        PUT("hostaddr", "");
        p->dns_name = bh_strdup(host);
        if (p->dns_name == NULL)
            rc = BH_ENOMEM;
    }
    PQconninfoFree(opts);
    PUT("user", user);
    PUT("dbname", dbname);
    if (password != NULL) {
        p->password_at = k;
        PUT("password", password);
    }
    /* Never fall back to this process's ~/.pgpass for someone else's credentials. */
    if (!has_passfile)
        PUT("passfile", "/dev/null/bulkhead"); /* cannot exist; silent */
    /* A configured or client-given application_name is the startup parameter itself: as an
     * options -c setting it would lose to this keyword. */
    const char *app = "bulkhead";
    for (size_t i = 0; i < srv->n_session; i++)
        if (strcasecmp(srv->session[i].name, "application_name") == 0)
            app = srv->session[i].value;
    PUT("application_name", app);
    PUT("options", options);
#undef PUT
    return rc;
}

static bh_pg_pool_t *find_pool(bh_pg_pools_t *pools, const uint8_t key[KEY_LEN])
{
    for (bh_pg_pool_t *p = pools->buckets[key_bucket(key, pools->n_buckets)]; p != NULL;
         p = p->next)
        if (!p->timer_closing && !p->retired && memcmp(p->key, key, KEY_LEN) == 0)
            return p;
    return NULL;
}

static int grow_buckets(bh_pg_pools_t *pools)
{
    size_t nb = pools->n_buckets * 2;
    bh_pg_pool_t **b = bh_calloc(nb, sizeof(*b));
    if (b == NULL)
        return BH_ENOMEM;
    for (size_t i = 0; i < pools->n_buckets; i++) {
        bh_pg_pool_t *p = pools->buckets[i], *next;
        for (; p != NULL; p = next) {
            next = p->next;
            p->next = b[key_bucket(p->key, nb)];
            b[key_bucket(p->key, nb)] = p;
        }
    }
    bh_free(pools->buckets);
    pools->buckets = b;
    pools->n_buckets = nb;
    return 0;
}

int bh_pg_pool_get(bh_pg_pools_t *pools, const bh_pg_server_t *srv, const char *dbname,
                   const char *user, const char *password, bh_pg_pool_t **out)
{
    *out = NULL;
    if (pools->closing)
        return BH_EPOOL_CLOSED;
    if (dbname == NULL || user == NULL)
        return BH_EINVAL;
    char *options = NULL;
    int rc = build_options(srv, &options);
    if (rc < 0)
        return rc;
    uint8_t key[KEY_LEN];
    if (key_digest(key, srv, options, dbname, user, password) < 0) {
        bh_free(options);
        return BH_ENOMEM;
    }
    bh_pg_pool_t *p = find_pool(pools, key);
    if (p != NULL) {
        bh_free(options);
        p->marked = false;
        *out = p;
        return 0;
    }

    if (pools->n_pools >= pools->n_buckets * 2 && grow_buckets(pools) < 0) {
        bh_free(options);
        return BH_ENOMEM;
    }
    p = bh_calloc(1, sizeof(*p));
    if (p == NULL) {
        bh_free(options);
        return BH_ENOMEM;
    }
    p->pools = pools;
    p->tag = srv->tag;
    memcpy(p->key, key, KEY_LEN);
    rc = build_params(p, srv, options, dbname, user, password);
    bh_free(options);
    size_t ll = strlen(user) + strlen(dbname) + 2;
    if (rc == 0 && (p->label = bh_malloc(ll)) == NULL)
        rc = BH_ENOMEM;
    if (rc < 0) {
        pool_free(p);
        return rc;
    }
    snprintf(p->label, ll, "%s@%s", user, dbname);
    p->connect_timeout_ms = srv->connect_timeout_ms ? srv->connect_timeout_ms : 2000;
    p->reset_timeout_ms = srv->reset_timeout_ms ? srv->reset_timeout_ms : p->connect_timeout_ms;
    p->armed_at = BH_TIME_NEVER;

    const bh_conf_pool_t *pc = &srv->pool;
    uint32_t max = pc->max_connections ? pc->max_connections : 1;
    bh_pool_limits_t limits = {
        .max_pending = pc->max_pending,
        .max_idle = pc->max_idle ? pc->max_idle : max,
        .min_idle = pc->min_idle,
        .acquire_timeout_ms = pc->acquire_timeout_ms,
        .idle_timeout_ms = pc->idle_timeout_ms,
        .max_lifetime_ms = pc->max_lifetime_ms,
    };

    /* The permit counter is per key and process-wide, one lane per worker. */
    bh_pg_shared_t *s = pools->shared;
    pthread_mutex_lock(&s->mu);
    sem_entry_t *e = NULL;
    bh_list_t *n;
    bh_list_foreach(n, &s->entries)
    {
        sem_entry_t *x = bh_container_of(n, sem_entry_t, link);
        if (memcmp(x->key, key, KEY_LEN) == 0) {
            e = x;
            break;
        }
    }
    if (e == NULL && (e = bh_calloc(1, sizeof(*e))) != NULL) {
        memcpy(e->key, key, KEY_LEN);
        if ((e->sem = bh_sem_new(max, s->n_workers)) == NULL) {
            bh_free(e);
            e = NULL;
        } else {
            bh_list_push_back(&s->entries, &e->link);
            s->n++;
        }
    }
    if (e != NULL) {
        e->refs++;
        bh_pool_init(&p->base, &pg_pool_ops, e->sem, pools->inbox, &limits, p);
        p->base.gauges = srv->gauges;
    }
    pthread_mutex_unlock(&s->mu);
    if (e == NULL) {
        pool_free(p);
        return BH_ENOMEM;
    }
    p->sem = e;

    uv_timer_init(pools->loop, &p->timer);
    p->timer.data = p;
    pools->open++;
    size_t b = key_bucket(key, pools->n_buckets);
    p->next = pools->buckets[b];
    pools->buckets[b] = p;
    pools->n_pools++;
    bh_pool_expire(&p->base, pool_now(p)); /* pre-warms to min_idle */
    *out = p;
    return 0;
}

const bh_pool_t *bh_pg_pool_base(const bh_pg_pool_t *p)
{
    return &p->base;
}

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
    int rc = bh_pool_acquire(&p->base, &w->base, pool_now(p), deadline_ms, &pc);
    if (rc == 0)
        *out = conn_of(pc);
    return rc;
}

void bh_pg_acquire_cancel(bh_pg_waiter_t *w)
{
    bh_pool_cancel(&w->base);
}

/* ---- per-worker pools -------------------------------------------------------------------- */

static void on_sweep(uv_timer_t *t)
{
    bh_pg_pools_sweep(t->data);
}

bh_pg_pools_t *bh_pg_pools_new(uv_loop_t *loop, bh_pg_shared_t *shared, bh_sem_inbox_t *inbox)
{
    bh_pg_pools_t *pools = bh_calloc(1, sizeof(*pools));
    if (pools == NULL)
        return NULL;
    pools->n_buckets = 16;
    pools->buckets = bh_calloc(pools->n_buckets, sizeof(*pools->buckets));
    if (pools->buckets == NULL) {
        bh_free(pools);
        return NULL;
    }
    pools->loop = loop;
    pools->shared = shared;
    pools->inbox = inbox;
    uv_timer_init(loop, &pools->sweep);
    pools->sweep.data = pools;
    uv_timer_start(&pools->sweep, on_sweep, BH_PG_SWEEP_MS, BH_PG_SWEEP_MS);
    pools->open = 1;
    return pools;
}

size_t bh_pg_pools_count(const bh_pg_pools_t *pools)
{
    return pools->n_pools;
}

void bh_pg_pools_retire(bh_pg_pools_t *pools, const uint64_t *live, size_t n)
{
    for (size_t b = 0; b < pools->n_buckets; b++)
        for (bh_pg_pool_t *p = pools->buckets[b]; p != NULL; p = p->next) {
            bool keep = p->tag == 0 || p->retired || p->timer_closing;
            for (size_t i = 0; i < n && !keep; i++)
                keep = live[i] == p->tag;
            if (keep)
                continue;
            p->retired = true;
            bh_log_info("postgres pool %s: its database configuration was replaced; retiring it",
                        p->label);
            bh_pool_retire(&p->base, pool_now(p));
        }
}

void bh_pg_pools_sweep(bh_pg_pools_t *pools)
{
    for (size_t i = 0; i < pools->n_buckets; i++) {
        for (bh_pg_pool_t *p = pools->buckets[i]; p != NULL; p = p->next) {
            if (p->timer_closing)
                continue;
            if (!bh_pool_empty(&p->base) || p->base.limits.min_idle > 0) {
                p->marked = false;
            } else if (!p->marked) {
                p->marked = true;
            } else {
                bh_pool_shutdown(&p->base, pool_now(p));
                pool_close_timer(p);
            }
        }
    }
}

static void on_sweep_closed(uv_handle_t *h)
{
    pools_one_closed(h->data);
}

void bh_pg_pools_close(bh_pg_pools_t *pools, void (*cb)(void *data), void *data)
{
    assert(!pools->closing);
    pools->closing = true;
    pools->closed_cb = cb;
    pools->closed_data = data;
    /* Safe to walk: callbacks cannot create pools now, and pools unlink themselves only from
     * their timer's close callback, on a later loop turn. */
    for (size_t i = 0; i < pools->n_buckets; i++) {
        for (bh_pg_pool_t *p = pools->buckets[i]; p != NULL; p = p->next) {
            if (!p->base.shut)
                bh_pool_shutdown(&p->base, pool_now(p));
            pool_maybe_done(p);
        }
    }
    uv_close((uv_handle_t *)&pools->sweep, on_sweep_closed);
}
