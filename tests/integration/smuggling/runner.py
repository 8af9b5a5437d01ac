#!/usr/bin/python3
"""Runs the request-smuggling corpus through a proxy in front of the strict upstream, and judges it.

One implementation for the integration test (test_smuggling.py, bulkhead only) and the comparison
bench (bench/smuggling.sh: bulkhead, HAProxy, nginx). Standard library only.

A case runs on a fresh client connection: its raw bytes are sent at once, then every response the
proxy sends is read and parsed. The client half-closes only once the proxy can no longer consume more
of what was sent without an event of its own (see Target.settled): a half-close earlier would cut off
requests the proxy has not reached yet. Then the case ends when the proxy closes the connection.

What the strict upstream recorded after the case's mark (requests parsed, anomalies, connection
states) is compared with what the client got:
  UNSAFE     the upstream found an ambiguity or parse error; a pooled (open) upstream connection holds
             a partial request; the upstream parsed a request the client got no answer to (a request
             that exists only under the upstream's framing), or the client got an answer to a request
             of another case; a check on what was forwarded failed (Host, target, body, ...).
  refused    the last response is the proxy's own 4xx/5xx; the upstream parsed only the requests
             answered before it.
  forwarded  every response came from the upstream and matches, in order, what it parsed ("as 1.0": the
             proxy forwarded an HTTP/1.0 request line, a deviation the upstream records: RFC 9110 2.5
             wants an intermediary's own version; a failure under bulkhead's rules).
  closed     the proxy closed the connection without any response (nothing complete reached the upstream).
  timeout    the proxy did not close the connection within the bound after the half-close.
"""
import argparse
import json
import os
import select
import socket
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON = "/usr/bin/python3"
STRICT_UPSTREAM_PY = os.path.join(HERE, "strict_upstream.py")
CLIENT_IP = "127.0.0.1"

# A refusal is one of these unless the case says otherwise.
REFUSAL_STATUSES = frozenset({400, 413, 414, 431, 501, 505})


def lat(s):
    """JSON strings from the strict upstream back to bytes (latin-1: one character per byte)."""
    return None if s is None else s.encode("latin-1")


def excerpt(b, n=60):
    if isinstance(b, str):
        b = lat(b)
    b = bytes(b)
    s = repr(b[:n])[2:-1]
    return s + ("..." if len(b) > n else "")


def wait_until(pred, timeout, what, interval=0.01):
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - a poll may fail until the condition holds
            last = e
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.0fs waiting for %s (last error: %r)" % (timeout, what, last))
        time.sleep(interval)


def http_get(port, path, timeout=10.0):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=timeout) as r:
        return r.read()


# ----------------------------------------------------------------------------------------------
# the strict upstream process

class StrictUpstream:
    """strict_upstream.py as a subprocess on 127.0.0.1 (data port and control port)."""

    def __init__(self, port, control_port, log_path, start_timeout=30.0):
        self.port = port
        self.control_port = control_port
        self.addr = "127.0.0.1:%d" % port
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen([PYTHON, STRICT_UPSTREAM_PY, "--port", str(port), "--control-port",
                                      str(control_port)], stdout=self._log, stderr=subprocess.STDOUT)
        try:
            # probe the control port only: a probe of the data port would be a connection it records
            wait_until(lambda: self._alive() and self.state(), start_timeout, "the strict upstream to listen")
        except BaseException:
            self.stop()
            raise

    def _alive(self):
        if self.proc.poll() is not None:
            with open(self.log_path, "rb") as f:
                raise RuntimeError("strict upstream exited: %s" % f.read().decode(errors="replace"))
        return True

    def state(self, since=0):
        return json.loads(http_get(self.control_port, "/state?since=%d" % since))

    def close_all(self):
        return json.loads(http_get(self.control_port, "/close-all"))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# ----------------------------------------------------------------------------------------------
# proxies under test

