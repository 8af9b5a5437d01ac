/* Client (downstream) connections: accept, read, parse requests with llhttp, enforce limits and
 * client timeouts, and run one exchange at a time (pipelined requests wait in the read buffer,
 * so responses go out in order). The exchange is reached by name (bh_exchange.h); it reaches the
 * connection back only through bh_conn_ops_t.
 *
 * The read buffer holds a request head contiguously until the head is complete (its size bounds
 * the head: 431 beyond). Body bytes are forwarded as slices of the buffer without copying. When a
 * read leaves nothing unparsed the connection drops its reference to the buffer, so an idle
 * keep-alive connection holds none.
 *
 * Idle connections are small: what only a request needs (the timer, the parser, the exchange)
 * is a busy part from the worker's cache, attached when a request's first byte arrives. When the
 * connection is idle again, its busy part goes on the worker's pending list, and a uv_check (the
 * top of the stack, after the loop turn) gives it back: nothing that called into the exchange can
 * still be looking at it. Idle connections wait on one per-worker timer, in a list ordered by
 * when they became idle (one keepalive_timeout for all: that is deadline order; after a reload
 * that shortens it, a connection may wait until the ones before it, at most the old timeout). */
#include <assert.h>
#include <stddef.h>
#include <string.h>
#include "bh_alloc.h"
#include "bh_exchange.h"
#include "bh_log.h"
#include "bh_proxy.h"
#include "bh_reply.h"

enum client_state {
    CS_HANDSHAKE,/* a TLS handshake: the listener's handshake_timeout */
    CS_IDLE,     /* between requests: keepalive_timeout */
    CS_HEAD,     /* receiving a request head: header_timeout */
    CS_EXCHANGE, /* forwarding a request and its response */
    CS_TUNNEL,   /* after a 101: bytes piped both ways */
    CS_CLOSING,
};

enum { PAUSE_NONE, PAUSE_HEAD, PAUSE_MESSAGE };

typedef struct bh_client bh_client_t;

/* What a connection needs only while a request is in flight. */
typedef struct busy {
    uv_timer_t timer; /* header, body gap, exchange deadline, linger */
    llhttp_t parser;
    bh_list_t link;            /* on the cache's free or pending list */
    bh_client_t *c;            /* while attached */
    uint64_t timer_due;        /* when the timer fires (valid while it is active) */
    uint32_t head_start;       /* offset of the current request head in rbuf */
    uint32_t url_off, url_len; /* the request target as llhttp delimited it, from head_start */
    uint32_t nheaders;
    int parse_error;   /* BH_E* set by a parser callback that stopped it */
    uint8_t pause;     /* why a parser callback paused it */
    bool paused;       /* parser paused: at a head end or a message end */
    bool run_parser;   /* run the parser once more even without new bytes */
    bool version_seen; /* the request line's version was parsed */
    bh_exchange_t ex;
} busy_t;

struct bh_client {
    bh_conn_t conn; /* what the exchange sees */
    uv_tcp_t tcp;
    bh_tls_t *tls;           /* NULL on a plain listener */
    bh_list_t link;          /* on the worker's client list */
    bh_list_t idle_link;     /* on the cache's idle list while CS_IDLE */
    busy_t *b;               /* NULL while idle */
    uint64_t phase_start_ms; /* start of the idle/header phase; last body read */
    enum client_state state;
    bool reading;
    bool in_parse; /* parse() is on the stack */
    bool eof;      /* the client sent FIN or the read failed */
    bool counted;  /* counted in srv->clients */
    uint32_t handshake_ms;   /* CS_HANDSHAKE: the listener's handshake_timeout */
};

/* How many busy parts a worker keeps for reuse: a floor, plus twice the requests in flight, so
 * that a burst does not allocate twice while idle connections hold nothing once it is over. */
#define BUSY_CACHE_FLOOR 64

static const bh_conn_ops_t conn_ops;
static const llhttp_settings_t req_settings;
static void close_client(bh_client_t *c);
static void update_reading(bh_client_t *c);
static void parse(bh_client_t *c);
static void resume(bh_client_t *c);
static void rearm_timer(bh_client_t *c);

static bh_client_t *parser_client(llhttp_t *p)
{
    return bh_container_of(p, busy_t, parser)->c;
}

static bool ex_active(const bh_client_t *c)
{
    return c->b != NULL && c->b->ex.active;
}

static bh_client_t *conn_client(bh_conn_t *conn)
{
    return bh_container_of(conn, bh_client_t, conn);
}

