/* Upstream HTTP connections on libuv, pooled by bh_pool.
 *
 * Endpoint names are looked up on libuv's threadpool, never on the loop: a worker applying a
 * reload keeps serving while DNS answers. Until a name's first answer the endpoint is PENDING
 * (bh_ep_dns_t): like an Envoy STRICT_DNS host it takes no traffic while another endpoint of the
 * upstream has an address (bh_upstream_pick), and when none has one yet a request does not fail
 * at once: its connection is opened CONNECTING without a socket connect (awaiting_dns) and
 * connects when the answer comes (connect_waiting), or fails as a connect failure the retry
 * policy may retry. Waiting inside the connection rather than beside the pool keeps every bound
 * the request already has: timeouts.connect (which covers the lookup, as for a client that
 * resolves before it connects), the pool's acquire timeout and the request's deadline. */
#include <assert.h>
#include <errno.h>
#include <netdb.h>
#include <string.h>
#include <sys/socket.h>
#include <openssl/ssl.h>
#include "bh_alloc.h"
#include "bh_log.h"
#include "bh_tls_ctx.h"
#include "bh_upstream.h"

#define BH_UPCONN_TRUST_IDLE_MS 100

static uint64_t now_ms(const bh_endpoint_t *ep)
{
    return uv_now(ep->up->env->loop);
}

/* ---- closing ------------------------------------------------------------------------------ */

static void close_ep_timer_if_done(bh_endpoint_t *ep);
static void one_closed(bh_upstream_t *up);
static void on_dns_timer(uv_timer_t *t);

static void on_conn_handle_closed(uv_handle_t *h)
{
    bh_upconn_t *uc = h->data;
    if (--uc->open_handles > 0)
        return;
    bh_buf_unref(uc->rbuf);
    bh_endpoint_t *ep = uc->ep;
    bh_pool_conn_closed(&uc->pc);
    bh_free(uc->tls);
    bh_free(uc);
    if (ep->up->closing)
        close_ep_timer_if_done(ep);
}

/* A connection the pool never saw (its connect failed at once). */
static void on_orphan_closed(uv_handle_t *h)
{
    bh_upconn_t *uc = h->data;
    if (--uc->open_handles == 0) {
        bh_free(uc->tls);
        bh_free(uc);
    }
}

static void pool_close(bh_pool_conn_t *pc)
{
    bh_upconn_t *uc = bh_upconn_of(pc);
    if (uc->tls != NULL)
        bh_tls_close(uc->tls);
    bh_outq_discard(&uc->out);
    uv_close((uv_handle_t *)&uc->tcp, on_conn_handle_closed);
    uv_close((uv_handle_t *)&uc->timer, on_conn_handle_closed);
}

/* ---- connecting --------------------------------------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static int map_connect_error(int status)
{
    switch (status) {
    case UV_ECONNREFUSED:
        return BH_ECONNECT_REFUSED;
    case UV_ETIMEDOUT:
        return BH_ECONNECT_TIMEOUT;
    default:
        return BH_ECONNECT_FAILED;
    }
}

static void on_connect_timeout(uv_timer_t *t)
{
    bh_upconn_t *uc = t->data;
    if (uc->pc.state == BH_PCONN_CONNECTING)
        bh_pool_connect_failed(&uc->pc, BH_ECONNECT_TIMEOUT, now_ms(uc->ep));
}

static void on_handshake(bh_tls_t *t, int status, const char *detail)
{
    bh_upconn_t *uc = t->data;
    if (uc->pc.state != BH_PCONN_CONNECTING)
        return;
    uv_timer_stop(&uc->timer);
    if (status < 0) {
        snprintf(uc->ep->tls_error, sizeof(uc->ep->tls_error), "%s", detail);
        bh_log_debug("TLS handshake with %s failed: %s", uc->ep->addr->text, detail);
        bh_pool_connect_failed(&uc->pc, status, now_ms(uc->ep));
        return;
    }
    bh_pool_connected(&uc->pc, now_ms(uc->ep));
}

static void plain_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf);
static void plain_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

int bh_endpoint_tls(bh_endpoint_t *ep, const bh_tls_owner_t *o, bh_tls_t **out)
{
    const bh_conf_upstream_tls_t *tc = &ep->up->conf->tls;
    const char *name = tc->server_name != NULL ? tc->server_name : ep->addr->host;
    bool numeric = ep->addr->salen > 0 && tc->server_name == NULL; /* an IP: no SNI (RFC 6066) */
    if ((*out = bh_malloc(sizeof(**out))) == NULL)
        return BH_ENOMEM;
    return bh_tls_client(*out, ep->up->env->tls, ep->up->shared->tls, o, numeric ? NULL : name,
                         tc->verify ? name : NULL, &ep->tls_session);
}

