/* The configuration: one YAML file -> one frozen, validated, immutable snapshot (bh_conf_t).
 *
 * A snapshot is built by bh_conf_load(), never modified afterwards, and shared read-only by every
 * worker (a reload builds a new one). Durations are milliseconds, sizes are bytes. Every key that
 * the file does not give takes its default from the one defaults table in bh_conf_keys.c. */
#ifndef BH_CONF_H
#define BH_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include "bh_error.h"
#include "bh_log.h"

/* "host:port" or "[v6]:port", resolved numerically at load time (listeners only). */
typedef struct bh_conf_addr {
    char *text;                       /* as written, e.g. "0.0.0.0:8080" */
    char *host;                       /* "0.0.0.0", "::1", "api.internal" (no brackets) */
    uint16_t port;
    struct sockaddr_storage sa;       /* filled when host is a numeric address */
    socklen_t salen;                  /* 0 when host is a name (endpoints: resolved later) */
} bh_conf_addr_t;

/* One certificate with its private key, loaded and checked at load time (a reload reads the
 * files again). The OpenSSL objects are owned by the snapshot and freed by bh_conf_free; the
 * runtime only takes references (X509_up_ref / EVP_PKEY_up_ref) when it builds an SSL_CTX. */
typedef struct bh_conf_tls_cert {
    char *cert, *key;                 /* the file paths as written (NULL: none) */
    struct x509_st *x509;             /* the leaf: the first certificate of the cert file */
    struct stack_st_X509 *chain;      /* the file's further certificates (may be empty/NULL) */
    struct evp_pkey_st *pkey;         /* matches x509 (checked at load) */
    int64_t not_after;                /* the leaf's expiry, Unix seconds */
    char **names;                     /* DNS names for SNI: the SAN dNSNames, else the CN; lower
                                         case, "*.example.com" kept as written */
    size_t n_names;
} bh_conf_tls_cert_t;

enum bh_tls_verify_client {
    BH_VERIFY_CLIENT_OFF,             /* default */
    BH_VERIFY_CLIENT_OPTIONAL,        /* ask; a certificate given must verify against client_ca */
    BH_VERIFY_CLIENT_REQUIRE,         /* no verified certificate, no connection */
};

/* listeners[].tls: HTTPS on this listener. */
typedef struct bh_conf_listener_tls {
    bool enabled;                     /* the tls section is present */
    bh_conf_tls_cert_t *certs;        /* certificates: at least one; certs[0] is the default */
    size_t n_certs;
    int min_version;                  /* TLS1_2_VERSION (default, "1.2") or TLS1_3_VERSION */
    char *ciphers;                    /* OpenSSL cipher list for TLS 1.2 (checked at load);
                                         NULL: the built-in AEAD-only list */
    char *client_ca;                  /* PEM file of CAs for client certificates; NULL: none */
    struct x509_store_st *client_store;   /* client_ca loaded (NULL when none) */
    struct stack_st_X509_NAME *client_names; /* its subjects, for CertificateRequest */
    enum bh_tls_verify_client verify_client; /* off; optional/require need client_ca */
    uint64_t handshake_timeout_ms;    /* 10s */
} bh_conf_listener_tls_t;

typedef struct bh_conf_listener {
    char *name;                       /* default "listener<N>" */
    bh_conf_addr_t addr;
    bh_conf_listener_tls_t tls;
} bh_conf_listener_t;

typedef struct bh_conf_limits {
    uint32_t max_connections;         /* client connections per process; 10000 */
    uint64_t max_header_bytes;        /* request line + headers; 16 KiB; 431 beyond */
    uint32_t max_headers;             /* 100; 431 beyond */
    uint64_t max_body_bytes;          /* 10 MiB; 413 beyond */
    uint64_t header_timeout_ms;       /* 10s; whole request head; 408 */
    uint64_t body_timeout_ms;         /* 30s; gap between body reads; 408 */
    uint64_t keepalive_timeout_ms;    /* 60s; idle client connection closed */
} bh_conf_limits_t;

typedef struct bh_conf_admin {
    bh_conf_addr_t addr;              /* 127.0.0.1:9901 */
    char *token;                      /* NULL or "" = no token */
    uint32_t max_connections;         /* 64; open admin connections, 503 beyond */
} bh_conf_admin_t;

