"""TLS metrics (issue 11, "Metrics"): bulkhead_tls_certificate_expiry_seconds{listener,name} (the
certificate's notAfter minus now, in seconds; name is the certificate's first DNS name) and
bulkhead_tls_handshakes_total{side="client|upstream",result="ok|failed|resumed"}, in an exposition that
`promtool check metrics` accepts. The client-side counters are also checked in test_tls_resumption.py,
the upstream failures in test_tls_upstream.py."""
import os
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest

from tlsfix import (IO_TIMEOUT, TlsClient, admin_stats, fetch, free_port, handshakes, listener_tls, metrics,
                    not_after, per_worker, resilient_upstream, series, settled, tls_config, wait_until)

EXPIRY = "bulkhead_tls_certificate_expiry_seconds"
HANDSHAKES = "bulkhead_tls_handshakes_total"
# The gauge is compared with notAfter - now computed here; bulkhead may compute "now" at scrape time or
# at load time (seconds earlier): the tolerance only has to tell seconds from milliseconds and one
# certificate from another (they differ by days).
SLACK_S = 600


def test_expiry_gauge_per_listener_and_certificate(bulkhead, upstream, pki):
    """Two TLS listeners: "public" with a.test (30 days) and b.test (90 days), "internal" with c.test
    (10 days), and a plain listener: exactly three series, each labelled with its listener and its
    certificate's first DNS name, each worth notAfter - now in seconds. Guards against a gauge in
    other units, one labelled by the wrong listener or name, or series for plain listeners."""
    a = pki.server("a.test", "alt-a.test", days=30)
    b = pki.server("b.test", days=90)
    c = pki.server("c.test", "127.0.0.1", days=10)
    conf, _, _ = tls_config(listener_tls(a, b), {"u": {"endpoints": [upstream.addr]}}, plain_listener=True)
    conf["listeners"][0]["name"] = "public"
    conf["listeners"].append({"name": "internal", "address": "127.0.0.1:%d" % free_port(),
                              "tls": listener_tls(c)})
    bh = bulkhead(config=conf)
    got = {dict(ls)["listener"] + "/" + dict(ls)["name"]: v for ls, v in series(metrics(bh), EXPIRY).items()}
    now = time.time()
    want = {"public/a.test": not_after(a.cert) - now, "public/b.test": not_after(b.cert) - now,
            "internal/c.test": not_after(c.cert) - now}
    assert set(got) == set(want), got
    for k, v in want.items():
        assert abs(got[k] - v) < SLACK_S, "%s: %r, expected about %r" % (k, got[k], v)
    for ls in series(metrics(bh), EXPIRY):
        assert set(dict(ls)) == {"listener", "name"}, ls


def test_upstream_full_handshakes_count_as_ok(bulkhead, nginx_factory, upstream, site, pki):
    """nginx with neither tickets nor a session cache, closing after every request: three requests,
    three full upstream handshakes: ok grows by 3, resumed and failed by 0. Guards against handshakes
    counted as resumed when they were not, or not counted."""
    n = nginx_factory(site, upstream, keepalive_requests=1, tickets=False, session_cache=False)
    entry = resilient_upstream(n.addr, retry={"attempts": 1}, tls={"enabled": True, "ca": pki.ca_cert})
    bh = bulkhead(upstreams={"u": entry})
    before = handshakes(bh, "upstream")
    for _ in range(3):
        r = fetch(bh.port, "GET", "/echo-head")
        assert r is not None and r.status == 200, r
    after = wait_until(lambda: (lambda h: h["ok"] - before["ok"] >= 3 and h)(handshakes(bh, "upstream")),
                       what="three upstream handshakes counted")
    assert {k: after[k] - before[k] for k in after} == {"ok": 3, "failed": 0, "resumed": 0}, (before, after)
    assert [x["reused"] for x in n.wait_requests(3)] == ["."] * 3


def promtool():
    return shutil.which("promtool") or ("/usr/bin/promtool" if os.path.exists("/usr/bin/promtool") else None)


def test_tls_families_pass_promtool(bulkhead, nginx_factory, upstream, site, pki, ctx):
    """After TLS traffic on both sides, /metrics passes `promtool check metrics`, and the two TLS
    families are declared with HELP and the right TYPE (counter, gauge), with only the documented
    label values. Guards against a malformed exposition of the new families."""
    if promtool() is None:
        pytest.fail("promtool not found (Debian package prometheus, in scripts/deps.sh)")
    n = nginx_factory(site, upstream)
    conf, _, _ = tls_config(listener_tls(site), {"u": {"endpoints": [n.addr], "tls": {
        "enabled": True, "ca": pki.ca_cert}}})
    bh = bulkhead(config=conf)
    with TlsClient(bh.port, ctx) as c:
        assert c.get().status == 200
    wait_until(lambda: handshakes(bh, "upstream")["ok"] >= 1 and handshakes(bh, "client")["ok"] >= 1,
               what="one handshake on each side counted")
    with urllib.request.urlopen(bh.admin_url + "/metrics", timeout=IO_TIMEOUT) as r:
        text = r.read().decode()
    p = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True,
                       timeout=IO_TIMEOUT)
    assert p.returncode == 0 and (p.stdout + p.stderr).strip() == "", p.stdout + p.stderr
    assert "# TYPE %s counter" % HANDSHAKES in text, text
    assert "# TYPE %s gauge" % EXPIRY in text, text
    assert "# HELP %s " % HANDSHAKES in text and "# HELP %s " % EXPIRY in text
    for ls in series(metrics(bh), HANDSHAKES):
        d = dict(ls)
        assert set(d) == {"side", "result"}, d
        assert d["side"] in ("client", "upstream") and d["result"] in ("ok", "failed", "resumed"), d


def test_tcp_probe_is_not_a_failed_handshake(tls_bulkhead, upstream, ctx):
    """A TCP connect that closes without a byte (a load balancer's TCP check) is no handshake: the
    failed counter stays, while a connection that sends garbage is counted as failed. Guards against
    alerts on failed handshakes firing for every health check."""
    bh = tls_bulkhead(upstream)
    settled(bh)
    before = handshakes(bh, "client")
    for _ in range(3):
        socket.create_connection(("127.0.0.1", bh.port), timeout=IO_TIMEOUT).close()
    with socket.create_connection(("127.0.0.1", bh.port), timeout=IO_TIMEOUT) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # plain HTTP: closed, maybe after an alert
        while s.recv(100):
            pass
    wait_until(lambda: handshakes(bh, "client")["failed"] - before["failed"] == 1,
               what="the garbage connection counted as a failed handshake")
    st = wait_until(lambda: (lambda s: sum(per_worker(s, "clients")) == 0 and s)(admin_stats(bh)),
                    what="every probe connection closed")
    assert sum(per_worker(st, "accepted")) >= 4
    assert handshakes(bh, "client") == {**before, "failed": before["failed"] + 1}