class Target:
    """A proxy listening on 127.0.0.1:port that routes every path to the strict upstream."""

    strict = False  # bulkhead's own rules (Proxy-Status on refusals) apply

    def __init__(self, name, port):
        self.name = name
        self.port = port

    def settled(self, up_state):
        """True when the proxy has nothing left to do with the bytes it was sent unless a new event
        reaches it: a half-close now cannot cut off anything it would still have forwarded."""
        raise NotImplementedError


class BulkheadTarget(Target):
    """bulkhead with one worker: settled when, after a fence, no exchange waits for an upstream
    connection or answer. The fence is a request on another connection that bulkhead answers itself
    (no Host: 400); once it is answered, the worker has finished every callback that was running
    when it was sent (one worker, one loop), so the pool gauges read afterwards are not a transient
    between two exchanges. An exchange may hold a connection while it waits for body bytes from the
    client: then the upstream holds a partial request on that connection."""

    strict = True

    def __init__(self, name, port, admin_port):
        super().__init__(name, port)
        self.admin_port = admin_port

    def fence(self):
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(b"GET /__smuggling_fence HTTP/1.1\r\n\r\n")
            while s.recv(65536):
                pass

    def pool(self):
        st = json.loads(http_get(self.admin_port, "/stats"))
        tot = {"busy": 0, "connecting": 0, "waiters": 0}
        for u in st.get("upstreams", []):
            tot["busy"] += u["pool"]["busy"]
            tot["connecting"] += u["pool"]["connecting"]
            tot["waiters"] += u["waiters"]
        return tot

    def settled(self, up_state):
        self.fence()
        p = self.pool()
        partial = sum(1 for c in up_state["conns"] if c["open"] and c["buffered"])
        return p["connecting"] == 0 and p["waiters"] == 0 and p["busy"] <= partial


class QuietTarget(Target):
    """A proxy whose internal state cannot be observed (HAProxy, nginx): settled after a quiet
    period. For the bench only, never for the test suite."""

    def __init__(self, name, port, quiet=0.25):
        super().__init__(name, port)
        self.quiet = quiet

    def settled(self, up_state):
        time.sleep(self.quiet)
        return True


# ----------------------------------------------------------------------------------------------
# the client side: the response stream

class Response:
    def __init__(self, status, reason, headers, body):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body

    def header(self, name):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    @property
    def seq(self):
        v = self.header("X-Strict-Seq")
        return int(v) if v is not None and v.isdigit() else None

    def brief(self):
        return {"status": self.status, "seq": self.seq, "strict_error": self.header("X-Strict-Error"),
                "proxy_status": self.header("Proxy-Status"), "body": excerpt(self.body, 120)}


