"""Nothing lost, nothing sent twice (issue 12, section 2): a load of non-idempotent requests, each with a
unique id, goes through bulkhead while a fault injector breaks the backends; afterwards every id is
accounted for from the client's answers and from what the backends recorded.

HTTP half: POST /record to an upstream of two endpoints (real `upstream.py` processes, each appending
every id it receives to its own log file, flushed per line, so the record survives a kill -9). Retries
are configured the way an operator would (on, attempts 3, methods: the default, idempotent only), so
what is exercised is bulkhead's rule: a POST that may have reached the upstream is never sent again;
one that provably did not (connect refused) is retried on the other endpoint. The fault injector (the
test's own thread, while CLIENTS threads send), paced by the number of successful requests: kill -9 of
one endpoint (and of both at once), each restarted on the
same port; `reset` (RST after reading the request) and `reset-after-head` (a 200 head, then RST) on
the next few requests of one endpoint. Responses are sent in two halves some milliseconds apart, so a
kill -9 lands mid-body for the requests in flight.

SQL half: POST /sql INSERTs of unique ids (every 4th request a batch of two INSERTs of its id, parts 1
and 2, which must land together or not at all) into a table WITHOUT a unique constraint (a constraint
would turn a second insert into an error and hide it), on a private Postgres (never the session's
one), while the injector restarts it (`-m fast`, sometimes `-m immediate`) or terminates bulkhead's backends.
Duplicates are counted with GROUP BY id, part HAVING count(*) > 1. synchronous_commit is turned back on in
the private cluster: with it off (the suite's default, for speed) a crash may forget a committed row,
which would be Postgres's loss, not bulkhead's.

What is asserted (and printed, and written to nothing-lost-*.json in the test's tmp dir):
- every id got an answer: a complete response, or (HTTP) a response head followed by a cut connection;
- no id reached the backend twice;
- every 2xx id reached the backend (is in the table) exactly once;
- an error id reached the backend only if the error says it may have: bulkhead's 502/504 with a
  Proxy-Status type of a request that was sent (connection_terminated, http_response_timeout, ...), a
  cut after the head; for /sql also 400 with a Postgres error that ended the session (57P01, 57P02,
  class 08) and 504. Errors bulkhead answers before sending (connection_refused,
  destination_unavailable, connection_timeout, connection_limit_reached; /sql 503, 57P03) must be absent
  at the backend.

The load is env-tunable for a longer run by hand. It is counted in successful requests, because errors
answered at once (an open breaker) would use up any fixed number of requests in a moment: the faults
come every SIZE // (FAULTS + 1) successes, counted from the end of the previous fault, so a run has
about SIZE successes plus those during the faults, and the errors on top. BH_NOTHING_LOST_REQUESTS (the
HTTP SIZE, default 2000), BH_NOTHING_LOST_FAULTS (HTTP faults, default 30), BH_NOTHING_LOST_SQL_REQUESTS
(default 400), BH_NOTHING_LOST_SQL_FAULTS (default 6).
"""
import collections
import json
import os
import random
import signal
import subprocess
import sys
import threading
import urllib.request
import uuid

import pytest

from conftest import (IO_TIMEOUT, PYTHON, STOP_TIMEOUT, UPSTREAM_PY, PeerClosed, RawClient, RawResponse,
                      can_connect, free_port, proxy_status_error, wait_until)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "sql"))
import sqlfix  # noqa: E402  (the SQL helpers: a throwaway Postgres, the Neon client)

N_HTTP = int(os.environ.get("BH_NOTHING_LOST_REQUESTS", "2000"))
N_SQL = int(os.environ.get("BH_NOTHING_LOST_SQL_REQUESTS", "400"))
FAULTS = int(os.environ.get("BH_NOTHING_LOST_FAULTS", "30"))
SQL_FAULTS = int(os.environ.get("BH_NOTHING_LOST_SQL_FAULTS", "6"))  # a restart takes 1-3 s
CLIENTS = 8
BACKOFF = 0.05  # seconds a client waits after a 503 unless another client succeeds (see Load)

