/* The upstream handler: one request forwarded to an HTTP upstream and its response streamed back.
 *
 * Phases: rewrite the head -> acquire a pooled connection (maybe waiting in the pool's FIFO) ->
 * send the head, then the body as the client parser yields it -> parse the response head, rewrite
 * it, stream the body -> give the connection back (reusable only after a complete response on a
 * connection both sides keep alive). Bodies are re-framed per hop: Content-Length bytes pass
 * through, chunked or close-delimited bodies become chunks (or a close-delimited body for an
 * HTTP/1.0 client). Errors before any response byte reached the client become bulkhead's own
 * reply with Proxy-Status; after that, the client connection is closed.
 *
 * The resilience pipeline wraps the attempt: deadline (route total, or shorter on the client's
 * Bulkhead-Timeout) -> breaker (per upstream, shared) -> endpoint pick (outlier/health, balance)
 * -> pool acquire (the bulkhead) -> attempt -> classify the outcome -> record (breaker, outlier)
 * -> retry when the policy, the request's safety, the budget and the deadline all allow it.
 *
 * Liveness: an upcall into the connection (close, resume, ...) or bh_exchange_reply/finish may end
 * the exchange. The state lives in the exchange until the next one starts, which cannot happen
 * before control returns to the loop, so after an upcall `f->ex->active` (or conn->closing) says
 * whether to go on. */
#include <assert.h>
#include <string.h>
#include "bh_alloc.h"
#include "bh_backoff.h"
#include "bh_deadline.h"
#include "bh_forward.h"
#include "bh_log.h"
#include "bh_proxy.h"
#include "bh_retry.h"

enum { RP_PAUSE_NONE, RP_PAUSE_HEAD, RP_PAUSE_MESSAGE };

/* handle_response_head(): the response was held back and another attempt is scheduled. */
#define BH_RETRY_SCHEDULED 1

enum fwd_framing {
    FRAME_NONE,         /* no body */
    FRAME_LENGTH,       /* Content-Length: bytes pass through */
    FRAME_CHUNKED,      /* re-framed: each piece becomes a chunk */
    FRAME_CLOSE,        /* body ends when the connection closes */
};

enum fwd_phase {
    PH_NONE,
    PH_WAITING,         /* for a pooled connection */
    PH_SENDING,         /* request head/body going out */
    PH_FIRST_BYTE,      /* request sent, waiting for the response head */
    PH_RECEIVING,       /* response streaming to the client */
    PH_TUNNEL,          /* after a 101 */
    PH_BACKOFF,         /* between a failed attempt and the retry */
};

/* Request body bytes kept so that a retry can send them again (retry.max_replay_bytes). */
#define REPLAY_SLICES 32
typedef struct replay {
    bh_buf_t *buf;
    const char *p;
    size_t n;
} replay_t;

typedef struct bh_fwd {
    bh_exchange_t *ex;
    bh_upstream_t *up;
    bh_pool_waiter_t waiter;
    bool waiting;                   /* waiter is queued in a pool */
    bh_upconn_t *uc;
    bh_buf_t *head;                 /* forwarded request head until queued upstream */
    uint32_t head_len;
    llhttp_t rp;                    /* response parser */
    uint64_t up_activity_ms;        /* the upstream's last sign of life */
    uint64_t wait_start_ms;         /* the current attempt asked the pool */
    uint64_t retry_at_ms;           /* PH_BACKOFF: when the next attempt starts */
    uint32_t resp_head_start;       /* offset in uc->rbuf */
    uint32_t method_bit;            /* BH_M_* */
    size_t ep;                      /* endpoint of the current attempt */
    size_t failed_ep;               /* endpoint of the last failed attempt, or BH_BALANCE_NONE */
    bh_breaker_ticket_t ticket;     /* the current attempt's, until recorded */
    replay_t *replay;               /* allocated once the request has a body */
    uint32_t n_replay;
    uint64_t replay_bytes;
    enum fwd_framing req_framing, resp_framing;
    enum fwd_phase phase;
    bool picked;                    /* ep counts this attempt in flight (bh_upstream_unpick) */
    bool is_head, expect_continue, upgrade;
    bool replayable;                /* every body byte so far is in replay[] */
    bool idempotency_key;           /* the request carries Idempotency-Key */
    bool continue_sent;             /* 100 Continue went to the client */
    bool add_host;                  /* an HTTP/1.0 request without Host: name the endpoint */
    bool held;                      /* upstream reads stopped: the client is slow to take them */
} bh_fwd_t;

_Static_assert(sizeof(bh_fwd_t) <= BH_EXCHANGE_STATE_BYTES, "bh_fwd_t fits in the exchange");

static bh_fwd_t *fwd_of(const bh_exchange_t *ex)
{
    return ex->state;
}

static bh_fwd_t *rp_fwd(llhttp_t *p)
{
    return bh_container_of(p, bh_fwd_t, rp);
}

static bh_conn_t *conn_of(const bh_fwd_t *f)
{
    return f->ex->conn;
}

static uint64_t now_of(const bh_fwd_t *f)
{
    return uv_now(&conn_of(f)->w->loop);
}

static void rearm(bh_fwd_t *f)
{
    conn_of(f)->ops->rearm_timer(conn_of(f));
}

