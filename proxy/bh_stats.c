/* /metrics (Prometheus text exposition 0.0.4) and /stats (JSON): the metrics registry summed over
 * workers, plus the live state of the current snapshot (breakers, endpoint health, ejections).
 * Runs on the main thread, which owns the registry and the current snapshot. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <uv.h>
#include "bh_alloc.h"
#include "bh_sbuf.h"
#include "bh_stats.h"

typedef bh_sbuf_t sb_t;

__attribute__((format(printf, 2, 3))) static void put(sb_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    bh_sbuf_vprintf(b, fmt, ap);
    va_end(ap);
}

/* A label value (Prometheus) or a JSON string body: backslash, quote and newline escaped, other
 * control bytes dropped. */
static void put_escaped(sb_t *b, const char *s)
{
    for (; *s != '\0'; s++) {
        if (*s == '\\' || *s == '"')
            put(b, "\\%c", *s);
        else if (*s == '\n')
            put(b, "\\n");
        else if ((unsigned char)*s >= 0x20)
            put(b, "%c", *s);
    }
}

char *bh__stats_escape_label(const char *s, size_t *len)
{
    sb_t b = {0};
    put_escaped(&b, s);
    return bh_sbuf_take(&b, len);
}

#define CELL(type, field) offsetof(type, field)

static uint64_t sum(const bh_server_t *srv, const bh_mentry_t *e, size_t off)
{
    return bh_metrics_sum(e, srv->metrics.n_workers, off);
}

static int64_t gsum(const bh_server_t *srv, const bh_mentry_t *e, size_t off)
{
    return bh_metrics_gsum(e, srv->metrics.n_workers, off);
}

static uint64_t code_count(const bh_server_t *srv, const bh_mentry_t *route, int code)
{
    return sum(srv, route,
               CELL(bh_route_cells_t, codes) +
                   (size_t)(code - BH_STATUS_MIN) * sizeof(bh_counter_t));
}

static uint64_t attempts(const bh_server_t *srv, const bh_mentry_t *backend, int outcome)
{
    return sum(srv, backend,
               CELL(bh_backend_cells_t, attempts) + (size_t)outcome * sizeof(bh_counter_t));
}

/* A pool gauge (off: its offset in bh_pool_gauges_t) of an endpoint, of a database, or of an
 * upstream (the sum over its endpoints). */
static int64_t pool_gauge(const bh_server_t *srv, const bh_mentry_t *e, size_t off)
{
    if (e->kind == BH_M_ENDPOINT)
        return gsum(srv, e, CELL(bh_endpoint_cells_t, pool) + off);
    if (e->kind == BH_M_DATABASE)
        return gsum(srv, e, CELL(bh_backend_cells_t, pool) + off);
    int64_t n = 0;
    bh_list_t *l;
    bh_list_foreach(l, &srv->metrics.entries)
    {
        const bh_mentry_t *x = bh_container_of(l, bh_mentry_t, link);
        if (x->parent == e)
            n += pool_gauge(srv, x, off);
    }
    return n;
}

static int64_t pool_state(const bh_server_t *srv, const bh_mentry_t *e, int state)
{
    return pool_gauge(srv, e, CELL(bh_pool_gauges_t, conns) + (size_t)state * sizeof(bh_gauge_t));
}

static int64_t pool_waiters(const bh_server_t *srv, const bh_mentry_t *e)
{
    return pool_gauge(srv, e, CELL(bh_pool_gauges_t, waiters));
}

static const struct {
    int state;
    const char *name;
} pool_states[] = {
    {BH_PCONN_IDLE, "idle"},
    {BH_PCONN_BUSY, "busy"},
    {BH_PCONN_CONNECTING, "connecting"},
};

/* The breaker of a backend entry in the current snapshot; NULL when the config no longer has it. */
static bh_breaker_t *breaker_of(bh_server_t *srv, const bh_mentry_t *e)
{
    const bh_snap_t *s = srv->snap;
    for (size_t i = 0; e->kind == BH_M_UPSTREAM && i < s->conf->n_upstreams; i++)
        if (s->up_m[i] == e)
            return &s->upstreams[i]->s.breaker;
    for (size_t i = 0; e->kind == BH_M_DATABASE && i < s->conf->n_databases; i++)
        if (s->db_m[i] == e)
            return &s->databases[i]->breaker;
    return NULL;
}

