/* The upstream handler's response side: the head parsed and rewritten (interim 1xx relayed, a
 * retriable failure held back), the body re-framed to the client, backpressure both ways, and the
 * tunnel after a 101. */
#include <string.h>
#include "bh_alloc.h"
#include "bh_backoff.h"
#include "bh_deadline.h"
#include "bh_forward_int.h"
#include "bh_log.h"
#include "bh_retry.h"

/* ---- response parsing --------------------------------------------------------------------- */

static int rp_on_headers_complete(llhttp_t *p)
{
    if (bh_http_response_is_bodiless(p->status_code, rp_fwd(p)->is_head))
        p->flags |= F_SKIPBODY; /* what returning 1 would do; we pause instead */
    p->data = (void *)(uintptr_t)RP_PAUSE_HEAD;
    return HPE_PAUSED;
}

static int rp_on_body(llhttp_t *p, const char *at, size_t len)
{
    bh_fwd_t *f = rp_fwd(p);
    return bh__fwd_emit_body(&conn_of(f)->out, f->resp_framing, f->uc->rbuf, at, len) < 0 ? HPE_USER
                                                                                          : 0;
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

enum fwd_framing bh__fwd_response_framing(const llhttp_t *rp, bool is_head, bool http11)
{
    int status = rp->status_code;
    if (is_head || status == 204 || status == 304)
        return FRAME_NONE;
    if (rp->flags & F_CHUNKED)
        return http11 ? FRAME_CHUNKED : FRAME_CLOSE;
    if (rp->flags & F_CONTENT_LENGTH)
        return FRAME_LENGTH;
    return http11 ? FRAME_CHUNKED : FRAME_CLOSE;
}

/* A final response's framing towards the client, and whether the client connection stays. */
static void choose_framing(bh_fwd_t *f, bh_fwd_resp_t *resp)
{
    bh_conn_t *conn = conn_of(f);
    bool http11 = bh_conn_http11(conn);
    f->resp_framing = bh__fwd_response_framing(&f->rp, f->is_head, http11);
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
    bh_attempt_t a = {.outcome = bh_outcome_for_status(status),
                      .status = status,
                      .safety = BH_SAFETY_SENT_NO_RESPONSE};
    uint64_t retry_after_ms = 0;
    for (int i = 0; i < n; i++)
        if (bh_span_ieq(hdrs[i].name, "retry-after"))
            bh_backoff_parse_retry_after(hdrs[i].value.p, hdrs[i].value.n, &retry_after_ms);
    uint64_t now = now_of(f);
    bh__fwd_record_attempt(f, &a, now);
    if (status >= 400 && !f->upgrade && bh__fwd_schedule_retry(f, &a, retry_after_ms)) {
        bh__fwd_drop_attempt(f, false);
        return BH_RETRY_SCHEDULED;
    }
    bh__fwd_record_request(f, &a, now);
    return 0;
}

/* The response head is complete at uc->rpos. Returns < 0 when the exchange failed. */
static int handle_response_head(bh_fwd_t *f)
{
    bh_exchange_t *ex = f->ex;
    bh_upconn_t *uc = f->uc;
    bh_worker_t *w = conn_of(f)->w;
    int status = llhttp_get_status_code(&f->rp);
    int bad = bh_http_check_response(&f->rp);
    if (bad < 0)
        return bad;
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
    bh_fwd_resp_t resp = {.status = status, .reason = bh_http_reason_phrase(start)};
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
    choose_framing(f, &resp);
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
    if (bh__fwd_emit_end(&conn->out, f->resp_framing) < 0 || bh_outq_flush(&conn->out) < 0) {
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
        bh_log_debug("upstream %s: bad response: %s (%s)", uc->ep->addr->text, llhttp_errno_name(e),
                     llhttp_get_error_reason(&f->rp));
        bh__fwd_attempt_failed(f, BH_EUPSTREAM_PROTOCOL);
        return -1;
    }
    uc->rpos += (uint32_t)(llhttp_get_error_pos(&f->rp) - base);
    uintptr_t reason = (uintptr_t)f->rp.data;
    if (e == HPE_PAUSED)
        llhttp_resume(&f->rp);
    if (reason == RP_PAUSE_HEAD) {
        int rc = handle_response_head(f);
        if (rc < 0) {
            bh__fwd_attempt_failed(f, rc);
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
 * bulkhead stopped reading, not by its own doing: its idle timeout waits (the deadline does not).
 */
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
        bh__fwd_attempt_failed(f, BH_EUPSTREAM_HEAD_SIZE);
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
    /* The upstream's body ends with its close (neither a length nor chunks): that end completes
     * it, whatever framing the client gets (chunked to an HTTP/1.1 client: the last chunk). */
    if (nread == UV_EOF && f->ex->resp_started && !(f->rp.flags & (F_CHUNKED | F_CONTENT_LENGTH))) {
        f->rp.data = (void *)(uintptr_t)RP_PAUSE_NONE;
        if (llhttp_finish(&f->rp) == HPE_OK || (uintptr_t)f->rp.data == RP_PAUSE_MESSAGE) {
            response_done(f);
            return;
        }
    }
    bh__fwd_attempt_failed(f, f->ex->resp_started || uc->rlen == 0 ? BH_EUPSTREAM_RESET
                                                                   : BH_EUPSTREAM_PROTOCOL);
}

static void on_up_out(bh_outq_t *q, int status)
{
    bh_upconn_t *uc = bh_container_of(q, bh_upconn_t, out);
    bh_fwd_t *f = uc->owner;
    if (f == NULL)
        return;
    if (status < 0) {
        bh__fwd_attempt_failed(f, BH_EUPSTREAM_WRITE);
        return;
    }
    f->up_activity_ms = now_of(f);
    conn_of(f)->ops->update_reading(conn_of(f)); /* backpressure released */
}

int bh__fwd_response_begin(bh_fwd_t *f, bh_upconn_t *uc)
{
    uc->out.cb = on_up_out;
    llhttp_init(&f->rp, HTTP_RESPONSE, &rp_settings);
    f->resp_head_start = 0;
    return bh_upconn_read_start(uc, on_up_read, f);
}

/* ---- tunnel ------------------------------------------------------------------------------- */

void bh__fwd_tunnel_data(bh_exchange_t *ex)
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
    bh__fwd_tunnel_data(f->ex);
}

void bh__fwd_client_drained(bh_exchange_t *ex)
{
    bh_fwd_t *f = fwd_of(ex);
    if (f->uc == NULL || uv_is_active((uv_handle_t *)&f->uc->tcp))
        return;
    if (bh_upconn_read_start(f->uc, on_up_read, f) < 0) {
        bh__fwd_attempt_failed(f, BH_EUPSTREAM_RESET);
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
