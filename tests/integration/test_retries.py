"""Retries (issue 3): which failed attempts are sent again, how often, where, and under which budget.

The safety model: NOT_SENT (refused) is always retriable, even a POST; SENT_NO_RESPONSE only for
idempotent methods or with Idempotency-Key, and only with a body within max_replay_bytes; PARTIAL
(response bytes reached the client) never. Every test asserts on what reached the upstreams: the
per-method/path counters of the test upstream.

The breaker and the outlier detector are kept out of the way (resilient_upstream's defaults), so
only the retry policy decides."""
import hashlib
import json
import os
import threading

import pytest

from conftest import (RawClient, PeerClosed, fetch, free_port, proxy_status_error, resilient_upstream,
                      wait_until)

FAST_BACKOFF = {"base": "1ms", "max": "5ms"}


def retry(**kw):
    conf = {"backoff": FAST_BACKOFF}
    conf.update(kw)
    return conf


def start(bulkhead, *ups, balance="round_robin", timeouts=None, **retry_kw):
    entry = resilient_upstream(*ups, balance=balance, retry=retry(**retry_kw), timeouts=timeouts)
    return bulkhead(upstreams={"u": entry})


def dead_endpoint():
    return "127.0.0.1:%d" % free_port()  # nothing listens there: connection refused


def total(ups, path=None, method=None):
    return sum(u.count(path, method) for u in ups)


def is_bulkhead_error(r):
    return proxy_status_error(r) not in (None, "")


def assert_passed_through(r, status):
    """An upstream reply passed through as it was: its status, its X-Upstream, no bulkhead error."""
    assert r is not None and r.status == status, r
    assert r.header("X-Upstream") is not None, r
    assert not is_bulkhead_error(r), r


# ---------------------------------------------------------------------------------------------
# NOT_SENT: refused connections are retried on another endpoint, whatever the method

def test_refused_endpoint_get_retried_on_the_other(bulkhead, upstream):
    bh = start(bulkhead, dead_endpoint(), upstream)
    statuses = [fetch(bh.port, "GET", "/echo-head?i=%d" % i).status for i in range(20)]
    assert statuses == [200] * 20
    assert upstream.count("/echo-head", "GET") == 20


def test_refused_endpoint_post_retried_on_the_other(bulkhead, upstream):
    """A POST that never reached an upstream (connection refused) is safe to send again."""
    bh = start(bulkhead, dead_endpoint(), upstream)
    for i in range(20):
        body = os.urandom(1000 + i)
        r = fetch(bh.port, "POST", "/echo-head?i=%d" % i, body=body)
        assert r is not None and r.status == 200, r
        assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert upstream.count("/echo-head", "POST") == 20  # each exactly once


# ---------------------------------------------------------------------------------------------
# SENT_NO_RESPONSE: idempotent methods, or Idempotency-Key, with a replayable body

@pytest.mark.parametrize("mode", ["reset", "close"])
def test_post_sent_without_response_is_not_retried(bulkhead, upstream_factory, mode):
    a, b = upstream_factory("a"), upstream_factory("b")
    a.set_mode(mode)
    b.set_mode(mode)
    bh = start(bulkhead, a, b)
    for i in range(5):
        r = fetch(bh.port, "POST", "/post?i=%d" % i, body=b"x" * 100)
        assert r is not None and r.status == 502, r
        assert proxy_status_error(r) == "connection_terminated", r
        assert total((a, b), "/post", "POST") == i + 1, "a POST that reached an upstream was sent again"


@pytest.mark.parametrize("attempts", [1, 2, 3])
def test_get_reset_before_response_retried_up_to_attempts(bulkhead, upstream_factory, attempts):
    a, b = upstream_factory("a"), upstream_factory("b")
    a.set_mode("reset")
    b.set_mode("reset")
    bh = start(bulkhead, a, b, attempts=attempts)
    r = fetch(bh.port, "GET", "/get")
    assert r is not None and r.status == 502 and proxy_status_error(r) == "connection_terminated", r
    assert total((a, b), "/get", "GET") == attempts


