/* Head splitting and rewriting for forwarded HTTP/1.1 messages. */
#include <string.h>
#include <strings.h>
#include "bh_error.h"
#include "bh_http.h"

void bh_wbuf_put(bh_wbuf_t *w, const void *p, size_t n)
{
    if (w->overflow || n > w->cap - w->n) {
        w->overflow = true;
        return;
    }
    memcpy(w->p + w->n, p, n);
    w->n += n;
}

void bh_wbuf_str(bh_wbuf_t *w, const char *s)
{
    bh_wbuf_put(w, s, strlen(s));
}

void bh_wbuf_field(bh_wbuf_t *w, const char *name, const char *value)
{
    bh_wbuf_str(w, name);
    bh_wbuf_put(w, ": ", 2);
    bh_wbuf_str(w, value);
    bh_wbuf_put(w, "\r\n", 2);
}

void bh_wbuf_u64(bh_wbuf_t *w, uint64_t v)
{
    char tmp[20];
    size_t i = sizeof(tmp);
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    bh_wbuf_put(w, tmp + i, sizeof(tmp) - i);
}

void bh_wbuf_hex(bh_wbuf_t *w, uint64_t v)
{
    static const char digits[] = "0123456789abcdef";
    char tmp[16];
    size_t i = sizeof(tmp);
    do {
        tmp[--i] = digits[v & 15];
        v >>= 4;
    } while (v != 0);
    bh_wbuf_put(w, tmp + i, sizeof(tmp) - i);
}

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static bh_span_t trim(const char *p, size_t n)
{
    while (n > 0 && is_ows(*p))
        p++, n--;
    while (n > 0 && (is_ows(p[n - 1]) || p[n - 1] == '\r'))
        n--;
    return (bh_span_t){p, n};
}

int bh_http_split(const char *head, size_t len, bh_span_t *start_line, bh_hdr_t *hdrs, size_t max)
{
    const char *p = head, *end = head + len;
    int count = -1; /* the first line is the start line */
    /* llhttp skips any run of CR and LF bytes before a message, "\r\r\n" included: skip the same,
     * or a lone "\r" would become the start line and the real one a header (fuzz_response) */
    while (p < end && (*p == '\r' || *p == '\n'))
        p++;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *eol = nl != NULL ? nl : end;
        size_t n = (size_t)(eol - p);
        if (n > 0 && p[n - 1] == '\r')
            n--;
        if (count < 0 && n == 0) {
            /* empty lines before a request are allowed (RFC 9112 2.2) */
        } else if (count < 0) {
            *start_line = (bh_span_t){p, n};
            count = 0;
        } else if (n == 0) {
            break; /* the empty line ends the head */
        } else {
            const char *colon = memchr(p, ':', n);
            if (colon == NULL || colon == p || is_ows(p[0]))
                return -1;
            if ((size_t)count >= max)
                return -2;
            hdrs[count].name = (bh_span_t){p, (size_t)(colon - p)};
            hdrs[count].value = trim(colon + 1, n - (size_t)(colon + 1 - p));
            count++;
        }
        p = eol + 1;
    }
    return count < 0 ? 0 : count;
}

bool bh_span_ieqn(bh_span_t s, const char *p, size_t n)
{
    return s.n == n && strncasecmp(s.p, p, n) == 0;
}

bool bh_http_has_token(bh_span_t value, const char *token)
{
    const char *p = value.p, *end = value.p + value.n;
    while (p < end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *e = comma != NULL ? comma : end;
        if (bh_span_ieqn(trim(p, (size_t)(e - p)), token, strlen(token)))
            return true;
        p = e + 1;
    }
    return false;
}

/* RFC 9110 7.6.1: fields that apply to one connection only and are never forwarded as-is. */
static bool is_hop_by_hop(bh_span_t name)
{
    switch (name.n) {
    case 2:
        return bh_span_ieq(name, "te");
    case 7:
        return bh_span_ieq(name, "upgrade");
    case 10:
        return bh_span_ieq(name, "connection") || bh_span_ieq(name, "keep-alive");
    case 16:
        return bh_span_ieq(name, "proxy-connection");
    case 17:
        return bh_span_ieq(name, "transfer-encoding");
    default:
        return false;
    }
}

/* True when some Connection header lists name as a connection option (hop-by-hop too). */
static bool named_by_connection(bh_span_t name, const bh_hdr_t *hdrs, size_t nhdrs)
{
    for (size_t i = 0; i < nhdrs; i++) {
        if (!bh_span_ieq(hdrs[i].name, "connection"))
            continue;
        const char *p = hdrs[i].value.p, *end = p + hdrs[i].value.n;
        while (p < end) {
            const char *comma = memchr(p, ',', (size_t)(end - p));
            const char *e = comma != NULL ? comma : end;
            bh_span_t tok = trim(p, (size_t)(e - p));
            if (tok.n == name.n && strncasecmp(tok.p, name.p, tok.n) == 0)
                return true;
            p = e + 1;
        }
    }
    return false;
}

