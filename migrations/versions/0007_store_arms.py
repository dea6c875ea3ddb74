"""The store's arm set: which arm each logged ``arm_index`` means.

``store_arms``: one row per arm, ``position`` its action index (what
``decisions.arm_index`` holds), ``name`` the arm's name and ``spec`` the arm
as a table (name, threshold, max_think_tokens, … or ``plain``). Written when
a log is imported (the arms its lines were mapped to); evaluation and export
read it, so a store written with other arms than the defaults needs no
``--config`` to be read back. Stores whose decisions came only from serving
keep an empty table and fall back to their snapshots' arms.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "store_arms",
        sa.Column("position", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.CheckConstraint("position >= 0", name="ck_store_arms_position"),
    )


def downgrade() -> None:
    op.drop_table("store_arms")
