/* The process and its workers: one thread and one loop per worker, each with its own
 * SO_REUSEPORT listening sockets, client connections and upstream pools. Workers share only the
 * frozen config and the atomic counters of bh_server_t (connection caps). */
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "bh_alloc.h"
#include "bh_log.h"
#include "bh_proxy.h"

/* ---- listeners ---------------------------------------------------------------------------- */

static void on_connection(uv_stream_t *listener, int status)
{
    bh_worker_t *w = listener->data;
    if (status < 0) {
        bh_log_warn("accept failed: %s", uv_strerror(status));
        return;
    }
    bh__client_accept(w, listener);
}

/* A listening socket of our own with SO_REUSEPORT, so each worker accepts on its own queue. */
static int open_listener(bh_worker_t *w, uv_tcp_t *h, const bh_conf_addr_t *a)
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
    uv_tcp_init(&w->loop, h);
    h->data = w;
    int rc = uv_tcp_open(h, fd);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)h, 4096, on_connection);
    return rc;
}

/* ---- stopping ----------------------------------------------------------------------------- */

/* The loop ends once nothing but the wakeup handle is left. That handle stays open until every
 * worker has stopped (worker_destroy): other workers may still signal it. */
static void release_loop(bh_worker_t *w)
{
    if (w->alog != NULL)
        bh_accesslog_close(w->alog);
    uv_timer_stop(&w->drain_timer);
    uv_unref((uv_handle_t *)&w->wakeup);
}

static void on_upstream_closed(bh_upstream_t *up)
{
    bh_worker_t *w = up->data;
    if (--w->upstreams_open == 0)
        release_loop(w);
}

static void on_pg_closed(void *data)
{
    bh_worker_t *w = data;
    w->pg_pools = NULL;
    if (--w->upstreams_open == 0)
        release_loop(w);
}

static void close_upstreams(bh_worker_t *w)
{
    if (w->pg_open) {
        w->pg_open = false;
        w->upstreams_open++;
        bh_pg_pools_close(w->pg_pools, on_pg_closed, w);
    }
    if (w->upstreams_open == 0) {
        release_loop(w);
        return;
    }
    for (size_t i = 0; i < w->n_upstreams; i++)
        bh_upstream_close(&w->upstreams[i], on_upstream_closed);
}

void bh__worker_client_closed(bh_worker_t *w, bh_client_t *c)
{
    w->n_clients--;
    if (w->draining && w->n_clients == 0 && !w->upstreams_closing) {
        w->upstreams_closing = true;
        close_upstreams(w);
    }
}

static void on_drain_timeout(uv_timer_t *t)
{
    bh_worker_t *w = t->data;
    bh_list_t *n, *tmp;
    bh_log_warn("worker %u: drain timeout, closing %u connections", w->id, w->n_clients);
    bh_list_foreach_safe(n, tmp, &w->clients)
    {
        bh__client_close(bh_container_of(n, bh_client_t, link));
    }
}

static void on_health_stopped(void *data)
{
    bh_worker_t *w = data;
    w->health_running--;
}

static void begin_drain(bh_worker_t *w)
{
    if (w->draining)
        return;
    w->draining = true;
    for (size_t i = 0; i < w->n_upstreams; i++) {
        if (w->health != NULL && w->health[i] != NULL) {
            bh_health_stop(w->health[i], on_health_stopped, w);
            w->health[i] = NULL;
        }
    }
    for (size_t i = 0; i < w->n_listeners; i++)
        uv_close((uv_handle_t *)&w->listeners[i], NULL);
    bh_list_t *n, *tmp;
    bh_list_foreach_safe(n, tmp, &w->clients)
    {
        bh__client_drain(bh_container_of(n, bh_client_t, link));
    }
    if (w->n_clients == 0) {
        w->upstreams_closing = true;
        close_upstreams(w);
        return;
    }
    uv_timer_start(&w->drain_timer, on_drain_timeout, w->conf->shutdown.drain_timeout_ms, 0);
    uv_unref((uv_handle_t *)&w->drain_timer);
}

