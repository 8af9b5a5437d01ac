/* libFuzzer target: the response path's head handling without sockets. Upstream bytes go through
 * strict llhttp as bh_fwd_response.c reads them (pause at each head; interim 1xx relayed to
 * HTTP/1.1 clients, 101 only for an upgrade, then the final head), with choose_framing's choice
 * (replicated: static, needs a live exchange) and bh_http_write_response.
 * Invariants on each head sent to the client: strict llhttp reads it as exactly one response
 * head ending at its last byte, with the same status; at most one framing header and it matches
 * the framing the body is re-framed with (chunked: Transfer-Encoding: chunked and no
 * Content-Length; length: the upstream's Content-Length; close: Connection: close); at most one
 * Connection field; no hop-by-hop field of the upstream's.
 * The first input byte selects the client: bit 0 HTTP/1.0, bit 1 a HEAD request, bit 2 the
 * client connection cannot stay open (llhttp_should_keep_alive false or draining), bit 3 an
 * upgrade request. Body re-framing itself (bh__fwd_emit_body) is not covered here. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "bh_http.h"
#include "llhttp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAXH 128
#define OUT_CAP (64 * 1024)

typedef struct ctx {
    bool head_done, skip_body;
    int heads;
} ctx_t;

static int on_headers_complete(llhttp_t *p)
{
    ctx_t *c = p->data;
    if (c->skip_body)
        p->flags |= F_SKIPBODY;
    c->head_done = true;
    c->heads++;
    return HPE_PAUSED;
}

static const llhttp_settings_t settings = {.on_headers_complete = on_headers_complete};

static void fail(const char *what, const char *out, size_t n)
{
    fprintf(stderr, "fuzz_response invariant: %s\n--- client head:\n%.*s\n---\n", what, (int)n,
            out ? out : "");
    abort();
}

static int count_named(const bh_hdr_t *h, int n, const char *name)
{
    int k = 0;
    for (int i = 0; i < n; i++)
        if (bh_span_ieqn(h[i].name, name, strlen(name)))
            k++;
    return k;
}

enum framing { FRAME_NONE, FRAME_LENGTH, FRAME_CHUNKED, FRAME_CLOSE, FRAME_INTERIM };

static void check_client(const char *out, size_t n, int status, enum framing fr, uint64_t length,
                         bool head_req, bool upgrade)
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
    int ncl = count_named(h, nh, "content-length"), nte = count_named(h, nh, "transfer-encoding");
    int nconn = count_named(h, nh, "connection");
    if (ncl + nte > 1)
        fail("more than one framing header", out, n);
    if (nconn > 1)
        fail("more than one Connection", out, n);
    if (count_named(h, nh, "keep-alive") || count_named(h, nh, "proxy-connection") ||
        count_named(h, nh, "te") || count_named(h, nh, "trailer"))
        fail("a hop-by-hop field reached the client", out, n);
    if (!upgrade && count_named(h, nh, "upgrade"))
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
            fail("close-delimited body with a framing header or without Connection: close", out,
                 n);
        break;
    case FRAME_NONE:
    case FRAME_INTERIM:
        if (nte != 0)
            fail("Transfer-Encoding on a response without a body", out, n);
        break;
    }
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
        if (bh_http_check_response(&p) < 0)
            break; /* 502 */
        if (getenv("FUZZ_RESPONSE_DEBUG") != NULL)
            fprintf(stderr, "--- upstream head (status %d):\n%.*s", status, (int)(pos - head_start),
                    s + head_start);
        bh_span_t start;
        int nh = bh_http_split(s + head_start, pos - head_start, &start, h, MAXH);
        if (nh < 0)
            break; /* 502 */
        /* reason_of: after the second space of the status line */
        bh_span_t reason = {"", 0};
        const char *sp = memchr(start.p, ' ', start.n);
        if (sp != NULL) {
            const char *sp2 = memchr(sp + 1, ' ', start.n - (size_t)(sp + 1 - start.p));
            if (sp2 != NULL)
                reason = (bh_span_t){sp2 + 1, start.n - (size_t)(sp2 + 1 - start.p)};
        }
        bh_fwd_resp_t resp = {.status = status, .reason = reason};
        enum framing fr;
        uint64_t length = 0;
        bool last = true;
        if (status < 200 && status != 101) {
            if (!http11)
                continue; /* not relayed to an HTTP/1.0 client */
            fr = FRAME_INTERIM;
            last = false;
        } else if (status == 101) {
            if (!upgrade_req)
                break; /* 502 */
            resp.upgrade = true;
            fr = FRAME_NONE;
        } else {
            if (head_req || status == 204 || status == 304)
                fr = FRAME_NONE;
            else if (p.flags & F_CHUNKED)
                fr = http11 ? FRAME_CHUNKED : FRAME_CLOSE;
            else if (p.flags & F_CONTENT_LENGTH)
                fr = FRAME_LENGTH, length = p.content_length;
            else
                fr = http11 ? FRAME_CHUNKED : FRAME_CLOSE;
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
        check_client(out, w.n, status, fr, length, head_req, resp.upgrade);
        if (last)
            break;
    }
    free(out);
    free(s);
    return 0;
}
