"""Metrics and statistics (issue 5): `/metrics` (Prometheus text format 0.0.4) and `/stats` (JSON) on
the admin port, summed over the workers, optionally behind `admin.token`.

The exposition is checked twice: by `promtool check metrics` (Debian package `prometheus`), and by the
small parser below, which also refuses what promtool lets through (a series twice, a sample of an
undeclared family, a family split in two). Values are compared with exact numbers of requests sent.
A counter may be bumped just after the reply left bulkhead, so the tests poll until a value reaches
what they sent and then require it to be exactly that (never more)."""
import http.client
import json
import math
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from conftest import (IO_TIMEOUT, READINESS_PROBES, RawClient, can_connect, fetch, free_port, named,
                      per_worker, proxy_status_error, quiesce, resilient_upstream, run_bulkhead,
                      wait_until)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, math.inf]
OUTCOMES = {"success", "http_5xx", "connect_failed", "connect_timeout", "reset", "first_byte_timeout",
            "idle_timeout", "protocol_error", "partial", "total_timeout", "local"}
FAMILIES = {
    "bulkhead_build_info": "gauge",
    "bulkhead_client_connections": "gauge",
    "bulkhead_connections_accepted_total": "counter",
    "bulkhead_requests_total": "counter",
    "bulkhead_request_duration_seconds": "histogram",
    "bulkhead_upstream_attempts_total": "counter",
    "bulkhead_pool_connections": "gauge",
    "bulkhead_pool_waiters": "gauge",
    "bulkhead_pool_wait_seconds": "histogram",
    "bulkhead_breaker_state": "gauge",
    "bulkhead_retries_total": "counter",
    "bulkhead_retry_budget_exhausted_total": "counter",
    "bulkhead_outlier_ejections_total": "counter",
    "bulkhead_outlier_releases_total": "counter",
    "bulkhead_config_reloads_total": "counter",
    "bulkhead_config_last_reload_success_timestamp_seconds": "gauge",
}
HELD_WAITERS_S = 0.05  # how long test_busy_and_waiters keeps its two waiters queued at least
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


