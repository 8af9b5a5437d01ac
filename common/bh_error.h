/* Error codes: negative ints from one X-macro table, one code per failure cause. */
#ifndef BH_ERROR_H
#define BH_ERROR_H

/* X(NAME, value, proxy_status_error, message) -- proxy_status_error is the RFC 9209 error type
 * used when this cause ends a request that bulkhead answers itself (NULL: not request-related). */
#define BH_ERRNO_MAP(X)                                                                            \
    X(NOMEM, -1001, "proxy_internal_error", "out of memory")                                      \
    X(INVAL, -1002, NULL, "invalid argument")                                                      \
    X(CONFIG, -1003, "proxy_configuration_error", "invalid configuration")                        \
    X(POOL_FULL, -1010, "connection_limit_reached", "pool wait queue is full")                    \
    X(POOL_TIMEOUT, -1011, "connection_limit_reached", "timed out waiting for a pooled connection") \
    X(POOL_CLOSED, -1012, "proxy_internal_error", "pool is shutting down")                        \
    X(CONNECT_REFUSED, -1020, "connection_refused", "upstream refused the connection")            \
    X(CONNECT_FAILED, -1021, "destination_unavailable", "could not connect to the upstream")      \
    X(CONNECT_TIMEOUT, -1022, "connection_timeout", "timed out connecting to the upstream")       \
    X(FIRST_BYTE_TIMEOUT, -1023, "http_response_timeout", "upstream sent no response in time")    \
    X(IDLE_TIMEOUT, -1024, "connection_read_timeout", "upstream connection idle for too long")    \
    X(TOTAL_TIMEOUT, -1025, "http_response_timeout", "request deadline exceeded")                 \
    X(UPSTREAM_RESET, -1026, "connection_terminated", "upstream closed the connection")           \
    X(UPSTREAM_PROTOCOL, -1027, "http_protocol_error", "upstream sent an invalid response")       \
    X(UPSTREAM_HEAD_SIZE, -1028, "http_response_header_section_size",                             \
      "upstream response head too large")                                                          \
    X(UPSTREAM_WRITE, -1029, "connection_terminated", "error writing to the upstream")            \
    X(NO_ROUTE, -1040, "destination_not_found", "no route matches the request")                   \
    X(BAD_REQUEST, -1041, "http_request_error", "malformed request")                              \
    X(HEAD_TOO_LARGE, -1042, "http_request_error", "request header section too large")            \
    X(BODY_TOO_LARGE, -1043, "http_request_error", "request body too large")                      \
    X(CLIENT_TIMEOUT, -1044, "http_request_error", "client too slow")                             \
    X(TOO_MANY_CONNS, -1045, "connection_limit_reached", "too many client connections")           \
    X(SHUTDOWN, -1046, "proxy_internal_response", "server is shutting down")                      \
    X(UPGRADE_FAILED, -1047, "http_upgrade_failed", "upstream refused the upgrade")                \
    X(BAD_TARGET, -1048, "http_request_error", "invalid request target")                          \
    X(BAD_FRAMING, -1049, "http_request_error", "ambiguous or invalid message framing")           \
    X(TE_UNSUPPORTED, -1053, "http_request_error", "unsupported transfer coding")                 \
    X(BREAKER_OPEN, -1050, "destination_unavailable", "circuit breaker is open")                   \
    X(RETRY_BUDGET, -1051, NULL, "retry budget exhausted")                                         \
    X(RETRY_NO_TIME, -1052, NULL, "retry backoff does not fit in the deadline")

enum {
#define BH_ERR_ENUM(name, val, ps, msg) BH_E##name = (val),
    BH_ERRNO_MAP(BH_ERR_ENUM)
#undef BH_ERR_ENUM
};

/* Human readable message for a bh error code or a negative errno/libuv code. Never NULL. */
const char *bh_strerror(int err);
/* Short symbolic name ("POOL_TIMEOUT"); for other codes, "UNKNOWN". Never NULL. */
const char *bh_errname(int err);
/* RFC 9209 error type for a cause, or NULL when the code has none. */
const char *bh_err_proxy_status(int err);

#define BH_MUST_CHECK __attribute__((warn_unused_result))

#endif
