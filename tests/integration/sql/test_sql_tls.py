"""TLS to Postgres (issue 11, "Postgres"): `sslmode`, `sslrootcert` in `databases.<x>.server` reach libpq,
the async connect drives the TLS handshake, and a verification failure is a 503 with libpq's message,
counted by the breaker.

A Postgres of this module only (the session's shared one has no TLS): started like the shared one (same
OS user, sqlfix.Postgres), plus `ssl = on` with a server certificate for localhost and 127.0.0.1 from a
test CA (tests/integration/certs.py; the key copied into the cluster's folder, owned by the server's
user, mode 0600), and pg_hba `hostssl` only: a TCP login without TLS is refused, so a query answered
over TCP proves the session is encrypted, and pg_stat_ssl says so from the server's side."""
import os
import shutil
import socket
import threading

import pytest

from certs import Pki
from sqladmin import metrics, msum, mval
from sqlfix import (ALICE, IO_TIMEOUT, PG_OS_USER, Postgres, SqlClient, assert_proxy_error, describe, parent,
                    proxy_status_error, rows_of, sql_config)

fetch = parent.fetch

# Proxy-Status error= of an open breaker (common/bh_error.h)
BREAKER = "destination_unavailable"
SSL_QUERY = "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


class TlsPostgres(Postgres):
    """sqlfix.Postgres with ssl = on, the given certificate, and hostssl-only TCP logins."""

    def __init__(self, cert):
        self._tls_cert = cert
        super().__init__()

    def _init_cluster(self):
        super()._init_cluster()
        crt, key = os.path.join(self.dir, "server.crt"), os.path.join(self.dir, "server.key")
        shutil.copyfile(self._tls_cert.cert, crt)
        shutil.copyfile(self._tls_cert.key, key)
        os.chmod(crt, 0o644)
        os.chmod(key, 0o600)  # Postgres refuses a key readable by others
        if self._own_root:
            for f in (crt, key):
                shutil.chown(f, PG_OS_USER, PG_OS_USER)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write("ssl = on\nssl_cert_file = '%s'\nssl_key_file = '%s'\n" % (crt, key))
        with open(os.path.join(self.data, "pg_hba.conf"), "w") as f:
            f.write("local all postgres trust\n"
                    "hostssl all all 127.0.0.1/32 scram-sha-256\n"
                    "hostssl all all ::1/128 scram-sha-256\n")


@pytest.fixture(scope="module")
def tls_pg(tmp_path_factory):
    d = tmp_path_factory.mktemp("pg-tls")
    pki = Pki(d / "pki")
    pg = TlsPostgres(pki.server("localhost", "127.0.0.1"))
    pg.ca_cert = pki.ca_cert
    pg.other_ca_cert = Pki(d / "other", name="Untrusted Test CA").ca_cert
    yield pg
    pg.destroy()


def server(pg, host="localhost", **keys):
    s = "host=%s port=%d" % (host, pg.port)
    for k, v in keys.items():
        s += " %s=%s" % (k, v)
    return s


def start(bulkhead, pg, srv, **db):
    db["server"] = srv
    return SqlClient(bulkhead(**sql_config(pg, db=db)), pg)


def test_verify_full_with_the_test_ca(bulkhead, tls_pg):
    """sslmode=verify-full with sslrootcert the test CA and host=localhost: POST /sql answers the rows,
    and the server reports the session encrypted (pg_stat_ssl). Two requests, so a pooled TLS connection
    is reused too. Guards against a TLS connect that PQconnectPoll does not finish on the loop (a hang
    or an error) and against libpq keys dropped from the connection string."""
    c = start(bulkhead, tls_pg, server(tls_pg, sslmode="verify-full", sslrootcert=tls_pg.ca_cert))
    for _ in range(2):
        r = c.query(SSL_QUERY)
        assert rows_of(r) == [["t", "TLSv1.3"]], describe(r)
    r = c.query("SELECT current_user AS u")
    assert rows_of(r) == [[ALICE]], describe(r)


def test_sslmode_reaches_libpq(bulkhead, tls_pg):
    """sslmode=disable against a server that accepts TCP logins over TLS only: the login is refused
    (libpq's "no pg_hba.conf entry ... no encryption"), so the key reached libpq; the same entry with
    sslmode=require is served. Guards against sslmode ignored (libpq's default, prefer, would use TLS
    and succeed)."""
    c = start(bulkhead, tls_pg, server(tls_pg, sslmode="disable"))
    r = c.query("SELECT 1 AS x")
    assert r is not None and r.status != 200, describe(r)
    assert "no encryption" in r.body.decode(errors="replace"), describe(r)
    c = start(bulkhead, tls_pg, server(tls_pg, sslmode="require"))
    assert rows_of(c.query(SSL_QUERY))[0][0] == "t"


