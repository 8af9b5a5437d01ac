/* Fixed-size refcounted byte buffers from a per-worker free list.
 *
 * A read lands in a buffer; slices of it are queued for writing on another socket without copying,
 * each queued write holding a reference. The buffer returns to its pool's free list when the last
 * reference goes, so an idle connection holds no buffer at all. Not thread-safe: one pool per worker. */
#ifndef BH_BUF_H
#define BH_BUF_H

#include <stddef.h>
#include <stdint.h>
#include "bh_list.h"

typedef struct bh_bufpool bh_bufpool_t;

typedef struct bh_buf {
    bh_list_t link;      /* on the pool's free list while free */
    bh_bufpool_t *pool;
    uint32_t refs;
    uint32_t cap;        /* bytes in data[] */
    char data[];
} bh_buf_t;

struct bh_bufpool {
    bh_list_t free;
    uint32_t cap;        /* size of every buffer's data[] */
    uint32_t nfree;
    uint32_t max_free;   /* buffers kept on the free list; beyond, they are freed */
    uint64_t in_use;     /* buffers handed out and not yet returned */
};

/* cap: bytes per buffer; max_free: how many free buffers to keep cached. */
void bh_bufpool_init(bh_bufpool_t *p, uint32_t cap, uint32_t max_free);
/* Frees the cached buffers. Every buffer must have been returned (asserted). */
void bh_bufpool_destroy(bh_bufpool_t *p);

/* A buffer with one reference, or NULL when memory is exhausted. */
bh_buf_t *bh_buf_get(bh_bufpool_t *p);

static inline bh_buf_t *bh_buf_ref(bh_buf_t *b)
{
    b->refs++;
    return b;
}

/* Drops one reference; the last one returns the buffer to its pool. NULL is allowed. */
void bh_buf_unref(bh_buf_t *b);

#endif
