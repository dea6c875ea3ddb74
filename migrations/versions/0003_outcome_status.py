"""Outcome status for delayed rewards: ok, defaulted (window closed, default recorded) or late.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outcomes") as batch:
        batch.add_column(sa.Column("status", sa.String(16), nullable=False, server_default="ok"))


def downgrade() -> None:
    with op.batch_alter_table("outcomes") as batch:
        batch.drop_column("status")
