"""DNS re-resolution (issue 3): endpoints given by name are re-resolved every dns_refresh; a new
address takes the traffic, and a name that stops resolving is drained. Names are looked up off the
worker's loop (issue 9): a reload to an upstream whose name is slow to answer does not stall the
other requests of the worker, and a request for that upstream waits for the answer.

Loopback only, without touching the machine's /etc/hosts or /etc/resolv.conf: bulkhead runs in a
private mount namespace (`unshare -m`) where temporary files are bind-mounted over them, and the
test edits the hosts file in place. Two upstreams listen on the same port at 127.0.0.1 and
127.0.0.2. For a slow name, resolv.conf points at SlowDNS, a DNS server on a loopback address that
answers after a delay (the fault-injecting resolver, as upstream.py is the fault-injecting
upstream)."""
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

from conftest import (BULKHEAD_BIN, IO_TIMEOUT, PYTHON, STOP_TIMEOUT, UPSTREAM_PY, can_connect,
                      free_port, proxy_status_error, wait_until)

NAME = "bh-dns-test.internal"


def _unshare_works():
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return r.returncode == 0


pytestmark = pytest.mark.skipif(not _unshare_works(),
                                reason="needs root and unshare -m for a private /etc/hosts")


def start_upstream(tmp_path, host, port, name):
    log = open(tmp_path / ("up-%s.log" % name), "wb")
    p = subprocess.Popen([PYTHON, UPSTREAM_PY, "--host", host, "--port", str(port), "--name", name],
                         stdout=log, stderr=subprocess.STDOUT)
    wait_until(lambda: p.poll() is None and can_connect(port, host), what="upstream %s" % name)
    return p


def write_hosts(path, line):
    # in place (same inode): the bind mount shows the new content
    with open(path, "r+") as f:
        f.seek(0)
        f.truncate()
        f.write("127.0.0.1 localhost\n" + line + "\n")


def get(port, path="/echo-head"):
    """GET path: the response (already read)."""
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=IO_TIMEOUT)
    try:
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        return r
    finally:
        c.close()


def get_upstream_name(port, path="/echo-head"):
    r = get(port, path)
    return r.status, r.getheader("X-Upstream")


class SlowDNS:
    """A DNS server on udp/53 of a random 127.0.0.0/8 address. It answers A queries for the names
    in `names` (name -> IPv4 address) after `delay` seconds, any other query type for them with
    no records, other names with NXDOMAIN. `queries` lists the names asked, in order."""

    def __init__(self, names, delay):
        self.names, self.delay, self.queries = names, delay, []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(100):
            self.addr = "127.%d.%d.%d" % (random.randrange(1, 255), random.randrange(256),
                                          random.randrange(1, 255))
            try:
                self.sock.bind((self.addr, 53))
                break
            except OSError:
                continue
        else:
            raise RuntimeError("no loopback address with a free udp/53")
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                q, peer = self.sock.recvfrom(512)
            except socket.timeout:
                continue
            threading.Thread(target=self._answer, args=(q, peer), daemon=True).start()

    def _answer(self, q, peer):
        qid, flags = struct.unpack("!HH", q[:4])
        labels, i = [], 12
        while q[i]:
            labels.append(q[i + 1:i + 1 + q[i]].decode())
            i += 1 + q[i]
        qtype = struct.unpack("!H", q[i + 1:i + 3])[0]
        question = q[12:i + 5]
        name = ".".join(labels).lower()
        self.queries.append(name)
        answers, rcode = b"", 3  # NXDOMAIN
        if name in self.names:
            rcode = 0
            time.sleep(self.delay)
            if qtype == 1:  # A
                answers = (struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4)
                           + socket.inet_aton(self.names[name]))
        head = struct.pack("!HHHHHH", qid, 0x8080 | (flags & 0x0100) | rcode, 1,
                           1 if answers else 0, 0, 0)
        if not self.stop.is_set():
            self.sock.sendto(head + question + answers, peer)

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


