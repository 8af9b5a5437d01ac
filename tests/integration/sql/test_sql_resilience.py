"""One resilience pipeline for both backends (issue 10, section C): the SQL path runs deadline ->
breaker (asked once per request, not per attempt) -> pool -> attempt -> classify -> retry under the
budget, as HTTP requests do, and reads the same keys: `databases.<x>.retry.budget` (`ratio`,
`min_per_second`, as an upstream's), `databases.<x>.breaker.count`; a request deadline that ends a
request is a failure for the breaker when `timeout` is counted. `--check` rejects the keys that cannot
apply to a database and accepts `retry.budget`.

"Postgres refusing connections" is a loopback port with nothing listening. What reached the server is
read from bulkhead's own counters on the admin port (`bulkhead_upstream_attempts_total{upstream=<db>}`
by outcome, `bulkhead_retries_total`, `bulkhead_retry_budget_exhausted_total`,
`bulkhead_breaker_state`): a refused connect leaves nothing to observe on the server side, and an
open breaker must make no attempt at all. Queries held past their deadline block on an advisory lock
the test holds (sqlfix.Lock), so the deadline is the only thing that ends them.
"""
import math
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from sqladmin import assert_unavailable, metrics, msum, mval
from sqlfix import (IO_TIMEOUT, Lock, SqlClient, describe, free_port, proxy_status_error,
                    run_bulkhead, unique, wait_until)

FAST_BACKOFF = {"base": "1ms", "max": "5ms"}
NO_BREAKER = {"consecutive_failures": 0, "failure_rate": 0}


def refused_server():
    return "host=127.0.0.1 port=%d" % free_port()  # nothing listens there: connection refused


# Proxy-Status error= of the two answers (common/bh_error.h): an attempt that was refused, and the breaker
REFUSED = "connection_refused"
BREAKER = "destination_unavailable"


def attempts(bh, db="main"):
    """Attempts of the database so far, every outcome."""
    return int(msum(metrics(bh), "bulkhead_upstream_attempts_total", upstream=db))


def breaker_state(bh, db="main"):
    return mval(metrics(bh), "bulkhead_breaker_state", upstream=db)


# ----------------------------------------------------------------------------------------------
# the retry budget

def test_retry_budget_bounds_retries_against_a_refusing_server(sql_bulkhead, pg):
    """30 requests to a server that refuses every connection, retry.attempts 3 (2 retries each without a
    budget: 60), budget ratio 0 + min_per_second 1: at most 10 retries in the budget's 10 s window (plus
    one a second the test took beyond it). Every request is a 503 with Proxy-Status; each attempt is
    counted once (30 + retries), and the retries the budget refused are counted."""
    n = 30
    bh = sql_bulkhead(db={"server": refused_server(), "breaker": NO_BREAKER,
                          "retry": {"attempts": 3, "backoff": FAST_BACKOFF,
                                    "budget": {"ratio": 0, "min_per_second": 1}}})
    c = SqlClient(bh, pg)
    t0 = time.monotonic()
    for _ in range(n):
        assert_unavailable(c.query("SELECT 1 AS x"))
    elapsed = time.monotonic() - t0
    s = metrics(bh)
    retries = int(mval(s, "bulkhead_retries_total", upstream="main"))
    exhausted = int(mval(s, "bulkhead_retry_budget_exhausted_total", upstream="main"))
    tried = int(mval(s, "bulkhead_upstream_attempts_total", upstream="main", outcome="connect_failed"))
    bound = 10 + max(0, math.ceil(elapsed - 10))
    assert retries <= bound, "%d retries for %d requests against a budget of at most %d (attempts x N " \
                             "would be %d)" % (retries, n, bound, 2 * n)
    assert tried == n + retries, "%d connect attempts for %d requests and %d retries" % (tried, n, retries)
    assert exhausted > 0 and retries + exhausted >= n, \
        "every request wanted a retry: %d retries, %d refused by the budget" % (retries, exhausted)