/* The handshake starts once TCP is up; timeouts.connect covers both. */
static int start_tls(bh_upconn_t *uc)
{
    bh_tls_owner_t o = {.stream = (uv_stream_t *)&uc->tcp,
                        .out = &uc->out,
                        .alloc_cb = plain_alloc,
                        .read_cb = plain_read,
                        .handshake_cb = on_handshake,
                        .data = uc};
    return bh_endpoint_tls(uc->ep, &o, &uc->tls);
}

static void on_connect(uv_connect_t *req, int status)
{
    bh_upconn_t *uc = req->data;
    if (uc->pc.state != BH_PCONN_CONNECTING)
        return; /* timed out or pool shut: already closing (status is UV_ECANCELED) */
    if (status < 0) {
        uv_timer_stop(&uc->timer);
        bh_log_debug("connect to %s failed: %s", uc->ep->addr->text, uv_strerror(status));
        bh_pool_connect_failed(&uc->pc, map_connect_error(status), now_ms(uc->ep));
        return;
    }
    uv_tcp_nodelay(&uc->tcp, 1);
    bool tls = uc->ep->up->shared->tls != NULL;
    int rc = tls ? start_tls(uc) : 0; /* a failure may end the connection through on_handshake */
    if (uc->pc.state != BH_PCONN_CONNECTING)
        return;
    if (rc == 0 && bh_stream_read_start((uv_stream_t *)&uc->tcp, uc->tls, on_alloc, on_read) < 0)
        rc = BH_ECONNECT_FAILED;
    if (rc < 0) {
        uv_timer_stop(&uc->timer);
        bh_pool_connect_failed(&uc->pc, rc == BH_ENOMEM ? BH_ECONNECT_FAILED : rc, now_ms(uc->ep));
        return;
    }
    if (!tls) {
        uv_timer_stop(&uc->timer);
        bh_pool_connected(&uc->pc, now_ms(uc->ep));
    } /* else the connect timer keeps running through the handshake (on_handshake) */
}

/* Returns 0 or a libuv error. */
static int connect_start(bh_upconn_t *uc)
{
    bh_endpoint_t *ep = uc->ep;
    uc->awaiting_dns = false;
    uc->generation = ep->generation;
    return uv_tcp_connect(&uc->connect_req, &uc->tcp, (struct sockaddr *)&ep->sa, on_connect);
}

