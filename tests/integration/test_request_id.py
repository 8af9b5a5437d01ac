"""Request ids (request_id.header, default X-Request-Id): every request gets one, the upstream gets it
in that header (the client's own fields of that name are never passed on), the access log line has it,
and so has every reply bulkhead makes itself, so that a client holding a 502 can name the log line.
A well-formed id the client sent is kept when request_id.from_client allows it; otherwise bulkhead
makes one: the worker's random prefix and a count, 32 hex digits."""
import re

import pytest

from conftest import (RawClient, fetch, free_port, proxy_status_error, resilient_upstream, run_bulkhead,
                      wait_until)
from test_access_log import file_lines

GENERATED = re.compile(r"^[0-9a-f]{32}$")


def seen_ids(upstream, name="x-request-id"):
    """The values of the field name in each request the upstream received, oldest first."""
    return [[v for k, v in r["headers"] if k.lower() == name] for r in upstream.log()]


def start(bulkhead, upstream, tmp_path, request_id=None, **kw):
    log = tmp_path / "access.log"
    conf = {"log": {"access": str(log)}}
    if request_id is not None:
        conf["request_id"] = request_id
    conf.update(kw)
    return bulkhead(upstream, **conf), log


def send(bh, headers=()):
    with RawClient(bh.port) as c:
        c.request("GET", "/echo-head", headers=list(headers))
        return c.read_response()


def test_generated_ids_reach_the_upstream_and_the_log(bulkhead, upstream, tmp_path):
    bh, log = start(bulkhead, upstream, tmp_path, workers=2)
    for _ in range(6):
        assert send(bh).status == 200
    ids = seen_ids(upstream)
    assert all(len(v) == 1 and GENERATED.match(v[0]) for v in ids), ids
    flat = [v[0] for v in ids]
    assert len(set(flat)) == 6, "request ids repeat: %r" % flat
    assert sorted(e["request_id"] for e in file_lines(log, 6)) == sorted(flat)


@pytest.mark.parametrize("value", ["abc-123", "4bf92f3577b34da6a3ce929d0e0e4736",
                                   "Root=1-5759e988-bd862e3fe1be46a9", "a" * 64])
def test_a_well_formed_client_id_is_kept(bulkhead, upstream, tmp_path, value):
    bh, log = start(bulkhead, upstream, tmp_path)
    assert send(bh, [("X-Request-Id", value)]).status == 200
    assert seen_ids(upstream) == [[value]]
    assert file_lines(log, 1)[0]["request_id"] == value


@pytest.mark.parametrize("headers", [
    [("X-Request-Id", "has space")],
    [("X-Request-Id", "a" * 65)],
    [("X-Request-Id", "quote\"d")],
    [("X-Request-Id", "")],
    [("X-Request-Id", "one"), ("x-request-id", "two")],
], ids=["space", "too-long", "quote", "empty", "two-fields"])
def test_a_malformed_or_ambiguous_client_id_is_replaced(bulkhead, upstream, tmp_path, headers):
    bh, log = start(bulkhead, upstream, tmp_path)
    assert send(bh, headers).status == 200
    (ids,) = seen_ids(upstream)
    assert len(ids) == 1 and GENERATED.match(ids[0]), ids
    assert file_lines(log, 1)[0]["request_id"] == ids[0]


def test_from_client_false_replaces_every_client_id(bulkhead, upstream, tmp_path):
    bh, _ = start(bulkhead, upstream, tmp_path, request_id={"from_client": False})
    assert send(bh, [("X-Request-Id", "abc-123")]).status == 200
    (ids,) = seen_ids(upstream)
    assert len(ids) == 1 and GENERATED.match(ids[0]), ids


def test_another_header_name_leaves_x_request_id_alone(bulkhead, upstream, tmp_path):
    bh, log = start(bulkhead, upstream, tmp_path, request_id={"header": "X-Trace"})
    assert send(bh, [("X-Request-Id", "client's own"), ("X-Trace", "t-1")]).status == 200
    assert seen_ids(upstream) == [["client's own"]]
    assert seen_ids(upstream, "x-trace") == [["t-1"]]
    assert file_lines(log, 1)[0]["request_id"] == "t-1"


