"""SQLAlchemy 2.0 models of the replay store.

The schema itself is created only by the Alembic migrations in ``migrations/``;
these classes describe it for queries and must stay in step with the newest
migration (``tests/replay/test_migrations.py`` checks that they do).

Timestamps are Unix epoch seconds (UTC) as floats: cheap to write on the
serving path, trivially ordered, and the same on SQLite and PostgreSQL.
Decisions are keyed by ``request_key`` (the caller's request id or a generated
one) so the serving path can return a decision id before the row is written.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, CheckConstraint, Float, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class DecisionRow(Base):
    """One `choose`: what the policy saw, what it could have done, and what it did."""

    __tablename__ = "decisions"
    # value checks (migration 0006)
    __table_args__ = (
        CheckConstraint("propensity > 0 AND propensity <= 1", name="ck_decisions_propensity"),
        CheckConstraint("arm_index >= 0", name="ck_decisions_arm_index"),
        CheckConstraint("lam >= 0", name="ck_decisions_lam"),
        CheckConstraint("token_scale > 0", name="ck_decisions_token_scale"),
        CheckConstraint("experiment IN ('champion', 'challenger', 'holdout')", name="ck_decisions_experiment"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    request_key: Mapped[str] = mapped_column(String(128), unique=True)
    ts: Mapped[float] = mapped_column(Float, index=True)
    domain: Mapped[str | None] = mapped_column(String(64), index=True)
    features: Mapped[dict[str, Any]] = mapped_column(JSON)
    arm: Mapped[str] = mapped_column(String(64))
    arm_index: Mapped[int] = mapped_column(Integer)
    probabilities: Mapped[dict[str, float]] = mapped_column(JSON)
    propensity: Mapped[float] = mapped_column(Float)
    lam: Mapped[float] = mapped_column(Float)
    token_scale: Mapped[float] = mapped_column(Float)
    policy_version: Mapped[str] = mapped_column(String(64))
    # champion | challenger | holdout (migration 0004)
    experiment: Mapped[str] = mapped_column(String(32), server_default="champion")


class OutcomeRow(Base):
    """The observed result of a decision; at most one per decision."""

    __tablename__ = "outcomes"
    # value checks (migration 0006)
    __table_args__ = (
        CheckConstraint("em >= 0 AND em <= 1", name="ck_outcomes_em"),
        CheckConstraint("tokens >= 0", name="ck_outcomes_tokens"),
        CheckConstraint("latency_ms IS NULL OR latency_ms >= 0", name="ck_outcomes_latency"),
        CheckConstraint("status IN ('ok', 'defaulted', 'late')", name="ck_outcomes_status"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    decision_key: Mapped[str] = mapped_column(
        String(128), ForeignKey("decisions.request_key", ondelete="CASCADE"), unique=True
    )
    ts: Mapped[float] = mapped_column(Float)
    em: Mapped[float] = mapped_column(Float)
    tokens: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    # compact probe trace (ProbeTrace.hashed().to_json()) and the reference answer's key (0002)
    trace: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    reference_key: Mapped[str | None] = mapped_column(String(32))
    # ok | defaulted | late (0003): delayed-reward bookkeeping
    status: Mapped[str] = mapped_column(String(16), server_default="ok")


SNAPSHOT_ROLES = ("serving", "candidate")


class SnapshotRow(Base):
    """A saved policy: VW model bytes plus JSON metadata, never pickle.

    ``role`` (migration 0005): ``serving`` snapshots are what Selectors load as
    "latest" and hot-swap to; a ``candidate`` (an A/B challenger, a retrained
    policy under review) is loaded only by its version, so saving one never
    promotes it. ``stopbandit ab promote`` makes a candidate serve.
    """

    __tablename__ = "snapshots"
    __table_args__ = (CheckConstraint("role IN ('serving', 'candidate')", name="ck_snapshots_role"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    version: Mapped[str] = mapped_column(String(64), unique=True)
    ts: Mapped[float] = mapped_column(Float, index=True)
    model: Mapped[bytes] = mapped_column(LargeBinary)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON)
    checksum: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16), server_default="serving")


class StoreIdentityRow(Base):
    """The store's identity (migration 0006): one random UUID, written when the schema is created or upgraded.

    Spill files name the store they belong to by it, never by its URL: two
    URLs can name one database, and one URL can name different databases over time.
    """

    __tablename__ = "store_identity"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created: Mapped[float] = mapped_column(Float)


class StoreArmRow(Base):
    """One arm of the store's arm set (migration 0007): ``position`` is the ``arm_index`` decisions log.

    ``spec`` is the arm as a table (:meth:`stopbandit.bandit.arms.Arm.to_dict`);
    an imported log's arms are recorded here so that reading the log back needs
    no ``--config``.
    """

    __tablename__ = "store_arms"
    __table_args__ = (CheckConstraint("position >= 0", name="ck_store_arms_position"),)

    position: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)


class LambdaChangeRow(Base):
    """Every change of λ, with why and by whom; the newest row is the live value."""

    __tablename__ = "lambda_changes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    ts: Mapped[float] = mapped_column(Float)
    value: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(Text)
    who: Mapped[str] = mapped_column(String(128))


__all__ = ["SNAPSHOT_ROLES", "Base", "DecisionRow", "LambdaChangeRow", "OutcomeRow", "SnapshotRow", "StoreArmRow",
           "StoreIdentityRow"]
