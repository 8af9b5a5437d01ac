#!/usr/bin/python3
"""A strict, recording HTTP/1.1 upstream for the request-smuggling corpus (standard library only).

It keeps the raw bytes of every connection accepted on the data port and parses them with its own
strict RFC 9112 parser (below: `parse_request`), which accepts only what a proxy should ever send to an
origin server:

  - request line exactly `method SP request-target SP HTTP/1.1 CRLF`: a token method, an origin-form
    target (asterisk-form for OPTIONS only), no other version (HTTP/1.0 is parsed, without
    Transfer-Encoding, but recorded as a deviation: an intermediary sends its own version);
  - field lines `token ":" OWS value OWS CRLF`: no whitespace before the colon, no obs-fold, no CTL in
    values, CRLF only (a bare LF or bare CR anywhere in the head is an error), no empty line before
    the request line;
  - exactly one Host; at most one Content-Length, a single run of digits; at most one
    Transfer-Encoding, exactly `chunked`; never Content-Length and Transfer-Encoding together; no
    Connection option naming a framing field or Host;
  - chunked bodies per the grammar: chunk-size 1*HEXDIG (no sign, 0x, whitespace; at most 15 digits),
    chunk extensions `*( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] )`, CRLF after
    each chunk's data, trailers as field lines but never a framing, routing or connection field.

Each request parsed is answered with a 200 whose body and `X-Strict-Seq` header identify it (a
sequence number over all connections), keep-alive. The first byte that cannot be part of a valid
request is an anomaly: recorded with its kind, answered with a 400 carrying `X-Strict-Error`, and the
connection is closed after reading what the peer still sends (everything is recorded as leftover).
Bytes that wait for more input (a request not complete yet) stay buffered per connection: a pooled
connection holding them is what a smuggled prefix looks like.

Control port (never counted), one request per connection, JSON answers:
  GET /state?since=E   every connection (open, or changed after event E), the requests parsed and the
                       anomalies after event E (&raw=1: with each connection's raw bytes). Before
                       answering, every pending connection is accepted and every data socket read
                       until it would block, so the answer covers all bytes the kernel had received
                       when the query arrived.
  GET /close-all       the same drain, then closes every data connection (recording what they held).
Bytes in JSON are strings decoded as latin-1 (one character per byte).
"""
import argparse
import hashlib
import json
import re
import selectors
import socket
import sys
import urllib.parse

MAX_HEAD = 64 * 1024
MAX_LINE = 8 * 1024
MAX_RAW = 1 << 20          # raw bytes kept per connection
MAX_BODY_KEPT = 4096       # body bytes reported per request
MAX_CHUNK_DIGITS = 15      # 15 hex digits < 2^60: no overflow possible

TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
SUB_DELIMS = frozenset(b"!$&'()*+,;=")
PCHAR = UNRESERVED | SUB_DELIMS | frozenset(b":@")
HEXDIG = frozenset(b"0123456789abcdefABCDEF")
# framing, routing and connection fields: never in a trailer section, never named by Connection
FRAMING = frozenset({"content-length", "transfer-encoding", "host"})
NOT_IN_TRAILERS = FRAMING | frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer",
                                       "upgrade", "expect", "content-encoding", "content-type",
                                       "content-range"})


class ParseError(Exception):
    def __init__(self, kind, detail, at):
        super().__init__("%s: %s" % (kind, detail))
        self.kind = kind
        self.detail = detail
        self.at = at  # offset in the buffer being parsed


class NeedMore(Exception):
    pass


def _line(buf, pos, what):
    """The line starting at pos, without its CRLF, and the offset after it. NeedMore when the CRLF has
    not arrived. A bare LF or a bare CR is an error wherever it is."""
    i = buf.find(b"\n", pos)
    cr = buf.find(b"\r", pos, i if i >= 0 else len(buf))
    if cr >= 0 and cr + 1 < len(buf) and buf[cr + 1] != 0x0A:
        raise ParseError("bare-cr", "CR not followed by LF in %s" % what, cr)
    if i < 0:
        if len(buf) - pos > MAX_LINE:
            raise ParseError("line-too-long", "%s longer than %d bytes" % (what, MAX_LINE), pos)
        raise NeedMore()
    if i == pos or buf[i - 1] != 0x0D:
        raise ParseError("bare-lf", "LF without CR ending %s" % what, i)
    return bytes(buf[pos:i - 1]), i + 1