# ----------------------------------------------------------------------------------------------
# the text exposition format 0.0.4, strictly

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(r"^(%s)(?:\{(.*)\})?[ \t]+(\S+)(?:[ \t]+-?[0-9]+)?$" % _NAME)
_LABEL = re.compile(r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\\n]|\\[\\"n])*)"[ \t]*(,|$)')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def parse_labels(text, line):
    labels, pos = {}, 0
    while pos < len(text):
        m = _LABEL.match(text, pos)
        assert m, "bad label set in line %r" % line
        name = m.group(1)
        assert name not in labels, "label %s twice in line %r" % (name, line)
        labels[name] = re.sub(r'\\[\\"n]', lambda e: _UNESCAPE[e.group(0)], m.group(2))
        pos = m.end()
        if m.group(3) == "":
            break
    return labels


def parse_value(s, line):
    assert re.fullmatch(r"[+-]?(Inf|NaN|[0-9]*\.?[0-9]+([eE][+-]?[0-9]+)?|[0-9]+\.)", s), \
        "bad value in line %r" % line
    return float(s)


class Exposition:
    """A parsed exposition: types[family], helps[family], and the samples of each series."""

    def __init__(self, text):
        self.text = text
        self.types, self.helps = {}, {}
        self.samples = {}  # (name, frozenset of label pairs) -> value
        self.order = []    # (name, labels dict, value) as they came
        assert text.endswith("\n"), "the exposition does not end with a newline"
        done, current = set(), None
        for line in text[:-1].split("\n"):
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    name = parts[2]
                    assert re.fullmatch(_NAME, name), line
                    table = self.helps if parts[1] == "HELP" else self.types
                    assert name not in table, "a second %s for %s" % (parts[1], name)
                    if parts[1] == "TYPE":
                        assert len(parts) == 4 and parts[3] in ("counter", "gauge", "histogram", "summary",
                                                                "untyped"), line
                        assert name not in self.samples_families(), "TYPE of %s after its samples" % name
                    table[name] = parts[3] if len(parts) == 4 else ""
                continue
            m = _SAMPLE.match(line)
            assert m, "bad sample line %r" % line
            name, labels = m.group(1), parse_labels(m.group(2) or "", line)
            value = parse_value(m.group(3), line)
            family = self.family_of(name)
            assert family is not None, "sample %r of no declared family" % line
            if family != current:
                assert family not in done, "the samples of %s are not together" % family
                if current is not None:
                    done.add(current)
                current = family
            key = (name, frozenset(labels.items()))
            assert key not in self.samples, "series twice: %r" % line
            self.samples[key] = value
            self.order.append((name, labels, value))

    def samples_families(self):
        return {self.family_of(n) for n, _, _ in self.order}

    def family_of(self, name):
        if name in self.types:
            return name
        for suffix in ("_bucket", "_sum", "_count"):
            base = name[:-len(suffix)]
            if name.endswith(suffix) and self.types.get(base) in ("histogram", "summary"):
                return base
        return None

    def get(self, name, **labels):
        """The value of the series with exactly these labels, or None."""
        return self.samples.get((name, frozenset(labels.items())))

    def series(self, name):
        return [(labels, v) for n, labels, v in self.order if n == name]

    def histogram(self, name, **labels):
        """(count, sum, [(le, cumulative count)]) of one histogram series, checked for shape: the
        contract's buckets, whole counts, cumulative, +Inf equal to _count, and a _sum that the
        buckets allow: each observation in a bucket is above the bucket before's bound and at most
        its own, so the sum lies between those bounds times the counts (no upper one when something
        is in +Inf). Scrape only once the observations are done (a scrape during one may see its
        bucket before its sum)."""
        buckets = []
        for lab, v in self.series(name + "_bucket"):
            rest = dict(lab)
            le = rest.pop("le", None)
            if rest == labels:
                assert le is not None, "a bucket without le"
                buckets.append((parse_value(le, le), v))
        count, total = self.get(name + "_count", **labels), self.get(name + "_sum", **labels)
        assert count is not None and total is not None, "no %s_count/_sum for %r" % (name, labels)
        les = [le for le, _ in buckets]
        assert les == BUCKETS, "buckets of %s%r: %r" % (name, labels, les)
        values = [v for _, v in buckets]
        assert values == sorted(values), "buckets of %s%r are not cumulative: %r" % (name, labels, buckets)
        assert all(v == int(v) for v in values + [count]), "counts of %s%r are not whole: %r" % (
            name, labels, buckets)
        assert values[-1] == count, "+Inf bucket %r != _count %r" % (values[-1], count)
        low = high = 0.0
        for i, (le, v) in enumerate(buckets):
            n = v - (buckets[i - 1][1] if i else 0)
            if n:  # (0 * inf is nan)
                low += n * (buckets[i - 1][0] if i else 0.0)
                high += n * le
        slack = 1e-6 * (count + 1)  # _sum has 6 decimals
        assert low - slack <= total, "_sum %r of %s%r is below what its buckets allow (%r): %r" % (
            total, name, labels, low, buckets)
        assert total <= high + slack, "_sum %r of %s%r is above what its buckets allow (%r): %r" % (
            total, name, labels, high, buckets)
        assert count > 0 or total == 0, (count, total)
        return count, total, buckets


# ----------------------------------------------------------------------------------------------
# the admin port

def admin_ready(bh):
    """The fixture waits for the proxy's listener only; the admin listener opens just after it."""
    wait_until(lambda: can_connect(bh.admin_port), what="the admin listener")
    return bh


def admin_get(bh, path, token=None, auth=None):
    """(status, headers dict with lower-case names, body bytes) of one admin request."""
    conn = http.client.HTTPConnection("127.0.0.1", bh.admin_port, timeout=IO_TIMEOUT)
    try:
        headers = {}
        if token is not None:
            headers["Authorization"] = "Bearer " + token
        if auth is not None:
            headers["Authorization"] = auth
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def scrape(bh, token=None):
    status, headers, body = admin_get(bh, "/metrics", token)
    assert status == 200, (status, body[:500])
    assert headers.get("content-type") == CONTENT_TYPE, headers
    return Exposition(body.decode("utf-8"))


def stats(bh, token=None):
    status, headers, body = admin_get(bh, "/stats", token)
    assert status == 200, (status, body[:500])
    assert headers.get("content-type", "").split(";")[0].strip() == "application/json", headers
    return json.loads(body)


def metric_reaches(bh, expected, name, **labels):
    """Polls /metrics until the series has reached `expected`, then requires exactly that."""
    def reached():
        v = scrape(bh).get(name, **labels)
        return v is not None and v >= expected
    wait_until(reached, what="%s%r to reach %r" % (name, labels, expected))
    v = scrape(bh).get(name, **labels)
    assert v == expected, "%s%r is %r, %r requests were sent" % (name, labels, v, expected)


def settle(bh, **expected):
    """Polls /metrics until every (name, labels) -> value of expected holds; returns that scrape.
    expected: {"name": [(labels, value), ...]}."""
    last = {}

    def ok():
        exp = scrape(bh)
        last["wrong"] = [(name, labels, exp.get(name, **labels), value) for name, wanted in expected.items()
                         for labels, value in wanted if exp.get(name, **labels) != value]
        return not last["wrong"] and exp
    try:
        return wait_until(ok, what="metrics %r" % expected)
    except AssertionError as e:
        raise AssertionError("%s\nnot as expected (name, labels, value, expected): %r"
                             % (e, last.get("wrong"))) from None


def promtool_check(text):
    p = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True,
                       timeout=IO_TIMEOUT)
    return p.returncode, (p.stdout + p.stderr).strip()


def ups_of(st, name):
    found = [u for u in st["upstreams"] if u["name"] == name]
    assert len(found) == 1, st["upstreams"]
    return found[0]




def nonzero(d):
    return {k: v for k, v in d.items() if v}


def version_of_binary():
    out = run_bulkhead("--version").stdout
    m = re.match(r"bulkhead (\S+)", out)
    assert m, out
    return m.group(1)


# ----------------------------------------------------------------------------------------------

