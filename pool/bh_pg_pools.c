/* The registry of Postgres pools: a worker's pools by key, their permits, timers and lifetime.
 *
 * Invariants:
 * - pools->buckets holds every pool of the worker until it is freed, retired and closing ones
 *   too; bh_pg_pool_get finds only the others (neither retired nor timer_closing), so a key whose
 *   pool is retiring gets a new pool beside the old one.
 * - A pool's memory lives until its timer's close callback, which unlinks it, detaches it from
 *   its permit counter and frees it. The timer is closed only once the pool is empty: by the
 *   sweep, after a whole sweep interval empty (no connection, no waiter, min_idle 0), or, while
 *   the worker's pools close, as soon as it is empty (bh__pg_pool_maybe_done).
 * - pools->open counts the sweep timer and the pools not yet freed; the last one to go frees
 *   pools and runs the close callback.
 * - The process-wide bh_pg_shared_t holds one entry per database entry (its bh_sem_t) and one per
 *   key with a cap of its own, each counted by the pools (of every worker) attached to it. Its
 * mutex is taken only when a pool is created or freed (and by bh_pg_shared_count), never on the
 * request path. */
#include "bh_pg_int.h"

#include <assert.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include "bh_alloc.h"
#include "bh_list.h"
#include "bh_log.h"

/* A process-wide entry: the permit counter of a database entry (sem), or the cap of one pool
 * key inside it (cap: max_per_user, or the entry's max_connections when that is lower; its count
 * is also the key's connections over every worker, for /stats). Counted by the pools (of every
 * worker) attached to it. */
typedef struct bh__pg_sem_entry {
    bh_list_t link;
    uint8_t key[BH__PG_KEY_LEN]; /* the database digest, or the pool key */
    bh_sem_t *sem;               /* a database's; NULL for a key's */
    bh_pool_cap_t cap;           /* a key's */
    unsigned refs;
    char *database; /* a key's: its entry's name, user and database name */
    char *user, *dbname;
} sem_entry_t;

struct bh_pg_shared {
    pthread_mutex_t mu;
    bh_list_t entries;
    size_t n;
    uint32_t n_workers;
};

static uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

static size_t key_bucket(const uint8_t key[BH__PG_KEY_LEN], size_t n_buckets)
{
    uint64_t h;
    memcpy(&h, key, sizeof(h));
    return (size_t)(h % n_buckets);
}

/* ---- the fast index: a known pool without building its key ---------------------------------
 * A request names its pool by the server's configuration (tag) and its credentials. Building the
 * key costs the startup options (an allocation) and a SHA-256 per request; a pool already found
 * once is indexed by a cheap hash of exactly those inputs, and found again by comparing them
 * (the password in constant time for its length). The key stays the identity: a pool enters the
 * index only after the key found or made it. */

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

static uint64_t fast_hash(uint64_t tag, const char *dbname, const char *user, const char *password)
{
    uint64_t h = fnv(0xcbf29ce484222325ull, &tag, sizeof(tag));
    h = fnv(h, dbname, strlen(dbname) + 1);
    h = fnv(h, user, strlen(user) + 1);
    return password != NULL ? fnv(h, password, strlen(password)) : fnv(h, "\1", 1);
}

static bool same_password(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    size_t n = strlen(a);
    return strlen(b) == n && CRYPTO_memcmp(a, b, n) == 0;
}

static bh_pg_pool_t *find_fast(bh_pg_pools_t *pools, uint64_t tag, uint64_t h, const char *dbname,
                               const char *user, const char *password)
{
    for (bh_pg_pool_t *p = pools->fast[h % pools->n_buckets]; p != NULL; p = p->fast_next) {
        const bh__pg_params_t *pp = &p->params;
        if (p->fast_hash == h && p->tag == tag && !p->timer_closing && !p->retired &&
            strcmp(pp->vals[pp->dbname_at], dbname) == 0 &&
            strcmp(pp->vals[pp->user_at], user) == 0 &&
            same_password(pp->password_at != SIZE_MAX ? pp->vals[pp->password_at] : NULL, password))
            return p;
    }
    return NULL;
}

