/* Lock-free bucketed counters: see bh_window.h for the packing. */
#include "bh_window.h"

#define COUNT_MASK 0xffffffffull

void bh_window_init(bh_window_t *w, uint64_t window_ms)
{
    w->bucket_ms = window_ms / BH_WINDOW_BUCKETS ? window_ms / BH_WINDOW_BUCKETS : 1;
    for (unsigned b = 0; b < BH_WINDOW_BUCKETS; b++)
        for (unsigned k = 0; k < BH_WINDOW_COUNTERS; k++)
            atomic_init(&w->slot[b][k], 0);
}

/* The bucket number of now (its low 32 bits tag the slot; differences stay wrap-safe) and the
 * slot it lives in (from the full number, so the rotation never skips at a 32-bit wrap). */
static uint32_t bucket_of(const bh_window_t *w, uint64_t now_ms)
{
    return (uint32_t)(now_ms / w->bucket_ms);
}

static unsigned slot_of(const bh_window_t *w, uint64_t now_ms)
{
    return (unsigned)(now_ms / w->bucket_ms % BH_WINDOW_BUCKETS);
}

void bh_window_add(bh_window_t *w, unsigned which, uint64_t now_ms, uint32_t delta)
{
    uint32_t ep = bucket_of(w, now_ms);
    _Atomic uint64_t *slot = &w->slot[slot_of(w, now_ms)][which];
    uint64_t old = atomic_load_explicit(slot, memory_order_relaxed), new;

    do {
        if ((uint32_t)(old >> 32) == ep) {
            uint64_t c = (old & COUNT_MASK) + delta;
            new = ((uint64_t)ep << 32) | (c > COUNT_MASK ? COUNT_MASK : c);
        } else if ((uint32_t)(ep - (uint32_t)(old >> 32)) >= 0x80000000u && (old & COUNT_MASK)) {
            /* the slot already holds a later bucket (a thread with a newer clock): this event
             * belongs to a bucket that has left the window for that thread. An empty slot
             * (count 0, e.g. cleared) is always taken. */
            return;
        } else {
            new = ((uint64_t)ep << 32) | delta;
        }
    } while (!atomic_compare_exchange_weak_explicit(slot, &old, new, memory_order_relaxed,
                                                    memory_order_relaxed));
}

void bh_window_sub(bh_window_t *w, unsigned which, uint64_t now_ms, uint32_t delta)
{
    uint32_t ep = bucket_of(w, now_ms);
    _Atomic uint64_t *slot = &w->slot[slot_of(w, now_ms)][which];
    uint64_t old = atomic_load_explicit(slot, memory_order_relaxed), new;

    do {
        if ((uint32_t)(old >> 32) != ep || (old & COUNT_MASK) < delta)
            return;
        new = old - delta;
    } while (!atomic_compare_exchange_weak_explicit(slot, &old, new, memory_order_relaxed,
                                                    memory_order_relaxed));
}

uint64_t bh_window_sum(bh_window_t *w, unsigned which, uint64_t now_ms)
{
    uint32_t ep = bucket_of(w, now_ms);
    uint64_t sum = 0;

    for (unsigned b = 0; b < BH_WINDOW_BUCKETS; b++) {
        uint64_t v = atomic_load_explicit(&w->slot[b][which], memory_order_relaxed);
        if ((uint32_t)(ep - (uint32_t)(v >> 32)) < BH_WINDOW_BUCKETS)
            sum += v & COUNT_MASK;
    }
    return sum;
}

void bh_window_clear(bh_window_t *w)
{
    for (unsigned b = 0; b < BH_WINDOW_BUCKETS; b++)
        for (unsigned k = 0; k < BH_WINDOW_COUNTERS; k++)
            atomic_store_explicit(&w->slot[b][k], 0, memory_order_relaxed);
}
