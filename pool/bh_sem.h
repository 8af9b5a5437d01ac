/* A counting semaphore of permits, exact across threads (atomic), never blocking. */
#ifndef BH_SEM_H
#define BH_SEM_H

#include <assert.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct bh_sem {
    _Atomic int64_t used;
    int64_t max;
} bh_sem_t;

static inline void bh_sem_init(bh_sem_t *s, int64_t max)
{
    atomic_init(&s->used, 0);
    s->max = max;
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
