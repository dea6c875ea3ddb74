"""The replay store (SQLAlchemy + Alembic), its writer, and offline evaluation."""

from stopbandit.replay.store import Event, LambdaChange, ReplayStore, StoredSnapshot
from stopbandit.replay.writer import BatchWriter, WriterHealth

__all__ = ["BatchWriter", "Event", "LambdaChange", "ReplayStore", "StoredSnapshot", "WriterHealth"]
