"""Helpers of the TLS tests (issue 11): bulkhead configs with a TLS listener, TLS clients (Python's ssl,
`openssl s_client`, curl), nginx as a real HTTPS upstream, the TLS fault server, /metrics as a dict.

Test modules import from here (`from tlsfix import ...`), not from `conftest`: this folder's conftest.py
and the parent's share the module name `conftest`, and pytest keeps only the last one imported under
that name (see tests/integration/sql/sqlfix.py, which loads the parent the same way and under the same
name, so both folders share one copy of it).
"""
import importlib.util
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
PARENT = os.path.dirname(HERE)
if PARENT not in sys.path:
    sys.path.insert(0, PARENT)

# tests/integration/certs.py, re-exported for the tests
from certs import Pki, file_serial, not_after, served_serial, subject_rfc2253  # noqa: E402,F401


def _load_parent():
    name = "bulkhead_integration_conftest"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(PARENT, "conftest.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


parent = _load_parent()
free_port = parent.free_port
wait_until = parent.wait_until
can_connect = parent.can_connect
RawClient = parent.RawClient
PeerClosed = parent.PeerClosed
build_request = parent.build_request
proxy_status_error = parent.proxy_status_error
header_of = parent.header_of
base_config = parent.base_config
resilient_upstream = parent.resilient_upstream
admin_stats = parent.admin_stats
per_worker = parent.per_worker
named = parent.named
sighup_reload = parent.sighup_reload
fetch = parent.fetch
to_yaml = parent.to_yaml
run_bulkhead = parent.run_bulkhead
READINESS_PROBES = parent.READINESS_PROBES
IO_TIMEOUT = parent.IO_TIMEOUT
START_TIMEOUT = parent.START_TIMEOUT
STOP_TIMEOUT = parent.STOP_TIMEOUT
stop_process = parent.stop_process
PYTHON = parent.PYTHON

NGINX = os.environ.get("BH_NGINX", "/usr/sbin/nginx")
FAULTS_PY = os.path.join(HERE, "tls_faults.py")
PATTERN = bytes(range(256))  # the test upstream's /bytes content repeats this

# ----------------------------------------------------------------------------------------------
# bulkhead with a TLS listener


def listener_tls(*cert_pairs, **keys):
    """A listeners[].tls section: certificates from Cert tuples (the first is the default) and any of
    min_version, ciphers, client_ca, verify_client, handshake_timeout."""
    tls = {"certificates": [{"cert": c.cert, "key": c.key} for c in cert_pairs]}
    tls.update(keys)
    return tls


def tls_config(tls, upstreams, routes=None, plain_listener=False, **sections):
    """(config dict, tls port, plain port or None): listener "tls" first (the fixture's readiness probe
    connects to the first listener: a TCP connect, no handshake), then optionally a plain listener
    "plain". routes default to "/" -> the first upstream."""
    port, admin_port = free_port(), free_port()
    routes = routes or [{"match": {"path_prefix": "/"}, "upstream": next(iter(upstreams))}]
    conf = base_config(port, admin_port, upstreams, routes, **sections)
    conf["listeners"] = [{"name": "tls", "address": "127.0.0.1:%d" % port, "tls": tls}]
    plain = None
    if plain_listener:
        plain = free_port()
        conf["listeners"].append({"name": "plain", "address": "127.0.0.1:%d" % plain})
    return conf, port, plain


def settled(bh):
    """Waits until bulkhead has counted the fixture's readiness probe (a plain TCP connect to the first
    listener, no handshake) and closed it, so that counters start from a known state; returns /stats."""
    return wait_until(lambda: (lambda st: sum(per_worker(st, "accepted")) == READINESS_PROBES
                               and sum(per_worker(st, "clients")) == 0 and st)(admin_stats(bh)),
                      what="the readiness probe to be counted and closed")


# ----------------------------------------------------------------------------------------------
# TLS clients

def client_context(ca=None, cert=None, verify=True, alpn=None, min_version=None, max_version=None,
                   ciphers=None):
    """A client SSLContext: trusts ca (a file), presents cert (a Cert) if given; verify=False checks
    nothing (for tests that look at which certificate is served)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        ctx.load_verify_locations(ca)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(cert.cert, cert.key)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if min_version is not None:
        ctx.minimum_version = min_version
    if max_version is not None:
        ctx.maximum_version = max_version
    if ciphers:
        ctx.set_ciphers(ciphers)
    return ctx


class TlsClient(RawClient):
    """RawClient over TLS: exact HTTP/1.1 on one TLS connection (Python's ssl, a real peer). The
    handshake completes in the constructor (ssl.SSLError when it fails). recv_size: the most one read
    takes (small: a slow reader)."""

    def __init__(self, port, ctx, server_name="localhost", session=None, timeout=IO_TIMEOUT, recv_size=1 << 16):
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.sock = ctx.wrap_socket(raw, server_hostname=server_name, session=session)
        except BaseException:
            raw.close()
            raise
        self.buf = b""
        self.timeout = timeout
        self.recv_size = recv_size

    def _fill(self):
        try:
            data = self.sock.recv(self.recv_size)
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            data = b""
        if not data:
            raise PeerClosed("connection closed by peer; buffered %r" % self.buf[:200])
        self.buf += data

    def wait_closed(self, timeout=IO_TIMEOUT):
        if self.buf:
            raise AssertionError("unexpected extra bytes before close: %r" % self.buf[:200])
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            return True
        except socket.timeout:
            return False
        finally:
            self.sock.settimeout(self.timeout)
        if data:
            raise AssertionError("unexpected bytes instead of close: %r" % data[:200])
        return True

    def served_serial(self):
        der = self.sock.getpeercert(binary_form=True)
        return served_serial(ssl.DER_cert_to_PEM_cert(der))

    def get(self, target="/echo-head", headers=(), host="localhost"):
        self.request("GET", target, headers=headers, host=host)
        return self.read_response()


def tls_fetch(port, ctx, method="GET", target="/echo-head", headers=(), body=None, server_name="localhost"):
    """One request on a fresh TLS connection; the RawResponse."""
    with TlsClient(port, ctx, server_name=server_name) as c:
        c.request(method, target, headers=headers, body=body)
        return c.read_response(method)


def served_by(port, server_name):
    """The serial of the certificate served to a ClientHello with this SNI (None: no SNI)."""
    with TlsClient(port, client_context(verify=False), server_name=server_name) as c:
        return c.served_serial()


def s_client(port, *args, server_name="localhost", stdin=b"", timeout=IO_TIMEOUT):
    """openssl s_client against 127.0.0.1:port: CompletedProcess with stdout+stderr as text in .out.
    Without stdin s_client quits after the handshake; with stdin (a request with Connection: close) it
    sends it and reads until the server closes (-ign_eof)."""
    cmd = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-ign_eof" if stdin else "-no_ign_eof"]
    if server_name:
        cmd += ["-servername", server_name]
    p = subprocess.run(cmd + list(args), input=stdin, capture_output=True, timeout=timeout)
    p.out = (p.stdout + p.stderr).decode(errors="replace")
    return p


def curl(*args, timeout=IO_TIMEOUT):
    """curl -sS with args: CompletedProcess (text output)."""
    return subprocess.run(["curl", "-sS", "--max-time", str(int(timeout))] + list(args),
                          capture_output=True, timeout=timeout + 10)


def echoed_headers(resp):
    """The request headers the test upstream received, from an /echo-head response: {lower name:
    [values]}."""
    out = {}
    for k, v in json.loads(resp.body)["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


def proxy_status_details(resp):
    """The details="..." parameter of the `Proxy-Status: bulkhead; ...` member, or None."""
    value = header_of(resp, "Proxy-Status") or ""
    m = re.search(r';\s*details="((?:[^"\\]|\\.)*)"', value)
    return m.group(1) if m else None


# ----------------------------------------------------------------------------------------------
# /metrics as a dict

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?')


def metrics(bh):
    """{(name, frozenset of label pairs): value} of one scrape of /metrics."""
    with urllib.request.urlopen(bh.admin_url + "/metrics", timeout=IO_TIMEOUT) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, "bad sample line %r" % line
        labels = frozenset((k, re.sub(r"\\(.)", lambda e: "\n" if e.group(1) == "n" else e.group(1), v))
                           for k, v in _LABEL.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def mval(scrape, metric, /, **labels):
    """The sample with exactly these labels, 0 when absent (a counter not bumped yet may be absent)."""
    return scrape.get((metric, frozenset(labels.items())), 0)


def series(scrape, metric):
    """{frozenset of label pairs: value} of every sample of one metric."""
    return {ls: v for (n, ls), v in scrape.items() if n == metric}


def handshakes(bh, side):
    """bulkhead_tls_handshakes_total of one side: {"ok": n, "failed": n, "resumed": n}."""
    s = metrics(bh)
    return {r: mval(s, "bulkhead_tls_handshakes_total", side=side, result=r)
            for r in ("ok", "failed", "resumed")}


# ----------------------------------------------------------------------------------------------
# peers: nginx serving HTTPS, the TLS fault server

class Nginx:
    """Debian's nginx as an HTTPS front of a test upstream (proxy_pass, unbuffered both ways), in the
    foreground (daemon off, master_process off) with its own prefix under tmp_path. The access log
    records for each request whether nginx resumed the TLS session ($ssl_session_reused) and on which
    connection ($connection). keepalive_requests 1 closes every client connection after one request."""

    def __init__(self, tmp_path, cert, backend, keepalive_requests=1000, tickets=True, session_cache=True,
                 client_ca=None, protocols="TLSv1.2 TLSv1.3"):
        if not os.path.exists(NGINX):
            raise RuntimeError("nginx not found at %s (Debian package nginx; scripts/deps.sh)" % NGINX)
        self.port = free_port()
        self.addr = "127.0.0.1:%d" % self.port
        self.prefix = str(tmp_path / ("nginx-%d" % self.port))
        os.makedirs(os.path.join(self.prefix, "logs"))
        self.access_log = os.path.join(self.prefix, "logs", "access.log")
        self.error_log = os.path.join(self.prefix, "logs", "error.log")
        temps = "".join("    %s_temp_path %s;\n" % (k, os.path.join(self.prefix, k))
                        for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        mtls = ("        ssl_client_certificate %s;\n        ssl_verify_client on;\n" % client_ca
                if client_ca else "")
        conf = ("daemon off;\nmaster_process off;\nworker_processes 1;\n"
                "pid %(p)s/nginx.pid;\nerror_log %(err)s info;\n"
                "events { worker_connections 512; }\n"
                "http {\n"
                "    log_format bh '$connection $ssl_session_reused $ssl_protocol $ssl_server_name'\n"
                "                  ' \"$request\" $status';\n"
                "    map $http_upgrade $bh_connection { default upgrade; '' ''; }\n"
                "    access_log %(acc)s bh;\n%(temps)s"
                "    ssl_session_cache %(cache)s;\n    ssl_session_tickets %(tickets)s;\n"
                "    keepalive_requests %(kr)d;\n"
                "    upstream back { server %(backend)s; keepalive 8; }\n"
                "    server {\n"
                "        listen 127.0.0.1:%(port)d ssl;\n"
                "        server_name localhost;\n"
                "        ssl_certificate %(cert)s;\n        ssl_certificate_key %(key)s;\n"
                "        ssl_protocols %(protocols)s;\n%(mtls)s"
                "        client_max_body_size 0;\n"
                "        location / {\n"
                "            proxy_pass http://back;\n"
                "            proxy_http_version 1.1;\n"
                "            proxy_set_header Upgrade $http_upgrade;\n"
                "            proxy_set_header Connection $bh_connection;\n"
                "            proxy_request_buffering off;\n"
                "            proxy_buffering off;\n"
                "        }\n"
                "    }\n"
                "}\n") % {"p": self.prefix, "err": self.error_log, "acc": self.access_log, "temps": temps,
                          "cache": "shared:bh:1m" if session_cache else "off",
                          "tickets": "on" if tickets else "off", "kr": keepalive_requests,
                          "backend": backend, "port": self.port, "cert": cert.cert, "key": cert.key,
                          "mtls": mtls, "protocols": protocols}
        self.conf_path = os.path.join(self.prefix, "nginx.conf")
        with open(self.conf_path, "w") as f:
            f.write(conf)
        self._out = open(os.path.join(self.prefix, "stdout.log"), "wb")
        self.proc = subprocess.Popen([NGINX, "-p", self.prefix, "-e", self.error_log, "-c", self.conf_path],
                                     stdout=self._out, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: self._alive() and can_connect(self.port), what="nginx to listen")
        except BaseException:
            self.stop()
            raise

    def _alive(self):
        if self.proc.poll() is not None:
            raise RuntimeError("nginx exited early (%s): %s" % (self.proc.returncode, self.errors()))
        return True

    def errors(self):
        try:
            with open(self.error_log, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def requests(self):
        """The access log: dicts with conn (nginx's connection serial), reused ("r" or "."), protocol,
        sni (the client's server name, "-" when none), request line and status, oldest first."""
        out = []
        try:
            with open(self.access_log) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return out
        for line in lines:
            m = re.match(r'^(\d+) (\S+) (\S+) (\S+) "(.*)" (\d+)$', line)
            assert m, "bad nginx access log line %r" % line
            out.append({"conn": int(m.group(1)), "reused": m.group(2), "protocol": m.group(3),
                        "sni": m.group(4), "request": m.group(5), "status": int(m.group(6))})
        return out

    def wait_requests(self, n):
        """The access log once it has n lines (nginx writes a line after the response has gone, so a
        client can read the response first); AssertionError if it ends up with more."""
        lines = wait_until(lambda: (lambda ls: len(ls) >= n and ls)(self.requests()),
                           what="%d lines in nginx's access log" % n)
        assert len(lines) == n, lines
        return lines

    def stop(self):
        stop_process(self.proc)
        self._out.close()


class Faults:
    """tls_faults.py on free ports, in one mode (serve, alert, garbage, plain-http)."""

    def __init__(self, tmp_path, mode, cert=None):
        self.mode = mode
        self.port = free_port()
        self.control_port = free_port()
        self.addr = "127.0.0.1:%d" % self.port
        args = [PYTHON, FAULTS_PY, "--port", str(self.port), "--control-port", str(self.control_port),
                "--mode", mode]
        if cert is not None:
            args += ["--cert", cert.cert, "--key", cert.key]
        self.log_path = tmp_path / ("faults-%s-%d.log" % (mode, self.port))
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: self._alive() and can_connect(self.control_port) and "connections" in self.stats(),
                       what="the TLS fault server to listen")
        except BaseException:
            self.stop()
            raise

    def _alive(self):
        if self.proc.poll() is not None:
            raise RuntimeError("tls_faults.py exited early: %s" % self.log_path.read_text())
        return True

    def stats(self):
        with urllib.request.urlopen("http://127.0.0.1:%d/stats" % self.control_port, timeout=IO_TIMEOUT) as r:
            return json.loads(r.read())

    def stop(self):
        stop_process(self.proc)
        self._log.close()