static bh_pool_conn_t *pool_open(bh_pool_t *pool, int *err)
{
    bh_endpoint_t *ep = pool->data;
    const bh_conf_upstream_t *conf = ep->up->conf;
    uv_loop_t *loop = ep->up->env->loop;
    if (ep->salen == 0 && ep->dns_state != BH_EP_DNS_PENDING) {
        *err = BH_ECONNECT_FAILED; /* the name does not resolve */
        return NULL;
    }
    bh_upconn_t *uc = bh_calloc(1, sizeof(*uc));
    if (uc == NULL) {
        *err = BH_ENOMEM;
        return NULL;
    }
    uint64_t now = uv_now(loop);
    bh_pool_conn_init(&uc->pc, pool, now);
    uc->ep = ep;
    uc->generation = ep->generation;
    uc->lifetime_end_ms = conf->pool.max_lifetime_ms ? now + conf->pool.max_lifetime_ms
                                                     : BH_TIME_NEVER;
    uc->pc.expires_ms = uc->lifetime_end_ms;
    uv_tcp_init(loop, &uc->tcp);
    uv_timer_init(loop, &uc->timer);
    uc->tcp.data = uc->timer.data = uc->connect_req.data = uc;
    uc->open_handles = 2;
    bh_outq_init(&uc->out, (uv_stream_t *)&uc->tcp, ep->up->env->wreqs, ep->up->env->bufs, NULL);
    int rc = 0;
    if (ep->dns_state == BH_EP_DNS_PENDING)
        uc->awaiting_dns = true; /* connect_waiting() connects it; the timer below bounds that */
    else
        rc = connect_start(uc);
    if (rc < 0) {
        *err = map_connect_error(rc);
        uv_close((uv_handle_t *)&uc->tcp, on_orphan_closed);
        uv_close((uv_handle_t *)&uc->timer, on_orphan_closed);
        return NULL;
    }
    uv_timer_start(&uc->timer, on_connect_timeout, conf->timeouts.connect_ms, 0);
    return &uc->pc;
}

/* ---- idle connections --------------------------------------------------------------------- */

/* One read watcher for the connection's whole life (started once connected): toggling reads
 * between idle and busy would cost epoll_ctl calls on every request. */
static void plain_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    bh_upconn_t *uc = h->data;
    if (uc->owner == NULL) {
        *buf = uv_buf_init(uc->idle_scratch, sizeof(uc->idle_scratch));
        return;
    }
    if (uc->rbuf != NULL && uc->rlen == uc->rbuf->cap && uc->rpos == uc->rlen) {
        /* Full and consumed: queued writes keep their own references. */
        bh_buf_unref(uc->rbuf);
        uc->rbuf = NULL;
    }
    if (uc->rbuf == NULL) {
        uc->rbuf = bh_buf_get(uc->ep->up->env->bufs);
        uc->rlen = uc->rpos = 0;
        if (uc->rbuf == NULL) {
            *buf = uv_buf_init(NULL, 0); /* libuv reports UV_ENOBUFS */
            return;
        }
    }
    *buf = uv_buf_init(uc->rbuf->data + uc->rlen, uc->rbuf->cap - uc->rlen);
}

static void plain_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    bh_upconn_t *uc = s->data;
    if (nread == 0)
        return;
    if (uc->owner == NULL) {
        /* Any byte or EOF on an idle connection makes it unusable: the peer closed it or broke
         * HTTP. (TLS records that carry no data, such as session tickets, do not get here.) */
        bh_stream_read_stop(s, uc->tls);
        if (uc->pc.state == BH_PCONN_IDLE)
            bh_pool_idle_lost(&uc->pc, now_ms(uc->ep));
        return;
    }
    if (nread > 0)
        uc->rlen += (uint32_t)nread;
    uc->read_cb(uc, nread);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    bh_upconn_t *uc = h->data;
    if (uc->tls != NULL)
        bh_tls_alloc(uc->tls, buf);
    else
        plain_alloc(h, hint, buf);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    bh_upconn_t *uc = s->data;
    if (uc->tls != NULL)
        bh_tls_input(uc->tls, nread);
    else
        plain_read(s, nread, buf);
}

/* Whether reads are on (for TLS: also delivered). */
static bool reading(const bh_upconn_t *uc)
{
    return uv_is_active((const uv_handle_t *)&uc->tcp) && (uc->tls == NULL || uc->tls->want_read);
}

