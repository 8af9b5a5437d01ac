"""The fast path of /sql (issue 10, section D): an ordinary SQL error keeps its server connection, the
session is reset only when a request may have changed it (`reset: auto`), and repeated query texts run as
server-side prepared statements from a per-connection cache. The server connections seen are counted in
pg_stat_activity for a role of the test's own; a pool of one makes every request use the same one.
"""
from sqlfix import SqlClient, assert_db_error, rows_of, unique


def sessions(pg, role):
    """(pid, backend_start) of the role's client backends."""
    return sorted(pg.sql("SELECT pid, backend_start FROM pg_stat_activity WHERE usename = %s"
                         " AND backend_type = 'client backend'", [role]))


def one_conn_client(sql_bulkhead, pg, prefix, **db):
    role, pw = pg.make_role(prefix)
    conf = {"pool": {"max_connections": 1}}
    conf.update(db)
    return SqlClient(sql_bulkhead(db=conf), pg, user=role, password=pw), role, pw


def test_sql_errors_keep_the_connection(sql_bulkhead, pg):
    """1,000 requests that each hit a unique violation open no new server connection."""
    c, role, pw = one_conn_client(sql_bulkhead, pg, "uv")
    t = unique("tuv")
    pg.as_user("CREATE TABLE %s (id int PRIMARY KEY)" % t, user=role, password=pw)
    assert ok_insert(c, t)
    before = sessions(pg, role)
    assert len(before) == 1, before
    for _ in range(1000):
        assert_db_error(c.query("INSERT INTO %s VALUES (1)" % t), "23505")
    assert sessions(pg, role) == before
    assert rows_of(c.query("SELECT count(*) AS n FROM %s" % t)) == [["1"]]


def ok_insert(c, t):
    r = c.query("INSERT INTO %s VALUES (1)" % t)
    return r is not None and r.status == 200
