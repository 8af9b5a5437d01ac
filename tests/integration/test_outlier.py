"""Passive outlier ejection per endpoint (issue 3): consecutive failures on one endpoint eject it (it
gets no traffic while ejected), never more than max_ejected of the endpoints, and when every endpoint
is ejected traffic goes to all of them (panic mode). Also: with one of three endpoints dead, or killed
in the middle of the traffic, clients see no error.

Round-robin balancing makes "which endpoint gets the next request" predictable; the breaker is kept
out of the way (resilient_upstream's default)."""
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import requests

from conftest import (admin_stats, can_connect, fetch, free_port, proxy_status_error, named, resilient_upstream,
                      wait_until)


def start(bulkhead, ups, retry=None, balance="round_robin", **outlier):
    conf = {"consecutive_failures": 3, "eject_for": "30s", "max_ejected": "50%"}
    conf.update(outlier)
    entry = resilient_upstream(*ups, balance=balance, retry=retry or {"attempts": 1}, outlier=conf)
    return bulkhead(upstreams={"u": entry})


def send(bh, n, path="/echo-head"):
    return [fetch(bh.port, "GET", "%s?i=%d" % (path, i)) for i in range(n)]


def traffic(ups):
    return [u.traffic() for u in ups]


def test_failing_endpoint_is_ejected(bulkhead, upstream_factory):
    ups = [upstream_factory(n) for n in ("a", "b", "c")]
    a = ups[0]
    a.set_mode("fail-503")
    bh = start(bulkhead, ups, consecutive_failures=3)
    replies = send(bh, 30)
    assert a.traffic() == 3, "the failing endpoint got %d requests, expected 3 then none" % a.traffic()
    assert sum(1 for r in replies if r.status == 503) == 3
    assert all(r.status == 200 for r in replies if r.header("X-Upstream") != "a")
    # recovered, but still ejected for 30 s: no traffic
    a.set_mode("ok")
    replies = send(bh, 15)
    assert [r.status for r in replies] == [200] * 15
    assert a.traffic() == 3
    assert ups[1].traffic() + ups[2].traffic() == 27 + 15


def test_success_resets_the_failure_run(bulkhead, upstream_factory):
    ups = [upstream_factory(n) for n in ("a", "b")]
    a = ups[0]
    bh = start(bulkhead, ups, consecutive_failures=3)
    for _ in range(4):
        a.set_mode("fail-503", count=2)  # two failures, then a success: never three in a row
        before = a.traffic()
        wait_until(lambda: fetch(bh.port, "GET", "/echo-head") and a.traffic() >= before + 3,
                   what="three requests on endpoint a")
    replies = send(bh, 10)
    assert [r.status for r in replies] == [200] * 10
    assert sum(1 for r in replies if r.header("X-Upstream") == "a") == 5, "endpoint a was ejected"


def test_ejection_ends_after_eject_for(bulkhead, upstream_factory):
    ups = [upstream_factory(n) for n in ("a", "b")]
    a = ups[0]
    a.set_mode("fail-503")
    bh = start(bulkhead, ups, consecutive_failures=3, eject_for="500ms")
    send(bh, 10)
    assert a.traffic() == 3
    a.set_mode("ok")
    wait_until(lambda: fetch(bh.port, "GET", "/echo-head") and a.traffic() > 3,
               what="the ejected endpoint to get traffic again")


def ejected(bh):
    """The addresses of the upstream's endpoints that /stats shows ejected."""
    wait_until(lambda: can_connect(bh.admin_port), what="the admin listener")
    eps = named(admin_stats(bh)["upstreams"], "u")["endpoints"]
    return sorted(e["address"] for e in eps if e["ejected"])


def test_never_more_than_max_ejected(bulkhead, upstream_factory):
    """Three of four endpoints fail; max_ejected 50% keeps at most two of them out at once, so the
    third failing endpoint and d share the traffic. Which two are out rotates: when the third reaches
    its threshold, the one ejected first comes back to make room."""
    ups = [upstream_factory(n) for n in ("a", "b", "c", "d")]
    for u in ups[:3]:
        u.set_mode("fail-503")
    bh = start(bulkhead, ups, consecutive_failures=3, max_ejected="50%")
    seen = set()
    for _ in range(8):
        replies = send(bh, 10)
        out = ejected(bh)
        assert len(out) == 2 and ups[3].addr not in out, "ejected %r with max_ejected 50%% of 4" % out
        seen.add(tuple(out))
        assert all(r.status == 200 for r in replies if r.header("X-Upstream") == "d"), replies
    assert len(seen) > 1, "the ejected pair never changed: %r" % seen