class Running:
    """A bulkhead started by the dns_setup fixture: listen and admin ports, its config, and its
    SlowDNS (or None)."""

    def __init__(self, proc, listen, admin, conf_path, dns):
        self.proc, self.listen, self.admin, self.conf_path, self.dns = proc, listen, admin, conf_path, dns

    def reload(self, upstreams, routes):
        """Rewrites the config (same listener and admin) and sends SIGHUP; does not wait."""
        self.conf_path.write_text(config_text(self.listen, self.admin, upstreams, routes))
        self.proc.send_signal(signal.SIGHUP)


def config_text(listen, admin, upstreams, routes):
    """upstreams: {name: YAML lines of its keys, each indented by 4}; routes: [(prefix, upstream)]."""
    return ("workers: 1\n"
            "listeners: [ { name: pub, address: \"127.0.0.1:%d\" } ]\n"
            "admin: { address: \"127.0.0.1:%d\" }\n"
            "log: { access: off }\n"
            "upstreams:\n" % (listen, admin)
            + "".join("  %s:\n%s" % (name, keys) for name, keys in upstreams.items())
            + "routes:\n"
            + "".join("  - { match: { path_prefix: %s }, upstream: %s }\n" % r for r in routes))


def upstream_keys(endpoints, pool="idle_timeout: 30s", extra=""):
    return ("    endpoints: [ %s ]\n" % ", ".join('"%s"' % e for e in endpoints)
            + "    dns_refresh: 100ms\n"
            "    balance: round_robin\n"
            "    pool: { %s }\n" % pool + extra)


@pytest.fixture
def dns_setup(tmp_path):
    port = free_port()
    ups = [start_upstream(tmp_path, "127.0.0.1", port, "a"), start_upstream(tmp_path, "127.0.0.2", port, "b")]
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n127.0.0.1 %s\n" % NAME)
    started, servers = [], []

    def start_bulkhead(endpoints, upstreams=None, routes=None, slow_names=None, delay=0):
        """Starts bulkhead with one upstream `up` of these endpoints for every path, or with the
        given upstreams and routes (see config_text). slow_names (name -> address): a SlowDNS with
        that delay is the resolver; returned as .dns."""
        listen, admin = free_port(), free_port()
        conf = tmp_path / "bh.yaml"
        if upstreams is None:
            upstreams, routes = {"up": upstream_keys(endpoints)}, [("/", "up")]
        conf.write_text(config_text(listen, admin, upstreams, routes))
        script = "mount --bind %s /etc/hosts" % hosts
        dns = None
        if slow_names is not None:
            dns = SlowDNS(slow_names, delay)
            servers.append(dns)
            resolv = tmp_path / "resolv.conf"
            resolv.write_text("nameserver %s\noptions timeout:10 attempts:1\n" % dns.addr)
            script += " && mount --bind %s /etc/resolv.conf" % resolv
        script += " && exec %s -c %s" % (BULKHEAD_BIN, conf)
        log = open(tmp_path / "bulkhead.log", "wb")
        p = subprocess.Popen(["unshare", "-m", "sh", "-c", script], stdout=log, stderr=subprocess.STDOUT)
        started.append(p)
        wait_until(lambda: p.poll() is None and can_connect(listen), what="bulkhead to listen")
        return Running(p, listen, admin, conf, dns)

    yield port, hosts, start_bulkhead
    for p in started:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=STOP_TIMEOUT) == 0, (tmp_path / "bulkhead.log").read_text()
        text = (tmp_path / "bulkhead.log").read_text()
        assert "ERROR: AddressSanitizer" not in text and "runtime error:" not in text, text
    for d in servers:  # after bulkhead: a lookup it still runs is answered
        d.close()
    for u in ups:
        u.terminate()
        u.wait(timeout=STOP_TIMEOUT)


