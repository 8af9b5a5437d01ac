/* The server's internal types that cross files: the process (bh_server_t), its workers, their
 * config generations and the snapshots behind them.
 *
 * Ownership: a worker owns its loop, listeners, client connections (bh_client.c) and upstream
 * pools. An exchange (bh_exchange.h) holds a reference to the generation it started on. */
#ifndef BH_PROXY_H
#define BH_PROXY_H

#include <stdatomic.h>
#include <uv.h>
#include <llhttp.h>
#include "bh_buf.h"
#include "bh_conf.h"
#include "bh_http.h"
#include "bh_list.h"
#include "bh_outq.h"
#include "bh_accesslog.h"
#include "bh_health.h"
#include "bh_metrics.h"
#include "bh_sql.h"
#include "bh_upstream.h"
#include "bh_tls.h"

/* Backpressure: stop reading one side while the other side has more than this queued. */
#define BH_WRITE_HIGH_WATER (256 * 1024)

typedef struct bh_worker bh_worker_t;

/* A loaded config file with its reference count: what outlives a reload (an unchanged
 * upstream's shared state, a worker's pools) keeps the config it was built from. */
typedef struct bh_cref {
    _Atomic uint32_t refs;
    bh_conf_t *conf;
} bh_cref_t;

/* What the workers share about one configured upstream, kept across reloads while its settings
 * do not change (one per snapshot that lists it, plus one per worker object built on it). */
typedef struct bh_ushared {
    bh_upstream_shared_t s;
    _Atomic uint32_t refs;
    bh_cref_t *origin;              /* conf->upstreams[index] is its configuration */
    size_t index;
} bh_ushared_t;

/* One configuration generation: the frozen config and the process-wide state that goes with it.
 * The main thread builds it (startup, SIGHUP) and hands a reference to every worker. */
typedef struct bh_snap {
    _Atomic uint32_t refs;
    uint64_t generation;            /* 1 at startup, +1 per successful reload */
    bh_cref_t *cref;
    const bh_conf_t *conf;
    bh_ushared_t **upstreams;       /* parallel to conf->upstreams */
    bh_sql_db_t **databases;        /* parallel to conf->databases */
    bh_mentry_t **route_m;          /* metrics entries parallel to conf->routes ... */
    bh_mentry_t **up_m;             /* ... conf->upstreams ... */
    bh_mentry_t **db_m;             /* ... conf->databases */
    bh_mentry_t ***ep_m;            /* [upstream][endpoint] */
    SSL_CTX **listener_tls;         /* parallel to conf->listeners; NULL for a plain one */
} bh_snap_t;

typedef struct bh_server {
    bh_snap_t *snap;                /* the current one (main thread; workers get their own ref) */
    bh_pg_shared_t *pg;             /* Postgres permit counters per pool key */
    bh_metrics_t metrics;
    int access_fd;                  /* log.access destination; -1: off */
    bh_logwriter_t *alog_writer;    /* writes the workers' access-log lines to access_fd */
    bh_logwriter_t *elog_writer;    /* writes every thread's error-log lines to stderr */
    bh_worker_t *workers;
    uint32_t n_workers;
    _Atomic int64_t clients;        /* open client connections, all workers (limits.max_connections) */
    void (*on_worker_exit)(struct bh_server *srv); /* called on the worker's thread */
    void *data;
} bh_server_t;

/* A worker's upstream object (its pools, balancer cursor, health checks), kept across reloads
 * while the upstream's settings do not change. Worker-local. */
typedef struct bh_wup {
    bh_upstream_t up;
    uint32_t refs;                  /* generations listing it */
    bh_ushared_t *sh;               /* referenced */
    bh_health_t *health;            /* worker 0 only */
    bh_worker_t *w;
    bh_list_t link;                 /* on the worker's list of live objects */
} bh_wup_t;

/* A worker's view of one snapshot. Every exchange holds a reference to the generation it
 * started on and finishes on it, whatever reloads happen meanwhile. Worker-local. */
typedef struct bh_gen {
    uint32_t refs;                  /* the worker's while current, one per exchange */
    bh_snap_t *snap;
    const bh_conf_t *conf;
    bh_wup_t **upstreams;           /* parallel to conf->upstreams */
    bh_worker_t *w;
    void (*free)(struct bh_gen *g); /* the worker's, when the last reference goes */
} bh_gen_t;

static inline void bh_gen_release(bh_gen_t *g)
{
    if (--g->refs == 0)
        g->free(g);
}

typedef struct bh_listener {
    uv_tcp_t tcp;
    bh_worker_t *w;
    bh_list_t link;
    char *addr;                     /* the configured address text */
} bh_listener_t;

/* What bh_client.c keeps per worker: an idle keep-alive connection holds no timer, parser or
 * exchange; those come from `free` when a request starts and go back after it (see bh_client.c). */
