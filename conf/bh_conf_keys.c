/* The schema: every key of every section, its type (converter, expected form, storage kind), the
 * field it fills and its default written as a user would write it.
 *
 * One row per key; the rows of a section are those naming it, in documentation order. The walker
 * (bh__conf_parse_section) converts the keys given, then the defaults of the missing ones with
 * the same converters; bh_conf_equal.c compares two snapshots row by row. A key added here is
 * parsed, defaulted, suggested in "did you mean" and compared on reload without other code. */
#include <stddef.h>
#include "bh_conf_int.h"

#define DUR_MAX (365ull * 86400 * 1000) /* longest duration accepted anywhere: 365d */

/* clang-format off */
/* The types: converter, what a valid value looks like (for messages), flags, storage kind. */
#define C(name) bh__conf_conv_##name
static const type_t T_WORKERS = {C(workers), "auto or a whole number from 1 to 1024", 0, K_U32};
static const type_t T_U32 = {C(u32), "a whole number", 0, K_U32};
static const type_t T_SIZE = {C(size), "a size in bytes or with a unit (KiB, MiB, GiB, KB, MB, "
                                       "GB), e.g. 16KiB or 10MiB", 0, K_U64};
static const type_t T_DUR = {C(duration), "a number with a unit (ms, s, m, h, d), "
                                          "e.g. 250ms or 5s", 0, K_U64};
static const type_t T_BOOL = {C(bool), "true or false", 0, K_BOOL};
static const type_t T_STR = {C(str), "a non-empty string", 0, K_STR};
static const type_t T_OPT_STR = {C(str), "a string", T_EMPTY_OK, K_STR};
static const type_t T_LEVEL = {C(level), "error, warn, info or debug", 0, K_ENUM};
static const type_t T_ADDR = {C(addr), "a numeric address as host:port or [v6]:port, "
                                       "e.g. 0.0.0.0:8080 or [::1]:8080", 0, K_ADDR};
static const type_t T_PREFIX = {C(prefix), "a path starting with '/', e.g. /api/", 0, K_STR};
static const type_t T_HOST = {C(host), "a host name such as api.example.com or *.example.com", 0,
                              K_STR};
static const type_t T_SECTION = {C(section), "a mapping", T_NODE, K_SECTION};
static const type_t T_OVERRIDE = {C(override), "a mapping of connect, first_byte, idle, total",
                                  T_NODE, K_NONE};
static const type_t T_LISTENERS = {C(listeners), "a list of {name, address}", T_NODE, K_NONE};
static const type_t T_UPSTREAMS = {C(upstreams), "a mapping from upstream name to "
                                                 "{endpoints, pool, timeouts}", T_NODE, K_NONE};
static const type_t T_ENDPOINTS = {C(endpoints), "a list of host:port", T_NODE, K_ENDPOINTS};
static const type_t T_ROUTES = {C(routes), "a list of {match, upstream or database, "
                                "strip_prefix, timeouts, retry}", T_NODE, K_NONE};
static const type_t T_METHODS = {C(methods), "a list of methods, e.g. [GET, POST]", T_NODE, K_U32};
static const type_t T_PERCENT = {C(percent), "a percentage such as 50% or a fraction from 0 to "
                                             "1 such as 0.5", 0, K_DOUBLE};
static const type_t T_BALANCE = {C(balance), "round_robin, least_request or random", 0, K_ENUM};
static const type_t T_RETRY_METHODS = {C(retry_methods), "idempotent or all", 0, K_BOOL};
static const type_t T_RETRY_ON = {C(retry_on), "a list of connect-failure, "
                                  "reset-before-response, first-byte-timeout, gateway-error, "
                                  "5xx, retriable-status", T_NODE, K_U32};
static const type_t T_COUNT = {C(count), "a list of connect-failure, timeout, 5xx, reset",
                               T_NODE, K_U32};
static const type_t T_STATUSES = {C(statuses), "a list of HTTP statuses, e.g. [503]", T_NODE,
                                  K_STATUSES};
static const type_t T_PATH = {C(path), "a path starting with '/', e.g. /healthz", 0, K_STR};
static const type_t T_HEADER_NAME = {C(header_name), "a header field name, e.g. X-Request-Id, "
                                     "or \"\" for none", T_EMPTY_OK, K_STR};
