/* SQL over HTTP (Neon protocol): the handler that runs a POST /sql on a pooled Postgres
 * connection, and what the workers share about each configured database. */
#ifndef BH_SQL_H
#define BH_SQL_H

#include "bh_breaker.h"
#include "bh_budget.h"
#include "bh_exchange.h"
#include "bh_pg.h"

typedef struct bh_sql bh_sql_t;

/* What the workers share about one configured database: its breaker, retry budget and the libpq
 * server description (settings array owned here; strings point into the origin config). Kept
 * across reloads while the database's settings do not change. */
typedef struct bh_sql_db {
    bh_breaker_t breaker;
    bh_budget_t budget;
    bh_pg_server_t server;
    bh_pg_setting_t *settings;
    _Atomic uint32_t refs;          /* snapshots listing it */
    struct bh_cref *origin;         /* origin->conf->databases[index] is its configuration */
    size_t index;
} bh_sql_db_t;

BH_MUST_CHECK int bh_sql_db_init(bh_sql_db_t *d, const bh_conf_database_t *conf, uint64_t now_ms);
void bh_sql_db_destroy(bh_sql_db_t *d);

/* The database handler: POST /sql (and its OPTIONS preflight) on a route with `database:`. */
extern const bh_handler_t bh_sql_handler;

#endif
