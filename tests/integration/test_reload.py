"""SIGHUP reload (issue 5): the file is read again; an invalid one is logged with its position,
counted, and the old configuration keeps serving; a valid one takes effect for new requests while
in-flight ones finish on the old; listeners are added and removed; upstreams whose settings did not
change keep their pools and breaker state."""
import copy
import json
import os
import re
import signal
import socket
import threading

import pytest
import requests

from conftest import (NO_BREAKER, NO_OUTLIER, admin_stats, can_connect, free_port, named, proxy_status_error,
                      sighup_reload, to_yaml, wait_until)


def entry(*ups, **keys):
    e = {"endpoints": [u.addr for u in ups], "breaker": NO_BREAKER, "outlier": NO_OUTLIER,
         "retry": {"attempts": 1}}
    e.update(keys)
    return e


def upstream_of(bh, path="/echo-head"):
    r = requests.get(bh.url + path, timeout=30)
    assert r.status_code == 200, r.text
    return r.headers["X-Upstream"]


class Load:
    """n threads sending GET /echo-head over keep-alive sessions (their connections live across
    reloads) until stopped; seen: the X-Upstream of every answer, failures: what went wrong."""

    def __init__(self, bh, n):
        self.bh, self.stop, self.seen, self.failures = bh, threading.Event(), [], []
        self.threads = [threading.Thread(target=self._run) for _ in range(n)]
        for t in self.threads:
            t.start()

    def _run(self):
        with requests.Session() as s:
            while not self.stop.is_set():
                try:
                    r = s.get(self.bh.url + "/echo-head", timeout=30)
                    if r.status_code != 200:
                        self.failures.append(r.status_code)
                    self.seen.append(r.headers.get("X-Upstream"))
                except requests.RequestException as e:
                    self.failures.append(repr(e))

    def more(self, n, what):
        """Waits until n more requests were answered."""
        mark = len(self.seen)
        wait_until(lambda: len(self.seen) >= mark + n, what=what)

    def end(self):
        self.stop.set()
        for t in self.threads:
            t.join(60)


def test_changed_route_under_load_loses_nothing(bulkhead, upstream_factory):
    a, b = upstream_factory("a"), upstream_factory("b")
    bh = bulkhead(workers=2, upstreams={"a": entry(a), "b": entry(b)},
                  routes=[{"match": {"path_prefix": "/"}, "upstream": "a"}])
    load = Load(bh, 4)
    try:
        load.more(50, "load through the first route")
        conf = copy.deepcopy(bh.conf)
        conf["routes"] = [{"match": {"path_prefix": "/"}, "upstream": "b"}]
        sighup_reload(bh, conf)
        mark = len(load.seen)
        load.more(200, "load after the reload")
    finally:
        load.end()
    assert load.failures == []
    assert "a" in load.seen and "b" in load.seen
    # once every worker has the new generation, no new request goes to a (4 may have been in flight)
    assert set(load.seen[mark + 4:]) == {"b"}, load.seen[mark:mark + 20]
    assert {upstream_of(bh) for _ in range(20)} == {"b"}


def test_in_flight_request_finishes_on_the_old_configuration(bulkhead, upstream_factory):
    a, b = upstream_factory("a"), upstream_factory("b")
    bh = bulkhead(workers=2, upstreams={"a": entry(a), "b": entry(b)},
                  routes=[{"match": {"path_prefix": "/"}, "upstream": "a"}])
    result = []
    held = threading.Thread(
        target=lambda: result.append(requests.get(bh.url + "/hold?id=old", timeout=60)))
    held.start()
    wait_until(lambda: a.stats()["holding"] == 1, what="the request held on a")
    conf = copy.deepcopy(bh.conf)
    del conf["upstreams"]["a"]      # a is gone from the new configuration altogether
    conf["routes"] = [{"match": {"path_prefix": "/"}, "upstream": "b"}]
    sighup_reload(bh, conf)
    assert upstream_of(bh) == "b"
    a.release("old")
    held.join(60)
    assert result and result[0].status_code == 200 and result[0].text == "released"
    assert result[0].headers["X-Upstream"] == "a"


