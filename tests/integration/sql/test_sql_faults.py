"""Faults on the SQL path (issue 4, "Resilience for SQL"): Postgres stopped (503 with Retry-After,
Proxy-Status and the 17-key body; recovery when it is back; an open breaker does not touch the server),
Postgres restarted under load (every request answered, the pool recovers, no leaked connections or
permits), the deadline (504, query cancelled on the server), a client that disconnects mid-query (query
cancelled, batch rolled back) or while queued (its query never runs).

These tests stop and start the session's Postgres; the `pg` fixture starts it again if a test fails
halfway. "Cancelled on the server" is observed in pg_stat_activity: no backend still running the
statement (its text carries a unique marker), polled with a bound.
"""
import socket
import struct
import threading
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from sqlfix import (IO_TIMEOUT, Lock, Poller, RawClient, SqlClient, assert_error_shape, assert_proxy_error,
                    build_request, describe, encode_body, neon_headers, proxy_status_error, rows_of, unique,
                    wait_until, waiting_on_lock)
from sqladmin import metrics, mval

RECOVERY_TIMEOUT = max(60, IO_TIMEOUT)  # covers a breaker's open period after a restart


def assert_unavailable(r):
    """Section 0: Postgres unreachable / breaker open -> 503, Retry-After, Proxy-Status, 17 keys, code ""."""
    assert r is not None and r.status == 503, describe(r)
    ra = r.header("Retry-After")
    assert ra is not None and ra.strip().isdigit(), describe(r)
    assert proxy_status_error(r), describe(r)
    assert_proxy_error(r, 503)
    assert r.header("access-control-allow-origin") == "*"


def status(r):
    return None if r is None else r.status


# ----------------------------------------------------------------------------------------------
# Postgres stopped

def test_postgres_stopped_503_then_recovers(sql_bulkhead, pg):
    role, pw = pg.make_role("down")
    bh = sql_bulkhead(db={"breaker": {"consecutive_failures": 5, "open_for": "500ms", "max_open_for": "1s",
                                      "half_open_probes": 1}})
    c = SqlClient(bh, pg, user=role, password=pw)
    assert rows_of(c.query("SELECT 1 AS x")) == [["1"]]  # a pooled connection exists when Postgres stops
    pg.stop()
    try:
        for _ in range(30):
            assert_unavailable(c.query("SELECT 1 AS x"))
            assert_unavailable(c.batch(["SELECT 1 AS x"]))
    finally:
        pg.start()
    wait_until(lambda: status(c.query("SELECT 1 AS x")) == 200, timeout=RECOVERY_TIMEOUT, interval=0.05,
               what="a 200 after Postgres is back")
    for _ in range(10):
        assert rows_of(c.query("SELECT 1 AS x")) == [["1"]]
    assert len(pg.backends(role)) <= 4


def test_open_breaker_does_not_touch_the_server(sql_bulkhead, pg):
    """After Postgres went away and the breaker opened, requests are refused without a connection
    attempt: a listener put on Postgres's port sees no connection while 20 requests are answered 503
    (the breaker stays open for 60s, far longer than the test)."""
    role, pw = pg.make_role("brk")
    bh = sql_bulkhead(db={"breaker": {"consecutive_failures": 3, "open_for": "60s", "max_open_for": "60s",
                                      "half_open_probes": 1}})
    c = SqlClient(bh, pg, user=role, password=pw)
    assert rows_of(c.query("SELECT 1 AS x")) == [["1"]]
    pg.stop()
    for _ in range(6):
        assert_unavailable(c.query("SELECT 1 AS x"))
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        lsock.bind(("127.0.0.1", pg.port))
        lsock.listen(64)
        lsock.setblocking(False)
        for _ in range(20):
            assert_unavailable(c.query("SELECT 1 AS x"))
        try:
            conn, _ = lsock.accept()
            conn.close()
            pytest.fail("bulkhead connected to the Postgres port while its breaker was open")
        except BlockingIOError:
            pass
    finally:
        lsock.close()


