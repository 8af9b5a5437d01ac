"""Fixtures of the TLS tests (issue 11): a throwaway PKI per test (`pki`, `site`), bulkhead with a TLS
listener (`tls_bulkhead`), nginx as an HTTPS upstream (`nginx_factory`) and the TLS fault server
(`faults_factory`). Helpers live in tlsfix.py (see there why not here)."""
import pytest

import tlsfix
from tlsfix import Faults, Nginx, Pki, client_context, listener_tls, tls_config

# This file and the parent's are both imported under the module name `conftest`, and pytest loads every
# conftest.py before it imports the test modules: a test module of the parent directory that does
# `from conftest import ...` may get this module. Re-export the parent's helpers (not its fixtures,
# which pytest already registered from the parent) so that keeps working (as sql/conftest.py does).
for _k, _v in vars(tlsfix.parent).items():
    if not _k.startswith("_") and not hasattr(_v, "_pytestfixturefunction") and _k not in globals():
        globals()[_k] = _v


@pytest.fixture
def pki(tmp_path):
    """A test CA of this test only; pki.server(...), pki.client(...), pki.expired(...)."""
    return Pki(tmp_path / "pki")


@pytest.fixture
def other_pki(tmp_path):
    """A second CA that nothing trusts."""
    return Pki(tmp_path / "other-pki", name="Untrusted Test CA")


@pytest.fixture
def site(pki):
    """bulkhead's default listener certificate: localhost and 127.0.0.1."""
    return pki.server("localhost", "127.0.0.1")


@pytest.fixture
def ctx(pki):
    """A client context trusting the test CA (hostname checked)."""
    return client_context(pki.ca_cert)


@pytest.fixture
def tls_bulkhead(bulkhead, site):
    """Factory: tls_bulkhead(upstream or upstreams={...}, tls={...listener tls...}, plain_listener=False,
    env=None, **sections) -> Bulkhead whose first listener ("tls") serves HTTPS with `site` unless tls
    is given; .port is the TLS port, .plain_port the plain listener's (or None)."""

    def make(up=None, tls=None, upstreams=None, routes=None, plain_listener=False, env=None, **sections):
        if upstreams is None:
            upstreams = {"u": {"endpoints": [up if isinstance(up, str) else up.addr]}}
        conf, _, plain = tls_config(tls or listener_tls(site), upstreams, routes, plain_listener, **sections)
        bh = bulkhead(config=conf, env=env)
        bh.plain_port = plain
        return bh

    return make


@pytest.fixture
def nginx_factory(tmp_path):
    started = []

    def make(cert, backend, **kw):
        n = Nginx(tmp_path, cert, backend if isinstance(backend, str) else backend.addr, **kw)
        started.append(n)
        return n

    yield make
    for n in started:
        n.stop()


@pytest.fixture
def faults_factory(tmp_path):
    started = []

    def make(mode, cert=None):
        f = Faults(tmp_path, mode, cert)
        started.append(f)
        return f

    yield make
    for f in started:
        f.stop()