static void link_fast(bh_pg_pool_t *p, uint64_t h)
{
    bh_pg_pools_t *pools = p->pools;
    size_t b = h % pools->n_buckets;
    p->fast_hash = h;
    p->fast_next = pools->fast[b];
    pools->fast[b] = p;
    p->fast_linked = true;
}

static void unlink_fast(bh_pg_pool_t *p)
{
    if (!p->fast_linked)
        return;
    bh_pg_pool_t **pp = &p->pools->fast[p->fast_hash % p->pools->n_buckets];
    while (*pp != p)
        pp = &(*pp)->fast_next;
    *pp = p->fast_next;
    p->fast_linked = false;
}

/* ---- the pool timer ---------------------------------------------------------------------- */

static void on_pool_timer(uv_timer_t *t)
{
    bh_pg_pool_t *p = t->data;
    uint64_t now = bh__pg_now(p);
    if (p->retry_at <= now)
        p->retry_at = 0;
    /* Whatever was due is done, so bh_pool reports a new deadline through pool_arm; one that
     * is not due yet (the timer ran for the pre-warm retry) stays in armed_at. */
    bh_pool_expire(&p->base, now);
    bh__pg_pool_timer_set(p);
}

void bh__pg_pool_timer_set(bh_pg_pool_t *p)
{
    if (p->timer_closing)
        return;
    uint64_t at = p->armed_at;
    if (p->retry_at != 0)
        at = min_u64(at, p->retry_at);
    if (at == BH_TIME_NEVER) {
        uv_timer_stop(&p->timer);
        return;
    }
    uint64_t now = bh__pg_now(p);
    uv_timer_start(&p->timer, on_pool_timer, at > now ? at - now : 0, 0);
}

static void pool_arm(bh_pool_t *bp, uint64_t at_ms)
{
    bh_pg_pool_t *p = bp->data;
    p->armed_at = at_ms;
    bh__pg_pool_timer_set(p);
}

static const bh_pool_ops_t pg_pool_ops = {
    .open = bh__pg_conn_open,
    .alive = bh__pg_conn_alive,
    .close = bh__pg_conn_close,
    .arm = pool_arm,
};

/* ---- process-wide permits ---------------------------------------------------------------- */

static void sem_entry_free(sem_entry_t *e)
{
    if (e == NULL)
        return;
    if (e->sem != NULL)
        bh_sem_unref(e->sem); /* messages about it still queued on a worker keep it a while */
    bh_free(e->database);
    bh_free(e->user);
    bh_free(e->dbname);
    bh_free(e);
}

bh_pg_shared_t *bh_pg_shared_new(uint32_t n_workers)
{
    bh_pg_shared_t *s = bh_calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    pthread_mutex_init(&s->mu, NULL);
    bh_list_init(&s->entries);
    s->n_workers = n_workers ? n_workers : 1;
    return s;
}

void bh_pg_shared_free(bh_pg_shared_t *s)
{
    if (s == NULL)
        return;
    bh_list_t *n, *t;
    bh_list_foreach_safe(n, t, &s->entries) sem_entry_free(bh_container_of(n, sem_entry_t, link));
    pthread_mutex_destroy(&s->mu);
    bh_free(s);
}

void bh_pg_shared_keys(bh_pg_shared_t *s, bh_pg_key_cb cb, void *data)
{
    pthread_mutex_lock(&s->mu);
    bh_list_t *n;
    bh_list_foreach(n, &s->entries)
    {
        const sem_entry_t *e = bh_container_of(n, sem_entry_t, link);
        if (e->sem == NULL)
            cb(data, e->database, e->user, e->dbname,
               (uint32_t)atomic_load_explicit(&e->cap.used, memory_order_relaxed),
               (uint32_t)e->cap.max);
    }
    pthread_mutex_unlock(&s->mu);
}

size_t bh_pg_shared_count(bh_pg_shared_t *s)
{
    pthread_mutex_lock(&s->mu);
    size_t n = s->n;
    pthread_mutex_unlock(&s->mu);
    return n;
}

/* The entry for key, created when there is none: with a semaphore of max permits (with_sem), or
 * with a cap of max. NULL: out of memory. */