static bool pool_alive(bh_pool_conn_t *pc)
{
    bh_upconn_t *uc = bh_upconn_of(pc);
    uv_os_fd_t fd;
    if (uc->tls != NULL && bh_tls_has_input(uc->tls))
        return false; /* bytes nobody asked for */
    /* Idle only briefly: upstreams close idle connections after seconds, and a close that
     * comes with the last response is read by the busy reader. Connections idle for longer are
     * peeked at (one recv), in case the event reporting the peer's close is queued in this
     * very loop iteration but not processed yet. */
    if (now_ms(uc->ep) - uc->pc.idle_since_ms < BH_UPCONN_TRUST_IDLE_MS)
        return reading(uc);
    char c;
    if (uv_fileno((uv_handle_t *)&uc->tcp, &fd) < 0)
        return false;
    ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

static void on_pool_timer(uv_timer_t *t)
{
    bh_endpoint_t *ep = t->data;
    bh_pool_expire(&ep->pool, now_ms(ep));
}

static void pool_arm(bh_pool_t *pool, uint64_t at_ms)
{
    bh_endpoint_t *ep = pool->data;
    if (uv_is_closing((uv_handle_t *)&ep->timer))
        return;
    if (at_ms == BH_TIME_NEVER) {
        uv_timer_stop(&ep->timer);
        return;
    }
    uint64_t now = now_ms(ep);
    uv_timer_start(&ep->timer, on_pool_timer, at_ms > now ? at_ms - now : 0, 0);
}

static const bh_pool_ops_t pool_ops = {
    .open = pool_open,
    .alive = pool_alive,
    .close = pool_close,
    .arm = pool_arm,
};

/* ---- busy connections --------------------------------------------------------------------- */

int bh_upconn_read_start(bh_upconn_t *uc, bh_upconn_read_cb cb, void *owner)
{
    uc->read_cb = cb;
    uc->owner = owner;
    if (reading(uc))
        return 0;
    return bh_stream_read_start((uv_stream_t *)&uc->tcp, uc->tls, on_alloc, on_read); /* after
                                                                                   backpressure */
}

void bh_upconn_read_stop(bh_upconn_t *uc)
{
    bh_stream_read_stop((uv_stream_t *)&uc->tcp, uc->tls);
}

void bh_upconn_release(bh_upconn_t *uc, bool reusable)
{
    bh_endpoint_t *ep = uc->ep;
    uint64_t now = now_ms(ep);
    bh_buf_unref(uc->rbuf);
    uc->rbuf = NULL;
    uc->rlen = uc->rpos = 0;
    uc->owner = NULL;
    uc->read_cb = NULL;
    uc->out.cb = NULL;
    if (uc->out.error < 0 || bh_outq_pending(&uc->out) > 0 || uc->generation != ep->generation ||
        (uc->tls != NULL && bh_tls_has_input(uc->tls)))
        reusable = false; /* (a connection to an address the name no longer has is retired) */
    if (reusable) {
        /* Retire the connection before the upstream's own keep-alive timer would close it. */
        uc->pc.expires_ms = uc->lifetime_end_ms;
        if (uc->keepalive_ms > 0) {
            uint64_t margin = uc->keepalive_ms > 2000 ? 1000 : uc->keepalive_ms / 2;
            uint64_t ka_end = now + uc->keepalive_ms - margin;
            if (ka_end < uc->pc.expires_ms)
                uc->pc.expires_ms = ka_end;
        }
        if (!reading(uc) &&
            bh_stream_read_start((uv_stream_t *)&uc->tcp, uc->tls, on_alloc, on_read) < 0)
            reusable = false; /* reads were stopped for backpressure: the watcher resumes */
    }
    bh_pool_release(&uc->pc, reusable, now);
}

/* ---- upstreams ---------------------------------------------------------------------------- */

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res);

/* Starts looking the endpoint's name up on the threadpool. Returns 0 or a libuv error. */
static int lookup_start(bh_endpoint_t *ep)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    char port[8];
    snprintf(port, sizeof(port), "%u", ep->addr->port);
    ep->dns.data = ep;
    int rc = uv_getaddrinfo(ep->up->env->loop, &ep->dns, on_resolved, ep->addr->host, port, &hints);
    if (rc == 0) {
        ep->resolving = true;
        ep->up->pending_closes++; /* the lookup must finish before the endpoints are freed */
    }
    return rc;
}

