"""Helpers for the SQL-over-HTTP tests (issue 4): a throwaway PostgreSQL 15, the bulkhead config for
`/sql`, a client for the Neon protocol, and a libpq oracle that builds the response the spec prescribes
from what the same server answers to the same statement through libpq directly.

Test modules import from here (`from sqlfix import ...`), not from `conftest`: the parent directory's
conftest.py and this directory's conftest.py share the module name `conftest`, and pytest keeps only the
last one imported under that name. The parent's helpers are loaded here under their own name.
"""
import importlib.util
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.parse
import uuid

import psycopg
from psycopg import pq

HERE = os.path.dirname(os.path.abspath(__file__))
PARENT = os.path.dirname(HERE)


def _load_parent():
    name = "bulkhead_integration_conftest"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(PARENT, "conftest.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


parent = _load_parent()
free_port = parent.free_port
wait_until = parent.wait_until
RawClient = parent.RawClient
RawResponse = parent.RawResponse
PeerClosed = parent.PeerClosed
build_request = parent.build_request
proxy_status_error = parent.proxy_status_error
run_bulkhead = parent.run_bulkhead
to_yaml = parent.to_yaml
admin_stats = parent.admin_stats
per_worker = parent.per_worker
named = parent.named
quiesce = parent.quiesce
sighup_reload = parent.sighup_reload
check_access_timings = parent.check_access_timings
READINESS_PROBES = parent.READINESS_PROBES
IO_TIMEOUT = parent.IO_TIMEOUT
START_TIMEOUT = parent.START_TIMEOUT
STOP_TIMEOUT = parent.STOP_TIMEOUT
BULKHEAD_BIN = parent.BULKHEAD_BIN

PG_BIN = os.environ.get("BH_PG_BIN", "/usr/lib/postgresql/15/bin")
PG_OS_USER = os.environ.get("BH_PG_OS_USER", "postgres")

# Roles of the throwaway server. alice's password has an '@' so that percent-decoding of the
# connection string is exercised on every request (the spec's own example password).
ALICE = "alice"
ALICE_PW = "s3cr@t"
BOB = "bob"
BOB_PW = "b0b-pw"
DBNAME = "app"

# Section 6.2: the error body's keys, in order.
ERROR_KEYS = ["message", "code", "detail", "hint", "position", "internalPosition", "internalQuery",
              "severity", "where", "table", "column", "schema", "dataType", "constraint", "file", "line",
              "routine"]


def jstr(s):
    """A JSON string escaped as section 5 says: " \\ \\b \\f \\n \\r \\t, other C0 controls as \\u00xx
    (lowercase), everything else (/, DEL, non-ASCII) raw UTF-8. Python's encoder with
    ensure_ascii=False does exactly this."""
    if s is None:
        return "null"
    return json.dumps(s, ensure_ascii=False)


def unique(prefix="t"):
    return "%s_%s" % (prefix, uuid.uuid4().hex[:12])


# ----------------------------------------------------------------------------------------------
# the throwaway Postgres

class Postgres:
    """One PostgreSQL 15 cluster under a temp dir owned by the `postgres` OS user (initdb refuses root),
    listening on 127.0.0.1:<free port> only (plus a Unix socket in the temp dir for the superuser's
    assertion connection), scram-sha-256 for every TCP login."""

    def __init__(self):
        for tool in ("initdb", "pg_ctl", "pg_isready"):
            if not os.path.exists(os.path.join(PG_BIN, tool)):
                raise RuntimeError("%s not found in %s (Debian package postgresql-15)" % (tool, PG_BIN))
        self.dir = tempfile.mkdtemp(prefix="bulkhead-pg-")
        self.data = os.path.join(self.dir, "data")
        self.log_path = os.path.join(self.dir, "postgres.log")
        self.port = free_port()
        self.host = "127.0.0.1"
        self.server = "host=127.0.0.1 port=%d" % self.port  # what bulkhead's databases.<x>.server gets
        self._lock = threading.Lock()
        self._conn = None
        self._own_root = os.geteuid() == 0
        try:
            self._init_cluster()
            self.start()
            self.create_role(ALICE, ALICE_PW)
            self.sql("CREATE DATABASE %s OWNER %s" % (DBNAME, ALICE))
            # the database of the spec's literal examples (sections 8 and 10), so they run verbatim
            self.sql("CREATE DATABASE neondb OWNER %s" % ALICE)
            self.create_role(BOB, BOB_PW)
            self.sql("GRANT ALL ON SCHEMA public TO %s" % BOB, dbname=DBNAME)
        except BaseException:
            self.destroy()  # never leave a running cluster behind a failed setup
            raise

    def _init_cluster(self):
        if self._own_root:
            shutil.chown(self.dir, PG_OS_USER, PG_OS_USER)
        os.chmod(self.dir, 0o700)
        pwfile = os.path.join(self.dir, "pwfile")
        with open(pwfile, "w") as f:
            f.write("superpw\n")
        if self._own_root:
            shutil.chown(pwfile, PG_OS_USER, PG_OS_USER)
        self._run(["initdb", "-D", self.data, "-U", "postgres", "--pwfile", pwfile, "-E", "UTF8",
                   "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"])
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write("\n# bulkhead integration tests\n"
                    "listen_addresses = '127.0.0.1'\n"
                    "port = %d\n"
                    "unix_socket_directories = '%s'\n"
                    "password_encryption = 'scram-sha-256'\n"
                    "max_connections = 100\n"
                    "fsync = off\n"
                    "synchronous_commit = off\n"
                    "full_page_writes = off\n"
                    "log_min_messages = warning\n"
                    "log_connections = off\n" % (self.port, self.dir))
        with open(os.path.join(self.data, "pg_hba.conf"), "w") as f:
            # the superuser over the Unix socket only (assertions); every TCP login with a password
            f.write("local all postgres trust\n"
                    "host all all 127.0.0.1/32 scram-sha-256\n")

    # -- processes

    def _run(self, args, check=True, timeout=None):
        cmd = [os.path.join(PG_BIN, args[0])] + args[1:]
        if self._own_root:
            cmd = ["runuser", "-u", PG_OS_USER, "--"] + cmd
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout or START_TIMEOUT + 30,
                           cwd=self.dir)
        if check and p.returncode != 0:
            raise RuntimeError("%s failed (%d):\n%s\n%s\nlog:\n%s" % (" ".join(args[:2]), p.returncode,
                                                                     p.stdout, p.stderr, self.log_tail()))
        return p

    def log_tail(self, n=4000):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-n:]
        except OSError:
            return ""

    def is_ready(self):
        """pg_isready on the TCP address (exit 0 = accepting connections)."""
        return self._run(["pg_isready", "-q", "-h", self.host, "-p", str(self.port), "-t", "1"],
                         check=False).returncode == 0

    def start(self):
        self._run(["pg_ctl", "-D", self.data, "-l", self.log_path, "-w", "-t", str(int(START_TIMEOUT)),
                   "start"])
        wait_until(self.is_ready, timeout=START_TIMEOUT, what="postgres to accept connections")

    def stop(self, mode="fast"):
        """fast: sessions are terminated (FATAL 57P01) and the server shuts down; immediate: a crash."""
        self._drop_conn()
        self._run(["pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", str(int(STOP_TIMEOUT)), "stop"])
        wait_until(lambda: not self.is_ready(), timeout=STOP_TIMEOUT, what="postgres to stop")

    def restart(self, mode="fast"):
        self.stop(mode)
        self.start()

    def running(self):
        return self._run(["pg_ctl", "-D", self.data, "status"], check=False).returncode == 0

    def ensure_running(self):
        if not self.running():
            self.start()
        else:
            wait_until(self.is_ready, timeout=START_TIMEOUT, what="postgres to accept connections")

    def destroy(self):
        self._drop_conn()
        if self.running():
            self._run(["pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop"], check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- connections

    @property
    def conninfo(self):
        """The superuser over the Unix socket (not counted among TCP clients in pg_stat_activity)."""
        return "host=%s port=%d user=postgres dbname=postgres" % (self.dir, self.port)

    def connect(self, dbname="postgres", user="postgres", password=None, tcp=False, **kw):
        """A new psycopg connection (autocommit). tcp=True logs in over 127.0.0.1 with a password."""
        if tcp:
            return psycopg.connect(host=self.host, port=self.port, user=user, password=password,
                                   dbname=dbname, autocommit=True, connect_timeout=10, **kw)
        return psycopg.connect(host=self.dir, port=self.port, user=user, dbname=dbname, autocommit=True,
                               connect_timeout=10, **kw)

    def _drop_conn(self):
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                except Exception:  # noqa: BLE001
                    pass
                self._conn = None

    def sql(self, query, params=None, dbname="postgres"):
        """Runs one statement as the superuser; returns the rows (or None). The connection to the
        `postgres` database is kept (thread-safe, re-opened after a restart)."""
        if dbname != "postgres":
            with self.connect(dbname=dbname) as c:
                cur = c.execute(query, params)
                return cur.fetchall() if cur.description else None
        with self._lock:
            for attempt in (0, 1):
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = self.connect()
                    cur = self._conn.execute(query, params)
                    return cur.fetchall() if cur.description else None
                except psycopg.OperationalError:
                    try:
                        self._conn.close()
                    except Exception:  # noqa: BLE001
                        pass
                    self._conn = None
                    if attempt:
                        raise

    def as_user(self, query, params=None, user=ALICE, password=ALICE_PW, dbname=DBNAME):
        """Runs one statement as a login role over TCP (a fresh connection); returns rows or None."""
        with self.connect(dbname=dbname, user=user, password=password, tcp=True) as c:
            cur = c.execute(query, params)
            return cur.fetchall() if cur.description else None

    def app_sql(self, query, params=None):
        return self.sql(query, params, dbname=DBNAME)

    def create_role(self, name, password):
        from psycopg import sql as S
        self.sql(S.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(S.Identifier(name), S.Literal(password)))

    def make_role(self, prefix="r", password=None):
        """A fresh login role (its own pool key, so its backends are only this test's) with CREATE on
        app's public schema. Returns (name, password)."""
        name = unique(prefix)
        password = password or ("pw-" + uuid.uuid4().hex[:8] + "@/:")
        self.create_role(name, password)
        self.sql("GRANT ALL ON SCHEMA public TO %s" % name, dbname=DBNAME)
        return name, password

    def backends(self, usename, datname=None):
        """Client backends of a role in pg_stat_activity (the assertion connection excluded): dicts
        with pid, state, query, wait_event_type, client_addr."""
        q = ("SELECT pid, state, query, wait_event_type, host(client_addr), backend_type"
             " FROM pg_stat_activity WHERE usename = %s AND backend_type = 'client backend'"
             " AND pid <> pg_backend_pid()")
        params = [usename]
        if datname:
            q += " AND datname = %s"
            params.append(datname)
        rows = self.sql(q, params)
        return [dict(pid=r[0], state=r[1], query=r[2], wait_event_type=r[3], client_addr=r[4])
                for r in rows]

    def active_with(self, marker):
        """Backends (any role) whose *running* statement contains marker."""
        rows = self.sql("SELECT pid, usename, state, query FROM pg_stat_activity"
                        " WHERE state = 'active' AND pid <> pg_backend_pid() AND position(%s in query) > 0",
                        (marker,))
        return rows

    def url(self, user=ALICE, password=ALICE_PW, host="db.example.com", dbname=DBNAME, port=None,
            query=None, scheme="postgresql"):
        """A Neon-Connection-String with user, password and database percent-encoded."""
        auth = urllib.parse.quote(user, safe="")
        if password is not None:
            auth += ":" + urllib.parse.quote(password, safe="")
        hostport = host + (":%d" % port if port else "")
        s = "%s://%s@%s/%s" % (scheme, auth, hostport, urllib.parse.quote(dbname, safe=""))
        if query:
            s += "?" + query
        return s


# ----------------------------------------------------------------------------------------------
# bulkhead configured for /sql

def sql_config(pg, db=None, route_methods=("POST", "OPTIONS"), extra_routes=(), **sections):
    """Sections for the parent `bulkhead` fixture: one database `main` ("*" hosts, the throwaway
    Postgres, a pool of 4, timeouts connect 2s / total 5s unless overridden), the /sql route first,
    then a catch-all route to a dummy upstream on a closed port."""
    entry = {
        "hosts": ["*"],
        "server": pg.server,
        "pool": {"max_connections": 4},
        "timeouts": {"connect": "2s", "total": "5s"},
    }
    for k, v in (db or {}).items():
        if v is None:
            entry.pop(k, None)
        elif isinstance(v, dict) and isinstance(entry.get(k), dict):
            merged = dict(entry[k])
            merged.update(v)
            entry[k] = merged
        else:
            entry[k] = v
    match = {"path_prefix": "/sql"}
    if route_methods:
        match["methods"] = list(route_methods)
    routes = [{"match": match, "database": "main"}] + list(extra_routes) + [
        {"match": {"path_prefix": "/"}, "upstream": "u"}]
    out = {
        "upstreams": {"u": {"endpoints": ["127.0.0.1:%d" % free_port()]}},
        "routes": routes,
        "databases": {"main": entry},
    }
    out.update(sections)
    return out


# ----------------------------------------------------------------------------------------------
# the client side of the protocol

def encode_body(body):
    if isinstance(body, (bytes, bytearray)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def neon_headers(conn_string, raw=True, array=True, extra=()):
    """The headers driver 1.2.0 sends (section 8.1), minus host/content-length."""
    h = []
    if conn_string is not None:
        h.append(("Neon-Connection-String", conn_string))
    if raw is not None:
        h.append(("Neon-Raw-Text-Output", "true" if raw is True else raw))
    if array is not None:
        h.append(("Neon-Array-Mode", "true" if array is True else ("false" if array is False else array)))
    h += [("content-type", "text/plain;charset=UTF-8"), ("accept", "*/*")]
    h += list(extra)
    return h


class SqlClient:
    """Neon SQL-over-HTTP requests to one bulkhead, one fresh TCP connection per request."""

    def __init__(self, bh, pg, user=ALICE, password=ALICE_PW, host="db.example.com", dbname=DBNAME):
        self.bh = bh
        self.pg = pg
        self.port = bh.port
        self.user, self.password, self.host, self.dbname = user, password, host, dbname

    def url(self, **kw):
        args = dict(user=self.user, password=self.password, host=self.host, dbname=self.dbname)
        args.update(kw)
        return self.pg.url(**args)

    def post(self, body, raw=True, array=True, headers=(), conn=None, target="/sql", method="POST",
             replace_headers=None, timeout=IO_TIMEOUT):
        """Sends one request and returns the RawResponse (None if the connection closed first)."""
        if replace_headers is not None:
            hdrs = list(replace_headers)
        else:
            hdrs = neon_headers(self.url() if conn is None else conn, raw=raw, array=array, extra=headers)
        data = encode_body(body) if body is not None else None
        with RawClient(self.port, timeout=timeout) as c:
            c.request(method, target, headers=hdrs, body=data, host="127.0.0.1:%d" % self.port)
            try:
                return c.read_response(method)
            except (PeerClosed, ConnectionResetError):
                return None

    def query(self, q, params=None, **kw):
        body = {"query": q, "params": [] if params is None else params}
        return self.post(body, **kw)

    def batch(self, queries, isolation=None, read_only=None, deferrable=None, headers=(), **kw):
        h = list(headers)
        if isolation is not None:
            h.append(("Neon-Batch-Isolation-Level", isolation))
        if read_only is not None:
            h.append(("Neon-Batch-Read-Only", "true" if read_only is True else
                      ("false" if read_only is False else read_only)))
        if deferrable is not None:
            h.append(("Neon-Batch-Deferrable", "true" if deferrable is True else
                      ("false" if deferrable is False else deferrable)))
        qs = [q if isinstance(q, dict) else {"query": q, "params": []} for q in queries]
        return self.post({"queries": qs}, headers=h, **kw)


def describe(resp):
    if resp is None:
        return "no response (connection closed)"
    return "%d %r body=%r" % (resp.status, resp.headers, resp.body[:2000])


def ok_json(resp):
    assert resp is not None and resp.status == 200, describe(resp)
    return resp.json()


def rows_of(resp):
    return ok_json(resp)["rows"]


def assert_error_shape(resp, status=400):
    """The 17 keys in order, code and severity strings; returns the decoded body."""
    assert resp is not None, "no response"
    assert resp.status == status, describe(resp)
    body = json.loads(resp.body)
    assert isinstance(body, dict), describe(resp)
    assert list(body.keys()) == ERROR_KEYS, "error body keys %r" % list(body.keys())
    assert isinstance(body["code"], str) and isinstance(body["severity"], str), body
    assert isinstance(body["message"], str), body
    for k in ERROR_KEYS:
        assert body[k] is None or isinstance(body[k], str), (k, body)
    return body


def assert_db_error(resp, code, message=None, status=400):
    body = assert_error_shape(resp, status)
    assert body["code"] == code, body
    if message is not None:
        assert body["message"] == message, body
    return body


def assert_proxy_error(resp, status=400, message=None, message_prefix=None, contains=None):
    """A non-DB error: code and severity are "" (section 6.2)."""
    body = assert_error_shape(resp, status)
    assert body["code"] == "" and body["severity"] == "", body
    if message is not None:
        assert body["message"] == message, body
    if message_prefix is not None:
        assert body["message"].startswith(message_prefix), body
    if contains is not None:
        assert contains in body["message"], body
    return body


# ----------------------------------------------------------------------------------------------
# the libpq oracle: what the spec says bulkhead must answer, computed from libpq's own answer to the
# same statement (PQexecParams, text params, text results: exactly the calls the issue prescribes)

class Oracle:
    def __init__(self, pg, user=ALICE, password=ALICE_PW, dbname=DBNAME):
        self.pg = pg
        self.conninfo = psycopg.conninfo.make_conninfo(host="127.0.0.1", port=pg.port, user=user,
                                                       password=password, dbname=dbname)

    def _exec(self, query, params):
        conn = pq.PGconn.connect(self.conninfo.encode())
        try:
            assert conn.status == pq.ConnStatus.OK, conn.error_message
            for s in ("SET client_encoding = 'UTF8'", "SET DateStyle = 'ISO, MDY'",
                      "SET IntervalStyle = 'postgres'", "SET bytea_output = 'hex'", "SET TimeZone = 'UTC'"):
                conn.exec_(s.encode())
            enc = [None if p is None else p.encode() for p in params]
            res = conn.exec_params(query.encode(), enc, None, None, 0)
            return res
        finally:
            conn.finish()

    def error_body(self, query, params=()):
        res = self._exec(query, list(params))
        assert res.status == pq.ExecStatus.FATAL_ERROR, "oracle: %r did not fail" % query
        return error_body_from(res)

    def result_body(self, query, params=(), array=True):
        res = self._exec(query, list(params))
        assert res.status in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK,
                              pq.ExecStatus.EMPTY_QUERY), "oracle: %r: %s" % (query, res.error_message)
        return result_body_from(res, array=array)


def _f(res, field):
    v = res.error_field(field)
    return None if v is None else v.decode()


def error_body_from(res):
    F = pq.DiagnosticField
    pos = _f(res, F.STATEMENT_POSITION)
    ipos = _f(res, F.INTERNAL_POSITION) if pos is None else None
    iq = _f(res, F.INTERNAL_QUERY) if ipos is not None else None
    vals = [
        ("message", _f(res, F.MESSAGE_PRIMARY)), ("code", _f(res, F.SQLSTATE) or ""),
        ("detail", _f(res, F.MESSAGE_DETAIL)), ("hint", _f(res, F.MESSAGE_HINT)),
        ("position", pos), ("internalPosition", ipos), ("internalQuery", iq),
        ("severity", _f(res, F.SEVERITY) or ""), ("where", _f(res, F.CONTEXT)),
        ("table", _f(res, F.TABLE_NAME)), ("column", _f(res, F.COLUMN_NAME)),
        ("schema", _f(res, F.SCHEMA_NAME)), ("dataType", _f(res, F.DATATYPE_NAME)),
        ("constraint", _f(res, F.CONSTRAINT_NAME)), ("file", _f(res, F.SOURCE_FILE)),
        ("line", _f(res, F.SOURCE_LINE)), ("routine", _f(res, F.SOURCE_FUNCTION)),
    ]
    return ("{" + ",".join("%s:%s" % (jstr(k), jstr(v)) for k, v in vals) + "}").encode()


def command_and_count(tag):
    """Section 5: command = first word of the tag; rowCount = third word for INSERT, second otherwise,
    as a signed 64-bit integer, else null."""
    words = tag.split(" ") if tag else []
    command = words[0] if words else ""
    idx = 2 if command == "INSERT" else 1
    count = None
    if len(words) > idx and re.fullmatch(r"[+-]?[0-9]+", words[idx]):
        n = int(words[idx])
        if -2 ** 63 <= n < 2 ** 63:
            count = n
    return command, count


def result_body_from(res, array=True):
    fields = []
    names = []
    for i in range(res.nfields):
        name = res.fname(i).decode()
        names.append(name)
        fields.append('{"name":%s,"dataTypeID":%d,"tableID":%d,"columnID":%d,"dataTypeSize":%d,'
                      '"dataTypeModifier":%d,"format":"text"}'
                      % (jstr(name), res.ftype(i), res.ftable(i), res.ftablecol(i), res.fsize(i),
                         res.fmod(i)))
    rows = []
    for r in range(res.ntuples):
        vals = []
        for i in range(res.nfields):
            v = res.get_value(r, i)
            vals.append("null" if v is None else jstr(v.decode()))
        if array:
            rows.append("[" + ",".join(vals) + "]")
        else:
            rows.append("{" + ",".join("%s:%s" % (jstr(n), v) for n, v in zip(names, vals)) + "}")
    tag = res.command_status.decode() if res.command_status else ""
    command, count = command_and_count(tag)
    return ('{"fields":[%s],"rows":[%s],"command":%s,"rowCount":%s,"rowAsArray":%s}'
            % (",".join(fields), ",".join(rows), jstr(command), "null" if count is None else count,
               "true" if array else "false")).encode()


def rows_segment(body):
    """The raw bytes of the "rows" array of a single-query success body."""
    m = re.search(rb'"rows":(.*),"command":', body, re.S)
    assert m, "no rows in %r" % body[:500]
    return m.group(1)


# ----------------------------------------------------------------------------------------------
# concurrency helpers

class Poller(threading.Thread):
    """Calls fn() repeatedly in a thread until stopped; keeps every value and the maximum."""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn = fn
        self.values = []
        self.errors = []
        self._stop_ev = threading.Event()

    def run(self):
        while not self._stop_ev.is_set():
            try:
                self.values.append(self.fn())
                self._stop_ev.wait(0.005)  # polling interval
            except Exception as e:  # noqa: BLE001 - e.g. Postgres restarting under the poller
                self.errors.append(e)
                self._stop_ev.wait(0.01)

    def stop(self):
        self._stop_ev.set()
        self.join(IO_TIMEOUT)
        return self

    @property
    def max(self):
        return max(self.values) if self.values else None


# ----------------------------------------------------------------------------------------------
# requests held in flight without timing: they block on an advisory lock the test holds

def lock_key():
    return random.randrange(1, 2 ** 62)


class Lock:
    """A session advisory lock in database app held by the test (requests block on it)."""

    def __init__(self, pg):
        self.key = lock_key()
        self.conn = pg.connect(dbname="app")
        self.conn.execute("SELECT pg_advisory_lock(%s)", (self.key,))
        self.held = True

    def release(self):
        if self.held:
            self.conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
            self.held = False

    def close(self):
        try:
            self.release()
        finally:
            self.conn.close()


def waiting_on_lock(pg, role):
    return len([b for b in pg.backends(role) if b["wait_event_type"] == "Lock"])