def test_budget_counts_retries_when_scheduled(sql_bulkhead, pg):
    """20 requests at once against the refusing server all want a retry at the same moment; the backoff
    (400 ms) keeps the retries from starting at once. The budget (ratio 0, 1/s: at most 10 in its 10 s
    window) must count each retry when it is scheduled, as for upstreams (test_retries.py): counting only
    retries that have started lets all 20, and then their second retries, through."""
    n = 20
    bh = sql_bulkhead(db={"server": refused_server(), "breaker": NO_BREAKER,
                          "pool": {"max_connections": 64, "max_pending": 64},
                          "retry": {"attempts": 3, "backoff": {"base": "400ms", "max": "400ms"},
                                    "budget": {"ratio": 0, "min_per_second": 1}}})
    c = SqlClient(bh, pg)
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=n) as ex:
        results = list(ex.map(lambda _: c.query("SELECT 1 AS x"), range(n)))
    elapsed = time.monotonic() - t0
    for r in results:
        assert_unavailable(r)
    retries = int(mval(metrics(bh), "bulkhead_retries_total", upstream="main"))
    bound = 10 + max(0, math.ceil(elapsed - 10))
    assert retries <= bound, "%d retries of %d requests at once for a budget of at most %d" % (retries, n, bound)
    assert attempts(bh) == n + retries


def test_zero_budget_means_no_retries(sql_bulkhead, pg):
    """ratio 0 and min_per_second 0: not one retry, each request one attempt."""
    n = 10
    bh = sql_bulkhead(db={"server": refused_server(), "breaker": NO_BREAKER,
                          "retry": {"attempts": 3, "backoff": FAST_BACKOFF,
                                    "budget": {"ratio": 0, "min_per_second": 0}}})
    c = SqlClient(bh, pg)
    for i in range(n):
        assert_unavailable(c.query("SELECT 1 AS x"))
        assert attempts(bh) == i + 1, "request %d: %d attempts so far" % (i + 1, attempts(bh))
    assert mval(metrics(bh), "bulkhead_retries_total", upstream="main") == 0


# ----------------------------------------------------------------------------------------------
# the breaker, once per request

def test_breaker_is_asked_once_per_request(sql_bulkhead, pg):
    """consecutive_failures 3 with retry.attempts 3 against a refusing server: each of the first 3
    requests makes its 3 attempts (one request's attempts are one outcome for the breaker, not 3); the
    breaker opens after the 3rd request, and the 4th fails fast (503, Proxy-Status) without an attempt."""
    bh = sql_bulkhead(db={"server": refused_server(),
                          "retry": {"attempts": 3, "backoff": FAST_BACKOFF},
                          "breaker": {"consecutive_failures": 3, "failure_rate": 0, "open_for": "60s",
                                      "max_open_for": "60s", "half_open_probes": 1}})
    c = SqlClient(bh, pg)
    for i in range(1, 4):
        before = attempts(bh)
        r = c.query("SELECT 1 AS x")
        assert_unavailable(r)
        made = attempts(bh) - before
        assert made == 3, "request %d made %d attempts (the breaker opened after %d requests' attempts; " \
                          "Proxy-Status %r)" % (i, made, i - 1, r.header("Proxy-Status"))
        assert proxy_status_error(r) == REFUSED, describe(r)
        if i < 3:
            assert breaker_state(bh) == 0, "breaker state %r after %d requests" % (breaker_state(bh), i)
    assert breaker_state(bh) == 1, "breaker state %r after 3 failed requests" % breaker_state(bh)
    before = attempts(bh)
    r = c.query("SELECT 1 AS x")
    assert_unavailable(r)
    assert attempts(bh) == before, "an attempt behind an open breaker"
    assert proxy_status_error(r) == BREAKER, describe(r)


# ----------------------------------------------------------------------------------------------
# breaker.count on a database: is a request deadline a failure?

@pytest.mark.parametrize("count,opens", [
    (["connect-failure"], False),
    (["timeout"], True),
    (["connect-failure", "timeout"], True),
])
def test_breaker_count_decides_whether_deadlines_open_it(sql_bulkhead, pg, count, opens):
    """3 requests ended by the database's own deadline (timeouts.total: 300 ms; the query blocks on
    the test's advisory lock, the only thing that ends it is the deadline): with `timeout` in
    breaker.count they open a breaker of consecutive_failures 3 and the next request fails fast,
    without an attempt; with `[connect-failure]` only, the breaker stays closed and the next request
    is served."""
    check_deadlines_and_breaker(sql_bulkhead, pg, count, opens, db_total="300ms", header=None)


def test_a_clients_tighter_deadline_never_opens_the_breaker(sql_bulkhead, pg):
    """A query cut by the client's own Bulkhead-Timeout (tighter than the database's total) spent the
    client's budget, not the database's: like an upstream's total timeout it is not counted, even with
    `timeout` in breaker.count."""
    check_deadlines_and_breaker(sql_bulkhead, pg, ["connect-failure", "timeout"], False,
                                db_total="60s", header=("Bulkhead-Timeout", "300"))


