/* Routing of /sql, the Neon request headers, and the header lines of replies.
 *
 * Also what the request headers imply: the bearer token and the batch's START TRANSACTION. */
#include <stdio.h>
#include <string.h>
#include "bh_sql_proto_int.h"

/* ---- routing (1.1) ---- */

static bool span_eq(bh_span_t s, const char *lit)
{
    size_t n = strlen(lit);
    return s.p != NULL && s.n == n && memcmp(s.p, lit, n) == 0;
}

bh_sql_route_t bh_sql_route(bh_span_t method, bh_span_t target)
{
    size_t plen = 0;
    while (plen < target.n && target.p[plen] != '?' && target.p[plen] != '#')
        plen++;
    bh_span_t path = {target.p, plen};
    if (!span_eq(path, "/sql"))
        return BH_SQL_ROUTE_UNSUPPORTED;
    if (span_eq(method, "POST"))
        return BH_SQL_ROUTE_QUERY;
    if (span_eq(method, "OPTIONS"))
        return BH_SQL_ROUTE_PREFLIGHT;
    return BH_SQL_ROUTE_UNSUPPORTED;
}

/* ---- request headers (2) ---- */

/* bh_sql_headers_t.seen_: one bit per header, so that the first occurrence wins. */
enum {
    SEEN_CONNSTR = 1,
    SEEN_RAW = 2,
    SEEN_ARRAY = 4,
    SEEN_ISO = 8,
    SEEN_RO = 16,
    SEEN_DEFER = 32,
    SEEN_AUTH = 64,
    SEEN_QID = 128,
};

void bh_sql_headers_init(bh_sql_headers_t *h)
{
    memset(h, 0, sizeof(*h));
}

static bool first(bh_sql_headers_t *h, uint8_t bit)
{
    if (h->seen_ & bit)
        return false;
    h->seen_ |= bit;
    return true;
}

static bool is_true(bh_span_t v)
{
    return v.n == 4 && memcmp(v.p, "true", 4) == 0;
}

static bh_sql_isolation_t parse_isolation(bh_span_t v)
{
    if (span_eq(v, "Serializable"))
        return BH_SQL_ISO_SERIALIZABLE;
    if (span_eq(v, "ReadUncommitted"))
        return BH_SQL_ISO_READ_UNCOMMITTED;
    if (span_eq(v, "ReadCommitted"))
        return BH_SQL_ISO_READ_COMMITTED;
    if (span_eq(v, "RepeatableRead"))
        return BH_SQL_ISO_REPEATABLE_READ;
    return BH_SQL_ISO_INVALID;
}

void bh_sql_header(bh_sql_headers_t *h, bh_span_t name, bh_span_t value)
{
    if (value.p == NULL)
        value.p = "";
    if (name.n < 6)
        return;
    if (bh_span_ieq(name, "neon-connection-string")) {
        if (first(h, SEEN_CONNSTR))
            h->connstr = value;
    } else if (bh_span_ieq(name, "neon-raw-text-output")) {
        if (first(h, SEEN_RAW))
            h->raw_text = is_true(value);
    } else if (bh_span_ieq(name, "neon-array-mode")) {
        if (first(h, SEEN_ARRAY))
            h->array_mode = is_true(value);
    } else if (bh_span_ieq(name, "neon-batch-isolation-level")) {
        if (first(h, SEEN_ISO)) {
            h->isolation_raw = value;
            h->isolation = parse_isolation(value);
        }
    } else if (bh_span_ieq(name, "neon-batch-read-only")) {
        if (first(h, SEEN_RO))
            h->read_only = is_true(value);
    } else if (bh_span_ieq(name, "neon-batch-deferrable")) {
        if (first(h, SEEN_DEFER))
            h->deferrable = is_true(value);
    } else if (bh_span_ieq(name, "authorization")) {
        if (first(h, SEEN_AUTH))
            h->authorization = value;
    } else if (bh_span_ieq(name, "x-neon-query-id")) {
        if (first(h, SEEN_QID))
            h->query_id = value;
    }
}

int bh_sql_headers_check(const bh_sql_headers_t *h, char *err, size_t errlen)
{
    bool ok = h->connstr.p != NULL && h->connstr.n > 0;
    for (size_t i = 0; ok && i < h->connstr.n; i++) {
        unsigned char c = (unsigned char)h->connstr.p[i];
        if (c < 0x20 || c >= 0x7f)
            ok = false;
    }
    if (!ok) {
        bh__sql_set_err(err, errlen, "invalid header: neon-connection-string");
        return BH_ESQL_HEADER;
    }
    if (h->isolation == BH_SQL_ISO_INVALID) {
        bh__sql_set_err(err, errlen, "invalid isolation level");
        return BH_ESQL_ISOLATION;
    }
    return 0;
}

