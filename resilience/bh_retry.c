/* Retry decisions, table-free: the outcome's class, then safety, then the request's limits. */
#include "bh_retry.h"

bh_outcome_t bh_outcome_for_status(int status)
{
    return status >= 500 && status <= 599 ? BH_OUTCOME_HTTP_5XX : BH_OUTCOME_OK;
}

bool bh_method_idempotent(uint32_t m)
{
    return (m & (BH_M_GET | BH_M_HEAD | BH_M_OPTIONS | BH_M_TRACE | BH_M_PUT | BH_M_DELETE)) != 0 &&
           (m & ~(BH_M_GET | BH_M_HEAD | BH_M_OPTIONS | BH_M_TRACE | BH_M_PUT | BH_M_DELETE)) == 0;
}

static bool status_listed(const bh_conf_retry_t *conf, int status)
{
    for (size_t i = 0; i < conf->n_retriable_status; i++)
        if (conf->retriable_status[i] == status)
            return true;
    return false;
}

bool bh_retry_on_matches(const bh_conf_retry_t *conf, const bh_attempt_t *a)
{
    uint32_t on = conf->on;

    switch (a->outcome) {
    case BH_OUTCOME_CONNECT_FAILED:
    case BH_OUTCOME_CONNECT_TIMEOUT:
        return on & BH_RETRY_ON_CONNECT_FAILURE;
    case BH_OUTCOME_RESET_BEFORE_RESPONSE:
        return on & BH_RETRY_ON_RESET_BEFORE_RESPONSE;
    case BH_OUTCOME_FIRST_BYTE_TIMEOUT:
        return on & BH_RETRY_ON_FIRST_BYTE_TIMEOUT;
    case BH_OUTCOME_OK:
    case BH_OUTCOME_HTTP_5XX:
        if ((on & BH_RETRY_ON_RETRIABLE_STATUS) && status_listed(conf, a->status))
            return true;
        if ((on & BH_RETRY_ON_GATEWAY_ERROR) &&
            (a->status == 502 || a->status == 503 || a->status == 504))
            return true;
        return (on & BH_RETRY_ON_5XX) && a->status >= 500 && a->status <= 599;
    default:
        return false;
    }
}

bh_retry_verdict_t bh_retry_decide(const bh_conf_retry_t *conf, unsigned attempts_made,
                                   const bh_attempt_t *a, const bh_retry_request_t *req)
{
    if (a->outcome == BH_OUTCOME_TOTAL_TIMEOUT)
        return BH_RETRY_NO_DEADLINE;
    if (a->outcome == BH_OUTCOME_PARTIAL || a->safety == BH_SAFETY_PARTIAL)
        return BH_RETRY_NO_PARTIAL;
    if (!bh_retry_on_matches(conf, a))
        return a->outcome == BH_OUTCOME_OK ? BH_RETRY_NO_SUCCESS : BH_RETRY_NO_NOT_IN_ON;
    if (attempts_made >= conf->attempts)
        return BH_RETRY_NO_ATTEMPTS;
    if (!req->body_replayable)
        return BH_RETRY_NO_BODY;
    if (a->safety == BH_SAFETY_SENT_NO_RESPONSE && !conf->methods_all &&
        !bh_method_idempotent(req->method) && !req->idempotency_key)
        return BH_RETRY_NO_UNSAFE_METHOD;
    return BH_RETRY_YES;
}

const char *bh_retry_verdict_name(bh_retry_verdict_t v)
{
    static const char *const names[] = {
        [BH_RETRY_YES] = "yes",
        [BH_RETRY_NO_SUCCESS] = "success",
        [BH_RETRY_NO_DEADLINE] = "deadline",
        [BH_RETRY_NO_PARTIAL] = "partial",
        [BH_RETRY_NO_NOT_IN_ON] = "not-in-on",
        [BH_RETRY_NO_ATTEMPTS] = "attempts",
        [BH_RETRY_NO_BODY] = "body",
        [BH_RETRY_NO_UNSAFE_METHOD] = "unsafe-method",
    };
    return (unsigned)v < sizeof names / sizeof names[0] ? names[v] : "unknown";
}

bool bh_retry_counts_as_failure(uint32_t count, const bh_attempt_t *a)
{
    switch (a->outcome) {
    case BH_OUTCOME_CONNECT_FAILED:
        return count & BH_COUNT_CONNECT_FAILURE;
    case BH_OUTCOME_CONNECT_TIMEOUT:
        return count & (BH_COUNT_CONNECT_FAILURE | BH_COUNT_TIMEOUT);
    case BH_OUTCOME_FIRST_BYTE_TIMEOUT:
    case BH_OUTCOME_IDLE_TIMEOUT:
        return count & BH_COUNT_TIMEOUT;
    case BH_OUTCOME_HTTP_5XX:
        return count & BH_COUNT_5XX;
    case BH_OUTCOME_RESET_BEFORE_RESPONSE:
    case BH_OUTCOME_PROTOCOL_ERROR:
    case BH_OUTCOME_PARTIAL:
        return count & BH_COUNT_RESET;
    default:
        return false;
    }
}
