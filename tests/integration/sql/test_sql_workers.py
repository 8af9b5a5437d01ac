"""/sql with several workers (issue 5, "Workers"): a database's pool.max_connections is one cap for the
whole process, however many workers take the requests; an idle server connection parked on one worker
is given up when a request on another worker needs the permit; the metrics count the database's
requests, attempts and pool.

Requests in flight block on an advisory lock the test holds (sqlfix.Lock). The test waits until
bulkhead reports every request either on a server connection or queued for one (/metrics, summed over
the workers) before it compares the busy connections with the cap, so a cap per worker cannot pass.
Every test counts the backends of a role of its own."""
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from sqladmin import metrics, mval
from sqlfix import (IO_TIMEOUT, READINESS_PROBES, Lock, Poller, RawClient, SqlClient, admin_stats, describe,
                    encode_body, named, neon_headers, parent, per_worker, quiesce, rows_of, wait_until,
                    waiting_on_lock)


LONG = 120
CAP = 3
N = 100


# ----------------------------------------------------------------------------------------------
# the admin port (sqladmin.py; tests/integration/test_metrics.py has the strict parser and the format checks)

def ready(bh):
    quiesce(bh)
    return bh





def blocked_query(client, lock, i, timeout=LONG):
    return client.query("SELECT pg_advisory_xact_lock_shared($1::bigint), $2::int AS i",
                        [str(lock.key), str(i)], timeout=timeout)


# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [2, 4])
def test_cap_is_global_across_workers(sql_bulkhead, pg, workers):
    """100 requests at once over a pool of 3: once all of them are in bulkhead (on a connection or
    queued), exactly 3 are busy and 97 wait, Postgres never sees more than 3 connections of the role
    (pg_stat_activity polled through the whole load), every worker took requests, and all succeed."""
    role, pw = pg.make_role("wcap")
    bh = ready(sql_bulkhead(workers=workers,
                      db={"pool": {"max_connections": CAP, "max_pending": 1000, "acquire_timeout": "60s"},
                          "timeouts": {"connect": "2s", "total": "120s"}}))
    base = per_worker(admin_stats(bh), "accepted")  # the readiness probe's connection is on one of them
    c = SqlClient(bh, pg, user=role, password=pw)
    lock = Lock(pg)
    poller = Poller(lambda: len(pg.backends(role)))
    poller.start()
    try:
        with ThreadPoolExecutor(max_workers=N) as ex:
            try:
                futs = [ex.submit(blocked_query, c, lock, i) for i in range(N)]
                wait_until(lambda: waiting_on_lock(pg, role) >= CAP, timeout=IO_TIMEOUT,
                           what="%d requests running on the server" % CAP)

                def settled():
                    s = metrics(bh)
                    busy = mval(s, "bulkhead_pool_connections", pool="main", state="busy")
                    waiting = mval(s, "bulkhead_pool_waiters", pool="main")
                    connecting = mval(s, "bulkhead_pool_connections", pool="main", state="connecting")
                    return busy is not None and busy + waiting == N and connecting == 0 and (busy, waiting)
                busy, waiting = wait_until(settled, timeout=IO_TIMEOUT * 2,
                                           what="all %d requests on a connection or queued" % N)
                assert (busy, waiting) == (CAP, N - CAP), "busy %r beyond the cap of %d" % (busy, CAP)
                assert not any(f.done() for f in futs), [describe(f.result()) for f in futs if f.done()][:3]
                assert waiting_on_lock(pg, role) == CAP
                st = admin_stats(bh)
                assert named(st["databases"], "main")["pool"]["busy"] == CAP, named(st["databases"], "main")
                # SO_REUSEPORT spreads the 100 connections: a worker with none has probability 4 * (3/4)^100
                now = per_worker(st, "accepted")
                assert len(now) == workers and all(a > b for a, b in zip(now, base)), (base, st["workers"])
                assert sum(now) == N + READINESS_PROBES, st["workers"]
            finally:
                lock.release()  # before the executor waits for the requests, also on failure
            results = [f.result() for f in futs]
    finally:
        poller.stop()
        lock.close()
    assert poller.values, "pg_stat_activity was never polled: %r" % poller.errors[:3]
    assert poller.max <= CAP, "more than %d server connections: %d" % (CAP, poller.max)
    for i, r in enumerate(results):
        assert r is not None and r.status == 200, describe(r)
        assert json.loads(r.body)["rows"] == [["", str(i)]], describe(r)
    assert len(pg.backends(role)) <= CAP

    def counted():
        s = metrics(bh)
        return mval(s, "bulkhead_requests_total", route="*/sql", code="200") == N and s
    s = wait_until(counted, what="%d requests counted" % N)
    assert mval(s, "bulkhead_upstream_attempts_total", upstream="main", outcome="success") == N


class SqlConn:
    """One keep-alive client connection sending Neon requests (SqlClient opens one per request)."""

    def __init__(self, client):
        self.client = client
        self.raw = RawClient(client.port, timeout=LONG)

    def query(self, q, params=()):
        body = encode_body({"query": q, "params": list(params)})
        self.raw.request("POST", "/sql", headers=neon_headers(self.client.url()), body=body,
                         host="127.0.0.1:%d" % self.client.port)
        return self.raw.read_response()