static void on_wakeup(uv_async_t *a)
{
    bh_worker_t *w = a->data;
    if (atomic_load(&w->stop_requested)) {
        begin_drain(w);
        return;
    }
    for (size_t i = 0; i < w->n_upstreams; i++)
        bh_upstream_kick(&w->upstreams[i]);
    if (w->pg_open)
        bh_pg_pools_kick(w->pg_pools);
}

static void on_pg_kick(bh_sem_t *sem);

/* An upstream's semaphore asks every worker to rebalance its pools (any thread). */
static void on_sem_kick(bh_sem_t *sem)
{
    bh_server_t *srv = sem->data;
    for (uint32_t i = 0; i < srv->n_workers; i++)
        uv_async_send(&srv->workers[i].wakeup);
}

/* ---- lifecycle ---------------------------------------------------------------------------- */

static void on_pg_kick(bh_sem_t *sem)
{
    on_sem_kick(sem);
}

static int worker_init(bh_worker_t *w, bh_server_t *srv, uint32_t id)
{
    const bh_conf_t *conf = srv->conf;
    w->srv = srv;
    w->conf = conf;
    w->id = id;
    bh_list_init(&w->clients);
    int rc = uv_loop_init(&w->loop);
    if (rc < 0)
        return rc;
    uint64_t cap = conf->limits.max_header_bytes + 4096;
    if (cap < 16384)
        cap = 16384;
    bh_bufpool_init(&w->bufs, (uint32_t)cap, 1024);
    bh_wreq_cache_init(&w->wreqs, 1024);
    bh_rng_seed(&w->rng, uv_hrtime() ^ ((uint64_t)(id + 1) * 0x9e3779b97f4a7c15ull));
    w->env = (bh_upstream_env_t){
        .loop = &w->loop, .bufs = &w->bufs, .wreqs = &w->wreqs, .rng = &w->rng};
    bh__client_settings(&w->req_settings);
    bh__forward_settings(&w->resp_settings);
    w->max_hdrs = conf->limits.max_headers + 1;
    w->hdrs = bh_calloc(w->max_hdrs, sizeof(*w->hdrs));
    w->listeners = bh_calloc(conf->n_listeners, sizeof(*w->listeners));
    w->upstreams = bh_calloc(conf->n_upstreams ? conf->n_upstreams : 1, sizeof(*w->upstreams));
    if (w->hdrs == NULL || w->listeners == NULL || w->upstreams == NULL)
        return BH_ENOMEM;
    uv_async_init(&w->loop, &w->wakeup, on_wakeup);
    w->wakeup.data = w;
    uv_timer_init(&w->loop, &w->drain_timer);
    w->drain_timer.data = w;
    for (size_t i = 0; i < conf->n_upstreams; i++) {
        rc = bh_upstream_init(&w->upstreams[i], &conf->upstreams[i], &w->env,
                              &srv->upstreams[i]);
        if (rc < 0)
            return rc;
        w->upstreams[i].data = w;
        w->n_upstreams++;
        w->upstreams_open++;
    }
    if (srv->access_fd >= 0) {
        w->alog = bh_malloc(sizeof(*w->alog));
        if (w->alog == NULL)
            return BH_ENOMEM;
        bh_accesslog_init(w->alog, &w->loop, srv->access_fd);
    }
    w->pg_pools = bh_pg_pools_new(&w->loop, srv->pg);
    if (w->pg_pools == NULL)
        return BH_ENOMEM;
    w->pg_open = true;
    /* Fixed credentials are known before any request: pools with min_idle open now. */
    for (size_t i = 0; i < conf->n_databases; i++) {
        const bh_conf_database_t *db = &conf->databases[i];
        bh_pg_pool_t *pool;
        if (db->auth == BH_DB_AUTH_FIXED && db->pool.min_idle > 0 &&
            bh_pg_pool_get(w->pg_pools, &srv->databases[i].server, db->dbname, db->user,
                           db->password, &pool) < 0)
            bh_log_warn("database %s: cannot pre-warm its pool", db->name);
    }
    if (id == 0) { /* one worker checks health for all: the result is shared */
        w->health = bh_calloc(conf->n_upstreams ? conf->n_upstreams : 1, sizeof(*w->health));
        if (w->health == NULL)
            return BH_ENOMEM;
        for (size_t i = 0; i < conf->n_upstreams; i++)
            if ((w->health[i] = bh_health_start(&w->upstreams[i])) != NULL)
                w->health_running++;
    }
    for (size_t i = 0; i < conf->n_listeners; i++) {
        rc = open_listener(w, &w->listeners[i], &conf->listeners[i].addr);
        if (rc < 0) {
            bh_log_error("listener %s (%s): %s", conf->listeners[i].name,
                         conf->listeners[i].addr.text, uv_strerror(rc));
            return rc;
        }
        w->n_listeners++;
    }
    return 0;
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
    /* After a normal drain every handle is closed already; after a failed init, close here. */
    uv_walk(&w->loop, on_walk_close, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&w->loop);
    if (rc != 0)
        bh_log_error("worker %u: loop closed with handles still open: %s", w->id, uv_strerror(rc));
    bh_wreq_cache_destroy(&w->wreqs);
    bh_bufpool_destroy(&w->bufs);
    if (w->alog != NULL)
        bh_accesslog_flush(w->alog);
    bh_free(w->alog);
    bh_free(w->health);
    bh_free(w->hdrs);
    bh_free(w->listeners);
    bh_free(w->upstreams);
}

