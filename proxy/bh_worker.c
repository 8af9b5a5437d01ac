/* The process and its workers: one thread and one loop per worker, each with its own
 * SO_REUSEPORT listening sockets, client connections and upstream pools. Workers share only the
 * frozen config and the atomic counters of bh_server_t (connection caps). */
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "bh_alloc.h"
#include "bh_log.h"
#include "bh_proxy.h"

/* ---- listeners ---------------------------------------------------------------------------- */

static void on_connection(uv_stream_t *listener, int status)
{
    bh_listener_t *l = listener->data;
    if (status < 0) {
        bh_log_warn("accept failed: %s", uv_strerror(status));
        return;
    }
    bh_client_accept(l->w, listener);
}

/* A listening socket with SO_REUSEPORT, so each worker accepts on its own queue. Returns the fd
 * or -errno. */
static int bind_reuseport(const bh_conf_addr_t *a)
{
    int fd = socket(a->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (a->sa.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)&a->sa, a->salen) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    return fd;
}

int bh_listener_probe(const bh_conf_addr_t *a)
{
    int fd = bind_reuseport(a);
    if (fd < 0)
        return fd;
    close(fd);
    return 0;
}

static void on_listener_closed(uv_handle_t *h)
{
    bh_listener_t *l = h->data;
    bh_free(l->addr);
    bh_free(l);
}

static void close_listener(bh_listener_t *l)
{
    bh_list_remove(&l->link);
    uv_close((uv_handle_t *)&l->tcp, on_listener_closed);
}

static int open_listener(bh_worker_t *w, const bh_conf_listener_t *cl)
{
    bh_listener_t *l = bh_calloc(1, sizeof(*l));
    if (l == NULL || (l->addr = bh_strdup(cl->addr.text)) == NULL) {
        bh_free(l);
        return BH_ENOMEM;
    }
    l->w = w;
    int fd = bind_reuseport(&cl->addr);
    uv_tcp_init(&w->loop, &l->tcp);
    l->tcp.data = l;
    bh_list_push_back(&w->listeners, &l->link);
    int rc = fd;
    if (fd >= 0 && (rc = uv_tcp_open(&l->tcp, fd)) < 0)
        close(fd);
    if (rc >= 0)
        rc = uv_listen((uv_stream_t *)&l->tcp, 4096, on_connection);
    if (rc < 0) {
        bh_log_error("worker %u: listener %s (%s): %s", w->id, cl->name, cl->addr.text,
                     uv_strerror(rc));
        close_listener(l);
    }
    return rc;
}

/* Makes the listeners those of conf: keeps the sockets of addresses it still lists. */
static int sync_listeners(bh_worker_t *w, const bh_conf_t *conf)
{
    bh_list_t *n, *t;
    bh_list_foreach_safe(n, t, &w->listeners)
    {
        bh_listener_t *l = bh_container_of(n, bh_listener_t, link);
        bool keep = false;
        for (size_t i = 0; i < conf->n_listeners && !keep; i++)
            keep = strcmp(conf->listeners[i].addr.text, l->addr) == 0;
        if (!keep)
            close_listener(l);
    }
    int rc = 0;
    for (size_t i = 0; i < conf->n_listeners; i++) {
        bool have = false;
        bh_list_foreach(n, &w->listeners)
        {
            have |= strcmp(bh_container_of(n, bh_listener_t, link)->addr,
                           conf->listeners[i].addr.text) == 0;
        }
        if (!have) {
            int r = open_listener(w, &conf->listeners[i]);
            rc = rc < 0 ? rc : r;
        }
    }
    return rc;
}

/* ---- upstream objects and generations ------------------------------------------------------ */

static void release_loop(bh_worker_t *w)
{
    if (w->alog != NULL)
        bh_accesslog_close(w->alog);
    uv_timer_stop(&w->drain_timer);
    uv_unref((uv_handle_t *)&w->wakeup);
}

static void object_closed(bh_worker_t *w)
{
    if (--w->upstreams_open == 0 && w->upstreams_closing)
        release_loop(w);
}

static void on_upstream_closed(bh_upstream_t *up)
{
    bh_wup_t *u = up->data;
    bh_worker_t *w = u->w;
    bh_list_remove(&u->link);
    bh_ushared_unref(u->sh);
    bh_free(u);
    object_closed(w);
}

static void wup_unref(bh_wup_t *u);

