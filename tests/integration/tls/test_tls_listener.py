"""HTTPS on a listener (issue 11, "Listener"): requests through with curl and Python's ssl, keep-alive
over TLS, 20 MiB both ways, X-Forwarded-Proto, ALPN, SNI, versions refused, plain HTTP on the TLS port,
and the handshake timeout. The upstream is the plain test upstream; the clients are real TLS peers
(curl, `openssl s_client`, Python's ssl) that verify bulkhead's certificate against the test CA."""
import hashlib
import socket
import ssl

import pytest

from tlsfix import (IO_TIMEOUT, READINESS_PROBES, PATTERN, RawClient, TlsClient, admin_stats, client_context,
                    curl, echoed_headers, listener_tls, per_worker, s_client, served_by, settled, tls_fetch)

MiB = 1 << 20
BIG = 20 * MiB
# A ClientHello cut short: the record header announces 512 bytes, the handshake header and the first
# bytes of the body follow, then nothing.
PARTIAL_HELLO = b"\x16\x03\x01\x02\x00" + b"\x01\x00\x01\xfc\x03\x03" + b"\x11" * 20


def read_until_close(sock, timeout=IO_TIMEOUT):
    """Everything the peer sends until it closes (EOF or RST); AssertionError if it is still open after
    timeout (a bounded poll: the test fails then, it does not wait longer)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            d = sock.recv(4096)
            if not d:
                return data
            data += d
    except ConnectionResetError:
        return data
    except socket.timeout:
        raise AssertionError("the connection was still open %.0fs later; got %r" % (timeout, data[:100]))


def test_https_request_through_with_curl(tls_bulkhead, upstream, pki):
    """curl verifying bulkhead's certificate against the test CA gets the upstream's answer. Guards
    against a listener that does not terminate TLS, or serves a certificate curl cannot verify."""
    bh = tls_bulkhead(upstream)
    p = curl("--cacert", pki.ca_cert, "-D", "-", "https://localhost:%d/echo-head?via=curl" % bh.port)
    assert p.returncode == 0, p.stderr
    head, _, body = p.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"X-Upstream: up" in head, head
    assert b'"target": "/echo-head?via=curl"' in body, body
    assert upstream.count("/echo-head") == 1


def test_x_forwarded_proto_https_over_tls_http_otherwise(tls_bulkhead, upstream, ctx):
    """The upstream gets `X-Forwarded-Proto: https` for a request that came over TLS and `http` for one
    on a plain listener of the same bulkhead; what the client sent is replaced, not appended to.
    Guards against a hard-coded `http`, and against trusting the client's header."""
    bh = tls_bulkhead(upstream, plain_listener=True)
    forged = [("X-Forwarded-Proto", "http")]
    r = tls_fetch(bh.port, ctx, headers=forged)
    assert r.status == 200, r
    assert echoed_headers(r)["x-forwarded-proto"] == ["https"], echoed_headers(r)
    with RawClient(bh.plain_port) as c:
        c.request("GET", "/echo-head", headers=[("X-Forwarded-Proto", "https")])
        r = c.read_response()
    assert r.status == 200, r
    assert echoed_headers(r)["x-forwarded-proto"] == ["http"], echoed_headers(r)


def test_keepalive_over_tls_one_connection(tls_bulkhead, upstream, ctx):
    """Six requests on one TLS connection are answered in turn, and bulkhead counts one accepted client
    connection for them (plus the fixture's probe). Guards against a TLS connection closed after each
    response (no keep-alive over TLS)."""
    bh = tls_bulkhead(upstream)
    settled(bh)
    with TlsClient(bh.port, ctx) as c:
        for i in range(6):
            c.request("GET", "/echo-head?i=%d" % i)
            r = c.read_response()
            assert r.status == 200 and r.header("Connection") != "close", r
            assert b'"target": "/echo-head?i=%d"' % i in r.body
        st = admin_stats(bh)
        assert sum(per_worker(st, "accepted")) == READINESS_PROBES + 1, st["workers"]
        assert sum(per_worker(st, "clients")) == 1, st["workers"]
    assert upstream.count("/echo-head") == 6


