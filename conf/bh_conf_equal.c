/* Comparing upstreams and databases of two snapshots: a reload keeps the state of those that did
 * not change. */
#include <string.h>
#include "bh_conf_int.h"

#define EQ(f) (a->f == b->f)

static bool str_eq(const char *a, const char *b)
{
    return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static bool pool_eq(const bh_conf_pool_t *a, const bh_conf_pool_t *b)
{
    return EQ(max_connections) && EQ(max_pending) && EQ(max_idle) && EQ(min_idle) &&
           EQ(acquire_timeout_ms) && EQ(idle_timeout_ms) && EQ(max_lifetime_ms);
}

static bool timeouts_eq(const bh_conf_timeouts_t *a, const bh_conf_timeouts_t *b)
{
    return EQ(connect_ms) && EQ(first_byte_ms) && EQ(idle_ms) && EQ(total_ms);
}

static bool retry_eq(const bh_conf_retry_t *a, const bh_conf_retry_t *b)
{
    if (!(EQ(attempts) && EQ(on) && EQ(n_retriable_status) && EQ(methods_all) &&
          EQ(max_replay_bytes) && EQ(backoff.base_ms) && EQ(backoff.max_ms) &&
          EQ(honor_retry_after) && EQ(budget.ratio) && EQ(budget.min_per_second)))
        return false;
    for (size_t i = 0; i < a->n_retriable_status; i++)
        if (a->retriable_status[i] != b->retriable_status[i])
            return false;
    return true;
}

static bool breaker_eq(const bh_conf_breaker_t *a, const bh_conf_breaker_t *b)
{
    return EQ(consecutive_failures) && EQ(failure_rate) && EQ(window_ms) && EQ(min_requests) &&
           EQ(open_for_ms) && EQ(max_open_for_ms) && EQ(half_open_probes) && EQ(count);
}

bool bh_conf_upstream_equal(const bh_conf_upstream_t *a, const bh_conf_upstream_t *b)
{
    if (!(str_eq(a->name, b->name) && EQ(n_endpoints) && pool_eq(&a->pool, &b->pool) &&
          timeouts_eq(&a->timeouts, &b->timeouts) && EQ(dns_refresh_ms) && EQ(balance) &&
          retry_eq(&a->retry, &b->retry) && breaker_eq(&a->breaker, &b->breaker) &&
          EQ(outlier.consecutive_failures) && EQ(outlier.eject_for_ms) && EQ(outlier.max_ejected) &&
          EQ(health_check.enabled) && str_eq(a->health_check.path, b->health_check.path) &&
          EQ(health_check.interval_ms) && EQ(health_check.timeout_ms) && EQ(health_check.healthy) &&
          EQ(health_check.unhealthy)))
        return false;
    for (size_t i = 0; i < a->n_endpoints; i++)
        if (!str_eq(a->endpoints[i].text, b->endpoints[i].text))
            return false;
    return true;
}

bool bh_conf_database_equal(const bh_conf_database_t *a, const bh_conf_database_t *b)
{
    if (!(str_eq(a->name, b->name) && EQ(n_hosts) && str_eq(a->server, b->server) && EQ(auth) &&
          str_eq(a->user, b->user) && str_eq(a->password, b->password) &&
          str_eq(a->dbname, b->dbname) && EQ(n_tokens) && pool_eq(&a->pool, &b->pool) &&
          timeouts_eq(&a->timeouts, &b->timeouts) && EQ(max_response_bytes) &&
          EQ(max_request_bytes) && EQ(n_session) && retry_eq(&a->retry, &b->retry) &&
          EQ(retry_serialization_failures) && breaker_eq(&a->breaker, &b->breaker)))
        return false;
    for (size_t i = 0; i < a->n_hosts; i++)
        if (!str_eq(a->hosts[i], b->hosts[i]))
            return false;
    for (size_t i = 0; i < a->n_tokens; i++)
        if (!str_eq(a->tokens[i], b->tokens[i]))
            return false;
    for (size_t i = 0; i < a->n_session; i++)
        if (!str_eq(a->session_keys[i], b->session_keys[i]) ||
            !str_eq(a->session_values[i], b->session_values[i]))
            return false;
    return true;
}

#undef EQ
