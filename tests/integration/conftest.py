"""Fixtures for the bulkhead integration suite: the test upstream, the proxy under test, raw HTTP helpers.

Waits are bounded polls of a condition (wait_until), never fixed sleeps. Every process and port is per
test, so tests run in parallel (pytest-xdist) without sharing anything.
"""
import asyncio
import collections
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BULKHEAD_BIN = os.environ.get("BULKHEAD_BIN", os.path.join(REPO, "build", "proxy", "bulkhead"))
if not os.path.isabs(BULKHEAD_BIN):
    BULKHEAD_BIN = os.path.join(REPO, BULKHEAD_BIN) if os.path.exists(
        os.path.join(REPO, BULKHEAD_BIN)) else os.path.abspath(BULKHEAD_BIN)
PYTHON = "/usr/bin/python3"
UPSTREAM_PY = os.path.join(HERE, "upstream.py")

# Generous bounds: under sanitizers everything is several times slower. These are upper bounds on
# polls, never sleeps, so a healthy run does not wait for them.
START_TIMEOUT = float(os.environ.get("BH_TEST_START_TIMEOUT", "30"))
STOP_TIMEOUT = float(os.environ.get("BH_TEST_STOP_TIMEOUT", "30"))
IO_TIMEOUT = float(os.environ.get("BH_TEST_IO_TIMEOUT", "30"))

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "WARNING: ThreadSanitizer", "ERROR: ThreadSanitizer", "ERROR: MemorySanitizer")


# ----------------------------------------------------------------------------------------------
# small utilities

def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_PORT_RNG = random.Random()
_RECENT_PORTS = collections.deque(maxlen=4096)  # handed out by this process, maybe not bound yet


def free_port():
    """A port that is free on 127.0.0.1 now, picked at random below the ephemeral range: a port from
    the ephemeral range (what binding port 0 gives) can be taken by any outgoing connection before
    the process it is meant for binds it, and the suites run in parallel with thousands of
    connections. A port handed out recently is not handed out again (the callers of one test bind
    theirs only later). The normal and ASan suites run at the same time: each picks from its own half
    of the range (BULKHEAD_BUILD), so one suite's listener never lands on the other's port."""
    low = _ephemeral_low()
    hi, lo = min(low, 32768), max(1024, min(low, 32768) - 12000)
    build = os.environ.get("BULKHEAD_BUILD")
    if build in ("normal", "asan"):
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if build == "normal" else (mid, hi)
    for _ in range(1000):
        port = _PORT_RNG.randrange(lo, hi)
        if port in _RECENT_PORTS:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _RECENT_PORTS.append(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc, timeout=STOP_TIMEOUT):
    """SIGTERM, a bounded wait, then SIGKILL: a helper process never outlives its test."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_until(pred, timeout=START_TIMEOUT, interval=0.01, what="condition"):
    """Polls pred() until it returns a truthy value (returned) or the bound passes (AssertionError)."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - a poll may fail until the condition holds
            last_exc = e
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.0fs waiting for %s (last error: %r)"
                                 % (timeout, what, last_exc))
        time.sleep(interval)


