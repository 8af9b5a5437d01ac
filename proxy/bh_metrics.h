/* The metrics registry: every counter, gauge and histogram /metrics and /stats report.
 *
 * Cells are grouped by what they describe (a route, an upstream, a database, an endpoint) and
 * found by name: an entry is created the first time a config names it and lives until the
 * process exits, so counters stay monotonic across reloads (a route that a reload keeps keeps its
 * counts) and a cell's address never changes. Each entry holds one block of cells per worker, each
 * on its own cache lines, written only by that worker (bh_stat.h); the admin thread sums them.
 *
 * The registry itself (the entry list) is changed only on the main thread, at startup and on
 * reload, before a snapshot naming the new entries is handed to the workers. */
#ifndef BH_METRICS_H
#define BH_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include "bh_list.h"
#include "bh_pool.h"
#include "bh_retry.h"
#include "bh_stat.h"

#define BH_OUTCOME_N (BH_OUTCOME_LOCAL + 1)
#define BH_STATUS_MIN 100
#define BH_STATUS_MAX 599

enum bh_mkind {
    BH_M_ROUTE,
    BH_M_UPSTREAM,
    BH_M_DATABASE,
    BH_M_ENDPOINT,
};

typedef struct bh_route_cells {
    bh_counter_t codes[BH_STATUS_MAX - BH_STATUS_MIN + 1];
    bh_hist_t duration;
} bh_route_cells_t;

/* One reply on a route: its status and how long the request took. */
static inline void bh_route_count(bh_route_cells_t *rc, int status, uint64_t us)
{
    if (status >= BH_STATUS_MIN && status <= BH_STATUS_MAX)
        bh_counter_add(&rc->codes[status - BH_STATUS_MIN], 1);
    bh_hist_observe(&rc->duration, us);
}

/* An upstream or a database. */
typedef struct bh_backend_cells {
    bh_counter_t attempts[BH_OUTCOME_N];
    bh_counter_t retries;
    bh_counter_t budget_exhausted;
    bh_counter_t ejections;
    bh_counter_t releases;     /* ejected endpoints brought back early (max_ejected full) */
    bh_hist_t wait;               /* queue wait for a pooled connection */
    bh_pool_gauges_t pool;        /* databases (an upstream's are per endpoint) */
    bh_counter_t sql_resets;      /* databases: session resets sent */
    bh_counter_t sql_cache[2];    /* databases: prepared-statement cache hits, misses */
} bh_backend_cells_t;

typedef struct bh_endpoint_cells {
    bh_pool_gauges_t pool;
} bh_endpoint_cells_t;

typedef struct bh_worker_cells {
    bh_counter_t accepted;
    bh_gauge_t clients;
    bh_gauge_t generation;        /* of the snapshot it serves new requests with */
    bh_counter_t tls[2][3];       /* TLS handshakes [enum bh_tls_side][enum bh_tls_result] */
    bh_counter_t log_dropped;     /* access-log lines lost to a failed write */
} bh_worker_cells_t;

typedef struct bh_mentry {
    bh_list_t link;
    enum bh_mkind kind;
    char *name;                   /* route/upstream/database name; an endpoint's address */
    struct bh_mentry *parent;     /* an endpoint's upstream */
    size_t stride;
    char *cells;                  /* n_workers blocks of stride bytes, 64-byte aligned */
    void *mem;
} bh_mentry_t;

typedef struct bh_metrics {
    uint32_t n_workers;
    bh_list_t entries;            /* creation order */
    char *worker_mem;
    bh_worker_cells_t *workers;   /* per worker, each on cache lines of its own */
    size_t worker_stride;
    bh_mentry_t *no_route;        /* requests that matched no route (route="") */
    uint64_t reloads_ok, reloads_failed;   /* main thread only, as the four below */
    bool last_reload_failed;
    uint64_t last_reload_unix_s;  /* 0 = none tried */
    uint64_t last_load_ok_unix_s; /* the config now running was read (start or reload) */
    char last_reload_error[256];  /* "" unless the last reload failed */
    uint64_t start_unix_s;
} bh_metrics_t;

BH_MUST_CHECK int bh_metrics_init(bh_metrics_t *m, uint32_t n_workers);
void bh_metrics_destroy(bh_metrics_t *m);

/* The entry for (kind, name, parent), created when missing; NULL when out of memory. */
bh_mentry_t *bh_metrics_entry(bh_metrics_t *m, enum bh_mkind kind, const char *name,
                              bh_mentry_t *parent);

static inline void *bh_mentry_cells(const bh_mentry_t *e, uint32_t worker)
{
    return e->cells + (size_t)worker * e->stride;
}

static inline bh_worker_cells_t *bh_metrics_worker(const bh_metrics_t *m, uint32_t worker)
{
    return (bh_worker_cells_t *)(void *)((char *)m->workers + (size_t)worker * m->worker_stride);
}

/* Sums of one entry's cells over every worker. */
uint64_t bh_metrics_sum(const bh_mentry_t *e, uint32_t n_workers, size_t offset);
int64_t bh_metrics_gsum(const bh_mentry_t *e, uint32_t n_workers, size_t offset);

/* Outcome label values ("success", "connect_failed", ...). */
const char *bh_outcome_label(enum bh_outcome o);

#endif
