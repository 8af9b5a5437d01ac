"""Expect: 100-continue and Upgrade (WebSocket) through the proxy."""
import hashlib
import json
import os
import struct
import subprocess

import pytest
import requests
import websocket

from conftest import proxy_status_error, wait_until


@pytest.fixture
def bh(bulkhead, upstream):
    return bulkhead(upstream, limits={"max_body_bytes": "8MiB"})


def test_curl_expect_100_continue(bh, tmp_path):
    data = os.urandom(3 * 1024 * 1024)
    f = tmp_path / "body.bin"
    f.write_bytes(data)
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "60", "-H", "Expect: 100-continue", "--data-binary", "@%s" % f,
         "-w", "\n%{http_code}", bh.url + "/100"],
        capture_output=True, timeout=90)
    assert out.returncode == 0, out.stderr
    body, _, code = out.stdout.rpartition(b"\n")
    assert code == b"200", out.stdout[-500:]
    info = json.loads(body)
    assert info["body_len"] == len(data)
    assert info["body_sha256"] == hashlib.sha256(data).hexdigest()


def test_100_continue_before_body(bh, raw):
    c = raw(bh.port)
    c.send(b"POST /100 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n")
    # nothing of the body is sent until the interim response arrives
    version, status, reason, headers, _ = c.read_head()
    assert status == 100, "expected 100 Continue before the body, got %d %s" % (status, reason)
    c.send(b"0123456789")
    r = c.read_response()
    assert r.status == 200
    assert r.json()["body_len"] == 10
    c.request("GET", "/echo-head")
    assert c.read_response().status == 200


def test_100_continue_chunked(bh, raw):
    c = raw(bh.port)
    c.send(b"POST /100 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert c.read_head()[1] == 100
    c.send(b"3\r\nabc\r\n0\r\n\r\n")
    r = c.read_response()
    assert r.status == 200 and r.json()["body_len"] == 3


def test_expect_over_limit_413_without_100(bh, raw, upstream):
    c = raw(bh.port)
    c.send(b"POST /100 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
           % (9 * 1024 * 1024))
    r = c.read_response()
    assert not r.interim, "bulkhead sent 100 Continue for a body it rejects: %r" % r.interim
    assert r.status == 413
    assert proxy_status_error(r) == "http_request_error"
    assert upstream.stats()["expect_seen"] == 0


def test_expect_no_route_without_100(bulkhead, upstream, raw):
    bh = bulkhead(upstream, routes=[{"match": {"path_prefix": "/only/"}, "upstream": "u"}])
    c = raw(bh.port)
    c.send(b"POST /elsewhere HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n")
    r = c.read_response()
    assert not r.interim, "100 Continue sent for a request that has no route"
    assert r.status == 404


def test_expect_upstream_final_status_without_body(bh, raw, upstream):
    """The upstream answers 417 without asking for the body: the client gets that answer; if bulkhead
    had already invited the body, it reads and discards it or closes, but never forwards it as a new
    request."""
    body = b"GET /smuggled HTTP/1.1\r\nX: yy\r\n\r\n"
    c = raw(bh.port)
    c.send(b"POST /expect-reject HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
           % len(body))
    _, status, _, _, head = c.read_head()
    if status == 100:  # bulkhead answered 100 itself; the client sends the body as invited
        c.send(body)
    else:
        c.buf = head + b"\r\n\r\n" + c.buf  # put the final response's head back, read it whole
    r = c.read_response()
    assert r.status == 417
    assert "/smuggled" not in upstream.stats()["paths"]


# ------------------------------------------------------------------------------------------------
# WebSocket

def test_websocket_echo(bh, upstream):
    ws = websocket.create_connection("ws://127.0.0.1:%d/ws" % bh.port, timeout=30)
    try:
        for i in range(5):
            ws.send("hello %d" % i)
            assert ws.recv() == "hello %d" % i
        for size in (0, 1, 125, 126, 65535, 65536, 300000):
            data = os.urandom(size)
            ws.send_binary(data)
            op, got = ws.recv_data()
            assert op == websocket.ABNF.OPCODE_BINARY and got == data, size
        # several messages in flight both ways
        for i in range(20):
            ws.send("burst %d" % i)
        assert [ws.recv() for _ in range(20)] == ["burst %d" % i for i in range(20)]
        ws.ping(b"are you there")
        op, payload = ws.recv_data(control_frame=True)
        assert op == websocket.ABNF.OPCODE_PONG and payload == b"are you there"
        ws.send_close(1000, b"bye")
        op, payload = ws.recv_data(control_frame=True)
        assert op == websocket.ABNF.OPCODE_CLOSE
        assert struct.unpack("!H", payload[:2])[0] == 1000
    finally:
        ws.shutdown()
    assert upstream.stats()["ws_sessions"] == 1
    wait_until(lambda: upstream.stats()["open_connections"] == 0,
               what="the upgraded upstream connection to be closed, not pooled")


def test_websocket_does_not_block_other_requests(bh, upstream):
    ws = websocket.create_connection("ws://127.0.0.1:%d/ws" % bh.port, timeout=30)
    try:
        ws.send("one")
        assert ws.recv() == "one"
        for _ in range(5):
            assert requests.get(bh.url + "/echo-head", timeout=30).status_code == 200
        ws.send("two")
        assert ws.recv() == "two"
    finally:
        ws.close()


def test_websocket_client_disconnect_closes_upstream(bh, upstream):
    ws = websocket.create_connection("ws://127.0.0.1:%d/ws" % bh.port, timeout=30)
    ws.send("x")
    assert ws.recv() == "x"
    ws.shutdown()  # no close frame: the TCP connection just goes away
    wait_until(lambda: upstream.stats()["open_connections"] == 0,
               what="bulkhead to close the upstream side of an abandoned WebSocket")


def test_websocket_upgrade_refused_stays_http(bh, raw):
    """The upstream ignores the Upgrade and answers 200: the connection stays plain HTTP."""
    c = raw(bh.port)
    c.request("GET", "/echo-head", headers=[
        ("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")])
    r = c.read_response()
    assert r.status == 200
    c.request("GET", "/echo-head?again=1")
    r = c.read_response()
    assert r.status == 200 and r.json()["query"] == "again=1"


def test_websocket_upgrade_headers_forwarded(bh, raw):
    c = raw(bh.port)
    c.request("GET", "/ws", headers=[
        ("Connection", "keep-alive, Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")])
    r = c.read_response()
    assert r.status == 101, r
    assert r.header("Sec-WebSocket-Accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert "upgrade" in r.tokens("connection") and r.header("Upgrade").lower() == "websocket"
    # a masked text frame "hi"
    mask = b"\x01\x02\x03\x04"
    c.send(b"\x81\x82" + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(b"hi")))
    while len(c.buf) < 4:
        c._fill()
    assert c.buf[:4] == b"\x81\x02hi"
