#!/usr/bin/python3
"""Fault-injecting HTTP/1.1 test upstream for the bulkhead integration suite (standard library only).

Two listening ports: --port (the data port bulkhead forwards to) and --control-port (for the tests
themselves: /stats and /release without being counted). Connection and request counters only count the
data port.

Endpoints (any method; query parameters allowed):
  /echo              200, body = request body; request line/headers as JSON in X-Echo-Request
  /echo-head         200, JSON {method, target, path, query, version, headers, body_len, body_sha256}
  /delay?ms=N        waits N ms, then 200 "delayed"
  /hold?id=X         waits until /release?id=X arrives (data or control port), then 200 "released"
  /release?id=X      releases the holders of X (or "*")
  /status/N          status N (no body for HEAD, 1xx, 204, 304)
  /bytes?n=N         N bytes with Content-Length, streamed in 64 KiB pieces with backpressure
  /chunked?n=N       the same N bytes as /bytes, Transfer-Encoding: chunked (&size=K, &trailer=1)
  /truncate?n=N      announces Content-Length N, sends N/2 bytes, then closes
  /until-close?n=N   N bytes with neither Content-Length nor chunks: the close ends the body
  /sink              streams the request body: JSON {len, sha256}, never holds it all
                     (&hold=X: reads nothing until /release?id=X)
  /stall?n=N&id=X    announces Content-Length N, sends N/2 bytes, waits for /release?id=X, sends the rest
  /garbage           answers bytes that are not HTTP, then closes
  /bad-status?code=C answers "HTTP/1.1 C Odd" with a 3-byte body (C may be empty), then closes
  /interim-body?framing=length|chunked  a 103 that announces a body which looks like a 200, then closes
  /bodiless?code=C   a C (204, 304) with "Content-Length: 5" and no body, kept alive
                     (&extra=1: 5 bytes anyway, in the same write as the head, and close)
  /bad-length        answers two different Content-Length headers, then closes
  /close-early       closes the connection without a response
  /half-close        reads the request, shuts down its write side (FIN) without a response, and keeps the
                     connection open for reading until the peer closes it
  /fin-after-response  a complete keep-alive 200, then a FIN (write side shut down), reading on until closed
  /big-head?n=N      a 200 whose head carries one header of N bytes (then a 2-byte body)
  /reset             closes with RST (SO_LINGER 0) without a response
  /stats             JSON counters (see Stats.snapshot)
  /healthz           the health endpoint: 200 "ok", or what /control?health= set (a status, or "hang")
  /reset-after-head  sends a response head (Content-Length n, default 1000), &part=K body bytes, waits
                     for /release?id=X when &id=X is given, then closes with RST
  /status/N          (&retry_after=S adds "Retry-After: S")
  /hold              (&status=N answers N instead of 200 once released)
Control port only (not counted):
  /control           GET with query parameters, or POST with a JSON object, sets the failure mode of the
                     data port (every path but /healthz); answers the current settings as JSON:
                       mode=ok | fail-NNN (answer status NNN) | reset (RST before any response byte)
                            | close (close without a response) | hang (no answer until the mode changes)
                            | reset-after-head
                       count=K          the mode applies to the next K requests only, then back to ok
                       retry_after=S    Retry-After on fail-NNN answers
                       delay_ms=N       the mode's answer (fail-NNN, reset, close, reset-after-head)
                                        comes N ms after the request head (0 or empty: at once)
                       health=NNN|hang  what /healthz answers (200 by default)
  /log               JSON list of the requests received on the data port, oldest first (last 20000):
                     {method, path, target, headers, body_len, conn, req, t, mono, mono_answer}:
                     t is the wall clock, mono the monotonic clock (time.monotonic(), the clock of
                     bulkhead's loop) when the head was read; mono_answer the monotonic clock just
                     before a mode's answer was written (null otherwise)
--announce-keepalive N adds "Keep-Alive: timeout=N" to every keep-alive response.
  /ws                WebSocket echo (RFC 6455): text, binary, ping->pong, close echo
  /record            (POST, with --record-log FILE and an X-Record-Id header) the nothing-lost test's route:
                     the id is appended to FILE ("<id> <name> <conn> <req>\n", flushed per line, so it
                     survives a kill -9) as soon as the request head arrives, before any /control mode
                     applies, so a request answered with a reset or never answered is still on record;
                     then 200 with body "<id>\n" plus &pad=N bytes; &pause_ms=M sends the head and half
                     of the body, waits M ms, then the rest (a kill -9 then lands mid-body). A body
                     {"id": ...} that names another id than the header is a 400
  /100               reports the Expect header seen and the body length (sends 100 Continue first)
  anything else      like /echo-head (handy for routing tests: the path the upstream saw)
?close=1 on any endpoint answers with "Connection: close" and closes afterwards.
Every response carries X-Upstream (--name), X-Upstream-Conn (connection serial) and X-Upstream-Req
(request number on that connection).
"""
import argparse
import asyncio
import base64
import hashlib
import json
import socket
import struct
import sys
import time
import urllib.parse

