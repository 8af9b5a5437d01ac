"""Workers (issue 5): with 2 and 4 workers the pool's max_connections is one cap for the whole process,
500 concurrent clients are all served (no starvation), every worker accepts connections, and a request
on one worker gets a connection even when the idle ones of the upstream sit on another worker.

These tests read bulkhead's own view from the admin port's `/stats` (per-worker `accepted` and
`clients`, per-upstream `waiters` and `pool` states, summed over workers) so that they can wait for an
exact state instead of hoping the kernel and the scheduler produced it:
- the 500 requests are held upstream with `/hold`, and the test waits until bulkhead reports every one
  of them either holding a pooled connection or queued for one. Only then does it compare the number
  of busy connections with the cap: a per-worker cap (workers x 8 connections) cannot pass.
- the worker a client connection landed on is found from the per-worker `clients` counts (one
  connection opened at a time), so idle upstream connections can be parked on a known worker and the
  next request sent through another one.
(test_pool.py has an older version of both with `/delay` and many sequential clients, which can only
fail when the kernel and the scheduler happen to spread the load.)"""
import asyncio
import resource
import threading

import pytest

from conftest import (IO_TIMEOUT, READINESS_PROBES, RawClient, admin_stats, named, one_request,
                      per_worker, quiesce, wait_until)

N_CLIENTS = 500
CAP = 8


def raise_nofile(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < n:
        if hard != resource.RLIM_INFINITY and hard < n:
            pytest.skip("RLIMIT_NOFILE hard limit %d is below the %d descriptors this test needs"
                        % (hard, n))
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))


class Crowd:
    """n client connections opened at once, each sending one request (Connection: close) and reading
    the reply to the end, in an asyncio loop on its own thread. `sent` counts the requests written."""

    def __init__(self, port, target, n, timeout=180):
        self.port, self.target, self.n, self.timeout = port, target, n, timeout
        self.sent = 0
        self.results = None
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _sent(self):
        self.sent += 1

    def _run(self):
        async def all_of_them():
            return await asyncio.gather(*(one_request(self.port, self.target, self.timeout, self._sent)
                                           for _ in range(self.n)), return_exceptions=True)
        try:
            self.results = asyncio.run(all_of_them())
        except BaseException as e:  # noqa: BLE001 - reported by join()
            self.error = e

    def join(self):
        self.thread.join(self.timeout + 30)
        assert not self.thread.is_alive(), "the clients did not finish"
        if self.error is not None:
            raise self.error
        return self.results


@pytest.mark.parametrize("workers", [2, 4])
def test_global_cap_holds_under_500_concurrent_clients(bulkhead, upstream, workers):
    """500 clients at once, each holding its request upstream, over a pool of 8 shared by the workers:
    bulkhead reports exactly 8 busy connections and 492 waiters (with a cap per worker it would be 8
    per worker), the upstream sees 8 connections and 8 requests, every worker accepted some of the
    clients, and once the holds are released all 500 get 200 (nobody starves on any worker)."""
    raise_nofile(4 * N_CLIENTS)
    bh = bulkhead(upstream, workers=workers,
                  pool={"max_connections": CAP, "max_pending": 4 * N_CLIENTS, "acquire_timeout": "120s"},
                  timeouts={"first_byte": "150s", "total": "180s"})
    quiesce(bh, workers)
    base = per_worker(admin_stats(bh), "accepted")
    crowd = Crowd(bh.port, "/hold?id=crowd", N_CLIENTS)
    try:
        wait_until(lambda: crowd.sent == N_CLIENTS or crowd.error, what="all 500 requests to be sent")

        # every request is in bulkhead, on a connection or queued for one (summed over the workers)
        def settled():
            u = named(admin_stats(bh)["upstreams"], "u")
            pool = u["pool"]
            return (u["waiters"] + pool["busy"] == N_CLIENTS and pool["connecting"] == 0) and u
        u = wait_until(settled, timeout=IO_TIMEOUT * 2,
                       what="all 500 requests to hold a connection or wait for one")
        assert u["pool"]["busy"] == CAP, "busy connections beyond the global cap of %d: %r" % (CAP, u)
        assert u["waiters"] == N_CLIENTS - CAP, u
        assert u["pool"]["idle"] == 0, u
        wait_until(lambda: upstream.stats()["holding"] == CAP, what="8 requests held upstream")
        st_up = upstream.stats()
        assert st_up["max_open_connections"] == CAP, st_up
        assert st_up["max_in_flight"] == CAP, st_up

        # all workers accept: SO_REUSEPORT hashes each connection's 4-tuple onto one of the workers'
        # listening sockets; the chance that one of 4 workers gets none of 500 connections is
        # 4 * (3/4)^500, about 1e-62. (base: the readiness probe's connection, on one of them.)
        st = admin_stats(bh)
        ws = sorted(st["workers"], key=lambda w: w["id"])
        assert [w["id"] for w in ws] == list(range(workers)), st["workers"]
        assert all(w["accepted"] > b for w, b in zip(ws, base)), \
            "a worker accepted none of the 500 connections: %r (before: %r)" % (ws, base)
        assert sum(w["accepted"] for w in ws) == N_CLIENTS + READINESS_PROBES, ws
        assert sum(w["clients"] for w in ws) == N_CLIENTS, ws
    finally:
        upstream.release("crowd")  # later holds of "crowd" answer at once
    results = crowd.join()
    errors = [r for r in results if isinstance(r, BaseException) or r != (200, b"released")]
    assert not errors, "%d of 500 not served, e.g. %r" % (len(errors), errors[:5])
    st_up = upstream.stats()
    assert upstream.count("/hold") == N_CLIENTS, st_up
    assert st_up["max_open_connections"] <= CAP, st_up
    assert st_up["max_in_flight"] <= CAP, st_up
    st = wait_until(lambda: (lambda s: sum(per_worker(s, "clients")) == 0 and s)(admin_stats(bh)),
                    what="every client connection to be gone from /stats")
    u = named(st["upstreams"], "u")
    assert u["waiters"] == 0 and u["pool"]["busy"] == 0 and u["pool"]["idle"] <= CAP, u