# ----------------------------------------------------------------------------------------------
# Postgres restarted under load

def acceptable_during_restart(r):
    """A complete response: 200; 503 with the unavailable shape; 400 with the Postgres error that ended a
    running query (57P01 admin shutdown, 57P02 crash, 57P03 cannot connect now, class 08 connection
    exception) in the 17-key body; or, for a query whose server connection died without an error message
    (the spec prescribes no status for it), 502 with Proxy-Status and the 17-key body."""
    if r is None:
        return "no response"
    if r.status == 200:
        return None
    if r.status == 503:
        try:
            assert_unavailable(r)
        except AssertionError as e:
            return str(e)
        return None
    if r.status == 502:
        try:
            assert_proxy_error(r, 502)
            assert proxy_status_error(r), "no Proxy-Status"
        except AssertionError as e:
            return str(e)
        return None
    if r.status == 400:
        try:
            body = assert_error_shape(r, 400)
        except AssertionError as e:
            return str(e)
        if body["code"] in ("57P01", "57P02", "57P03") or body["code"].startswith("08"):
            return None
    return describe(r)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_restart_under_load(sql_bulkhead, pg, mode):
    role, pw = pg.make_role("rst")
    bh = sql_bulkhead(workers=2, db={"pool": {"max_connections": 4, "acquire_timeout": "5s"},
                                     "timeouts": {"connect": "2s", "total": "30s"},
                                     "breaker": {"open_for": "200ms", "max_open_for": "1s"}})
    c = SqlClient(bh, pg, user=role, password=pw)
    results = []
    results_lock = threading.Lock()
    stop = threading.Event()

    def client_loop(n):
        while not stop.is_set():
            r = c.query("SELECT pg_backend_pid() AS p, $1::int AS n", [str(n)])
            with results_lock:
                results.append(r)

    def ok_count():
        with results_lock:
            return sum(1 for r in results if status(r) == 200)

    poller = Poller(lambda: len(pg.backends(role)))
    poller.start()
    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(8)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: ok_count() >= 100, timeout=IO_TIMEOUT, what="load before the restart")
        pg.restart(mode)
        before = ok_count()
        wait_until(lambda: ok_count() >= before + 100, timeout=RECOVERY_TIMEOUT,
                   what="successful requests after the restart")
    finally:
        stop.set()
        for t in threads:
            t.join(IO_TIMEOUT)
        poller.stop()
    bad = [m for m in (acceptable_during_restart(r) for r in results) if m]
    assert not bad, "%d of %d requests not answered properly, e.g. %s" % (len(bad), len(results), bad[:3])
    assert poller.max is not None and poller.max <= 4, "server connections: max %r" % poller.max
    # the pool recovered: sequential requests succeed, and all 4 permits can be held at once again
    for _ in range(20):
        assert rows_of(c.query("SELECT 1 AS x")) == [["1"]]
    lock = Lock(pg)
    try:
        with ThreadPoolExecutor(max_workers=8) as ex:
            futs = [ex.submit(c.query, "SELECT pg_advisory_xact_lock_shared($1::bigint) AS l",
                              [str(lock.key)], timeout=120) for _ in range(8)]
            wait_until(lambda: waiting_on_lock(pg, role) == 4, timeout=IO_TIMEOUT,
                       what="4 connections in use at once after the restart (no leaked permits)")
            lock.release()
            assert all(status(f.result()) == 200 for f in futs), [describe(f.result()) for f in futs]
    finally:
        lock.close()
    assert len(pg.backends(role)) <= 4, pg.backends(role)


# ----------------------------------------------------------------------------------------------
# deadline and client disconnects: the query is cancelled on the server

