/* Full-jitter exponential backoff; all arithmetic saturates instead of overflowing. */
#include "bh_backoff.h"
#include "bh_deadline.h"

uint64_t bh_backoff_ceiling(const bh_conf_backoff_t *conf, unsigned retry)
{
    uint64_t factor;

    if (retry == 0)
        return 0;
    if (retry >= 64)
        return conf->max_ms;
    factor = (1ull << retry) - 1; /* 2^n - 1 */
    if (conf->base_ms != 0 && factor > conf->max_ms / conf->base_ms)
        return conf->max_ms;
    return conf->base_ms * factor < conf->max_ms ? conf->base_ms * factor : conf->max_ms;
}

uint64_t bh_backoff_delay(const bh_conf_retry_t *conf, unsigned retry, uint64_t retry_after_ms,
                          uint64_t limit_ms, bh_rng_t *rng)
{
    uint64_t delay = bh_rng_below(rng, bh_backoff_ceiling(&conf->backoff, retry));

    if (delay > limit_ms)
        delay = limit_ms;
    if (conf->honor_retry_after && retry_after_ms > 0) {
        if (retry_after_ms > limit_ms)
            return BH_BACKOFF_GIVE_UP;
        if (retry_after_ms > delay)
            delay = retry_after_ms;
    }
    return delay;
}

bool bh_backoff_fits(uint64_t delay_ms, uint64_t now_ms, uint64_t deadline_ms)
{
    if (delay_ms == BH_BACKOFF_GIVE_UP)
        return false;
    if (deadline_ms == BH_DEADLINE_NONE)
        return true;
    return delay_ms < bh_deadline_remaining(deadline_ms, now_ms);
}

int bh_backoff_parse_retry_after(const char *value, size_t len, uint64_t *out_ms)
{
    uint64_t s = 0;
    size_t i = 0;

    while (i < len && (value[i] == ' ' || value[i] == '\t'))
        i++;
    if (i == len || value[i] < '0' || value[i] > '9')
        return -1;
    for (; i < len && value[i] >= '0' && value[i] <= '9'; i++)
        if (s < UINT64_MAX / 2000)
            s = s * 10 + (uint64_t)(value[i] - '0');
    while (i < len && (value[i] == ' ' || value[i] == '\t'))
        i++;
    if (i != len)
        return -1;
    *out_ms = s < UINT64_MAX / 2000 ? s * 1000 : UINT64_MAX / 2;
    return 0;
}
