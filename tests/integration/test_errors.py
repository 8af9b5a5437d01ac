"""Upstream failures: each cause becomes bulkhead's own response with its status and Proxy-Status error
type (RFC 9209); failures after the response head is sent close the client connection."""
import json
import socket

import pytest
import requests

from conftest import RawClient, free_port, proxy_status_error, resilient_upstream, wait_until


def assert_bulkhead_error(r, status, errors):
    errors = (errors,) if isinstance(errors, str) else tuple(errors)
    got_status = r.status if hasattr(r, "status") else r.status_code
    assert got_status == status, (got_status, getattr(r, "headers", None))
    err = proxy_status_error(r)
    assert err in errors, "Proxy-Status error %r, expected one of %r" % (err, errors)


def get(bh, path, **kw):
    with RawClient(bh.port) as c:
        c.request(kw.pop("method", "GET"), path, **kw)
        return c.read_response()


def test_connection_refused_502(bulkhead):
    closed = "127.0.0.1:%d" % free_port()  # nothing listens there
    bh = bulkhead(closed, timeouts={"connect": "5s"})
    r = get(bh, "/echo-head")
    assert_bulkhead_error(r, 502, "connection_refused")
    # and again: bulkhead keeps answering (nothing cached in a broken state)
    assert_bulkhead_error(get(bh, "/echo-head"), 502, "connection_refused")


def test_first_byte_timeout_504(bulkhead, upstream):
    bh = bulkhead(upstream, timeouts={"first_byte": "500ms", "total": "60s"})
    r = get(bh, "/hold?id=fb")
    assert_bulkhead_error(r, 504, "http_response_timeout")
    upstream.release("fb")
    # the timed-out upstream connection is closed, never handed to the next request
    wait_until(lambda: upstream.stats()["open_connections"] == 0,
               what="bulkhead to close the timed-out upstream connection")
    r = requests.get(bh.url + "/echo-head", timeout=30)
    assert r.status_code == 200
    assert r.headers["X-Upstream-Conn"] == "2"


def test_first_byte_timeout_with_delay_504(bulkhead, upstream):
    bh = bulkhead(upstream, timeouts={"first_byte": "500ms", "total": "60s"})
    assert_bulkhead_error(get(bh, "/delay?ms=5000"), 504, "http_response_timeout")


def test_connect_timeout_504(bulkhead, black_hole):
    bh = bulkhead(black_hole, timeouts={"connect": "300ms", "first_byte": "30s", "total": "60s"})
    r = get(bh, "/echo-head")
    assert_bulkhead_error(r, 504, "connection_timeout")


@pytest.mark.parametrize("path", ["/close-early", "/reset"])
def test_upstream_closes_without_response_502(bulkhead, upstream, path):
    bh = bulkhead(upstream)
    r = get(bh, path)
    assert_bulkhead_error(r, 502, ("connection_terminated", "http_protocol_error"))
    assert requests.get(bh.url + "/echo-head", timeout=30).status_code == 200


def test_upstream_closes_without_response_post_502(bulkhead, upstream):
    bh = bulkhead(upstream)
    r = get(bh, "/close-early", method="POST", body=b"some body")
    assert_bulkhead_error(r, 502, ("connection_terminated", "http_protocol_error"))


@pytest.mark.parametrize("path", ["/garbage", "/bad-length"])
def test_upstream_invalid_response_502(bulkhead, upstream, path):
    bh = bulkhead(upstream)
    r = get(bh, path)
    assert_bulkhead_error(r, 502, "http_protocol_error")


@pytest.mark.parametrize("code", ["", "000", "099", "600", "999"])
def test_upstream_status_out_of_range_502(bulkhead, upstream, code):
    """Status 0 once passed for an interim response (fuzz_response): llhttp then read its body as
    the start of the next response. A code outside 100-599 is a broken response."""
    bh = bulkhead(upstream)
    r = get(bh, "/bad-status?code=" + code)
    assert_bulkhead_error(r, 502, "http_protocol_error")


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_upstream_interim_response_with_a_body_502(bulkhead, upstream, framing):
    """RFC 9110 15.2: a 1xx ends with its head. llhttp reads a body it announces; passing it on
    would splice the upstream's bytes into the final response (fuzz_response)."""
    bh = bulkhead(upstream)
    r = get(bh, "/interim-body?framing=" + framing)
    assert_bulkhead_error(r, 502, "http_protocol_error")