int bh_upstream_shared_init(bh_upstream_shared_t *s, const bh_conf_upstream_t *conf,
                            uint32_t n_workers, uint64_t now_ms)
{
    s->sem = bh_sem_new(conf->pool.max_connections, n_workers);
    /* A probe is only "stuck" once it has outlived any request: the longest total timeout. */
    bh_breaker_init(&s->breaker, &conf->breaker, conf->timeouts.total_ms, now_ms);
    bh_budget_init(&s->budget, &conf->retry.budget);
    s->outlier = bh_outlier_new(&conf->outlier, conf->n_endpoints);
    if (s->outlier == NULL || s->sem == NULL)
        return BH_ENOMEM;
    char err[256];
    if (conf->tls.enabled && (s->tls = bh_tls_client_ctx(&conf->tls, err, sizeof(err))) == NULL) {
        bh_log_error("upstream %s: %s", conf->name, err);
        return BH_ECONFIG;
    }
    return 0;
}

void bh_upstream_shared_destroy(bh_upstream_shared_t *s)
{
    bh_outlier_free(s->outlier);
    s->outlier = NULL;
    bh_sem_unref(s->sem); /* messages about it still queued on a worker keep it a while */
    s->sem = NULL;
    bh_tls_ctx_free(s->tls);
    s->tls = NULL;
}

int bh_upstream_init(bh_upstream_t *up, const bh_conf_upstream_t *conf,
                     const bh_upstream_env_t *env, bh_upstream_shared_t *shared,
                     bh_pool_gauges_t *const *gauges)
{
    memset(up, 0, sizeof(*up));
    up->conf = conf;
    up->env = env;
    up->shared = shared;
    bh_balance_init(&up->balance, conf->balance);
    /* The DNS timer first: whatever fails below, bh_upstream_close() closes only initialised
     * handles (this one, and the timers of n_eps endpoints, which stays 0 until they exist). */
    uv_timer_init(env->loop, &up->dns_timer);
    up->dns_timer.data = up;
    up->pending_closes = 1;
    up->eps = bh_calloc(conf->n_endpoints, sizeof(*up->eps));
    up->in_flight = bh_calloc(conf->n_endpoints, sizeof(*up->in_flight));
    up->eligible = bh_calloc(conf->n_endpoints, sizeof(*up->eligible));
    if (up->eps == NULL || up->in_flight == NULL || up->eligible == NULL)
        return BH_ENOMEM;
    up->n_eps = conf->n_endpoints;
    bh_sem_t *sem = shared->sem;
    bh_pool_limits_t limits = {
        .max_pending = conf->pool.max_pending,
        .max_idle = conf->pool.max_idle,
        .min_idle = 0,
        .acquire_timeout_ms = conf->pool.acquire_timeout_ms,
        .idle_timeout_ms = conf->pool.idle_timeout_ms,
        .max_lifetime_ms = conf->pool.max_lifetime_ms,
    };
    for (size_t i = 0; i < up->n_eps; i++) {
        bh_endpoint_t *ep = &up->eps[i];
        ep->up = up;
        ep->addr = &conf->endpoints[i];
        bh_pool_init(&ep->pool, &pool_ops, sem, env->inbox, &limits, ep);
        ep->pool.gauges = gauges != NULL ? gauges[i] : NULL;
        uv_timer_init(env->loop, &ep->timer);
        ep->timer.data = ep;
        up->pending_closes++;
        if (ep->addr->salen > 0) {
            memcpy(&ep->sa, &ep->addr->sa, ep->addr->salen);
            ep->salen = ep->addr->salen;
            ep->dns_state = BH_EP_DNS_STATIC;
            continue;
        }
        up->has_names = true;
        ep->dns_state = BH_EP_DNS_PENDING;
        int rc = lookup_start(ep);
        if (rc < 0) { /* as if it did not resolve: the DNS timer tries again */
            ep->dns_state = BH_EP_DNS_FAILED;
            bh_log_warn("upstream %s: cannot resolve %s: %s", conf->name, ep->addr->text,
                        uv_strerror(rc));
        }
    }
    if (up->has_names && conf->dns_refresh_ms > 0)
        uv_timer_start(&up->dns_timer, on_dns_timer, conf->dns_refresh_ms, conf->dns_refresh_ms);
    return 0;
}

