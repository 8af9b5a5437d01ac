/* The exchange: one request forwarded to an upstream and its response streamed back.
 *
 * Phases: route and rewrite the head -> acquire a pooled connection (maybe waiting in the pool's
 * FIFO) -> send the head, then the body as the client parser yields it -> parse the response
 * head, rewrite it, stream the body -> give the connection back (reusable only after a complete
 * response on a connection both sides keep alive). Bodies are re-framed per hop: Content-Length
 * bytes pass through, chunked or close-delimited bodies become chunks (or a close-delimited body
 * for an HTTP/1.0 client). Errors before any response byte reached the client become bulkhead's
 * own reply with Proxy-Status; after that, the client connection is closed.
 *
 * The resilience pipeline wraps the attempt: deadline (route total, or shorter on the client's
 * Bulkhead-Timeout) -> breaker (per upstream, shared) -> endpoint pick (outlier/health, balance)
 * -> pool acquire (the bulkhead) -> attempt -> classify the outcome -> record (breaker, outlier)
 * -> retry when the policy, the request's safety, the budget and the deadline all allow it. */
#include <string.h>
#include <time.h>
#include "bh_alloc.h"
#include "bh_backoff.h"
#include "bh_deadline.h"
#include "bh_retry.h"
#include "bh_log.h"
#include "bh_proxy.h"
#include "bh_reply.h"
#include "bh_router.h"

enum { RP_PAUSE_NONE, RP_PAUSE_HEAD, RP_PAUSE_MESSAGE };

/* handle_response_head(): the response was held back and another attempt is scheduled. */
#define BH_RETRY_SCHEDULED 1

static bh_exchange_t *rp_exchange(llhttp_t *p)
{
    return bh_container_of(p, bh_exchange_t, rp);
}

static bh_client_t *ex_client(bh_exchange_t *ex)
{
    return bh_container_of(ex, bh_client_t, ex);
}

static uint64_t now_of(bh_client_t *c)
{
    return uv_now(&c->w->loop);
}

/* ---- ending ------------------------------------------------------------------------------- */

/* Ends the current attempt's hold on pool resources. */
static void drop_attempt(bh_exchange_t *ex, bool reusable)
{
    if (ex->waiting) {
        bh_pool_cancel(&ex->waiter);
        ex->waiting = false;
    }
    if (ex->uc != NULL) {
        bh_upconn_release(ex->uc, reusable);
        ex->uc = NULL;
    }
    if (ex->picked) {
        bh_upstream_unpick(ex->up, ex->ep);
        ex->picked = false;
    }
}

static void drop_replay(bh_exchange_t *ex)
{
    for (uint32_t i = 0; i < ex->n_replay; i++)
        bh_buf_unref(ex->replay[i].buf);
    bh_free(ex->replay);
    ex->replay = NULL;
    ex->n_replay = 0;
    ex->replayable = false;
}

static void detach(bh_exchange_t *ex, bool reusable)
{
    if (ex->sql != NULL)
        bh__sql_free(ex_client(ex));
    drop_attempt(ex, reusable);
    if (ex->up != NULL)
        bh_breaker_cancel(&ex->up->shared->breaker, &ex->ticket); /* no-op once recorded */
    bh_buf_unref(ex->head);
    ex->head = NULL;
    drop_replay(ex);
}

/* One access log line for the exchange (log.access on only). */
static void log_exchange(bh_client_t *c, bool aborted)
{
    bh_exchange_t *ex = &c->ex;
    bh_accesslog_t *al = c->w->alog;
    if (al == NULL || ex->log_target == NULL)
        return;
    uint64_t now = now_of(c);
    char line[2048], ts[64];
    size_t n = 0;
    struct timespec tv;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &tv);
    gmtime_r(&tv.tv_sec, &tm);
    snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, tv.tv_nsec / 1000000);
    const char *up = ex->up != NULL ? ex->up->conf->name
                     : ex->route != NULL && ex->route->database != NULL ? ex->route->database
                                                                          : NULL;
    const char *ep = ex->up != NULL && ex->attempts > 0 ? ex->up->conf->endpoints[ex->ep].text : NULL;
    const char *err = ex->local && ex->last_err < 0 ? bh_err_proxy_status(ex->last_err) : NULL;
    n += (size_t)snprintf(line + n, sizeof(line) - n, "{\"time\":\"%s\",\"worker\":%u,\"client\":\"%s\",\"request\":\"",
                          ts, c->w->id, c->ip);
    bh_json_escape(line, sizeof(line) - 512, &n, ex->log_target, strlen(ex->log_target));
    n += (size_t)snprintf(line + n, sizeof(line) - n, "\",\"route\":");
    if (ex->route != NULL) {
        line[n++] = '"';
        bh_json_escape(line, sizeof(line) - 512, &n, ex->route->name, strlen(ex->route->name));
        line[n++] = '"';
    } else {
        n += (size_t)snprintf(line + n, sizeof(line) - n, "null");
    }
    n += (size_t)snprintf(
        line + n, sizeof(line) - n,
        ",\"status\":%d,\"bytes\":%llu,\"upstream\":%s%s%s,\"endpoint\":%s%s%s,"
        "\"attempts\":%u,\"queue_ms\":%lld,\"first_byte_ms\":%lld,\"total_ms\":%llu,"
        "\"error\":%s%s%s%s}",
        aborted && !ex->resp_done ? 499 : ex->status,
        (unsigned long long)(c->out.total - ex->out_at_start), up ? "\"" : "", up ? up : "null",
        up ? "\"" : "", ep ? "\"" : "", ep ? ep : "null", ep ? "\"" : "", ex->attempts,
        ex->attached_ms ? (long long)(ex->attached_ms - ex->start_ms) : -1LL,
        ex->first_byte_ms && ex->attached_ms ? (long long)(ex->first_byte_ms - ex->attached_ms) : -1LL,
        (unsigned long long)(now - ex->start_ms), err ? "\"" : "", err ? err : "null", err ? "\"" : "",
        aborted ? ",\"aborted\":true" : "");
    if (n >= sizeof(line))
        n = sizeof(line) - 1;
    bh_accesslog_line(al, line, n);
    bh_free(ex->log_target);
    ex->log_target = NULL;
}

