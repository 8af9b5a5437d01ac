"""The HTTP data path over TLS, where record boundaries and the plaintext/ciphertext split can go wrong:
a request head cut into one-byte records, pipelined requests in one record, a chunked upload,
Expect: 100-continue, a WebSocket (wss) tunnel through the TLS listener and through an HTTPS upstream,
a response delimited by the upstream's close read by a slow client, and client certificates with
session resumption (a resumed session keeps its subject; a session from a listener without client
certificates cannot be resumed on one that requires them)."""
import hashlib
import os
import socket
import ssl
import struct
from concurrent.futures import ThreadPoolExecutor

import pytest
import websocket

from tlsfix import (PeerClosed, TlsClient, client_context, echoed_headers, free_port, handshakes, listener_tls,
                    resilient_upstream, settled, subject_rfc2253, tls_config, wait_until)


def test_head_in_one_byte_records(tls_bulkhead, upstream, ctx):
    """A request whose head arrives one byte per TLS record (each send is a record) is parsed whole.
    Guards against a TLS read path that loses or reorders plaintext across records."""
    bh = tls_bulkhead(upstream)
    data = b"GET /echo-head?tiny=1 HTTP/1.1\r\nHost: localhost\r\nX-Trickle: yes\r\n\r\n"
    with TlsClient(bh.port, ctx) as c:
        for i in range(len(data)):
            c.sock.send(data[i:i + 1])
        r = c.read_response()
    assert r.status == 200, r
    assert echoed_headers(r)["x-trickle"] == ["yes"]


