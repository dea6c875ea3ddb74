"""Database URLs and engines.

SQLite is the embedded default: WAL so readers never block the writer, a busy
timeout so several processes can share one file, and foreign keys on (SQLite
leaves them off unless asked). Any other SQLAlchemy URL works; PostgreSQL via
``postgresql+psycopg://`` is tested for real.

Every engine bounds its waits, so a database that stops answering (a hung
server, a network partition) turns into an error instead of a thread blocked
forever: PostgreSQL gets a connect timeout, TCP keepalives and a TCP user
timeout (a peer that vanished), and, with ``timeout``, server-side statement
and lock timeouts; SQLite a busy timeout. A server that is stopped but whose
socket is open (SIGSTOP) answers neither keepalives' absence nor statement
timeouts: the batch writer's deadlines (:mod:`stopbandit.replay.deadline`)
cut such a call from outside.
"""

from __future__ import annotations

import math
import os

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from stopbandit.errors import ConfigError, StoreError

DEFAULT_URL = "sqlite:///stopbandit.db"
ENV_VAR = "STOPBANDIT_DB"
SQLITE_BUSY_TIMEOUT_MS = 30_000  # without a ``timeout``
PG_CONNECT_TIMEOUT_S = 5  # at most; libpq counts whole seconds and at least 2


def resolve_url(url: str | None = None) -> str:
    """The URL to use: the argument, else ``$STOPBANDIT_DB``, else the SQLite default."""
    return url or os.environ.get(ENV_VAR) or DEFAULT_URL


def redact(url: str) -> str:
    """The URL with any password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<unparseable URL>"


def make_engine(url: str | None = None, *, timeout: float | None = None, **kwargs) -> Engine:
    """Create an engine for ``url`` with the store's connection settings.

    ``timeout`` (seconds): the longest a statement may run or wait for a lock
    (SQLite: the busy timeout; PostgreSQL: ``statement_timeout`` and
    ``lock_timeout``); None leaves statements unbounded (migrations, offline
    reads of a large log) and SQLite's busy timeout at 30 s. Connecting is
    always bounded. Raises ConfigError naming the URL when it cannot be parsed
    or its driver is missing.
    """
    url = resolve_url(url)
    if "\x00" in url:
        raise ConfigError("database URL contains a NUL character")
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise ConfigError(
            f"database URL {url!r} is not a valid SQLAlchemy URL (expected e.g. "
            f"'sqlite:///stopbandit.db' or 'postgresql+psycopg://user@host/db')"
        ) from exc
    try:
        if parsed.get_backend_name() == "sqlite":
            busy_ms = SQLITE_BUSY_TIMEOUT_MS if timeout is None else max(1, int(timeout * 1000))
            engine = create_engine(parsed, connect_args={"timeout": busy_ms / 1000}, **kwargs)
            event.listen(engine, "connect", lambda conn, rec: _sqlite_pragmas(conn, busy_ms))
            return engine
        kwargs.setdefault("pool_pre_ping", True)
        if parsed.get_backend_name() == "postgresql":
            kwargs["connect_args"] = {**pg_connect_args(timeout), **kwargs.pop("connect_args", {})}
        return create_engine(parsed, **kwargs)
    except (NoSuchModuleError, ModuleNotFoundError, ImportError) as exc:
        hint = " (install the extra: pip install 'stopbandit[postgres]')" if "postgres" in url else ""
        raise ConfigError(f"no database driver for URL {redact(url)!r}: {exc}{hint}") from exc


def pg_connect_args(timeout: float | None) -> dict[str, object]:
    """libpq settings that bound every wait on a PostgreSQL server (see the module docstring)."""
    connect = PG_CONNECT_TIMEOUT_S if timeout is None else max(2, min(PG_CONNECT_TIMEOUT_S, math.ceil(timeout)))
    args: dict[str, object] = {
        "connect_timeout": connect,
        "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
        "tcp_user_timeout": 1000 * (20 if timeout is None else max(2, math.ceil(timeout))),
    }
    if timeout is not None:
        ms = max(1, int(timeout * 1000))
        args["options"] = f"-c statement_timeout={ms} -c lock_timeout={ms}"
    return args


def _sqlite_pragmas(dbapi_connection, busy_ms: int) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def guard(what: str, engine: Engine):
    """Context manager turning driver-level connection failures into StoreError (the store's queries use it)."""

    class _G:
        def __enter__(self):
            return None

        def __exit__(self, et, ev, tb):
            if et is not None and issubclass(et, OperationalError):
                raise StoreError(f"{what}: database {redact(str(engine.url))} unavailable: {ev.orig}") from ev
            return False

    return _G()


__all__ = ["DEFAULT_URL", "ENV_VAR", "guard", "is_sqlite", "make_engine", "pg_connect_args", "redact", "resolve_url"]