/* The exchange ends: counted, logged, its resources given back, its generation released. */
static void end_exchange(bh_client_t *c, bool aborted, bool reusable)
{
    bh_exchange_t *ex = &c->ex;
    bh_route_count(ex->route_cells, aborted && !ex->resp_done ? 499 : ex->status,
                   (uv_hrtime() - ex->start_ns) / 1000);
    log_exchange(c, aborted);
    detach(ex, reusable);
    ex->active = false;
    ex->phase = BH_UP_NONE;
    bh_gen_t *g = ex->gen;
    ex->gen = NULL;
    ex->up = NULL;
    ex->route = NULL;
    bh__gen_unref(g);
}

static void finish(bh_client_t *c, bool reusable)
{
    end_exchange(c, false, reusable);
    bh__client_exchange_done(c);
}

void bh__forward_abort(bh_client_t *c, int err)
{
    bh_exchange_t *ex = &c->ex;
    if (err < 0 && !ex->resp_started) { /* the caller answers with err's status itself */
        ex->local = true;
        ex->last_err = err;
        ex->status = bh_reply_status(err);
        ex->resp_done = true;
        end_exchange(c, false, false);
        return;
    }
    end_exchange(c, true, false);
}

void bh__forward_count_unrouted(bh_client_t *c, int err, uint64_t since_ms)
{
    uint64_t now = now_of(c);
    bh_route_count(bh_mentry_cells(c->w->srv->metrics.no_route, c->w->id), bh_reply_status(err),
                   now > since_ms ? (now - since_ms) * 1000 : 0);
}

/* bulkhead answers the request itself. The rest of the request body is read and dropped (so the
 * connection can carry the next request) unless close is set. */
static void local_reply_after(bh_client_t *c, int err, bool close, uint64_t retry_after_s)
{
    bh_exchange_t *ex = &c->ex;
    detach(ex, false);
    int status = bh_reply_status(err);
    /* Protocol-level errors leave the request stream in an unknown state: close. */
    if (status == 400 || status == 408 || status == 413 || status == 431 || status == 501)
        close = true;
    if (close)
        c->close_after = true;
    ex->local = true;
    ex->resp_started = ex->resp_done = true;
    ex->status = status;
    ex->last_err = err;
    if (bh_reply_write(&c->out, status, err, c->close_after || c->w->draining, retry_after_s) < 0) {
        bh__client_close(c);
        return;
    }
    if (ex->req_done || c->close_after) {
        finish(c, false);
        return;
    }
    bh__client_rearm_timer(c);
    bh__client_resume(c); /* discard the body; bh__forward_request_done finishes */
}

static void local_reply(bh_client_t *c, int err, bool close)
{
    local_reply_after(c, err, close, 1);
}

void bh__forward_local_reply(bh_client_t *c, int err, bool close)
{
    local_reply(c, err, close);
}

/* The SQL exchange queued its whole reply: end now if the request was read, else once its body
 * is (bh__forward_request_done). */
void bh__forward_finish(bh_client_t *c)
{
    if (c->ex.req_done || c->close_after)
        finish(c, false);
    else if (c->paused)
        bh__client_resume(c);
}

/* ---- attempts ------------------------------------------------------------------------------ */

static void start_attempt(bh_client_t *c);

/* What a failure cause means for the retry policy. */
static bh_attempt_t classify(const bh_exchange_t *ex, int err)
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
    if (ex->resp_started)
        a.safety = BH_SAFETY_PARTIAL;
    return a;
}

/* An attempt's outcome counts for its endpoint (outlier detection)... */
static void record_attempt(bh_exchange_t *ex, const bh_attempt_t *a, uint64_t now)
{
    bh_counter_add(&ex->up_cells->attempts[a->outcome], 1);
    if (a->outcome == BH_OUTCOME_LOCAL || a->outcome == BH_OUTCOME_TOTAL_TIMEOUT)
        return; /* not the endpoint's doing */
    bool failed = bh_retry_counts_as_failure(ex->up->conf->breaker.count, a);
    if (bh_outlier_record(ex->up->shared->outlier, ex->ep, failed, now))
        bh_counter_add(&ex->up_cells->ejections, 1);
}

/* ...and the request's final outcome for the upstream (the breaker). Counting attempts would let
 * one dead endpoint of three open the whole upstream: its in-flight requests fail together, yet
 * each is retried elsewhere and succeeds; the outlier detector is what takes that endpoint out. */
static void record_request(bh_exchange_t *ex, const bh_attempt_t *a, uint64_t now)
{
    bh_upstream_shared_t *sh = ex->up->shared;
    if (a->outcome == BH_OUTCOME_LOCAL || a->outcome == BH_OUTCOME_TOTAL_TIMEOUT) {
        bh_breaker_cancel(&sh->breaker, &ex->ticket); /* not the upstream's doing */
        return;
    }
    bool failed = bh_retry_counts_as_failure(ex->up->conf->breaker.count, a);
    bh_breaker_record(&sh->breaker, &ex->ticket, failed, now, ex->up->env->rng);
}

/* Schedules another attempt when everything allows it: the policy (outcome, safety, attempts,
 * replayable body), a backoff that fits in the deadline, and the retry budget (counted now, when
 * the retry is scheduled). retry_after_ms: the upstream's Retry-After, 0 when none. */