def test_exposition_after_mixed_traffic_passes_promtool(bulkhead, upstream):
    """2 workers, traffic with 200s, 502s from a dead endpoint, 404s and 400s that match no route, a
    named route and a host route: the exposition is valid for promtool and for the strict parser,
    declares every family of the contract with its type, and counts each kind of request exactly."""
    if not os.path.exists(PROMTOOL):
        pytest.fail("promtool not found (Debian package prometheus)")
    dead = "127.0.0.1:%d" % free_port()
    bh = admin_ready(bulkhead(workers=2,
                              upstreams={"u": resilient_upstream(upstream, retry={"attempts": 1}),
                                         "dead": resilient_upstream(dead, retry={"attempts": 1})},
                              routes=[{"match": {"path_prefix": "/dead/"}, "upstream": "dead"},
                                      {"name": "app", "match": {"path_prefix": "/app/"}, "upstream": "u"},
                                      {"match": {"host": "api.example.com", "path_prefix": "/v1/"}, "upstream": "u"}]))
    quiesce(bh)
    for i in range(5):
        assert fetch(bh.port, "GET", "/app/echo-head?i=%d" % i).status == 200
    for _ in range(2):
        r = fetch(bh.port, "GET", "/dead/x")
        assert r.status == 502 and proxy_status_error(r) == "connection_refused", r
    for _ in range(3):
        assert fetch(bh.port, "GET", "/nowhere").status == 404
    for _ in range(2):
        assert fetch(bh.port, "GET", "/v1/a", headers=[("Host", "api.example.com")]).status == 200
    with RawClient(bh.port) as c:  # HTTP/1.1 without Host: refused before routing
        c.send(b"GET /app/x HTTP/1.1\r\n\r\n")
        assert c.read_response().status == 400

    expected_requests = [({"route": "app", "code": "200"}, 5), ({"route": "*/dead/", "code": "502"}, 2),
                         ({"route": "", "code": "404"}, 3), ({"route": "api.example.com/v1/", "code": "200"}, 2),
                         ({"route": "", "code": "400"}, 1)]
    exp = settle(bh, bulkhead_requests_total=expected_requests,
                 bulkhead_client_connections=[({}, 0)])
    assert sum(v for _, v in exp.series("bulkhead_requests_total")) == 13, exp.series("bulkhead_requests_total")

    rc, out = promtool_check(exp.text)
    assert rc == 0 and out == "", "promtool check metrics: exit %d\n%s" % (rc, out)

    for family, kind in FAMILIES.items():
        assert exp.types.get(family) == kind, "family %s: TYPE %r, expected %s" % (
            family, exp.types.get(family), kind)
        assert exp.helps.get(family), "family %s has no HELP" % family

    info = exp.series("bulkhead_build_info")
    assert len(info) == 1 and info[0][0].get("version") == version_of_binary() and info[0][1] == 1, info
    assert exp.get("bulkhead_connections_accepted_total") == 13 + READINESS_PROBES
    assert exp.get("bulkhead_config_reloads_total", result="success") == 0
    assert exp.get("bulkhead_config_reloads_total", result="failure") == 0
    for route, n in (("app", 5), ("*/dead/", 2), ("", 4), ("api.example.com/v1/", 2)):
        count, _, _ = exp.histogram("bulkhead_request_duration_seconds", route=route)
        assert count == n, (route, count)
    assert exp.get("bulkhead_upstream_attempts_total", upstream="dead", outcome="connect_failed") == 2
    assert exp.get("bulkhead_upstream_attempts_total", upstream="u", outcome="success") == 7
    for labels, _ in exp.series("bulkhead_upstream_attempts_total"):
        assert set(labels) == {"upstream", "outcome"} and labels["outcome"] in OUTCOMES, labels
    for pool in ("u", "dead"):
        assert exp.get("bulkhead_pool_waiters", pool=pool) == 0
        assert exp.get("bulkhead_breaker_state", upstream=pool) == 0
        assert exp.get("bulkhead_retries_total", upstream=pool) == 0
        assert exp.get("bulkhead_retry_budget_exhausted_total", upstream=pool) == 0
        assert exp.get("bulkhead_outlier_ejections_total", upstream=pool) == 0
        for state in ("busy", "connecting"):  # every reply is out, no connect in progress
            assert exp.get("bulkhead_pool_connections", pool=pool, state=state) == 0, (pool, state)
    # the dead endpoint never gave a connection; u keeps one idle per worker that used it (1 or 2)
    assert exp.get("bulkhead_pool_connections", pool="dead", state="idle") == 0
    assert 1 <= exp.get("bulkhead_pool_connections", pool="u", state="idle") <= 2
    count, _, _ = exp.histogram("bulkhead_pool_wait_seconds", pool="u")
    assert count == 7, "7 requests acquired a connection of u: %r" % count

    st = stats(bh)
    routes = {r["name"]: r for r in st["routes"]}
    assert routes["app"]["requests"] == 5 and nonzero(routes["app"]["codes"]) == {"200": 5}, routes
    assert routes["*/dead/"]["requests"] == 2 and nonzero(routes["*/dead/"]["codes"]) == {"502": 2}, routes
    assert nonzero(routes["api.example.com/v1/"]["codes"]) == {"200": 2}, routes
    assert sum(w["accepted"] for w in st["workers"]) == 13 + READINESS_PROBES
    assert nonzero(routes[""]["codes"]) == {"404": 3, "400": 1}, routes


@pytest.mark.parametrize("data,status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n", 431),
], ids=["request-line", "header-name", "headers-too-large"])
def test_malformed_request_counts_with_empty_route(bulkhead, upstream, data, status):
    """A request the HTTP parser refuses (400, before any routing) is counted like one that matched no
    route: route="", code="400", and observed in the duration histogram. bulkhead closes the
    connection after the 400; a request is counted by the time its connection is gone."""
    bh = admin_ready(bulkhead(upstream))
    quiesce(bh)
    with RawClient(bh.port) as c:
        c.send(data)
        assert c.read_response().status == status
        assert c.wait_closed()
    exp = settle(bh, bulkhead_client_connections=[({}, 0)])
    assert [(lab, v) for lab, v in exp.series("bulkhead_requests_total") if v] == [
        ({"route": "", "code": str(status)}, 1)]
    assert exp.histogram("bulkhead_request_duration_seconds", route="")[0] == 1


