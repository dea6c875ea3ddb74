"""The models and the newest migration describe the same schema; every step down and up works."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from stopbandit.replay import migrate
from stopbandit.replay.engine import make_engine
from stopbandit.replay.models import Base


def test_models_match_head_migration(db_url):
    migrate.upgrade(db_url)
    engine = make_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    # index/constraint naming is the migrations' business; columns and tables must agree
    relevant = [d for d in diff if d[0] in ("add_table", "remove_table", "add_column", "remove_column")]
    assert relevant == []


def test_every_revision_steps_down_and_up(db_url):
    script = ScriptDirectory.from_config(migrate.alembic_config(db_url))
    revisions = [r.revision for r in script.walk_revisions("base", "heads")][::-1]
    assert revisions[0] == "0001" and revisions[-1] == migrate.head_revision()
    migrate.upgrade(db_url)
    for rev in reversed(revisions[:-1]):
        migrate.downgrade(db_url, rev)
        assert migrate.current_revision(db_url) == rev
    migrate.downgrade(db_url, "base")
    for rev in revisions:
        migrate.upgrade(db_url, rev)
        assert migrate.current_revision(db_url) == rev
