/* Active HTTP health checks, one probe connection per endpoint at a time (Connection: close),
 * over TLS for a TLS upstream (verified like its requests). */
#include <string.h>
#include "bh_alloc.h"
#include "bh_health.h"
#include "bh_log.h"

typedef struct probe {
    bh_health_t *h;
    size_t i;
    uv_timer_t timer;      /* next check, then the check's timeout */
    uv_tcp_t tcp;
    uv_connect_t creq;
    bh_outq_t out;         /* the request */
    bh_tls_t *tls;         /* a TLS upstream's, during a check */
    bool busy;             /* a check is running: tcp is open or closing */
    bool result_given;
    uint32_t ok_streak, fail_streak;
    bool healthy;
    size_t len;
    char buf[96];
    char req[256];
    size_t req_len;
} probe_t;

struct bh_health {
    bh_upstream_t *up;
    const bh_conf_health_t *conf;
    size_t n;
    unsigned open_handles;
    bool stopping;
    void (*stopped_cb)(void *data);
    void *stopped_data;
    uint64_t checks, failures;
    probe_t probes[];
};

static void schedule(probe_t *p);
static void on_handle_closed(uv_handle_t *hd);

static void close_probe(probe_t *p)
{
    if (uv_is_closing((uv_handle_t *)&p->tcp))
        return;
    if (p->tls != NULL)
        bh_tls_close(p->tls);
    bh_outq_discard(&p->out);
    uv_close((uv_handle_t *)&p->tcp, on_handle_closed);
}

static void maybe_freed(bh_health_t *h)
{
    if (!h->stopping || h->open_handles > 0)
        return;
    void (*cb)(void *) = h->stopped_cb;
    void *data = h->stopped_data;
    bh_free(h);
    if (cb != NULL)
        cb(data);
}

static void on_handle_closed(uv_handle_t *hd)
{
    probe_t *p = hd->data;
    bh_health_t *h = p->h;
    h->open_handles--;
    if ((uv_handle_t *)&p->tcp == hd) {
        bh_free(p->tls);
        p->tls = NULL;
        p->busy = false;
        if (!h->stopping)
            schedule(p);
    }
    maybe_freed(h);
}

/* One check ended: update the streaks, flip the shared state at the thresholds, close. */
static void finish(probe_t *p, bool ok, const char *why)
{
    bh_health_t *h = p->h;
    if (p->result_given)
        return;
    p->result_given = true;
    uv_timer_stop(&p->timer);
    h->checks++;
    if (ok) {
        p->fail_streak = 0;
        if (++p->ok_streak >= h->conf->healthy && !p->healthy) {
            p->healthy = true;
            bh_outlier_set_healthy(h->up->shared->outlier, p->i, true);
            bh_log_info("upstream %s: endpoint %s is healthy again", h->up->conf->name,
                        h->up->conf->endpoints[p->i].text);
        }
    } else {
        h->failures++;
        p->ok_streak = 0;
        if (++p->fail_streak >= h->conf->unhealthy && p->healthy) {
            p->healthy = false;
            bh_outlier_set_healthy(h->up->shared->outlier, p->i, false);
            bh_log_warn("upstream %s: endpoint %s is unhealthy: %s", h->up->conf->name,
                        h->up->conf->endpoints[p->i].text, why);
        }
    }
    close_probe(p);
}

static void plain_alloc(uv_handle_t *hd, size_t hint, uv_buf_t *buf)
{
    probe_t *p = hd->data;
    *buf = uv_buf_init(p->buf + p->len, (unsigned)(sizeof(p->buf) - 1 - p->len));
}

static void plain_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    probe_t *p = s->data;
    if (nread == 0)
        return;
    if (nread < 0) {
        finish(p, false, nread == UV_EOF ? "closed before a status line" : uv_strerror((int)nread));
        return;
    }
    p->len += (size_t)nread;
    p->buf[p->len] = '\0';
    if (strchr(p->buf, '\n') == NULL && p->len < sizeof(p->buf) - 1)
        return;
    /* "HTTP/1.x 2xx ..." */
    bool ok = p->len >= 12 && strncmp(p->buf, "HTTP/1.", 7) == 0 && p->buf[8] == ' ' &&
              p->buf[9] == '2';
    finish(p, ok, "status is not 2xx");
}

static void on_alloc(uv_handle_t *hd, size_t hint, uv_buf_t *buf)
{
    probe_t *p = hd->data;
    if (p->tls != NULL)
        bh_tls_alloc(p->tls, buf);
    else
        plain_alloc(hd, hint, buf);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    probe_t *p = s->data;
    if (p->tls != NULL)
        bh_tls_input(p->tls, nread);
    else
        plain_read(s, nread, buf);
}

static void send_check(probe_t *p)
{
    if (bh_outq_copy(&p->out, p->req, p->req_len) < 0 || bh_outq_flush(&p->out) < 0)
        finish(p, false, "cannot send the check");
}