def can_connect(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def proxy_status_error(resp):
    """The error= parameter of a `Proxy-Status: bulkhead; error=...` header, or None."""
    value = header_of(resp, "Proxy-Status")
    if value is None:
        return None
    for member in value.split(","):
        parts = [p.strip() for p in member.split(";")]
        if parts and parts[0] == "bulkhead":
            m = re.search(r";\s*error=([A-Za-z0-9_\-]+)", member)
            return m.group(1) if m else ""
    return None


def header_of(resp, name):
    """Header value of a requests.Response or a RawResponse."""
    # Duck-typed: tests/integration/sql loads this file a second time under another module name
    # (both folders have a conftest.py), so its RawResponse is a different class.
    if callable(getattr(resp, "header", None)):
        return resp.header(name)
    return resp.headers.get(name)


# ----------------------------------------------------------------------------------------------
# YAML (just enough to write the config dicts the tests build; no PyYAML needed)

_PLAIN = re.compile(r"^[A-Za-z0-9_./][A-Za-z0-9_./:\-*]*$")


def yaml_scalar(v, flow=False):
    if flow and isinstance(v, str) and (":" in v or "," in v):
        return json.dumps(v)
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    if isinstance(v, (int, float)):
        return str(v)
    s = str(v)
    if _PLAIN.match(s) and not s.endswith(":") and s not in ("true", "false", "null", "yes", "no", "~"):
        return s
    return json.dumps(s)  # a JSON string is a valid YAML double-quoted scalar


def to_yaml(obj, indent=0):
    pad = "  " * indent
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, dict) and v:
                out.append("%s%s:" % (pad, yaml_scalar(k)))
                out.append(to_yaml(v, indent + 1))
            elif isinstance(v, list) and v and any(isinstance(x, (dict, list)) for x in v):
                out.append("%s%s:" % (pad, yaml_scalar(k)))
                out.append(to_yaml(v, indent + 1))
            elif isinstance(v, list):
                out.append("%s%s: [%s]" % (pad, yaml_scalar(k), ", ".join(yaml_scalar(x, flow=True) for x in v)))
            elif isinstance(v, dict):
                out.append("%s%s: {}" % (pad, yaml_scalar(k)))
            else:
                out.append("%s%s: %s" % (pad, yaml_scalar(k), yaml_scalar(v)))
    elif isinstance(obj, list):
        for item in obj:
            if isinstance(item, dict):
                inner = to_yaml(item, indent + 1).split("\n")
                out.append("%s- %s" % (pad, inner[0].lstrip()))
                out.extend(inner[1:])
            else:
                out.append("%s- %s" % (pad, yaml_scalar(item)))
    else:
        out.append(pad + yaml_scalar(obj))
    return "\n".join(line for line in out if line != "")


# ----------------------------------------------------------------------------------------------
# the test upstream

class Upstream:
    def __init__(self, tmp_path, name="up", keepalive_timeout=None, announce_keepalive=None):
        self.name = name
        self.port = free_port()
        self.control_port = free_port()
        self.addr = "127.0.0.1:%d" % self.port
        self.url = "http://127.0.0.1:%d" % self.port
        self.control_url = "http://127.0.0.1:%d" % self.control_port
        args = [PYTHON, UPSTREAM_PY, "--port", str(self.port), "--control-port", str(self.control_port),
                "--name", name]
        if keepalive_timeout is not None:
            args += ["--keepalive-timeout", str(keepalive_timeout)]
        if announce_keepalive is not None:
            args += ["--announce-keepalive", str(announce_keepalive)]
        self.log_path = tmp_path / ("upstream-%s-%d.log" % (name, self.port))
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            # the data port is bound before the control port, and probing the data port would count
            # as a connection in the statistics: probe the control port only
            wait_until(lambda: self._check_alive() and can_connect(self.control_port) and
                       self._is_ours(), what="upstream %s to listen" % name)
        except BaseException:
            self.stop()
            raise

    def _is_ours(self):
        """The control port answers as this upstream does (not some other process that got the port
        between free_port() and the bind), and the process is still running after it answered."""
        try:
            st = json.loads(self.control("/stats"))
        except (OSError, ValueError):
            return False
        return "requests" in st and self._check_alive()

    def _check_alive(self):
        if self.proc.poll() is not None:
            raise RuntimeError("upstream exited early: %s" % self.log_path.read_text())
        return True

    def control(self, path):
        with urllib.request.urlopen(self.control_url + path, timeout=IO_TIMEOUT) as r:
            return r.read()

    def stats(self):
        return json.loads(self.control("/stats"))

    def release(self, hold_id="*"):
        return self.control("/release?id=%s" % hold_id)

    def set_mode(self, mode="ok", count=None, retry_after=None, delay_ms=None):
        """Failure mode of the data port (every path but /healthz): ok, fail-NNN, reset, close, hang,
        reset-after-head; count=K: for the next K requests only; delay_ms=N: each answer of the mode
        comes N ms after the request (the /log entry's mono_answer says when it went out)."""
        body = {"mode": mode, "count": count, "retry_after": retry_after, "delay_ms": delay_ms}
        req = urllib.request.Request(self.control_url + "/control", data=json.dumps(body).encode(),
                                     method="POST")
        with urllib.request.urlopen(req, timeout=IO_TIMEOUT) as r:
            return json.loads(r.read())

    def set_health(self, health):
        """What /healthz answers: a status (200, 503, ...) or "hang"."""
        req = urllib.request.Request(self.control_url + "/control",
                                     data=json.dumps({"health": str(health)}).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=IO_TIMEOUT) as r:
            return json.loads(r.read())

    def log(self):
        """The requests received on the data port, oldest first: dicts with method, path, target,
        headers ([name, value] pairs), conn, req, t, mono (time.monotonic() when the head arrived) and
        mono_answer (when a set_mode answer was about to be written, else None)."""
        return json.loads(self.control("/log"))

    def count(self, path=None, method=None, stats=None):
        """Requests received on the data port, optionally only for one path and/or method."""
        st = stats if stats is not None else self.stats()
        n = 0
        for key, v in st["requests"].items():
            m, _, p = key.partition(" ")
            if (path is None or p == path) and (method is None or m == method):
                n += v
        return n

    def traffic(self, stats=None):
        """Requests received on the data port, health checks excluded (one snapshot of the stats)."""
        st = stats if stats is not None else self.stats()
        return self.count(stats=st) - self.count("/healthz", stats=st)

    def stop(self):
        stop_process(self.proc)
        self._log.close()