def test_new_address_takes_the_traffic(dns_setup):
    port, hosts, start_bulkhead = dns_setup
    listen = start_bulkhead(["%s:%d" % (NAME, port)]).listen
    assert get_upstream_name(listen) == (200, "a")
    write_hosts(hosts, "127.0.0.2 %s" % NAME)
    # re-resolved within a few refresh periods; the idle connection to the old address is retired
    wait_until(lambda: get_upstream_name(listen) == (200, "b"), timeout=IO_TIMEOUT,
               what="requests to follow the name to its new address")
    for _ in range(20):
        assert get_upstream_name(listen) == (200, "b")


def test_name_that_stops_resolving_is_drained(dns_setup):
    port, hosts, start_bulkhead = dns_setup
    # two endpoints: the name (at 127.0.0.1, upstream a) and a literal address (upstream b)
    listen = start_bulkhead(["%s:%d" % (NAME, port), "127.0.0.2:%d" % port]).listen
    seen = {get_upstream_name(listen)[1] for _ in range(10)}
    assert seen == {"a", "b"}, seen
    write_hosts(hosts, "# %s removed" % NAME)

    def only_b():
        return all(get_upstream_name(listen) == (200, "b") for _ in range(10))
    wait_until(only_b, timeout=IO_TIMEOUT, what="the unresolvable endpoint to be drained")
    for _ in range(30):
        assert get_upstream_name(listen) == (200, "b")


SLOW = "slow.bh-dns-test.example"
DELAY = 2.0


def test_reload_to_a_slow_name_does_not_stall_the_worker(dns_setup):
    """One worker serves upstream a (an address); a reload adds upstream s, whose name the resolver
    answers only after 2 s. While that lookup runs, requests to a are answered at once (before
    issue 9 the worker applied the reload with a blocking getaddrinfo and served nothing until the
    answer), and a request to s waits for the answer rather than failing."""
    port, _, start_bulkhead = dns_setup
    first = {"a": upstream_keys(["127.0.0.1:%d" % port])}
    bh = start_bulkhead(None, upstreams=first, routes=[("/", "a")], slow_names={SLOW: "127.0.0.1"},
                        delay=DELAY)
    assert get_upstream_name(bh.listen) == (200, "a")
    # the wait for the name counts in the connect and acquire timeouts: both longer than it here
    slow = upstream_keys(["%s:%d" % (SLOW, port)], pool="acquire_timeout: 10s",
                         extra="    timeouts: { connect: 10s }\n")
    bh.reload(dict(first, s=slow), [("/slow", "s"), ("/", "a")])
    wait_until(lambda: SLOW in bh.dns.queries, timeout=IO_TIMEOUT,
               what="the worker to look the new upstream's name up")
    asked = time.monotonic()
    assert get_upstream_name(bh.listen) == (200, "a")
    assert time.monotonic() - asked < DELAY / 2, "the worker stalled while the name resolved"
    # asked before the answer, for the upstream that waits for it: served once the name resolves
    assert get_upstream_name(bh.listen, "/slow/echo-head") == (200, "a")
    assert time.monotonic() - asked > DELAY / 2


def test_request_waits_for_a_new_name_within_the_connect_timeout(dns_setup):
    """At start the name is looked up without holding bulkhead back: it listens at once. A request
    that comes before the answer waits for it, but no longer than timeouts.connect, then fails as a
    connect timeout; once the name answers, requests go through."""
    port, _, start_bulkhead = dns_setup
    keys = upstream_keys(["%s:%d" % (SLOW, port)],
                         extra="    timeouts: { connect: 300ms }\n    retry: { attempts: 1 }\n"
                               "    breaker: { consecutive_failures: 1000000, min_requests: 1000000 }\n")
    started = time.monotonic()
    bh = start_bulkhead(None, upstreams={"s": keys}, routes=[("/", "s")],
                        slow_names={SLOW: "127.0.0.1"}, delay=DELAY)
    asked = time.monotonic()
    assert asked - started < DELAY / 2, "bulkhead waited for the name before listening"
    r = get(bh.listen)
    assert r.status == 504 and proxy_status_error(r) == "connection_timeout", r.headers
    assert time.monotonic() - asked < DELAY / 2
    wait_until(lambda: get_upstream_name(bh.listen) == (200, "a"), timeout=IO_TIMEOUT,
               what="the name to resolve")


