"""POST /sql error paths (spec sections 2.1, 3, 4, 6, 7.1, 7.2 and bulkhead's decisions table): bad
headers, bad bodies, unknown hosts, connect-time Postgres errors (28P01, 3D000) as 400 with the 17-key
body, SQL errors with every field (compared byte for byte with what libpq reports for the same
statement), multi-statement 42601, 413, 507, batch rollback with nothing committed, wrong path/method.
"""
import json

import pytest

from sqlfix import (BOB, IO_TIMEOUT, Oracle, PeerClosed, RawClient, SqlClient, assert_db_error,
                    assert_error_shape, assert_proxy_error, build_request, describe, neon_headers, ok_json,
                    rows_of, unique)

SPEC_DIV0 = (b'{"message":"division by zero","code":"22012","detail":null,"hint":null,"position":null,'
             b'"internalPosition":null,"internalQuery":null,"severity":"ERROR","where":null,"table":null,'
             b'"column":null,"schema":null,"dataType":null,"constraint":null,"file":"int.c","line":"869",'
             b'"routine":"int4div"}')
SPEC_UNIQUE = (b'{"message":"duplicate key value violates unique constraint \\"neon_compat_10519_pkey\\"",'
               b'"code":"23505","detail":"Key (id)=(1) already exists.","hint":null,"position":null,'
               b'"internalPosition":null,"internalQuery":null,"severity":"ERROR","where":null,'
               b'"table":"neon_compat_10519","column":null,"schema":"public","dataType":null,'
               b'"constraint":"neon_compat_10519_pkey","file":"nbtinsert.c","line":"664",'
               b'"routine":"_bt_check_unique"}')
SPEC_ISOLATION = (b'{"message":"invalid isolation level","code":"","detail":null,"hint":null,"position":null,'
                  b'"internalPosition":null,"internalQuery":null,"severity":"","where":null,"table":null,'
                  b'"column":null,"schema":null,"dataType":null,"constraint":null,"file":null,"line":null,'
                  b'"routine":null}')


def assert_body(resp, status, expected):
    assert resp is not None and resp.status == status, describe(resp)
    assert resp.body == expected, "\nexpected %r\n     got %r" % (expected, resp.body)
    assert resp.header("access-control-allow-origin") == "*"


# ----------------------------------------------------------------------------------------------
# the spec's error examples, byte for byte (section 6.2; PostgreSQL 15.18 reports the same file/line)

def test_spec_6_2_division_by_zero(sql):
    oracle = Oracle(sql.pg).error_body("SELECT 1/0")
    assert oracle == SPEC_DIV0, "this server's libpq answer differs from the spec's example: %r" % oracle
    assert_body(sql.query("SELECT 1/0"), 400, SPEC_DIV0)


def test_spec_6_2_unique_violation(sql, pg):
    # the spec's table name; only this test uses it
    pg.as_user("DROP TABLE IF EXISTS neon_compat_10519")
    pg.as_user("CREATE TABLE neon_compat_10519 (id int PRIMARY KEY)")
    pg.as_user("INSERT INTO neon_compat_10519 VALUES (1)")
    assert_body(sql.query("INSERT INTO neon_compat_10519 VALUES ($1)", ["1"]), 400, SPEC_UNIQUE)


def test_spec_6_2_non_db_error_invalid_isolation_level(sql):
    assert_body(sql.batch(["SELECT 1"], isolation="serializable"), 400, SPEC_ISOLATION)
    # the check runs for single queries too (section 2)
    assert_body(sql.query("SELECT 1", headers=[("Neon-Batch-Isolation-Level", "Snapshot")]), 400, SPEC_ISOLATION)


# ----------------------------------------------------------------------------------------------
# SQL errors: the 17 keys from the ErrorResponse, compared with libpq's fields for the same statement

SQL_ERRORS = [
    ("undefined table with position", "SELECT * FROM no_such_table_xyz", [], "42P01"),
    ("syntax error with position", "SELEC 1", [], "42601"),
    ("multi-statement", "SELECT 1; SELECT 2", [], "42601"),
    ("parameter count mismatch", "SELECT $1::int AS a, $2::int AS b", ["1"], "08P01"),
    ("bad parameter value", "SELECT $1::int", ["abc"], "22P02"),
    ("internal position and query", "DO $$ BEGIN PERFORM no_such_fn_xyz(); END $$", [], "42883"),
    ("every field", "DO $$ BEGIN RAISE EXCEPTION 'boom \"x\" \\ é' USING DETAIL = 'the detail',"
     " HINT = 'a hint', ERRCODE = 'P0001', COLUMN = 'col', CONSTRAINT = 'cons', DATATYPE = 'dt',"
     " TABLE = 'tbl', SCHEMA = 'sch'; END $$", [], "P0001"),
]


