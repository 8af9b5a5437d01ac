"""The access log: one JSON object per request on log.access (a file or stdout); off writes nothing.

Every line a test parses goes through check_access_timings (conftest): queue_ms and first_byte_ms
within total_ms and not overlapping, -1 only where README documents it."""
import json
import socket

import pytest
import requests

from conftest import (RawClient, check_access_timings, fetch, free_port, resilient_upstream, wait_until)


def parse(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{\"time\"")]


def lines_of(text):
    """The parsed lines, each checked (outside the polls, so that a bad line fails at once)."""
    return [check_access_timings(e) for e in parse(text)]


def file_lines(path, n):
    """The n lines of an access log file, once they are all there (lines are flushed within 200 ms)."""
    wait_until(lambda: path.exists() and len(parse(path.read_text())) == n,
               what="%d access log lines" % n)
    return lines_of(path.read_text())


def test_access_log_to_a_file(bulkhead, upstream, tmp_path):
    path = tmp_path / "access.log"
    bh = bulkhead(upstream, log={"access": str(path)},
                  routes=[{"match": {"path_prefix": "/echo"}, "upstream": "u"},
                          {"match": {"path_prefix": "/delay"}, "upstream": "u"}])
    assert requests.get(bh.url + "/echo-head?x=1", timeout=30).status_code == 200
    assert requests.post(bh.url + "/echo", data=b"abc", timeout=30).status_code == 200
    assert requests.get(bh.url + "/nothing-routes-here", timeout=30).status_code == 404
    # the upstream answers 40 ms after it got the request: a lower bound on first_byte_ms and total_ms
    assert requests.get(bh.url + "/delay?ms=40", timeout=30).status_code == 200
    by_request = {e["request"]: e for e in file_lines(path, 4)}
    ok = by_request["GET /echo-head?x=1"]
    assert ok["status"] == 200 and ok["upstream"] == "u" and ok["endpoint"] == upstream.addr
    assert ok["attempts"] == 1 and ok["bytes"] > 0 and ok["route"] == "*/echo" and ok["error"] is None
    assert ok["queue_ms"] >= 0 and ok["first_byte_ms"] >= 0, ok
    assert ok["client"] == "127.0.0.1"
    assert by_request["POST /echo"]["status"] == 200
    miss = by_request["GET /nothing-routes-here"]
    assert miss["status"] == 404 and miss["error"] == "destination_not_found" and miss["attempts"] == 0
    assert miss["route"] is None and miss["upstream"] is None and miss["endpoint"] is None, miss
    assert (miss["queue_ms"], miss["first_byte_ms"]) == (-1, -1), miss
    slow = by_request["GET /delay?ms=40"]
    assert slow["status"] == 200 and slow["first_byte_ms"] >= 40 and slow["total_ms"] >= 40, slow


