"""Fixtures of the SQL-over-HTTP tests: one throwaway PostgreSQL per pytest session (`pg`), bulkhead
started with a `databases` entry and a `/sql` route (`sql_bulkhead`), and a Neon-protocol client (`sql`).

Tests share the one Postgres, so they never share tables (unique names) and count server connections
only for roles of their own (`pg.make_role()`), which are also their own pool keys in bulkhead.
"""
import pytest

import sqlfix
from sqlfix import Postgres, SqlClient, sql_config

# This file and the parent's are both imported under the module name `conftest`; a test module of the
# parent directory imported after this one (e.g. `pytest tests/integration/sql tests/integration/x.py`)
# does `from conftest import ...` and gets this module. Re-export the parent's helpers (not its
# fixtures, which pytest already registered from the parent) so that keeps working.
for _k, _v in vars(sqlfix.parent).items():
    if not _k.startswith("_") and not hasattr(_v, "_pytestfixturefunction") and _k not in globals():
        globals()[_k] = _v


@pytest.fixture(scope="session")
def pg_server():
    pg = Postgres()
    yield pg
    pg.destroy()


@pytest.fixture
def pg(pg_server):
    """The session's Postgres, running (a fault test that failed halfway may have left it stopped)."""
    pg_server.ensure_running()
    yield pg_server
    pg_server.ensure_running()


@pytest.fixture
def sql_bulkhead(bulkhead, pg):
    """Factory: sql_bulkhead(db={...overrides of databases.main...}, workers=N, ...) -> Bulkhead with
    the /sql route to the throwaway Postgres (see sqlfix.sql_config)."""

    def make(db=None, route_methods=("POST", "OPTIONS"), extra_routes=(), **sections):
        conf = sql_config(pg, db=db, route_methods=route_methods, extra_routes=extra_routes)
        conf.update(sections)
        return bulkhead(**conf)

    return make


@pytest.fixture
def sql(sql_bulkhead, pg):
    """A client of a bulkhead with the default SQL config (pool of 4, total 5s), as alice."""
    return SqlClient(sql_bulkhead(), pg)