static sem_entry_t *sem_entry_get_locked(bh_pg_shared_t *s, const uint8_t key[BH__PG_KEY_LEN],
                                         uint32_t max, bool with_sem)
{
    bh_list_t *n;
    bh_list_foreach(n, &s->entries)
    {
        sem_entry_t *x = bh_container_of(n, sem_entry_t, link);
        if (memcmp(x->key, key, BH__PG_KEY_LEN) == 0)
            return x;
    }
    sem_entry_t *e = bh_calloc(1, sizeof(*e));
    if (e == NULL)
        return NULL;
    memcpy(e->key, key, BH__PG_KEY_LEN);
    e->cap.max = max;
    if (with_sem && (e->sem = bh_sem_new(max, s->n_workers)) == NULL) {
        bh_free(e);
        return NULL;
    }
    bh_list_push_back(&s->entries, &e->link);
    s->n++;
    return e;
}

static void sem_entry_unlink_locked(bh_pg_shared_t *s, sem_entry_t *e)
{
    bh_list_remove(&e->link);
    s->n--;
}

static void sem_entry_put_locked(bh_pg_shared_t *s, sem_entry_t *e, sem_entry_t **gone)
{
    if (e == NULL || --e->refs > 0)
        return;
    sem_entry_unlink_locked(s, e);
    *gone = e;
}

/* The key entry of p, created with its cap and names when there is none. NULL: no memory. */
static sem_entry_t *key_entry_get_locked(bh_pg_shared_t *s, const bh_pg_pool_t *p,
                                         const bh_pg_server_t *srv, uint32_t cap)
{
    sem_entry_t *k = sem_entry_get_locked(s, p->key, cap, false);
    if (k == NULL || k->database != NULL)
        return k;
    const bh__pg_params_t *pp = &p->params;
    k->database = bh_strdup(srv->name != NULL ? srv->name : "");
    k->user = bh_strdup(pp->vals[pp->user_at]);
    k->dbname = bh_strdup(pp->vals[pp->dbname_at]);
    if (k->database == NULL || k->user == NULL || k->dbname == NULL) {
        sem_entry_unlink_locked(s, k);
        sem_entry_free(k);
        return NULL;
    }
    return k;
}

/* Initialises p's bh_pool on the permits of its database entry (process-wide, one lane per
 * worker: every key of the entry shares them, so max_connections bounds the entry) and on its
 * key's cap. 0 or BH_ENOMEM (then p->base is untouched). */
static int attach_permits(bh_pg_pool_t *p, const bh_pg_server_t *srv)
{
    const bh_conf_pool_t *pc = &srv->pool;
    uint32_t max = pc->max_connections ? pc->max_connections : 1;
    uint32_t per_key = pc->max_per_user && pc->max_per_user < max ? pc->max_per_user : max;
    bh_pool_limits_t limits = {
        .max_pending = pc->max_pending,
        .max_idle = pc->max_idle ? pc->max_idle : max,
        .min_idle = pc->min_idle,
        .acquire_timeout_ms = pc->acquire_timeout_ms,
        .idle_timeout_ms = pc->idle_timeout_ms,
        .max_lifetime_ms = pc->max_lifetime_ms,
    };
    uint8_t dkey[BH__PG_KEY_LEN];
    if (bh__pg_db_digest(dkey, srv) < 0)
        return BH_ENOMEM;
    bh_pg_shared_t *s = p->pools->shared;
    pthread_mutex_lock(&s->mu);
    sem_entry_t *e = sem_entry_get_locked(s, dkey, max, true);
    sem_entry_t *k = e != NULL ? key_entry_get_locked(s, p, srv, per_key) : NULL;
    bool ok = k != NULL;
    if (ok) {
        e->refs++;
        k->refs++;
        bh_pool_init(&p->base, &pg_pool_ops, e->sem, p->pools->inbox, &limits, p);
        p->base.gauges = srv->gauges;
        p->base.cap = &k->cap;
    }
    sem_entry_t *gone = NULL;
    if (!ok && e != NULL && e->refs == 0) { /* created just now for nothing */
        sem_entry_unlink_locked(s, e);
        gone = e;
    }
    pthread_mutex_unlock(&s->mu);
    sem_entry_free(gone);
    if (!ok)
        return BH_ENOMEM;
    p->sem = e;
    p->cap = k;
    return 0;
}

