/* Circuit breaker, lock-free.
 *
 * Invariants: the state, the half-open probe counts, a transition count (gen) and the end of
 * the current period live in one atomic word, so each transition is one CAS from the word a
 * thread saw; the loser re-reads and acts on the new state. gen and the end time together are
 * the period's identity (era): tickets carry it, and an outcome whose era is not the current one
 * is ignored. CLOSED stores the time it closed as its "end".
 * `reopens`, `consecutive` and the window are side counters touched only by the CAS winner of a
 * transition (reset) or by CLOSED-era outcomes (counting); their races only shift a count by
 * one outcome. */
#include <assert.h>
#include "bh_breaker.h"

#define UNTIL_BITS 40 /* ms after base_ms: 34 years */
#define UNTIL_MAX ((1ull << UNTIL_BITS) - 1)

enum { OUTCOMES, FAILURES };

/* The word: state:2 | admitted:7 | succeeded:7 | gen:8 | until:40 (ms after b->base_ms).
 * gen counts transitions, so that two periods ending at the same millisecond (threads with
 * slightly different clocks) still have different eras. */
static uint64_t pack(const bh_breaker_t *b, enum bh_breaker_state s, uint32_t admitted, uint32_t ok,
                     uint64_t gen, uint64_t until)
{
    uint64_t off = until > b->base_ms ? until - b->base_ms : 0;

    return (uint64_t)s | (uint64_t)admitted << 2 | (uint64_t)ok << 9 | (gen & 0xff) << 16 |
           (off > UNTIL_MAX ? UNTIL_MAX : off) << 24;
}

static enum bh_breaker_state st(uint64_t w)
{
    return (enum bh_breaker_state)(w & 3);
}

static uint32_t admitted(uint64_t w)
{
    return (uint32_t)(w >> 2) & 0x7f;
}

static uint32_t succeeded(uint64_t w)
{
    return (uint32_t)(w >> 9) & 0x7f;
}

static uint64_t gen(uint64_t w)
{
    return (w >> 16) & 0xff;
}

static uint64_t until(const bh_breaker_t *b, uint64_t w)
{
    return b->base_ms + (w >> 24);
}

/* The identity of the word's period (gen and end). */
static uint64_t era(uint64_t w)
{
    return w >> 16;
}

void bh_breaker_init(bh_breaker_t *b, const bh_conf_breaker_t *conf, uint64_t probe_timeout_ms,
                     uint64_t now_ms)
{
    b->conf = *conf;
    if (b->conf.half_open_probes < 1)
        b->conf.half_open_probes = 1;
    if (b->conf.half_open_probes > BH_BREAKER_MAX_PROBES)
        b->conf.half_open_probes = BH_BREAKER_MAX_PROBES;
    if (b->conf.open_for_ms < 1)
        b->conf.open_for_ms = 1;
    if (b->conf.max_open_for_ms < b->conf.open_for_ms)
        b->conf.max_open_for_ms = b->conf.open_for_ms;
    b->probe_timeout_ms = probe_timeout_ms ? probe_timeout_ms : b->conf.open_for_ms;
    b->base_ms = now_ms;
    atomic_init(&b->word, pack(b, BH_BREAKER_CLOSED, 0, 0, 0, now_ms));
    atomic_init(&b->consecutive, 0);
    atomic_init(&b->reopens, 0);
    bh_window_init(&b->w, conf->window_ms);
    atomic_init(&b->opens, 0);
    atomic_init(&b->rejections, 0);
    atomic_init(&b->probe_timeouts, 0);
}

/* open_for * 2^k capped at max_open_for, then +-10% jitter (at least 1 ms). */
static uint64_t open_period(const bh_breaker_t *b, uint32_t k, bh_rng_t *rng)
{
    uint64_t d = b->conf.open_for_ms, max = b->conf.max_open_for_ms, tenth;

    for (uint32_t i = 0; i < k && d < max; i++)
        d = d > max / 2 ? max : d * 2;
    if (d > max)
        d = max;
    tenth = d / 10;
    if (rng != NULL)
        d = d - tenth + bh_rng_below(rng, 2 * tenth + 1);
    return d ? d : 1;
}