/* Request ids: every request gets one, sent upstream in the header and written to the access log. */
typedef struct bh_conf_request_id {
    char *header;                     /* "X-Request-Id"; NULL ("" in the file) = no request ids */
    bool from_client;                 /* true: keep a well-formed id the client sent */
} bh_conf_request_id_t;

typedef struct bh_conf_log {
    enum bh_log_level level;          /* info */
    char *access;                     /* "stdout", "off" or a file path; default "stdout" */
    uint64_t access_buffer;           /* 1 MiB; lines waiting for a slow destination */
} bh_conf_log_t;

typedef struct bh_conf_pool {
    uint32_t max_connections;         /* 64: the semaphore */
    uint32_t max_pending;             /* 256: waiters beyond -> 503 */
    uint32_t max_idle;                /* default: max_connections */
    uint32_t min_idle;                /* 0 (databases) */
    uint64_t acquire_timeout_ms;      /* 1s */
    uint64_t idle_timeout_ms;         /* 4s */
    uint64_t max_lifetime_ms;         /* 10m; 0 = unlimited */
    uint32_t max_per_user;            /* databases: pool.max_connections_per_user, connections
                                         of one pool key (user, password, database name);
                                         default and at most max_connections. Upstreams have
                                         no such key: always max_connections, unused */
} bh_conf_pool_t;

typedef struct bh_conf_timeouts {
    uint64_t connect_ms;              /* 1s */
    uint64_t first_byte_ms;           /* 15s: request sent -> response head */
    uint64_t idle_ms;                 /* 60s: between two reads or writes of one attempt */
    uint64_t total_ms;                /* 30s: the whole request; 504 */
} bh_conf_timeouts_t;

/* How an endpoint is picked among the eligible ones. */
enum bh_balance_policy {
    BH_BALANCE_ROUND_ROBIN,
    BH_BALANCE_LEAST_REQUEST, /* default: power of two random choices on in-flight counts */
    BH_BALANCE_RANDOM,
};

/* retry.on: which failed attempts may be retried (bits). */
enum bh_retry_on {
    BH_RETRY_ON_CONNECT_FAILURE = 1u << 0,       /* connect refused, failed or timed out */
    BH_RETRY_ON_RESET_BEFORE_RESPONSE = 1u << 1, /* connection closed/reset before a response */
    BH_RETRY_ON_FIRST_BYTE_TIMEOUT = 1u << 2,    /* no response head within first_byte */
    BH_RETRY_ON_GATEWAY_ERROR = 1u << 3,         /* response 502, 503 or 504 */
    BH_RETRY_ON_5XX = 1u << 4,                   /* any response 500..599 */
    BH_RETRY_ON_RETRIABLE_STATUS = 1u << 5,      /* a status listed in retriable_status */
};

/* breaker.count: which outcomes count as failures for the circuit breaker (bits). */
enum bh_breaker_count {
    BH_COUNT_CONNECT_FAILURE = 1u << 0, /* connect refused, failed or timed out */
    BH_COUNT_TIMEOUT = 1u << 1,         /* connect, first-byte or idle timeout */
    BH_COUNT_5XX = 1u << 2,             /* a response 500..599 */
    BH_COUNT_RESET = 1u << 3,           /* connection reset/closed before a complete response */
};

#define BH_CONF_MAX_STATUSES 16

typedef struct bh_conf_backoff {
    uint64_t base_ms;                 /* 25ms */
    uint64_t max_ms;                  /* 250ms; at least base */
} bh_conf_backoff_t;

typedef struct bh_conf_budget {
    double ratio;                     /* 0.2: retries may add this fraction of the request rate */
    uint32_t min_per_second;          /* 10: ... plus this many retries per second */
} bh_conf_budget_t;

typedef struct bh_conf_retry {
    uint32_t attempts;                /* 3: total tries including the first (1 = no retry) */
    uint32_t on;                      /* BH_RETRY_ON_* bits; connect-failure,
                                         reset-before-response, gateway-error */
    uint16_t retriable_status[BH_CONF_MAX_STATUSES]; /* [503] */
    size_t n_retriable_status;
    bool methods_all;                 /* false: idempotent (default); true: all */
    uint64_t max_replay_bytes;        /* 64KiB: request bodies up to this are kept for a retry */
    bh_conf_backoff_t backoff;
    bool honor_retry_after;           /* true */
    bh_conf_budget_t budget;          /* per upstream (a route's retry uses its upstream's) */
} bh_conf_retry_t;