static void cut(bh_fwd_t *f)
{
    conn_of(f)->ops->close(conn_of(f));
}

/* ---- ending ------------------------------------------------------------------------------- */

/* Ends the current attempt's hold on pool resources. */
static void drop_attempt(bh_fwd_t *f, bool reusable)
{
    if (f->waiting) {
        bh_pool_cancel(&f->waiter);
        f->waiting = false;
    }
    if (f->uc != NULL) {
        bh_upconn_release(f->uc, reusable);
        f->uc = NULL;
    }
    if (f->picked) {
        bh_upstream_unpick(f->up, f->ep);
        f->picked = false;
    }
}

static void drop_replay(bh_fwd_t *f)
{
    for (uint32_t i = 0; i < f->n_replay; i++)
        bh_buf_unref(f->replay[i].buf);
    bh_free(f->replay);
    f->replay = NULL;
    f->n_replay = 0;
    f->replayable = false;
}

static void fwd_release(bh_exchange_t *ex, bool reusable)
{
    bh_fwd_t *f = fwd_of(ex);
    drop_attempt(f, reusable);
    if (f->up != NULL)
        bh_breaker_cancel(&f->up->shared->breaker, &f->ticket); /* no-op once recorded */
    bh_buf_unref(f->head);
    f->head = NULL;
    drop_replay(f);
    f->phase = PH_NONE;
}

/* ---- attempts ------------------------------------------------------------------------------ */

static void start_attempt(bh_fwd_t *f);

/* What a failure cause means for the retry policy. */
static bh_attempt_t classify(const bh_fwd_t *f, int err)
{
    bh_attempt_t a = {.outcome = BH_OUTCOME_LOCAL, .safety = BH_SAFETY_SENT_NO_RESPONSE};
    switch (err) {
    case BH_ECONNECT_REFUSED:
    case BH_ECONNECT_FAILED:
        a.outcome = BH_OUTCOME_CONNECT_FAILED;
        a.safety = BH_SAFETY_NOT_SENT;
        break;
    case BH_ECONNECT_TIMEOUT:
        a.outcome = BH_OUTCOME_CONNECT_TIMEOUT;
        a.safety = BH_SAFETY_NOT_SENT;
        break;
    case BH_EUPSTREAM_RESET:
    case BH_EUPSTREAM_WRITE:
        a.outcome = BH_OUTCOME_RESET_BEFORE_RESPONSE;
        break;
    case BH_EFIRST_BYTE_TIMEOUT:
        a.outcome = BH_OUTCOME_FIRST_BYTE_TIMEOUT;
        break;
    case BH_EIDLE_TIMEOUT:
        a.outcome = BH_OUTCOME_IDLE_TIMEOUT;
        break;
    case BH_EUPSTREAM_PROTOCOL:
    case BH_EUPSTREAM_HEAD_SIZE:
        a.outcome = BH_OUTCOME_PROTOCOL_ERROR;
        break;
    case BH_ETOTAL_TIMEOUT:
        a.outcome = BH_OUTCOME_TOTAL_TIMEOUT;
        break;
    default:
        a.safety = BH_SAFETY_NOT_SENT; /* pool full or wait timeout: never reached upstream */
        break;
    }
    if (f->ex->resp_started)
        a.safety = BH_SAFETY_PARTIAL;
    return a;
}

/* An attempt's outcome counts for its endpoint (outlier detection)... */
static void record_attempt(bh_fwd_t *f, const bh_attempt_t *a, uint64_t now)
{
    bh_counter_add(&f->ex->up_cells->attempts[a->outcome], 1);
    if (a->outcome == BH_OUTCOME_LOCAL || a->outcome == BH_OUTCOME_TOTAL_TIMEOUT)
        return; /* not the endpoint's doing */
    bool failed = bh_retry_counts_as_failure(f->up->conf->breaker.count, a);
    if (bh_outlier_record(f->up->shared->outlier, f->ep, failed, now))
        bh_counter_add(&f->ex->up_cells->ejections, 1);
}

/* ...and the request's final outcome for the upstream (the breaker). Counting attempts would let
 * one dead endpoint of three open the whole upstream: its in-flight requests fail together, yet
 * each is retried elsewhere and succeeds; the outlier detector is what takes that endpoint out. */
static void record_request(bh_fwd_t *f, const bh_attempt_t *a, uint64_t now)
{
    bh_upstream_shared_t *sh = f->up->shared;
    if (a->outcome == BH_OUTCOME_LOCAL || a->outcome == BH_OUTCOME_TOTAL_TIMEOUT) {
        bh_breaker_cancel(&sh->breaker, &f->ticket); /* not the upstream's doing */
        return;
    }
    bool failed = bh_retry_counts_as_failure(f->up->conf->breaker.count, a);
    bh_breaker_record(&sh->breaker, &f->ticket, failed, now, f->up->env->rng);
}

/* Schedules another attempt when everything allows it: the policy (outcome, safety, attempts,
 * replayable body), a backoff that fits in the deadline, and the retry budget (counted now, when
 * the retry is scheduled). retry_after_ms: the upstream's Retry-After, 0 when none. */