static uint64_t now_of(const bh_client_t *c)
{
    return uv_now(&c->conn.w->loop);
}

/* ---- busy parts and idle connections ----------------------------------------------------------
 */

static void on_timer(uv_timer_t *t);

/* The busy part for a request starting on c (a fresh parser; the timer stopped). */
static busy_t *attach_busy(bh_client_t *c)
{
    if (c->b != NULL)
        return c->b;
    bh_client_cache_t *cc = &c->conn.w->cc;
    busy_t *b;
    bh_list_t *n = bh_list_first(&cc->free);
    if (n != NULL) {
        bh_list_remove(n);
        cc->n_free--;
        b = bh_container_of(n, busy_t, link);
        cc->n_attached++;
    } else {
        if ((b = bh_malloc(sizeof(*b))) == NULL)
            return NULL;
        uv_timer_init(&c->conn.w->loop, &b->timer);
        bh_list_init(&b->link);
        cc->n_attached++;
    }
    memset(&b->timer_due, 0, offsetof(busy_t, ex) - offsetof(busy_t, timer_due));
    b->ex.active = false; /* the rest of the exchange is set when a head arrives */
    b->ex.handler = NULL;
    b->c = c;
    b->timer.data = b;
    llhttp_init(&b->parser, HTTP_REQUEST, &req_settings);
    c->b = b;
    c->conn.parser = &b->parser;
    return b;
}

static void on_busy_timer_closed(uv_handle_t *h)
{
    bh_free(bh_container_of((uv_timer_t *)h, busy_t, timer));
}

/* The busy part goes back to the cache (from the top of the stack only: the check, a close
 * callback). */
static void give_back(bh_client_cache_t *cc, busy_t *b)
{
    uv_timer_stop(&b->timer);
    bh_list_remove(&b->link);
    b->c = NULL;
    cc->n_attached--;
    bh_list_push_back(&cc->free, &b->link);
    cc->n_free++;
}

/* Frees the cached busy parts beyond what the requests in flight justify. */
static void trim_cache(bh_client_cache_t *cc)
{
    bh_list_t *n;
    while (cc->n_free > BUSY_CACHE_FLOOR + 2 * cc->n_attached &&
           (n = bh_list_last(&cc->free)) != NULL) {
        bh_list_remove(n);
        cc->n_free--;
        uv_close((uv_handle_t *)&bh_container_of(n, busy_t, link)->timer, on_busy_timer_closed);
    }
}

static void on_check(uv_check_t *h)
{
    bh_worker_t *w = h->data;
    bh_client_cache_t *cc = &w->cc;
    bh_list_t *n, *tmp;
    bh_list_foreach_safe(n, tmp, &cc->pending)
    {
        busy_t *b = bh_container_of(n, busy_t, link);
        bh_client_t *c = b->c;
        bh_list_remove(&b->link);
        if (c->state != CS_IDLE || b->ex.active || c->in_parse)
            continue; /* a new request began on it meanwhile: it stays */
        c->b = NULL;
        c->conn.parser = NULL;
        give_back(cc, b);
    }
    trim_cache(cc);
    uv_check_stop(h);
}

static void on_idle_timer(uv_timer_t *t);

static void arm_idle_timer(bh_worker_t *w)
{
    bh_client_cache_t *cc = &w->cc;
    bh_list_t *n = bh_list_first(&cc->idle);
    if (n == NULL) {
        uv_timer_stop(&cc->idle_timer);
        return;
    }
    bh_client_t *c = bh_container_of(n, bh_client_t, idle_link);
    uint64_t due = c->phase_start_ms + w->conf->limits.keepalive_timeout_ms, now = uv_now(&w->loop);
    uv_timer_start(&cc->idle_timer, on_idle_timer, due > now ? due - now : 0, 0);
}

static void close_client(bh_client_t *c);

static void on_idle_timer(uv_timer_t *t)
{
    bh_worker_t *w = t->data;
    uint64_t now = uv_now(&w->loop), keepalive = w->conf->limits.keepalive_timeout_ms;
    bh_list_t *n;
    while ((n = bh_list_first(&w->cc.idle)) != NULL) {
        bh_client_t *c = bh_container_of(n, bh_client_t, idle_link);
        if (c->phase_start_ms + keepalive > now)
            break;
        close_client(c); /* takes it off the list */
    }
    arm_idle_timer(w);
}

