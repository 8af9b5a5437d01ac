/* libFuzzer target: the request path without sockets. Client bytes go through llhttp as the
 * client reads them (strict mode, pause at each head and message end, pipelining), the head
 * checks the exchange makes (bh_http_req_fields, bh_http_check_request), bh_http_split,
 * bh_http_parse_target and bh_http_write_request, plus the tail bh_forward.c's send_request appends
 * (Host when missing, Bulkhead-Deadline). Invariants on what goes upstream, per forwarded request:
 * strict llhttp reads it as exactly one request head ending at its last byte, with the client's
 * method and the rewritten target; at most one framing header (Content-Length or
 * Transfer-Encoding), and that framing is the one the body is forwarded with (chunked, the client's
 * length, or none); exactly one Host; no hop-by-hop field except Connection/Upgrade of an accepted
 * upgrade. And per complete message, the head with the body re-framed as bh__fwd_emit_body does
 * (replicated; it writes to a socket queue) reads upstream as exactly one request whose body is the
 * client's body, byte for byte. The first input byte selects options: bit 0 strips the route prefix
 * "/api", bit 1 https, bit 2 a client certificate subject. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "bh_http.h"
#include "fuzz_http.h"
#include "llhttp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAXH 128
#define OUT_CAP (64 * 1024)

static void fail(const char *what, const char *out, size_t n)
{
    fuzz_fail("fuzz_request", "upstream", what, out, n);
}

typedef struct ctx {
    const char *base;
    size_t url_off, url_len;
    bool url_seen, head_done, msg_done;
    int heads, begins;
    /* the message as sent upstream: head, then the body re-framed as it arrives */
    char *up;
    size_t up_n;
    bool up_chunked, forwarding;
    /* the client's body bytes, to compare with what the upstream reads */
    char *body;
    size_t body_n;
} ctx_t;

#define UP_CAP (4 * OUT_CAP)

static void up_put(ctx_t *c, const void *p, size_t n)
{
    if (c->up_n + n > UP_CAP)
        abort(); /* cannot happen: inputs are at most 32 KiB */
    memcpy(c->up + c->up_n, p, n);
    c->up_n += n;
}

/* bh__fwd_emit_body / bh__fwd_emit_end (bh_fwd_attempt.c), replicated: they write to a queue. */
static int on_body(llhttp_t *p, const char *at, size_t len)
{
    ctx_t *c = p->data;
    if (!c->forwarding)
        return 0;
    memcpy(c->body + c->body_n, at, len);
    c->body_n += len;
    if (!c->up_chunked) {
        up_put(c, at, len);
        return 0;
    }
    char hex[24];
    bh_wbuf_t w = {hex, 0, sizeof(hex), false};
    bh_wbuf_hex(&w, len);
    bh_wbuf_put(&w, "\r\n", 2);
    up_put(c, hex, w.n);
    up_put(c, at, len);
    up_put(c, "\r\n", 2);
    return 0;
}

static int on_message_begin(llhttp_t *p)
{
    ctx_t *c = p->data;
    c->begins++;
    c->url_seen = false;
    c->url_off = c->url_len = 0;
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    ctx_t *c = p->data;
    size_t off = (size_t)(at - c->base);
    if (!c->url_seen)
        c->url_off = off;
    c->url_seen = true;
    c->url_len = off + len - c->url_off;
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    ctx_t *c = p->data;
    c->head_done = true;
    c->heads++;
    return HPE_PAUSED;
}

static int on_message_complete(llhttp_t *p)
{
    ((ctx_t *)p->data)->msg_done = true;
    return HPE_PAUSED;
}

static const llhttp_settings_t settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* The upstream's reading of the whole forwarded message: body bytes and where it ended. */
typedef struct upctx {
    char *body;
    size_t body_n;
    int done;
} upctx_t;

static int up_on_body(llhttp_t *p, const char *at, size_t len)
{
    upctx_t *u = p->data;
    memcpy(u->body + u->body_n, at, len);
    u->body_n += len;
    return 0;
}

static int up_on_message_complete(llhttp_t *p)
{
    ((upctx_t *)p->data)->done++;
    return HPE_PAUSED;
}

static const llhttp_settings_t up_settings = {
    .on_body = up_on_body,
    .on_message_complete = up_on_message_complete,
};

