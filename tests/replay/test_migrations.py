"""The models and the newest migration describe the same schema; every step down and up works."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from stopbandit.errors import StoreError
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


def _snapshot_columns(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return {c["name"] for c in inspect(engine).get_columns("snapshots")}
    finally:
        engine.dispose()


def test_0005_snapshot_role_up_down_up_keeps_rows(db_url):
    """Existing snapshots become serving; the role is NOT NULL, defaults to serving and is checked."""
    migrate.upgrade(db_url, "0004")
    engine = make_engine(db_url)
    insert_row = text("INSERT INTO snapshots (version, ts, model, meta, checksum) "
                      "VALUES (:v, :ts, :m, '{}', 'c')")
    with engine.begin() as conn:
        conn.execute(insert_row, [{"v": "old-1", "ts": 1.0, "m": b"\x00"}, {"v": "old-2", "ts": 2.0, "m": b"\x01"}])
    migrate.upgrade(db_url, "0005")
    assert "role" in _snapshot_columns(db_url)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT version, role FROM snapshots ORDER BY id")).all() == [
            ("old-1", "serving"), ("old-2", "serving")]
        conn.execute(insert_row, {"v": "new-default", "ts": 3.0, "m": b"\x02"})  # server default
        conn.execute(text("INSERT INTO snapshots (version, ts, model, meta, checksum, role) "
                          "VALUES ('cand', 4.0, :m, '{}', 'c', 'candidate')"), {"m": b"\x03"})
    for bad in ("'draft'", "NULL"):
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text("INSERT INTO snapshots (version, ts, model, meta, checksum, role) "
                              f"VALUES ('bad', 5.0, :m, '{{}}', 'c', {bad})"), {"m": b"\x04"})
    with engine.connect() as conn:
        roles = dict(conn.execute(text("SELECT version, role FROM snapshots")).all())
    assert roles == {"old-1": "serving", "old-2": "serving", "new-default": "serving", "cand": "candidate"}
    # below 0005 the newest row is followed: a candidate would be promoted by the downgrade, so it refuses
    with pytest.raises(StoreError, match=r"cannot downgrade below 0005: 1 candidate snapshot\(s\) \['cand'\]"):
        migrate.downgrade(db_url, "0004")
    assert migrate.current_revision(db_url) == "0005" and "role" in _snapshot_columns(db_url)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM snapshots WHERE role = 'candidate'"))
    migrate.downgrade(db_url, "0004")
    assert "role" not in _snapshot_columns(db_url)
    with engine.connect() as conn:
        assert [r[0] for r in conn.execute(text("SELECT version FROM snapshots ORDER BY id"))] == [
            "old-1", "old-2", "new-default"]
    migrate.upgrade(db_url)
    assert migrate.current_revision(db_url) == migrate.head_revision()
    with engine.connect() as conn:
        assert {r[0] for r in conn.execute(text("SELECT role FROM snapshots"))} == {"serving"}
    engine.dispose()


def test_0006_writes_a_store_identity_and_refuses_rows_that_break_its_checks(db_url):
    """Upgrading writes one identity (a UUID); existing rows out of range stop the upgrade, naming the check."""
    migrate.upgrade(db_url, "0005")
    engine = make_engine(db_url)
    insert_decision = text(
        "INSERT INTO decisions (request_key, ts, domain, features, arm, arm_index, probabilities, propensity, lam, "
        "token_scale, policy_version) VALUES (:k, 1.0, 'math', '{}', 'full', 0, '{}', :p, 0.2, 1000.0, 'v')")
    with engine.begin() as conn:
        conn.execute(insert_decision, [{"k": "ok", "p": 0.5}, {"k": "bad", "p": 7.0}])
    with pytest.raises(StoreError, match=r"ck_decisions_propensity .*1 row\(s\) of decisions break it"):
        migrate.upgrade(db_url, "0006")
    assert migrate.current_revision(db_url) == "0005"
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM decisions WHERE request_key = 'bad'"))
    migrate.upgrade(db_url, "0006")
    with engine.connect() as conn:
        ids = conn.execute(text("SELECT id FROM store_identity")).scalars().all()
    assert len(ids) == 1 and len(ids[0]) == 36
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(insert_decision, {"k": "bad-again", "p": 0.0})
    migrate.downgrade(db_url, "0005")
    assert "store_identity" not in inspect(engine).get_table_names()
    engine.dispose()


def test_every_upgrade_and_downgrade_keeps_the_rows_of_a_filled_store(db_url):
    """SQLite's batch mode rebuilds tables by copy and drop: no cascade may take the outcomes with it."""
    migrate.upgrade(db_url, "0005")
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO decisions (request_key, ts, domain, features, arm, arm_index, probabilities, propensity, "
            "lam, token_scale, policy_version) VALUES (:k, 1.0, 'math', '{}', 'full', 0, '{}', 0.5, 0.2, 1000.0, 'v')"),
            [{"k": f"r{i}"} for i in range(50)])
        conn.execute(text("INSERT INTO outcomes (decision_key, em, tokens, ts) VALUES (:k, 1.0, 10, 2.0)"),
                     [{"k": f"r{i}"} for i in range(50)])

    def counts() -> tuple[int, int]:
        with engine.connect() as conn:
            return (conn.execute(text("SELECT count(*) FROM decisions")).scalar_one(),
                    conn.execute(text("SELECT count(*) FROM outcomes")).scalar_one())

    migrate.upgrade(db_url)
    assert counts() == (50, 50)
    migrate.downgrade(db_url, "0005")
    assert counts() == (50, 50)
    migrate.upgrade(db_url)
    assert counts() == (50, 50)
    if engine.dialect.name == "sqlite":  # foreign keys are enforced again on the pooled connections
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
    engine.dispose()