static bool schedule_retry(bh_fwd_t *f, const bh_attempt_t *a, uint64_t retry_after_ms)
{
    bh_exchange_t *ex = f->ex;
    const bh_conf_retry_t *policy = &ex->route->retry;
    uint64_t now = now_of(f);
    bh_retry_request_t req = {
        .method = f->method_bit,
        .idempotency_key = f->idempotency_key,
        .body_replayable = ex->req_body_bytes == 0 || f->replayable,
    };
    if (bh_retry_decide(policy, ex->attempts, a, &req) != BH_RETRY_YES)
        return false;
    /* An open breaker (maybe opened by this very failure) would refuse the retry: keep the
     * failure, so that an upstream 5xx reaches the client as it was. */
    if (bh_breaker_state(&f->up->shared->breaker) == BH_BREAKER_OPEN)
        return false;
    uint64_t delay =
        bh_backoff_delay(policy, ex->attempts, retry_after_ms,
                         bh_deadline_remaining(ex->deadline_ms, now), conn_of(f)->w->env.rng);
    if (delay == BH_BACKOFF_GIVE_UP || !bh_backoff_fits(delay, now, ex->deadline_ms))
        return false;
    if (!bh_budget_try_acquire_retry(&f->up->shared->budget, now)) {
        bh_counter_add(&ex->up_cells->budget_exhausted, 1);
        return false;
    }
    bh_counter_add(&ex->up_cells->retries, 1);
    f->failed_ep = f->ep;
    f->phase = PH_BACKOFF;
    f->retry_at_ms = now + delay;
    rearm(f);
    return true;
}

/* The current attempt failed with err (before any response byte reached the client, or after:
 * then only the connection can be cut). */
static void attempt_failed(bh_fwd_t *f, int err)
{
    bh_exchange_t *ex = f->ex;
    uint64_t now = now_of(f);
    bh_attempt_t a = classify(f, err);
    bh_log_debug("client %s: upstream %s attempt %u: %s", conn_of(f)->ip, f->up->conf->name,
                 ex->attempts, bh_strerror(err));
    drop_attempt(f, false);
    record_attempt(f, &a, now);
    if (a.safety == BH_SAFETY_PARTIAL) {
        cut(f); /* the client already has part of a response */
        return;
    }
    if (schedule_retry(f, &a, 0))
        return;
    record_request(f, &a, now);
    bh_exchange_reply(ex, err, !ex->req_done, 1);
}

/* ---- body framing ------------------------------------------------------------------------- */

static int emit_body(bh_outq_t *q, enum fwd_framing fr, bh_buf_t *b, const char *at, size_t len)
{
    if (fr != FRAME_CHUNKED)
        return bh_outq_slice(q, b, at, len);
    char hex[24];
    bh_wbuf_t w = {hex, 0, sizeof(hex), false};
    bh_wbuf_hex(&w, len);
    bh_wbuf_put(&w, "\r\n", 2);
    int rc = bh_outq_copy(q, hex, w.n);
    if (rc == 0)
        rc = bh_outq_slice(q, b, at, len);
    if (rc == 0)
        rc = bh_outq_copy(q, "\r\n", 2);
    return rc;
}

static int emit_end(bh_outq_t *q, enum fwd_framing fr)
{
    return fr == FRAME_CHUNKED ? bh_outq_copy(q, "0\r\n\r\n", 5) : 0;
}

/* ---- response parsing --------------------------------------------------------------------- */

static int rp_on_headers_complete(llhttp_t *p)
{
    if (rp_fwd(p)->is_head)
        p->flags |= F_SKIPBODY; /* what returning 1 would do; we pause instead */
    p->data = (void *)(uintptr_t)RP_PAUSE_HEAD;
    return HPE_PAUSED;
}

static int rp_on_body(llhttp_t *p, const char *at, size_t len)
{
    bh_fwd_t *f = rp_fwd(p);
    return emit_body(&conn_of(f)->out, f->resp_framing, f->uc->rbuf, at, len) < 0 ? HPE_USER : 0;
}

static int rp_on_message_complete(llhttp_t *p)
{
    p->data = (void *)(uintptr_t)RP_PAUSE_MESSAGE;
    return HPE_PAUSED;
}

static const llhttp_settings_t rp_settings = {
    .on_headers_complete = rp_on_headers_complete,
    .on_body = rp_on_body,
    .on_message_complete = rp_on_message_complete,
};

static int write_response_head(bh_fwd_t *f, bh_fwd_resp_t *resp, const bh_hdr_t *hdrs, size_t n)
{
    bh_conn_t *conn = conn_of(f);
    bh_buf_t *b = bh_buf_get(&conn->w->bufs);
    if (b == NULL)
        return BH_ENOMEM;
    bh_wbuf_t w = {b->data, 0, b->cap, false};
    int rc = bh_http_write_response(&w, resp, hdrs, n) ? bh_outq_slice(&conn->out, b, b->data, w.n)
                                                        : BH_EUPSTREAM_HEAD_SIZE;
    bh_buf_unref(b);
    return rc;
}

static void start_tunnel(bh_fwd_t *f);

/* "HTTP/1.1 200 OK": the reason phrase starts after the second space. */
static bh_span_t reason_of(bh_span_t start)
{
    const char *sp = memchr(start.p, ' ', start.n);
    if (sp != NULL) {
        const char *sp2 = memchr(sp + 1, ' ', start.n - (size_t)(sp + 1 - start.p));
        if (sp2 != NULL)
            return (bh_span_t){sp2 + 1, start.n - (size_t)(sp2 + 1 - start.p)};
    }
    return (bh_span_t){"", 0};
}

