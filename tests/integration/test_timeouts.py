"""Deadlines and timeouts (issue 3): each expiry is its own outcome and Proxy-Status error; a `total`
expiry is a 504 and is never retried; a request that timed out after it was sent is not sent again
unless it is safe to; clients can shorten the deadline (Bulkhead-Timeout) and the remaining budget
goes upstream (Bulkhead-Deadline).

Hanging upstreams use the switchable "hang" mode (or /hold): nothing depends on how fast the machine
is, only on the configured timeouts."""
import pytest

from conftest import (RawClient, fetch, proxy_status_error, resilient_upstream, wait_until)

FAST_BACKOFF = {"base": "1ms", "max": "5ms"}
ALL_ON = ["connect-failure", "reset-before-response", "gateway-error", "first-byte-timeout"]


@pytest.fixture
def pair(upstream_factory):
    """Two endpoints; whatever a test leaves hanging is released at teardown."""
    ups = [upstream_factory("a"), upstream_factory("b")]
    yield ups
    for u in ups:
        try:
            u.set_mode("ok")
            u.release("*")
        except OSError:
            pass


def start(bulkhead, ups, timeouts, retry=None, routes=None):
    conf = {"backoff": FAST_BACKOFF}
    conf.update(retry or {})
    entry = resilient_upstream(*ups, balance="round_robin", retry=conf, timeouts=timeouts)
    kw = {"routes": routes} if routes else {}
    return bulkhead(upstreams={"u": entry}, **kw)


def total(ups, path=None, method=None):
    return sum(u.count(path, method) for u in ups)


def assert_error(r, status, error):
    assert r is not None and r.status == status, r
    assert proxy_status_error(r) == error, r
    assert r.header("X-Upstream") is None, r


def deadline_of(headers):
    values = [v for k, v in headers if k.lower() == "bulkhead-deadline"]
    assert len(values) == 1, "expected one Bulkhead-Deadline upstream, got %r" % values
    assert values[0].strip().isdigit(), values
    return int(values[0])


# ---------------------------------------------------------------------------------------------
# per-attempt timeouts

def test_first_byte_timeout_named(bulkhead, pair):
    for u in pair:
        u.set_mode("hang")
    bh = start(bulkhead, pair, {"first_byte": "300ms", "total": "60s"})
    assert_error(fetch(bh.port, "GET", "/get"), 504, "http_response_timeout")
    # first-byte-timeout is not among the default retry conditions
    assert total(pair, "/get") == 1


def test_first_byte_timeout_retried_when_configured(bulkhead, pair):
    a, b = pair
    a.set_mode("hang")
    bh = start(bulkhead, pair, {"first_byte": "300ms", "total": "60s"}, {"on": ALL_ON})
    for i in range(4):
        r = fetch(bh.port, "GET", "/echo-head?i=%d" % i)
        assert r is not None and r.status == 200 and r.header("X-Upstream") == "b", r
    assert a.count("/echo-head") >= 1, "the hanging endpoint was never tried: the test proves nothing"
    assert b.count("/echo-head") == 4


def test_timed_out_post_is_never_sent_twice(bulkhead, pair):
    for u in pair:
        u.set_mode("hang")
    bh = start(bulkhead, pair, {"first_byte": "300ms", "total": "60s"}, {"on": ALL_ON, "attempts": 3})
    for i in range(3):
        assert_error(fetch(bh.port, "POST", "/post", body=b"pay once"), 504, "http_response_timeout")
        assert total(pair, "/post", "POST") == i + 1


def test_timed_out_get_is_sent_again(bulkhead, pair):
    """The counterpart of the POST test: the same timeout on a GET is retried up to attempts."""
    for u in pair:
        u.set_mode("hang")
    bh = start(bulkhead, pair, {"first_byte": "300ms", "total": "60s"}, {"on": ALL_ON, "attempts": 3})
    assert_error(fetch(bh.port, "GET", "/get"), 504, "http_response_timeout")
    assert total(pair, "/get", "GET") == 3


