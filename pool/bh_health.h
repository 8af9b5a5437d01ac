/* Active health checks: GET health_check.path on every endpoint of an upstream, every interval
 * (with jitter), on one worker's loop. An endpoint failing `unhealthy` checks in a row is marked
 * unhealthy in the upstream's shared outlier state (no traffic goes to it, on any worker);
 * `healthy` successes in a row (a 2xx within the timeout) mark it healthy again. */
#ifndef BH_HEALTH_H
#define BH_HEALTH_H

#include "bh_upstream.h"

typedef struct bh_health bh_health_t;

/* Starts checking the endpoints of up (a worker's view of the upstream: addresses as that
 * worker resolved them). Returns NULL when the upstream has no health_check or memory is short. */
bh_health_t *bh_health_start(bh_upstream_t *up);

/* Stops; cb runs once every handle is closed and h is freed. */
void bh_health_stop(bh_health_t *h, void (*cb)(void *data), void *data);

/* Checks done / failed so far (for stats). */
void bh_health_counts(const bh_health_t *h, uint64_t *checks, uint64_t *failures);

#endif