/* The pool settings of a backend entry in the current snapshot; NULL when the config no longer
 * has it. */
static const bh_conf_pool_t *pool_conf_of(bh_server_t *srv, const bh_mentry_t *e)
{
    const bh_snap_t *s = srv->snap;
    for (size_t i = 0; e->kind == BH_M_UPSTREAM && i < s->conf->n_upstreams; i++)
        if (s->up_m[i] == e)
            return &s->conf->upstreams[i].pool;
    for (size_t i = 0; e->kind == BH_M_DATABASE && i < s->conf->n_databases; i++)
        if (s->db_m[i] == e)
            return &s->conf->databases[i].pool;
    return NULL;
}

#define FOREACH_ENTRY(e, kind_test)                                                                \
    for (bh_list_t *l_ = srv->metrics.entries.next; l_ != &srv->metrics.entries; l_ = l_->next)    \
        for (const bh_mentry_t *e = bh_container_of(l_, bh_mentry_t, link);                        \
             e != NULL && (kind_test); e = NULL)

static void family(sb_t *b, const char *name, const char *type, const char *help)
{
    put(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void label(sb_t *b, const char *name, const char *value)
{
    put(b, "%s=\"", name);
    put_escaped(b, value);
    put(b, "\"");
}

static void histogram(sb_t *b, bh_server_t *srv, const char *name, const char *lname,
                      const bh_mentry_t *e, size_t off)
{
    static const char *const le[BH_HIST_N] = {"0.001", "0.0025", "0.005", "0.01", "0.025",
                                              "0.05",  "0.1",    "0.25",  "0.5",  "1",
                                              "2.5",   "5",      "10",    "+Inf"};
    uint64_t cum = 0;
    for (int i = 0; i < BH_HIST_N; i++) {
        cum += sum(srv, e, off + CELL(bh_hist_t, bucket) + (size_t)i * sizeof(bh_counter_t));
        put(b, "%s_bucket{", name);
        label(b, lname, e->name);
        put(b, ",le=\"%s\"} %llu\n", le[i], (unsigned long long)cum);
    }
    put(b, "%s_sum{", name);
    label(b, lname, e->name);
    put(b, "} %.6f\n%s_count{", (double)sum(srv, e, off + CELL(bh_hist_t, sum_us)) / 1e6, name);
    label(b, lname, e->name);
    put(b, "} %llu\n", (unsigned long long)cum);
}

static bool is_backend(const bh_mentry_t *e)
{
    return e->kind == BH_M_UPSTREAM || e->kind == BH_M_DATABASE;
}

static void backend_counter(sb_t *b, bh_server_t *srv, const char *name, const char *help,
                            size_t off)
{
    family(b, name, "counter", help);
    FOREACH_ENTRY(e, is_backend(e))
    {
        put(b, "%s{", name);
        label(b, "upstream", e->name);
        put(b, "} %llu\n", (unsigned long long)sum(srv, e, off));
    }
}

static void process_families(sb_t *b, bh_server_t *srv)
{
    const bh_metrics_t *m = &srv->metrics;
    uint64_t accepted = 0;
    int64_t clients = 0;
    for (uint32_t i = 0; i < m->n_workers; i++) {
        accepted += bh_counter_get(&bh_metrics_worker(m, i)->accepted);
        clients += bh_gauge_get(&bh_metrics_worker(m, i)->clients);
    }
    family(b, "bulkhead_build_info", "gauge", "Build information; always 1.");
    put(b, "bulkhead_build_info{version=\"%s\",libuv=\"%s\"} 1\n", BH_VERSION,
        uv_version_string());
    family(b, "bulkhead_start_time_seconds", "gauge",
           "Process start time, seconds since the epoch.");
    put(b, "bulkhead_start_time_seconds %llu\n", (unsigned long long)m->start_unix_s);
    family(b, "bulkhead_workers", "gauge", "Worker threads.");
    put(b, "bulkhead_workers %u\n", m->n_workers);
    family(b, "bulkhead_client_connections", "gauge", "Open client connections.");
    put(b, "bulkhead_client_connections %lld\n", (long long)clients);
    family(b, "bulkhead_connections_accepted_total", "counter", "Client connections accepted.");
    put(b, "bulkhead_connections_accepted_total %llu\n", (unsigned long long)accepted);
    uint64_t dropped = 0;
    for (uint32_t i = 0; i < m->n_workers; i++)
        dropped += bh_counter_get(&bh_metrics_worker(m, i)->log_dropped);
    if (srv->alog_writer != NULL)
        dropped += bh_logwriter_lost(srv->alog_writer);
    uint64_t edropped = bh_log_dropped();
    if (srv->elog_writer != NULL)
        edropped += bh_logwriter_lost(srv->elog_writer);
    family(b, "bulkhead_error_log_dropped_lines_total", "counter",
           "Error-log lines lost: stderr did not keep up (256 KiB waiting) or a write failed.");
    put(b, "bulkhead_error_log_dropped_lines_total %llu\n", (unsigned long long)edropped);
    family(b, "bulkhead_access_log_dropped_lines_total", "counter",
           "Access-log lines lost: the destination was too slow (log.access_buffer full) or a "
           "write failed (a full disk); requests are served anyway.");
    put(b, "bulkhead_access_log_dropped_lines_total %llu\n", (unsigned long long)dropped);
}

static void route_families(sb_t *b, bh_server_t *srv)
{
    family(b, "bulkhead_requests_total", "counter",
           "Requests answered, by route and the status sent to the client (499: the client left "
           "first).");
    FOREACH_ENTRY(e, e->kind == BH_M_ROUTE)
    {
        for (int code = BH_STATUS_MIN; code <= BH_STATUS_MAX; code++) {
            uint64_t n = code_count(srv, e, code);
            if (n == 0)
                continue;
            put(b, "bulkhead_requests_total{");
            label(b, "route", e->name);
            put(b, ",code=\"%d\"} %llu\n", code, (unsigned long long)n);
        }
    }
    family(b, "bulkhead_request_duration_seconds", "histogram",
           "Time from the request head to the end of the response, by route.");
    FOREACH_ENTRY(e, e->kind == BH_M_ROUTE)
    {
        histogram(b, srv, "bulkhead_request_duration_seconds", "route", e,
                  CELL(bh_route_cells_t, duration));
    }
}

static void pool_families(sb_t *b, bh_server_t *srv)
{
    family(b, "bulkhead_pool_connections", "gauge",
           "Pooled connections of an upstream or database, by state.");
    FOREACH_ENTRY(e, is_backend(e))
    {
        for (size_t k = 0; k < sizeof(pool_states) / sizeof(pool_states[0]); k++) {
            put(b, "bulkhead_pool_connections{");
            label(b, "pool", e->name);
            put(b, ",state=\"%s\"} %lld\n", pool_states[k].name,
                (long long)pool_state(srv, e, pool_states[k].state));
        }
    }
    family(b, "bulkhead_pool_waiters", "gauge", "Requests queued for a pooled connection.");
    FOREACH_ENTRY(e, is_backend(e))
    {
        put(b, "bulkhead_pool_waiters{");
        label(b, "pool", e->name);
        put(b, "} %lld\n", (long long)pool_waiters(srv, e));
    }
    family(b, "bulkhead_pool_wait_seconds", "histogram",
           "Time a request waited for a pooled connection (0 when one was idle).");
    FOREACH_ENTRY(e, is_backend(e))
    {
        histogram(b, srv, "bulkhead_pool_wait_seconds", "pool", e, CELL(bh_backend_cells_t, wait));
    }
}

static void backend_families(sb_t *b, bh_server_t *srv)
{
    family(b, "bulkhead_upstream_attempts_total", "counter",
           "Attempts sent to an upstream or database, by outcome.");
    FOREACH_ENTRY(e, is_backend(e))
    {
        for (int o = 0; o < BH_OUTCOME_N; o++) {
            put(b, "bulkhead_upstream_attempts_total{");
            label(b, "upstream", e->name);
            put(b, ",outcome=\"%s\"} %llu\n", bh_outcome_label((enum bh_outcome)o),
                (unsigned long long)attempts(srv, e, o));
        }
    }
    pool_families(b, srv);
    family(b, "bulkhead_breaker_state", "gauge",
           "Circuit breaker state: 0 closed, 1 open, 2 half-open.");
    FOREACH_ENTRY(e, is_backend(e))
    {
        bh_breaker_t *br = breaker_of(srv, e);
        if (br == NULL)
            continue;
        put(b, "bulkhead_breaker_state{");
        label(b, "upstream", e->name);
        put(b, "} %d\n", (int)bh_breaker_state(br));
    }
    backend_counter(b, srv, "bulkhead_retries_total", "Retries scheduled.",
                    CELL(bh_backend_cells_t, retries));
    backend_counter(b, srv, "bulkhead_retry_budget_exhausted_total",
                    "Retries the policy allowed but the retry budget refused.",
                    CELL(bh_backend_cells_t, budget_exhausted));
    backend_counter(b, srv, "bulkhead_outlier_ejections_total",
                    "Endpoints ejected by outlier detection.", CELL(bh_backend_cells_t, ejections));
    backend_counter(b, srv, "bulkhead_outlier_releases_total",
                    "Ejected endpoints brought back early to make room under max_ejected: more "
                    "endpoints were failing than it allows out at once.",
                    CELL(bh_backend_cells_t, releases));
}

/* The SQL gateway's own counters, per database entry. */
static void sql_families(sb_t *b, bh_server_t *srv)
{
    family(b, "bulkhead_sql_resets_total", "counter",
           "Session resets sent in front of a request on a reused server connection.");
    FOREACH_ENTRY(e, e->kind == BH_M_DATABASE)
    {
        put(b, "bulkhead_sql_resets_total{");
        label(b, "database", e->name);
        put(b, "} %llu\n", (unsigned long long)sum(srv, e, CELL(bh_backend_cells_t, sql_resets)));
    }
    family(b, "bulkhead_sql_statement_cache_total", "counter",
           "Statements run from the per-connection prepared-statement cache, by result.");
    FOREACH_ENTRY(e, e->kind == BH_M_DATABASE)
    {
        for (int i = 0; i < 2; i++) {
            put(b, "bulkhead_sql_statement_cache_total{");
            label(b, "database", e->name);
            put(b, ",result=\"%s\"} %llu\n", i == 0 ? "hit" : "miss",
                (unsigned long long)sum(srv, e,
                                        CELL(bh_backend_cells_t, sql_cache) +
                                            (size_t)i * sizeof(bh_counter_t)));
        }
    }
}

static void config_families(sb_t *b, const bh_metrics_t *m)
{
    family(b, "bulkhead_config_reloads_total", "counter",
           "Configuration reloads (SIGHUP), by result.");
    put(b, "bulkhead_config_reloads_total{result=\"success\"} %llu\n",
        (unsigned long long)m->reloads_ok);
    put(b, "bulkhead_config_reloads_total{result=\"failure\"} %llu\n",
        (unsigned long long)m->reloads_failed);
    family(b, "bulkhead_config_last_reload_successful", "gauge",
           "1 when the last reload succeeded (or none was tried), 0 when it failed.");
    put(b, "bulkhead_config_last_reload_successful %d\n", m->last_reload_failed ? 0 : 1);
    family(b, "bulkhead_config_last_reload_success_timestamp_seconds", "gauge",
           "When the configuration now running was loaded (at start or by a reload), Unix time.");
    put(b, "bulkhead_config_last_reload_success_timestamp_seconds %llu\n",
        (unsigned long long)m->last_load_ok_unix_s);
}

static void tls_families(sb_t *b, bh_server_t *srv)
{
    static const char *const sides[] = {"client", "upstream"};
    static const char *const results[] = {"ok", "failed", "resumed"};
    const bh_metrics_t *m = &srv->metrics;
    family(b, "bulkhead_tls_handshakes_total", "counter",
           "TLS handshakes with clients and upstreams, by result (resumed: an abbreviated one).");
    for (int side = 0; side < 2; side++)
        for (int r = 0; r < 3; r++) {
            uint64_t n = 0;
            for (uint32_t i = 0; i < m->n_workers; i++)
                n += bh_counter_get(&bh_metrics_worker(m, i)->tls[side][r]);
            put(b, "bulkhead_tls_handshakes_total{side=\"%s\",result=\"%s\"} %llu\n", sides[side],
                results[r], (unsigned long long)n);
        }
    family(b, "bulkhead_tls_certificate_expiry_seconds", "gauge",
           "Seconds until a listener certificate expires (negative once expired).");
    const bh_conf_t *conf = srv->snap->conf;
    int64_t now = (int64_t)time(NULL);
    for (size_t i = 0; i < conf->n_listeners; i++) {
        const bh_conf_listener_t *l = &conf->listeners[i];
        for (size_t j = 0; l->tls.enabled && j < l->tls.n_certs; j++) {
            const bh_conf_tls_cert_t *c = &l->tls.certs[j];
            put(b, "bulkhead_tls_certificate_expiry_seconds{");
            label(b, "listener", l->name);
            put(b, ",");
            label(b, "name", c->n_names > 0 ? c->names[0] : c->cert);
            put(b, "} %lld\n", (long long)(c->not_after - now));
        }
    }
}

char *bh_stats_prometheus(bh_server_t *srv, size_t *len)
{
    sb_t b = {0};
    process_families(&b, srv);
    tls_families(&b, srv);
    route_families(&b, srv);
    backend_families(&b, srv);
    sql_families(&b, srv);
    config_families(&b, &srv->metrics);
    return bh_sbuf_take(&b, len);
}

/* ---- JSON --------------------------------------------------------------------------------- */

static void jstr(sb_t *b, const char *key, const char *value)
{
    put(b, "\"%s\":\"", key);
    put_escaped(b, value);
    put(b, "\"");
}

/* A backend's pool counts, with its configured bounds while the current config has it. */
static void json_pool(sb_t *b, bh_server_t *srv, const bh_mentry_t *e)
{
    put(b, "\"pool\":{");
    for (size_t k = 0; k < sizeof(pool_states) / sizeof(pool_states[0]); k++)
        put(b, "%s\"%s\":%lld", k ? "," : "", pool_states[k].name,
            (long long)pool_state(srv, e, pool_states[k].state));
    put(b, "},\"waiters\":%lld", (long long)pool_waiters(srv, e));
    const bh_conf_pool_t *pc = pool_conf_of(srv, e);
    if (pc != NULL)
        put(b, ",\"pool_max\":%u,\"pool_max_pending\":%u", pc->max_connections, pc->max_pending);
}

struct keys_of {
    sb_t *b;
    const char *database;
    bool first;
};

static void json_key(void *data, const char *database, const char *user, const char *dbname,
                     uint32_t connections, uint32_t max)
{
    struct keys_of *k = data;
    if (strcmp(database, k->database) != 0)
        return;
    put(k->b, "%s{", k->first ? "" : ",");
    k->first = false;
    jstr(k->b, "user", user);
    put(k->b, ",");
    jstr(k->b, "dbname", dbname);
    put(k->b, ",\"connections\":%u,\"max\":%u}", connections, max);
}

/* A database's pool keys (user and database name; a password is never shown) with their
 * connections over every worker: the entry's pool above is their sum, capped by max_connections.
 * A key is listed while some worker has a pool for it. */
static void json_db_keys(sb_t *b, bh_server_t *srv, const bh_mentry_t *e)
{
    struct keys_of k = {b, e->name, true};
    put(b, ",\"keys\":[");
    if (srv->pg != NULL)
        bh_pg_shared_keys(srv->pg, json_key, &k);
    put(b, "]");
}

/* The breaker's state word, the time left until it may go half-open (0 unless open), and its
 * monotonic counters. */
static void json_breaker(sb_t *b, bh_breaker_t *br)
{
    bh_breaker_stats_t st;
    bh_breaker_stats(br, uv_hrtime() / 1000000, &st);
    put(b,
        ",\"breaker\":\"%s\",\"breaker_half_open_in_ms\":%llu,\"breaker_opens\":%llu,"
        "\"breaker_rejections\":%llu",
        bh_breaker_state_name(bh_breaker_state(br)), (unsigned long long)st.open_remaining_ms,
        (unsigned long long)st.opens, (unsigned long long)st.rejections);
}

static void json_backend(sb_t *b, bh_server_t *srv, const bh_mentry_t *e, bool *first)
{
    put(b, "%s{", *first ? "" : ",");
    *first = false;
    jstr(b, "name", e->name);
    bh_breaker_t *br = breaker_of(srv, e);
    put(b, ",\"configured\":%s", br != NULL ? "true" : "false");
    if (br != NULL)
        json_breaker(b, br);
    put(b, ",\"retries\":%llu,\"retry_budget_exhausted\":%llu,\"outlier_ejections\":%llu,",
        (unsigned long long)sum(srv, e, CELL(bh_backend_cells_t, retries)),
        (unsigned long long)sum(srv, e, CELL(bh_backend_cells_t, budget_exhausted)),
        (unsigned long long)sum(srv, e, CELL(bh_backend_cells_t, ejections)));
    put(b, "\"attempts\":{");
    for (int o = 0; o < BH_OUTCOME_N; o++)
        put(b, "%s\"%s\":%llu", o ? "," : "", bh_outcome_label((enum bh_outcome)o),
            (unsigned long long)attempts(srv, e, o));
    put(b, "},");
    json_pool(b, srv, e);
    if (e->kind == BH_M_DATABASE)
        json_db_keys(b, srv, e);
    if (e->kind != BH_M_UPSTREAM) {
        put(b, "}");
        return;
    }
    /* endpoints: of the current config (health and ejection live in its shared state) */
    const bh_snap_t *s = srv->snap;
    size_t ui = SIZE_MAX;
    for (size_t i = 0; i < s->conf->n_upstreams; i++)
        if (s->up_m[i] == e)
            ui = i;
    put(b, ",\"endpoints\":[");
    uint64_t now = uv_hrtime() / 1000000;
    for (size_t j = 0; ui != SIZE_MAX && j < s->conf->upstreams[ui].n_endpoints; j++) {
        const bh_mentry_t *x = s->ep_m[ui][j];
        bh_outlier_t *o = s->upstreams[ui]->s.outlier;
        put(b, "%s{", j ? "," : "");
        jstr(b, "address", x->name);
        put(b, ",\"healthy\":%s,\"ejected\":%s,\"ejections\":%u",
            bh_outlier_is_healthy(o, j) ? "true" : "false",
            bh_outlier_is_ejected(o, j, now, NULL) ? "true" : "false", bh_outlier_ejections(o, j));
        for (size_t k = 0; k < sizeof(pool_states) / sizeof(pool_states[0]); k++)
            put(b, ",\"%s\":%lld", pool_states[k].name,
                (long long)pool_state(srv, x, pool_states[k].state));
        put(b, "}");
    }
    put(b, "]}");
}

/* A histogram as cumulative bucket counts (the bounds are the top-level duration_buckets_le,
 * then +Inf: the last one is the count), like /metrics' _bucket series. */
static void json_hist(sb_t *b, bh_server_t *srv, const bh_mentry_t *e, size_t off)
{
    uint64_t cum = 0;
    put(b, "{\"buckets\":[");
    for (int i = 0; i < BH_HIST_N; i++) {
        cum += sum(srv, e, off + CELL(bh_hist_t, bucket) + (size_t)i * sizeof(bh_counter_t));
        put(b, "%s%llu", i ? "," : "", (unsigned long long)cum);
    }
    put(b, "],\"sum_seconds\":%.6f,\"count\":%llu}",
        (double)sum(srv, e, off + CELL(bh_hist_t, sum_us)) / 1e6, (unsigned long long)cum);
}

static void json_route(sb_t *b, bh_server_t *srv, const bh_mentry_t *e, bool *first)
{
    uint64_t total = 0, errors = 0;
    put(b, "%s{", *first ? "" : ",");
    *first = false;
    jstr(b, "name", e->name);
    put(b, ",\"codes\":{");
    bool fc = true;
    for (int code = BH_STATUS_MIN; code <= BH_STATUS_MAX; code++) {
        uint64_t n = code_count(srv, e, code);
        if (n == 0)
            continue;
        put(b, "%s\"%d\":%llu", fc ? "" : ",", code, (unsigned long long)n);
        fc = false;
        total += n;
        errors += code >= 500 ? n : 0;
    }
    put(b, "},\"requests\":%llu,\"errors\":%llu,\"duration\":", (unsigned long long)total,
        (unsigned long long)errors);
    json_hist(b, srv, e, CELL(bh_route_cells_t, duration));
    put(b, "}");
}

/* The process: version, uptime, config generation and reloads, workers and their clients. */
static void json_process(sb_t *b, bh_server_t *srv, bool draining)
{
    static const double le[BH_HIST_N - 1] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                             0.25,  0.5,    1,     2.5,  5,     10};
    const bh_metrics_t *m = &srv->metrics;
    uint64_t now = (uint64_t)time(NULL);
    int64_t clients = 0;
    for (uint32_t i = 0; i < m->n_workers; i++)
        clients += bh_gauge_get(&bh_metrics_worker(m, i)->clients);
    put(b, "{\"version\":\"%s\",\"uptime_seconds\":%llu,\"start_time\":%llu,\"draining\":%s,",
        BH_VERSION, (unsigned long long)(now - m->start_unix_s),
        (unsigned long long)m->start_unix_s, draining ? "true" : "false");
    put(b, "\"config\":\"");
    put_escaped(b, srv->snap->conf->path != NULL ? srv->snap->conf->path : "");
    put(b,
        "\",\"generation\":%llu,\"reloads\":{\"success\":%llu,\"failure\":%llu},"
        "\"last_reload\":\"%s\",\"last_reload_time\":%llu,\"last_load_time\":%llu,"
        "\"clients\":%lld,\"last_reload_error\":\"",
        (unsigned long long)srv->snap->generation, (unsigned long long)m->reloads_ok,
        (unsigned long long)m->reloads_failed,
        m->reloads_ok + m->reloads_failed == 0 ? "none"
        : m->last_reload_failed                ? "failure"
                                               : "success",
        (unsigned long long)m->last_reload_unix_s, (unsigned long long)m->last_load_ok_unix_s,
        (long long)clients);
    put_escaped(b, m->last_reload_error);
    put(b, "\",\"duration_buckets_le\":[");
    for (int i = 0; i < BH_HIST_N - 1; i++)
        put(b, "%s%g", i ? "," : "", le[i]);
    put(b, "],\"workers\":[");
    for (uint32_t i = 0; i < m->n_workers; i++)
        put(b, "%s{\"id\":%u,\"generation\":%lld,\"accepted\":%llu,\"clients\":%lld}", i ? "," : "",
            i, (long long)bh_gauge_get(&bh_metrics_worker(m, i)->generation),
            (unsigned long long)bh_counter_get(&bh_metrics_worker(m, i)->accepted),
            (long long)bh_gauge_get(&bh_metrics_worker(m, i)->clients));
    put(b, "]");
}

char *bh_stats_json(bh_server_t *srv, bool draining, size_t *len)
{
    sb_t b = {0};
    json_process(&b, srv, draining);
    put(&b, ",\"routes\":[");
    bool first = true;
    FOREACH_ENTRY(e, e->kind == BH_M_ROUTE)
    {
        json_route(&b, srv, e, &first);
    }
    put(&b, "],\"upstreams\":[");
    first = true;
    FOREACH_ENTRY(e, e->kind == BH_M_UPSTREAM)
    {
        json_backend(&b, srv, e, &first);
    }
    put(&b, "],\"databases\":[");
    first = true;
    FOREACH_ENTRY(e, e->kind == BH_M_DATABASE)
    {
        json_backend(&b, srv, e, &first);
    }
    put(&b, "]}\n");
    return bh_sbuf_take(&b, len);
}
