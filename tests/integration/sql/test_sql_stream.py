"""Rows stream (issue 10, section B): a result is encoded row by row as Postgres sends it (single-row
mode), and the moment the reply would pass max_response_bytes the query is cancelled on the server, its
connection discarded and the client answered 507. Nothing like the whole result is ever held in memory:
bulkhead's peak RSS (VmHWM) is compared before and after a query that would produce about 1 GiB.
Under AddressSanitizer the quarantine of freed memory (a PGresult per row) would count as growth, so
these instances run with a small quarantine, as test_streaming.py's.
"""
import os

from sqlfix import IO_TIMEOUT, SqlClient, assert_error_shape, rows_of, unique, wait_until

MIB = 1024 * 1024


def small_quarantine_env():
    opts = os.environ.get("ASAN_OPTIONS", "")
    return {"ASAN_OPTIONS": (opts + ":" if opts else "") + "quarantine_size_mb=4"}


def test_huge_result_is_507_with_bounded_memory_and_cancelled(sql_bulkhead, pg):
    role, pw = pg.make_role("big")
    bh = sql_bulkhead(db={"max_response_bytes": "10MiB", "pool": {"max_connections": 1},
                          "timeouts": {"connect": "2s", "total": "300s"}}, env=small_quarantine_env())
    c = SqlClient(bh, pg, user=role, password=pw)
    assert rows_of(c.query("SELECT 1 AS x")) == [["1"]]  # the pool and its buffers exist before the baseline
    before = bh.hwm()
    marker = unique("huge")
    r = c.query("SELECT repeat('x', 1000) AS v, '%s' AS m FROM generate_series(1, 1000000)" % marker,
                timeout=300)
    body = assert_error_shape(r, 507)
    assert body["message"] == "response is too large (max is %d bytes)" % (10 * MIB), body
    # the query was cancelled on the server, not left to run to its end
    wait_until(lambda: not pg.active_with(marker), timeout=IO_TIMEOUT, what="the huge query to stop")
    grown = bh.hwm() - before
    assert grown < 64 * MIB, "peak RSS grew by %.1f MiB" % (grown / MIB)
    # the pool of one recovers (the cancelled session was discarded, a new one opened)
    assert rows_of(c.query("SELECT 2 AS x")) == [["2"]]


def test_huge_batch_result_is_507_and_rolled_back(sql_bulkhead, pg):
    role, pw = pg.make_role("bigb")
    bh = sql_bulkhead(db={"max_response_bytes": "1MiB", "pool": {"max_connections": 1},
                          "timeouts": {"connect": "2s", "total": "300s"}})
    c = SqlClient(bh, pg, user=role, password=pw)
    t = unique("tbig")
    pg.as_user("CREATE TABLE %s (id int)" % t, user=role, password=pw)
    r = c.batch(["INSERT INTO %s VALUES (1)" % t,
                 "SELECT repeat('x', 1000) AS v FROM generate_series(1, 1000000)"], timeout=300)
    assert_error_shape(r, 507)
    assert pg.app_sql("SELECT count(*) FROM %s" % t) == [(0,)]
    assert rows_of(c.query("SELECT count(*) AS n FROM %s" % t)) == [["0"]]


def test_rows_split_across_single_row_results_encode_like_one_result(sql, pg):
    """Many rows, several columns and types, NULLs, in both row shapes: the same bytes as a whole
    result (the libpq oracle of the protocol tests builds them from one PGRES_TUPLES_OK)."""
    from sqlfix import Oracle
    q = ("SELECT g AS n, g::text || 'é' AS s, CASE WHEN g % 3 = 0 THEN NULL ELSE g * 1.5 END AS f"
         " FROM generate_series(1, 500) g")
    for array in (True, False):
        r = sql.query(q, array=array)
        assert r is not None and r.status == 200, r
        assert r.body == Oracle(pg).result_body(q, array=array)
