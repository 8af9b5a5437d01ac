"""Graceful drain: on SIGTERM bulkhead stops accepting, lets in-flight requests finish, closes idle
keep-alive connections, and exits 0; /readyz turns 503 while it drains."""
import signal
import socket
import threading

import requests

from conftest import STOP_TIMEOUT, RawClient, can_connect, wait_until


def test_sigterm_finishes_in_flight_requests(bulkhead, upstream):
    bh = bulkhead(upstream, shutdown={"drain_timeout": "30s"})
    n = 20
    results = [None] * n

    def client(i):
        try:
            r = requests.get(bh.url + "/hold?id=drain", timeout=60)
            results[i] = (r.status_code, r.text)
        except Exception as e:  # noqa: BLE001 - recorded and asserted below
            results[i] = e

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    wait_until(lambda: upstream.stats()["in_flight"] == n, what="%d requests held upstream" % n)
    idle = socket.create_connection(("127.0.0.1", bh.port))   # an idle keep-alive client
    bh.proc.send_signal(signal.SIGTERM)
    # it stops accepting and says so on /readyz, while the held requests are still in flight
    wait_until(lambda: not can_connect(bh.port), what="the listener to close")
    idle.settimeout(STOP_TIMEOUT)
    assert idle.recv(1) == b"", "an idle keep-alive connection is closed at once"
    assert bh.proc.poll() is None, "bulkhead exited with requests in flight"
    upstream.release("drain")
    for t in threads:
        t.join(60)
    assert results == [(200, "released")] * n, results
    assert bh.proc.wait(timeout=STOP_TIMEOUT) == 0
    # the upstream saw each of them once, and nothing was sent after the signal
    assert upstream.stats()["requests"].get("GET /hold") == n


def test_readyz_turns_503_while_draining(bulkhead, upstream):
    bh = bulkhead(upstream, shutdown={"drain_timeout": "30s"})
    ready = requests.get(bh.admin_url + "/readyz", timeout=30)
    assert ready.status_code == 200
    held = threading.Thread(target=lambda: requests.get(bh.url + "/hold?id=rz", timeout=60))
    held.start()
    wait_until(lambda: upstream.stats()["in_flight"] == 1, what="the held request")
    bh.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: requests.get(bh.admin_url + "/readyz", timeout=30).status_code == 503,
               what="/readyz to answer 503")
    assert requests.get(bh.admin_url + "/healthz", timeout=30).status_code == 200
    upstream.release("rz")
    held.join(60)
    assert bh.proc.wait(timeout=STOP_TIMEOUT) == 0


def test_pipelined_request_behind_a_draining_one_is_never_sent(bulkhead, upstream):
    """A client pipelines a second request behind one held upstream, then SIGTERM: the first finishes
    with Connection: close, and the second is never sent upstream. The connection closes without an
    answer to it, which tells the client it was not processed (RFC 9112 9.3.1), so nothing is lost."""
    bh = bulkhead(upstream, shutdown={"drain_timeout": "30s"})
    with RawClient(bh.port) as c:
        c.request("GET", "/hold?id=pipe")
        wait_until(lambda: upstream.stats()["in_flight"] == 1, what="the first request held upstream")
        c.request("POST", "/after-drain", body=b"second")
        bh.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: not can_connect(bh.port), what="the listener to close")
        upstream.release("pipe")
        r = c.read_response()
        assert (r.status, r.body) == (200, b"released"), r
        assert "close" in r.tokens("connection"), r
        assert c.wait_closed()
    assert bh.proc.wait(timeout=STOP_TIMEOUT) == 0
    assert "POST /after-drain" not in upstream.stats()["requests"]


def test_drain_timeout_closes_what_is_left(bulkhead, upstream):
    """A request still held when shutdown.drain_timeout expires: its connection is closed without a
    response, and bulkhead exits 0. The upstream saw the request once (the client can tell it may have
    been processed: the connection closed after the request was sent)."""
    bh = bulkhead(upstream, shutdown={"drain_timeout": "300ms"})
    with RawClient(bh.port) as c:
        c.request("GET", "/hold?id=late")
        wait_until(lambda: upstream.stats()["in_flight"] == 1, what="the request held upstream")
        bh.proc.send_signal(signal.SIGTERM)
        assert c.wait_closed(timeout=STOP_TIMEOUT), "the connection outlived drain_timeout"
    assert bh.proc.wait(timeout=STOP_TIMEOUT) == 0
    assert upstream.stats()["requests"].get("GET /hold") == 1
    upstream.release("late")