typedef struct bh_conf_breaker {
    uint32_t consecutive_failures;    /* 5; 0 = this trigger off */
    double failure_rate;              /* 0.5; 0 = this trigger off */
    uint64_t window_ms;               /* 10s */
    uint32_t min_requests;            /* 20 */
    uint64_t open_for_ms;             /* 5s: first open period */
    uint64_t max_open_for_ms;         /* 60s: open periods double up to this */
    uint32_t half_open_probes;        /* 3 */
    uint32_t count;                   /* BH_COUNT_* bits; connect-failure, timeout, 5xx */
} bh_conf_breaker_t;

typedef struct bh_conf_outlier {
    uint32_t consecutive_failures;    /* 5; 0 = passive ejection off */
    uint64_t eject_for_ms;            /* 30s, times the endpoint's ejection count, max 300s */
    double max_ejected;               /* 0.5: fraction of the endpoints ejected at once */
} bh_conf_outlier_t;

typedef struct bh_conf_health {
    bool enabled;                     /* false when the section is absent */
    char *path;                       /* "/healthz" */
    uint64_t interval_ms;             /* 5s */
    uint64_t timeout_ms;              /* 1s; at most interval */
    uint32_t healthy;                 /* 2 successes in a row mark an endpoint healthy */
    uint32_t unhealthy;               /* 3 failures in a row mark it unhealthy */
} bh_conf_health_t;

/* upstreams.<name>.tls: HTTPS to the endpoints. */
typedef struct bh_conf_upstream_tls {
    bool enabled;                     /* tls.enabled: true, or every endpoint written as
                                         "https://host[:port]" (port 443 by default); mixing
                                         https:// and plain endpoints is an error */
    char *ca;                         /* PEM file; NULL: "system" (the OS trust store) */
    struct x509_store_st *ca_store;   /* ca loaded; NULL for system */
    bool verify;                      /* true; false must be written out (a warning) */
    char *server_name;                /* SNI and the verified name; NULL: each endpoint's host
                                         (no SNI for a numeric address, whose IP is verified) */
    bh_conf_tls_cert_t client;        /* cert/key: the client certificate (both or neither);
                                         client.cert == NULL: none */
    int min_version;                  /* TLS1_2_VERSION (default) or TLS1_3_VERSION */
} bh_conf_upstream_tls_t;

typedef struct bh_conf_upstream {
    char *name;
    bh_conf_addr_t *endpoints;        /* at least one (an "https://" prefix is removed) */
    size_t n_endpoints;
    bh_conf_upstream_tls_t tls;
    bh_conf_pool_t pool;
    bh_conf_timeouts_t timeouts;
    uint64_t dns_refresh_ms;          /* 30s; 0 = resolve once */
    enum bh_balance_policy balance;   /* least_request */
    bh_conf_retry_t retry;
    bh_conf_breaker_t breaker;
    bh_conf_outlier_t outlier;
    bh_conf_health_t health_check;
} bh_conf_upstream_t;

/* How a database checks who may run queries. */
enum bh_db_auth {
    BH_DB_AUTH_PASSTHROUGH, /* default: user, password and dbname from Neon-Connection-String;
                               Postgres checks them when connecting */
    BH_DB_AUTH_FIXED,       /* the configured user/password/dbname; clients must send
                               "Authorization: Bearer <one of tokens>" */
};

/* When a server connection's session is reset before it serves another request. */
enum bh_db_reset {
    BH_DB_RESET_AUTO,   /* default: only after a request that may have left session state
                           (bh_sql_leaves_state, a changed ParameterStatus, an open transaction) */
    BH_DB_RESET_ALWAYS, /* after every request, as Neon does */
};