/* Fields that Connection can never remove (RFC 9110 7.6.1 lets it name only hop-by-hop
 * extensions): the framing fields, Host, what bulkhead reads to decide a retry, and what
 * it sets itself. Dropping Content-Length while the body still goes on would let the body be read
 * upstream as a second request; dropping Host would forward a request routed on a Host the
 * upstream never sees. */
static bool is_protected(bh_span_t name)
{
    static const char *const names[] = {
        "content-length",   "transfer-encoding", "host", "idempotency-key", "x-forwarded-for",
        "x-forwarded-proto", "x-forwarded-host", "via",  "forwarded",       "bulkhead-deadline",
        "x-client-cert-subject"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (bh_span_ieqn(name, names[i], strlen(names[i])))
            return true;
    return false;
}

static bool skip_field(bh_span_t name, const bh_hdr_t *hdrs, size_t nhdrs, bool has_connection)
{
    return is_hop_by_hop(name) ||
           (has_connection && named_by_connection(name, hdrs, nhdrs) && !is_protected(name));
}

static void put_header(bh_wbuf_t *w, bh_span_t name, bh_span_t value)
{
    bh_wbuf_span(w, name);
    bh_wbuf_put(w, ": ", 2);
    bh_wbuf_span(w, value);
    bh_wbuf_put(w, "\r\n", 2);
}

/* Writes "Name: v1, v2, extra\r\n" joining every instance of a list field with one more value. */
static void put_joined(bh_wbuf_t *w, const char *name, const bh_hdr_t *hdrs, size_t nhdrs,
                       const char *extra)
{
    bh_wbuf_str(w, name);
    bh_wbuf_put(w, ": ", 2);
    for (size_t i = 0; i < nhdrs; i++) {
        if (bh_span_ieqn(hdrs[i].name, name, strlen(name)) && hdrs[i].value.n > 0) {
            bh_wbuf_span(w, hdrs[i].value);
            bh_wbuf_put(w, ", ", 2);
        }
    }
    bh_wbuf_str(w, extra);
    bh_wbuf_put(w, "\r\n", 2);
}

static bool has_connection_header(const bh_hdr_t *hdrs, size_t nhdrs)
{
    for (size_t i = 0; i < nhdrs; i++)
        if (bh_span_ieq(hdrs[i].name, "connection"))
            return true;
    return false;
}

/* RFC 3986 3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) */
static bool is_scheme_char(char c, bool first)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return true;
    return !first && ((c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.');
}

int bh_http_parse_target(bh_span_t t, bh_target_t *out)
{
    *out = (bh_target_t){{"", 0}, t, false};
    if (t.n == 0 || memchr(t.p, '#', t.n) != NULL)
        return -1;
    if (t.p[0] == '/')
        return 0;
    if (t.n == 1 && t.p[0] == '*') {
        out->asterisk = true;
        return 0;
    }
    /* absolute-form: scheme "://" authority [path-abempty] ["?" query] */
    size_t i = 0;
    while (i < t.n && is_scheme_char(t.p[i], i == 0))
        i++;
    bh_span_t scheme = {t.p, i};
    if (!(bh_span_ieq(scheme, "http") || bh_span_ieq(scheme, "https")) || t.n - i < 3 ||
        memcmp(t.p + i, "://", 3) != 0)
        return -1;
    const char *auth = t.p + i + 3, *end = t.p + t.n, *e = auth;
    while (e < end && *e != '/' && *e != '?')
        e++;
    out->authority = (bh_span_t){auth, (size_t)(e - auth)};
    if (out->authority.n == 0 || memchr(auth, '@', out->authority.n) != NULL)
        return -1;
    if (e == end)
        out->path = (bh_span_t){"/", 1};
    else if (*e == '/')
        out->path = (bh_span_t){e, (size_t)(end - e)};
    else
        return -1; /* "http://h?q": valid, but rare enough to refuse than to rewrite */
    return 0;
}

bool bh_http_write_request(bh_wbuf_t *w, const bh_fwd_req_t *req, const bh_hdr_t *hdrs,
                           size_t nhdrs)
{
    bool has_conn = has_connection_header(hdrs, nhdrs);
    const bh_hdr_t *host = NULL, *upgrade = NULL;
    size_t id_name_len = req->id_name != NULL ? strlen(req->id_name) : 0;

    bh_wbuf_span(w, req->method);
    bh_wbuf_put(w, req->target_slash ? " /" : " ", req->target_slash ? 2 : 1);
    bh_wbuf_span(w, req->target);
    bh_wbuf_str(w, " HTTP/1.1\r\n");
    if (req->host.p != NULL)
        put_header(w, (bh_span_t){"Host", 4}, req->host);
    for (size_t i = 0; i < nhdrs; i++) {
        bh_span_t name = hdrs[i].name;
        if (bh_span_ieq(name, "host")) {
            if (req->host.p != NULL)
                continue; /* the absolute-form target's authority is the Host */
            host = &hdrs[i];
        }
        if (bh_span_ieq(name, "upgrade"))
            upgrade = &hdrs[i];
        if (skip_field(name, hdrs, nhdrs, has_conn) || bh_span_ieq(name, "trailer") ||
            bh_span_ieq(name, "x-forwarded-for") || bh_span_ieq(name, "x-forwarded-proto") ||
            bh_span_ieq(name, "x-forwarded-host") || bh_span_ieq(name, "via") ||
            bh_span_ieq(name, "bulkhead-deadline") || bh_span_ieq(name, "x-client-cert-subject") ||
            (req->drop_expect && bh_span_ieq(name, "expect")) ||
            (id_name_len > 0 && bh_span_ieqn(name, req->id_name, id_name_len)) ||
            (req->chunked && bh_span_ieq(name, "content-length")))
            continue;
        put_header(w, name, hdrs[i].value);
    }
    bh_span_t host_value = req->host.p != NULL ? req->host
                           : host != NULL      ? host->value
                                               : (bh_span_t){NULL, 0};
    put_joined(w, "X-Forwarded-For", hdrs, nhdrs, req->client_ip);
    bh_wbuf_field(w, "X-Forwarded-Proto", req->proto);
    if (host_value.p != NULL)
        put_header(w, (bh_span_t){"X-Forwarded-Host", 16}, host_value);
    put_joined(w, "Via", hdrs, nhdrs, "1.1 bulkhead");
    if (id_name_len > 0)
        bh_wbuf_field(w, req->id_name, req->id);
    if (req->cert_subject != NULL)
        bh_wbuf_field(w, "X-Client-Cert-Subject", req->cert_subject);
    if (req->chunked)
        bh_wbuf_str(w, "Transfer-Encoding: chunked\r\n");
    if (req->upgrade && upgrade != NULL) {
        put_header(w, upgrade->name, upgrade->value);
        bh_wbuf_str(w, "Connection: upgrade\r\n");
    }
    bh_wbuf_put(w, "\r\n", 2);
    return !w->overflow;
}

bool bh_http_write_response(bh_wbuf_t *w, const bh_fwd_resp_t *resp, const bh_hdr_t *hdrs,
                            size_t nhdrs)
{
    bool has_conn = has_connection_header(hdrs, nhdrs);
    const bh_hdr_t *upgrade = NULL;

    bh_wbuf_str(w, "HTTP/1.1 ");
    bh_wbuf_u64(w, (uint64_t)resp->status);
    bh_wbuf_put(w, " ", 1);
    if (resp->reason.n > 0)
        bh_wbuf_span(w, resp->reason);
    else
        bh_wbuf_str(w, bh_http_reason(resp->status));
    bh_wbuf_put(w, "\r\n", 2);
    for (size_t i = 0; i < nhdrs; i++) {
        bh_span_t name = hdrs[i].name;
        if (bh_span_ieq(name, "upgrade"))
            upgrade = &hdrs[i];
        if (skip_field(name, hdrs, nhdrs, has_conn) || bh_span_ieq(name, "via") ||
            bh_span_ieq(name, "trailer") ||
            (resp->chunked && bh_span_ieq(name, "content-length")))
            continue;
        put_header(w, name, hdrs[i].value);
    }
    put_joined(w, "Via", hdrs, nhdrs, "1.1 bulkhead");
    if (resp->chunked)
        bh_wbuf_str(w, "Transfer-Encoding: chunked\r\n");
    if (resp->upgrade && upgrade != NULL) {
        put_header(w, upgrade->name, upgrade->value);
        bh_wbuf_str(w, "Connection: upgrade\r\n");
    } else if (resp->close) {
        bh_wbuf_str(w, "Connection: close\r\n");
    } else if (resp->keepalive_10) {
        bh_wbuf_str(w, "Connection: keep-alive\r\n");
    }
    bh_wbuf_put(w, "\r\n", 2);
    return !w->overflow;
}

const char *bh_http_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 204: return "No Content";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 417: return "Expectation Failed";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    case 507: return "Insufficient Storage";
    default: return "";
    }
}