def check_deadlines_and_breaker(sql_bulkhead, pg, count, opens, db_total, header):
    role, pw = pg.make_role("bcnt")
    bh = sql_bulkhead(db={"pool": {"max_connections": 2},
                          "timeouts": {"connect": "2s", "total": db_total},
                          "breaker": {"consecutive_failures": 3, "failure_rate": 0, "open_for": "60s",
                                      "max_open_for": "60s", "half_open_probes": 1, "count": count}})
    c = SqlClient(bh, pg, user=role, password=pw)
    lock = Lock(pg)
    try:
        for i in range(3):
            marker = unique("dl")
            r = c.query("SELECT pg_advisory_xact_lock_shared($1::bigint) AS %s" % marker, [str(lock.key)],
                        headers=[header] if header else [], timeout=IO_TIMEOUT)
            assert r is not None and r.status == 504, describe(r)
            wait_until(lambda: not pg.active_with(marker), timeout=IO_TIMEOUT,
                       what="the timed-out query %d to be cancelled" % (i + 1))
    finally:
        lock.close()
    before = attempts(bh)
    r = c.query("SELECT 1 AS x")
    if opens:
        assert breaker_state(bh) == 1, "breaker.count %r: the breaker is %r after 3 requests ended by " \
                                       "their deadline (then: %s)" % (count, breaker_state(bh), describe(r))
        assert_unavailable(r)
        assert attempts(bh) == before, "an attempt behind an open breaker"
        assert proxy_status_error(r) == BREAKER, describe(r)
    else:
        assert r is not None and r.status == 200, "breaker.count %r: %s" % (count, describe(r))
        assert breaker_state(bh) == 0


# ----------------------------------------------------------------------------------------------
# --check: keys that cannot apply to a database

CHECK_CONF = """\
workers: 1
listeners:
  - name: main
    address: 127.0.0.1:%(port)d
upstreams:
  u:
    endpoints: [ "127.0.0.1:%(port)d" ]
routes:
  - match: { path_prefix: /sql, methods: [ POST, OPTIONS ] }
    database: main
  - match: { path_prefix: / }
    upstream: u
databases:
  main:
    hosts: [ "*" ]
    server: "host=127.0.0.1 port=%(port)d"
    %(section)s:
      %(key)s: %(value)s
"""
CHECK_LINE = CHECK_CONF.count("\n")  # the line of the key under test (1-based)


def check(tmp_path, section, key, value):
    path = tmp_path / "bulkhead.yaml"
    path.write_text(CHECK_CONF % dict(port=free_port(), section=section, key=key, value=value))
    return path, run_bulkhead("--check", str(path))


@pytest.mark.parametrize("section,key,value", [
    ("retry", "on", "[ connect-failure ]"),
    ("retry", "retriable_status", "[ 503 ]"),
    ("retry", "methods", "all"),
    ("retry", "max_replay_bytes", "64KiB"),
    ("retry", "honor_retry_after", "true"),
    ("timeouts", "first_byte", "1s"),
    ("timeouts", "idle", "60s"),
])
def test_check_rejects_keys_that_cannot_apply_to_databases(tmp_path, section, key, value):
    path, r = check(tmp_path, section, key, value)
    assert r.returncode == 2, "exit %s, stderr: %r" % (r.returncode, r.stderr)
    m = re.search(r"^(.*?):(\d+):(\d+): (.+)$", r.stderr, re.M)
    assert m, "no FILE:LINE:COL: message in stderr: %r" % r.stderr
    assert m.group(1).endswith(path.name), r.stderr
    assert (int(m.group(2)), int(m.group(3))) == (CHECK_LINE, 7), "expected %d:7: %r" % (CHECK_LINE, r.stderr)
    assert key in m.group(4) and "databases.main.%s" % section in m.group(4), r.stderr


@pytest.mark.parametrize("section,key,value", [
    ("retry", "budget", "{ ratio: 10%, min_per_second: 1 }"),
    ("retry", "budget", "{ ratio: 0, min_per_second: 0 }"),
    ("breaker", "count", "[ connect-failure ]"),
    ("breaker", "count", "[ connect-failure, timeout ]"),
])
def test_check_accepts_the_shared_resilience_keys(tmp_path, section, key, value):
    _, r = check(tmp_path, section, key, value)
    assert r.returncode == 0, "databases.main.%s.%s: %s rejected: %r" % (section, key, value, r.stderr)
