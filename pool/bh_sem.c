/* Permits shared by threads: the atomic steps of handing them over (see bh_sem.h).
 *
 * Races are settled by two rules. A lane's granted count is changed by compare-and-swap against
 * the value its need and tickets were judged with, so one permit goes to one waiter, and never
 * to a lane whose last pool left (GONE is set in the same word). Who needs a permit and who holds
 * one that could serve always look at each other after a sequentially consistent fence (needy:
 * publish, fence, look at used and idle; giver: free or idle, fence, look at need), so at least
 * one of them sees the other and no permit idles beside a waiter that was never told. */
#include <stdint.h>
#include "bh_alloc.h"
#include "bh_sem.h"

bh_sem_t *bh_sem_new(int64_t max, uint32_t n_lanes)
{
    if (n_lanes == 0)
        n_lanes = 1;
    size_t head = (sizeof(bh_sem_t) + 63) & ~(size_t)63;
    char *mem = bh_calloc(1, head + 64 + (size_t)n_lanes * sizeof(bh_sem_lane_t));
    if (mem == NULL)
        return NULL;
    bh_sem_t *s = (bh_sem_t *)mem;
    uintptr_t at = ((uintptr_t)mem + head + 63) & ~(uintptr_t)63;
    s->lanes = (bh_sem_lane_t *)at;
    s->max = max;
    s->n_lanes = n_lanes;
    atomic_init(&s->used, 0);
    atomic_init(&s->enqueued, 0);
    atomic_init(&s->dequeued, 0);
    atomic_init(&s->refs, 1);
    for (uint32_t i = 0; i < n_lanes; i++) {
        bh_sem_lane_t *l = &s->lanes[i];
        for (int k = 0; k < BH_SEM_SHOWN; k++) {
            atomic_init(&l->tickets[k], BH_SEM_NONE);
            l->shown[k] = BH_SEM_NONE;
        }
        atomic_init(&l->need, 0);
        atomic_init(&l->idle, 0);
        atomic_init(&l->inbox, NULL);
        atomic_init(&l->granted, BH_SEM_GONE);
        atomic_init(&l->asked, 0);
        atomic_init(&l->queued, 0);
        l->sem = s;
        bh_list_init(&l->pools);
    }
    return s;
}

bh_sem_t *bh_sem_ref(bh_sem_t *s)
{
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    return s;
}

void bh_sem_unref(bh_sem_t *s)
{
    if (s == NULL || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (uint32_t i = 0; i < s->n_lanes; i++)
        assert(s->lanes[i].n_pools == 0 && s->lanes[i].spare == 0);
    bh_free(s);
}

/* The lane (not self) whose oldest needy waiter has the smallest ticket below `below`, with that
 * ticket and the lane's granted count as read; NULL when none. */
static bh_sem_lane_t *scan_oldest(bh_sem_t *s, const bh_sem_lane_t *self, uint64_t below,
                                  uint64_t *ticket, uint32_t *granted)
{
    bh_sem_lane_t *best = NULL;
    uint64_t bt = below;
    uint32_t bg = 0;
    for (uint32_t i = 0; i < s->n_lanes; i++) {
        bh_sem_lane_t *l = &s->lanes[i];
        uint32_t g;
        uint64_t t;
        if (l != self && (t = bh_sem_lane_next(l, &g)) < bt) {
            best = l;
            bt = t;
            bg = g;
        }
    }
    *ticket = bt;
    *granted = bg;
    return best;
}

bh_sem_lane_t *bh_sem_oldest(bh_sem_t *s, const bh_sem_lane_t *self, uint64_t below,
                             uint64_t *ticket)
{
    uint64_t bt;
    uint32_t bg;
    bh_sem_lane_t *best = scan_oldest(s, self, below, &bt, &bg);
    if (ticket != NULL)
        *ticket = bt;
    return best;
}

bh_sem_lane_t *bh_sem_claim(bh_sem_t *s, const bh_sem_lane_t *self, uint64_t below)
{
    for (;;) {
        uint64_t bt;
        uint32_t bg;
        bh_sem_lane_t *best = scan_oldest(s, self, below, &bt, &bg);
        if (best == NULL)
            return NULL;
        /* Fails only when another thread changed that lane's count meanwhile: look again. */
        if (atomic_compare_exchange_strong_explicit(&best->granted, &bg, bg + 1,
                                                    memory_order_acq_rel, memory_order_relaxed)) {
            bh_sem_post(best);
            return best;
        }
    }
}

void bh_sem_post(bh_sem_lane_t *l)
{
    bh_sem_inbox_t *in = atomic_load_explicit(&l->inbox, memory_order_acquire);
    if (in == NULL || atomic_exchange_explicit(&l->queued, 1, memory_order_acq_rel))
        return; /* never attached, or already queued (the owner will see what changed) */
    bh_sem_ref(l->sem);
    bh_sem_lane_t *head = atomic_load_explicit(&in->head, memory_order_relaxed);
    do {
        l->next = head;
    } while (!atomic_compare_exchange_weak_explicit(&in->head, &head, l, memory_order_release,
                                                    memory_order_relaxed));
    if (head == NULL) /* otherwise whoever made it non-empty has woken the owner */
        in->wake(in);
}

void bh_sem_ask_idle(bh_sem_t *s, const bh_sem_lane_t *self, uint32_t need)
{
    uint32_t covered = 0;
    for (uint32_t i = 0; i < s->n_lanes && covered < need; i++) {
        bh_sem_lane_t *l = &s->lanes[i];
        uint32_t idle;
        if (l == self || (idle = atomic_load_explicit(&l->idle, memory_order_relaxed)) == 0)
            continue;
        covered += idle;
        if (atomic_exchange_explicit(&l->asked, 1, memory_order_acq_rel) == 0)
            bh_sem_post(l);
    }
}

uint32_t bh_sem_lane_take(bh_sem_lane_t *l)
{
    uint32_t g = atomic_load_explicit(&l->granted, memory_order_relaxed);
    while ((g & ~BH_SEM_GONE) != 0 &&
           !atomic_compare_exchange_weak_explicit(&l->granted, &g, g & BH_SEM_GONE,
                                                  memory_order_acq_rel, memory_order_relaxed))
        ;
    return g & ~BH_SEM_GONE;
}

void bh_sem_lane_open(bh_sem_lane_t *l, bh_sem_inbox_t *in)
{
    bh_sem_inbox_t *had = atomic_load_explicit(&l->inbox, memory_order_relaxed);
    assert(had == NULL || had == in); /* one thread per lane */
    if (had == NULL)
        atomic_store_explicit(&l->inbox, in, memory_order_release);
    atomic_fetch_and_explicit(&l->granted, ~BH_SEM_GONE, memory_order_acq_rel);
}

uint32_t bh_sem_lane_close(bh_sem_lane_t *l)
{
    uint32_t g = atomic_exchange_explicit(&l->granted, BH_SEM_GONE, memory_order_acq_rel);
    return g & ~BH_SEM_GONE;
}

bh_sem_lane_t *bh_sem_inbox_take(bh_sem_inbox_t *in)
{
    return atomic_exchange_explicit(&in->head, NULL, memory_order_acquire);
}
