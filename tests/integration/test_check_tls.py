"""--check on the tls sections: certificate, key and CA files are read and checked when the file is
loaded; an error names FILE:LINE:COL and exits 2, a warning (a certificate expiring within 14 days,
verify: false) is printed as FILE:LINE:COL: warning: ... and the check still passes."""
import datetime
import json
import os
import re
import shutil

from conftest import REPO, run_bulkhead, sighup_reload, to_yaml, upstream_entry, wait_until

import certs

UPSTREAM = 'upstreams:\n  a:\n    endpoints: ["127.0.0.1:9000"]\nroutes:\n  - upstream: a\n'
CERT_LINE, CERT_COL = 6, 17  # where listener() puts the cert's value ...
KEY_LINE, KEY_COL = 7, 16    # ... and the key's; extra keys start on line 8, column 7


def listener(cert, key, extra="", upstream=UPSTREAM):
    return ("listeners:\n"
            "  - name: public\n"
            "    address: 127.0.0.1:18443\n"
            "    tls:\n"
            "      certificates:\n"
            "        - cert: %s\n"
            "          key: %s\n" % (cert, key) + extra + upstream)


def upstream_tls(pki, tls_lines, endpoints='["https://127.0.0.1:9443"]'):
    """A listener with a good certificate, and upstream a (endpoints on line 10) with the given tls
    lines (from line 12, indented by 6)."""
    site = pki.server("site.test")
    up = ("upstreams:\n  a:\n    endpoints: %s\n    tls:\n" % endpoints
          + "".join("      %s\n" % line for line in tls_lines) + "routes:\n  - upstream: a\n")
    return listener(site.cert, site.key, upstream=up)


def check(tmp_path, text):
    path = tmp_path / "bulkhead.yaml"
    path.write_text(text)
    return path, run_bulkhead("--check", str(path))


def check_ok(tmp_path, text):
    path, r = check(tmp_path, text)
    assert r.returncode == 0, "exit %s, stderr: %r" % (r.returncode, r.stderr)
    assert "%s: ok" % path in r.stdout, r.stdout
    return r


def check_error(tmp_path, text, line, col, *words):
    """Exit 2 with one `FILE:LINE:COL: message` at the given position, the message holding words."""
    path, r = check(tmp_path, text)
    assert r.returncode == 2, "exit %s, stderr: %r" % (r.returncode, r.stderr)
    m = re.match(r"^(.*?):(\d+):(\d+): (.+)$", r.stderr.strip())
    assert m, "no FILE:LINE:COL: message in stderr: %r" % r.stderr
    assert m.group(1) == str(path), r.stderr
    assert (int(m.group(2)), int(m.group(3))) == (line, col), "expected %d:%d: %r" % (line, col, r.stderr)
    for w in words:
        assert w in m.group(4), "expected %r in the message: %r" % (w, r.stderr)
    return m.group(4)


def warnings(r, path):
    """The FILE:LINE:COL: warning: lines of stderr, as (line, col, text)."""
    return [(int(m.group(1)), int(m.group(2)), m.group(3))
            for m in re.finditer(r"^%s:(\d+):(\d+): warning: (.+)$" % re.escape(str(path)), r.stderr, re.M)]


# ---- files that load ----------------------------------------------------------------------------

def test_good_config_passes(tmp_path):
    pki = certs.Pki(tmp_path)
    site, other, client = pki.server("site.test", "www.site.test"), pki.server("other.test"), pki.client("bh")
    chain = certs.chain_file(str(tmp_path / "site-chain.crt"), site.cert, pki.ca_cert)
    extra = ("        - { cert: %s, key: %s }\n" % (other.cert, other.key)
             + "      min_version: \"1.3\"\n"
             + "      client_ca: %s\n      verify_client: require\n" % pki.ca_cert
             + "      handshake_timeout: 5s\n")
    up = ('upstreams:\n  a:\n    endpoints: [ "https://127.0.0.1:9443", "https://localhost" ]\n'
          "    tls:\n      ca: %s\n      server_name: site.test\n      cert: %s\n      key: %s\n"
          "      min_version: 1.2\nroutes:\n  - upstream: a\n" % (pki.ca_cert, client.cert, client.key))
    r = check_ok(tmp_path, listener(chain, site.key, extra, upstream=up))
    assert "warning" not in r.stderr, r.stderr