def test_get_reset_retried_on_healthy_endpoint(bulkhead, upstream_factory):
    a, b = upstream_factory("a"), upstream_factory("b")
    a.set_mode("reset")
    bh = start(bulkhead, a, b)
    for i in range(10):
        r = fetch(bh.port, "GET", "/echo-head?i=%d" % i)
        assert r is not None and r.status == 200, r
        assert r.header("X-Upstream") == "b"
    assert b.count("/echo-head", "GET") == 10
    assert a.count("/echo-head", "GET") >= 1, "the failing endpoint was never tried: the test proves nothing"


def test_post_with_idempotency_key_retried_with_same_body(bulkhead, upstream_factory):
    a, b = upstream_factory("a"), upstream_factory("b")
    a.set_mode("reset")
    bh = start(bulkhead, a, b)
    for i in range(10):
        body = os.urandom(32 * 1024)
        r = fetch(bh.port, "POST", "/echo-head?i=%d" % i, headers=[("Idempotency-Key", "k-%d" % i)],
                  body=body)
        assert r is not None and r.status == 200, r
        info = r.json()
        assert info["body_sha256"] == hashlib.sha256(body).hexdigest(), "the replayed body differs"
        assert ["Idempotency-Key", "k-%d" % i] in info["headers"]
    assert b.count("/echo-head", "POST") == 10
    assert a.count("/echo-head", "POST") >= 1, "the failing endpoint was never tried: the test proves nothing"


def test_post_without_idempotency_key_fails_once(bulkhead, upstream_factory):
    """Without a key, a POST that reached the resetting endpoint is answered 502 and not sent again."""
    a, b = upstream_factory("a"), upstream_factory("b")
    a.set_mode("reset")
    bh = start(bulkhead, a, b)
    results = [fetch(bh.port, "POST", "/post?i=%d" % i, body=b"payload") for i in range(10)]
    failed = [r for r in results if r is None or r.status != 200]
    assert all(r is not None and r.status == 502 for r in failed), failed
    assert a.count("/post", "POST") == len(failed) >= 1
    assert b.count("/post", "POST") == 10 - len(failed)


def test_methods_all_retries_post(bulkhead, upstream_factory):
    a, b = upstream_factory("a"), upstream_factory("b")
    a.set_mode("reset")
    b.set_mode("reset")
    bh = start(bulkhead, a, b, methods="all", attempts=3)
    r = fetch(bh.port, "POST", "/post", body=b"payload")
    assert r is not None and r.status == 502, r
    assert total((a, b), "/post", "POST") == 3


@pytest.mark.parametrize("size,sent", [(512, 3), (4096, 1)])
def test_replay_only_within_max_replay_bytes(bulkhead, upstream_factory, size, sent):
    """With Idempotency-Key, a body within max_replay_bytes is sent again; a larger one is not held
    and so not retried after it reached an upstream."""
    a, b = upstream_factory("a"), upstream_factory("b")
    a.set_mode("reset")
    b.set_mode("reset")
    bh = start(bulkhead, a, b, attempts=3, max_replay_bytes="1KiB")
    r = fetch(bh.port, "POST", "/post", headers=[("Idempotency-Key", "k1")], body=os.urandom(size))
    assert r is not None and r.status == 502, r
    assert total((a, b), "/post", "POST") == sent


def test_get_with_large_body_not_replayed(bulkhead, upstream_factory):
    a, b = upstream_factory("a"), upstream_factory("b")
    a.set_mode("reset")
    b.set_mode("reset")
    bh = start(bulkhead, a, b, attempts=3, max_replay_bytes="1KiB")
    r = fetch(bh.port, "PUT", "/put", body=os.urandom(8192))
    assert r is not None and r.status == 502, r
    assert total((a, b), "/put", "PUT") == 1


# ---------------------------------------------------------------------------------------------
# PARTIAL: once response bytes went to the client, never again

def test_partial_response_never_retried(bulkhead, upstream_factory):
    a, b = upstream_factory("a"), upstream_factory("b")
    bh = start(bulkhead, a, b, attempts=3, on=["connect-failure", "reset-before-response", "gateway-error",
                                             "5xx", "first-byte-timeout"])
    with RawClient(bh.port) as c:
        c.request("GET", "/reset-after-head?n=100000&part=1000&id=p")
        _, status, _, headers, _ = c.read_head()
        assert status == 200
        for u in (a, b):
            u.release("p")  # the client has the head: now the upstream resets
        got = len(c.buf)
        c.buf = b""
        while True:
            try:
                data = c.sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            got += len(data)
        assert got < 100000, "the truncated response was completed from somewhere"
    assert total((a, b), "/reset-after-head", "GET") == 1