@pytest.fixture
def upstream_factory(tmp_path):
    started = []

    def make(name=None, keepalive_timeout=None, announce_keepalive=None):
        u = Upstream(tmp_path, name or "up%d" % (len(started) + 1), keepalive_timeout,
                     announce_keepalive)
        started.append(u)
        return u

    yield make
    for u in started:
        u.stop()


@pytest.fixture
def upstream(upstream_factory):
    return upstream_factory("up")


# ----------------------------------------------------------------------------------------------
# the proxy under test

def base_config(port, admin_port, upstreams, routes, **sections):
    conf = {
        "workers": 1,
        "listeners": [{"name": "main", "address": "127.0.0.1:%d" % port}],
        "admin": {"address": "127.0.0.1:%d" % admin_port},
        "log": {"level": "info", "access": "off"},
        "shutdown": {"drain_timeout": "5s"},
        "upstreams": upstreams,
        "routes": routes,
    }
    for k, v in sections.items():
        if isinstance(v, dict) and isinstance(conf.get(k), dict):
            merged = dict(conf[k])
            merged.update(v)
            conf[k] = merged
        else:
            conf[k] = v
    return conf


class Bulkhead:
    def __init__(self, tmp_path, conf, env=None, port=None, admin_port=None, wait=True, pipe_stdout=False,
                 pipe_stderr=False):
        self.tmp_path = tmp_path
        self.conf = conf
        self.port = port
        self.admin_port = admin_port
        self.url = "http://127.0.0.1:%d" % port
        self.admin_url = "http://127.0.0.1:%d" % admin_port
        self.config_path = tmp_path / ("bulkhead-%d.yaml" % port)
        self.config_path.write_text(to_yaml(conf) + "\n")
        self.stdout_path = tmp_path / ("bulkhead-%d.stdout" % port)
        self.stderr_path = tmp_path / ("bulkhead-%d.stderr" % port)
        full_env = dict(os.environ)
        full_env.update(env or {})
        if not os.path.exists(BULKHEAD_BIN):
            pytest.fail("bulkhead binary not found at %s (set BULKHEAD_BIN)" % BULKHEAD_BIN)
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            # pipe_stdout: stdout is a pipe that the test reads (self.proc.stdout), or does not
            self.proc = subprocess.Popen([BULKHEAD_BIN, "-c", str(self.config_path)],
                                         stdout=subprocess.PIPE if pipe_stdout else out,
                                         stderr=subprocess.PIPE if pipe_stderr else err, env=full_env)
        self.stderr_reader = None  # pipe_stderr: read_stderr() starts it; until then nobody reads
        self.pid = self.proc.pid
        self.returncode = None
        if wait:
            try:
                wait_until(self._ready, what="bulkhead to accept on %d" % port)
            except BaseException:
                self.kill()
                raise

    def _ready(self):
        if self.proc.poll() is not None:
            raise AssertionError("bulkhead exited with %s before accepting; stderr:\n%s"
                                 % (self.proc.returncode, self.stderr_text()))
        # The admin listener starts after the workers' listeners are bound: once it accepts, one
        # probe of the proxy port suffices (tests that count accepted connections rely on one).
        return can_connect(self.admin_port) and can_connect(self.port)

    def read_stderr(self):
        """With pipe_stderr: from now on a thread reads stderr into the file stderr_text() reads."""
        def pump():
            with open(self.stderr_path, "ab") as f:
                for line in self.proc.stderr:
                    f.write(line)
                    f.flush()
        self.stderr_reader = threading.Thread(target=pump, daemon=True)
        self.stderr_reader.start()

    def stderr_text(self):
        if self.stderr_reader is not None and self.proc.poll() is not None:
            self.stderr_reader.join(IO_TIMEOUT)  # the process is gone: read to its EOF first
        return self.stderr_path.read_text(errors="replace")

    def stdout_text(self):
        return self.stdout_path.read_text(errors="replace")

    def proc_status(self, field):
        """A kB field of /proc/<pid>/status (VmRSS, VmHWM), in bytes."""
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(field)

    def rss(self):
        return self.proc_status("VmRSS")

    def hwm(self):
        return self.proc_status("VmHWM")

    def stop(self, sig=signal.SIGTERM):
        """Signals a graceful stop and waits (bounded). Returns the exit code."""
        if self.returncode is None:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
                try:
                    self.proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.kill()
                    raise AssertionError("bulkhead did not exit within %.0fs of SIGTERM; stderr:\n%s"
                                         % (STOP_TIMEOUT, self.stderr_text()[-4000:]))
            self.returncode = self.proc.returncode
        return self.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.returncode is None:
            self.returncode = self.proc.returncode

    def check_clean_exit(self):
        rc = self.stop()
        text = self.stderr_text()
        for marker in SANITIZER_MARKERS:
            assert marker not in text, "sanitizer report in bulkhead stderr:\n%s" % text[-8000:]
        assert rc == 0, "bulkhead exited with %s after SIGTERM; stderr:\n%s" % (rc, text[-4000:])