def test_access_log_to_stdout_and_client_abort(bulkhead, upstream):
    bh = bulkhead(upstream, log={"access": "stdout"})
    assert requests.get(bh.url + "/echo-head", timeout=30).status_code == 200
    # a client that leaves in the middle of its request body is logged as aborted (499)
    s = socket.create_connection(("127.0.0.1", bh.port))
    s.sendall(b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
    wait_until(lambda: upstream.stats()["in_flight"] == 1, what="the partial request to reach the upstream")
    s.close()
    wait_until(lambda: any(e.get("aborted") for e in parse(bh.stdout_text())), what="the aborted line")
    entries = lines_of(bh.stdout_text())
    assert [(e["request"], e["status"]) for e in entries] == [("GET /echo-head", 200),
                                                              ("POST /sink", 499)], entries
    ok, gone = entries
    assert ok["queue_ms"] >= 0 and ok["first_byte_ms"] >= 0 and "aborted" not in ok, ok
    assert gone["aborted"] is True and gone["attempts"] == 1, gone
    # it had its connection (the upstream got the head) but no response head ever came
    assert gone["queue_ms"] >= 0 and gone["first_byte_ms"] == -1, gone


def test_access_log_off_writes_nothing(bulkhead, upstream):
    bh = bulkhead(upstream, log={"access": "off"})
    for _ in range(5):
        assert requests.get(bh.url + "/echo-head", timeout=30).status_code == 200
    bh.stop()
    assert lines_of(bh.stdout_text()) == []


@pytest.mark.parametrize("case", ["pool-timeout", "connect-refused"])
def test_queue_ms_of_a_request_that_needed_a_connection_and_got_none(bulkhead, upstream, tmp_path, case):
    path = tmp_path / "access.log"
    dead = "127.0.0.1:%d" % free_port()
    bh = bulkhead(log={"access": str(path)}, upstreams={
        "u": resilient_upstream(upstream, retry={"attempts": 1},
                                timeouts={"first_byte": "60s", "total": "90s"},
                                pool={"max_connections": 1, "acquire_timeout": "300ms"}),
        "dead": resilient_upstream(dead, retry={"attempts": 1})},
        routes=[{"match": {"path_prefix": "/dead/"}, "upstream": "dead"},
                {"match": {"path_prefix": "/"}, "upstream": "u"}])
    if case == "connect-refused":
        assert fetch(bh.port, "GET", "/dead/x").status == 502
        (line,) = file_lines(path, 1)
        assert line["error"] == "connection_refused" and line["attempts"] == 1, line
        assert line["queue_ms"] >= 0, line
        return
    with RawClient(bh.port) as holder:
        holder.request("GET", "/hold?id=q")
        wait_until(lambda: upstream.stats()["holding"] == 1, what="the one connection held")
        r = fetch(bh.port, "GET", "/echo-head?waiter")
        assert r.status == 503, r
        upstream.release("q")
        assert holder.read_response().status == 200
    waiter = [e for e in file_lines(path, 2) if e["request"] == "GET /echo-head?waiter"][0]
    assert waiter["error"] == "connection_limit_reached", waiter
    # it waited for the pool until acquire_timeout (300 ms, on the same clock as queue_ms)
    assert waiter["queue_ms"] >= 300, waiter


def test_breaker_refusal_is_logged_without_an_attempt(bulkhead, tmp_path):
    path = tmp_path / "access.log"
    dead = "127.0.0.1:%d" % free_port()
    bh = bulkhead(log={"access": str(path)}, upstreams={
        "u": resilient_upstream(dead, retry={"attempts": 1}, breaker={
            "consecutive_failures": 1, "open_for": "60s", "max_open_for": "60s"})})
    assert fetch(bh.port, "GET", "/tripped").status == 502
    r = fetch(bh.port, "GET", "/refused")
    assert r.status == 503, r
    refused = [e for e in file_lines(path, 2) if e["request"] == "GET /refused"][0]
    assert refused["error"] == "destination_unavailable", refused
    assert refused["attempts"] == 0 and refused["endpoint"] is None, refused


def metric(bh, name):
    text = requests.get(bh.admin_url + "/metrics", timeout=30).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError("no %s in /metrics" % name)


def test_access_log_disk_full_keeps_serving(bulkhead, upstream, tmp_path):
    """The access log's file system fills up (a 16 KiB tmpfs): every request is still answered, the
    lost lines are counted in bulkhead_access_log_dropped_lines_total (written + lost = requests), and
    the lines written before are whole. Guards against a request that waits on (or fails with) the log, and against silent loss."""
    import subprocess
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail("cannot mount a small tmpfs (needs root and CAP_SYS_ADMIN): %s" % r.stderr.strip())
    try:
        path = mnt / "access.log"
        bh = bulkhead(upstream, log={"access": str(path)})
        with RawClient(bh.port) as c:
            for i in range(300):  # ~300 bytes a line: well over 16 KiB
                c.request("GET", "/echo-head?i=%d&pad=%s" % (i, "x" * 100))
                assert c.read_response().status == 200, i
        # Every line is either in the file (whole) or counted as lost, once the buffer is flushed
        # (when full, or 200 ms after a line); a write the full disk cut short leaves one partial
        # line at the end, counted as lost.
        def whole_lines():
            return path.read_text().count("\n")
        wait_until(lambda: whole_lines() + metric(bh, "bulkhead_access_log_dropped_lines_total") == 300,
                   what="every line written or counted as lost")
        assert metric(bh, "bulkhead_access_log_dropped_lines_total") > 0
        lines = path.read_text().split("\n")
        written = [json.loads(line) for line in lines[:-1]]
        assert 0 < len(written) < 300, len(written)
        assert all(e["status"] == 200 for e in written)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_stalled_log_reader_never_holds_up_requests(bulkhead, upstream):
    """log.access is a pipe nobody reads (a container's stdout whose reader is stuck): requests are
    served all the same, at most log.access_buffer bytes wait, and every line is either written once
    the reader comes back or counted in bulkhead_access_log_dropped_lines_total: none is lost
    silently. (Writing from the worker would block it on the full pipe, and every client with it.)"""
    import threading
    from test_metrics import admin_ready, scrape

    bh = admin_ready(bulkhead(upstream, log={"access": "stdout", "access_buffer": "16KiB"}, workers=2,
                              pipe_stdout=True))
    n = 800  # ~250 bytes of log each: 200 KB, three times what a pipe (64 KiB) and the buffer hold
    with requests.Session() as s:
        for i in range(n):
            assert s.get(bh.url + "/echo-head?i=%d" % i, timeout=30).status_code == 200
    dropped = wait_until(lambda: scrape(bh).get("bulkhead_access_log_dropped_lines_total"),
                         what="lines counted as dropped")
    # the reader comes back: what waited is written, and new lines flow again
    got = []
    reader = threading.Thread(target=lambda: got.extend(bh.proc.stdout), daemon=True)
    reader.start()
    assert requests.get(bh.url + "/echo-head?last=1", timeout=30).status_code == 200
    wait_until(lambda: any(b"last=1" in line for line in got), what="the line of a request made after")

    def written():
        return [json.loads(x)["request"] for x in list(got) if x.startswith(b"{\"time\"") and b"i=" in x]
    # every line of the n requests is accounted for: written, or counted (once the workers' buffers
    # have all been handed over, which their 200 ms flush does)
    wait_until(lambda: len(written()) + scrape(bh).get("bulkhead_access_log_dropped_lines_total") == n,
               what="every line written or counted as dropped")
    assert len(set(written())) == len(written()), "a line was written twice"
    assert dropped > 0
    bh.check_clean_exit()
    reader.join(30)


def test_a_stalled_stderr_never_holds_up_requests(bulkhead):
    """The error log's stderr is a pipe nobody reads, and log.level debug writes a line per failed
    attempt: requests are answered all the same (at most 256 KiB of error log waits; the lines beyond
    are counted), and once stderr is read again, lines flow: a reload's line arrives."""
    import signal
    from test_metrics import admin_ready, scrape

    dead = "127.0.0.1:%d" % free_port()  # refuses: a debug line per attempt
    bh = admin_ready(bulkhead(upstreams={"u": resilient_upstream(dead, retry={"attempts": 1})},
                              log={"level": "debug", "access": "off"}, pipe_stderr=True))
    with requests.Session() as s:
        for i in range(4000):  # a debug line (~130 bytes) each: 500 KB, beyond the pipe and the queue
            assert s.get(bh.url + "/echo-head?i=%d" % i, timeout=30).status_code == 502
    assert wait_until(lambda: scrape(bh).get("bulkhead_error_log_dropped_lines_total"),
                      what="error-log lines counted as dropped") > 0
    bh.read_stderr()

    def reload_logged():  # a line logged while the queue is still full is dropped: try again
        bh.proc.send_signal(signal.SIGHUP)
        return "reloaded " in bh.stderr_text()
    wait_until(reload_logged, interval=0.2, what="a reload's line on stderr")
    assert "attempt 1: " in bh.stderr_text()