def test_empty_header_turns_ids_off(bulkhead, upstream, tmp_path):
    bh, log = start(bulkhead, upstream, tmp_path, request_id={"header": ""})
    assert send(bh).status == 200
    assert send(bh, [("X-Request-Id", "passes through")]).status == 200
    assert seen_ids(upstream) == [[], ["passes through"]]
    assert all("request_id" not in e for e in file_lines(log, 2))
    r = fetch(bh.port, "GET", "/nowhere", headers=[("Host", "elsewhere.example")])
    assert r.header("X-Request-Id") is None


def test_bulkheads_own_replies_carry_the_id_of_their_log_line(bulkhead, tmp_path):
    """A 502 (the only endpoint refuses) and a 404 (no route): the id in the reply is the one in the
    log, and for a client-chosen id, the client's."""
    dead = "127.0.0.1:%d" % free_port()
    log = tmp_path / "access.log"
    bh = bulkhead(upstreams={"u": resilient_upstream(dead, retry={"attempts": 1})},
                  routes=[{"match": {"path_prefix": "/api"}, "upstream": "u"}], log={"access": str(log)})
    r502 = fetch(bh.port, "GET", "/api/x")
    assert r502.status == 502 and proxy_status_error(r502) == "connection_refused", r502
    r404 = fetch(bh.port, "GET", "/nowhere", headers=[("X-Request-Id", "mine-1")])
    assert r404.status == 404 and r404.header("X-Request-Id") == "mine-1", r404
    assert GENERATED.match(r502.header("X-Request-Id") or ""), r502
    by_status = {e["status"]: e for e in file_lines(log, 2)}
    assert by_status[502]["request_id"] == r502.header("X-Request-Id")
    assert by_status[404]["request_id"] == "mine-1"


def test_every_attempt_of_a_retried_request_has_its_id(bulkhead, upstream_factory, tmp_path):
    a, b = upstream_factory("a"), upstream_factory("b")
    a.set_mode("fail-503")
    log = tmp_path / "access.log"
    bh = bulkhead(upstreams={"u": resilient_upstream(a, b, balance="round_robin",
                                                     retry={"attempts": 2, "on": ["5xx"]})},
                  log={"access": str(log)})
    r = fetch(bh.port, "GET", "/echo-head")
    assert r.status == 200, r
    (first,), (second,) = seen_ids(a) + seen_ids(b)
    assert first == second and GENERATED.match(first), (first, second)
    assert file_lines(log, 1)[0]["request_id"] == first


@pytest.mark.parametrize("header,message", [
    ("Content-Length", "header 'Content-Length' for request_id.header is one bulkhead cannot set"),
    ("x-forwarded-for", "header 'x-forwarded-for' for request_id.header is one bulkhead cannot set"),
    ("X Bad", "invalid header name 'X Bad' for request_id.header"),
])
def test_check_rejects_a_header_bulkhead_cannot_own(tmp_path, header, message):
    path = tmp_path / "bh.yaml"
    path.write_text('listeners: [{name: a, address: "127.0.0.1:%d"}]\n'
                    'upstreams: {u: {endpoints: ["127.0.0.1:9"]}}\n'
                    'routes: [{match: {path_prefix: /}, upstream: u}]\n'
                    'request_id:\n  header: "%s"\n' % (free_port(), header))
    p = run_bulkhead("--check", str(path))
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "%s:5:11: %s" % (path, message) in p.stderr, p.stderr


def test_ids_stay_unique_under_concurrency(bulkhead, upstream, tmp_path):
    """Two workers, 8 clients: 400 requests, 400 distinct ids, each in exactly one log line."""
    from concurrent.futures import ThreadPoolExecutor
    bh, log = start(bulkhead, upstream, tmp_path, workers=2)

    def client(_):
        return [send(bh).status for _ in range(50)]

    with ThreadPoolExecutor(8) as ex:
        assert [s for xs in ex.map(client, range(8)) for s in xs] == [200] * 400
    ids = [e["request_id"] for e in file_lines(log, 400)]
    assert len(set(ids)) == 400 and all(GENERATED.match(i) for i in ids)
    wait_until(lambda: len(upstream.log()) >= 400, what="the upstream's log")
    assert sorted(v[0] for v in seen_ids(upstream)) == sorted(ids)
