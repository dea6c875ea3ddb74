"""Fixtures of the reliability suite: a private PostgreSQL server that tests may stop and restart.

``pg_server`` (one per test session) is a :class:`PgServer` of our own, never
the shared server of STOPBANDIT_TEST_PG_URL. It skips locally when no
PostgreSQL is installed and fails under ``CI=true``, like ``pg_url``.
``own_pg_url`` gives each test a fresh database on it, with the server running.
"""

from __future__ import annotations

import os

import pytest

from tests.reliability.pgserver import PgServer, PgUnavailable

IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="session")
def pg_server():
    server = PgServer()
    try:
        server.start()
    except (PgUnavailable, OSError) as exc:
        server.destroy()
        if IN_CI:
            pytest.fail(f"CI=true but a throwaway PostgreSQL server cannot start: {exc}")
        pytest.skip(f"outage tests need a PostgreSQL installation to start their own server: {exc}")
    yield server
    server.destroy()


@pytest.fixture
def own_pg_url(pg_server):
    """A fresh database on the private server (started if a previous test left it stopped)."""
    pg_server.ensure_running()
    return pg_server.create_database()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def outage_db(request, tmp_path):
    """(url, server or None): SQLite (outages injected) or our own PostgreSQL (outages real)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'replay.db'}", None
    server = request.getfixturevalue("pg_server")
    server.ensure_running()
    return server.create_database(), server