/* A final response's framing towards the client, and whether the client connection stays. */
static void choose_framing(bh_fwd_t *f, int status, bh_fwd_resp_t *resp)
{
    bh_conn_t *conn = conn_of(f);
    bool http11 = bh_conn_http11(conn);
    if (f->is_head || status == 204 || status == 304)
        f->resp_framing = FRAME_NONE;
    else if (f->rp.flags & F_CHUNKED)
        f->resp_framing = http11 ? FRAME_CHUNKED : FRAME_CLOSE;
    else if (f->rp.flags & F_CONTENT_LENGTH)
        f->resp_framing = FRAME_LENGTH;
    else
        f->resp_framing = http11 ? FRAME_CHUNKED : FRAME_CLOSE;
    bool keepalive = llhttp_should_keep_alive(conn->parser) && !conn->w->draining &&
                     f->resp_framing != FRAME_CLOSE;
    if (!keepalive)
        conn->close_after = true;
    resp->close = conn->close_after;
    resp->keepalive_10 = !http11 && keepalive;
    resp->chunked = f->resp_framing == FRAME_CHUNKED;
}

/* A final response: the attempt has an outcome. A 5xx that the policy would retry is held back
 * (the connection is dropped with it) and never reaches the client; so is a status the policy
 * lists as retriable (retriable_status, e.g. 429). Returns BH_RETRY_SCHEDULED when held back. */
static int judge_response(bh_fwd_t *f, int status, const bh_hdr_t *hdrs, int n)
{
    bh_attempt_t a = {.outcome = bh_outcome_for_status(status), .status = status,
                      .safety = BH_SAFETY_SENT_NO_RESPONSE};
    uint64_t retry_after_ms = 0;
    for (int i = 0; i < n; i++)
        if (bh_span_ieq(hdrs[i].name, "retry-after"))
            bh_backoff_parse_retry_after(hdrs[i].value.p, hdrs[i].value.n, &retry_after_ms);
    uint64_t now = now_of(f);
    record_attempt(f, &a, now);
    if (status >= 400 && !f->upgrade && schedule_retry(f, &a, retry_after_ms)) {
        drop_attempt(f, false);
        return BH_RETRY_SCHEDULED;
    }
    record_request(f, &a, now);
    return 0;
}

/* The response head is complete at uc->rpos. Returns < 0 when the exchange failed. */
static int handle_response_head(bh_fwd_t *f)
{
    bh_exchange_t *ex = f->ex;
    bh_upconn_t *uc = f->uc;
    bh_worker_t *w = conn_of(f)->w;
    int status = llhttp_get_status_code(&f->rp);
    bh_span_t start;
    int n = bh_http_split(uc->rbuf->data + f->resp_head_start, uc->rpos - f->resp_head_start,
                          &start, w->hdrs, w->max_hdrs);
    if (n < 0)
        return n == -2 ? BH_EUPSTREAM_HEAD_SIZE : BH_EUPSTREAM_PROTOCOL;
    for (int i = 0; i < n; i++) {
        if (bh_span_ieq(w->hdrs[i].name, "keep-alive")) {
            long t = bh_http_keepalive_timeout(w->hdrs[i].value);
            if (t > 0)
                uc->keepalive_ms = (uint64_t)t * 1000;
        }
    }
    bh_fwd_resp_t resp = {.status = status, .reason = reason_of(start)};
    if (ex->first_byte_ms == 0)
        ex->first_byte_ms = now_of(f);
    if (status < 200 && status != 101) {
        /* interim response: relayed to HTTP/1.1 clients, then the final one follows */
        return bh_conn_http11(conn_of(f)) ? write_response_head(f, &resp, w->hdrs, (size_t)n) : 0;
    }
    if (status == 101) {
        if (!f->upgrade)
            return BH_EUPSTREAM_PROTOCOL;
        resp.upgrade = true;
        int rc = write_response_head(f, &resp, w->hdrs, (size_t)n);
        if (rc == 0) {
            ex->resp_started = true;
            ex->status = status;
            start_tunnel(f);
        }
        return rc;
    }
    if (judge_response(f, status, w->hdrs, n) == BH_RETRY_SCHEDULED)
        return BH_RETRY_SCHEDULED;
    choose_framing(f, status, &resp);
    int rc = write_response_head(f, &resp, w->hdrs, (size_t)n);
    if (rc < 0)
        return rc;
    ex->resp_started = true;
    ex->status = status;
    f->phase = PH_RECEIVING;
    rearm(f); /* the idle timeout applies from now */
    return 0;
}

static void response_done(bh_fwd_t *f)
{
    bh_exchange_t *ex = f->ex;
    bh_conn_t *conn = conn_of(f);
    bh_upconn_t *uc = f->uc;
    if (emit_end(&conn->out, f->resp_framing) < 0 || bh_outq_flush(&conn->out) < 0) {
        cut(f);
        return;
    }
    bool reusable = ex->req_done && llhttp_should_keep_alive(&f->rp) && uc->rpos == uc->rlen;
    if (!ex->req_done)
        conn->close_after = true; /* answered before the request ended: the rest is not read */
    bh_exchange_finish(ex, reusable);
}