def test_wrong_sslrootcert_is_503_with_libpq_message(bulkhead, tls_pg):
    """sslrootcert a CA that did not sign the server's certificate: 503 with Proxy-Status and the
    SQL-over-HTTP error body whose message carries libpq's reason ("certificate verify failed").
    Guards against sslrootcert ignored, and against a generic message instead of libpq's."""
    c = start(bulkhead, tls_pg, server(tls_pg, sslmode="verify-full", sslrootcert=tls_pg.other_ca_cert))
    r = c.query("SELECT 1 AS x")
    assert r is not None and r.status == 503, describe(r)
    assert proxy_status_error(r), describe(r)
    body = assert_proxy_error(r, 503)
    assert "certificate verify failed" in body["message"], body


def test_wrong_host_name_is_503(bulkhead, tls_pg):
    """verify-full checks the name: the certificate names localhost and 127.0.0.1, and connecting with
    hostaddr 127.0.0.1 but host=db.invalid (the name verified) fails with libpq's mismatch message.
    Guards against verify-full silently downgraded to verify-ca."""
    srv = "host=db.invalid hostaddr=127.0.0.1 port=%d sslmode=verify-full sslrootcert=%s" % (
        tls_pg.port, tls_pg.ca_cert)
    c = start(bulkhead, tls_pg, srv)
    r = c.query("SELECT 1 AS x")
    assert r is not None and r.status == 503, describe(r)
    body = assert_proxy_error(r, 503)
    assert "db.invalid" in body["message"] or "does not match" in body["message"], body


def test_verification_failures_open_the_breaker(bulkhead, tls_pg):
    """breaker.consecutive_failures 2, retries off: two verification failures (503 with libpq's message)
    open the breaker (bulkhead_breaker_state 1), and the third request is the breaker's 503
    (destination_unavailable) with no attempt made. Guards against TLS failures not counted as connect
    failures."""
    c = start(bulkhead, tls_pg, server(tls_pg, sslmode="verify-full", sslrootcert=tls_pg.other_ca_cert),
              retry={"attempts": 1},
              breaker={"consecutive_failures": 2, "failure_rate": 0, "open_for": "60s", "max_open_for": "60s",
                       "half_open_probes": 1})
    for _ in range(2):
        r = c.query("SELECT 1 AS x")
        assert r is not None and r.status == 503, describe(r)
        assert "certificate verify failed" in r.body.decode(errors="replace"), describe(r)
    assert mval(metrics(c.bh), "bulkhead_breaker_state", upstream="main") == 1
    before = msum(metrics(c.bh), "bulkhead_upstream_attempts_total", upstream="main")
    r = c.query("SELECT 1 AS x")
    assert r is not None and r.status == 503 and proxy_status_error(r) == BREAKER, describe(r)
    assert msum(metrics(c.bh), "bulkhead_upstream_attempts_total", upstream="main") == before


class StallingTlsServer(threading.Thread):
    """A Postgres stand-in that accepts TLS (answers 'S' to SSLRequest), reads the ClientHello and then
    says nothing until released: a TLS handshake to Postgres that stalls."""

    def __init__(self):
        super().__init__(daemon=True)
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(8)
        self.port = self.lsock.getsockname()[1]
        self.hello_seen = threading.Event()
        self.release = threading.Event()
        self.conns = []

    def run(self):
        try:
            conn, _ = self.lsock.accept()
        except OSError:
            return
        self.conns.append(conn)
        conn.settimeout(IO_TIMEOUT)
        try:
            req = conn.recv(8)
            if req[4:8] == b"\x04\xd2\x16\x2f":  # SSLRequest code 80877103
                conn.sendall(b"S")
                if conn.recv(5)[:1] == b"\x16":  # a TLS handshake record: the ClientHello
                    self.hello_seen.set()
            self.release.wait(IO_TIMEOUT * 2)
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self):
        self.release.set()
        self.lsock.close()


def test_stalled_tls_handshake_does_not_block_the_worker(bulkhead, tls_pg, upstream):
    """One worker; a database whose server accepts TLS and then stalls the handshake after the
    ClientHello. While that connect is pending, an HTTP request on another route of the same worker is
    answered; once the server gives up, the SQL request is a 503. Guards against a TLS connect to
    Postgres driven synchronously (PQconnectdb or a blocking handshake), which would freeze the loop."""
    srv = StallingTlsServer()
    srv.start()
    try:
        conf = sql_config(tls_pg, db={"server": "host=127.0.0.1 port=%d sslmode=require" % srv.port,
                                      "timeouts": {"connect": "120s", "total": "120s"}},
                          upstreams={"u": {"endpoints": [upstream.addr]}})
        bh = bulkhead(workers=1, **conf)
        c = SqlClient(bh, tls_pg)
        result = []
        t = threading.Thread(target=lambda: result.append(c.query("SELECT 1 AS x")), daemon=True)
        t.start()
        assert srv.hello_seen.wait(IO_TIMEOUT), "bulkhead never sent a ClientHello after 'S'"
        r = fetch(bh.port, "GET", "/echo-head?during=stall")
        assert r is not None and r.status == 200, r
        assert not result, "the SQL request ended before the server released it: %r" % result
        srv.release.set()
        t.join(IO_TIMEOUT)
        assert result and result[0] is not None and result[0].status == 503, \
            describe(result[0]) if result else "no answer"
    finally:
        srv.stop()