/* CAS from seen (CLOSED or HALF_OPEN) to OPEN. Returns whether this thread made the move. */
static bool trip(bh_breaker_t *b, uint64_t seen, uint64_t now_ms, bh_rng_t *rng)
{
    uint32_t k =
        st(seen) == BH_BREAKER_CLOSED ? 0 : atomic_load_explicit(&b->reopens, memory_order_relaxed);
    uint64_t next = pack(b, BH_BREAKER_OPEN, 0, 0, gen(seen) + 1, now_ms + open_period(b, k, rng));

    if (!atomic_compare_exchange_strong_explicit(&b->word, &seen, next, memory_order_acq_rel,
                                                 memory_order_relaxed))
        return false;
    atomic_store_explicit(&b->reopens, k + 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&b->opens, 1, memory_order_relaxed);
    return true;
}

static void reject(bh_breaker_t *b, bh_breaker_ticket_t *t, uint64_t *retry_after_ms, uint64_t ms)
{
    atomic_fetch_add_explicit(&b->rejections, 1, memory_order_relaxed);
    t->kind = BH_TICKET_NONE;
    t->era = 0;
    if (retry_after_ms != NULL)
        *retry_after_ms = ms ? ms : 1;
}

int bh_breaker_allow(bh_breaker_t *b, uint64_t now_ms, bh_rng_t *rng, bh_breaker_ticket_t *ticket,
                     uint64_t *retry_after_ms)
{
    assert(now_ms - b->base_ms < UNTIL_MAX || now_ms < b->base_ms);
    for (;;) {
        uint64_t w = atomic_load_explicit(&b->word, memory_order_acquire), next;

        switch (st(w)) {
        case BH_BREAKER_CLOSED:
            ticket->kind = BH_TICKET_NORMAL;
            ticket->era = era(w);
            return 0;
        case BH_BREAKER_OPEN:
            if (now_ms < until(b, w)) {
                reject(b, ticket, retry_after_ms, until(b, w) - now_ms);
                return BH_EBREAKER_OPEN;
            }
            next = pack(b, BH_BREAKER_HALF_OPEN, 1, 0, gen(w) + 1, now_ms + b->probe_timeout_ms);
            if (atomic_compare_exchange_weak_explicit(&b->word, &w, next, memory_order_acq_rel,
                                                      memory_order_relaxed)) {
                ticket->kind = BH_TICKET_PROBE;
                ticket->era = era(next);
                return 0;
            }
            break;
        default:                         /* HALF_OPEN */
            if (now_ms >= until(b, w)) { /* its probes did not all finish in time */
                if (trip(b, w, now_ms, rng))
                    atomic_fetch_add_explicit(&b->probe_timeouts, 1, memory_order_relaxed);
                break;
            }
            if (admitted(w) >= b->conf.half_open_probes) {
                uint64_t left = until(b, w) - now_ms;
                reject(b, ticket, retry_after_ms,
                       left < b->conf.open_for_ms ? left : b->conf.open_for_ms);
                return BH_EBREAKER_OPEN;
            }
            next = w + (1u << 2); /* admitted + 1 */
            if (atomic_compare_exchange_weak_explicit(&b->word, &w, next, memory_order_acq_rel,
                                                      memory_order_relaxed)) {
                ticket->kind = BH_TICKET_PROBE;
                ticket->era = era(w);
                return 0;
            }
            break;
        }
    }
}

/* A CLOSED-era outcome: count it, trip when a threshold is reached. */
static void record_closed(bh_breaker_t *b, uint64_t w, bool failed, uint64_t now_ms, bh_rng_t *rng)
{
    const bh_conf_breaker_t *c = &b->conf;
    uint32_t run = 0;
    bool over = false;

    bh_window_add(&b->w, OUTCOMES, now_ms, 1);
    if (failed) {
        bh_window_add(&b->w, FAILURES, now_ms, 1);
        run = atomic_fetch_add_explicit(&b->consecutive, 1, memory_order_relaxed) + 1;
    } else {
        atomic_store_explicit(&b->consecutive, 0, memory_order_relaxed);
        return; /* a success never trips */
    }
    if (c->consecutive_failures > 0 && run >= c->consecutive_failures)
        over = true;
    if (!over && c->failure_rate > 0) {
        uint64_t n = bh_window_sum(&b->w, OUTCOMES, now_ms);
        uint64_t f = bh_window_sum(&b->w, FAILURES, now_ms);
        over = n >= c->min_requests && n > 0 && (double)f >= c->failure_rate * (double)n;
    }
    if (over)
        trip(b, w, now_ms, rng);
}