/* Between requests: on the idle list; the busy part goes back once nothing is left to parse. */
static void enter_idle(bh_client_t *c)
{
    bh_client_cache_t *cc = &c->conn.w->cc;
    c->state = CS_IDLE;
    c->phase_start_ms = now_of(c);
    bool was_empty = bh_list_empty(&cc->idle);
    bh_list_push_back(&cc->idle, &c->idle_link);
    if (was_empty)
        arm_idle_timer(c->conn.w);
    if (c->b != NULL && !bh_list_linked(&c->b->link)) {
        uv_timer_stop(&c->b->timer);
        bh_list_push_back(&cc->pending, &c->b->link);
        uv_check_start(&cc->check, on_check);
    }
}

static void leave_idle(bh_client_t *c)
{
    bh_list_remove(&c->idle_link); /* the idle timer finds a later head, or none, by itself */
}

void bh_clients_init(bh_worker_t *w)
{
    bh_client_cache_t *cc = &w->cc;
    bh_list_init(&cc->idle);
    bh_list_init(&cc->pending);
    bh_list_init(&cc->free);
    cc->n_free = cc->n_attached = 0;
    uv_timer_init(&w->loop, &cc->idle_timer);
    cc->idle_timer.data = w;
    uv_unref((uv_handle_t *)&cc->idle_timer); /* the connections keep the loop alive */
    uv_check_init(&w->loop, &cc->check);
    cc->check.data = w;
    uv_unref((uv_handle_t *)&cc->check);
}

void bh_clients_fini(bh_worker_t *w)
{
    bh_list_t *n;
    while ((n = bh_list_first(&w->cc.free)) != NULL) {
        bh_list_remove(n);
        bh_free(bh_container_of(n, busy_t, link)); /* the loop closed its timer */
    }
    w->cc.n_free = 0;
}

/* ---- closing ------------------------------------------------------------------------------ */

static void on_tcp_closed(uv_handle_t *h)
{
    bh_client_t *c = h->data;
    bh_worker_t *w = c->conn.w;
    if (c->b != NULL)
        give_back(&w->cc, c->b); /* also off the pending list */
    bh_buf_unref(c->conn.rbuf);
    bh_list_remove(&c->link);
    bh_free(c->tls);
    bh_free(c->conn.cert_subject);
    bh_free(c);
    w->n_clients--;
    bh_gauge_add(&w->cells->clients, -1);
    w->client_closed(w);
}

static void close_client(bh_client_t *c)
{
    if (c->state == CS_CLOSING && uv_is_closing((uv_handle_t *)&c->tcp))
        return;
    if (c->counted) {
        atomic_fetch_sub(&c->conn.w->srv->clients, 1); /* the slot is free as soon as we close */
        c->counted = false;
    }
    c->conn.closing = true;
    if (ex_active(c))
        bh_exchange_abort(&c->b->ex, 0);
    if (c->state == CS_IDLE)
        leave_idle(c);
    c->state = CS_CLOSING;
    if (c->b != NULL)
        uv_timer_stop(&c->b->timer);
    if (c->tls != NULL) {
        if (c->conn.close_after && bh_outq_pending(&c->conn.out) == 0)
            bh_tls_shutdown(c->tls); /* close_notify: we end on purpose, nothing is cut */
        bh_tls_close(c->tls);
    }
    bh_outq_discard(&c->conn.out);
    uv_close((uv_handle_t *)&c->tcp, on_tcp_closed);
}

static void on_linger_timeout(uv_timer_t *t)
{
    close_client(((busy_t *)t->data)->c);
}

static void update_reading(bh_client_t *c);

/* Close once everything queued has been written (the out queue callback finishes it). */
static void close_after_flush(bh_client_t *c)
{
    c->conn.close_after = true;
    if (bh_outq_pending(&c->conn.out) == 0 || c->conn.out.error < 0) {
        close_client(c);
        return;
    }
    if (c->state == CS_IDLE)
        leave_idle(c);
    busy_t *b = attach_busy(c); /* for its timer */
    if (b == NULL) {
        close_client(c);
        return;
    }
    c->state = CS_CLOSING;
    update_reading(c);
    /* a client that never reads its error response must not hold the connection forever */
    uv_timer_start(&b->timer, on_linger_timeout, c->conn.w->conf->limits.body_timeout_ms, 0);
}

/* A request-level error before any response byte was sent: reply and close. */
static void fail_request(bh_client_t *c, int err)
{
    if (c->state == CS_CLOSING) {
        if (ex_active(c))
            bh_exchange_abort(&c->b->ex, 0);
        return;
    }
    if (ex_active(c))
        bh_exchange_abort(&c->b->ex, err);
    else
        bh_exchange_count_unrouted(&c->conn, err, c->phase_start_ms);
    if (bh_reply_write(&c->conn.out, 0, err, true, 0) < 0) {
        close_client(c);
        return;
    }
    close_after_flush(c);
}

