"""Forwarding basics: methods, headers (end-to-end, hop-by-hop, forwarding headers), routing, framing."""
import hashlib
import json

import pytest
import requests

from conftest import proxy_status_error


def seen(info, name):
    """Values of a request header as the upstream received it (from /echo-head JSON)."""
    return [v for k, v in info["headers"] if k.lower() == name.lower()]


def tokens(info, name):
    out = []
    for v in seen(info, name):
        out += [t.strip().lower() for t in v.split(",") if t.strip()]
    return out


@pytest.fixture
def bh(bulkhead, upstream):
    return bulkhead(upstream)


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_methods(bh, method):
    body = b"payload for %s" % method.encode() if method in ("POST", "PUT", "PATCH") else None
    r = requests.request(method, bh.url + "/echo?x=1", data=body, timeout=30)
    assert r.status_code == 200
    info = json.loads(r.headers["X-Echo-Request"])
    assert info["method"] == method
    assert info["target"] == "/echo?x=1"
    assert r.content == (body or b"")
    assert r.headers["X-Upstream"] == "up"


def test_post_body_intact(bh):
    body = bytes(range(256)) * 4000  # 1 MB, all byte values
    r = requests.post(bh.url + "/echo-head", data=body, timeout=30)
    assert r.status_code == 200
    assert r.json()["body_len"] == len(body)
    assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_request_target_and_query_preserved(bh, raw):
    c = raw(bh.port)
    target = "/echo-head/a%2Fb/c?q=%20x&q=y&empty=&flag"
    c.request("GET", target)
    r = c.read_response()
    assert r.status == 200
    assert r.json()["target"] == target


def test_request_headers_forwarded(bh, raw):
    c = raw(bh.port)
    c.request("GET", "/echo-head", headers=[
        ("X-Custom", "one"), ("X-Multi", "a"), ("X-Multi", "b"), ("Accept", "text/plain"),
        ("Authorization", "Bearer abc"), ("Cookie", "a=1; b=2"), ("X-Empty", "")],
        host="Example.Test:8443")
    r = c.read_response()
    assert r.status == 200
    info = r.json()
    assert seen(info, "x-custom") == ["one"]
    # forwarded as the client sent them, field lines in order (not folded into "a, b")
    assert seen(info, "x-multi") == ["a", "b"]
    assert seen(info, "accept") == ["text/plain"]
    assert seen(info, "authorization") == ["Bearer abc"]
    assert seen(info, "cookie") == ["a=1; b=2"]
    assert seen(info, "x-empty") == [""]
    assert seen(info, "host") == ["Example.Test:8443"], "Host is kept as the client sent it"


def test_hop_by_hop_request_headers_removed(bh, raw):
    c = raw(bh.port)
    c.request("GET", "/echo-head", headers=[
        ("Connection", "keep-alive, X-Drop-Me, x-drop-too"),
        ("Keep-Alive", "timeout=5, max=100"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "gzip, trailers"),
        ("Upgrade", "foo/2"),
        ("X-Drop-Me", "secret"),
        ("X-Drop-Too", "secret2"),
        ("X-Keep", "kept"),
    ])
    r = c.read_response()
    assert r.status == 200
    info = r.json()
    names = {k.lower() for k, _ in info["headers"]}
    for h in ("keep-alive", "proxy-connection", "upgrade", "x-drop-me", "x-drop-too"):
        assert h not in names, "hop-by-hop header %s was forwarded: %r" % (h, info["headers"])
    assert "gzip" not in tokens(info, "te"), "the client's TE must not be forwarded"
    # bulkhead may send its own Connection (keep-alive/close) to the upstream, never the client's options
    assert set(tokens(info, "connection")) <= {"keep-alive", "close"}, info["headers"]
    assert seen(info, "x-keep") == ["kept"]


def test_hop_by_hop_response_headers_removed(bulkhead, upstream, raw):
    """?close=1 makes the upstream answer `Connection: close`: that is about the upstream connection only;
    the client's connection stays open and usable."""
    bh = bulkhead(upstream)
    c = raw(bh.port)
    c.request("GET", "/echo-head?close=1")
    r = c.read_response()
    assert r.status == 200
    assert "close" not in r.tokens("connection"), "upstream's Connection: close leaked to the client"
    c.request("GET", "/echo-head")
    assert c.read_response().status == 200


def test_forwarding_headers(bh, raw):
    c = raw(bh.port)
    c.request("GET", "/echo-head", host="front.test")
    info = c.read_response().json()
    assert tokens(info, "x-forwarded-for") == ["127.0.0.1"]
    assert seen(info, "x-forwarded-proto") == ["http"]
    assert seen(info, "x-forwarded-host") == ["front.test"]
    via = ", ".join(seen(info, "via"))
    assert "bulkhead" in via and "1.1" in via, "Via: %r" % via


