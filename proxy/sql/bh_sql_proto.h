/* The pure half of the Neon "SQL over HTTP" endpoint (../shared/protocol/neon-sql-over-http.md):
 * request headers, the connection string and the JSON body become a query plan; libpq results
 * become the exact response bytes. No I/O, no libuv; allocation through bh_alloc. Unit-tested in
 * tests/unit/test_sql_proto.c.
 *
 * Typical flow for POST /sql (section numbers refer to the spec):
 *   bh_sql_headers_init + bh_sql_header per request header, then bh_sql_headers_check  (2, 400)
 *   bh_sql_parse_connstr(h.connstr)                        (2.1, 400; host -> databases entry)
 *   bh_sql_parse_body(body)                                (3, 400)
 *   batch: bh_sql_begin_statement, PQsendQuery of it, each query, COMMIT        (4.2)
 *   bh_sql_out_init(max_response_bytes); [bh_sql_batch_begin]; per query
 *   bh_sql_result_begin / bh_sql_result_rows (any number of times) / bh_sql_result_end;
 *   [bh_sql_batch_end]                                     (5; BH_ESQL_TOO_LARGE -> 507)
 *   on a Postgres error: bh_sql_encode_pg_error (400), connect errors: bh_sql_encode_conn_error.
 *   bh_sql_write_headers for the head (content-type, CORS, neon-request-id, batch echo).
 *
 * Implemented by concern: bh_sql_headers.c (routing, request headers, BEGIN, response heads),
 * bh_sql_connstr.c (connection string), bh_sql_body.c (request body and params), bh_sql_json.c
 * (the output buffer, JSON strings and numbers), bh_sql_encode.c (success bodies),
 * bh_sql_errors.c (error codes and error bodies); their shared internals (bh__sql_*) are in
 * bh_sql_proto_int.h. */
#ifndef BH_SQL_PROTO_H
#define BH_SQL_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <libpq-fe.h>
#include "bh_error.h"
#include "bh_http.h"

/* The gateway's failure causes are the BH_ESQL_* rows of the one error table (bh_error.h), with
 * their HTTP status (bh_err_status) and message (bh_strerror). */

/* Messages of section 6.1 that the caller may need for its own 400s. */
#define BH_SQL_MSG_MISSING_PASSWORD "missing authentication credentials: required password"
#define BH_SQL_MSG_NOT_SUPPORTED "query is not supported"

/* ---- Routing (1.1) ---- */

typedef enum bh_sql_route {
    BH_SQL_ROUTE_UNSUPPORTED = 0, /* 400, body from bh_sql_encode_not_supported */
    BH_SQL_ROUTE_QUERY,           /* POST /sql */
    BH_SQL_ROUTE_PREFLIGHT,       /* OPTIONS /sql: 200, empty body, BH_SQL_REPLY_PREFLIGHT */
} bh_sql_route_t;

/* Exact path "/sql", query string ignored; method compared case-sensitively. */
bh_sql_route_t bh_sql_route(bh_span_t method, bh_span_t target);

/* ---- Request headers (2) ---- */

typedef enum bh_sql_isolation {
    BH_SQL_ISO_DEFAULT = 0, /* header absent */
    BH_SQL_ISO_SERIALIZABLE,
    BH_SQL_ISO_READ_UNCOMMITTED,
    BH_SQL_ISO_READ_COMMITTED,
    BH_SQL_ISO_REPEATABLE_READ,
    BH_SQL_ISO_INVALID, /* present with another value: bh_sql_headers_check fails */
} bh_sql_isolation_t;

/* Spans point into the caller's request head, which must outlive this struct. For repeated
 * headers the first occurrence counts. A span with p == NULL means "absent". */