/* One step of the response parser. Returns 1 to go on, 0 to stop (the exchange may be over). */
static int up_parse_step(bh_fwd_t *f, bool *again)
{
    bh_upconn_t *uc = f->uc;
    const char *base = uc->rbuf->data + uc->rpos;
    f->rp.data = (void *)(uintptr_t)RP_PAUSE_NONE;
    llhttp_errno_t e = llhttp_execute(&f->rp, base, uc->rlen - uc->rpos);
    if (e == HPE_OK) {
        uc->rpos = uc->rlen;
        return 0;
    }
    if (e != HPE_PAUSED && e != HPE_PAUSED_UPGRADE) {
        bh_log_debug("upstream %s: bad response: %s (%s)", uc->ep->addr->text,
                     llhttp_errno_name(e), llhttp_get_error_reason(&f->rp));
        attempt_failed(f, BH_EUPSTREAM_PROTOCOL);
        return -1;
    }
    uc->rpos += (uint32_t)(llhttp_get_error_pos(&f->rp) - base);
    uintptr_t reason = (uintptr_t)f->rp.data;
    if (e == HPE_PAUSED)
        llhttp_resume(&f->rp);
    if (reason == RP_PAUSE_HEAD) {
        int rc = handle_response_head(f);
        if (rc < 0) {
            attempt_failed(f, rc);
            return -1;
        }
        if (rc == BH_RETRY_SCHEDULED || !f->ex->active || f->phase == PH_TUNNEL)
            return -1;
        *again = true;
    } else if (reason == RP_PAUSE_MESSAGE) {
        if (f->ex->resp_started) {
            response_done(f);
            return -1;
        }
        f->resp_head_start = uc->rpos; /* after an interim 1xx: the next head starts here */
    }
    return 1;
}

/* Backpressure: the client has more queued than it takes. The upstream is then silent because
 * bulkhead stopped reading, not by its own doing: its idle timeout waits (the deadline does not). */
static void hold_upstream(bh_fwd_t *f)
{
    bh_upconn_read_stop(f->uc);
    f->held = true;
}

/* Parses what the upstream sent. */
static void up_parse(bh_fwd_t *f)
{
    bh_exchange_t *ex = f->ex;
    bh_conn_t *conn = conn_of(f);
    bool again = false; /* after a head, a bodyless message completes without another byte */
    while (f->uc->rbuf != NULL && (f->uc->rpos < f->uc->rlen || again)) {
        again = false;
        int rc = up_parse_step(f, &again);
        if (rc < 0)
            return; /* failed, done, retried or tunneling: the exchange may be over */
        if (rc == 0)
            break;
    }
    bh_upconn_t *uc = f->uc;
    if (!ex->resp_started && uc->rbuf != NULL && uc->rlen == uc->rbuf->cap) {
        attempt_failed(f, BH_EUPSTREAM_HEAD_SIZE);
        return;
    }
    if (bh_outq_flush(&conn->out) < 0) {
        cut(f);
        return;
    }
    if (ex->resp_started && uc->rbuf != NULL && uc->rpos == uc->rlen) {
        bh_buf_unref(uc->rbuf); /* nothing pending: queued writes hold what they need */
        uc->rbuf = NULL;
        uc->rlen = uc->rpos = 0;
        f->resp_head_start = 0;
    }
    if (bh_outq_pending(&conn->out) > BH_WRITE_HIGH_WATER)
        hold_upstream(f); /* resumed by fwd_client_drained */
}

static void tunnel_to_client(bh_fwd_t *f)
{
    bh_conn_t *conn = conn_of(f);
    bh_upconn_t *uc = f->uc;
    int rc = bh_outq_slice(&conn->out, uc->rbuf, uc->rbuf->data + uc->rpos, uc->rlen - uc->rpos);
    uc->rpos = uc->rlen;
    if (rc < 0 || bh_outq_flush(&conn->out) < 0) {
        cut(f);
        return;
    }
    if (bh_outq_pending(&conn->out) > BH_WRITE_HIGH_WATER)
        hold_upstream(f);
}

static void on_up_read(bh_upconn_t *uc, ssize_t nread)
{
    bh_fwd_t *f = uc->owner;
    f->up_activity_ms = now_of(f);
    if (nread > 0) {
        if (f->phase == PH_TUNNEL)
            tunnel_to_client(f);
        else
            up_parse(f);
        return;
    }
    if (f->phase == PH_TUNNEL) {
        conn_of(f)->close_after = true;
        bh_exchange_finish(f->ex, false);
        return;
    }
    if (nread == UV_EOF && f->ex->resp_started && f->resp_framing == FRAME_CLOSE) {
        f->rp.data = (void *)(uintptr_t)RP_PAUSE_NONE;
        if (llhttp_finish(&f->rp) == HPE_OK || (uintptr_t)f->rp.data == RP_PAUSE_MESSAGE) {
            response_done(f);
            return;
        }
    }
    attempt_failed(f, f->ex->resp_started || uc->rlen == 0 ? BH_EUPSTREAM_RESET
                                                           : BH_EUPSTREAM_PROTOCOL);
}

