/* The resilience pipeline of one backend call, the same for an HTTP upstream and a database:
 *
 *   deadline -> breaker (asked once per request) -> pool -> attempt -> classify ->
 *   retry (policy, breaker, backoff within the deadline, budget) -> ... -> the request's outcome
 *   recorded once for the breaker, counted by breaker.count
 *
 * A backend's shared state (bh_guard_t: its breaker, retry budget and breaker.count) is asked
 * through these calls only, so both handlers read the same keys the same way. The handler keeps
 * its own phases (pool, I/O) and classifies each attempt (bh_attempt_t); this file decides what
 * that means. Thread-safe as its parts are (breaker and budget are shared by workers; rng is the
 * calling worker's). */
#ifndef BH_CALL_H
#define BH_CALL_H

#include <stdbool.h>
#include <stdint.h>
#include "bh_breaker.h"
#include "bh_budget.h"
#include "bh_retry.h"
#include "bh_rng.h"

/* What a backend (upstream or database) offers every call. */
typedef struct bh_guard {
    bh_breaker_t *breaker;
    bh_budget_t *budget;
    uint32_t count; /* breaker.count: BH_COUNT_* bits */
} bh_guard_t;

/* One request's passage. Zero it before bh_call_begin. */
typedef struct bh_call {
    bh_breaker_ticket_t ticket;
    bool open; /* began, outcome not yet recorded */
} bh_call_t;

/* The request starts: it counts for the retry budget, and the breaker is asked, once. 0, or
 * BH_EBREAKER_OPEN with *retry_after_ms (when it is worth asking again): nothing may be tried. */
BH_MUST_CHECK int bh_call_begin(const bh_guard_t *g, bh_call_t *c, uint64_t now_ms, bh_rng_t *rng,
                                uint64_t *retry_after_ms);

/* Why a retry was not scheduled (BH_CALL_RETRY: it was, after *delay_ms). */
typedef enum bh_call_verdict {
    BH_CALL_RETRY,
    BH_CALL_NO, /* the policy, an open breaker, or no time left */
    BH_CALL_BUDGET_EXHAUSTED,
} bh_call_verdict_t;

/* After a failed attempt (attempts_made of them so far): may another one run? Everything must
 * allow it: the policy (outcome, safety, attempts, the request's retry conditions; a NULL a is a
 * rerun the caller vouches for, e.g. a rolled-back serialization failure, for which only the
 * number of attempts counts, and req may be NULL too), a breaker not
 * open (maybe opened by this very failure: the failure then stands as it was), a backoff
 * (retry_after_ms: the backend's own hint, 0 when none) that fits before deadline_ms, and the
 * retry budget, which is spent here, when the retry is scheduled. */
bh_call_verdict_t bh_call_retry(const bh_guard_t *g, const bh_conf_retry_t *policy,
                                unsigned attempts_made, const bh_attempt_t *a,
                                const bh_retry_request_t *req, uint64_t retry_after_ms,
                                uint64_t now_ms, uint64_t deadline_ms, bh_rng_t *rng,
                                uint64_t *delay_ms);

/* The request's final outcome, once: recorded for the breaker as breaker.count says, or, for an
 * outcome that is not the backend's doing (BH_OUTCOME_LOCAL: pool full or wait timeout, client
 * gone; BH_OUTCOME_TOTAL_TIMEOUT: the request's own deadline, spent before or between attempts),
 * given back without counting. Later calls do nothing. */
void bh_call_end(const bh_guard_t *g, bh_call_t *c, const bh_attempt_t *a, uint64_t now_ms,
                 bh_rng_t *rng);

/* The request went away before any outcome (client gone, out of memory): nothing is counted. */
void bh_call_abandon(const bh_guard_t *g, bh_call_t *c);

#endif