def test_x_forwarded_for_appended(bh, raw):
    c = raw(bh.port)
    c.request("GET", "/echo-head", headers=[("X-Forwarded-For", "203.0.113.7, 198.51.100.2")])
    info = c.read_response().json()
    assert tokens(info, "x-forwarded-for") == ["203.0.113.7", "198.51.100.2", "127.0.0.1"]


def test_via_appended(bh, raw):
    c = raw(bh.port)
    c.request("GET", "/echo-head", headers=[("Via", "1.0 fred")])
    info = c.read_response().json()
    via = ", ".join(seen(info, "via"))
    assert via.startswith("1.0 fred"), via
    assert "bulkhead" in via.split(",", 1)[1], via


def test_upstream_status_passed_through(bh):
    for status in (200, 201, 400, 404, 500, 502, 503):
        r = requests.get(bh.url + "/status/%d" % status, timeout=30)
        assert r.status_code == status
        assert r.content == b"status %d" % status
        assert proxy_status_error(r) is None, "bulkhead must not claim an upstream's own %d" % status


# ------------------------------------------------------------------------------------------------
# routing

@pytest.fixture
def routed(bulkhead, upstream_factory):
    a = upstream_factory("A")
    b = upstream_factory("B")
    upstreams = {"a": {"endpoints": [a.addr]}, "b": {"endpoints": [b.addr]}}
    routes = [
        {"match": {"host": "api.test", "path_prefix": "/v1/"}, "upstream": "a"},
        {"match": {"path_prefix": "/v1/"}, "upstream": "b"},
        {"match": {"path_prefix": "/strip/"}, "upstream": "b", "strip_prefix": True},
        {"match": {"path_prefix": "/nostrip/"}, "upstream": "a", "strip_prefix": False},
        {"match": {"host": "*.wild.test", "path_prefix": "/"}, "upstream": "b"},
        {"match": {"path_prefix": "/", "methods": ["POST", "DELETE"]}, "upstream": "a"},
    ]
    return bulkhead(upstreams=upstreams, routes=routes)


def route(bh, raw, method, target, host):
    c = raw(bh.port)
    c.request(method, target, host=host, body=b"" if method == "POST" else None)
    return c.read_response(method)


@pytest.mark.parametrize("method,target,host,up,path", [
    ("GET", "/v1/users", "api.test", "A", "/v1/users"),
    ("GET", "/v1/users", "api.test:8080", "A", "/v1/users"),
    ("GET", "/v1/users", "API.Test", "A", "/v1/users"),
    ("GET", "/v1/users", "other.test", "B", "/v1/users"),
    ("GET", "/strip/users?id=3", "x.test", "B", "/users"),
    ("GET", "/strip/", "x.test", "B", "/"),
    ("GET", "/nostrip/users", "x.test", "A", "/nostrip/users"),
    ("GET", "/anything", "sub.wild.test", "B", "/anything"),
    ("GET", "/anything", "a.b.wild.test:99", "B", "/anything"),
    ("POST", "/anything", "x.test", "A", "/anything"),
    ("DELETE", "/v1/x", "x.test", "B", "/v1/x"),  # first match wins over the later method route
])
def test_routing(routed, raw, method, target, host, up, path):
    r = route(routed, raw, method, target, host)
    assert r.status == 200, r
    assert r.header("X-Upstream") == up
    assert r.json()["path"] == path
    if "?" in target:
        assert r.json()["query"] == target.split("?", 1)[1]


@pytest.mark.parametrize("method,target,host", [
    ("GET", "/anything", "x.test"),        # POST/DELETE-only catch-all
    ("GET", "/v1", "x.test"),              # "/v1" does not match prefix "/v1/"
    ("PUT", "/anything", "wild.test.evil"),
])
def test_no_route_404(routed, raw, method, target, host):
    r = route(routed, raw, method, target, host)
    assert r.status == 404
    assert proxy_status_error(r) == "destination_not_found", r.headers
    assert r.header("X-Upstream") is None


def test_no_route_keeps_connection_usable(routed, raw):
    c = raw(routed.port)
    c.request("GET", "/nowhere", host="x.test")
    assert c.read_response().status == 404
    c.request("GET", "/v1/ok", host="x.test")
    r = c.read_response()
    assert r.status == 200 and r.header("X-Upstream") == "B"


# ------------------------------------------------------------------------------------------------
# message framing