static void drain(bh_client_t *c)
{
    if ((c->state == CS_IDLE && c->conn.rlen == c->conn.rpos) || c->state == CS_HANDSHAKE)
        close_client(c);
    else
        c->conn.close_after = true;
}

void bh_clients_drain(bh_worker_t *w)
{
    bh_list_t *n, *tmp;
    bh_list_foreach_safe(n, tmp, &w->clients)
    {
        drain(bh_container_of(n, bh_client_t, link));
    }
}

void bh_clients_close(bh_worker_t *w)
{
    bh_list_t *n, *tmp;
    bh_list_foreach_safe(n, tmp, &w->clients)
    {
        close_client(bh_container_of(n, bh_client_t, link));
    }
}

/* ---- timers ------------------------------------------------------------------------------- */

/* While a request is in flight (the idle timeout is the cache's). */
static uint64_t client_due(bh_client_t *c)
{
    const bh_conf_limits_t *lim = &c->conn.w->conf->limits;
    busy_t *b = c->b;
    uint64_t due = BH_TIME_NEVER;
    switch (c->state) {
    case CS_HANDSHAKE:
        return c->phase_start_ms + c->handshake_ms;
    case CS_HEAD:
        due = c->phase_start_ms + lim->header_timeout_ms;
        break;
    case CS_EXCHANGE:
        if (!b->ex.req_done && !b->paused)
            due = c->phase_start_ms + lim->body_timeout_ms;
        break;
    default:
        break;
    }
    uint64_t ex_due = bh_exchange_next_timeout(&b->ex);
    return ex_due < due ? ex_due : due;
}

static void rearm_timer(bh_client_t *c);

static void on_timer(uv_timer_t *t)
{
    busy_t *b = t->data;
    bh_client_t *c = b->c;
    b->timer_due = BH_TIME_NEVER;
    uint64_t now = now_of(c);
    const bh_conf_limits_t *lim = &c->conn.w->conf->limits;
    switch (c->state) {
    case CS_HANDSHAKE:
        if (now >= c->phase_start_ms + c->handshake_ms) {
            bh_log_debug("client %s: TLS handshake timed out", c->conn.ip);
            close_client(c);
            return;
        }
        break;
    case CS_HEAD:
        if (now >= c->phase_start_ms + lim->header_timeout_ms) {
            fail_request(c, BH_ECLIENT_TIMEOUT);
            return;
        }
        break;
    case CS_EXCHANGE:
        if (!b->ex.req_done && !b->paused && now >= c->phase_start_ms + lim->body_timeout_ms) {
            if (b->ex.resp_started)
                close_client(c);
            else
                fail_request(c, BH_ECLIENT_TIMEOUT);
            return;
        }
        break;
    default:
        break;
    }
    if (b->ex.active) {
        bh_exchange_timeout(&b->ex, now);
        if (c->state == CS_CLOSING || c->state == CS_IDLE)
            return;
    }
    rearm_timer(c);
}

/* Lazy: a timer already due no later than needed stays; when it fires early, on_timer finds
 * nothing expired and re-arms. Most requests then touch the timer heap once, not per phase. */
static void rearm_timer(bh_client_t *c)
{
    busy_t *b = c->b;
    if (c->state == CS_CLOSING || c->state == CS_IDLE || b == NULL)
        return;
    uint64_t due = client_due(c), now = now_of(c);
    bool active = uv_is_active((uv_handle_t *)&b->timer);
    if (due == BH_TIME_NEVER || (active && b->timer_due <= due))
        return;
    b->timer_due = due;
    uv_timer_start(&b->timer, on_timer, due > now ? due - now : 0, 0);
}

/* ---- reading ------------------------------------------------------------------------------ */

/* Where plaintext goes: the read buffer (TLS decrypts into it, plain TCP reads into it). */
static void plain_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    bh_client_t *c = h->data;
    bh_conn_t *cn = &c->conn;
    if (cn->rbuf != NULL && cn->rlen == cn->rbuf->cap && cn->rpos == cn->rlen &&
        c->state != CS_HEAD) {
        bh_buf_unref(cn->rbuf);
        cn->rbuf = NULL;
    }
    if (cn->rbuf == NULL) {
        cn->rbuf = bh_buf_get(&cn->w->bufs);
        cn->rlen = cn->rpos = 0;
        if (c->b != NULL)
            c->b->head_start = 0;
        if (cn->rbuf == NULL) {
            *buf = uv_buf_init(NULL, 0);
            return;
        }
    }
    *buf = uv_buf_init(cn->rbuf->data + cn->rlen, cn->rbuf->cap - cn->rlen);
}