typedef struct bh_sql_headers {
    bh_span_t connstr;       /* Neon-Connection-String */
    bh_span_t isolation_raw; /* Neon-Batch-Isolation-Level, echoed verbatim */
    bh_span_t authorization; /* Authorization, whole value */
    bh_span_t query_id;      /* X-Neon-Query-ID (logging only) */
    bh_sql_isolation_t isolation;
    bool raw_text;   /* Neon-Raw-Text-Output: true */
    bool array_mode; /* Neon-Array-Mode: true */
    bool read_only;  /* Neon-Batch-Read-Only: true */
    bool deferrable; /* Neon-Batch-Deferrable: true */
    /* private: which headers were seen (first occurrence wins) */
    uint8_t seen_;
} bh_sql_headers_t;

void bh_sql_headers_init(bh_sql_headers_t *h);
/* Feeds one request header (name matched case-insensitively; value already trimmed of
 * surrounding whitespace). Booleans are true only for the exact bytes "true". Unknown names are
 * ignored (Neon-Pool-Opt-In is accepted and ignored). */
void bh_sql_header(bh_sql_headers_t *h, bh_span_t name, bh_span_t value);
/* After the last header: 0, or BH_ESQL_HEADER ("invalid header: neon-connection-string", missing
 * or not printable ASCII) or BH_ESQL_ISOLATION ("invalid isolation level"; checked even for
 * single queries), with the 400 message in err (NUL-terminated, truncated to errlen). */
BH_MUST_CHECK int bh_sql_headers_check(const bh_sql_headers_t *h, char *err, size_t errlen);
/* The token of "Authorization: Bearer <token>" (prefix case-sensitive, as Neon). False when the
 * header is absent or has another scheme. */
bool bh_sql_bearer(const bh_sql_headers_t *h, bh_span_t *token);
/* Constant-time (in the token length) comparison of a presented token with a configured one. */
bool bh_sql_token_eq(bh_span_t presented, const char *expected);
/* Effective array mode of a query: the body's arrayMode when given, else the header. */
struct bh_sql_query;
bool bh_sql_array_mode(const bh_sql_headers_t *h, const struct bh_sql_query *q);

/* ---- Connection string (2.1) ---- */

typedef struct bh_sql_connstr {
    /* NUL-terminated, owned by the struct; percent-decoded except host. */
    const char *user;             /* never empty */
    const char *password;         /* NULL when the URL has none (":" with nothing is "") */
    const char *dbname;           /* never empty (bulkhead refuses "/" and no path) */
    const char *host;             /* lowercased; IPv6 without brackets; never empty */
    const char *application_name; /* from the query string, NULL when absent */
    size_t password_len;
    uint16_t port; /* 5432 when absent */
    bool has_port; /* the URL named a port */
    bool host_ip;  /* host is an IPv4 or IPv6 literal */
    char *mem_;    /* private */
} bh_sql_connstr_t;

/* Parses a postgres:// or postgresql:// URL (scheme case-insensitive). Query parameters other
 * than application_name and the fragment are ignored. Returns 0, BH_ENOMEM, or BH_ESQL_CONNSTR
 * with one of the 400 messages of section 6.1 in err: "incorrect scheme", "missing database
 * name", "missing username", "missing hostname", "invalid connection string: <reason>". A
 * missing password is NOT an error here (auth: passthrough should answer 400
 * BH_SQL_MSG_MISSING_PASSWORD). On success free with bh_sql_connstr_free. */
BH_MUST_CHECK int bh_sql_parse_connstr(const char *s, size_t n, bh_sql_connstr_t *out, char *err,
                                       size_t errlen);
void bh_sql_connstr_free(bh_sql_connstr_t *c);

/* ---- Request body (3) ---- */

typedef struct bh_sql_query {
    const char *text;          /* NUL-terminated SQL, one statement */
    int nparams;               /* 0..65535 */
    const char *const *params; /* for PQsendQueryParams: text format, NULL = SQL NULL */
    signed char array_mode;    /* body "arrayMode": -1 absent/null, 0 false, 1 true */
} bh_sql_query_t;