def test_pipelined_requests_in_one_record(tls_bulkhead, upstream, ctx):
    """Three requests written at once (one TLS record) are answered in order on the connection.
    Guards against plaintext left in OpenSSL's buffer after the first request (SSL_pending) and never
    parsed."""
    bh = tls_bulkhead(upstream)
    with TlsClient(bh.port, ctx) as c:
        c.send(b"".join(b"GET /echo-head?n=%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % i for i in range(3)))
        for i in range(3):
            r = c.read_response()
            assert r.status == 200 and b'"target": "/echo-head?n=%d"' % i in r.body, r


def test_chunked_upload(tls_bulkhead, upstream, ctx):
    """A 1 MiB chunked request body in uneven chunks reaches /sink whole."""
    bh = tls_bulkhead(upstream)
    body = os.urandom(1 << 20)
    with TlsClient(bh.port, ctx) as c:
        c.send(b"POST /sink HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n")
        pos, size = 0, 1
        while pos < len(body):
            piece = body[pos:pos + size]
            c.send(b"%x\r\n" % len(piece) + piece + b"\r\n")
            pos += len(piece)
            size = size * 3 + 7
        c.send(b"0\r\n\r\n")
        r = c.read_response("POST")
    assert r.status == 200, r
    assert r.json() == {"len": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def test_expect_100_continue(tls_bulkhead, upstream, ctx):
    """Expect: 100-continue over TLS: the interim 100 comes before the body is sent, then the final
    answer. Guards against an interim response left unsealed in the out queue."""
    bh = tls_bulkhead(upstream)
    with TlsClient(bh.port, ctx) as c:
        c.send(b"POST /100 HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        version, status, reason, headers, raw = c.read_head()
        assert status == 100, raw
        c.send(b"hello")
        r = c.read_response("POST")
    assert r.status == 200, r


def wss(port, ca, path="/ws"):
    return websocket.create_connection("wss://localhost:%d%s" % (port, path), timeout=30,
                                       sslopt={"ca_certs": ca, "cert_reqs": ssl.CERT_REQUIRED})


def ws_exchange(ws):
    for i in range(3):
        ws.send("hello %d" % i)
        assert ws.recv() == "hello %d" % i
    for size in (125, 65536, 300000):
        data = os.urandom(size)
        ws.send_binary(data)
        op, got = ws.recv_data()
        assert op == websocket.ABNF.OPCODE_BINARY and got == data, size


def test_websocket_through_the_tls_listener(tls_bulkhead, upstream, pki):
    """wss:// to bulkhead, ws:// to the test upstream: text and binary messages (up to 300 KB) echo
    through the upgraded connection, and the upstream side closes when the client leaves. Guards
    against a tunnel that bypasses TLS on the client side after the upgrade."""
    bh = tls_bulkhead(upstream)
    ws = wss(bh.port, pki.ca_cert)
    try:
        ws_exchange(ws)
    finally:
        ws.close()
    assert upstream.stats()["ws_sessions"] == 1
    wait_until(lambda: upstream.stats()["open_connections"] == 0,
               what="the upgraded upstream connection to be closed")


def test_websocket_through_an_https_upstream(bulkhead, nginx_factory, upstream, site, pki):
    """ws:// to bulkhead, wss:// from bulkhead to nginx (which proxies the upgrade to the test upstream):
    messages echo both ways. Guards against a tunnel that bypasses TLS on the upstream side."""
    n = nginx_factory(site, upstream)
    entry = resilient_upstream(n.addr, retry={"attempts": 1}, tls={"enabled": True, "ca": pki.ca_cert})
    bh = bulkhead(upstreams={"u": entry})
    ws = websocket.create_connection("ws://127.0.0.1:%d/ws" % bh.port, timeout=30)
    try:
        ws_exchange(ws)
    finally:
        ws.close()
    assert upstream.stats()["ws_sessions"] == 1


def close_delimited_upstream(tls_bulkhead, faults_factory, pki, with_server=False):
    srv = faults_factory("serve", pki.server("localhost", "127.0.0.1", stem="close-delim"))
    bh = tls_bulkhead(upstreams={"u": resilient_upstream(srv.addr, retry={"attempts": 1},
                                                         tls={"enabled": True, "ca": pki.ca_cert})})
    return (bh, srv) if with_server else bh


def test_close_delimited_response_to_a_slow_client(tls_bulkhead, faults_factory, pki, ctx):
    """An HTTPS upstream answers 8 MiB without Content-Length and closes; the client reads it slowly (4
    KiB reads), so the upstream's end of stream arrives while bulkhead is not reading. The client gets
    every byte, in whatever framing bulkhead chose (chunked, or delimited by its own close). Guards
    against an end of stream lost or delivered before the data buffered ahead of it."""
    bh = close_delimited_upstream(tls_bulkhead, faults_factory, pki)
    n = 8 << 20
    got, total = hashlib.sha256(), [0]

    def sink(piece):
        got.update(piece)
        total[0] += len(piece)

    with TlsClient(bh.port, ctx, recv_size=4096) as c:
        c.request("GET", "/close-delimited?n=%d" % n)
        r = c.read_response(body_sink=sink)
        assert r.status == 200, r
    assert total[0] == n, "got %d of %d bytes" % (total[0], n)
    assert got.hexdigest() == hashlib.sha256((bytes(range(256)) * (n // 256))).hexdigest()


def test_truncated_close_delimited_response_is_not_completed(tls_bulkhead, faults_factory, pki, ctx):
    """The same response, but the upstream closes without close_notify: over TLS that is a truncation
    (an attacker can cut a TCP connection; only close_notify says the body is complete), so the
    client must not get a complete message: bulkhead closes its connection without the last chunk.
    Guards against SSL_OP_IGNORE_UNEXPECTED_EOF, or an unexpected EOF mapped to a clean end."""
    bh, srv = close_delimited_upstream(tls_bulkhead, faults_factory, pki, with_server=True)
    before = srv.stats()["requests"]
    with TlsClient(bh.port, ctx) as c:
        c.request("GET", "/close-delimited?n=100000&notify=0")
        with pytest.raises(PeerClosed):
            c.read_response()
    assert srv.stats()["requests"] == before + 1, "a truncated response must not be retried"


def test_resumed_session_keeps_the_client_subject(tls_bulkhead, upstream, site, pki):
    """verify_client require: a connection resumed with alice's session is served without a new
    certificate exchange and still sends her subject upstream. Guards against a subject read from the
    handshake only (absent on resumption)."""
    bh = tls_bulkhead(upstream, tls=listener_tls(site, client_ca=pki.ca_cert, verify_client="require"))
    alice = pki.client("alice")
    actx = client_context(pki.ca_cert, cert=alice)
    with TlsClient(bh.port, actx) as c:
        r = c.get()
        assert r.status == 200
        session = c.sock.session
    with TlsClient(bh.port, actx, session=session) as c:
        assert c.sock.session_reused
        r = c.get()
    assert r.status == 200, r
    assert echoed_headers(r).get("x-client-cert-subject") == [subject_rfc2253(alice.cert)], echoed_headers(r)


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
def test_session_from_another_listener_does_not_skip_client_certificates(bulkhead, upstream, site, pki, version):
    """Two listeners with the same certificate: "open" (no client certificates) and "mtls" (require).
    A session made on "open" offered to "mtls" by a client without a certificate is not resumed, and
    the connection is refused. Guards against ticket keys or a session id context shared by listeners
    with different client verification, which would let a resumption skip mTLS."""
    conf, _, _ = tls_config(listener_tls(site), {"u": {"endpoints": [upstream.addr]}})
    conf["listeners"][0]["name"] = "open"
    mtls_port = free_port()
    conf["listeners"].append({"name": "mtls", "address": "127.0.0.1:%d" % mtls_port,
                              "tls": listener_tls(site, client_ca=pki.ca_cert, verify_client="require")})
    bh = bulkhead(config=conf)
    v = getattr(ssl.TLSVersion, version.replace(".", "_"))
    nocert = client_context(pki.ca_cert, min_version=v, max_version=v)
    with TlsClient(bh.port, nocert) as c:
        assert c.get().status == 200
        session = c.sock.session
    before = upstream.count("/echo-head")
    resumed = served = False
    try:
        with TlsClient(mtls_port, nocert, session=session) as c:
            resumed = c.sock.session_reused
            served = c.get().status == 200
    except (ssl.SSLError, PeerClosed, ConnectionResetError, BrokenPipeError):
        pass
    assert not resumed and not served, "a session from the open listener got past verify_client require"
    assert upstream.count("/echo-head") == before


def reset(c):
    """Closes a client connection with RST (SO_LINGER 0) instead of close_notify and FIN."""
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.sock.close()


@pytest.mark.parametrize("direction", ["download", "upload"])
def test_client_reset_in_the_middle_of_a_body(tls_bulkhead, upstream, ctx, direction):
    """A TLS client resets its connection 1 MiB into a 64 MiB response (or request body): bulkhead
    closes the upstream connection of that exchange (not reusable) and serves the next TLS client. Run
    under ASan, this is the teardown of a TLS connection with records in flight both ways. Guards
    against a crash or leak in that teardown, and an upstream connection left open."""
    bh = tls_bulkhead(upstream, limits={"max_body_bytes": "1GiB", "body_timeout": "60s"})
    c = TlsClient(bh.port, ctx)
    try:
        if direction == "download":
            c.request("GET", "/bytes?n=%d" % (64 << 20))
            got = 0
            while got < (1 << 20):
                got += len(c.sock.recv(65536))
        else:
            c.send(b"POST /sink HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % (64 << 20))
            c.send(b"u" * (1 << 20))
            wait_until(lambda: upstream.stats()["open_connections"] == 1, what="the upload to reach the upstream")
    finally:
        reset(c)
    wait_until(lambda: upstream.stats()["open_connections"] == 0,
               what="bulkhead to close the upstream connection of the aborted exchange")
    with TlsClient(bh.port, ctx) as c2:
        assert c2.get().status == 200
    assert bh.proc.poll() is None


def test_many_handshakes_at_once(tls_bulkhead, upstream, ctx):
    """100 TLS clients connect and ask at the same time (2 workers): every one is answered 200, and
    bulkhead counts 100 full handshakes. Guards against handshakes that interfere with each other on
    a worker loop (shared buffers, a callback for the wrong connection)."""
    bh = tls_bulkhead(upstream, workers=2)
    settled(bh)  # the readiness probe (a TCP connect, no ClientHello): no handshake, not counted
    before = handshakes(bh, "client")

    def one(i):
        with TlsClient(bh.port, ctx) as c:
            r = c.get("/echo-head?i=%d" % i)
            return r.status, b'"target": "/echo-head?i=%d"' % i in r.body

    with ThreadPoolExecutor(max_workers=100) as pool:
        results = list(pool.map(one, range(100)))
    assert results == [(200, True)] * 100, [r for r in results if r != (200, True)][:5]
    after = wait_until(lambda: (lambda h: h["ok"] - before["ok"] >= 100 and h)(handshakes(bh, "client")),
                       what="100 handshakes counted")
    assert after["ok"] - before["ok"] == 100 and after["failed"] == before["failed"], (before, after)
