"""Circuit breaker per upstream (issue 3): CLOSED -> OPEN on consecutive failures or on the failure rate
over the window; OPEN answers 503 destination_unavailable with Retry-After without touching the network;
HALF_OPEN admits exactly half_open_probes requests: all succeed -> CLOSED, any fails -> OPEN again.

Retries are off (attempts 1) so that each client request is one attempt, and the test upstream counts
what reached it: with the breaker open it must receive nothing, not even a connection."""
from conftest import (IO_TIMEOUT, RawClient, fetch, proxy_status_error, resilient_upstream, retry_after_of,
                      wait_until)


def start(bulkhead, up, workers=1, total="60s", **breaker):
    conf = {"consecutive_failures": 3, "open_for": "30s", "max_open_for": "60s"}
    conf.update(breaker)
    entry = resilient_upstream(up, retry={"attempts": 1}, breaker=conf,
                               timeouts={"first_byte": "60s", "total": total})
    return bulkhead(upstreams={"u": entry}, workers=workers)


def is_open_reply(r):
    return r is not None and r.status == 503 and proxy_status_error(r) == "destination_unavailable"


def assert_open_reply(r, max_retry_after=60):
    assert is_open_reply(r), r
    assert r.header("X-Upstream") is None, r
    assert 1 <= retry_after_of(r) <= max_retry_after, r.header("Retry-After")


def fail(bh, up, n, status=500):
    up.set_mode("fail-%d" % status)
    for _ in range(n):
        r = fetch(bh.port, "GET", "/fail")
        assert r is not None and r.status == status and r.header("X-Upstream") is not None, r
    up.set_mode("ok")


def assert_fails_fast(bh, up, n=5):
    """n requests answered by the open breaker; the upstream sees no request and no connection."""
    before = up.stats()
    for _ in range(n):
        assert_open_reply(fetch(bh.port, "GET", "/echo-head"))
    after = up.stats()
    assert up.traffic(after) == up.traffic(before), "a request reached the upstream with the breaker open"
    assert after["connections_accepted"] == before["connections_accepted"], \
        "bulkhead connected to the upstream with the breaker open"


class Pending:
    """A request sent on its own connection whose reply is read later."""

    def __init__(self, port, target):
        self.client = RawClient(port)
        self.client.request("GET", target)

    def answered(self):
        return self.client.readable_within(0)

    def reply(self):
        return self.client.read_response()

    def close(self):
        self.client.close()


def admit_one(bh, up, target="/echo-head", timeout=30):
    """Sends requests until one reaches the upstream (which hangs it); rejected ones must be the
    breaker's 503. Returns the Pending request that got through."""
    state = {}

    def attempt():
        base = up.traffic()
        p = Pending(bh.port, target)
        wait_until(lambda: up.traffic() > base or p.answered(), timeout=IO_TIMEOUT,
                   what="the request to be admitted or refused")
        if up.traffic() > base:
            state["p"] = p
            return True
        r = p.reply()
        p.close()
        assert is_open_reply(r), "a request was neither admitted nor refused by the breaker: %r" % r
        return False

    wait_until(attempt, timeout=timeout, what="the breaker to admit a probe")
    return state["p"]


# ---------------------------------------------------------------------------------------------
# CLOSED -> OPEN

def test_opens_after_consecutive_failures(bulkhead, upstream):
    bh = start(bulkhead, upstream, consecutive_failures=3)
    fail(bh, upstream, 3)
    assert upstream.traffic() == 3
    assert_fails_fast(bh, upstream)  # the upstream is healthy again, but the breaker does not know


def test_success_resets_the_consecutive_count(bulkhead, upstream):
    bh = start(bulkhead, upstream, consecutive_failures=3)
    for _ in range(4):
        fail(bh, upstream, 2)
        r = fetch(bh.port, "GET", "/echo-head")
        assert r is not None and r.status == 200, r
    assert upstream.traffic() == 12


def test_client_errors_do_not_count(bulkhead, upstream):
    bh = start(bulkhead, upstream, consecutive_failures=3)
    for _ in range(10):
        r = fetch(bh.port, "GET", "/status/404")
        assert r is not None and r.status == 404, r
    assert upstream.traffic() == 10


def test_opens_on_failure_rate(bulkhead, upstream):
    """Consecutive failures never reach the threshold (ok and failure alternate); the rate does once
    min_requests were seen: 5 failures out of 10 is 50%."""
    bh = start(bulkhead, upstream, consecutive_failures=1000000, failure_rate="50%", window="10s",
               min_requests=10)
    for i in range(5):
        r = fetch(bh.port, "GET", "/echo-head")
        assert r is not None and r.status == 200, (i, r)
        fail(bh, upstream, 1)
    assert upstream.traffic() == 10
    assert_fails_fast(bh, upstream)


def test_failure_rate_waits_for_min_requests(bulkhead, upstream):
    bh = start(bulkhead, upstream, consecutive_failures=1000000, failure_rate="50%", window="10s",
               min_requests=20)
    fail(bh, upstream, 19)  # 100% failures, but fewer than min_requests
    assert upstream.traffic() == 19


