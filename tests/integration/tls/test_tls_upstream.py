"""HTTPS to upstreams (issue 11, "Upstreams"): nginx as a real HTTPS peer (fronting the plain test
upstream, so every test-upstream endpoint is reachable over TLS), verification by default, server_name,
`https://` endpoints, a client certificate, 20 MiB both ways, session resumption when the pool opens new
connections, health checks over TLS, and failed handshakes (the TLS fault server): 502 with the RFC 9209
type and OpenSSL's reason, counted by the breaker as connect failures.

bulkhead listens in plain HTTP here: only its upstream side speaks TLS."""
import hashlib
import socket

import pytest

from tlsfix import (PATTERN, RawClient, TlsClient, admin_stats, echoed_headers, fetch, handshakes, named,
                    proxy_status_details, proxy_status_error, resilient_upstream, wait_until)

MiB = 1 << 20
BIG = 20 * MiB
NO_RETRY = {"attempts": 1}
# a check timeout long enough for a TLS handshake under ASan on a loaded machine
CHECK = {"path": "/healthz", "interval": "1s", "timeout": "1s", "healthy": 2, "unhealthy": 2}


def up_tls(pki, **keys):
    """An upstreams.<n>.tls section trusting the test CA."""
    tls = {"enabled": True, "ca": pki.ca_cert}
    tls.update(keys)
    return tls


def start(bulkhead, endpoint, tls, **keys):
    keys.setdefault("retry", NO_RETRY)
    entry = resilient_upstream(endpoint if isinstance(endpoint, str) else endpoint.addr, **keys)
    if tls is not None:
        entry["tls"] = tls
    return bulkhead(upstreams={"u": entry})


@pytest.fixture
def front(nginx_factory, upstream, site):
    """nginx serving HTTPS with `site` (localhost, 127.0.0.1) in front of the test upstream."""
    return nginx_factory(site, upstream)


def test_request_through_nginx_over_tls(bulkhead, front, upstream, pki):
    """A request reaches the test upstream through nginx's HTTPS: nginx logged it on a TLS connection,
    and the upstream got the path. Guards against an upstream TLS section that is ignored (nginx would
    answer a plain request with 400 "plain HTTP request was sent to HTTPS port")."""
    bh = start(bulkhead, front, up_tls(pki))
    r = fetch(bh.port, "GET", "/echo-head?via=nginx")
    assert r is not None and r.status == 200, r
    assert b'"target": "/echo-head?via=nginx"' in r.body, r.body
    assert upstream.count("/echo-head") == 1
    (line,) = front.wait_requests(1)
    assert line["protocol"].startswith("TLSv1."), line
    assert line["request"] == "GET /echo-head?via=nginx HTTP/1.1" and line["status"] == 200, line


def test_https_endpoint_form(bulkhead, front, upstream, pki):
    """An endpoint written "https://127.0.0.1:PORT" turns TLS on without tls.enabled. Guards against the
    scheme being dropped without turning TLS on."""
    bh = start(bulkhead, "https://" + front.addr, {"ca": pki.ca_cert})
    r = fetch(bh.port, "GET", "/echo-head")
    assert r is not None and r.status == 200, r
    assert upstream.count("/echo-head") == 1


def test_server_name_is_sent_and_verified(bulkhead, nginx_factory, upstream, pki):
    """nginx with a certificate for api.test only (no IP address): with server_name api.test the request
    goes through, and nginx saw api.test as SNI; without it bulkhead verifies the endpoint's address,
    which the certificate does not name: 502 tls_certificate_error. Guards against server_name not used as
    the verified name, and against no name verification at all (X509_VERIFY_PARAM_set1_host / set1_ip
    missing)."""
    api = pki.server("api.test")
    n = nginx_factory(api, upstream)
    bh = start(bulkhead, n, up_tls(pki, server_name="api.test"))
    r = fetch(bh.port, "GET", "/echo-head")
    assert r is not None and r.status == 200, r
    (line,) = n.wait_requests(1)
    assert line["sni"] == "api.test", line

    bh2 = start(bulkhead, n, up_tls(pki))
    r = fetch(bh2.port, "GET", "/echo-head")
    assert r is not None and r.status == 502, r
    assert proxy_status_error(r) == "tls_certificate_error", r
    assert upstream.count("/echo-head") == 1


