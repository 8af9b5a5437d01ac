/* Admin endpoints and the dashboard page. Requests are tiny and rare: each connection reads one
 * request head (up to 8 KiB), answers it and closes; nothing here is on the proxy's request
 * path. What a client can hold is bounded all the same: admin.max_connections connections (503
 * beyond), each given limits.header_timeout to send its head (408) and as long again to take the
 * answer. */
#include <openssl/crypto.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include "bh_admin.h"
#include "bh_alloc.h"
#include "bh_error.h"
#include "bh_log.h"
#include "bh_reply.h"
#include "bh_stats.h"

#define ADMIN_HEAD_MAX 8192

struct bh_admin {
    uv_tcp_t listener;
    bh_server_t *srv;
    bh_list_t conns;
    uint32_t n_conns;
    bool draining, stopping;
    unsigned open_handles;
};

typedef struct admin_conn {
    uv_tcp_t tcp;
    uv_timer_t timer; /* the head, then the answer's write */
    bh_admin_t *a;
    bh_list_t link;
    uv_write_t wreq;
    uv_shutdown_t sreq;
    size_t len;
    int handles; /* not yet closed: tcp, timer */
    bool head_only;
    char *out;
    char buf[ADMIN_HEAD_MAX];
} admin_conn_t;

static void maybe_free(bh_admin_t *a)
{
    if (a->stopping && a->open_handles == 0)
        bh_free(a);
}

static void on_conn_closed(uv_handle_t *h)
{
    admin_conn_t *c = h->data;
    if (--c->handles > 0)
        return;
    bh_admin_t *a = c->a;
    bh_list_remove(&c->link);
    a->n_conns--;
    bh_free(c->out);
    bh_free(c);
    a->open_handles--;
    maybe_free(a);
}

static void conn_close(admin_conn_t *c)
{
    if (uv_is_closing((uv_handle_t *)&c->tcp))
        return;
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_closed);
}

/* After the answer: what the client still sends is read and dropped until it closes (or the
 * timer ends it), so that closing with its bytes unread cannot reset the connection and take the
 * answer with it (the client of a 431, or of a 503 refused at accept, may still be writing). */
static void on_discard_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    admin_conn_t *c = h->data;
    *buf = uv_buf_init(c->buf, sizeof(c->buf));
}

static void on_discard(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    if (nread < 0)
        conn_close(s->data);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    admin_conn_t *c = req->data;
    if (status < 0 || uv_read_start((uv_stream_t *)&c->tcp, on_discard_alloc, on_discard) < 0)
        conn_close(c);
}

static void on_written(uv_write_t *req, int status)
{
    admin_conn_t *c = req->data;
    c->sreq.data = c;
    if (status < 0 || uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, on_shutdown) < 0)
        conn_close(c);
}

static uint64_t timeout_ms(const admin_conn_t *c)
{
    return c->a->srv->snap->conf->limits.header_timeout_ms;
}

static void on_write_timeout(uv_timer_t *t)
{
    conn_close(t->data); /* the client does not take its answer */
}

/* Writes c->out[0..n), then lingers (on_written); the timer ends both when they take longer
 * than the head was given. */
static void send_out(admin_conn_t *c, size_t n)
{
    uv_buf_t b = uv_buf_init(c->out, (unsigned)n);
    c->wreq.data = c;
    uv_read_stop((uv_stream_t *)&c->tcp);
    uv_timer_start(&c->timer, on_write_timeout, timeout_ms(c), 0);
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_written) < 0)
        conn_close(c);
}

/* bulkhead's own error answer for cause err (Proxy-Status, as on the proxy's listeners). */
static void reply_error(admin_conn_t *c, int status, int err, const char *detail)
{
    c->out = bh_malloc(BH_REPLY_MAX);
    int n = c->out == NULL
                ? BH_ENOMEM
                : bh_reply_format(c->out, BH_REPLY_MAX, status, err, detail, NULL, true, 1);
    if (n < 0) {
        conn_close(c);
        return;
    }
    if (c->head_only) /* the head is all there is, body after the blank line */
        n = (int)(strstr(c->out, "\r\n\r\n") + 4 - c->out);
    send_out(c, (size_t)n);
}