int bh_server_init(bh_server_t *srv, bh_conf_t *conf)
{
    memset(srv, 0, sizeof(*srv));
    srv->access_fd = -1;
    srv->conf = conf;
    atomic_init(&srv->clients, 0);
    srv->upstreams = bh_calloc(conf->n_upstreams ? conf->n_upstreams : 1,
                               sizeof(*srv->upstreams));
    srv->workers = bh_calloc(conf->workers, sizeof(bh_worker_t));
    if (srv->upstreams == NULL || srv->workers == NULL)
        return BH_ENOMEM;
    uint64_t now = uv_hrtime() / 1000000;
    srv->access_fd = bh_accesslog_open(conf->log.access);
    if (srv->access_fd < -1) {
        bh_log_error("access log %s: %s", conf->log.access, strerror(-srv->access_fd - 1));
        return BH_ECONFIG;
    }
    srv->databases = bh_calloc(conf->n_databases ? conf->n_databases : 1, sizeof(*srv->databases));
    srv->pg = bh_pg_shared_new(on_pg_kick, srv);
    if (srv->databases == NULL || srv->pg == NULL)
        return BH_ENOMEM;
    for (size_t i = 0; i < conf->n_databases; i++) {
        srv->n_databases++;
        if (bh_sql_db_init(&srv->databases[i], &conf->databases[i], now) < 0)
            return BH_ENOMEM;
    }
    for (size_t i = 0; i < conf->n_upstreams; i++) {
        srv->n_upstreams++;
        if (bh_upstream_shared_init(&srv->upstreams[i], &conf->upstreams[i], now) < 0)
            return BH_ENOMEM;
        srv->upstreams[i].sem.kick = on_sem_kick;
        srv->upstreams[i].sem.data = srv;
    }
    for (uint32_t i = 0; i < conf->workers; i++) {
        srv->n_workers++;
        int rc = worker_init(&srv->workers[i], srv, i);
        if (rc < 0)
            return rc;
    }
    return 0;
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
    for (size_t i = 0; i < srv->n_upstreams; i++)
        bh_upstream_shared_destroy(&srv->upstreams[i]);
    bh_free(srv->upstreams);
    if (srv->access_fd > STDERR_FILENO)
        close(srv->access_fd);
    for (size_t i = 0; i < srv->n_databases; i++)
        bh_sql_db_destroy(&srv->databases[i]);
    bh_free(srv->databases);
    if (srv->pg != NULL)
        bh_pg_shared_free(srv->pg);
}
