"""Endpoints and load balancing (issue 3): round_robin spreads evenly, random spreads (not in a cycle),
least_request (power of two choices on in-flight requests) avoids the loaded endpoint; endpoints given
by name (localhost, a name from /etc/hosts) work, and a name that does not resolve does not take the
upstream down. Re-resolution every dns_refresh cannot be shown on loopback without editing /etc/hosts
(which the tests must not do)."""
import socket

import pytest

from conftest import RawClient, fetch, resilient_upstream, wait_until


def start(bulkhead, ups, balance=None, **keys):
    entry = resilient_upstream(*ups, balance=balance, retry={"attempts": 1}, **keys)
    return bulkhead(upstreams={"u": entry})


def names_of(bh, n, path="/echo-head"):
    out = []
    for i in range(n):
        r = fetch(bh.port, "GET", "%s?i=%d" % (path, i))
        assert r is not None and r.status == 200, r
        out.append(r.header("X-Upstream"))
    return out


def test_round_robin_spreads_evenly(bulkhead, upstream_factory):
    ups = [upstream_factory(n) for n in ("a", "b", "c")]
    bh = start(bulkhead, ups, balance="round_robin")
    seq = names_of(bh, 30)
    assert [u.traffic() for u in ups] == [10, 10, 10]
    # a cycle: every three consecutive requests went to three different endpoints
    assert all(len(set(seq[i:i + 3])) == 3 for i in range(28)), seq


def test_round_robin_over_keepalive_client(bulkhead, upstream_factory):
    """One client connection, many requests: balancing is per request, not per client connection."""
    ups = [upstream_factory(n) for n in ("a", "b")]
    bh = start(bulkhead, ups, balance="round_robin")
    with RawClient(bh.port) as c:
        for i in range(20):
            c.request("GET", "/echo-head?i=%d" % i)
            assert c.read_response().status == 200
    assert [u.traffic() for u in ups] == [10, 10]


def test_random_spreads(bulkhead, upstream_factory):
    ups = [upstream_factory(n) for n in ("a", "b", "c")]
    bh = start(bulkhead, ups, balance="random")
    seq = names_of(bh, 300)
    counts = [u.traffic() for u in ups]
    # expected 100 each; 50 is more than 6 standard deviations away
    assert all(c >= 50 for c in counts), counts
    # not a cycle: some endpoint got two requests in a row (for a uniform random choice, no repeat in
    # 300 requests has probability (2/3)^299)
    assert any(seq[i] == seq[i + 1] for i in range(299)), seq[:30]


def test_least_request_avoids_the_loaded_endpoint(bulkhead, upstream_factory):
    """Requests held on endpoint a keep it loaded while b is idle: least_request (two distinct random
    candidates, the less loaded wins) sends every new request to b."""
    a, b = upstream_factory("a"), upstream_factory("b")
    bh = start(bulkhead, [a, b], balance="least_request", pool={"max_connections": 64})
    held = [RawClient(bh.port) for _ in range(6)]
    try:
        for c in held:
            c.request("GET", "/hold?id=load")
        wait_until(lambda: a.stats()["holding"] + b.stats()["holding"] == 6, what="6 requests held")
        assert a.stats()["holding"] >= 1, "no request held on a: the test proves nothing"
        b.release("load")  # b is idle again, a still has its held requests in flight
        loaded = a.stats()["holding"]
        # b's requests are finished for bulkhead too once their clients have the responses
        wait_until(lambda: sum(1 for c in held if c.readable_within(0)) == 6 - loaded,
                   what="the clients of b's requests to get their responses")
        for c in held:
            if c.readable_within(0):
                assert c.read_response().status == 200
        seq = names_of(bh, 20)
        assert seq == ["b"] * 20, "least_request sent %d of 20 requests to the endpoint with %d in flight" % (
            seq.count("a"), loaded)
        assert a.count("/echo-head") == 0
    finally:
        a.release("load")
        for c in held:
            c.close()


def test_default_balance_uses_every_endpoint(bulkhead, upstream_factory):
    ups = [upstream_factory(n) for n in ("a", "b")]
    bh = start(bulkhead, ups)  # least_request by default; ties are broken at random
    names_of(bh, 40)
    assert all(u.traffic() > 0 for u in ups), [u.traffic() for u in ups]


# ---------------------------------------------------------------------------------------------
# endpoints given by name

def test_localhost_endpoint(bulkhead, upstream):
    bh = start(bulkhead, ["localhost:%d" % upstream.port])
    names_of(bh, 10)
    assert upstream.traffic() == 10


def loopback_hosts_name():
    """A name other than localhost that /etc/hosts maps to 127.0.0.1 only, or None."""
    try:
        with open("/etc/hosts") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2 or fields[0] != "127.0.0.1":
            continue
        for name in fields[1:]:
            if name == "localhost" or "localhost" in name:
                continue
            try:
                addrs = {ai[4][0] for ai in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)}
            except OSError:
                continue
            if addrs == {"127.0.0.1"}:
                return name
    return None


def test_hosts_file_name_endpoint(bulkhead, upstream_factory):
    name = loopback_hosts_name()
    if name is None:
        pytest.skip("no name other than localhost maps to 127.0.0.1 alone in /etc/hosts")
    a, b = upstream_factory("a"), upstream_factory("b")
    bh = start(bulkhead, ["%s:%d" % (name, a.port), b], balance="round_robin")
    names_of(bh, 10)
    assert [a.traffic(), b.traffic()] == [5, 5]


def test_unresolvable_name_does_not_take_the_upstream_down(bulkhead, upstream):
    """One endpoint's name does not resolve (.invalid, RFC 6761): bulkhead starts, and requests go to
    the endpoint that does (a connect failure is retried elsewhere, and a name without addresses has
    no traffic)."""
    entry = resilient_upstream("does-not-exist.invalid:%d" % upstream.port, upstream,
                               balance="round_robin")
    bh = bulkhead(upstreams={"u": entry})
    names_of(bh, 10)
    assert upstream.traffic() == 10
