/* Deadline arithmetic, saturating so that "no deadline" survives every operation. */
#include "bh_deadline.h"

uint64_t bh_deadline_after(uint64_t now_ms, uint64_t budget_ms)
{
    if (budget_ms == 0 || budget_ms >= BH_DEADLINE_NONE - now_ms)
        return BH_DEADLINE_NONE;
    return now_ms + budget_ms;
}

uint64_t bh_deadline_remaining(uint64_t deadline_ms, uint64_t now_ms)
{
    if (deadline_ms == BH_DEADLINE_NONE)
        return UINT64_MAX;
    return deadline_ms > now_ms ? deadline_ms - now_ms : 0;
}
