/* Circuit breaker per upstream (or database), shared by every worker thread of the process.
 *
 * CLOSED: requests pass; outcomes are counted. It trips to OPEN when `consecutive_failures`
 * failures come in a row, or when, over `window`, at least `min_requests` outcomes were seen and
 * the share of failures reached `failure_rate`.
 * OPEN: requests fail fast (BH_EBREAKER_OPEN, with the time left as a Retry-After hint). The k-th
 * consecutive open period (k = 0 after CLOSED) lasts open_for * 2^k, capped at max_open_for,
 * with +-10% jitter. When it ends, the next request moves the breaker to HALF_OPEN.
 * HALF_OPEN: exactly `half_open_probes` requests are admitted (the rest fail fast). When all of
 * them succeed it closes (counts and the doubling reset); the first failure reopens it for a
 * longer period. Probes that never finish cannot keep it half-open: when the half-open period
 * (probe_timeout, see bh_breaker_init) ends before every probe succeeded, the breaker reopens
 * as if a probe had failed, and late outcomes of that period are ignored.
 *
 * Which outcomes are failures is the caller's decision (bh_retry_counts_as_failure maps an
 * attempt with the configured `count` set). Outcomes of requests admitted in an earlier period
 * (a CLOSED request finishing while OPEN, a probe of an expired half-open period) are ignored.
 *
 * Thread-safety: every function is lock-free and safe to call from any thread. The state, the
 * probe counts and the period's end live in one 64-bit atomic word changed by CAS, so exactly
 * one thread wins each transition; counters are relaxed atomics. now_ms must stay within 2^40 ms of
 * the init time. Threads may pass slightly different clocks (each worker's loop time): a late clock
 * only delays a transition to its next call. */
#ifndef BH_BREAKER_H
#define BH_BREAKER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include "bh_conf.h"
#include "bh_error.h"
#include "bh_rng.h"
#include "bh_window.h"

enum bh_breaker_state {
    BH_BREAKER_CLOSED,
    BH_BREAKER_OPEN,
    BH_BREAKER_HALF_OPEN,
};

#define BH_BREAKER_MAX_PROBES 100

enum { BH_TICKET_NONE, BH_TICKET_NORMAL, BH_TICKET_PROBE };

/* What bh_breaker_allow hands out and bh_breaker_record/cancel take back. Plain value owned by
 * the request; record and cancel consume it (kind becomes BH_TICKET_NONE, a second call is a
 * no-op). */
typedef struct bh_breaker_ticket {
    uint64_t era;  /* which period admitted it */
    unsigned kind; /* BH_TICKET_* */
} bh_breaker_ticket_t;

typedef struct bh_breaker {
    bh_conf_breaker_t conf; /* private: copied at init */
    uint64_t probe_timeout_ms;
    uint64_t base_ms;      /* init time: period ends are stored relative to it */
    _Atomic uint64_t word; /* state:2 | admitted:7 | succeeded:7 | gen:8 | until:40 */
    _Atomic uint32_t consecutive;
    _Atomic uint32_t reopens; /* open periods since the last CLOSED */
    bh_window_t w;            /* counter 0: outcomes, 1: failures (CLOSED only) */
    _Atomic uint64_t opens, rejections, probe_timeouts;
} bh_breaker_t;

typedef struct bh_breaker_stats {
    enum bh_breaker_state state;
    uint64_t open_remaining_ms;    /* OPEN: time until half-open; else 0 */
    uint32_t consecutive_failures; /* in use of conf.consecutive_failures */
    uint64_t window_requests;      /* outcomes in the window (CLOSED) */
    uint64_t window_failures;      /* failures among them */
    uint32_t probes_admitted;      /* HALF_OPEN: probes handed out / succeeded / still free */
    uint32_t probes_succeeded;
    uint32_t probes_remaining;
    uint32_t reopens;        /* consecutive open periods (the doubling exponent) */
    uint64_t opens;          /* transitions to OPEN since init (monotonic) */
    uint64_t rejections;     /* requests failed fast since init (monotonic) */
    uint64_t probe_timeouts; /* half-open periods ended by stuck probes (monotonic) */
} bh_breaker_stats_t;

/* Sets up a CLOSED breaker from conf (copied; half_open_probes is clamped to 1..100).
 * probe_timeout_ms: how long a half-open period waits for its probes (0: conf->open_for_ms);
 * pass at least the longest a request may take (the route's total timeout), or slow but healthy
 * probes will reopen it. Not thread-safe: call before sharing b. */
void bh_breaker_init(bh_breaker_t *b, const bh_conf_breaker_t *conf, uint64_t probe_timeout_ms,
                     uint64_t now_ms);

/* May a request go to the upstream at now_ms? Returns 0 and fills *ticket (NORMAL or PROBE), or
 * BH_EBREAKER_OPEN with *retry_after_ms (> 0: when it is worth asking again; may be NULL) and a
 * NONE ticket. rng (the calling thread's; NULL = no jitter) jitters open periods. Every ticket
 * of kind NORMAL/PROBE must later go to bh_breaker_record or bh_breaker_cancel. */
BH_MUST_CHECK int bh_breaker_allow(bh_breaker_t *b, uint64_t now_ms, bh_rng_t *rng,
                                   bh_breaker_ticket_t *ticket, uint64_t *retry_after_ms);

/* The outcome of the request that holds ticket: failed as decided by the caller's count set. */
void bh_breaker_record(bh_breaker_t *b, bh_breaker_ticket_t *ticket, bool failed, uint64_t now_ms,
                       bh_rng_t *rng);

/* Gives back a ticket whose request never reached the upstream for reasons not the upstream's
 * (pool full, client gone, deadline spent before the attempt): frees its probe slot, counts
 * nothing. */
void bh_breaker_cancel(bh_breaker_t *b, bh_breaker_ticket_t *ticket);

/* The state as stored (an OPEN period that ended still reads OPEN until the next allow). */
enum bh_breaker_state bh_breaker_state(bh_breaker_t *b);
/* Counters and state at now_ms, for metrics. */
void bh_breaker_stats(bh_breaker_t *b, uint64_t now_ms, bh_breaker_stats_t *out);
/* "closed", "open", "half_open". */
const char *bh_breaker_state_name(enum bh_breaker_state s);

#endif
