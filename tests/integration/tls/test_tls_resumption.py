"""Session resumption on the listener (issue 11, "Session resumption works across workers: tickets with
keys shared by all workers"): bulkhead runs 2 workers, whose listeners share the port (the kernel spreads
new connections over them), so a client resuming several times lands on both. Checked with
`openssl s_client -reconnect` (TLS 1.2: s_client 3.0 reconnects before a TLS 1.3 ticket arrives) and
`-sess_out`/`-sess_in` (TLS 1.3), with Python's ssl (`session=`, `.session_reused`; for TLS 1.3 the
tickets come after the handshake, so a response is read before taking `.session`), and in
bulkhead_tls_handshakes_total{side="client"}: a resumed handshake counts as `resumed`, not `ok`."""
import os
import ssl

import pytest

from tlsfix import (IO_TIMEOUT, TlsClient, admin_stats, client_context, handshakes, per_worker, s_client,
                    settled, wait_until)

WORKERS = 2
REQUEST = b"GET /echo-head HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def accepted(bh):
    return per_worker(admin_stats(bh), "accepted")


def counted(bh, side, ok, resumed, before):
    """Waits until the client-side counters grew by exactly ok and resumed (polled: a counter may be
    bumped just after the reply left); returns the counters."""
    def done():
        h = handshakes(bh, side)
        return (h["ok"] - before["ok"] >= ok and h["resumed"] - before["resumed"] >= resumed) and h
    h = wait_until(done, what="%d full and %d resumed handshakes counted" % (ok, resumed))
    assert (h["ok"] - before["ok"], h["resumed"] - before["resumed"]) == (ok, resumed), (before, h)
    return h


def resume_on_every_worker(bh, ctx, per_worker_at_least=3, limit=200):
    """One full handshake, then resumptions, each with the session of the previous connection (taken
    after reading a response), until every worker has accepted at least per_worker_at_least of the
    resumed connections (bounded by limit connections). Returns (number resumed, number not)."""
    with TlsClient(bh.port, ctx) as c:
        assert c.get().status == 200
        session = c.sock.session
        assert not c.sock.session_reused
    base = accepted(bh)
    reused = not_reused = 0
    for _ in range(limit):
        with TlsClient(bh.port, ctx, session=session) as c:
            if c.sock.session_reused:
                reused += 1
            else:
                not_reused += 1
            r = c.get()
            assert r.status == 200, r
            session = c.sock.session
        if all(a - b >= per_worker_at_least for a, b in zip(accepted(bh), base)):
            return reused, not_reused
    raise AssertionError("the kernel never spread %d connections over both workers: %r -> %r"
                         % (limit, base, accepted(bh)))


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
def test_python_sessions_resume_on_every_worker(tls_bulkhead, upstream, pki, version):
    """Python's ssl resumes its session on every connection, whichever of the 2 workers accepts it, and
    bulkhead counts one full handshake (ok) and every resumption as resumed. Guards against per-worker
    ticket keys or session caches (a session from one worker refused by the other), and against
    resumed handshakes counted as ok."""
    bh = tls_bulkhead(upstream, workers=WORKERS)
    v = getattr(ssl.TLSVersion, version.replace(".", "_"))
    ctx = client_context(pki.ca_cert, min_version=v, max_version=v)
    settled(bh)
    before = handshakes(bh, "client")
    reused, not_reused = resume_on_every_worker(bh, ctx)
    assert not_reused == 0, "%d of %d connections were not resumed" % (not_reused, reused + not_reused)
    counted(bh, "client", 1, reused, before)


def test_s_client_reconnect_reports_reused(tls_bulkhead, upstream, pki):
    """`openssl s_client -reconnect` (TLS 1.2) against 2 workers: the five reconnections report
    "Reused", and bulkhead counts them as resumed. Repeated until both workers have taken part.
    Guards against sessions that do not survive a change of worker."""
    bh = tls_bulkhead(upstream, workers=WORKERS)
    settled(bh)
    base = accepted(bh)
    for _ in range(20):
        before = handshakes(bh, "client")
        p = s_client(bh.port, "-reconnect", "-tls1_2", "-CAfile", pki.ca_cert)
        lines = [x for x in p.out.splitlines() if x.startswith(("New, ", "Reused, "))]
        assert len(lines) == 6, p.out
        assert lines[0].startswith("New, TLSv1.2"), lines
        assert all(x.startswith("Reused, TLSv1.2") for x in lines[1:]), lines
        assert "Verify return code: 0 (ok)" in p.out, p.out
        counted(bh, "client", 1, 5, before)
        if all(a - b >= 3 for a, b in zip(accepted(bh), base)):
            return
    raise AssertionError("the reconnections never reached both workers: %r -> %r" % (base, accepted(bh)))


def test_s_client_tls13_session_file_resumes(tls_bulkhead, upstream, pki, tmp_path):
    """TLS 1.3 with s_client: a first connection sends a request (so the tickets are read) and saves its
    session (-sess_out); later connections with -sess_in report "Reused, TLSv1.3" on both workers.
    Guards against no TLS 1.3 tickets issued, or tickets one worker cannot decrypt."""
    bh = tls_bulkhead(upstream, workers=WORKERS)
    sess = str(tmp_path / "s.pem")
    p = s_client(bh.port, "-tls1_3", "-CAfile", pki.ca_cert, "-sess_out", sess, stdin=REQUEST)
    assert "New, TLSv1.3" in p.out and "HTTP/1.1 200" in p.out, p.out
    base = accepted(bh)
    for i in range(60):
        nxt = str(tmp_path / ("s%d.pem" % i))
        p = s_client(bh.port, "-tls1_3", "-CAfile", pki.ca_cert, "-sess_in", sess, "-sess_out", nxt,
                     stdin=REQUEST)
        assert "Reused, TLSv1.3" in p.out, p.out
        assert "HTTP/1.1 200" in p.out, p.out
        if os.path.exists(nxt):  # a new ticket came with this connection; else the old one is reused
            sess = nxt
        if all(a - b >= 3 for a, b in zip(accepted(bh), base)):
            return
    raise AssertionError("the connections never reached both workers: %r -> %r" % (base, accepted(bh)))


def test_full_handshakes_count_as_ok(tls_bulkhead, upstream, ctx):
    """Connections without a session are full handshakes: ok grows by their number, resumed does not.
    Guards against counters that do not tell full from resumed handshakes."""
    bh = tls_bulkhead(upstream)
    settled(bh)
    before = handshakes(bh, "client")
    for _ in range(4):
        with TlsClient(bh.port, ctx) as c:
            assert c.get().status == 200
            assert not c.sock.session_reused
    counted(bh, "client", 4, 0, before)


def test_failed_client_handshakes_are_counted(tls_bulkhead, upstream, other_pki):
    """A client that refuses bulkhead's certificate (it trusts another CA) fails the handshake:
    failed grows; ok does not. Guards against failures not counted, or counted as ok."""
    bh = tls_bulkhead(upstream)
    settled(bh)
    before = handshakes(bh, "client")
    wrong = client_context(other_pki.ca_cert)
    for _ in range(3):
        with pytest.raises(ssl.SSLCertVerificationError):
            TlsClient(bh.port, wrong, timeout=IO_TIMEOUT).close()
    h = wait_until(lambda: (lambda h: h["failed"] - before["failed"] >= 3 and h)(handshakes(bh, "client")),
                   what="three failed client handshakes counted")
    assert h["failed"] - before["failed"] == 3 and h["ok"] == before["ok"], (before, h)