/* Moves the unparsed bytes (from the current head start) to the front of a buffer. */
static bool compact(bh_client_t *c)
{
    bh_conn_t *cn = &c->conn;
    uint32_t from = c->state == CS_HEAD ? c->b->head_start : cn->rpos;
    uint32_t keep = cn->rlen - from;
    if (from == 0)
        return false;
    if (cn->rbuf->refs == 1) {
        memmove(cn->rbuf->data, cn->rbuf->data + from, keep);
    } else {
        bh_buf_t *nb = bh_buf_get(&cn->w->bufs);
        if (nb == NULL)
            return false;
        memcpy(nb->data, cn->rbuf->data + from, keep);
        bh_buf_unref(cn->rbuf);
        cn->rbuf = nb;
    }
    cn->rlen = keep;
    cn->rpos -= from;
    if (c->b != NULL)
        c->b->head_start = c->state == CS_HEAD ? c->b->head_start - from : 0;
    return true;
}

static void plain_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    bh_client_t *c = h->data;
    if (c->tls != NULL)
        bh_tls_alloc(c->tls, buf);
    else
        plain_alloc(h, hint, buf);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    bh_client_t *c = s->data;
    if (c->tls != NULL)
        bh_tls_input(c->tls, nread);
    else
        plain_read(s, nread, buf);
}

static void update_reading(bh_client_t *c)
{
    bh_conn_t *cn = &c->conn;
    bool want = c->state != CS_CLOSING && !c->eof;
    if (want && cn->rbuf != NULL && cn->rlen == cn->rbuf->cap && cn->rpos < cn->rlen)
        want = compact(c); /* full of unparsed bytes: only room made at the front helps */
    if (want && c->b != NULL && bh_exchange_blocked(&c->b->ex))
        want = false;
    if (want && bh_outq_pending(&cn->out) > BH_WRITE_HIGH_WATER)
        want = false; /* a pipelining client that does not read its responses */
    if (want == c->reading)
        return;
    if (want) {
        if (bh_stream_read_start((uv_stream_t *)&c->tcp, c->tls, on_alloc, on_read) < 0) {
            close_client(c);
            return;
        }
    } else {
        bh_stream_read_stop((uv_stream_t *)&c->tcp, c->tls);
    }
    c->reading = want;
}

/* ---- parsing ------------------------------------------------------------------------------ */

static int on_message_begin(llhttp_t *p)
{
    busy_t *b = parser_client(p)->b;
    b->nheaders = 0;
    b->url_off = b->url_len = 0;
    b->version_seen = false;
    return 0;
}

static int on_version_complete(llhttp_t *p)
{
    parser_client(p)->b->version_seen = true;
    return 0;
}

/* The target exactly as llhttp delimited it (it may come in pieces across reads; the head stays
 * contiguous from head_start). Never re-split the request line: llhttp accepts runs of spaces. */
static int on_url(llhttp_t *p, const char *at, size_t len)
{
    bh_client_t *c = parser_client(p);
    busy_t *b = c->b;
    uint32_t off = (uint32_t)(at - (c->conn.rbuf->data + b->head_start));
    if (b->url_len == 0)
        b->url_off = off;
    b->url_len = off + (uint32_t)len - b->url_off;
    return 0;
}

static int on_header_field_complete(llhttp_t *p)
{
    bh_client_t *c = parser_client(p);
    if (++c->b->nheaders > c->conn.w->conf->limits.max_headers) {
        c->b->parse_error = BH_EHEAD_TOO_LARGE;
        return HPE_USER;
    }
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    parser_client(p)->b->pause = PAUSE_HEAD;
    return HPE_PAUSED;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    bh_client_t *c = parser_client(p);
    int rc = bh_exchange_body(&c->b->ex, at, len);
    if (rc < 0) {
        c->b->parse_error = rc;
        return HPE_USER;
    }
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    parser_client(p)->b->pause = PAUSE_MESSAGE;
    return HPE_PAUSED;
}

