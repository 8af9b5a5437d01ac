"""One cap per `databases` entry (issue 10, section A).

`databases.<x>.pool.max_connections` bounds every server connection of the entry, summed over all its
pool keys (user, password, settings) and all workers, exactly. At the cap, requests wait in one FIFO
across keys; a waiter whose key has no idle connection gets room by closing an idle connection of
another key, least recently used first. `pool.max_connections_per_user` (default: max_connections)
bounds one key. The client's `application_name` does not split pools: the server connection keeps the
configured name (`bulkhead`) and the client's value goes on the access-log line.

Postgres's side is what counts: every load test samples pg_stat_activity in a thread throughout
(sqladmin.ActivitySampler, a superuser connection of its own, counting only the test's own roles) and
asserts on the maximum. Requests that must stay in flight block on an advisory lock the test holds
(sqlfix.Lock), so nothing depends on how fast the machine is; "queued" is read from bulkhead's own
gauges on the admin port (`bulkhead_pool_connections{pool,state}`, `bulkhead_pool_waiters{pool}`).

Note for the implementation: a sample is taken every few milliseconds, so a backend that Postgres
still lists after bulkhead closed it (an evicted idle connection) counts until it has exited. An
entry at its cap that opens a new connection before the one it evicted is gone can be seen above the
cap here.
"""
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from sqladmin import ActivitySampler, metrics, mval, pool_total
from sqlfix import (IO_TIMEOUT, Lock, SqlClient, admin_stats, describe, named, rows_of, unique,
                    wait_until, waiting_on_lock)

LONG = 120  # client-side socket timeout of requests that wait on the test's lock
APPS = ("app-one", "app-two")


def db_conf(cap, **pool):
    conf = {"max_connections": cap, "max_pending": 1000, "acquire_timeout": "60s"}
    conf.update(pool)
    return {"pool": conf, "timeouts": {"connect": "2s", "total": "%ds" % LONG}}


def conn_string(client, app=None):
    return client.url(query=None if app is None else "application_name=" + app)


def blocked_query(client, lock, i, app=None, exclusive=False):
    """A request that holds its server connection until the test releases its lock; answers i."""
    fn = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    return client.query("SELECT %s($1::bigint), $2::int AS i" % fn, [str(lock.key), str(i)],
                        conn=conn_string(client, app), timeout=LONG)


def check_200(r, i):
    assert r is not None and r.status == 200, describe(r)
    assert json.loads(r.body)["rows"] == [["", str(i)]], describe(r)


def lock_waiters(pg, roles):
    return sum(waiting_on_lock(pg, r) for r in roles)


def settled(bh, n):
    """Every one of n requests is in bulkhead, on a server connection or queued for one:
    (busy, waiting), else False."""
    s = metrics(bh)
    busy = mval(s, "bulkhead_pool_connections", pool="main", state="busy")
    connecting = mval(s, "bulkhead_pool_connections", pool="main", state="connecting")
    waiting = mval(s, "bulkhead_pool_waiters", pool="main")
    if busy is None or waiting is None:
        return False
    return busy + waiting == n and connecting == 0 and (int(busy), int(waiting))


def backends_of(pg, roles):
    return [b for r in roles for b in pg.backends(r)]


def over_cap(sampler, cap):
    return "sampled max %d > %d server connections; %s" % (sampler.max_total, cap, sampler.describe_worst())


# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [1, 2])
def test_cap_bounds_two_users_and_two_application_names(sql_bulkhead, pg, workers):
    """Four client connection strings (2 users x 2 application names) against one entry with
    max_connections 4: 100 requests at once, held on the server until every one of them is on a
    connection or queued. Postgres never sees more than 4 connections of the two roles, exactly 4
    requests run while 96 wait, all 100 succeed, and at most 4 connections remain. With 2 workers the
    cap is the same one for the whole process."""
    cap, n = 4, 100
    users = [pg.make_role("capa"), pg.make_role("capb")]
    roles = [u for u, _ in users]
    bh = sql_bulkhead(workers=workers, db=db_conf(cap))
    keys = [(SqlClient(bh, pg, user=u, password=p), app) for u, p in users for app in APPS]
    lock = Lock(pg)
    try:
        with ActivitySampler(pg, roles) as sampler:
            with ThreadPoolExecutor(max_workers=n) as ex:
                try:
                    futs = [ex.submit(blocked_query, keys[i % 4][0], lock, i, keys[i % 4][1])
                            for i in range(n)]
                    wait_until(lambda: lock_waiters(pg, roles) >= cap, timeout=IO_TIMEOUT,
                               what="%d requests running on the server" % cap)
                    busy, waiting = wait_until(lambda: settled(bh, n), timeout=IO_TIMEOUT * 2,
                                               what="all %d requests on a connection or queued" % n)
                    running = lock_waiters(pg, roles)
                    early = [describe(f.result()) for f in futs if f.done()]
                finally:
                    lock.release()  # before the executor waits for the requests, also on failure
                results = [f.result() for f in futs]
    finally:
        lock.close()
    assert sampler.max_total <= cap, over_cap(sampler, cap)
    assert (busy, waiting) == (cap, n - cap), "busy %d, waiting %d: the cap of %d is per key" % (
        busy, waiting, cap)
    assert running == cap, "%d requests ran on the server at once" % running
    assert not early, "answered while the lock was held: %r" % early[:3]
    for i, r in enumerate(results):
        check_200(r, i)
    left = backends_of(pg, roles)
    assert len(left) <= cap, "%d server connections remain: %r" % (len(left), left)


def test_application_name_does_not_split_the_pool(sql_bulkhead, pg, tmp_path):
    """Sequential requests of one user with two application names and none, on an entry of one
    connection: all on the same server connection (the name is not part of the pool key), whose
    application_name is the current request's, seen from inside the request itself (set in front of
    the statement when it differs; the configured `bulkhead` without one); the client's value is on
    each request's access-log line as `application_name` (null without one)."""
    role, pw = pg.make_role("appn")
    path = tmp_path / "access.log"
    bh = sql_bulkhead(log={"level": "info", "access": str(path)}, db={"pool": {"max_connections": 1}})
    c = SqlClient(bh, pg, user=role, password=pw)
    names = [APPS[0], APPS[1], None] * 3
    pids = []
    for app in names:
        row = rows_of(c.query("SELECT pg_backend_pid() AS p, current_setting('application_name') AS a",
                              conn=conn_string(c, app)))[0]
        pids.append(row[0])
        assert row[1] == (app or "bulkhead"), "application_name seen by the query: %r for %r" % (row[1], app)
    assert len(set(pids)) == 1, "one user on one database used %d server connections for %d " \
                                "application names: %r" % (len(set(pids)), len(set(names)), pids)
    apps = pg.sql("SELECT application_name FROM pg_stat_activity WHERE usename = %s"
                  " AND backend_type = 'client backend'", (role,))
    assert apps == [("bulkhead",)], "server connections' application_name after the last request: %r" % apps

    def lines():
        if not path.exists():
            return None
        got = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        return len(got) == len(names) and got
    logged = wait_until(lines, what="%d access log lines" % len(names))
    assert [e.get("application_name") for e in logged] == names, \
        "application_name on the access-log lines: %r" % [{k: e.get(k) for k in ("request", "status",
                                                            "application_name")} for e in logged]