def test_counters_are_summed_over_two_workers(bulkhead, upstream):
    """At least 7 requests, each on a new connection, sent until both workers have accepted some (seen
    in /stats): every counter and histogram count equals the number sent, whatever the split."""
    bh = admin_ready(bulkhead(upstream, workers=2))
    quiesce(bh)
    base = per_worker(stats(bh), "accepted")  # the readiness probe's connection is on one of them
    n = 0
    while True:
        r = fetch(bh.port, "GET", "/echo-head?n=%d" % n)
        assert r is not None and r.status == 200, r
        n += 1
        now = per_worker(stats(bh), "accepted")
        if n >= 7 and all(a > b for a, b in zip(now, base)):
            break
        assert n < 64, "64 connections and one worker accepted none: %r" % stats(bh)["workers"]
    metric_reaches(bh, n, "bulkhead_requests_total", route="*/", code="200")
    exp = settle(bh, bulkhead_client_connections=[({}, 0)],
                 bulkhead_pool_connections=[({"pool": "u", "state": "busy"}, 0)])
    assert [(lab, v) for lab, v in exp.series("bulkhead_requests_total") if v] == [
        ({"route": "*/", "code": "200"}, n)]
    assert exp.get("bulkhead_connections_accepted_total") == n + READINESS_PROBES
    count, _, _ = exp.histogram("bulkhead_request_duration_seconds", route="*/")
    assert count == n
    assert exp.get("bulkhead_upstream_attempts_total", upstream="u", outcome="success") == n
    assert sum(v for _, v in exp.series("bulkhead_upstream_attempts_total")) == n
    count, _, _ = exp.histogram("bulkhead_pool_wait_seconds", pool="u")
    assert count == n

    st = stats(bh)
    assert [w["id"] for w in st["workers"]] == [0, 1], st["workers"]
    assert sum(w["accepted"] for w in st["workers"]) == n + READINESS_PROBES
    assert [(r["name"], r["requests"], nonzero(r["codes"])) for r in st["routes"] if r["requests"]] == [
        ("*/", n, {"200": n})], st["routes"]
    u = ups_of(st, "u")
    assert nonzero(u["attempts"]) == {"success": n}, u


def test_request_duration_holds_the_upstream_delay(bulkhead, upstream):
    """4 requests the upstream answers only DELAY_MS after it got them: a request cannot end before
    its upstream answered, so the route's duration histogram has exactly 4 observations, none in a
    bucket whose bound is below the delay, and a _sum of at least 4 x the delay. (Lower bounds set
    by the upstream, never an upper bound on how fast bulkhead is.)"""
    delay_ms, n = 30, 4
    bh = admin_ready(bulkhead(upstream, workers=2))
    quiesce(bh)
    for i in range(n):
        r = fetch(bh.port, "GET", "/delay?ms=%d&i=%d" % (delay_ms, i))
        assert r is not None and r.status == 200 and r.body == b"delayed", r
    exp = settle(bh, bulkhead_requests_total=[({"route": "*/", "code": "200"}, n)],
                 bulkhead_client_connections=[({}, 0)])
    count, total, buckets = exp.histogram("bulkhead_request_duration_seconds", route="*/")
    assert count == n, (count, buckets)
    assert buckets[-1] == (math.inf, n), buckets
    assert [v for le, v in buckets if le < delay_ms / 1000.0] == [0] * 5, buckets
    assert total >= n * delay_ms / 1000.0, "_sum %r for %d requests of at least %d ms" % (total, n, delay_ms)


def test_pool_connections_after_keepalive_requests(bulkhead, upstream):
    """One keep-alive client, 6 sequential requests: one upstream connection, idle afterwards (idle 1,
    busy 0, connecting 0 in /metrics and /stats, for the upstream and its endpoint); one client
    connection open while the client is, none after; 6 pool acquisitions observed."""
    bh = admin_ready(bulkhead(upstream, workers=1, pool={"idle_timeout": "120s"}))  # never expires here
    quiesce(bh)
    with RawClient(bh.port) as c:
        for i in range(6):
            c.request("GET", "/echo-head?i=%d" % i)
            assert c.read_response().status == 200
        exp = settle(bh, bulkhead_pool_connections=[({"pool": "u", "state": "idle"}, 1),
                                                    ({"pool": "u", "state": "busy"}, 0),
                                                    ({"pool": "u", "state": "connecting"}, 0)])
        assert exp.get("bulkhead_client_connections") == 1
        assert exp.get("bulkhead_connections_accepted_total") == 1 + READINESS_PROBES
        assert exp.histogram("bulkhead_pool_wait_seconds", pool="u")[0] == 6
        st = stats(bh)
        u = ups_of(st, "u")
        assert u["pool"] == {"idle": 1, "busy": 0, "connecting": 0}, u
        (ep,) = u["endpoints"]
        assert ep["address"] == upstream.addr and ep["healthy"] is True and ep["ejected"] is False, ep
        assert (ep["idle"], ep["busy"], ep["connecting"]) == (1, 0, 0), ep
        assert [(w["id"], w["accepted"], w["clients"]) for w in st["workers"]] == [
            (0, 1 + READINESS_PROBES, 1)], st["workers"]
    assert upstream.stats()["connections_accepted"] == 1
    settle(bh, bulkhead_client_connections=[({}, 0)])