/* The complete message went upstream: it must read as one request with the client's body. */
static void check_message(const ctx_t *c)
{
    upctx_t u = {.body = malloc(c->up_n + 1)};
    llhttp_t p;
    llhttp_init(&p, HTTP_REQUEST, &up_settings);
    p.data = &u;
    llhttp_errno_t e = llhttp_execute(&p, c->up, c->up_n);
    if (e != HPE_PAUSED || u.done != 1)
        fail("the forwarded message does not end as one request", c->up, c->up_n);
    if (llhttp_get_error_pos(&p) != c->up + c->up_n)
        fail("bytes left after the forwarded message (a second request upstream)", c->up, c->up_n);
    if (u.body_n != c->body_n || memcmp(u.body, c->body, c->body_n) != 0)
        fail("the upstream reads another body than the client sent", c->up, c->up_n);
    free(u.body);
}

/* Checks one upstream head. */
static void check_upstream(const char *out, size_t n, const char *method, bh_span_t want_target,
                           bool want_slash, bool chunked, uint64_t length, bool upgrade)
{
    ctx_t c = {.base = out};
    llhttp_t p;
    llhttp_init(&p, HTTP_REQUEST, &settings);
    p.data = &c;
    llhttp_errno_t e = llhttp_execute(&p, out, n);
    if (e != HPE_PAUSED || !c.head_done)
        fail(llhttp_errno_name(e), out, n);
    if (llhttp_get_error_pos(&p) != out + n)
        fail("the head ends before its last byte", out, n);
    if (c.heads != 1 || c.begins != 1)
        fail("not exactly one request head", out, n);
    if (strcmp(llhttp_method_name(llhttp_get_method(&p)), method) != 0)
        fail("method changed", out, n);
    size_t tn = want_target.n + (want_slash ? 1 : 0);
    if (c.url_len != tn || (want_slash && out[c.url_off] != '/') ||
        memcmp(out + c.url_off + (want_slash ? 1 : 0), want_target.p, want_target.n) != 0)
        fail("target changed", out, n);

    bh_span_t start;
    static bh_hdr_t h[MAXH + 8];
    int nh = bh_http_split(out, n, &start, h, MAXH + 8);
    if (nh < 0)
        fail("upstream head does not split", out, n);
    int ncl = fuzz_count_named(h, nh, "content-length"),
        nte = fuzz_count_named(h, nh, "transfer-encoding");
    if (ncl + nte > 1)
        fail("more than one framing header", out, n);
    if (fuzz_count_named(h, nh, "host") != 1)
        fail("not exactly one Host", out, n);
    if (fuzz_count_named(h, nh, "keep-alive") || fuzz_count_named(h, nh, "proxy-connection") ||
        fuzz_count_named(h, nh, "te") || fuzz_count_named(h, nh, "trailer"))
        fail("a hop-by-hop field went upstream", out, n);
    if (!upgrade && (fuzz_count_named(h, nh, "connection") || fuzz_count_named(h, nh, "upgrade")))
        fail("Connection/Upgrade without an upgrade", out, n);
    if (chunked) {
        if (nte != 1 || !(p.flags & F_CHUNKED))
            fail("chunked body without Transfer-Encoding: chunked", out, n);
    } else if (length > 0) {
        if (ncl != 1 || !(p.flags & F_CONTENT_LENGTH) || p.content_length != length)
            fail("length-delimited body without its Content-Length", out, n);
    } else {
        if (nte != 0 || ((p.flags & F_CONTENT_LENGTH) && p.content_length != 0))
            fail("a body framing upstream for a request without a body", out, n);
    }
}