def test_deadline_504_and_query_cancelled(sql_bulkhead, pg):
    role, pw = pg.make_role("ddl")
    bh = sql_bulkhead(db={"pool": {"max_connections": 1}, "timeouts": {"connect": "2s", "total": "5s"}})
    c = SqlClient(bh, pg, user=role, password=pw)
    marker = unique("sleep_deadline")
    seen = Poller(lambda: bool(pg.active_with(marker)))
    seen.start()
    try:
        r = c.query("SELECT pg_sleep(600) AS %s" % marker, timeout=120)
    finally:
        seen.stop()
    assert r is not None and r.status == 504, describe(r)
    assert r.header("access-control-allow-origin") == "*"
    assert any(seen.values), "the query never ran on the server (nothing to cancel was observed)"
    wait_until(lambda: not pg.active_with(marker), timeout=IO_TIMEOUT,
               what="the timed-out query to be cancelled on the server")
    # the pool of one is usable again
    assert rows_of(c.query("SELECT 1 AS x")) == [["1"]]
    assert len(pg.backends(role)) <= 1


def test_deadline_in_a_batch_rolls_back(sql_bulkhead, pg):
    role, pw = pg.make_role("ddb")
    bh = sql_bulkhead(db={"pool": {"max_connections": 1}, "timeouts": {"connect": "2s", "total": "5s"}})
    c = SqlClient(bh, pg, user=role, password=pw)
    t = unique("tdd")
    pg.as_user("CREATE TABLE %s (id int)" % t, user=role, password=pw)
    marker = unique("sleep_batch")
    r = c.batch(["INSERT INTO %s VALUES (1)" % t, "SELECT pg_sleep(600) AS %s" % marker], timeout=120)
    assert r is not None and r.status == 504, describe(r)
    wait_until(lambda: not pg.active_with(marker), timeout=IO_TIMEOUT, what="the batch to be cancelled")
    wait_until(lambda: not [b for b in pg.backends(role) if b["state"] in ("active", "idle in transaction",
                                                                          "idle in transaction (aborted)")],
               timeout=IO_TIMEOUT, what="no transaction left open")
    assert pg.app_sql("SELECT count(*) FROM %s" % t) == [(0,)]


def raw_sql_request(port, conn, body, linger_rst=False):
    c = RawClient(port)
    if linger_rst:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.send(build_request("POST", "/sql", neon_headers(conn), encode_body(body), host="127.0.0.1:%d" % port))
    return c


@pytest.mark.parametrize("how", ["close", "reset"])
def test_client_disconnect_cancels_the_query(sql_bulkhead, pg, how):
    """close(): the client's FIN, which is what an aborted fetch or a torn-down serverless function
    sends (the Neon proxy cancels on it); reset: an RST."""
    role, pw = pg.make_role("disc")
    bh = sql_bulkhead(db={"pool": {"max_connections": 1}, "timeouts": {"connect": "2s", "total": "300s"}})
    c = SqlClient(bh, pg, user=role, password=pw)
    marker = unique("sleep_disc")
    client = raw_sql_request(bh.port, c.url(), {"query": "SELECT pg_sleep(600) AS %s" % marker, "params": []},
                             linger_rst=(how == "reset"))
    wait_until(lambda: pg.active_with(marker), timeout=IO_TIMEOUT, what="the query running on the server")
    client.close()
    wait_until(lambda: not pg.active_with(marker), timeout=IO_TIMEOUT,
               what="the query of a departed client to be cancelled")
    assert rows_of(c.query("SELECT 1 AS x")) == [["1"]]
    assert len(pg.backends(role)) <= 1


