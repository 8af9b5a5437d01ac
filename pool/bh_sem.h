/* A counting semaphore of permits, exact across threads (atomic), never blocking. */
#ifndef BH_SEM_H
#define BH_SEM_H

#include <assert.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

/* Several pools may share one semaphore (the endpoints of an upstream, on every worker). A pool
 * whose waiters find no free permit must not starve while another pool keeps idle connections:
 * waiting counts the waiters of all sharing pools, and kick (set by the owner, callable from any
 * thread) makes every sharing pool run bh_pool_kick() on its own thread soon. */
typedef struct bh_sem {
    _Atomic int64_t used;
    int64_t max;
    _Atomic int64_t waiting;
    _Atomic uint32_t sharers;         /* pools sharing it: pools of Postgres keys come and go on
                                         their workers' threads, so atomic */
    void (*kick)(struct bh_sem *s);
    void *data;
} bh_sem_t;

static inline void bh_sem_init(bh_sem_t *s, int64_t max)
{
    atomic_init(&s->used, 0);
    atomic_init(&s->waiting, 0);
    s->max = max;
    atomic_init(&s->sharers, 0);
    s->kick = NULL;
    s->data = NULL;
}

static inline uint32_t bh_sem_sharers(bh_sem_t *s)
{
    return atomic_load_explicit(&s->sharers, memory_order_relaxed);
}

static inline int64_t bh_sem_waiting(bh_sem_t *s)
{
    return atomic_load_explicit(&s->waiting, memory_order_relaxed);
}

/* Takes one permit if one is free. */
static inline bool bh_sem_try_acquire(bh_sem_t *s)
{
    int64_t used = atomic_load_explicit(&s->used, memory_order_relaxed);
    while (used < s->max) {
        if (atomic_compare_exchange_weak_explicit(&s->used, &used, used + 1,
                                                  memory_order_acq_rel, memory_order_relaxed))
            return true;
    }
    return false;
}

/* Gives back one permit. Releasing more than was acquired is a bug. */
static inline void bh_sem_release(bh_sem_t *s)
{
    int64_t prev = atomic_fetch_sub_explicit(&s->used, 1, memory_order_acq_rel);
    assert(prev > 0 && "bh_sem_release without a matching acquire");
    (void)prev;
}

static inline int64_t bh_sem_in_use(bh_sem_t *s)
{
    return atomic_load_explicit(&s->used, memory_order_relaxed);
}

#endif