def test_ciphers_and_optional_client_certificates_pass(tmp_path):
    pki = certs.Pki(tmp_path)
    site = pki.server("site.test", rsa=True)
    extra = ("      ciphers: \"ECDHE+AESGCM:ECDHE+CHACHA20\"\n"
             "      client_ca: %s\n      verify_client: optional\n" % pki.ca_cert)
    r = check_ok(tmp_path, listener(site.cert, site.key, extra))
    assert "warning" not in r.stderr, r.stderr


def test_cert_file_with_key_and_chain_passes(tmp_path):
    pki = certs.Pki(tmp_path)
    site = pki.server("site.test")
    both = certs.chain_file(str(tmp_path / "both.pem"), site.cert, pki.ca_cert, site.key)
    check_ok(tmp_path, listener(both, both))


# ---- errors -------------------------------------------------------------------------------------

def test_missing_cert_file(tmp_path):
    pki = certs.Pki(tmp_path)
    site = pki.server("site.test")
    missing = str(tmp_path / "nope.crt")
    check_error(tmp_path, listener(missing, site.key), CERT_LINE, CERT_COL,
                "cannot read certificate '%s'" % missing, "No such file or directory")


def test_missing_key_file(tmp_path):
    pki = certs.Pki(tmp_path)
    site = pki.server("site.test")
    missing = str(tmp_path / "nope.key")
    check_error(tmp_path, listener(site.cert, missing), KEY_LINE, KEY_COL,
                "cannot read key '%s'" % missing, "No such file or directory")


def test_key_not_matching_cert(tmp_path):
    pki = certs.Pki(tmp_path)
    site, other = pki.server("site.test"), pki.server("other.test")
    check_error(tmp_path, listener(site.cert, other.key), KEY_LINE, KEY_COL,
                "key '%s' does not match certificate '%s'" % (other.key, site.cert))


def test_key_file_without_key(tmp_path):
    pki = certs.Pki(tmp_path)
    site = pki.server("site.test")
    check_error(tmp_path, listener(site.cert, site.cert), KEY_LINE, KEY_COL,
                "no private key in '%s'" % site.cert, "expected an unencrypted PEM private key")


def test_expired_cert(tmp_path):
    pki = certs.Pki(tmp_path)
    old = pki.expired("old.test")
    msg = check_error(tmp_path, listener(old.cert, old.key), CERT_LINE, CERT_COL,
                      "certificate '%s' expired on " % old.cert)
    day = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)).strftime("%Y-%m-%d")
    assert re.search(r"expired on %s \d\d:\d\d:\d\d UTC" % day, msg), msg


def test_cert_not_yet_valid(tmp_path):
    pki = certs.Pki(tmp_path)
    now = datetime.datetime.now(datetime.timezone.utc)
    ext = "basicConstraints=CA:FALSE\nsubjectAltName=DNS:future.test\n"
    future = pki._issue("future", "/CN=future.test", ext, not_before=now + datetime.timedelta(days=2),
                        not_after=now + datetime.timedelta(days=30))
    check_error(tmp_path, listener(future.cert, future.key), CERT_LINE, CERT_COL,
                "certificate '%s' is not valid before " % future.cert)


def test_client_ca_missing(tmp_path):
    pki = certs.Pki(tmp_path)
    site = pki.server("site.test")
    missing = str(tmp_path / "clients-ca.crt")
    check_error(tmp_path, listener(site.cert, site.key, "      client_ca: %s\n" % missing), 8, 18,
                "cannot read client_ca '%s'" % missing, "No such file or directory")


def test_client_ca_not_certificates(tmp_path):
    pki = certs.Pki(tmp_path)
    site = pki.server("site.test")
    check_error(tmp_path, listener(site.cert, site.key, "      client_ca: %s\n" % site.key), 8, 18,
                "no CA certificate in client_ca '%s'" % site.key)


def test_client_ca_unreadable(tmp_path):
    if os.geteuid() == 0:
        import pytest
        pytest.skip("root reads any file")
    pki = certs.Pki(tmp_path)
    site = pki.server("site.test")
    ca = str(tmp_path / "locked-ca.crt")
    shutil.copy(pki.ca_cert, ca)
    os.chmod(ca, 0)
    check_error(tmp_path, listener(site.cert, site.key, "      client_ca: %s\n" % ca), 8, 18,
                "cannot read client_ca '%s'" % ca, "Permission denied")


