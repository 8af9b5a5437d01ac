/* Retry backoff with full jitter ("Exponential Backoff And Jitter", AWS Architecture Blog):
 * retry n (1-based) waits a uniform random delay in [0, base * (2^n - 1)), capped at max, and a
 * server's Retry-After is honoured when configured. Pure: time and randomness are arguments.
 * Thread-safe (no state of its own; the rng belongs to the calling thread). */
#ifndef BH_BACKOFF_H
#define BH_BACKOFF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "bh_conf.h"
#include "bh_rng.h"

/* Returned by bh_backoff_delay when the retry must not happen. */
#define BH_BACKOFF_GIVE_UP UINT64_MAX

/* The exclusive upper bound of retry n's jitter range: min(base * (2^n - 1), max), without
 * overflow (n 0 -> 0). */
uint64_t bh_backoff_ceiling(const bh_conf_backoff_t *conf, unsigned retry);

/* The delay in ms before retry n (1 = the first retry): uniform in [0, ceiling(conf->backoff, n))
 * (0 when the ceiling is 0), clamped to limit_ms (any value of the range is a valid full-jitter
 * draw). retry_after_ms: the upstream's Retry-After in ms, 0 when absent. When
 * conf->honor_retry_after and retry_after_ms > 0, the delay is max(jitter, retry_after_ms), and
 * when that is beyond limit_ms the result is BH_BACKOFF_GIVE_UP (retrying sooner than the server
 * asked is never done). limit_ms is what the caller allows, typically the deadline's remaining
 * time (UINT64_MAX: no limit). rng: the calling thread's. */
uint64_t bh_backoff_delay(const bh_conf_retry_t *conf, unsigned retry, uint64_t retry_after_ms,
                          uint64_t limit_ms, bh_rng_t *rng);

/* Whether waiting delay_ms from now_ms still leaves time before deadline_ms (strictly: a retry
 * that would start exactly at the deadline has no time left). BH_DEADLINE_NONE always fits;
 * BH_BACKOFF_GIVE_UP never does. */
bool bh_backoff_fits(uint64_t delay_ms, uint64_t now_ms, uint64_t deadline_ms);

/* Parses a Retry-After value (RFC 9110: delay-seconds only; an HTTP-date yields -1) into ms,
 * saturating at UINT64_MAX / 2. Returns 0 or -1 when it is not a plain number of seconds. */
int bh_backoff_parse_retry_after(const char *value, size_t len, uint64_t *out_ms);

#endif
