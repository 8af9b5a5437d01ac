/* Deadlines: absolute times on a monotonic millisecond clock, passed in (no libuv here).
 * Pure functions; thread-safe. */
#ifndef BH_DEADLINE_H
#define BH_DEADLINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BH_DEADLINE_NONE UINT64_MAX

/* now + budget, saturating; a budget of 0 means no deadline. */
uint64_t bh_deadline_after(uint64_t now_ms, uint64_t budget_ms);
/* Milliseconds left before the deadline at now (0 when passed; UINT64_MAX when none). This is
 * also the value to send upstream in `Bulkhead-Deadline: <ms>`. */
uint64_t bh_deadline_remaining(uint64_t deadline_ms, uint64_t now_ms);
/* The earlier of two deadlines. */
static inline uint64_t bh_deadline_min(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}
/* Whether the deadline has passed at now (never for BH_DEADLINE_NONE). */
static inline bool bh_deadline_expired(uint64_t deadline_ms, uint64_t now_ms)
{
    return deadline_ms != BH_DEADLINE_NONE && now_ms >= deadline_ms;
}

/* Parses a `Bulkhead-Timeout` header value: decimal milliseconds, optional surrounding spaces
 * or tabs, at least 1. Returns 0 with *out_ms set (saturating at 365 days), or -1 when the value
 * is malformed or 0 (the caller then ignores the header). value need not be NUL-terminated. */
int bh_deadline_parse_ms(const char *value, size_t len, uint64_t *out_ms);

/* The deadline of a request arriving at now: now + route_total_ms, or now + client_ms when the
 * client asked for less (client_ms 0 = no request; a client can never lengthen the route's). */
uint64_t bh_deadline_for_request(uint64_t now_ms, uint64_t route_total_ms, uint64_t client_ms);

/* When a phase timer (connect, first byte, idle, pool wait) started at now must fire: the
 * earlier of now + phase_ms and the request deadline. *total_first (may be NULL) is set when
 * the deadline comes first (or at the same time): its expiry is then the request's
 * TOTAL_TIMEOUT (504, never retried), not the phase's own timeout. */
uint64_t bh_deadline_phase(uint64_t now_ms, uint64_t deadline_ms, uint64_t phase_ms,
                           bool *total_first);

#endif
