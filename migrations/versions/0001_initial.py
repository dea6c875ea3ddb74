"""Initial replay store: decisions, outcomes, snapshots, lambda_changes.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "decisions",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("request_key", sa.String(128), nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("domain", sa.String(64), nullable=True),
        sa.Column("features", sa.JSON, nullable=False),
        sa.Column("arm", sa.String(64), nullable=False),
        sa.Column("arm_index", sa.Integer, nullable=False),
        sa.Column("probabilities", sa.JSON, nullable=False),
        sa.Column("propensity", sa.Float, nullable=False),
        sa.Column("lam", sa.Float, nullable=False),
        sa.Column("token_scale", sa.Float, nullable=False),
        sa.Column("policy_version", sa.String(64), nullable=False),
        sa.UniqueConstraint("request_key", name="uq_decisions_request_key"),
    )
    op.create_index("ix_decisions_ts", "decisions", ["ts"])
    op.create_index("ix_decisions_domain", "decisions", ["domain"])
    op.create_table(
        "outcomes",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column(
            "decision_key",
            sa.String(128),
            sa.ForeignKey("decisions.request_key", ondelete="CASCADE", name="fk_outcomes_decision_key"),
            nullable=False,
        ),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("em", sa.Float, nullable=False),
        sa.Column("tokens", sa.Integer, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=True),
        sa.UniqueConstraint("decision_key", name="uq_outcomes_decision_key"),
    )
    op.create_table(
        "snapshots",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("model", sa.LargeBinary, nullable=False),
        sa.Column("meta", sa.JSON, nullable=False),
        sa.Column("checksum", sa.String(64), nullable=False),
        sa.UniqueConstraint("version", name="uq_snapshots_version"),
    )
    op.create_index("ix_snapshots_ts", "snapshots", ["ts"])
    op.create_table(
        "lambda_changes",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("who", sa.String(128), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("lambda_changes")
    op.drop_index("ix_snapshots_ts", table_name="snapshots")
    op.drop_table("snapshots")
    op.drop_table("outcomes")
    op.drop_index("ix_decisions_domain", table_name="decisions")
    op.drop_index("ix_decisions_ts", table_name="decisions")
    op.drop_table("decisions")
