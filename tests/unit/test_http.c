/* Head splitting and rewriting (proxy/bh_http.c) and routing (proxy/bh_router.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>
#include "bh_conf.h"
#include "bh_error.h"
#include "bh_http.h"
#include "bh_router.h"

#define MAXH 32

static int split(const char *head, bh_span_t *start, bh_hdr_t *h)
{
    return bh_http_split(head, strlen(head), start, h, MAXH);
}

static void test_split(void **state)
{
    bh_span_t start;
    bh_hdr_t h[MAXH];
    int n = split("\r\nGET /a HTTP/1.1\r\nHost: x\r\nX-A:  padded value \t\r\nEmpty:\r\n\r\nBODY",
                  &start, h);
    assert_int_equal(n, 3);
    assert_true(start.n == 15 && memcmp(start.p, "GET /a HTTP/1.1", 15) == 0);
    assert_true(bh_span_ieq(h[0].name, "HOST") && bh_span_ieq(h[0].value, "x"));
    assert_true(bh_span_ieq(h[1].value, "padded value"));
    assert_int_equal(h[2].value.n, 0);
    /* obs-fold and a line without a colon are refused, as is a count above max */
    assert_int_equal(split("GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n", &start, h), -1);
    assert_int_equal(split("GET / HTTP/1.1\r\nnocolon\r\n\r\n", &start, h), -1);
    assert_int_equal(bh_http_split("G / HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n", 27, &start, h, 1), -2);
    /* llhttp skips any run of CR and LF before a message: so does the split, or a lone CR would be
     * the start line and the real one a header passed on (found by fuzz_response) */
    n = split("\r\r\nHTTP/1.0 107 x:y\r\nA: 1\r\n\r\n", &start, h);
    assert_int_equal(n, 1);
    assert_true(start.n == 16 && memcmp(start.p, "HTTP/1.0 107 x:y", 16) == 0);
    assert_true(bh_span_ieq(h[0].name, "A"));
}

static void test_tokens(void **state)
{
    bh_span_t v = {"keep-alive, Upgrade , x-foo", 27};
    assert_true(bh_http_has_token(v, "upgrade"));
    assert_true(bh_http_has_token(v, "X-Foo"));
    assert_false(bh_http_has_token(v, "close"));
    assert_int_equal(bh_http_keepalive_timeout((bh_span_t){"timeout=5, max=100", 18}), 5);
    assert_int_equal(bh_http_keepalive_timeout((bh_span_t){"max=100", 7}), -1);
    assert_int_equal(bh_http_keepalive_timeout((bh_span_t){"timeout=x", 9}), -1);
}

static size_t write_req(const char *head, bh_fwd_req_t *req, char *out, size_t cap)
{
    bh_span_t start;
    bh_hdr_t h[MAXH];
    int n = split(head, &start, h);
    assert_true(n >= 0);
    bh_wbuf_t w = {out, 0, cap - 1, false};
    assert_true(bh_http_write_request(&w, req, h, (size_t)n));
    out[w.n] = '\0';
    return w.n;
}

static void test_request_rewrite(void **state)
{
    char out[2048];
    bh_fwd_req_t req = {.method = {"POST", 4}, .target = {"/v1/x?q=1", 9},
                        .client_ip = "10.0.0.9", .proto = "http", .drop_expect = true};
    write_req("POST /v1/x?q=1 HTTP/1.1\r\n"
              "Host: api.example.com\r\n"
              "Connection: keep-alive, X-Secret\r\n"
              "Keep-Alive: timeout=5\r\n"
              "Proxy-Connection: keep-alive\r\n"
              "TE: trailers\r\n"
              "Upgrade: h2c\r\n"
              "X-Secret: s\r\n"
              "X-Forwarded-For: 1.1.1.1\r\n"
              "X-Forwarded-For: 2.2.2.2\r\n"
              "X-Forwarded-Proto: https\r\n"
              "Via: 1.0 edge\r\n"
              "Bulkhead-Deadline: 99999\r\n"
              "Expect: 100-continue\r\n"
              "Content-Length: 3\r\n"
              "X-Keep: yes\r\n\r\n",
              &req, out, sizeof(out));
    assert_string_equal(out, "POST /v1/x?q=1 HTTP/1.1\r\n"
                             "Host: api.example.com\r\n"
                             "Content-Length: 3\r\n"
                             "X-Keep: yes\r\n"
                             "X-Forwarded-For: 1.1.1.1, 2.2.2.2, 10.0.0.9\r\n"
                             "X-Forwarded-Proto: http\r\n"
                             "X-Forwarded-Host: api.example.com\r\n"
                             "Via: 1.0 edge, 1.1 bulkhead\r\n"
                             "\r\n");
}