/* ---- names -------------------------------------------------------------------------------- */

/* The address changed: idle connections to the old one are closed; busy ones finish there. */
static void retire_idle(bh_endpoint_t *ep)
{
    bh_list_t *n;
    uint64_t now = now_ms(ep);
    bh_list_foreach(n, &ep->pool.idle)
        bh_container_of(n, bh_pool_conn_t, link)->expires_ms = now;
    bh_pool_expire(&ep->pool, now);
}

/* The first of the connections opened while the name was pending, or NULL. */
static bh_upconn_t *first_awaiting(bh_endpoint_t *ep)
{
    bh_list_t *n;
    bh_list_foreach(n, &ep->pool.connecting)
    {
        bh_upconn_t *uc = bh_upconn_of(bh_container_of(n, bh_pool_conn_t, link));
        if (uc->awaiting_dns)
            return uc;
    }
    return NULL;
}

/* The name answered (or the upstream is closing): the connections that waited for it connect
 * now, or fail as a connect would. A failure calls a waiter back, and its request may open or
 * close connections here: the next one is looked for afresh each time. */
static void connect_waiting(bh_endpoint_t *ep)
{
    bh_upconn_t *uc;
    while ((uc = first_awaiting(ep)) != NULL) {
        uc->awaiting_dns = false;
        int rc = BH_ECONNECT_FAILED;
        if (!ep->up->closing && ep->salen > 0 && (rc = connect_start(uc)) < 0)
            rc = map_connect_error(rc);
        if (rc < 0)
            bh_pool_connect_failed(&uc->pc, rc, now_ms(ep));
    }
}

/* Applies a lookup's answer to the endpoint. */
static void answered(bh_endpoint_t *ep, int status, const struct addrinfo *res)
{
    const char *up_name = ep->up->conf->name;
    if (status < 0 || res == NULL) {
        if (ep->dns_state == BH_EP_DNS_PENDING)
            bh_log_warn("upstream %s: cannot resolve %s: %s", up_name, ep->addr->text,
                        uv_strerror(status));
        else if (ep->dns_state == BH_EP_DNS_RESOLVED)
            bh_log_warn("upstream %s: %s stopped resolving (%s): draining it", up_name,
                        ep->addr->text, uv_strerror(status));
        ep->dns_state = BH_EP_DNS_FAILED;
        return;
    }
    ep->dns_state = BH_EP_DNS_RESOLVED;
    if (res->ai_addrlen == ep->salen && memcmp(res->ai_addr, &ep->sa, res->ai_addrlen) == 0)
        return;
    bool had_one = ep->salen > 0;
    memcpy(&ep->sa, res->ai_addr, res->ai_addrlen);
    ep->salen = res->ai_addrlen;
    if (had_one) { /* (no connection can be open to the address of a name never resolved) */
        ep->generation++;
        bh_log_info("upstream %s: %s has a new address", up_name, ep->addr->text);
        retire_idle(ep);
    }
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    bh_endpoint_t *ep = req->data;
    bh_upstream_t *up = ep->up;
    ep->resolving = false;
    if (!up->closing)
        answered(ep, status, res);
    uv_freeaddrinfo(res);
    connect_waiting(ep);
    one_closed(up); /* ep stays valid until here: the lookup held the endpoints */
}

static void on_dns_timer(uv_timer_t *t)
{
    bh_upstream_t *up = t->data;
    for (size_t i = 0; i < up->n_eps; i++) {
        bh_endpoint_t *ep = &up->eps[i];
        if (ep->dns_state != BH_EP_DNS_STATIC && !ep->resolving)
            (void)lookup_start(ep); /* when it cannot start, the next period tries again */
    }
}

