"""SIGHUP reload with a database (issue 5): an unchanged database keeps its pooled server connections;
a changed one gets a new pool and the old pool's idle server connections are closed; a request in
flight across the reload finishes."""
import copy
import threading

from sqlfix import DBNAME, SqlClient, admin_stats, named, rows_of, sighup_reload, unique, wait_until


def backend_pid(client):
    """The server pid the query ran on, once the connection is back in the pool (its session is
    reset after the reply: a query arriving before that would get a second connection)."""
    pid = int(rows_of(client.query("SELECT pg_backend_pid()"))[0][0])
    wait_until(lambda: named(admin_stats(client.bh)["databases"], "main")["pool"]
               == {"idle": 1, "busy": 0, "connecting": 0}, what="the connection idle again")
    return pid


def test_unchanged_database_keeps_its_pool_changed_one_is_replaced(sql_bulkhead, pg):
    role, pw = pg.make_role("rl")
    bh = sql_bulkhead()
    client = SqlClient(bh, pg, user=role, password=pw)
    pid = backend_pid(client)
    assert backend_pid(client) == pid
    conf = copy.deepcopy(bh.conf)
    conf["routes"].insert(1, {"match": {"path_prefix": "/other"}, "upstream": "u"})
    sighup_reload(bh, conf)
    assert backend_pid(client) == pid, "an unchanged database lost its pooled connection"
    conf = copy.deepcopy(conf)
    conf["databases"]["main"]["pool"] = {"max_connections": 3}
    sighup_reload(bh, conf)
    new_pid = backend_pid(client)
    assert new_pid != pid
    # the replaced pool's idle server connection is closed, not left until its idle timeout
    wait_until(lambda: [b["pid"] for b in pg.backends(role)] == [new_pid],
               what="only the new pool's server connection left")


def test_query_in_flight_across_a_reload_finishes(sql_bulkhead, pg):
    role, pw = pg.make_role("rf")
    bh = sql_bulkhead(workers=2)
    client = SqlClient(bh, pg, user=role, password=pw)
    marker = unique("inflight")
    key = abs(hash(marker)) % (1 << 31)
    result = []
    lock = pg.connect(dbname=DBNAME)   # the query blocks on an advisory lock the test holds
    try:
        lock.execute("SELECT pg_advisory_lock(%d)" % key)
        t = threading.Thread(target=lambda: result.append(
            client.query("SELECT pg_advisory_xact_lock(%d), '%s' AS m" % (key, marker))))
        t.start()
        wait_until(lambda: pg.active_with(marker), what="the query running on the server")
        conf = copy.deepcopy(bh.conf)
        conf["databases"]["main"]["pool"] = {"max_connections": 2}   # its pool is replaced
        sighup_reload(bh, conf)
        assert t.is_alive()
        lock.execute("SELECT pg_advisory_unlock(%d)" % key)
        t.join(30)
    finally:
        lock.close()
    assert result and result[0] is not None and result[0].status == 200, result
    assert rows_of(result[0])[0][1] == marker
    # SqlClient sends Neon-Raw-Text-Output: true (and array mode), so the int4 comes as its Postgres
    # text, a JSON string (spec section 5.1; bh_sql_encode.c, raw mode), never the number
    assert rows_of(client.query("SELECT 1")) == [["1"]]
    wait_until(lambda: len(pg.backends(role)) == 1,
               what="the old pool's connection closed once its query ended")
