"""Client certificates on the listener (issue 11): verify_client off | optional | require with client_ca,
and `X-Client-Cert-Subject` (OpenSSL's RFC 2253 one-line subject of the verified certificate) to the
upstream. A header of that name sent by the client is always removed first: the upstream must never
see a forged value, with or without a client certificate, whatever the header's case.

The expected subject comes from `openssl x509 -subject -nameopt RFC2253` on the certificate file."""
import ssl

import pytest

from tlsfix import (PeerClosed, RawClient, TlsClient, client_context, curl, echoed_headers, listener_tls,
                    subject_rfc2253)

FORGED = [("X-Client-Cert-Subject", "CN=admin,O=Forged"), ("x-CLIENT-cert-SUBJECT", "CN=root")]


def start(tls_bulkhead, upstream, site, pki, mode):
    return tls_bulkhead(upstream, tls=listener_tls(site, client_ca=pki.ca_cert, verify_client=mode))


def subjects(resp):
    return echoed_headers(resp).get("x-client-cert-subject", [])


def refused(port, ctx):
    """True when bulkhead refuses the connection: the handshake fails, or (TLS 1.3, where the client
    finishes before the server has checked its certificate) the first request gets an alert or a
    close instead of a response."""
    try:
        with TlsClient(port, ctx) as c:
            c.request("GET", "/echo-head")
            c.read_response()
    except (ssl.SSLError, PeerClosed, ConnectionResetError, BrokenPipeError):
        return True
    return False


@pytest.mark.parametrize("mode", ["require", "optional"])
def test_verified_client_subject_goes_upstream(tls_bulkhead, upstream, site, pki, mode):
    """A client certificate from client_ca: the upstream gets exactly one X-Client-Cert-Subject, the
    certificate's RFC 2253 subject, even though the client sent two forged ones. Guards against the
    subject not forwarded, in another format, or appended to the client's values."""
    bh = start(tls_bulkhead, upstream, site, pki, mode)
    alice = pki.client("alice")
    want = subject_rfc2253(alice.cert)
    assert want == "CN=alice,O=Bulkhead Tests"
    with TlsClient(bh.port, client_context(pki.ca_cert, cert=alice)) as c:
        r = c.get()
        assert r.status == 200, r
        assert subjects(r) == [want], echoed_headers(r)
        r = c.get(headers=FORGED)
        assert r.status == 200, r
        assert subjects(r) == [want], echoed_headers(r)


def test_require_refuses_a_client_without_certificate(tls_bulkhead, upstream, site, pki):
    """verify_client require: without a certificate (Python's ssl, and curl) the connection is refused
    and nothing reaches the upstream; curl with --cert is served. Guards against require behaving as
    optional."""
    bh = start(tls_bulkhead, upstream, site, pki, "require")
    assert refused(bh.port, client_context(pki.ca_cert))
    p = curl("--cacert", pki.ca_cert, "https://localhost:%d/echo-head" % bh.port)
    assert p.returncode != 0, p.stdout
    assert upstream.count() == 0
    alice = pki.client("alice")
    p = curl("--cacert", pki.ca_cert, "--cert", alice.cert, "--key", alice.key,
             "https://localhost:%d/echo-head" % bh.port)
    assert p.returncode == 0 and b"CN=alice,O=Bulkhead Tests" in p.stdout, (p.stdout, p.stderr)
    assert upstream.count() == 1


@pytest.mark.parametrize("mode", ["require", "optional"])
def test_certificate_from_another_ca_is_refused(tls_bulkhead, upstream, site, pki, other_pki, mode):
    """A client certificate that does not verify against client_ca is refused in both modes (optional
    means "may send none", not "may send anything"). Guards against unverified subjects reaching the
    upstream."""
    bh = start(tls_bulkhead, upstream, site, pki, mode)
    mallory = other_pki.client("mallory")
    assert refused(bh.port, client_context(pki.ca_cert, cert=mallory))
    assert upstream.count() == 0
    # the same listener serves a certificate from client_ca (so the refusal above was about mallory's)
    with TlsClient(bh.port, client_context(pki.ca_cert, cert=pki.client("alice"))) as c:
        assert c.get().status == 200


def test_optional_without_certificate_is_served_with_no_subject(tls_bulkhead, upstream, site, pki):
    """verify_client optional, no client certificate: served, and the upstream sees no
    X-Client-Cert-Subject at all although the client forged two. Guards against forged subjects passed
    through when there is nothing to replace them with."""
    bh = start(tls_bulkhead, upstream, site, pki, "optional")
    with TlsClient(bh.port, client_context(pki.ca_cert)) as c:
        r = c.get(headers=FORGED)
        assert r.status == 200, r
        assert subjects(r) == [], echoed_headers(r)


def test_forged_subject_removed_with_verify_client_off(tls_bulkhead, upstream, site, pki):
    """verify_client off (the default), with and without a client certificate configured on the client
    (the server does not ask for it, so none is sent): no X-Client-Cert-Subject upstream. Guards against
    the removal happening only when client certificates are enabled."""
    bh = tls_bulkhead(upstream)
    for cert in (None, pki.client("alice")):
        with TlsClient(bh.port, client_context(pki.ca_cert, cert=cert)) as c:
            r = c.get(headers=FORGED)
            assert r.status == 200, r
            assert subjects(r) == [], echoed_headers(r)


def test_forged_subject_removed_on_a_plain_listener(tls_bulkhead, upstream, site, pki):
    """The plain listener of a bulkhead whose TLS listener verifies clients: a forged
    X-Client-Cert-Subject never reaches the upstream there either. Guards against the removal tied to
    TLS connections only."""
    bh = tls_bulkhead(upstream, tls=listener_tls(site, client_ca=pki.ca_cert, verify_client="optional"),
                      plain_listener=True)
    with RawClient(bh.plain_port) as c:
        c.request("GET", "/echo-head", headers=FORGED)
        r = c.read_response()
    assert r.status == 200, r
    assert subjects(r) == [], echoed_headers(r)


def test_subject_is_escaped_rfc_2253(tls_bulkhead, upstream, site, pki):
    """A subject with a comma and a non-ASCII letter (CN=Smith, José) goes upstream exactly as
    `openssl x509 -nameopt RFC2253` prints it: the comma escaped, the UTF-8 bytes as \\XX escapes, so
    the header is printable ASCII. Guards against a subject printed with another name format, or raw
    UTF-8 in a header."""
    bh = start(tls_bulkhead, upstream, site, pki, "require")
    jose = pki.client("Smith, José")
    want = subject_rfc2253(jose.cert)
    assert want == "CN=Smith\\, Jos\\C3\\A9,O=Bulkhead Tests", want
    with TlsClient(bh.port, client_context(pki.ca_cert, cert=jose)) as c:
        r = c.get()
    assert r.status == 200, r
    assert subjects(r) == [want], echoed_headers(r)
