"""Helpers shared by test_sql_cap.py and test_sql_resilience.py (issue 10): one scrape of /metrics on
the admin port as a dict, and a sampler of pg_stat_activity on a connection of its own.

Kept out of sqlfix.py (shared by every SQL test) on purpose; test_sql_workers.py has its own copy of
the /metrics parser."""
import re
import threading
import urllib.request

from sqlfix import IO_TIMEOUT, assert_proxy_error, describe, proxy_status_error

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?')


def admin(bh, path):
    with urllib.request.urlopen(bh.admin_url + path, timeout=IO_TIMEOUT) as r:
        assert r.status == 200
        return r.read().decode()


def metrics(bh):
    """{(name, frozenset of label pairs): value} of one scrape of /metrics."""
    out = {}
    for line in admin(bh, "/metrics").splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, "bad sample line %r" % line
        labels = frozenset((k, re.sub(r"\\(.)", lambda e: "\n" if e.group(1) == "n" else e.group(1), v))
                           for k, v in _LABEL.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def mval(scrape, name, **labels):
    """The sample with exactly these labels, or None."""
    return scrape.get((name, frozenset(labels.items())))


def msum(scrape, name, **labels):
    """The sum of every sample of a family whose labels include these (e.g. all states of a pool)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in scrape.items() if n == name and want <= set(ls))


def pool_total(scrape, pool="main"):
    """bulkhead_pool_connections of an entry summed over its states (however they are labelled)."""
    return msum(scrape, "bulkhead_pool_connections", pool=pool)


class ActivitySampler(threading.Thread):
    """Samples pg_stat_activity in a thread, on a superuser connection of its own (its own pid is
    excluded), until stopped: the client backends of the given roles, per role and in total. Keeps
    the maximum of each and the sample that reached the total's maximum (pid, role, state,
    application_name) for the failure message."""

    QUERY = ("SELECT pid, usename, state, application_name FROM pg_stat_activity"
             " WHERE backend_type = 'client backend' AND usename = ANY(%s) AND pid <> pg_backend_pid()")

    def __init__(self, pg, roles):
        super().__init__(daemon=True)
        self.conn = pg.connect()
        self.roles = list(roles)
        self.samples = 0
        self.max_total = 0
        self.max_by_role = {r: 0 for r in self.roles}
        self.worst = []
        self.gone_next = None  # pids of the fullest sample no longer listed in the sample after it
        self._check_next = False
        self.errors = []
        self._stop_ev = threading.Event()

    def sample(self):
        rows = self.conn.execute(self.QUERY, (self.roles,)).fetchall()
        self.samples += 1
        per = {r: 0 for r in self.roles}
        for row in rows:
            per[row[1]] += 1
        for r, n in per.items():
            self.max_by_role[r] = max(self.max_by_role[r], n)
        if self._check_next:
            pids = {row[0] for row in rows}
            self.gone_next = sorted(row[0] for row in self.worst if row[0] not in pids)
            self._check_next = False
        if len(rows) > self.max_total:
            self.max_total = len(rows)
            self.worst = rows
            self._check_next = True
        return rows

    def describe_worst(self):
        """The fullest sample, and which of its backends were gone one sample later (exiting ones)."""
        return "the fullest sample (pid, role, state, application_name): %r; gone by the next sample: %r" % (
            self.worst, self.gone_next)

    def run(self):
        while not self._stop_ev.is_set():
            try:
                self.sample()
            except Exception as e:  # noqa: BLE001 - reported by stop()
                self.errors.append(e)
                return
            self._stop_ev.wait(0.002)  # the sampling interval, not a wait for anything

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, exc_type, *exc):
        self.stop(check=exc_type is None)  # never hide the failure that ended the block

    def stop(self, check=True):
        if not self._stop_ev.is_set():
            self._stop_ev.set()
            self.join(IO_TIMEOUT)
            self.conn.close()
        if not check:
            return self
        assert not self.errors, "the pg_stat_activity sampler failed: %r" % self.errors[:3]
        assert self.samples > 0, "pg_stat_activity was never sampled"
        return self


def assert_unavailable(r):
    """503 with Retry-After, Proxy-Status, the 17-key body (code "") and the CORS header."""
    assert r is not None and r.status == 503, describe(r)
    ra = r.header("Retry-After")
    assert ra is not None and ra.strip().isdigit(), describe(r)
    assert proxy_status_error(r), "no Proxy-Status error: %s" % describe(r)
    assert_proxy_error(r, 503)
    assert r.header("access-control-allow-origin") == "*"
