/* libFuzzer target: the response path without sockets. Upstream bytes go through strict llhttp as
 * bh_fwd_response.c reads them (pause at each head; bh_http_check_response; interim 1xx relayed
 * to HTTP/1.1 clients, 101 only for an upgrade, then the final head), with the forwarder's own
 * framing choice (bh__fwd_response_framing), bh_http_write_response, and the body re-framed by
 * bh__fwd_emit_body/bh__fwd_emit_end into a real write queue whose flushes are captured.
 * Invariants on each head sent to the client: strict llhttp reads it as exactly one response
 * head ending at its last byte, with the same status; at most one framing header and it matches
 * the framing the body is re-framed with (chunked: Transfer-Encoding: chunked and no
 * Content-Length; length: the upstream's Content-Length; close: Connection: close); at most one
 * Connection field; no hop-by-hop field of the upstream's.
 * The first input byte selects the client: bit 0 HTTP/1.0, bit 1 a HEAD request, bit 2 the
 * client connection cannot stay open (llhttp_should_keep_alive false or draining), bit 3 an
 * upgrade request.
 * Invariant on the body: the client's parser reads, from the head and the re-framed body, exactly
 * the body bytes the upstream's parser decoded, and the response ends where the upstream's ended
 * (a body cut short by the end of input is a prefix, as a client sees when the upstream dies). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "bh_forward_int.h"
#include "bh_http.h"
#include "fuzz_http.h"
#include "bh_outq.h"
#include "llhttp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAXH 128
#define OUT_CAP (64 * 1024)

/* A growable byte string. */
typedef struct bytes {
    char *p;
    size_t n, cap;
} bytes_t;

static void bytes_add(bytes_t *b, const char *p, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2;
        b->p = realloc(b->p, b->cap);
        if (b->p == NULL)
            abort();
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
}

typedef struct ctx {
    bool head_done, skip_body, msg_done;
    int heads;
    bytes_t body; /* body bytes as this parser decoded them */
    bh_outq_t *q; /* upstream side: re-frame each body piece into q */
    enum fwd_framing fr;
    bh_buf_t *buf; /* the upstream bytes, which q's slices point into */
} ctx_t;

static int on_headers_complete(llhttp_t *p)
{
    ctx_t *c = p->data;
    if (bh_http_response_is_bodiless(p->status_code, c->skip_body))
        p->flags |= F_SKIPBODY; /* the forwarder's parser, and a client that knows RFC 9112 6.3 */
    c->head_done = true;
    c->heads++;
    return HPE_PAUSED;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    ctx_t *c = p->data;
    bytes_add(&c->body, at, len);
    if (c->q != NULL && bh__fwd_emit_body(c->q, c->fr, c->buf, at, len) < 0)
        abort();
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    ctx_t *c = p->data;
    c->msg_done = true;
    return HPE_PAUSED;
}

static const llhttp_settings_t settings = {.on_headers_complete = on_headers_complete,
                                           .on_body = on_body,
                                           .on_message_complete = on_message_complete};

static void fail(const char *what, const char *out, size_t n)
{
    fuzz_fail("fuzz_response", "client head", what, out, n);
}

#define FRAME_INTERIM_ ((enum fwd_framing)(FRAME_CLOSE + 1)) /* a 1xx: no body, not final */

