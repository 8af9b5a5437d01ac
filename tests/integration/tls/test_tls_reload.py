"""Certificates and SIGHUP (issue 11, "Reload"): a reload reads the certificate files again. New
connections get the new certificate, connections already open are untouched; a missing or mismatched
file fails the reload (counted in /stats "reloads" and bulkhead_config_reloads_total{result="failure"})
and the old certificate keeps serving.

The listener's files live at fixed paths under tmp_path, which the tests overwrite (what an operator or
certbot does) before the SIGHUP."""
import shutil
import ssl
import time

import pytest

from tlsfix import (PeerClosed, TlsClient, client_context, listener_tls, metrics, mval, not_after, served_by,
                    sighup_reload, tls_config, to_yaml, wait_until)


class Live:
    """The certificate pair bulkhead is configured with: cert and key at fixed paths."""

    def __init__(self, tmp_path, cert):
        self.cert = str(tmp_path / "live.crt")
        self.key = str(tmp_path / "live.key")
        self.install(cert)

    def install(self, cert, key=None):
        """Copies a Cert's files (or another key) over the live paths."""
        shutil.copyfile(cert.cert, self.cert)
        shutil.copyfile((key or cert).key, self.key)


@pytest.fixture
def live(tmp_path, pki):
    first = pki.server("localhost", "127.0.0.1", stem="first")
    return Live(tmp_path, first), first


def start(bulkhead, upstream, live_pair):
    conf, _, _ = tls_config(listener_tls(live_pair), {"u": {"endpoints": [upstream.addr]}})
    return bulkhead(config=conf), conf


def failures(bh):
    return mval(metrics(bh), "bulkhead_config_reloads_total", result="failure")


def test_reload_swaps_the_certificate_open_connection_keeps_working(bulkhead, upstream, live, pki, ctx):
    """Files replaced by a new certificate, then SIGHUP: new connections are served the new serial (and
    the expiry gauge follows the new notAfter); a keep-alive TLS connection opened before keeps working
    (its next request is answered). Guards against certificates loaded only at start, and against a
    reload that drops open TLS connections."""
    pair, first = live
    bh, conf = start(bulkhead, upstream, pair)
    assert served_by(bh.port, "localhost") == first.serial
    second = pki.server("localhost", "127.0.0.1", stem="second", days=90)
    with TlsClient(bh.port, ctx) as old:
        assert old.get().status == 200
        pair.install(second)
        sighup_reload(bh, conf)
        assert served_by(bh.port, "localhost") == second.serial
        with TlsClient(bh.port, ctx) as new:
            assert new.served_serial() == second.serial
            assert new.get().status == 200
        r = old.get()
        assert r.status == 200, r
    gauge = wait_until(lambda: mval(metrics(bh), "bulkhead_tls_certificate_expiry_seconds", listener="tls",
                                    name="localhost"), what="the expiry gauge")
    assert abs(gauge - (not_after(second.cert) - time.time())) < 3600, gauge


@pytest.mark.parametrize("how", ["missing-cert-file", "missing-key-file", "key-of-another-cert",
                                 "replaced-cert-old-key"])
def test_bad_reload_keeps_the_old_certificate(bulkhead, upstream, live, pki, ctx, tmp_path, how):
    """A reload whose certificate cannot be loaded (the config names a missing file, a key that does
    not match, or the files were overwritten with a cert whose key was not copied yet) fails: counted
    as a failure in /stats and in bulkhead_config_reloads_total, bulkhead keeps running, and new
    connections still get the old certificate, fully verified. Guards against a half-applied reload
    (no certificate, or a mismatched pair that fails every handshake) and against failures not
    counted."""
    pair, first = live
    bh, conf = start(bulkhead, upstream, pair)
    other = pki.server("localhost", "127.0.0.1", stem="other")
    bad = dict(conf)
    if how == "missing-cert-file":
        bad["listeners"] = [dict(conf["listeners"][0], tls=listener_tls(other._replace(
            cert=str(tmp_path / "nowhere.crt"))))]
    elif how == "missing-key-file":
        bad["listeners"] = [dict(conf["listeners"][0], tls=listener_tls(other._replace(
            key=str(tmp_path / "nowhere.key"))))]
    elif how == "key-of-another-cert":
        bad["listeners"] = [dict(conf["listeners"][0], tls=listener_tls(other._replace(key=first.key)))]
    else:
        shutil.copyfile(other.cert, pair.cert)  # the key still is the first certificate's
    assert failures(bh) == 0
    sighup_reload(bh, to_yaml(bad) + "\n", expect="failure")
    assert failures(bh) == 1
    assert bh.proc.poll() is None
    for _ in range(3):
        assert served_by(bh.port, "localhost") == first.serial
        with TlsClient(bh.port, ctx) as c:
            assert c.get().status == 200