def test_idle_connections_of_another_user_make_room(sql_bulkhead, pg):
    """Eviction. Cap 2, idle_timeout 5 minutes: user A's two connections sit idle at the cap; user B's
    request is served (within acquire_timeout 3s), which is possible only by closing one of A's;
    bulkhead then holds 2 connections, not 3, and A's backends drop to at most 1."""
    cap = 2
    (a, pa), (b, pb) = pg.make_role("eva"), pg.make_role("evb")
    bh = sql_bulkhead(db={"pool": {"max_connections": cap, "idle_timeout": "5m", "acquire_timeout": "3s",
                                   "min_idle": 0},
                          "timeouts": {"connect": "2s", "total": "%ds" % LONG}})
    ca, cb = SqlClient(bh, pg, user=a, password=pa), SqlClient(bh, pg, user=b, password=pb)
    lock = Lock(pg)
    try:
        with ActivitySampler(pg, [a, b]) as sampler:
            with ThreadPoolExecutor(max_workers=cap) as ex:
                try:
                    futs = [ex.submit(blocked_query, ca, lock, i) for i in range(cap)]
                    wait_until(lambda: waiting_on_lock(pg, a) == cap, timeout=IO_TIMEOUT,
                               what="A's %d requests running at once" % cap)
                finally:
                    lock.release()
                for i, f in enumerate(futs):
                    check_200(f.result(), i)
            wait_until(lambda: [x["state"] for x in pg.backends(a)] == ["idle"] * cap
                       and mval(metrics(bh), "bulkhead_pool_connections", pool="main", state="idle") == cap,
                       timeout=IO_TIMEOUT, what="A's %d connections idle at the cap" % cap)
            r = cb.query("SELECT current_user AS u")
            assert r is not None and r.status == 200, "B not served while A's connections sat idle: " + describe(r)
            assert rows_of(r) == [[b]]
            held = pool_total(metrics(bh))
            assert held <= cap, "bulkhead holds %d server connections of an entry capped at %d " \
                                "(A's idle ones were not closed for B)" % (held, cap)
            wait_until(lambda: len(pg.backends(a)) <= cap - 1, timeout=IO_TIMEOUT,
                       what="one of A's idle connections to be closed for B")
    finally:
        lock.close()
    assert sampler.max_total <= cap, over_cap(sampler, cap)


def test_eviction_closes_the_least_recently_used_idle_connection(sql_bulkhead, pg):
    """Cap 2, idle_timeout 5 minutes: user B's connection, then user A's, sit idle (A's used last). User C's
    request must close B's (the least recently used), not A's: afterwards B has no backend and A keeps the
    one it had."""
    cap = 2
    users = {k: pg.make_role("lru" + k) for k in "abc"}
    bh = sql_bulkhead(db={"pool": {"max_connections": cap, "idle_timeout": "5m", "acquire_timeout": "3s",
                                   "min_idle": 0}})
    cl = {k: SqlClient(bh, pg, user=u, password=p) for k, (u, p) in users.items()}
    pid = {}
    with ActivitySampler(pg, [u for u, _ in users.values()]) as sampler:
        for k in "ba":
            pid[k] = int(rows_of(cl[k].query("SELECT pg_backend_pid() AS p"))[0][0])
            wait_until(lambda: [x["state"] for x in pg.backends(users[k][0])] == ["idle"]
                       and mval(metrics(bh), "bulkhead_pool_connections", pool="main", state="busy") == 0,
                       timeout=IO_TIMEOUT, what="%s's connection idle" % k.upper())
        r = cl["c"].query("SELECT current_user AS u")
        assert r is not None and r.status == 200, "C not served while A's and B's connections sat idle: " + \
            describe(r)
        held = pool_total(metrics(bh))
        assert held <= cap, "bulkhead holds %d server connections of an entry capped at %d" % (held, cap)
        wait_until(lambda: not pg.backends(users["b"][0]), timeout=IO_TIMEOUT,
                   what="B's connection (the least recently used) to be closed for C")
        assert [x["pid"] for x in pg.backends(users["a"][0])] == [pid["a"]], \
            "A's connection (used after B's) was closed or replaced"
    assert sampler.max_total <= cap, over_cap(sampler, cap)