def test_cipher_list_matching_nothing(tmp_path):
    pki = certs.Pki(tmp_path)
    site = pki.server("site.test")
    check_error(tmp_path, listener(site.cert, site.key, "      ciphers: \"NOTACIPHER:ALSONOT\"\n"), 8, 16,
                "cipher list 'NOTACIPHER:ALSONOT'", "matches no TLS 1.2 cipher")


def test_tls_1_1_refused(tmp_path):
    pki = certs.Pki(tmp_path)
    site = pki.server("site.test")
    check_error(tmp_path, listener(site.cert, site.key, "      min_version: \"1.1\"\n"), 8, 20,
                "invalid TLS version '1.1'", "expected 1.2 or 1.3")


def test_verify_client_without_client_ca(tmp_path):
    pki = certs.Pki(tmp_path)
    site = pki.server("site.test")
    check_error(tmp_path, listener(site.cert, site.key, "      verify_client: require\n"), 8, 22,
                "verify_client: require", "needs client_ca")


def test_upstream_cert_without_key(tmp_path):
    pki = certs.Pki(tmp_path)
    client = pki.client("bh")
    check_error(tmp_path, upstream_tls(pki, ["cert: %s" % client.cert]), 12, 7,
                "'cert' in upstreams.a.tls needs 'key' too")


def test_upstream_client_key_not_matching(tmp_path):
    pki = certs.Pki(tmp_path)
    client, other = pki.client("bh"), pki.client("other")
    check_error(tmp_path, upstream_tls(pki, ["cert: %s" % client.cert, "key: %s" % other.key]), 13, 12,
                "does not match certificate")


def test_upstream_ca_missing(tmp_path):
    pki = certs.Pki(tmp_path)
    missing = str(tmp_path / "up-ca.crt")
    check_error(tmp_path, upstream_tls(pki, ["ca: %s" % missing]), 12, 11,
                "cannot read ca '%s'" % missing)


def test_mixed_https_and_plain_endpoints(tmp_path):
    pki = certs.Pki(tmp_path)
    text = upstream_tls(pki, ["verify: true"], endpoints='[ "https://a.test", "b.test:80" ]')
    check_error(tmp_path, text, 10, 36, "endpoint 'b.test:80'", "https:// or none")


def test_enabled_false_with_https_endpoints(tmp_path):
    pki = certs.Pki(tmp_path)
    check_error(tmp_path, upstream_tls(pki, ["enabled: false"]), 12, 16,
                "tls.enabled: false in upstreams.a contradicts its https:// endpoint")


# ---- warnings -----------------------------------------------------------------------------------

def test_cert_expiring_within_14_days_warns(tmp_path):
    pki = certs.Pki(tmp_path)
    soon = pki.expiring("soon.test", days_left=5)
    path, r = check(tmp_path, listener(soon.cert, soon.key))
    assert r.returncode == 0, r.stderr
    w = warnings(r, path)
    assert len(w) == 1, r.stderr
    line, col, text = w[0]
    assert (line, col) == (CERT_LINE, CERT_COL), r.stderr
    assert text.startswith("certificate '%s' expires on " % soon.cert), text
    assert re.search(r"UTC, in [45] days", text), text


def test_cert_expiring_later_does_not_warn(tmp_path):
    pki = certs.Pki(tmp_path)
    later = pki.expiring("later.test", days_left=20)
    path, r = check(tmp_path, listener(later.cert, later.key))
    assert r.returncode == 0, r.stderr
    assert warnings(r, path) == [], r.stderr


def test_verify_false_warns(tmp_path):
    pki = certs.Pki(tmp_path)
    path, r = check(tmp_path, upstream_tls(pki, ["verify: false"]))
    assert r.returncode == 0, r.stderr
    assert warnings(r, path) == [(12, 15, "TLS verification of upstream a is off (tls.verify: false): "
                                          "its certificate and host name are not checked")], r.stderr


def log_lines(bh, level, words):
    """bulkhead's JSON log lines of that level whose message holds words."""
    lines = [json.loads(ln) for ln in bh.stderr_text().splitlines() if ln.startswith("{")]
    return [ln for ln in lines if ln.get("level") == level and words in ln.get("msg", "")]