/* extra: more header lines, each ending in CRLF ("" for none). */
static void reply_with(admin_conn_t *c, int status, const char *reason, const char *type,
                       const char *extra, const char *body, size_t blen)
{
    size_t cap = blen + strlen(extra) + 256;
    c->out = bh_malloc(cap);
    if (c->out == NULL) {
        conn_close(c);
        return;
    }
    int n = snprintf(c->out, cap,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Cache-Control: no-store\r\n%sConnection: close\r\n\r\n",
                     status, reason, type, blen, extra);
    if (!c->head_only) {
        memcpy(c->out + n, body, blen);
        n += (int)blen;
    }
    send_out(c, (size_t)n);
}

static void reply_typed(admin_conn_t *c, int status, const char *reason, const char *type,
                        const char *body, size_t blen)
{
    reply_with(c, status, reason, type, "", body, blen);
}

static void reply(admin_conn_t *c, int status, const char *reason, const char *body)
{
    reply_typed(c, status, reason, "text/plain; charset=utf-8", body, strlen(body));
}

static void stats(admin_conn_t *c, bool json)
{
    size_t len = 0;
    char *body = json ? bh_stats_json(c->a->srv, c->a->draining, &len)
                      : bh_stats_prometheus(c->a->srv, &len);
    if (body == NULL) {
        reply_error(c, 0, BH_ENOMEM, NULL);
        return;
    }
    reply_typed(c, 200, "OK",
                json ? "application/json" : "text/plain; version=0.0.4; charset=utf-8", body,
                len);
    bh_free(body);
}

/* The page itself holds no data: it is served without the token, and asks for one (then sends it
 * as a bearer token) when /stats answers 401. The policy lets it load nothing from elsewhere. */
static void dashboard(admin_conn_t *c)
{
    reply_with(c, 200, "OK", "text/html; charset=utf-8",
               "Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; "
               "style-src 'unsafe-inline'; connect-src 'self'; img-src data:\r\n"
               "X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n",
               bh_admin_dashboard, bh_admin_dashboard_len);
}

/* 200 when serving; 503 while draining or when an upstream with health checks has no healthy
 * endpoint left. */
static void readyz(admin_conn_t *c)
{
    bh_server_t *srv = c->a->srv;
    char body[2048];
    size_t len = 0;
    body[0] = '\0';
    bool ready = !c->a->draining;
    if (!ready)
        len += (size_t)snprintf(body + len, sizeof(body) - len, "draining\n");
    const bh_snap_t *snap = srv->snap;
    for (size_t i = 0; i < snap->conf->n_upstreams && len < sizeof(body) - 128; i++) {
        const bh_conf_upstream_t *u = &snap->conf->upstreams[i];
        if (!u->health_check.enabled)
            continue;
        bh_outlier_stats_t st;
        bh_outlier_stats(snap->upstreams[i]->s.outlier, uv_hrtime() / 1000000, &st);
        if (st.unhealthy >= st.endpoints) {
            ready = false;
            len += (size_t)snprintf(body + len, sizeof(body) - len,
                                    "upstream %s: no healthy endpoint\n", u->name);
        }
    }
    if (ready)
        snprintf(body, sizeof(body), "ready\n");
    reply(c, ready ? 200 : 503, ready ? "OK" : "Service Unavailable", body);
}

static bool authorized(admin_conn_t *c, const char *head)
{
    const char *token = c->a->srv->snap->conf->admin.token;
    if (token == NULL || token[0] == '\0')
        return true;
    for (const char *p = strstr(head, "\r\n"); p != NULL; p = strstr(p + 2, "\r\n")) {
        if (strncasecmp(p + 2, "authorization:", 14) != 0)
            continue;
        const char *v = p + 16;
        while (*v == ' ' || *v == '\t')
            v++;
        if (strncasecmp(v, "Bearer ", 7) != 0)
            return false;
        v += 7;
        size_t vl = strcspn(v, " \t\r"), tl = strlen(token);
        return vl == tl && CRYPTO_memcmp(v, token, tl) == 0; /* in constant time */
    }
    return false;
}

