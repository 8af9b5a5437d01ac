/* Error codes: negative ints from one X-macro table, one code per failure cause. */
#ifndef BH_ERROR_H
#define BH_ERROR_H

/* The one table of failure causes. X(NAME, value, status, proxy_status, sql_code, message):
 *   status        the HTTP status of bulkhead's own reply for this cause (0: never a reply)
 *   proxy_status  its RFC 9209 Proxy-Status error type (NULL: not request-related)
 *   sql_code      the "code" of a /sql error body for it (section 6.2: "" when not a Postgres error)
 * HTTP replies (bh_reply.c), /sql replies (sql/bh_sql.c), the access log and the error names all
 * read this table; BH_EPG_* are the Postgres layer's, BH_ESQL_* the SQL gateway's. */
#define BH_ERRNO_MAP(X)                                                                            \
    X(NOMEM, -1001, 500, "proxy_internal_error", "", "out of memory")                             \
    X(INVAL, -1002, 500, NULL, "", "invalid argument")                                             \
    X(CONFIG, -1003, 500, "proxy_configuration_error", "", "invalid configuration")               \
    X(POOL_FULL, -1010, 503, "connection_limit_reached", "", "pool wait queue is full")           \
    X(POOL_TIMEOUT, -1011, 503, "connection_limit_reached", "",                                   \
      "timed out waiting for a pooled connection")                                                 \
    X(POOL_CLOSED, -1012, 503, "proxy_internal_error", "", "pool is shutting down")               \
    X(CONNECT_REFUSED, -1020, 502, "connection_refused", "", "upstream refused the connection")   \
    X(CONNECT_FAILED, -1021, 502, "destination_unavailable", "",                                   \
      "could not connect to the upstream")                                                         \
    X(CONNECT_TIMEOUT, -1022, 504, "connection_timeout", "",                                       \
      "timed out connecting to the upstream")                                                      \
    X(FIRST_BYTE_TIMEOUT, -1023, 504, "http_response_timeout", "",                                 \
      "upstream sent no response in time")                                                         \
    X(IDLE_TIMEOUT, -1024, 504, "connection_read_timeout", "",                                     \
      "upstream connection idle for too long")                                                     \
    X(TOTAL_TIMEOUT, -1025, 504, "http_response_timeout", "", "request deadline exceeded")        \
    X(UPSTREAM_RESET, -1026, 502, "connection_terminated", "", "upstream closed the connection")  \
    X(UPSTREAM_PROTOCOL, -1027, 502, "http_protocol_error", "",                                    \
      "upstream sent an invalid response")                                                         \
    X(UPSTREAM_HEAD_SIZE, -1028, 502, "http_response_header_section_size", "",                     \
      "upstream response head too large")                                                          \
    X(UPSTREAM_WRITE, -1029, 502, "connection_terminated", "", "error writing to the upstream")   \
    X(TLS_CERTIFICATE, -1030, 502, "tls_certificate_error", "",                                    \
      "the upstream's TLS certificate did not verify")                                             \
    X(TLS_ALERT, -1031, 502, "tls_alert_received", "", "the upstream sent a TLS alert")           \
    X(TLS_PROTOCOL, -1032, 502, "tls_protocol_error", "", "TLS handshake with the upstream failed") \
    X(NO_ROUTE, -1040, 404, "destination_not_found", "", "no route matches the request")          \
    X(BAD_REQUEST, -1041, 400, "http_request_error", "", "malformed request")                     \
    X(HEAD_TOO_LARGE, -1042, 431, "http_request_error", "", "request header section too large")   \
    X(BODY_TOO_LARGE, -1043, 413, "http_request_error", "", "request body too large")             \
    X(CLIENT_TIMEOUT, -1044, 408, "http_request_error", "", "client too slow")                    \
    X(TOO_MANY_CONNS, -1045, 503, "connection_limit_reached", "", "too many client connections")  \
    X(SHUTDOWN, -1046, 503, "proxy_internal_response", "", "server is shutting down")             \
    X(UPGRADE_FAILED, -1047, 502, "http_upgrade_failed", "", "upstream refused the upgrade")      \
    X(BAD_TARGET, -1048, 400, "http_request_error", "", "invalid request target")                 \
    X(BAD_FRAMING, -1049, 400, "http_request_error", "", "ambiguous or invalid message framing")  \
    X(BREAKER_OPEN, -1050, 503, "destination_unavailable", "", "circuit breaker is open")         \
    X(RETRY_BUDGET, -1051, 0, NULL, "", "retry budget exhausted")                                  \
    X(RETRY_NO_TIME, -1052, 0, NULL, "", "retry backoff does not fit in the deadline")            \
    X(TE_UNSUPPORTED, -1053, 501, "http_request_error", "", "unsupported transfer coding")        \
    X(PG_REJECTED, -1060, 400, "destination_unavailable", "", "Postgres refused the session")     \
    X(PG_CONN_LOST, -1061, 502, "connection_terminated", "", "connection to Postgres lost")       \
    X(SQL_HEADER, -1201, 400, "http_request_error", "", "invalid header")                          \
    X(SQL_CONNSTR, -1202, 400, "http_request_error", "", "invalid connection string")              \
    X(SQL_ISOLATION, -1203, 400, "http_request_error", "", "invalid isolation level")              \
    X(SQL_BODY, -1204, 400, "http_request_error", "", "could not parse the HTTP request body")     \
    X(SQL_TOO_LARGE, -1205, 507, "http_response_body_size", "", "response is too large")           \
    X(SQL_BAD_UTF8, -1206, 500, "proxy_internal_error", "", "could not parse postgres response")   \
    X(SQL_STATE, -1207, 500, "proxy_internal_error", "", "SQL encoder used out of order")          \
    X(SQL_AUTH, -1208, 401, "http_request_denied", "", "bearer token required")

enum {
#define BH_ERR_ENUM(name, val, status, ps, code, msg) BH_E##name = (val),
    BH_ERRNO_MAP(BH_ERR_ENUM)
#undef BH_ERR_ENUM
};

/* Human readable message for a bh error code or a negative errno/libuv code. Never NULL. */
const char *bh_strerror(int err);
/* Short symbolic name ("POOL_TIMEOUT"); for other codes, "UNKNOWN". Never NULL. */
const char *bh_errname(int err);
/* RFC 9209 error type for a cause, or NULL when the code has none. */
const char *bh_err_proxy_status(int err);
/* HTTP status of bulkhead's own reply for a cause; 502 for a code outside the table (an errno
 * from the network: the upstream's doing), 500 for a table row that is never a reply. */
int bh_err_status(int err);
/* The /sql error body's "code" for a cause ("" unless it is a Postgres error). Never NULL. */
const char *bh_err_sql_code(int err);

#define BH_MUST_CHECK __attribute__((warn_unused_result))

#endif