class Pinned:
    """Keep-alive /sql connections whose worker is known: each is opened alone and attributed to the
    worker whose `clients` count in /stats went up by one (all are kept open while pinning)."""

    def __init__(self, bh, client):
        self.bh, self.client = bh, client
        self.conns = []  # (SqlConn, worker id)

    def open(self):
        before = per_worker(admin_stats(self.bh), "clients")
        c = SqlConn(self.client)
        after = wait_until(lambda: (lambda a: sum(a) == sum(before) + 1 and a)(
            per_worker(admin_stats(self.bh), "clients")), what="bulkhead to accept the connection")
        (wid,) = [i for i, (b, a) in enumerate(zip(before, after)) if a == b + 1]
        self.conns.append((c, wid))
        return c, wid

    def on(self, pred):
        for _ in range(64):  # each connection lands on a pred worker with probability >= 1/workers
            for c, w in self.conns:
                if pred(w):
                    return c, w
            self.open()
        raise AssertionError("64 connections and none on the wanted workers: %r" % [w for _, w in self.conns])

    def close_all(self):
        for c, _ in self.conns:
            c.raw.close()


@pytest.mark.parametrize("workers", [2, 4])
def test_idle_server_connection_on_one_worker_does_not_starve_another(sql_bulkhead, pg, workers):
    """A pool of 1: after a request on worker X its server connection stays idle there (idle_timeout 5
    minutes). A request on another worker must still be served (X closes its idle connection when
    asked) well before acquire_timeout (60 s), on a new server connection; then back on X again."""
    role, pw = pg.make_role("wkick")
    bh = ready(sql_bulkhead(workers=workers,
                      db={"pool": {"max_connections": 1, "idle_timeout": "5m", "acquire_timeout": "60s"},
                          "timeouts": {"connect": "2s", "total": "90s"}}))
    pinned = Pinned(bh, SqlClient(bh, pg, user=role, password=pw))
    try:
        x_conn, x = pinned.open()
        pid1 = rows_of(x_conn.query("SELECT pg_backend_pid() AS p"))[0][0]
        wait_until(lambda: named(admin_stats(bh)["databases"], "main")["pool"] == {"idle": 1, "busy": 0, "connecting": 0},
                   what="the server connection idle on worker %d" % x)

        y_conn, y = pinned.on(lambda w: w != x)
        pid2 = rows_of(y_conn.query("SELECT pg_backend_pid() AS p"))[0][0]
        assert pid2 != pid1, "worker %d answered on worker %d's server connection" % (y, x)
        # the first backend ends once bulkhead closed it (Postgres may list it for a moment longer)
        wait_until(lambda: [b["pid"] for b in pg.backends(role)] == [int(pid2)],
                   what="only the new server connection left")

        pid3 = rows_of(x_conn.query("SELECT pg_backend_pid() AS p"))[0][0]
        assert pid3 not in (pid1, pid2)
        wait_until(lambda: [b["pid"] for b in pg.backends(role)] == [int(pid3)],
                   what="only the newest server connection left")
        # the reply may precede the connection's reset: it is busy until then, then idle
        wait_until(lambda: named(admin_stats(bh)["databases"], "main")["pool"] == {"idle": 1, "busy": 0, "connecting": 0},
                   what="the server connection idle on worker %d" % x)
    finally:
        pinned.close_all()


def test_database_metrics_and_stats(sql_bulkhead, pg):
    """5 requests on a pool of 1 (one worker): counted on the /sql route and as successful attempts of
    database main, one idle server connection, a closed breaker, 5 pool acquisitions."""
    role, pw = pg.make_role("wmet")
    bh = ready(sql_bulkhead(workers=1, db={"pool": {"max_connections": 1}}))
    c = SqlClient(bh, pg, user=role, password=pw)
    for i in range(5):
        assert rows_of(c.query("SELECT $1::int AS i", [str(i)])) == [[str(i)]]

    def settled():
        s = metrics(bh)
        return (mval(s, "bulkhead_requests_total", route="*/sql", code="200") == 5
                and mval(s, "bulkhead_pool_connections", pool="main", state="idle") == 1 and s)
    s = wait_until(settled, what="5 requests counted and the connection idle")
    assert mval(s, "bulkhead_upstream_attempts_total", upstream="main", outcome="success") == 5
    assert mval(s, "bulkhead_pool_connections", pool="main", state="busy") == 0
    assert mval(s, "bulkhead_pool_waiters", pool="main") == 0
    assert mval(s, "bulkhead_breaker_state", upstream="main") == 0
    assert mval(s, "bulkhead_pool_wait_seconds_count", pool="main") == 5
    d = named(admin_stats(bh)["databases"], "main")
    assert d["breaker"] == "closed", d
    assert {k: v for k, v in d["attempts"].items() if v} == {"success": 5}, d
    assert d["pool"] == {"idle": 1, "busy": 0, "connecting": 0}, d
