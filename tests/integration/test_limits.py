"""Downstream limits and strict parsing: each bad request gets its 4xx with a Proxy-Status error type,
and bulkhead closes the connection after it."""
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import RawClient, proxy_status_error, resilient_upstream, wait_until

LIMITS = {
    "max_header_bytes": "4KiB",
    "max_headers": 20,
    "max_body_bytes": 1000,
    "header_timeout": "1s",
    "body_timeout": "1s",
}


@pytest.fixture
def bh(bulkhead, upstream):
    # upstream deadlines far above the client timeouts, so that only the client timeouts can answer
    return bulkhead(upstream, limits=LIMITS, timeouts={"total": "300s", "first_byte": "300s",
                                                       "idle": "300s"})


def expect_error(c, statuses, error="http_request_error"):
    """Reads bulkhead's own error response, then requires bulkhead to close the connection."""
    statuses = (statuses,) if isinstance(statuses, int) else tuple(statuses)
    r = c.read_response()
    assert r.status in statuses, r
    assert r.header("X-Upstream") is None, "this error should come from bulkhead, not the upstream"
    assert proxy_status_error(r) == error, "Proxy-Status: %r" % r.header("Proxy-Status")
    assert c.wait_closed(), "bulkhead should close the connection after a %d" % r.status
    return r


def ok(c, method="GET"):
    r = c.read_response(method)
    assert r.status == 200, r
    return r


@pytest.mark.parametrize("data", [
    b"GARBAGE\r\n\r\n",
    b"GET /\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTX/1.1\r\nHost: x\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 40 + b"\r\n\r\n",
], ids=["garbage", "http09", "extra-token", "bad-method-char", "bad-version", "tls-hello"])
def test_malformed_request_line(bh, raw, data):
    c = raw(bh.port)
    c.send(data)
    expect_error(c, 400)


@pytest.mark.parametrize("header", [
    b"X-Bad\x01Name: v",
    b"Bad Name: v",
    b"X-Nul: a\x00b",
    b"Host : x",          # whitespace before the colon: RFC 9112 5.1 says reject
    b": no-name",
    b"X-Ctl: a\x7fb",
], ids=["ctl-in-name", "space-in-name", "nul-in-value", "space-before-colon", "empty-name",
        "del-in-value"])
def test_bad_header_bytes(bh, raw, header):
    c = raw(bh.port)
    c.send(b"GET /echo-head HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n\r\n")
    expect_error(c, 400)
    assert bh.proc.poll() is None


def test_obs_fold_rejected(bh, raw, upstream):
    """RFC 9112 5.2 lets a server reject obsolete line folding or unfold it; bulkhead rejects it (README
    "malformed request": 400, http_request_error, connection closed) and forwards nothing."""
    c = raw(bh.port)
    c.send(b"GET /echo-head HTTP/1.1\r\nHost: x\r\nX-Fold: a\r\n  b\r\n\r\n")
    expect_error(c, 400)
    assert upstream.traffic() == 0


@pytest.mark.parametrize("headers", [
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
    b"Content-Length: 5\r\nContent-Length: 6\r\n",
    b"Content-Length: 5x\r\n",
    b"Content-Length: -5\r\n",
    b"Transfer-Encoding: chunked, gzip\r\n",
], ids=["cl-then-te", "te-then-cl", "two-cl", "cl-not-number", "cl-negative", "chunked-not-final"])
def test_ambiguous_body_length(bh, raw, upstream, headers):
    c = raw(bh.port)
    c.send(b"POST /sink HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n0\r\n\r\nhello")
    expect_error(c, 400)
    assert upstream.stats()["paths"].get("/sink", 0) == 0, "an ambiguous request reached the upstream"