@pytest.mark.parametrize("how", ["close", "reset"])
def test_client_disconnect_mid_batch_rolls_back(sql_bulkhead, pg, how):
    role, pw = pg.make_role("discb")
    bh = sql_bulkhead(db={"pool": {"max_connections": 1}, "timeouts": {"connect": "2s", "total": "300s"}})
    c = SqlClient(bh, pg, user=role, password=pw)
    t = unique("tdb")
    pg.as_user("CREATE TABLE %s (id int)" % t, user=role, password=pw)
    marker = unique("sleep_discb")
    client = raw_sql_request(bh.port, c.url(), {"queries": [
        {"query": "INSERT INTO %s VALUES (1)" % t, "params": []},
        {"query": "SELECT pg_sleep(600) AS %s" % marker, "params": []}]}, linger_rst=(how == "reset"))
    wait_until(lambda: pg.active_with(marker), timeout=IO_TIMEOUT, what="the batch running on the server")
    client.close()
    wait_until(lambda: not pg.active_with(marker), timeout=IO_TIMEOUT, what="the batch to be cancelled")
    wait_until(lambda: not [b for b in pg.backends(role) if b["state"] in ("active", "idle in transaction",
                                                                          "idle in transaction (aborted)")],
               timeout=IO_TIMEOUT, what="no transaction left open")
    assert pg.app_sql("SELECT count(*) FROM %s" % t) == [(0,)]
    assert rows_of(c.query("SELECT count(*) AS n FROM %s" % t)) == [["0"]]


@pytest.mark.parametrize("how", ["close", "reset"])
def test_client_that_leaves_the_queue_never_runs(sql_bulkhead, pg, how):
    """Pool of 1 held by a blocked request; a second client queues and disconnects (close(): FIN, as
    Node's fetch does on abort; or RST); after the holder
    finishes, the departed client's INSERT must not run (nobody would ever see its result)."""
    role, pw = pg.make_role("leave")
    bh = sql_bulkhead(db={"pool": {"max_connections": 1, "acquire_timeout": "60s"},
                          "timeouts": {"connect": "2s", "total": "120s"}})
    c = SqlClient(bh, pg, user=role, password=pw)
    t = unique("tlq")
    pg.as_user("CREATE TABLE %s (id int)" % t, user=role, password=pw)
    lock = Lock(pg)
    try:
        with ThreadPoolExecutor(max_workers=2) as ex:
            holder = ex.submit(c.query, "SELECT pg_advisory_xact_lock_shared($1::bigint) AS l", [str(lock.key)],
                               timeout=120)
            wait_until(lambda: waiting_on_lock(pg, role) == 1, timeout=IO_TIMEOUT, what="the holder running")
            leaver = raw_sql_request(bh.port, c.url(), {"query": "INSERT INTO %s VALUES (1)" % t, "params": []},
                                     linger_rst=(how == "reset"))
            # a round trip that bulkhead answers itself (the preflight) after the leaver's request was
            # sent: a barrier (not a proof) that bulkhead has read and queued it before the client leaves
            pre = c.post(None, method="OPTIONS")
            assert status(pre) == 200, describe(pre)
            follower = ex.submit(c.query, "SELECT count(*) AS n FROM %s" % t, timeout=120)
            leaver.close()
            lock.release()
            assert status(holder.result()) == 200
            r = follower.result()
    finally:
        lock.close()
    assert rows_of(r) == [["0"]], describe(r)
    assert pg.app_sql("SELECT count(*) FROM %s" % t) == [(0,)]


# ----------------------------------------------------------------------------------------------
# failures that never reached Postgres, and the retry of whole batches

def test_connect_timeout_is_503(sql_bulkhead, pg, black_hole):
    """A server whose connects hang (the parent suite's black_hole): 503 with the unavailable shape once
    timeouts.connect (and the retries) are spent; no request hangs until the deadline."""
    host, port = black_hole.rsplit(":", 1)
    bh = sql_bulkhead(db={"server": "host=%s port=%s" % (host, port),
                          "timeouts": {"connect": "300ms", "total": "60s"}})
    c = SqlClient(bh, pg)
    for _ in range(3):
        assert_unavailable(c.query("SELECT 1 AS x", timeout=IO_TIMEOUT))


