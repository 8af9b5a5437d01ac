"""Self-test of the test upstream and of the raw client, without bulkhead: if these fail, the other
suites' failures say nothing about the proxy."""
import hashlib
import json
import os
import socket
import struct

import requests
import websocket

from conftest import RawClient, build_request, wait_until, to_yaml


def test_echo_and_stats(upstream):
    with RawClient(upstream.port) as c:
        c.request("POST", "/echo?a=1", headers=[("X-A", "1")], body=b"hello")
        r = c.read_response()
        assert r.status == 200 and r.body == b"hello"
        info = json.loads(r.header("X-Echo-Request"))
        assert info["method"] == "POST" and ["X-A", "1"] in info["headers"]
        c.request("GET", "/anything/else")
        assert c.read_response().json()["path"] == "/anything/else"
    st = upstream.stats()
    assert st["connections_accepted"] == 1 and st["requests_served"] == 2
    assert r.header("X-Upstream-Conn") == "1"
    wait_until(lambda: upstream.stats()["open_connections"] == 0, what="close to be seen")


def test_framing_endpoints(upstream):
    with RawClient(upstream.port) as c:
        c.send(build_request("HEAD", "/bytes?n=10") + build_request("GET", "/status/204")
               + build_request("GET", "/status/304") + build_request("GET", "/chunked?n=1000&size=7")
               + build_request("GET", "/bytes?n=70000"))
        assert c.read_response("HEAD").body == b""
        assert c.read_response().status == 204
        assert c.read_response().status == 304
        assert c.read_response().body == (bytes(range(256)) * 4)[:1000]
        assert c.read_response().body == (bytes(range(256)) * 300)[:70000]


def test_sink_chunked(upstream):
    data = os.urandom(300000)
    r = requests.post(upstream.url + "/sink", data=iter([data[:100000], data[100000:]]), timeout=30)
    assert r.json() == {"len": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_hold_release(upstream):
    with RawClient(upstream.port) as c:
        c.request("GET", "/hold?id=k")
        wait_until(lambda: upstream.stats()["holding"] == 1, what="hold")
        assert not c.readable_within(0.1)
        upstream.release("k")
        assert c.read_response().body == b"released"


def test_faults(upstream):
    with RawClient(upstream.port) as c:
        c.request("GET", "/close-early")
        assert c.wait_closed()
    with RawClient(upstream.port) as c:
        c.request("GET", "/reset")
        try:
            data = c.sock.recv(10)
            assert data == b""
        except ConnectionResetError:
            pass
    with RawClient(upstream.port) as c:
        c.request("GET", "/truncate?n=1000")
        c.read_head()
        got = len(c.buf)
        while True:
            d = c.sock.recv(1000)
            if not d:
                break
            got += len(d)
        assert got == 500


def test_expect_100(upstream):
    with RawClient(upstream.port) as c:
        c.send(b"POST /100 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
        assert c.read_head()[1] == 100
        c.send(b"abc")
        assert c.read_response().json()["body_len"] == 3


def test_keepalive_timeout(upstream_factory):
    up = upstream_factory("ka", keepalive_timeout=0.2)
    with RawClient(up.port) as c:
        c.request("GET", "/echo-head")
        c.read_response()
        assert c.wait_closed()
    assert up.stats()["closed_idle"] == 1


def test_websocket(upstream):
    ws = websocket.create_connection("ws://127.0.0.1:%d/ws" % upstream.port, timeout=10)
    ws.send("hi")
    assert ws.recv() == "hi"
    ws.send_binary(b"\x00" * 70000)
    assert ws.recv() == b"\x00" * 70000
    ws.send_close(1000, b"")
    op, payload = ws.recv_data(control_frame=True)
    assert op == websocket.ABNF.OPCODE_CLOSE and struct.unpack("!H", payload[:2])[0] == 1000
    ws.shutdown()


def test_control_port_not_counted(upstream):
    for _ in range(3):
        upstream.stats()
    assert upstream.stats()["connections_accepted"] == 0


def test_yaml_writer():
    text = to_yaml({"a": {"b": [1, "x:y"], "c": [{"d": True, "e": {"f": "1s"}}]}, "g": ""})
    assert text == 'a:\n  b: [1, "x:y"]\n  c:\n    - d: true\n      e:\n        f: 1s\ng: ""'