def test_broken_file_keeps_serving_and_is_counted(bulkhead, upstream):
    bh = bulkhead(upstream, workers=2)
    assert upstream_of(bh) == "up"
    good = bh.config_path.read_text()
    s = sighup_reload(bh, good + "routes: [\n", expect="failure")
    assert s["reloads"] == {"success": 0, "failure": 1}
    assert s["generation"] == 1
    wait_until(lambda: "reload failed" in bh.stderr_text(), what="the error to be logged")
    (line,) = [json.loads(ln) for ln in bh.stderr_text().splitlines() if "reload failed" in ln]
    # the error names the file, and a line and column in the broken part (past the good lines)
    assert line["level"] == "error", line
    m = re.search(re.escape(str(bh.config_path)) + r":(\d+):(\d+): invalid YAML", line["msg"])
    assert m and int(m.group(1)) > len(good.splitlines()) and int(m.group(2)) >= 1, line
    assert upstream_of(bh) == "up"
    metrics = requests.get(bh.admin_url + "/metrics", timeout=30).text
    assert 'bulkhead_config_reloads_total{result="failure"} 1' in metrics
    assert 'bulkhead_config_reloads_total{result="success"} 0' in metrics
    assert "bulkhead_config_last_reload_successful 0" in metrics
    # a semantically invalid file (unknown upstream) is refused the same way
    bad = copy.deepcopy(bh.conf)
    bad["routes"] = [{"match": {"path_prefix": "/"}, "upstream": "nope"}]
    sighup_reload(bh, bad, expect="failure")
    assert upstream_of(bh) == "up"
    # and a good file afterwards is taken
    assert sighup_reload(bh, bh.conf)["reloads"] == {"success": 1, "failure": 2}
    assert "bulkhead_config_last_reload_successful 1" in requests.get(
        bh.admin_url + "/metrics", timeout=30).text


def test_unchanged_upstream_keeps_its_pool(bulkhead, upstream):
    bh = bulkhead(upstream)   # one worker: one pooled connection serves sequential requests
    for _ in range(5):
        upstream_of(bh)
    assert upstream.stats()["connections_accepted"] == 1
    conf = copy.deepcopy(bh.conf)
    conf["routes"] = [{"match": {"path_prefix": "/other"}, "upstream": "u"}] + conf["routes"]
    sighup_reload(bh, conf)
    for _ in range(5):
        upstream_of(bh)
    assert upstream.stats()["connections_accepted"] == 1, "the pooled connection was not kept"
    # a changed setting of the upstream gives it a new pool (and the old idle one is closed)
    conf = copy.deepcopy(conf)
    conf["upstreams"]["u"]["pool"] = {"max_connections": 7}
    sighup_reload(bh, conf)
    upstream_of(bh)
    assert upstream.stats()["connections_accepted"] == 2
    wait_until(lambda: upstream.stats()["open_connections"] == 1,
               what="the replaced pool's idle connection to close")


def test_unchanged_upstream_keeps_its_open_breaker(bulkhead, upstream):
    breaker = {"consecutive_failures": 2, "open_for": "60s", "max_open_for": "60s",
               "failure_rate": 0}
    bh = bulkhead(upstreams={"u": entry(upstream, breaker=breaker)}, workers=2)
    upstream.set_mode("fail-500")
    for _ in range(2):
        assert requests.get(bh.url + "/x", timeout=30).status_code == 500
    r = requests.get(bh.url + "/x", timeout=30)
    assert r.status_code == 503 and proxy_status_error(r) == "destination_unavailable", r.headers
    conf = copy.deepcopy(bh.conf)
    conf["routes"].append({"match": {"path_prefix": "/new"}, "upstream": "u"})
    sighup_reload(bh, conf)
    upstream.set_mode("ok")
    r = requests.get(bh.url + "/x", timeout=30)
    assert r.status_code == 503 and proxy_status_error(r) == "destination_unavailable", \
        "the reload closed the breaker"
    assert 'bulkhead_breaker_state{upstream="u"} 1' in requests.get(
        bh.admin_url + "/metrics", timeout=30).text
    # a changed breaker setting is a new breaker: closed
    conf = copy.deepcopy(conf)
    conf["upstreams"]["u"]["breaker"] = dict(breaker, consecutive_failures=3)
    sighup_reload(bh, conf)
    assert requests.get(bh.url + "/x", timeout=30).status_code == 200