class Pinned:
    """Client connections whose worker is known: each is opened alone and attributed to the worker
    whose `clients` count in /stats went up by one. Connections are kept open until close_all(), so
    the counts only grow while pinning."""

    def __init__(self, bh):
        self.bh = bh
        self.clients = []  # (RawClient, worker id)

    def open(self):
        before = per_worker(admin_stats(self.bh), "clients")
        c = RawClient(self.bh.port)
        after = wait_until(lambda: (lambda a: sum(a) == sum(before) + 1 and a)(
            per_worker(admin_stats(self.bh), "clients")), what="bulkhead to accept the connection")
        (wid,) = [i for i, (b, a) in enumerate(zip(before, after)) if a == b + 1]
        self.clients.append((c, wid))
        return c, wid

    def on(self, pred, n):
        """n connections on workers for which pred(worker id) holds (opening more as needed)."""
        for _ in range(64):  # each connection lands on a pred worker with probability >= 1/workers
            got = [c for c, w in self.clients if pred(w)]
            if len(got) >= n:
                return got[:n]
            self.open()
        raise AssertionError("64 connections and still not %d on the wanted workers: %r"
                             % (n, [w for _, w in self.clients]))

    def two_on_one_worker(self):
        for _ in range(64):
            by = {}
            for c, w in self.clients:
                by.setdefault(w, []).append(c)
            for w, cs in by.items():
                if len(cs) >= 2:
                    return w, cs[:2]
            self.open()  # pigeonhole: at most workers + 1 connections
        raise AssertionError("unreachable")

    def close_all(self):
        for c, _ in self.clients:
            c.close()


def hold_on(bh, up, clients, hold_id, opened_before):
    """Each client sends /hold?id=hold_id; waits until all are held upstream, checks that the upstream
    saw no more than 2 connections at once, releases them and reads the 200s."""
    for c in clients:
        c.request("GET", "/hold?id=%s" % hold_id)
    try:
        wait_until(lambda: up.stats()["holding"] == len(clients),
                   what="%d requests held upstream (a waiter starved?)" % len(clients))
    except AssertionError as e:
        raise AssertionError("%s\nbulkhead: %r\nupstream: %r" % (e, admin_stats(bh), up.stats())) from None
    up.release(hold_id)
    for c in clients:
        r = c.read_response()
        assert r.status == 200 and r.body == b"released", r
    st = up.stats()
    assert st["max_open_connections"] <= 2, st
    assert st["connections_accepted"] == opened_before + len(clients), st
    return st["connections_accepted"]