def test_20_mib_up_and_down_over_tls(tls_bulkhead, upstream, ctx):
    """20 MiB request body to /sink (length and SHA-256 as the upstream counted them) and 20 MiB response
    body from /bytes (every byte compared), on one TLS connection. Guards against TLS writes that lose or
    reorder data under backpressure (partial SSL_write, WANT_READ/WANT_WRITE mishandled)."""
    bh = tls_bulkhead(upstreams={"u": {"endpoints": [upstream.addr],
                                       "timeouts": {"total": "300s", "idle": "60s", "first_byte": "60s"}}},
                      limits={"max_body_bytes": "64MiB", "body_timeout": "60s"})
    body = (bytes(range(251)) * (BIG // 251 + 1))[:BIG]  # 251: not aligned with any buffer size
    with TlsClient(bh.port, ctx) as c:
        c.request("POST", "/sink", body=body)
        r = c.read_response("POST")
        assert r.status == 200, r
        assert r.json() == {"len": BIG, "sha256": hashlib.sha256(body).hexdigest()}

        c.request("GET", "/bytes?n=%d" % BIG)
        got = hashlib.sha256()
        n = [0]

        def sink(piece):
            got.update(piece)
            n[0] += len(piece)

        r = c.read_response(body_sink=sink)
        assert r.status == 200 and n[0] == BIG, (r, n[0])
        want = hashlib.sha256((PATTERN * (BIG // len(PATTERN) + 1))[:BIG]).hexdigest()
        assert got.hexdigest() == want, "the 20 MiB response body differs from what the upstream sent"


def test_alpn_offers_http11(tls_bulkhead, upstream, ctx, pki):
    """A client offering h2 and http/1.1 gets http/1.1 (Python's ssl), and `s_client -alpn http/1.1`
    reports it negotiated. Guards against a listener without ALPN (no protocol selected) or one that
    picks h2, which bulkhead does not speak."""
    bh = tls_bulkhead(upstream)
    alpn_ctx = client_context(pki.ca_cert, alpn=("h2", "http/1.1"))
    with TlsClient(bh.port, alpn_ctx) as c:
        assert c.sock.selected_alpn_protocol() == "http/1.1"
        r = c.get()
        assert r.status == 200, r
    p = s_client(bh.port, "-alpn", "http/1.1", "-CAfile", pki.ca_cert)
    assert "ALPN protocol: http/1.1" in p.out, p.out


def test_sni_picks_the_matching_certificate(tls_bulkhead, upstream, pki):
    """Two certificates, a.test (first) and b.test: SNI a.test and b.test each get their own (the served
    serial compared with the file's), an unknown name and no SNI at all get the first; with the order
    reversed the default follows. curl verifies b.test by name. Guards against SNI ignored (always the
    first) and a default that is not the first certificate."""
    a = pki.server("a.test")
    b = pki.server("b.test")
    bh = tls_bulkhead(upstream, tls=listener_tls(a, b))
    assert served_by(bh.port, "a.test") == a.serial
    assert served_by(bh.port, "b.test") == b.serial
    assert served_by(bh.port, "unknown.test") == a.serial
    assert served_by(bh.port, None) == a.serial
    p = curl("--cacert", pki.ca_cert, "--resolve", "b.test:%d:127.0.0.1" % bh.port,
             "https://b.test:%d/echo-head" % bh.port)
    assert p.returncode == 0 and b'"path": "/echo-head"' in p.stdout, p.stderr

    bh2 = tls_bulkhead(upstream, tls=listener_tls(b, a))
    assert served_by(bh2.port, "unknown.test") == b.serial
    assert served_by(bh2.port, "a.test") == a.serial


def test_sni_is_case_insensitive(tls_bulkhead, upstream, pki):
    """Host names compare without case (RFC 6066 / 4343): SNI B.TEST gets the b.test certificate. Guards
    against a byte-wise comparison of names."""
    a, b = pki.server("a.test"), pki.server("b.test")
    bh = tls_bulkhead(upstream, tls=listener_tls(a, b))
    assert served_by(bh.port, "B.Test") == b.serial


def test_tls_1_1_refused_with_protocol_version_alert(tls_bulkhead, upstream, ctx):
    """An `openssl s_client -tls1_1` client (security level 0, so the client itself allows it) is
    refused with a protocol_version alert and no session; bulkhead keeps serving afterwards. Guards
    against a listener that negotiates TLS 1.1."""
    bh = tls_bulkhead(upstream)
    p = s_client(bh.port, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    assert p.returncode != 0, p.out
    assert "alert protocol version" in p.out, p.out
    assert "Cipher is (NONE)" in p.out or "New, (NONE)" in p.out, p.out
    assert tls_fetch(bh.port, ctx).status == 200
    assert upstream.count("/echo-head") == 1


def test_min_version_13_refuses_a_tls_12_client(tls_bulkhead, upstream, pki):
    """min_version "1.3": a client capped at TLS 1.2 is refused (Python's ssl reports the alert), a TLS
    1.3 client is served; and with the default ("1.2") the same 1.2 client is served. Guards against
    min_version ignored."""
    site13 = pki.server("localhost", "127.0.0.1", stem="site13")
    bh = tls_bulkhead(upstream, tls=listener_tls(site13, min_version="1.3"))
    only12 = client_context(pki.ca_cert, max_version=ssl.TLSVersion.TLSv1_2)
    with pytest.raises(ssl.SSLError) as e:
        TlsClient(bh.port, only12).close()
    assert "TLSV1_ALERT_PROTOCOL_VERSION" in str(e.value), e.value
    with TlsClient(bh.port, client_context(pki.ca_cert, min_version=ssl.TLSVersion.TLSv1_3)) as c:
        assert c.sock.version() == "TLSv1.3"
        assert c.get().status == 200

    bh12 = tls_bulkhead(upstream)
    with TlsClient(bh12.port, only12) as c:
        assert c.sock.version() == "TLSv1.2"
        assert c.get().status == 200


def test_plain_http_on_the_tls_port_is_refused_cleanly(tls_bulkhead, upstream, ctx):
    """A plain HTTP request on the TLS port gets no HTTP answer: the connection is closed, after at most
    a TLS alert record; nothing reaches the upstream, and bulkhead keeps serving TLS. Guards against a
    listener that falls back to plain HTTP, answers garbage, hangs, or crashes on a non-TLS first byte."""
    bh = tls_bulkhead(upstream, limits={"header_timeout": "120s", "keepalive_timeout": "120s"})
    for _ in range(3):
        with RawClient(bh.port) as c:
            c.request("GET", "/echo-head")
            data = read_until_close(c.sock)
            assert not data.startswith(b"HTTP/"), data[:200]
            assert data == b"" or data[0] == 0x15, "neither a close nor a TLS alert: %r" % data[:100]
    assert bh.proc.poll() is None
    assert tls_fetch(bh.port, ctx).status == 200
    assert upstream.count("/echo-head") == 1


@pytest.mark.parametrize("sent", [PARTIAL_HELLO, b""], ids=["partial-client-hello", "nothing"])
def test_stalled_handshake_is_closed_at_handshake_timeout(tls_bulkhead, upstream, ctx, site, sent):
    """handshake_timeout 500ms, every other client timeout 120s: a TCP client that sends a partial
    ClientHello (or nothing) and stalls is closed by bulkhead within the poll's bound (30s, far below the
    other timeouts), while a TLS connection opened before it, whose handshake completed, is still open
    and served afterwards (the timeout is for handshakes only). Guards against a handshake that can
    stall a client slot for ever, and against a timeout applied to established connections."""
    bh = tls_bulkhead(upstream, tls=listener_tls(site, handshake_timeout="500ms"),
                      limits={"header_timeout": "120s", "keepalive_timeout": "120s", "body_timeout": "120s"})
    with TlsClient(bh.port, ctx) as done:
        assert done.get().status == 200  # also reads the TLS 1.3 session tickets sent after the handshake
        with RawClient(bh.port) as stalled:
            if sent:
                stalled.send(sent)
            data = read_until_close(stalled.sock)
            assert data == b"" or data[0] == 0x15, "neither a close nor a TLS alert: %r" % data[:100]
        assert not done.readable_within(0), "the established TLS connection was closed too"
        r = done.get()
        assert r.status == 200, r


TLS12 = dict(min_version=ssl.TLSVersion.TLSv1_2, max_version=ssl.TLSVersion.TLSv1_2)


def test_default_tls12_ciphers_are_aead_only(tls_bulkhead, upstream, pki):
    """The default TLS 1.2 cipher list is AEAD-only: a TLS 1.2 client offering only a CBC suite
    (ECDHE-ECDSA-AES128-SHA256) is refused with a handshake_failure alert, one offering an AES-GCM suite
    is served with it. Guards against OpenSSL's DEFAULT list (which has CBC suites) as the default."""
    bh = tls_bulkhead(upstream)
    with pytest.raises(ssl.SSLError) as e:
        TlsClient(bh.port, client_context(pki.ca_cert, ciphers="ECDHE-ECDSA-AES128-SHA256", **TLS12)).close()
    assert "HANDSHAKE_FAILURE" in str(e.value), e.value
    with TlsClient(bh.port, client_context(pki.ca_cert, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256", **TLS12)) as c:
        assert c.sock.cipher()[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"
        assert c.get().status == 200


def test_configured_ciphers_are_the_only_ones(tls_bulkhead, upstream, site, pki):
    """ciphers "ECDHE-ECDSA-CHACHA20-POLY1305": a TLS 1.2 client offering it and AES-GCM gets it; one
    offering only AES-GCM (in the default list) is refused. Guards against the ciphers key ignored."""
    bh = tls_bulkhead(upstream, tls=listener_tls(site, ciphers="ECDHE-ECDSA-CHACHA20-POLY1305"))
    both = "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305"
    with TlsClient(bh.port, client_context(pki.ca_cert, ciphers=both, **TLS12)) as c:
        assert c.sock.cipher()[0] == "ECDHE-ECDSA-CHACHA20-POLY1305"
        assert c.get().status == 200
    with pytest.raises(ssl.SSLError) as e:
        TlsClient(bh.port, client_context(pki.ca_cert, ciphers="ECDHE-ECDSA-AES256-GCM-SHA384", **TLS12)).close()
    assert "HANDSHAKE_FAILURE" in str(e.value), e.value