static bool schedule_retry(bh_client_t *c, const bh_attempt_t *a, uint64_t retry_after_ms)
{
    bh_exchange_t *ex = &c->ex;
    const bh_conf_retry_t *policy = &ex->route->retry;
    uint64_t now = now_of(c);
    bh_retry_request_t req = {
        .method = ex->method_bit,
        .idempotency_key = ex->idempotency_key,
        .body_replayable = ex->req_body_bytes == 0 || ex->replayable,
    };
    if (bh_retry_decide(policy, ex->attempts, a, &req) != BH_RETRY_YES)
        return false;
    /* An open breaker (maybe opened by this very failure) would refuse the retry: keep the
     * failure, so that an upstream 5xx reaches the client as it was. */
    if (bh_breaker_state(&ex->up->shared->breaker) == BH_BREAKER_OPEN)
        return false;
    uint64_t delay = bh_backoff_delay(policy, ex->attempts, retry_after_ms,
                                      bh_deadline_remaining(ex->deadline_ms, now), c->w->env.rng);
    if (delay == BH_BACKOFF_GIVE_UP || !bh_backoff_fits(delay, now, ex->deadline_ms))
        return false;
    if (!bh_budget_try_acquire_retry(&ex->up->shared->budget, now)) {
        bh_counter_add(&ex->up_cells->budget_exhausted, 1);
        return false;
    }
    bh_counter_add(&ex->up_cells->retries, 1);
    ex->failed_ep = ex->ep;
    ex->phase = BH_UP_BACKOFF;
    ex->retry_at_ms = now + delay;
    bh__client_rearm_timer(c);
    return true;
}

/* The current attempt failed with err (before any response byte reached the client, or after:
 * then only the connection can be cut). */
static void attempt_failed(bh_client_t *c, int err)
{
    bh_exchange_t *ex = &c->ex;
    uint64_t now = now_of(c);
    bh_attempt_t a = classify(ex, err);
    bh_log_debug("client %s: upstream %s attempt %u: %s", c->ip,
                 ex->up != NULL ? ex->up->conf->name : "-", ex->attempts, bh_strerror(err));
    drop_attempt(ex, false);
    ex->last_err = err;
    if (ex->up != NULL)
        record_attempt(ex, &a, now);
    if (a.safety == BH_SAFETY_PARTIAL) {
        bh__client_close(c); /* the client already has part of a response */
        return;
    }
    if (ex->up != NULL && schedule_retry(c, &a, 0))
        return;
    if (ex->up != NULL)
        record_request(ex, &a, now);
    local_reply(c, err, !ex->req_done);
}

static void up_fail(bh_client_t *c, int err)
{
    attempt_failed(c, err);
}

/* ---- body framing ------------------------------------------------------------------------- */

