/* Endpoint selection. Candidates are the eligible endpoints minus prefer_not; when that leaves
 * none, the eligible ones; when none is eligible, all of them. No allocation: the k-th candidate
 * is found by a scan (upstreams have few endpoints). */
#include "bh_balance.h"

typedef struct cands {
    size_t n;
    const bool *eligible;
    size_t skip; /* excluded index or BH_BALANCE_NONE */
    bool all;    /* ignore eligible */
} cands_t;

static bool is_cand(const cands_t *c, size_t i)
{
    return i != c->skip && (c->all || c->eligible == NULL || c->eligible[i]);
}

static size_t count(const cands_t *c)
{
    size_t m = 0;

    for (size_t i = 0; i < c->n; i++)
        m += is_cand(c, i);
    return m;
}

static size_t kth(const cands_t *c, size_t k)
{
    for (size_t i = 0; i < c->n; i++)
        if (is_cand(c, i) && k-- == 0)
            return i;
    return BH_BALANCE_NONE; /* not reached: k < count */
}

void bh_balance_init(bh_balance_t *b, enum bh_balance_policy policy)
{
    b->policy = policy;
    b->next = 0;
}

size_t bh_balance_pick(bh_balance_t *b, size_t n, const bool *eligible, const uint32_t *in_flight,
                       size_t prefer_not, bh_rng_t *rng)
{
    cands_t c = {n, eligible, prefer_not, false};
    size_t m, i, j;

    if (n == 0)
        return BH_BALANCE_NONE;
    if ((m = count(&c)) == 0) {
        c.skip = BH_BALANCE_NONE;
        if ((m = count(&c)) == 0) {
            c.all = true; /* panic: nothing eligible */
            c.skip = prefer_not;
            if ((m = count(&c)) == 0) {
                c.skip = BH_BALANCE_NONE;
                m = n;
            }
        }
    }
    switch (b->policy) {
    case BH_BALANCE_ROUND_ROBIN:
        for (size_t step = 0; step < n; step++) {
            i = (b->next + step) % n;
            if (is_cand(&c, i)) {
                b->next = (i + 1) % n;
                return i;
            }
        }
        return kth(&c, 0); /* not reached */
    case BH_BALANCE_RANDOM:
        return kth(&c, (size_t)bh_rng_below(rng, m));
    default: /* least_request: two distinct random candidates, the less loaded wins */
        i = (size_t)bh_rng_below(rng, m);
        if (m == 1)
            return kth(&c, i);
        j = (size_t)bh_rng_below(rng, m - 1);
        j += j >= i; /* a second rank, distinct from the first */
        i = kth(&c, i);
        j = kth(&c, j);
        if (in_flight == NULL || in_flight[i] == in_flight[j])
            return bh_rng_below(rng, 2) ? i : j;
        return in_flight[i] < in_flight[j] ? i : j;
    }
}

const char *bh_balance_name(enum bh_balance_policy p)
{
    return p == BH_BALANCE_ROUND_ROBIN ? "round_robin"
           : p == BH_BALANCE_RANDOM    ? "random"
                                       : "least_request";
}
