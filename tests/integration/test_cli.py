"""Command line: --version, --help, --check (good and bad files), signals."""
import glob
import os
import re
import signal

import pytest
import requests

import certs
from conftest import REPO, run_bulkhead, wait_until

GOOD = """\
workers: 1
listeners:
  - name: public
    address: 127.0.0.1:18080
admin:
  address: 127.0.0.1:19901
log:
  level: info
  access: off
limits:
  max_connections: 100
  max_header_bytes: 16KiB
  max_headers: 50
  max_body_bytes: 10MiB
  header_timeout: 10s
  body_timeout: 30s
  keepalive_timeout: 60s
upstreams:
  api:
    endpoints: [ "127.0.0.1:9000" ]
    pool:
      max_connections: 8
      max_pending: 16
      max_idle: 8
      acquire_timeout: 250ms
      idle_timeout: 4s
      max_lifetime: 10m
    timeouts:
      connect: 1s
      first_byte: 15s
      idle: 60s
      total: 30s
routes:
  - match: { host: api.example.com, path_prefix: /v1/, methods: [ GET, POST ] }
    upstream: api
    strip_prefix: true
    timeouts: { total: 10s }
  - match: { path_prefix: / }
    upstream: api
shutdown:
  drain_timeout: 5s
"""


def write(tmp_path, text, name="bulkhead.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def check_error(tmp_path, text, line, col=None, words=()):
    """--check must exit 2 with `FILE:LINE:COL: message` on stderr naming the given position."""
    path = write(tmp_path, text)
    r = run_bulkhead("--check", str(path))
    assert r.returncode == 2, "exit %s, stderr: %r" % (r.returncode, r.stderr)
    m = re.search(r"^(.*?):(\d+):(\d+): (.+)$", r.stderr, re.M)
    assert m, "no FILE:LINE:COL: message in stderr: %r" % r.stderr
    assert os.path.basename(m.group(1)) == path.name, r.stderr
    got_line, got_col, msg = int(m.group(2)), int(m.group(3)), m.group(4)
    if line is not None:
        assert got_line == line, "expected line %d: %r" % (line, r.stderr)
    if col is not None:
        assert got_col == col, "expected column %d (1-based): %r" % (col, r.stderr)
    for w in words:
        assert w.lower() in msg.lower(), "expected %r in the message: %r" % (w, r.stderr)
    return got_line, got_col, msg


def test_version():
    r = run_bulkhead("--version")
    assert r.returncode == 0, r.stderr
    assert re.search(r"bulkhead\S*\s+v?\d+\.\d+", r.stdout + r.stderr, re.I), (r.stdout, r.stderr)


def test_help():
    r = run_bulkhead("--help")
    assert r.returncode == 0, r.stderr
    text = r.stdout + r.stderr
    assert "-c" in text and "--check" in text, text


def test_unknown_option_fails():
    r = run_bulkhead("--no-such-option")
    assert r.returncode != 0
    assert r.stderr.strip(), "an unknown option should be explained on stderr"


def test_check_good_file(tmp_path):
    r = run_bulkhead("--check", str(write(tmp_path, GOOD)))
    assert r.returncode == 0, r.stderr


def test_check_minimal_file(tmp_path):
    text = ("listeners:\n  - address: 127.0.0.1:18080\nupstreams:\n  a:\n    endpoints: [\"127.0.0.1:1\"]\n"
            "routes:\n  - match: { path_prefix: / }\n    upstream: a\n")
    r = run_bulkhead("--check", str(write(tmp_path, text)))
    assert r.returncode == 0, r.stderr


def test_check_unknown_key_did_you_mean(tmp_path):
    text = GOOD.replace("      max_pending: 16", "      max_pendng: 16")
    line = text.splitlines().index("      max_pendng: 16") + 1
    _, _, msg = check_error(tmp_path, text, line, col=7, words=["max_pendng"])
    assert "max_pending" in msg, "expected a did-you-mean suggestion: %r" % msg


def test_check_unknown_top_level_key(tmp_path):
    text = GOOD.replace("limits:", "limts:")
    line = text.splitlines().index("limts:") + 1
    _, _, msg = check_error(tmp_path, text, line, col=1)
    assert "limits" in msg, "expected a did-you-mean suggestion: %r" % msg


@pytest.mark.parametrize("value", ["10 seconds", "5x", "-1s", "10"])
def test_check_bad_duration(tmp_path, value):
    text = GOOD.replace("  header_timeout: 10s", "  header_timeout: %s" % value)
    line = text.splitlines().index("  header_timeout: %s" % value) + 1
    check_error(tmp_path, text, line, col=19)


def test_check_bad_size(tmp_path):
    text = GOOD.replace("  max_body_bytes: 10MiB", "  max_body_bytes: 10 lots")
    line = text.splitlines().index("  max_body_bytes: 10 lots") + 1
    check_error(tmp_path, text, line, col=19)


def test_check_route_to_unknown_upstream(tmp_path):
    text = GOOD.replace("    upstream: api\n    strip_prefix", "    upstream: apj\n    strip_prefix")
    line = text.splitlines().index("    upstream: apj") + 1
    _, _, msg = check_error(tmp_path, text, line, col=15, words=["apj"])


DB = GOOD + """\
databases:
  main:
    hosts: [ "*" ]
    server: "host=127.0.0.1 port=5432"
    reset: always
    statement_cache: 64
    pool:
      max_connections: 4
      max_connections_per_user: 2
    retry:
      budget: { ratio: 10%, min_per_second: 5 }
"""


def test_check_database_keys(tmp_path):
    r = run_bulkhead("--check", str(write(tmp_path, DB)))
    assert r.returncode == 0, r.stderr


def test_check_database_per_user_above_max(tmp_path):
    text = DB.replace("      max_connections_per_user: 2", "      max_connections_per_user: 5")
    line = text.splitlines().index("      max_connections_per_user: 5") + 1
    check_error(tmp_path, text, line, col=33, words=["max_connections_per_user", "max_connections 4"])


@pytest.mark.parametrize("key,value,col,words", [
    ("reset", "sometimes", 12, ["auto or always"]),
    ("statement_cache", "65537", 22, ["0 to 65536"]),
])
def test_check_database_bad_value(tmp_path, key, value, col, words):
    old = [ln for ln in DB.splitlines() if ln.startswith("    %s: " % key)][0]
    text = DB.replace(old, "    %s: %s" % (key, value))
    line = text.splitlines().index("    %s: %s" % (key, value)) + 1
    check_error(tmp_path, text, line, col=col, words=[key] + words)


def test_check_yaml_syntax_error(tmp_path):
    text = GOOD.replace('endpoints: [ "127.0.0.1:9000" ]', 'endpoints: [ "127.0.0.1:9000"')
    bad_line = text.splitlines().index('    endpoints: [ "127.0.0.1:9000"') + 1
    got_line, _, _ = check_error(tmp_path, text, None)
    # libyaml notices the unclosed flow sequence a little later; the position must still be in the file
    # and not before the problem.
    assert bad_line <= got_line <= len(text.splitlines()) + 1


def test_check_tab_indentation_is_syntax_error(tmp_path):
    text = GOOD.replace("  level: info", "\tlevel: info")
    check_error(tmp_path, text, None)


def test_check_bad_address(tmp_path):
    text = GOOD.replace("    address: 127.0.0.1:18080", "    address: 127.0.0.1:99999")
    line = text.splitlines().index("    address: 127.0.0.1:99999") + 1
    check_error(tmp_path, text, line, col=14)


def test_check_env_substitution(tmp_path):
    text = GOOD.replace("127.0.0.1:18080", "127.0.0.1:${BH_TEST_LISTEN_PORT:-18080}")
    path = write(tmp_path, text)
    r = run_bulkhead("--check", str(path), env={"BH_TEST_LISTEN_PORT": "18081"})
    assert r.returncode == 0, r.stderr
    r = run_bulkhead("--check", str(path))
    assert r.returncode == 0, "a ${VAR:-default} with VAR unset takes the default: %r" % r.stderr


def test_check_env_unset_without_default(tmp_path):
    text = GOOD.replace("127.0.0.1:18080", "127.0.0.1:${BH_TEST_SURELY_UNSET_VARIABLE}")
    line = text.splitlines().index("    address: 127.0.0.1:${BH_TEST_SURELY_UNSET_VARIABLE}") + 1
    check_error(tmp_path, text, line, words=["BH_TEST_SURELY_UNSET_VARIABLE"])


# --check FILE --print: the effective config, secrets redacted, alone on stdout.
PRINTED = GOOD.replace("  access: off\n", "  access: off\n  # a comment\n").replace(
    "admin:\n  address: 127.0.0.1:19901\n",
    "admin:\n  address: 127.0.0.1:19901\n  token: ${BH_TEST_ADMIN_TOKEN}\n") + """\
databases:
  main:
    hosts: [ "db.example.com" ]
    server: "host=127.0.0.1 port=5432 sslpassword=${BH_TEST_SSL_PASSWORD}"
    auth: fixed
    user: app
    password: "${BH_TEST_DB_PASSWORD}"
    dbname: app
    tokens: [ "${BH_TEST_SQL_TOKEN}" ]
"""
SECRETS = {"BH_TEST_ADMIN_TOKEN": "adm1n-t0ken-xyz", "BH_TEST_DB_PASSWORD": "pg-pa55word-xyz",
           "BH_TEST_SSL_PASSWORD": "ssl-pa55word-xyz", "BH_TEST_SQL_TOKEN": "sql-t0ken-xyz"}


def test_check_print_is_the_effective_config_redacted(tmp_path):
    r = run_bulkhead("--check", str(write(tmp_path, PRINTED)), "--print", env=SECRETS)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for name, secret in SECRETS.items():
        assert secret not in out, "%s printed:\n%s" % (name, out)
    assert out.count('"<redacted>"') >= 3 and "sslpassword=<redacted>" in out, out
    # effective values: given ones, defaults, resolved names; no ${VAR} left
    assert "  max_headers: 50\n" in out and "  max_body_bytes: 10MiB\n" in out, out
    assert "  max_lifetime: 10m\n" in out and "  dns_refresh: 30s\n" in out, out  # defaults
    assert 'name: "api.example.com/v1/"' in out, out
    assert "${" not in out and "a comment" not in out, out
    assert ": ok" not in out, "stdout must be the config alone: %r" % out

    # the printed text passes --check again, and prints the same text again
    again = write(tmp_path, out, "printed.yaml")
    r2 = run_bulkhead("--check", str(again), "--print")
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout == out


def test_check_print_invalid_file_prints_nothing(tmp_path):
    r = run_bulkhead("--check", str(write(tmp_path, GOOD.replace("5s", "5 s"))), "--print")
    assert r.returncode == 2
    assert r.stdout == "" and ":" in r.stderr


def test_print_without_check_is_a_usage_error(tmp_path):
    r = run_bulkhead("-c", str(write(tmp_path, GOOD)), "--print")
    assert r.returncode == 2
    assert "--print" in r.stderr


# tls.yaml names certificate files under /etc/bulkhead/: test_check_tls.py checks it with files made
# for the test.
EXAMPLES = sorted(p for p in glob.glob(os.path.join(REPO, "conf", "examples", "*.yaml"))
                  + glob.glob(os.path.join(REPO, "examples", "*.yaml"))
                  if os.path.basename(p) != "tls.yaml")


@pytest.mark.parametrize("path", EXAMPLES, ids=[os.path.basename(p) for p in EXAMPLES])
def test_examples_check(path, tmp_path):
    site = certs.Pki(tmp_path).server("localhost", "127.0.0.1")  # demo.yaml's HTTPS listener
    r = run_bulkhead("--check", path, env={"BULKHEAD_ADMIN_TOKEN": "", "PGPASSWORD": "x",
                                           "DEMO_TLS_CERT": site.cert, "DEMO_TLS_KEY": site.key})
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_graceful_exit(bulkhead, upstream, sig):
    bh = bulkhead(upstream)
    assert requests.get(bh.url + "/echo-head", timeout=30).status_code == 200
    assert bh.stop(sig) == 0, bh.stderr_text()


def test_sigterm_finishes_in_flight_request(bulkhead, upstream, raw):
    """Graceful stop: a request in flight when SIGTERM arrives still gets its response."""
    bh = bulkhead(upstream)
    c = raw(bh.port)
    c.request("GET", "/hold?id=drain")
    wait_until(lambda: upstream.stats()["holding"] == 1, what="request to reach the upstream")
    bh.proc.send_signal(signal.SIGTERM)
    # once SIGTERM is handled, new requests are no longer served (refused, closed or answered 503)
    wait_until(lambda: not _serves_new_request(bh.port), what="bulkhead to stop serving new requests")
    upstream.release("drain")
    r = c.read_response()
    assert r.status == 200 and r.body == b"released"
    bh.proc.wait(30)
    assert bh.proc.returncode == 0, bh.stderr_text()


def _serves_new_request(port):
    import socket
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /echo-head HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return s.recv(12).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def test_check_without_file_checks_the_c_config(tmp_path):
    """`-c FILE --check` (what docker/entrypoint.sh runs for `docker run IMAGE --check`) checks the -c file:
    ok for a good one, exit 2 for a bad one; `--check` with no file at all is a usage error."""
    good = write(tmp_path, GOOD)
    r = run_bulkhead("-c", str(good), "--check")
    assert r.returncode == 0, r.stderr
    assert str(good) in r.stdout and "ok" in r.stdout, r.stdout
    bad = write(tmp_path, GOOD + "no_such_key: 1\n", name="bad.yaml")
    r = run_bulkhead("-c", str(bad), "--check")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "bad.yaml" in r.stderr, r.stderr
    r = run_bulkhead("--check", "-c", str(bad), str(good))     # an explicit FILE wins over -c
    assert r.returncode == 0, r.stderr
    r = run_bulkhead("--check")
    assert r.returncode == 2 and "--check" in r.stderr, r.stderr