def test_too_many_connections_at_connect_is_400_53300(sql_bulkhead, pg):
    """Connect-time Postgres errors are 400 with the full body (bulkhead's decision table): a role at its
    CONNECTION LIMIT refuses the connect with 53300; once a slot frees, requests succeed."""
    role, pw = pg.make_role("lim")
    from psycopg import sql as S
    pg.sql(S.SQL("ALTER ROLE {} CONNECTION LIMIT 1").format(S.Identifier(role)))
    holder = pg.connect(dbname="app", user=role, password=pw, tcp=True)
    bh = sql_bulkhead(db={"breaker": {"consecutive_failures": 1000}})
    c = SqlClient(bh, pg, user=role, password=pw)
    try:
        body = assert_error_shape(c.query("SELECT 1 AS x"), 400)
        assert body["code"] == "53300" and body["severity"] == "FATAL", body
        assert body["message"] == 'too many connections for role "%s"' % role, body
    finally:
        holder.close()
    wait_until(lambda: status(c.query("SELECT 1 AS x")) == 200, timeout=IO_TIMEOUT, interval=0.05,
               what="a request once the role's connection slot is free")


@pytest.mark.parametrize("attempts", [1, 3], ids=["no-retry", "retried"])
def test_role_connection_limit_under_load_nothing_lost(sql_bulkhead, pg, attempts):
    """Row 25 under load: bulkhead's cap for the database (8, 2 workers) is above what Postgres lets
    the role open (CONNECTION LIMIT 3), so with 8 clients inserting at once some of bulkhead's
    connects are refused with 53300. Without retries such a refusal reaches its client as that 400;
    with them (a refused connect never ran, so even an INSERT may be retried) it is retried. Every
    answer is a 200 or that 400; an id answered 200 is in the table exactly once, and an id answered
    53300 is not in it at all."""
    role, pw = pg.make_role("limload")
    from psycopg import sql as S
    pg.sql(S.SQL("ALTER ROLE {} CONNECTION LIMIT 3").format(S.Identifier(role)))
    t = unique("limload")
    pg.as_user("CREATE TABLE %s (id int)" % t, user=role, password=pw)
    bh = sql_bulkhead(db={"pool": {"max_connections": 8}, "breaker": {"consecutive_failures": 100000},
                          "retry": {"attempts": attempts, "backoff": {"base": "1ms", "max": "5ms"}}},
                      workers=2)
    c = SqlClient(bh, pg, user=role, password=pw)

    def client(k):
        out = []
        for i in range(25):
            rid = k * 1000 + i
            r = c.query("INSERT INTO %s VALUES ($1)" % t, [str(rid)])
            assert r is not None, "no answer to id %d" % rid
            if r.status != 200:
                body = assert_error_shape(r, 400)
                assert body["code"] == "53300", body
            out.append((rid, r.status))
        return out

    with ThreadPoolExecutor(8) as ex:
        results = [x for xs in ex.map(client, range(8)) for x in xs]
    counts = dict(pg.sql("SELECT id, count(*) FROM %s GROUP BY id" % t, dbname="app"))
    ok = {i for i, s in results if s == 200}
    refused = {i for i, s in results if s == 400}
    failed = mval(metrics(bh), "bulkhead_upstream_attempts_total", upstream="main", outcome="connect_failed")
    print("row 25 under load, attempts %d: %d answered 200, %d answered 53300, %d connects refused"
          % (attempts, len(ok), len(refused), failed))
    assert failed, "the role's limit was never reached: the test proved nothing"
    if attempts == 1:
        assert len(refused) == failed, "a refused connect is one 400, and only it"
    assert ok, "nothing was served"
    assert [i for i in ok if counts.get(i) != 1] == [], "a 200 id not in the table exactly once"
    assert refused.isdisjoint(counts), "an id refused with 53300 ran"
    assert set(counts) == ok