static void on_health_stopped(void *data)
{
    bh_wup_t *u = data;
    u->w->health_running--;
    wup_unref(u);
}

/* Worker 0 checks health for everyone (results are shared), only for objects of the current
 * generation: a replaced upstream stops being checked at once. */
static void stop_health(bh_wup_t *u)
{
    if (u->health != NULL) {
        bh_health_t *h = u->health;
        u->health = NULL;
        u->refs++; /* until the checks have stopped */
        bh_health_stop(h, on_health_stopped, u);
    }
}

static void wup_unref(bh_wup_t *u)
{
    if (--u->refs > 0)
        return;
    if (u->health != NULL) {
        stop_health(u); /* comes back here once stopped */
        return;
    }
    bh_upstream_close(&u->up, on_upstream_closed);
}

static bh_wup_t *wup_new(bh_worker_t *w, bh_snap_t *snap, size_t i)
{
    bh_wup_t *u = bh_calloc(1, sizeof(*u));
    bh_pool_gauges_t **gauges = bh_calloc(snap->conf->upstreams[i].n_endpoints, sizeof(*gauges));
    if (u == NULL || gauges == NULL) {
        bh_free(u);
        bh_free(gauges);
        return NULL;
    }
    for (size_t j = 0; j < snap->conf->upstreams[i].n_endpoints; j++)
        gauges[j] = &((bh_endpoint_cells_t *)bh_mentry_cells(snap->ep_m[i][j], w->id))->pool;
    bh_ushared_t *sh = snap->upstreams[i];
    int rc = bh_upstream_init(&u->up, bh_ushared_conf(sh), &w->env, &sh->s, gauges);
    bh_free(gauges);
    u->w = w;
    u->up.data = u;
    u->refs = 1;
    bh_list_push_back(&w->wups, &u->link);
    u->sh = sh;
    atomic_fetch_add(&sh->refs, 1);
    w->upstreams_open++;
    if (rc < 0) {
        wup_unref(u);
        return NULL;
    }
    if (w->id == 0) {
        if ((u->health = bh_health_start(&u->up)) != NULL)
            w->health_running++;
        else if (u->up.conf->health_check.enabled) /* NULL without health checks is normal */
            bh_log_error("upstream %s: out of memory starting its health checks: none will run",
                         u->up.conf->name);
    }
    return u;
}

static void gen_free(bh_gen_t *g)
{
    for (size_t i = 0; g->upstreams != NULL && i < g->conf->n_upstreams; i++)
        if (g->upstreams[i] != NULL)
            wup_unref(g->upstreams[i]);
    bh_free(g->upstreams);
    bh_snap_unref(g->snap);
    bh_free(g);
}

/* The worker's view of snap (taking over a reference to it): the upstream objects of the current
 * generation whose shared state snap kept are reused, with their pools and health checks. */
static bh_gen_t *gen_new(bh_worker_t *w, bh_snap_t *snap)
{
    bh_gen_t *g = bh_calloc(1, sizeof(*g));
    if (g == NULL) {
        bh_snap_unref(snap);
        return NULL;
    }
    g->refs = 1;
    g->free = gen_free;
    g->snap = snap;
    g->conf = snap->conf;
    g->w = w;
    size_t n = snap->conf->n_upstreams;
    g->upstreams = bh_calloc(n ? n : 1, sizeof(*g->upstreams));
    if (g->upstreams == NULL) {
        bh_gen_release(g);
        return NULL;
    }
    const bh_gen_t *old = w->gen;
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; old != NULL && j < old->conf->n_upstreams; j++)
            if (old->upstreams[j]->sh == snap->upstreams[i]) {
                g->upstreams[i] = old->upstreams[j];
                g->upstreams[i]->refs++;
                break;
            }
        if (g->upstreams[i] == NULL && (g->upstreams[i] = wup_new(w, snap, i)) == NULL) {
            bh_gen_release(g);
            return NULL;
        }
    }
    return g;
}

