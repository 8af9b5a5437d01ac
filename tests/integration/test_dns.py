"""DNS re-resolution (issue 3): endpoints given by name are re-resolved every dns_refresh; a new
address takes the traffic, and a name that stops resolving is drained.

Loopback only, without touching the machine's /etc/hosts: bulkhead runs in a private mount
namespace (`unshare -m`) where a temporary file is bind-mounted over /etc/hosts, and the test edits
that file in place. Two upstreams listen on the same port at 127.0.0.1 and 127.0.0.2."""
import os
import shutil
import signal
import subprocess

import pytest

from conftest import (BULKHEAD_BIN, IO_TIMEOUT, PYTHON, STOP_TIMEOUT, UPSTREAM_PY, can_connect,
                      free_port, wait_until)

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


def get_upstream_name(port):
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=IO_TIMEOUT)
    try:
        c.request("GET", "/echo-head")
        r = c.getresponse()
        r.read()
        return r.status, r.getheader("X-Upstream")
    finally:
        c.close()


@pytest.fixture
def dns_setup(tmp_path):
    port = free_port()
    ups = [start_upstream(tmp_path, "127.0.0.1", port, "a"), start_upstream(tmp_path, "127.0.0.2", port, "b")]
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n127.0.0.1 %s\n" % NAME)
    started = []

    def start_bulkhead(endpoints):
        listen, admin = free_port(), free_port()
        conf = tmp_path / "bh.yaml"
        conf.write_text(
            "workers: 1\n"
            "listeners: [ { name: pub, address: \"127.0.0.1:%d\" } ]\n"
            "admin: { address: \"127.0.0.1:%d\" }\n"
            "log: { access: off }\n"
            "upstreams:\n"
            "  up:\n"
            "    endpoints: [ %s ]\n"
            "    dns_refresh: 100ms\n"
            "    balance: round_robin\n"
            "    pool: { idle_timeout: 30s }\n"
            "routes:\n"
            "  - { match: { path_prefix: / }, upstream: up }\n"
            % (listen, admin, ", ".join('"%s"' % e for e in endpoints)))
        script = "mount --bind %s /etc/hosts && exec %s -c %s" % (hosts, BULKHEAD_BIN, conf)
        log = open(tmp_path / "bulkhead.log", "wb")
        p = subprocess.Popen(["unshare", "-m", "sh", "-c", script], stdout=log, stderr=subprocess.STDOUT)
        started.append(p)
        wait_until(lambda: p.poll() is None and can_connect(listen), what="bulkhead to listen")
        return listen

    yield port, hosts, start_bulkhead
    for p in started:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=STOP_TIMEOUT) == 0, (tmp_path / "bulkhead.log").read_text()
        text = (tmp_path / "bulkhead.log").read_text()
        assert "ERROR: AddressSanitizer" not in text and "runtime error:" not in text, text
    for u in ups:
        u.terminate()
        u.wait(timeout=STOP_TIMEOUT)


def test_new_address_takes_the_traffic(dns_setup):
    port, hosts, start_bulkhead = dns_setup
    listen = start_bulkhead(["%s:%d" % (NAME, port)])
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
    listen = start_bulkhead(["%s:%d" % (NAME, port), "127.0.0.2:%d" % port])
    seen = {get_upstream_name(listen)[1] for _ in range(10)}
    assert seen == {"a", "b"}, seen
    write_hosts(hosts, "# %s removed" % NAME)

    def only_b():
        return all(get_upstream_name(listen) == (200, "b") for _ in range(10))
    wait_until(only_b, timeout=IO_TIMEOUT, what="the unresolvable endpoint to be drained")
    for _ in range(30):
        assert get_upstream_name(listen) == (200, "b")