static int emit_body(bh_outq_t *q, enum bh_framing f, bh_buf_t *b, const char *at, size_t len)
{
    if (f != BH_FRAME_CHUNKED)
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

static int emit_end(bh_outq_t *q, enum bh_framing f)
{
    return f == BH_FRAME_CHUNKED ? bh_outq_copy(q, "0\r\n\r\n", 5) : 0;
}

/* ---- response parsing --------------------------------------------------------------------- */

static int rp_on_headers_complete(llhttp_t *p)
{
    bh_exchange_t *ex = rp_exchange(p);
    if (ex->is_head)
        p->flags |= F_SKIPBODY; /* what returning 1 would do; we pause instead */
    p->data = (void *)(uintptr_t)RP_PAUSE_HEAD;
    return HPE_PAUSED;
}

static int rp_on_body(llhttp_t *p, const char *at, size_t len)
{
    bh_exchange_t *ex = rp_exchange(p);
    bh_client_t *c = ex_client(ex);
    return emit_body(&c->out, ex->resp_framing, ex->uc->rbuf, at, len) < 0 ? HPE_USER : 0;
}

static int rp_on_message_complete(llhttp_t *p)
{
    p->data = (void *)(uintptr_t)RP_PAUSE_MESSAGE;
    return HPE_PAUSED;
}

void bh__forward_settings(llhttp_settings_t *s)
{
    llhttp_settings_init(s);
    s->on_headers_complete = rp_on_headers_complete;
    s->on_body = rp_on_body;
    s->on_message_complete = rp_on_message_complete;
}

static bool client_is_http11(bh_client_t *c)
{
    return llhttp_get_http_major(&c->parser) == 1 && llhttp_get_http_minor(&c->parser) >= 1;
}

static int write_response_head(bh_client_t *c, bh_fwd_resp_t *resp, const bh_hdr_t *hdrs,
                               size_t n)
{
    bh_buf_t *b = bh_buf_get(&c->w->bufs);
    if (b == NULL)
        return BH_ENOMEM;
    bh_wbuf_t w = {b->data, 0, b->cap, false};
    int rc = bh_http_write_response(&w, resp, hdrs, n) ? bh_outq_slice(&c->out, b, b->data, w.n)
                                                        : BH_EUPSTREAM_HEAD_SIZE;
    bh_buf_unref(b);
    return rc;
}

static void start_tunnel(bh_client_t *c);

/* The response head is complete at uc->rpos. Returns < 0 when the exchange failed. */
static int handle_response_head(bh_client_t *c)
{
    bh_exchange_t *ex = &c->ex;
    bh_upconn_t *uc = ex->uc;
    int status = llhttp_get_status_code(&ex->rp);
    bh_span_t start;
    bh_hdr_t *hdrs = c->w->hdrs;
    int n = bh_http_split(uc->rbuf->data + ex->resp_head_start, uc->rpos - ex->resp_head_start,
                          &start, hdrs, c->w->max_hdrs);
    if (n < 0)
        return n == -2 ? BH_EUPSTREAM_HEAD_SIZE : BH_EUPSTREAM_PROTOCOL;
    /* "HTTP/1.1 200 OK": the reason phrase starts after the second space */
    bh_span_t reason = {"", 0};
    const char *sp = memchr(start.p, ' ', start.n);
    if (sp != NULL) {
        const char *sp2 = memchr(sp + 1, ' ', start.n - (size_t)(sp + 1 - start.p));
        if (sp2 != NULL)
            reason = (bh_span_t){sp2 + 1, start.n - (size_t)(sp2 + 1 - start.p)};
    }
    for (int i = 0; i < n; i++) {
        if (bh_span_ieq(hdrs[i].name, "keep-alive")) {
            long t = bh_http_keepalive_timeout(hdrs[i].value);
            if (t > 0)
                uc->keepalive_ms = (uint64_t)t * 1000;
        }
    }
    bh_fwd_resp_t resp = {.status = status, .reason = reason};
    if (ex->first_byte_ms == 0)
        ex->first_byte_ms = now_of(c);
    if (status < 200 && status != 101) {
        /* interim response: relayed to HTTP/1.1 clients, then the final one follows */
        if (client_is_http11(c))
            return write_response_head(c, &resp, hdrs, (size_t)n);
        return 0;
    }
    if (status == 101) {
        if (!ex->upgrade)
            return BH_EUPSTREAM_PROTOCOL;
        resp.upgrade = true;
        int rc = write_response_head(c, &resp, hdrs, (size_t)n);
        if (rc == 0) {
            ex->resp_started = true;
            ex->status = status;
            start_tunnel(c);
        }
        return rc;
    }
    /* A final response: the attempt has an outcome. A 5xx that the policy would retry is held
     * back (the connection is dropped with it) and never reaches the client; so is a status the
     * policy lists as retriable (retriable_status, e.g. 429). */
    bh_attempt_t a = {.outcome = bh_outcome_for_status(status), .status = status,
                      .safety = BH_SAFETY_SENT_NO_RESPONSE};
    uint64_t retry_after_ms = 0;
    for (int i = 0; i < n; i++)
        if (bh_span_ieq(hdrs[i].name, "retry-after"))
            bh_backoff_parse_retry_after(hdrs[i].value.p, hdrs[i].value.n, &retry_after_ms);
    uint64_t now = now_of(c);
    record_attempt(ex, &a, now);
    if (status >= 400 && !ex->upgrade && schedule_retry(c, &a, retry_after_ms)) {
        drop_attempt(ex, false);
        return BH_RETRY_SCHEDULED;
    }
    record_request(ex, &a, now);
    bool http11 = client_is_http11(c);
    if (ex->is_head || status == 204 || status == 304)
        ex->resp_framing = BH_FRAME_NONE;
    else if (ex->rp.flags & F_CHUNKED)
        ex->resp_framing = http11 ? BH_FRAME_CHUNKED : BH_FRAME_CLOSE;
    else if (ex->rp.flags & F_CONTENT_LENGTH)
        ex->resp_framing = BH_FRAME_LENGTH;
    else
        ex->resp_framing = http11 ? BH_FRAME_CHUNKED : BH_FRAME_CLOSE;
    bool keepalive = llhttp_should_keep_alive(&c->parser) && !c->w->draining &&
                     ex->resp_framing != BH_FRAME_CLOSE;
    if (!keepalive)
        c->close_after = true;
    resp.close = c->close_after;
    resp.keepalive_10 = !http11 && keepalive;
    resp.chunked = ex->resp_framing == BH_FRAME_CHUNKED;
    int rc = write_response_head(c, &resp, hdrs, (size_t)n);
    if (rc < 0)
        return rc;
    ex->resp_started = true;
    ex->status = status;
    ex->phase = BH_UP_RECEIVING;
    bh__client_rearm_timer(c); /* the idle timeout applies from now */
    return 0;
}

static void response_done(bh_client_t *c)
{
    bh_exchange_t *ex = &c->ex;
    bh_upconn_t *uc = ex->uc;
    ex->resp_done = true;
    if (emit_end(&c->out, ex->resp_framing) < 0 || bh_outq_flush(&c->out) < 0) {
        bh__client_close(c);
        return;
    }
    bool reusable = ex->req_done && llhttp_should_keep_alive(&ex->rp) && uc->rpos == uc->rlen;
    if (!ex->req_done)
        c->close_after = true; /* answered before the request ended: the rest is not read */
    finish(c, reusable);
}

/* Parses what the upstream sent. */
static void up_parse(bh_client_t *c)
{
    bh_exchange_t *ex = &c->ex;
    bh_upconn_t *uc = ex->uc;
    bool kick = false; /* after a head, a bodyless message completes without another byte */
    while (uc->rbuf != NULL && (uc->rpos < uc->rlen || kick) && ex->phase != BH_UP_TUNNEL) {
        kick = false;
        const char *base = uc->rbuf->data + uc->rpos;
        ex->rp.data = (void *)(uintptr_t)RP_PAUSE_NONE;
        llhttp_errno_t e = llhttp_execute(&ex->rp, base, uc->rlen - uc->rpos);
        if (e == HPE_OK) {
            uc->rpos = uc->rlen;
            break;
        }
        if (e != HPE_PAUSED && e != HPE_PAUSED_UPGRADE) {
            bh_log_debug("upstream %s: bad response: %s (%s)", uc->ep->addr->text,
                         llhttp_errno_name(e), llhttp_get_error_reason(&ex->rp));
            up_fail(c, BH_EUPSTREAM_PROTOCOL);
            return;
        }
        uc->rpos += (uint32_t)(llhttp_get_error_pos(&ex->rp) - base);
        uintptr_t reason = (uintptr_t)ex->rp.data;
        if (e == HPE_PAUSED)
            llhttp_resume(&ex->rp);
        if (reason == RP_PAUSE_HEAD) {
            int rc = handle_response_head(c);
            if (rc < 0) {
                up_fail(c, rc);
                return;
            }
            if (rc == BH_RETRY_SCHEDULED)
                return;
            kick = true;
        } else if (reason == RP_PAUSE_MESSAGE) {
            if (ex->resp_started) {
                response_done(c);
                return;
            }
            ex->resp_head_start = uc->rpos; /* after an interim 1xx: the next head starts here */
        }
    }
    if (ex->phase == BH_UP_TUNNEL)
        return;
    if (!ex->resp_started && uc->rbuf != NULL && uc->rlen == uc->rbuf->cap) {
        up_fail(c, BH_EUPSTREAM_HEAD_SIZE);
        return;
    }
    if (bh_outq_flush(&c->out) < 0) {
        bh__client_close(c);
        return;
    }
    if (ex->resp_started && uc->rbuf != NULL && uc->rpos == uc->rlen) {
        bh_buf_unref(uc->rbuf); /* nothing pending: queued writes hold what they need */
        uc->rbuf = NULL;
        uc->rlen = uc->rpos = 0;
        ex->resp_head_start = 0;
    }
    if (bh_outq_pending(&c->out) > BH_WRITE_HIGH_WATER)
        bh_upconn_read_stop(uc); /* resumed by bh__forward_client_drained */
}

static void on_up_read(bh_upconn_t *uc, ssize_t nread)
{
    bh_client_t *c = uc->owner;
    bh_exchange_t *ex = &c->ex;
    ex->up_activity_ms = now_of(c);
    if (nread > 0) {
        if (ex->phase == BH_UP_TUNNEL) {
            int rc = bh_outq_slice(&c->out, uc->rbuf, uc->rbuf->data + uc->rpos,
                                   uc->rlen - uc->rpos);
            uc->rpos = uc->rlen;
            if (rc < 0 || bh_outq_flush(&c->out) < 0) {
                bh__client_close(c);
                return;
            }
            if (bh_outq_pending(&c->out) > BH_WRITE_HIGH_WATER)
                bh_upconn_read_stop(uc);
            return;
        }
        up_parse(c);
        return;
    }
    if (ex->phase == BH_UP_TUNNEL) {
        c->close_after = true;
        finish(c, false);
        return;
    }
    if (nread == UV_EOF && ex->resp_started && ex->resp_framing == BH_FRAME_CLOSE) {
        ex->rp.data = (void *)(uintptr_t)RP_PAUSE_NONE;
        if (llhttp_finish(&ex->rp) == HPE_OK || (uintptr_t)ex->rp.data == RP_PAUSE_MESSAGE) {
            response_done(c);
            return;
        }
    }
    up_fail(c, ex->resp_started || uc->rlen == 0 ? BH_EUPSTREAM_RESET : BH_EUPSTREAM_PROTOCOL);
}

static void on_up_out(bh_outq_t *q, int status)
{
    bh_upconn_t *uc = bh_container_of(q, bh_upconn_t, out);
    bh_client_t *c = uc->owner;
    if (c == NULL)
        return;
    if (status < 0) {
        up_fail(c, BH_EUPSTREAM_WRITE);
        return;
    }
    c->ex.up_activity_ms = now_of(c);
    bh__client_update_reading(c); /* backpressure released */
}

/* ---- tunnel ------------------------------------------------------------------------------- */

static void start_tunnel(bh_client_t *c)
{
    bh_exchange_t *ex = &c->ex;
    ex->phase = BH_UP_TUNNEL;
    c->state = BH_CS_TUNNEL;
    c->paused = false; /* no more HTTP on this connection: bytes flow raw */
    c->close_after = true;
    bh_upconn_t *uc = ex->uc;
    if (uc->rbuf != NULL && uc->rpos < uc->rlen) {
        if (bh_outq_slice(&c->out, uc->rbuf, uc->rbuf->data + uc->rpos, uc->rlen - uc->rpos) < 0) {
            bh__client_close(c);
            return;
        }
        uc->rpos = uc->rlen;
    }
    if (bh_outq_flush(&c->out) < 0) {
        bh__client_close(c);
        return;
    }
    bh__client_rearm_timer(c);
    bh__forward_tunnel_data(c);
}

void bh__forward_tunnel_data(bh_client_t *c)
{
    bh_upconn_t *uc = c->ex.uc;
    if (uc == NULL || c->rbuf == NULL || c->rpos == c->rlen)
        return;
    int rc = bh_outq_slice(&uc->out, c->rbuf, c->rbuf->data + c->rpos, c->rlen - c->rpos);
    c->rpos = c->rlen;
    if (rc < 0 || bh_outq_flush(&uc->out) < 0)
        bh__client_close(c);
    else
        c->ex.up_activity_ms = now_of(c);
}

/* ---- request ------------------------------------------------------------------------------ */

/* Queues the request head (with this attempt's Bulkhead-Deadline) and, on a retry, the body
 * bytes received so far. */
static int send_request(bh_client_t *c, bh_upconn_t *uc)
{
    bh_exchange_t *ex = &c->ex;
    int rc = bh_outq_slice(&uc->out, ex->head, ex->head->data, ex->head_len);
    if (rc < 0)
        return rc;
    char tail[64];
    bh_wbuf_t w = {tail, 0, sizeof(tail), false};
    if (ex->deadline_ms != BH_DEADLINE_NONE) {
        bh_wbuf_str(&w, "Bulkhead-Deadline: ");
        bh_wbuf_u64(&w, bh_deadline_remaining(ex->deadline_ms, now_of(c)));
        bh_wbuf_put(&w, "\r\n", 2);
    }
    bh_wbuf_put(&w, "\r\n", 2);
    rc = bh_outq_copy(&uc->out, tail, w.n);
    for (uint32_t i = 0; rc == 0 && i < ex->n_replay; i++)
        rc = emit_body(&uc->out, ex->req_framing, ex->replay[i].buf, ex->replay[i].p,
                       ex->replay[i].n);
    if (rc == 0 && ex->req_done)
        rc = emit_end(&uc->out, ex->req_framing);
    return rc == 0 ? bh_outq_flush(&uc->out) : rc;
}

static void attach(bh_client_t *c, bh_upconn_t *uc)
{
    bh_exchange_t *ex = &c->ex;
    ex->uc = uc;
    ex->waiting = false;
    bh_hist_observe(&ex->up_cells->wait, (now_of(c) - ex->wait_start_ms) * 1000);
    uc->out.cb = on_up_out;
    llhttp_init(&ex->rp, HTTP_RESPONSE, &c->w->resp_settings);
    ex->resp_head_start = 0;
    if (bh_upconn_read_start(uc, on_up_read, c) < 0) {
        up_fail(c, BH_EUPSTREAM_RESET);
        return;
    }
    if (send_request(c, uc) < 0) {
        up_fail(c, BH_EUPSTREAM_WRITE);
        return;
    }
    if (ex->expect_continue && !ex->req_done && !ex->continue_sent) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        ex->continue_sent = true;
        if (bh_outq_copy(&c->out, cont, sizeof(cont) - 1) < 0 || bh_outq_flush(&c->out) < 0) {
            bh__client_close(c);
            return;
        }
    }
    ex->phase = ex->req_done ? BH_UP_FIRST_BYTE : BH_UP_SENDING;
    ex->up_activity_ms = now_of(c);
    if (ex->attached_ms == 0)
        ex->attached_ms = ex->up_activity_ms;
    bh__client_rearm_timer(c);
    if (c->paused && !ex->req_done)
        bh__client_resume(c); /* paused at the head: the body may flow now */
}

