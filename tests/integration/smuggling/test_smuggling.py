"""Issue 8: the differential request-smuggling corpus through bulkhead, judged by a strict upstream.

One bulkhead (one worker, route / to the strict upstream, no retries, breaker and outlier detection
out of the way) and one strict upstream serve the whole module; each case runs on a fresh client
connection and is judged on what the upstream recorded after the case's mark (runner.py). A case
that leaves the upstream side dirty (a partial request on a pooled connection, an upstream in error)
is followed by a reset: every upstream connection closed, then one plain request through bulkhead.

The results of every case go to a JSON file ($BH_SMUGGLING_RESULTS, default smuggling-results.json in
the module's temp dir) that `runner.py --from-json FILE` prints as the comparison table.
"""
import importlib.util
import json
import os
import select
import socket
import sys
import threading

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import corpus  # noqa: E402
import runner  # noqa: E402
import strict_upstream  # noqa: E402


def _load_parent():
    """The parent directory's conftest helpers under their own module name (as sql/sqlfix.py does:
    a `conftest` module name may belong to another directory's conftest)."""
    name = "bulkhead_integration_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(HERE), "conftest.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


parent = _load_parent()


def bulkhead_config(up, port, admin_port):
    upstreams = {"strict": parent.resilient_upstream(
        up.addr, retry=parent.NO_RETRY, pool={"max_connections": 4, "max_idle": 4},
        timeouts={"connect": "2s", "first_byte": "5s", "idle": "5s", "total": "10s"})}
    routes = [{"match": {"path_prefix": "/"}, "upstream": "strict"}]
    return parent.base_config(port, admin_port, upstreams, routes)


class Env:
    def __init__(self, tmp):
        self.tmp = tmp
        self.results = {}
        self.up = runner.StrictUpstream(parent.free_port(), parent.free_port(), str(tmp / "strict-upstream.log"))
        try:
            port, admin_port = parent.free_port(), parent.free_port()
            self.bh = parent.Bulkhead(tmp, bulkhead_config(self.up, port, admin_port), port=port,
                                      admin_port=admin_port)
        except BaseException:
            self.up.stop()
            raise
        self.target = runner.BulkheadTarget("bulkhead", port, admin_port)

    def check_alive(self):
        if self.bh.proc.poll() is not None:
            raise AssertionError("bulkhead exited with %s; stderr:\n%s"
                                 % (self.bh.proc.returncode, self.bh.stderr_text()[-8000:]))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = Env(tmp_path_factory.mktemp("smuggling"))
    yield e
    path = os.environ.get("BH_SMUGGLING_RESULTS") or str(e.tmp / "smuggling-results.json")
    with open(path, "w") as f:
        json.dump({"bulkhead": e.results}, f, indent=1)
    try:
        e.bh.check_clean_exit()
    finally:
        e.up.stop()


def explain(case, res, fails):
    lines = ["case %s (%s, expect %s%s): %s" % (case.name, case.category, case.expect,
                                               "" if case.bug is None else ", fix %d" % case.bug, case.why),
             "sent: %r" % case.raw[:300],
             "outcome: %s" % runner.label(res)]
    lines += ["  " + f for f in fails]
    lines.append("responses: %r" % res["responses"])
    lines.append("upstream requests: %r" % [(r["seq"], r["method"], r["target"]) for r in res["upstream_requests"]])
    lines += ["note: " + n for n in res["notes"]]
    return "\n".join(lines)


@pytest.mark.parametrize("case", corpus.CASES, ids=lambda c: c.name)
def test_case(env, case):
    try:
        res = runner.run_case(case, env.target, env.up, io_timeout=parent.IO_TIMEOUT)
    except Exception:
        env.check_alive()  # a crash explains the error better than the socket error it caused
        raise
    env.results[case.name] = res
    env.check_alive()
    fails = runner.evaluate(case, res, strict=True)
    assert not fails, explain(case, res, fails)


def test_corpus_shape():
    """At least 80 cases over every category the issue names, the five controls, the six fixes."""
    assert len(corpus.CASES) >= 80
    assert len([c for c in corpus.CASES if c.category == "control"]) == 5
    assert all(c.expect == "forward" for c in corpus.CASES if c.category == "control")
    assert sorted({c.bug for c in corpus.CASES if c.bug}) == [1, 2, 3, 4, 5, 6]
    assert set(corpus.CATEGORIES) == {
        "control", "cl-te", "content-length", "transfer-encoding", "ws-before-colon", "obs-fold", "bare-lf-cr",
        "chunked", "trailers", "http-version", "expect", "request-line", "upgrade", "connection", "classic"}
    assert len({c.raw for c in corpus.CASES}) == len(corpus.CASES), "two cases send the same bytes"


# The judge on its own: a deliberately broken proxy must be caught.