/* An empty pool leaves its permits; the last pool of an entry or key on any worker frees it. */
static void detach_permits(bh_pg_pool_t *p)
{
    bh_pg_shared_t *s = p->pools->shared;
    bh_pool_detach(&p->base); /* empty: the timer closes only then */
    sem_entry_t *gone_db = NULL, *gone_key = NULL;
    pthread_mutex_lock(&s->mu);
    sem_entry_put_locked(s, p->sem, &gone_db);
    sem_entry_put_locked(s, p->cap, &gone_key);
    pthread_mutex_unlock(&s->mu);
    sem_entry_free(gone_db);
    sem_entry_free(gone_key);
}

/* ---- a pool's lifetime ------------------------------------------------------------------- */

static void pool_free(bh_pg_pool_t *p)
{
    bh__pg_params_free(&p->params);
    bh_free(p->label);
    explicit_bzero(p->key, sizeof(p->key));
    bh_free(p);
}

static void pools_one_closed(bh_pg_pools_t *pools)
{
    if (--pools->open > 0)
        return;
    void (*cb)(void *) = pools->closed_cb;
    void *data = pools->closed_data;
    bh_free(pools->buckets);
    bh_free(pools->fast);
    bh_free(pools);
    if (cb != NULL)
        cb(data);
}

/* p's timer is initialised, p counts in pools->open and is found by its key from now on. */
static void link_pool(bh_pg_pool_t *p)
{
    bh_pg_pools_t *pools = p->pools;
    uv_timer_init(pools->loop, &p->timer);
    p->timer.data = p;
    pools->open++;
    size_t b = key_bucket(p->key, pools->n_buckets);
    p->next = pools->buckets[b];
    pools->buckets[b] = p;
    pools->n_pools++;
}

static void unlink_pool(bh_pg_pool_t *p)
{
    bh_pg_pools_t *pools = p->pools;
    bh_pg_pool_t **pp = &pools->buckets[key_bucket(p->key, pools->n_buckets)];
    while (*pp != p)
        pp = &(*pp)->next;
    *pp = p->next;
    unlink_fast(p);
    pools->n_pools--;
}

static void on_pool_timer_closed(uv_handle_t *h)
{
    bh_pg_pool_t *p = h->data;
    bh_pg_pools_t *pools = p->pools;
    unlink_pool(p);
    detach_permits(p);
    pool_free(p);
    pools_one_closed(pools);
}

static void pool_close_timer(bh_pg_pool_t *p)
{
    if (p->timer_closing)
        return;
    p->timer_closing = true;
    uv_close((uv_handle_t *)&p->timer, on_pool_timer_closed);
}

void bh__pg_pool_maybe_done(bh_pg_pool_t *p)
{
    if (p->pools->closing && bh_pool_empty(&p->base))
        pool_close_timer(p);
}

/* ---- finding and creating pools ---------------------------------------------------------- */

static bh_pg_pool_t *find_pool(bh_pg_pools_t *pools, const uint8_t key[BH__PG_KEY_LEN])
{
    for (bh_pg_pool_t *p = pools->buckets[key_bucket(key, pools->n_buckets)]; p != NULL;
         p = p->next)
        if (!p->timer_closing && !p->retired && memcmp(p->key, key, BH__PG_KEY_LEN) == 0)
            return p;
    return NULL;
}

static int grow_buckets(bh_pg_pools_t *pools)
{
    size_t nb = pools->n_buckets * 2;
    bh_pg_pool_t **b = bh_calloc(nb, sizeof(*b)), **f = bh_calloc(nb, sizeof(*f));
    if (b == NULL || f == NULL) {
        bh_free(b);
        bh_free(f);
        return BH_ENOMEM;
    }
    for (size_t i = 0; i < pools->n_buckets; i++) {
        bh_pg_pool_t *p = pools->buckets[i], *next;
        for (; p != NULL; p = next) {
            next = p->next;
            p->next = b[key_bucket(p->key, nb)];
            b[key_bucket(p->key, nb)] = p;
            if (p->fast_linked) {
                p->fast_next = f[p->fast_hash % nb];
                f[p->fast_hash % nb] = p;
            }
        }
    }
    bh_free(pools->buckets);
    bh_free(pools->fast);
    pools->buckets = b;
    pools->fast = f;
    pools->n_buckets = nb;
    return 0;
}