bool bh_sql_bearer(const bh_sql_headers_t *h, bh_span_t *token)
{
    bh_span_t a = h->authorization;
    if (a.p == NULL || a.n < 7 || memcmp(a.p, "Bearer ", 7) != 0)
        return false;
    token->p = a.p + 7;
    token->n = a.n - 7;
    return true;
}

bool bh_sql_token_eq(bh_span_t presented, const char *expected)
{
    size_t n = strlen(expected);
    unsigned diff = presented.n != n;
    for (size_t i = 0; i < presented.n; i++)
        diff |= (unsigned char)presented.p[i] ^ (unsigned char)(i < n ? expected[i] : 0);
    return diff == 0;
}

bool bh_sql_array_mode(const bh_sql_headers_t *h, const struct bh_sql_query *q)
{
    if (q != NULL && q->array_mode >= 0)
        return q->array_mode != 0;
    return h->array_mode;
}

/* ---- the batch's START TRANSACTION (4.2) ---- */

size_t bh_sql_begin_statement(const bh_sql_headers_t *h, char *buf)
{
    static const char *const levels[] = {
        [BH_SQL_ISO_SERIALIZABLE] = "SERIALIZABLE",
        [BH_SQL_ISO_READ_UNCOMMITTED] = "READ UNCOMMITTED",
        [BH_SQL_ISO_READ_COMMITTED] = "READ COMMITTED",
        [BH_SQL_ISO_REPEATABLE_READ] = "REPEATABLE READ",
    };
    size_t n = (size_t)snprintf(buf, BH_SQL_BEGIN_MAX, "START TRANSACTION");
    bool clause = false;
    if (h->isolation > BH_SQL_ISO_DEFAULT && h->isolation < BH_SQL_ISO_INVALID) {
        n += (size_t)snprintf(buf + n, BH_SQL_BEGIN_MAX - n, " ISOLATION LEVEL %s",
                              levels[h->isolation]);
        clause = true;
    }
    if (h->read_only) {
        n += (size_t)snprintf(buf + n, BH_SQL_BEGIN_MAX - n, "%s READ ONLY", clause ? "," : "");
        clause = true;
    }
    if (h->deferrable)
        n += (size_t)snprintf(buf + n, BH_SQL_BEGIN_MAX - n, "%s DEFERRABLE", clause ? "," : "");
    return n;
}

/* ---- response heads (5, 7.6, 7.9) ---- */

void bh_sql_request_id(const uint8_t rnd[16], char out[BH_SQL_REQUEST_ID_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t b[16];
    memcpy(b, rnd, 16);
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    size_t o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[b[i] >> 4];
        out[o++] = hex[b[i] & 15];
    }
    out[o] = '\0';
}

void bh_sql_write_headers(bh_wbuf_t *w, bh_sql_reply_t kind, const bh_sql_headers_t *h,
                          const char *request_id)
{
    if (kind == BH_SQL_REPLY_PREFLIGHT) {
        bh_wbuf_str(w, "allow: OPTIONS, POST\r\n"
                       "access-control-allow-origin: *\r\n"
                       "access-control-allow-headers: Authorization, Neon-Connection-String, "
                       "Neon-Raw-Text-Output, Neon-Array-Mode, Neon-Pool-Opt-In, "
                       "Neon-Batch-Read-Only, Neon-Batch-Isolation-Level, "
                       "Neon-Batch-Deferrable\r\n"
                       "access-control-max-age: 86400\r\n");
    } else {
        bh_wbuf_str(w, "content-type: application/json\r\n"
                       "access-control-allow-origin: *\r\n");
    }
    if (request_id != NULL)
        bh_wbuf_field(w, "neon-request-id", request_id);
    if (kind == BH_SQL_REPLY_BATCH_OK && h != NULL) {
        if (h->read_only)
            bh_wbuf_str(w, "neon-batch-read-only: true\r\n");
        if (h->deferrable)
            bh_wbuf_str(w, "neon-batch-deferrable: true\r\n");
        if (h->isolation > BH_SQL_ISO_DEFAULT && h->isolation < BH_SQL_ISO_INVALID) {
            bh_wbuf_str(w, "neon-batch-isolation-level: ");
            bh_wbuf_span(w, h->isolation_raw);
            bh_wbuf_str(w, "\r\n");
        }
    }
}
