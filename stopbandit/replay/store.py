"""The replay store: every decision and outcome, λ changes and policy snapshots.

Writes are idempotent by request key: a decision or outcome written twice (a
retry, a replayed spill file) is stored once. A second outcome that disagrees
with the first is a :class:`ConflictError`; an outcome for a decision the store
has never seen is an :class:`UnknownDecisionError`. The bulk write compares
every row the database already had with the stored one: a request key reused
for a *different* decision (another process, a restart) is reported as a
:class:`Conflict`, never silently dropped or joined to the other row.

A SQLite store also watches its file: deleted or replaced by another
database while serving, it is unavailable (StoreError), not written into an
unlinked inode. All SQL is built by
SQLAlchemy Core with bound parameters; the bulk write path renders its INSERT
once and runs it as a driver-level executemany (:mod:`stopbandit.replay.bulk`);
the tables and the columns of a row are :mod:`stopbandit.replay.tables`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from stopbandit.bandit.arms import ArmSet
from stopbandit.errors import ConflictError, InputError, StoreError, UnknownDecisionError
from stopbandit.replay import migrate
from stopbandit.replay.bulk import ImportSession, _BulkInsert, record_arms, sqlite_params, stored_arms
from stopbandit.replay.deadline import Deadlines
from stopbandit.replay.engine import guard as _guard
from stopbandit.replay.engine import make_engine, redact, resolve_url, sqlite_file
from stopbandit.replay.eventlog import EventLogQueries
from stopbandit.replay.models import SNAPSHOT_ROLES
from stopbandit.replay.tables import (
    DECISION_DEFAULTS,
    DECISION_FIELDS,
    DECISION_IDENTITY,
    DECISIONS,
    IDENTITY,
    KEYS_PER_SELECT,
    LAMBDAS,
    MULTI_ROWS,
    OUTCOME_DEFAULTS,
    OUTCOME_FIELDS,
    OUTCOME_IDENTITY,
    OUTCOMES,
    SNAPSHOTS,
)
from stopbandit.replay.validate import check_em, check_key, check_latency, check_tokens

@dataclass(frozen=True, slots=True)
class Event:
    """A decision joined with its outcome, in outcome order (``cursor`` = outcome id)."""

    cursor: int
    request_key: str
    ts: float
    domain: str | None
    features: dict[str, Any]
    arm: str
    arm_index: int
    probabilities: dict[str, float]
    propensity: float
    lam: float
    token_scale: float
    policy_version: str
    experiment: str
    em: float
    tokens: int
    latency_ms: float | None
    outcome_ts: float
    trace: dict[str, Any] | None
    reference_key: str | None
    status: str


@dataclass(frozen=True, slots=True)
class Conflict:
    """A row whose key the store already holds for a different row: not stored; ``stored`` is the row kept."""

    kind: str  # "d" | "o"
    key: str
    row: Mapping[str, Any]
    stored: Mapping[str, Any] | None
    why: str


@dataclass(frozen=True, slots=True)
class LambdaChange:
    id: int
    ts: float
    value: float
    reason: str
    who: str


@dataclass(frozen=True, slots=True)
class StoredSnapshot:
    version: str
    ts: float
    model: bytes
    meta: dict[str, Any]
    checksum: str
    role: str = "serving"  # serving | candidate (see SnapshotRow)


class ReplayStore(EventLogQueries):
    """Typed access to one replay database (its read queries over the log: :mod:`stopbandit.replay.eventlog`).

    ``ReplayStore(url)`` checks that the schema is at the newest migration;
    ``ReplayStore(url, migrate=True)`` first runs ``alembic upgrade head``.
    """

    def __init__(self, url: str | None = None, *, engine: Engine | None = None, migrate_schema: bool = False,
                 check_schema: bool = True, timeout: float | None = None) -> None:
        self.url = str(engine.url) if engine is not None else resolve_url(url)
        self.timeout = timeout
        self.engine = engine or make_engine(self.url, timeout=timeout)
        # before any connection is opened: the watch must know every connection it may have to cut
        self.deadlines = Deadlines(self.engine)
        self._identity: str | None = None
        self._file = sqlite_file(self.engine)
        if check_schema and not migrate_schema and self._file is not None and not os.path.exists(self._file):
            self.engine.dispose()
            raise StoreError(
                f"no SQLite database at {self._file}: opening a store never creates one; check the path, "
                f"or create the store with `stopbandit db upgrade --db {redact(self.url)}`"
            )
        self._file_id: tuple[int, int] | None = None
        if migrate_schema:
            migrate.upgrade(engine=self.engine)
        elif check_schema:
            migrate.require_head(self.engine)
        self._insert_decisions = self._upsert_nothing(DECISIONS, "request_key")
        self._insert_outcomes = self._upsert_nothing(OUTCOMES, "decision_key")
        # a late reward over a defaulted outcome (write_batch's third part)
        self._late_upgrade = update(OUTCOMES).where(and_(OUTCOMES.c.decision_key == bindparam("key"),
                                                         OUTCOMES.c.status == "defaulted"))
        limit = sqlite_params(self.engine) if self.engine.dialect.name == "sqlite" else 0
        self._bulk_decisions = _BulkInsert(self.engine, self._insert_decisions, DECISION_FIELDS, DECISION_DEFAULTS,
                                           ("features", "probabilities"),
                                           min(MULTI_ROWS, limit // len(DECISION_FIELDS)))
        self._bulk_outcomes = _BulkInsert(self.engine, self._insert_outcomes, OUTCOME_FIELDS, OUTCOME_DEFAULTS,
                                          ("trace",), min(MULTI_ROWS, limit // len(OUTCOME_FIELDS)))

    @contextmanager
    def _call(self, what: str) -> Iterator[None]:
        """One database call: connection failures become StoreError; with a ``timeout``, it has a deadline."""
        with self.deadlines.call(what, self.timeout), _guard(what, self.engine):
            yield

    # -- construction helpers -------------------------------------------------
    def _upsert_nothing(self, table, key: str):
        name = self.engine.dialect.name
        if name == "sqlite":
            return sqlite.insert(table).on_conflict_do_nothing(index_elements=[key])
        if name == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing(index_elements=[key])
        return insert(table)  # other backends: duplicates surface as IntegrityError

    def dispose(self) -> None:
        self.engine.dispose()

    def identity(self) -> str:
        """The store's identity (a UUID written by migration 0006); StoreError if it cannot be read."""
        if self._identity is None:
            self.check_file()
            try:
                with self._call("identity"), self.engine.connect() as conn:
                    found = conn.execute(select(IDENTITY.c.id).order_by(IDENTITY.c.created).limit(1)).scalar()
            except SQLAlchemyError as exc:  # no such table: the schema is older than the identity
                raise StoreError(f"cannot read the identity of {redact(self.url)} (run `stopbandit db upgrade`): "
                                 f"{getattr(exc, 'orig', exc)}") from exc
            if found is None:
                raise StoreError(f"database {redact(self.url)} has no store identity; run `stopbandit db upgrade`")
            self._identity = str(found)
            if self._file is not None and self._file_id is None:
                self._file_id = _file_id(self._file)
        return self._identity

    def check_file(self) -> None:
        """SQLite: StoreError if the database file is gone or is now another database; no-op otherwise.

        A file replaced by a copy of the same store (same identity; a restore)
        is accepted and the pool reconnects to it.
        """
        if self._file is None or self._file_id is None:
            return
        now = _file_id(self._file)
        if now == self._file_id:
            return
        self.engine.dispose()  # pooled connections still write into the old inode
        if now is None:
            raise StoreError(f"SQLite database file {self._file} is gone (deleted or moved while serving)")
        try:
            with self.engine.connect() as conn:
                found = conn.execute(select(IDENTITY.c.id).order_by(IDENTITY.c.created).limit(1)).scalar()
        except SQLAlchemyError as exc:
            raise StoreError(f"SQLite database file {self._file} was replaced by one that is not this store: "
                             f"{getattr(exc, 'orig', exc)}") from exc
        if found != self._identity:
            raise StoreError(f"SQLite database file {self._file} was replaced by another store ({found!r}, "
                             f"expected {self._identity!r})")
        self._file_id = now

    def ping(self) -> None:
        """Raise StoreError if the database cannot be reached right now."""
        self.check_file()
        try:
            with self.deadlines.call("ping", self.timeout), self.engine.connect() as conn:
                conn.execute(select(1))
        except SQLAlchemyError as exc:
            raise StoreError(f"database {redact(self.url)} unavailable: {getattr(exc, 'orig', exc)}") from exc

    # -- writes ---------------------------------------------------------------
    def write_batch(self, decisions: Sequence[Mapping[str, Any]], outcomes: Sequence[Mapping[str, Any]],
                    late: Sequence[Mapping[str, Any]] = ()) -> list[Conflict]:
        """Insert decisions, then outcomes, then late rewards, in one transaction; returns the conflicts.

        A late reward replaces the ``defaulted`` outcome of its decision (status
        ``late``), or is inserted as ``late`` when there is none (a no-op when
        any other outcome is stored).

        A row whose key is already stored with the same content (a retry, a
        replay) is a no-op; with different content it is a :class:`Conflict`
        (not stored), and so is an outcome whose decision is one. Raises
        StoreError when the database is unreachable (or, SQLite, its file is
        gone) and IntegrityError (from SQLAlchemy) when an outcome's decision
        is missing or a value breaks a CHECK constraint.
        """
        self.check_file()
        conflicts: list[Conflict] = []
        with self._call("write_batch"), self.engine.begin() as conn:
            if decisions:
                if self._bulk_decisions.execute(conn, decisions) < len(decisions):
                    conflicts = self._compare(conn, "d", decisions)
            if conflicts:
                bad = {c.key for c in conflicts}
                kept = [o for o in outcomes if o.get("decision_key") not in bad]
                conflicts += [Conflict("o", o["decision_key"], o, None, "its decision conflicts with a stored one")
                              for o in outcomes if o.get("decision_key") in bad]
                outcomes = kept
            if outcomes:
                if self._bulk_outcomes.execute(conn, outcomes) < len(outcomes):
                    conflicts += self._compare(conn, "o", outcomes)
            for row in late:
                values = {k: row.get(k) for k in ("ts", "em", "tokens", "latency_ms", "trace", "reference_key")}
                res = conn.execute(self._late_upgrade.values(status="late", **values), {"key": row["decision_key"]})
                if res.rowcount == 0:
                    conn.execute(self._insert_outcomes, [{**row, "status": "late"}])
        self.check_file()
        return conflicts

    def _compare(self, conn: Connection, kind: str, rows: Sequence[Mapping[str, Any]]) -> list[Conflict]:
        """The rows of a batch that differ from the stored row of their key (some keys were already stored)."""
        table, key_col, fields = ((DECISIONS, "request_key", DECISION_IDENTITY) if kind == "d"
                                  else (OUTCOMES, "decision_key", OUTCOME_IDENTITY))
        keys = list(dict.fromkeys(r[key_col] for r in rows))
        stored: dict[str, dict[str, Any]] = {}
        for i in range(0, len(keys), KEYS_PER_SELECT):
            q = select(table).where(table.c[key_col].in_(keys[i:i + KEYS_PER_SELECT]))
            stored.update({r[key_col]: dict(r) for r in conn.execute(q).mappings()})
        out = []
        for r in rows:
            have = stored.get(r[key_col])
            diffs = [f for f in fields if have is not None and have[f] != r.get(f)]
            if diffs:
                detail = ", ".join(f"{f}: stored {have[f]!r} vs new {r.get(f)!r}" for f in diffs)  # type: ignore[index]
                out.append(Conflict(kind, r[key_col], r, have,
                                    f"{'request_id' if kind == 'd' else 'outcome'} {r[key_col]!r} is already stored "
                                    f"for a different {'decision' if kind == 'd' else 'outcome'} ({detail})"))
        return out

    @contextmanager
    def importing(self, *, atomic: bool) -> Iterator[ImportSession]:
        """An :class:`ImportSession` on one connection; ``atomic``: one transaction, committed by ``commit()``.

        Whatever is not committed when the block ends (an exception, or an
        atomic import that decided not to commit) is rolled back.
        """
        self.check_file()
        with _guard("import", self.engine), self.engine.connect() as conn:
            session = ImportSession(self, conn, atomic)
            try:
                yield session
            finally:
                if conn.in_transaction():
                    conn.rollback()
        self.check_file()

    def wait_for_decision(self, key: str, timeout: float) -> dict[str, Any] | None:
        """The decision ``key``, waiting up to ``timeout`` s for it to appear (another process may not have
        flushed it yet); None if it does not."""
        deadline = time.monotonic() + timeout
        pause = 0.02
        while True:
            d = self.get_decision(key)
            if d is not None or time.monotonic() >= deadline:
                return d
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.25)

    def record_decision(self, row: Mapping[str, Any]) -> None:
        self.write_batch([row], [])

    def record_outcome(self, key: str, em: float, tokens: int, latency_ms: float | None = None,
                       ts: float | None = None) -> bool:
        """Store an outcome now. True if inserted, False if the same outcome was already there."""
        row = outcome_row(key, em, tokens, latency_ms, ts)
        try:
            with self._call("record_outcome"), self.engine.begin() as conn:
                # RETURNING, not rowcount: psycopg reports -1 for ON CONFLICT inserts.
                inserted = conn.execute(self._insert_outcomes.returning(OUTCOMES.c.id), row).first() is not None
        except IntegrityError as exc:
            raise UnknownDecisionError(f"no decision with request key {key!r}; reward() needs a logged decision") from exc
        if inserted:
            return True
        existing = self.get_outcome(key)
        if existing is None:  # pragma: no cover - only on backends without ON CONFLICT
            raise StoreError(f"outcome for {key!r} neither inserted nor found")
        check_same_outcome(key, existing, row)
        return False

    # -- reads ----------------------------------------------------------------
    def get_decision(self, key: str) -> dict[str, Any] | None:
        with self._call("get_decision"), self.engine.connect() as conn:
            r = conn.execute(select(DECISIONS).where(DECISIONS.c.request_key == key)).mappings().first()
        return dict(r) if r else None

    def get_outcome(self, key: str) -> dict[str, Any] | None:
        with self._call("get_outcome"), self.engine.connect() as conn:
            r = conn.execute(select(OUTCOMES).where(OUTCOMES.c.decision_key == key)).mappings().first()
        return dict(r) if r else None

    def counts(self) -> dict[str, int]:
        with self._call("counts"), self.engine.connect() as conn:
            return {
                "decisions": conn.execute(select(func.count()).select_from(DECISIONS)).scalar_one(),
                "outcomes": conn.execute(select(func.count()).select_from(OUTCOMES)).scalar_one(),
                "snapshots": conn.execute(select(func.count()).select_from(SNAPSHOTS)).scalar_one(),
                "lambda_changes": conn.execute(select(func.count()).select_from(LAMBDAS)).scalar_one(),
            }

    def duplicate_keys(self) -> int:
        """Decision keys stored more than once (always 0 while the unique constraint holds)."""
        with self.engine.connect() as conn:
            sub = select(DECISIONS.c.request_key).group_by(DECISIONS.c.request_key).having(func.count() > 1)
            return conn.execute(select(func.count()).select_from(sub.subquery())).scalar_one()

    def iter_events(self, after: int = 0, *, chunk: int = 5000, until: int | None = None,
                    since_ts: float | None = None) -> Iterator[list[Event]]:
        """Decision+outcome events with cursor > ``after``, in chunks of at most ``chunk``.

        Keyset pagination on the outcome id: memory stays bounded by ``chunk``
        whatever the size of the log, and a learner can resume from the last
        cursor it saw.
        """
        cols = [OUTCOMES.c.id, *[DECISIONS.c[f] for f in DECISION_FIELDS],
                OUTCOMES.c.em, OUTCOMES.c.tokens, OUTCOMES.c.latency_ms, OUTCOMES.c.ts.label("outcome_ts"),
                OUTCOMES.c.trace, OUTCOMES.c.reference_key, OUTCOMES.c.status]
        cursor = after
        while True:
            q = select(*cols).join(DECISIONS, DECISIONS.c.request_key == OUTCOMES.c.decision_key)
            q = q.where(OUTCOMES.c.id > cursor)
            if until is not None:
                q = q.where(OUTCOMES.c.id <= until)
            if since_ts is not None:
                q = q.where(DECISIONS.c.ts >= since_ts)
            q = q.order_by(OUTCOMES.c.id).limit(chunk)
            with self._call("iter_events"), self.engine.connect() as conn:
                rows = conn.execute(q).all()
            if not rows:
                return
            yield [Event(*r) for r in rows]
            cursor = rows[-1][0]
            if len(rows) < chunk:
                return

    def max_cursor(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.coalesce(func.max(OUTCOMES.c.id), 0))).scalar_one()

    # -- arms -----------------------------------------------------------------
    def arms(self) -> ArmSet | None:
        """The store's arm set (what ``arm_index`` means), or None when none was recorded."""
        with self._call("arms"), self.engine.connect() as conn:
            return stored_arms(conn)

    def record_arms(self, arms: ArmSet) -> None:
        """Record the store's arm set; InputError when it already has another one."""
        with self._call("record_arms"), self.engine.begin() as conn:
            record_arms(conn, arms)

    # -- λ --------------------------------------------------------------------
    def add_lambda(self, value: float, reason: str, who: str = "api", ts: float | None = None) -> LambdaChange:
        ts = time.time() if ts is None else ts
        with self._call("set_lambda"), self.engine.begin() as conn:
            new_id = conn.execute(
                insert(LAMBDAS).values(ts=ts, value=value, reason=reason, who=who).returning(LAMBDAS.c.id)
            ).scalar_one()
        return LambdaChange(new_id, ts, value, reason, who)

    def current_lambda(self) -> LambdaChange | None:
        with self._call("current_lambda"), self.engine.connect() as conn:
            r = conn.execute(select(LAMBDAS).order_by(LAMBDAS.c.id.desc()).limit(1)).first()
        return LambdaChange(*r) if r else None

    def lambda_history(self, limit: int = 100) -> list[LambdaChange]:
        with self._call("lambda_history"), self.engine.connect() as conn:
            rows = conn.execute(select(LAMBDAS).order_by(LAMBDAS.c.id.desc()).limit(limit)).all()
        return [LambdaChange(*r) for r in rows]

    # -- snapshots ------------------------------------------------------------
    # "latest" always means the newest *serving* snapshot: that is what Selectors load and
    # hot-swap to. A candidate is reachable only by its version, so saving one promotes nothing.
    def save_snapshot(self, version: str, model: bytes, meta: Mapping[str, Any], checksum: str,
                      ts: float | None = None, *, role: str = "serving") -> None:
        """Store a snapshot; ``role="candidate"`` keeps it out of "latest" (Selectors do not swap to it)."""
        role = check_role(role)
        ts = time.time() if ts is None else ts
        with self._call("save_snapshot"), self.engine.begin() as conn:
            conn.execute(insert(SNAPSHOTS).values(version=version, ts=ts, model=model, meta=dict(meta),
                                                  checksum=checksum, role=role))

    def latest_snapshot_version(self, role: str = "serving") -> str | None:
        """The newest snapshot of ``role`` (default: the one serving Selectors follow), or None."""
        role = check_role(role)
        q = select(SNAPSHOTS.c.version).where(SNAPSHOTS.c.role == role).order_by(SNAPSHOTS.c.id.desc()).limit(1)
        with self._call("latest_snapshot"), self.engine.connect() as conn:
            return conn.execute(q).scalar()

    def resume_snapshot_version(self, checkpoint_prefix: str) -> tuple[str, str] | None:
        """(version, role) of the newest snapshot a restarted Selector resumes from, or None.

        That is the newest of the serving snapshots and the checkpoints (candidates whose version starts
        with ``checkpoint_prefix``), in the order they were saved.
        """
        q = (select(SNAPSHOTS.c.version, SNAPSHOTS.c.role)
             .where(or_(SNAPSHOTS.c.role == "serving",
                        and_(SNAPSHOTS.c.role == "candidate", SNAPSHOTS.c.version.startswith(checkpoint_prefix,
                                                                                             autoescape=True))))
             .order_by(SNAPSHOTS.c.id.desc()).limit(1))
        with self._call("latest_snapshot"), self.engine.connect() as conn:
            r = conn.execute(q).first()
        return (r[0], r[1]) if r else None

    def get_snapshot(self, version: str | None = None) -> StoredSnapshot | None:
        """The snapshot ``version`` (any role), or the newest serving one when ``version`` is None or 'latest'."""
        q = select(SNAPSHOTS.c.version, SNAPSHOTS.c.ts, SNAPSHOTS.c.model, SNAPSHOTS.c.meta, SNAPSHOTS.c.checksum,
                   SNAPSHOTS.c.role)
        if version in (None, "latest"):
            q = q.where(SNAPSHOTS.c.role == "serving").order_by(SNAPSHOTS.c.id.desc()).limit(1)
        else:
            q = q.where(SNAPSHOTS.c.version == version)
        with self._call("get_snapshot"), self.engine.connect() as conn:
            r = conn.execute(q).first()
        return StoredSnapshot(r[0], r[1], bytes(r[2]), dict(r[3]), r[4], r[5]) if r else None

    def list_snapshots(self, limit: int = 50, *, role: str | None = None) -> list[tuple[str, float, str]]:
        """(version, ts, checksum), newest first; only those of ``role`` when given."""
        q = select(SNAPSHOTS.c.version, SNAPSHOTS.c.ts, SNAPSHOTS.c.checksum)
        if role is not None:
            q = q.where(SNAPSHOTS.c.role == check_role(role))
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(SNAPSHOTS.c.id.desc()).limit(limit)).all()
        return [tuple(r) for r in rows]


