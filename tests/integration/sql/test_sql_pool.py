"""The bounded libpq pool behind /sql (issue 4, "Pools and connections"): max_connections exact and global
across workers under 200 concurrent requests (pg_stat_activity polled in a thread during the load),
waiters answered 503 after acquire_timeout, max_pending overflow, reuse, idle_timeout, max_lifetime.

Requests that must stay in flight block on an advisory lock held by the test's own session
(`pg_advisory_xact_lock_shared`), released when the test has seen what it needs: nothing depends on how
fast the machine is. Every test counts the backends of a role of its own.
"""
import json
from concurrent.futures import ThreadPoolExecutor

from sqladmin import assert_unavailable
from sqlfix import (IO_TIMEOUT, Lock, Poller, SqlClient, describe,
                    rows_of, wait_until, waiting_on_lock)

LONG = 120  # client-side socket timeout for requests that wait on the test's lock


def blocked_query(client, lock, i, timeout=LONG):
    return client.query("SELECT pg_advisory_xact_lock_shared($1::bigint), $2::int AS i",
                        [str(lock.key), str(i)], timeout=timeout)


def check_200(r, i):
    assert r is not None and r.status == 200, describe(r)
    assert json.loads(r.body)["rows"] == [["", str(i)]], describe(r)


def test_pool_cap_under_200_concurrent_requests(sql_bulkhead, pg):
    """200 requests at once on a pool of 4 over 4 workers: never more than 4 server connections in
    pg_stat_activity, exactly 4 busy while the rest wait, and every request answered (all 200 here,
    since the wait is shorter than acquire_timeout; a 503 would have to carry the 503 shape)."""
    role, pw = pg.make_role("cap")
    bh = sql_bulkhead(workers=4, db={"pool": {"max_connections": 4, "max_pending": 1000, "acquire_timeout": "60s"},
                                     "timeouts": {"connect": "2s", "total": "120s"}})
    c = SqlClient(bh, pg, user=role, password=pw)
    lock = Lock(pg)
    poller = Poller(lambda: len(pg.backends(role)))
    poller.start()
    try:
        with ThreadPoolExecutor(max_workers=200) as ex:
            futs = [ex.submit(blocked_query, c, lock, i) for i in range(200)]
            wait_until(lambda: waiting_on_lock(pg, role) == 4, timeout=IO_TIMEOUT,
                       what="4 requests running on the server")
            # every request has been sent once none of the futures is still connecting; the 196 others wait
            assert not any(f.done() for f in futs), [describe(f.result()) for f in futs if f.done()][:3]
            lock.release()
            results = [f.result() for f in futs]
    finally:
        poller.stop()
        lock.close()
    assert poller.values, "pg_stat_activity was never polled: %r" % poller.errors[:3]
    assert poller.max <= 4, "more than 4 server connections: %d" % poller.max
    for i, r in enumerate(results):
        if r is not None and r.status == 503:
            assert_unavailable(r)
        else:
            check_200(r, i)
    assert sum(1 for r in results if r.status == 200) >= 4
    assert len(pg.backends(role)) <= 4


def test_waiters_get_503_after_acquire_timeout(sql_bulkhead, pg):
    """With the 4 connections held, the 196 waiters are answered 503 (Retry-After, Proxy-Status, 17-key
    body) after acquire_timeout; the 4 holders then finish with 200. Each query also inserts its
    number: afterwards the table holds exactly the 4 answered 200, so no refused query ran."""
    role, pw = pg.make_role("acq")
    table = role + "_ran"
    pg.sql("CREATE TABLE %s (i int)" % table, dbname="app")
    pg.sql("GRANT INSERT, SELECT ON %s TO %s" % (table, role), dbname="app")
    bh = sql_bulkhead(workers=4, db={"pool": {"max_connections": 4, "max_pending": 1000, "acquire_timeout": "200ms"},
                                     "timeouts": {"connect": "2s", "total": "120s"}})
    c = SqlClient(bh, pg, user=role, password=pw)
    lock = Lock(pg)

    def blocked_query(client, lock, i):
        return client.query("WITH ran AS (INSERT INTO %s VALUES ($2::int) RETURNING i)"
                            " SELECT pg_advisory_xact_lock_shared($1::bigint), (SELECT i FROM ran) AS i"
                            % table, [str(lock.key), str(i)], timeout=LONG)
    poller = Poller(lambda: len(pg.backends(role)))
    poller.start()
    try:
        with ThreadPoolExecutor(max_workers=200) as ex:
            futs = [ex.submit(blocked_query, c, lock, i) for i in range(200)]
            wait_until(lambda: waiting_on_lock(pg, role) == 4, timeout=IO_TIMEOUT,
                       what="4 requests running on the server")
            wait_until(lambda: sum(f.done() for f in futs) >= 196, timeout=LONG, what="196 waiters answered")
            early = [f.result() for f in futs if f.done()]
            assert len(early) == 196, "%d answered while the lock is held" % len(early)
            for r in early:
                assert_unavailable(r)
            lock.release()
            results = [f.result() for f in futs]
    finally:
        poller.stop()
        lock.close()
    assert poller.max <= 4, "more than 4 server connections: %d" % poller.max
    ok = [(i, r) for i, r in enumerate(results) if r is not None and r.status == 200]
    assert len(ok) == 4, [describe(r) for r in results if r is None or r.status not in (200, 503)][:3]
    for i, r in ok:
        check_200(r, i)
    ran = sorted(row[0] for row in pg.sql("SELECT i FROM %s" % table, dbname="app"))
    assert ran == sorted(i for i, _ in ok), "queries that ran: %r, answered 200: %r" % (ran, [i for i, _ in ok])