/* How usable an endpoint's address is for a new attempt, best first. */
static int addr_rank(const bh_endpoint_t *ep)
{
    switch (ep->dns_state) {
    case BH_EP_DNS_STATIC:
    case BH_EP_DNS_RESOLVED:
        return 2;
    case BH_EP_DNS_PENDING:
        return 1; /* the attempt waits for the first answer */
    case BH_EP_DNS_FAILED:
        break;
    }
    return 0; /* drained; used only when no endpoint is better off */
}

size_t bh_upstream_pick(bh_upstream_t *up, size_t prefer_not)
{
    if (up->n_eps == 1) {
        up->in_flight[0]++;
        return 0;
    }
    bool panic = false;
    bh_outlier_eligible(up->shared->outlier, uv_now(up->env->loop), up->eligible, &panic);
    if (up->has_names) { /* among the eligible, those with the most usable address */
        int best = 0;
        for (size_t i = 0; i < up->n_eps; i++)
            if (up->eligible[i] && addr_rank(&up->eps[i]) > best)
                best = addr_rank(&up->eps[i]);
        for (size_t i = 0; i < up->n_eps; i++)
            up->eligible[i] = up->eligible[i] && addr_rank(&up->eps[i]) >= best;
    }
    size_t i = bh_balance_pick(&up->balance, up->n_eps, up->eligible, up->in_flight, prefer_not,
                               up->env->rng);
    i = i < up->n_eps ? i : 0;
    up->in_flight[i]++;
    return i;
}

void bh_upstream_unpick(bh_upstream_t *up, size_t ep)
{
    up->in_flight[ep]--;
}

int bh_upstream_acquire(bh_upstream_t *up, size_t ep, bh_pool_waiter_t *w, uint64_t deadline_ms,
                        bh_upconn_t **out)
{
    bh_pool_conn_t *pc = NULL;
    int rc = bh_pool_acquire(&up->eps[ep].pool, w, uv_now(up->env->loop), deadline_ms, &pc);
    *out = bh_upconn_of(pc);
    return rc;
}

void bh_upstream_retire(bh_upstream_t *up)
{
    if (up->closing)
        return;
    for (size_t i = 0; i < up->n_eps; i++)
        bh_pool_retire(&up->eps[i].pool, now_ms(&up->eps[i]));
}

static void one_closed(bh_upstream_t *up)
{
    if (--up->pending_closes == 0) {
        for (size_t i = 0; i < up->n_eps; i++)
            SSL_SESSION_free(up->eps[i].tls_session);
        bh_free(up->eps);
        bh_free(up->in_flight);
        bh_free(up->eligible);
        up->eps = NULL;
        up->in_flight = NULL;
        up->eligible = NULL;
        if (up->closed_cb != NULL)
            up->closed_cb(up);
    }
}

static void on_ep_timer_closed(uv_handle_t *h)
{
    bh_endpoint_t *ep = h->data;
    bh_pool_detach(&ep->pool); /* empty: the timer closes only then */
    one_closed(ep->up);
}

static void on_dns_timer_closed(uv_handle_t *h)
{
    one_closed(h->data);
}

static void close_ep_timer_if_done(bh_endpoint_t *ep)
{
    if (bh_pool_empty(&ep->pool) && !uv_is_closing((uv_handle_t *)&ep->timer))
        uv_close((uv_handle_t *)&ep->timer, on_ep_timer_closed);
}

void bh_upstream_close(bh_upstream_t *up, void (*cb)(bh_upstream_t *up))
{
    up->closing = true;
    up->closed_cb = cb;
    uv_close((uv_handle_t *)&up->dns_timer, on_dns_timer_closed);
    for (size_t i = 0; i < up->n_eps; i++)
        if (up->eps[i].resolving)
            uv_cancel((uv_req_t *)&up->eps[i].dns);
    for (size_t i = 0; i < up->n_eps; i++) {
        bh_endpoint_t *ep = &up->eps[i];
        bh_pool_shutdown(&ep->pool, now_ms(ep));
        close_ep_timer_if_done(ep);
    }
}