@pytest.mark.parametrize("what,query,params,code", SQL_ERRORS, ids=[c[0] for c in SQL_ERRORS])
def test_sql_error_bodies(sql, what, query, params, code):
    expected = Oracle(sql.pg).error_body(query, params)
    assert json.loads(expected)["code"] == code
    assert_body(sql.query(query, params), 400, expected)


def test_sql_error_position_is_a_string(sql):
    body = assert_db_error(sql.query("SELECT * FROM no_such_table_xyz"), "42P01",
                           'relation "no_such_table_xyz" does not exist')
    assert body["position"] == "15" and body["severity"] == "ERROR"
    assert body["internalPosition"] is None and body["internalQuery"] is None
    assert isinstance(body["line"], str) and body["line"].isdigit()


def test_multi_statement_rejected_and_nothing_runs(sql, pg):
    t = unique("tms")
    pg.as_user("CREATE TABLE %s (id int)" % t)
    r = sql.query("INSERT INTO %s VALUES (1); INSERT INTO %s VALUES (2)" % (t, t))
    assert_db_error(r, "42601", "cannot insert multiple commands into a prepared statement")
    assert pg.app_sql("SELECT count(*) FROM %s" % t) == [(0,)]


def test_constraint_errors(sql, pg):
    t = unique("tce")
    pg.as_user("CREATE DOMAIN %s_pos AS int CHECK (VALUE > 0)" % t)
    pg.as_user("CREATE TABLE %s (id int NOT NULL, v int CONSTRAINT %s_vchk CHECK (v < 10), p %s_pos)" % (t, t, t))
    oracle = Oracle(sql.pg)
    for q in ["INSERT INTO %s (id) VALUES (NULL)" % t, "INSERT INTO %s (id, v) VALUES (1, 11)" % t,
              "INSERT INTO %s (id, p) VALUES (1, -1)" % t]:
        expected = oracle.error_body(q)
        assert_body(sql.query(q), 400, expected)
    body = json.loads(sql.query("INSERT INTO %s (id) VALUES (NULL)" % t).body)
    assert (body["code"], body["table"], body["column"], body["schema"]) == ("23502", t, "id", "public")


def test_error_then_success_on_the_same_pool(sql_bulkhead, pg):
    """A failed single query discards or resets its connection: the next one on a pool of 1 works."""
    c = SqlClient(sql_bulkhead(db={"pool": {"max_connections": 1}}), pg)
    for _ in range(3):
        assert_db_error(c.query("SELECT 1/0"), "22012")
        assert rows_of(c.query("SELECT 1 AS x")) == [["1"]]


# ----------------------------------------------------------------------------------------------
# the connection string and headers (section 2)

BAD_CONN = [
    ("missing header", None, "invalid header: neon-connection-string", None),
    ("non-ascii", "postgresql://alice:pw@db.example.com/app\xe9", "invalid header: neon-connection-string", None),
    ("not a url", "definitely not a url", None, "invalid connection string"),
    ("wrong scheme", "mysql://alice:pw@db.example.com/app", "incorrect scheme", None),
    ("no database", "postgresql://alice:pw@db.example.com", "missing database name", None),
    ("no user", "postgresql://:pw@db.example.com/app", "missing username", None),
    ("no host", "postgresql://alice:pw@/app", "missing hostname", None),  # spec 2.1
    ("no password", "postgresql://alice@db.example.com/app",
     "missing authentication credentials: required password", None),
]


@pytest.mark.parametrize("what,conn,message,prefix", BAD_CONN, ids=[c[0] for c in BAD_CONN])
def test_bad_connection_string(sql, what, conn, message, prefix):
    hdrs = neon_headers(conn)
    r = sql.post(b'{"query":"SELECT 1","params":[]}', replace_headers=hdrs)
    body = assert_proxy_error(r, 400, message=message)
    if prefix is not None:
        prefixes = prefix if isinstance(prefix, tuple) else (prefix,)
        assert body["message"].startswith(prefixes), body


def test_bad_connection_string_never_reaches_postgres(sql, pg):
    """A request rejected for its connection string must not open a server connection."""
    role, pw = pg.make_role("nocon")
    r = sql.post(b'{"query":"SELECT 1","params":[]}',
                 replace_headers=neon_headers("mysql://%s:%s@h/app" % (role, pw)))
    assert_proxy_error(r, 400, message="incorrect scheme")
    assert pg.backends(role) == []