static const type_t T_HEALTH = {C(health), "a mapping of path, interval, timeout, healthy, "
                                           "unhealthy", T_NODE, K_HEALTH};
static const type_t T_ROUTE_RETRY = {C(route_retry), "a mapping of retry settings (attempts, "
                                     "on, retriable_status, methods, max_replay_bytes, backoff, "
                                     "honor_retry_after)", T_NODE, K_NONE};

static const type_t T_DATABASES = {C(databases), "a mapping from database name to "
                                   "{hosts, server, auth, pool, timeouts}", T_NODE, K_NONE};
static const type_t T_DB_HOSTS = {C(db_hosts), "a list of connection-string hosts, e.g. "
                                               "[ \"db.example.com\" ] or [ \"*\" ]", T_NODE,
                                  K_DB_HOSTS};
static const type_t T_DB_TOKENS = {C(db_tokens), "a list of bearer tokens, e.g. "
                                                 "[ \"${BULKHEAD_SQL_TOKEN}\" ]", T_NODE,
                                   K_DB_TOKENS};
static const type_t T_SERVER = {C(server), "a libpq conninfo of keyword=value pairs without "
                                           "credentials, e.g. \"host=127.0.0.1 port=5432\"", 0,
                                K_STR};
static const type_t T_AUTH = {C(auth), "passthrough or fixed", 0, K_ENUM};
static const type_t T_RESET = {C(reset), "auto or always", 0, K_ENUM};
static const type_t T_SESSION = {C(session), "a mapping of setting names to values, e.g. "
                                             "{ TimeZone: UTC }", T_NODE, K_SESSION};

/* tls sections (bh_conf_tls_keys.c) */
static const type_t T_LISTENER_TLS = {C(listener_tls), "a mapping of certificates, min_version, "
                                      "ciphers, client_ca, verify_client, handshake_timeout",
                                      T_NODE, K_NONE};
static const type_t T_CERTS = {C(certs), "a list of {cert, key}, e.g. "
                               "[ { cert: /etc/bulkhead/site.crt, key: /etc/bulkhead/site.key } ]",
                               T_NODE, K_NONE};
static const type_t T_FILE = {C(str), "a file path", 0, K_STR};
static const type_t T_CERT_FILE = {C(str), "a file path", 0, K_TLS_CERT};
static const type_t T_TLS_VERSION = {C(tls_version), "1.2 or 1.3", 0, K_ENUM};
static const type_t T_CIPHERS = {C(ciphers), "an OpenSSL cipher list, e.g. "
                                             "ECDHE+AESGCM:ECDHE+CHACHA20", 0, K_STR};
static const type_t T_CLIENT_CA = {C(client_ca), "a PEM file of CA certificates", 0, K_NONE};
static const type_t T_VERIFY_CLIENT = {C(verify_client), "off, optional or require", 0, K_ENUM};
static const type_t T_UPSTREAM_CA = {C(upstream_ca), "system or a PEM file of CA certificates",
                                     0, K_TLS_CA};
static const type_t T_SERVER_NAME = {C(server_name), "a host name such as api.example.com", 0,
                                     K_STR};
#undef C

/* KEY(section, key, type, struct, field, default, min, max); REQ: a required key, no default;
 * NA: a key of the shared shape this section rejects (why: the reason, in the message), whose
 * default still fills the field. */
#define KEY(sec, key, type, T, field, def, lo, hi)                                                 \
    {sec, key, &type, offsetof(T, field), def, lo, hi, 0, S_COUNT, NULL}
#define REQ(sec, key, type, T, field)                                                             \
    {sec, key, &type, offsetof(T, field), NULL, 0, 0, F_REQUIRED, S_COUNT, NULL}
#define SECTION(sec, key, T, field, sub)                                                          \
    {sec, key, &T_SECTION, offsetof(T, field), NULL, 0, 0, 0, sub, NULL}
#define NA(sec, key, type, T, field, def, lo, hi, why)                                             \
    {sec, key, &type, offsetof(T, field), def, lo, hi, F_NA, S_COUNT, why}
#define LATER(sec, key) {sec, key, NULL, 0, NULL, 0, 0, 0, S_COUNT, NULL}
#define U32MAX UINT32_MAX
#define U64MAX UINT64_MAX
#define MiB (1u << 20)
#define GiB (1ull << 30)
#define DUR DUR_MAX