/* Fixed credentials are known before any request: pools with min_idle open now. */
static void prewarm_databases(bh_worker_t *w, const bh_snap_t *snap)
{
    const bh_conf_t *conf = snap->conf;
    for (size_t i = 0; i < conf->n_databases; i++) {
        const bh_conf_database_t *db = &conf->databases[i];
        bh_pg_server_t server = snap->databases[i]->server;
        server.gauges = &((bh_backend_cells_t *)bh_mentry_cells(snap->db_m[i], w->id))->pool;
        bh_pg_pool_t *pool;
        if (db->auth == BH_DB_AUTH_FIXED && db->pool.min_idle > 0 &&
            bh_pg_pool_get(w->pg_pools, &server, db->dbname, db->user, db->password, &pool) < 0)
            bh_log_warn("database %s: cannot pre-warm its pool", db->name);
    }
}

/* Makes snap (a reference for this worker) the current generation. */
static int switch_to(bh_worker_t *w, bh_snap_t *snap)
{
    bh_gen_t *g = gen_new(w, snap);
    if (g == NULL) {
        bh_log_error("worker %u: out of memory applying the new configuration", w->id);
        return BH_ENOMEM;
    }
    bh_gen_t *old = w->gen;
    for (size_t j = 0; old != NULL && j < old->conf->n_upstreams; j++) {
        bool kept = false;
        for (size_t i = 0; i < g->conf->n_upstreams && !kept; i++)
            kept = g->upstreams[i] == old->upstreams[j];
        if (!kept) {
            stop_health(old->upstreams[j]);
            bh_upstream_retire(&old->upstreams[j]->up);
        }
    }
    w->gen = g;
    w->conf = g->conf;
    bh_gauge_set(&w->cells->generation, (int64_t)snap->generation);
    if (old != NULL)
        bh_gen_release(old); /* in-flight exchanges keep it until they end */
    size_t nd = snap->conf->n_databases;
    uint64_t *live = old != NULL && w->pg_open ? bh_calloc(nd ? nd : 1, sizeof(*live)) : NULL;
    if (live != NULL) { /* pools of replaced database settings empty out */
        for (size_t i = 0; i < nd; i++)
            live[i] = snap->databases[i]->server.tag;
        bh_pg_pools_retire(w->pg_pools, live, nd);
        bh_free(live);
    }
    prewarm_databases(w, snap);
    return sync_listeners(w, g->conf);
}

/* ---- stopping ----------------------------------------------------------------------------- */

static void on_pg_closed(void *data)
{
    bh_worker_t *w = data;
    w->pg_pools = NULL;
    object_closed(w);
}

static void close_upstreams(bh_worker_t *w)
{
    w->upstreams_closing = true;
    w->upstreams_open++; /* held while starting to close everything */
    if (w->pg_open) {
        w->pg_open = false;
        w->upstreams_open++;
        bh_pg_pools_close(w->pg_pools, on_pg_closed, w);
    }
    if (w->gen != NULL) {
        bh_gen_t *g = w->gen;
        w->gen = NULL;
        w->last_snap = bh_snap_ref(g->snap); /* w->conf stays valid until worker_destroy */
        bh_gen_release(g);
    }
    object_closed(w);
}

static void on_client_closed(bh_worker_t *w)
{
    if (w->draining && w->n_clients == 0 && !w->upstreams_closing)
        close_upstreams(w);
}

static void on_drain_timeout(uv_timer_t *t)
{
    bh_worker_t *w = t->data;
    bh_log_warn("worker %u: drain timeout, closing %u connections", w->id, w->n_clients);
    bh_clients_close(w);
}

static void begin_drain(bh_worker_t *w)
{
    if (w->draining)
        return;
    w->draining = true;
    for (size_t i = 0; w->gen != NULL && i < w->gen->conf->n_upstreams; i++)
        stop_health(w->gen->upstreams[i]);
    bh_list_t *n, *tmp;
    bh_list_foreach_safe(n, tmp, &w->listeners)
    {
        close_listener(bh_container_of(n, bh_listener_t, link));
    }
    bh_clients_drain(w);
    if (w->n_clients == 0) {
        close_upstreams(w);
        return;
    }
    uv_timer_start(&w->drain_timer, on_drain_timeout, w->conf->shutdown.drain_timeout_ms, 0);
    uv_unref((uv_handle_t *)&w->drain_timer);
}

static void on_wakeup(uv_async_t *a)
{
    bh_worker_t *w = a->data;
    /* Permits handed over, or idle connections asked for, by pools of other workers (or of this
     * one): only the pools that asked are looked at. Also while draining: waiters still wait. */
    bh_pool_inbox_run(&w->inbox, uv_now(&w->loop));
    if (atomic_load(&w->stop_requested)) {
        begin_drain(w);
        return;
    }
    bh_snap_t *snap = atomic_exchange(&w->pending, NULL);
    if (snap != NULL && !w->draining)
        switch_to(w, snap);
    else if (snap != NULL)
        bh_snap_unref(snap);
}

