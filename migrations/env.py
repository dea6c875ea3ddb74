"""Alembic environment for the stopbandit replay store.

Runs online only: with the connection handed over by ``stopbandit.replay.migrate``
(``config.attributes['connection']``) or, when Alembic is driven directly, an
engine built from ``sqlalchemy.url`` with the store's connection settings.
"""

from __future__ import annotations

from alembic import context

from stopbandit.replay.engine import make_engine
from stopbandit.replay.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = make_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()