def _check_origin_form(target, at):
    """origin-form = absolute-path [ "?" query ] with RFC 3986 characters (pct-encoding checked)."""
    if not target.startswith(b"/"):
        raise ParseError("bad-target", "request-target %r is not origin-form" % target, at)
    i, n, in_query = 0, len(target), False
    while i < n:
        c = target[i]
        if c == 0x25:  # %
            if i + 2 >= n or target[i + 1] not in HEXDIG or target[i + 2] not in HEXDIG:
                raise ParseError("bad-target", "bad percent-encoding in %r" % target, at)
            i += 3
            continue
        if c == 0x3F:  # ?
            in_query = True
        elif c == 0x2F:  # /
            pass
        elif c not in PCHAR:
            raise ParseError("bad-target", "byte %r not allowed in request-target %r"
                             % (bytes([c]), target), at)
        i += 1
    return in_query


def _check_field_value(value, at, what):
    for c in value:
        if not (c == 0x09 or 0x20 <= c <= 0x7E or c >= 0x80):
            raise ParseError("bad-field-value", "byte %r in %s" % (bytes([c]), what), at)


def _field_line(line, at, what):
    """(lowercase name, name, value) of a field line, strictly."""
    if line[:1] in (b" ", b"\t"):
        raise ParseError("obs-fold", "%s starts with whitespace (obs-fold): %r" % (what, line), at)
    colon = line.find(b":")
    if colon <= 0:
        raise ParseError("bad-field-name", "%s without a field name and colon: %r" % (what, line), at)
    name = line[:colon]
    for c in name:
        if c not in TCHAR:
            kind = "ws-before-colon" if c in (0x20, 0x09) else "bad-field-name"
            raise ParseError(kind, "byte %r in field name %r" % (bytes([c]), name), at)
    value = line[colon + 1:].strip(b" \t")
    _check_field_value(value, at, "field %r" % name)
    return name.decode("latin-1").lower(), name.decode("latin-1"), value


def _check_host(value, at):
    m = re.fullmatch(rb"(\[[0-9A-Fa-f:.vV!$&'()*+,;=_~-]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(:[0-9]*)?", value)
    if m is None:
        raise ParseError("bad-host", "Host %r is not uri-host [ \":\" port ]" % value, at)


_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_CHUNK_EXT = re.compile(rb"(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + b"|" + _QUOTED
                        + rb"))?)*")


def _chunk_size_line(line, at):
    i = 0
    while i < len(line) and line[i] in HEXDIG:
        i += 1
    if i == 0:
        raise ParseError("bad-chunk-size", "chunk-size line %r does not start with a hex digit" % line, at)
    if i > MAX_CHUNK_DIGITS:
        raise ParseError("chunk-size-overflow", "chunk-size %r has more than %d digits"
                         % (line[:i], MAX_CHUNK_DIGITS), at)
    if _CHUNK_EXT.fullmatch(line[i:]) is None:
        raise ParseError("bad-chunk-ext", "chunk-size line %r: %r is not chunk-ext" % (line, line[i:]), at)
    return int(line[:i], 16)


