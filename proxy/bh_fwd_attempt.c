/* What every attempt of the upstream handler ends with: the outcome classified, recorded for the
 * endpoint (outlier detection) and the upstream (breaker), then a retry under the budget or
 * bulkhead's own reply; and the body framing both directions write. */
#include <string.h>
#include "bh_alloc.h"
#include "bh_backoff.h"
#include "bh_deadline.h"
#include "bh_forward_int.h"
#include "bh_log.h"
#include "bh_retry.h"

/* Ends the current attempt's hold on pool resources. */
void bh__fwd_drop_attempt(bh_fwd_t *f, bool reusable)
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

void bh__fwd_drop_replay(bh_fwd_t *f)
{
    for (uint32_t i = 0; i < f->n_replay; i++)
        bh_buf_unref(f->replay[i].buf);
    bh_free(f->replay);
    f->replay = NULL;
    f->n_replay = 0;
    f->replayable = false;
}

/* ---- attempts ------------------------------------------------------------------------------ */

/* What a failure cause means for the retry policy. */
static bh_attempt_t classify(const bh_fwd_t *f, int err)
{
    bh_attempt_t a = {.outcome = BH_OUTCOME_LOCAL, .safety = BH_SAFETY_SENT_NO_RESPONSE};
    switch (err) {
    case BH_ECONNECT_REFUSED:
    case BH_ECONNECT_FAILED:
    case BH_ETLS_CERTIFICATE: /* a handshake that failed: the request never went out */
    case BH_ETLS_ALERT:
    case BH_ETLS_PROTOCOL:
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
void bh__fwd_record_attempt(bh_fwd_t *f, const bh_attempt_t *a, uint64_t now)
{
    bh_counter_add(&f->ex->up_cells->attempts[a->outcome], 1);
    if (a->outcome == BH_OUTCOME_LOCAL || a->outcome == BH_OUTCOME_TOTAL_TIMEOUT)
        return; /* not the endpoint's doing */
    bool failed = bh_retry_counts_as_failure(f->up->conf->breaker.count, a);
    bh_outlier_event_t ev;
    if (!bh_outlier_record_ev(f->up->shared->outlier, f->ep, failed, now, &ev))
        return;
    bh_counter_add(&f->ex->up_cells->ejections, 1);
    const bh_upstream_t *up = f->up;
    if (ev.released < up->n_eps)
        bh_counter_add(&f->ex->up_cells->releases, 1);
    bh_log_warn("upstream %s: endpoint %s ejected for %llu ms (ejection %u, %u failures in a "
                "row)%s%s%s",
                up->conf->name, up->eps[f->ep].addr->text, (unsigned long long)ev.eject_ms,
                ev.times, up->conf->outlier.consecutive_failures,
                ev.released < up->n_eps ? "; endpoint " : "",
                ev.released < up->n_eps ? up->eps[ev.released].addr->text : "",
                ev.released < up->n_eps ? " comes back early to stay within max_ejected" : "");
}

/* ...and the request's final outcome for the upstream (the breaker). Counting attempts would let
 * one dead endpoint of three open the whole upstream: its in-flight requests fail together, yet
 * each is retried elsewhere and succeeds; the outlier detector is what takes that endpoint out. */
void bh__fwd_record_request(bh_fwd_t *f, const bh_attempt_t *a, uint64_t now)
{
    bh_guard_t g = guard_of(f);
    bh_call_end(&g, &f->call, a, now, f->up->env->rng);
}

/* Schedules another attempt when the pipeline allows it (bh_call_retry: the policy with the
 * request's method, Idempotency-Key and replayable body; the breaker; a backoff that fits in the
 * deadline; the retry budget). retry_after_ms: the upstream's Retry-After, 0 when none. */
bool bh__fwd_schedule_retry(bh_fwd_t *f, const bh_attempt_t *a, uint64_t retry_after_ms)
{
    bh_exchange_t *ex = f->ex;
    const bh_conf_retry_t *policy = &ex->route->retry;
    uint64_t now = now_of(f);
    bh_retry_request_t req = {
        .method = f->method_bit,
        .idempotency_key = f->idempotency_key,
        .body_replayable = ex->req_body_bytes == 0 || f->replayable,
    };
    bh_guard_t g = guard_of(f);
    uint64_t delay = 0;
    bh_call_verdict_t v = bh_call_retry(&g, policy, ex->attempts, a, &req, retry_after_ms, now,
                                        ex->deadline_ms, conn_of(f)->w->env.rng, &delay);
    if (v == BH_CALL_BUDGET_EXHAUSTED)
        bh_counter_add(&ex->up_cells->budget_exhausted, 1);
    if (v != BH_CALL_RETRY)
        return false;
    bh_counter_add(&ex->up_cells->retries, 1);
    f->failed_ep = f->ep;
    f->phase = PH_BACKOFF;
    f->retry_at_ms = now + delay;
    rearm(f);
    return true;
}

/* The current attempt failed with err (before any response byte reached the client, or after:
 * then only the connection can be cut). */
void bh__fwd_attempt_failed(bh_fwd_t *f, int err)
{
    bh_exchange_t *ex = f->ex;
    uint64_t now = now_of(f);
    bh_attempt_t a = classify(f, err);
    bh_log_debug("client %s: upstream %s attempt %u: %s", conn_of(f)->ip, f->up->conf->name,
                 ex->attempts, bh_strerror(err));
    bh__fwd_drop_attempt(f, false);
    bh__fwd_record_attempt(f, &a, now);
    if (a.safety == BH_SAFETY_PARTIAL) {
        cut(f); /* the client already has part of a response */
        return;
    }
    if (bh__fwd_schedule_retry(f, &a, 0))
        return;
    bh__fwd_record_request(f, &a, now);
    if (err == BH_ETLS_CERTIFICATE || err == BH_ETLS_ALERT || err == BH_ETLS_PROTOCOL)
        ex->reply_detail = f->up->eps[f->ep].tls_error; /* OpenSSL's reason */
    bh_exchange_reply(ex, err, !ex->req_done, 1);
}

/* ---- body framing ------------------------------------------------------------------------- */

int bh__fwd_emit_body(bh_outq_t *q, enum fwd_framing fr, bh_buf_t *b, const char *at, size_t len)
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

int bh__fwd_emit_end(bh_outq_t *q, enum fwd_framing fr)
{
    return fr == FRAME_CHUNKED ? bh_outq_copy(q, "0\r\n\r\n", 5) : 0;
}