def test_start_and_reload_log_warnings(tmp_path, bulkhead, upstream):
    """The warnings --check prints are logged at start and on a reload, with their position."""
    secure = {"endpoints": ["https://127.0.0.1:9"], "tls": {"verify": False}}
    bh = bulkhead(upstream, upstreams={"u": upstream_entry(upstream), "secure": secure})
    (line,) = wait_until(lambda: log_lines(bh, "warn", "TLS verification of upstream secure is off"),
                         what="the warning at start")
    assert re.match(r"^%s:\d+:\d+: " % re.escape(str(bh.config_path)), line["msg"]), line

    conf = dict(bh.conf)
    conf["upstreams"] = {"u": upstream_entry(upstream), "other": secure}
    sighup_reload(bh, conf)
    wait_until(lambda: log_lines(bh, "warn", "TLS verification of upstream other is off"),
               what="the reload's warning to be logged")


def test_reload_with_a_missing_certificate_fails_and_is_counted(tmp_path, bulkhead, upstream):
    pki = certs.Pki(tmp_path / "pki")
    client = pki.client("bh")
    secure = {"endpoints": ["https://127.0.0.1:9"], "tls": {"cert": client.cert, "key": client.key}}
    bh = bulkhead(upstream, upstreams={"u": upstream_entry(upstream), "secure": secure})
    os.unlink(client.cert)
    s = sighup_reload(bh, to_yaml(bh.conf) + "\n", expect="failure")
    assert s["reloads"] == {"success": 0, "failure": 1}
    wait_until(lambda: log_lines(bh, "error", "cannot read certificate '%s'" % client.cert),
               what="the reload's error to be logged")


# ---- the example --------------------------------------------------------------------------------

EXAMPLE = os.path.join(REPO, "conf", "examples", "tls.yaml")


def test_tls_example_checks_with_its_files(tmp_path):
    """conf/examples/tls.yaml is valid once the files it names exist (here under tmp_path)."""
    pki = certs.Pki(tmp_path / "pki")
    files = tmp_path / "etc"
    files.mkdir()
    for stem, c in (("site", pki.server("site.example.com")), ("other", pki.server("other.example.com")),
                    ("client", pki.client("bulkhead"))):
        shutil.copy(c.cert, files / (stem + ".crt"))
        shutil.copy(c.key, files / (stem + ".key"))
    for ca in ("clients-ca.crt", "internal-ca.crt", "pg-ca.crt"):
        shutil.copy(pki.ca_cert, files / ca)
    with open(EXAMPLE) as f:
        text = f.read()
    assert text.count("/etc/bulkhead/") >= 9
    r = check_ok(tmp_path, text.replace("/etc/bulkhead/", str(files) + "/"))
    assert "warning" not in r.stderr, r.stderr


def test_tls_example_names_its_missing_files():
    if os.path.exists("/etc/bulkhead/site.crt"):
        import pytest
        pytest.skip("/etc/bulkhead/site.crt exists here")
    r = run_bulkhead("--check", EXAMPLE)
    assert r.returncode == 2, r.stderr
    assert re.match(r"^%s:12:\d+: cannot read certificate '/etc/bulkhead/site.crt': " % re.escape(EXAMPLE),
                    r.stderr), r.stderr


def database(server):
    """A database entry whose server conninfo (line 5, column 13) is given."""
    return ('listeners:\n  - address: 127.0.0.1:18080\ndatabases:\n  m:\n    server: "%s"\n'
            '    hosts: ["*"]\nroutes:\n  - database: m\n    match: { path_prefix: /sql }\n' % server)


def test_postgres_tls_files_are_checked(tmp_path):
    """libpq's sslrootcert/sslcert/sslkey in a database's server are read at load: a missing one
    would otherwise show only when the first connection fails."""
    pki = certs.Pki(tmp_path / "pki")
    check_ok(tmp_path, database("host=db.test sslmode=verify-full sslrootcert=%s" % pki.ca_cert))
    check_error(tmp_path, database("host=db.test sslmode=verify-full sslrootcert=%s" % (tmp_path / "no.crt")),
                5, 13, "cannot read sslrootcert", "no.crt")
    client = pki.client("app")
    check_error(tmp_path, database("host=db.test sslcert=%s sslkey=%s" % (client.cert, tmp_path / "no.key")),
                5, 13, "cannot read sslkey")


def test_postgres_unknown_sslmode(tmp_path):
    check_error(tmp_path, database("host=db.test sslmode=verify-fully"), 5, 13,
                "unknown sslmode 'verify-fully'", "verify-full")