def test_timed_out_post_with_idempotency_key_is_sent_again(bulkhead, pair):
    for u in pair:
        u.set_mode("hang")
    bh = start(bulkhead, pair, {"first_byte": "300ms", "total": "60s"}, {"on": ALL_ON, "attempts": 3})
    r = fetch(bh.port, "POST", "/post", headers=[("Idempotency-Key", "once")], body=b"pay once")
    assert_error(r, 504, "http_response_timeout")
    assert total(pair, "/post", "POST") == 3


def test_connect_timeout_named_and_retried_elsewhere(bulkhead, black_hole, upstream):
    """A connect that does not finish is a connect failure: the request never left, so even a POST is
    sent to the other endpoint."""
    bh = start(bulkhead, [black_hole, upstream], {"connect": "200ms", "first_byte": "30s", "total": "60s"})
    for i in range(4):
        r = fetch(bh.port, "POST", "/echo-head?i=%d" % i, body=b"x")
        assert r is not None and r.status == 200, r
    assert upstream.count("/echo-head", "POST") == 4


def test_connect_timeout_alone_is_504(bulkhead, black_hole):
    bh = start(bulkhead, [black_hole], {"connect": "200ms", "first_byte": "30s", "total": "60s"})
    assert_error(fetch(bh.port, "GET", "/get"), 504, "connection_timeout")


# ---------------------------------------------------------------------------------------------
# the total deadline

def test_total_expiry_is_504_and_never_retried(bulkhead, pair):
    for u in pair:
        u.set_mode("hang")
    bh = start(bulkhead, pair, {"first_byte": "60s", "total": "500ms"}, {"on": ALL_ON, "attempts": 3})
    assert_error(fetch(bh.port, "GET", "/get"), 504, "http_response_timeout")
    assert total(pair, "/get") == 1
    # whatever bulkhead might still do for that request, it has done it before answering the next one
    for u in pair:
        u.set_mode("ok")
    r = fetch(bh.port, "GET", "/echo-head")
    assert r is not None and r.status == 200, r
    assert total(pair, "/get") == 1, "the request was sent again after its deadline"


def test_total_covers_every_attempt(bulkhead, pair):
    """first_byte 200 ms per attempt, up to 10 attempts, total 700 ms: the deadline ends the request
    after a few attempts (each takes at least 200 ms, so at most 4 can start), with a 504."""
    for u in pair:
        u.set_mode("hang")
    bh = start(bulkhead, pair, {"first_byte": "200ms", "total": "700ms"}, {"on": ALL_ON, "attempts": 10})
    assert_error(fetch(bh.port, "GET", "/get"), 504, "http_response_timeout")
    n = total(pair, "/get")
    assert 2 <= n <= 4, "%d attempts within a 700 ms deadline of 200 ms attempts" % n


def test_route_total_overrides_upstream(bulkhead, pair):
    a, b = pair
    bh = start(bulkhead, pair, {"first_byte": "60s", "total": "60s"},
               routes=[{"match": {"path_prefix": "/short/"}, "upstream": "u", "strip_prefix": True,
                        "timeouts": {"total": "300ms"}},
                       {"match": {"path_prefix": "/"}, "upstream": "u"}])
    assert_error(fetch(bh.port, "GET", "/short/hold?id=s"), 504, "http_response_timeout")


# ---------------------------------------------------------------------------------------------
# Bulkhead-Timeout (client) and Bulkhead-Deadline (upstream)

