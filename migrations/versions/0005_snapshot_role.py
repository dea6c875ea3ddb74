"""Snapshot role: ``serving`` (followed and hot-swapped to) or ``candidate`` (loaded only by version).

Before this, every saved snapshot became the newest one, and every Selector
that follows the store hot-swapped to it: saving a candidate for an A/B test
was an implicit promotion. Existing rows were all saved to serve, so they
become ``serving``. The downgrade refuses while candidate rows exist (they
would become followed serving snapshots).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from alembic.util import CommandError

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("snapshots") as batch:
        batch.add_column(sa.Column("role", sa.String(16), nullable=False, server_default="serving"))
        batch.create_check_constraint("ck_snapshots_role", "role IN ('serving', 'candidate')")


def downgrade() -> None:
    # Under 0004 every row serves and the newest one is followed: dropping the role of a
    # candidate would promote it. Refuse, and say what to do, rather than ship it silently.
    candidates = op.get_bind().execute(
        sa.text("SELECT version FROM snapshots WHERE role = 'candidate' ORDER BY id")).scalars().all()
    if candidates:
        raise CommandError(
            f"cannot downgrade below 0005: {len(candidates)} candidate snapshot(s) {candidates[:5]} would become "
            "serving snapshots that every Selector follows; delete them (or promote them) first")
    with op.batch_alter_table("snapshots") as batch:
        batch.drop_constraint("ck_snapshots_role", type_="check")
        batch.drop_column("role")