MAX_HEAD = 256 * 1024
PIECE = 64 * 1024
PATTERN = bytes(range(256)) * (PIECE // 256)
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class BadRequest(Exception):
    pass


class Stats:
    def __init__(self):
        self.connections_accepted = 0
        self.open_connections = 0
        self.max_open_connections = 0
        self.requests_served = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.closed_idle = 0
        self.closed_by_peer = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.paths = {}
        self.ws_sessions = 0
        self.expect_seen = 0
        self.holding = 0
        self.requests = {}  # "METHOD /path" -> count (data port)
        self.health_ok = 0
        self.health_failed = 0
        self.mode_applied = 0

    def snapshot(self):
        return {
            "connections_accepted": self.connections_accepted,
            "open_connections": self.open_connections,
            "max_open_connections": self.max_open_connections,
            "requests_served": self.requests_served,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "closed_idle": self.closed_idle,
            "closed_by_peer": self.closed_by_peer,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "paths": self.paths,
            "ws_sessions": self.ws_sessions,
            "expect_seen": self.expect_seen,
            "holding": self.holding,
            "requests": self.requests,
            "health_ok": self.health_ok,
            "health_failed": self.health_failed,
            "mode_applied": self.mode_applied,
        }


STATS = Stats()
HOLDS = {}  # id -> asyncio.Event
ARGS = None
CONN_SERIAL = 0
LOG = []
LOG_MAX = 20000
RECORD = None  # the --record-log file (append, line-buffered by flush), or None
# the switchable failure mode (set through /control on the control port)
CONTROL = {"mode": "ok", "count": None, "retry_after": None, "health": "200", "delay_ms": None}
CONTROL_CHANGED = None  # asyncio.Event, replaced on every change (wakes "hang")


def control_update(params):
    global CONTROL_CHANGED
    for key in ("mode", "retry_after", "health"):
        if key in params:
            v = params[key]
            CONTROL[key] = None if v in (None, "") else str(v)
    if "count" in params:
        v = params["count"]
        CONTROL["count"] = None if v in (None, "") else int(v)
    elif "mode" in params:
        CONTROL["count"] = None
    if "delay_ms" in params:
        v = params["delay_ms"]
        CONTROL["delay_ms"] = None if v in (None, "") else int(v)
    elif "mode" in params:
        CONTROL["delay_ms"] = None
    mode = CONTROL["mode"] or "ok"
    if not (mode in ("ok", "reset", "close", "hang", "reset-after-head")
            or (mode.startswith("fail-") and mode[5:].isdigit())):
        raise BadRequest("unknown mode %r" % mode)
    health = CONTROL["health"] or "200"
    if not (health == "hang" or health.isdigit()):
        raise BadRequest("unknown health %r" % health)
    old, CONTROL_CHANGED = CONTROL_CHANGED, asyncio.Event()
    if old is not None:
        old.set()


def take_mode():
    """(mode, delay in ms) for this data-port request (("ok", 0) when none), consuming one of count."""
    mode = CONTROL["mode"] or "ok"
    if mode == "ok":
        return mode, 0
    delay = CONTROL["delay_ms"] or 0
    if CONTROL["count"] is not None:
        if CONTROL["count"] <= 0:
            return "ok", 0
        CONTROL["count"] -= 1
        if CONTROL["count"] == 0:
            CONTROL["mode"], CONTROL["count"], CONTROL["delay_ms"] = "ok", None, None
    STATS.mode_applied += 1
    return mode, delay


async def wait_control_change(limit=120.0):
    ev = CONTROL_CHANGED
    try:
        await asyncio.wait_for(ev.wait(), limit)
    except asyncio.TimeoutError:
        pass


class Request:
    def __init__(self, method, target, version, headers):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers  # list of (name, value) as received
        parts = urllib.parse.urlsplit(target)
        self.path = parts.path
        self.query_string = parts.query
        self.query = dict(urllib.parse.parse_qsl(parts.query))

    def header(self, name):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def tokens(self, name):
        out = []
        for v in self.header_all(name):
            out += [t.strip().lower() for t in v.split(",") if t.strip()]
        return out


async def read_head(reader):
    try:
        data = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise BadRequest("head too large")
    except asyncio.IncompleteReadError as e:
        if e.partial.strip():
            raise BadRequest("truncated head")
        return None
    lines = data[:-4].split(b"\r\n")
    while lines and lines[0] == b"":  # tolerate stray CRLF between requests (RFC 9112 2.2)
        lines.pop(0)
    if not lines:
        raise BadRequest("empty head")
    try:
        method, target, version = lines[0].decode("latin-1").split(" ")
    except ValueError:
        raise BadRequest("bad request line")
    if not version.startswith("HTTP/1."):
        raise BadRequest("bad version")
    headers = []
    for line in lines[1:]:
        if b":" not in line:
            raise BadRequest("bad header line")
        k, v = line.split(b":", 1)
        if not k or k != k.strip():
            raise BadRequest("bad header name")
        headers.append((k.decode("latin-1"), v.strip().decode("latin-1")))
    return Request(method, target, version, headers)


class Body:
    """Streaming request body reader (Content-Length or chunked)."""

    def __init__(self, reader, req):
        self.reader = reader
        self.chunked = "chunked" in req.tokens("transfer-encoding")
        cl = req.header("content-length")
        if self.chunked and cl is not None:
            raise BadRequest("both Content-Length and Transfer-Encoding")
        if not self.chunked and req.header("transfer-encoding") is not None:
            raise BadRequest("unsupported transfer-encoding")
        try:
            self.remaining = int(cl) if cl is not None else 0
        except ValueError:
            raise BadRequest("bad content-length")
        self.chunk_left = 0
        self.done = (not self.chunked) and self.remaining == 0
        self.trailers = []

    async def read(self, n=PIECE):
        """Returns up to n bytes, b"" at the end of the body."""
        if self.done:
            return b""
        if not self.chunked:
            data = await self.reader.read(min(n, self.remaining))
            if not data:
                raise BadRequest("body truncated")
            self.remaining -= len(data)
            if self.remaining == 0:
                self.done = True
            STATS.bytes_received += len(data)
            return data
        if self.chunk_left == 0:
            line = await self.reader.readuntil(b"\r\n")
            size = line[:-2].split(b";", 1)[0].strip()
            try:
                self.chunk_left = int(size, 16)
            except ValueError:
                raise BadRequest("bad chunk size")
            if self.chunk_left == 0:
                while True:
                    t = await self.reader.readuntil(b"\r\n")
                    if t == b"\r\n":
                        break
                    self.trailers.append(t[:-2].decode("latin-1"))
                self.done = True
                return b""
        data = await self.reader.read(min(n, self.chunk_left))
        if not data:
            raise BadRequest("body truncated")
        self.chunk_left -= len(data)
        if self.chunk_left == 0:
            if await self.reader.readexactly(2) != b"\r\n":
                raise BadRequest("bad chunk end")
        STATS.bytes_received += len(data)
        return data

    async def read_all(self, limit=256 * 1024 * 1024):
        parts = []
        total = 0
        while True:
            d = await self.read()
            if not d:
                return b"".join(parts)
            total += len(d)
            if total > limit:
                raise BadRequest("body too large for this endpoint")
            parts.append(d)


class Conn:
    def __init__(self, reader, writer, control=False):
        global CONN_SERIAL
        if not control:  # serials number data-port connections only: 1, 2, 3 ...
            CONN_SERIAL += 1
        self.serial = 0 if control else CONN_SERIAL
        self.reader = reader
        self.writer = writer
        self.nreq = 0

    async def send(self, data):
        self.writer.write(data)
        STATS.bytes_sent += len(data)
        await self.writer.drain()

    def head(self, status, headers, req, close, reason=None):
        reason = reason or REASONS.get(status, "Unknown")
        lines = ["HTTP/1.1 %d %s" % (status, reason)]
        lines.append("X-Upstream: %s" % ARGS.name)
        lines.append("X-Upstream-Conn: %d" % self.serial)
        lines.append("X-Upstream-Req: %d" % self.nreq)
        for k, v in headers:
            lines.append("%s: %s" % (k, v))
        if close:
            lines.append("Connection: close")
        else:
            if req is not None and req.version == "HTTP/1.0":
                lines.append("Connection: keep-alive")
            if ARGS.announce_keepalive is not None:
                lines.append("Keep-Alive: timeout=%s" % fmt_seconds(ARGS.announce_keepalive))
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def respond(self, req, status, body=b"", headers=(), close=False, reason=None):
        headers = list(headers)
        no_body = req is not None and (req.method == "HEAD" or status in (204, 304) or status < 200)
        if status not in (204, 304) and status >= 200:
            headers.append(("Content-Length", str(len(body))))
        data = self.head(status, headers, req, close, reason)
        if not no_body:
            data += body
        await self.send(data)


REASONS = {100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created", 204: "No Content",
           304: "Not Modified", 400: "Bad Request", 404: "Not Found", 413: "Content Too Large",
           429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
           503: "Service Unavailable", 504: "Gateway Timeout"}


def fmt_seconds(v):
    return str(int(v)) if float(v) == int(v) else str(v)


def echo_info(req, body):
    return {
        "method": req.method,
        "target": req.target,
        "path": req.path,
        "query": req.query_string,
        "version": req.version,
        "headers": [[k, v] for k, v in req.headers],
        "body_len": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "trailers": [],
    }


async def half_close(conn):
    """Shuts down the write side (a FIN) and reads on until the peer closes."""
    conn.writer.write_eof()
    try:
        while await conn.reader.read(65536):
            pass
    except (ConnectionError, OSError):
        pass


async def handle_request(conn, req, control):
    """Handles one request. Returns True to keep the connection open."""
    body = Body(conn.reader, req)
    q = req.query
    close = q.get("close") == "1" or "close" in req.tokens("connection") or (
        req.version == "HTTP/1.0" and "keep-alive" not in req.tokens("connection"))
    path = req.path
    if not control:
        STATS.paths[path] = STATS.paths.get(path, 0) + 1
        key = "%s %s" % (req.method, path)
        STATS.requests[key] = STATS.requests.get(key, 0) + 1
        entry = {"method": req.method, "path": path, "target": req.target,
                 "headers": [[k, v] for k, v in req.headers], "body_len": None,
                 "conn": conn.serial, "req": conn.nreq, "t": time.time(), "mono": time.monotonic(),
                 "mono_answer": None}
        LOG.append(entry)
        if len(LOG) > LOG_MAX:
            del LOG[:len(LOG) - LOG_MAX]
        if path == "/record":
            record_id(conn, req)
    else:
        entry = None

    if control and path == "/control":
        data = await body.read_all()
        params = dict(q)
        if data.strip():
            params.update(json.loads(data))
        control_update(params)
        await conn.respond(req, 200, json.dumps(CONTROL).encode(),
                           [("Content-Type", "application/json")], close)
        return not close
    if control and path == "/log":
        await body.read_all()
        await conn.respond(req, 200, json.dumps(LOG).encode(),
                           [("Content-Type", "application/json")], close)
        return not close
    if not control and path == "/healthz":
        await body.read_all()
        health = CONTROL["health"] or "200"
        if health == "hang":
            while (CONTROL["health"] or "200") == "hang":
                await wait_control_change()
            health = CONTROL["health"] or "200"
        status = int(health)
        if 200 <= status < 300:
            STATS.health_ok += 1
        else:
            STATS.health_failed += 1
        await conn.respond(req, status, b"ok" if status == 200 else b"status %d" % status, close=close)
        return not close
    if not control and path != "/stats":
        mode, delay_ms = take_mode()
        if mode != "ok":
            data = await body.read_all()
            entry["body_len"] = len(data)
            if delay_ms > 0:
                await asyncio.sleep(delay_ms / 1000.0)
            return await apply_mode(conn, req, mode, close, entry)

    expect = (req.header("expect") or "").lower()
    if expect == "100-continue":
        STATS.expect_seen += 1
        if path != "/expect-reject":
            await conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")

    if path == "/stats":
        await body.read_all()
        data = json.dumps(STATS.snapshot()).encode()
        await conn.respond(req, 200, data, [("Content-Type", "application/json")], close)
    elif path == "/release":
        await body.read_all()
        key = q.get("id", "*")
        n = 0
        for k, ev in list(HOLDS.items()):
            if key in ("*", k):
                ev.set()
                n += 1
        await conn.respond(req, 200, b"released %d" % n, close=close)
    elif path == "/hold":
        await body.read_all()
        key = q.get("id", "default")
        ev = HOLDS.setdefault(key, asyncio.Event())
        STATS.holding += 1
        try:
            await asyncio.wait_for(ev.wait(), float(q.get("max", "120")))
        except asyncio.TimeoutError:
            pass
        finally:
            STATS.holding -= 1
        status = int(q.get("status", "200"))
        await conn.respond(req, status, b"released" if status == 200 else b"status %d" % status,
                           close=close)
    elif path == "/echo":
        data = await body.read_all()
        info = echo_info(req, data)
        info["trailers"] = body.trailers
        hdrs = [("X-Echo-Request", json.dumps(info, ensure_ascii=True))]
        ct = req.header("content-type")
        if ct:
            hdrs.append(("Content-Type", ct))
        await conn.respond(req, 200, data, hdrs, close)
    elif path == "/delay":
        await body.read_all()
        await asyncio.sleep(int(q.get("ms", "0")) / 1000.0)
        await conn.respond(req, 200, b"delayed", close=close)
    elif path.startswith("/status/"):
        await body.read_all()
        status = int(path[len("/status/"):])
        text = b"" if status in (204, 304) or status < 200 else b"status %d" % status
        hdrs = [("ETag", '"v1"')] if status == 304 else []
        if "retry_after" in q:
            hdrs.append(("Retry-After", q["retry_after"]))
        await conn.respond(req, status, text, hdrs, close)
    elif path == "/bytes":
        await body.read_all()
        n = int(q.get("n", "0"))
        await conn.send(conn.head(200, [("Content-Length", str(n)),
                                        ("Content-Type", "application/octet-stream")], req, close))
        if req.method != "HEAD":
            left = n
            while left > 0:
                piece = PATTERN if left >= PIECE else PATTERN[:left]
                await conn.send(piece)
                left -= len(piece)
    elif path == "/chunked":
        await body.read_all()
        n = int(q.get("n", "0"))
        size = max(1, int(q.get("size", str(PIECE))))
        hdrs = [("Transfer-Encoding", "chunked"), ("Content-Type", "application/octet-stream")]
        if q.get("trailer") == "1":
            hdrs.append(("Trailer", "X-Checksum"))
        await conn.send(conn.head(200, hdrs, req, close))
        if req.method != "HEAD":
            left = n
            h = hashlib.sha256()
            double = PATTERN * 2
            off = 0
            while left > 0:
                k = min(size, left, PIECE)
                piece = double[off % 256:off % 256 + k]
                off += k
                h.update(piece)
                await conn.send(b"%x\r\n" % k + piece + b"\r\n")
                left -= k
            if q.get("trailer") == "1":
                await conn.send(b"0\r\nX-Checksum: " + h.hexdigest().encode() + b"\r\n\r\n")
            else:
                await conn.send(b"0\r\n\r\n")
    elif path == "/truncate":
        await body.read_all()
        n = int(q.get("n", "1000"))
        await conn.send(conn.head(200, [("Content-Length", str(n))], req, False))
        await conn.send((PATTERN * (n // len(PATTERN) + 1))[: n // 2])
        return False
    elif path == "/until-close":
        await body.read_all()
        n = int(q.get("n", "1000"))
        await conn.send(conn.head(200, [], req, True))
        data = (PATTERN * (n // len(PATTERN) + 1))[:n]
        for i in range(0, n, PIECE):
            await conn.send(data[i:i + PIECE])
        return False
    elif path == "/stall":
        await body.read_all()
        n = int(q.get("n", "1000"))
        await conn.send(conn.head(200, [("Content-Length", str(n))], req, False))
        await conn.send((PATTERN * (n // len(PATTERN) + 1))[: n // 2])
        ev = HOLDS.setdefault(q.get("id", "stall"), asyncio.Event())
        STATS.holding += 1
        try:
            await asyncio.wait_for(ev.wait(), float(q.get("max", "120")))
        except asyncio.TimeoutError:
            pass
        finally:
            STATS.holding -= 1
        await conn.send((PATTERN * (n // len(PATTERN) + 1))[n // 2:n])
    elif path == "/garbage":
        await body.read_all()
        await conn.send(b"THIS IS NOT HTTP\r\n\r\n")
        return False
    elif path == "/bad-status":
        await body.read_all()
        code = q.get("code", "").encode()
        await conn.send(b"HTTP/1.1 " + code + b" Odd\r\nContent-Length: 3\r\n\r\nabc")
        return False
    elif path == "/interim-body":
        await body.read_all()
        fake = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
        if q.get("framing") == "chunked":
            framing = b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(fake), fake)
        else:
            framing = b"Content-Length: %d\r\n\r\n%s" % (len(fake), fake)
        await conn.send(b"HTTP/1.1 103 Early Hints\r\n" + framing +
                        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal")
        return False
    elif path == "/bodiless":
        await body.read_all()
        head = b"HTTP/1.1 %s X\r\nETag: \"e\"\r\nContent-Length: 5\r\n\r\n" % q["code"].encode()
        if q.get("extra"):  # in the same write: bulkhead reads them together
            await conn.send(head + b"hello")
            return False
        await conn.send(head)
        return True
    elif path == "/bad-length":
        await body.read_all()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello")
        return False
    elif path == "/sink":
        if "hold" in q:  # do not read the body until /release?id=<hold>
            ev = HOLDS.setdefault(q["hold"], asyncio.Event())
            STATS.holding += 1
            try:
                await asyncio.wait_for(ev.wait(), float(q.get("max", "120")))
            except asyncio.TimeoutError:
                pass
            finally:
                STATS.holding -= 1
        h = hashlib.sha256()
        total = 0
        while True:
            d = await body.read()
            if not d:
                break
            h.update(d)
            total += len(d)
        if entry is not None:
            entry["body_len"] = total  # only a complete body gets here (a truncated one raises)
        data = json.dumps({"len": total, "sha256": h.hexdigest()}).encode()
        await conn.respond(req, 200, data, [("Content-Type", "application/json")], close)
    elif path == "/close-early":
        await body.read_all()
        return False
    elif path == "/fin-after-response":
        await body.read_all()
        await conn.respond(req, 200, b"done", close=False)  # a keep-alive response, then a FIN
        await half_close(conn)
        return False
    elif path == "/half-close":
        await body.read_all()
        await half_close(conn)
        return False
    elif path == "/big-head":
        await body.read_all()
        n = int(q.get("n", "65536"))
        await conn.send(conn.head(200, [("X-Big", "a" * n), ("Content-Length", "2")], req, close))
        await conn.send(b"ok")
    elif path == "/reset":
        await body.read_all()
        rst(conn)
        return False
    elif path == "/reset-after-head":
        await body.read_all()
        n = int(q.get("n", "1000"))
        await conn.send(conn.head(200, [("Content-Length", str(n))], req, False))
        if "part" in q:  # some body bytes first
            await conn.send(PATTERN[:int(q["part"])])
        if "id" in q:  # reset only once /release?id=X arrives (after the client saw the head)
            ev = HOLDS.setdefault(q["id"], asyncio.Event())
            STATS.holding += 1
            try:
                await asyncio.wait_for(ev.wait(), float(q.get("max", "120")))
            except asyncio.TimeoutError:
                pass
            finally:
                STATS.holding -= 1
        rst(conn)
        return False
    elif path == "/record":
        await answer_record(conn, req, await body.read_all(), close)
    elif path == "/100":
        data = await body.read_all()
        info = {"expect": req.header("expect"), "body_len": len(data),
                "body_sha256": hashlib.sha256(data).hexdigest()}
        await conn.respond(req, 200, json.dumps(info).encode(),
                           [("Content-Type", "application/json")], close)
    elif path == "/expect-reject":
        await conn.respond(req, 417, b"expectation failed", close=True)
        return False
    elif path == "/ws":
        await websocket(conn, req)
        return False
    else:  # /echo-head and anything else
        data = await body.read_all()
        info = echo_info(req, data)
        info["trailers"] = body.trailers
        await conn.respond(req, 200, json.dumps(info).encode(),
                           [("Content-Type", "application/json")], close)
    return not close


def record_id(conn, req):
    """Appends the X-Record-Id of a /record request to the --record-log file, flushed at once (what a
    kill -9 cannot take back: the line is in the kernel's page cache)."""
    rid = req.header("x-record-id")
    if RECORD is None or not rid:
        return
    RECORD.write("%s %s %d %d\n" % (rid, ARGS.name, conn.serial, conn.nreq))
    RECORD.flush()


async def answer_record(conn, req, data, close):
    """/record's answer: 200, "<id>\n" + pad bytes, in two halves pause_ms apart."""
    rid = req.header("x-record-id") or ""
    if data.strip():
        try:
            named = json.loads(data).get("id")
        except (ValueError, AttributeError):
            raise BadRequest("/record body is not a JSON object")
        if named != rid:
            raise BadRequest("/record body names id %r, header %r" % (named, rid))
    q = req.query
    payload = rid.encode() + b"\n" + b"p" * int(q.get("pad", "0"))
    half = len(payload) // 2
    await conn.send(conn.head(200, [("Content-Length", str(len(payload))),
                                    ("Content-Type", "text/plain")], req, close) + payload[:half])
    pause = int(q.get("pause_ms", "0"))
    if pause > 0:
        await asyncio.sleep(pause / 1000.0)
    await conn.send(payload[half:])


def rst(conn):
    sock = conn.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.writer.transport.abort()


async def apply_mode(conn, req, mode, close, entry):
    """Answers a data-port request the way the control mode says (entry: its /log entry, which gets
    mono_answer). Returns True to keep the connection."""
    if mode != "hang":  # taken before the first byte (or the close) goes out
        entry["mono_answer"] = time.monotonic()
    if mode.startswith("fail-"):
        status = int(mode[5:])
        hdrs = []
        if CONTROL["retry_after"] is not None:
            hdrs.append(("Retry-After", CONTROL["retry_after"]))
        await conn.respond(req, status, b"mode %s" % mode.encode(), hdrs, close)
        return not close
    if mode == "reset":
        rst(conn)
        return False
    if mode == "close":
        return False
    if mode == "reset-after-head":
        await conn.send(conn.head(200, [("Content-Length", "1000")], req, False))
        rst(conn)
        return False
    if mode == "hang":
        STATS.holding += 1
        try:
            while (CONTROL["mode"] or "ok") == "hang":
                await wait_control_change()
        finally:
            STATS.holding -= 1
        entry["mono_answer"] = time.monotonic()
        await conn.respond(req, 200, b"released", close=close)
        return not close
    raise BadRequest("unknown mode %r" % mode)


async def websocket(conn, req):
    key = req.header("sec-websocket-key")
    if "websocket" not in req.tokens("upgrade") or "upgrade" not in req.tokens("connection") or not key:
        await conn.respond(req, 400, b"not a websocket upgrade", close=True)
        return
    accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
    STATS.ws_sessions += 1
    await conn.send(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\nX-Upstream: %s\r\n\r\n" % (accept, ARGS.name)).encode())
    r = conn.reader
    while True:
        try:
            b0, b1 = await r.readexactly(2)
        except asyncio.IncompleteReadError:
            return
        opcode = b0 & 0x0F
        masked = b1 & 0x80
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", await r.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await r.readexactly(8))[0]
        mask = await r.readexactly(4) if masked else None
        payload = await r.readexactly(n)
        if mask:
            payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
        if opcode == 0x9:  # ping
            await conn.send(ws_frame(0xA, payload))
        elif opcode == 0xA:  # pong
            pass
        elif opcode == 0x8:  # close: echo the status code and close
            await conn.send(ws_frame(0x8, payload[:2]))
            return
        else:  # text, binary, continuation: echo with the same FIN bit and opcode
            await conn.send(ws_frame(opcode, payload, fin=bool(b0 & 0x80)))


def ws_frame(opcode, payload, fin=True):
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", b0, n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, 126, n)
    else:
        head = struct.pack("!BBQ", b0, 127, n)
    return head + payload


OPEN_SOCKS = set()


def peer_closed(sock):
    """True when the peer has closed (EOF or RST pending on the socket), without consuming data."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


async def serve(reader, writer, control):
    conn = Conn(reader, writer, control)
    sock = None
    if not control:
        STATS.connections_accepted += 1
        STATS.open_connections += 1
        ts = writer.get_extra_info("socket")
        sock = getattr(ts, "_sock", None)
        # The high-water mark counts the connections whose peer has not closed them. A connection
        # the peer closed just before opening this one may not have been noticed yet by its reader
        # (both events can come in one poll): ask the kernel instead of trusting the counter.
        open_now = 1 + sum(1 for other in OPEN_SOCKS if not peer_closed(other))
        STATS.max_open_connections = max(STATS.max_open_connections, open_now)
        if sock is not None:
            OPEN_SOCKS.add(sock)
    try:
        while True:
            timeout = ARGS.keepalive_timeout if (conn.nreq > 0 and not control) else None
            try:
                req = await asyncio.wait_for(read_head(reader), timeout)
            except asyncio.TimeoutError:
                if not control:
                    STATS.closed_idle += 1
                return
            if req is None:
                if not control:
                    STATS.closed_by_peer += 1
                return
            conn.nreq += 1
            if not control:
                # counted when the head arrives, so a client that has read a response sees it counted
                if req.path != "/stats":
                    STATS.requests_served += 1
                STATS.in_flight += 1
                STATS.max_in_flight = max(STATS.max_in_flight, STATS.in_flight)
            try:
                keep = await handle_request(conn, req, control)
            finally:
                if not control:
                    STATS.in_flight -= 1
            if not keep:
                return
    except BadRequest as e:
        try:
            msg = str(e).encode()
            writer.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(msg), msg))
            await writer.drain()
        except (ConnectionError, OSError):
            pass
    except (ConnectionError, OSError, asyncio.IncompleteReadError):
        if not control:
            STATS.closed_by_peer += 1
    finally:
        if not control:
            STATS.open_connections -= 1
            OPEN_SOCKS.discard(sock)
        try:
            writer.close()
        except Exception:
            pass


async def main():
    global ARGS, RECORD
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--control-port", type=int, default=0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--name", default="up")
    p.add_argument("--keepalive-timeout", type=float, default=None,
                   help="close idle keep-alive connections after this many seconds")
    p.add_argument("--announce-keepalive", type=float, default=None,
                   help="announce Keep-Alive: timeout=N on keep-alive responses")
    p.add_argument("--record-log", default=None,
                   help="append the X-Record-Id of every /record request to this file")
    ARGS = p.parse_args()
    if ARGS.record_log:
        RECORD = open(ARGS.record_log, "a")
    control_update({})
    servers = [await asyncio.start_server(lambda r, w: serve(r, w, False), ARGS.host, ARGS.port,
                                          limit=MAX_HEAD, backlog=4096, reuse_address=True)]
    if ARGS.control_port:
        servers.append(await asyncio.start_server(lambda r, w: serve(r, w, True), ARGS.host,
                                                  ARGS.control_port, limit=MAX_HEAD, reuse_address=True))
    print("listening %d %d" % (ARGS.port, ARGS.control_port), flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