static void on_acquired(bh_pool_waiter_t *w, bh_pool_conn_t *pc, int status)
{
    bh_client_t *c = w->data;
    bh_exchange_t *ex = &c->ex;
    ex->waiting = false;
    if (status < 0) {
        if (status == BH_EPOOL_TIMEOUT && now_of(c) >= ex->deadline_ms)
            status = BH_ETOTAL_TIMEOUT;
        up_fail(c, status);
        return;
    }
    attach(c, bh_upconn_of(pc));
}

/* One attempt: breaker, endpoint, pool. */
static void start_attempt(bh_client_t *c)
{
    bh_exchange_t *ex = &c->ex;
    bh_upstream_t *up = ex->up;
    uint64_t now = now_of(c);
    if (ex->attempts > 0 && ex->req_body_bytes > 0 && !ex->replayable) {
        local_reply(c, BH_EUPSTREAM_RESET, true); /* the body went on; it cannot be re-sent */
        return;
    }
    ex->attempts++;
    ex->phase = BH_UP_WAITING;
    uint64_t retry_after_ms = 0;
    if (ex->attempts == 1 && bh_breaker_allow(&up->shared->breaker, now, up->env->rng,
                                              &ex->ticket, &retry_after_ms) < 0) {
        local_reply_after(c, BH_EBREAKER_OPEN, !ex->req_done, (retry_after_ms + 999) / 1000);
        return;
    }
    ex->ep = bh_upstream_pick(up, ex->failed_ep);
    ex->picked = true;
    ex->wait_start_ms = now;
    bh_upconn_t *uc = NULL;
    int rc = bh_upstream_acquire(up, ex->ep, &ex->waiter, ex->deadline_ms, &uc);
    if (rc == BH_POOL_QUEUED) {
        ex->waiting = true;
        bh__client_rearm_timer(c);
        return;
    }
    if (rc < 0) {
        up_fail(c, rc);
        return;
    }
    attach(c, uc);
}