static void on_up_out(bh_outq_t *q, int status)
{
    bh_upconn_t *uc = bh_container_of(q, bh_upconn_t, out);
    bh_fwd_t *f = uc->owner;
    if (f == NULL)
        return;
    if (status < 0) {
        attempt_failed(f, BH_EUPSTREAM_WRITE);
        return;
    }
    f->up_activity_ms = now_of(f);
    conn_of(f)->ops->update_reading(conn_of(f)); /* backpressure released */
}

/* ---- tunnel ------------------------------------------------------------------------------- */

static void fwd_tunnel_data(bh_exchange_t *ex)
{
    bh_fwd_t *f = fwd_of(ex);
    bh_conn_t *conn = ex->conn;
    if (f->uc == NULL || conn->rbuf == NULL || conn->rpos == conn->rlen)
        return;
    int rc = bh_outq_slice(&f->uc->out, conn->rbuf, conn->rbuf->data + conn->rpos,
                           conn->rlen - conn->rpos);
    conn->rpos = conn->rlen;
    if (rc < 0 || bh_outq_flush(&f->uc->out) < 0)
        cut(f);
    else
        f->up_activity_ms = now_of(f);
}

static void start_tunnel(bh_fwd_t *f)
{
    bh_conn_t *conn = conn_of(f);
    bh_upconn_t *uc = f->uc;
    f->phase = PH_TUNNEL;
    conn->ops->tunnel(conn); /* no more HTTP on this connection: bytes flow raw */
    if (uc->rbuf != NULL && uc->rpos < uc->rlen) {
        if (bh_outq_slice(&conn->out, uc->rbuf, uc->rbuf->data + uc->rpos, uc->rlen - uc->rpos) <
            0) {
            cut(f);
            return;
        }
        uc->rpos = uc->rlen;
    }
    if (bh_outq_flush(&conn->out) < 0) {
        cut(f);
        return;
    }
    rearm(f);
    fwd_tunnel_data(f->ex);
}

/* ---- request ------------------------------------------------------------------------------ */

/* Queues the request head (with this attempt's Bulkhead-Deadline) and, on a retry, the body
 * bytes received so far. */
static int send_request(bh_fwd_t *f, bh_upconn_t *uc)
{
    bh_exchange_t *ex = f->ex;
    int rc = bh_outq_slice(&uc->out, f->head, f->head->data, f->head_len);
    if (rc < 0)
        return rc;
    char tail[320];
    bh_wbuf_t w = {tail, 0, sizeof(tail), false};
    if (f->add_host) { /* what goes upstream is HTTP/1.1, which needs a Host (RFC 9112 3.2) */
        bh_wbuf_str(&w, "Host: ");
        bh_wbuf_str(&w, f->up->conf->endpoints[f->ep].text);
        bh_wbuf_put(&w, "\r\n", 2);
    }
    if (ex->deadline_ms != BH_DEADLINE_NONE) {
        bh_wbuf_str(&w, "Bulkhead-Deadline: ");
        bh_wbuf_u64(&w, bh_deadline_remaining(ex->deadline_ms, now_of(f)));
        bh_wbuf_put(&w, "\r\n", 2);
    }
    bh_wbuf_put(&w, "\r\n", 2);
    rc = w.overflow ? BH_EHEAD_TOO_LARGE : bh_outq_copy(&uc->out, tail, w.n);
    for (uint32_t i = 0; rc == 0 && i < f->n_replay; i++)
        rc = emit_body(&uc->out, f->req_framing, f->replay[i].buf, f->replay[i].p,
                       f->replay[i].n);
    if (rc == 0 && ex->req_done)
        rc = emit_end(&uc->out, f->req_framing);
    return rc == 0 ? bh_outq_flush(&uc->out) : rc;
}

/* The first wait for a connection ended, with one or without: the access log's queue_ms. */
static void queue_ended(bh_fwd_t *f)
{
    if (f->ex->attached_ms == 0)
        f->ex->attached_ms = now_of(f);
}

static void attach(bh_fwd_t *f, bh_upconn_t *uc)
{
    bh_exchange_t *ex = f->ex;
    bh_conn_t *conn = conn_of(f);
    f->uc = uc;
    f->waiting = false;
    bh_hist_observe(&ex->up_cells->wait, (now_of(f) - f->wait_start_ms) * 1000);
    uc->out.cb = on_up_out;
    llhttp_init(&f->rp, HTTP_RESPONSE, &rp_settings);
    f->resp_head_start = 0;
    if (bh_upconn_read_start(uc, on_up_read, f) < 0) {
        attempt_failed(f, BH_EUPSTREAM_RESET);
        return;
    }
    if (send_request(f, uc) < 0) {
        attempt_failed(f, BH_EUPSTREAM_WRITE);
        return;
    }
    if (f->expect_continue && !ex->req_done && !f->continue_sent) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        f->continue_sent = true;
        if (bh_outq_copy(&conn->out, cont, sizeof(cont) - 1) < 0 || bh_outq_flush(&conn->out) < 0) {
            cut(f);
            return;
        }
    }
    f->phase = ex->req_done ? PH_FIRST_BYTE : PH_SENDING;
    f->up_activity_ms = now_of(f);
    queue_ended(f);
    rearm(f);
    if (!ex->req_done)
        conn->ops->resume(conn); /* paused at the head: the body may flow now */
}