def test_busy_and_waiters_while_requests_are_held(bulkhead, upstream):
    """max_connections 1 over 2 workers: one request held upstream, two more waiting for the
    connection: busy 1 and waiters 2 (summed over the workers) in /metrics and /stats; after the
    release (at least HELD_WAITERS_S after both were seen queued) everything is answered, no waiter is
    left, 3 acquisitions were observed, and the wait histogram's sum holds the two waits."""
    bh = admin_ready(bulkhead(upstream, workers=2,
                              pool={"max_connections": 1, "max_pending": 10, "acquire_timeout": "60s"},
                              timeouts={"first_byte": "60s", "total": "90s"}))
    quiesce(bh)
    a, b, c = RawClient(bh.port), RawClient(bh.port), RawClient(bh.port)
    try:
        a.request("GET", "/hold?id=h")
        wait_until(lambda: upstream.stats()["holding"] == 1, what="the held request")
        b.request("GET", "/echo-head?who=b")
        c.request("GET", "/echo-head?who=c")
        exp = settle(bh, bulkhead_pool_waiters=[({"pool": "u"}, 2)])
        queued_by = time.monotonic()  # both waits began before this
        assert exp.get("bulkhead_pool_connections", pool="u", state="busy") == 1
        assert exp.get("bulkhead_pool_connections", pool="u", state="idle") == 0
        assert exp.get("bulkhead_pool_connections", pool="u", state="connecting") == 0
        assert exp.get("bulkhead_client_connections") == 3
        u = ups_of(stats(bh), "u")
        assert u["waiters"] == 2 and u["pool"] == {"idle": 0, "busy": 1, "connecting": 0}, u
        assert u["endpoints"][0]["busy"] == 1, u
        # keep them queued a known while (the point of the wait, not a wait for a condition), so
        # that the wait histogram's sum has a lower bound that says something
        time.sleep(max(0.0, queued_by + HELD_WAITERS_S - time.monotonic()))
        waited = time.monotonic() - queued_by  # and neither wait can end before the release
        upstream.release("h")
        assert a.read_response().status == 200
        assert b.read_response().status == 200
        assert c.read_response().status == 200
    finally:
        upstream.release("*")
        for x in (a, b, c):
            x.close()
    exp = settle(bh, bulkhead_pool_waiters=[({"pool": "u"}, 0)],
                 bulkhead_pool_connections=[({"pool": "u", "state": "busy"}, 0)],
                 bulkhead_client_connections=[({}, 0)])
    count, total, _ = exp.histogram("bulkhead_pool_wait_seconds", pool="u")
    assert count == 3
    # bulkhead's clock ticks in whole ms: each waiter counted at least the whole ms of `waited`
    assert waited >= HELD_WAITERS_S
    assert total >= 2 * int(waited * 1000) / 1000.0, (total, waited)
    assert upstream.stats()["max_open_connections"] == 1


def test_retries_and_budget(bulkhead, upstream):
    """A 503 then a 200 on the retry: one retry and the two attempt outcomes. On an upstream with an
    empty retry budget, the wanted retry is counted as budget exhausted instead."""
    fast = {"base": "1ms", "max": "5ms"}
    no_budget = {"attempts": 2, "backoff": fast, "budget": {"ratio": 0, "min_per_second": 0}}
    bh = admin_ready(bulkhead(upstreams={"u": resilient_upstream(upstream, retry={"attempts": 2, "backoff": fast}),
                                         "nb": resilient_upstream(upstream, retry=no_budget)},
                              routes=[{"match": {"path_prefix": "/nb/"}, "upstream": "nb"},
                                      {"match": {"path_prefix": "/"}, "upstream": "u"}]))
    upstream.set_mode("fail-503", count=1)
    r = fetch(bh.port, "GET", "/echo-head")
    assert r.status == 200, r
    assert upstream.count("/echo-head") == 2
    upstream.set_mode("fail-503", count=1)
    r = fetch(bh.port, "GET", "/nb/echo-head")
    assert r.status == 503 and r.header("X-Upstream") is not None, r
    assert upstream.count("/nb/echo-head") == 1

    exp = settle(bh, bulkhead_requests_total=[({"route": "*/", "code": "200"}, 1),
                                              ({"route": "*/nb/", "code": "503"}, 1)])
    assert exp.get("bulkhead_retries_total", upstream="u") == 1
    assert exp.get("bulkhead_retry_budget_exhausted_total", upstream="u") == 0
    assert exp.get("bulkhead_upstream_attempts_total", upstream="u", outcome="http_5xx") == 1
    assert exp.get("bulkhead_upstream_attempts_total", upstream="u", outcome="success") == 1
    assert exp.get("bulkhead_retries_total", upstream="nb") == 0
    assert exp.get("bulkhead_retry_budget_exhausted_total", upstream="nb") == 1
    assert exp.get("bulkhead_upstream_attempts_total", upstream="nb", outcome="http_5xx") == 1
    assert not exp.get("bulkhead_upstream_attempts_total", upstream="nb", outcome="success")
    assert exp.histogram("bulkhead_pool_wait_seconds", pool="u")[0] == 2, "an acquisition per attempt"

    st = stats(bh)
    u, nb = ups_of(st, "u"), ups_of(st, "nb")
    assert (u["retries"], u["retry_budget_exhausted"]) == (1, 0), u
    assert nonzero(u["attempts"]) == {"http_5xx": 1, "success": 1}, u
    assert (nb["retries"], nb["retry_budget_exhausted"]) == (0, 1), nb
    assert nonzero(nb["attempts"]) == {"http_5xx": 1}, nb