/* The request id field is bulkhead's: every client field of that name is dropped (any case, named
 * by Connection or not) and the chosen id is written once. */
static void test_request_id_field(void **state)
{
    char out[2048];
    bh_fwd_req_t req = {.method = {"GET", 3},
                        .target = {"/", 1},
                        .client_ip = "10.0.0.9",
                        .proto = "http",
                        .id_name = "X-Request-Id",
                        .id = "abc-1"};
    write_req("GET / HTTP/1.1\r\n"
              "Host: h\r\n"
              "X-Request-Id: one\r\n"
              "x-request-ID: two\r\n"
              "Connection: X-Request-Id\r\n"
              "X-Request-Idx: kept\r\n\r\n",
              &req, out, sizeof(out));
    assert_string_equal(out, "GET / HTTP/1.1\r\n"
                             "Host: h\r\n"
                             "X-Request-Idx: kept\r\n"
                             "X-Forwarded-For: 10.0.0.9\r\n"
                             "X-Forwarded-Proto: http\r\n"
                             "X-Forwarded-Host: h\r\n"
                             "Via: 1.1 bulkhead\r\n"
                             "X-Request-Id: abc-1\r\n"
                             "\r\n");
}

static void test_request_chunked_upgrade_strip(void **state)
{
    char out[2048];
    bh_fwd_req_t req = {.method = {"GET", 3}, .target = {"", 0}, .target_slash = true,
                        .client_ip = "::1", .proto = "http", .chunked = true, .upgrade = true};
    write_req("GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
              "Transfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
              &req, out, sizeof(out));
    assert_string_equal(out, "GET / HTTP/1.1\r\n"
                             "Host: h\r\n"
                             "X-Forwarded-For: ::1\r\n"
                             "X-Forwarded-Proto: http\r\n"
                             "X-Forwarded-Host: h\r\n"
                             "Via: 1.1 bulkhead\r\n"
                             "Transfer-Encoding: chunked\r\n"
                             "Upgrade: websocket\r\n"
                             "Connection: upgrade\r\n\r\n");
    /* too small a buffer is reported, not truncated silently */
    bh_span_t start;
    bh_hdr_t h[MAXH];
    int n = split("GET / HTTP/1.1\r\nHost: h\r\n\r\n", &start, h);
    bh_wbuf_t w = {out, 0, 20, false};
    assert_false(bh_http_write_request(&w, &req, h, (size_t)n));
}

static void test_response_rewrite(void **state)
{
    char out[2048];
    bh_span_t start;
    bh_hdr_t h[MAXH];
    const char *head = "HTTP/1.1 200 Fine\r\nServer: up\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\n"
                       "Keep-Alive: timeout=3\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n";
    int n = split(head, &start, h);
    bh_fwd_resp_t resp = {.status = 200, .reason = {"Fine", 4}, .chunked = true};
    bh_wbuf_t w = {out, 0, sizeof(out) - 1, false};
    assert_true(bh_http_write_response(&w, &resp, h, (size_t)n));
    out[w.n] = '\0';
    assert_string_equal(out, "HTTP/1.1 200 Fine\r\nServer: up\r\nVia: 1.1 bulkhead\r\n"
                             "Transfer-Encoding: chunked\r\n\r\n");
    resp = (bh_fwd_resp_t){.status = 204, .close = true};
    w = (bh_wbuf_t){out, 0, sizeof(out) - 1, false};
    assert_true(bh_http_write_response(&w, &resp, h, 1));
    out[w.n] = '\0';
    assert_string_equal(out, "HTTP/1.1 204 No Content\r\nServer: up\r\nVia: 1.1 bulkhead\r\n"
                             "Connection: close\r\n\r\n");
    resp = (bh_fwd_resp_t){.status = 200, .keepalive_10 = true};
    w = (bh_wbuf_t){out, 0, sizeof(out) - 1, false};
    assert_true(bh_http_write_response(&w, &resp, h, 0));
    out[w.n] = '\0';
    assert_string_equal(out, "HTTP/1.1 200 OK\r\nVia: 1.1 bulkhead\r\nConnection: keep-alive\r\n\r\n");
}