long bh_http_keepalive_timeout(bh_span_t value)
{
    const char *p = value.p, *end = value.p + value.n;
    while (p < end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *e = comma != NULL ? comma : end;
        bh_span_t tok = trim(p, (size_t)(e - p));
        if (tok.n > 8 && strncasecmp(tok.p, "timeout=", 8) == 0) {
            long v = 0;
            for (size_t i = 8; i < tok.n; i++) {
                if (tok.p[i] < '0' || tok.p[i] > '9' || v > 100000000)
                    return -1;
                v = v * 10 + (tok.p[i] - '0');
            }
            return v;
        }
        p = e + 1;
    }
    return -1;
}

/* ---- a request head's fields and checks -------------------------------------------------- */

static bh_span_t trim_ows(bh_span_t t)
{
    while (t.n > 0 && (t.p[0] == ' ' || t.p[0] == '\t'))
        t.p++, t.n--;
    while (t.n > 0 && (t.p[t.n - 1] == ' ' || t.p[t.n - 1] == '\t'))
        t.n--;
    return t;
}

static void count_codings(bh_span_t value, bh_req_fields_t *f)
{
    const char *p = value.p, *end = value.p + value.n;
    while (p <= end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *e = comma != NULL ? comma : end;
        bh_span_t tok = trim_ows((bh_span_t){p, (size_t)(e - p)});
        if (bh_span_ieq(tok, "chunked"))
            f->n_chunked++;
        else if (tok.n > 0)
            f->other_coding = true;
        p = e + 1;
    }
}

