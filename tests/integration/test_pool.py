"""The upstream pool as a bulkhead: a hard cap on connections, a bounded FIFO of waiters, 503s with
Retry-After when the wait is too long or the queue is full, waiters that leave, several workers."""
import asyncio
import select

import pytest
import requests

from conftest import RawClient, one_request, proxy_status_error, wait_until


def many_concurrent(port, target, n, timeout=120):
    async def run():
        return await asyncio.gather(*(one_request(port, target, timeout) for _ in range(n)),
                                    return_exceptions=True)
    return asyncio.run(run())


def assert_pool_503(r):
    assert r.status == 503, r
    assert proxy_status_error(r) == "connection_limit_reached", r.header("Proxy-Status")
    ra = r.header("Retry-After")
    assert ra is not None, "a pool 503 carries Retry-After"
    assert ra.strip().isdigit(), "Retry-After: %r" % ra


@pytest.mark.parametrize("workers", [1, 4])
def test_pool_cap_500_concurrent_clients(bulkhead, upstream, workers):
    bh = bulkhead(upstream, workers=workers,
                  pool={"max_connections": 8, "max_pending": 2000, "acquire_timeout": "120s"},
                  timeouts={"total": "180s"})
    results = many_concurrent(bh.port, "/delay?ms=50", 500)
    errors = [r for r in results if isinstance(r, BaseException) or r[0] != 200]
    assert not errors, "%d of 500 failed, e.g. %r" % (len(errors), errors[:5])
    assert all(r[1] == b"delayed" for r in results)
    st = upstream.stats()
    assert st["requests_served"] == 500
    assert st["max_open_connections"] <= 8, st
    assert st["max_in_flight"] <= 8, st


def test_acquire_timeout_503_retry_after(bulkhead, upstream, raw):
    bh = bulkhead(upstream, pool={"max_connections": 1, "max_pending": 10, "acquire_timeout": "200ms"})
    a = raw(bh.port)
    a.request("GET", "/hold?id=a")
    wait_until(lambda: upstream.stats()["holding"] == 1, what="the first request to hold the connection")
    b = raw(bh.port)
    b.request("GET", "/echo-head?queued=1")
    assert_pool_503(b.read_response())
    assert "/echo-head" not in upstream.stats()["paths"]
    upstream.release("a")
    r = a.read_response()
    assert r.status == 200 and r.body == b"released"
    # the pool is usable again, also on the connection that got the 503 if bulkhead kept it open
    assert requests.get(bh.url + "/echo-head", timeout=30).status_code == 200
    assert upstream.stats()["connections_accepted"] == 1


def test_max_pending_overflow_immediate_503(bulkhead, upstream, raw):
    """max_connections 1, max_pending 1: with one request holding the connection, of two more requests
    one waits and the other is refused at once (long before the 60 s acquire timeout)."""
    bh = bulkhead(upstream, pool={"max_connections": 1, "max_pending": 1, "acquire_timeout": "60s"},
                  timeouts={"total": "120s"})
    a = raw(bh.port)
    a.request("GET", "/hold?id=a")
    wait_until(lambda: upstream.stats()["holding"] == 1, what="the first request to hold the connection")
    b, c = raw(bh.port), raw(bh.port)
    b.request("GET", "/echo-head?who=b")
    c.request("GET", "/echo-head?who=c")
    ready, _, _ = select.select([b.sock, c.sock], [], [], 30)
    assert ready, "neither extra request was refused: the wait queue is not bounded by max_pending"
    refused, waiting = (b, c) if b.sock in ready else (c, b)
    assert_pool_503(refused.read_response())
    upstream.release("a")
    assert a.read_response().status == 200
    r = waiting.read_response()
    assert r.status == 200 and r.json()["query"] == ("who=c" if waiting is c else "who=b")