def test_listeners_are_added_and_removed(bulkhead, upstream):
    bh = bulkhead(upstream, workers=2)
    second = free_port()
    conf = copy.deepcopy(bh.conf)
    conf["listeners"] = conf["listeners"] + [
        {"name": "second", "address": "127.0.0.1:%d" % second}]
    sighup_reload(bh, conf)
    assert requests.get("http://127.0.0.1:%d/echo-head" % second, timeout=30).status_code == 200
    conf = copy.deepcopy(conf)
    conf["listeners"] = conf["listeners"][1:]
    sighup_reload(bh, conf)
    wait_until(lambda: not can_connect(bh.port), what="the removed listener to close")
    assert requests.get("http://127.0.0.1:%d/echo-head" % second, timeout=30).status_code == 200


def test_listener_address_in_use_fails_the_reload(bulkhead, upstream):
    bh = bulkhead(upstream)
    taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        conf = copy.deepcopy(bh.conf)
        conf["listeners"] = conf["listeners"] + [
            {"name": "taken", "address": "127.0.0.1:%d" % taken.getsockname()[1]}]
        sighup_reload(bh, conf, expect="failure")
        wait_until(lambda: "taken" in bh.stderr_text(), what="the listener error to be logged")
        assert upstream_of(bh) == "up"
    finally:
        taken.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_many_reloads_under_load(bulkhead, upstream_factory, workers):
    """Reload after reload while requests flow, switching between two upstreams and back: every
    request succeeds and nothing leaks (the fixture checks the sanitizer output at exit)."""
    a, b = upstream_factory("a"), upstream_factory("b")
    bh = bulkhead(workers=workers, upstreams={"a": entry(a), "b": entry(b)},
                  routes=[{"match": {"path_prefix": "/"}, "upstream": "a"}])
    load = Load(bh, 3)
    try:
        conf = copy.deepcopy(bh.conf)
        for i in range(10):
            conf["routes"] = [{"match": {"path_prefix": "/"}, "upstream": "ab"[i % 2 == 0]}]
            if i % 3 == 0:   # and sometimes a changed upstream: a new pool each time
                conf["upstreams"]["a"]["pool"] = {"max_connections": 10 + i}
            sighup_reload(bh, conf)
            load.more(20, "requests after reload %d" % i)
    finally:
        load.end()
    assert load.failures == []
    assert admin_stats(bh)["reloads"] == {"success": 10, "failure": 0}


def test_settings_sized_at_startup_keep_their_values(bulkhead, upstream):
    """workers and the header limits size worker state at startup: a reload that changes them keeps
    the running values and says so; the rest of the file still applies."""
    bh = bulkhead(upstream, workers=2)
    conf = copy.deepcopy(bh.conf)
    conf["workers"] = 3
    conf["limits"] = {"max_header_bytes": "4KiB"}
    conf["routes"] = [{"name": "renamed", "match": {"path_prefix": "/"}, "upstream": "u"}]
    st = sighup_reload(bh, conf)
    assert len(st["workers"]) == 2
    wait_until(lambda: "workers changed; it takes effect on restart" in bh.stderr_text()
               and "limits.max_header_bytes changed" in bh.stderr_text(),
               what="the warnings about workers and limits.max_header_bytes")
    # the old header limit (16 KiB) still holds: an 8 KiB header is accepted
    r = requests.get(bh.url + "/echo-head", headers={"X-Big": "a" * 8192}, timeout=30)
    assert r.status_code == 200
    assert [x["name"] for x in admin_stats(bh)["routes"] if x["requests"]] == ["renamed"]


