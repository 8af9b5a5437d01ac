/* SQL over HTTP (Neon protocol): the exchange that runs a POST /sql on a pooled Postgres
 * connection. Called by the forwarding code for routes with `database:`. */
#ifndef BH_SQL_H
#define BH_SQL_H

#include "bh_breaker.h"
#include "bh_pg.h"

typedef struct bh_client bh_client_t;
typedef struct bh_sql bh_sql_t;

/* What the workers share about one configured database: its breaker and the libpq server
 * description (settings array owned here; strings point into the origin config). Kept across
 * reloads while the database's settings do not change. */
typedef struct bh_sql_db {
    bh_breaker_t breaker;
    bh_pg_server_t server;
    bh_pg_setting_t *settings;
    _Atomic uint32_t refs;          /* snapshots listing it */
    struct bh_cref *origin;         /* origin->conf->databases[index] is its configuration */
    size_t index;
} bh_sql_db_t;

BH_MUST_CHECK int bh_sql_db_init(bh_sql_db_t *d, const bh_conf_database_t *conf, uint64_t now_ms);
void bh_sql_db_destroy(bh_sql_db_t *d);

/* The request head is complete (head/head_len: its bytes, copied); client_timeout_ms: the
 * client's Bulkhead-Timeout, 0 when none. */
/* method and path (origin-form) point into the client's read buffer: valid during the call. */
void bh__sql_start(bh_client_t *c, const char *head, size_t head_len, bh_span_t method,
                   bh_span_t path, uint64_t client_timeout_ms);
/* A piece of the request body (0, or < 0 to fail the request). */
int bh__sql_body(bh_client_t *c, const char *at, size_t len);
/* The whole request body arrived. */
void bh__sql_request_done(bh_client_t *c);
/* The exchange ends (normally or because the client went away): frees everything; a statement
 * still running is cancelled on the server. */
void bh__sql_free(bh_client_t *c);
uint64_t bh__sql_next_timeout(bh_client_t *c);
void bh__sql_deadline(bh_client_t *c, uint64_t now);

#endif