void bh_http_req_fields(const bh_hdr_t *hdrs, int n, bool http11, bh_req_fields_t *f)
{
    *f = (bh_req_fields_t){.host = {"", 0}};
    for (int i = 0; i < n; i++) {
        bh_span_t name = hdrs[i].name, value = hdrs[i].value;
        if (bh_span_ieq(name, "host")) {
            f->host = value;
            f->nhost++;
        } else if (bh_span_ieq(name, "transfer-encoding")) {
            count_codings(value, f);
        } else if (bh_span_ieq(name, "connection")) {
            f->conn_upgrade = f->conn_upgrade || bh_http_has_token(value, "upgrade");
        } else if (bh_span_ieq(name, "upgrade")) {
            f->h2c = f->h2c || bh_http_has_token(value, "h2c");
        } else if (bh_span_ieq(name, "expect") && bh_span_ieq(value, "100-continue")) {
            f->expect_continue = http11;
        } else if (bh_span_ieq(name, "idempotency-key")) {
            f->idempotency_key = true;
        } else if (bh_span_ieq(name, "bulkhead-timeout")) {
            f->timeout = value;
        }
    }
}

int bh_http_check_request(const llhttp_t *p, const bh_req_fields_t *f, const bh_target_t *t)
{
    uint8_t m = p->method;
    bool http11 = p->http_major == 1 && p->http_minor >= 1;
    if (p->http_major != 1 || m == HTTP_CONNECT)
        return BH_EBAD_REQUEST;
    if (f->nhost > 1 || (f->nhost == 0 && http11))
        return BH_EBAD_REQUEST; /* RFC 9112 3.2: exactly one Host in HTTP/1.1 */
    if (t->asterisk && m != HTTP_OPTIONS)
        return BH_EBAD_TARGET;
    if (p->flags & F_TRANSFER_ENCODING) {
        if (!http11)
            return BH_EBAD_FRAMING; /* RFC 9112 6.1: HTTP/1.0 with Transfer-Encoding is faulty */
        if (f->n_chunked > 1)
            return BH_EBAD_FRAMING; /* chunked applied twice */
        if (f->other_coding)
            return BH_ETE_UNSUPPORTED; /* RFC 9112 6.1: 501; re-framing would drop the coding */
    }
    return 0;
}

int bh_http_check_response(const llhttp_t *p)
{
    int status = p->status_code;
    /* RFC 9110 15: three digits, 100 to 599. llhttp reads "HTTP/1.1 000", and even an empty code,
     * as status 0, which must not pass for an interim response */
    if (status < 100 || status > 599)
        return BH_EUPSTREAM_PROTOCOL;
    /* RFC 9110 15.2: a 1xx response ends with its head (the parser skips any body). An upstream
     * that announces one on it is confused about framing: what it meant as the body would be
     * read as the final response. Refused rather than guessed at. */
    if (status < 200 && ((p->flags & (F_CHUNKED | F_TRANSFER_ENCODING)) ||
                         ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0)))
        return BH_EUPSTREAM_PROTOCOL;
    return 0;
}

bh_span_t bh_http_reason_phrase(bh_span_t start)
{
    const char *sp = memchr(start.p, ' ', start.n);
    if (sp != NULL) {
        const char *sp2 = memchr(sp + 1, ' ', start.n - (size_t)(sp + 1 - start.p));
        if (sp2 != NULL)
            return (bh_span_t){sp2 + 1, start.n - (size_t)(sp2 + 1 - start.p)};
    }
    return (bh_span_t){"", 0};
}