def test_truncated_body_never_retried(bulkhead, upstream_factory):
    a, b = upstream_factory("a"), upstream_factory("b")
    bh = start(bulkhead, a, b, attempts=3, on=["connect-failure", "reset-before-response", "gateway-error",
                                             "5xx"])
    with RawClient(bh.port) as c:
        c.request("GET", "/truncate?n=200000")
        with pytest.raises(PeerClosed):
            c.read_response()
    assert total((a, b), "/truncate", "GET") == 1


# ---------------------------------------------------------------------------------------------
# which statuses are retried

def test_500_not_retried_by_default(bulkhead, upstream_factory):
    a, b = upstream_factory("a"), upstream_factory("b")
    bh = start(bulkhead, a, b)
    assert_passed_through(fetch(bh.port, "GET", "/status/500"), 500)
    assert total((a, b), "/status/500") == 1


@pytest.mark.parametrize("status", [502, 503, 504])
def test_gateway_errors_retried_by_default(bulkhead, upstream_factory, status):
    a, b = upstream_factory("a"), upstream_factory("b")
    bh = start(bulkhead, a, b)  # attempts: 3 by default
    assert_passed_through(fetch(bh.port, "GET", "/status/%d" % status), status)
    assert total((a, b), "/status/%d" % status) == 3


def test_5xx_retried_when_configured(bulkhead, upstream_factory):
    a, b = upstream_factory("a"), upstream_factory("b")
    bh = start(bulkhead, a, b, on=["5xx"], attempts=3)
    assert_passed_through(fetch(bh.port, "GET", "/status/500"), 500)
    assert total((a, b), "/status/500") == 3


def test_retriable_status_list(bulkhead, upstream_factory):
    a, b = upstream_factory("a"), upstream_factory("b")
    bh = start(bulkhead, a, b, on=["retriable-status"], retriable_status=[429], attempts=3)
    assert_passed_through(fetch(bh.port, "GET", "/status/429"), 429)
    assert total((a, b), "/status/429") == 3
    assert_passed_through(fetch(bh.port, "GET", "/status/503"), 503)
    assert total((a, b), "/status/503") == 1


def test_only_listed_conditions_are_retried(bulkhead, upstream_factory):
    """on: [5xx] only: a reset before the response is not retried."""
    a, b = upstream_factory("a"), upstream_factory("b")
    a.set_mode("reset")
    b.set_mode("reset")
    bh = start(bulkhead, a, b, on=["5xx"], attempts=3)
    r = fetch(bh.port, "GET", "/get")
    assert r is not None and r.status == 502, r
    assert total((a, b), "/get") == 1


def test_exhausted_retries_return_the_last_failure(bulkhead, upstream_factory):
    """Two endpoints failing differently, three attempts alternating between them (a retry prefers
    another endpoint): the client gets the reply of the last attempt, passed through."""
    a, b = upstream_factory("a"), upstream_factory("b")
    a.set_mode("fail-500")
    b.set_mode("fail-503")
    bh = start(bulkhead, a, b, on=["5xx"], attempts=3)
    r = fetch(bh.port, "GET", "/get")
    counts = {"a": a.count("/get"), "b": b.count("/get")}
    assert sorted(counts.values()) == [1, 2], counts
    last = max(counts, key=counts.get)
    assert r is not None and r.header("X-Upstream") == last, (r, counts)
    assert_passed_through(r, 500 if last == "a" else 503)
    assert r.body == (b"mode fail-500" if last == "a" else b"mode fail-503")


def test_retry_prefers_a_different_endpoint(bulkhead, upstream_factory):
    """One of three endpoints answers 503; with random balancing and two attempts, a retry that could
    land on the failing endpoint again would fail about a third of the time."""
    ups = [upstream_factory(n) for n in ("a", "b", "c")]
    ups[0].set_mode("fail-503")
    bh = start(bulkhead, *ups, balance="random", attempts=2)
    statuses = [fetch(bh.port, "GET", "/echo-head?i=%d" % i).status for i in range(45)]
    assert statuses == [200] * 45
    assert ups[0].count("/echo-head") >= 1, "the failing endpoint was never picked: the test proves nothing"