/* One client head: returns false when bulkhead would answer it with an error and close. */
static bool forward_head(llhttp_t *p, ctx_t *c, const char *head, size_t hlen, bh_span_t url,
                         uint8_t opt, char *out)
{
    bh_span_t start;
    static bh_hdr_t h[MAXH];
    int nh = bh_http_split(head, hlen, &start, h, MAXH);
    if (nh < 0)
        return false;
    bool http11 = p->http_major == 1 && p->http_minor >= 1;
    bh_req_fields_t f;
    bh_http_req_fields(h, nh, http11, &f);
    bh_target_t t;
    if (bh_http_parse_target(url, &t) < 0 || bh_http_check_request(p, &f, &t) != 0)
        return false;
    const char *method = llhttp_method_name(llhttp_get_method(p));
    bool upgrade = llhttp_get_upgrade(p) != 0 && f.conn_upgrade && !f.h2c;
    bool chunked = (p->flags & F_CHUNKED) != 0;
    uint64_t length = !chunked && (p->flags & F_CONTENT_LENGTH) ? p->content_length : 0;
    bh_fwd_req_t fr = {
        .method = {method, strlen(method)},
        .target = t.asterisk ? (bh_span_t){"*", 1} : t.path,
        .host = t.authority.n > 0 ? t.authority : (bh_span_t){NULL, 0},
        .client_ip = "192.0.2.7",
        .proto = (opt & 2) ? "https" : "http",
        .cert_subject = (opt & 4) ? "CN=client" : NULL,
        .chunked = chunked,
        .upgrade = upgrade,
        .drop_expect = f.expect_continue,
    };
    if ((opt & 1) && !t.asterisk && t.path.n >= 4 && memcmp(t.path.p, "/api", 4) == 0) {
        fr.target = (bh_span_t){t.path.p + 4, t.path.n - 4};
        fr.target_slash = fr.target.n == 0 || fr.target.p[0] != '/';
    }
    bool add_host = f.nhost == 0 && t.authority.n == 0;
    bh_wbuf_t w = {out, 0, OUT_CAP - 128, false};
    if (!bh_http_write_request(&w, &fr, h, (size_t)nh))
        return false; /* 431 */
    if (w.n < 4 || memcmp(out + w.n - 4, "\r\n\r\n", 4) != 0)
        fail("head does not end with an empty line", out, w.n);
    w.n -= 2; /* send_request: the tail goes before the blank line */
    w.cap = OUT_CAP;
    if (add_host)
        bh_wbuf_str(&w, "Host: 10.0.0.1:8080\r\n");
    bh_wbuf_str(&w, "Bulkhead-Deadline: 1500\r\n\r\n");
    if (getenv("FUZZ_REQUEST_DEBUG") != NULL) /* print what goes upstream */
        fprintf(stderr, "--- upstream:\n%.*s", (int)w.n, out);
    check_upstream(out, w.n, method, fr.target, fr.target_slash, chunked, length, upgrade);
    c->up_n = c->body_n = 0;
    c->up_chunked = chunked;
    c->forwarding = !upgrade;
    up_put(c, out, w.n);
    return !upgrade; /* an upgrade turns the connection into a tunnel */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 32 * 1024)
        return -1;
    uint8_t opt = data[0];
    size_t n = size - 1;
    char *s = malloc(n ? n : 1); /* exact size: reads past the input are caught */
    memcpy(s, data + 1, n);
    char *out = malloc(OUT_CAP);
    static char up[UP_CAP]; /* one buffer for every run: a 256 KiB malloc per input is slow */
    ctx_t c = {.base = s, .up = up, .body = malloc(n + 1)};
    llhttp_t p;
    llhttp_init(&p, HTTP_REQUEST, &settings);
    p.data = &c;
    size_t pos = 0;
    for (int msg = 0; msg < 64 && pos < n; msg++) {
        size_t head_start = pos;
        c.head_done = c.msg_done = false;
        llhttp_errno_t e = llhttp_execute(&p, s + pos, n - pos);
        if (e != HPE_PAUSED || !c.head_done)
            break; /* incomplete (waits for more) or a 400 */
        pos = (size_t)(llhttp_get_error_pos(&p) - s);
        if (!c.url_seen)
            fail("a head without a target", s + head_start, pos - head_start);
        bh_span_t url = {s + c.url_off, c.url_len};
        c.forwarding = false;
        if (!forward_head(&p, &c, s + head_start, pos - head_start, url, opt, out))
            break;
        llhttp_resume(&p);
        if (!c.msg_done) {
            e = llhttp_execute(&p, s + pos, n - pos); /* the body, up to the message end */
            if (e != HPE_PAUSED || !c.msg_done)
                break;
            pos = (size_t)(llhttp_get_error_pos(&p) - s);
        }
        if (c.up_chunked)
            up_put(&c, "0\r\n\r\n", 5);
        check_message(&c);
        c.forwarding = false;
        llhttp_resume(&p);
    }
    free(c.body);
    free(out);
    free(s);
    return 0;
}
