"""SIGHUP reload with a database (issue 5): an unchanged database keeps its pooled server connections;
a changed one gets a new pool and the old pool's idle server connections are closed; a request in
flight across the reload finishes."""
import copy
import signal
import threading

import requests

from sqlfix import DBNAME, SqlClient, ok_json, rows_of, to_yaml, unique, wait_until


def stats(bh):
    return requests.get(bh.admin_url + "/stats", timeout=30).json()


def reload(bh, conf):
    before = stats(bh)["reloads"]["success"]
    bh.config_path.write_text(to_yaml(conf) + "\n")
    bh.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: stats(bh)["reloads"]["success"] == before + 1, what="the reload")
    gen = stats(bh)["generation"]
    wait_until(lambda: all(w["generation"] == gen for w in stats(bh)["workers"]),
               what="every worker on generation %d" % gen)


def backend_pid(client):
    return int(rows_of((client.query("SELECT pg_backend_pid()")))[0][0])


def test_unchanged_database_keeps_its_pool_changed_one_is_replaced(sql_bulkhead, pg):
    role, pw = pg.make_role("rl")
    bh = sql_bulkhead()
    client = SqlClient(bh, pg, user=role, password=pw)
    pid = backend_pid(client)
    assert backend_pid(client) == pid
    conf = copy.deepcopy(bh.conf)
    conf["routes"].insert(1, {"match": {"path_prefix": "/other"}, "upstream": "u"})
    reload(bh, conf)
    assert backend_pid(client) == pid, "an unchanged database lost its pooled connection"
    conf = copy.deepcopy(conf)
    conf["databases"]["main"]["pool"] = {"max_connections": 3}
    reload(bh, conf)
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
        reload(bh, conf)
        assert t.is_alive()
        lock.execute("SELECT pg_advisory_unlock(%d)" % key)
        t.join(30)
    finally:
        lock.close()
    assert result and result[0] is not None and result[0].status == 200, result
    assert rows_of((result[0]))[0][1] == marker
    assert rows_of((client.query("SELECT 1")))[0][0] in ("1", 1)
    wait_until(lambda: len(pg.backends(role)) == 1,
               what="the old pool's connection closed once its query ended")
