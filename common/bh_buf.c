/* Refcounted buffers and their free list. */
#include <assert.h>
#include "bh_alloc.h"
#include "bh_buf.h"

void bh_bufpool_init(bh_bufpool_t *p, uint32_t cap, uint32_t max_free)
{
    bh_list_init(&p->free);
    p->cap = cap;
    p->nfree = 0;
    p->max_free = max_free;
    p->in_use = 0;
}

void bh_bufpool_destroy(bh_bufpool_t *p)
{
    bh_list_t *n, *t;
    assert(p->in_use == 0);
    bh_list_foreach_safe(n, t, &p->free)
    {
        bh_list_remove(n);
        bh_free(bh_container_of(n, bh_buf_t, link));
    }
    p->nfree = 0;
}

bh_buf_t *bh_buf_get(bh_bufpool_t *p)
{
    bh_buf_t *b;
    bh_list_t *n = bh_list_first(&p->free);
    if (n != NULL) {
        bh_list_remove(n);
        p->nfree--;
        b = bh_container_of(n, bh_buf_t, link);
    } else {
        b = bh_malloc(sizeof(*b) + p->cap);
        if (b == NULL)
            return NULL;
        bh_list_init(&b->link);
        b->pool = p;
        b->cap = p->cap;
    }
    b->refs = 1;
    p->in_use++;
    return b;
}

void bh_buf_unref(bh_buf_t *b)
{
    if (b == NULL)
        return;
    assert(b->refs > 0);
    if (--b->refs > 0)
        return;
    bh_bufpool_t *p = b->pool;
    p->in_use--;
    if (p->nfree < p->max_free) {
        bh_list_push_front(&p->free, &b->link);
        p->nfree++;
    } else {
        bh_free(b);
    }
}
