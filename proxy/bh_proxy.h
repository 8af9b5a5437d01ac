/* The server's internal types: the process (bh_server_t), its workers, client connections and
 * the exchange (one request/response) a client connection runs at a time.
 *
 * Ownership: a worker owns its loop, listeners, client connections and upstream pools. A client
 * connection embeds its current exchange (no allocation per request) and is freed from the close
 * callback of its last handle. The exchange borrows one upstream connection from a pool while it
 * forwards, and gives it back (reusable or not) before it ends. */
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

/* Backpressure: stop reading one side while the other side has more than this queued. */
#define BH_WRITE_HIGH_WATER (256 * 1024)

typedef struct bh_worker bh_worker_t;
typedef struct bh_client bh_client_t;

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
} bh_snap_t;

typedef struct bh_server {
    bh_snap_t *snap;                /* the current one (main thread; workers get their own ref) */
    bh_pg_shared_t *pg;             /* Postgres permit counters per pool key */
    bh_metrics_t metrics;
    int access_fd;                  /* log.access destination; -1: off */
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
} bh_gen_t;

typedef struct bh_listener {
    uv_tcp_t tcp;
    bh_worker_t *w;
    bh_list_t link;
    char *addr;                     /* the configured address text */
} bh_listener_t;

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
    bh_upstream_env_t env;
    bh_list_t clients;
    uint32_t n_clients;
    bool draining;
    bool upstreams_closing;
    llhttp_settings_t req_settings, resp_settings;
    bh_hdr_t *hdrs;                 /* scratch for splitting one head: max_headers + 1 */
    size_t max_hdrs;
    bool started;                   /* its thread is running */
};

enum bh_framing {
    BH_FRAME_NONE,      /* no body */
    BH_FRAME_LENGTH,    /* Content-Length: bytes pass through */
    BH_FRAME_CHUNKED,   /* re-framed: each piece becomes a chunk */
    BH_FRAME_CLOSE,     /* body ends when the connection closes */
};

enum bh_up_phase {
    BH_UP_NONE,
    BH_UP_WAITING,      /* for a pooled connection */
    BH_UP_SENDING,      /* request head/body going out */
    BH_UP_FIRST_BYTE,   /* request sent, waiting for the response head */
    BH_UP_RECEIVING,    /* response streaming to the client */
    BH_UP_TUNNEL,       /* after a 101 */
    BH_UP_BACKOFF,      /* between a failed attempt and the retry */
};

/* Request body bytes kept so that a retry can send them again (retry.max_replay_bytes). */
#define BH_REPLAY_SLICES 32
typedef struct bh_replay {
    bh_buf_t *buf;
    const char *p;
    size_t n;
} bh_replay_t;

typedef struct bh_exchange {
    bh_gen_t *gen;                  /* referenced while active */
    const bh_conf_route_t *route;
    bh_upstream_t *up;
    bh_route_cells_t *route_cells;  /* this worker's metrics of the route (or of "no route") */
    bh_backend_cells_t *up_cells;   /* ... of the upstream or database; NULL before routing */
    bh_pool_waiter_t waiter;
    bool waiting;                   /* waiter is queued in a pool */
    bh_upconn_t *uc;
    bh_buf_t *head;                 /* forwarded request head until queued upstream */
    uint32_t head_len;
    llhttp_t rp;                    /* response parser */
    uint64_t start_ms, deadline_ms, up_activity_ms;
    uint64_t start_ns;              /* for the duration histogram (the loop clock is in ms) */
    uint64_t wait_start_ms;         /* the current attempt asked the pool */
    uint64_t req_body_bytes;
    uint64_t body_limit;            /* 413 beyond: limits.max_body_bytes (none for /sql) */
    uint64_t retry_at_ms;           /* BH_UP_BACKOFF: when the next attempt starts */
    uint32_t resp_head_start;       /* offset in uc->rbuf */
    uint32_t method_bit;            /* BH_M_* */
    unsigned attempts;              /* attempts started */
    int last_err;                   /* why the last attempt failed */
    size_t ep;                      /* endpoint of the current attempt */
    bool picked;                    /* ep counts this attempt in flight (bh_upstream_unpick) */
    size_t failed_ep;               /* endpoint of the last failed attempt, or BH_BALANCE_NONE */
    bh_breaker_ticket_t ticket;     /* the current attempt's, until recorded */
    bh_replay_t *replay;            /* allocated once the request has a body */
    uint32_t n_replay;
    uint64_t replay_bytes;
    enum bh_framing req_framing, resp_framing;
    enum bh_up_phase phase;
    int status;
    bool active;                    /* between head received and exchange end */
    bool is_head, expect_continue, upgrade;
    bool req_done;                  /* the whole request was received (parser message complete) */
    bool resp_started;              /* response bytes went to the client */
    bool resp_done;
    bool local;                     /* bulkhead answered itself; the request body is discarded */
    bool replayable;                /* every body byte so far is in replay[] */
    bool idempotency_key;           /* the request carries Idempotency-Key */
    bool continue_sent;             /* 100 Continue went to the client */
    bh_sql_t *sql;                  /* a POST /sql exchange (database route) */
    char *log_target;               /* method and target for the access log (only when on) */
    uint64_t out_at_start;          /* client out queue total when the request began */
    uint64_t attached_ms, first_byte_ms;
} bh_exchange_t;