def test_one_fifo_across_keys(sql_bulkhead, pg):
    """Cap 1, held by a request of user A blocked on the test's advisory lock. Six requests, users B and
    A alternating, are sent one at a time, each once the previous one is visibly queued (the waiters
    gauge). Released, they are served in arrival order: each takes nextval of one sequence, so the
    values it got tell the order. A FIFO per key would serve A's three first (on the connection A
    already has) and B's after."""
    (a, pa), (b, pb) = pg.make_role("fifa"), pg.make_role("fifb")
    seq = unique("seq")
    pg.app_sql("CREATE SEQUENCE %s" % seq)
    pg.app_sql("GRANT USAGE, SELECT, UPDATE ON SEQUENCE %s TO %s, %s" % (seq, a, b))
    bh = sql_bulkhead(db=db_conf(1, max_pending=100))
    ca, cb = SqlClient(bh, pg, user=a, password=pa), SqlClient(bh, pg, user=b, password=pb)
    order = [(cb, b), (ca, a), (cb, b), (ca, a), (cb, b), (ca, a)]
    lock = Lock(pg)
    try:
        with ActivitySampler(pg, [a, b]) as sampler:
            with ThreadPoolExecutor(max_workers=1 + len(order)) as ex:
                try:
                    holder = ex.submit(blocked_query, ca, lock, 0, None, True)
                    wait_until(lambda: waiting_on_lock(pg, a) == 1, timeout=IO_TIMEOUT,
                               what="A's request holding the one connection")
                    futs = []
                    for k, (c, user) in enumerate(order, 1):
                        f = ex.submit(c.query, "SELECT nextval('%s') AS n, $1::int AS k" % seq, [str(k)],
                                      timeout=LONG)
                        futs.append(f)
                        # queued: one connection, busy; k waiters; none connecting (a request whose
                        # own connection is being opened may count as a waiter meanwhile)
                        wait_until(lambda: f.done() or settled(bh, k + 1) == (1, k),
                                   timeout=IO_TIMEOUT, what="request %d (%s) queued" % (k, user))
                        assert not f.done(), "request %d (%s) was answered while the entry's one connection " \
                                             "was held by %s: %s" % (k, user, a, describe(f.result()))
                finally:
                    lock.release()
                check_200(holder.result(), 0)
                results = [f.result() for f in futs]
    finally:
        lock.close()
    served = []
    for k, r in enumerate(results, 1):
        assert r is not None and r.status == 200, describe(r)
        n, kk = rows_of(r)[0]
        assert kk == str(k)
        served.append(int(n))
    arrival = [u for _, u in order]
    by_service = [u for _, u in sorted(zip(served, arrival))]
    assert served == sorted(served), "served in the order %r (users %r), sent in the order %r" % (
        sorted(range(1, len(order) + 1), key=lambda k: served[k - 1]), by_service, arrival)
    assert sampler.max_total <= 1, over_cap(sampler, 1)


def test_per_user_cap(sql_bulkhead, pg):
    """max_connections 4, max_connections_per_user 2: 20 requests of user A held on the server run 2 at
    a time while 18 wait; user B's 2 requests, sent after A's, are served beside them on the rest of
    the cap (not behind A's queue). Postgres never sees more than 2 connections of A, 2 of B, 4 in all."""
    cap, per_user, n = 4, 2, 20
    (a, pa), (b, pb) = pg.make_role("pua"), pg.make_role("pub")
    bh = sql_bulkhead(db=db_conf(cap, max_connections_per_user=per_user))
    ca, cb = SqlClient(bh, pg, user=a, password=pa), SqlClient(bh, pg, user=b, password=pb)
    lock = Lock(pg)
    try:
        with ActivitySampler(pg, [a, b]) as sampler:
            with ThreadPoolExecutor(max_workers=n + per_user) as ex:
                try:
                    fa = [ex.submit(blocked_query, ca, lock, i) for i in range(n)]
                    wait_until(lambda: waiting_on_lock(pg, a) >= per_user, timeout=IO_TIMEOUT,
                               what="A's requests running")
                    busy_a, waiting_a = wait_until(lambda: settled(bh, n), timeout=IO_TIMEOUT * 2,
                                                   what="A's %d requests on a connection or queued" % n)
                    running_a = waiting_on_lock(pg, a)
                    fb = [ex.submit(blocked_query, cb, lock, i) for i in range(per_user)]
                    wait_until(lambda: fb[0].done() or waiting_on_lock(pg, b) == per_user,
                               timeout=IO_TIMEOUT, what="B's %d requests running beside A's queue" % per_user)
                    both = settled(bh, n + per_user)
                    early = [describe(f.result()) for f in fa + fb if f.done()]
                finally:
                    lock.release()
                results = [f.result() for f in fa] + [f.result() for f in fb]
    finally:
        lock.close()
    assert sampler.max_by_role[a] <= per_user, "sampled max %d connections of user A > %d; %s" % (
        sampler.max_by_role[a], per_user, sampler.describe_worst())
    assert (busy_a, waiting_a, running_a) == (per_user, n - per_user, per_user), (busy_a, waiting_a, running_a)
    assert not early, "answered while the lock was held: %r" % early[:3]
    assert both == (cap, n - per_user), "busy, waiting with B's requests in: %r" % (both,)
    assert sampler.max_by_role[b] <= per_user and sampler.max_total <= cap, over_cap(sampler, cap)
    for i, r in enumerate(results[:n]):
        check_200(r, i)
    for i, r in enumerate(results[n:]):
        check_200(r, i)


