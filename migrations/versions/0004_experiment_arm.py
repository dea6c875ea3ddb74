"""Which experiment arm (champion, challenger, holdout) served each decision.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(sa.Column("experiment", sa.String(32), nullable=False, server_default="champion"))


def downgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("experiment")
