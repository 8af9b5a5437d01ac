"""The fast path of /sql (issue 10, section D): an ordinary SQL error keeps its server connection, the
session is reset only when a request may have changed it (`reset: auto`), and repeated query texts run as
server-side prepared statements from a per-connection cache. The server connections seen are counted in
pg_stat_activity for a role of the test's own; a pool of one makes every request use the same one.
"""
import pytest

from sqladmin import metrics, mval
from sqlfix import SqlClient, assert_db_error, ok_json, rows_of, unique


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


# ----------------------------------------------------------------------------------------------
# the prepared-statement cache (statement_cache)

def cache_count(bh, result):
    return mval(metrics(bh), "bulkhead_sql_statement_cache_total", database="main", result=result) or 0


def resets(bh):
    return mval(metrics(bh), "bulkhead_sql_resets_total", database="main") or 0


def test_cache_hits_are_counted_and_prepared_on_the_server(sql_bulkhead, pg):
    c, role, pw = one_conn_client(sql_bulkhead, pg, "ch")
    q = "SELECT $1::int + 1 AS n"
    assert rows_of(c.query(q, ["1"])) == [["2"]]
    assert (cache_count(c.bh, "hit"), cache_count(c.bh, "miss")) == (0, 1)
    for i in range(5):
        assert rows_of(c.query(q, [str(i)])) == [[str(i + 1)]]
    assert (cache_count(c.bh, "hit"), cache_count(c.bh, "miss")) == (5, 1)
    # the same session holds it as a server-side prepared statement
    rows = rows_of(c.query("SELECT count(*) AS n FROM pg_prepared_statements WHERE statement = $1", [q]))
    assert rows == [["1"]]


def test_column_type_change_between_identical_queries(sql_bulkhead, pg):
    """ALTER TABLE changes the result type under a cached plan: Postgres answers 0A000 "cached plan
    must not change result type" to the prepared statement; bulkhead runs the query once more
    unprepared, so the client sees the new rows, never the error."""
    c, role, pw = one_conn_client(sql_bulkhead, pg, "ddl")
    t = unique("tddl")
    pg.as_user("CREATE TABLE %s (id int, c int)" % t, user=role, password=pw)
    pg.as_user("INSERT INTO %s VALUES (1, 10)" % t, user=role, password=pw)
    q = "SELECT c FROM %s WHERE id = $1" % t
    for _ in range(3):
        r = c.query(q, ["1"])
        assert rows_of(r) == [["10"]]
    assert cache_count(c.bh, "hit") >= 2
    pg.as_user("ALTER TABLE %s ALTER COLUMN c TYPE text USING 'ten'" % t, user=role, password=pw)
    for _ in range(3):
        r = c.query(q, ["1"], array=True)
        body = ok_json(r)
        assert body["rows"] == [["ten"]], body
        assert body["fields"][0]["dataTypeID"] == 25, body  # text now
    pg.as_user("ALTER TABLE %s DROP COLUMN c" % t, user=role, password=pw)
    assert_db_error(c.query(q, ["1"]), "42703")  # the real error of the new table, not 0A000/26000


def test_deallocated_statement_is_rerun_unprepared(sql_bulkhead, pg):
    """The cache names a statement the session no longer has (26000): answered as without the cache."""
    c, role, pw = one_conn_client(sql_bulkhead, pg, "dea", reset="always")
    q = "SELECT 41 + $1::int AS n"
    assert rows_of(c.query(q, ["1"])) == [["42"]]
    # a reset (DEALLOCATE ALL) empties the cache on its own: a miss again, still correct
    assert rows_of(c.query(q, ["2"])) == [["43"]]
    assert cache_count(c.bh, "miss") == 2 and cache_count(c.bh, "hit") == 0


def test_cache_bound_holds(sql_bulkhead, pg):
    """statement_cache: 3 through one server connection: pg_prepared_statements, seen from that same
    connection, never holds more than 3 of bulkhead's (+1 for the query that looks)."""
    c, role, pw = one_conn_client(sql_bulkhead, pg, "cb", statement_cache=3)
    look = "SELECT count(*) AS n FROM pg_prepared_statements"
    seen = []
    for i in range(10):
        assert rows_of(c.query("SELECT %d AS v, $1::text AS s" % i, ["x"])) == [[str(i), "x"]]
        seen.append(int(rows_of(c.query(look))[0][0]))
    assert max(seen) <= 4, seen
    assert seen[-1] >= 3, seen  # the cache is in use, not off
    assert cache_count(c.bh, "miss") >= 10


