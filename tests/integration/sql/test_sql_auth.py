"""`auth: fixed` (issue 4: "uses configured credentials and requires a configured bearer token"; config
reference: clients send `Authorization: Bearer <token>` with one of `tokens`).

The Neon spec has no such mode, so the statuses are this suite's reading of HTTP auth (RFC 6750 section
3.1, RFC 9110 section 11.6.1): a missing, malformed *or wrong* token is an authentication failure, 401
with a `WWW-Authenticate: Bearer` challenge. 403 is for a valid credential lacking permission, which this
mode does not have (one token set per database). Whatever the status, the request must never reach
Postgres, and no token may appear in a response.
"""
import pytest

from sqlfix import (IO_TIMEOUT, SqlClient, assert_error_shape, describe, ok_json, rows_of, unique,
                    wait_until)

TOKENS = ["tok-" + "a" * 20, "tok-second-" + "b" * 12]


@pytest.fixture
def fixed(sql_bulkhead, pg):
    role, pw = pg.make_role("fixed")
    bh = sql_bulkhead(db={"auth": "fixed", "user": role, "password": pw, "dbname": "app", "tokens": TOKENS})
    # the connection string's credentials are not used in this mode (its host still selects the entry)
    c = SqlClient(bh, pg, user="someone", password="whatever")
    return c, role, pw


def bearer(tok):
    return [("Authorization", "Bearer " + tok)]


def assert_unauthenticated(r):
    assert r is not None and r.status == 401, describe(r)
    challenge = r.header("WWW-Authenticate")
    assert challenge is not None and challenge.split()[0].lower() == "bearer", describe(r)
    assert_error_shape(r, 401)
    for tok in TOKENS + ["wrong-token-xyz"]:
        assert tok.encode() not in r.body and tok not in str(r.headers), "a token is quoted in the response"


def test_fixed_auth_with_a_valid_token(fixed):
    c, role, _ = fixed
    for tok in TOKENS:
        r = c.query("SELECT current_user AS u, current_database() AS d", headers=bearer(tok))
        assert rows_of(r) == [[role, "app"]]


def test_fixed_auth_connection_string_without_password(fixed, pg):
    c, role, _ = fixed
    r = c.query("SELECT current_user AS u", headers=bearer(TOKENS[0]), conn=pg.url(user="x", password=None))
    assert rows_of(r) == [[role]]


@pytest.mark.parametrize("auth", [None, "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer wrong-token-xyz",
                                  "Bearer " + TOKENS[0] + "x", "Bearer " + TOKENS[0][:-1], "Token " + TOKENS[0],
                                  TOKENS[0]],
                         ids=["missing", "empty bearer", "empty bearer with space", "basic", "wrong",
                              "token plus a char", "token prefix", "other scheme", "no scheme"])
def test_fixed_auth_refused_and_never_reaches_postgres(fixed, pg, auth):
    c, role, pw = fixed
    t = unique("tfa")
    pg.as_user("CREATE TABLE %s (id int)" % t, user=role, password=pw)
    headers = [] if auth is None else [("Authorization", auth)]
    r = c.query("INSERT INTO %s VALUES (1)" % t, headers=headers)
    assert_unauthenticated(r)
    assert r.header("access-control-allow-origin") == "*"
    assert pg.app_sql("SELECT count(*) FROM %s" % t) == [(0,)]
    assert pg.backends(role) == []


def test_fixed_auth_min_idle_prewarms(sql_bulkhead, pg):
    """With credentials in the config, the pool can open min_idle connections before any request."""
    role, pw = pg.make_role("warm")
    sql_bulkhead(db={"auth": "fixed", "user": role, "password": pw, "dbname": "app", "tokens": TOKENS,
                     "pool": {"max_connections": 4, "min_idle": 2}})
    wait_until(lambda: len(pg.backends(role)) >= 2, timeout=IO_TIMEOUT,
               what="2 pre-warmed server connections without any request")
    assert len(pg.backends(role)) <= 4


def test_passthrough_preflight_and_fixed_preflight_need_no_token(fixed):
    c, _, _ = fixed
    r = c.post(None, method="OPTIONS", replace_headers=[("Origin", "https://app.example"),
                                                        ("Access-Control-Request-Method", "POST")])
    assert r is not None and r.status == 200, describe(r)
    assert ok_json(c.query("SELECT 1 AS x", headers=bearer(TOKENS[1])))