@pytest.mark.parametrize("code", ["204", "304"])
@pytest.mark.parametrize("extra", [False, True], ids=["no-body", "bytes-after"])
def test_bodiless_status_with_content_length_ends_at_its_head(bulkhead, upstream, code, extra):
    """RFC 9112 6.3: a 204 or 304 ends with its head whatever Content-Length says (a 304 carries
    the representation's). llhttp read the announced body (fuzz_response): bulkhead waited for
    bytes that never come, or passed bytes after the head to the client as part of its stream."""
    bh = bulkhead(upstream)
    with RawClient(bh.port) as c:
        c.request("GET", "/bodiless?code=%s%s" % (code, "&extra=1" if extra else ""))
        r = c.read_response()
        assert r.status == int(code)
        c.request("GET", "/echo-head")
        r = c.read_response()
        assert r.status == 200, r
        assert json.loads(r.body)["path"] == "/echo-head"  # the upstream's own answer to it


def test_total_timeout_504(bulkhead, upstream):
    bh = bulkhead(upstream, timeouts={"first_byte": "60s", "total": "500ms"})
    r = get(bh, "/hold?id=total")
    assert_bulkhead_error(r, 504, "http_response_timeout")
    upstream.release("total")


def test_route_total_timeout_override(bulkhead, upstream):
    """A route's timeouts override the upstream's: only the /short/ route times out."""
    bh = bulkhead(upstreams={"u": {"endpoints": [upstream.addr], "timeouts": {"total": "60s"}}},
                  routes=[{"match": {"path_prefix": "/short/"}, "upstream": "u", "strip_prefix": True,
                           "timeouts": {"total": "300ms"}},
                          {"match": {"path_prefix": "/"}, "upstream": "u"}])
    assert_bulkhead_error(get(bh, "/short/hold?id=r1"), 504, "http_response_timeout")
    upstream.release("r1")
    wait_until(lambda: upstream.stats()["holding"] == 0, what="the first hold to end")
    with RawClient(bh.port) as c:
        c.request("GET", "/hold?id=r2")
        wait_until(lambda: upstream.stats()["holding"] == 1, what="the long-route request to be held")
        upstream.release("r2")
        r = c.read_response()
        assert r.status == 200 and r.body == b"released"


def test_idle_timeout_mid_body_closes_client(bulkhead, upstream):
    """The upstream sends a head and half the body, then stalls: the idle timeout fires after the head
    was forwarded, so bulkhead can only cut the client connection short."""
    bh = bulkhead(upstream, timeouts={"idle": "500ms", "first_byte": "30s", "total": "60s"})
    with RawClient(bh.port) as c:
        c.request("GET", "/stall?n=20000&id=st")
        _, status, _, headers, _ = c.read_head()
        assert status == 200
        got = len(c.buf)
        c.buf = b""
        while True:
            try:
                data = c.sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            got += len(data)
        assert got == 10000, "expected the 10000 bytes sent before the stall, got %d" % got
    upstream.release("st")
    wait_until(lambda: upstream.stats()["open_connections"] == 0,
               what="bulkhead to close the stalled upstream connection")


def test_upstream_dies_mid_body_closes_client(bulkhead, upstream):
    bh = bulkhead(upstream)
    with RawClient(bh.port) as c:
        c.request("GET", "/truncate?n=100000")
        _, status, _, _, _ = c.read_head()
        assert status == 200
        got = len(c.buf)
        c.buf = b""
        while True:
            try:
                data = c.sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            got += len(data)
        assert got == 50000


