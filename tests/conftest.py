"""Shared fixtures: a fresh SQLite file and, when available, a fresh PostgreSQL database per test.

PostgreSQL tests read STOPBANDIT_TEST_PG_URL (set by .ci/run). Locally they
skip with a reason when it is unset; with CI=true they fail instead, so a CI
run can never pass without having exercised PostgreSQL.
"""

from __future__ import annotations

import os
import uuid

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

PG_URL = os.environ.get("STOPBANDIT_TEST_PG_URL")
IN_CI = os.environ.get("CI", "").lower() == "true"


def _pg_unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true but PostgreSQL is unusable: {reason}")
    pytest.skip(f"PostgreSQL tests need STOPBANDIT_TEST_PG_URL (bash .ci/run sets it): {reason}")


@pytest.fixture(scope="session", autouse=True)
def _private_state_dir(tmp_path_factory):
    """Spill files of Selectors opened without a spill path go to ``$XDG_STATE_HOME``: one for the session, not ~."""
    if "XDG_STATE_HOME" not in os.environ:
        os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state"))


@pytest.fixture
def pg_url():
    """URL of a brand-new PostgreSQL database, dropped after the test."""
    if not PG_URL:
        _pg_unavailable("STOPBANDIT_TEST_PG_URL is not set")
    name = f"sb_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - any failure means "unreachable" here
        admin.dispose()
        _pg_unavailable(f"cannot create a database at {PG_URL}: {exc}")
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'replay.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    """The same test against SQLite and against the real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'replay.db'}"
    return request.getfixturevalue("pg_url")