static void check_client(const char *out, size_t n, int status, enum fwd_framing fr,
                         uint64_t length, bool head_req, bool upgrade)
{
    ctx_t c = {.skip_body = head_req};
    llhttp_t p;
    llhttp_init(&p, HTTP_RESPONSE, &settings);
    p.data = &c;
    llhttp_errno_t e = llhttp_execute(&p, out, n);
    if (e != HPE_PAUSED || !c.head_done)
        fail(llhttp_errno_name(e), out, n);
    if (llhttp_get_error_pos(&p) != out + n)
        fail("the head ends before its last byte", out, n);
    if (c.heads != 1)
        fail("not exactly one response head", out, n);
    if (llhttp_get_status_code(&p) != status)
        fail("status changed", out, n);
    bh_span_t start;
    static bh_hdr_t h[MAXH + 8];
    int nh = bh_http_split(out, n, &start, h, MAXH + 8);
    if (nh < 0)
        fail("client head does not split", out, n);
    int ncl = fuzz_count_named(h, nh, "content-length"),
        nte = fuzz_count_named(h, nh, "transfer-encoding");
    int nconn = fuzz_count_named(h, nh, "connection");
    if (ncl + nte > 1)
        fail("more than one framing header", out, n);
    if (nconn > 1)
        fail("more than one Connection", out, n);
    if (fuzz_count_named(h, nh, "keep-alive") || fuzz_count_named(h, nh, "proxy-connection") ||
        fuzz_count_named(h, nh, "te") || fuzz_count_named(h, nh, "trailer"))
        fail("a hop-by-hop field reached the client", out, n);
    if (!upgrade && fuzz_count_named(h, nh, "upgrade"))
        fail("Upgrade without an upgrade", out, n);
    switch (fr) {
    case FRAME_CHUNKED:
        if (nte != 1 || ncl != 0 || !(p.flags & F_CHUNKED))
            fail("chunked body without Transfer-Encoding: chunked", out, n);
        break;
    case FRAME_LENGTH:
        if (ncl != 1 || p.content_length != length)
            fail("length-delimited body without the upstream's Content-Length", out, n);
        break;
    case FRAME_CLOSE:
        if (nte != 0 || ncl != 0 || nconn != 1)
            fail("close-delimited body with a framing header or without Connection: close", out, n);
        break;
    default: /* FRAME_NONE, FRAME_INTERIM_ */
        if (nte != 0)
            fail("Transfer-Encoding on a response without a body", out, n);
        break;
    }
}

/* The write queue's flushes land here instead of on a socket. */
static bytes_t wire;

static int capture(bh_outq_t *q, bh_wreq_t *plain)
{
    for (uint32_t i = 0; i < plain->nbufs; i++)
        bytes_add(&wire, plain->bufs[i].base, plain->bufs[i].len);
    bh_outq_put(q, plain);
    return 0;
}

/* The end of input ends a close-delimited body (on_message_complete pauses, so llhttp_finish
 * may answer HPE_PAUSED). */
static bool finished(llhttp_t *p, ctx_t *c)
{
    llhttp_errno_t e = llhttp_finish(p);
    return (e == HPE_OK || e == HPE_PAUSED) && c->msg_done;
}

/* The final response's body: re-framed into q while the upstream's parser reads the rest of the
 * input, then the client's parser reads head + body. */