/* The key of a pool, and the startup options it is derived from (*options: the caller's to
 * free, NULL on failure). */
static int pool_key(const bh_pg_server_t *srv, const char *dbname, const char *user,
                    const char *password, uint8_t key[BH__PG_KEY_LEN], char **options)
{
    int rc = bh__pg_options_build(srv, options);
    if (rc < 0)
        return rc;
    if (bh__pg_key_digest(key, srv, *options, dbname, user, password) < 0) {
        bh_free(*options);
        *options = NULL;
        return BH_ENOMEM;
    }
    return 0;
}

/* A pool for key with what opening its connections needs (parameters, label, timeouts), not yet
 * attached to permits nor linked. */
static int pool_new(bh_pg_pools_t *pools, const bh_pg_server_t *srv,
                    const uint8_t key[BH__PG_KEY_LEN], const char *options, const char *dbname,
                    const char *user, const char *password, bh_pg_pool_t **out)
{
    bh_pg_pool_t *p = bh_calloc(1, sizeof(*p));
    if (p == NULL)
        return BH_ENOMEM;
    p->pools = pools;
    p->tag = srv->tag;
    memcpy(p->key, key, BH__PG_KEY_LEN);
    int rc = bh__pg_params_build(&p->params, srv, options, dbname, user, password);
    size_t ll = strlen(user) + strlen(dbname) + 2;
    if (rc == 0 && (p->label = bh_malloc(ll)) == NULL)
        rc = BH_ENOMEM;
    if (rc < 0) {
        pool_free(p);
        return rc;
    }
    snprintf(p->label, ll, "%s@%s", user, dbname);
    p->connect_timeout_ms = srv->connect_timeout_ms ? srv->connect_timeout_ms : 2000;
    p->reset_timeout_ms = srv->reset_timeout_ms ? srv->reset_timeout_ms : p->connect_timeout_ms;
    p->statement_cache = srv->statement_cache;
    p->reset_always = !srv->reset_auto;
    p->armed_at = BH_TIME_NEVER;
    *out = p;
    return 0;
}

/* A pool for a key this worker has none for: created, attached to the key's permits, linked,
 * and pre-warmed to min_idle. */
static int pool_create(bh_pg_pools_t *pools, const bh_pg_server_t *srv,
                       const uint8_t key[BH__PG_KEY_LEN], const char *options, const char *dbname,
                       const char *user, const char *password, bh_pg_pool_t **out)
{
    if (pools->n_pools >= pools->n_buckets * 2 && grow_buckets(pools) < 0)
        return BH_ENOMEM;
    bh_pg_pool_t *p;
    int rc = pool_new(pools, srv, key, options, dbname, user, password, &p);
    if (rc < 0)
        return rc;
    if (attach_permits(p, srv) < 0) {
        pool_free(p);
        return BH_ENOMEM;
    }
    link_pool(p);
    bh_pool_expire(&p->base, bh__pg_now(p)); /* pre-warms to min_idle */
    *out = p;
    return 0;
}

int bh_pg_pool_get(bh_pg_pools_t *pools, const bh_pg_server_t *srv, const char *dbname,
                   const char *user, const char *password, bh_pg_pool_t **out)
{
    *out = NULL;
    if (pools->closing)
        return BH_EPOOL_CLOSED;
    if (dbname == NULL || user == NULL)
        return BH_EINVAL;
    uint64_t h = fast_hash(srv->tag, dbname, user, password);
    bh_pg_pool_t *p = find_fast(pools, srv->tag, h, dbname, user, password);
    if (p != NULL) {
        p->marked = false;
        *out = p;
        return 0;
    }
    uint8_t key[BH__PG_KEY_LEN];
    char *options = NULL;
    int rc = pool_key(srv, dbname, user, password, key, &options);
    if (rc < 0)
        return rc;
    p = find_pool(pools, key);
    if (p != NULL)
        p->marked = false;
    else
        rc = pool_create(pools, srv, key, options, dbname, user, password, &p);
    bh_free(options);
    if (rc < 0)
        return rc;
    if (!p->fast_linked && p->tag == srv->tag && srv->tag != 0)
        link_fast(p, h);
    *out = p;
    return 0;
}