def test_client_timeout_header_shortens_the_deadline(bulkhead, upstream):
    bh = start(bulkhead, [upstream], {"first_byte": "60s", "total": "60s"})
    r = fetch(bh.port, "GET", "/hold?id=c1", headers=[("Bulkhead-Timeout", "300")])
    assert_error(r, 504, "http_response_timeout")
    upstream.release("c1")
    # without the header the same request waits as long as it takes (the route allows 60 s)
    with RawClient(bh.port) as c:
        c.request("GET", "/hold?id=c2")
        wait_until(lambda: upstream.stats()["holding"] == 1, what="the request without the header to be held")
        upstream.release("c2")
        r = c.read_response()
        assert r.status == 200 and r.body == b"released", r


def test_client_timeout_header_never_lengthens_the_deadline(bulkhead, upstream):
    bh = start(bulkhead, [upstream], {"first_byte": "60s", "total": "300ms"})
    r = fetch(bh.port, "GET", "/hold?id=c3", headers=[("Bulkhead-Timeout", "60000")])
    assert_error(r, 504, "http_response_timeout")
    upstream.release("c3")


def test_deadline_header_sent_upstream(bulkhead, upstream):
    bh = start(bulkhead, [upstream], {"first_byte": "60s", "total": "10s"},
               routes=[{"match": {"path_prefix": "/r3/"}, "upstream": "u", "strip_prefix": True,
                        "timeouts": {"total": "3s"}},
                       {"match": {"path_prefix": "/"}, "upstream": "u"}])
    r = fetch(bh.port, "GET", "/echo-head")
    assert r is not None and r.status == 200, r
    d = deadline_of(r.json()["headers"])
    assert 0 < d <= 10000, d
    r = fetch(bh.port, "GET", "/echo-head", headers=[("Bulkhead-Timeout", "2000")])
    d = deadline_of(r.json()["headers"])
    assert 0 < d <= 2000, d
    r = fetch(bh.port, "GET", "/r3/echo-head")
    d = deadline_of(r.json()["headers"])
    assert 0 < d <= 3000, d


def test_deadline_header_replaces_the_clients(bulkhead, upstream):
    """A client cannot pass its own Bulkhead-Deadline through: the upstream sees bulkhead's budget."""
    bh = start(bulkhead, [upstream], {"first_byte": "60s", "total": "5s"})
    r = fetch(bh.port, "GET", "/echo-head", headers=[("Bulkhead-Deadline", "999999")])
    assert r is not None and r.status == 200, r
    d = deadline_of(r.json()["headers"])
    assert 0 < d <= 5000, d


def test_deadline_header_shrinks_on_retry(bulkhead, upstream):
    """The retry of a request carries what is left of the deadline, not the full budget again.

    The upstream answers the first two attempts with a 503 only DELAY_MS after each arrived (and notes
    when, on the monotonic clock bulkhead's loop also uses), the third with a 200. bulkhead stamped
    each attempt's Bulkhead-Deadline before the upstream read it and sent the next attempt only after
    it read the 503, so each budget is smaller than the one before by at least the time the upstream
    held the attempt (whole milliseconds: bulkhead's clock ticks in ms). Only values bulkhead sent
    are compared; how fast anything ran does not matter."""
    delay_ms = 150
    upstream.set_mode("fail-503", count=2, delay_ms=delay_ms)
    bh = start(bulkhead, [upstream], {"first_byte": "60s", "total": "10s"}, {"attempts": 3})
    r = fetch(bh.port, "GET", "/get")
    assert r is not None and r.status == 200, r
    entries = [e for e in upstream.log() if e["path"] == "/get"]
    assert len(entries) == 3, entries
    deadlines = [deadline_of(e["headers"]) for e in entries]
    assert all(0 < d <= 10000 for d in deadlines), deadlines
    for before, after, d_before, d_after in zip(entries, entries[1:], deadlines, deadlines[1:]):
        held = before["mono_answer"] - before["mono"]
        assert held >= delay_ms / 1000.0, "the upstream answered early: %r" % before
        assert d_before - d_after >= int(held * 1000), (
            "Bulkhead-Deadline %d then %d on the retry, though the upstream held the first attempt "
            "%.1f ms" % (d_before, d_after, held * 1000))
