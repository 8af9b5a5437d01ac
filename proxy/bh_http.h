/* HTTP/1.1 head utilities: splitting a validated head into headers, and writing the heads that
 * bulkhead forwards (RFC 9110 section 7.6: hop-by-hop fields removed, X-Forwarded-*, Via). Pure:
 * no I/O, no allocation; unit-tested in tests/unit/test_http.c. */
#ifndef BH_HTTP_H
#define BH_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <llhttp.h>

typedef struct bh_span {
    const char *p;
    size_t n;
} bh_span_t;

typedef struct bh_hdr {
    bh_span_t name, value;   /* value without surrounding whitespace */
} bh_hdr_t;

/* An appender over a fixed buffer: writes past cap set overflow and are dropped. */
typedef struct bh_wbuf {
    char *p;
    size_t n, cap;
    bool overflow;
} bh_wbuf_t;

void bh_wbuf_put(bh_wbuf_t *w, const void *p, size_t n);
static inline void bh_wbuf_span(bh_wbuf_t *w, bh_span_t s)
{
    bh_wbuf_put(w, s.p, s.n);
}
void bh_wbuf_str(bh_wbuf_t *w, const char *s);
/* "name: value\r\n" */
void bh_wbuf_field(bh_wbuf_t *w, const char *name, const char *value);
void bh_wbuf_u64(bh_wbuf_t *w, uint64_t v);
void bh_wbuf_hex(bh_wbuf_t *w, uint64_t v);

/* Splits a head that llhttp already accepted (start line, header lines, empty line) into the
 * start line and up to max headers. Returns the number of headers, or -1 when a line is not
 * "name: value" (e.g. obsolete line folding), or -2 when there are more than max. */
int bh_http_split(const char *head, size_t len, bh_span_t *start_line, bh_hdr_t *hdrs, size_t max);

bool bh_span_ieqn(bh_span_t s, const char *p, size_t n);
/* Case-insensitive comparison with a string literal (its length known at compile time). */
#define bh_span_ieq(s, lit) bh_span_ieqn((s), "" lit, sizeof(lit) - 1)
/* True when the comma-separated list in value contains token (case-insensitive). */
bool bh_http_has_token(bh_span_t value, const char *token);

/* A request target (RFC 9112 3.2) as bulkhead accepts it. */
typedef struct bh_target {
    bh_span_t authority;     /* absolute-form: "host[:port]" (it wins over Host); else empty */
    bh_span_t path;          /* "/path?query"; for absolute-form with no path, "/" */
    bool asterisk;           /* "*" (OPTIONS only) */
} bh_target_t;

/* Splits a request target as llhttp delimited it. Refuses (returns -1) what must never be
 * forwarded or would be read two ways: a fragment (never sent on the wire, RFC 9110 4.2.4), an
 * absolute-form target that is not http/https, has userinfo (RFC 9110 4.2.4) or an empty
 * authority, and an absolute-form path that starts with '?'. */
int bh_http_parse_target(bh_span_t target, bh_target_t *out);

/* What a request head says besides its start line, read in one pass over its fields. */
typedef struct bh_req_fields {
    bh_span_t host;          /* the last Host ("" when none) */
    int nhost;
    int n_chunked;           /* "chunked" tokens over every Transfer-Encoding line */
    bool other_coding;       /* a transfer coding other than chunked */
    bool conn_upgrade;       /* Connection (not Proxy-Connection) lists "upgrade" */
    bool h2c;                /* Upgrade offers h2c */
    bool expect_continue;    /* Expect: 100-continue on an HTTP/1.1 request */
    bool idempotency_key;    /* an Idempotency-Key field */
    bh_span_t timeout;       /* the last Bulkhead-Timeout value (p NULL: none) */
} bh_req_fields_t;

void bh_http_req_fields(const bh_hdr_t *hdrs, int n, bool http11, bh_req_fields_t *f);

/* The checks that keep one request from being read two ways (docs/request-handling.md), on the
 * parser's reading of the start line (p: an llhttp_t after the head). Returns 0 or the BH_E* error
 * to answer with (the connection is then closed). */
int bh_http_check_request(const llhttp_t *p, const bh_req_fields_t *f, const bh_target_t *t);

/* RFC 9112 6.3: a response to HEAD, and a 1xx, 204 or 304, ends with its head whatever its
 * Content-Length or Transfer-Encoding say. llhttp knows only HEAD (F_SKIPBODY, set by the
 * caller) and reads a body they announce, so the response parser sets F_SKIPBODY when this is
 * true. */
static inline bool bh_http_response_is_bodiless(int status, bool head_request)
{
    return head_request || (status >= 100 && status < 200) || status == 204 || status == 304;
}

/* The reason phrase of a status line ("HTTP/1.1 200 OK": after the second space; empty if none). */
bh_span_t bh_http_reason_phrase(bh_span_t status_line);

/* A response head the parser accepted but a proxy must not pass on (p: an llhttp_t after the
 * head). Returns 0 or BH_EUPSTREAM_PROTOCOL. */
int bh_http_check_response(const llhttp_t *p);

/* What the forwarded request head needs besides the client's headers. */
typedef struct bh_fwd_req {
    bh_span_t method;
    bh_span_t target;        /* origin-form path?query, already prefix-stripped */
    bh_span_t host;          /* when p != NULL: sent as Host instead of the client's (absolute-form) */
    bool target_slash;       /* write a '/' before target (stripping left it without one) */
    const char *client_ip;   /* appended to X-Forwarded-For */
    const char *proto;       /* "http" or "https" */
    const char *cert_subject;/* the client certificate's verified subject: sent as
                                X-Client-Cert-Subject (NULL: none); the client's own such
                                header is never forwarded */
    const char *id_name;     /* request_id.header: the client's fields of that name are not
                                forwarded, and "id_name: id" is sent (NULL: none) */
    const char *id;
    bool chunked;            /* body forwarded with chunked framing */
    bool upgrade;            /* forward Upgrade + Connection: upgrade */
    bool drop_expect;        /* bulkhead answers Expect: 100-continue itself */
} bh_fwd_req_t;

/* Writes the request head sent upstream. Returns false when it did not fit in w. */
bool bh_http_write_request(bh_wbuf_t *w, const bh_fwd_req_t *req, const bh_hdr_t *hdrs,
                           size_t nhdrs);

typedef struct bh_fwd_resp {
    int status;
    bh_span_t reason;
    bool chunked;            /* body sent to the client with chunked framing */
    bool close;              /* bulkhead closes the client connection after this response */
    bool keepalive_10;       /* an HTTP/1.0 client asked for keep-alive and gets it */
    bool upgrade;            /* 101: keep Upgrade and send Connection: upgrade */
} bh_fwd_resp_t;

/* Writes the response head sent to the client. Returns false when it did not fit in w. */
bool bh_http_write_response(bh_wbuf_t *w, const bh_fwd_resp_t *resp, const bh_hdr_t *hdrs,
                            size_t nhdrs);

/* Reason phrase for a status code ("Service Unavailable"); "" when unknown. */
const char *bh_http_reason(int status);

/* Parses "timeout=N" from a Keep-Alive header value; returns N seconds or -1. */
long bh_http_keepalive_timeout(bh_span_t value);

#endif