static void on_handshake(bh_tls_t *t, int status, const char *detail)
{
    probe_t *p = t->data;
    if (status < 0)
        finish(p, false, detail);
    else
        send_check(p);
}

static void on_connect(uv_connect_t *req, int status)
{
    probe_t *p = req->data;
    if (p->result_given)
        return;
    if (status < 0) {
        finish(p, false, uv_strerror(status));
        return;
    }
    bh_endpoint_t *ep = &p->h->up->eps[p->i];
    bh_tls_owner_t o = {.stream = (uv_stream_t *)&p->tcp,
                        .out = &p->out,
                        .alloc_cb = plain_alloc,
                        .read_cb = plain_read,
                        .handshake_cb = on_handshake,
                        .data = p};
    if (ep->up->shared->tls != NULL && bh_endpoint_tls(ep, &o, &p->tls) < 0) {
        finish(p, false, "cannot start TLS");
        return;
    }
    if (p->result_given) /* the handshake failed at once */
        return;
    if (bh_stream_read_start((uv_stream_t *)&p->tcp, p->tls, on_alloc, on_read) < 0) {
        finish(p, false, "cannot read");
        return;
    }
    if (p->tls == NULL)
        send_check(p); /* TLS: once the handshake is done */
}

static void on_timeout(uv_timer_t *t)
{
    finish(t->data, false, "timed out");
}

static void on_due(uv_timer_t *t)
{
    probe_t *p = t->data;
    bh_health_t *h = p->h;
    const bh_endpoint_t *ep = &h->up->eps[p->i];
    if (h->stopping || p->busy)
        return;
    if (ep->dns_state == BH_EP_DNS_PENDING) {
        uv_timer_start(&p->timer, on_due, 100, 0); /* no answer yet, so no result: soon again */
        return;
    }
    if (ep->salen == 0) {
        p->result_given = false;
        h->checks++;
        h->failures++;
        schedule(p); /* the name does not resolve: nothing to check now */
        return;
    }
    p->busy = true;
    p->result_given = false;
    p->len = 0;
    uv_tcp_init(h->up->env->loop, &p->tcp);
    p->tcp.data = p;
    h->open_handles++;
    p->creq.data = p;
    bh_outq_init(&p->out, (uv_stream_t *)&p->tcp, h->up->env->wreqs, h->up->env->bufs, NULL);
    uv_timer_start(&p->timer, on_timeout, h->conf->timeout_ms, 0);
    if (uv_tcp_connect(&p->creq, &p->tcp, (const struct sockaddr *)&ep->sa, on_connect) < 0)
        finish(p, false, "connect failed");
}

/* Next check after interval, +-10% so that checks of many endpoints do not march in step. */
static void schedule(probe_t *p)
{
    uint64_t iv = p->h->conf->interval_ms;
    uint64_t jitter = iv / 10;
    uint64_t delay = iv - jitter + (jitter ? bh_rng_below(p->h->up->env->rng, 2 * jitter) : 0);
    uv_timer_start(&p->timer, on_due, delay, 0);
}

bh_health_t *bh_health_start(bh_upstream_t *up)
{
    const bh_conf_health_t *conf = &up->conf->health_check;
    if (!conf->enabled)
        return NULL;
    bh_health_t *h = bh_calloc(1, sizeof(*h) + up->n_eps * sizeof(probe_t));
    if (h == NULL)
        return NULL;
    h->up = up;
    h->conf = conf;
    h->n = up->n_eps;
    for (size_t i = 0; i < h->n; i++) {
        probe_t *p = &h->probes[i];
        p->h = h;
        p->i = i;
        p->healthy = true;
        const bh_conf_addr_t *a = &up->conf->endpoints[i];
        int n = snprintf(p->req, sizeof(p->req),
                         "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: bulkhead-health-check\r\n"
                         "Connection: close\r\n\r\n",
                         conf->path, a->text);
        p->req_len = n > 0 && (size_t)n < sizeof(p->req) ? (size_t)n : 0;
        uv_timer_init(up->env->loop, &p->timer);
        p->timer.data = p;
        h->open_handles++;
        /* the first check soon after start, then every interval */
        uv_timer_start(&p->timer, on_due, bh_rng_below(up->env->rng, 100) + 1, 0);
    }
    return h;
}

void bh_health_stop(bh_health_t *h, void (*cb)(void *data), void *data)
{
    h->stopping = true;
    h->stopped_cb = cb;
    h->stopped_data = data;
    for (size_t i = 0; i < h->n; i++) {
        probe_t *p = &h->probes[i];
        if (p->busy)
            close_probe(p);
        uv_close((uv_handle_t *)&p->timer, on_handle_closed);
    }
    maybe_freed(h);
}

void bh_health_counts(const bh_health_t *h, uint64_t *checks, uint64_t *failures)
{
    *checks = h->checks;
    *failures = h->failures;
}