typedef struct bh_sql_request {
    bool batch;      /* {"queries":[...]}: one transaction, {"results":[...]} reply */
    size_t nqueries; /* 1 for a single query; may be 0 for a batch */
    bh_sql_query_t *queries;
    void *arena_; /* private */
} bh_sql_request_t;

/* Parses the body (any bytes; not NUL-terminated). Tries Single ({"query":str, "params":[...]?,
 * "arrayMode":bool|null?}) first, then Batch ({"queries":[single...]}); unknown keys are
 * ignored. Params are converted per section 3.4: strings as-is, null -> NULL, booleans, numbers
 * and objects -> their JSON text (objects compact with sorted keys, floats like serde/ryu:
 * 1e3 -> "1000.0"), arrays -> a Postgres array literal. Returns 0 with *out set (free with
 * bh_sql_request_free), BH_ENOMEM, or BH_ESQL_BODY with "could not parse the HTTP request body:
 * ..." in err. Integers beyond the int64 range are refused (jansson); the driver sends strings. */
BH_MUST_CHECK int bh_sql_parse_body(const char *json, size_t n, bh_sql_request_t **out, char *err,
                                    size_t errlen);
void bh_sql_request_free(bh_sql_request_t *r); /* NULL allowed */

/* ---- Batch transaction (4.2) ---- */

#define BH_SQL_BEGIN_MAX 96
/* Writes "START TRANSACTION[ ISOLATION LEVEL X][, READ ONLY][, DEFERRABLE]" (commas only between
 * clauses) into buf (at least BH_SQL_BEGIN_MAX bytes), NUL-terminated; returns its length.
 * Send it with the simple protocol (PQsendQuery). */
size_t bh_sql_begin_statement(const bh_sql_headers_t *h, char *buf);

/* ---- Response body encoder (5, 6) ---- */

/* A growable body buffer bounded by max bytes. Errors are sticky: after the first failure
 * (BH_ENOMEM, BH_ESQL_TOO_LARGE, BH_ESQL_BAD_UTF8, BH_ESQL_STATE) every call is a no-op returning
 * the same code, so checking the last call (or o->err) is enough. The caller embeds it; fields
 * other than p, n and err are private. */
typedef struct bh_sql_out {
    char *p; /* body bytes p[0..n), not NUL-terminated; NULL while empty */
    size_t n;
    size_t cap, max, lim_; /* lim_ = min(cap, max): the fast-path bound */
    int err;
    uint8_t state_;
    bool batch_, raw_, array_;
    size_t nresults_;
    uint64_t nrows_;
} bh_sql_out_t;

/* max_bytes: max_response_bytes; a success body longer than this fails with BH_ESQL_TOO_LARGE
 * (answer 507 with bh_sql_encode_too_large). */
void bh_sql_out_init(bh_sql_out_t *o, size_t max_bytes);
/* Empties the body and clears the error and state; keeps the memory and the bound. */
void bh_sql_out_reset(bh_sql_out_t *o);
void bh_sql_out_free(bh_sql_out_t *o);
/* Hands the body to the caller (free with bh_free); o is left empty and reusable. */
char *bh_sql_out_take(bh_sql_out_t *o, size_t *len);

/* Batch wrapper {"results":[ ... ]}: call begin before the first result, end after the last. */
int bh_sql_batch_begin(bh_sql_out_t *o);
int bh_sql_batch_end(bh_sql_out_t *o);

/* One result object. begin writes the "fields" from res's row description (res NULL, or with no
 * columns, gives []); raw_text/array_mode are the effective modes of this query. rows appends
 * every row of res (PGRES_TUPLES_OK or PGRES_SINGLE_TUPLE; any number of calls, e.g. one per
 * single-row result), using res's own column types and names. end writes "command" and
 * "rowCount" from the command tag (PQcmdStatus; NULL or "" -> "" and null) and "rowAsArray".
 * Returns 0 or the sticky error. */