def test_server_wide_max_connections_is_400_53300_and_recovers(sql_bulkhead, pg):
    """The server's own max_connections (not a role's limit): every non-reserved slot is taken by
    the test's connections, so bulkhead's connect is refused with 53300 ("remaining connection slots
    are reserved for ... superuser connections": the slots left are the superusers'): a 400 with the
    full body, never run. Once slots free, requests succeed, and the breaker
    (set to open after 1000 failures) is not what decides."""
    role, pw = pg.make_role("srvmax")
    t = unique("srvmax")
    pg.as_user("CREATE TABLE %s (i int)" % t, user=role, password=pw)
    bh = sql_bulkhead(db={"breaker": {"consecutive_failures": 1000}})
    c = SqlClient(bh, pg, user=role, password=pw)
    max_conn = int(pg.sql("SHOW max_connections")[0][0])
    reserved = int(pg.sql("SHOW superuser_reserved_connections")[0][0])
    holders = []
    try:
        # take slots until the server refuses a non-superuser: then every ordinary slot is held
        while len(holders) <= max_conn:
            try:
                holders.append(pg.connect(dbname="app", user=role, password=pw, tcp=True))
            except psycopg.OperationalError as e:
                assert "connection slots are reserved" in str(e) or "too many clients" in str(e), e
                break
        assert len(holders) <= max_conn - reserved, "took %d of %d slots" % (len(holders), max_conn)
        body = assert_error_shape(c.query("INSERT INTO %s VALUES (1)" % t), 400)
        assert body["code"] == "53300" and body["severity"] == "FATAL", body
        assert "connection slots are reserved" in body["message"], body
    finally:
        for h in holders:
            h.close()
    wait_until(lambda: status(c.query("INSERT INTO %s VALUES (2)" % t)) == 200, timeout=IO_TIMEOUT,
               interval=0.05, what="a request once server slots are free")
    assert [r[0] for r in pg.sql("SELECT i FROM %s" % t, dbname="app")] == [2], "the refused INSERT ran"


SERIALIZATION_DO = ("DO $$ BEGIN IF nextval('%s') = 1 THEN RAISE EXCEPTION 'could not serialize access'"
                    " USING ERRCODE = '%s'; END IF; END $$")


@pytest.mark.parametrize("code", ["40001", "40P01"])
def test_batch_rerun_on_serialization_failure_when_enabled(sql_bulkhead, pg, code):
    """retry.serialization_failures: true re-runs the whole batch on 40001/40P01. The batch fails only on
    its first run (a sequence, which a rollback does not undo, counts the runs)."""
    role, pw = pg.make_role("ser")
    seq = unique("seq")
    t = unique("tser")
    pg.as_user("CREATE SEQUENCE %s" % seq, user=role, password=pw)
    pg.as_user("CREATE TABLE %s (id int)" % t, user=role, password=pw)
    bh = sql_bulkhead(db={"retry": {"serialization_failures": True}})
    c = SqlClient(bh, pg, user=role, password=pw)
    r = c.batch(["INSERT INTO %s VALUES (1)" % t, SERIALIZATION_DO % (seq, code), "SELECT 1 AS x"],
                isolation="Serializable")
    assert r is not None and r.status == 200, describe(r)
    assert pg.app_sql("SELECT last_value FROM %s" % seq) == [(2,)], "the batch did not run exactly twice"
    assert pg.app_sql("SELECT count(*) FROM %s" % t) == [(1,)]


def test_batch_not_rerun_by_default(sql_bulkhead, pg):
    role, pw = pg.make_role("sern")
    seq = unique("seq")
    t = unique("tsern")
    pg.as_user("CREATE SEQUENCE %s" % seq, user=role, password=pw)
    pg.as_user("CREATE TABLE %s (id int)" % t, user=role, password=pw)
    c = SqlClient(sql_bulkhead(), pg, user=role, password=pw)
    r = c.batch(["INSERT INTO %s VALUES (1)" % t, SERIALIZATION_DO % (seq, "40001")])
    body = assert_error_shape(r, 400)
    assert body["code"] == "40001", body
    assert pg.app_sql("SELECT last_value FROM %s" % seq) == [(1,)]
    assert pg.app_sql("SELECT count(*) FROM %s" % t) == [(0,)]