def test_smuggling_attempt_not_forwarded(bulkhead, upstream, raw):
    """CL+TE: nothing of it may reach the upstream as a second request."""
    bh = bulkhead(upstream, limits=LIMITS)
    c = raw(bh.port)
    c.send(b"POST /echo-head HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
    expect_error(c, 400)
    assert "/smuggled" not in upstream.stats()["paths"]


@pytest.mark.parametrize("size_line", [b"zz", b"-1", b"1 2", b""], ids=["hex", "negative", "space", "empty"])
def test_invalid_chunk_size(bh, raw, size_line):
    c = raw(bh.port)
    c.send(b"POST /sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
           + size_line + b"\r\nabc\r\n0\r\n\r\n")
    expect_error(c, 400)


def test_chunk_size_overflow(bh, raw):
    c = raw(bh.port)
    c.send(b"POST /sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"fffffffffffffffffffff\r\nabc\r\n")
    expect_error(c, (400, 413))


def test_bad_chunk_terminator(bh, raw):
    c = raw(bh.port)
    c.send(b"POST /sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n")
    expect_error(c, 400)


def headers_block(n, prefix=b"X-H"):
    return b"".join(b"%s%d: v\r\n" % (prefix, i) for i in range(n))


def test_max_headers_boundary(bh, raw):
    c = raw(bh.port)
    # Host + 19 = 20 header fields: allowed
    c.send(b"GET /echo-head HTTP/1.1\r\nHost: x\r\n" + headers_block(19) + b"\r\n")
    ok(c)
    c2 = raw(bh.port)
    c2.send(b"GET /echo-head HTTP/1.1\r\nHost: x\r\n" + headers_block(20) + b"\r\n")
    expect_error(c2, 431)


def test_too_many_headers(bh, raw):
    c = raw(bh.port)
    c.send(b"GET /echo-head HTTP/1.1\r\nHost: x\r\n" + headers_block(200) + b"\r\n")
    expect_error(c, 431)


def test_header_bytes_limit(bh, raw):
    c = raw(bh.port)
    c.send(b"GET /echo-head HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 3000 + b"\r\n\r\n")
    ok(c)
    c2 = raw(bh.port)
    c2.send(b"GET /echo-head HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n")
    expect_error(c2, 431)


def test_header_bytes_limit_many_small_headers(bh, raw):
    c = raw(bh.port)
    c.send(b"GET /echo-head HTTP/1.1\r\nHost: x\r\n"
           + b"".join(b"X-%d: %s\r\n" % (i, b"b" * 400) for i in range(15)) + b"\r\n")
    expect_error(c, 431)


def test_header_bytes_limit_long_target(bh, raw):
    c = raw(bh.port)
    c.send(b"GET /echo-head?" + b"q" * 6000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    expect_error(c, (431, 414))


def test_header_limit_without_end_of_head(bh, raw):
    """A head that never ends but keeps growing is cut off at the limit (no waiting for CRLFCRLF)."""
    c = raw(bh.port)
    c.send(b"GET /echo-head HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000)
    expect_error(c, 431)


def test_body_limit_content_length(bh, raw, upstream):
    c = raw(bh.port)
    c.send(b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"b" * 1000)
    r = ok(c)
    assert r.json()["len"] == 1000
    c2 = raw(bh.port)
    c2.send(b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n")
    expect_error(c2, 413)
    assert upstream.stats()["paths"]["/sink"] == 1, "the oversized request must not reach the upstream"


def test_body_limit_chunked(bh, raw):
    c = raw(bh.port)
    c.send(b"POST /sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           + (b"258\r\n" + b"c" * 600 + b"\r\n") * 2 + b"0\r\n\r\n")
    expect_error(c, 413)


def test_body_limit_chunked_boundary(bh, raw):
    c = raw(bh.port)
    c.send(b"POST /sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           + (b"1f4\r\n" + b"c" * 500 + b"\r\n") * 2 + b"0\r\n\r\n")
    r = ok(c)
    assert r.json()["len"] == 1000


def test_slow_head_408(bh, raw):
    c = raw(bh.port)
    c.send(b"GET /echo-head HT")
    expect_error(c, 408)


def test_slow_head_after_request_line_408(bh, raw):
    c = raw(bh.port)
    c.send(b"GET /echo-head HTTP/1.1\r\nHost: x\r\n")
    expect_error(c, 408)


def test_slowloris_trickle_408(bh, raw):
    """header_timeout bounds the whole head: trickling header bytes must not extend it. The pacing is
    the wait for bulkhead's answer, so a correct bulkhead ends the loop by answering."""
    c = raw(bh.port)
    c.send(b"GET /echo-head HTTP/1.1\r\nHost: x\r\nX-Trickle: ")
    for i in range(300):
        if c.readable_within(0.1):
            break
        try:
            c.send(b"y")
        except (BrokenPipeError, ConnectionResetError):
            break
    else:
        raise AssertionError("bulkhead kept reading a trickled head for 30 s")
    expect_error(c, 408)


def test_slow_body_408(bh, raw):
    c = raw(bh.port)
    c.send(b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"d" * 10)
    expect_error(c, 408)


def test_slow_chunked_body_408(bh, raw):
    c = raw(bh.port)
    c.send(b"POST /sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    expect_error(c, 408)


def test_error_does_not_disturb_other_connections(bh, raw):
    good = raw(bh.port)
    good.request("GET", "/echo-head")
    ok(good)
    bad = raw(bh.port)
    bad.send(b"GARBAGE\r\n\r\n")
    expect_error(bad, 400)
    good.request("GET", "/echo-head")
    ok(good)


def test_client_max_connections(bulkhead, upstream):
    bh = bulkhead(upstream, limits={"max_connections": 2})
    a = b = None

    def open_served():
        # a connection closed just before (the fixture's readiness probe, a refused attempt) may still
        # hold its slot until bulkhead sees the close: retry until this one is served
        c = RawClient(bh.port)
        c.request("GET", "/echo-head")
        r = c.read_response()
        if r.status == 200:
            return c
        c.close()
        return None

    try:
        a = wait_until(open_served, what="a first client connection to be served")
        b = wait_until(open_served, what="a second client connection to be served")
        # now at least two slots are taken (more only while closed ones are not yet noticed)
        c3 = RawClient(bh.port)
        try:
            # a request written at once on the refused connection must never reach the upstream
            c3.send(b"POST /refused-probe HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
            r = c3.read_response()
            assert r.status == 503, r
            assert proxy_status_error(r) == "connection_limit_reached"
            assert c3.wait_closed()
        except Exception as e:  # a refused/reset connection without any answer is not what we specify
            raise AssertionError("third connection: expected a 503 then close, got %r" % e)
        finally:
            c3.close()
        a.close()

        def new_conn_served():
            with RawClient(bh.port) as c:
                c.request("GET", "/echo-head")
                return c.read_response().status == 200
        wait_until(new_conn_served, what="a freed client slot to be usable again")
        b.request("GET", "/echo-head")
        ok(b)
        assert "POST /refused-probe" not in upstream.stats()["requests"], "a refused request went upstream"
    finally:
        for c in (a, b):
            if c is not None:
                c.close()


def test_client_max_connections_under_load(bulkhead, upstream):
    """Row 41 under load, across 2 workers. First every slot is held by a request the upstream keeps:
    then each of 16 threads x 20 new connections, each writing a POST at once, is refused with 503
    connection_limit_reached and none of those POSTs reaches the upstream. Then the holds are released
    and the same load runs again: a POST answered 200 reached the upstream exactly once, a refused one
    never, and the upstream never had more than the limit in flight."""
    limit, threads, per_thread = 6, 16, 20
    bh = bulkhead(upstream, limits={"max_connections": limit}, workers=2)
    held = []

    def hold_one():
        c = RawClient(bh.port)
        c.request("GET", "/hold?id=full")
        held_now = wait_until(lambda: ("held" if upstream.stats()["holding"] > len(held) else
                                       "answered" if c.readable_within(0) else None),
                              what="the request held at the upstream, or an answer")
        if held_now == "held":
            return c
        c.close()  # refused: a slot of a closed connection was not given back yet
        return None

    def post(tag, k, i):
        path = "/%s-%d-%d" % (tag, k, i)
        with RawClient(bh.port) as c:
            c.send(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi" % path.encode())
            r = c.read_response()
            assert r.status in (200, 503), r
            if r.status == 503:
                assert proxy_status_error(r) == "connection_limit_reached", r
                assert c.wait_closed()
            return path, r.status

    def load(tag):
        with ThreadPoolExecutor(threads) as ex:
            futs = [ex.submit(lambda k: [post(tag, k, i) for i in range(per_thread)], k) for k in range(threads)]
            return [x for f in futs for x in f.result()]

    try:
        while len(held) < limit:
            c = wait_until(hold_one, what="a connection whose request the upstream holds")
            held.append(c)
        full = load("full")
        assert {s for _, s in full} == {503}, "a connection beyond the limit was served"
        seen = upstream.stats()["requests"]
        assert not [p for p, _ in full if "POST " + p in seen], "a refused POST reached the upstream"
        upstream.release("full")
        for c in held:
            assert c.read_response().status == 200
            c.close()
        mixed = load("mixed")
        seen = upstream.stats()["requests"]
        served = [p for p, s in mixed if s == 200]
        assert served, "no connection was served once the slots were free"
        assert all(seen.get("POST " + p) == 1 for p in served), "a 200 POST did not reach the upstream once"
        assert not [p for p, s in mixed if s == 503 and "POST " + p in seen], "a refused POST reached it"
        assert upstream.stats()["max_in_flight"] <= limit
    finally:
        for c in held:
            c.close()


def test_fd_limit_reached_then_recovers(bulkhead, upstream, upstream_factory):
    """RLIMIT_NOFILE lowered (prlimit) to what bulkhead uses plus 8: idle clients take the last fds,
    further connections fail at accept (EMFILE: libuv accepts and closes them with its reserve fd, so
    the listener does not spin), bulkhead keeps running, and once the idle clients leave a request is
    served again. Guards against a crash, a busy loop or a listener that stays dead after EMFILE."""
    import os
    import socket
    import subprocess
    other = upstream_factory("other")
    bh = bulkhead(workers=1, upstreams={"u": resilient_upstream(upstream, retry={"attempts": 1}),
                                        "other": resilient_upstream(other, retry={"attempts": 1})},
                  routes=[{"match": {"path_prefix": "/other/"}, "upstream": "other"},
                          {"match": {"path_prefix": "/"}, "upstream": "u"}])
    kept = RawClient(bh.port)  # accepted before the limit, kept open (keep-alive) through it
    kept.request("GET", "/echo-head")  # warm: the upstream connection and the busy part exist
    assert kept.read_response().status == 200
    used = len(os.listdir("/proc/%d/fd" % bh.pid))
    limit = used + 8
    subprocess.run(["prlimit", "--pid", str(bh.pid), "--nofile=%d:%d" % (limit, limit)], check=True)
    try:
        idle = []
        for _ in range(limit):  # more than fit: the last ones are closed by bulkhead at once
            s = socket.create_connection(("127.0.0.1", bh.port), timeout=10)
            idle.append(s)
        wait_until(lambda: len(os.listdir("/proc/%d/fd" % bh.pid)) >= limit - 1,
                   what="bulkhead to reach its fd limit")
        refused = 0
        for s in idle:
            s.settimeout(0.2)
            try:
                if s.recv(1) == b"":
                    refused += 1
            except socket.timeout:
                pass
            except ConnectionResetError:
                refused += 1
        assert refused > 0, "no connection was refused at the fd limit"
        assert bh.proc.poll() is None, bh.stderr_text()[-2000:]
        # at the limit, a connection accepted before it is still served over the pooled connection
        kept.request("GET", "/echo-head")
        assert kept.read_response().status == 200
        # and a request that needs a new upstream socket gets bulkhead's own answer, never sent
        kept.request("GET", "/other/x")
        r = kept.read_response()
        assert r.status in (502, 503) and proxy_status_error(r), r
        assert other.stats()["requests"] == {}, other.stats()["requests"]
        for s in idle:
            s.close()

        def served():
            try:
                with RawClient(bh.port) as c:
                    c.request("GET", "/echo-head")
                    return c.read_response().status == 200
            except (OSError, AssertionError):
                return False
        wait_until(served, what="a request served once the fds are free")
    finally:
        kept.close()
        subprocess.run(["prlimit", "--pid", str(bh.pid), "--nofile=65536:65536"], check=False)