class ResponseStream:
    """Parses every response a proxy sends on one connection (1xx interim ones are skipped)."""

    def __init__(self):
        self.buf = b""
        self.responses = []
        self.interim = 0
        self.error = None

    def feed(self, data):
        self.buf += data
        self._parse(False)

    def finish(self):
        self._parse(True)
        if self.buf and not self.error:
            self.error = "truncated response: %s" % excerpt(self.buf)

    def _parse(self, eof):
        while self.buf and not self.error:
            if not self._one(eof):
                return

    def _one(self, eof):
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > 65536:
                self.error = "no end of response head in 64 KiB"
            return False
        lines = self.buf[:end].split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            self.error = "bad status line: %s" % excerpt(lines[0])
            return False
        status = int(parts[1])
        headers = []
        for line in lines[1:]:
            k, sep, v = line.partition(b":")
            if not sep:
                self.error = "bad response field line: %s" % excerpt(line)
                return False
            headers.append((k.decode("latin-1"), v.strip().decode("latin-1")))
        pos = end + 4
        resp = Response(status, parts[2].decode("latin-1") if len(parts) > 2 else "", headers, b"")
        if 100 <= status < 200 and status != 101:
            self.interim += 1
            self.buf = self.buf[pos:]
            return True
        te = (resp.header("Transfer-Encoding") or "").lower()
        cl = resp.header("Content-Length")
        if status in (101, 204, 304):
            body = b""
        elif te:
            if not te.endswith("chunked"):
                self.error = "response Transfer-Encoding %r" % te
                return False
            body = b""
            while True:
                nl = self.buf.find(b"\r\n", pos)
                if nl < 0:
                    return False
                try:
                    size = int(self.buf[pos:nl].split(b";")[0], 16)
                except ValueError:
                    self.error = "bad response chunk size %s" % excerpt(self.buf[pos:nl])
                    return False
                pos = nl + 2
                if size == 0:
                    tend = self.buf.find(b"\r\n\r\n", pos - 2)
                    if tend < 0:
                        return False
                    pos = tend + 4
                    break
                if len(self.buf) < pos + size + 2:
                    return False
                body += self.buf[pos:pos + size]
                pos += size + 2
        elif cl is not None:
            if not cl.isdigit():
                self.error = "response Content-Length %r" % cl
                return False
            if len(self.buf) < pos + int(cl):
                return False
            body = self.buf[pos:pos + int(cl)]
            pos += int(cl)
        else:
            if not eof:
                return False
            body = self.buf[pos:]
            pos = len(self.buf)
        resp.body = body
        self.responses.append(resp)
        self.buf = self.buf[pos:]
        return True


# ----------------------------------------------------------------------------------------------
# running one case

def upstream_dirty(state):
    """Why the upstream's connections are not a clean slate for the next case, or None."""
    for c in state["conns"]:
        if c["socket_open"] and (c["buffered"] or c["failed"] or c["closing"]):
            return "upstream connection %d is not clean" % c["id"]
    return None


