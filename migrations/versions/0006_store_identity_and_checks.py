"""Store identity and value checks.

``store_identity``: one row, a random UUID written when the schema reaches
this revision. Spill files name the store they belong to by it (never by
URL), so a writer replays only files of its own database.

CHECK constraints on the values every reader relies on: a propensity in
(0, 1], a non-negative arm index, λ and a token scale in range, EM in [0, 1],
non-negative token counts and latencies, a known outcome status and
experiment group. SQLite gets them through batch mode (the table is copied).
The upgrade refuses, naming the offending rows' count, when existing rows
break a check.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

import time
import uuid

import sqlalchemy as sa
from alembic import op
from alembic.util import CommandError

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

DECISION_CHECKS = {
    "ck_decisions_propensity": "propensity > 0 AND propensity <= 1",
    "ck_decisions_arm_index": "arm_index >= 0",
    "ck_decisions_lam": "lam >= 0",
    "ck_decisions_token_scale": "token_scale > 0",
    "ck_decisions_experiment": "experiment IN ('champion', 'challenger', 'holdout')",
}
OUTCOME_CHECKS = {
    "ck_outcomes_em": "em >= 0 AND em <= 1",
    "ck_outcomes_tokens": "tokens >= 0",
    "ck_outcomes_latency": "latency_ms IS NULL OR latency_ms >= 0",
    "ck_outcomes_status": "status IN ('ok', 'defaulted', 'late')",
}


def upgrade() -> None:
    bind = op.get_bind()
    for table, checks in (("decisions", DECISION_CHECKS), ("outcomes", OUTCOME_CHECKS)):
        for name, cond in checks.items():
            bad = bind.execute(sa.text(f"SELECT count(*) FROM {table} WHERE NOT ({cond})")).scalar_one()
            if bad:
                raise CommandError(f"cannot add {name} ({cond}): {bad} row(s) of {table} break it; "
                                   "fix or delete them first")
    op.create_table(
        "store_identity",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("created", sa.Float, nullable=False),
    )
    bind.execute(sa.text("INSERT INTO store_identity (id, created) VALUES (:id, :ts)"),
                 {"id": str(uuid.uuid4()), "ts": time.time()})
    for table, checks in (("decisions", DECISION_CHECKS), ("outcomes", OUTCOME_CHECKS)):
        with op.batch_alter_table(table) as batch:
            for name, cond in checks.items():
                batch.create_check_constraint(name, cond)


def downgrade() -> None:
    for table, checks in (("outcomes", OUTCOME_CHECKS), ("decisions", DECISION_CHECKS)):
        with op.batch_alter_table(table) as batch:
            for name in checks:
                batch.drop_constraint(name, type_="check")
    op.drop_table("store_identity")