def test_max_pending_overflow_is_503_at_once(sql_bulkhead, pg):
    """Pool of 1, max_pending 2, long acquire_timeout: with the connection held and 7 more requests,
    exactly 2 wait and 5 are refused with 503 while the lock is still held; then 3 succeed."""
    role, pw = pg.make_role("pend")
    bh = sql_bulkhead(db={"pool": {"max_connections": 1, "max_pending": 2, "acquire_timeout": "60s"},
                          "timeouts": {"connect": "2s", "total": "120s"}})
    c = SqlClient(bh, pg, user=role, password=pw)
    lock = Lock(pg)
    try:
        with ThreadPoolExecutor(max_workers=8) as ex:
            first = ex.submit(blocked_query, c, lock, 0)
            wait_until(lambda: waiting_on_lock(pg, role) == 1, timeout=IO_TIMEOUT, what="the holder running")
            rest = [ex.submit(blocked_query, c, lock, i) for i in range(1, 8)]
            wait_until(lambda: sum(f.done() for f in rest) >= 5, timeout=IO_TIMEOUT, what="5 overflow 503s")
            early = [f.result() for f in rest if f.done()]
            assert len(early) == 5 and not first.done()
            for r in early:
                assert_unavailable(r)
            lock.release()
            results = [first.result()] + [f.result() for f in rest]
    finally:
        lock.close()
    assert sum(1 for r in results if r is not None and r.status == 200) == 3, [describe(r) for r in results]
    assert len(pg.backends(role)) <= 1


def test_sequential_requests_reuse_connections(sql_bulkhead, pg):
    """No churn: 20 sequential requests on a pool of 4 use at most 4 server connections over their whole
    run (a connection may still be resetting when the next request arrives, so a second one may open);
    on a pool of 1 they all use the same connection (kept, reset, reused: never discarded)."""
    role, pw = pg.make_role("reuse")
    c = SqlClient(sql_bulkhead(workers=1), pg, user=role, password=pw)
    pids = {rows_of(c.query("SELECT pg_backend_pid() AS p"))[0][0] for _ in range(20)}
    assert len(pids) <= 4, "20 sequential requests used %d server connections" % len(pids)
    assert len(pg.backends(role)) <= 4
    role1, pw1 = pg.make_role("reuse1")
    c1 = SqlClient(sql_bulkhead(workers=1, db={"pool": {"max_connections": 1}}), pg, user=role1, password=pw1)
    pids1 = {rows_of(c1.query("SELECT pg_backend_pid() AS p"))[0][0] for _ in range(20)}
    assert len(pids1) == 1, "20 sequential requests on a pool of 1 used %d server connections" % len(pids1)
    assert [b["pid"] for b in pg.backends(role1)] == [int(p) for p in pids1]


def test_pool_is_per_user(sql_bulkhead, pg):
    bh = sql_bulkhead()
    r1, p1 = pg.make_role("ua")
    r2, p2 = pg.make_role("ub")
    for _ in range(3):
        assert rows_of(SqlClient(bh, pg, user=r1, password=p1).query("SELECT current_user AS u")) == [[r1]]
        assert rows_of(SqlClient(bh, pg, user=r2, password=p2).query("SELECT current_user AS u")) == [[r2]]


def test_idle_timeout_closes_idle_connections(sql_bulkhead, pg):
    role, pw = pg.make_role("idle")
    c = SqlClient(sql_bulkhead(db={"pool": {"max_connections": 4, "idle_timeout": "1s", "min_idle": 0}}), pg,
                  user=role, password=pw)
    assert rows_of(c.query("SELECT 1 AS x")) == [["1"]]
    wait_until(lambda: len(pg.backends(role)) == 0, timeout=IO_TIMEOUT,
               what="the idle server connection to be closed after idle_timeout")
    assert rows_of(c.query("SELECT 1 AS x")) == [["1"]]


def test_max_lifetime_replaces_connections(sql_bulkhead, pg):
    role, pw = pg.make_role("life")
    c = SqlClient(sql_bulkhead(db={"pool": {"max_connections": 1, "max_lifetime": "1s"}}), pg,
                  user=role, password=pw)
    first = rows_of(c.query("SELECT pg_backend_pid() AS p"))[0][0]

    def replaced():
        r = c.query("SELECT pg_backend_pid() AS p")
        assert r is not None and r.status == 200, describe(r)
        assert len(pg.backends(role)) <= 1
        return json.loads(r.body)["rows"][0][0] != first

    wait_until(replaced, timeout=IO_TIMEOUT, interval=0.1, what="a new server connection after max_lifetime")
    wait_until(lambda: first not in [str(b["pid"]) for b in pg.backends(role)], timeout=IO_TIMEOUT,
               what="the old connection to be closed")


def test_min_idle_after_first_use(sql_bulkhead, pg):
    """Pools keyed by request credentials exist from their first request on; from then on at least
    min_idle connections are kept open (here 2, while one request needed only one)."""
    role, pw = pg.make_role("warm2")
    bh = sql_bulkhead(db={"pool": {"max_connections": 4, "min_idle": 2}})
    assert rows_of(SqlClient(bh, pg, user=role, password=pw).query("SELECT 1 AS x")) == [["1"]]
    wait_until(lambda: len(pg.backends(role)) >= 2, timeout=IO_TIMEOUT, what="min_idle 2 connections kept open")
    assert len(pg.backends(role)) <= 4