typedef struct bh_client_cache {
    bh_list_t idle;                 /* idle client connections, longest idle first */
    uv_timer_t idle_timer;          /* closes those idle for limits.keepalive_timeout */
    uv_check_t check;               /* after a loop turn: busy parts of idle connections go back */
    bh_list_t pending;              /* busy parts to look at in the check */
    bh_list_t free;                 /* busy parts for the next requests (their timers stopped) */
    uint32_t n_free;
    uint32_t n_attached;            /* busy parts on connections */
} bh_client_cache_t;

struct bh_worker {
    bh_server_t *srv;
    const bh_conf_t *conf;          /* gen->conf */
    bh_gen_t *gen;                  /* the current generation */
    bh_snap_t *last_snap;           /* after the upstreams closed: keeps conf valid */
    _Atomic(bh_snap_t *) pending;   /* a new snapshot from the main thread, not yet taken */
    uint32_t id;
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t wakeup;              /* the main thread asks for a drain or a reload */
    bh_sem_inbox_t inbox;           /* other workers' pools ask for permits (drained on wakeup) */
    _Atomic int stop_requested;
    uv_timer_t drain_timer;
    bh_list_t listeners;            /* bh_listener_t */
    bh_list_t wups;                 /* every live bh_wup_t, current generation or not */
    bh_pg_pools_t *pg_pools;        /* this worker's Postgres pools */
    bh_accesslog_t *alog;           /* NULL when log.access is off */
    bh_worker_cells_t *cells;       /* this worker's metrics */
    bool pg_open;
    unsigned health_running;
    size_t upstreams_open;          /* bh_wup_t objects not yet closed, and the pg pools */
    bh_bufpool_t bufs;
    bh_wreq_cache_t wreqs;
    bh_rng_t rng;
    uint64_t rid_prefix, rid_next;  /* request ids: a random prefix per worker, then a counter */
    bh_upstream_env_t env;
    bh_tls_env_t tls_env;
    bh_list_t clients;              /* bh_client.c's, linked through their own list node */
    bh_client_cache_t cc;
    uint32_t n_clients;
    void (*client_closed)(bh_worker_t *w); /* after n_clients went down */
    bool draining;
    bool upstreams_closing;
    bh_hdr_t *hdrs;                 /* scratch for splitting one head: max_headers + 1 */
    size_t max_hdrs;
    bool started;                   /* its thread is running */
};

/* bh_snap.c */
/* A snapshot for conf (taking it over), reusing the shared state of old's upstreams and
 * databases whose settings are equal (old may be NULL). One reference, the caller's. */
BH_MUST_CHECK int bh_snap_new(bh_server_t *srv, bh_conf_t *conf, const bh_snap_t *old,
                              bh_snap_t **out);
bh_snap_t *bh_snap_ref(bh_snap_t *s);
void bh_snap_unref(bh_snap_t *s);          /* any thread */
void bh_ushared_unref(bh_ushared_t *u);    /* any thread */
static inline const bh_conf_upstream_t *bh_ushared_conf(const bh_ushared_t *u)
{
    return &u->origin->conf->upstreams[u->index];
}

/* The TLS context and settings of the listener l of w's current generation (NULL: plain). */
SSL_CTX *bh_listener_tls(bh_worker_t *w, const bh_listener_t *l, const bh_conf_listener_tls_t **conf);

/* bh_worker.c */
BH_MUST_CHECK int bh_server_init(bh_server_t *srv, bh_conf_t *conf);
/* Main thread: hands a new snapshot to every worker (new exchanges use it; in-flight ones
 * finish on theirs) and makes it current. Takes over the caller's reference. */
void bh_server_publish(bh_server_t *srv, bh_snap_t *snap);
/* Main thread, on SIGHUP: re-reads the config file. When it is invalid (or a new listener
 * cannot bind), logs why, counts the failure and keeps running the current snapshot. */
int bh_server_reload(bh_server_t *srv);
/* Whether a listener could bind a (so that a reload can refuse an address in use). */
int bh_listener_probe(const bh_conf_addr_t *a);
/* Starts every worker thread. */
BH_MUST_CHECK int bh_server_start(bh_server_t *srv);
/* From any thread: every worker drains (stops accepting, finishes in-flight work) and exits. */
void bh_server_stop(bh_server_t *srv);
/* Waits for every worker thread to exit. */
void bh_server_join(bh_server_t *srv);
void bh_server_destroy(bh_server_t *srv);

/* bh_client.c */
void bh_clients_init(bh_worker_t *w);
/* After the loop closed every handle: frees what the cache holds. */
void bh_clients_fini(bh_worker_t *w);
void bh_client_accept(bh_worker_t *w, uv_stream_t *listener);
/* Every client connection of w closes once idle (between requests); new requests still run. */
void bh_clients_drain(bh_worker_t *w);
/* Every client connection of w closes now. */
void bh_clients_close(bh_worker_t *w);

#endif