static void on_acquired(bh_pool_waiter_t *w, bh_pool_conn_t *pc, int status)
{
    bh_fwd_t *f = w->data;
    f->waiting = false;
    if (status < 0) {
        queue_ended(f);
        if (status == BH_EPOOL_TIMEOUT && now_of(f) >= f->ex->deadline_ms)
            status = BH_ETOTAL_TIMEOUT;
        attempt_failed(f, status);
        return;
    }
    attach(f, bh_upconn_of(pc));
}

/* One attempt: breaker, endpoint, pool. */
static void start_attempt(bh_fwd_t *f)
{
    bh_exchange_t *ex = f->ex;
    bh_upstream_t *up = f->up;
    uint64_t now = now_of(f);
    if (ex->attempts > 0 && ex->req_body_bytes > 0 && !f->replayable) {
        bh_exchange_reply(ex, BH_EUPSTREAM_RESET, true, 1); /* the body cannot be re-sent */
        return;
    }
    uint64_t retry_after_ms = 0;
    if (ex->attempts == 0 && bh_breaker_allow(&up->shared->breaker, now, up->env->rng,
                                              &f->ticket, &retry_after_ms) < 0) {
        /* refused before any attempt: nothing was tried, no endpoint picked */
        bh_exchange_reply(ex, BH_EBREAKER_OPEN, !ex->req_done, (retry_after_ms + 999) / 1000);
        return;
    }
    ex->attempts++;
    f->phase = PH_WAITING;
    f->ep = bh_upstream_pick(up, f->failed_ep);
    f->picked = true;
    ex->endpoint = up->conf->endpoints[f->ep].text;
    f->wait_start_ms = now;
    bh_upconn_t *uc = NULL;
    int rc = bh_upstream_acquire(up, f->ep, &f->waiter, ex->deadline_ms, &uc);
    if (rc == BH_POOL_QUEUED) {
        f->waiting = true;
        rearm(f);
        return;
    }
    if (rc < 0) {
        queue_ended(f);
        attempt_failed(f, rc);
        return;
    }
    attach(f, uc);
}

/* Writes the head sent upstream into f->head. Returns 0 or the error to answer with. */
static int build_head(bh_fwd_t *f, const bh_request_t *req)
{
    bh_exchange_t *ex = f->ex;
    bh_conn_t *conn = conn_of(f);
    const bh_target_t *t = &req->target;
    bh_fwd_req_t fr = {
        .method = req->method,
        .target = t->asterisk ? (bh_span_t){"*", 1} : t->path,
        .host = t->authority.n > 0 ? t->authority : (bh_span_t){NULL, 0},
        .client_ip = conn->ip,
        .proto = "http",
        .chunked = f->req_framing == FRAME_CHUNKED,
        .upgrade = f->upgrade,
        .drop_expect = f->expect_continue,
    };
    if (ex->route->strip_prefix && !t->asterisk) {
        size_t plen = strlen(ex->route->path_prefix);
        fr.target = (bh_span_t){t->path.p + plen, t->path.n - plen};
        fr.target_slash = fr.target.n == 0 || fr.target.p[0] != '/';
    }
    f->head = bh_buf_get(&conn->w->bufs);
    if (f->head == NULL)
        return BH_ENOMEM;
    bh_wbuf_t wb = {f->head->data, 0, f->head->cap, false};
    if (!bh_http_write_request(&wb, &fr, req->hdrs, (size_t)req->nhdrs))
        return BH_EHEAD_TOO_LARGE;
    f->head_len = (uint32_t)wb.n - 2; /* the blank line goes after Bulkhead-Deadline */
    return 0;
}

static void fwd_start(bh_exchange_t *ex, const bh_request_t *req)
{
    bh_conn_t *conn = ex->conn;
    const llhttp_t *p = conn->parser;
    bh_fwd_t *f = (bh_fwd_t *)ex->state_area;
    memset(f, 0, sizeof(*f));
    ex->state = f;
    f->ex = ex;
    bh_list_init(&f->waiter.link);
    f->waiter.cb = on_acquired;
    f->waiter.data = f;
    f->is_head = p->method == HTTP_HEAD;
    f->upgrade = req->upgrade;
    f->expect_continue = req->expect_continue;
    f->idempotency_key = req->idempotency_key;
    f->add_host = req->host.p == NULL && req->target.authority.n == 0;
    if (p->flags & F_CHUNKED)
        f->req_framing = FRAME_CHUNKED;
    else if ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0)
        f->req_framing = FRAME_LENGTH;
    if (f->req_framing == FRAME_LENGTH && p->content_length > ex->body_limit) {
        bh_exchange_reply(ex, BH_EBODY_TOO_LARGE, true, 1);
        return;
    }
    const bh_gen_t *gen = ex->gen;
    size_t ui = ex->route->upstream_index;
    f->up = &gen->upstreams[ui]->up;
    ex->up_cells = bh_mentry_cells(gen->snap->up_m[ui], conn->w->id);
    ex->backend = f->up->conf->name;
    int err = build_head(f, req);
    if (err < 0) {
        bh_exchange_reply(ex, err, true, 1);
        return;
    }
    uint64_t now = now_of(f);
    ex->deadline_ms =
        bh_deadline_for_request(now, ex->route->timeouts.total_ms, req->client_timeout_ms);
    f->method_bit = req->method_bit;
    f->failed_ep = BH_BALANCE_NONE;
    f->replayable = true;
    bh_budget_on_request(&f->up->shared->budget, now);
    start_attempt(f);
}

