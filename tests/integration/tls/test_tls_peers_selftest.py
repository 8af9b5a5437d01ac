"""The TLS tests' own peers, without bulkhead: the fault server (tls_faults.py) fails a real client
(`openssl s_client`, curl) the way the upstream tests expect bulkhead to see it, and nginx serves HTTPS
in front of the test upstream with the session reuse its access log reports. If one of these fails, the
peer is broken, not bulkhead."""
import pytest

from tlsfix import TlsClient, curl, s_client, served_by


@pytest.mark.parametrize("mode,reason", [
    ("alert", "alert handshake failure"),
    ("garbage", "wrong version number"),
    ("plain-http", "wrong version number"),
])
def test_fault_modes_fail_a_real_client(faults_factory, pki, mode, reason):
    """Each fault mode makes s_client fail with the OpenSSL reason the upstream tests rely on."""
    cert = pki.server("localhost", "127.0.0.1") if mode == "garbage" else None
    f = faults_factory(mode, cert)
    p = s_client(f.port, "-CAfile", pki.ca_cert)
    assert p.returncode != 0 and reason in p.out, p.out
    st = f.stats()
    assert st["connections"] == 1 and st["hellos"] == 1, st


@pytest.mark.parametrize("kind,reason", [
    ("untrusted", "unable to get local issuer certificate"),
    ("expired", "certificate has expired"),
])
def test_serve_mode_certificates_as_a_verifying_client_sees_them(faults_factory, pki, other_pki, kind, reason):
    """s_client verifying against the test CA refuses the untrusted and expired certificates with the
    X.509 reason the upstream tests expect in Proxy-Status details; a good certificate is served."""
    cert = other_pki.server("localhost", "127.0.0.1") if kind == "untrusted" else pki.expired("localhost",
                                                                                                "127.0.0.1")
    f = faults_factory("serve", cert)
    p = s_client(f.port, "-CAfile", pki.ca_cert, "-verify_return_error")
    assert p.returncode != 0 and reason in p.out, p.out
    ok = faults_factory("serve", pki.server("localhost", "127.0.0.1", stem="selftest-good"))
    p = curl("--cacert", pki.ca_cert, "https://localhost:%d/x" % ok.port)
    assert p.returncode == 0 and p.stdout == b"ok", (p.stdout, p.stderr)
    assert ok.stats()["requests"] == 1


def test_nginx_serves_https_and_logs_resumption(nginx_factory, upstream, site, pki, ctx):
    """nginx in front of the test upstream: HTTPS with the site certificate, and a resumed session
    logged as reused ("r")."""
    n = nginx_factory(site, upstream)
    assert served_by(n.port, "localhost") == site.serial
    with TlsClient(n.port, ctx) as c:
        assert c.get().status == 200
        session = c.sock.session
    with TlsClient(n.port, ctx, session=session) as c:
        assert c.sock.session_reused
        assert c.get().status == 200
    assert [x["reused"] for x in n.wait_requests(2)] == [".", "r"], n.requests()
    assert upstream.count("/echo-head") == 2