def parse_request(buf):
    """Parses one request at the start of buf. Returns (request dict, bytes consumed); raises NeedMore
    when buf is a valid prefix that needs more bytes, ParseError at the first invalid byte."""
    if buf[:1] in (b"\r", b"\n"):
        raise ParseError("empty-line-before-request", "line terminator where a request line must start", 0)
    line, pos = _line(buf, 0, "the request line")
    parts = line.split(b" ")
    if len(parts) != 3:
        raise ParseError("bad-request-line", "request line %r is not method SP target SP version" % line, 0)
    method, target, version = parts
    if not method or any(c not in TCHAR for c in method):
        raise ParseError("bad-method", "method %r is not a token" % method, 0)
    if target == b"*":
        if method != b"OPTIONS":
            raise ParseError("bad-target", "asterisk-form with method %r" % method, 0)
    else:
        _check_origin_form(target, 0)
    deviations = []
    if version == b"HTTP/1.0":
        # unambiguous, but an intermediary sends its own version (RFC 9110 2.5): recorded, not an error
        deviations.append("HTTP/1.0 request line")
    elif version != b"HTTP/1.1":
        raise ParseError("bad-version", "version %r is not HTTP/1.1" % version, 0)
    headers = []
    while True:
        if pos > MAX_HEAD:
            raise ParseError("head-too-large", "head over %d bytes" % MAX_HEAD, pos)
        at = pos
        line, pos = _line(buf, pos, "a field line")
        if line == b"":
            break
        headers.append((at,) + _field_line(line, at, "field line"))
    by_name = {}
    for at, lname, name, value in headers:
        by_name.setdefault(lname, []).append((at, value))
    hosts = by_name.get("host", [])
    if len(hosts) != 1:
        raise ParseError("host-count", "%d Host field lines" % len(hosts), hosts[1][0] if hosts else pos)
    _check_host(hosts[0][1], hosts[0][0])
    for at, value in by_name.get("connection", []):
        for tok in value.split(b","):
            if tok.strip(b" \t").decode("latin-1").lower() in FRAMING:
                raise ParseError("connection-names-framing", "Connection: %r names a framing field" % value, at)
    cls = by_name.get("content-length", [])
    tes = by_name.get("transfer-encoding", [])
    if tes and deviations:
        raise ParseError("te-in-http10", "Transfer-Encoding in an HTTP/1.0 request", tes[0][0])
    if cls and tes:
        raise ParseError("cl-and-te", "both Content-Length and Transfer-Encoding", tes[0][0])
    if len(cls) > 1:
        raise ParseError("cl-multiple", "%d Content-Length field lines" % len(cls), cls[1][0])
    if len(tes) > 1:
        raise ParseError("te-multiple", "%d Transfer-Encoding field lines" % len(tes), tes[1][0])
    req = {"method": method.decode("latin-1"), "target": target.decode("latin-1"),
           "headers": [[name, value.decode("latin-1")] for _, _, name, value in headers],
           "trailers": [], "chunked": False, "version": version.decode("latin-1"), "deviations": deviations}
    if tes:
        at, value = tes[0]
        if value.lower() != b"chunked":
            raise ParseError("te-not-chunked", "Transfer-Encoding %r is not exactly chunked" % value, at)
        req["chunked"] = True
        body = bytearray()
        while True:
            at = pos
            line, pos = _line(buf, pos, "a chunk-size line")
            size = _chunk_size_line(line, at)
            if size == 0:
                break
            if len(buf) < pos + size + 2:
                raise NeedMore()
            body += buf[pos:pos + size]
            pos += size
            if buf[pos:pos + 2] != b"\r\n":
                raise ParseError("bad-chunk-end", "chunk data not followed by CRLF: %r"
                                 % bytes(buf[pos:pos + 8]), pos)
            pos += 2
        while True:
            at = pos
            line, pos = _line(buf, pos, "a trailer line")
            if line == b"":
                break
            lname, name, value = _field_line(line, at, "trailer line")
            if lname in NOT_IN_TRAILERS:
                raise ParseError("trailer-forbidden", "trailer field %r" % name, at)
            req["trailers"].append([name, value.decode("latin-1")])
        body = bytes(body)
    elif cls:
        at, value = cls[0]
        if not value or any(c not in b"0123456789" for c in value) or len(value) > 18:
            raise ParseError("cl-invalid", "Content-Length %r is not a run of digits" % value, at)
        n = int(value)
        if len(buf) < pos + n:
            raise NeedMore()
        body = bytes(buf[pos:pos + n])
        pos += n
    else:
        body = b""
    req["body_len"] = len(body)
    req["body_sha256"] = hashlib.sha256(body).hexdigest()
    req["body"] = body[:MAX_BODY_KEPT].decode("latin-1")
    tokens = [tok.strip(b" \t").lower() for _, v in by_name.get("connection", []) for tok in v.split(b",")]
    req["close"] = b"close" in tokens or (bool(deviations) and b"keep-alive" not in tokens)
    req["keepalive_10"] = bool(deviations) and not req["close"]
    return req, pos


def lat(b):
    return bytes(b).decode("latin-1")


