"""The access log line of a POST /sql (issue 5): the database, the route, one attempt, the wait for a
pooled connection, and timings that fit in the request (check_access_timings)."""
import json

import pytest

from sqlfix import SqlClient, check_access_timings, ok_json, wait_until


def logged_query(sql_bulkhead, pg, tmp_path, query):
    """The one access log line of one query."""
    path = tmp_path / "access.log"
    bh = sql_bulkhead(log={"level": "info", "access": str(path)})
    ok_json(SqlClient(bh, pg).query(query))

    def line():
        if not path.exists():
            return None
        lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        return lines
    (entry,) = wait_until(line, what="the access log line")
    return check_access_timings(entry, sql=True)


def test_sql_request_is_logged_with_attempts_and_queue_time(sql_bulkhead, pg, tmp_path):
    # pg_sleep: the query takes 40 ms on the server, so the request does too
    entry = logged_query(sql_bulkhead, pg, tmp_path, "SELECT pg_sleep(0.04)")
    assert entry["request"] == "POST /sql" and entry["status"] == 200, entry
    assert entry["route"] == "*/sql" and entry["upstream"] == "main", entry
    assert entry["attempts"] == 1 and entry["queue_ms"] >= 0, entry
    assert entry["error"] is None
    assert entry["total_ms"] >= 40, entry


def test_sql_request_is_logged_with_its_first_byte_time(sql_bulkhead, pg, tmp_path):
    entry = logged_query(sql_bulkhead, pg, tmp_path, "SELECT pg_sleep(0.04)")
    assert entry["first_byte_ms"] >= 40, entry


@pytest.mark.parametrize("sent", [None, "client-trace-7"])
def test_sql_reply_carries_the_request_id_of_its_log_line(sql_bulkhead, pg, tmp_path, sent):
    """A /sql reply, a 200 or an SQL error (400), carries X-Request-Id: the access log line's id (the
    client's when it sent a well-formed one), beside the protocol's own neon-request-id."""
    path = tmp_path / "access.log"
    bh = sql_bulkhead(log={"level": "info", "access": str(path)})
    c = SqlClient(bh, pg)
    headers = [] if sent is None else [("X-Request-Id", sent)]
    replies = [c.query("SELECT 1 AS x", headers=headers), c.query("SELECT nope", headers=headers)]
    assert [r.status for r in replies] == [200, 400], replies

    def lines():
        if not path.exists():
            return None
        got = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        return got if len(got) == 2 else None
    logged = [e["request_id"] for e in wait_until(lines, what="two access log lines")]
    ids = [r.header("X-Request-Id") for r in replies]
    assert sorted(ids) == sorted(logged), (ids, logged)
    assert all(r.header("neon-request-id") for r in replies)
    if sent is not None:
        assert ids == [sent, sent]
    else:
        assert len(set(ids)) == 2 and all(len(i) == 32 for i in ids), ids
