"""Bodies stream through bulkhead in both directions with bounded memory, and with backpressure.

Memory is read from /proc/<pid>/status: VmRSS before, VmHWM (peak) after. These are memory bounds,
not timing ones. Under AddressSanitizer the quarantine of freed memory would count as growth, so these
bulkhead instances run with a small quarantine."""
import hashlib
import os
import re
import socket
import time
import urllib.request

import pytest
import requests

from conftest import RawClient, proxy_status_error, wait_until

MiB = 1 << 20
BIG = 100 * MiB
GROWTH_BOUND = 32 * MiB
PATTERN = bytes(range(256)) * (4 * 4096 + 1)  # 4 MiB + 256: any slice of a chunk up to 4 MiB


def small_quarantine_env():
    opts = os.environ.get("ASAN_OPTIONS", "")
    return {"ASAN_OPTIONS": (opts + ":" if opts else "") + "quarantine_size_mb=4"}


@pytest.fixture
def bh(bulkhead, upstream):
    return bulkhead(upstream, limits={"max_body_bytes": "1GiB", "body_timeout": "60s"},
                    timeouts={"total": "10m", "idle": "60s", "first_byte": "60s"},
                    env=small_quarantine_env())


def warm_up(bh):
    """Exercise both directions once so that lazily created buffers and pools exist before measuring."""
    assert requests.get(bh.url + "/bytes?n=%d" % (4 * MiB), timeout=60).content == PATTERN[:4 * MiB]
    r = requests.post(bh.url + "/sink", data=iter([b"w" * MiB] * 4), timeout=60)
    assert r.status_code == 200 and r.json()["len"] == 4 * MiB