def upstream_count(host, port):
    """GET /echo-head requests an upstream process has answered (its /stats is not counted)."""
    import json
    import urllib.request
    with urllib.request.urlopen("http://%s:%d/stats" % (host, port), timeout=IO_TIMEOUT) as r:
        return json.loads(r.read())["requests"].get("GET /echo-head", 0)


class DnsLoad:
    """n threads sending GET /echo-head until stopped; by: answers per X-Upstream, failures: the rest."""

    def __init__(self, listen, n=4):
        self.listen, self.stop, self.by, self.failures = listen, threading.Event(), {}, []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run) for _ in range(n)]
        for t in self.threads:
            t.start()

    def _run(self):
        while not self.stop.is_set():
            try:
                status, name = get_upstream_name(self.listen)
            except OSError as e:
                status, name = repr(e), None
            with self.lock:
                if status == 200:
                    self.by[name] = self.by.get(name, 0) + 1
                else:
                    self.failures.append(status)

    def total(self):
        with self.lock:
            return sum(self.by.values())

    def end(self):
        self.stop.set()
        for t in self.threads:
            t.join(60)


def only_b_for(listen, n, asked):
    for _ in range(n):
        asked[0] += 1
        if get_upstream_name(listen) != (200, "b"):
            return False
    return True


@pytest.mark.parametrize("change", ["moves", "disappears"])
def test_name_change_under_load_loses_nothing(dns_setup, change):
    """While 4 clients send GETs, the name moves to the other address (one endpoint), or stops
    resolving (a second endpoint is a literal address): every request is answered 200, and the two
    upstreams together answered exactly as many requests as the clients got."""
    port, hosts, start_bulkhead = dns_setup
    endpoints = ["%s:%d" % (NAME, port)] + (["127.0.0.2:%d" % port] if change == "disappears" else [])
    listen = start_bulkhead(endpoints).listen
    before = upstream_count("127.0.0.1", port) + upstream_count("127.0.0.2", port)
    load = DnsLoad(listen)
    try:
        wait_until(lambda: load.total() >= 100, what="load before the change")
        write_hosts(hosts, "127.0.0.2 %s" % NAME if change == "moves" else "# %s removed" % NAME)
        asked = [0]
        wait_until(lambda: only_b_for(listen, 10, asked), what="the traffic to leave 127.0.0.1")
        mark = load.total()
        wait_until(lambda: load.total() >= mark + 100, what="load after the change")
    finally:
        load.end()
    assert load.failures == [], load.failures[:5]
    assert set(load.by) == {"a", "b"}, load.by
    served = upstream_count("127.0.0.1", port) + upstream_count("127.0.0.2", port) - before
    assert served == load.total() + asked[0], (served, load.by, asked)


def test_only_name_gone_keeps_its_last_address(dns_setup):
    """The only endpoint's name stops resolving: there is no better endpoint to drain it to, so its
    last address keeps serving (a DNS outage does not take down an upstream whose address still
    answers; Envoy keeps a STRICT_DNS host on a failed lookup the same way). Every request 200, all
    of them at that address; once the name resolves again, to another address, the traffic moves."""
    port, hosts, start_bulkhead = dns_setup
    listen = start_bulkhead(["%s:%d" % (NAME, port)]).listen
    assert get_upstream_name(listen) == (200, "a")
    before = upstream_count("127.0.0.1", port)
    load = DnsLoad(listen)
    try:
        wait_until(lambda: load.total() >= 50, what="load before the change")
        write_hosts(hosts, "# %s removed" % NAME)
        mark = load.total()
        wait_until(lambda: load.total() >= mark + 200, what="load after the name is gone")  # 20 periods
    finally:
        load.end()
    assert load.failures == [] and set(load.by) == {"a"}, (load.failures[:5], load.by)
    assert upstream_count("127.0.0.1", port) - before == load.total()
    write_hosts(hosts, "127.0.0.2 %s" % NAME)
    wait_until(lambda: get_upstream_name(listen) == (200, "b"), what="the name to resolve again")