def test_good_reload_after_a_bad_one(bulkhead, upstream, live, pki, ctx):
    """A failed reload does not poison the next: once the files are right again, SIGHUP succeeds and
    the new certificate is served. Guards against state left behind by a failed load."""
    pair, first = live
    bh, conf = start(bulkhead, upstream, pair)
    other = pki.server("localhost", "127.0.0.1", stem="other")
    shutil.copyfile(other.cert, pair.cert)
    sighup_reload(bh, conf, expect="failure")
    assert served_by(bh.port, "localhost") == first.serial
    pair.install(other)
    sighup_reload(bh, conf)
    assert served_by(bh.port, "localhost") == other.serial
    with TlsClient(bh.port, ctx) as c:
        assert c.get().status == 200


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
def test_reload_to_verify_client_require_is_not_skipped_by_resumption(bulkhead, upstream, live, pki, version):
    """A listener without client certificates, reloaded with verify_client require: a session made
    before the reload, offered by a client without a certificate, is not resumed and the connection
    is refused. Guards against sessions that outlive a change of the listener's client verification
    (the same ticket keys and session id context before and after)."""
    pair, first = live
    bh, conf = start(bulkhead, upstream, pair)
    v = getattr(ssl.TLSVersion, version.replace(".", "_"))
    nocert = client_context(pki.ca_cert, min_version=v, max_version=v)
    with TlsClient(bh.port, nocert) as c:
        assert c.get().status == 200
        session = c.sock.session
    strict = dict(conf)
    strict["listeners"] = [dict(conf["listeners"][0], tls=listener_tls(pair, client_ca=pki.ca_cert,
                                                                        verify_client="require"))]
    sighup_reload(bh, strict)
    before = upstream.count("/echo-head")
    resumed = served = False
    try:
        with TlsClient(bh.port, nocert, session=session) as c:
            resumed = c.sock.session_reused
            served = c.get().status == 200
    except (ssl.SSLError, PeerClosed, ConnectionResetError, BrokenPipeError):
        pass
    assert not resumed and not served, "a session from before the reload got past verify_client require"
    assert upstream.count("/echo-head") == before
    alice = pki.client("alice")
    with TlsClient(bh.port, client_context(pki.ca_cert, cert=alice)) as c:
        assert c.get().status == 200


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
def test_sessions_survive_a_reload(bulkhead, upstream, live, pki, version):
    """The ticket keys are kept across reloads (README, "Resumption"): a session made before a SIGHUP
    that changes nothing about TLS resumes after it. Guards against keys regenerated by every reload,
    which would turn every client's next connection into a full handshake."""
    pair, first = live
    bh, conf = start(bulkhead, upstream, pair)
    v = getattr(ssl.TLSVersion, version.replace(".", "_"))
    vctx = client_context(pki.ca_cert, min_version=v, max_version=v)
    with TlsClient(bh.port, vctx) as c:
        assert c.get().status == 200
        session = c.sock.session
    sighup_reload(bh, conf)
    with TlsClient(bh.port, vctx, session=session) as c:
        assert c.sock.session_reused, "a session from before the reload was not resumed"
        assert c.get().status == 200
