/* A small seedable pseudo-random source (xorshift64*), passed to every resilience function that
 * draws a random number, so tests replay the same sequence from a fixed seed.
 *
 * Not cryptographic. Not thread-safe: each worker thread owns its own bh_rng_t (the resilience
 * objects shared by workers never keep one). The struct is public so callers can embed it. */
#ifndef BH_RNG_H
#define BH_RNG_H

#include <stdint.h>

typedef struct bh_rng {
    uint64_t s; /* never 0 */
} bh_rng_t;

/* Seeds rng; any seed is fine (0 included: it is mixed first). */
void bh_rng_seed(bh_rng_t *rng, uint64_t seed);
/* The next 64 random bits. */
uint64_t bh_rng_next(bh_rng_t *rng);
/* A uniform value in [0, n), without modulo bias; 0 when n is 0. */
uint64_t bh_rng_below(bh_rng_t *rng, uint64_t n);
/* A uniform double in [0, 1). */
double bh_rng_unit(bh_rng_t *rng);

#endif