/* What the request head says besides its start line. */
typedef struct req_fields {
    bh_span_t host;
    int nhost;
    int n_chunked;                  /* "chunked" tokens over every Transfer-Encoding line */
    bool other_coding;              /* a transfer coding other than chunked */
    bool conn_upgrade;              /* Connection (not Proxy-Connection) lists "upgrade" */
    bool h2c;                       /* Upgrade offers h2c */
    uint64_t client_timeout_ms;     /* Bulkhead-Timeout; 0: none */
} req_fields_t;

static void read_fields(bh_client_t *c, const bh_hdr_t *hdrs, int n, req_fields_t *f)
{
    bh_exchange_t *ex = &c->ex;
    *f = (req_fields_t){.host = {"", 0}};
    for (int i = 0; i < n; i++) {
        bh_span_t name = hdrs[i].name, value = hdrs[i].value;
        if (bh_span_ieq(name, "host")) {
            f->host = value;
            f->nhost++;
        } else if (bh_span_ieq(name, "transfer-encoding")) {
            const char *p = value.p, *end = value.p + value.n;
            while (p <= end) {
                const char *comma = memchr(p, ',', (size_t)(end - p));
                const char *e = comma != NULL ? comma : end;
                bh_span_t tok = {p, (size_t)(e - p)};
                while (tok.n > 0 && (tok.p[0] == ' ' || tok.p[0] == '\t'))
                    tok.p++, tok.n--;
                while (tok.n > 0 && (tok.p[tok.n - 1] == ' ' || tok.p[tok.n - 1] == '\t'))
                    tok.n--;
                if (bh_span_ieq(tok, "chunked"))
                    f->n_chunked++;
                else if (tok.n > 0)
                    f->other_coding = true;
                p = e + 1;
            }
        } else if (bh_span_ieq(name, "connection")) {
            f->conn_upgrade = f->conn_upgrade || bh_http_has_token(value, "upgrade");
        } else if (bh_span_ieq(name, "upgrade")) {
            f->h2c = f->h2c || bh_http_has_token(value, "h2c");
        } else if (bh_span_ieq(name, "expect") && bh_span_ieq(value, "100-continue")) {
            ex->expect_continue = client_is_http11(c);
        } else if (bh_span_ieq(name, "idempotency-key")) {
            ex->idempotency_key = true;
        } else if (bh_span_ieq(name, "bulkhead-timeout")) {
            if (bh_deadline_parse_ms(value.p, value.n, &f->client_timeout_ms) < 0)
                f->client_timeout_ms = 0;
        }
    }
}

/* The checks that keep one request from being read two ways (docs/request-handling.md).
 * Returns 0 or the error to answer with (the connection is then closed). */
static int check_request(bh_client_t *c, const req_fields_t *f, const bh_target_t *t)
{
    uint8_t m = llhttp_get_method(&c->parser);
    bool http11 = client_is_http11(c);
    if (llhttp_get_http_major(&c->parser) != 1 || m == HTTP_CONNECT)
        return BH_EBAD_REQUEST;
    if (f->nhost > 1 || (f->nhost == 0 && http11))
        return BH_EBAD_REQUEST; /* RFC 9112 3.2: exactly one Host in HTTP/1.1 */
    if (t->asterisk && m != HTTP_OPTIONS)
        return BH_EBAD_TARGET;
    if (c->parser.flags & F_TRANSFER_ENCODING) {
        if (!http11)
            return BH_EBAD_FRAMING; /* RFC 9112 6.1: HTTP/1.0 with Transfer-Encoding is faulty */
        if (f->n_chunked > 1)
            return BH_EBAD_FRAMING; /* chunked applied twice */
        if (f->other_coding)
            return BH_ETE_UNSUPPORTED; /* RFC 9112 6.1: 501; passing it on would be re-framed */
    }
    return 0;
}