def upstream_entry(*ups, pool=None, timeouts=None):
    entry = {"endpoints": [u if isinstance(u, str) else u.addr for u in ups]}
    if pool:
        entry["pool"] = pool
    if timeouts:
        entry["timeouts"] = timeouts
    return entry


@pytest.fixture
def bulkhead(tmp_path):
    """Factory: bulkhead(upstream, pool=..., timeouts=..., limits=..., ...) or bulkhead(config=dict).

    With an upstream, the config has one upstream "u" with that endpoint and one route "/" to it. Other
    keyword arguments are top-level sections merged into the defaults (workers, limits, routes, ...).
    At teardown: SIGTERM, bounded wait, exit code 0 and no sanitizer report in stderr."""
    started = []

    def make(up=None, pool=None, timeouts=None, config=None, env=None, wait=True, pipe_stdout=False,
             pipe_stderr=False, **sections):
        port, admin_port = free_port(), free_port()
        if config is None:
            upstreams = sections.pop("upstreams", None)
            if upstreams is None:
                upstreams = {"u": upstream_entry(up, pool=pool, timeouts=timeouts)}
            routes = sections.pop("routes", None) or [{"match": {"path_prefix": "/"}, "upstream": "u"}]
            config = base_config(port, admin_port, upstreams, routes, **sections)
        else:
            config = dict(config)
            config.setdefault("listeners", [{"name": "main", "address": "127.0.0.1:%d" % port}])
            config.setdefault("admin", {"address": "127.0.0.1:%d" % admin_port})
            config.setdefault("log", {"level": "info", "access": "off"})
            config.setdefault("workers", 1)
            port = int(config["listeners"][0]["address"].rsplit(":", 1)[1])
            admin_port = int(config["admin"]["address"].rsplit(":", 1)[1])
        bh = Bulkhead(tmp_path, config, env=env, port=port, admin_port=admin_port, wait=wait,
                      pipe_stdout=pipe_stdout, pipe_stderr=pipe_stderr)
        started.append(bh)
        return bh

    yield make
    errors = []
    for bh in started:
        try:
            bh.check_clean_exit()
        except AssertionError as e:
            errors.append(str(e))
    if errors:
        pytest.fail("\n\n".join(errors))


