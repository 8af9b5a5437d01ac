/* Private to the bh_pg files: the pool structs they share and the bh__pg_* functions they call
 * across files. Not part of the API (that is bh_pg.h).
 *
 * The files:
 *   bh_pg_conn.c    the connection state machine on the loop: connect (DNS, PQconnectPoll),
 *                   idle watch, statements and results, cancel on the thread pool, reset before
 *                   reuse, close; the bh_pool ops behind it; acquire
 *   bh_pg_pools.c   the registry: a worker's pools by key (hash buckets, and a fast index by
 *                   credentials), the process-wide permits per database entry and caps per key,
 *                   the pool timer, retire, sweep, close
 *   bh_pg_params.c  what a pool connects with: libpq keyword/value arrays from the server's
 *                   conninfo and the credentials, the startup options, the key digest, the
 *                   addresses resolved for a host name
 *   bh_pg_error.c   connect error text -> code, SQLSTATE, severity, retriable
 *   bh_pg_cache.c   a connection's prepared-statement cache: texts -> bh_ps_<id>, LRU */
#ifndef BH_PG_INT_H
#define BH_PG_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include "bh_pg.h"

#define BH__PG_KEY_LEN 32 /* SHA-256 of the pool key */

struct addrinfo;

/* What PQconnectStartParams gets, built once per pool (bh_pg_params.c). libpq resolves host
 * names with a blocking getaddrinfo: a single server name is resolved by the connection layer
 * instead (uv_getaddrinfo) and passed as hostaddr, with host kept for TLS. */
typedef struct bh__pg_params {
    char **kw, **vals;           /* NULL-terminated, same length */
    size_t password_at;          /* index of the password in vals (wiped when freed), or SIZE_MAX */
    size_t user_at, dbname_at;   /* indexes of the user and database name in vals */
    size_t app_at;               /* ... and of the configured application_name */
    char *dns_name;              /* NULL: IP literal, socket path, list, or hostaddr given */
    size_t host_at, hostaddr_at; /* their slots in kw/vals, when dns_name is set */
} bh__pg_params_t;

struct bh_pg_pools {
    uv_loop_t *loop;
    bh_pg_shared_t *shared;
    bh_sem_inbox_t *inbox;
    bh_pg_pool_t **buckets; /* hash chains of every pool not yet freed (retired and closing too) */
    bh_pg_pool_t **fast;    /* [n_buckets] the same pools by their credentials (fast_hash) */
    size_t n_buckets, n_pools;
    uv_timer_t sweep;
    unsigned open;    /* the sweep timer + pools not yet freed */
    unsigned cancels; /* on the thread pool */
    bool closing;
    void (*closed_cb)(void *data);
    void *closed_data;
};

struct bh_pg_pool {
    bh_pool_t base;
    bh_pg_pools_t *pools;
    bh_pg_pool_t *next; /* hash chain */
    bh_pg_pool_t *fast_next; /* chain of pools->fast, once found by its credentials */
    uint64_t fast_hash;
    bool fast_linked;
    uint8_t key[BH__PG_KEY_LEN];
    struct bh__pg_sem_entry *sem; /* the database entry's permits (bh_pg_pools.c) */
    struct bh__pg_sem_entry *cap; /* the key's own cap; NULL when max_per_user >= the entry's */
    uv_timer_t timer;             /* bh_pool_expire, and the pre-warm retry */
    bh__pg_params_t params;
    char *label; /* user@dbname, for logs */
    uint64_t connect_timeout_ms, reset_timeout_ms;
    uint32_t statement_cache; /* the server's: prepared statements per connection */
    bool reset_always;        /* the server's !reset_auto */
    uint64_t armed_at, retry_at;  /* what bh_pool asked for; the pre-warm backoff's end */
    uint64_t dns_until;           /* params' hostaddr is fresh until then */
    const bh_pg_error_t *failing; /* set while bh_pool_connect_failed runs */
    bool marked;                  /* empty at the last sweep */
    bool timer_closing;
    bool retired; /* bh_pg_pools_retire: not found by bh_pg_pool_get */
    uint64_t tag; /* the server's */
};

static inline uint64_t bh__pg_now(const bh_pg_pool_t *p)
{
    return uv_now(p->pools->loop);
}