def reset(target, up, io_timeout):
    """After a case that left the upstream side dirty: close every upstream connection, then pass
    requests through the proxy until one is answered by the upstream (the proxy has dropped its
    dead pooled connections). Returns the upstream's event mark after that."""
    up.close_all()
    last = None
    for _ in range(10):
        try:
            with socket.create_connection(("127.0.0.1", target.port), timeout=io_timeout) as s:
                s.sendall(b"GET /__reset HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                stream = ResponseStream()
                while True:
                    d = s.recv(65536)
                    if not d:
                        break
                    stream.feed(d)
                stream.finish()
            if stream.responses and stream.responses[0].seq is not None:
                break
            last = [r.status for r in stream.responses]
        except OSError as e:
            last = e
    else:
        raise AssertionError("%s does not forward a plain GET after a reset: %r" % (target.name, last))
    st = up.state(0)
    why = upstream_dirty(st)
    if why:
        raise AssertionError("upstream still dirty after a reset: %s" % why)
    return st["event"]


def run_case(case, target, up, io_timeout=30.0):
    """Sends one case through target and returns its result dict (see judge)."""
    st = up.state(0)
    dirty = upstream_dirty(st)
    mark = reset(target, up, io_timeout) if dirty else st["event"]
    deadline = time.monotonic() + io_timeout
    stream = ResponseStream()
    end = None
    half_closed = False
    send_error = None
    polls = 0
    sock = socket.create_connection(("127.0.0.1", target.port), timeout=io_timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.sendall(case.raw)
        except OSError as e:  # the proxy may refuse and close before reading everything
            send_error = e.__class__.__name__
        pause = 0.001
        while end is None:
            readable = select.select([sock], [], [], pause)[0]
            if readable:
                try:
                    d = sock.recv(65536)
                except ConnectionResetError:
                    end = "reset"
                    break
                if not d:
                    end = "closed"
                    break
                stream.feed(d)
                pause = 0.001
                continue
            if time.monotonic() > deadline:
                end = "timeout"
                break
            pause = min(pause * 2, 0.05)
            if half_closed or send_error:
                continue
            polls += 1
            u1 = up.state(mark)
            if not target.settled(u1):
                continue
            if up.state(mark)["event"] != u1["event"] or select.select([sock], [], [], 0)[0]:
                continue
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            half_closed = True
    finally:
        sock.close()
    stream.finish()
    final = up.state(mark)
    res = judge(case, stream, end, half_closed, final)
    if dirty:
        res["notes"].append("before this case: %s (left by the previous one); reset" % dirty)
    res.update({"target": target.name, "send_error": send_error, "polls": polls})
    return res


def _fwd_checks(case, reqs):
    """Failed checks of case.checks on the first forwarded request (and case.forwarded_checks on
    the k-th)."""
    out = []
    for idx, checks in [(0, case.checks)] + list(case.forwarded_checks.items()):
        if not checks or idx >= len(reqs):
            continue
        r = reqs[idx]
        hdr = {}
        for k, v in r["headers"]:
            hdr.setdefault(k.lower(), []).append(v)
        for kind, want in checks.items():
            if kind == "target":
                got = r["target"]
            elif kind == "method":
                got = r["method"]
            elif kind == "host":
                got = ",".join(hdr.get("host", []))
            elif kind == "body":
                got = lat(r["body"])
            elif kind == "xff_last":
                vals = [t.strip() for v in hdr.get("x-forwarded-for", []) for t in v.split(",")]
                got = vals[-1] if vals else None
            else:
                raise ValueError("unknown check %r in case %s" % (kind, case.name))
            ok = got.lower() == want.lower() if kind == "host" and got is not None else got == want
            if not ok:
                out.append("forwarded request %d: %s is %r, expected %r" % (idx + 1, kind, got, want))
    return out


def judge(case, stream, end, half_closed, final):
    reqs = final["requests"]
    up_seqs = [r["seq"] for r in reqs]
    got = [r.seq for r in stream.responses if r.seq is not None]
    unsafe, notes = [], []
    for a in final["anomalies"]:
        unsafe.append("upstream %s: %s" % (a["kind"], a["detail"]))
    for c in final["conns"]:
        if c["open"] and c["buffered"]:
            unsafe.append("pooled upstream connection %d holds a partial request: %s"
                          % (c["id"], excerpt(c["buffered"])))
        if c["closing"] and not c["failed"] and c["after_close"]:
            unsafe.append("bytes after the upstream's Connection: close on connection %d: %s"
                          % (c["id"], excerpt(c["after_close"])))
        if c["closed"] and not c["failed"] and not c["closing"] and c["leftover"]:
            notes.append("upstream connection %d closed holding %d bytes of an unfinished request"
                         % (c["id"], len(c["leftover"])))
    if got != up_seqs:
        missing = [r for r in reqs if r["seq"] not in got]
        foreign = [s for s in got if s not in up_seqs]
        for r in missing:
            unsafe.append("upstream parsed %s %s (seq %d) and the client got no answer to it"
                          % (r["method"], r["target"], r["seq"]))
        for s in foreign:
            unsafe.append("client got the answer to another request (seq %d)" % s)
        if not missing and not foreign:
            unsafe.append("answers out of order: %r vs %r" % (got, up_seqs))
    unsafe += _fwd_checks(case, reqs)
    deviations = ["upstream got %s %s: %s" % (r["method"], r["target"], d) for r in reqs for d in r["deviations"]]
    notes += deviations
    if stream.error:
        notes.append("response stream: %s" % stream.error)
    finals = stream.responses
    res = {"case": case.name, "category": case.category, "bug": case.bug, "expect": case.expect,
           "end": end, "half_closed": half_closed, "closed_by_proxy": end in ("closed", "reset") and not half_closed,
           "responses": [r.brief() for r in finals], "interim": stream.interim,
           "upstream_requests": [{"seq": r["seq"], "conn": r["conn"], "method": r["method"],
                                  "target": r["target"], "body_len": r["body_len"],
                                  "headers": r["headers"]} for r in reqs],
           "anomalies": final["anomalies"], "notes": notes, "deviations": deviations, "status": None,
           "forwarded": len(got)}
    if unsafe:
        res.update(outcome="unsafe", reasons=unsafe)
    elif not finals:
        res.update(outcome="timeout" if end == "timeout" else "closed", reasons=[])
    elif finals[-1].seq is None:
        res.update(outcome="refused", status=finals[-1].status, reasons=[],
                   proxy_status=finals[-1].header("Proxy-Status"))
        local = [r.status for r in finals[:-1] if r.seq is None]
        if local:
            notes.append("earlier answers of the proxy itself: %r" % local)
    else:
        res.update(outcome="forwarded", reasons=[])
        local = [r.status for r in finals if r.seq is None]
        if local:
            notes.append("answers of the proxy itself between forwarded ones: %r" % local)
    if end == "timeout":
        notes.append("the proxy did not close the connection within the bound")
    return res


def evaluate(case, res, strict=True):
    """Whether a result meets the case's expectation. strict: bulkhead's rules too (a refusal carries
    Proxy-Status and closes the connection). Returns a list of failures (empty: pass)."""
    out = []
    o = res["outcome"]
    if o == "unsafe":
        return ["UNSAFE: " + "; ".join(res["reasons"])]
    if o == "refused":
        if case.expect == "forward":
            out.append("refused with %d a request that must be forwarded" % res["status"])
        if res["status"] not in case.refuse_status:
            out.append("refused with %d, expected one of %s" % (res["status"], sorted(case.refuse_status)))
        if strict and not res.get("proxy_status"):
            out.append("refusal without Proxy-Status")
        if strict and case.close_on_refuse and not res["closed_by_proxy"]:
            out.append("connection not closed after the refusal")
    elif o == "forwarded":
        if case.expect == "refuse":
            out.append("forwarded (%d request(s)); must be refused" % res["forwarded"])
        if case.forwarded is not None and res["forwarded"] != case.forwarded:
            out.append("forwarded %d request(s), expected %d" % (res["forwarded"], case.forwarded))
    else:
        out.append("%s without any response" % o)
    if strict and res["deviations"]:
        out += res["deviations"]
    if res["end"] == "timeout":
        out.append("the connection was still open at the bound%s"
                   % (" after the half-close" if res["half_closed"] else ""))
    return out


def label(res):
    """Short cell text for the tables: refused(400), forwarded(2), UNSAFE(reason), closed, timeout."""
    o = res["outcome"]
    if o == "refused":
        before = " after %d fwd" % res["forwarded"] if res["forwarded"] else ""
        return "refused(%d%s)" % (res["status"], before)
    if o == "forwarded":
        return "forwarded(%d)%s" % (res["forwarded"], " as 1.0" if res["deviations"] else "")
    if o == "unsafe":
        return "UNSAFE(%s)" % short_reason(res["reasons"][0])
    return o


def short_reason(r):
    if r.startswith("upstream ") and ":" in r:
        return r[len("upstream "):r.index(":")]
    if "client got no answer" in r:
        return "smuggled request"
    if "partial request" in r:
        return "partial request left"
    if r.startswith("forwarded request"):
        return r.split(": ", 1)[1].split(" is ")[0] + " mismatch"
    if "another request" in r:
        return "response desync"
    return r[:30]


# ----------------------------------------------------------------------------------------------
# tables

def format_table(cases, results, strict_names=()):
    """results: {target name: {case name: result}}. A "!" marks an outcome that does not meet the
    case's expectation (strict rules for the targets in strict_names)."""
    names = list(results)
    rows = []
    for c in cases:
        row = [c.name, c.category, c.expect + ("" if c.bug is None else " [fix %d]" % c.bug)]
        for n in names:
            r = results[n].get(c.name)
            if r is None:
                row.append("-")
                continue
            fails = evaluate(c, r, strict=n in strict_names)
            row.append(label(r) + (" !" if fails and r["outcome"] != "unsafe" else ""))
        rows.append(row)
    head = ["case", "category", "expect"] + names
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = "  ".join("%%-%ds" % w for w in widths)
    lines = [fmt % tuple(head), fmt % tuple("-" * w for w in widths)]
    lines += [fmt % tuple(r) for r in rows]
    return "\n".join(x.rstrip() for x in lines)


def summarize(cases, results, strict_names=()):
    """Counts per category and in total: refused / forwarded / UNSAFE / other, and how many cases
    miss their expectation."""
    cats = []
    for c in cases:
        if c.category not in cats:
            cats.append(c.category)
    lines = []
    head = "%-20s %5s" % ("category", "cases")
    for n in results:
        head += "  %-34s" % (n + " ref/fwd/UNSAFE/other (miss)")
    lines.append(head)
    for cat in cats + ["TOTAL"]:
        cs = [c for c in cases if cat in ("TOTAL", c.category)]
        line = "%-20s %5d" % (cat, len(cs))
        for n in results:
            k = {"refused": 0, "forwarded": 0, "unsafe": 0, "other": 0}
            miss = 0
            for c in cs:
                r = results[n].get(c.name)
                if r is None:
                    continue
                k[r["outcome"] if r["outcome"] in k else "other"] += 1
                if evaluate(c, r, strict=n in strict_names):
                    miss += 1
            line += "  %-34s" % ("%d/%d/%d/%d (%d)" % (k["refused"], k["forwarded"], k["unsafe"], k["other"], miss))
        lines.append(line)
    return "\n".join(x.rstrip() for x in lines)


# ----------------------------------------------------------------------------------------------
# command line (bench/smuggling.sh)

def main(argv=None):
    import corpus
    p = argparse.ArgumentParser(description="Run the smuggling corpus through proxies in front of a "
                                            "running strict upstream and print the comparison table.")
    p.add_argument("--upstream-control", type=int, help="control port of a running strict_upstream.py")
    p.add_argument("--target", action="append", default=[],
                   help="NAME:PORT (a quiet-period proxy) or NAME:PORT:ADMIN_PORT (bulkhead)")
    p.add_argument("--quiet", type=float, default=0.25, help="quiet period for non-bulkhead proxies (s)")
    p.add_argument("--only", help="run only the cases whose name contains this")
    p.add_argument("--json", help="write all results to this file")
    p.add_argument("--from-json", help="print the tables from results written by --json or the test")
    a = p.parse_args(argv)
    cases = [c for c in corpus.CASES if not a.only or a.only in c.name]
    strict = []
    if a.from_json:
        with open(a.from_json) as f:
            results = json.load(f)
        strict = [n for n in results if n.startswith("bulkhead")]
    else:
        up = _RunningUpstream(a.upstream_control)
        results = {}
        for spec in a.target:
            parts = spec.split(":")
            if len(parts) == 3:
                t = BulkheadTarget(parts[0], int(parts[1]), int(parts[2]))
                strict.append(t.name)
            else:
                t = QuietTarget(parts[0], int(parts[1]), a.quiet)
            results[t.name] = {}
            for c in cases:
                results[t.name][c.name] = run_case(c, t, up)
                print("%-10s %-40s %s" % (t.name, c.name, label(results[t.name][c.name])), file=sys.stderr)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(results, f, indent=1)
    print(format_table(cases, results, strict))
    print()
    print(summarize(cases, results, strict))
    return 0


class _RunningUpstream(StrictUpstream):
    """A strict upstream started elsewhere (by the bench script): only its control port."""

    def __init__(self, control_port):  # noqa: super().__init__ not called: nothing to start
        self.control_port = control_port

    def stop(self):
        pass


if __name__ == "__main__":
    sys.exit(main())