def test_head_204_304_framing_on_one_connection(bh, raw):
    c = raw(bh.port)
    c.request("HEAD", "/bytes?n=1000")
    r = c.read_response("HEAD")
    assert r.status == 200 and r.header("Content-Length") == "1000" and r.body == b""
    c.request("HEAD", "/chunked?n=5000")
    r = c.read_response("HEAD")
    assert r.status == 200 and r.body == b""
    c.request("GET", "/status/204")
    r = c.read_response()
    assert r.status == 204 and r.body == b""
    # RFC 9110 8.6: a server MUST NOT send Content-Length in a 204 (the upstream sends none)
    assert r.header("Content-Length") is None and r.header("Transfer-Encoding") is None, r
    c.request("GET", "/status/304", headers=[("If-None-Match", '"v1"')])
    r = c.read_response()
    assert r.status == 304 and r.body == b"" and r.header("ETag") == '"v1"'
    assert r.header("Transfer-Encoding") is None
    c.request("GET", "/echo-head")
    r = c.read_response()
    assert r.status == 200 and r.json()["path"] == "/echo-head"
    assert c.buf == b"", "stray bytes after the responses: %r" % c.buf


def test_head_request_forwarded_as_head(bh, raw):
    c = raw(bh.port)
    c.request("HEAD", "/echo")
    r = c.read_response("HEAD")
    assert r.status == 200
    assert json.loads(r.header("X-Echo-Request"))["method"] == "HEAD"
    c.request("GET", "/echo-head")
    assert c.read_response().status == 200


def test_chunked_request_body(bh, raw):
    c = raw(bh.port)
    body = b"".join(bytes([i]) * (i * 37 + 1) for i in range(60))
    chunks, i = b"", 0
    sizes = [1, 7, 100, 1000, 3]
    k = 0
    while i < len(body):
        n = sizes[k % len(sizes)]
        piece = body[i:i + n]
        ext = b";name=val" if k % 2 else b""
        chunks += b"%x%s\r\n%s\r\n" % (len(piece), ext, piece)
        i += n
        k += 1
    chunks += b"0\r\nX-Trailer: t\r\n\r\n"
    c.request("POST", "/echo-head", headers=[("Transfer-Encoding", "chunked")])
    c.send(chunks)
    r = c.read_response()
    assert r.status == 200
    info = r.json()
    assert info["body_len"] == len(body)
    assert info["body_sha256"] == hashlib.sha256(body).hexdigest()
    c.request("GET", "/echo-head")
    assert c.read_response().status == 200


def test_chunked_request_body_streamed_by_requests(bh):
    def gen():
        for i in range(50):
            yield bytes([i % 256]) * 10000
    r = requests.post(bh.url + "/sink", data=gen(), timeout=30)
    assert r.status_code == 200
    expected = b"".join(bytes([i % 256]) * 10000 for i in range(50))
    assert r.json() == {"len": len(expected), "sha256": hashlib.sha256(expected).hexdigest()}


def test_chunked_response_body(bh, raw):
    c = raw(bh.port)
    c.request("GET", "/chunked?n=300001&size=777")
    r = c.read_response()
    assert r.status == 200
    assert len(r.body) == 300001
    pattern = bytes(range(256))
    assert r.body[:512] == pattern * 2
    c.request("GET", "/echo-head")
    assert c.read_response().status == 200


def test_chunked_response_trailers_do_not_break_framing(bh, raw):
    c = raw(bh.port)
    c.request("GET", "/chunked?n=5000&size=1000&trailer=1", headers=[("TE", "trailers")])
    r = c.read_response()
    assert r.status == 200 and len(r.body) == 5000
    c.request("GET", "/echo-head")
    assert c.read_response().status == 200


def test_http10_client_gets_no_chunked(bh, raw):
    c = raw(bh.port)
    c.send(b"GET /chunked?n=5000&size=100 HTTP/1.0\r\nHost: x\r\n\r\n")
    r = c.read_response()
    assert r.status == 200
    assert "chunked" not in r.tokens("transfer-encoding"), "chunked sent to an HTTP/1.0 client"
    assert r.body == (bytes(range(256)) * 20)[:5000]
    assert c.wait_closed(), "HTTP/1.0 without keep-alive: bulkhead closes after the response"


def test_content_length_response_exact(bh, raw):
    c = raw(bh.port)
    c.request("GET", "/bytes?n=123457")
    r = c.read_response()
    assert r.status == 200 and r.header("Content-Length") == "123457"
    assert len(r.body) == 123457
    c.request("GET", "/bytes?n=0")
    r = c.read_response()
    assert r.status == 200 and r.body == b""
    c.request("GET", "/echo-head")
    assert c.read_response().status == 200


def test_connection_close_from_client(bh, raw):
    c = raw(bh.port)
    c.request("GET", "/echo-head", headers=[("Connection", "close")])
    r = c.read_response()
    assert r.status == 200
    assert "close" in r.tokens("connection")
    assert c.wait_closed()