/* ---- bh_pg_conn.c: the bh_pool ops of a pool's connections ------------------------------ */

bh_pool_conn_t *bh__pg_conn_open(bh_pool_t *bp, int *err);
bool bh__pg_conn_alive(bh_pool_conn_t *pc);
void bh__pg_conn_close(bh_pool_conn_t *pc);

/* ---- bh_pg_cache.c: one connection's prepared statements --------------------------------- */

#define BH__PG_CACHE_BUCKETS 64           /* hash chains (power of two) */
#define BH__PG_CACHE_MAX_TEXT 8192        /* longer texts are never cached */
#define BH__PG_CACHE_MAX_BYTES (1u << 20) /* copied texts per connection, at most */

struct bh__pg_ps;
typedef struct bh__pg_cache {
    struct bh__pg_ps **buckets;    /* NULL until the first entry */
    struct bh__pg_ps *head, *tail; /* LRU: head most recently used */
    uint32_t n, next_id;
    size_t bytes;
} bh__pg_cache_t;

/* The id of the cached statement for (sql, nparams), made the most recent; 0 when none. */
uint32_t bh__pg_cache_find(bh__pg_cache_t *pc, const char *sql, size_t len, int nparams);
/* Caches a copy of sql under a new id (never 0): 0 when out of memory. */
uint32_t bh__pg_cache_add(bh__pg_cache_t *pc, const char *sql, size_t len, int nparams);
/* True when adding a text of len bytes needs an eviction first (cap entries). */
bool bh__pg_cache_full(const bh__pg_cache_t *pc, uint32_t cap, size_t len);
/* Forgets the least recently used entry; returns its id (0: empty). */
uint32_t bh__pg_cache_evict(bh__pg_cache_t *pc);
/* Forgets the entry with this id, if any. */
void bh__pg_cache_drop(bh__pg_cache_t *pc, uint32_t id);
/* Forgets everything (the server's statements were deallocated). */
void bh__pg_cache_clear(bh__pg_cache_t *pc);
void bh__pg_cache_free(bh__pg_cache_t *pc);

/* ---- bh_pg_pools.c ----------------------------------------------------------------------- */

/* Re-arms the pool timer for the earlier of what bh_pool asked for and the pre-warm retry. */
void bh__pg_pool_timer_set(bh_pg_pool_t *p);
/* A connection of p was freed: while the worker's pools close, an empty pool closes too. */
void bh__pg_pool_maybe_done(bh_pg_pool_t *p);

/* ---- bh_pg_params.c ---------------------------------------------------------------------- */

/* The startup packet's options, "-c name=value ..." (defaults, then the server's session).
 * *out is the caller's to free. BH_EINVAL for a bad setting name, BH_ENOMEM. */
int bh__pg_options_build(const bh_pg_server_t *srv, char **out);

/* The pool key: where and as whom it connects, and the pool's own settings. 0 or BH_ENOMEM. */
int bh__pg_key_digest(uint8_t out[BH__PG_KEY_LEN], const bh_pg_server_t *srv, const char *options,
                      const char *dbname, const char *user, const char *password);

/* The identity of a database entry's permits: its name, server and connection cap (a reload
 * that keeps them keeps the counter, so old and new pools count against one cap). */
int bh__pg_db_digest(uint8_t out[BH__PG_KEY_LEN], const bh_pg_server_t *srv);

/* Fills a zeroed pp from the server's conninfo, the credentials (password may be NULL) and
 * options. 0, BH_EINVAL (unparsable conninfo) or BH_ENOMEM; pp must be freed either way. */
int bh__pg_params_build(bh__pg_params_t *pp, const bh_pg_server_t *srv, const char *options,
                        const char *dbname, const char *user, const char *password);

/* dns_name resolved: host and hostaddr become lists of up to 4 addresses. 0, BH_ECONNECT_FAILED
 * (no usable address) or BH_ENOMEM (then pp is unchanged). */
int bh__pg_params_set_addresses(bh__pg_params_t *pp, const struct addrinfo *res);

/* Frees what bh__pg_params_build allocated, wiping the password. */
void bh__pg_params_free(bh__pg_params_t *pp);

#endif
