"""Requests that could be read two ways (issue 8): each finding of the smuggling review has a test here
that failed before its fix. A request bulkhead refuses gets its own 4xx/5xx with Proxy-Status, nothing
reaches the upstream, and the connection closes; a request it forwards reaches the upstream with the
framing bulkhead read. The differential corpus (tests/integration/smuggling/) covers the wider space."""
import socket
import threading

import pytest

from conftest import PeerClosed, RawClient, proxy_status_error


def exchange(bh, data, expect=1, host=b"localhost"):
    """Sends raw bytes on a fresh connection and reads the `expect` responses they should get. When
    bulkhead keeps the connection, a sentinel request follows and must get the next response: proof
    that no extra request was answered in between (responses come in order). The client never
    half-closes early: that aborts a request still waiting for its upstream connection."""
    responses = []
    with RawClient(bh.port) as c:
        c.send(data)
        try:
            while len(responses) < expect:
                responses.append(c.read_response())
        except (PeerClosed, ConnectionError):
            return responses
        if responses and responses[-1].header("connection") == "close":
            assert c.wait_closed()
            return responses
        c.send(b"GET /echo-head?sentinel HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.json()["target"] == "/echo-head?sentinel", \
            "an extra response before the sentinel's: %r" % (r,)
    return responses


def forwarded(upstream):
    """What the upstream received, the sentinels left out."""
    return [e for e in upstream.log() if e["target"] != "/echo-head?sentinel"]


def forwarded_names(upstream):
    """The field names of the one request the upstream received (lower case)."""
    (entry,) = forwarded(upstream)
    return {k.lower() for k, _ in entry["headers"]}


def assert_refused(bh, upstream, data, status, error="http_request_error"):
    with RawClient(bh.port) as c:
        c.send(data)
        r = c.read_response()
        assert r.status == status, (r.status, r.body)
        assert proxy_status_error(r) == error
        assert r.header("connection") == "close"
        assert c.wait_closed(), "bulkhead kept the connection after a framing error"
    assert forwarded(upstream) == [], "a refused request reached the upstream"
    return r


SMUGGLED = b"GET /admin HTTP/1.1\r\nHost: localhost\r\n\r\n"
assert len(SMUGGLED) == 40


@pytest.mark.parametrize("connection", ["Content-Length", "keep-alive, Content-Length",
                                        "close, content-length"])
def test_connection_cannot_remove_content_length(bulkhead, upstream, connection):
    bh = bulkhead(upstream)
    data = (b"POST /echo-head HTTP/1.1\r\nHost: localhost\r\nConnection: " + connection.encode() +
            b"\r\nContent-Length: 40\r\n\r\n" + SMUGGLED)
    responses = exchange(bh, data)
    assert [r.status for r in responses] == [200]
    log = forwarded(upstream)
    assert [(e["method"], e["path"]) for e in log] == [("POST", "/echo-head")], log
    assert responses[0].json()["body_len"] == 40
    assert ["Content-Length", "40"] in log[0]["headers"]


def test_connection_cannot_remove_host_or_forwarding_fields(bulkhead, upstream):
    bh = bulkhead(upstream)
    data = (b"GET /echo-head HTTP/1.1\r\nHost: localhost\r\n"
            b"Connection: Host, X-Forwarded-For, Via, Idempotency-Key, X-Hop\r\n"
            b"Idempotency-Key: k-1\r\nX-Hop: 1\r\nX-Kept: 2\r\n\r\n")
    responses = exchange(bh, data)
    assert [r.status for r in responses] == [200]
    (entry,) = forwarded(upstream)
    names = {k.lower(): v for k, v in entry["headers"]}
    assert names["host"] == "localhost"
    assert names["idempotency-key"] == "k-1"
    assert names["x-forwarded-for"] == "127.0.0.1"
    assert names["via"] == "1.1 bulkhead"
    assert names["x-kept"] == "2"
    assert "x-hop" not in names  # a real hop-by-hop extension is still removed


class OneShotUpstream:
    """A real socket that answers every request on a connection with the same raw response bytes."""

    def __init__(self, response):
        self.response = response
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                buf = b""
                while b"\r\n\r\n" not in buf:
                    d = conn.recv(65536)
                    if not d:
                        break
                    buf += d
                if buf:
                    conn.sendall(self.response)
                    try:
                        while conn.recv(65536):
                            pass
                    except OSError:
                        pass

    def close(self):
        self.sock.close()


def test_response_connection_cannot_remove_content_length(bulkhead):
    up = OneShotUpstream(b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 5\r\n"
                         b"\r\nhello")
    try:
        bh = bulkhead(up.addr)
        with RawClient(bh.port) as c:
            c.request("GET", "/")
            r = c.read_response()
            assert r.status == 200
            assert r.header("content-length") == "5"
            assert r.body == b"hello"
    finally:
        up.close()


@pytest.mark.parametrize("line", [b"GET /echo-head  HTTP/1.1", b"GET  /echo-head HTTP/1.1",
                                  b"GET   /echo-head   HTTP/1.1"])
def test_request_line_is_not_split_twice(bulkhead, upstream, line):
    bh = bulkhead(upstream, routes=[{"match": {"path_prefix": "/echo-head"}, "upstream": "u"}])
    responses = exchange(bh, line + b"\r\nHost: localhost\r\n\r\n")
    statuses = [r.status for r in responses]
    if statuses == [200]:
        (entry,) = forwarded(upstream)
        assert entry["target"] == "/echo-head"
    else:  # refusing runs of spaces is safe too, but then with Proxy-Status and nothing forwarded
        assert len(responses) == 1 and statuses[0] == 400, statuses
        assert proxy_status_error(responses[0]) == "http_request_error"
        assert forwarded(upstream) == []


def test_http10_with_transfer_encoding_is_refused(bulkhead, upstream):
    bh = bulkhead(upstream)
    data = (b"POST /echo HTTP/1.0\r\nHost: localhost\r\nConnection: keep-alive\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            b"GET /second HTTP/1.0\r\nHost: localhost\r\n\r\n")
    r = assert_refused(bh, upstream, data, 400)
    assert "framing" in r.header("proxy-status")


def test_absolute_form_authority_wins_over_host(bulkhead, upstream):
    bh = bulkhead(upstream, routes=[{"match": {"host": "other.example", "path_prefix": "/"},
                                     "upstream": "u"}])
    responses = exchange(bh, b"GET http://other.example/abs?x=1 HTTP/1.1\r\nHost: localhost\r\n\r\n",
                         host=b"other.example")
    assert [r.status for r in responses] == [200]
    (entry,) = forwarded(upstream)
    assert entry["target"] == "/abs?x=1"
    hosts = [v for k, v in entry["headers"] if k.lower() == "host"]
    assert hosts == ["other.example"]
    # and the Host alone no longer routes a request whose target names another authority
    with RawClient(bh.port) as c:
        c.send(b"GET http://localhost/abs HTTP/1.1\r\nHost: other.example\r\n\r\n")
        r = c.read_response()
        assert r.status == 404 and proxy_status_error(r) == "destination_not_found"
    assert len(forwarded(upstream)) == 1


@pytest.mark.parametrize("target", [b"http://user@localhost/a", b"ftp://localhost/a",
                                    b"http:///a"])
def test_bad_absolute_form_is_refused(bulkhead, upstream, target):
    bh = bulkhead(upstream)
    assert_refused(bh, upstream, b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\n\r\n", 400)


@pytest.mark.parametrize("target", [b"/a#frag", b"/a?q=1#frag", b"http://localhost/a#f"])
def test_fragment_is_refused(bulkhead, upstream, target):
    bh = bulkhead(upstream)
    r = assert_refused(bh, upstream, b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\n\r\n",
                       400)
    assert "target" in r.header("proxy-status")


@pytest.mark.parametrize("te", [b"gzip, chunked", b"deflate,chunked", b"x-custom, chunked"])
def test_transfer_coding_other_than_chunked_is_501(bulkhead, upstream, te):
    bh = bulkhead(upstream)
    data = (b"POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: " + te +
            b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert_refused(bh, upstream, data, 501)


def test_chunked_twice_is_refused(bulkhead, upstream):
    bh = bulkhead(upstream)
    data = (b"POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert_refused(bh, upstream, data, 400)


def test_asterisk_form_only_for_options(bulkhead, upstream):
    bh = bulkhead(upstream)
    assert_refused(bh, upstream, b"GET * HTTP/1.1\r\nHost: localhost\r\n\r\n", 400)
    responses = exchange(bh, b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert [r.status for r in responses] == [200]
    (entry,) = forwarded(upstream)
    assert (entry["method"], entry["target"]) == ("OPTIONS", "*")


def test_proxy_connection_does_not_make_an_upgrade(bulkhead, upstream):
    """llhttp reads Proxy-Connection like Connection; bulkhead forwards an Upgrade only when the
    request's own Connection asks for it, so the upstream never sees one bulkhead did not mean."""
    bh = bulkhead(upstream)
    data = (b"GET /echo-head HTTP/1.1\r\nHost: localhost\r\nProxy-Connection: upgrade\r\n"
            b"Upgrade: websocket\r\n\r\nGET /echo-head?n=2 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    responses = exchange(bh, data, expect=2)
    assert [r.status for r in responses] == [200, 200]
    log = forwarded(upstream)
    assert [e["target"] for e in log] == ["/echo-head", "/echo-head?n=2"]
    for e in log:
        names = {k.lower() for k, _ in e["headers"]}
        assert "upgrade" not in names and "connection" not in names


def test_trailer_field_is_not_forwarded_without_trailers(bulkhead, upstream):
    bh = bulkhead(upstream)
    data = (b"POST /echo-head HTTP/1.1\r\nHost: localhost\r\nTrailer: X-Sum\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n")
    responses = exchange(bh, data)
    assert [r.status for r in responses] == [200]
    assert responses[0].json()["body_len"] == 5
    assert "trailer" not in forwarded_names(upstream)


def test_h2c_upgrade_is_not_forwarded(bulkhead, upstream):
    """An h2c upgrade would open a tunnel in which the client speaks HTTP/2 to the upstream past every
    route (h2c smuggling): bulkhead forwards the request without Upgrade, as plain HTTP/1.1."""
    bh = bulkhead(upstream)
    data = (b"GET /echo-head HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
    responses = exchange(bh, data)
    assert [r.status for r in responses] == [200]
    names = forwarded_names(upstream)
    assert not names & {"upgrade", "connection", "http2-settings"}, names


def test_http09_line_is_refused_at_once(bulkhead, upstream):
    """Strict llhttp waits after "GET /x\r\n" for more; bulkhead answers 400 as soon as the line
    ended without a version, instead of holding the client until header_timeout."""
    bh = bulkhead(upstream, limits={"header_timeout": "60s"})
    assert_refused(bh, upstream, b"GET /echo-head\r\n", 400)


def test_empty_lines_before_a_request_are_skipped(bulkhead, upstream):
    bh = bulkhead(upstream)
    with RawClient(bh.port) as c:
        c.send(b"\r\n")  # alone in its read: not a request line without a version
        c.send(b"\r\nGET /echo-head HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert c.read_response().status == 200


def test_http10_without_host_gets_the_endpoint_as_host(bulkhead, upstream):
    """What goes upstream is HTTP/1.1, which needs a Host: an HTTP/1.0 request without one is sent
    with the endpoint's authority."""
    bh = bulkhead(upstream)
    with RawClient(bh.port) as c:
        c.send(b"GET /echo-head HTTP/1.0\r\n\r\n")
        r = c.read_response()
        assert r.status == 200
    (entry,) = forwarded(upstream)
    assert [v for k, v in entry["headers"] if k.lower() == "host"] == [upstream.addr]