/* The access log's "METHOD target", at most 1 KiB. */
static char *log_target(bh_span_t method, bh_span_t target)
{
    size_t tn = target.n < 1024 ? target.n : 1024;
    char *s = bh_malloc(method.n + tn + 2);
    if (s != NULL) {
        memcpy(s, method.p, method.n);
        s[method.n] = ' ';
        memcpy(s + method.n + 1, target.p, tn);
        s[method.n + 1 + tn] = '\0';
    }
    return s;
}

static void begin_exchange(bh_client_t *c)
{
    bh_worker_t *w = c->w;
    bh_exchange_t *ex = &c->ex;
    memset(ex, 0, sizeof(*ex));
    bh_list_init(&ex->waiter.link);
    ex->waiter.cb = on_acquired;
    ex->waiter.data = c;
    ex->active = true;
    ex->gen = w->gen;
    ex->gen->refs++;
    ex->route_cells = bh_mentry_cells(w->srv->metrics.no_route, w->id);
    ex->start_ms = now_of(c);
    ex->start_ns = uv_hrtime();
    ex->body_limit = w->conf->limits.max_body_bytes;
    ex->out_at_start = c->out.total;
    ex->deadline_ms = BH_DEADLINE_NONE;
}

/* Writes the head sent upstream into ex->head. Returns 0 or the error to answer with. */
static int build_head(bh_client_t *c, bh_span_t method, const bh_target_t *t, int n)
{
    bh_exchange_t *ex = &c->ex;
    bh_fwd_req_t req = {
        .method = method,
        .target = t->asterisk ? (bh_span_t){"*", 1} : t->path,
        .host = t->authority.n > 0 ? t->authority : (bh_span_t){NULL, 0},
        .client_ip = c->ip,
        .proto = "http",
        .chunked = ex->req_framing == BH_FRAME_CHUNKED,
        .upgrade = ex->upgrade,
        .drop_expect = ex->expect_continue,
    };
    if (ex->route->strip_prefix && !t->asterisk) {
        size_t plen = strlen(ex->route->path_prefix);
        req.target = (bh_span_t){t->path.p + plen, t->path.n - plen};
        req.target_slash = req.target.n == 0 || req.target.p[0] != '/';
    }
    ex->head = bh_buf_get(&c->w->bufs);
    if (ex->head == NULL)
        return BH_ENOMEM;
    bh_wbuf_t wb = {ex->head->data, 0, ex->head->cap, false};
    if (!bh_http_write_request(&wb, &req, c->w->hdrs, (size_t)n))
        return BH_EHEAD_TOO_LARGE;
    ex->head_len = (uint32_t)wb.n - 2; /* the blank line goes after Bulkhead-Deadline */
    return 0;
}

void bh__forward_start(bh_client_t *c, const char *head, size_t head_len)
{
    bh_worker_t *w = c->w;
    bh_exchange_t *ex = &c->ex;
    begin_exchange(c);

    bh_span_t start;
    int n = bh_http_split(head, head_len, &start, w->hdrs, w->max_hdrs);
    if (n < 0) {
        local_reply(c, n == -2 ? BH_EHEAD_TOO_LARGE : BH_EBAD_REQUEST, true);
        return;
    }
    /* The start line as llhttp read it; never split again here. */
    uint8_t m = llhttp_get_method(&c->parser);
    const char *mname = llhttp_method_name(m);
    bh_span_t method = {mname, strlen(mname)};
    bh_span_t target = {head + c->url_off, c->url_len};
    if (w->alog != NULL)
        ex->log_target = log_target(method, target);
    req_fields_t f;
    read_fields(c, w->hdrs, n, &f);
    bh_target_t t;
    int err = bh_http_parse_target(target, &t) < 0 ? BH_EBAD_TARGET : check_request(c, &f, &t);
    if (err < 0) {
        local_reply(c, err, true);
        return;
    }
    ex->is_head = m == HTTP_HEAD;
    /* An upgrade needs the request's own Connection: upgrade (llhttp also reads Proxy-Connection),
     * and never to h2c: a cleartext HTTP/2 tunnel would let the client send requests that no
     * route of bulkhead's ever sees (h2c smuggling); the Upgrade field is then dropped. */
    ex->upgrade = llhttp_get_upgrade(&c->parser) != 0 && f.conn_upgrade && !f.h2c;
    if (c->parser.flags & F_CHUNKED)
        ex->req_framing = BH_FRAME_CHUNKED;
    else if ((c->parser.flags & F_CONTENT_LENGTH) && c->parser.content_length > 0)
        ex->req_framing = BH_FRAME_LENGTH;
    else
        ex->req_framing = BH_FRAME_NONE;

    /* RFC 9112 3.2.2: an absolute-form target's authority wins over Host. */
    bh_span_t host = t.authority.n > 0 ? t.authority : f.host;
    bh_span_t path = t.asterisk ? (bh_span_t){"/", 1} : t.path;
    uint32_t mbit = bh_method_bit(method.p, method.n);
    const bh_gen_t *gen = ex->gen;
    const bh_conf_route_t *route = bh_route_match(gen->conf, host, path, mbit ? mbit : BH_M_OTHER);
    if (route == NULL) {
        local_reply(c, BH_ENO_ROUTE, false);
        return;
    }
    ex->route = route;
    ex->route_cells = bh_mentry_cells(gen->snap->route_m[route - gen->conf->routes], w->id);
    if (route->database != NULL) {
        ex->body_limit = UINT64_MAX; /* the SQL exchange enforces max_request_bytes itself */
        bh__sql_start(c, head, head_len, method, path, f.client_timeout_ms);
        return;
    }
    if (ex->req_framing == BH_FRAME_LENGTH && c->parser.content_length > ex->body_limit) {
        local_reply(c, BH_EBODY_TOO_LARGE, true);
        return;
    }
    ex->up = &gen->upstreams[route->upstream_index]->up;
    ex->up_cells = bh_mentry_cells(gen->snap->up_m[route->upstream_index], w->id);
    if ((err = build_head(c, method, &t, n)) < 0) {
        local_reply(c, err, true);
        return;
    }
    uint64_t now = now_of(c);
    ex->deadline_ms = bh_deadline_for_request(now, route->timeouts.total_ms, f.client_timeout_ms);
    ex->method_bit = mbit ? mbit : BH_M_OTHER;
    ex->failed_ep = BH_BALANCE_NONE;
    ex->replayable = true;

    bh_budget_on_request(&ex->up->shared->budget, now);
    start_attempt(c);
}

