/* Client (downstream) connections: accept, read, parse requests with llhttp, enforce limits and
 * client timeouts, and run one exchange at a time (pipelined requests wait in the read buffer,
 * so responses go out in order).
 *
 * The read buffer holds a request head contiguously until the head is complete (its size bounds
 * the head: 431 beyond). Body bytes are forwarded as slices of the buffer without copying. When a
 * read leaves nothing unparsed the connection drops its reference to the buffer, so an idle
 * keep-alive connection holds none. */
#include <assert.h>
#include <string.h>
#include "bh_alloc.h"
#include "bh_log.h"
#include "bh_proxy.h"
#include "bh_reply.h"

static bh_client_t *parser_client(llhttp_t *p)
{
    return bh_container_of(p, bh_client_t, parser);
}

/* ---- closing ------------------------------------------------------------------------------ */

static void on_handle_closed(uv_handle_t *h)
{
    bh_client_t *c = h->data;
    if (--c->open_handles > 0)
        return;
    bh_buf_unref(c->rbuf);
    bh_worker_t *w = c->w;
    bh_list_remove(&c->link);
    bh_free(c);
    bh__worker_client_closed(w, NULL);
}

void bh__client_close(bh_client_t *c)
{
    if (c->state == BH_CS_CLOSING && uv_is_closing((uv_handle_t *)&c->tcp))
        return;
    if (c->counted) {
        atomic_fetch_sub(&c->w->srv->clients, 1); /* the slot is free as soon as we close */
        c->counted = false;
    }
    if (c->ex.active)
        bh__forward_abort(c, 0);
    c->state = BH_CS_CLOSING;
    bh_outq_discard(&c->out);
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

static void on_linger_timeout(uv_timer_t *t)
{
    bh__client_close(t->data);
}

/* Close once everything queued has been written (the out queue callback finishes it). */
static void close_after_flush(bh_client_t *c)
{
    c->close_after = true;
    if (bh_outq_pending(&c->out) == 0 || c->out.error < 0) {
        bh__client_close(c);
        return;
    }
    c->state = BH_CS_CLOSING;
    uv_timer_stop(&c->timer);
    bh__client_update_reading(c);
    /* a client that never reads its error response must not hold the connection forever */
    uv_timer_start(&c->timer, on_linger_timeout, c->w->conf->limits.body_timeout_ms, 0);
}

/* A request-level error before any response byte was sent: reply and close. */
static void fail_request(bh_client_t *c, int err)
{
    if (c->state == BH_CS_CLOSING) {
        if (c->ex.active)
            bh__forward_abort(c, 0);
        return;
    }
    if (c->ex.active)
        bh__forward_abort(c, err);
    else
        bh__forward_count_unrouted(c, err, c->phase_start_ms);
    if (bh_reply_write(&c->out, 0, err, true, 0) < 0) {
        bh__client_close(c);
        return;
    }
    close_after_flush(c);
}

void bh__client_drain(bh_client_t *c)
{
    if (c->state == BH_CS_IDLE && c->rlen == c->rpos)
        bh__client_close(c);
    else
        c->close_after = true;
}

/* ---- timers ------------------------------------------------------------------------------- */

static uint64_t client_due(bh_client_t *c)
{
    const bh_conf_limits_t *lim = &c->w->conf->limits;
    uint64_t due = BH_TIME_NEVER;
    switch (c->state) {
    case BH_CS_IDLE:
        due = c->phase_start_ms + lim->keepalive_timeout_ms;
        break;
    case BH_CS_HEAD:
        due = c->phase_start_ms + lim->header_timeout_ms;
        break;
    case BH_CS_EXCHANGE:
        if (!c->ex.req_done && !c->paused)
            due = c->phase_start_ms + lim->body_timeout_ms;
        break;
    default:
        break;
    }
    uint64_t ex_due = bh__forward_next_timeout(c);
    return ex_due < due ? ex_due : due;
}

static void on_timer(uv_timer_t *t)
{
    bh_client_t *c = t->data;
    c->timer_due = BH_TIME_NEVER;
    uint64_t now = uv_now(&c->w->loop);
    const bh_conf_limits_t *lim = &c->w->conf->limits;
    switch (c->state) {
    case BH_CS_IDLE:
        if (now >= c->phase_start_ms + lim->keepalive_timeout_ms) {
            bh__client_close(c);
            return;
        }
        break;
    case BH_CS_HEAD:
        if (now >= c->phase_start_ms + lim->header_timeout_ms) {
            fail_request(c, BH_ECLIENT_TIMEOUT);
            return;
        }
        break;
    case BH_CS_EXCHANGE:
        if (!c->ex.req_done && !c->paused && now >= c->phase_start_ms + lim->body_timeout_ms) {
            if (c->ex.resp_started)
                bh__client_close(c);
            else
                fail_request(c, BH_ECLIENT_TIMEOUT);
            return;
        }
        break;
    default:
        break;
    }
    if (c->ex.active) {
        bh__forward_deadline(c, now);
        if (c->state == BH_CS_CLOSING)
            return;
    }
    bh__client_rearm_timer(c);
}

/* Lazy: a timer already due no later than needed stays; when it fires early, on_timer finds
 * nothing expired and re-arms. Most requests then touch the timer heap once, not per phase. */
void bh__client_rearm_timer(bh_client_t *c)
{
    if (c->state == BH_CS_CLOSING)
        return;
    uint64_t due = client_due(c), now = uv_now(&c->w->loop);
    bool active = uv_is_active((uv_handle_t *)&c->timer);
    if (due == BH_TIME_NEVER || (active && c->timer_due <= due))
        return;
    c->timer_due = due;
    uv_timer_start(&c->timer, on_timer, due > now ? due - now : 0, 0);
}

/* ---- reading ------------------------------------------------------------------------------ */

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    bh_client_t *c = h->data;
    if (c->rbuf != NULL && c->rlen == c->rbuf->cap && c->rpos == c->rlen &&
        c->state != BH_CS_HEAD) {
        bh_buf_unref(c->rbuf);
        c->rbuf = NULL;
    }
    if (c->rbuf == NULL) {
        c->rbuf = bh_buf_get(&c->w->bufs);
        c->rlen = c->rpos = c->head_start = 0;
        if (c->rbuf == NULL) {
            *buf = uv_buf_init(NULL, 0);
            return;
        }
    }
    *buf = uv_buf_init(c->rbuf->data + c->rlen, c->rbuf->cap - c->rlen);
}

