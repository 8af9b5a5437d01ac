/* Picks an endpoint of an upstream among the eligible ones: round robin, least request (power of
 * two random choices on in-flight counts, Mitzenmacher), or random; a retry names the endpoint
 * that failed (prefer_not) and gets another one whenever another is eligible.
 *
 * A bh_balance_t holds only the round-robin cursor: one per worker thread (or per upstream and
 * worker); not thread-safe. The eligible set comes from bh_outlier_eligible, the in-flight counts
 * from the caller (its own view; a worker's local counts are good enough for P2C). */
#ifndef BH_BALANCE_H
#define BH_BALANCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "bh_conf.h"
#include "bh_rng.h"

#define BH_BALANCE_NONE SIZE_MAX

typedef struct bh_balance {
    enum bh_balance_policy policy;
    size_t next; /* round robin: where the next scan starts */
} bh_balance_t;

void bh_balance_init(bh_balance_t *b, enum bh_balance_policy policy);

/* An index in [0, n), or BH_BALANCE_NONE when n is 0.
 * eligible: n flags, NULL = all eligible; when none is set, all count as eligible (panic).
 * in_flight: n counts for least_request, NULL = all 0 (then least_request is random).
 * prefer_not: the index to avoid (the endpoint whose attempt just failed), BH_BALANCE_NONE for
 * a first attempt; it is returned only when it is the only eligible endpoint.
 * rng: the calling thread's (random and least_request). */
size_t bh_balance_pick(bh_balance_t *b, size_t n, const bool *eligible, const uint32_t *in_flight,
                       size_t prefer_not, bh_rng_t *rng);

/* "round_robin", "least_request", "random". */
const char *bh_balance_name(enum bh_balance_policy p);

#endif