def test_client_certificate_to_the_upstream(bulkhead, nginx_factory, upstream, pki):
    """nginx requiring a client certificate from the test CA: with tls.cert/key bulkhead is served;
    without, nginx answers 400 (no required certificate). Guards against cert/key not presented."""
    n = nginx_factory(pki.server("localhost", "127.0.0.1", stem="mtls-front"), upstream, client_ca=pki.ca_cert)
    me = pki.client("bulkhead")
    bh = start(bulkhead, n, up_tls(pki, cert=me.cert, key=me.key))
    r = fetch(bh.port, "GET", "/echo-head")
    assert r is not None and r.status == 200, r
    bh2 = start(bulkhead, n, up_tls(pki))
    r = fetch(bh2.port, "GET", "/echo-head")
    assert r is not None and r.status == 400, r
    assert upstream.count("/echo-head") == 1


def test_20_mib_up_and_down_through_an_https_upstream(bulkhead, front, upstream, pki):
    """20 MiB to /sink and 20 MiB from /bytes through nginx's HTTPS, on one client connection: the
    upstream's length and SHA-256 of what it received, and every byte of the response. Guards against
    upstream TLS writes or reads that lose data under backpressure."""
    timeouts = {"total": "300s", "idle": "60s", "first_byte": "60s"}
    entry = resilient_upstream(front.addr, retry=NO_RETRY, tls=up_tls(pki), timeouts=timeouts)
    bh = bulkhead(upstreams={"u": entry},
                  limits={"max_body_bytes": "64MiB", "body_timeout": "60s"})
    body = (bytes(range(251)) * (BIG // 251 + 1))[:BIG]
    with RawClient(bh.port) as c:
        c.request("POST", "/sink", body=body)
        r = c.read_response("POST")
        assert r.status == 200, r
        assert r.json() == {"len": BIG, "sha256": hashlib.sha256(body).hexdigest()}
        c.request("GET", "/bytes?n=%d" % BIG)
        got, n = hashlib.sha256(), [0]

        def sink(piece):
            got.update(piece)
            n[0] += len(piece)

        r = c.read_response(body_sink=sink)
        assert r.status == 200 and n[0] == BIG, (r, n[0])
        assert got.hexdigest() == hashlib.sha256((PATTERN * (BIG // 256 + 1))[:BIG]).hexdigest()


def test_sessions_resumed_on_new_upstream_connections(bulkhead, nginx_factory, upstream, site, pki):
    """nginx closes every connection after one request (keepalive_requests 1), with tickets and a
    session cache: six sequential requests make six upstream connections, and all but the first resume
    the session, both as nginx logged it ($ssl_session_reused) and in bulkhead's
    bulkhead_tls_handshakes_total{side="upstream"} (resumed, not ok). Guards against a client context
    that does not keep sessions for the endpoint (every handshake full)."""
    n = nginx_factory(site, upstream, keepalive_requests=1)
    bh = start(bulkhead, n, up_tls(pki))
    before = handshakes(bh, "upstream")
    for i in range(6):
        r = fetch(bh.port, "GET", "/echo-head?i=%d" % i)
        assert r is not None and r.status == 200, r
    lines = n.wait_requests(6)
    assert len({x["conn"] for x in lines}) == 6, "expected one nginx connection per request: %r" % lines
    reused = [x["reused"] == "r" for x in lines]
    assert reused[0] is False and all(reused[1:]), "nginx saw resumption %r" % lines
    after = wait_until(lambda: (lambda h: h["ok"] + h["resumed"] - before["ok"] - before["resumed"] >= 6 and h)(
        handshakes(bh, "upstream")), what="six upstream handshakes counted")
    assert after["resumed"] - before["resumed"] == 5, (before, after)
    assert after["ok"] - before["ok"] == 1, (before, after)


def test_health_checks_over_tls(bulkhead, front, upstream, pki):
    """health_check on an HTTPS endpoint: the checks reach the test upstream through nginx (so they
    spoke TLS: nginx refuses plain HTTP with 400) and the endpoint is healthy in /stats. Guards against
    health checks that ignore the upstream's tls section."""
    bh = start(bulkhead, front, up_tls(pki), health_check=CHECK)
    wait_until(lambda: upstream.count("/healthz", "GET") >= 4, what="health checks through nginx")
    checks = [x for x in front.requests() if x["request"].startswith("GET /healthz ")]
    assert checks and all(x["status"] == 200 and x["protocol"].startswith("TLSv1.") for x in checks), checks
    (ep,) = named(admin_stats(bh)["upstreams"], "u")["endpoints"]
    assert ep["healthy"] is True, ep
    r = fetch(bh.port, "GET", "/echo-head")
    assert r is not None and r.status == 200, r


def test_health_checks_fail_on_an_untrusted_certificate(bulkhead, faults_factory, other_pki, pki):
    """Two TLS servers that answer every check 200, one with a certificate from the test CA, one from a
    CA nobody trusts: the first stays healthy and gets the check requests, the second turns unhealthy
    and never gets a request (its handshakes are refused). Guards against health checks that skip
    verification (both healthy), or that do not speak TLS (neither gets a request)."""
    good = faults_factory("serve", pki.server("localhost", "127.0.0.1", stem="hc-good"))
    bad = faults_factory("serve", other_pki.server("localhost", "127.0.0.1"))
    entry = resilient_upstream(good.addr, bad.addr, retry=NO_RETRY, tls=up_tls(pki), health_check=CHECK)
    bh = bulkhead(upstreams={"u": entry})
    wait_until(lambda: bad.stats()["connections"] >= 3, what="three health-check connections to the bad one")
    wait_until(lambda: good.stats()["requests"] >= 3, what="three health checks answered by the good one")

    def health():
        eps = named(admin_stats(bh)["upstreams"], "u")["endpoints"]
        return {e["address"]: e["healthy"] for e in eps}
    wait_until(lambda: health() == {good.addr: True, bad.addr: False},
               what="the untrusted endpoint to be unhealthy and the other healthy")
    assert bad.stats()["requests"] == 0, bad.stats()


def test_verify_false_accepts_an_untrusted_certificate(bulkhead, faults_factory, other_pki, pki):
    """verify: false (written out) with a certificate from an untrusted CA for another name: 200 from
    the server. The same server with verification on gives 502 tls_certificate_error (so the 200 is
    verify: false's doing)."""
    srv = faults_factory("serve", other_pki.server("elsewhere.test"))
    bh = start(bulkhead, srv, {"enabled": True, "verify": False})
    r = fetch(bh.port, "GET", "/x")
    assert r is not None and r.status == 200 and r.header("X-Upstream") == "faults", r
    bh2 = start(bulkhead, srv, up_tls(pki))
    r = fetch(bh2.port, "GET", "/x")
    assert r is not None and r.status == 502 and proxy_status_error(r) == "tls_certificate_error", r
    assert srv.stats()["requests"] == 1


# what a failed upstream handshake must look like: (server mode, which certificate, server_name,
# the RFC 9209 error type, what `details` must contain: OpenSSL's reason)
FAILURES = {
    "untrusted": ("serve", "untrusted", None, "tls_certificate_error", "unable to get local issuer certificate"),
    "expired": ("serve", "expired", None, "tls_certificate_error", "certificate has expired"),
    "wrong-name": ("serve", "wrong-name", "localhost", "tls_certificate_error", "hostname mismatch"),
    "wrong-ip": ("serve", "wrong-name", None, "tls_certificate_error", "IP address mismatch"),
    "alert": ("alert", None, None, "tls_alert_received", "handshake failure"),
    "garbage-after-server-hello": ("garbage", "good", None, "tls_protocol_error", ""),
    "plain-http-server": ("plain-http", None, None, "tls_protocol_error", ""),
}


def fault_cert(kind, pki, other_pki):
    if kind == "good":
        return pki.server("localhost", "127.0.0.1", stem="faults-good")
    if kind == "untrusted":
        return other_pki.server("localhost", "127.0.0.1")
    if kind == "expired":
        return pki.expired("localhost", "127.0.0.1")
    if kind == "wrong-name":
        return pki.server("other.test")
    return None


@pytest.mark.parametrize("case", list(FAILURES))
def test_failed_handshake_is_502_and_counted_by_the_breaker(bulkhead, faults_factory, pki, other_pki, case):
    """Each failed upstream handshake is a 502 whose Proxy-Status names the RFC 9209 type and carries
    OpenSSL's reason in details; no HTTP request reaches the server. With breaker.consecutive_failures
    2, two such failures open the breaker: the third request is bulkhead's 503
    destination_unavailable and makes no connection. The failed handshakes are counted in
    bulkhead_tls_handshakes_total{side="upstream",result="failed"}. Guards against a handshake failure
    mapped to a generic error, a lost reason, or failures the breaker does not count."""
    mode, kind, server_name, error, reason = FAILURES[case]
    srv = faults_factory(mode, fault_cert(kind, pki, other_pki))
    tls = up_tls(pki)
    if server_name:
        tls["server_name"] = server_name
    bh = start(bulkhead, srv, tls, breaker={"consecutive_failures": 2, "open_for": "60s", "max_open_for": "60s",
                                            "min_requests": 1000000})
    before = handshakes(bh, "upstream")
    for _ in range(2):
        r = fetch(bh.port, "GET", "/x")
        assert r is not None and r.status == 502, r
        assert proxy_status_error(r) == error, r.header("Proxy-Status")
        details = proxy_status_details(r)
        assert details, "no details in %r" % r.header("Proxy-Status")
        assert reason.lower() in details.lower(), "details %r lack OpenSSL's reason %r" % (details, reason)
    wait_until(lambda: handshakes(bh, "upstream")["failed"] - before["failed"] == 2,
               what="two failed upstream handshakes counted")
    conns = srv.stats()["connections"]
    assert conns == 2, srv.stats()
    r = fetch(bh.port, "GET", "/x")
    assert r is not None and r.status == 503 and proxy_status_error(r) == "destination_unavailable", r
    assert named(admin_stats(bh)["upstreams"], "u")["breaker"] == "open"
    st = srv.stats()
    assert st["connections"] == conns and st["requests"] == 0, st


def test_forwarded_proto_is_http_for_a_plain_client_to_an_https_upstream(bulkhead, front, upstream, pki):
    """X-Forwarded-Proto says how the client reached bulkhead, not how bulkhead reaches the upstream:
    a plain client to an HTTPS upstream gives `http`. Guards against deriving it from the upstream
    side."""
    bh = start(bulkhead, front, up_tls(pki))
    r = fetch(bh.port, "GET", "/echo-head")
    assert r is not None and r.status == 200, r
    assert echoed_headers(r)["x-forwarded-proto"] == ["http"], echoed_headers(r)


def test_upstream_min_version_13_refuses_a_tls_12_server(bulkhead, nginx_factory, upstream, site, pki):
    """tls.min_version "1.3" against nginx speaking TLS 1.2 only: no connection (502 with a TLS error
    type, nothing reaches the test upstream); the default ("1.2") is served by the same nginx. Guards
    against the upstream min_version ignored."""
    n = nginx_factory(site, upstream, protocols="TLSv1.2")
    bh = start(bulkhead, n, up_tls(pki, min_version="1.3"))
    r = fetch(bh.port, "GET", "/echo-head")
    assert r is not None and r.status == 502, r
    assert proxy_status_error(r) in ("tls_alert_received", "tls_protocol_error"), r.header("Proxy-Status")
    assert upstream.count("/echo-head") == 0
    bh2 = start(bulkhead, n, up_tls(pki))
    r = fetch(bh2.port, "GET", "/echo-head")
    assert r is not None and r.status == 200, r
    (line,) = n.wait_requests(1)
    assert line["protocol"] == "TLSv1.2", line


def test_default_ca_is_the_system_store(bulkhead, front, pki):
    """No tls.ca: the system store, which does not hold the test CA: 502 tls_certificate_error. Guards
    against a default that trusts any certificate."""
    bh = start(bulkhead, front, {"enabled": True})
    r = fetch(bh.port, "GET", "/echo-head")
    assert r is not None and r.status == 502, r
    assert proxy_status_error(r) == "tls_certificate_error", r.header("Proxy-Status")


def test_system_store_honours_ssl_cert_file(bulkhead, front, pki):
    """ca: system is OpenSSL's default store, so SSL_CERT_FILE (OpenSSL's own variable for it) pointing
    at the test CA makes the nginx upstream trusted: 200. Guards against "system" read from a hard-coded
    file instead of OpenSSL's default paths (X509_STORE_set_default_paths), which operators override the
    same way."""
    entry = resilient_upstream(front.addr, retry=NO_RETRY, tls={"enabled": True, "ca": "system"})
    bh = bulkhead(upstreams={"u": entry}, env={"SSL_CERT_FILE": pki.ca_cert})
    r = fetch(bh.port, "GET", "/echo-head")
    assert r is not None and r.status == 200, r


def test_tls_on_both_sides(tls_bulkhead, front, upstream, pki, ctx):
    """A TLS client, bulkhead's TLS listener, nginx's HTTPS: three requests on one client connection are
    answered, the upstream sees X-Forwarded-Proto https (the client side's), and each side counts its
    handshakes. Guards against the two TLS sides sharing state they should not (one context, one
    counter)."""
    bh = tls_bulkhead(upstreams={"u": resilient_upstream(front.addr, retry=NO_RETRY, tls=up_tls(pki))})
    with TlsClient(bh.port, ctx) as c:
        for i in range(3):
            r = c.get("/echo-head?i=%d" % i)
            assert r.status == 200, r
            assert echoed_headers(r)["x-forwarded-proto"] == ["https"], echoed_headers(r)
    assert upstream.count("/echo-head") == 3
    wait_until(lambda: handshakes(bh, "client")["ok"] == 1 and handshakes(bh, "upstream")["ok"] >= 1,
               what="one handshake counted on each side")


def two_servers(faults_factory, pki, other_pki):
    """Two TLS servers answering 200: one with a test-CA certificate, one with an untrusted one."""
    good = faults_factory("serve", pki.server("localhost", "127.0.0.1", stem="pair-good"))
    bad = faults_factory("serve", other_pki.server("localhost", "127.0.0.1"))
    return good, bad


def test_failed_handshake_is_retried_even_for_a_post(bulkhead, faults_factory, pki, other_pki):
    """A failed handshake sent nothing (NOT_SENT), so even a POST is retried on the other endpoint:
    round robin over a trusted and an untrusted server with attempts 2, ten POSTs all 200, each received
    once by the trusted server, none by the untrusted one (which saw the handshakes). Guards against a
    handshake failure classified as "sent, no response" (a POST would then get 502)."""
    good, bad = two_servers(faults_factory, pki, other_pki)
    entry = resilient_upstream(good.addr, bad.addr, balance="round_robin", tls=up_tls(pki),
                               retry={"attempts": 2, "backoff": {"base": "1ms", "max": "5ms"}})
    bh = bulkhead(upstreams={"u": entry})
    for i in range(10):
        r = fetch(bh.port, "POST", "/p?i=%d" % i, body=b"x" * (100 + i))
        assert r is not None and r.status == 200, r
    assert good.stats()["requests"] == 10, good.stats()
    st = bad.stats()
    assert st["connections"] >= 1 and st["requests"] == 0, st


def test_failed_handshakes_eject_the_endpoint(bulkhead, faults_factory, pki, other_pki):
    """outlier.consecutive_failures 2, no retries, round robin over a trusted and an untrusted server:
    the untrusted one fails two handshakes (two 502 tls_certificate_error), is ejected (/stats), and
    gets no further connection while the other serves the rest. Guards against handshake failures the
    outlier detector does not see."""
    good, bad = two_servers(faults_factory, pki, other_pki)
    entry = resilient_upstream(good.addr, bad.addr, balance="round_robin", tls=up_tls(pki), retry=NO_RETRY,
                               outlier={"consecutive_failures": 2, "eject_for": "60s", "max_ejected": "50%"})
    bh = bulkhead(upstreams={"u": entry})
    replies = [fetch(bh.port, "GET", "/g?i=%d" % i) for i in range(12)]
    failed = [r for r in replies if r is None or r.status != 200]
    assert len(failed) == 2, replies
    assert all(r is not None and r.status == 502 and proxy_status_error(r) == "tls_certificate_error"
               for r in failed), failed
    assert bad.stats()["connections"] == 2, bad.stats()
    eps = {e["address"]: e for e in named(admin_stats(bh)["upstreams"], "u")["endpoints"]}
    assert eps[bad.addr]["ejected"] is True and eps[good.addr]["ejected"] is False, eps


@pytest.mark.parametrize("case", ["verify", "server_name"])
def test_sessions_are_not_shared_by_upstreams_with_other_tls_settings(bulkhead, faults_factory, pki, other_pki,
                                                                      case):
    """Two upstreams on the same endpoint (a TLS server that issues session tickets): "lax" accepts its
    certificate (verify: false; or server_name a.test, which the certificate names), "strict" must refuse
    it (the test CA, which did not sign it; or server_name b.test, which it does not name). After requests
    through lax (new connections, resumed), a request through strict is still 502 tls_certificate_error,
    for both TLS versions. Guards against a session cache keyed by the address alone: resuming lax's
    session would skip strict's verification (a resumed handshake checks no certificate)."""
    if case == "verify":
        cert = other_pki.server("localhost", "127.0.0.1")
        lax, strict = {"enabled": True, "verify": False}, up_tls(pki)
    else:
        cert = pki.server("a.test")
        lax, strict = up_tls(pki, server_name="a.test"), up_tls(pki, server_name="b.test")
    srv = faults_factory("serve", cert)
    for v in ("1.2", "1.3"):
        ups = {"lax": resilient_upstream(srv.addr, retry=NO_RETRY, tls=dict(lax, min_version=v)),
               "strict": resilient_upstream(srv.addr, retry=NO_RETRY, tls=dict(strict, min_version=v))}
        routes = [{"match": {"path_prefix": "/lax"}, "upstream": "lax"},
                  {"match": {"path_prefix": "/strict"}, "upstream": "strict"}]
        bh = bulkhead(upstreams=ups, routes=routes)
        for _ in range(3):  # the server closes after each answer: new connections, resumed
            r = fetch(bh.port, "GET", "/lax?close=1")
            assert r is not None and r.status == 200, r
        h = wait_until(lambda: (lambda h: h["ok"] + h["resumed"] >= 3 and h)(handshakes(bh, "upstream")),
                       what="three upstream handshakes counted")
        assert h["resumed"] == 2, "the lax upstream did not resume its sessions (the test needs it): %r" % h
        r = fetch(bh.port, "GET", "/strict")
        assert r is not None and r.status == 502, (v, r)
        assert proxy_status_error(r) == "tls_certificate_error", (v, r.header("Proxy-Status"))


def test_stalled_upstream_handshake_is_a_connect_timeout(bulkhead):
    """An endpoint that accepts TCP connections and never answers the ClientHello (a listener that
    never accepts: the kernel completes the TCP handshake into its backlog): with timeouts.connect
    300ms and first_byte 60s, the client gets 504 connection_timeout, so the TLS handshake is part of
    the connect phase. Guards against a handshake with no deadline but the first-byte or total one."""
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    try:
        addr = "127.0.0.1:%d" % lsock.getsockname()[1]
        entry = resilient_upstream(addr, retry=NO_RETRY, tls={"enabled": True, "verify": False},
                                   timeouts={"connect": "300ms", "first_byte": "60s", "total": "120s"})
        bh = bulkhead(upstreams={"u": entry})
        r = fetch(bh.port, "GET", "/x")
        assert r is not None and r.status == 504, r
        assert proxy_status_error(r) == "connection_timeout", r.header("Proxy-Status")
    finally:
        lsock.close()