static void relay_body(llhttp_t *up, ctx_t *uc, const char *s, size_t pos, size_t n,
                       const char *head, size_t head_n, bool head_req)
{
    static bh_bufpool_t pool;
    static bh_wreq_cache_t cache;
    static bool init;
    if (!init) {
        bh_bufpool_init(&pool, 64 * 1024, 4);
        bh_wreq_cache_init(&cache, 4);
        init = true;
    }
    bh_buf_t *buf = bh_buf_get(&pool);
    if (buf == NULL)
        abort();
    memcpy(buf->data, s, n); /* the slices point into a refcounted buffer, as into uc->rbuf */
    bh_outq_t q;
    bh_outq_init(&q, NULL, &cache, &pool, NULL);
    q.seal = capture;
    wire.n = 0;
    bytes_add(&wire, head, head_n);
    uc->q = &q, uc->buf = buf, uc->body.n = 0, uc->msg_done = false;
    llhttp_errno_t e = llhttp_execute(up, buf->data + pos, n - pos);
    bool complete = uc->msg_done;
    if (!complete && e == HPE_OK && uc->fr == FRAME_CLOSE)
        complete = finished(up, uc); /* the upstream's close */
    if (complete && bh__fwd_emit_end(&q, uc->fr) < 0)
        abort();
    if (bh_outq_flush(&q) < 0)
        abort();
    bh_outq_discard(&q);
    bh_buf_unref(buf);
    uc->q = NULL;

    ctx_t cc = {.skip_body = head_req};
    llhttp_t cp;
    llhttp_init(&cp, HTTP_RESPONSE, &settings);
    cp.data = &cc;
    e = llhttp_execute(&cp, wire.p, wire.n);
    if (e == HPE_PAUSED && cc.head_done && !cc.msg_done) {
        llhttp_resume(&cp);
        size_t done = (size_t)(llhttp_get_error_pos(&cp) - wire.p);
        e = llhttp_execute(&cp, wire.p + done, wire.n - done);
    }
    if (complete && uc->fr == FRAME_CLOSE && e == HPE_OK)
        e = finished(&cp, &cc) ? HPE_PAUSED : HPE_INVALID_EOF_STATE;
    if (e != HPE_OK && e != HPE_PAUSED)
        fail(llhttp_errno_name(e), wire.p, wire.n); /* the client cannot read it */
    if (cc.body.n != uc->body.n ||
        (uc->body.n > 0 && memcmp(cc.body.p, uc->body.p, uc->body.n) != 0))
        fail("the client reads another body than the upstream sent", wire.p, wire.n);
    if (complete != cc.msg_done)
        fail("the response ends elsewhere for the client", wire.p, wire.n);
    if (cc.msg_done && uc->fr != FRAME_CLOSE && llhttp_get_error_pos(&cp) != wire.p + wire.n)
        fail("bytes after the end of the response", wire.p, wire.n);
    free(cc.body.p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 32 * 1024)
        return -1;
    uint8_t opt = data[0];
    bool http11 = !(opt & 1), head_req = opt & 2, client_keep = !(opt & 4), upgrade_req = opt & 8;
    size_t n = size - 1;
    char *s = malloc(n ? n : 1); /* exact size */
    memcpy(s, data + 1, n);
    char *out = malloc(OUT_CAP);
    ctx_t c = {.skip_body = head_req};
    llhttp_t p;
    llhttp_init(&p, HTTP_RESPONSE, &settings);
    p.data = &c;
    size_t pos = 0;
    static bh_hdr_t h[MAXH];
    for (int msg = 0; msg < 16 && pos < n; msg++) {
        size_t head_start = pos;
        c.head_done = false;
        llhttp_errno_t e = llhttp_execute(&p, s + pos, n - pos);
        if (e != HPE_PAUSED && e != HPE_PAUSED_UPGRADE)
            break;
        pos = (size_t)(llhttp_get_error_pos(&p) - s);
        if (!c.head_done)
            break;
        if (e == HPE_PAUSED)
            llhttp_resume(&p);
        int status = llhttp_get_status_code(&p);
        if (getenv("FUZZ_RESPONSE_DEBUG") != NULL)
            fprintf(stderr, "--- upstream head (status %d):\n%.*s", status, (int)(pos - head_start),
                    s + head_start);
        if (bh_http_check_response(&p) < 0)
            break; /* 502 */
        bh_span_t start;
        int nh = bh_http_split(s + head_start, pos - head_start, &start, h, MAXH);
        if (nh < 0)
            break; /* 502 */
        bh_fwd_resp_t resp = {.status = status, .reason = bh_http_reason_phrase(start)};
        enum fwd_framing fr = FRAME_NONE;
        bool interim = false;
        if (status < 200 && status != 101) {
            if (!http11)
                continue; /* not relayed to an HTTP/1.0 client */
            interim = true;
        } else if (status == 101) {
            if (!upgrade_req)
                break; /* 502 */
            resp.upgrade = true;
        } else {
            fr = bh__fwd_response_framing(&p, head_req, http11);
            bool keep = client_keep && fr != FRAME_CLOSE;
            resp.close = !keep;
            resp.keepalive_10 = !http11 && keep;
            resp.chunked = fr == FRAME_CHUNKED;
        }
        bh_wbuf_t w = {out, 0, OUT_CAP, false};
        if (!bh_http_write_response(&w, &resp, h, (size_t)nh))
            break; /* 502: the head does not fit */
        if (getenv("FUZZ_RESPONSE_DEBUG") != NULL)
            fprintf(stderr, "--- client:\n%.*s", (int)w.n, out);
        check_client(out, w.n, status, interim ? FRAME_INTERIM_ : fr, p.content_length, head_req,
                     resp.upgrade);
        if (interim)
            continue;
        if (status != 101) {
            c.fr = fr;
            relay_body(&p, &c, s, pos, n, out, w.n, head_req);
        }
        break;
    }
    free(c.body.p);
    free(out);
    free(s);
    return 0;
}
