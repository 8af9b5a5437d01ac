#!/usr/bin/python3
"""Open N keep-alive HTTP/1.1 client connections to HOST:PORT, complete one GET on each, then keep them all
open and idle until stdin closes or says "quit". Used by bench/idle-rss.sh.

Prints "READY <n_ok> <n_failed> <seconds>" on stdout once every connection has its response (or failed),
then waits. At most --window connections are connecting/requesting at a time, so the proxy's listen backlog
is never flooded. Non-blocking sockets + selectors; RLIMIT_NOFILE is raised to fit N.

usage: idle-clients.py HOST PORT N [--path /] [--window 200] [--timeout 60]
"""
import argparse
import errno
import resource
import selectors
import socket
import sys
import time


def raise_nofile(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 64
    if soft >= want:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, soft), max(want, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        if hard < want:
            sys.exit("RLIMIT_NOFILE hard limit %d is below %d (run as root or raise it)" % (hard, want))


class Conn:
    __slots__ = ("sock", "out", "buf", "state")

    def __init__(self, sock, req):
        self.sock = sock
        self.out = req
        self.buf = b""
        self.state = "connecting"


def response_complete(buf):
    """True when buf holds one whole response with a Content-Length (or chunked terminator)."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return False
    head = buf[:head_end].decode("latin-1").lower()
    body = len(buf) - head_end - 4
    for line in head.split("\r\n")[1:]:
        k, _, v = line.partition(":")
        if k.strip() == "content-length":
            return body >= int(v.strip())
        if k.strip() == "transfer-encoding" and "chunked" in v:
            return buf.endswith(b"0\r\n\r\n")
    return True  # no body framing: a bodyless status


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("n", type=int)
    ap.add_argument("--path", default="/")
    ap.add_argument("--window", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=60.0)
    a = ap.parse_args()
    raise_nofile(a.n)

    req = ("GET %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: bulkhead-idle-rss\r\n\r\n"
           % (a.path, a.host, a.port)).encode()
    sel = selectors.DefaultSelector()
    idle = []          # completed: kept open, not watched
    failed = 0
    started = 0
    active = 0
    t0 = time.monotonic()

    def start_one():
        nonlocal started, active, failed
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        started += 1
        err = s.connect_ex((a.host, a.port))
        if err not in (0, errno.EINPROGRESS):
            failed += 1
            s.close()
            return
        c = Conn(s, req)
        sel.register(s, selectors.EVENT_WRITE, c)
        active += 1

    def finish(c, ok):
        nonlocal active, failed
        sel.unregister(c.sock)
        active -= 1
        if ok:
            c.buf = b""
            idle.append(c.sock)
        else:
            failed += 1
            c.sock.close()

    while started < a.n or active:
        while started < a.n and active < a.window:
            start_one()
        if time.monotonic() - t0 > a.timeout:
            break
        for key, ev in sel.select(timeout=1.0):
            c = key.data
            try:
                if c.state == "connecting":
                    err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        finish(c, False)
                        continue
                    c.state = "sending"
                if c.state == "sending":
                    n = c.sock.send(c.out)
                    c.out = c.out[n:]
                    if not c.out:
                        c.state = "reading"
                        sel.modify(c.sock, selectors.EVENT_READ, c)
                    continue
                data = c.sock.recv(65536)
                if not data:
                    finish(c, False)
                    continue
                c.buf += data
                if response_complete(c.buf):
                    finish(c, c.buf.startswith(b"HTTP/1.1 200") or c.buf.startswith(b"HTTP/1.0 200"))
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                finish(c, False)
    failed += active  # timed out
    print("READY %d %d %.1f" % (len(idle), failed, time.monotonic() - t0), flush=True)

    # Hold the connections idle until told to stop; count those the server closed meanwhile.
    for line in sys.stdin:
        if line.strip() == "quit":
            break
    closed = 0
    for s in idle:
        try:
            s.setblocking(False)
            if s.recv(1) == b"":
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
        s.close()
    print("DONE closed_by_server=%d" % closed, flush=True)


if __name__ == "__main__":
    main()
