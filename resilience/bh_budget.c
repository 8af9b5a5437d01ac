/* Retry budget: a shared window of request and retry counts; add-then-check keeps the limit exact
 * without a lock (a retry that pushes the count past the limit is taken back and refused). */
#include "bh_budget.h"

enum { REQUESTS, RETRIES };

void bh_budget_init(bh_budget_t *b, const bh_conf_budget_t *conf)
{
    bh_window_init(&b->w, BH_BUDGET_WINDOW_MS);
    b->ratio = conf->ratio;
    b->reserve = (uint64_t)conf->min_per_second * (BH_BUDGET_WINDOW_MS / 1000);
    atomic_init(&b->exhausted, 0);
    atomic_init(&b->retries_total, 0);
}

void bh_budget_on_request(bh_budget_t *b, uint64_t now_ms)
{
    bh_window_add(&b->w, REQUESTS, now_ms, 1);
}

static uint64_t limit_for(const bh_budget_t *b, uint64_t requests)
{
    return (uint64_t)(b->ratio * (double)requests) + b->reserve;
}

bool bh_budget_try_acquire_retry(bh_budget_t *b, uint64_t now_ms)
{
    uint64_t retries, limit;

    bh_window_add(&b->w, RETRIES, now_ms, 1);
    retries = bh_window_sum(&b->w, RETRIES, now_ms);
    limit = limit_for(b, bh_window_sum(&b->w, REQUESTS, now_ms));
    if (retries > limit) {
        bh_window_sub(&b->w, RETRIES, now_ms, 1);
        atomic_fetch_add_explicit(&b->exhausted, 1, memory_order_relaxed);
        return false;
    }
    atomic_fetch_add_explicit(&b->retries_total, 1, memory_order_relaxed);
    return true;
}

void bh_budget_stats(bh_budget_t *b, uint64_t now_ms, bh_budget_stats_t *out)
{
    out->requests = bh_window_sum(&b->w, REQUESTS, now_ms);
    out->retries = bh_window_sum(&b->w, RETRIES, now_ms);
    out->limit = limit_for(b, out->requests);
    out->remaining = out->limit > out->retries ? out->limit - out->retries : 0;
    out->exhausted = atomic_load_explicit(&b->exhausted, memory_order_relaxed);
    out->retries_total = atomic_load_explicit(&b->retries_total, memory_order_relaxed);
}