def test_replaced_upstream_pool_keeps_no_idle_connection(bulkhead, upstream):
    """The pools of an upstream whose settings a reload changed serve the requests that started before
    it, but close their idle connections at once and each busy one when its request ends."""
    bh = bulkhead(upstream, pool={"max_connections": 4, "idle_timeout": "5m"})  # only retiring closes
    results = {}

    def get(hold):
        results[hold] = requests.get(bh.url + "/hold?id=" + hold, timeout=60)

    threads = {h: threading.Thread(target=get, args=(h,)) for h in ("first", "second")}
    for t in threads.values():
        t.start()
    wait_until(lambda: upstream.stats()["holding"] == 2, what="two requests held")
    upstream.release("first")
    threads["first"].join(60)
    assert results["first"].status_code == 200
    wait_until(lambda: named(admin_stats(bh)["upstreams"], "u")["pool"]["idle"] == 1,
               what="the first connection idle in the pool")
    assert upstream.stats()["open_connections"] == 2
    conf = copy.deepcopy(bh.conf)
    conf["upstreams"]["u"]["pool"] = {"max_connections": 5, "idle_timeout": "5m"}
    sighup_reload(bh, conf)
    wait_until(lambda: upstream.stats()["open_connections"] == 1,
               what="the replaced pool's idle connection to close")
    assert upstream.stats()["holding"] == 1   # the request in flight is not disturbed
    upstream.release("second")
    threads["second"].join(60)
    assert results["second"].status_code == 200 and results["second"].text == "released"
    wait_until(lambda: upstream.stats()["open_connections"] == 0,
               what="the replaced pool's last connection to close once its request ended")
    assert upstream_of(bh) == "up"


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_storm_faster_than_reloads_loses_and_repeats_nothing(bulkhead, upstream_factory, workers,
                                                                     tmp_path):
    """40 SIGHUPs back to back (no wait for the previous reload), the file replaced atomically
    between them, while 4 clients send POSTs each with its own id: every POST gets 200 and reaches
    an upstream exactly once; no reload fails; the last file is what serves at the end."""
    a, b = upstream_factory("a"), upstream_factory("b")
    bh = bulkhead(workers=workers, upstreams={"a": entry(a), "b": entry(b)},
                  routes=[{"match": {"path_prefix": "/"}, "upstream": "a"}])
    stop, sent, failures, lock = threading.Event(), [], [], threading.Lock()

    def client(k):
        with requests.Session() as s:
            i = 0
            while not stop.is_set():
                rid = "%d-%d" % (k, i)
                i += 1
                try:
                    r = s.post(bh.url + "/echo-head?id=" + rid, data=b"x" * 100, timeout=30)
                    ok = r.status_code == 200
                except requests.RequestException as e:
                    ok, r = False, e
                with lock:
                    sent.append(rid)
                    if not ok:
                        failures.append((rid, r))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(sent) >= 50, what="load before the storm")
        conf = copy.deepcopy(bh.conf)
        for i in range(40):
            conf["routes"] = [{"match": {"path_prefix": "/"}, "upstream": "ab"[i % 2]}]
            tmp = tmp_path / "next.yaml"
            tmp.write_text(to_yaml(conf) + "\n")
            os.replace(tmp, bh.config_path)  # a reload reads a whole file, old or new
            bh.proc.send_signal(signal.SIGHUP)
        mark = len(sent)
        wait_until(lambda: len(sent) >= mark + 100, what="load after the storm")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert failures == [], failures[:5]
    st = admin_stats(bh)
    assert st["reloads"]["failure"] == 0 and st["reloads"]["success"] >= 1, st["reloads"]
    # the last file routes to b: once the last reload is applied everywhere, b answers
    wait_until(lambda: upstream_of(bh) == "b", what="the last file to serve")
    got = [e["target"].split("id=", 1)[1] for up in (a, b) for e in up.log()
           if e["method"] == "POST" and "id=" in e["target"]]
    assert sorted(got) == sorted(sent), "lost: %r, repeated: %r" % (
        sorted(set(sent) - set(got))[:5], sorted({x for x in got if got.count(x) > 1})[:5])