def test_batch_after_the_idle_connection_was_terminated(sql_bulkhead, pg):
    """Issue 10: a pooled connection whose backend was terminated while idle, then batches. When the
    BEGIN cannot even be sent, the gateway answers and frees the request, and must not write to it
    afterwards (a use after free under ASan before the fix). Every batch gets an answer (run on a new
    connection, or 502 connection lost), and bulkhead serves on."""
    role, pw = pg.make_role("term")
    t = unique("tterm")
    pg.as_user("CREATE TABLE %s (i int)" % t, user=role, password=pw)
    c = SqlClient(sql_bulkhead(), pg, user=role, password=pw)
    answered = {}
    for i in range(6):
        r = c.query("SELECT 1")
        assert status(r) == 200, describe(r)  # the pool holds an idle connection of this key
        pg.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
        wait_until(lambda: pg.sql("SELECT count(*) FROM pg_stat_activity WHERE usename = %s",
                                  (role,))[0][0] == 0, what="the backend to end")
        # a batch (even i) or a single query (odd i), each inserting its number
        if i % 2 == 0:
            r = c.batch(["INSERT INTO %s VALUES (%d)" % (t, i), "SELECT 2"])
        else:
            r = c.query("INSERT INTO %s VALUES (%d)" % (t, i))
        assert status(r) in (200, 502), describe(r)
        answered[i] = status(r)
    r = c.batch(["SELECT 1", "SELECT 2"])
    assert status(r) == 200 and len(r.json()["results"]) == 2, describe(r)
    # a 200 ran exactly once, a 502 (the connection was lost before BEGIN or the query went out) not at all
    ran = sorted(row[0] for row in pg.sql("SELECT i FROM %s" % t, dbname="app"))
    assert ran == sorted(i for i, st in answered.items() if st == 200), (ran, answered)


def test_busy_connection_terminated_mid_query(sql_bulkhead, pg):
    """pg_terminate_backend of a connection while its query runs (an INSERT that then sleeps, in one
    statement): the client gets an error, never a 200, the INSERT is not in the table (its transaction
    died with the backend), nothing re-runs it, and the next query is served on a new connection.
    Guards against a retried statement after a lost connection, or a 200 for work that was undone."""
    role, pw = pg.make_role("termbusy")
    t = unique("tbusy")
    marker = unique("busy")
    pg.as_user("CREATE TABLE %s (id int)" % t, user=role, password=pw)
    c = SqlClient(sql_bulkhead(), pg, user=role, password=pw)
    result = {}
    sql = ("WITH ins AS (INSERT INTO %s VALUES (7) RETURNING id) SELECT id, pg_sleep(60), '%s' FROM ins"
           % (t, marker))
    th = threading.Thread(target=lambda: result.setdefault("r", c.query(sql)))
    th.start()
    running = "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s"
    pid = wait_until(lambda: (pg.sql(running, ("%" + marker + "%",)) or [[None]])[0][0],
                     what="the statement to run")
    pg.sql("SELECT pg_terminate_backend(%s)", (pid,))
    th.join(IO_TIMEOUT)
    r = result.get("r")
    assert r is not None and r.status == 502, describe(r)
    assert proxy_status_error(r) == "connection_terminated", describe(r)
    assert pg.app_sql("SELECT count(*) FROM %s" % t) == [(0,)]
    r = c.query("SELECT count(*) AS n FROM %s" % t)
    assert status(r) == 200 and rows_of(r) == [["0"]], describe(r)
    assert pg.app_sql("SELECT count(*) FROM %s" % t) == [(0,)]  # never re-run
