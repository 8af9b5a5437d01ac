"""Keep-alive on both sides: upstream connection reuse through the pool, client keep-alive, idle closes."""
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from conftest import wait_until


def test_sequential_requests_reuse_one_upstream_connection(bulkhead, upstream):
    bh = bulkhead(upstream, pool={"max_connections": 4})
    conns = set()
    with requests.Session() as s:
        for i in range(100):
            r = s.get(bh.url + "/echo-head?i=%d" % i, timeout=30)
            assert r.status_code == 200
            conns.add(r.headers["X-Upstream-Conn"])
    st = upstream.stats()
    assert st["requests_served"] == 100
    assert st["connections_accepted"] == 1, st
    assert len(conns) == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_concurrent_requests_bounded_connections(bulkhead, upstream, workers):
    bh = bulkhead(upstream, pool={"max_connections": 4, "max_pending": 1000, "acquire_timeout": "30s"},
                  workers=workers)

    def client(k):
        codes = []
        with requests.Session() as s:
            for i in range(40):
                codes.append(s.get(bh.url + "/echo-head?c=%d&i=%d" % (k, i), timeout=30).status_code)
        return codes

    with ThreadPoolExecutor(10) as ex:
        codes = [c for cs in ex.map(client, range(10)) for c in cs]
    assert codes == [200] * 400
    st = upstream.stats()
    assert st["requests_served"] == 400
    assert st["max_in_flight"] <= 4, st
    if workers == 1:
        assert st["max_open_connections"] <= 4, st
        assert st["connections_accepted"] <= 4, st
    else:
        # bulkhead never holds more than 4 sockets, but a connection one worker sheds for another
        # is still open in the upstream's eyes until its FIN is read: allow one per other worker.
        assert st["max_open_connections"] <= 4 + workers - 1, st
        # Waiters form one FIFO across the workers: a connection given back on one worker while the
        # oldest waiter without a connection is on the other is closed, and its permit lets the other
        # open one (connections cannot move between loops). With the 10 clients spread over both
        # workers that is up to about half of the 400 requests (measured: 23 to 201 connections), so
        # churn is by design; connections must still serve more than one request on average.
        assert st["connections_accepted"] <= 300, st


def test_client_keepalive_many_requests_one_connection(bulkhead, upstream, raw):
    bh = bulkhead(upstream)
    c = raw(bh.port)
    for i in range(200):
        c.request("GET", "/echo-head?i=%d" % i)
        r = c.read_response()
        assert r.status == 200 and r.json()["query"] == "i=%d" % i
    assert upstream.stats()["connections_accepted"] == 1


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_upstream_closes_idle_connection_no_502(bulkhead, upstream_factory, method):
    """The upstream closes idle keep-alive connections after 1s while the pool would keep them for
    30s. Once the upstream has closed the pooled connection, the next request must still succeed."""
    up = upstream_factory("idle", keepalive_timeout=1)
    bh = bulkhead(up, pool={"idle_timeout": "30s"})
    with requests.Session() as s:
        for cycle in range(4):
            r = s.request(method, bh.url + "/echo-head?cycle=%d" % cycle,
                          data=b"x" * 100 if method == "POST" else None, timeout=30)
            assert r.status_code == 200, "cycle %d: %s %r %r" % (cycle, r.status_code, r.headers,
                                                                 r.content[:200])
            wait_until(lambda: up.stats()["closed_idle"] == cycle + 1
                       and up.stats()["open_connections"] == 0,
                       what="the upstream to close its idle connection")
        st = up.stats()
        assert st["requests_served"] == 4, "each request reached the upstream once: %r" % st


def test_upstream_connection_close_response_not_reused(bulkhead, upstream):
    bh = bulkhead(upstream)
    with requests.Session() as s:
        r1 = s.get(bh.url + "/echo-head?close=1", timeout=30)
        r2 = s.get(bh.url + "/echo-head", timeout=30)
        r3 = s.get(bh.url + "/echo-head", timeout=30)
    assert [r1.status_code, r2.status_code, r3.status_code] == [200, 200, 200]
    assert r1.headers["X-Upstream-Conn"] != r2.headers["X-Upstream-Conn"]
    assert r2.headers["X-Upstream-Conn"] == r3.headers["X-Upstream-Conn"]
    assert upstream.stats()["connections_accepted"] == 2


def test_pool_idle_timeout_closes_upstream_connection(bulkhead, upstream):
    bh = bulkhead(upstream, pool={"idle_timeout": "300ms"})
    assert requests.get(bh.url + "/echo-head", timeout=30).status_code == 200
    wait_until(lambda: upstream.stats()["open_connections"] == 0,
               what="bulkhead to close the idle pooled connection")
    assert requests.get(bh.url + "/echo-head", timeout=30).status_code == 200
    assert upstream.stats()["connections_accepted"] == 2


def test_pool_max_lifetime_replaces_connection(bulkhead, upstream):
    bh = bulkhead(upstream, pool={"max_lifetime": "500ms", "idle_timeout": "60s"})
    with requests.Session() as s:
        first = s.get(bh.url + "/echo-head", timeout=30)
        assert first.status_code == 200

        def replaced():
            r = s.get(bh.url + "/echo-head", timeout=30)
            assert r.status_code == 200
            return r.headers["X-Upstream-Conn"] != first.headers["X-Upstream-Conn"]

        wait_until(replaced, interval=0.05, what="a connection past max_lifetime to be replaced")


def test_pool_max_idle(bulkhead, upstream):
    bh = bulkhead(upstream, pool={"max_connections": 6, "max_idle": 1, "idle_timeout": "60s"})

    def hold(i):
        return requests.get(bh.url + "/hold?id=idle", timeout=60).status_code

    with ThreadPoolExecutor(6) as ex:
        futs = [ex.submit(hold, i) for i in range(6)]
        wait_until(lambda: upstream.stats()["holding"] == 6, what="6 requests held at the upstream")
        upstream.release("idle")
        assert [f.result() for f in futs] == [200] * 6
    assert upstream.stats()["max_open_connections"] == 6
    wait_until(lambda: upstream.stats()["open_connections"] <= 1,
               what="bulkhead to keep at most max_idle=1 idle connection")


def test_client_keepalive_timeout(bulkhead, upstream, raw):
    bh = bulkhead(upstream, limits={"keepalive_timeout": "500ms"})
    c = raw(bh.port)
    c.request("GET", "/echo-head")
    assert c.read_response().status == 200
    assert c.wait_closed(timeout=30), "idle client connection not closed after keepalive_timeout"