def test_cache_off(sql_bulkhead, pg):
    c, role, pw = one_conn_client(sql_bulkhead, pg, "co", statement_cache=0)
    for _ in range(3):
        assert rows_of(c.query("SELECT 1 AS x")) == [["1"]]
    assert rows_of(c.query("SELECT count(*) AS n FROM pg_prepared_statements")) == [["0"]]
    assert cache_count(c.bh, "hit") == 0 and cache_count(c.bh, "miss") == 0


def test_parameter_count_error_is_the_unprepared_one(sql_bulkhead, pg):
    """A Bind error would name the prepared statement: the client sees Postgres' text for the unnamed
    statement, exactly as without the cache."""
    c, role, pw = one_conn_client(sql_bulkhead, pg, "pc")
    for _ in range(2):
        body = assert_db_error(c.query("SELECT $1::int, $2::int AS n", ["1"]), "08P01")
        assert "bh_ps_" not in body["message"] and '"" requires 2' in body["message"], body


# ----------------------------------------------------------------------------------------------
# reset: auto | always

def test_reset_auto_hides_session_state(sql_bulkhead, pg):
    c, role, pw = one_conn_client(sql_bulkhead, pg, "ra")
    before = sessions(pg, role)
    pg.sql("CREATE SCHEMA IF NOT EXISTS ra_schema")
    pg.sql("GRANT USAGE ON SCHEMA ra_schema TO %s" % role)
    assert ok_json(c.query("SET search_path TO ra_schema"))
    assert rows_of(c.query("SELECT current_setting('search_path') AS p")) == [['"$user", public']]
    assert ok_json(c.query("CREATE TEMP TABLE ra_tmp (x int)"))
    assert_db_error(c.query("SELECT * FROM ra_tmp"), "42P01")
    assert ok_json(c.query("SELECT pg_advisory_lock(7)"))
    assert rows_of(c.query("SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory'"
                           " AND pid = pg_backend_pid()")) == [["0"]]
    assert ok_json(c.query("SELECT set_config('application_name', 'z', false)"))
    assert rows_of(c.query("SELECT current_setting('application_name') AS a")) == [["bulkhead"]]
    assert ok_json(c.query("SET TimeZone = 'America/New_York'"))
    assert rows_of(c.query("SELECT current_setting('TimeZone') AS z")) == [["UTC"]]
    after = sessions(pg, role)
    assert after == before or not before, (before, after)  # one session all along


def test_reset_auto_skips_plain_statements(sql_bulkhead, pg):
    c, role, pw = one_conn_client(sql_bulkhead, pg, "rs")
    assert ok_json(c.query("SET search_path TO public"))  # one reset due before the next request
    assert ok_json(c.query("SELECT 1 AS x"))
    base = resets(c.bh)
    assert base == 1
    before = sessions(pg, role)
    for _ in range(100):
        assert rows_of(c.query("SELECT 1 AS x")) == [["1"]]
    assert resets(c.bh) == base
    assert sessions(pg, role) == before


def test_reset_always_resets_every_reuse(sql_bulkhead, pg):
    c, role, pw = one_conn_client(sql_bulkhead, pg, "rw", reset="always")
    assert ok_json(c.query("SELECT 1 AS x"))
    base = resets(c.bh)
    for _ in range(100):
        assert rows_of(c.query("SELECT 1 AS x")) == [["1"]]
    assert resets(c.bh) == base + 100
    assert ok_json(c.query("SET TimeZone = 'America/New_York'"))
    assert rows_of(c.query("SELECT current_setting('TimeZone') AS z")) == [["UTC"]]


def test_batch_after_a_state_change_is_reset_and_commits(sql_bulkhead, pg):
    """The reset rides inside the batch's transaction (after BEGIN): the batch still commits, with its
    isolation level, and sees the reset session."""
    c, role, pw = one_conn_client(sql_bulkhead, pg, "rb")
    t = unique("trb")
    pg.as_user("CREATE TABLE %s (id int)" % t, user=role, password=pw)
    assert ok_json(c.query("SET TimeZone = 'America/New_York'"))
    r = c.batch(["INSERT INTO %s VALUES (1)" % t, "SELECT current_setting('TimeZone') AS z",
                 "SELECT current_setting('transaction_isolation') AS i"], isolation="Serializable")
    results = ok_json(r)["results"]
    assert results[1]["rows"] == [["UTC"]] and results[2]["rows"] == [["serializable"]], results
    assert pg.app_sql("SELECT count(*) FROM %s" % t) == [(1,)]
    # committed: the reset counts as done, the next plain request needs none
    base = resets(c.bh)
    assert ok_json(c.query("SELECT 1 AS x"))
    assert resets(c.bh) == base


