"""Graceful drain: on SIGTERM bulkhead stops accepting, lets in-flight requests finish, closes idle
keep-alive connections, and exits 0; /readyz turns 503 while it drains."""
import signal
import socket
import threading

import requests

from conftest import STOP_TIMEOUT, can_connect, wait_until


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