/* Moves the unparsed bytes (from the current head start) to the front of a buffer. */
static bool compact(bh_client_t *c)
{
    uint32_t from = c->state == BH_CS_HEAD ? c->head_start : c->rpos;
    uint32_t keep = c->rlen - from;
    if (from == 0)
        return false;
    if (c->rbuf->refs == 1) {
        memmove(c->rbuf->data, c->rbuf->data + from, keep);
    } else {
        bh_buf_t *nb = bh_buf_get(&c->w->bufs);
        if (nb == NULL)
            return false;
        memcpy(nb->data, c->rbuf->data + from, keep);
        bh_buf_unref(c->rbuf);
        c->rbuf = nb;
    }
    c->rlen = keep;
    c->rpos -= from;
    c->head_start -= (c->state == BH_CS_HEAD ? from : 0);
    if (c->state != BH_CS_HEAD)
        c->head_start = 0;
    return true;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

void bh__client_update_reading(bh_client_t *c)
{
    bool want = c->state != BH_CS_CLOSING && !c->eof;
    if (want && c->rbuf != NULL && c->rlen == c->rbuf->cap && c->rpos < c->rlen)
        want = compact(c); /* full of unparsed bytes: only room made at the front helps */
    if (want && c->ex.uc != NULL && bh_outq_pending(&c->ex.uc->out) > BH_WRITE_HIGH_WATER)
        want = false;
    if (want && bh_outq_pending(&c->out) > BH_WRITE_HIGH_WATER)
        want = false; /* a pipelining client that does not read its responses */
    if (want == c->reading)
        return;
    if (want) {
        if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0) {
            bh__client_close(c);
            return;
        }
    } else {
        uv_read_stop((uv_stream_t *)&c->tcp);
    }
    c->reading = want;
}

/* ---- parsing ------------------------------------------------------------------------------ */

enum { PAUSE_NONE, PAUSE_HEAD, PAUSE_MESSAGE };

static int on_message_begin(llhttp_t *p)
{
    bh_client_t *c = parser_client(p);
    c->nheaders = 0;
    c->url_off = c->url_len = 0;
    return 0;
}

/* The target exactly as llhttp delimited it (it may come in pieces across reads; the head stays
 * contiguous from head_start). Never re-split the request line: llhttp accepts runs of spaces. */
static int on_url(llhttp_t *p, const char *at, size_t len)
{
    bh_client_t *c = parser_client(p);
    uint32_t off = (uint32_t)(at - (c->rbuf->data + c->head_start));
    if (c->url_len == 0)
        c->url_off = off;
    c->url_len = off + (uint32_t)len - c->url_off;
    return 0;
}