def connection_counts(item):
    """The connections of one /stats pool-key item ("connections", or idle + busy + connecting flat
    or under "pool"), or None."""
    if isinstance(item.get("connections"), int):
        return item["connections"]
    src = item.get("pool") if isinstance(item.get("pool"), dict) else item
    vals = [src[k] for k in ("idle", "busy", "connecting") if isinstance(src.get(k), int)]
    return sum(vals) if vals else None


def strings_in(x):
    if isinstance(x, str):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from strings_in(v)
    elif isinstance(x, list):
        for v in x:
            yield from strings_in(v)


def test_pool_metric_is_the_entry_total_and_stats_lists_the_keys(sql_bulkhead, pg):
    """Three requests held at once (user A with two application names, user B) on a cap of 4 leave 3
    idle connections. Once quiet, `bulkhead_pool_connections{pool="main"}` summed over its states
    equals what pg_stat_activity shows, as does /stats' pool of the entry; /stats lists the entry's
    pool keys: one per user (application_name does not split them), each with its own connection
    counts, and no password anywhere."""
    (a, pa), (b, pb) = pg.make_role("sta"), pg.make_role("stb")
    bh = sql_bulkhead(db=db_conf(4, idle_timeout="5m"))
    ca, cb = SqlClient(bh, pg, user=a, password=pa), SqlClient(bh, pg, user=b, password=pb)
    lock = Lock(pg)
    try:
        with ThreadPoolExecutor(max_workers=3) as ex:
            try:
                futs = [ex.submit(blocked_query, ca, lock, 0, APPS[0]),
                        ex.submit(blocked_query, ca, lock, 1, APPS[1]),
                        ex.submit(blocked_query, cb, lock, 2)]
                wait_until(lambda: lock_waiters(pg, [a, b]) == 3, timeout=IO_TIMEOUT,
                           what="3 requests running at once")
            finally:
                lock.release()
            for i, f in enumerate(futs):
                check_200(f.result(), i)
    finally:
        lock.close()

    def quiet():
        s = metrics(bh)
        idle = mval(s, "bulkhead_pool_connections", pool="main", state="idle")
        total = pool_total(s)
        seen = len(backends_of(pg, [a, b]))
        return idle == total == seen == 3 and mval(s, "bulkhead_pool_waiters", pool="main") == 0 and total
    wait_until(quiet, timeout=IO_TIMEOUT, what="bulkhead_pool_connections{pool=main} = pg_stat_activity = 3 idle")
    st = admin_stats(bh)
    d = named(st["databases"], "main")
    assert sum(d["pool"].values()) == 3, d
    text = json.dumps(st)
    assert pa not in text and pb not in text, "a password in /stats"
    lists = {k: v for k, v in d.items()
             if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)}
    assert lists, "no per-key list in /stats databases[main]: %r" % d
    key, items = next(((k, v) for k, v in lists.items()
                       if {a, b} <= set(s for x in v for s in strings_in(x))), (None, None))
    assert items is not None, "no per-key list naming users %s and %s in /stats databases[main]: %r" % (a, b, d)
    assert len(items) == 2, "%s: %d keys for 2 users (application_name must not split them): %r" % (
        key, len(items), items)
    per_user = {}
    for x in items:
        user = a if a in set(strings_in(x)) else b
        per_user[user] = connection_counts(x)
    assert per_user == {a: 2, b: 1}, "connections per key in /stats %s: %r" % (key, items)
