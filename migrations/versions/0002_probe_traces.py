"""Probe traces on outcomes: the nested feedback of stricter arms.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outcomes") as batch:
        batch.add_column(sa.Column("trace", sa.JSON, nullable=True))
        batch.add_column(sa.Column("reference_key", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outcomes") as batch:
        batch.drop_column("reference_key")
        batch.drop_column("trace")