const bh_pool_t *bh_pg_pool_base(const bh_pg_pool_t *p)
{
    return &p->base;
}

/* ---- per-worker pools -------------------------------------------------------------------- */

static void on_sweep(uv_timer_t *t)
{
    bh_pg_pools_sweep(t->data);
}

bh_pg_pools_t *bh_pg_pools_new(uv_loop_t *loop, bh_pg_shared_t *shared, bh_sem_inbox_t *inbox)
{
    bh_pg_pools_t *pools = bh_calloc(1, sizeof(*pools));
    if (pools == NULL)
        return NULL;
    pools->n_buckets = 16;
    pools->buckets = bh_calloc(pools->n_buckets, sizeof(*pools->buckets));
    pools->fast = bh_calloc(pools->n_buckets, sizeof(*pools->fast));
    if (pools->buckets == NULL || pools->fast == NULL) {
        bh_free(pools->buckets);
        bh_free(pools->fast);
        bh_free(pools);
        return NULL;
    }
    pools->loop = loop;
    pools->shared = shared;
    pools->inbox = inbox;
    uv_timer_init(loop, &pools->sweep);
    pools->sweep.data = pools;
    uv_timer_start(&pools->sweep, on_sweep, BH_PG_SWEEP_MS, BH_PG_SWEEP_MS);
    pools->open = 1;
    return pools;
}

size_t bh_pg_pools_count(const bh_pg_pools_t *pools)
{
    return pools->n_pools;
}

void bh_pg_pools_retire(bh_pg_pools_t *pools, const uint64_t *live, size_t n)
{
    for (size_t b = 0; b < pools->n_buckets; b++)
        for (bh_pg_pool_t *p = pools->buckets[b]; p != NULL; p = p->next) {
            bool keep = p->tag == 0 || p->retired || p->timer_closing;
            for (size_t i = 0; i < n && !keep; i++)
                keep = live[i] == p->tag;
            if (keep)
                continue;
            p->retired = true;
            bh_log_info("postgres pool %s: its database configuration was replaced; retiring it",
                        p->label);
            bh_pool_retire(&p->base, bh__pg_now(p));
        }
}

void bh_pg_pools_sweep(bh_pg_pools_t *pools)
{
    for (size_t i = 0; i < pools->n_buckets; i++) {
        for (bh_pg_pool_t *p = pools->buckets[i]; p != NULL; p = p->next) {
            if (p->timer_closing)
                continue;
            if (!bh_pool_empty(&p->base) || p->base.limits.min_idle > 0) {
                p->marked = false;
            } else if (!p->marked) {
                p->marked = true;
            } else {
                bh_pool_shutdown(&p->base, bh__pg_now(p));
                pool_close_timer(p);
            }
        }
    }
}

static void on_sweep_closed(uv_handle_t *h)
{
    pools_one_closed(h->data);
}

void bh_pg_pools_close(bh_pg_pools_t *pools, void (*cb)(void *data), void *data)
{
    assert(!pools->closing);
    pools->closing = true;
    pools->closed_cb = cb;
    pools->closed_data = data;
    /* Safe to walk: callbacks cannot create pools now, and pools unlink themselves only from
     * their timer's close callback, on a later loop turn. */
    for (size_t i = 0; i < pools->n_buckets; i++) {
        for (bh_pg_pool_t *p = pools->buckets[i]; p != NULL; p = p->next) {
            if (!p->base.shut)
                bh_pool_shutdown(&p->base, bh__pg_now(p));
            bh__pg_pool_maybe_done(p);
        }
    }
    uv_close((uv_handle_t *)&pools->sweep, on_sweep_closed);
}
