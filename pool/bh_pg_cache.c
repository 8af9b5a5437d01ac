/* The prepared-statement cache of one server connection: which query texts already exist on the
 * server as prepared statements bh_ps_<id>, and which was used least recently.
 *
 * Invariants: every entry is in exactly one hash chain and on the LRU list (head = most recent);
 * n and bytes count them and their copied texts; ids are never reused on a connection, so a
 * statement the server still holds after the cache forgot it can never be mistaken for another.
 * Only the owner of the connection touches it (one loop thread). */
#include "bh_pg_int.h"

#include <string.h>
#include "bh_alloc.h"

struct bh__pg_ps {
    struct bh__pg_ps *hnext;       /* hash chain */
    struct bh__pg_ps *prev, *next; /* LRU list */
    uint64_t hash;
    uint32_t id;
    int nparams;
    size_t len;
    char sql[];
};

static uint64_t ps_hash(const char *sql, size_t len, int nparams)
{
    uint64_t h = 1469598103934665603ull ^ (uint64_t)(uint32_t)nparams;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)sql[i]) * 1099511628211ull;
    return h;
}

static struct bh__pg_ps **chain_of(bh__pg_cache_t *pc, uint64_t hash)
{
    return &pc->buckets[hash & (BH__PG_CACHE_BUCKETS - 1)];
}

static void lru_unlink(bh__pg_cache_t *pc, struct bh__pg_ps *e)
{
    if (e->prev != NULL)
        e->prev->next = e->next;
    else
        pc->head = e->next;
    if (e->next != NULL)
        e->next->prev = e->prev;
    else
        pc->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push(bh__pg_cache_t *pc, struct bh__pg_ps *e)
{
    e->prev = NULL;
    e->next = pc->head;
    if (pc->head != NULL)
        pc->head->prev = e;
    pc->head = e;
    if (pc->tail == NULL)
        pc->tail = e;
}

static void entry_free(bh__pg_cache_t *pc, struct bh__pg_ps *e)
{
    struct bh__pg_ps **pp = chain_of(pc, e->hash);
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    lru_unlink(pc, e);
    pc->n--;
    pc->bytes -= e->len;
    bh_free(e);
}

uint32_t bh__pg_cache_find(bh__pg_cache_t *pc, const char *sql, size_t len, int nparams)
{
    if (pc->buckets == NULL)
        return 0;
    uint64_t h = ps_hash(sql, len, nparams);
    for (struct bh__pg_ps *e = *chain_of(pc, h); e != NULL; e = e->hnext)
        if (e->hash == h && e->len == len && e->nparams == nparams &&
            memcmp(e->sql, sql, len) == 0) {
            lru_unlink(pc, e);
            lru_push(pc, e);
            return e->id;
        }
    return 0;
}

uint32_t bh__pg_cache_add(bh__pg_cache_t *pc, const char *sql, size_t len, int nparams)
{
    if (pc->buckets == NULL &&
        (pc->buckets = bh_calloc(BH__PG_CACHE_BUCKETS, sizeof(*pc->buckets))) == NULL)
        return 0;
    struct bh__pg_ps *e = bh_malloc(sizeof(*e) + len);
    if (e == NULL)
        return 0;
    memcpy(e->sql, sql, len);
    e->len = len;
    e->nparams = nparams;
    e->hash = ps_hash(sql, len, nparams);
    e->id = ++pc->next_id;
    struct bh__pg_ps **chain = chain_of(pc, e->hash);
    e->hnext = *chain;
    *chain = e;
    lru_push(pc, e);
    pc->n++;
    pc->bytes += len;
    return e->id;
}

bool bh__pg_cache_full(const bh__pg_cache_t *pc, uint32_t cap, size_t len)
{
    return pc->n > 0 && (pc->n >= cap || pc->bytes + len > BH__PG_CACHE_MAX_BYTES);
}

uint32_t bh__pg_cache_evict(bh__pg_cache_t *pc)
{
    struct bh__pg_ps *e = pc->tail;
    if (e == NULL)
        return 0;
    uint32_t id = e->id;
    entry_free(pc, e);
    return id;
}

void bh__pg_cache_drop(bh__pg_cache_t *pc, uint32_t id)
{
    for (struct bh__pg_ps *e = pc->head; e != NULL; e = e->next)
        if (e->id == id) {
            entry_free(pc, e);
            return;
        }
}

void bh__pg_cache_clear(bh__pg_cache_t *pc)
{
    while (pc->tail != NULL)
        entry_free(pc, pc->tail);
}

void bh__pg_cache_free(bh__pg_cache_t *pc)
{
    bh__pg_cache_clear(pc);
    bh_free(pc->buckets);
    pc->buckets = NULL;
}
