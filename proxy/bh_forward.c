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
 * whether to go on. The request side lives here; see bh_forward_int.h for the other two files. */
#include <string.h>
#include "bh_alloc.h"
#include "bh_backoff.h"
#include "bh_deadline.h"
#include "bh_forward.h"
#include "bh_forward_int.h"
#include "bh_log.h"
#include "bh_retry.h"

static void fwd_release(bh_exchange_t *ex, bool reusable)
{
    bh_fwd_t *f = fwd_of(ex);
    bh__fwd_drop_attempt(f, reusable);
    if (f->up != NULL) {
        bh_guard_t g = guard_of(f);
        bh_call_abandon(&g, &f->call); /* no-op once recorded */
    }
    bh_buf_unref(f->head);
    f->head = NULL;
    bh__fwd_drop_replay(f);
    f->phase = PH_NONE;
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
        rc = bh__fwd_emit_body(&uc->out, f->req_framing, f->replay[i].buf, f->replay[i].p,
                               f->replay[i].n);
    if (rc == 0 && ex->req_done)
        rc = bh__fwd_emit_end(&uc->out, f->req_framing);
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
    if (bh__fwd_response_begin(f, uc) < 0) {
        bh__fwd_attempt_failed(f, BH_EUPSTREAM_RESET);
        return;
    }
    if (send_request(f, uc) < 0) {
        bh__fwd_attempt_failed(f, BH_EUPSTREAM_WRITE);
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
        bh__fwd_attempt_failed(f, status);
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
    bh_guard_t g = guard_of(f);
    if (ex->attempts == 0 && bh_call_begin(&g, &f->call, now, up->env->rng, &retry_after_ms) < 0) {
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
        bh__fwd_attempt_failed(f, rc);
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
        .proto = conn->https ? "https" : "http",
        .cert_subject = conn->cert_subject,
        .id_name = ex->request_id[0] != '\0' ? ex->gen->conf->request_id.header : NULL,
        .id = ex->request_id,
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
        bh__fwd_drop_replay(f);
        return;
    }
    if (f->replay == NULL && (f->replay = bh_malloc(REPLAY_SLICES * sizeof(replay_t))) == NULL) {
        bh__fwd_drop_replay(f);
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
    return bh__fwd_emit_body(&f->uc->out, f->req_framing, ex->conn->rbuf, at, len);
}

static int fwd_request_done(bh_exchange_t *ex)
{
    bh_fwd_t *f = fwd_of(ex);
    if (f->uc == NULL)
        return 0;
    if (bh__fwd_emit_end(&f->uc->out, f->req_framing) < 0)
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
        bh__fwd_attempt_failed(f, BH_EUPSTREAM_WRITE);
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
        bh__fwd_attempt_failed(f, BH_ETOTAL_TIMEOUT);
        return;
    }
    const bh_conf_timeouts_t *t = &ex->route->timeouts;
    if (f->phase == PH_BACKOFF && now >= f->retry_at_ms)
        start_attempt(f);
    else if (f->phase == PH_FIRST_BYTE && now >= f->up_activity_ms + t->first_byte_ms)
        bh__fwd_attempt_failed(f, BH_EFIRST_BYTE_TIMEOUT);
    else if ((f->phase == PH_SENDING || f->phase == PH_RECEIVING || f->phase == PH_TUNNEL) &&
             !f->held && now >= f->up_activity_ms + t->idle_ms)
        bh__fwd_attempt_failed(f, BH_EIDLE_TIMEOUT);
}

const bh_handler_t bh_forward_handler = {
    .name = "upstream",
    .start = fwd_start,
    .body = fwd_body,
    .request_done = fwd_request_done,
    .flush = fwd_flush,
    .client_drained = bh__fwd_client_drained,
    .blocked = fwd_blocked,
    .next_timeout = fwd_next_timeout,
    .timeout = fwd_timeout,
    .tunnel_data = bh__fwd_tunnel_data,
    .release = fwd_release,
};