def test_vacuum_after_a_state_change(sql_bulkhead, pg):
    """A statement that cannot run inside a transaction block gets the reset it needs in a round trip
    of its own, not in front of it."""
    c, role, pw = one_conn_client(sql_bulkhead, pg, "rv")
    t = unique("trv")
    pg.as_user("CREATE TABLE %s (id int)" % t, user=role, password=pw)
    assert ok_json(c.query("SET TimeZone = 'America/New_York'"))
    assert ok_json(c.query("VACUUM %s" % t))
    assert ok_json(c.query("VACUUM %s" % t))


def test_application_names_cost_no_reset(sql_bulkhead, pg):
    """Clients alternating application names on one server connection: each request sees its own
    name, set in front of its statement, and no reset is ever needed for it (reset: auto)."""
    c, role, pw = one_conn_client(sql_bulkhead, pg, "ra")
    assert ok_json(c.query("SELECT 1 AS x"))
    base = resets(c.bh)
    before = sessions(pg, role)
    for i in range(50):
        app = "client-%d" % (i % 2)
        r = c.query("SELECT current_setting('application_name') AS a",
                    conn=c.url(query="application_name=" + app))
        assert rows_of(r) == [[app]], r
    assert resets(c.bh) == base
    assert sessions(pg, role) == before


def test_vacuum_with_a_new_application_name(sql_bulkhead, pg):
    """The application_name a statement that cannot run in a transaction block needs goes first, in
    a round trip of its own, as a reset would."""
    c, role, pw = one_conn_client(sql_bulkhead, pg, "rva")
    t = unique("trva")
    pg.as_user("CREATE TABLE %s (id int)" % t, user=role, password=pw)
    assert ok_json(c.query("VACUUM %s" % t, conn=c.url(query="application_name=vac")))
    assert ok_json(c.query("VACUUM %s" % t))


@pytest.mark.parametrize("opts", [dict(read_only=True), dict(isolation="Serializable", read_only=True,
                                                             deferrable=True)])
def test_read_only_batch_after_a_temp_table(sql_bulkhead, pg, opts):
    """The reset (DISCARD TEMP among it) inside a READ ONLY (DEFERRABLE) transaction still works."""
    c, role, pw = one_conn_client(sql_bulkhead, pg, "rro")
    assert ok_json(c.query("CREATE TEMP TABLE rro_tmp (x int)"))
    results = ok_json(c.batch(["SELECT count(*) AS n FROM pg_class WHERE relname = 'rro_tmp'"], **opts))
    assert results["results"][0]["rows"] == [["0"]], results


@pytest.mark.parametrize("batch", [False, True])
def test_failed_reset_runs_nothing_and_is_retried(sql_bulkhead, pg, batch):
    """The reset fails (pg_advisory_unlock_all() made non-executable for the role): the statement
    pipelined after it is skipped by Postgres, the session is discarded and the request runs once on a
    fresh connection (which needs no reset)."""
    c, role, pw = one_conn_client(sql_bulkhead, pg, "rf")
    t = unique("trf")
    pg.as_user("CREATE TABLE %s (id int)" % t, user=role, password=pw)
    assert ok_json(c.query("SET TimeZone = 'America/New_York'"))  # the next request needs a reset
    before = sessions(pg, role)
    pg.app_sql("REVOKE EXECUTE ON FUNCTION pg_advisory_unlock_all() FROM PUBLIC")
    try:
        ins = "INSERT INTO %s VALUES (1)" % t
        r = c.batch([ins, "SELECT current_setting('TimeZone') AS z"]) if batch else c.query(ins)
        body = ok_json(r)
        if batch:
            assert body["results"][1]["rows"] == [["UTC"]], body
    finally:
        pg.app_sql("GRANT EXECUTE ON FUNCTION pg_advisory_unlock_all() TO PUBLIC")
    assert pg.app_sql("SELECT count(*) FROM %s" % t) == [(1,)]
    assert sessions(pg, role) != before


def test_copy_in_a_pipeline(sql_bulkhead, pg):
    """COPY FROM STDIN is refused: alone, with Postgres' 57014; inside a batch (where libpq 15's own
    Sync after the refusal would be answered out of the pipeline's order) the session is given up on
    (502), and nothing of the batch is committed. The pool of one serves on."""
    c, role, pw = one_conn_client(sql_bulkhead, pg, "cpy")
    t = unique("tcpy")
    pg.as_user("CREATE TABLE %s (id int)" % t, user=role, password=pw)
    assert_db_error(c.query("COPY %s FROM STDIN" % t), "57014")
    assert rows_of(c.query("SELECT 1 AS x")) == [["1"]]
    r = c.batch(["INSERT INTO %s VALUES (1)" % t, "COPY %s FROM STDIN" % t, "SELECT 2"])
    assert r is not None and r.status in (400, 502), r
    assert pg.app_sql("SELECT count(*) FROM %s" % t) == [(0,)]
    assert rows_of(c.query("SELECT 1 AS x")) == [["1"]]
