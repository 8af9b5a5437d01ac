/* Statistics cells for /metrics and /stats: counters, gauges and histograms that one thread
 * writes and any thread reads.
 *
 * Every cell has a single writer (the worker that owns it), so an update is a relaxed load, an
 * add and a relaxed store: no lock prefix, no contention, the cost of a plain increment. A reader
 * on another thread sees each cell whole (never torn) and at most slightly stale; the admin
 * thread sums the cells of every worker. Cells never move or go away while the process runs
 * (see bh_metrics.h), so a reader needs no lock either. */
#ifndef BH_STAT_H
#define BH_STAT_H

#include <stdatomic.h>
#include <stdint.h>

typedef _Atomic uint64_t bh_counter_t;
typedef _Atomic int64_t bh_gauge_t;

static inline void bh_counter_add(bh_counter_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static inline uint64_t bh_counter_get(const bh_counter_t *c)
{
    return atomic_load_explicit((bh_counter_t *)c, memory_order_relaxed);
}

static inline void bh_gauge_add(bh_gauge_t *g, int64_t d)
{
    atomic_store_explicit(g, atomic_load_explicit(g, memory_order_relaxed) + d,
                          memory_order_relaxed);
}

static inline void bh_gauge_set(bh_gauge_t *g, int64_t v)
{
    atomic_store_explicit(g, v, memory_order_relaxed);
}

static inline int64_t bh_gauge_get(const bh_gauge_t *g)
{
    return atomic_load_explicit((bh_gauge_t *)g, memory_order_relaxed);
}

/* Latency histogram with the bucket bounds below (seconds) and +Inf. Buckets hold plain
 * (non-cumulative) counts; the exposition makes them cumulative. */
#define BH_HIST_BOUNDS_US                                                                          \
    1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000,      \
        10000000
#define BH_HIST_N 14 /* 13 bounds + Inf */

typedef struct bh_hist {
    bh_counter_t bucket[BH_HIST_N];
    bh_counter_t sum_us;
} bh_hist_t;

static inline void bh_hist_observe(bh_hist_t *h, uint64_t us)
{
    static const uint64_t bounds[BH_HIST_N - 1] = {BH_HIST_BOUNDS_US};
    int i = 0;
    while (i < BH_HIST_N - 1 && us > bounds[i])
        i++;
    bh_counter_add(&h->bucket[i], 1);
    bh_counter_add(&h->sum_us, us);
}

#endif