BAD_BODIES = [
    ("not json", b"not json"),
    ("truncated", b'{"query":"SELECT 1"'),
    ("query not a string", b'{"query":1}'),
    ("params not an array", b'{"query":"SELECT 1","params":"x"}'),
    ("params an object", b'{"query":"SELECT 1","params":{"a":1}}'),
    ("queries not an array", b'{"queries":"SELECT 1"}'),
    ("queries of non-objects", b'{"queries":["SELECT 1"]}'),
    ("query missing in a batch element", b'{"queries":[{"params":[]}]}'),
    ("empty object", b"{}"),
    ("array", b"[]"),
    ("string", b'"SELECT 1"'),
    ("empty body", b""),
    ("invalid utf-8", b'{"query":"SELECT \xff","params":[]}'),
]


@pytest.mark.parametrize("what,body", BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_body(sql, what, body):
    r = sql.post(body)
    assert_proxy_error(r, 400, message_prefix="could not parse the HTTP request body")


def test_unknown_host_is_400_naming_it(sql_bulkhead, pg):
    bh = sql_bulkhead(db={"hosts": ["db.example.com", "10.1.2.3"]})
    c = SqlClient(bh, pg, host="db.example.com")
    assert rows_of(c.query("SELECT 1 AS x")) == [["1"]]
    assert rows_of(SqlClient(bh, pg, host="10.1.2.3").query("SELECT 1 AS x")) == [["1"]]
    for host in ["other.example.com", "127.0.0.1", "db.example.com.evil.net", "localhost"]:
        r = SqlClient(bh, pg, host=host).query("SELECT 1 AS x")
        assert_proxy_error(r, 400, contains=host)


def test_unknown_host_never_connects(sql_bulkhead, pg):
    role, pw = pg.make_role("nohost")
    bh = sql_bulkhead(db={"hosts": ["db.example.com"]})
    r = SqlClient(bh, pg, user=role, password=pw, host="attacker.example.net").query("SELECT 1")
    assert_proxy_error(r, 400, contains="attacker.example.net")
    assert pg.backends(role) == []


# ----------------------------------------------------------------------------------------------
# connect-time Postgres errors: 400 with the full body (bulkhead's decision, section 0)

def test_wrong_password_28P01(sql, pg):
    r = sql.query("SELECT 1", conn=pg.url(user=BOB, password="not-bobs"))
    body = assert_db_error(r, "28P01", 'password authentication failed for user "bob"')
    assert body["severity"] == "FATAL"


def test_unknown_user_28P01(sql, pg):
    r = sql.query("SELECT 1", conn=pg.url(user="nobody_xyz", password="pw"))
    assert_db_error(r, "28P01", 'password authentication failed for user "nobody_xyz"')


def test_unknown_database_3D000(sql, pg):
    r = sql.query("SELECT 1", conn=pg.url(dbname="no_such_db_xyz"))
    body = assert_db_error(r, "3D000", 'database "no_such_db_xyz" does not exist')
    assert body["severity"] == "FATAL"


def test_wrong_password_never_uses_a_pooled_connection(sql_bulkhead, pg):
    """A connection authenticated with the right password sits idle in the pool; the same user with a
    wrong password gets 28P01, never that connection (the pool key includes the password digest)."""
    role, pw = pg.make_role("pwkey")
    bh = sql_bulkhead(db={"pool": {"max_connections": 4}})
    good = SqlClient(bh, pg, user=role, password=pw)
    pid = rows_of(good.query("SELECT pg_backend_pid() AS p"))[0][0]
    assert [b["pid"] for b in pg.backends(role)] == [int(pid)], "the good connection is not pooled"
    bad = SqlClient(bh, pg, user=role, password=pw + "x")
    for _ in range(3):
        body = assert_db_error(bad.query("SELECT pg_backend_pid() AS p"), "28P01")
        assert body["severity"] == "FATAL"
    assert rows_of(good.query("SELECT pg_backend_pid() AS p")) == [[pid]]
    # a password change on the server: a request with the new password is a new key, so it opens (and
    # authenticates) its own connection
    new_pw = pw + "-new"
    from psycopg import sql as S
    pg.sql(S.SQL("ALTER ROLE {} PASSWORD {}").format(S.Identifier(role), S.Literal(new_pw)))
    r = SqlClient(bh, pg, user=role, password=new_pw).query("SELECT pg_backend_pid() AS p")
    assert rows_of(r)[0][0] != pid


# ----------------------------------------------------------------------------------------------
# wrong path and method (section 1.1)

def test_other_path_under_the_route(sql):
    for target in ["/sql/", "/sql/x", "/sql/x?y", "/sql//"]:
        r = sql.post(b'{"query":"SELECT 1","params":[]}', target=target)
        assert r is not None and r.status == 400, (target, describe(r))
        assert r.body == b'"query is not supported"', (target, r.body)
        assert r.header("content-type").split(";")[0].strip() == "application/json"


def test_other_method(sql_bulkhead, pg):
    c = SqlClient(sql_bulkhead(route_methods=None), pg)
    for method in ["GET", "PUT", "DELETE", "PATCH"]:
        r = c.post(b'{"query":"SELECT 1","params":[]}' if method != "GET" else None, method=method)
        assert r is not None and r.status == 400, (method, describe(r))
        assert r.body == b'"query is not supported"', (method, r.body)


# ----------------------------------------------------------------------------------------------
# limits (section 7.1, 7.2)

LIMIT = 10 * 1024 * 1024


def padded_query_body(total):
    head = b'{"query":"SELECT 1 AS x --'
    tail = b'","params":[]}'
    return head + b"a" * (total - len(head) - len(tail)) + tail


def send_big(port, hdrs, body):
    """Sends a body that the server may refuse midway; returns the response (or None)."""
    with RawClient(port, timeout=IO_TIMEOUT) as c:
        c.send(build_request("POST", "/sql", hdrs, None).replace(b"\r\n\r\n", b"\r\nContent-Length: %d\r\n\r\n"
                                                                % len(body), 1))
        try:
            c.sock.sendall(body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            return c.read_response()
        except (PeerClosed, ConnectionResetError):
            return None


def big_client(sql_bulkhead, pg, **db):
    # a deadline far above what moving and parsing 10 MiB takes under sanitizers: these tests are about size
    db.setdefault("timeouts", {"connect": "2s", "total": "300s"})
    return SqlClient(sql_bulkhead(db=db), pg)


def test_request_of_exactly_the_limit_is_served(sql_bulkhead, pg):
    c = big_client(sql_bulkhead, pg)
    body = padded_query_body(LIMIT)
    assert len(body) == LIMIT
    r = send_big(c.port, neon_headers(c.url()), body)
    assert r is not None and r.status == 200, describe(r)
    assert json.loads(r.body)["rows"] == [["1"]]


def test_request_above_the_limit_is_413(sql_bulkhead, pg):
    c = big_client(sql_bulkhead, pg)
    r = send_big(c.port, neon_headers(c.url()), padded_query_body(LIMIT + 1))
    assert r is not None and r.status == 413, describe(r)


def test_chunked_request_above_the_limit_is_413(sql_bulkhead, pg):
    c = big_client(sql_bulkhead, pg)
    body = padded_query_body(LIMIT + 1)
    hdrs = neon_headers(c.url()) + [("Transfer-Encoding", "chunked")]
    with RawClient(c.port, timeout=IO_TIMEOUT) as rc:
        rc.send(build_request("POST", "/sql", hdrs, None))
        try:
            step = 1 << 20
            for i in range(0, len(body), step):
                piece = body[i:i + step]
                rc.sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
            rc.sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            r = rc.read_response()
        except (PeerClosed, ConnectionResetError):
            r = None
    assert r is not None and r.status == 413, describe(r)


def test_configured_max_request_bytes(sql_bulkhead, pg):
    c = big_client(sql_bulkhead, pg, max_request_bytes="64KiB")
    r = send_big(c.port, neon_headers(c.url()), padded_query_body(65536))
    assert r is not None and r.status == 200, describe(r)
    r = send_big(c.port, neon_headers(c.url()), padded_query_body(65537))
    assert r is not None and r.status == 413, describe(r)


def test_sql_body_limit_is_the_databases_not_the_http_one(sql_bulkhead, pg):
    """limits.max_body_bytes bounds bodies forwarded upstream; a /sql body is bounded by its
    database's max_request_bytes alone, and refused with the JSON body."""
    c = SqlClient(sql_bulkhead(db={"max_request_bytes": "256KiB", "timeouts": {"connect": "2s", "total": "300s"}},
                               limits={"max_body_bytes": "16KiB"}), pg)
    r = send_big(c.port, neon_headers(c.url()), padded_query_body(100000))
    assert r is not None and r.status == 200, describe(r)
    r = send_big(c.port, neon_headers(c.url()), padded_query_body(256 * 1024 + 1))
    body = assert_error_shape(r, 413)
    assert "too large" in body["message"], body


def test_response_above_max_response_bytes_is_507(sql_bulkhead, pg):
    c = SqlClient(sql_bulkhead(db={"max_response_bytes": "64KiB", "pool": {"max_connections": 1}}), pg)
    big = "SELECT repeat('x', 1000) AS v FROM generate_series(1, 1000)"
    r = c.query(big)
    body = assert_error_shape(r, 507)
    assert body["message"] == "response is too large (max is 65536 bytes)", body
    assert body["code"] == ""
    # under the limit: fine; and the pool of one is still usable after the 507
    assert len(rows_of(c.query("SELECT repeat('x', 1000) AS v FROM generate_series(1, 10)"))) == 10
    assert rows_of(c.query("SELECT 1 AS x")) == [["1"]]


def test_batch_response_above_max_response_bytes_is_507_and_rolled_back(sql_bulkhead, pg):
    c = SqlClient(sql_bulkhead(db={"max_response_bytes": "64KiB", "pool": {"max_connections": 1}}), pg)
    t = unique("t507")
    pg.as_user("CREATE TABLE %s (id int)" % t)
    # cumulative across the batch: each result alone is under the limit
    r = c.batch(["INSERT INTO %s VALUES (1)" % t,
                 "SELECT repeat('x', 1000) AS v FROM generate_series(1, 40)",
                 "SELECT repeat('x', 1000) AS v FROM generate_series(1, 40)"])
    body = assert_error_shape(r, 507)
    assert body["message"].startswith("response is too large"), body
    assert pg.app_sql("SELECT count(*) FROM %s" % t) == [(0,)]
    assert rows_of(c.query("SELECT count(*) AS n FROM %s" % t)) == [["0"]]


# ----------------------------------------------------------------------------------------------
# batches: all or nothing (section 4.2)

def test_batch_error_rolls_back_everything(sql_bulkhead, pg):
    c = SqlClient(sql_bulkhead(db={"pool": {"max_connections": 1}}), pg)
    t = unique("tbr")
    pg.as_user("CREATE TABLE %s (id int)" % t)
    bad = "INSERT INTO %s VALUES ($1::int)" % t
    expected = Oracle(pg).error_body(bad, ["not a number"])
    r = c.batch(["INSERT INTO %s VALUES (1)" % t, "INSERT INTO %s VALUES (2), (3)" % t,
                 {"query": bad, "params": ["not a number"]}, "INSERT INTO %s VALUES (4)" % t])
    assert_body(r, 400, expected)
    assert pg.app_sql("SELECT count(*) FROM %s" % t) == [(0,)]
    # the connection is usable afterwards and not inside a leftover transaction
    r = c.batch(["INSERT INTO %s VALUES (5)" % t])
    assert ok_json(r)
    assert pg.app_sql("SELECT array_agg(id) FROM %s" % t) == [([5],)]


def test_batch_error_at_commit_rolls_back(sql, pg):
    t = unique("tbd")
    pg.as_user("CREATE TABLE %s (id int UNIQUE DEFERRABLE INITIALLY DEFERRED)" % t)
    r = sql.batch(["INSERT INTO %s VALUES (1)" % t, "INSERT INTO %s VALUES (1)" % t])
    body = assert_db_error(r, "23505")
    assert body["constraint"] == "%s_id_key" % t and body["table"] == t
    assert pg.app_sql("SELECT count(*) FROM %s" % t) == [(0,)]


def test_batch_read_only_violation(sql, pg):
    t = unique("tro")
    pg.as_user("CREATE TABLE %s (id int)" % t)
    r = sql.batch(["INSERT INTO %s VALUES (1)" % t], read_only=True)
    assert_db_error(r, "25006", "cannot execute INSERT in a read-only transaction")
    assert pg.app_sql("SELECT count(*) FROM %s" % t) == [(0,)]


def test_batch_with_a_multi_statement_query(sql, pg):
    t = unique("tbm")
    pg.as_user("CREATE TABLE %s (id int)" % t)
    r = sql.batch(["INSERT INTO %s VALUES (1)" % t, "INSERT INTO %s VALUES (2); SELECT 1" % t])
    assert_db_error(r, "42601", "cannot insert multiple commands into a prepared statement")
    assert pg.app_sql("SELECT count(*) FROM %s" % t) == [(0,)]