@pytest.mark.parametrize("workers", [2, 4])
def test_idle_connections_on_one_worker_do_not_starve_another(bulkhead, upstream, workers):
    """A cap of 2: two idle connections parked on worker X; two requests then arrive on other workers
    and must both get a connection, which can only happen if X closes its idle ones (bulkhead asks
    it). The idle timeout (120 s) is longer than the acquire timeout (60 s), so a waiter left alone
    would get a 503 instead. Then back again, from the other workers to X."""
    bh = bulkhead(upstream, workers=workers,
                  pool={"max_connections": 2, "max_idle": 2, "idle_timeout": "120s",
                        "acquire_timeout": "60s", "max_pending": 100},
                  timeouts={"first_byte": "90s", "total": "120s"})
    quiesce(bh, workers)
    pinned = Pinned(bh)
    try:
        x, (x1, x2) = pinned.two_on_one_worker()
        opened = hold_on(bh, upstream, [x1, x2], "warm", 0)
        u = wait_until(lambda: (lambda v: v["pool"]["idle"] == 2 and v["pool"]["busy"] == 0 and v)(
            named(admin_stats(bh)["upstreams"], "u")), what="two idle connections (on worker %d)" % x)
        assert u["waiters"] == 0, u

        others = pinned.on(lambda w: w != x, 2)
        opened = hold_on(bh, upstream, others, "steal", opened)
        assert opened == 4, "the requests on the other workers did not open their own connections"
        u = wait_until(lambda: (lambda v: v["pool"]["idle"] == 2 and v["pool"]["busy"] == 0 and v)(
            named(admin_stats(bh)["upstreams"], "u")), what="two idle connections (on the other workers)")

        opened = hold_on(bh, upstream, [x1, x2], "back", opened)
        assert opened == 6
    finally:
        upstream.release("*")
        pinned.close_all()


def held_ids(up):
    """The ids of the /hold requests the upstream received, in the order they arrived."""
    ids = []
    for r in up.log():
        if r["path"] == "/hold":
            ids.append(r["target"].split("id=", 1)[1])
    return ids


@pytest.mark.parametrize("cap", [1, 2])
def test_waiter_on_quiet_worker_is_served_in_turn_while_busy_worker_keeps_permits_warm(
        bulkhead, upstream, cap):
    """Cross-worker FIFO. Every permit is busy on worker B, which keeps reusing its connections for its
    own queue: a request on a quiet worker A, queued after B's `early` and before B's `late1`, `late2`,
    must reach the upstream right after `early`. Before, a worker handed a connection it gave back to
    its own next waiter as long as it had one, so `quiet` waited until B's queue was empty (and with a
    busier B, until acquire_timeout: a 503).

    Structural, no timing: the upstream holds each request until the test releases it; the test
    releases one at a time, the oldest first, and after each release waits until the upstream holds
    the next request, so every permit frees up only when the test says so. The queue order is made
    certain by waiting for bulkhead's `waiters` count after each request."""
    bh = bulkhead(upstream, workers=2,
                  pool={"max_connections": cap, "max_idle": cap, "max_pending": 100,
                        "idle_timeout": "120s", "acquire_timeout": "60s"},
                  timeouts={"first_byte": "90s", "total": "120s"})
    quiesce(bh, 2)
    pinned = Pinned(bh)

    def waiters():
        return named(admin_stats(bh)["upstreams"], "u")["waiters"]

    try:
        b, _ = pinned.two_on_one_worker()
        on_b = pinned.on(lambda w: w == b, cap + 3)
        (on_a,) = pinned.on(lambda w: w != b, 1)
        a = [w for c, w in pinned.clients if c is on_a][0]
        order = ["hold%d" % i for i in range(cap)] + ["early", "quiet", "late1", "late2"]
        client = dict(zip(order, on_b[:cap + 1] + [on_a] + on_b[cap + 1:]))

        for i in range(cap):  # B holds every permit
            client["hold%d" % i].request("GET", "/hold?id=hold%d" % i)
            wait_until(lambda: upstream.stats()["holding"] == i + 1,
                       what="hold%d to be held upstream" % i)
        for n, name in enumerate(["early", "quiet", "late1", "late2"], 1):
            client[name].request("GET", "/hold?id=%s" % name)
            wait_until(lambda: waiters() == n, what="%s to be queued (waiters == %d)" % (name, n))
        assert held_ids(upstream) == order[:cap]

        # Release the oldest held request, one at a time; each time exactly one queued request
        # gets the freed permit and reaches the upstream, in the order the requests queued.
        for i, name in enumerate(order):
            upstream.release(name)
            r = client[name].read_response()
            assert r.status == 200 and r.body == b"released", (name, r)
            arrived = min(cap + i + 1, len(order))
            wait_until(lambda: len(held_ids(upstream)) == arrived,
                       what="the next queued request to reach the upstream after %s" % name)
            got = held_ids(upstream)
            assert got == order[:arrived], (
                "requests reached the upstream in the order %r, not in the order they queued %r "
                "(quiet was queued on worker %d, the others on worker %d)"
                % (got, order[:arrived], a, b))
        st = upstream.stats()
        assert st["max_in_flight"] <= cap and st["max_open_connections"] <= cap, st
    finally:
        upstream.release("*")
        pinned.close_all()