static int on_header_field_complete(llhttp_t *p)
{
    bh_client_t *c = parser_client(p);
    if (++c->nheaders > c->w->conf->limits.max_headers) {
        c->parse_error = BH_EHEAD_TOO_LARGE;
        return HPE_USER;
    }
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    bh_client_t *c = parser_client(p);
    c->pause = PAUSE_HEAD;
    return HPE_PAUSED;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    bh_client_t *c = parser_client(p);
    c->ex.req_body_bytes += len;
    if (c->ex.req_body_bytes > c->ex.body_limit) {
        c->parse_error = BH_EBODY_TOO_LARGE;
        return HPE_USER;
    }
    if (c->ex.local)
        return 0; /* bulkhead already answered: the body is read and dropped */
    int rc = bh__forward_body(c, at, len);
    return rc < 0 ? HPE_USER : 0;
}

static int on_message_complete(llhttp_t *p)
{
    bh_client_t *c = parser_client(p);
    c->pause = PAUSE_MESSAGE;
    return HPE_PAUSED;
}

void bh__client_settings(llhttp_settings_t *s)
{
    llhttp_settings_init(s);
    s->on_message_begin = on_message_begin;
    s->on_url = on_url;
    s->on_header_field_complete = on_header_field_complete;
    s->on_headers_complete = on_headers_complete;
    s->on_body = on_body;
    s->on_message_complete = on_message_complete;
}

static void release_consumed_buffer(bh_client_t *c)
{
    if (c->rbuf != NULL && c->rpos == c->rlen && c->state != BH_CS_HEAD) {
        bh_buf_unref(c->rbuf);
        c->rbuf = NULL;
        c->rlen = c->rpos = c->head_start = 0;
    }
}