int bh_sql_result_begin(bh_sql_out_t *o, const PGresult *res, bool raw_text, bool array_mode);
int bh_sql_result_rows(bh_sql_out_t *o, const PGresult *res);
int bh_sql_result_end(bh_sql_out_t *o, const char *command_tag);
/* begin + rows + end for a complete result. */
int bh_sql_encode_result(bh_sql_out_t *o, const PGresult *res, bool raw_text, bool array_mode);

/* Error bodies. Each REPLACES the buffer content (reset first) and ignores the bound, so a
 * failed or oversized success body can still become an error reply. Return 0 or BH_ENOMEM. */

/* The 17-key body of 6.2 from a PGRES_FATAL_ERROR result (status 400). Without a primary message
 * field (a libpq-generated error) the message is PQresultErrorMessage, code and severity "". */
int bh_sql_encode_pg_error(bh_sql_out_t *o, const PGresult *res);

/* Parsed libpq VERBOSE connect error (section 12): the last "SEVERITY:  SQLSTATE: message" of
 * the text, plus DETAIL/HINT/LOCATION lines after it. Spans point into the message. */
typedef struct bh_sql_conn_error {
    bh_span_t severity, code, message, detail, hint, routine, file, line; /* p NULL: absent */
} bh_sql_conn_error_t;

/* True when msg carries a Postgres error (28P01, 3D000, 28000, 53300...): answer 400. False for
 * transport failures (refused, timeout, DNS): answer 503; ce then holds only message. */
bool bh_sql_conn_error_parse(const char *msg, bh_sql_conn_error_t *ce);
/* 17-key body for a failed connect's PQerrorMessage (parsed as above; without a SQLSTATE the
 * message is the whole text trimmed, code and severity ""). */
int bh_sql_encode_conn_error(bh_sql_out_t *o, const char *libpq_error_message);
/* 17-key body with code "" and severity "" (bad headers/body, 503, 504, 500). */
int bh_sql_encode_local_error(bh_sql_out_t *o, const char *message);
/* The same for cause err (a BH_E* code): its "code" comes from the error table. */
int bh_sql_encode_cause(bh_sql_out_t *o, int err, const char *message);
/* "request is too large (max is N bytes)" (413) or "response is too large (max is N bytes)"
 * (507) as a local error body. */
int bh_sql_encode_too_large(bh_sql_out_t *o, bool response, size_t max);
/* The bare JSON string "query is not supported" (400, wrong method or path). */
int bh_sql_encode_not_supported(bh_sql_out_t *o);

/* ---- Response heads (5, 7.6, 7.9) ---- */

#define BH_SQL_REQUEST_ID_LEN 36
/* Formats 16 random bytes as a UUID v4 (version and variant bits set), NUL-terminated. */
void bh_sql_request_id(const uint8_t rnd[16], char out[BH_SQL_REQUEST_ID_LEN + 1]);

typedef enum bh_sql_reply {
    BH_SQL_REPLY_OK,        /* single query success, any error status, "query is not supported" */
    BH_SQL_REPLY_BATCH_OK,  /* batch success: adds the echo headers of 4.2.6 */
    BH_SQL_REPLY_PREFLIGHT, /* OPTIONS /sql: allow + CORS preflight headers, no content-type */
} bh_sql_reply_t;

/* Appends the protocol's header lines ("name: value\r\n" each) to w: content-type:
 * application/json, access-control-allow-origin: *, neon-request-id (when request_id is not
 * NULL), and per kind the batch echo or the preflight headers. Not the status line,
 * content-length, connection, Retry-After or Proxy-Status. h may be NULL except for BATCH_OK.
 * Overflow is reported in w->overflow. */
void bh_sql_write_headers(bh_wbuf_t *w, bh_sql_reply_t kind, const bh_sql_headers_t *h,
                          const char *request_id);

#endif