# Proxy-Status error types of bulkhead's replies, by what they say about the request.
SENT_TYPES = {  # it may have reached the upstream: the client can tell the outcome is unknown
    "connection_terminated", "http_response_timeout", "connection_read_timeout", "http_protocol_error",
    "http_response_header_section_size"}
NOT_SENT_TYPES = {  # answered before anything was written upstream
    "connection_refused", "destination_unavailable", "connection_timeout", "connection_limit_reached",
    "tls_certificate_error", "tls_alert_received", "tls_protocol_error"}

# /sql: Postgres errors (the 400 body's code) that end the session and may come after the statement
# ran, and those that come at connect time, before anything ran.
SQL_SESSION_ENDED = {"57P01", "57P02", "57P05"}
SQL_AT_CONNECT = {"57P03", "53300"}


# ----------------------------------------------------------------------------------------------
# the recording upstream: an upstream.py process that can be killed and restarted on the same ports

class RecordingUpstream:
    def __init__(self, tmp_path, name):
        self.name = name
        self.port = free_port()
        self.control_port = free_port()
        self.addr = "127.0.0.1:%d" % self.port
        self.record_path = tmp_path / ("record-%s.log" % name)
        self.out_path = tmp_path / ("upstream-%s.out" % name)
        self.proc = None
        self.starts = 0
        self.start()

    def start(self):
        self.spawn()
        self.wait_ready()

    def spawn(self):
        args = [PYTHON, UPSTREAM_PY, "--port", str(self.port), "--control-port", str(self.control_port),
                "--name", self.name, "--record-log", str(self.record_path)]
        with open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        self.starts += 1

    def wait_ready(self):
        wait_until(self._ready, what="upstream %s to listen (start %d)" % (self.name, self.starts))

    def _ready(self):
        if self.proc.poll() is not None:
            raise RuntimeError("upstream %s exited: %s" % (self.name, self.out_path.read_text()[-2000:]))
        # the data port is bound before the control port: a control answer means both listen
        if not can_connect(self.control_port):
            return False
        return "requests" in json.loads(self.control("/stats"))

    def control(self, path, body=None):
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.control_port, path),
                                     data=None if body is None else json.dumps(body).encode(),
                                     method="GET" if body is None else "POST")
        with urllib.request.urlopen(req, timeout=IO_TIMEOUT) as r:
            return r.read()

    def served(self):
        """Requests this life of the process received on its data port."""
        return json.loads(self.control("/stats"))["requests_served"]

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(STOP_TIMEOUT)

    def set_mode(self, mode, count):
        self.control("/control", {"mode": mode, "count": count})

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def recorded(self):
        """The ids this upstream received, one per request, over all of its lives."""
        if not self.record_path.exists():
            return []
        return [line.split(" ", 1)[0] for line in self.record_path.read_text().splitlines() if line]


# ----------------------------------------------------------------------------------------------
# load and pacing

class Load:
    """CLIENTS threads that send requests with new ids (token-000000, token-000001, ...) through
    one(id) -> result (a dict with "kind"), until stopped or `cap` were sent. Results are counted
    under a condition, so the injector waits for progress without sleeping."""

    def __init__(self, one, cap, refused=lambda res: False):
        self.refused = refused
        self.token = uuid.uuid4().hex[:8]
        self.cap = cap
        self.one = one
        self.ids = []  # issued, in order
        self.results = {}
        self.ok = 0
        self.stopped = False
        self.cond = threading.Condition()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(CLIENTS)]

    def _take(self):
        with self.cond:
            if self.stopped or len(self.ids) >= self.cap:
                return None
            rid = "%s-%06d" % (self.token, len(self.ids))
            self.ids.append(rid)
            return rid

    def _run(self):
        while True:
            rid = self._take()
            if rid is None:
                return
            try:
                res = self.one(rid)
            except Exception as e:  # noqa: BLE001 - reported, never hidden
                res = {"kind": "client-exception", "what": repr(e)}
            with self.cond:
                self.results[rid] = res
                self.ok += res["kind"] == "ok"
                self.cond.notify_all()
                if self.refused(res):
                    # Client backoff, as a client honouring Retry-After would: after an answer that
                    # the service is unavailable, wait until some client succeeds again, at most
                    # BACKOFF seconds. Without it, the fast 503s of an open breaker would be most
                    # of the load while a backend restarts (thousands a second).
                    ok = self.ok
                    self.cond.wait_for(lambda: self.ok > ok or self.stopped, timeout=BACKOFF)

    def _over(self):
        return (self.stopped or len(self.ids) >= self.cap) and len(self.results) == len(self.ids)

    def over(self):
        with self.cond:
            return self._over()

    def wait_more_ok(self, n):
        """Blocks until n more requests succeeded (True) or the load is over (False); an
        AssertionError if nothing moves for a long time."""
        with self.cond:
            goal = self.ok + n
            moved = self.cond.wait_for(lambda: self.ok >= goal or self._over(),
                                       timeout=max(120, IO_TIMEOUT * 4))
            assert moved, "the load stalled at %d answered, %d ok" % (len(self.results), self.ok)
            return self.ok >= goal

    def start(self):
        for t in self.threads:
            t.start()

    def stop(self):
        with self.cond:
            self.stopped = True
            self.cond.notify_all()
        for t in self.threads:
            t.join(max(120, IO_TIMEOUT * 4))
        assert not any(t.is_alive() for t in self.threads), "client threads still running"