def test_breaker_state_closed_open_half_open_closed(bulkhead, upstream):
    """breaker_state 0 while closed, 1 once 3 failures opened it (and /stats says "open"), 2 while the
    probe admitted after open_for is in flight, 0 again once it succeeded."""
    entry = resilient_upstream(upstream, retry={"attempts": 1},
                               breaker={"consecutive_failures": 3, "open_for": "200ms",
                                        "max_open_for": "200ms", "half_open_probes": 1},
                               timeouts={"first_byte": "60s", "total": "90s"})
    bh = admin_ready(bulkhead(upstreams={"u": entry}))
    assert scrape(bh).get("bulkhead_breaker_state", upstream="u") == 0
    assert ups_of(stats(bh), "u")["breaker"] == "closed"
    upstream.set_mode("fail-500")
    for _ in range(3):
        assert fetch(bh.port, "GET", "/fail").status == 500
    upstream.set_mode("ok")
    # admit a probe that stays in flight: requests refused meanwhile are the breaker's 503
    probe = {}

    def admitted():
        base = upstream.count("/hold")
        c = RawClient(bh.port)
        c.request("GET", "/hold?id=probe")
        wait_until(lambda: upstream.count("/hold") > base or c.readable_within(0),
                   what="the request to be admitted or refused")
        if upstream.count("/hold") > base:
            probe["c"] = c
            return True
        r = c.read_response()
        c.close()
        assert r.status == 503 and proxy_status_error(r) == "destination_unavailable", r
        st = stats(bh)
        assert ups_of(st, "u")["breaker"] in ("open", "half_open"), st
        return False

    wait_until(admitted, what="the breaker to admit a probe")
    try:
        assert scrape(bh).get("bulkhead_breaker_state", upstream="u") == 2
        assert ups_of(stats(bh), "u")["breaker"] == "half_open"
        upstream.release("probe")
        assert probe["c"].read_response().status == 200
    finally:
        upstream.release("*")
        if "c" in probe:
            probe["c"].close()
    settle(bh, bulkhead_breaker_state=[({"upstream": "u"}, 0)])
    assert ups_of(stats(bh), "u")["breaker"] == "closed"
    exp = scrape(bh)
    assert exp.get("bulkhead_requests_total", route="*/", code="500") == 3


def test_breaker_open_is_1(bulkhead, upstream):
    """With a long open_for the state stays open: breaker_state 1 and "open", and the requests refused
    meanwhile are counted with their 503."""
    entry = resilient_upstream(upstream, retry={"attempts": 1},
                               breaker={"consecutive_failures": 3, "open_for": "60s", "max_open_for": "60s"})
    bh = admin_ready(bulkhead(upstreams={"u": entry}, workers=2))
    upstream.set_mode("fail-500")
    for _ in range(3):
        assert fetch(bh.port, "GET", "/fail").status == 500
    upstream.set_mode("ok")
    for _ in range(4):
        r = fetch(bh.port, "GET", "/echo-head")
        assert r.status == 503 and proxy_status_error(r) == "destination_unavailable", r
    exp = settle(bh, bulkhead_requests_total=[({"route": "*/", "code": "500"}, 3),
                                              ({"route": "*/", "code": "503"}, 4)])
    assert exp.get("bulkhead_breaker_state", upstream="u") == 1
    assert exp.get("bulkhead_upstream_attempts_total", upstream="u", outcome="http_5xx") == 3
    assert ups_of(stats(bh), "u")["breaker"] == "open"
    assert upstream.traffic() == 3


def test_outlier_ejection_is_counted(bulkhead, upstream_factory):
    a, b = upstream_factory("a"), upstream_factory("b")
    a.set_mode("fail-503")
    entry = resilient_upstream(a, b, balance="round_robin", retry={"attempts": 1},
                               outlier={"consecutive_failures": 2, "eject_for": "60s", "max_ejected": "50%"})
    bh = admin_ready(bulkhead(upstreams={"u": entry}))
    codes = [fetch(bh.port, "GET", "/echo-head?i=%d" % i).status for i in range(10)]
    assert codes.count(503) == 2 and a.traffic() == 2, codes
    exp = settle(bh, bulkhead_outlier_ejections_total=[({"upstream": "u"}, 1)])
    assert exp.get("bulkhead_upstream_attempts_total", upstream="u", outcome="http_5xx") == 2
    assert exp.get("bulkhead_upstream_attempts_total", upstream="u", outcome="success") == 8
    u = ups_of(stats(bh), "u")
    assert u["outlier_ejections"] == 1, u
    eps = {e["address"]: e for e in u["endpoints"]}
    assert eps[a.addr]["ejected"] is True and eps[b.addr]["ejected"] is False, eps


def test_stats_document(bulkhead, upstream):
    """The shape of /stats before any traffic: every key of the contract, with its type."""
    started_after = int(time.time())
    bh = admin_ready(bulkhead(upstream, workers=2))
    quiesce(bh)
    st = stats(bh)
    read_before = int(time.time())
    assert set(st) >= {"version", "uptime_seconds", "draining", "reloads", "workers", "routes", "upstreams",
                       "databases"}, sorted(st)
    assert st["version"] == version_of_binary()
    # whole seconds of the wall clock: bulkhead started after started_after and answered before
    # read_before, so its uptime cannot exceed the seconds between them
    uptime = st["uptime_seconds"]
    assert isinstance(uptime, int) and 0 <= uptime <= read_before - started_after, (
        uptime, read_before - started_after)
    assert st["draining"] is False
    assert st["reloads"] == {"success": 0, "failure": 0}
    assert [w["id"] for w in st["workers"]] == [0, 1], st["workers"]
    assert [w["clients"] for w in st["workers"]] == [0, 0], st["workers"]
    assert sorted(w["accepted"] for w in st["workers"]) == [0, READINESS_PROBES], st["workers"]
    # the configured routes, and the requests that match none under the name ""
    routes = {r["name"]: (r["requests"], nonzero(r["codes"])) for r in st["routes"]}
    assert routes.pop("*/") == (0, {}), st["routes"]
    assert routes == {"": (0, {})}, st["routes"]
    u = ups_of(st, "u")
    assert u["breaker"] == "closed" and u["waiters"] == 0, u
    assert (u["retries"], u["retry_budget_exhausted"], u["outlier_ejections"]) == (0, 0, 0), u
    assert nonzero(u["attempts"]) == {} and set(u["attempts"]) <= OUTCOMES, u
    assert u["pool"] == {"idle": 0, "busy": 0, "connecting": 0}, u
    (ep,) = u["endpoints"]
    assert {k: ep.get(k) for k in ("address", "healthy", "ejected", "idle", "busy", "connecting")} == {
        "address": upstream.addr, "healthy": True, "ejected": False, "idle": 0, "busy": 0, "connecting": 0}, u
    assert st["databases"] == []