static const llhttp_settings_t req_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_version_complete = on_version_complete,
    .on_header_field_complete = on_header_field_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static void release_consumed_buffer(bh_client_t *c)
{
    bh_conn_t *cn = &c->conn;
    if (cn->rbuf != NULL && cn->rpos == cn->rlen && c->state != CS_HEAD) {
        bh_buf_unref(cn->rbuf);
        cn->rbuf = NULL;
        cn->rlen = cn->rpos = 0;
        if (c->b != NULL)
            c->b->head_start = 0;
    }
}

static void handle_pause(bh_client_t *c, int reason)
{
    bh_conn_t *cn = &c->conn;
    busy_t *b = c->b;
    if (reason == PAUSE_MESSAGE && !b->ex.active) {
        fail_request(c, BH_EBAD_REQUEST); /* a message without a head: HTTP/0.9 */
        return;
    }
    if (reason == PAUSE_HEAD) {
        const char *head = cn->rbuf->data + b->head_start;
        size_t len = cn->rpos - b->head_start;
        if (len > cn->w->conf->limits.max_header_bytes) {
            fail_request(c, BH_EHEAD_TOO_LARGE);
            return;
        }
        c->state = CS_EXCHANGE;
        c->phase_start_ms = now_of(c);
        bh_exchange_start(&b->ex, cn, head, len, (bh_span_t){head + b->url_off, b->url_len});
    } else {
        if (bh_exchange_request_done(&b->ex) < 0)
            close_client(c);
    }
}

/* What a parser error tells the client (Proxy-Status details). */
static int parse_errno(llhttp_errno_t e)
{
    switch (e) {
    case HPE_INVALID_CONTENT_LENGTH:
    case HPE_UNEXPECTED_CONTENT_LENGTH:
    case HPE_INVALID_TRANSFER_ENCODING:
    case HPE_INVALID_CHUNK_SIZE:
    case HPE_INVALID_EOF_STATE:
        return BH_EBAD_FRAMING;
    case HPE_INVALID_URL:
        return BH_EBAD_TARGET;
    default:
        return BH_EBAD_REQUEST;
    }
}

static void parse_failed(bh_client_t *c, llhttp_errno_t e)
{
    int err = c->b->parse_error < 0 ? c->b->parse_error : parse_errno(e);
    bh_log_debug("client %s: bad request: %s (%s)", c->conn.ip, llhttp_errno_name(e),
                 llhttp_get_error_reason(&c->b->parser));
    if (c->b->ex.active && c->b->ex.resp_started && !c->b->ex.local)
        close_client(c);
    else
        fail_request(c, err);
}

/* True when the request line ended (empty lines before it do not count, RFC 9112 2.2) while
 * llhttp saw no version in it. */
static bool line_without_version(const bh_client_t *c)
{
    const char *p = c->conn.rbuf->data + c->b->head_start, *end = c->conn.rbuf->data + c->conn.rlen;
    while (p < end && (*p == '\r' || *p == '\n'))
        p++;
    return p < end && memchr(p, '\n', (size_t)(end - p)) != NULL;
}

/* The first byte of a request: the busy part attaches. Returns false when it cannot. */
static bool begin_request(bh_client_t *c)
{
    leave_idle(c);
    busy_t *b = attach_busy(c);
    if (b == NULL) {
        close_client(c); /* out of memory: this connection, not the process */
        return false;
    }
    c->state = CS_HEAD;
    b->head_start = c->conn.rpos;
    c->phase_start_ms = now_of(c);
    rearm_timer(c);
    return true;
}

/* Runs the parser once over what is buffered. Returns false to stop the parse loop. */
static bool parse_step(bh_client_t *c)
{
    bh_conn_t *cn = &c->conn;
    const bh_conf_limits_t *lim = &cn->w->conf->limits;
    if (c->state == CS_IDLE && !begin_request(c))
        return false;
    busy_t *b = c->b;
    b->parse_error = 0;
    b->pause = PAUSE_NONE;
    b->run_parser = false;
    const char *base = cn->rbuf != NULL ? cn->rbuf->data + cn->rpos : "";
    llhttp_errno_t e = llhttp_execute(&b->parser, base, cn->rlen - cn->rpos);
    if (e == HPE_OK) {
        cn->rpos = cn->rlen;
        if (c->state == CS_HEAD && cn->rlen - b->head_start > lim->max_header_bytes) {
            fail_request(c, BH_EHEAD_TOO_LARGE);
            return false;
        }
        if (c->state == CS_HEAD && !b->version_seen && line_without_version(c)) {
            /* "GET /x\r\n" (HTTP/0.9): a line ended without a version, and strict llhttp
             * waits for more instead of failing */
            fail_request(c, BH_EBAD_REQUEST);
            return false;
        }
        return true;
    }
    if (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) {
        cn->rpos += (uint32_t)(llhttp_get_error_pos(&b->parser) - base);
        if (b->pause == PAUSE_NONE) {
            /* llhttp stops after an Upgrade request; the upstream declined to switch
             * protocols (we are not tunneling), so the next bytes are HTTP again. */
            llhttp_resume_after_upgrade(&b->parser);
            return true;
        }
        b->paused = true;
        handle_pause(c, b->pause);
        return true;
    }
    parse_failed(c, e);
    return false;
}