def run_with_faults(load, faults, size, nfaults):
    """Runs the load with nfaults faults (faults[k % len] in turn), each after another
    size // (nfaults + 1) successes counted from the end of the previous fault (so that faults are
    apart by real traffic, however long a restart takes), and as many successes after the last.
    Returns the names of the faults applied, in order."""
    step = max(1, size // (nfaults + 1))
    applied = []
    load.start()
    try:
        for k in range(nfaults):
            if not load.wait_more_ok(step):
                break
            name, fn = faults[k % len(faults)]
            fn()
            applied.append(name)
        load.wait_more_ok(step)
    finally:
        load.stop()
    return applied


def summary_line(capsys, title, counts, path):
    path.write_text(json.dumps(counts, indent=2, sort_keys=True) + "\n")
    line = "nothing-lost %s: %s (json: %s)" % (title, json.dumps(counts, sort_keys=True), path)
    with capsys.disabled():
        print("\n" + line)


# ----------------------------------------------------------------------------------------------
# HTTP

def shape(rid):
    """The pause between a response's halves (ms) and its padding, drawn from the id."""
    rng = random.Random(rid)
    return rng.randrange(0, 15), rng.choice((0, 2000, 20000))


def post_record(port, rid, pause_ms, pad):
    """One POST /record on a fresh connection. The result: kind ok / error / cut / no-response,
    with the status and bulkhead's Proxy-Status error type."""
    body = json.dumps({"id": rid}).encode()
    with RawClient(port) as c:
        c.request("POST", "/record?pause_ms=%d&pad=%d" % (pause_ms, pad),
                  headers=[("X-Record-Id", rid), ("Content-Type", "application/json")], body=body)
        try:
            version, status, reason, headers, raw = c.read_head()
        except (PeerClosed, ConnectionResetError):
            return {"kind": "no-response"}
        r = RawResponse(version, status, reason, headers, b"", raw, [], [])
        ptype = proxy_status_error(r)
        try:
            data = c._read_exact(int(r.header("Content-Length") or "0"))
        except (PeerClosed, ConnectionResetError):
            # /record's own head has a Content-Type, the reset-after-head mode's has none: a cut
            # /record body is a kill -9 that landed between the two halves of the answer
            why = "kill -9 mid-body" if r.header("Content-Type") else "reset-after-head"
            return {"kind": "cut", "status": status, "ptype": ptype, "why": why}
    if 200 <= status < 300:
        if data != rid.encode() + b"\n" + b"p" * pad:
            return {"kind": "wrong-body", "status": status, "body": data[:100].decode("latin-1")}
        return {"kind": "ok", "status": status, "upstream": r.header("X-Upstream")}
    return {"kind": "error", "status": status, "ptype": ptype}


def http_label(res):
    if res["kind"] == "error":
        return "%d %s" % (res["status"], res["ptype"])
    if res["kind"] == "cut":
        return "cut after a %d head (%s)" % (res["status"], res["why"])
    return res["kind"]


def may_have_been_sent(res):
    """The client can tell this request may have reached the upstream."""
    if res["kind"] == "cut":
        return True
    return res["kind"] == "error" and res["status"] in (502, 504) and res["ptype"] in SENT_TYPES


def never_sent(res):
    return res["kind"] == "error" and res["ptype"] in NOT_SENT_TYPES


def test_http_posts_nothing_lost_nothing_sent_twice(bulkhead, tmp_path, capsys):
    a, b = RecordingUpstream(tmp_path, "a"), RecordingUpstream(tmp_path, "b")
    ups = [a, b]
    try:
        # retries as an operator sets them (the defaults, spelled out); a breaker and an outlier
        # detector tuned for endpoints that come back within a second, so that most requests meet
        # the faults rather than an open breaker
        retry = {"attempts": 3, "on": ["connect-failure", "reset-before-response", "gateway-error"]}
        bh = bulkhead(workers=2, upstreams={"u": {
            "endpoints": [a.addr, b.addr], "retry": retry, "timeouts": {"connect": "1s", "total": "10s"},
            "breaker": {"open_for": "100ms", "max_open_for": "400ms", "half_open_probes": 1},
            "outlier": {"eject_for": "200ms"}}})
        load = Load(lambda rid: post_record(bh.port, rid, *shape(rid)), cap=20 * N_HTTP,
                    refused=lambda r: r.get("status") == 503)

        def kill(*which):
            def fn():
                for u in which:
                    u.kill9()
                for u in which:
                    u.spawn()
                for u in which:
                    u.wait_ready()
                # and back in rotation (the outlier detector ejected it while it was down): else
                # the next fault could kill the only endpoint in use
                for u in which:
                    wait_until(lambda: u.served() or load.over(),
                               what="bulkhead to send requests to %s again" % u.name)
            return fn

        faults = [("kill -9 a", kill(a)), ("reset b", lambda: b.set_mode("reset", 3)),
                  ("kill -9 b", kill(b)), ("reset-after-head a", lambda: a.set_mode("reset-after-head", 3)),
                  ("kill -9 a and b", kill(a, b)), ("reset a", lambda: a.set_mode("reset", 3)),
                  ("reset-after-head b", lambda: b.set_mode("reset-after-head", 3))]
        applied = run_with_faults(load, faults, N_HTTP, FAULTS)
    finally:
        for u in ups:
            u.stop()
    results = load.results
    seen = collections.Counter()
    by_upstream = {}
    for u in ups:
        got = u.recorded()
        by_upstream[u.name] = len(got)
        seen.update(got)
    twice = sorted(rid for rid, n in seen.items() if n > 1)
    ids = load.ids
    unknown = sorted(rid for rid in seen if rid not in results)
    ok = [rid for rid, r in results.items() if r["kind"] == "ok"]
    missing = sorted(rid for rid in ok if seen[rid] != 1)
    errs = {rid: r for rid, r in results.items() if r["kind"] != "ok"}
    err_seen = [rid for rid in errs if seen[rid]]
    err_seen_ok = [rid for rid in err_seen if may_have_been_sent(errs[rid])]
    err_seen_bad = sorted(rid for rid in err_seen if not may_have_been_sent(errs[rid]))
    unclassified = sorted(rid for rid, r in errs.items()
                          if not may_have_been_sent(r) and not never_sent(r))
    counts = {
        "sent": len(ids), "answered": len(results), "2xx": len(ok),
        "errors": dict(collections.Counter(http_label(r) for r in errs.values())),
        "errors_maybe_sent": sum(1 for r in errs.values() if may_have_been_sent(r)),
        "errors_never_sent": sum(1 for r in errs.values() if never_sent(r)),
        "errors_maybe_sent_seen_at_backend": len(err_seen_ok),
        "errors_maybe_sent_not_at_backend": sum(1 for rid, r in errs.items()
                                                if may_have_been_sent(r) and not seen[rid]),
        "ids_seen_by_upstreams": len(seen), "requests_recorded_by_upstream": by_upstream,
        "ids_seen_twice": len(twice), "2xx_missing_at_backend": len(missing),
        "errors_never_sent_seen_at_backend": len(err_seen_bad), "unclassified_errors": len(unclassified),
        "faults": dict(collections.Counter(applied)), "upstream_starts": {u.name: u.starts for u in ups},
        "bulkhead_workers": 2,
    }
    summary_line(capsys, "http", counts, tmp_path / "nothing-lost-http.json")
    assert len(results) == len(ids)
    assert not twice, "ids received twice by the upstreams: %s (%r)" % (
        twice[:10], [results.get(rid) for rid in twice[:10]])
    assert not missing, "2xx ids not received exactly once: %s" % [(rid, seen[rid]) for rid in missing[:10]]
    assert not unknown, unknown[:10]
    assert not err_seen_bad, "errors answered as never sent, yet received: %s" % [
        (rid, errs[rid]) for rid in err_seen_bad[:10]]
    assert not unclassified, "errors the client cannot place: %s" % [
        (rid, errs[rid]) for rid in unclassified[:10]]
    # a response head comes only after the id was recorded: each cut id is on record, once
    cut_unrecorded = sorted(rid for rid, r in errs.items() if r["kind"] == "cut" and seen[rid] != 1)
    assert not cut_unrecorded, "ids cut after a head, not on record once: %s" % [
        (rid, seen[rid], errs[rid]) for rid in cut_unrecorded[:10]]
    # the faults ran: every kind was applied, and some request was sent and then failed
    assert len(applied) == FAULTS and set(applied) == {name for name, _ in faults}, (
        "not every fault ran (the load reached its cap of %d requests first): %s" % (load.cap, applied))
    assert counts["errors_maybe_sent"] > 0, counts


# ----------------------------------------------------------------------------------------------
# SQL

@pytest.fixture
def private_pg():
    pg = sqlfix.Postgres()
    try:
        # a crash (-m immediate) must not forget a committed row (see the module docstring)
        pg.sql("ALTER SYSTEM SET synchronous_commit = on")
        pg.sql("SELECT pg_reload_conf()")
        yield pg
    finally:
        pg.destroy()


def sql_label(res):
    if res["kind"] == "error":
        s = "%d %s" % (res["status"], res["ptype"])
        return s + (" " + res["code"] if res["code"] else "")
    return res["kind"]


def sql_may_have_run(res):
    if res["kind"] != "error":
        return False
    if res["status"] == 502 and res["ptype"] == "connection_terminated":
        return True
    if res["status"] == 504:  # the deadline: the query is cancelled, but it may have committed first
        return True
    return res["status"] == 400 and (res["code"] in SQL_SESSION_ENDED or res["code"].startswith("08"))


def sql_never_ran(res):
    if res["kind"] != "error":
        return False
    if res["status"] == 503:
        return True
    return res["status"] == 400 and res["code"] in SQL_AT_CONNECT


def is_batch(rid):
    """Every 4th request is a batch of two INSERTs (parts 1 and 2), the others one INSERT (part 0)."""
    return int(rid.rsplit("-", 1)[1]) % 4 == 3


def expected_parts(rid):
    return [1, 2] if is_batch(rid) else [0]


def insert_one(client, table, rid):
    ins = "INSERT INTO %s (id, part) VALUES ($1, $2)" % table
    if is_batch(rid):
        r = client.batch([{"query": ins, "params": [rid, "1"]}, {"query": ins, "params": [rid, "2"]}])
    else:
        r = client.query(ins, [rid, "0"])
    if r is None:
        return {"kind": "no-response"}
    if r.status == 200:
        return {"kind": "ok", "status": 200}
    code = ""
    try:
        code = r.json().get("code", "")
    except (ValueError, AttributeError):
        pass
    return {"kind": "error", "status": r.status, "ptype": proxy_status_error(r), "code": code or ""}


def test_sql_inserts_nothing_lost_nothing_run_twice(bulkhead, private_pg, tmp_path, capsys):
    pg = private_pg
    table = "lost_ids"
    # no unique constraint: see the module docstring
    pg.as_user("CREATE TABLE %s (id text NOT NULL, part int NOT NULL)" % table)
    conf = sqlfix.sql_config(pg, db={"pool": {"max_connections": 4, "acquire_timeout": "5s"},
                                     "timeouts": {"connect": "2s", "total": "10s"},
                                     "retry": {"attempts": 3},
                                     "breaker": {"open_for": "100ms", "max_open_for": "400ms",
                                                 "half_open_probes": 1}})
    bh = bulkhead(workers=2, **conf)
    client = sqlfix.SqlClient(bh, pg)
    load = Load(lambda rid: insert_one(client, table, rid), cap=20 * N_SQL,
                refused=lambda r: r.get("status") == 503)

    def terminate():
        pg.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
               [sqlfix.ALICE])

    faults = [("restart -m fast", lambda: pg.restart("fast")), ("terminate backends", terminate),
              ("restart -m fast", lambda: pg.restart("fast")), ("restart -m immediate",
                                                                 lambda: pg.restart("immediate"))]
    applied = run_with_faults(load, faults, N_SQL, SQL_FAULTS)
    pg.ensure_running()
    in_table = collections.defaultdict(list)  # id -> its parts, sorted (a part twice if inserted twice)
    for rid, part in pg.app_sql("SELECT id, part FROM %s ORDER BY id, part" % table):
        in_table[rid].append(part)
    twice = pg.app_sql("SELECT id, part, count(*) FROM %s GROUP BY id, part HAVING count(*) > 1" % table)
    results, ids = load.results, load.ids
    ok = [rid for rid, r in results.items() if r["kind"] == "ok"]
    missing = sorted(rid for rid in ok if in_table.get(rid) != expected_parts(rid))
    # a batch runs in one transaction: all of its rows or none, whatever the answer
    half_batches = sorted(rid for rid, parts in in_table.items() if parts != expected_parts(rid))
    errs = {rid: r for rid, r in results.items() if r["kind"] != "ok"}
    err_in = [rid for rid in errs if rid in in_table]
    err_in_bad = sorted(rid for rid in err_in if not sql_may_have_run(errs[rid]))
    unclassified = sorted(rid for rid, r in errs.items()
                          if not sql_may_have_run(r) and not sql_never_ran(r))
    unknown = sorted(rid for rid in in_table if rid not in results)
    counts = {
        "sent": len(ids), "answered": len(results), "2xx": len(ok),
        "errors": dict(collections.Counter(sql_label(r) for r in errs.values())),
        "errors_may_have_run": sum(1 for r in errs.values() if sql_may_have_run(r)),
        "errors_never_ran": sum(1 for r in errs.values() if sql_never_ran(r)),
        "errors_may_have_run_in_table": len(err_in) - len(err_in_bad),
        "batches_sent": sum(1 for rid in ids if is_batch(rid)),
        "rows": sum(len(p) for p in in_table.values()), "ids_in_table": len(in_table),
        "ids_twice": len(twice), "2xx_missing_in_table": len(missing),
        "ids_with_wrong_rows": len(half_batches),
        "errors_never_ran_in_table": len(err_in_bad), "unclassified_errors": len(unclassified),
        "faults": dict(collections.Counter(applied)), "bulkhead_workers": 2,
    }
    summary_line(capsys, "sql", counts, tmp_path / "nothing-lost-sql.json")
    assert len(results) == len(ids)
    assert not twice, "ids inserted twice: %s (%r)" % (
        twice[:10], [results.get(r[0]) for r in twice[:10]])
    assert not missing, "2xx ids without exactly their rows in the table: %s" % [
        (rid, in_table.get(rid)) for rid in missing[:10]]
    assert not half_batches, "ids with other rows than their request's: %s" % [
        (rid, in_table[rid], results.get(rid)) for rid in half_batches[:10]]
    assert not unknown, unknown[:10]
    assert not err_in_bad, "errors answered as never run, yet in the table: %s" % [
        (rid, errs[rid]) for rid in err_in_bad[:10]]
    assert not unclassified, "errors the client cannot place: %s" % [
        (rid, errs[rid]) for rid in unclassified[:10]]
    assert len(applied) == SQL_FAULTS and set(applied) == {name for name, _ in faults}, (
        "not every fault ran (the load reached its cap of %d requests first): %s" % (load.cap, applied))
    assert counts["errors"], "no fault reached a client: the test did not test anything"