@pytest.fixture
def black_hole():
    """A loopback port whose connects hang: a listener with backlog 0 that never accepts, whose accept
    queue is already full (Linux then drops further SYNs, so the connecting side waits)."""
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    port = lsock.getsockname()[1]
    fillers = []

    def connect_completes(timeout):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(timeout)
        fillers.append(s)
        try:
            s.connect(("127.0.0.1", port))
            return True
        except (socket.timeout, BlockingIOError):
            return False

    # fill the accept queue; a connect that does not complete shows that it is full
    for _ in range(8):
        if not connect_completes(1.0):
            break
    else:
        pytest.skip("could not fill a loopback accept queue: cannot make a deterministic connect timeout")
    yield "127.0.0.1:%d" % port
    for s in fillers:
        s.close()
    lsock.close()


def run_bulkhead(*args, timeout=STOP_TIMEOUT, env=None):
    """Runs the binary to completion (for --check / --version / --help)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([BULKHEAD_BIN] + list(args), capture_output=True, text=True, timeout=timeout,
                          env=full_env)


# ----------------------------------------------------------------------------------------------
# raw HTTP/1.1 over a socket: for malformed input, pipelining, slow clients, exact framing

class RawResponse:
    def __init__(self, version, status, reason, headers, body, raw_head, interim, trailers):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (name, value)
        self.body = body
        self.raw_head = raw_head
        self.interim = interim  # 1xx responses before this one
        self.trailers = trailers

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

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<RawResponse %s %s %r body=%d bytes>" % (self.status, self.reason, self.headers,
                                                          len(self.body))


class PeerClosed(Exception):
    pass


class RawClient:
    """One client connection; reads exact HTTP/1.1 responses, whatever the framing."""

    def __init__(self, port, host="127.0.0.1", timeout=IO_TIMEOUT):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.timeout = timeout

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def request(self, method="GET", target="/", headers=(), body=None, host="localhost"):
        """Sends a well-formed request (Content-Length added for a body) without reading the reply."""
        self.send(build_request(method, target, headers, body, host))

    def _fill(self):
        try:
            data = self.sock.recv(1 << 16)
        except ConnectionResetError:
            data = b""
        if not data:
            raise PeerClosed("connection closed by peer; buffered %r" % self.buf[:200])
        self.buf += data

    def _read_until(self, sep, limit=1 << 20):
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out, self.buf = self.buf[:i], self.buf[i + len(sep):]
                return out
            if len(self.buf) > limit:
                raise AssertionError("no %r within %d bytes" % (sep, limit))
            self._fill()

    def _read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_head(self):
        raw = self._read_until(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        status_s, _, reason = rest.partition(" ")
        headers = []
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers.append((k, v.strip()))
        return version, int(status_s), reason, headers, raw

    def read_response(self, method="GET", body_sink=None):
        """Reads one final response (1xx interim responses are collected in .interim, except 101,
        which is returned). body_sink(bytes) receives the body instead of .body when given."""
        interim = []
        while True:
            version, status, reason, headers, raw = self.read_head()
            if 100 <= status < 200 and status != 101:
                interim.append(RawResponse(version, status, reason, headers, b"", raw, [], []))
                continue
            break
        resp = RawResponse(version, status, reason, headers, b"", raw, interim, [])
        parts = []
        sink = body_sink or parts.append
        te = resp.tokens("transfer-encoding")
        cl = resp.header("content-length")
        if method == "HEAD" or status in (101, 204, 304):
            pass
        elif te and te[-1] == "chunked":
            while True:
                size_line = self._read_until(b"\r\n")
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    while True:
                        t = self._read_until(b"\r\n")
                        if not t:
                            break
                        resp.trailers.append(t.decode("latin-1"))
                    break
                left = size
                while left:
                    if not self.buf:
                        self._fill()
                    piece = self.buf[:left]
                    self.buf = self.buf[len(piece):]
                    left -= len(piece)
                    sink(piece)
                assert self._read_exact(2) == b"\r\n", "bad chunk terminator"
        elif cl is not None:
            left = int(cl)
            while left:
                if not self.buf:
                    self._fill()
                piece = self.buf[:left]
                self.buf = self.buf[len(piece):]
                left -= len(piece)
                sink(piece)
        else:  # delimited by close
            while True:
                try:
                    self._fill()
                except PeerClosed:
                    break
            sink(self.buf)
            self.buf = b""
        resp.body = b"".join(parts)
        return resp

    def wait_closed(self, timeout=IO_TIMEOUT):
        """True when the peer closes (EOF or RST) within the bound with no further bytes; raises if it
        sends more data; False when the bound passes with the connection still open."""
        if self.buf:
            raise AssertionError("unexpected extra bytes before close: %r" % self.buf[:200])
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
        finally:
            self.sock.settimeout(self.timeout)
        if data:
            raise AssertionError("unexpected bytes instead of close: %r" % data[:200])
        return True

    def readable_within(self, timeout):
        """True if bytes (or EOF) arrive within timeout; does not consume them."""
        import select
        if self.buf:
            return True
        r, _, _ = select.select([self.sock], [], [], timeout)
        return bool(r)


def build_request(method="GET", target="/", headers=(), body=None, host="localhost"):
    lines = ["%s %s HTTP/1.1" % (method, target)]
    names = {k.lower() for k, _ in headers}
    if host is not None and "host" not in names:
        lines.append("Host: %s" % host)
    for k, v in headers:
        lines.append("%s: %s" % (k, v))
    if body is not None:
        if isinstance(body, str):
            body = body.encode()
        if "content-length" not in names and "transfer-encoding" not in names:
            lines.append("Content-Length: %d" % len(body))
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return data + (body or b"")


@pytest.fixture
def raw():
    """Factory for RawClient connections, all closed at teardown."""
    clients = []

    def connect(port):
        c = RawClient(port)
        clients.append(c)
        return c

    yield connect
    for c in clients:
        c.close()


def pytest_report_header(config):
    return "bulkhead binary: %s" % BULKHEAD_BIN


# ----------------------------------------------------------------------------------------------
# resilience helpers (tests of issue 3)

# Settings that keep one mechanism out of a test of another: a breaker or an outlier detector that
# never trips within a test (the largest thresholds the config accepts).
NO_BREAKER = {"consecutive_failures": 1000000, "min_requests": 1000000}
NO_OUTLIER = {"consecutive_failures": 1000000}
NO_RETRY = {"attempts": 1}


def resilient_upstream(*ups, **keys):
    """An upstreams.<name> entry: endpoints from Upstream objects or "host:port" strings, and any of
    balance, retry, breaker, outlier, health_check, timeouts, pool, dns_refresh. breaker and outlier
    default to NO_BREAKER / NO_OUTLIER so that a test sees only the mechanism it configures; pass
    breaker=None / outlier=None to get bulkhead's defaults."""
    entry = {"endpoints": [u if isinstance(u, str) else u.addr for u in ups]}
    keys.setdefault("breaker", NO_BREAKER)
    keys.setdefault("outlier", NO_OUTLIER)
    for k, v in keys.items():
        if v is not None:
            entry[k] = v
    return entry