/* ---- lifecycle ---------------------------------------------------------------------------- */

static void on_inbox_wake(bh_sem_inbox_t *in)
{
    bh_worker_t *w = in->data;
    uv_async_send(&w->wakeup);
}

static int worker_init(bh_worker_t *w, bh_server_t *srv, uint32_t id)
{
    const bh_conf_t *conf = srv->snap->conf;
    bh_list_init(&w->clients);
    bh_list_init(&w->listeners);
    bh_list_init(&w->wups);
    atomic_init(&w->pending, NULL);
    int rc = uv_loop_init(&w->loop);
    if (rc < 0)
        return rc;
    w->srv = srv; /* from here on, worker_destroy cleans up */
    bh_clients_init(w);
    w->conf = conf;
    w->id = id;
    w->cells = bh_metrics_worker(&srv->metrics, id);
    uint64_t cap = conf->limits.max_header_bytes + 4096;
    if (cap < 16384)
        cap = 16384;
    bh_bufpool_init(&w->bufs, (uint32_t)cap, 1024);
    bh_wreq_cache_init(&w->wreqs, 1024);
    bh_rng_seed(&w->rng, uv_hrtime() ^ ((uint64_t)(id + 1) * 0x9e3779b97f4a7c15ull));
    if (getrandom(&w->rid_prefix, sizeof w->rid_prefix, GRND_NONBLOCK) !=
        (ssize_t)sizeof w->rid_prefix)
        w->rid_prefix = bh_rng_next(&w->rng) ^ (uint64_t)getpid() << 32;
    w->inbox = (bh_sem_inbox_t){.lane = id, .wake = on_inbox_wake, .data = w};
    bh_tls_env_init(&w->tls_env, &w->loop, &w->bufs);
    w->tls_env.handshakes[BH_TLS_SERVER] = w->cells->tls[BH_TLS_SERVER];
    w->tls_env.handshakes[BH_TLS_CLIENT] = w->cells->tls[BH_TLS_CLIENT];
    w->env = (bh_upstream_env_t){.loop = &w->loop, .bufs = &w->bufs, .wreqs = &w->wreqs,
                                 .rng = &w->rng, .inbox = &w->inbox, .tls = &w->tls_env};
    w->client_closed = on_client_closed;
    w->max_hdrs = conf->limits.max_headers + 1;
    w->hdrs = bh_calloc(w->max_hdrs, sizeof(*w->hdrs));
    if (w->hdrs == NULL)
        return BH_ENOMEM;
    uv_async_init(&w->loop, &w->wakeup, on_wakeup);
    w->wakeup.data = w;
    uv_timer_init(&w->loop, &w->drain_timer);
    w->drain_timer.data = w;
    if (srv->alog_writer != NULL) {
        w->alog = bh_malloc(sizeof(*w->alog));
        if (w->alog == NULL)
            return BH_ENOMEM;
        bh_accesslog_init(w->alog, &w->loop, srv->alog_writer);
        w->alog->dropped = &w->cells->log_dropped;
    }
    w->pg_pools = bh_pg_pools_new(&w->loop, srv->pg, &w->inbox);
    if (w->pg_pools == NULL)
        return BH_ENOMEM;
    w->pg_open = true;
    return switch_to(w, bh_snap_ref(srv->snap));
}

static void worker_main(void *arg)
{
    bh_worker_t *w = arg;
    uv_run(&w->loop, UV_RUN_DEFAULT);
    if (w->srv->on_worker_exit != NULL)
        w->srv->on_worker_exit(w->srv);
}

