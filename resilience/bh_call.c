/* The resilience pipeline shared by the HTTP forwarder and the SQL gateway (bh_call.h). */
#include "bh_call.h"

#include "bh_backoff.h"
#include "bh_deadline.h"

int bh_call_begin(const bh_guard_t *g, bh_call_t *c, uint64_t now_ms, bh_rng_t *rng,
                  uint64_t *retry_after_ms)
{
    *retry_after_ms = 0;
    bh_budget_on_request(g->budget, now_ms); /* every request, refused ones too */
    if (bh_breaker_allow(g->breaker, now_ms, rng, &c->ticket, retry_after_ms) < 0)
        return BH_EBREAKER_OPEN;
    c->open = true;
    return 0;
}

bh_call_verdict_t bh_call_retry(const bh_guard_t *g, const bh_conf_retry_t *policy,
                                unsigned attempts_made, const bh_attempt_t *a,
                                const bh_retry_request_t *req, uint64_t retry_after_ms,
                                uint64_t now_ms, uint64_t deadline_ms, bh_rng_t *rng,
                                uint64_t *delay_ms)
{
    if (a != NULL ? bh_retry_decide(policy, attempts_made, a, req) != BH_RETRY_YES
                  : attempts_made >= policy->attempts)
        return BH_CALL_NO;
    if (bh_breaker_state(g->breaker) == BH_BREAKER_OPEN)
        return BH_CALL_NO;
    uint64_t delay = bh_backoff_delay(policy, attempts_made, retry_after_ms,
                                      bh_deadline_remaining(deadline_ms, now_ms), rng);
    if (delay == BH_BACKOFF_GIVE_UP || !bh_backoff_fits(delay, now_ms, deadline_ms))
        return BH_CALL_NO;
    if (!bh_budget_try_acquire_retry(g->budget, now_ms))
        return BH_CALL_BUDGET_EXHAUSTED;
    *delay_ms = delay;
    return BH_CALL_RETRY;
}

void bh_call_end(const bh_guard_t *g, bh_call_t *c, const bh_attempt_t *a, uint64_t now_ms,
                 bh_rng_t *rng)
{
    if (!c->open)
        return;
    c->open = false;
    if (a->outcome == BH_OUTCOME_LOCAL || a->outcome == BH_OUTCOME_TOTAL_TIMEOUT) {
        bh_breaker_cancel(g->breaker, &c->ticket);
        return;
    }
    bh_breaker_record(g->breaker, &c->ticket, bh_retry_counts_as_failure(g->count, a), now_ms, rng);
}

void bh_call_abandon(const bh_guard_t *g, bh_call_t *c)
{
    if (!c->open)
        return;
    c->open = false;
    bh_breaker_cancel(g->breaker, &c->ticket);
}
