"""The replay store: every decision and outcome, λ changes and policy snapshots.

Writes are idempotent by request key: a decision or outcome written twice (a
retry, a replayed spill file) is stored once. A second outcome that disagrees
with the first is a :class:`ConflictError`; an outcome for a decision the store
has never seen is an :class:`UnknownDecisionError`. All SQL goes through
SQLAlchemy Core with bound parameters.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from stopbandit.errors import ConflictError, InputError, StoreError, UnknownDecisionError
from stopbandit.replay import migrate
from stopbandit.replay.engine import make_engine, redact, resolve_url
from stopbandit.replay.models import DecisionRow, LambdaChangeRow, OutcomeRow, SnapshotRow
from stopbandit.replay.validate import check_em, check_key, check_latency, check_tokens

DECISIONS = DecisionRow.__table__
OUTCOMES = OutcomeRow.__table__
SNAPSHOTS = SnapshotRow.__table__
LAMBDAS = LambdaChangeRow.__table__

DECISION_FIELDS = (
    "request_key", "ts", "domain", "features", "arm", "arm_index",
    "probabilities", "propensity", "lam", "token_scale", "policy_version", "experiment",
)
OUTCOME_FIELDS = ("decision_key", "ts", "em", "tokens", "latency_ms", "trace", "reference_key", "status")


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


def _guard(what: str, engine: Engine):
    """Context manager turning driver-level connection failures into StoreError."""

    class _G:
        def __enter__(self):
            return None

        def __exit__(self, et, ev, tb):
            if et is not None and issubclass(et, OperationalError):
                raise StoreError(f"{what}: database {redact(str(engine.url))} unavailable: {ev.orig}") from ev
            return False

    return _G()


class ReplayStore:
    """Typed access to one replay database.

    ``ReplayStore(url)`` checks that the schema is at the newest migration;
    ``ReplayStore(url, migrate=True)`` first runs ``alembic upgrade head``.
    """

    def __init__(self, url: str | None = None, *, engine: Engine | None = None, migrate_schema: bool = False,
                 check_schema: bool = True) -> None:
        self.url = str(engine.url) if engine is not None else resolve_url(url)
        self.engine = engine or make_engine(self.url)
        if migrate_schema:
            migrate.upgrade(engine=self.engine)
        elif check_schema:
            migrate.require_head(self.engine)
        self._insert_decisions = self._upsert_nothing(DECISIONS, "request_key")
        self._insert_outcomes = self._upsert_nothing(OUTCOMES, "decision_key")

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

    def ping(self) -> None:
        """Raise StoreError if the database cannot be reached right now."""
        try:
            with self.engine.connect() as conn:
                conn.execute(select(1))
        except SQLAlchemyError as exc:
            raise StoreError(f"database {redact(self.url)} unavailable: {getattr(exc, 'orig', exc)}") from exc

    # -- writes ---------------------------------------------------------------
    def write_batch(self, decisions: Sequence[Mapping[str, Any]], outcomes: Sequence[Mapping[str, Any]]) -> None:
        """Insert decisions, then outcomes, in one transaction; duplicates by key are ignored.

        Raises StoreError when the database is unreachable and IntegrityError
        (from SQLAlchemy) when an outcome's decision is missing.
        """
        with _guard("write_batch", self.engine), self.engine.begin() as conn:
            if decisions:
                conn.execute(self._insert_decisions, list(decisions))
            if outcomes:
                conn.execute(self._insert_outcomes, list(outcomes))

    def record_decision(self, row: Mapping[str, Any]) -> None:
        self.write_batch([row], [])

    def record_outcome(self, key: str, em: float, tokens: int, latency_ms: float | None = None,
                       ts: float | None = None) -> bool:
        """Store an outcome now. True if inserted, False if the same outcome was already there."""
        row = outcome_row(key, em, tokens, latency_ms, ts)
        try:
            with _guard("record_outcome", self.engine), self.engine.begin() as conn:
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
        with _guard("get_decision", self.engine), self.engine.connect() as conn:
            r = conn.execute(select(DECISIONS).where(DECISIONS.c.request_key == key)).mappings().first()
        return dict(r) if r else None

    def get_outcome(self, key: str) -> dict[str, Any] | None:
        with _guard("get_outcome", self.engine), self.engine.connect() as conn:
            r = conn.execute(select(OUTCOMES).where(OUTCOMES.c.decision_key == key)).mappings().first()
        return dict(r) if r else None

    def counts(self) -> dict[str, int]:
        with _guard("counts", self.engine), self.engine.connect() as conn:
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
            with _guard("iter_events", self.engine), self.engine.connect() as conn:
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

    # -- λ --------------------------------------------------------------------
    def add_lambda(self, value: float, reason: str, who: str = "api", ts: float | None = None) -> LambdaChange:
        ts = time.time() if ts is None else ts
        with _guard("set_lambda", self.engine), self.engine.begin() as conn:
            new_id = conn.execute(
                insert(LAMBDAS).values(ts=ts, value=value, reason=reason, who=who).returning(LAMBDAS.c.id)
            ).scalar_one()
        return LambdaChange(new_id, ts, value, reason, who)

    def current_lambda(self) -> LambdaChange | None:
        with _guard("current_lambda", self.engine), self.engine.connect() as conn:
            r = conn.execute(select(LAMBDAS).order_by(LAMBDAS.c.id.desc()).limit(1)).first()
        return LambdaChange(*r) if r else None

    def lambda_history(self, limit: int = 100) -> list[LambdaChange]:
        with _guard("lambda_history", self.engine), self.engine.connect() as conn:
            rows = conn.execute(select(LAMBDAS).order_by(LAMBDAS.c.id.desc()).limit(limit)).all()
        return [LambdaChange(*r) for r in rows]

    # -- snapshots ------------------------------------------------------------
    def save_snapshot(self, version: str, model: bytes, meta: Mapping[str, Any], checksum: str,
                      ts: float | None = None) -> None:
        ts = time.time() if ts is None else ts
        with _guard("save_snapshot", self.engine), self.engine.begin() as conn:
            conn.execute(insert(SNAPSHOTS).values(version=version, ts=ts, model=model, meta=dict(meta),
                                                  checksum=checksum))

    def latest_snapshot_version(self) -> str | None:
        with _guard("latest_snapshot", self.engine), self.engine.connect() as conn:
            return conn.execute(select(SNAPSHOTS.c.version).order_by(SNAPSHOTS.c.id.desc()).limit(1)).scalar()

    def get_snapshot(self, version: str | None = None) -> StoredSnapshot | None:
        """The snapshot ``version``, or the newest one when ``version`` is None or 'latest'."""
        q = select(SNAPSHOTS.c.version, SNAPSHOTS.c.ts, SNAPSHOTS.c.model, SNAPSHOTS.c.meta, SNAPSHOTS.c.checksum)
        if version in (None, "latest"):
            q = q.order_by(SNAPSHOTS.c.id.desc()).limit(1)
        else:
            q = q.where(SNAPSHOTS.c.version == version)
        with _guard("get_snapshot", self.engine), self.engine.connect() as conn:
            r = conn.execute(q).first()
        return StoredSnapshot(r[0], r[1], bytes(r[2]), dict(r[3]), r[4]) if r else None

    def list_snapshots(self, limit: int = 50) -> list[tuple[str, float, str]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(SNAPSHOTS.c.version, SNAPSHOTS.c.ts, SNAPSHOTS.c.checksum)
                                .order_by(SNAPSHOTS.c.id.desc()).limit(limit)).all()
        return [tuple(r) for r in rows]


OUTCOME_STATUSES = ("ok", "defaulted", "late")


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


__all__ = ["OUTCOME_STATUSES", "Event", "LambdaChange", "ReplayStore", "StoredSnapshot", "check_same_outcome", "outcome_row"]