static bool more_to_parse(const bh_client_t *c)
{
    if (c->state == CS_CLOSING || (c->b != NULL && c->b->paused))
        return false;
    if (c->conn.rbuf != NULL && c->conn.rpos < c->conn.rlen)
        return true;
    return c->b != NULL && c->b->run_parser && c->state != CS_IDLE;
}

static void parse(bh_client_t *c)
{
    if (c->in_parse)
        return; /* the running loop below picks up the new state */
    c->in_parse = true;
    while (more_to_parse(c)) {
        if (c->state == CS_TUNNEL) {
            bh_exchange_tunnel_data(&c->b->ex);
            break;
        }
        if (!parse_step(c))
            break;
    }
    c->in_parse = false;
    if (c->state == CS_CLOSING)
        return;
    if (c->b != NULL) {
        bh_exchange_flush(&c->b->ex);
        if (c->state == CS_CLOSING)
            return;
    }
    release_consumed_buffer(c);
    update_reading(c);
}

/* Continue parsing after a pause (the exchange is attached, or the next request may start).
 * Called inside the parse loop, it only unpauses: the loop goes on. */
static void resume(bh_client_t *c)
{
    busy_t *b = c->b;
    if (b != NULL && b->paused) {
        b->run_parser = true; /* a bodyless request completes without another byte */
        rearm_timer(c);       /* the body timeout applies from now */
        if (llhttp_get_errno(&b->parser) == HPE_PAUSED_UPGRADE)
            llhttp_resume_after_upgrade(&b->parser);
        else
            llhttp_resume(&b->parser);
        b->paused = false;
    }
    parse(c);
}

static void exchange_done(bh_client_t *c)
{
    if (c->state == CS_CLOSING)
        return;
    if (c->conn.close_after || c->conn.w->draining) {
        close_after_flush(c);
        return;
    }
    enter_idle(c);
    resume(c);
}

static void plain_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    bh_client_t *c = s->data;
    if (nread == 0) {
        release_consumed_buffer(c); /* TLS: records that carried no data */
        return;
    }
    if (nread < 0) {
        c->eof = true;
        if (nread != UV_EOF || c->state != CS_EXCHANGE || !c->b->ex.req_done ||
            bh_exchange_abort_on_half_close(&c->b->ex)) {
            close_client(c); /* gone mid-request: the exchange is aborted */
            return;
        }
        /* Half-close after a complete request: answer it, then close. */
        c->conn.close_after = true;
        update_reading(c);
        return;
    }
    c->conn.rlen += (uint32_t)nread;
    if (c->state == CS_EXCHANGE)
        c->phase_start_ms = now_of(c); /* body gap: the timer re-checks lazily */
    parse(c);
}

/* ---- writing ------------------------------------------------------------------------------ */

static void on_out(bh_outq_t *q, int status)
{
    bh_client_t *c = bh_container_of(q, bh_client_t, conn.out);
    if (status < 0) {
        close_client(c);
        return;
    }
    if (c->state == CS_CLOSING) {
        if (c->conn.close_after)
            close_client(c);
        return;
    }
    if (c->b != NULL)
        bh_exchange_client_drained(&c->b->ex);
    if (c->state != CS_CLOSING)
        update_reading(c);
}

/* ---- what the exchange may ask ------------------------------------------------------------ */

static void op_close(bh_conn_t *conn)
{
    close_client(conn_client(conn));
}

static void op_resume(bh_conn_t *conn)
{
    resume(conn_client(conn));
}

static void op_rearm_timer(bh_conn_t *conn)
{
    rearm_timer(conn_client(conn));
}

static void op_update_reading(bh_conn_t *conn)
{
    update_reading(conn_client(conn));
}

static void op_exchange_done(bh_conn_t *conn)
{
    exchange_done(conn_client(conn));
}

static void op_tunnel(bh_conn_t *conn)
{
    bh_client_t *c = conn_client(conn);
    c->state = CS_TUNNEL;
    c->b->paused = false; /* no more HTTP on this connection: bytes flow raw */
    conn->close_after = true;
}

