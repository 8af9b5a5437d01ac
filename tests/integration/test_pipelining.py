"""HTTP/1.1 pipelining: several requests in one write, responses in order on the same connection."""
import hashlib

import pytest

from conftest import build_request, proxy_status_error, wait_until


@pytest.fixture
def bh(bulkhead, upstream):
    return bulkhead(upstream, pool={"max_connections": 4})


def test_pipelined_gets_in_order(bh, raw):
    c = raw(bh.port)
    c.send(b"".join(build_request("GET", "/echo-head?i=%d" % i) for i in range(10)))
    for i in range(10):
        r = c.read_response()
        assert r.status == 200
        assert r.json()["query"] == "i=%d" % i


def test_pipelined_many(bh, raw):
    c = raw(bh.port)
    c.send(b"".join(build_request("GET", "/echo-head?i=%d" % i) for i in range(100)))
    assert [c.read_response().json()["query"] for _ in range(100)] == ["i=%d" % i for i in range(100)]


def test_pipelined_with_bodies_and_mixed_framing(bh, raw):
    body1 = b"first body " * 100
    body3 = bytes(range(256)) * 50
    chunked = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    c = raw(bh.port)
    c.send(build_request("POST", "/echo-head?n=1", body=body1)
           + build_request("POST", "/echo-head?n=2", headers=[("Transfer-Encoding", "chunked")]) + chunked
           + build_request("PUT", "/echo?n=3", body=body3)
           + build_request("HEAD", "/bytes?n=777")
           + build_request("GET", "/status/204")
           + build_request("GET", "/status/304")
           + build_request("GET", "/chunked?n=3000&size=100")
           + build_request("GET", "/echo-head?n=8"))
    r = c.read_response()
    assert r.json()["query"] == "n=1" and r.json()["body_sha256"] == hashlib.sha256(body1).hexdigest()
    r = c.read_response()
    assert r.json()["query"] == "n=2" and r.json()["body_len"] == 11
    r = c.read_response()
    assert r.status == 200 and r.body == body3
    r = c.read_response("HEAD")
    assert r.status == 200 and r.header("Content-Length") == "777" and r.body == b""
    assert c.read_response().status == 204
    assert c.read_response().status == 304
    r = c.read_response()
    assert r.status == 200 and len(r.body) == 3000
    r = c.read_response()
    assert r.json()["query"] == "n=8"
    assert c.buf == b""


def test_pipelined_order_kept_while_first_is_slow(bh, raw, upstream):
    c = raw(bh.port)
    c.send(build_request("GET", "/hold?id=pipe") + build_request("GET", "/echo-head?second=1"))
    wait_until(lambda: upstream.stats()["holding"] == 1, what="the first request to reach the upstream")
    upstream.release("pipe")
    r1 = c.read_response()
    assert r1.status == 200 and r1.body == b"released", "responses out of order: %r" % r1
    r2 = c.read_response()
    assert r2.status == 200 and r2.json()["query"] == "second=1"


def test_pipelined_split_across_writes(bh, raw):
    """Request boundaries that fall in the middle of a read."""
    data = b"".join(build_request("POST", "/echo-head?i=%d" % i, body=b"x" * i) for i in range(20))
    c = raw(bh.port)
    for k in range(0, len(data), 37):
        c.send(data[k:k + 37])
    for i in range(20):
        r = c.read_response()
        assert r.json()["query"] == "i=%d" % i and r.json()["body_len"] == i


def test_pipelined_then_malformed(bh, raw, upstream):
    c = raw(bh.port)
    c.send(build_request("GET", "/echo-head?i=1") + b"BROKEN REQUEST\r\n\r\n"
           + build_request("GET", "/echo-head?i=3"))
    r = c.read_response()
    assert r.status == 200 and r.json()["query"] == "i=1"
    r = c.read_response()
    assert r.status == 400 and proxy_status_error(r) == "http_request_error"
    assert c.wait_closed()
    assert upstream.stats()["paths"]["/echo-head"] == 1, "nothing after the malformed request is forwarded"


def test_pipelined_connection_close_stops(bh, raw, upstream):
    c = raw(bh.port)
    c.send(build_request("GET", "/echo-head?i=1")
           + build_request("GET", "/echo-head?i=2", headers=[("Connection", "close")])
           + build_request("GET", "/echo-head?i=3"))
    assert c.read_response().json()["query"] == "i=1"
    r = c.read_response()
    assert r.json()["query"] == "i=2" and "close" in r.tokens("connection")
    assert c.wait_closed()
    assert upstream.stats()["paths"]["/echo-head"] == 2
