"""The keep-alive race (issue 3): the upstream closes an idle connection just as the proxy reuses it
(envoyproxy/envoy#1979, #14981, haproxy/haproxy#1423). bulkhead must prevent it (liveness check when
taking a connection, connections retired before an announced Keep-Alive timeout) and retry a failure
on a reused connection before any response byte when that is safe: clients see no error.

The race is provoked on purpose: the test upstream closes connections idle for 5 ms, and clients pace
their requests with random gaps around that, so thousands of reuses land right on the close. The
pacing sleeps are the point of the test (they make the timing), not waits for readiness; the upstream's
counters show the race really was exercised (idle closes, reused connections)."""
import random
import threading

from conftest import RawClient, resilient_upstream, wait_until

IDLE = 0.005  # the upstream's keep-alive timeout


def pool_conf(**pool):
    conf = {"max_connections": 16, "idle_timeout": "60s"}  # far longer than the upstream's
    conf.update(pool)
    return conf


def start(bulkhead, up, **pool):
    # the defaults of a real configuration: retry, breaker and outlier as shipped
    entry = resilient_upstream(up, pool=pool_conf(**pool), breaker=None, outlier=None)
    return bulkhead(upstreams={"u": entry})


def start_lanes(bulkhead, ups):
    """One upstream per client lane (/uK/... goes to upstream uK): each pool then sees one paced
    request stream, so its connections' idle times follow the clients' pauses."""
    upstreams = {"u%d" % k: resilient_upstream(u, pool=pool_conf(), breaker=None, outlier=None)
                 for k, u in enumerate(ups)}
    routes = [{"match": {"path_prefix": "/u%d/" % k}, "upstream": "u%d" % k, "strip_prefix": True}
              for k in range(len(ups))]
    return bulkhead(upstreams=upstreams, routes=routes)


def paced_clients(bh, n_clients, per_client, gap, make_request):
    """n_clients threads, each on its own keep-alive client connection, sending per_client requests
    with a random pause in [gap[0], gap[1]] seconds before each. Returns [(status or error, response)]."""
    results = []
    lock = threading.Lock()

    def client(k):
        rng = random.Random(k)
        out = []
        c = RawClient(bh.port)
        try:
            for i in range(per_client):
                threading.Event().wait(rng.uniform(*gap))  # pacing, see the module docstring
                method, target, body = make_request(k, i)
                try:
                    c.request(method, target, body=body)
                    r = c.read_response(method)
                    out.append((r.status, r))
                    if (r.header("Connection") or "").lower() == "close":
                        c.close()
                        c = RawClient(bh.port)
                except OSError as e:  # the client connection itself failed: an error too
                    out.append((repr(e), None))
                    c.close()
                    c = RawClient(bh.port)
        finally:
            c.close()
            with lock:
                results.extend(out)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


LANES = 8


def test_idle_close_race_2000_requests_zero_errors(bulkhead, upstream_factory):
    ups = [upstream_factory("short%d" % k, keepalive_timeout=IDLE) for k in range(LANES)]
    bh = start_lanes(bulkhead, ups)
    results = paced_clients(bh, LANES, 2000 // LANES, (0.5 * IDLE, 1.5 * IDLE),
                            lambda k, i: ("GET", "/u%d/echo-head?i=%d" % (k, i), None))
    assert len(results) == 2000
    errors = [(s, r) for s, r in results if s != 200]
    assert not errors, "%d of 2000 requests failed, e.g. %r" % (len(errors), errors[:5])
    closed_idle = sum(u.stats()["closed_idle"] for u in ups)
    reused = sum(1 for _, r in results if int(r.header("X-Upstream-Req")) > 1)
    # the race was really run: the upstreams closed idle connections hundreds of times, and bulkhead
    # reused connections hundreds of times, with pauses around the upstreams' timeout
    assert closed_idle >= 300, "only %d idle closes by the upstreams" % closed_idle
    assert reused >= 300, "only %d responses on reused upstream connections" % reused


def test_idle_close_race_never_duplicates_a_post(bulkhead, upstream_factory):
    """POSTs in the same race: a POST that may have reached the upstream is not sent again (it may fail
    instead); one that was never written (a pooled connection found closed) may be. Each POST reaches
    the upstream at most once."""
    ups = [upstream_factory("short%d" % k, keepalive_timeout=IDLE) for k in range(LANES)]
    bh = start_lanes(bulkhead, ups)
    results = paced_clients(bh, LANES, 1000 // LANES, (0.5 * IDLE, 1.5 * IDLE),
                            lambda k, i: ("POST", "/u%d/echo-head?id=%d-%d" % (k, k, i), b"x" * 100))
    seen = {}
    for u in ups:
        for e in u.log():
            if e["method"] == "POST":
                seen[e["target"]] = seen.get(e["target"], 0) + 1
    dups = {t: n for t, n in seen.items() if n > 1}
    assert not dups, "POSTs sent more than once: %r" % dict(list(dups.items())[:10])
    ok = sum(1 for s, _ in results if s == 200)
    assert ok <= len(seen), "%d POSTs answered 200 but only %d reached the upstream" % (ok, len(seen))
    assert sum(u.stats()["closed_idle"] for u in ups) >= 150


def test_announced_keepalive_timeout_retires_connections(bulkhead, upstream_factory):
    """The upstream announces Keep-Alive: timeout=1 but never closes by itself; bulkhead's idle_timeout
    is 60 s. bulkhead must retire the connection on its own, before the announced second."""
    up = upstream_factory("announces", announce_keepalive=1)
    bh = start(bulkhead, up)
    with RawClient(bh.port) as c:
        c.request("GET", "/echo-head")
        assert c.read_response().status == 200
    wait_until(lambda: up.stats()["open_connections"] == 0, timeout=15,
               what="bulkhead to retire the connection (announced timeout 1 s, idle_timeout 60 s)")
    st = up.stats()
    assert st["closed_by_peer"] == 1 and st["closed_idle"] == 0, st


def test_announced_keepalive_timeout_still_reuses(bulkhead, upstream_factory):
    """Retiring before the announced timeout must not mean never reusing: back-to-back requests share
    one upstream connection (timeout=30 leaves a wide margin)."""
    up = upstream_factory("announces", announce_keepalive=30)
    bh = start(bulkhead, up)
    with RawClient(bh.port) as c:
        conns = set()
        for i in range(20):
            c.request("GET", "/echo-head?i=%d" % i)
            r = c.read_response()
            assert r.status == 200
            conns.add(r.header("X-Upstream-Conn"))
    assert conns == {"1"}, conns


def test_announced_keepalive_race_zero_errors(bulkhead, upstream_factory):
    """The upstream closes after 1 s idle and says so (Keep-Alive: timeout=1); clients pause between
    0.8 and 1.2 s, so most reuses would land near the close: none may fail."""
    up = upstream_factory("announces", keepalive_timeout=1, announce_keepalive=1)
    bh = start(bulkhead, up, max_connections=64)
    results = paced_clients(bh, 48, 3, (0.8, 1.2),
                            lambda k, i: ("GET", "/echo-head?k=%d&i=%d" % (k, i), None))
    assert len(results) == 144
    errors = [(s, r) for s, r in results if s != 200]
    assert not errors, "%d of 144 requests failed, e.g. %r" % (len(errors), errors[:5])