# ----------------------------------------------------------------------------------------------
# the server: one thread, one selector; a control query drains every data socket before answering

class Server:
    def __init__(self, host, port, control_port):
        self.sel = selectors.DefaultSelector()
        self.event = 0       # increases on every recorded change (request, anomaly, open, close)
        self.seq = 0         # requests parsed, over all connections
        self.conns = {}      # id -> DataConn
        self.requests = []
        self.anomalies = []
        self.next_id = 0
        self.data = self._listen(host, port)
        self.control = self._listen(host, control_port)
        self.sel.register(self.data, selectors.EVENT_READ, ("accept", None))
        self.sel.register(self.control, selectors.EVENT_READ, ("control-accept", None))

    @staticmethod
    def _listen(host, port):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(1024)
        s.setblocking(False)
        return s

    def bump(self):
        self.event += 1
        return self.event

    # data connections -----------------------------------------------------------------------

    def accept_all(self):
        n = 0
        while True:
            try:
                s, _ = self.data.accept()
            except (BlockingIOError, InterruptedError):
                return n
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.next_id += 1
            c = DataConn(self, s, self.next_id)
            self.conns[c.id] = c
            self.sel.register(s, selectors.EVENT_READ, ("data", c))
            n += 1

    def drain(self):
        """Accepts every pending connection and reads every data socket until it would block."""
        while True:
            progress = self.accept_all()
            for c in list(self.conns.values()):
                if c.sock is not None:
                    progress += c.read_available()
            if not progress:
                return

    def state(self, since, raw=False):
        conns = [c.describe(raw) for c in self.conns.values()
                 if c.sock is not None or c.last_event > since]
        return {"event": self.event, "seq": self.seq, "conns": conns,
                "requests": [r for r in self.requests if r["event"] > since],
                "anomalies": [a for a in self.anomalies if a["event"] > since]}

    # control ----------------------------------------------------------------------------------

    def control_accept(self):
        while True:
            try:
                s, _ = self.control.accept()
            except (BlockingIOError, InterruptedError):
                return
            s.settimeout(10)
            try:
                self.control_serve(s)
            except OSError:
                pass
            finally:
                s.close()

    def control_serve(self, s):
        data = b""
        while b"\r\n\r\n" not in data:
            d = s.recv(8192)
            if not d or len(data) > 65536:
                return
            data += d
        line = data.split(b"\r\n", 1)[0].decode("latin-1")
        try:
            _, target, _ = line.split(" ")
        except ValueError:
            target = "/"
        u = urllib.parse.urlsplit(target)
        q = dict(urllib.parse.parse_qsl(u.query))
        self.drain()
        if u.path == "/state":
            status, body = 200, self.state(int(q.get("since", "0")), q.get("raw") == "1")
        elif u.path == "/close-all":
            for c in list(self.conns.values()):
                if c.sock is not None:
                    c.close("closed by /close-all")
            status, body = 200, self.state(int(q.get("since", "0")))
        else:
            status, body = 404, {"error": "unknown path %s" % u.path}
        out = json.dumps(body).encode()
        s.sendall(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                  b"Connection: close\r\n\r\n" % (status, len(out)) + out)

    def run(self):
        while True:
            for key, _ in self.sel.select():
                kind, c = key.data
                if kind == "accept":
                    self.accept_all()
                elif kind == "control-accept":
                    self.control_accept()
                elif c.sock is not None:
                    if key.events & selectors.EVENT_WRITE:
                        c.flush()
                    if c.sock is not None:
                        c.read_available()


