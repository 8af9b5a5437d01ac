/* Deadlines: absolute times on a monotonic millisecond clock, passed in (no libuv here). */
#ifndef BH_DEADLINE_H
#define BH_DEADLINE_H

#include <stdint.h>

#define BH_DEADLINE_NONE UINT64_MAX

/* now + budget, saturating; a budget of 0 means no deadline. */
uint64_t bh_deadline_after(uint64_t now_ms, uint64_t budget_ms);
/* Milliseconds left before the deadline at now (0 when passed; UINT64_MAX when none). */
uint64_t bh_deadline_remaining(uint64_t deadline_ms, uint64_t now_ms);
/* The earlier of two deadlines. */
static inline uint64_t bh_deadline_min(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

#endif
