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


def test_control_modes_and_counts(upstream):
    def one(method="GET", path="/echo-head", body=None):
        with RawClient(upstream.port) as c:
            c.request(method, path, body=body)
            try:
                return c.read_response(method)
            except Exception as e:  # noqa: BLE001 - a reset or a close
                return e

    assert one().status == 200
    upstream.set_mode("fail-503", retry_after=7)
    r = one("POST", "/x", body=b"abc")
    assert r.status == 503 and r.header("Retry-After") == "7"
    upstream.set_mode("fail-500", count=2)
    assert [one().status for _ in range(3)] == [500, 500, 200]
    upstream.set_mode("reset")
    assert not hasattr(one(), "status")
    upstream.set_mode("close", count=1)
    assert not hasattr(one(), "status")
    assert one().status == 200
    upstream.set_mode("ok")
    st = upstream.stats()
    assert upstream.count("/echo-head", "GET", st) == 7
    assert upstream.count("/x", "POST", st) == 1
    assert upstream.count(stats=st) == 8 == upstream.traffic(st)
    log = upstream.log()
    assert [e["method"] for e in log] == ["GET", "POST"] + ["GET"] * 6
    assert ["Content-Length", "3"] in log[1]["headers"]


def test_control_delay(upstream):
    """delay_ms holds each answer of the mode that long after the head arrived (what /log's mono and
    mono_answer show), and ends with the mode's count."""
    upstream.set_mode("fail-503", count=2, delay_ms=80)
    for i in range(3):
        with RawClient(upstream.port) as c:
            c.request("GET", "/echo-head?i=%d" % i)
            assert c.read_response().status == (503 if i < 2 else 200)
    log = upstream.log()
    assert len(log) == 3, log
    for e in log[:2]:
        assert e["mono_answer"] - e["mono"] >= 0.080, e
    assert log[2]["mono_answer"] is None, log[2]
    assert upstream.set_mode("ok")["delay_ms"] is None


def test_control_hang_and_reset_after_head(upstream):
    with RawClient(upstream.port) as c:
        upstream.set_mode("hang")
        c.request("GET", "/echo-head")
        wait_until(lambda: upstream.stats()["holding"] == 1, what="hang")
        upstream.set_mode("ok")
        assert c.read_response().body == b"released"
    with RawClient(upstream.port) as c:
        c.request("GET", "/reset-after-head?n=50")
        version, status, _, headers, _ = c.read_head()
        assert status == 200
        assert c.wait_closed()
    with RawClient(upstream.port) as c:
        c.request("GET", "/status/503?retry_after=3")
        r = c.read_response()
        assert r.status == 503 and r.header("Retry-After") == "3"
        c.request("GET", "/hold?id=s&status=502")
        upstream.release("s")
        assert c.read_response().status == 502


def test_health_endpoint_switch(upstream):
    def health():
        with RawClient(upstream.port) as c:
            c.request("GET", "/healthz")
            return c.read_response().status

    assert health() == 200
    upstream.set_mode("fail-500")  # the failure mode does not apply to /healthz
    assert health() == 200
    upstream.set_health(503)
    assert health() == 503
    upstream.set_health(200)
    st = upstream.stats()
    assert st["health_ok"] == 2 and st["health_failed"] == 1
    assert upstream.traffic(st) == 0 and upstream.count("/healthz", stats=st) == 3


def test_announce_keepalive(upstream_factory):
    up = upstream_factory("ka", announce_keepalive=2)
    with RawClient(up.port) as c:
        c.request("GET", "/echo-head")
        assert c.read_response().header("Keep-Alive") == "timeout=2"
        c.request("GET", "/echo-head?close=1")
        assert c.read_response().header("Keep-Alive") is None