class DataConn:
    def __init__(self, srv, sock, cid):
        self.srv = srv
        self.sock = sock
        self.id = cid
        self.raw = bytearray()
        self.bytes_in = 0
        self.bytes_out = 0
        self.buf = bytearray()     # bytes not parsed yet (a request in progress)
        self.nreq = 0
        self.out = bytearray()
        self.failed = None         # anomaly kind once the connection is in error
        self.closing = False       # answered "close": read and record until EOF, parse nothing
        self.after_close = bytearray()
        self.closed = None         # why the connection ended
        self.leftover = None       # bytes it held when it ended
        self.opened_event = srv.bump()
        self.last_event = self.opened_event

    def describe(self, raw=False):
        return {"id": self.id, "open": self.sock is not None and not self.closing and not self.failed,
                "socket_open": self.sock is not None, "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out, "requests": self.nreq,
                "buffered": lat(self.buf), "failed": self.failed, "closing": self.closing,
                "closed": self.closed, "leftover": None if self.leftover is None else lat(self.leftover),
                "after_close": lat(self.after_close), "raw": lat(self.raw) if raw else None,
                "opened_event": self.opened_event, "last_event": self.last_event}

    def read_available(self):
        n = 0
        while self.sock is not None:
            try:
                d = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return n
            except OSError as e:
                self.close("reset by peer (%s)" % e.__class__.__name__)
                return n + 1
            if not d:
                self.close("closed by peer")
                return n + 1
            n += 1
            self.feed(d)
        return n

    def feed(self, d):
        self.bytes_in += len(d)
        if len(self.raw) < MAX_RAW:
            self.raw += d[:MAX_RAW - len(self.raw)]
        self.last_event = self.srv.bump()
        if self.failed or self.closing:
            self.after_close += d
            return
        self.buf += d
        while self.buf and not self.failed and not self.closing:
            try:
                req, used = parse_request(self.buf)
            except NeedMore:
                return
            except ParseError as e:
                self.fail(e)
                return
            del self.buf[:used]
            self.answer(req)

    def answer(self, req):
        srv = self.srv
        srv.seq += 1
        self.nreq += 1
        req.update({"seq": srv.seq, "conn": self.id, "n": self.nreq, "event": srv.bump()})
        self.last_event = req["event"]
        srv.requests.append(req)
        text = ("seq=%d conn=%d n=%d %s %s body=%d\n" % (req["seq"], self.id, self.nreq, req["method"],
                                                          req["target"], req["body_len"])).encode("latin-1")
        head = ("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nX-Strict-Seq: %d\r\n"
                "X-Strict-Conn: %d\r\n" % (len(text), req["seq"], self.id))
        if req["close"]:
            head += "Connection: close\r\n"
            self.closing = True
        elif req["keepalive_10"]:
            head += "Connection: keep-alive\r\n"
        self.send(head.encode("latin-1") + b"\r\n" + (b"" if req["method"] == "HEAD" else text))
        if self.closing:
            self.after_close += self.buf
            del self.buf[:]
            self.shutdown_write()

    def fail(self, e):
        srv = self.srv
        self.failed = e.kind
        ev = srv.bump()
        self.last_event = ev
        srv.anomalies.append({"event": ev, "conn": self.id, "kind": e.kind, "detail": e.detail,
                              "after_requests": self.nreq, "at": e.at,
                              "excerpt": lat(self.buf[max(0, e.at - 40):e.at + 40])})
        msg = ("%s: %s\n" % (e.kind, e.detail)).encode("latin-1", "replace")
        self.send(b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                  b"X-Strict-Error: %s\r\nConnection: close\r\n\r\n" % (len(msg), e.kind.encode()) + msg)
        self.after_close += self.buf
        del self.buf[:]
        self.shutdown_write()

    def send(self, data):
        self.out += data
        self.flush()

    def flush(self):
        while self.out and self.sock is not None:
            try:
                n = self.sock.send(self.out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.out.clear()
                break
            del self.out[:n]
            self.bytes_out += n
        if self.sock is not None:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.out else 0)
            self.srv.sel.modify(self.sock, events, ("data", self))
        if not self.out and self.sock is not None and (self.failed or self.closing) and self.want_shut:
            self._shut()

    want_shut = False

    def shutdown_write(self):
        """Half-close once the answer is out; keep reading until the peer closes (recording it)."""
        self.want_shut = True
        if not self.out:
            self._shut()

    def _shut(self):
        self.want_shut = False
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self, why):
        if self.sock is None:
            return
        self.srv.sel.unregister(self.sock)
        self.sock.close()
        self.sock = None
        self.closed = why
        self.leftover = bytes(self.buf) + bytes(self.after_close)
        self.last_event = self.srv.bump()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--control-port", type=int, required=True)
    a = p.parse_args()
    srv = Server(a.host, a.port, a.control_port)
    print("listening %d %d" % (a.port, a.control_port), flush=True)
    try:
        srv.run()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