OUTCOME_STATUSES = ("ok", "defaulted", "late")


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def check_role(role: object) -> str:
    """A snapshot role, validated: ``serving`` or ``candidate``."""
    if role not in SNAPSHOT_ROLES:
        raise InputError(f"snapshot role must be one of {list(SNAPSHOT_ROLES)}, got {role!r}")
    return role  # type: ignore[return-value]


def outcome_row(key: str, em: float, tokens: int, latency_ms: float | None = None,
                ts: float | None = None, *, trace: dict[str, Any] | None = None,
                reference_key: str | None = None, status: str = "ok") -> dict[str, Any]:
    """A validated outcome row; errors name the field."""
    if status not in OUTCOME_STATUSES:
        raise InputError(f"outcome status must be one of {OUTCOME_STATUSES}, got {status!r}")
    return {
        "decision_key": check_key(key, field="decision_id"),
        "ts": time.time() if ts is None else float(ts),
        "em": check_em(em),
        "tokens": check_tokens(tokens),
        "latency_ms": check_latency(latency_ms),
        "trace": trace,
        "reference_key": reference_key,
        "status": status,
    }


def check_same_outcome(key: str, existing: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Raise ConflictError when a repeated outcome disagrees with the stored one."""
    diffs = [f for f in ("em", "tokens") if existing[f] != new[f]]
    if diffs:
        detail = ", ".join(f"{f}: stored {existing[f]!r} vs new {new[f]!r}" for f in diffs)
        raise ConflictError(f"conflicting outcome for decision {key!r} ({detail}); outcomes are write-once")


__all__ = ["OUTCOME_STATUSES", "SNAPSHOT_ROLES", "Conflict", "Event", "LambdaChange", "ReplayStore", "StoredSnapshot",
           "check_role", "check_same_outcome", "outcome_row"]