/* The one table of keys and defaults (defaults are those of docs/configuration.md). */
const spec_t bh__conf_specs[] = {
    KEY(S_ROOT, "workers", T_WORKERS, bh_conf_t, workers, "auto", 1, 1024),
    REQ(S_ROOT, "listeners", T_LISTENERS, bh_conf_t, listeners),
    SECTION(S_ROOT, "limits", bh_conf_t, limits, S_LIMITS),
    SECTION(S_ROOT, "admin", bh_conf_t, admin, S_ADMIN),
    SECTION(S_ROOT, "log", bh_conf_t, log, S_LOG),
    SECTION(S_ROOT, "request_id", bh_conf_t, request_id, S_REQUEST_ID),
    KEY(S_ROOT, "upstreams", T_UPSTREAMS, bh_conf_t, upstreams, NULL, 0, 0),
    KEY(S_ROOT, "databases", T_DATABASES, bh_conf_t, databases, NULL, 0, 0),
    KEY(S_ROOT, "routes", T_ROUTES, bh_conf_t, routes, NULL, 0, 0),
    SECTION(S_ROOT, "shutdown", bh_conf_t, shutdown, S_SHUTDOWN),

    KEY(S_LISTENER, "name", T_STR, bh_conf_listener_t, name, NULL, 0, 0), /* "listener<N>" */
    REQ(S_LISTENER, "address", T_ADDR, bh_conf_listener_t, addr),
    {S_LISTENER, "tls", &T_LISTENER_TLS, offsetof(bh_conf_listener_t, tls), NULL, 0, 0, 0,
     S_LISTENER_TLS, NULL}, /* absent: plain HTTP */

    REQ(S_LISTENER_TLS, "certificates", T_CERTS, bh_conf_listener_tls_t, certs),
    KEY(S_LISTENER_TLS, "min_version", T_TLS_VERSION, bh_conf_listener_tls_t, min_version, "1.2",
        0, 0),
    KEY(S_LISTENER_TLS, "ciphers", T_CIPHERS, bh_conf_listener_tls_t, ciphers, NULL, 0, 0),
    KEY(S_LISTENER_TLS, "client_ca", T_CLIENT_CA, bh_conf_listener_tls_t, client_ca, NULL, 0, 0),
    KEY(S_LISTENER_TLS, "verify_client", T_VERIFY_CLIENT, bh_conf_listener_tls_t, verify_client,
        "off", 0, 0), /* optional/require need client_ca: check_listener_tls */
    KEY(S_LISTENER_TLS, "handshake_timeout", T_DUR, bh_conf_listener_tls_t, handshake_timeout_ms,
        "10s", 1, DUR),

    /* one of listeners[].tls.certificates; both files are loaded by check_tls_cert */
    REQ(S_TLS_CERT, "cert", T_FILE, bh_conf_tls_cert_t, cert),
    REQ(S_TLS_CERT, "key", T_FILE, bh_conf_tls_cert_t, key),

    KEY(S_LIMITS, "max_connections", T_U32, bh_conf_limits_t, max_connections, "10000", 1, U32MAX),
    KEY(S_LIMITS, "max_header_bytes", T_SIZE, bh_conf_limits_t, max_header_bytes, "16KiB", 1, MiB),
    KEY(S_LIMITS, "max_headers", T_U32, bh_conf_limits_t, max_headers, "100", 1, 10000),
    KEY(S_LIMITS, "max_body_bytes", T_SIZE, bh_conf_limits_t, max_body_bytes, "10MiB", 0, U64MAX),
    KEY(S_LIMITS, "header_timeout", T_DUR, bh_conf_limits_t, header_timeout_ms, "10s", 1, DUR),
    KEY(S_LIMITS, "body_timeout", T_DUR, bh_conf_limits_t, body_timeout_ms, "30s", 1, DUR),
    KEY(S_LIMITS, "keepalive_timeout", T_DUR, bh_conf_limits_t, keepalive_timeout_ms,
        "60s", 1, DUR),

    KEY(S_ADMIN, "address", T_ADDR, bh_conf_admin_t, addr, "127.0.0.1:9901", 0, 0),
    KEY(S_ADMIN, "token", T_OPT_STR, bh_conf_admin_t, token, "${BULKHEAD_ADMIN_TOKEN:-}", 0, 0),
    KEY(S_ADMIN, "max_connections", T_U32, bh_conf_admin_t, max_connections, "64", 1, 10000),

    KEY(S_LOG, "level", T_LEVEL, bh_conf_log_t, level, "info", 0, 0),
    KEY(S_LOG, "access", T_STR, bh_conf_log_t, access, "stdout", 0, 0),
    KEY(S_LOG, "access_buffer", T_SIZE, bh_conf_log_t, access_buffer, "1MiB", 4096, GiB),

    KEY(S_REQUEST_ID, "header", T_HEADER_NAME, bh_conf_request_id_t, header, "X-Request-Id", 0, 0),
    KEY(S_REQUEST_ID, "from_client", T_BOOL, bh_conf_request_id_t, from_client, "true", 0, 0),

    REQ(S_UPSTREAM, "endpoints", T_ENDPOINTS, bh_conf_upstream_t, endpoints),
    SECTION(S_UPSTREAM, "tls", bh_conf_upstream_t, tls, S_UPSTREAM_TLS), /* check_upstream */
    SECTION(S_UPSTREAM, "pool", bh_conf_upstream_t, pool, S_POOL),
    SECTION(S_UPSTREAM, "timeouts", bh_conf_upstream_t, timeouts, S_TIMEOUTS),
    KEY(S_UPSTREAM, "dns_refresh", T_DUR, bh_conf_upstream_t, dns_refresh_ms, "30s", 0, DUR),
    KEY(S_UPSTREAM, "balance", T_BALANCE, bh_conf_upstream_t, balance, "least_request", 0, 0),
    SECTION(S_UPSTREAM, "retry", bh_conf_upstream_t, retry, S_RETRY),
    SECTION(S_UPSTREAM, "breaker", bh_conf_upstream_t, breaker, S_BREAKER),
    SECTION(S_UPSTREAM, "outlier", bh_conf_upstream_t, outlier, S_OUTLIER),
    {S_UPSTREAM, "health_check", &T_HEALTH, offsetof(bh_conf_upstream_t, health_check), NULL, 0, 0,
     0, S_HEALTH, NULL}, /* absent: disabled */

    /* enabled: also by https:// endpoints (check_upstream); cert and key: both or neither,
     * loaded by check_upstream_tls */
    KEY(S_UPSTREAM_TLS, "enabled", T_BOOL, bh_conf_upstream_tls_t, enabled, "false", 0, 0),
    KEY(S_UPSTREAM_TLS, "ca", T_UPSTREAM_CA, bh_conf_upstream_tls_t, ca, "system", 0, 0),
    KEY(S_UPSTREAM_TLS, "verify", T_BOOL, bh_conf_upstream_tls_t, verify, "true", 0, 0),
    KEY(S_UPSTREAM_TLS, "server_name", T_SERVER_NAME, bh_conf_upstream_tls_t, server_name, NULL,
        0, 0), /* NULL: each endpoint's host */
    KEY(S_UPSTREAM_TLS, "cert", T_CERT_FILE, bh_conf_upstream_tls_t, client.cert, NULL, 0, 0),
    KEY(S_UPSTREAM_TLS, "key", T_FILE, bh_conf_upstream_tls_t, client.key, NULL, 0, 0),
    KEY(S_UPSTREAM_TLS, "min_version", T_TLS_VERSION, bh_conf_upstream_tls_t, min_version, "1.2",
        0, 0),

    KEY(S_RETRY, "attempts", T_U32, bh_conf_retry_t, attempts, "3", 1, 10),
    KEY(S_RETRY, "on", T_RETRY_ON, bh_conf_retry_t, on,
        "connect-failure, reset-before-response, gateway-error", 0, 0),
    {S_RETRY, "retriable_status", &T_STATUSES, 0, "503", 100, 599, 0, S_COUNT, NULL},
    KEY(S_RETRY, "methods", T_RETRY_METHODS, bh_conf_retry_t, methods_all, "idempotent", 0, 0),
    KEY(S_RETRY, "max_replay_bytes", T_SIZE, bh_conf_retry_t, max_replay_bytes, "64KiB", 0, GiB),
    SECTION(S_RETRY, "backoff", bh_conf_retry_t, backoff, S_BACKOFF),
    KEY(S_RETRY, "honor_retry_after", T_BOOL, bh_conf_retry_t, honor_retry_after, "true", 0, 0),
    SECTION(S_RETRY, "budget", bh_conf_retry_t, budget, S_BUDGET),

    KEY(S_BACKOFF, "base", T_DUR, bh_conf_backoff_t, base_ms, "25ms", 1, DUR),
    KEY(S_BACKOFF, "max", T_DUR, bh_conf_backoff_t, max_ms, "250ms", 1, DUR),

    KEY(S_BUDGET, "ratio", T_PERCENT, bh_conf_budget_t, ratio, "0.2", 0, 0),
    KEY(S_BUDGET, "min_per_second", T_U32, bh_conf_budget_t, min_per_second, "10", 0, 1000000),

    KEY(S_BREAKER, "consecutive_failures", T_U32, bh_conf_breaker_t, consecutive_failures,
        "5", 0, 1000000),
    KEY(S_BREAKER, "failure_rate", T_PERCENT, bh_conf_breaker_t, failure_rate, "50%", 0, 0),
    KEY(S_BREAKER, "window", T_DUR, bh_conf_breaker_t, window_ms, "10s", 10, 86400000),
    KEY(S_BREAKER, "min_requests", T_U32, bh_conf_breaker_t, min_requests, "20", 1, 1000000),
    KEY(S_BREAKER, "open_for", T_DUR, bh_conf_breaker_t, open_for_ms, "5s", 1, DUR),
    KEY(S_BREAKER, "max_open_for", T_DUR, bh_conf_breaker_t, max_open_for_ms, "60s", 1, DUR),
    KEY(S_BREAKER, "half_open_probes", T_U32, bh_conf_breaker_t, half_open_probes, "3", 1, 100),
    KEY(S_BREAKER, "count", T_COUNT, bh_conf_breaker_t, count, "connect-failure, timeout, 5xx",
        0, 0),

    KEY(S_OUTLIER, "consecutive_failures", T_U32, bh_conf_outlier_t, consecutive_failures,
        "5", 0, 1000000),
    KEY(S_OUTLIER, "eject_for", T_DUR, bh_conf_outlier_t, eject_for_ms, "30s", 1, 300000),
    KEY(S_OUTLIER, "max_ejected", T_PERCENT, bh_conf_outlier_t, max_ejected, "50%", 0, 0),

    KEY(S_HEALTH, "path", T_PATH, bh_conf_health_t, path, "/healthz", 0, 0),
    KEY(S_HEALTH, "interval", T_DUR, bh_conf_health_t, interval_ms, "5s", 1, DUR),
    KEY(S_HEALTH, "timeout", T_DUR, bh_conf_health_t, timeout_ms, "1s", 1, DUR),
    KEY(S_HEALTH, "healthy", T_U32, bh_conf_health_t, healthy, "2", 1, 1000),
    KEY(S_HEALTH, "unhealthy", T_U32, bh_conf_health_t, unhealthy, "3", 1, 1000),

    KEY(S_POOL, "max_connections", T_U32, bh_conf_pool_t, max_connections, "64", 1, 1000000),
    KEY(S_POOL, "max_pending", T_U32, bh_conf_pool_t, max_pending, "256", 0, U32MAX),
    KEY(S_POOL, "max_idle", T_U32, bh_conf_pool_t, max_idle, NULL, 0, 1000000), /* check_pool */
    KEY(S_POOL, "min_idle", T_U32, bh_conf_pool_t, min_idle, "0", 0, 1000000),
    KEY(S_POOL, "acquire_timeout", T_DUR, bh_conf_pool_t, acquire_timeout_ms, "1s", 0, DUR),
    KEY(S_POOL, "idle_timeout", T_DUR, bh_conf_pool_t, idle_timeout_ms, "4s", 1, DUR),
    KEY(S_POOL, "max_lifetime", T_DUR, bh_conf_pool_t, max_lifetime_ms, "10m", 0, DUR),

    KEY(S_TIMEOUTS, "connect", T_DUR, bh_conf_timeouts_t, connect_ms, "1s", 1, DUR),
    KEY(S_TIMEOUTS, "first_byte", T_DUR, bh_conf_timeouts_t, first_byte_ms, "15s", 1, DUR),
    KEY(S_TIMEOUTS, "idle", T_DUR, bh_conf_timeouts_t, idle_ms, "60s", 1, DUR),
    KEY(S_TIMEOUTS, "total", T_DUR, bh_conf_timeouts_t, total_ms, "30s", 1, DUR),

    KEY(S_ROUTE, "name", T_STR, bh_conf_route_t, name, NULL, 0, 0), /* "<host or *><prefix>" */
    {S_ROUTE, "match", &T_SECTION, 0, NULL, 0, 0, 0, S_MATCH, NULL}, /* fields in the route */
    KEY(S_ROUTE, "upstream", T_STR, bh_conf_route_t, upstream, NULL, 0, 0),  /* or database: */
    KEY(S_ROUTE, "database", T_STR, bh_conf_route_t, database, NULL, 0, 0),  /* check_route */
    KEY(S_ROUTE, "strip_prefix", T_BOOL, bh_conf_route_t, strip_prefix, "false", 0, 0),
    KEY(S_ROUTE, "timeouts", T_OVERRIDE, bh_conf_route_t, timeouts, NULL, 0, 0), /* inherit */
    KEY(S_ROUTE, "retry", T_ROUTE_RETRY, bh_conf_route_t, retry, NULL, 0, 0), /* check_root */

    KEY(S_MATCH, "host", T_HOST, bh_conf_route_t, host, NULL, 0, 0), /* NULL: any host */
    KEY(S_MATCH, "path_prefix", T_PREFIX, bh_conf_route_t, path_prefix, "/", 0, 0),
    KEY(S_MATCH, "methods", T_METHODS, bh_conf_route_t, methods, "*", 0, 0),

    KEY(S_SHUTDOWN, "drain_timeout", T_DUR, bh_conf_shutdown_t, drain_timeout_ms, "30s", 0, DUR),

    /* databases.<name> (SQL over HTTP); user, password, dbname, tokens: check_database */
    REQ(S_DATABASE, "hosts", T_DB_HOSTS, bh_conf_database_t, hosts),
    REQ(S_DATABASE, "server", T_SERVER, bh_conf_database_t, server),
    KEY(S_DATABASE, "auth", T_AUTH, bh_conf_database_t, auth, "passthrough", 0, 0),
    KEY(S_DATABASE, "user", T_STR, bh_conf_database_t, user, NULL, 0, 0),
    KEY(S_DATABASE, "password", T_OPT_STR, bh_conf_database_t, password, NULL, 0, 0),
    KEY(S_DATABASE, "dbname", T_STR, bh_conf_database_t, dbname, NULL, 0, 0),
    KEY(S_DATABASE, "tokens", T_DB_TOKENS, bh_conf_database_t, tokens, NULL, 0, 0),
    SECTION(S_DATABASE, "pool", bh_conf_database_t, pool, S_DB_POOL),
    SECTION(S_DATABASE, "timeouts", bh_conf_database_t, timeouts, S_DB_TIMEOUTS),
    KEY(S_DATABASE, "max_response_bytes", T_SIZE, bh_conf_database_t, max_response_bytes,
        "10MiB", 1, U64MAX),
    KEY(S_DATABASE, "max_request_bytes", T_SIZE, bh_conf_database_t, max_request_bytes,
        "10MiB", 1, U64MAX),
    KEY(S_DATABASE, "reset", T_RESET, bh_conf_database_t, reset, "auto", 0, 0),
    KEY(S_DATABASE, "statement_cache", T_U32, bh_conf_database_t, statement_cache, "256", 0,
        65536),
    /* session: the default is TimeZone's (conv_session) */
    KEY(S_DATABASE, "session", T_SESSION, bh_conf_database_t, session_keys, "UTC", 0, 0),
    {S_DATABASE, "retry", &T_SECTION, 0, NULL, 0, 0, 0, S_DB_RETRY, NULL}, /* in the database */
    SECTION(S_DATABASE, "breaker", bh_conf_database_t, breaker, S_DB_BREAKER),

    KEY(S_DB_POOL, "max_connections", T_U32, bh_conf_pool_t, max_connections, "20", 1, 1000000),
    KEY(S_DB_POOL, "max_pending", T_U32, bh_conf_pool_t, max_pending, "1000", 0, U32MAX),
    KEY(S_DB_POOL, "max_idle", T_U32, bh_conf_pool_t, max_idle, NULL, 0, 1000000), /* check_pool */
    KEY(S_DB_POOL, "min_idle", T_U32, bh_conf_pool_t, min_idle, "0", 0, 1000000),
    KEY(S_DB_POOL, "acquire_timeout", T_DUR, bh_conf_pool_t, acquire_timeout_ms, "5s", 0, DUR),
    KEY(S_DB_POOL, "idle_timeout", T_DUR, bh_conf_pool_t, idle_timeout_ms, "5m", 1, DUR),
    KEY(S_DB_POOL, "max_lifetime", T_DUR, bh_conf_pool_t, max_lifetime_ms, "1h", 0, DUR),
    KEY(S_DB_POOL, "max_connections_per_user", T_U32, bh_conf_pool_t, max_per_user, NULL,
        1, 1000000), /* default max_connections: check_pool */

    KEY(S_DB_TIMEOUTS, "connect", T_DUR, bh_conf_timeouts_t, connect_ms, "2s", 1, DUR),
    NA(S_DB_TIMEOUTS, "first_byte", T_DUR, bh_conf_timeouts_t, first_byte_ms, "15s", 1, DUR,
       "a query may rightly run long before its first row; total bounds it"),
    NA(S_DB_TIMEOUTS, "idle", T_DUR, bh_conf_timeouts_t, idle_ms, "60s", 1, DUR,
       "a query may rightly be silent between rows; total bounds it"),
    KEY(S_DB_TIMEOUTS, "total", T_DUR, bh_conf_timeouts_t, total_ms, "30s", 1, DUR),

    /* only failures that never reached Postgres are retried: the rest of the shape is fixed */
    KEY(S_DB_RETRY, "attempts", T_U32, bh_conf_database_t, retry.attempts, "3", 1, 10),
    SECTION(S_DB_RETRY, "backoff", bh_conf_database_t, retry.backoff, S_BACKOFF),
    KEY(S_DB_RETRY, "serialization_failures", T_BOOL, bh_conf_database_t,
        retry_serialization_failures, "false", 0, 0),
    SECTION(S_DB_RETRY, "budget", bh_conf_database_t, retry.budget, S_BUDGET),
    NA(S_DB_RETRY, "on", T_RETRY_ON, bh_conf_database_t, retry.on, "connect-failure", 0, 0,
       "only failures that never reached Postgres are retried"),
    NA(S_DB_RETRY, "retriable_status", T_STATUSES, bh_conf_database_t, retry, "", 100, 599,
       "Postgres answers have no HTTP status"),
    NA(S_DB_RETRY, "methods", T_RETRY_METHODS, bh_conf_database_t, retry.methods_all, "all",
       0, 0, "a retried query never reached Postgres, whatever it does"),
    NA(S_DB_RETRY, "max_replay_bytes", T_SIZE, bh_conf_database_t, retry.max_replay_bytes,
       "0", 0, GiB, "the request body is read whole, up to max_request_bytes"),
    NA(S_DB_RETRY, "honor_retry_after", T_BOOL, bh_conf_database_t, retry.honor_retry_after,
       "false", 0, 0, "Postgres sends no Retry-After"),

    KEY(S_DB_BREAKER, "consecutive_failures", T_U32, bh_conf_breaker_t, consecutive_failures,
        "5", 0, 1000000),
    KEY(S_DB_BREAKER, "failure_rate", T_PERCENT, bh_conf_breaker_t, failure_rate, "50%", 0, 0),
    KEY(S_DB_BREAKER, "window", T_DUR, bh_conf_breaker_t, window_ms, "10s", 10, 86400000),
    KEY(S_DB_BREAKER, "min_requests", T_U32, bh_conf_breaker_t, min_requests, "20", 1, 1000000),
    KEY(S_DB_BREAKER, "open_for", T_DUR, bh_conf_breaker_t, open_for_ms, "2s", 1, DUR),
    KEY(S_DB_BREAKER, "max_open_for", T_DUR, bh_conf_breaker_t, max_open_for_ms, "30s", 1, DUR),
    KEY(S_DB_BREAKER, "half_open_probes", T_U32, bh_conf_breaker_t, half_open_probes, "1", 1, 100),
    KEY(S_DB_BREAKER, "count", T_COUNT, bh_conf_breaker_t, count, "connect-failure, timeout, 5xx",
        0, 0),
};
/* clang-format on */

const size_t bh__conf_n_specs = COUNT(bh__conf_specs);