/* Connection may name only hop-by-hop extensions: framing fields, Host and what bulkhead reads or
 * sets itself stay (else "Connection: Content-Length" turns the body into a second request). */
static void test_connection_cannot_remove_protected(void **state)
{
    char out[2048];
    bh_fwd_req_t req = {.method = {"POST", 4}, .target = {"/", 1}, .client_ip = "10.0.0.9",
                        .proto = "http"};
    write_req("POST / HTTP/1.1\r\n"
              "Host: h\r\n"
              "Connection: keep-alive, Content-Length, Host, X-Forwarded-For, Via, "
              "Idempotency-Key, Trailer, X-Ext\r\n"
              "Content-Length: 40\r\n"
              "Idempotency-Key: k1\r\n"
              "X-Forwarded-For: 1.1.1.1\r\n"
              "Trailer: X-Sum\r\n"
              "X-Ext: gone\r\n\r\n",
              &req, out, sizeof(out));
    assert_string_equal(out, "POST / HTTP/1.1\r\n"
                             "Host: h\r\n"
                             "Content-Length: 40\r\n"
                             "Idempotency-Key: k1\r\n"
                             "X-Forwarded-For: 1.1.1.1, 10.0.0.9\r\n"
                             "X-Forwarded-Proto: http\r\n"
                             "X-Forwarded-Host: h\r\n"
                             "Via: 1.1 bulkhead\r\n"
                             "\r\n");
    /* the same rule on the way back: a response keeps its Content-Length */
    bh_span_t start;
    bh_hdr_t h[MAXH];
    int n = split("HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 2\r\n\r\n",
                  &start, h);
    bh_fwd_resp_t resp = {.status = 200, .reason = {"OK", 2}};
    bh_wbuf_t w = {out, 0, sizeof(out) - 1, false};
    assert_true(bh_http_write_response(&w, &resp, h, (size_t)n));
    out[w.n] = '\0';
    assert_string_equal(out, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nVia: 1.1 bulkhead\r\n\r\n");
}

/* An absolute-form target's authority replaces the client's Host (RFC 9112 3.2.2). */
static void test_request_host_override(void **state)
{
    char out[2048];
    bh_fwd_req_t req = {.method = {"GET", 3}, .target = {"/abs", 4}, .host = {"other.example", 13},
                        .client_ip = "::1", .proto = "http"};
    write_req("GET http://other.example/abs HTTP/1.1\r\nHost: localhost\r\nX-A: 1\r\n\r\n", &req,
              out, sizeof(out));
    assert_string_equal(out, "GET /abs HTTP/1.1\r\n"
                             "Host: other.example\r\n"
                             "X-A: 1\r\n"
                             "X-Forwarded-For: ::1\r\n"
                             "X-Forwarded-Proto: http\r\n"
                             "X-Forwarded-Host: other.example\r\n"
                             "Via: 1.1 bulkhead\r\n\r\n");
}

static int target(const char *t, bh_target_t *out)
{
    return bh_http_parse_target((bh_span_t){t, strlen(t)}, out);
}

static void assert_span(bh_span_t s, const char *want)
{
    assert_int_equal(s.n, strlen(want));
    assert_memory_equal(s.p, want, s.n);
}

static void test_parse_target(void **state)
{
    bh_target_t t;
    assert_int_equal(target("/a/b?c=d", &t), 0);
    assert_span(t.path, "/a/b?c=d");
    assert_int_equal(t.authority.n, 0);
    assert_false(t.asterisk);
    assert_int_equal(target("*", &t), 0);
    assert_true(t.asterisk);
    assert_int_equal(target("http://other.example/abs?x=1", &t), 0);
    assert_span(t.authority, "other.example");
    assert_span(t.path, "/abs?x=1");
    assert_int_equal(target("HTTPS://h:8443", &t), 0);
    assert_span(t.authority, "h:8443");
    assert_span(t.path, "/");
    assert_int_equal(target("http://[::1]:80/p", &t), 0);
    assert_span(t.authority, "[::1]:80");
    /* refused */
    const char *bad[] = {"",          "/a#frag",           "http://h/a#f", "#",
                         "ftp://h/a", "http://user@h/a",   "http:///a",    "http:/h/a",
                         "h/a",       "http://h?q=1",      "1http://h/",   "**"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (target(bad[i], &t) != -1)
            fail_msg("target %s accepted", bad[i]);
    }
}

/* The one error table: every row a reply can carry has a real status and an RFC 9209 type, names
 * and messages are there, and the accessors agree with the table for codes outside it. */
static void test_error_table(void **state)
{
    static const struct {
        int err, status;
        const char *name, *type;
    } rows[] = {
#define ROW(name, val, status, ps, code, msg) {val, status, #name, ps},
        BH_ERRNO_MAP(ROW)
#undef ROW
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        int st = bh_err_status(rows[i].err);
        if (rows[i].status == 0) {
            assert_int_equal(st, 500);
            continue;
        }
        assert_int_equal(st, rows[i].status);
        assert_true(st >= 400 && st <= 599);
        if (rows[i].err != BH_EINVAL && rows[i].type == NULL)
            fail_msg("%s is a reply without a Proxy-Status type", rows[i].name);
        assert_string_equal(bh_errname(rows[i].err), rows[i].name);
        assert_string_not_equal(bh_strerror(rows[i].err), "unknown error");
        assert_string_equal(bh_err_sql_code(rows[i].err), "");
    }
    assert_int_equal(bh_err_status(BH_ETE_UNSUPPORTED), 501);
    assert_int_equal(bh_err_status(BH_ESQL_TOO_LARGE), 507);
    assert_int_equal(bh_err_status(-104 /* ECONNRESET */), 502);
    assert_string_equal(bh_errname(-104), "UNKNOWN");
}

static void test_router(void **state)
{
    const char *yaml = "listeners: [ { address: \"127.0.0.1:1\" } ]\n"
                       "upstreams:\n"
                       "  a: { endpoints: [ \"127.0.0.1:2\" ] }\n"
                       "  b: { endpoints: [ \"127.0.0.1:3\" ] }\n"
                       "routes:\n"
                       "  - { match: { host: api.example.com, path_prefix: /v1/ }, upstream: a }\n"
                       "  - { match: { host: \"*.example.org\" }, upstream: b }\n"
                       "  - { match: { path_prefix: /post, methods: [ POST ] }, upstream: b }\n"
                       "  - { match: { path_prefix: / }, upstream: a }\n";
    bh_conf_t *conf = NULL;
    bh_conf_error_t err;
    assert_int_equal(bh_conf_load_string("t.yaml", yaml, strlen(yaml), &conf, &err), 0);
#define M(host, path, m) bh_route_match(conf, (bh_span_t){host, strlen(host)}, \
                                        (bh_span_t){path, strlen(path)}, m)
    assert_ptr_equal(M("API.example.com:8080", "/v1/x", BH_M_GET), &conf->routes[0]);
    assert_ptr_equal(M("api.example.com", "/v2/x", BH_M_GET), &conf->routes[3]);
    assert_ptr_equal(M("www.example.org", "/", BH_M_GET), &conf->routes[1]);
    assert_ptr_equal(M("example.org", "/", BH_M_GET), &conf->routes[3]);
    assert_ptr_equal(M("h", "/post", BH_M_POST), &conf->routes[2]);
    assert_ptr_equal(M("h", "/post", BH_M_GET), &conf->routes[3]);
    assert_ptr_equal(M("[::1]:80", "/", BH_M_GET), &conf->routes[3]);
#undef M
    bh_conf_free(conf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split),
        cmocka_unit_test(test_tokens),
        cmocka_unit_test(test_request_rewrite),
        cmocka_unit_test(test_request_id_field),
        cmocka_unit_test(test_request_chunked_upgrade_strip),
        cmocka_unit_test(test_response_rewrite),
        cmocka_unit_test(test_connection_cannot_remove_protected),
        cmocka_unit_test(test_request_host_override),
        cmocka_unit_test(test_parse_target),
        cmocka_unit_test(test_error_table),
        cmocka_unit_test(test_router),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