/* databases.<name>: a Postgres server behind SQL over HTTP (the Neon protocol). */
typedef struct bh_conf_database {
    char *name;
    char **hosts;                     /* connection-string hosts mapped here (lower case, no
                                         port); "*" = any; at least one; a host (or "*") is
                                         mapped by one database at most */
    size_t n_hosts;
    char *server;                     /* libpq conninfo without credentials, e.g.
                                         "host=127.0.0.1 port=5432" (never user, password or
                                         dbname: checked at load) */
    enum bh_db_auth auth;             /* passthrough (default) | fixed */
    char *user, *password, *dbname;   /* fixed auth only: user and dbname required, password
                                         optional (NULL = none); always NULL for passthrough */
    char **tokens;                    /* fixed auth: bearer tokens clients must send (at least
                                         one); NULL/0 for passthrough */
    size_t n_tokens;
    bh_conf_pool_t pool;              /* max_connections 20 (all keys together), min_idle 0,
                                         max_pending 1000, acquire_timeout 5s, idle_timeout 5m,
                                         max_lifetime 1h, max_idle = max_per_user =
                                         max_connections */
    bh_conf_timeouts_t timeouts;      /* connect 2s, total 30s; first_byte/idle: not
                                         configurable here, hold the generic defaults 15s/60s */
    uint64_t max_response_bytes;      /* 10MiB: 507 beyond */
    uint64_t max_request_bytes;       /* 10MiB: 413 beyond (Neon's limit) */
    enum bh_db_reset reset;           /* auto */
    uint32_t statement_cache;         /* 256: prepared statements per server connection (LRU);
                                         0 = off; at most 65536 */
    char **session_keys;              /* `session:` settings in file order, then "TimeZone" ->
                                         "UTC" when TimeZone was not given (so n_session >= 1) */
    char **session_values;
    size_t n_session;
    bh_conf_retry_t retry;            /* attempts 3, backoff {25ms, 250ms}, budget {20%, 10/s}
                                         as upstreams'; not configurable here: on =
                                         connect-failure, no statuses, methods all,
                                         max_replay_bytes 0, honor_retry_after false */
    bool retry_serialization_failures;/* retry.serialization_failures: false */
    bh_conf_breaker_t breaker;        /* consecutive_failures 5, open_for 2s, max_open_for 30s,
                                         half_open_probes 1; others as an upstream's defaults */
} bh_conf_database_t;

/* HTTP method bits for route matching (bit = 1 << llhttp method number is NOT used: own enum). */
enum bh_method_bit {
    BH_M_GET = 1u << 0,
    BH_M_HEAD = 1u << 1,
    BH_M_POST = 1u << 2,
    BH_M_PUT = 1u << 3,
    BH_M_DELETE = 1u << 4,
    BH_M_CONNECT = 1u << 5,
    BH_M_OPTIONS = 1u << 6,
    BH_M_TRACE = 1u << 7,
    BH_M_PATCH = 1u << 8,
    BH_M_OTHER = 1u << 9,
    BH_M_ALL = (1u << 10) - 1,
};
/* The bit for a method name ("GET", case-sensitive); BH_M_OTHER for any other valid RFC 9110
 * token ("PROPFIND"), so routes with BH_M_ALL match it; 0 when the name is not a token at all. */
uint32_t bh_method_bit(const char *name, size_t len);

typedef struct bh_conf_route {
    char *name;                       /* for metrics and logs; default: the host ("*" for any)
                                         then path_prefix, e.g. "api.example.com/v1/", with
                                         "#<index>" appended when that is taken */
    char *host;                       /* NULL = any host; exact, case-insensitive, port ignored;
                                         "*.example.com" matches any subdomain */
    char *path_prefix;                /* default "/" */
    uint32_t methods;                 /* BH_M_* bits; default BH_M_ALL */
    /* Exactly one of upstream and database is set (checked at load). */
    char *upstream;                   /* name of the target upstream; NULL for a database route */
    size_t upstream_index;            /* index into bh_conf_t.upstreams, resolved at load;
                                         SIZE_MAX for a database route */
    char *database;                   /* name of the target database (SQL over HTTP); NULL for
                                         an upstream route */
    size_t database_index;            /* index into bh_conf_t.databases, resolved at load;
                                         SIZE_MAX for an upstream route */
    bool strip_prefix;                /* remove path_prefix before forwarding (keep a leading '/');
                                         always false for a database route */
    bh_conf_timeouts_t timeouts;      /* the upstream's (or database's) timeouts with this
                                         route's overrides (a database route: total only) */
    bool has_retry;                   /* the route gave its own retry section (never for a
                                         database route) */
    bh_conf_retry_t retry;            /* the effective policy: the route's whole retry section
                                         when given (its budget is the upstream's), else a copy
                                         of the upstream's (database route: of the database's) */
} bh_conf_route_t;

typedef struct bh_conf_shutdown {
    uint64_t drain_timeout_ms;        /* 30s */
} bh_conf_shutdown_t;