def test_upload_100mib_streamed(bh, upstream):
    warm_up(bh)
    before = bh.rss()
    digest = hashlib.sha256()

    def gen():
        block = bytes((i * 7) % 251 for i in range(MiB))
        for i in range(BIG // MiB):
            piece = block[i:] + block[:i]
            digest.update(piece)
            yield piece

    r = requests.post(bh.url + "/sink", data=gen(), timeout=600)
    assert r.status_code == 200, r.content[:300]
    assert r.json() == {"len": BIG, "sha256": digest.hexdigest()}
    growth = bh.hwm() - before
    assert growth < GROWTH_BOUND, "bulkhead peak RSS grew by %d MiB for a %d MiB upload" % (
        growth // MiB, BIG // MiB)


def test_upload_100mib_content_length(bh, upstream, raw):
    """Same with a Content-Length body (not chunked), written on a raw socket."""
    warm_up(bh)
    before = bh.rss()
    block = bytes(range(256)) * 4096
    expect = hashlib.sha256()
    c = raw(bh.port)
    c.send(b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % BIG)
    for _ in range(BIG // MiB):
        c.send(block)
        expect.update(block)
    r = c.read_response()
    assert r.status == 200, r
    assert r.json() == {"len": BIG, "sha256": expect.hexdigest()}
    assert bh.hwm() - before < GROWTH_BOUND


def read_counted(resp, chunk=MiB):
    n = 0
    for piece in resp.iter_content(chunk):
        off = n % 256
        assert piece == PATTERN[off:off + len(piece)], "corrupt body at offset %d" % n
        n += len(piece)
    return n


def test_download_100mib_streamed(bh, upstream):
    warm_up(bh)
    before = bh.rss()
    with requests.get(bh.url + "/bytes?n=%d" % BIG, stream=True, timeout=600) as r:
        assert r.status_code == 200
        assert r.headers["Content-Length"] == str(BIG)
        assert read_counted(r) == BIG
    growth = bh.hwm() - before
    assert growth < GROWTH_BOUND, "bulkhead peak RSS grew by %d MiB for a %d MiB download" % (
        growth // MiB, BIG // MiB)


def test_download_100mib_chunked(bh, upstream):
    warm_up(bh)
    before = bh.rss()
    with requests.get(bh.url + "/chunked?n=%d" % BIG, stream=True, timeout=600) as r:
        assert r.status_code == 200
        assert read_counted(r) == BIG
    assert bh.hwm() - before < GROWTH_BOUND


def read_whole_body(c, n):
    """Reads a 200 response's head and its n body bytes, counting them without keeping them."""
    version, status, reason, headers, raw_head = c.read_head()
    assert status == 200
    got = len(c.buf)
    c.buf = b""
    while got < n:
        data = c.sock.recv(1 << 20)
        assert data, "connection closed after %d of %d bytes" % (got, n)
        got += len(data)
    assert got == n


def test_slow_reader_backpressure(bh, upstream, raw):
    """A client that stops reading a 128 MiB response: bulkhead must stop reading from the upstream
    (the upstream's writes stall after kernel buffers fill) instead of buffering the body itself.

    The check observes for a bounded window: whatever bulkhead does, the window ends."""
    warm_up(bh)
    before = bh.rss()
    sent_before = upstream.stats()["bytes_sent"]
    n = 128 * MiB
    c = raw(bh.port)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    c.request("GET", "/bytes?n=%d" % n)
    # wait until the response is flowing: the upstream has written something
    wait_until(lambda: upstream.stats()["bytes_sent"] - sent_before > MiB, what="response to start")
    deadline = time.monotonic() + 3.0
    sent = 0
    while time.monotonic() < deadline:
        sent = upstream.stats()["bytes_sent"] - sent_before
        growth = bh.rss() - before
        assert growth < GROWTH_BOUND, "bulkhead RSS grew %d MiB with a stalled client" % (growth // MiB)
        assert sent < 64 * MiB, "upstream wrote %d MiB to a stalled client: no backpressure" % (
            sent // MiB)
        time.sleep(0.05)
    read_whole_body(c, n)  # now read everything: the response is complete
    assert bh.hwm() - before < GROWTH_BOUND


def test_slow_upstream_reader_backpressure(bh, upstream):
    """The upstream does not read a 128 MiB request body (yet): bulkhead must stop reading from the
    client instead of buffering the body. Bounded observation window, as in the test above."""
    import threading
    warm_up(bh)
    before = bh.rss()
    n = 128 * MiB
    sent = [0]
    result = {}
    block = bytes(range(256)) * 4096

    def client():
        try:
            c = RawClient(bh.port, timeout=600)
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
            c.send(b"POST /sink?hold=up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % n)
            for _ in range(n // MiB):
                c.send(block)
                sent[0] += MiB
            result["resp"] = c.read_response()
            c.close()
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            result["error"] = e

    sinks = upstream.stats()["requests"].get("POST /sink", 0)
    t = threading.Thread(target=client, daemon=True)
    t.start()
    wait_until(lambda: upstream.stats()["holding"] == 1, what="the upload to reach the upstream")
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        growth = bh.rss() - before
        assert growth < GROWTH_BOUND, "bulkhead RSS grew %d MiB with a stalled upstream" % (growth // MiB)
        assert sent[0] < 64 * MiB, "client wrote %d MiB while the upstream read nothing" % (sent[0] // MiB)
        time.sleep(0.05)
    upstream.release("up")
    t.join(600)
    assert not t.is_alive()
    assert "error" not in result, result.get("error")
    r = result["resp"]
    assert r.status == 200, r
    assert r.json()["len"] == n
    h = hashlib.sha256()
    for _ in range(n // MiB):
        h.update(block)
    assert r.json()["sha256"] == h.hexdigest(), "the upstream got other bytes than the client sent"
    assert upstream.stats()["requests"].get("POST /sink", 0) == sinks + 1, "sent more than once"
    assert bh.hwm() - before < GROWTH_BOUND


def test_upstream_that_never_reads_an_upload_is_cut_at_the_total_timeout(bulkhead, upstream):
    """The upstream takes the head of a 128 MiB upload and never reads the body: backpressure holds
    the client, and timeouts.total ends it: 504 http_response_timeout (no response byte was sent
    yet), both connections closed, and the upload was attempted once."""
    import threading
    bh = bulkhead(upstream, limits={"max_body_bytes": "1GiB", "body_timeout": "60s"},
                  timeouts={"total": "1s", "idle": "60s", "first_byte": "60s"})
    n = 128 * MiB
    result = {}

    def client():
        c = RawClient(bh.port, timeout=60)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        try:
            c.send(b"POST /sink?hold=never HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % n)
            block = b"x" * MiB
            for _ in range(n // MiB):
                c.send(block)
        except OSError as e:  # the close at the timeout cuts the upload short
            result["send_error"] = e
        try:
            result["resp"] = c.read_response()
            result["closed"] = c.wait_closed()
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            result["error"] = e
        c.close()

    t = threading.Thread(target=client, daemon=True)
    t.start()
    t.join(120)
    assert not t.is_alive()
    assert "error" not in result, result
    r = result["resp"]
    assert r.status == 504 and proxy_status_error(r) == "http_response_timeout", r
    assert result["closed"]
    assert upstream.stats()["requests"].get("POST /sink", 0) == 1
    upstream.release("never")
    wait_until(lambda: upstream.stats()["holding"] == 0, what="the held upload to end")


def test_client_abort_mid_upload_closes_upstream_and_sends_nothing_again(bh, upstream):
    """A client leaves after 3 of 100 body bytes: the upstream connection is closed (never pooled with
    half a body on it), the upstream never gets a complete request, and nothing is retried."""
    before = upstream.stats()
    assert before["open_connections"] == 0
    c = RawClient(bh.port)
    c.send(b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
    wait_until(lambda: upstream.stats()["in_flight"] == 1, what="the partial request to reach the upstream")
    c.close()
    wait_until(lambda: upstream.stats()["in_flight"] == 0, what="the upstream's request to end")
    wait_until(lambda: upstream.stats()["open_connections"] == 0, what="the upstream connection to close")
    after = upstream.stats()
    assert after["requests"].get("POST /sink", 0) == before["requests"].get("POST /sink", 0) + 1
    sinks = [e for e in upstream.log() if e["path"] == "/sink"]
    assert sinks[-1]["body_len"] is None, "the upstream got a complete request: %r" % sinks[-1]
    assert requests.get(bh.url + "/echo-head", timeout=30).status_code == 200


def test_client_abort_mid_response_closes_upstream(bh, upstream, raw):
    """A client that goes away in the middle of a response body: the upstream connection, with the
    rest of a body on it, is closed rather than pooled; later requests work."""
    c = raw(bh.port)
    c.request("GET", "/bytes?n=%d" % (256 * MiB))
    c.read_head()
    c.close()
    wait_until(lambda: upstream.stats()["open_connections"] == 0,
               what="bulkhead to close the upstream connection of the aborted response")
    r = requests.get(bh.url + "/echo-head", timeout=30)
    assert r.status_code == 200
    assert upstream.stats()["bytes_sent"] < 256 * MiB


def test_upstream_truncated_response_closes_client(bh, upstream, raw):
    """The upstream announces Content-Length 100000, sends half and closes: the head is already on
    its way to the client, so bulkhead can only close the client connection (never pad or reuse it)."""
    c = raw(bh.port)
    c.request("GET", "/truncate?n=100000")
    version, status, reason, headers, raw_head = c.read_head()
    assert status == 200
    got = len(c.buf)
    c.buf = b""
    while True:
        try:
            data = c.sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        got += len(data)
    assert got == 50000, "client got %d bytes of a truncated 100000-byte body" % got


def test_slow_client_is_not_charged_to_the_upstream(bulkhead, upstream, raw):
    """A client that stops reading for longer than timeouts.idle: bulkhead stopped reading from the
    upstream (backpressure), so the upstream's silence is bulkhead's doing, not the upstream's. The
    idle timeout waits while the reads are held: the client gets the whole body, and no idle timeout,
    outlier ejection or breaker failure is recorded against the endpoint."""
    bh = bulkhead(upstream, timeouts={"total": "10m", "idle": "300ms", "first_byte": "60s"},
                  env=small_quarantine_env())
    n = 64 * MiB
    sent_before = upstream.stats()["bytes_sent"]
    c = raw(bh.port)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    c.request("GET", "/bytes?n=%d" % n)
    # bulkhead holds the upstream once the client's queue is full: the upstream's writes stall (the
    # kernel still lets a trickle through, never a whole 64 KiB piece between two polls)
    last = [-1]

    def stalled():
        s = upstream.stats()["bytes_sent"] - sent_before
        slow, last[0] = 0 <= s - last[0] < 64 * 1024, s
        return slow and s > MiB

    wait_until(stalled, interval=0.2, what="the upstream's writes to stall")
    time.sleep(1.0)  # the slow client itself: it reads nothing for over three idle timeouts
    read_whole_body(c, n)
    with urllib.request.urlopen(bh.admin_url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    attempts = dict(re.findall(r'bulkhead_upstream_attempts_total\{upstream="u",outcome="(\w+)"\} (\d+)',
                               text))
    assert attempts.get("idle_timeout", "0") == "0", attempts
    assert attempts.get("success") == "1", attempts
    assert re.search(r'bulkhead_outlier_ejections_total\{upstream="u"\} 0\b', text), text
    assert re.search(r'bulkhead_breaker_state\{upstream="u"\} 0\b', text), text


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
def test_body_delimited_by_the_upstreams_close_is_complete(bh, upstream, raw, version):
    """The upstream answers 300 KiB with neither Content-Length nor chunks and closes: its close ends
    the body. An HTTP/1.1 client gets it re-framed as chunks, last chunk included; an HTTP/1.0 client
    gets it delimited by bulkhead's close. Guards against the end of such a body taken as a failure
    (the client's response cut before its last chunk)."""
    n = 300 * 1024
    c = raw(bh.port)
    c.sock.sendall(("GET /until-close?n=%d %s\r\nHost: localhost\r\n\r\n" % (n, version)).encode())
    r = c.read_response()
    assert r.status == 200, r
    assert len(r.body) == n, "got %d of %d bytes" % (len(r.body), n)
    if version == "HTTP/1.1":
        assert r.header("transfer-encoding") == "chunked", r.headers