/* Keeps a body slice for a possible retry, while the body fits retry.max_replay_bytes. */
static void keep_for_replay(bh_fwd_t *f, const char *at, size_t len)
{
    const bh_conf_retry_t *retry = &f->ex->route->retry;
    if (!f->replayable)
        return;
    if (retry->attempts <= 1 || f->replay_bytes + len > retry->max_replay_bytes ||
        f->n_replay == REPLAY_SLICES) {
        drop_replay(f);
        return;
    }
    if (f->replay == NULL && (f->replay = bh_malloc(REPLAY_SLICES * sizeof(replay_t))) == NULL) {
        drop_replay(f);
        return;
    }
    f->replay[f->n_replay++] = (replay_t){bh_buf_ref(conn_of(f)->rbuf), at, len};
    f->replay_bytes += len;
}

static int fwd_body(bh_exchange_t *ex, const char *at, size_t len)
{
    bh_fwd_t *f = fwd_of(ex);
    keep_for_replay(f, at, len);
    if (f->uc == NULL)
        return 0; /* between attempts: the next one sends what replay[] holds */
    return emit_body(&f->uc->out, f->req_framing, ex->conn->rbuf, at, len);
}

static int fwd_request_done(bh_exchange_t *ex)
{
    bh_fwd_t *f = fwd_of(ex);
    if (f->uc == NULL)
        return 0;
    if (emit_end(&f->uc->out, f->req_framing) < 0)
        return BH_ENOMEM;
    if (f->phase == PH_SENDING) {
        f->phase = PH_FIRST_BYTE;
        f->up_activity_ms = now_of(f);
    }
    return 0;
}

static void fwd_flush(bh_exchange_t *ex)
{
    bh_fwd_t *f = fwd_of(ex);
    if (f->uc != NULL && bh_outq_flush(&f->uc->out) < 0)
        attempt_failed(f, BH_EUPSTREAM_WRITE);
}

static void fwd_client_drained(bh_exchange_t *ex)
{
    bh_fwd_t *f = fwd_of(ex);
    if (f->uc == NULL || uv_is_active((uv_handle_t *)&f->uc->tcp))
        return;
    if (bh_upconn_read_start(f->uc, on_up_read, f) < 0) {
        attempt_failed(f, BH_EUPSTREAM_RESET);
        return;
    }
    if (f->held) {
        f->held = false;
        f->up_activity_ms = now_of(f); /* the upstream's idle time starts again now */
        rearm(f);
    }
    if (f->phase != PH_TUNNEL)
        up_parse(f);
}

static bool fwd_blocked(const bh_exchange_t *ex)
{
    const bh_fwd_t *f = fwd_of(ex);
    return f->uc != NULL && bh_outq_pending(&f->uc->out) > BH_WRITE_HIGH_WATER;
}

static uint64_t fwd_next_timeout(const bh_exchange_t *ex)
{
    const bh_fwd_t *f = fwd_of(ex);
    uint64_t due = f->phase == PH_TUNNEL ? BH_TIME_NEVER : ex->deadline_ms;
    const bh_conf_timeouts_t *t = &ex->route->timeouts;
    uint64_t phase_due = BH_TIME_NEVER;
    switch (f->phase) {
    case PH_FIRST_BYTE:
        phase_due = f->up_activity_ms + t->first_byte_ms;
        break;
    case PH_SENDING:
    case PH_RECEIVING:
    case PH_TUNNEL:
        if (!f->held)
            phase_due = f->up_activity_ms + t->idle_ms;
        break;
    case PH_BACKOFF:
        phase_due = f->retry_at_ms;
        break;
    default:
        break;
    }
    return phase_due < due ? phase_due : due;
}

static void fwd_timeout(bh_exchange_t *ex, uint64_t now)
{
    bh_fwd_t *f = fwd_of(ex);
    if (f->phase != PH_TUNNEL && now >= ex->deadline_ms) {
        attempt_failed(f, BH_ETOTAL_TIMEOUT);
        return;
    }
    const bh_conf_timeouts_t *t = &ex->route->timeouts;
    if (f->phase == PH_BACKOFF && now >= f->retry_at_ms)
        start_attempt(f);
    else if (f->phase == PH_FIRST_BYTE && now >= f->up_activity_ms + t->first_byte_ms)
        attempt_failed(f, BH_EFIRST_BYTE_TIMEOUT);
    else if ((f->phase == PH_SENDING || f->phase == PH_RECEIVING || f->phase == PH_TUNNEL) &&
             !f->held && now >= f->up_activity_ms + t->idle_ms)
        attempt_failed(f, BH_EIDLE_TIMEOUT);
}

const bh_handler_t bh_forward_handler = {
    .name = "upstream",
    .start = fwd_start,
    .body = fwd_body,
    .request_done = fwd_request_done,
    .flush = fwd_flush,
    .client_drained = fwd_client_drained,
    .blocked = fwd_blocked,
    .next_timeout = fwd_next_timeout,
    .timeout = fwd_timeout,
    .tunnel_data = fwd_tunnel_data,
    .release = fwd_release,
};