def test_count_selects_the_outcomes_that_count(bulkhead, upstream):
    """count: [connect-failure]: upstream 5xx replies do not trip the breaker."""
    bh = start(bulkhead, upstream, consecutive_failures=3, count=["connect-failure"])
    fail(bh, upstream, 10)
    assert upstream.traffic() == 10


def test_connect_failures_count(bulkhead, upstream_factory):
    """The default count includes connect-failure: an upstream that stopped listening trips it."""
    up = upstream_factory("gone")
    addr = up.addr
    up.stop()
    entry = resilient_upstream(addr, retry={"attempts": 1},
                               breaker={"consecutive_failures": 3, "open_for": "30s"})
    bh = bulkhead(upstreams={"u": entry})
    for _ in range(3):
        r = fetch(bh.port, "GET", "/x")
        assert r is not None and r.status == 502 and proxy_status_error(r) == "connection_refused", r
    assert_open_reply(fetch(bh.port, "GET", "/x"))


def test_retry_after_is_the_time_left(bulkhead, upstream):
    bh = start(bulkhead, upstream, consecutive_failures=2, open_for="30s", max_open_for="60s")
    fail(bh, upstream, 2)
    r = fetch(bh.port, "GET", "/echo-head")
    assert_open_reply(r, max_retry_after=60)
    assert retry_after_of(r) >= 2, "Retry-After %s for an open period of about 30 s" % r.header("Retry-After")


def test_state_is_shared_by_all_workers(bulkhead, upstream):
    """Failures seen by any worker open the breaker for all: every new connection (the kernel spreads
    them over 4 workers) is refused without reaching the upstream."""
    bh = start(bulkhead, upstream, workers=4, consecutive_failures=3)
    fail(bh, upstream, 3)
    assert_fails_fast(bh, upstream, n=20)


# ---------------------------------------------------------------------------------------------
# OPEN -> HALF_OPEN -> CLOSED / OPEN

def test_half_open_admits_exactly_the_probes_then_closes(bulkhead, upstream):
    bh = start(bulkhead, upstream, consecutive_failures=2, open_for="300ms", max_open_for="300ms",
               half_open_probes=3)
    fail(bh, upstream, 2)
    base = upstream.traffic()
    upstream.set_mode("hang")  # admitted probes stay in flight until the mode changes
    probes = [admit_one(bh, upstream)]
    try:
        for k in (2, 3):
            probes.append(Pending(bh.port, "/echo-head"))
            wait_until(lambda: upstream.traffic() == base + k or probes[-1].answered(),
                       what="probe %d to be admitted" % k)
            assert upstream.traffic() == base + k, "probe %d was not admitted: %r" % (k, probes[-1].reply())
        # all probes in flight: the next request is refused without reaching the upstream
        assert_fails_fast(bh, upstream, n=3)
        upstream.set_mode("ok")  # the probes succeed
        for p in probes:
            r = p.reply()
            assert r.status == 200, r
    finally:
        upstream.set_mode("ok")
        for p in probes:
            p.close()
    # CLOSED again: everything goes through
    for i in range(10):
        r = fetch(bh.port, "GET", "/echo-head?i=%d" % i)
        assert r is not None and r.status == 200, r


def test_failed_probe_reopens(bulkhead, upstream):
    bh = start(bulkhead, upstream, consecutive_failures=2, open_for="1s", max_open_for="10s",
               half_open_probes=3)
    fail(bh, upstream, 2)
    upstream.set_mode("fail-500")
    base = upstream.traffic()

    def probe_reached():
        r = fetch(bh.port, "GET", "/probe")
        if is_open_reply(r):
            return None
        return r

    r = wait_until(probe_reached, what="a probe to reach the upstream")
    assert r.status == 500 and r.header("X-Upstream") is not None, r
    assert upstream.traffic() == base + 1
    upstream.set_mode("ok")
    assert_fails_fast(bh, upstream)  # one failed probe is enough to open it again


def test_probes_that_never_finish_do_not_keep_it_half_open(bulkhead, upstream):
    """Three probes are admitted and their clients go away while the upstream still holds them (and
    would hold them for ever). The breaker must admit requests again after a while instead of waiting
    for them: at the latest once their 3 s deadline has passed."""
    bh = start(bulkhead, upstream, total="3s", consecutive_failures=2, open_for="300ms",
               max_open_for="1s", half_open_probes=3)
    fail(bh, upstream, 2)
    base = upstream.traffic()
    upstream.set_mode("hang")
    probes = [admit_one(bh, upstream)]
    try:
        for k in (2, 3):
            probes.append(Pending(bh.port, "/echo-head"))
            wait_until(lambda: upstream.traffic() == base + k or probes[-1].answered(),
                       what="probe %d to be admitted" % k)
        for p in probes:
            p.close()
        later = admit_one(bh, upstream, timeout=30)
        later.close()
    finally:
        upstream.set_mode("ok")