/* Keeps a body slice for a possible retry, while the body fits retry.max_replay_bytes. */
static void keep_for_replay(bh_client_t *c, const char *at, size_t len)
{
    bh_exchange_t *ex = &c->ex;
    if (!ex->replayable)
        return;
    if (ex->route->retry.attempts <= 1 || ex->replay_bytes + len > ex->route->retry.max_replay_bytes ||
        ex->n_replay == BH_REPLAY_SLICES) {
        drop_replay(ex);
        return;
    }
    if (ex->replay == NULL && (ex->replay = bh_malloc(BH_REPLAY_SLICES * sizeof(bh_replay_t))) == NULL) {
        drop_replay(ex);
        return;
    }
    ex->replay[ex->n_replay++] = (bh_replay_t){bh_buf_ref(c->rbuf), at, len};
    ex->replay_bytes += len;
}

int bh__forward_body(bh_client_t *c, const char *at, size_t len)
{
    bh_exchange_t *ex = &c->ex;
    if (ex->sql != NULL)
        return bh__sql_body(c, at, len);
    keep_for_replay(c, at, len);
    if (ex->uc == NULL)
        return 0; /* between attempts: the next one sends what replay[] holds */
    return emit_body(&ex->uc->out, ex->req_framing, c->rbuf, at, len);
}

int bh__forward_request_done(bh_client_t *c)
{
    bh_exchange_t *ex = &c->ex;
    ex->req_done = true;
    if (ex->sql != NULL) {
        bh__sql_request_done(c);
        if (ex->active && ex->resp_done)
            finish(c, false);
        return 0;
    }
    if (ex->uc != NULL) {
        if (emit_end(&ex->uc->out, ex->req_framing) < 0)
            return BH_ENOMEM;
        if (ex->phase == BH_UP_SENDING) {
            ex->phase = BH_UP_FIRST_BYTE;
            ex->up_activity_ms = now_of(c);
        }
    }
    if (ex->active && ex->resp_done && ex->uc == NULL) {
        finish(c, false); /* a local reply whose request body has now been read */
        return 0;
    }
    bh__client_rearm_timer(c);
    return 0;
}

void bh__forward_flush(bh_client_t *c)
{
    bh_upconn_t *uc = c->ex.uc;
    if (uc != NULL && bh_outq_flush(&uc->out) < 0)
        up_fail(c, BH_EUPSTREAM_WRITE);
}

void bh__forward_client_drained(bh_client_t *c)
{
    bh_exchange_t *ex = &c->ex;
    if (ex->uc == NULL || !ex->active || uv_is_active((uv_handle_t *)&ex->uc->tcp))
        return;
    if (bh_upconn_read_start(ex->uc, on_up_read, c) < 0) {
        up_fail(c, BH_EUPSTREAM_RESET);
        return;
    }
    if (ex->phase != BH_UP_TUNNEL)
        up_parse(c);
}

uint64_t bh__forward_next_timeout(bh_client_t *c)
{
    bh_exchange_t *ex = &c->ex;
    if (ex->active && ex->sql != NULL)
        return bh__sql_next_timeout(c);
    if (!ex->active || ex->local)
        return BH_TIME_NEVER;
    uint64_t due = ex->phase == BH_UP_TUNNEL ? BH_TIME_NEVER : ex->deadline_ms;
    const bh_conf_timeouts_t *t = &ex->route->timeouts;
    uint64_t phase_due = BH_TIME_NEVER;
    switch (ex->phase) {
    case BH_UP_FIRST_BYTE:
        phase_due = ex->up_activity_ms + t->first_byte_ms;
        break;
    case BH_UP_SENDING:
    case BH_UP_RECEIVING:
    case BH_UP_TUNNEL:
        phase_due = ex->up_activity_ms + t->idle_ms;
        break;
    case BH_UP_BACKOFF:
        phase_due = ex->retry_at_ms;
        break;
    default:
        break;
    }
    return phase_due < due ? phase_due : due;
}

void bh__forward_deadline(bh_client_t *c, uint64_t now)
{
    bh_exchange_t *ex = &c->ex;
    if (ex->active && ex->sql != NULL) {
        bh__sql_deadline(c, now);
        return;
    }
    if (!ex->active || ex->local)
        return;
    if (ex->phase != BH_UP_TUNNEL && now >= ex->deadline_ms) {
        up_fail(c, BH_ETOTAL_TIMEOUT);
        return;
    }
    const bh_conf_timeouts_t *t = &ex->route->timeouts;
    if (ex->phase == BH_UP_BACKOFF && now >= ex->retry_at_ms)
        start_attempt(c);
    else if (ex->phase == BH_UP_FIRST_BYTE && now >= ex->up_activity_ms + t->first_byte_ms)
        up_fail(c, BH_EFIRST_BYTE_TIMEOUT);
    else if ((ex->phase == BH_UP_SENDING || ex->phase == BH_UP_RECEIVING ||
              ex->phase == BH_UP_TUNNEL) &&
             now >= ex->up_activity_ms + t->idle_ms)
        up_fail(c, BH_EIDLE_TIMEOUT);
}