static void handle(admin_conn_t *c)
{
    char method[8], path[256];
    if (sscanf(c->buf, "%7s %255s HTTP/1.", method, path) != 2) {
        reply_error(c, 0, BH_EBAD_REQUEST, NULL);
        return;
    }
    char *q = strchr(path, '?');
    if (q != NULL)
        *q = '\0';
    c->head_only = strcmp(method, "HEAD") == 0;
    if (strcmp(method, "GET") != 0 && !c->head_only) {
        reply_error(c, 405, BH_EBAD_REQUEST, "the admin endpoints answer GET and HEAD only");
        return;
    }
    if (strcmp(path, "/healthz") == 0) {
        reply(c, 200, "OK", "ok\n");
        return;
    }
    if (strcmp(path, "/") == 0) {
        dashboard(c);
        return;
    }
    if (!authorized(c, c->buf)) {
        reply_error(c, 401, BH_ESQL_AUTH, "admin token required");
        return;
    }
    if (strcmp(path, "/readyz") == 0)
        readyz(c);
    else if (strcmp(path, "/metrics") == 0)
        stats(c, false);
    else if (strcmp(path, "/stats") == 0)
        stats(c, true);
    else
        reply_error(c, 404, BH_ENO_ROUTE, "admin endpoints: / /healthz /readyz /metrics /stats");
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    admin_conn_t *c = h->data;
    *buf = uv_buf_init(c->buf + c->len, (unsigned)(sizeof(c->buf) - 1 - c->len));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    admin_conn_t *c = s->data;
    if (nread == 0)
        return;
    if (nread < 0) {
        conn_close(c);
        return;
    }
    c->len += (size_t)nread;
    c->buf[c->len] = '\0';
    if (strstr(c->buf, "\r\n\r\n") != NULL)
        handle(c);
    else if (c->len >= sizeof(c->buf) - 1)
        reply_error(c, 0, BH_EHEAD_TOO_LARGE, NULL);
}

static void on_head_timeout(uv_timer_t *t)
{
    admin_conn_t *c = t->data;
    reply_error(c, 0, BH_ECLIENT_TIMEOUT, "no complete request head within limits.header_timeout");
}

static void on_connection(uv_stream_t *l, int status)
{
    bh_admin_t *a = l->data;
    if (status < 0)
        return;
    admin_conn_t *c = bh_calloc(1, sizeof(*c));
    if (c == NULL)
        return;
    c->a = a;
    uv_tcp_init(l->loop, &c->tcp);
    uv_timer_init(l->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->handles = 2;
    bh_list_push_back(&a->conns, &c->link);
    a->n_conns++;
    a->open_handles++;
    if (uv_accept(l, (uv_stream_t *)&c->tcp) < 0) {
        conn_close(c);
    } else if (a->n_conns > a->srv->snap->conf->admin.max_connections) {
        reply_error(c, 0, BH_ETOO_MANY_CONNS, "admin.max_connections reached");
    } else if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0) {
        conn_close(c);
    } else {
        uv_timer_start(&c->timer, on_head_timeout, timeout_ms(c), 0);
    }
}

static void on_listener_closed(uv_handle_t *h)
{
    bh_admin_t *a = h->data;
    a->open_handles--;
    maybe_free(a);
}

bh_admin_t *bh_admin_start(uv_loop_t *loop, bh_server_t *srv)
{
    const bh_conf_addr_t *addr = &srv->snap->conf->admin.addr;
    bh_admin_t *a = bh_calloc(1, sizeof(*a));
    if (a == NULL)
        return NULL;
    a->srv = srv;
    bh_list_init(&a->conns);
    uv_tcp_init(loop, &a->listener);
    a->listener.data = a;
    a->open_handles = 1;
    int rc = uv_tcp_bind(&a->listener, (const struct sockaddr *)&addr->sa, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&a->listener, 128, on_connection);
    if (rc < 0) {
        bh_log_error("admin listener %s: %s", addr->text, uv_strerror(rc));
        a->stopping = true;
        uv_close((uv_handle_t *)&a->listener, on_listener_closed);
        return NULL;
    }
    bh_log_info("admin listening on %s (/ /healthz /readyz /metrics /stats)", addr->text);
    return a;
}

void bh_admin_set_draining(bh_admin_t *a)
{
    a->draining = true;
}

void bh_admin_stop(bh_admin_t *a)
{
    bh_list_t *n, *t;
    a->stopping = true;
    bh_list_foreach_safe(n, t, &a->conns)
    {
        conn_close(bh_container_of(n, admin_conn_t, link));
    }
    uv_close((uv_handle_t *)&a->listener, on_listener_closed);
}