enum bh_client_state {
    BH_CS_IDLE,         /* between requests: keepalive_timeout */
    BH_CS_HEAD,         /* receiving a request head: header_timeout */
    BH_CS_EXCHANGE,     /* forwarding a request and its response */
    BH_CS_TUNNEL,       /* after a 101: bytes piped both ways */
    BH_CS_CLOSING,
};

struct bh_client {
    uv_tcp_t tcp;
    uv_timer_t timer;               /* keepalive, header, body gap and the exchange deadline */
    bh_worker_t *w;
    bh_list_t link;                 /* on the worker's client list */
    llhttp_t parser;
    bh_outq_t out;
    bh_buf_t *rbuf;
    uint32_t rlen, rpos;            /* bytes in rbuf; parsed up to */
    uint32_t head_start;            /* offset of the current request head in rbuf */
    uint32_t nheaders;
    enum bh_client_state state;
    int parse_error;                /* BH_E* set by a parser callback that stopped it */
    uint8_t pause;                  /* why a parser callback paused it */
    bool reading;
    bool in_parse;                  /* bh__client_parse is on the stack */
    bool kick;                      /* run the parser once more even without new bytes */
    bool eof;                       /* the client sent FIN or the read failed */
    bool paused;                    /* parser paused: at a head end or a message end */
    bool close_after;               /* close once the current response is written */
    bool counted;                   /* counted in srv->clients */
    uint8_t open_handles;
    uint64_t phase_start_ms;        /* start of the keepalive/header phase; last body read */
    uint64_t timer_due;             /* when the timer fires (valid while it is active) */
    char ip[46];
    bh_exchange_t ex;
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

/* bh_worker.c */
BH_MUST_CHECK int bh_server_init(bh_server_t *srv, bh_conf_t *conf);
/* Main thread: hands a new snapshot to every worker (new exchanges use it; in-flight ones
 * finish on theirs) and makes it current. Takes over the caller's reference. */
void bh_server_publish(bh_server_t *srv, bh_snap_t *snap);
/* Main thread, on SIGHUP: re-reads the config file. When it is invalid (or a new listener
 * cannot bind), logs why, counts the failure and keeps running the current snapshot. */
int bh_server_reload(bh_server_t *srv);
void bh__gen_unref(bh_gen_t *g);
/* Whether a listener could bind a (so that a reload can refuse an address in use). */
int bh_listener_probe(const bh_conf_addr_t *a);
/* Starts every worker thread. */
BH_MUST_CHECK int bh_server_start(bh_server_t *srv);
/* From any thread: every worker drains (stops accepting, finishes in-flight work) and exits. */
void bh_server_stop(bh_server_t *srv);
/* Waits for every worker thread to exit. */
void bh_server_join(bh_server_t *srv);
void bh_server_destroy(bh_server_t *srv);
void bh__worker_client_closed(bh_worker_t *w, bh_client_t *c);

/* bh_client.c */
void bh__client_accept(bh_worker_t *w, uv_stream_t *listener);
void bh__client_settings(llhttp_settings_t *s);
void bh__client_close(bh_client_t *c);
void bh__client_drain(bh_client_t *c);
void bh__client_update_reading(bh_client_t *c);
void bh__client_parse(bh_client_t *c);
void bh__client_resume(bh_client_t *c);
void bh__client_exchange_done(bh_client_t *c);
void bh__client_rearm_timer(bh_client_t *c);

/* bh_forward.c */
void bh__forward_settings(llhttp_settings_t *s);
void bh__forward_start(bh_client_t *c, const char *head, size_t head_len);
int bh__forward_body(bh_client_t *c, const char *at, size_t len);
int bh__forward_request_done(bh_client_t *c);
void bh__forward_flush(bh_client_t *c);
/* The exchange ends early: the client went away (err 0: counted as 499), or (err < 0, no
 * response byte sent yet) the caller answers with err's status itself. */
void bh__forward_abort(bh_client_t *c, int err);
/* Counts a reply bulkhead made outside any exchange (a request rejected while its head was
 * read, a connection refused at accept) under route="" in the metrics. */
void bh__forward_count_unrouted(bh_client_t *c, int err, uint64_t since_ms);
void bh__forward_deadline(bh_client_t *c, uint64_t now);
void bh__forward_tunnel_data(bh_client_t *c);
void bh__forward_client_drained(bh_client_t *c);
void bh__forward_finish(bh_client_t *c);
void bh__forward_local_reply(bh_client_t *c, int err, bool close);
uint64_t bh__forward_next_timeout(bh_client_t *c);

#endif
