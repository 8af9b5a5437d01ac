"""The access log: one JSON object per request on log.access (a file or stdout); off writes nothing."""
import json
import socket

import requests

from conftest import wait_until


def lines_of(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{\"time\"")]


def test_access_log_to_a_file(bulkhead, upstream, tmp_path):
    path = tmp_path / "access.log"
    bh = bulkhead(upstream, log={"access": str(path)},
                  routes=[{"match": {"path_prefix": "/echo"}, "upstream": "u"}])
    assert requests.get(bh.url + "/echo-head?x=1", timeout=30).status_code == 200
    assert requests.post(bh.url + "/echo", data=b"abc", timeout=30).status_code == 200
    assert requests.get(bh.url + "/nothing-routes-here", timeout=30).status_code == 404
    # lines are flushed within a short while (or at exit): poll the file
    wait_until(lambda: path.exists() and len(lines_of(path.read_text())) == 3,
               what="three access log lines")
    by_request = {e["request"]: e for e in lines_of(path.read_text())}
    ok = by_request["GET /echo-head?x=1"]
    assert ok["status"] == 200 and ok["upstream"] == "u" and ok["endpoint"] == upstream.addr
    assert ok["attempts"] == 1 and ok["bytes"] > 0 and ok["route"] == "*/echo" and ok["error"] is None
    assert ok["total_ms"] >= 0 and ok["queue_ms"] >= 0 and ok["first_byte_ms"] >= 0
    assert ok["client"] == "127.0.0.1"
    assert by_request["POST /echo"]["status"] == 200
    miss = by_request["GET /nothing-routes-here"]
    assert miss["status"] == 404 and miss["error"] == "destination_not_found" and miss["attempts"] == 0


def test_access_log_to_stdout_and_client_abort(bulkhead, upstream):
    bh = bulkhead(upstream, log={"access": "stdout"})
    assert requests.get(bh.url + "/echo-head", timeout=30).status_code == 200
    # a client that leaves in the middle of its request body is logged as aborted (499)
    s = socket.create_connection(("127.0.0.1", bh.port))
    s.sendall(b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
    wait_until(lambda: upstream.stats()["requests_served"] + upstream.stats()["in_flight"] >= 2,
               what="the partial request to reach the upstream")
    s.close()
    wait_until(lambda: any(e.get("aborted") for e in lines_of(bh.stdout_text())), what="the aborted line")
    entries = lines_of(bh.stdout_text())
    assert any(e["status"] == 200 and e["request"] == "GET /echo-head" for e in entries), entries
    gone = [e for e in entries if e.get("aborted")]
    assert gone[0]["status"] == 499 and gone[0]["request"] == "POST /sink", gone


def test_access_log_off_writes_nothing(bulkhead, upstream):
    bh = bulkhead(upstream, log={"access": "off"})
    for _ in range(5):
        assert requests.get(bh.url + "/echo-head", timeout=30).status_code == 200
    bh.stop()
    assert lines_of(bh.stdout_text()) == []