# ---------------------------------------------------------------------------------------------
# Retry-After and the deadline

def test_retry_after_beyond_deadline_not_retried(bulkhead, upstream_factory):
    a, b = upstream_factory("a"), upstream_factory("b")
    for u in (a, b):
        u.set_mode("fail-503", retry_after=60)
    bh = start(bulkhead, a, b, attempts=3, timeouts={"total": "5s"})  # honor_retry_after: true by default
    r = fetch(bh.port, "GET", "/get")
    assert_passed_through(r, 503)
    assert r.header("Retry-After") == "60"
    assert total((a, b), "/get") == 1, "a retry was sent although Retry-After did not fit the deadline"


def test_retry_after_ignored_when_not_honoured(bulkhead, upstream_factory):
    a, b = upstream_factory("a"), upstream_factory("b")
    for u in (a, b):
        u.set_mode("fail-503", retry_after=60)
    bh = start(bulkhead, a, b, attempts=3, honor_retry_after=False, timeouts={"total": "5s"})
    assert_passed_through(fetch(bh.port, "GET", "/get"), 503)
    assert total((a, b), "/get") == 3


def test_backoff_longer_than_deadline_not_attempted(bulkhead, upstream_factory):
    """A retry waits for the Retry-After it was given (honoured by default): 1 s does not fit in a total
    deadline of 300 ms, so no retry is attempted (full jitter alone can draw 0, so it cannot show this)."""
    a, b = upstream_factory("a"), upstream_factory("b")
    for u in (a, b):
        u.set_mode("fail-503", retry_after=1)
    bh = start(bulkhead, a, b, attempts=3, timeouts={"total": "300ms"})
    assert_passed_through(fetch(bh.port, "GET", "/get"), 503)
    assert total((a, b), "/get") == 1


# ---------------------------------------------------------------------------------------------
# the retry budget

def test_empty_budget_means_no_retries(bulkhead, upstream_factory):
    a, b = upstream_factory("a"), upstream_factory("b")
    a.set_mode("fail-503")
    b.set_mode("fail-503")
    bh = start(bulkhead, a, b, attempts=3, budget={"ratio": 0, "min_per_second": 0})
    for i in range(10):
        # the original failure is returned, as the upstream sent it
        assert_passed_through(fetch(bh.port, "GET", "/get"), 503)
        assert total((a, b), "/get") == i + 1


def test_budget_counts_retries_when_scheduled(bulkhead, upstream_factory):
    """20 requests fail at the same moment and all want a retry; the backoff (up to 400 ms) keeps the
    retries from starting at once. The budget (ratio 0, 1/s: at most 10 in its 10 s window, never more
    than 20) must count each retry when it is scheduled: counting only retries that have started lets
    all 20 (and then their second retries) through, the mistake of envoyproxy/envoy#30205."""
    a = upstream_factory("a")
    entry = resilient_upstream(a, balance="round_robin",
                               retry={"attempts": 3, "backoff": {"base": "400ms", "max": "400ms"},
                                      "budget": {"ratio": 0, "min_per_second": 1}},
                               pool={"max_connections": 64, "max_pending": 64})
    bh = bulkhead(upstreams={"u": entry})
    results = [None] * 20
    clients = []
    for i in range(20):
        c = RawClient(bh.port)
        clients.append(c)
        c.request("GET", "/hold?id=burst&status=503")
    try:
        wait_until(lambda: a.stats()["holding"] == 20, what="20 requests held on the upstream")
        a.release("burst")  # all 20 answer 503 now; later holds of "burst" answer 503 at once

        def read(i):
            results[i] = clients[i].read_response()

        threads = [threading.Thread(target=read, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for c in clients:
            c.close()
    assert [r.status for r in results] == [503] * 20
    retries = a.count("/hold") - 20
    assert retries <= 10, "%d retries for a budget of at most 10" % retries
    assert retries >= 1, "the budget's min_per_second allowed no retry at all"
