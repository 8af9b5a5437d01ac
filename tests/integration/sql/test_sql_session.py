"""Session state on pooled server connections (issue 4, "Pools and connections"; spec 7.5, 7.7): the
session settings bulkhead applies on every server connection, and no state of one request visible to the
next one (SET, temp tables, open transactions, prepared statements, advisory locks).

Each test uses a pool of one connection so that the next request gets the same server connection if it
was kept (or a new one if bulkhead discarded it: both are correct, leaking state is not).
"""
import pytest
from psycopg import sql as S

from sqlfix import IO_TIMEOUT, SqlClient, assert_db_error, ok_json, rows_of, unique, wait_until


def one_conn_client(sql_bulkhead, pg, prefix, **db):
    role, pw = pg.make_role(prefix)
    db.setdefault("pool", {"max_connections": 1})
    return SqlClient(sql_bulkhead(workers=1, db=db), pg, user=role, password=pw), role, pw


def pid(c):
    return rows_of(c.query("SELECT pg_backend_pid() AS p"))[0][0]


SETTINGS_Q = ("SELECT current_setting('client_encoding') AS e, current_setting('DateStyle') AS d,"
              " current_setting('IntervalStyle') AS i, current_setting('bytea_output') AS b,"
              " current_setting('TimeZone') AS z")
SPEC_SETTINGS = [["UTF8", "ISO, MDY", "postgres", "hex", "UTC"]]


def alter_role_defaults(pg, role):
    """Role defaults that differ from every setting bulkhead must apply."""
    for k, v in [("DateStyle", "SQL, DMY"), ("IntervalStyle", "sql_standard"), ("bytea_output", "escape"),
                 ("TimeZone", "Asia/Tokyo"), ("client_encoding", "LATIN1")]:
        pg.sql(S.SQL("ALTER ROLE {} SET {} = {}").format(S.Identifier(role), S.Identifier(k), S.Literal(v)))


def test_session_settings_on_every_server_connection(sql_bulkhead, pg):
    role, pw = pg.make_role("sess")
    alter_role_defaults(pg, role)
    c = SqlClient(sql_bulkhead(), pg, user=role, password=pw)
    assert rows_of(c.query(SETTINGS_Q)) == SPEC_SETTINGS
    assert rows_of(c.query("SELECT '2024-01-02 03:04:05+00'::timestamptz::text AS t, '\\x01'::bytea AS b,"
                           " '1 day 1 hour'::interval AS i")) == [["2024-01-02 03:04:05+00", "\\x01", "1 day 01:00:00"]]


def test_configured_session_settings(sql_bulkhead, pg):
    role, pw = pg.make_role("sesc")
    c = SqlClient(sql_bulkhead(db={"session": {"TimeZone": "America/New_York", "application_name": "bh-sql-test",
                                               "statement_timeout": "123s"}}), pg, user=role, password=pw)
    assert rows_of(c.query("SELECT current_setting('TimeZone') AS z, current_setting('application_name') AS a,"
                           " current_setting('statement_timeout') AS s, current_setting('DateStyle') AS d")) == [
        ["America/New_York", "bh-sql-test", "123s", "ISO, MDY"]]


def test_set_does_not_leak(sql_bulkhead, pg):
    c, role, _ = one_conn_client(sql_bulkhead, pg, "lset")
    alter_role_defaults(pg, role)
    before = rows_of(c.query("SELECT current_setting('search_path') AS p, current_setting('statement_timeout') AS s,"
                             " current_setting('application_name') AS a"))
    for q in ["SET search_path TO pg_catalog", "SET TimeZone = 'Europe/Paris'", "SET DateStyle = 'German'",
              "SET bytea_output = 'escape'", "SET statement_timeout = '1ms'", "SET application_name = 'leaky'",
              "SELECT set_config('IntervalStyle', 'iso_8601', false) AS x"]:
        assert ok_json(c.query(q))
    assert rows_of(c.query("SELECT current_setting('search_path') AS p, current_setting('statement_timeout') AS s,"
                           " current_setting('application_name') AS a")) == before
    # bulkhead's own settings survive the reset (a RESET ALL must not drop them back to role defaults)
    assert rows_of(c.query(SETTINGS_Q)) == SPEC_SETTINGS


def test_temp_table_does_not_leak(sql_bulkhead, pg):
    c, _, _ = one_conn_client(sql_bulkhead, pg, "ltmp")
    t = unique("tmp")
    assert ok_json(c.query("CREATE TEMP TABLE %s (id int)" % t))
    assert_db_error(c.query("SELECT * FROM pg_temp.%s" % t), "42P01")
    # and a temp table created and used within one batch works
    r = c.batch(["CREATE TEMP TABLE %s (id int)" % t, "INSERT INTO %s VALUES (1)" % t, "SELECT id FROM %s" % t])
    assert ok_json(r)["results"][2]["rows"] == [["1"]]
    assert_db_error(c.query("SELECT * FROM pg_temp.%s" % t), "42P01")