static void handle_pause(bh_client_t *c, int reason)
{
    if (reason == PAUSE_MESSAGE && !c->ex.active) {
        fail_request(c, BH_EBAD_REQUEST); /* a message without a head: HTTP/0.9 */
        return;
    }
    if (reason == PAUSE_HEAD) {
        const char *head = c->rbuf->data + c->head_start;
        size_t len = c->rpos - c->head_start;
        if (len > c->w->conf->limits.max_header_bytes) {
            fail_request(c, BH_EHEAD_TOO_LARGE);
            return;
        }
        c->state = BH_CS_EXCHANGE;
        c->phase_start_ms = uv_now(&c->w->loop);
        bh__forward_start(c, head, len);
    } else {
        if (bh__forward_request_done(c) < 0)
            bh__client_close(c);
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

void bh__client_parse(bh_client_t *c)
{
    const bh_conf_limits_t *lim = &c->w->conf->limits;
    if (c->in_parse)
        return; /* the running loop below picks up the new state */
    c->in_parse = true;
    while (c->state != BH_CS_CLOSING && !c->paused &&
           ((c->rbuf != NULL && c->rpos < c->rlen) || (c->kick && c->state != BH_CS_IDLE))) {
        if (c->state == BH_CS_TUNNEL) {
            bh__forward_tunnel_data(c);
            break;
        }
        if (c->state == BH_CS_IDLE) {
            c->state = BH_CS_HEAD;
            c->head_start = c->rpos;
            c->phase_start_ms = uv_now(&c->w->loop);
            bh__client_rearm_timer(c);
        }
        c->parse_error = 0;
        c->pause = PAUSE_NONE;
        c->kick = false;
        const char *base = c->rbuf != NULL ? c->rbuf->data + c->rpos : "";
        llhttp_errno_t e = llhttp_execute(&c->parser, base, c->rlen - c->rpos);
        if (e == HPE_OK) {
            c->rpos = c->rlen;
            if (c->state == BH_CS_HEAD && c->rlen - c->head_start > lim->max_header_bytes) {
                fail_request(c, BH_EHEAD_TOO_LARGE);
                break;
            }
        } else if (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) {
            c->rpos += (uint32_t)(llhttp_get_error_pos(&c->parser) - base);
            if (c->pause == PAUSE_NONE) {
                /* llhttp stops after an Upgrade request; the upstream declined to switch
                 * protocols (we are not tunneling), so the next bytes are HTTP again. */
                llhttp_resume_after_upgrade(&c->parser);
                continue;
            }
            c->paused = true;
            handle_pause(c, c->pause);
        } else {
            int err = c->parse_error < 0 ? c->parse_error : parse_errno(e);
            bh_log_debug("client %s: bad request: %s (%s)", c->ip, llhttp_errno_name(e),
                         llhttp_get_error_reason(&c->parser));
            if (c->ex.active && c->ex.resp_started && !c->ex.local)
                bh__client_close(c);
            else
                fail_request(c, err);
            break;
        }
    }
    c->in_parse = false;
    if (c->state == BH_CS_CLOSING)
        return;
    bh__forward_flush(c);
    if (c->state == BH_CS_CLOSING)
        return;
    release_consumed_buffer(c);
    bh__client_update_reading(c);
}

/* Continue parsing after a pause (the exchange is attached, or the next request may start).
 * Called inside the parse loop, it only unpauses: the loop goes on. */
void bh__client_resume(bh_client_t *c)
{
    if (c->paused) {
        c->kick = true; /* a bodyless request completes without another byte */
        bh__client_rearm_timer(c); /* the body timeout applies from now */
        if (llhttp_get_errno(&c->parser) == HPE_PAUSED_UPGRADE)
            llhttp_resume_after_upgrade(&c->parser);
        else
            llhttp_resume(&c->parser);
        c->paused = false;
    }
    bh__client_parse(c);
}

void bh__client_exchange_done(bh_client_t *c)
{
    if (c->state == BH_CS_CLOSING)
        return;
    if (c->close_after || c->w->draining) {
        close_after_flush(c);
        return;
    }
    c->state = BH_CS_IDLE;
    c->phase_start_ms = uv_now(&c->w->loop);
    bh__client_rearm_timer(c);
    bh__client_resume(c);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    bh_client_t *c = s->data;
    if (nread == 0)
        return;
    if (nread < 0) {
        c->eof = true;
        /* An SQL client that closes has its query cancelled: nobody reads a half-close reply. */
        if (nread != UV_EOF || c->state != BH_CS_EXCHANGE || !c->ex.req_done ||
            c->ex.sql != NULL) {
            bh__client_close(c); /* gone mid-request: the exchange is aborted */
            return;
        }
        /* Half-close after a complete request: answer it, then close. */
        c->close_after = true;
        bh__client_update_reading(c);
        return;
    }
    c->rlen += (uint32_t)nread;
    if (c->state == BH_CS_EXCHANGE)
        c->phase_start_ms = uv_now(&c->w->loop); /* body gap: the timer re-checks lazily */
    bh__client_parse(c);
}

/* ---- writing ------------------------------------------------------------------------------ */

static void on_out(bh_outq_t *q, int status)
{
    bh_client_t *c = bh_container_of(q, bh_client_t, out);
    if (status < 0) {
        bh__client_close(c);
        return;
    }
    if (c->state == BH_CS_CLOSING) {
        if (c->close_after)
            bh__client_close(c);
        return;
    }
    bh__forward_client_drained(c);
    if (c->state != BH_CS_CLOSING)
        bh__client_update_reading(c);
}

/* ---- accepting ---------------------------------------------------------------------------- */

void bh__client_accept(bh_worker_t *w, uv_stream_t *listener)
{
    bh_client_t *c = bh_calloc(1, sizeof(*c));
    if (c == NULL) {
        bh_log_error("out of memory accepting a connection");
        return;
    }
    c->w = w;
    bh_list_init(&c->link);
    uv_tcp_init(&w->loop, &c->tcp);
    uv_timer_init(&w->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->open_handles = 2;
    bh_list_push_back(&w->clients, &c->link);
    w->n_clients++;
    bh_counter_add(&w->cells->accepted, 1);
    bh_gauge_add(&w->cells->clients, 1);
    bh_outq_init(&c->out, (uv_stream_t *)&c->tcp, &w->wreqs, &w->bufs, on_out);
    llhttp_init(&c->parser, HTTP_REQUEST, &w->req_settings);
    c->state = BH_CS_IDLE;
    c->phase_start_ms = uv_now(&w->loop);
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) < 0) {
        bh__client_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    struct sockaddr_storage ss;
    int sl = sizeof(ss);
    strcpy(c->ip, "unknown");
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET6)
            uv_ip6_name((struct sockaddr_in6 *)&ss, c->ip, sizeof(c->ip));
        else
            uv_ip4_name((struct sockaddr_in *)&ss, c->ip, sizeof(c->ip));
    }
    int64_t n = atomic_fetch_add(&w->srv->clients, 1) + 1;
    c->counted = true;
    if (n > (int64_t)w->conf->limits.max_connections || w->draining) {
        bh__forward_count_unrouted(c, w->draining ? BH_ESHUTDOWN : BH_ETOO_MANY_CONNS,
                                   c->phase_start_ms);
        if (bh_reply_write(&c->out, 0, w->draining ? BH_ESHUTDOWN : BH_ETOO_MANY_CONNS, true,
                           1) < 0) {
            bh__client_close(c);
            return;
        }
        close_after_flush(c);
        return;
    }
    bh__client_rearm_timer(c);
    bh__client_update_reading(c);
}