def test_every_bulkhead_response_has_proxy_status(bulkhead, upstream):
    """A mix of local failures on one proxy: each response that bulkhead made itself names its cause."""
    bh = bulkhead(upstreams={"u": {"endpoints": [upstream.addr], "timeouts": {"first_byte": "300ms"}},
                             "dead": {"endpoints": ["127.0.0.1:%d" % free_port()]}},
                  routes=[{"match": {"path_prefix": "/dead/"}, "upstream": "dead"},
                          {"match": {"path_prefix": "/u/"}, "upstream": "u", "strip_prefix": True}])
    cases = [("/dead/x", 502), ("/u/close-early", 502), ("/u/hold?id=e", 504), ("/nowhere", 404)]
    for path, status in cases:
        r = get(bh, path)
        assert r.status == status, (path, r)
        assert r.header("Proxy-Status") and r.header("Proxy-Status").startswith("bulkhead"), (path, r)
        assert proxy_status_error(r), (path, r.header("Proxy-Status"))
        assert r.header("X-Upstream") is None
    upstream.release("e")
    r = get(bh, "/u/status/502")
    assert r.status == 502 and r.header("Proxy-Status") is None, "the upstream's own 502 is not bulkhead's"


def test_upstream_head_too_large_502_sent_once(bulkhead, upstream):
    """The upstream answers with a 64 KiB header: bulkhead cannot hold the head, so the client gets 502
    http_response_header_section_size and the upstream saw the request once (a protocol error is not
    retried: the request reached it). Guards against a head cut to fit or passed on in pieces."""
    bh = bulkhead(upstream)
    r = get(bh, "/big-head?n=65536")
    assert_bulkhead_error(r, 502, "http_response_header_section_size")
    assert upstream.stats()["requests"].get("GET /big-head") == 1, upstream.stats()["requests"]
    assert get(bh, "/big-head?n=100").status == 200  # a head that fits goes through


def test_upstream_half_close_before_response(bulkhead, upstream):
    """The upstream reads a POST and shuts down its write side without answering (a FIN while it
    keeps reading). The POST may have been acted on, so it is not retried: 502 connection_terminated,
    and the upstream saw it exactly once. A GET is retried (reset before a response) up to the
    attempts. Guards against a half-close taken as a complete empty response, or a POST sent twice."""
    bh = bulkhead(upstream)
    r = get(bh, "/half-close", method="POST", body=b"order #1")
    assert_bulkhead_error(r, 502, "connection_terminated")
    assert upstream.stats()["requests"].get("POST /half-close") == 1, upstream.stats()["requests"]
    r = get(bh, "/half-close")
    assert_bulkhead_error(r, 502, "connection_terminated")
    assert upstream.stats()["requests"].get("GET /half-close") == 3, upstream.stats()["requests"]
    assert get(bh, "/echo-head").status == 200


def test_upstream_half_close_after_a_complete_response(bulkhead, upstream):
    """The upstream answers a complete keep-alive response, then shuts down its write side: that
    connection must not carry the next request. A POST then goes on a new connection, once."""
    bh = bulkhead(upstream)
    with RawClient(bh.port) as c:
        c.request("GET", "/fin-after-response")
        r = c.read_response()
        assert (r.status, r.body) == (200, b"done"), r
        wait_until(lambda: upstream.stats()["open_connections"] == 0, what="the half-closed connection to go")
        c.request("POST", "/echo-head", body=b"order #3")
        assert c.read_response().status == 200
    log = upstream.log()
    first = [e for e in log if e["path"] == "/fin-after-response"]
    post = [e for e in log if e["method"] == "POST"]
    assert len(post) == 1 and post[0]["conn"] != first[0]["conn"], (first, post)


@pytest.mark.parametrize("path", ["/garbage", "/bad-length"])
def test_upstream_invalid_response_to_a_post_sent_once(bulkhead, upstream, path):
    """An invalid answer means the request reached the upstream: a POST gets 502 http_protocol_error
    and the upstream saw it exactly once, even with every retry condition on. Guards against a retry
    of a request the upstream may have acted on."""
    retry = {"attempts": 3, "methods": "all",
             "on": ["connect-failure", "reset-before-response", "gateway-error", "5xx"]}
    bh = bulkhead(upstreams={"u": resilient_upstream(upstream, retry=retry)})
    r = get(bh, path, method="POST", body=b"order #2")
    assert_bulkhead_error(r, 502, "http_protocol_error")
    assert upstream.stats()["requests"].get("POST " + path) == 1, upstream.stats()["requests"]
