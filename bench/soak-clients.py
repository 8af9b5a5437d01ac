#!/usr/bin/python3
"""Slow clients and large bodies for bench/soak.sh (standard library only).

usage: bench/soak-clients.py HOST PORT COUNTS_FILE [--kinds K,K,...]
Runs until SIGTERM/SIGINT, one thread per client below, each in a loop (a pause between rounds keeps
the load light). Every response is checked; COUNTS_FILE gets a JSON object
{"ok": {kind: n}, "errors": {"kind:reason": n}} every 2 s and at exit (written to a temp file, renamed).
Kinds (all by default):
  slow-head   trickles a GET head one byte every 40 ms (about 2.5 s per head, under header_timeout),
              then reads the answer; 3 requests per keep-alive connection
  slowloris   every 20 s: half a head, then nothing: bulkhead must answer 408 after limits.header_timeout
  slow-read   GET /big/bytes?n=8MiB read 16 KiB every 10 ms (about 5 s), length checked
  download    GET /big/bytes?n=4MiB at full speed, length checked
  upload      POST /big/sink with 8 MiB (Content-Length, then chunked on the next round); the upstream's
              {"len"} must be 8 MiB
  slow-upload POST /big/sink with 1 MiB sent in 64 KiB pieces every 100 ms
"""
import json
import os
import signal
import socket
import sys
import threading
import time

MIB = 1024 * 1024
PIECE = bytes(range(256)) * 256  # 64 KiB
STOP = threading.Event()
LOCK = threading.Lock()
OK = {}
ERRORS = {}


def count(kind, reason=None):
    with LOCK:
        if reason is None:
            OK[kind] = OK.get(kind, 0) + 1
        else:
            key = "%s:%s" % (kind, reason)
            ERRORS[key] = ERRORS.get(key, 0) + 1


class Conn:
    """One client connection with a small buffered reader."""

    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=30)
        self.buf = b""

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def fill(self, n=65536):
        d = self.sock.recv(n)
        if not d:
            raise EOFError("closed")
        self.buf += d

    def head(self):
        """(status, {lower-case name: value}) of the next response head."""
        while b"\r\n\r\n" not in self.buf:
            self.fill()
        raw, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        hdrs = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        return status, hdrs

    def body(self, hdrs, keep=True, slow=None):
        """Reads the body of a response with Content-Length or chunked framing; returns its bytes (or
        only its length when keep is False). slow=(piece, seconds) reads piece bytes per pause."""
        if "chunked" in hdrs.get("transfer-encoding", ""):
            out = b""
            while True:
                while b"\r\n" not in self.buf:
                    self.fill()
                line, self.buf = self.buf.split(b"\r\n", 1)
                size = int(line.split(b";")[0], 16)
                while len(self.buf) < size + 2:
                    self.fill()
                out += self.buf[:size]
                self.buf = self.buf[size + 2:]
                if size == 0:
                    return out if keep else len(out)
        left = int(hdrs.get("content-length", "0"))
        got = 0
        out = []
        while left > 0:
            if not self.buf:
                self.fill(slow[0] if slow else 262144)
                if slow:
                    time.sleep(slow[1])
            take = self.buf[:left]
            self.buf = self.buf[len(take):]
            left -= len(take)
            got += len(take)
            if keep:
                out.append(take)
        return b"".join(out) if keep else got


def request(host, path, method="GET", extra=""):
    return ("%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: soak-clients\r\n%s\r\n"
            % (method, path, host, extra)).encode()


def wait(seconds):
    return STOP.wait(seconds)


def run_slow_head(host, port):
    while not STOP.is_set():
        c = Conn(host, port)
        try:
            for _ in range(3):
                for b in request(host, "/big/echo-head"):
                    c.sock.sendall(bytes([b]))
                    if wait(0.04):
                        return
                status, hdrs = c.head()
                c.body(hdrs)
                count("slow-head", None if status == 200 else "status-%d" % status)
        finally:
            c.close()
        wait(0.5)


def run_slowloris(host, port):
    while not wait(20):
        c = Conn(host, port)
        try:
            c.sock.sendall(request(host, "/big/echo-head")[:20])
            status, hdrs = c.head()  # header_timeout later
            count("slowloris", None if status == 408 else "status-%d" % status)
        finally:
            c.close()


def run_download(host, port, kind, n, slow):
    c = None
    while not STOP.is_set():
        try:
            if c is None:
                c = Conn(host, port)
            c.sock.sendall(request(host, "/big/bytes?n=%d" % n))
            status, hdrs = c.head()
            got = c.body(hdrs, keep=False, slow=slow)
            if status != 200:
                count(kind, "status-%d" % status)
            elif got != n:
                count(kind, "short-body")
            else:
                count(kind)
            if hdrs.get("connection", "").lower() == "close":
                c.close()
                c = None
        except Exception:
            if c is not None:
                c.close()
                c = None
            raise
        wait(0.5)


def run_upload(host, port, kind, n, piece_pause):
    c = None
    chunked = False
    while not STOP.is_set():
        try:
            if c is None:
                c = Conn(host, port)
            framing = "Transfer-Encoding: chunked\r\n" if chunked else "Content-Length: %d\r\n" % n
            c.sock.sendall(request(host, "/big/sink", "POST", framing))
            sent = 0
            while sent < n:
                piece = PIECE[:min(len(PIECE), n - sent)]
                c.sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
                if piece_pause and wait(piece_pause):
                    return
            if chunked:
                c.sock.sendall(b"0\r\n\r\n")
            status, hdrs = c.head()
            data = c.body(hdrs)
            if status != 200:
                count(kind, "status-%d" % status)
            elif json.loads(data).get("len") != n:
                count(kind, "wrong-length")
            else:
                count(kind)
            if kind == "upload":
                chunked = not chunked
        except Exception:
            if c is not None:
                c.close()
                c = None
            raise
        wait(0.5)


def guard(kind, fn, *args):
    """Runs fn in a loop; an exception counts as an error of its type and the client starts over."""
    while not STOP.is_set():
        try:
            fn(*args)
        except Exception as e:  # a reset, a timeout, a closed connection: counted, then again
            if STOP.is_set():
                return
            count(kind, type(e).__name__)
            wait(1)


def dump(path):
    with LOCK:
        data = json.dumps({"ok": OK, "errors": ERRORS}, sort_keys=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(data + "\n")
    os.replace(tmp, path)


def main():
    host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    kinds = "slow-head,slowloris,slow-read,download,upload,slow-upload"
    if len(sys.argv) > 5 and sys.argv[4] == "--kinds":
        kinds = sys.argv[5]
    table = {
        "slow-head": [(run_slow_head, host, port)] * 2,
        "slowloris": [(run_slowloris, host, port)],
        "slow-read": [(run_download, host, port, "slow-read", 8 * MIB, (16384, 0.01))] * 2,
        "download": [(run_download, host, port, "download", 4 * MIB, None)],
        "upload": [(run_upload, host, port, "upload", 8 * MIB, 0)],
        "slow-upload": [(run_upload, host, port, "slow-upload", MIB, 0.1)],
    }
    signal.signal(signal.SIGTERM, lambda *a: STOP.set())
    signal.signal(signal.SIGINT, lambda *a: STOP.set())
    threads = []
    for kind in kinds.split(","):
        for spec in table[kind]:
            t = threading.Thread(target=guard, args=(kind,) + spec, daemon=True)
            t.start()
            threads.append(t)
    while not STOP.wait(2):
        dump(path)
    for t in threads:
        t.join(5)
    dump(path)


if __name__ == "__main__":
    main()