void bh_breaker_record(bh_breaker_t *b, bh_breaker_ticket_t *ticket, bool failed, uint64_t now_ms,
                       bh_rng_t *rng)
{
    unsigned kind = ticket->kind;

    ticket->kind = BH_TICKET_NONE;
    if (kind == BH_TICKET_NONE)
        return;
    for (;;) {
        uint64_t w = atomic_load_explicit(&b->word, memory_order_acquire), next;

        if (era(w) != ticket->era)
            return; /* admitted in an earlier period */
        if (kind == BH_TICKET_NORMAL) {
            if (st(w) == BH_BREAKER_CLOSED)
                record_closed(b, w, failed, now_ms, rng);
            return;
        }
        if (st(w) != BH_BREAKER_HALF_OPEN)
            return;
        if (failed || now_ms >= until(b, w)) {
            if (trip(b, w, now_ms, rng))
                return;
            continue; /* the word moved: look again */
        }
        if (succeeded(w) + 1 >= b->conf.half_open_probes) {
            next = pack(b, BH_BREAKER_CLOSED, 0, 0, gen(w) + 1, now_ms);
            if (atomic_compare_exchange_weak_explicit(&b->word, &w, next, memory_order_acq_rel,
                                                      memory_order_relaxed)) {
                bh_window_clear(&b->w);
                atomic_store_explicit(&b->consecutive, 0, memory_order_relaxed);
                atomic_store_explicit(&b->reopens, 0, memory_order_relaxed);
                return;
            }
        } else {
            next = w + (1u << 9); /* succeeded + 1 */
            if (atomic_compare_exchange_weak_explicit(&b->word, &w, next, memory_order_acq_rel,
                                                      memory_order_relaxed))
                return;
        }
    }
}

void bh_breaker_cancel(bh_breaker_t *b, bh_breaker_ticket_t *ticket)
{
    unsigned kind = ticket->kind;

    ticket->kind = BH_TICKET_NONE;
    if (kind != BH_TICKET_PROBE)
        return;
    for (;;) {
        uint64_t w = atomic_load_explicit(&b->word, memory_order_acquire), next;

        if (st(w) != BH_BREAKER_HALF_OPEN || era(w) != ticket->era || admitted(w) == 0)
            return;
        next = w - (1u << 2); /* admitted - 1 */
        if (atomic_compare_exchange_weak_explicit(&b->word, &w, next, memory_order_acq_rel,
                                                  memory_order_relaxed))
            return;
    }
}

enum bh_breaker_state bh_breaker_state(bh_breaker_t *b)
{
    return st(atomic_load_explicit(&b->word, memory_order_acquire));
}

void bh_breaker_stats(bh_breaker_t *b, uint64_t now_ms, bh_breaker_stats_t *out)
{
    uint64_t w = atomic_load_explicit(&b->word, memory_order_acquire);

    out->state = st(w);
    out->open_remaining_ms =
        st(w) == BH_BREAKER_OPEN && until(b, w) > now_ms ? until(b, w) - now_ms : 0;
    out->consecutive_failures = atomic_load_explicit(&b->consecutive, memory_order_relaxed);
    out->window_requests = bh_window_sum(&b->w, OUTCOMES, now_ms);
    out->window_failures = bh_window_sum(&b->w, FAILURES, now_ms);
    out->probes_admitted = st(w) == BH_BREAKER_HALF_OPEN ? admitted(w) : 0;
    out->probes_succeeded = st(w) == BH_BREAKER_HALF_OPEN ? succeeded(w) : 0;
    out->probes_remaining = st(w) == BH_BREAKER_HALF_OPEN ? b->conf.half_open_probes - admitted(w)
                            : st(w) == BH_BREAKER_OPEN    ? b->conf.half_open_probes
                                                          : 0;
    out->reopens = atomic_load_explicit(&b->reopens, memory_order_relaxed);
    out->opens = atomic_load_explicit(&b->opens, memory_order_relaxed);
    out->rejections = atomic_load_explicit(&b->rejections, memory_order_relaxed);
    out->probe_timeouts = atomic_load_explicit(&b->probe_timeouts, memory_order_relaxed);
}

const char *bh_breaker_state_name(enum bh_breaker_state s)
{
    return s == BH_BREAKER_CLOSED ? "closed" : s == BH_BREAKER_OPEN ? "open" : "half_open";
}