def test_queued_client_that_leaves_frees_its_slot(bulkhead, upstream, raw):
    """max_connections 1, max_pending 1: a waiter whose client disconnects leaves the queue, so a new
    request can wait in its place, and the departed request never reaches the upstream."""
    bh = bulkhead(upstream, pool={"max_connections": 1, "max_pending": 1, "acquire_timeout": "60s"},
                  timeouts={"total": "120s"})
    a = raw(bh.port)
    a.request("GET", "/hold?id=a")
    wait_until(lambda: upstream.stats()["holding"] == 1, what="the first request to hold the connection")
    # find out which of two requests waits: the other one is refused with 503
    b, c = RawClient(bh.port), RawClient(bh.port)
    b.request("GET", "/echo-head?who=gone")
    c.request("GET", "/echo-head?who=gone")
    ready, _, _ = select.select([b.sock, c.sock], [], [], 30)
    assert ready, "neither extra request was refused"
    refused, waiting = (b, c) if b.sock in ready else (c, b)
    assert_pool_503(refused.read_response())
    refused.close()
    waiting.close()  # the waiting client goes away

    # Probe until a new request waits instead of being refused. A refusal is bulkhead answering
    # at once; a probe that stays unanswered for 2 s is waiting (acquire_timeout is 60 s).
    probe = None
    for _ in range(15):
        p = raw(bh.port)
        p.request("GET", "/echo-head?who=probe")
        if not p.readable_within(2.0):
            probe = p
            break
        assert_pool_503(p.read_response())
        p.close()
    assert probe is not None, "the departed client's place in the queue was never freed"
    upstream.release("a")
    assert a.read_response().status == 200
    r = probe.read_response()
    assert r.status == 200 and r.json()["query"] == "who=probe"
    wait_until(lambda: upstream.stats()["in_flight"] == 0, what="the upstream to be idle")
    st = upstream.stats()
    assert st["paths"].get("/echo-head") == 1, "the departed client's request was forwarded: %r" % st


def test_waiters_served_in_turn_by_one_connection(bulkhead, upstream):
    """max_connections 1 with a long queue: every request eventually succeeds over one connection."""
    bh = bulkhead(upstream, pool={"max_connections": 1, "max_pending": 100, "acquire_timeout": "120s"},
                  timeouts={"total": "180s"})
    results = many_concurrent(bh.port, "/delay?ms=5", 50)
    assert [r[0] if not isinstance(r, BaseException) else r for r in results] == [200] * 50
    st = upstream.stats()
    assert st["max_open_connections"] == 1 and st["connections_accepted"] == 1, st


def test_no_starvation_across_workers(bulkhead, upstream):
    """4 workers share a global cap of 2. Idle connections may sit on one worker while a request
    arrives on another: that request must get a connection (bulkhead asks the holder to close an
    idle one), not wait until acquire_timeout. The idle timeout is far longer than acquire_timeout, so
    waiting for the idle connection to expire would show up as 503s."""
    bh = bulkhead(upstream, workers=4,
                  pool={"max_connections": 2, "max_idle": 2, "idle_timeout": "120s",
                        "acquire_timeout": "2s", "max_pending": 100})
    codes = []
    for i in range(60):  # a new client connection each time: the kernel spreads them over workers
        with RawClient(bh.port) as c:
            c.request("GET", "/echo-head?i=%d" % i, headers=[("Connection", "close")])
            r = c.read_response()
            codes.append((r.status, proxy_status_error(r)))
    assert codes == [(200, None)] * 60, [c for c in codes if c[0] != 200][:5]
    assert upstream.stats()["max_open_connections"] <= 2
    results = many_concurrent(bh.port, "/delay?ms=20", 40)
    assert [r[0] if not isinstance(r, BaseException) else r for r in results] == [200] * 40
    assert upstream.stats()["max_open_connections"] <= 2


def test_pool_cap_with_several_upstreams(bulkhead, upstream_factory):
    """Each upstream has its own cap; one saturated upstream does not block the other."""
    a, b = upstream_factory("A"), upstream_factory("B")
    bh = bulkhead(upstreams={"a": {"endpoints": [a.addr], "pool": {"max_connections": 1,
                                                                   "acquire_timeout": "60s"}},
                             "b": {"endpoints": [b.addr], "pool": {"max_connections": 1}}},
                  routes=[{"match": {"path_prefix": "/a/"}, "upstream": "a", "strip_prefix": True},
                          {"match": {"path_prefix": "/b/"}, "upstream": "b", "strip_prefix": True}])
    held = RawClient(bh.port)
    try:
        held.request("GET", "/a/hold?id=x")
        wait_until(lambda: a.stats()["holding"] == 1, what="upstream A to be saturated")
        r = requests.get(bh.url + "/b/echo-head", timeout=30)
        assert r.status_code == 200 and r.headers["X-Upstream"] == "B"
        a.release("x")
        assert held.read_response().status == 200
    finally:
        held.close()