def check_access_timings(e, sql=False):
    """The timing fields of one access log line, as README "Operations > Logs" documents them, for
    every line a test parses: whole milliseconds of one clock, so none is longer than the request
    (total_ms), and the wait for a connection (queue_ms) and the wait for the response head
    (first_byte_ms, from sending) do not overlap. -1 only where documented: queue_ms when no
    connection was needed, first_byte_ms when no response head came. A request that went nowhere
    (attempts 0) has both at -1; an answer relayed from a backend (no error of bulkhead's own, the
    client did not leave) came on a connection, and for HTTP (sql=False) after a head. Returns e."""
    for k in ("queue_ms", "first_byte_ms", "total_ms", "attempts"):
        assert type(e.get(k)) is int, "%s is not an integer: %r" % (k, e)
    total, queue, first = e["total_ms"], e["queue_ms"], e["first_byte_ms"]
    assert total >= 0, e
    assert queue == -1 or 0 <= queue <= total, "queue_ms outside [0, total_ms] and not -1: %r" % e
    assert first == -1 or 0 <= first <= total, "first_byte_ms outside [0, total_ms] and not -1: %r" % e
    if queue >= 0 and first >= 0:
        assert queue + first <= total, "queue_ms + first_byte_ms > total_ms: %r" % e
    if first >= 0:
        assert queue >= 0, "a response head without a connection: %r" % e
    if e["attempts"] == 0:
        assert queue == -1 and first == -1, "timings of a request that went nowhere: %r" % e
    elif e["error"] is None and not e.get("aborted"):
        assert queue >= 0, "an answer relayed from %r without the wait for its connection: %r" % (
            e.get("upstream"), e)
        if not sql:
            assert first >= 0, "an upstream's answer without its first-byte time: %r" % e
    return e