def test_released_endpoint_takes_the_traffic_of_a_failing_one(bulkhead, upstream_factory):
    """A rolling restart: a fails and is ejected for a minute, comes back healthy, then b fails. With
    max_ejected 50% only one of two may be out: b's failure run brings a back early (its evidence is
    the older) instead of leaving every request on b until a's minute is over."""
    a, b = upstream_factory("a"), upstream_factory("b")
    a.set_mode("fail-503")
    bh = start(bulkhead, [a, b], consecutive_failures=3, eject_for="60s", max_ejected="50%")
    send(bh, 10)
    assert a.traffic() == 3 and ejected(bh) == [a.addr]
    a.set_mode("ok")
    b.set_mode("fail-503")
    replies = send(bh, 10)
    got = [(r.status, r.header("X-Upstream")) for r in replies]
    assert got == [(503, "b")] * 3 + [(200, "a")] * 7, got
    assert ejected(bh) == [b.addr]
    # the operator's record of both decisions (the error log is written by a thread of its own)
    first = "upstream u: endpoint %s ejected for 60000 ms (ejection 1, 3 failures in a row)\"" % a.addr
    second = ("upstream u: endpoint %s ejected for 60000 ms (ejection 1, 3 failures in a row); endpoint %s "
              "comes back early to stay within max_ejected" % (b.addr, a.addr))
    wait_until(lambda: first in bh.stderr_text() and second in bh.stderr_text(), what="both ejections logged")
    metrics = urllib.request.urlopen(bh.admin_url + "/metrics", timeout=30).read().decode()
    assert 'bulkhead_outlier_ejections_total{upstream="u"} 2\n' in metrics
    assert 'bulkhead_outlier_releases_total{upstream="u"} 1\n' in metrics


def test_all_ejected_panic_sends_to_all(bulkhead, upstream_factory):
    ups = [upstream_factory(n) for n in ("a", "b")]
    for u in ups:
        u.set_mode("fail-503")
    bh = start(bulkhead, ups, consecutive_failures=3, max_ejected="100%")
    send(bh, 12)  # both endpoints fail 3 times in a row: both ejected
    before = traffic(ups)
    replies = send(bh, 10)
    after = traffic(ups)
    # traffic still goes to the endpoints (all of them), not refused by bulkhead
    assert all(r.status == 503 and r.header("X-Upstream") is not None for r in replies), replies
    assert all(proxy_status_error(r) is None for r in replies), replies
    assert sum(after) - sum(before) == 10
    assert all(y > x for x, y in zip(before, after)), (before, after)
    # and once they recover, clients are served
    for u in ups:
        u.set_mode("ok")
    assert [r.status for r in send(bh, 4)] == [200] * 4


def test_one_of_three_dead_zero_errors(bulkhead, upstream_factory):
    """One endpoint refuses connections: with the default retry policy (connect failures are retried,
    even POSTs, on another endpoint) and outlier ejection, 8 concurrent clients see no error."""
    a, b = upstream_factory("a"), upstream_factory("b")
    dead = "127.0.0.1:%d" % free_port()
    bh = start(bulkhead, [a, dead, b], retry={"backoff": {"base": "1ms", "max": "5ms"}},
               consecutive_failures=3, balance="least_request")

    def client(k):
        out = []
        with requests.Session() as s:
            for i in range(25):
                if i % 2:
                    r = s.post(bh.url + "/echo?c=%d&i=%d" % (k, i), data=b"body-%d-%d" % (k, i), timeout=30)
                    out.append((r.status_code, r.content == b"body-%d-%d" % (k, i)))
                else:
                    r = s.get(bh.url + "/echo-head?c=%d&i=%d" % (k, i), timeout=30)
                    out.append((r.status_code, True))
        return out

    with ThreadPoolExecutor(8) as ex:
        results = [x for xs in ex.map(client, range(8)) for x in xs]
    assert results == [(200, True)] * 200
    assert a.traffic() + b.traffic() == 200  # each request reached a live endpoint exactly once


def test_endpoint_killed_midway_zero_errors(bulkhead, upstream_factory):
    """Three live endpoints; one is killed while 8 clients send GETs: its in-flight and pooled
    connections die, and every client request still succeeds (retried elsewhere, then ejected)."""
    ups = [upstream_factory(n) for n in ("a", "b", "c")]
    bh = start(bulkhead, ups, retry={"backoff": {"base": "1ms", "max": "5ms"}}, consecutive_failures=3,
               balance="round_robin")
    done = [0]
    lock = threading.Lock()

    def client(k):
        out = []
        with requests.Session() as s:
            for i in range(50):
                r = s.get(bh.url + "/echo-head?c=%d&i=%d" % (k, i), timeout=30)
                out.append(r.status_code)
                with lock:
                    done[0] += 1
        return out

    with ThreadPoolExecutor(8) as ex:
        futures = [ex.submit(client, k) for k in range(8)]
        wait_until(lambda: done[0] >= 100, what="100 requests before the kill")
        ups[2].stop()
        statuses = [s for f in futures for s in f.result()]
    assert statuses == [200] * 400
