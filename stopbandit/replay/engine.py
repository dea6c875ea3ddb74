"""Database URLs and engines.

SQLite is the embedded default: WAL so readers never block the writer, a busy
timeout so several processes can share one file, and foreign keys on (SQLite
leaves them off unless asked). Any other SQLAlchemy URL works; PostgreSQL via
``postgresql+psycopg://`` is tested for real.
"""

from __future__ import annotations

import os

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from stopbandit.errors import ConfigError

DEFAULT_URL = "sqlite:///stopbandit.db"
ENV_VAR = "STOPBANDIT_DB"
SQLITE_BUSY_TIMEOUT_MS = 30_000


def resolve_url(url: str | None = None) -> str:
    """The URL to use: the argument, else ``$STOPBANDIT_DB``, else the SQLite default."""
    return url or os.environ.get(ENV_VAR) or DEFAULT_URL


def redact(url: str) -> str:
    """The URL with any password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<unparseable URL>"


def make_engine(url: str | None = None, **kwargs) -> Engine:
    """Create an engine for ``url`` with the store's connection settings.

    Raises ConfigError naming the URL when it cannot be parsed or its driver is missing.
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
            engine = create_engine(
                parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **kwargs
            )
            event.listen(engine, "connect", _sqlite_pragmas)
            return engine
        kwargs.setdefault("pool_pre_ping", True)
        if parsed.get_backend_name() == "postgresql":
            connect_args = kwargs.pop("connect_args", {})
            connect_args.setdefault("connect_timeout", 5)
            kwargs["connect_args"] = connect_args
        return create_engine(parsed, **kwargs)
    except (NoSuchModuleError, ModuleNotFoundError, ImportError) as exc:
        hint = " (install the extra: pip install 'stopbandit[postgres]')" if "postgres" in url else ""
        raise ConfigError(f"no database driver for URL {redact(url)!r}: {exc}{hint}") from exc


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


__all__ = ["DEFAULT_URL", "ENV_VAR", "is_sqlite", "make_engine", "redact", "resolve_url"]