@pytest.mark.parametrize("path", ["/metrics", "/stats"])
def test_admin_token(bulkhead, upstream, path):
    bh = admin_ready(bulkhead(upstream, admin={"token": "s3cret-t0ken"}))
    for auth in (None, "Bearer wrong", "Bearer s3cret-t0ken-and-more", "Bearer s3cret-t0ke",
                 "Basic czNjcmV0LXQwa2Vu", "Bearer", "s3cret-t0ken"):
        status, headers, body = admin_get(bh, path, auth=auth)
        assert status == 401, (auth, status, body[:200])
        assert b"bulkhead_" not in body and b"upstreams" not in body, body[:200]
        assert headers["proxy-status"].startswith("bulkhead; error=http_request_denied"), headers
    status, headers, body = admin_get(bh, path, token="s3cret-t0ken")
    assert status == 200, (status, body[:200])
    if path == "/metrics":
        assert headers["content-type"] == CONTENT_TYPE
        assert Exposition(body.decode()).get("bulkhead_client_connections") is not None
    else:
        assert ups_of(json.loads(body), "u")["name"] == "u"


@pytest.mark.parametrize("raw,status", [
    (b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    (b"POST /stats HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405),
    (b"garbage\r\n\r\n", 400),
    # 100 KB, most of it sent after bulkhead answered: it reads and drops the rest before closing,
    # so that closing on unread bytes cannot reset the connection and take the 431 with it
    (b"GET /stats HTTP/1.1\r\nX-Pad: " + b"a" * 100000, 431),
], ids=["404", "405", "400", "431"])
def test_admin_errors_carry_proxy_status(bulkhead, upstream, raw, status):
    """An error the admin listener answers itself names its cause, as the proxy's listeners do."""
    bh = admin_ready(bulkhead(upstream))
    with RawClient(bh.admin_port) as c:
        c.send(raw)
        r = c.read_response()
        assert r.status == status, r
        assert proxy_status_error(r) == {404: "destination_not_found"}.get(status, "http_request_error"), r
        assert not c.buf
        c.sock.settimeout(IO_TIMEOUT)
        try:
            assert c.sock.recv(4096) == b"", "bytes after the answer"
        except ConnectionResetError:
            raise AssertionError("the connection was reset (closed with the client's bytes unread), "
                                 "not closed with a FIN after the answer")


def test_admin_slow_head_is_408_and_closed(bulkhead, upstream):
    """A client that never finishes its request head on the admin port gets 408 at
    limits.header_timeout and is closed: it cannot hold the connection (and its 8 KiB) for ever."""
    bh = admin_ready(bulkhead(upstream, limits={"header_timeout": "300ms"}))
    with RawClient(bh.admin_port) as c:
        c.send(b"GET /stats HTTP/1.1\r\nHost: x\r\n")
        r = c.read_response()
        assert r.status == 408, r
        assert proxy_status_error(r) == "http_request_error", r
        assert c.wait_closed()


def test_admin_max_connections(bulkhead, upstream):
    """admin.max_connections 3: with three connections open (heads not finished), a fourth gets 503
    connection_limit_reached and is closed; the three are still served when they finish, and then a
    new connection is served again."""
    bh = admin_ready(bulkhead(upstream, admin={"max_connections": 3}))

    def fill():
        held = [RawClient(bh.admin_port) for _ in range(3)]
        try:
            for c in held:
                c.send(b"GET /healthz HTTP/1.1\r\n")
            with RawClient(bh.admin_port) as extra:
                extra.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                r = extra.read_response()
            for c in held:
                c.send(b"Host: x\r\n\r\n")
            held_status = [c.read_response().status for c in held]
            # a closed connection not yet reaped (the readiness probe) may take a slot: then try again
            return (r, held_status) if r.status == 503 and held_status == [200] * 3 else None
        finally:
            for c in held:
                c.close()

    r, _ = wait_until(fill, what="three held admin connections and a fourth refused")
    assert proxy_status_error(r) == "connection_limit_reached", r
    assert r.header("Retry-After") == "1", r
    wait_until(lambda: admin_get(bh, "/healthz")[0] == 200, what="an admin connection served again")


def test_without_token_metrics_are_open(bulkhead, upstream):
    bh = admin_ready(bulkhead(upstream, env={"BULKHEAD_ADMIN_TOKEN": ""}))
    assert admin_get(bh, "/metrics")[0] == 200
    assert admin_get(bh, "/stats")[0] == 200


def test_config_reloads_are_counted(bulkhead, upstream):
    """SIGHUP with a valid file counts a success, with a broken one a failure (the old config keeps
    serving); /stats says the same."""
    bh = admin_ready(bulkhead(upstream))
    exp = scrape(bh)
    assert (exp.get("bulkhead_config_reloads_total", result="success"),
            exp.get("bulkhead_config_reloads_total", result="failure")) == (0, 0)
    bh.proc.send_signal(signal.SIGHUP)
    settle(bh, bulkhead_config_reloads_total=[({"result": "success"}, 1), ({"result": "failure"}, 0)])
    good = bh.config_path.read_text()
    bh.config_path.write_text(good + "not yaml: [\n")
    try:
        bh.proc.send_signal(signal.SIGHUP)
        settle(bh, bulkhead_config_reloads_total=[({"result": "success"}, 1), ({"result": "failure"}, 1)])
    finally:
        bh.config_path.write_text(good)
    assert stats(bh)["reloads"] == {"success": 1, "failure": 1}
    assert fetch(bh.port, "GET", "/echo-head").status == 200


# ----------------------------------------------------------------------------------------------
# /stats fields the dashboard reads (issue 13): each compared with /metrics where both exist

def test_stats_route_histogram_and_errors_match_metrics(bulkhead, upstream):
    """A route's duration histogram in /stats (cumulative buckets over duration_buckets_le, then +Inf)
    is the one /metrics exposes, and its errors are its 5xx replies."""
    bh = admin_ready(bulkhead(upstream))
    statuses = [fetch(bh.port, "GET", path).status
                for path in ("/echo-head", "/delay?ms=30", "/status/503", "/status/404", "/status/500")]
    assert statuses == [200, 200, 503, 404, 500], statuses
    exp = settle(bh, bulkhead_request_duration_seconds_count=[({"route": "*/"}, 5)])
    st = stats(bh)
    assert st["duration_buckets_le"] == BUCKETS[:-1], st["duration_buckets_le"]
    route = named(st["routes"], "*/")
    count, total, buckets = exp.histogram("bulkhead_request_duration_seconds", route="*/")
    assert route["duration"]["buckets"] == [v for _, v in buckets], (route, buckets)
    assert route["duration"]["count"] == count == 5
    assert route["duration"]["sum_seconds"] == pytest.approx(total, abs=1e-6)
    assert route["duration"]["sum_seconds"] >= 0.030  # the delayed one alone took 30 ms
    fivexx = sum(v for lab, v in exp.series("bulkhead_requests_total")
                 if lab["route"] == "*/" and lab["code"].startswith("5"))
    assert route["errors"] == fivexx == 2, route
    assert route["requests"] == 5


def test_stats_breaker_time_to_half_open(bulkhead, upstream):
    """An open breaker says how long until it may go half-open (at most its open_for plus the 10%
    jitter), how often it opened and how many requests it refused; closed ones say 0."""
    entry = resilient_upstream(upstream, retry={"attempts": 1},
                               breaker={"consecutive_failures": 2, "open_for": "60s", "max_open_for": "60s"})
    bh = admin_ready(bulkhead(upstreams={"u": entry}))
    u = ups_of(stats(bh), "u")
    assert (u["breaker"], u["breaker_half_open_in_ms"], u["breaker_opens"], u["breaker_rejections"]) == (
        "closed", 0, 0, 0), u
    upstream.set_mode("fail-500")
    for _ in range(2):
        assert fetch(bh.port, "GET", "/x").status == 500
    for _ in range(3):
        assert fetch(bh.port, "GET", "/x").status == 503
    exp = settle(bh, bulkhead_requests_total=[({"route": "*/", "code": "503"}, 3)])
    u = ups_of(stats(bh), "u")
    assert exp.get("bulkhead_breaker_state", upstream="u") == 1 and u["breaker"] == "open", u
    assert 0 < u["breaker_half_open_in_ms"] <= 66000, u
    assert (u["breaker_opens"], u["breaker_rejections"]) == (1, 3), u


def test_stats_pool_bounds_clients_start_and_last_reload(bulkhead, upstream):
    """pool_max and pool_max_pending are the configured bounds; clients, start_time and the last
    reload's result agree with /metrics."""
    bh = admin_ready(bulkhead(upstream, pool={"max_connections": 7, "max_pending": 11}, workers=2))
    with RawClient(bh.port) as c:
        c.request("GET", "/echo-head")
        assert c.read_response().status == 200
        exp = settle(bh, bulkhead_client_connections=[({}, 1)])
        st = stats(bh)
        assert st["clients"] == 1 == sum(per_worker(st, "clients"))
    assert st["start_time"] == exp.get("bulkhead_start_time_seconds")
    u = ups_of(st, "u")
    assert (u["pool_max"], u["pool_max_pending"]) == (7, 11), u
    assert st["last_reload"] == "none"
    assert (st["last_reload_time"], st["last_reload_error"]) == (0, "")
    assert st["last_load_time"] == st["start_time"] == exp.get(
        "bulkhead_config_last_reload_success_timestamp_seconds")
    before = int(time.time())
    bh.proc.send_signal(signal.SIGHUP)
    exp = settle(bh, bulkhead_config_reloads_total=[({"result": "success"}, 1)])
    st = stats(bh)
    assert st["last_reload"] == "success" and st["last_reload_error"] == ""
    assert before <= st["last_reload_time"] == st["last_load_time"] <= time.time()
    assert exp.get("bulkhead_config_last_reload_success_timestamp_seconds") == st["last_load_time"]
    good = bh.config_path.read_text()
    bh.config_path.write_text(good + "not yaml: [\n")
    try:
        bh.proc.send_signal(signal.SIGHUP)
        exp = settle(bh, bulkhead_config_reloads_total=[({"result": "failure"}, 1)])
    finally:
        bh.config_path.write_text(good)
    assert exp.get("bulkhead_config_last_reload_successful") == 0
    failed = stats(bh)
    assert failed["last_reload"] == "failure"
    # the reason, as --check gives it (file:line:column), and the config that still runs keeps its time
    assert failed["last_reload_error"].startswith(str(bh.config_path) + ":"), failed["last_reload_error"]
    assert failed["last_reload_time"] >= st["last_reload_time"]
    assert failed["last_load_time"] == st["last_load_time"]
    assert exp.get("bulkhead_config_last_reload_success_timestamp_seconds") == st["last_load_time"]
