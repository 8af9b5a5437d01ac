/* Retry budget per upstream: retries may add at most `ratio` of the recent request rate plus
 * `min_per_second` (Finagle's RetryBudget semantics), over a sliding window of
 * BH_BUDGET_WINDOW_MS (10 buckets of 1 s).
 *
 * A retry is counted when it is SCHEDULED (bh_budget_try_acquire_retry, called when the pipeline
 * decides to retry, before the backoff), not when it starts: retries waiting in backoff already
 * use the budget, so a burst of failures cannot schedule more retries than the budget allows
 * (the mistake of envoyproxy/envoy#30205, where only started retries count).
 *
 * Shared by all worker threads of the process: every function is thread-safe and lock-free
 * (relaxed atomics). Under contention right at the limit a retry may be refused that a serial
 * order would have allowed; the limit itself is never exceeded. */
#ifndef BH_BUDGET_H
#define BH_BUDGET_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include "bh_conf.h"
#include "bh_window.h"

#define BH_BUDGET_WINDOW_MS 10000

typedef struct bh_budget {
    bh_window_t w;    /* counter 0: requests, 1: retries */
    double ratio;     /* fields below are private; read them with bh_budget_stats */
    uint64_t reserve; /* min_per_second * window seconds */
    _Atomic uint64_t exhausted;
    _Atomic uint64_t retries_total;
} bh_budget_t;

typedef struct bh_budget_stats {
    uint64_t requests;      /* original requests seen in the window */
    uint64_t retries;       /* retries scheduled in the window: the budget in use */
    uint64_t limit;         /* retries allowed in the window: ratio * requests + reserve */
    uint64_t remaining;     /* limit - retries (0 when exhausted) */
    uint64_t exhausted;     /* retries refused since init (monotonic) */
    uint64_t retries_total; /* retries granted since init (monotonic) */
} bh_budget_stats_t;

/* Sets up an empty budget from conf (copied). Not thread-safe: call before sharing b. */
void bh_budget_init(bh_budget_t *b, const bh_conf_budget_t *conf);
/* Counts one original request (not a retry) at now_ms. */
void bh_budget_on_request(bh_budget_t *b, uint64_t now_ms);
/* Takes one retry from the budget at now_ms. Returns true when granted (the retry is counted
 * from now, whether or not it ever starts), false when the budget is exhausted (counted in
 * `exhausted`; the caller returns the original failure). */
bool bh_budget_try_acquire_retry(bh_budget_t *b, uint64_t now_ms);
/* The budget as seen at now_ms (in use, limit, remaining, counters). */
void bh_budget_stats(bh_budget_t *b, uint64_t now_ms, bh_budget_stats_t *out);

#endif