static const bh_conn_ops_t conn_ops = {
    .close = op_close,
    .resume = op_resume,
    .rearm_timer = op_rearm_timer,
    .update_reading = op_update_reading,
    .exchange_done = op_exchange_done,
    .tunnel = op_tunnel,
};

/* ---- accepting ---------------------------------------------------------------------------- */

static void peer_name(bh_client_t *c)
{
    struct sockaddr_storage ss;
    int sl = sizeof(ss);
    strcpy(c->conn.ip, "unknown");
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET6)
            uv_ip6_name((struct sockaddr_in6 *)&ss, c->conn.ip, sizeof(c->conn.ip));
        else
            uv_ip4_name((struct sockaddr_in *)&ss, c->conn.ip, sizeof(c->conn.ip));
    }
}

static void on_handshake(bh_tls_t *t, int status, const char *detail)
{
    bh_client_t *c = t->data;
    if (status < 0) {
        bh_log_debug("client %s: TLS handshake failed: %s", c->conn.ip, detail);
        close_client(c);
        return;
    }
    char subject[1024];
    if (bh_tls_peer_subject(t, subject, sizeof(subject)) &&
        (c->conn.cert_subject = bh_strdup(subject)) == NULL) {
        close_client(c);
        return;
    }
    enter_idle(c); /* the handshake's busy part goes back */
}

/* A connection on a TLS listener starts with the handshake, bounded by a busy part's timer. */
static int start_tls(bh_client_t *c, SSL_CTX *ctx, const bh_conf_listener_tls_t *tc)
{
    bh_worker_t *w = c->conn.w;
    bh_tls_owner_t o = {.stream = (uv_stream_t *)&c->tcp,
                        .out = &c->conn.out,
                        .alloc_cb = plain_alloc,
                        .read_cb = plain_read,
                        .handshake_cb = on_handshake,
                        .data = c};
    if ((c->tls = bh_malloc(sizeof(*c->tls))) == NULL)
        return BH_ENOMEM;
    int rc = bh_tls_server(c->tls, &w->tls_env, ctx, &o);
    if (rc < 0)
        return rc;
    c->conn.https = true;
    c->handshake_ms = (uint32_t)tc->handshake_timeout_ms;
    c->state = CS_HANDSHAKE;
    if (attach_busy(c) == NULL)
        return BH_ENOMEM;
    rearm_timer(c);
    return 0;
}

void bh_client_accept(bh_worker_t *w, uv_stream_t *listener)
{
    bh_client_t *c = bh_calloc(1, sizeof(*c));
    if (c == NULL) {
        bh_log_error("out of memory accepting a connection");
        return;
    }
    c->conn.ops = &conn_ops;
    c->conn.w = w;
    bh_list_init(&c->link);
    bh_list_init(&c->idle_link);
    uv_tcp_init(&w->loop, &c->tcp);
    c->tcp.data = c;
    bh_list_push_back(&w->clients, &c->link);
    w->n_clients++;
    bh_counter_add(&w->cells->accepted, 1);
    bh_gauge_add(&w->cells->clients, 1);
    bh_outq_init(&c->conn.out, (uv_stream_t *)&c->tcp, &w->wreqs, &w->bufs, on_out);
    c->state = CS_IDLE;
    c->phase_start_ms = now_of(c);
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) < 0) {
        close_client(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    peer_name(c);
    int64_t n = atomic_fetch_add(&w->srv->clients, 1) + 1;
    c->counted = true;
    const bh_conf_listener_tls_t *tc = NULL;
    SSL_CTX *ctx = bh_listener_tls(w, listener->data, &tc);
    if (ctx != NULL && (n > (int64_t)w->conf->limits.max_connections || w->draining)) {
        close_client(c); /* no reply without spending a handshake on it: closed at once */
        return;
    }
    if (ctx != NULL) {
        if (start_tls(c, ctx, tc) < 0) {
            close_client(c);
            return;
        }
        update_reading(c);
        return;
    }
    if (n > (int64_t)w->conf->limits.max_connections || w->draining) {
        int err = w->draining ? BH_ESHUTDOWN : BH_ETOO_MANY_CONNS;
        bh_exchange_count_unrouted(&c->conn, err, c->phase_start_ms);
        if (bh_reply_write(&c->conn.out, 0, err, true, 1) < 0) {
            close_client(c);
            return;
        }
        close_after_flush(c);
        return;
    }
    enter_idle(c);
    update_reading(c);
}
