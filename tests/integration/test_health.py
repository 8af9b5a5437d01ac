"""Active health checks (issue 3): GET `path` every `interval`; `unhealthy` failures in a row (a non-2xx
or no answer within `timeout`) take an endpoint out of the rotation, `healthy` successes bring it back;
no checks when `health_check` is absent; with no endpoint left, traffic goes to all of them; /readyz
reports an upstream with no healthy endpoint.

The test upstream's /healthz answers what /control?health= says (a status, or "hang") and counts the
checks it received; the checks are waited for by polling those counters, never by sleeping."""
import urllib.error
import urllib.request

import pytest

from conftest import IO_TIMEOUT, fetch, resilient_upstream, wait_until

# a check timeout long enough that a loaded machine does not fail the checks of a healthy endpoint
CHECK = {"path": "/healthz", "interval": "300ms", "timeout": "300ms", "healthy": 2, "unhealthy": 2}


@pytest.fixture
def two(upstream_factory):
    ups = [upstream_factory("a"), upstream_factory("b")]
    yield ups
    for u in ups:
        try:
            u.set_health(200)  # ends hanging checks
        except OSError:
            pass


def start(bulkhead, ups, check=CHECK, **sections):
    entry = resilient_upstream(*ups, balance="round_robin", retry={"attempts": 1}, health_check=check)
    return bulkhead(upstreams={"u": entry}, **sections)


def checks(u):
    return u.count("/healthz", "GET")


def wait_checks(u, n, what):
    """Waits until u has received n more checks than now (a check is counted when it arrives, so
    n - 1 of them have been answered and seen by bulkhead by then)."""
    base = checks(u)
    wait_until(lambda: checks(u) >= base + n, what=what)


def share(bh, ups, n=20):
    """Sends n requests; returns how many each endpoint received (health checks excluded)."""
    before = [u.traffic() for u in ups]
    replies = [fetch(bh.port, "GET", "/echo-head?i=%d" % i) for i in range(n)]
    assert [r.status for r in replies] == [200] * n, replies
    return [u.traffic() - b for u, b in zip(ups, before)]


def test_checks_are_sent_to_every_endpoint(bulkhead, two):
    start(bulkhead, two)
    for u in two:
        wait_checks(u, 3, "three health checks on %s" % u.name)
        log = [e for e in u.log() if e["path"] == "/healthz"]
        assert log and all(e["method"] == "GET" and e["target"] == "/healthz" for e in log), log[:3]


def test_configured_path_is_checked(bulkhead, two):
    check = dict(CHECK, path="/ready/check")
    start(bulkhead, two, check=check)
    for u in two:
        wait_until(lambda: u.count("/ready/check", "GET") >= 2, what="checks of /ready/check on %s" % u.name)
        assert checks(u) == 0


def test_no_checks_without_health_check(bulkhead, upstream_factory):
    """Two upstreams, one with checks: by the time it has had several, the other has had none."""
    checked, unchecked = upstream_factory("checked"), upstream_factory("unchecked")
    bulkhead(upstreams={"c": resilient_upstream(checked, health_check=CHECK),
                        "n": resilient_upstream(unchecked)},
             routes=[{"match": {"path_prefix": "/"}, "upstream": "n"}])
    wait_checks(checked, 4, "health checks on the checked upstream")
    assert unchecked.count() == 0, unchecked.stats()["requests"]


def test_unhealthy_endpoint_gets_no_traffic_then_recovers(bulkhead, two):
    a, b = two
    bh = start(bulkhead, two)
    for u in two:
        wait_checks(u, 3, "%s to be checked healthy" % u.name)
    assert share(bh, two, 10) == [5, 5]

    a.set_health(503)
    wait_checks(a, CHECK["unhealthy"] + 2, "failing checks on a")
    assert share(bh, two) == [0, 20], "an unhealthy endpoint received traffic"

    a.set_health(200)
    wait_checks(a, CHECK["healthy"] + 2, "passing checks on a")
    got = share(bh, two)
    assert got == [10, 10], got


def test_check_timeout_counts_as_failure(bulkhead, two):
    a, b = two
    bh = start(bulkhead, two)
    for u in two:
        wait_checks(u, 3, "%s to be checked healthy" % u.name)
    a.set_health("hang")  # checks arrive, never answered: each fails after `timeout`
    wait_checks(a, CHECK["unhealthy"] + 2, "timed-out checks on a")
    assert share(bh, two) == [0, 20], "an endpoint whose checks time out received traffic"


def test_unhealthy_endpoint_data_path_still_fine(bulkhead, two):
    """Only the checks fail (the endpoint would serve requests well): it gets no traffic all the same,
    so it is the health check, not request failures, that decides."""
    a, b = two
    bh = start(bulkhead, two)
    a.set_health(500)
    wait_checks(a, CHECK["unhealthy"] + 2, "failing checks on a")
    assert share(bh, two) == [0, 20]


def test_no_healthy_endpoint_left_traffic_goes_to_all(bulkhead, two):
    bh = start(bulkhead, two)
    for u in two:
        u.set_health(503)
    for u in two:
        wait_checks(u, CHECK["unhealthy"] + 2, "failing checks on %s" % u.name)
    got = share(bh, two)
    assert got == [10, 10], got


def admin_get(bh, path):
    try:
        with urllib.request.urlopen(bh.admin_url + path, timeout=IO_TIMEOUT) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def test_readyz_reports_upstream_without_healthy_endpoint(bulkhead, two):
    bh = start(bulkhead, two)
    for u in two:
        wait_checks(u, 3, "%s to be checked healthy" % u.name)
    status, body = admin_get(bh, "/readyz")
    assert status == 200, (status, body)
    for u in two:
        u.set_health(503)
    for u in two:
        wait_checks(u, CHECK["unhealthy"] + 2, "failing checks on %s" % u.name)
    status, body = admin_get(bh, "/readyz")
    assert status == 503 and "u" in body, (status, body)
