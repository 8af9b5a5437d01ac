/* Deadline arithmetic, saturating so that "no deadline" survives every operation. */
#include "bh_deadline.h"

#define CLIENT_MAX (365ull * 86400 * 1000)

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

int bh_deadline_parse_ms(const char *value, size_t len, uint64_t *out_ms)
{
    size_t i = 0;
    uint64_t v = 0;

    while (i < len && (value[i] == ' ' || value[i] == '\t'))
        i++;
    if (i == len || value[i] < '0' || value[i] > '9')
        return -1;
    for (; i < len && value[i] >= '0' && value[i] <= '9'; i++)
        if (v <= CLIENT_MAX)
            v = v * 10 + (uint64_t)(value[i] - '0');
    while (i < len && (value[i] == ' ' || value[i] == '\t'))
        i++;
    if (i != len || v == 0)
        return -1;
    *out_ms = v > CLIENT_MAX ? CLIENT_MAX : v;
    return 0;
}

uint64_t bh_deadline_for_request(uint64_t now_ms, uint64_t route_total_ms, uint64_t client_ms)
{
    uint64_t budget = route_total_ms;

    if (client_ms != 0 && (budget == 0 || client_ms < budget))
        budget = client_ms;
    return bh_deadline_after(now_ms, budget);
}

uint64_t bh_deadline_phase(uint64_t now_ms, uint64_t deadline_ms, uint64_t phase_ms,
                           bool *total_first)
{
    uint64_t phase = bh_deadline_after(now_ms, phase_ms);
    bool first = deadline_ms <= phase;

    if (total_first != NULL)
        *total_first = first && deadline_ms != BH_DEADLINE_NONE;
    return first ? deadline_ms : phase;
}
