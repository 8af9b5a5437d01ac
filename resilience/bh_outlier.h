/* Passive outlier detection per endpoint of one upstream, shared by every worker thread.
 *
 * `consecutive_failures` failures in a row on one endpoint eject it for eject_for x (the number
 * of times it has been ejected), capped at BH_OUTLIER_MAX_EJECT_MS. At most floor(max_ejected x
 * endpoints) are ejected at once. When that many are out and another endpoint reaches the
 * threshold, the one ejected first comes back early (released, counted) to make room: the fresh
 * failure run is better evidence than the old one, which may have recovered meanwhile (a rolling
 * restart), and the loss this risks is bounded by consecutive_failures where keeping the old one
 * out could cost eject_for x its multiplier of traffic sent to a dead endpoint. An ejected endpoint
 * that fails its active health checks is not released (it would not get traffic). When none can
 * be (a cap of 0), the ejection is skipped (counted) and the run kept. An endpoint that stays back
 * for BH_OUTLIER_MAX_EJECT_MS after its last ejection and then succeeds starts over at x1. Active
 * health checks (when configured) feed bh_outlier_set_healthy; an unhealthy endpoint is not
 * eligible either. When no endpoint is eligible, every endpoint is (panic mode): traffic goes to
 * all of them rather than none.
 *
 * Which outcomes are failures is the caller's decision (e.g. bh_retry_counts_as_failure with the
 * upstream's breaker `count` set). Thread-safety: every function except new/free is lock-free and
 * may be called from any thread. Ejection decisions are serialised by a try-flag (a thread that
 * finds it taken skips the decision; its endpoint's next failure decides again), which keeps
 * max_ejected exact without ever waiting. */
#ifndef BH_OUTLIER_H
#define BH_OUTLIER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "bh_conf.h"

#define BH_OUTLIER_MAX_EJECT_MS 300000

typedef struct bh_outlier bh_outlier_t;

typedef struct bh_outlier_stats {
    size_t endpoints;
    size_t ejected;              /* ejected at now (in use of max_ejectable) */
    size_t max_ejectable;        /* floor(max_ejected x endpoints) */
    size_t unhealthy;            /* marked unhealthy by active checks */
    size_t eligible;             /* not ejected and healthy (0 = panic) */
    uint64_t ejections;          /* since creation (monotonic) */
    uint64_t ejections_skipped;  /* refused by max_ejected 0 (monotonic) */
    uint64_t ejections_released; /* ended early to make room under max_ejected (monotonic) */
} bh_outlier_stats_t;

/* What a failure that ejected its endpoint did. */
typedef struct bh_outlier_event {
    uint64_t eject_ms; /* for how long */
    uint32_t times;    /* the endpoint's ejections so far, this one included (its multiplier) */
    size_t released;   /* the endpoint brought back early to make room, or n_endpoints: none */
} bh_outlier_event_t;

/* A detector for n_endpoints endpoints (all healthy, none ejected), conf copied. Returns NULL
 * when out of memory. Free with bh_outlier_free once no thread uses it. */
bh_outlier_t *bh_outlier_new(const bh_conf_outlier_t *conf, size_t n_endpoints);
void bh_outlier_free(bh_outlier_t *o);
/* Records the outcome of one attempt on endpoint i (< n_endpoints) at now_ms. True when this
 * failure ejected the endpoint; then *ev (when not NULL) says how. */
bool bh_outlier_record_ev(bh_outlier_t *o, size_t i, bool failed, uint64_t now_ms,
                          bh_outlier_event_t *ev);
static inline bool bh_outlier_record(bh_outlier_t *o, size_t i, bool failed, uint64_t now_ms)
{
    return bh_outlier_record_ev(o, i, failed, now_ms, NULL);
}
/* Active health check result for endpoint i. */
void bh_outlier_set_healthy(bh_outlier_t *o, size_t i, bool healthy);
/* The last active health check result for endpoint i (true until one fails). */
bool bh_outlier_is_healthy(bh_outlier_t *o, size_t i);
/* Whether endpoint i is ejected at now_ms, and until when (*until_ms may be NULL). */
bool bh_outlier_is_ejected(bh_outlier_t *o, size_t i, uint64_t now_ms, uint64_t *until_ms);
/* Fills eligible[0..n_endpoints) for bh_balance_pick and returns how many are true. In panic mode
 * (none would be) every entry is true, *panic (may be NULL) is set, and n_endpoints returned. */
size_t bh_outlier_eligible(bh_outlier_t *o, uint64_t now_ms, bool *eligible, bool *panic);
/* How many times endpoint i was ejected (its current multiplier). */
uint32_t bh_outlier_ejections(bh_outlier_t *o, size_t i);
void bh_outlier_stats(bh_outlier_t *o, uint64_t now_ms, bh_outlier_stats_t *out);

#endif