class BlindPool(runner.Target):
    """A broken "proxy" for the judge's self-test: one upstream connection kept for every client, bytes
    copied both ways without parsing (what a proxy that mis-frames ends up doing). Settled when it has
    read every byte of the case, the upstream has read every byte it sent, and the client got every byte
    the upstream answered (all counted, no timing)."""

    def __init__(self, up):
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        super().__init__("blind-pool", self.lsock.getsockname()[1])
        self.up_port = up.port
        self.lock = threading.Lock()
        self.expect_in = 0                    # bytes the current client sends (set by the test)
        self.client_in = self.sent_up = self.relayed = 0
        self.upsock = None
        self.stop = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stop:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            with self.lock:
                self.client_in = 0
            self.relay(c)

    def relay(self, c):
        with c:
            while True:
                socks = [c] + ([self.upsock] if self.upsock else [])
                for s in select.select(socks, [], [], 30)[0]:
                    d = s.recv(65536) if s is c else self._recv_up()
                    if s is c:
                        if not d:
                            return  # client done: the upstream connection stays for the next one
                        if self.upsock is None:
                            self.upsock = socket.create_connection(("127.0.0.1", self.up_port))
                            with self.lock:
                                self.sent_up = self.relayed = 0
                        self.upsock.sendall(d)
                        with self.lock:
                            self.client_in += len(d)
                            self.sent_up += len(d)
                    elif d is None:
                        return  # upstream closed: so does the client connection
                    else:
                        c.sendall(d)
                        with self.lock:
                            self.relayed += len(d)

    def _recv_up(self):
        d = self.upsock.recv(65536)
        if not d:
            self.upsock.close()
            self.upsock = None
            return None
        return d

    def settled(self, up_state):
        conns = [c for c in up_state["conns"] if c["socket_open"]]
        with self.lock:
            return (self.client_in == self.expect_in and len(conns) == 1 and conns[0]["bytes_in"] == self.sent_up
                    and conns[0]["bytes_out"] == self.relayed)

    def close(self):
        self.stop = True
        self.lsock.close()


def test_judge_catches_a_partial_request_left_on_a_pooled_connection(tmp_path):
    up = runner.StrictUpstream(parent.free_port(), parent.free_port(), str(tmp_path / "strict-upstream.log"))
    proxy = BlindPool(up)
    try:
        def run(name, raw):
            c = corpus.Case(name, "self-test", raw, "either")
            proxy.expect_in = len(raw)
            return runner.run_case(c, proxy, up, io_timeout=parent.IO_TIMEOUT)

        ok = run("pipelined", b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        assert runner.label(ok) == "forwarded(2)", ok
        bad = run("partial", b"GET /c HTTP/1.1\r\nHost: x\r\n\r\nGET /d HTTP/1.1\r\nHost: x\r\nX: ")
        assert bad["outcome"] == "unsafe", bad
        assert any("holds a partial request" in r for r in bad["reasons"]), bad["reasons"]
        # the next case starts after a reset: the partial request does not prefix it
        after = run("after", b"GET /e HTTP/1.1\r\nHost: x\r\n\r\n")
        assert runner.label(after) == "forwarded(1)", after
        assert any("reset" in n for n in after["notes"]), after["notes"]
        assert [r["target"] for r in after["upstream_requests"]] == ["/e"]
    finally:
        proxy.close()
        up.stop()


# The strict upstream's parser on its own: what it must accept and what it must report.
ACCEPT = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /x?y=1 HTTP/1.1\r\nHost: a:80\r\nContent-Length: 005\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n"
    b"5 ; a = \"b\\\"c\"\r\nhello\r\n0;x\r\nT: v\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /%41 HTTP/1.1\r\nHost: [::1]:8080\r\nX: a \t b\t\r\n\r\n",
]
REJECT = [
    (b"GET /  HTTP/1.1\r\nHost: a\r\n\r\n", "bad-request-line"),
    (b"GET /a#f HTTP/1.1\r\nHost: a\r\n\r\n", "bad-target"),
    (b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n", "bad-target"),
    (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", "bad-version"),
    (b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "te-in-http10"),
    (b"GET / HTTP/1.1\nHost: a\r\n\r\n", "bare-lf"),
    (b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", "bare-cr"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", "obs-fold"),
    (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", "ws-before-colon"),
    (b"GET / HTTP/1.1\r\nX: a\r\n\r\n", "host-count"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", "host-count"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello", "cl-invalid"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", "cl-multiple"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", "cl-and-te"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "te-not-chunked"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", "bad-chunk-ext"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\n", "chunk-size-overflow"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n", "bad-chunk-end"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nContent-Length: 5\r\n\r\n",
     "trailer-forbidden"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\n\r\n", "connection-names-framing"),
    (b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", "empty-line-before-request"),
]


@pytest.mark.parametrize("data", ACCEPT)
def test_strict_parser_accepts(data):
    req, used = strict_upstream.parse_request(bytearray(data))
    assert used == len(data)


@pytest.mark.parametrize("data,kind", REJECT, ids=[k for _, k in REJECT])
def test_strict_parser_rejects(data, kind):
    with pytest.raises(strict_upstream.ParseError) as e:
        strict_upstream.parse_request(bytearray(data))
    assert e.value.kind == kind


def test_strict_parser_records_http10_as_a_deviation():
    req, _ = strict_upstream.parse_request(bytearray(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n"))
    assert req["deviations"] and req["close"]
    req, _ = strict_upstream.parse_request(bytearray(b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"))
    assert req["deviations"] and not req["close"] and req["keepalive_10"]


def test_strict_parser_waits_for_a_partial_request():
    for data in (b"GET / HTTP/1.1\r\nHost: a\r\n", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhel",
                 b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n",
                 b"GET / HTTP/1.1\r"):
        with pytest.raises(strict_upstream.NeedMore):
            strict_upstream.parse_request(bytearray(data))
