"""Idle TLS connections release their buffers (issue 11: SSL_MODE_RELEASE_BUFFERS or equivalent).

Two fresh bulkheads, one listening in plain HTTP and one in HTTPS, each given N client connections that
sent and received full-size records and stay open: the growth of VmRSS per connection is compared.
OpenSSL's record buffers are about 17 KiB for reading and 17 KiB for writing per connection; kept while
idle, they make an idle TLS connection cost some 34 KiB more than a plain one. This is a memory bound, not
a timing one. Under AddressSanitizer the quarantine of freed memory would count as growth (released
buffers are freed memory), so these instances run without it."""
import os

from tlsfix import RawClient, TlsClient, admin_stats, per_worker, settled, wait_until

N = 300
BODY = bytes(range(256)) * 256  # 64 KiB
# What an idle TLS connection may cost beyond an idle plain one: an SSL object and its session, not
# its record buffers. Measured (OpenSSL 3.0, after use()): about 14 KiB with SSL_MODE_RELEASE_BUFFERS,
# 46 KiB without; 25 KiB with it under ASan (redzones, shadow memory).
EXTRA_BOUND = 32 * 1024


def no_quarantine_env():
    opts = os.environ.get("ASAN_OPTIONS", "")
    return {"ASAN_OPTIONS": (opts + ":" if opts else "") + "quarantine_size_mb=0"}


def use(c):
    """Full-size records both ways (64 KiB up, 64 KiB down), so that a connection's record buffers, were
    they kept, would be resident, not just allocated."""
    c.request("POST", "/sink", body=BODY)
    r = c.read_response("POST")
    assert r.status == 200 and r.json()["len"] == len(BODY), r
    r = c.get("/bytes?n=%d" % len(BODY))
    assert r.status == 200 and len(r.body) == len(BODY), r


def growth_per_connection(bh, connect):
    """VmRSS growth per connection of N idle client connections (each used first, see use())."""
    settled(bh)
    warm = [connect() for _ in range(8)]  # first-use allocations out of the measure
    for c in warm:
        use(c)
        c.close()
    wait_until(lambda: sum(per_worker(admin_stats(bh), "clients")) == 0, what="the warm-up connections to close")
    before = bh.rss()
    conns = []
    try:
        for _ in range(N):
            c = connect()
            conns.append(c)
            use(c)
        wait_until(lambda: sum(per_worker(admin_stats(bh), "clients")) == N, what="%d idle clients" % N)
        return (bh.rss() - before) / N
    finally:
        for c in conns:
            c.close()


def test_idle_tls_connection_costs_no_record_buffers(tls_bulkhead, bulkhead, upstream, ctx):
    """N idle TLS connections grow VmRSS by at most EXTRA_BOUND per connection more than N idle plain
    ones. Guards against idle TLS connections that keep OpenSSL's read and write buffers."""
    limits = {"keepalive_timeout": "300s"}
    plain = bulkhead(upstream, limits=limits, env=no_quarantine_env())

    class Plain(RawClient):
        def get(self, target="/echo-head", headers=(), host="localhost"):
            self.request("GET", target, headers=headers, host=host)
            return self.read_response()

    plain_cost = growth_per_connection(plain, lambda: Plain(plain.port))
    tls = tls_bulkhead(upstream, limits=limits, env=no_quarantine_env())
    tls_cost = growth_per_connection(tls, lambda: TlsClient(tls.port, ctx))
    extra = tls_cost - plain_cost
    assert extra <= EXTRA_BOUND, ("an idle TLS connection costs %.1f KiB, a plain one %.1f KiB: %.1f KiB more"
                                  % (tls_cost / 1024, plain_cost / 1024, extra / 1024))
