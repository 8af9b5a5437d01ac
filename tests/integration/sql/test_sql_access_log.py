"""The access log line of a POST /sql (issue 5): the database, the route, one attempt, the wait for a
pooled connection."""
import json

from sqlfix import SqlClient, ok_json, wait_until


def test_sql_request_is_logged_with_attempts_and_queue_time(sql_bulkhead, pg, tmp_path):
    path = tmp_path / "access.log"
    bh = sql_bulkhead(log={"level": "info", "access": str(path)})
    ok_json(SqlClient(bh, pg).query("SELECT 1"))

    def line():
        if not path.exists():
            return None
        lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        return lines[0] if lines else None
    entry = wait_until(line, what="the access log line")
    assert entry["request"] == "POST /sql" and entry["status"] == 200, entry
    assert entry["route"] == "*/sql" and entry["upstream"] == "main", entry
    assert entry["attempts"] == 1 and entry["queue_ms"] >= 0, entry
    assert entry["error"] is None