def test_open_transaction_does_not_leak(sql_bulkhead, pg):
    """BEGIN as a single query leaves the server connection inside a transaction: bulkhead must roll it
    back or discard the connection, so the next request's INSERT is committed on its own."""
    c, role, pw = one_conn_client(sql_bulkhead, pg, "ltx")
    t = unique("ttx")
    pg.as_user("CREATE TABLE %s (id int)" % t, user=role, password=pw)
    body = ok_json(c.query("BEGIN"))
    assert body["command"] == "BEGIN"
    wait_until(lambda: not [b for b in pg.backends(role) if b["state"].startswith("idle in transaction")],
               timeout=IO_TIMEOUT, what="no server connection left idle in a transaction")
    assert ok_json(c.query("INSERT INTO %s VALUES (1)" % t))
    assert pg.app_sql("SELECT count(*) FROM %s" % t) == [(1,)]
    # outside a transaction block SAVEPOINT is an error; inside a leaked one it would succeed
    assert_db_error(c.query("SAVEPOINT s1"), "25P01", "SAVEPOINT can only be used in transaction blocks")


def test_open_transaction_with_writes_is_not_committed_later(sql_bulkhead, pg):
    c, role, pw = one_conn_client(sql_bulkhead, pg, "ltw")
    t = unique("ttw")
    pg.as_user("CREATE TABLE %s (id int)" % t, user=role, password=pw)
    assert ok_json(c.query("BEGIN"))
    assert ok_json(c.query("INSERT INTO %s VALUES (1)" % t))
    # whichever way bulkhead handled the BEGIN, an INSERT answered 200 after it is either committed on its
    # own or (if it ran inside the leaked transaction) visible only to that session: the latter is a leak
    assert pg.app_sql("SELECT count(*) FROM %s" % t) == [(1,)]
    assert ok_json(c.query("COMMIT"))
    assert pg.app_sql("SELECT count(*) FROM %s" % t) == [(1,)]


def test_aborted_transaction_does_not_leak(sql_bulkhead, pg):
    c, _, _ = one_conn_client(sql_bulkhead, pg, "lab")
    assert ok_json(c.query("BEGIN"))
    assert_db_error(c.query("SELECT 1/0"), "22012")
    assert rows_of(c.query("SELECT 1 AS x")) == [["1"]]


def test_prepared_statement_does_not_leak(sql_bulkhead, pg):
    c, _, _ = one_conn_client(sql_bulkhead, pg, "lps")
    name = unique("ps")
    assert ok_json(c.query("PREPARE %s AS SELECT 1" % name))
    assert_db_error(c.query("EXECUTE %s" % name), "26000")


def test_advisory_lock_does_not_leak(sql_bulkhead, pg):
    c, _, _ = one_conn_client(sql_bulkhead, pg, "lal")
    key = 424242 + hash(unique()) % 100000
    assert ok_json(c.query("SELECT pg_advisory_lock($1::bigint) AS l", [str(key)]))

    def released():
        return pg.sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s "
                      "AND database = (SELECT oid FROM pg_database WHERE datname = 'app')", (key,))[0][0] == 0

    wait_until(released, timeout=IO_TIMEOUT, what="the advisory lock to be released after the request")


def test_listen_does_not_leak(sql_bulkhead, pg):
    c, _, _ = one_conn_client(sql_bulkhead, pg, "lln")
    chan = unique("chan")
    assert ok_json(c.query("LISTEN %s" % chan))
    assert rows_of(c.query("SELECT count(*) AS n FROM pg_listening_channels()")) == [["0"]]


@pytest.mark.parametrize("reset_role", ["SET ROLE", "SET SESSION AUTHORIZATION"])
def test_role_change_does_not_leak(sql_bulkhead, pg, reset_role):
    c, role, _ = one_conn_client(sql_bulkhead, pg, "lrl")
    other, _ = pg.make_role("lrlo")
    pg.sql(S.SQL("GRANT {} TO {}").format(S.Identifier(other), S.Identifier(role)))
    r = c.query("%s %s" % (reset_role, other))
    if reset_role == "SET SESSION AUTHORIZATION":
        # only a superuser may do this: an error, and nothing to leak
        assert_db_error(r, "42501")
    else:
        assert ok_json(r)
    assert rows_of(c.query("SELECT current_user AS u, session_user AS s")) == [[role, role]]
