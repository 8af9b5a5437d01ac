/* A sliding window of event counts in time buckets, shared by threads without locks.
 *
 * BH_WINDOW_BUCKETS buckets of bucket_ms each hold BH_WINDOW_COUNTERS counters (e.g. requests and
 * failures). Each counter is one 64-bit atomic word packing (bucket number:32 | count:32), so a
 * bucket that belongs to an older period is recycled by the first writer with a single CAS and
 * never needs a sweep; readers skip buckets outside the window. The window covers the current
 * (partial) bucket and the BH_WINDOW_BUCKETS - 1 before it. Counts saturate at UINT32_MAX.
 * Memory order is relaxed: counts are statistics, not synchronisation. Used by bh_budget and
 * bh_breaker; the struct is public so they can embed it. */
#ifndef BH_WINDOW_H
#define BH_WINDOW_H

#include <stdatomic.h>
#include <stdint.h>

#define BH_WINDOW_BUCKETS 10
#define BH_WINDOW_COUNTERS 2

typedef struct bh_window {
    uint64_t bucket_ms; /* >= 1, fixed after init */
    _Atomic uint64_t slot[BH_WINDOW_BUCKETS][BH_WINDOW_COUNTERS];
} bh_window_t;

/* Sets up an empty window of BH_WINDOW_BUCKETS buckets spanning window_ms (bucket width
 * window_ms / BH_WINDOW_BUCKETS, at least 1 ms). Not thread-safe: before sharing. */
void bh_window_init(bh_window_t *w, uint64_t window_ms);
/* Adds delta to counter `which` (< BH_WINDOW_COUNTERS) in the bucket of now_ms. Thread-safe. */
void bh_window_add(bh_window_t *w, unsigned which, uint64_t now_ms, uint32_t delta);
/* Takes back delta added at now_ms, if that bucket was not recycled since. Thread-safe. */
void bh_window_sub(bh_window_t *w, unsigned which, uint64_t now_ms, uint32_t delta);
/* The sum of counter `which` over the window ending at now_ms. Thread-safe. */
uint64_t bh_window_sum(bh_window_t *w, unsigned which, uint64_t now_ms);
/* Empties every bucket. Thread-safe, but adds racing with it may survive. */
void bh_window_clear(bh_window_t *w);

#endif
