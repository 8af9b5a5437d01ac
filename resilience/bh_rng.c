/* xorshift64* (Vigna, "An experimental exploration of Marsaglia's xorshift generators"), seeded
 * through splitmix64 so that nearby or zero seeds give unrelated, non-zero states. */
#include "bh_rng.h"

void bh_rng_seed(bh_rng_t *rng, uint64_t seed)
{
    uint64_t z = seed + 0x9e3779b97f4a7c15ull;

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    rng->s = z != 0 ? z : 0x2545f4914f6cdd1dull;
}

uint64_t bh_rng_next(bh_rng_t *rng)
{
    uint64_t x = rng->s;

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng->s = x;
    return x * 0x2545f4914f6cdd1dull;
}

uint64_t bh_rng_below(bh_rng_t *rng, uint64_t n)
{
    uint64_t limit, x;

    if (n == 0)
        return 0;
    /* reject the top partial range so every residue is equally likely */
    limit = UINT64_MAX - (UINT64_MAX % n + 1) % n;
    do
        x = bh_rng_next(rng);
    while (x > limit);
    return x % n;
}

double bh_rng_unit(bh_rng_t *rng)
{
    return (double)(bh_rng_next(rng) >> 11) * 0x1.0p-53;
}
