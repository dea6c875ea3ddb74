"""Schema management through Alembic: the only way a schema is created.

The migration scripts ship inside the package as ``stopbandit.migrations``
(``migrations/`` at the repository root, mapped by pyproject), so the same
calls work from an editable install and from an installed wheel.
"""

from __future__ import annotations

import importlib.resources
import os
from contextlib import contextmanager
from collections.abc import Iterator

from alembic import command
from alembic.config import Config
from alembic.util.exc import CommandError
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from stopbandit.errors import StoreError
from stopbandit.replay.engine import make_engine, redact, resolve_url, sqlite_file


def script_location() -> str:
    return str(importlib.resources.files("stopbandit.migrations"))


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", script_location())
    cfg.set_main_option("sqlalchemy.url", resolve_url(url).replace("%", "%%"))
    return cfg


@contextmanager
def _bound(url: str | None, engine: Engine | None) -> Iterator[tuple[Config, Engine]]:
    own = engine is None
    engine = engine or make_engine(url)
    cfg = alembic_config(str(engine.url.render_as_string(hide_password=False)))
    sqlite = engine.dialect.name == "sqlite"
    try:
        with engine.connect() as conn:
            if sqlite:
                # Batch mode rebuilds a table by copy, drop and rename; with foreign keys on, dropping the old
                # `decisions` would cascade-delete every outcome. SQLite takes this pragma only outside a
                # transaction, so it is set before the migration's transaction and restored after it.
                conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
                conn.commit()
            try:
                with conn.begin():
                    if engine.dialect.name == "postgresql":  # a serving engine's timeout is not for migrations
                        conn.execute(text("SET LOCAL statement_timeout = 0"))
                    cfg.attributes["connection"] = conn
                    yield cfg, engine
                    if sqlite:
                        broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                        if broken:
                            raise StoreError(f"migration on {redact(str(engine.url))} would leave {len(broken)} "
                                             f"row(s) whose foreign key points nowhere; nothing was changed")
            finally:
                if sqlite:
                    conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                    conn.commit()
    except DBAPIError as exc:  # unreachable, not a database, permission denied, ...
        raise StoreError(f"cannot reach database {redact(str(engine.url))}: {exc.orig}") from exc
    except CommandError as exc:  # e.g. downgrading an empty database
        raise StoreError(f"migration on {redact(str(engine.url))} failed: {exc}") from exc
    finally:
        if own:
            engine.dispose()


def upgrade(url: str | None = None, revision: str = "head", *, engine: Engine | None = None) -> None:
    """Bring the schema up to ``revision`` (idempotent)."""
    with _bound(url, engine) as (cfg, _):
        command.upgrade(cfg, revision)


def downgrade(url: str | None = None, revision: str = "-1", *, engine: Engine | None = None) -> None:
    """Step the schema down to ``revision`` (``base`` drops everything)."""
    with _bound(url, engine) as (cfg, _):
        command.downgrade(cfg, revision)


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships migrations
        raise StoreError("no migrations found in the installed package")
    return head


def current_revision(url: str | None = None, *, engine: Engine | None = None) -> str | None:
    """The revision the database is at, or None for an empty database."""
    own = engine is None
    engine = engine or make_engine(url)
    file = sqlite_file(engine)
    if file is not None and not os.path.exists(file):  # connecting would create an empty file
        if own:
            engine.dispose()
        return None
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot reach database {redact(str(engine.url))}: {getattr(exc, 'orig', exc)}") from exc
    finally:
        if own:
            engine.dispose()


def require_head(engine: Engine) -> None:
    """Raise a StoreError that says what to run when the schema is not at head."""
    cur, head = current_revision(engine=engine), head_revision()
    if cur != head:
        raise StoreError(
            f"database {redact(str(engine.url))} is at schema revision {cur or 'none (empty)'}, "
            f"expected {head}; run `stopbandit db upgrade --db ...`"
        )


__all__ = ["alembic_config", "current_revision", "downgrade", "head_revision", "require_head", "upgrade"]