typedef struct bh_conf {
    char *path;                       /* file it was loaded from */
    uint32_t workers;                 /* resolved: "auto" -> number of online CPUs */
    bh_conf_listener_t *listeners;
    size_t n_listeners;
    bh_conf_limits_t limits;
    bh_conf_admin_t admin;
    bh_conf_request_id_t request_id;
    bh_conf_log_t log;
    bh_conf_upstream_t *upstreams;
    size_t n_upstreams;
    bh_conf_database_t *databases;
    size_t n_databases;
    bh_conf_route_t *routes;
    size_t n_routes;
    bh_conf_shutdown_t shutdown;
    char **warnings;                  /* "FILE:LINE:COL: what": valid but worth a look (verify:
                                         false, a certificate expiring within 14 days); --check
                                         prints them, a start or reload logs them */
    size_t n_warnings;
} bh_conf_t;

/* Why a load failed: "FILE:LINE:COL: what is wrong, what was expected". */
typedef struct bh_conf_error {
    char msg[512];
} bh_conf_error_t;

/* Parses and validates the file. On success returns 0 and a new snapshot in *out (free it with
 * bh_conf_free). On failure returns BH_ECONFIG (or BH_ENOMEM) and fills err; *out is NULL.
 * Environment variables are substituted in scalars: ${VAR}, ${VAR:-default}; an unset ${VAR}
 * without a default is an error. */
BH_MUST_CHECK int bh_conf_load(const char *path, bh_conf_t **out, bh_conf_error_t *err);

/* Same, from a string in memory; name is used in error messages in place of the file name and
 * becomes conf->path. */
BH_MUST_CHECK int bh_conf_load_string(const char *name, const char *yaml, size_t len,
                                      bh_conf_t **out, bh_conf_error_t *err);

void bh_conf_free(bh_conf_t *conf);

/* Whether two upstream (database) sections have the same name and settings: a reload keeps the
 * pools, breaker and outlier state of one that did not change. */
bool bh_conf_upstream_equal(const bh_conf_upstream_t *a, const bh_conf_upstream_t *b);
bool bh_conf_database_equal(const bh_conf_database_t *a, const bh_conf_database_t *b);

/* bh_conf_emit flags. BH_CONF_EMIT_REDACT writes secrets as "<redacted>": admin.token, a
 * database's password and tokens, and the value of any keyword naming a password (sslpassword)
 * in a database's server conninfo. Paths (TLS keys included) are not secrets. */
#define BH_CONF_EMIT_REDACT 1u

/* Writes conf back as YAML that bh_conf_load_string accepts: every key of every section with its
 * effective value (defaults filled in, ${VAR} written as resolved, derived names and limits
 * written out), durations and sizes with units, strings double-quoted and escaped ('$' as "$$").
 * Without redaction, loading the text gives a snapshot equal to conf (bh_conf_*_equal), and
 * emitting that one gives the same text; the forms it cannot keep as written are listed at the
 * top of bh_conf_emit.c (workers: auto is written as the number it resolved to). On success
 * returns 0 and a NUL-terminated text in *out (bh_malloc'd: free it with bh_free) of *len bytes;
 * BH_ENOMEM, or BH_EINVAL when the key table has a type this writer does not know (*out NULL). */
BH_MUST_CHECK int bh_conf_emit(const bh_conf_t *conf, unsigned flags, char **out, size_t *len);

/* Value parsers, exposed for tests and for reuse. Each returns 0 or -1 on malformed input.
 * Durations: "250ms", "5s", "2m", "1h", "1d", or a bare "0"; bare numbers other than 0 are
 * rejected (unit required). Sizes: "512", "16KiB", "10MiB", "1GiB", also "KB/MB/GB" (powers of
 * 1000) and "k/K" (1024). Percentages: "50%" or "0.5" -> 0.5. */
int bh_parse_duration_ms(const char *s, uint64_t *out_ms);
int bh_parse_size(const char *s, uint64_t *out_bytes);
int bh_parse_percent(const char *s, double *out_fraction);
/* "host:port" / "[v6]:port" -> addr (resolves numeric hosts into sa; a name leaves salen 0).
 * addr is overwritten, not freed first. On success addr->text and addr->host are bh_malloc'd
 * (free them with bh_free); returns -1 when malformed, BH_ENOMEM when out of memory, and on
 * any failure addr is zeroed. */
int bh_parse_addr(const char *s, bh_conf_addr_t *addr);

#endif