static void on_walk_close(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void worker_destroy(bh_worker_t *w)
{
    if (w->srv == NULL)
        return;
    if (!w->upstreams_closing) /* a failed start */
        close_upstreams(w);
    bh_list_t *n, *tmp;
    bh_list_foreach_safe(n, tmp, &w->listeners) /* never started: closed with their callbacks */
    {
        close_listener(bh_container_of(n, bh_listener_t, link));
    }
    /* After a normal drain every handle is closed already; after a failed init, close here. */
    uv_walk(&w->loop, on_walk_close, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    bh_pool_inbox_run(&w->inbox, uv_now(&w->loop)); /* drops what other workers still posted */
    int rc = uv_loop_close(&w->loop);
    if (rc != 0)
        bh_log_error("worker %u: loop closed with handles still open: %s", w->id, uv_strerror(rc));
    bh_clients_fini(w);
    bh_wreq_cache_destroy(&w->wreqs);
    bh_bufpool_destroy(&w->bufs);
    if (w->alog != NULL)
        bh_accesslog_flush(w->alog);
    bh_free(w->alog);
    bh_free(w->hdrs);
    bh_snap_unref(atomic_exchange(&w->pending, NULL));
    bh_snap_unref(w->last_snap);
}

int bh_server_init(bh_server_t *srv, bh_conf_t *conf)
{
    memset(srv, 0, sizeof(*srv));
    srv->access_fd = -1;
    atomic_init(&srv->clients, 0);
    uint32_t n_workers = conf->workers;
    int rc = bh_metrics_init(&srv->metrics, n_workers);
    if (rc < 0) {
        bh_conf_free(conf);
        return rc;
    }
    if ((rc = bh_snap_new(srv, conf, NULL, &srv->snap)) < 0) /* owns conf from here */
        return rc;
    srv->snap->generation = 1;
    srv->workers = bh_calloc(n_workers, sizeof(bh_worker_t));
    if (srv->workers == NULL)
        return BH_ENOMEM;
    srv->access_fd = bh_accesslog_open(conf->log.access);
    if (srv->access_fd < -1) {
        bh_log_error("access log %s: %s", conf->log.access, strerror(-srv->access_fd - 1));
        return BH_ECONFIG;
    }
    if (srv->access_fd >= 0 &&
        (srv->alog_writer = bh_logwriter_start(srv->access_fd, conf->log.access_buffer)) == NULL)
        return BH_ENOMEM;
    srv->pg = bh_pg_shared_new(n_workers);
    if (srv->pg == NULL)
        return BH_ENOMEM;
    if ((srv->elog_writer = bh_logwriter_start(STDERR_FILENO, BH_ERRLOG_BUFFER)) == NULL)
        return BH_ENOMEM;
    bh_log_set_writer(srv->elog_writer);
    for (uint32_t i = 0; i < n_workers; i++) {
        srv->n_workers++;
        rc = worker_init(&srv->workers[i], srv, i);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Settings that need a restart keep their running values; says which ones were ignored. */
static void keep_restart_only(const bh_conf_t *old, bh_conf_t *conf)
{
    const char *what[6];
    int n = 0;
    if (conf->workers != old->workers)
        what[n++] = "workers";
    if (strcmp(conf->admin.addr.text, old->admin.addr.text) != 0)
        what[n++] = "admin.address";
    if (strcmp(conf->log.access, old->log.access) != 0)
        what[n++] = "log.access";
    if (conf->log.access_buffer != old->log.access_buffer)
        what[n++] = "log.access_buffer";
    if (conf->limits.max_header_bytes != old->limits.max_header_bytes)
        what[n++] = "limits.max_header_bytes";
    if (conf->limits.max_headers != old->limits.max_headers)
        what[n++] = "limits.max_headers";
    for (int i = 0; i < n; i++)
        bh_log_warn("reload: %s changed; it takes effect on restart", what[i]);
    conf->workers = old->workers;
    conf->limits.max_header_bytes = old->limits.max_header_bytes; /* sizes worker buffers */
    conf->limits.max_headers = old->limits.max_headers;
}

/* Counts a failed reload, keeps its reason for /stats and logs it. Returns BH_ECONFIG. */
static int reload_failed(bh_server_t *srv, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int reload_failed(bh_server_t *srv, const char *fmt, ...)
{
    bh_metrics_t *m = &srv->metrics;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(m->last_reload_error, sizeof m->last_reload_error, fmt, ap);
    va_end(ap);
    bh_log_error("reload failed, still running the previous configuration: %s",
                 m->last_reload_error);
    m->reloads_failed++;
    m->last_reload_failed = true;
    m->last_reload_unix_s = (uint64_t)time(NULL);
    return BH_ECONFIG;
}

int bh_server_reload(bh_server_t *srv)
{
    const bh_conf_t *old = srv->snap->conf;
    bh_conf_t *conf = NULL;
    bh_conf_error_t err;
    int rc = bh_conf_load(old->path, &conf, &err);
    if (rc < 0)
        return reload_failed(srv, "%s", err.msg);
    for (size_t i = 0; i < conf->n_warnings; i++)
        bh_log_warn("reload: %s", conf->warnings[i]);
    for (size_t i = 0; i < conf->n_listeners; i++) {
        bool known = false;
        for (size_t j = 0; j < old->n_listeners && !known; j++)
            known = strcmp(conf->listeners[i].addr.text, old->listeners[j].addr.text) == 0;
        if (!known && (rc = bh_listener_probe(&conf->listeners[i].addr)) < 0) {
            reload_failed(srv, "listener %s (%s): %s", conf->listeners[i].name,
                          conf->listeners[i].addr.text, uv_strerror(rc));
            bh_conf_free(conf);
            return BH_ECONFIG;
        }
    }
    keep_restart_only(old, conf);
    bh_log_set_level(conf->log.level);
    bh_snap_t *snap;
    if ((rc = bh_snap_new(srv, conf, srv->snap, &snap)) < 0)
        return reload_failed(srv, "%s", bh_strerror(rc));
    size_t kept = 0;
    for (size_t i = 0; i < snap->conf->n_upstreams; i++)
        for (size_t j = 0; j < old->n_upstreams; j++)
            kept += snap->upstreams[i] == srv->snap->upstreams[j];
    snap->generation = srv->snap->generation + 1;
    bh_log_info(
        "reloaded %s (generation %llu): %zu routes, %zu upstreams (%zu unchanged, state kept), "
        "%zu listeners",
        snap->conf->path, (unsigned long long)snap->generation, snap->conf->n_routes,
        snap->conf->n_upstreams, kept, snap->conf->n_listeners);
    bh_server_publish(srv, snap);
    srv->metrics.reloads_ok++;
    srv->metrics.last_reload_failed = false;
    srv->metrics.last_reload_error[0] = '\0';
    srv->metrics.last_reload_unix_s = srv->metrics.last_load_ok_unix_s = (uint64_t)time(NULL);
    return 0;
}

void bh_server_publish(bh_server_t *srv, bh_snap_t *snap)
{
    for (uint32_t i = 0; i < srv->n_workers; i++) {
        bh_worker_t *w = &srv->workers[i];
        bh_snap_unref(atomic_exchange(&w->pending, bh_snap_ref(snap))); /* superseded */
        uv_async_send(&w->wakeup);
    }
    bh_snap_t *old = srv->snap;
    srv->snap = snap;
    bh_snap_unref(old);
}

int bh_server_start(bh_server_t *srv)
{
    for (uint32_t i = 0; i < srv->n_workers; i++) {
        int rc = uv_thread_create(&srv->workers[i].thread, worker_main, &srv->workers[i]);
        if (rc < 0) {
            bh_server_stop(srv);
            bh_server_join(srv);
            return rc;
        }
        srv->workers[i].started = true;
    }
    return 0;
}

void bh_server_join(bh_server_t *srv)
{
    for (uint32_t i = 0; i < srv->n_workers; i++) {
        if (srv->workers[i].started)
            uv_thread_join(&srv->workers[i].thread);
        srv->workers[i].started = false;
    }
}

void bh_server_stop(bh_server_t *srv)
{
    for (uint32_t i = 0; i < srv->n_workers; i++) {
        atomic_store(&srv->workers[i].stop_requested, 1);
        uv_async_send(&srv->workers[i].wakeup);
    }
}

void bh_server_destroy(bh_server_t *srv)
{
    for (uint32_t i = 0; i < srv->n_workers; i++)
        worker_destroy(&srv->workers[i]);
    bh_free(srv->workers);
    bh_snap_unref(srv->snap);
    srv->snap = NULL;
    if (srv->alog_writer != NULL) /* the workers' last lines are queued: write them */
        bh_logwriter_stop(srv->alog_writer, BH_ACCESSLOG_EXIT_MS);
    if (srv->access_fd > STDERR_FILENO)
        close(srv->access_fd);
    if (srv->pg != NULL)
        bh_pg_shared_free(srv->pg);
    bh_metrics_destroy(&srv->metrics);
    if (srv->elog_writer != NULL) { /* every other thread has ended: log directly again */
        bh_log_set_writer(NULL);
        bh_logwriter_stop(srv->elog_writer, BH_ACCESSLOG_EXIT_MS);
    }
}
