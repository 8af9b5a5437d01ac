/* Retry policy: how an attempt ended, how safe it is to send the request again, and whether the
 * configured policy allows it; plus which outcomes the circuit breaker counts as failures.
 *
 * Pure and stateless (thread-safe). The rest of the pipeline's retry conditions live elsewhere:
 * the budget (bh_budget_try_acquire_retry), the backoff and whether it fits the deadline
 * (bh_backoff_delay, bh_backoff_fits), another endpoint (bh_balance_pick's prefer_not). */
#ifndef BH_RETRY_H
#define BH_RETRY_H

#include <stdbool.h>
#include <stdint.h>
#include "bh_conf.h"

/* How one attempt ended. Outcomes with a response head carry its status (OK, HTTP_5XX). */
typedef enum bh_outcome {
    BH_OUTCOME_OK,                    /* a response head arrived with status < 500 */
    BH_OUTCOME_HTTP_5XX,              /* a response head arrived with status 500..599 */
    BH_OUTCOME_CONNECT_FAILED,        /* refused, unreachable, DNS gone, TLS failure ... */
    BH_OUTCOME_CONNECT_TIMEOUT,       /* no connection within timeouts.connect */
    BH_OUTCOME_RESET_BEFORE_RESPONSE, /* closed/reset by the upstream before a response head
                                         (includes a pooled connection found dead) */
    BH_OUTCOME_FIRST_BYTE_TIMEOUT,    /* request sent, no response head within first_byte */
    BH_OUTCOME_IDLE_TIMEOUT,          /* a gap longer than timeouts.idle */
    BH_OUTCOME_PROTOCOL_ERROR,        /* the upstream sent an invalid response */
    BH_OUTCOME_PARTIAL,               /* failed after response bytes went to the client */
    BH_OUTCOME_TOTAL_TIMEOUT,         /* the request's deadline passed: 504, never retried */
    BH_OUTCOME_LOCAL,                 /* failed before reaching the upstream for a local reason
                                         (pool full or wait timeout): not the upstream's fault */
} bh_outcome_t;

/* How far the request got: decides whether sending it again is safe. */
typedef enum bh_safety {
    BH_SAFETY_NOT_SENT,         /* no byte of it reached the upstream (refused, a pooled
                                   connection found closed before writing) */
    BH_SAFETY_SENT_NO_RESPONSE, /* the upstream may have it; nothing went to the client yet
                                   (also: an error response held back, not forwarded) */
    BH_SAFETY_PARTIAL,          /* response bytes already went to the client */
} bh_safety_t;

typedef struct bh_attempt {
    bh_outcome_t outcome;
    int status; /* the response status for OK / HTTP_5XX, else 0 */
    bh_safety_t safety;
} bh_attempt_t;

/* What the request allows. */
typedef struct bh_retry_request {
    uint32_t method;      /* one BH_M_* bit (bh_method_bit) */
    bool idempotency_key; /* it carries an Idempotency-Key header */
    bool body_replayable; /* every body byte read so far is still held (none read, or the whole
                             body so far fits in retry.max_replay_bytes and was kept) */
} bh_retry_request_t;

typedef enum bh_retry_verdict {
    BH_RETRY_YES,              /* the policy allows another attempt */
    BH_RETRY_NO_SUCCESS,       /* the outcome is not a failure (OK, status not retriable) */
    BH_RETRY_NO_DEADLINE,      /* TOTAL_TIMEOUT: never retried */
    BH_RETRY_NO_PARTIAL,       /* response bytes reached the client */
    BH_RETRY_NO_NOT_IN_ON,     /* the failure is not in retry.on */
    BH_RETRY_NO_ATTEMPTS,      /* retry.attempts used up */
    BH_RETRY_NO_BODY,          /* the request body is no longer held */
    BH_RETRY_NO_UNSAFE_METHOD, /* sent, non-idempotent, no Idempotency-Key, methods: idempotent */
} bh_retry_verdict_t;

/* The outcome for a received response head. */
bh_outcome_t bh_outcome_for_status(int status);
/* GET, HEAD, OPTIONS, TRACE, PUT, DELETE (RFC 9110 section 9.2.2). */
bool bh_method_idempotent(uint32_t method_bit);
/* Whether the attempt's failure class is in the `on` set (BH_RETRY_ON_* bits); for a status,
 * gateway-error = 502/503/504, 5xx = 500..599, retriable-status = listed in conf. */
bool bh_retry_on_matches(const bh_conf_retry_t *conf, const bh_attempt_t *a);
/* May the request be sent again after attempt a, the attempts_made-th (1 = the first)?
 * PARTIAL never; NOT_SENT whatever the method; SENT_NO_RESPONSE only for idempotent methods,
 * requests with an Idempotency-Key, or methods: all. Every retry needs the body replayable. */
bh_retry_verdict_t bh_retry_decide(const bh_conf_retry_t *conf, unsigned attempts_made,
                                   const bh_attempt_t *a, const bh_retry_request_t *req);
/* "yes", "success", "deadline", "partial", "not-in-on", "attempts", "body", "unsafe-method". */
const char *bh_retry_verdict_name(bh_retry_verdict_t v);

/* Whether the attempt counts as a failure for the breaker (and outlier detection) given the
 * `count` set (BH_COUNT_* bits): connect-failure = CONNECT_FAILED, CONNECT_TIMEOUT; timeout =
 * CONNECT_TIMEOUT, FIRST_BYTE_TIMEOUT, IDLE_TIMEOUT; 5xx = HTTP_5XX; reset = RESET_BEFORE_RESPONSE,
 * PROTOCOL_ERROR, and PARTIAL. OK, TOTAL_TIMEOUT (the client's budget, not the upstream's fault
 * by itself) and LOCAL never count. */
bool bh_retry_counts_as_failure(uint32_t count, const bh_attempt_t *a);

#endif