def fetch(port, method="GET", target="/", headers=(), body=None):
    """One request on a fresh client connection. Returns the RawResponse, or None when the connection
    closed (or was reset) before a complete response."""
    with RawClient(port) as c:
        c.request(method, target, headers=headers, body=body)
        try:
            return c.read_response(method)
        except (PeerClosed, ConnectionResetError):
            return None


def status_of(r):
    return None if r is None else r.status


def retry_after_of(r):
    v = r.header("Retry-After")
    assert v is not None and v.strip().isdigit(), "Retry-After %r is not a number of seconds" % v
    return int(v)


# ----------------------------------------------------------------------------------------------
# the admin listener: /stats, and SIGHUP reloads

READINESS_PROBES = 1  # client connections the bulkhead fixture makes to see that it listens


def admin_stats(bh):
    """GET /stats on the admin listener, as a dict."""
    with urllib.request.urlopen(bh.admin_url + "/stats", timeout=IO_TIMEOUT) as r:
        assert r.status == 200
        return json.loads(r.read())


def per_worker(st, key):
    """A /stats per-worker value, in worker id order."""
    return [w[key] for w in sorted(st["workers"], key=lambda w: w["id"])]


def named(items, name):
    """The one entry called name of a /stats list (upstreams, databases, routes)."""
    found = [x for x in items if x["name"] == name]
    assert len(found) == 1, items
    return found[0]


def quiesce(bh, workers=None):
    """Waits until bulkhead has counted the fixture's readiness probe (one connection) and closed
    it, so that a test counts connections from a known state; returns /stats."""
    def quiet():
        st = admin_stats(bh)
        return (sum(per_worker(st, "accepted")) == READINESS_PROBES
                and sum(per_worker(st, "clients")) == 0 and st)
    st = wait_until(quiet, what="the readiness probe's connection to be counted and gone")
    if workers is not None:
        assert sorted(w["id"] for w in st["workers"]) == list(range(workers)), st["workers"]
    return st


def sighup_reload(bh, conf, expect="success"):
    """Writes conf (a dict, or the file's text) over bh's config file, sends SIGHUP and waits until
    the reload is counted; after a success, also until every worker serves new requests with the
    new generation. Returns /stats."""
    before = admin_stats(bh)["reloads"]
    bh.config_path.write_text(conf if isinstance(conf, str) else to_yaml(conf) + "\n")
    bh.proc.send_signal(signal.SIGHUP)
    key = "success" if expect == "success" else "failure"
    wait_until(lambda: admin_stats(bh)["reloads"][key] == before[key] + 1,
               what="the reload to be counted as %s" % key)
    st = admin_stats(bh)
    if expect == "success":
        st = wait_until(lambda: (lambda s: all(w["generation"] == s["generation"]
                                               for w in s["workers"]) and s)(admin_stats(bh)),
                        what="every worker to take generation %d" % st["generation"])
    return st


async def one_request(port, target, timeout, on_sent=None):
    """GET target on a new connection with Connection: close (asyncio): (status, body), or
    ("no response", b"") when the connection closed first. on_sent() runs once the request is out."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        writer.write(build_request("GET", target, headers=[("Connection", "close")]))
        await writer.drain()
        if on_sent is not None:
            on_sent()
        data = await asyncio.wait_for(reader.read(), timeout)  # until bulkhead closes
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if not head:
        return ("no response", b"")
    return (int(head.split(b" ", 2)[1]), body)
